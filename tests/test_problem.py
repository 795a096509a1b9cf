"""Ground truth: samplers, the orthogonal worked case, validation, file round trip.

Core (runs in float32 too, tolerances from tests/helpers.py).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

import linmeta

from helpers import dtype, tol

pytestmark = pytest.mark.core


def test_sample_truth_shapes_and_symmetry():
    t = linmeta.sample_truth(jax.random.key(0), 6, 2, 4, n_unseen=3)
    assert t.A_star.shape == (6, 6) and t.U_star.shape == (4, 6, 2) and t.U_new.shape == (3, 6, 2)
    assert (t.d, t.k, t.T, t.n_unseen) == (6, 2, 4, 3)
    np.testing.assert_array_equal(t.A_star, t.A_star.T)
    np.testing.assert_allclose(t.M_star[1], t.A_star + t.U_star[1] @ t.U_star[1].T,
                               atol=tol(1e-14))
    assert t.A_star.dtype == dtype()


@given(st.sampled_from([(6, 1, 2), (8, 2, 3), (9, 3, 2)]), st.floats(0.3, 3.0), st.integers(0, 50))
def test_orthogonal_truth_is_orthogonal(shape, s, seed):
    d, k, T = shape
    t = linmeta.orthogonal_truth(jax.random.key(seed), d, k, T, s=s, n_unseen=1)
    F = np.concatenate([np.asarray(t.U_star), np.asarray(t.U_new)], axis=0)  # (T+1, d, k)
    cols = F.transpose(1, 0, 2).reshape(d, -1)
    np.testing.assert_allclose(cols.T @ cols, s ** 2 * np.eye((T + 1) * k),
                               atol=tol(1e-12, 1e-5) * s ** 2)


def test_truth_from_arrays_defaults_and_pytree():
    A = np.eye(3)
    U = np.ones((2, 3, 1))
    t = linmeta.Truth(A, U)
    assert t.U_new.shape == (0, 3, 1)
    leaves = jax.tree.leaves(t)
    assert len(leaves) == 3
    # vmapping over a batch of truths works (the constructor tolerates tracers)
    batch = jax.tree.map(lambda x: jnp.stack([x, x]), t)
    out = jax.vmap(lambda tr: tr.M_star)(batch)
    assert out.shape == (2, 2, 3, 3)


@pytest.mark.parametrize("kwargs, word", [
    (dict(d=3, k=4, T=2), "k"), (dict(d=3, k=0, T=2), "k"), (dict(d=3, k=1, T=0), "T"),
    (dict(d=0, k=1, T=1), "d"), (dict(d=3, k=1, T=1, n_unseen=-1), "n_unseen"),
    (dict(d=3.5, k=1, T=1), "d"),
])
def test_sample_truth_rejects_bad_sizes(kwargs, word):
    with pytest.raises(ValueError, match=rf"^{word}\b"):
        linmeta.sample_truth(jax.random.key(0), **kwargs)


@pytest.mark.parametrize("A, U, Unew, word", [
    (np.eye(3), np.ones((2, 4, 1)), None, "U_star"),
    (np.ones((3, 2)), np.ones((2, 3, 1)), None, "A_star"),
    (np.eye(3), np.ones((2, 3, 4)), None, "k"),
    (np.eye(3), np.ones((0, 3, 1)), None, "T"),
    (np.eye(3), np.ones((2, 3, 1)), np.ones((1, 3, 2)), "U_new"),
    (np.full((3, 3), np.nan), np.ones((2, 3, 1)), None, "A_star"),
    (np.eye(3), np.full((2, 3, 1), np.inf), None, "U_star"),
    (np.eye(3), np.ones((3, 1)), None, "U_star"),
])
def test_truth_rejects_bad_arrays(A, U, Unew, word):
    with pytest.raises(ValueError, match=word):
        linmeta.Truth(A, U, Unew)


def test_orthogonal_truth_too_many_columns():
    with pytest.raises(ValueError, match="<= d"):
        linmeta.orthogonal_truth(jax.random.key(0), 4, 2, 2)


def test_save_load_round_trip(tmp_path):
    t = linmeta.sample_truth(jax.random.key(3), 5, 2, 3, n_unseen=2)
    p = tmp_path / "truth.npz"
    linmeta.save_truth(p, t)
    u = linmeta.load_truth(p)
    for a, b in zip(t, u):
        np.testing.assert_array_equal(a, b)
    assert [f.name for f in tmp_path.iterdir()] == ["truth.npz"]  # no temporary left behind


def test_load_truth_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        linmeta.load_truth(tmp_path / "nope.npz")
    p = tmp_path / "bad.npz"
    np.savez(p, A_star=np.eye(3))
    with pytest.raises(ValueError, match="U_star"):
        linmeta.load_truth(p)
    np.savez(p, A_star=np.eye(3), U_star=np.ones((2, 4, 1)))
    with pytest.raises(ValueError, match="U_star must have shape"):
        linmeta.load_truth(p)
    q = tmp_path / "junk.npz"
    q.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a valid truth .npz") as e:
        linmeta.load_truth(q)
    assert "allow_pickle" not in str(e.value) and "A_star (d,d)" in str(e.value)


def test_numeric_import_does_not_pull_matplotlib():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", "import linmeta, sys; "
                          "print('matplotlib' in sys.modules)"], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------- one problem per key
def _documented_gaussian(key, d, k, T, m, a_scale=1.0):
    """The float64 draw as documented (and as committed numbers were made)."""
    with jax.enable_x64(True):
        ka, ku, kn = jax.random.split(key, 3)
        A = a_scale * jax.random.normal(ka, (d, d), jnp.float64)
        return [np.asarray(x) for x in ((A + A.T) / 2, jax.random.normal(ku, (T, d, k),
                                                                         jnp.float64),
                                        jax.random.normal(kn, (m, d, k), jnp.float64))]


def _equal(a, b):
    for x, y in zip(a, b):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_draws_are_the_documented_float64_ones():
    """Bit for bit in float64 (so committed numbers stay valid); rounded to float32 in float32."""
    key = jax.random.key(5)
    want = [x.astype(dtype()) for x in _documented_gaussian(key, 5, 2, 3, 2, a_scale=1.5)]
    _equal(linmeta.sample_truth(key, 5, 2, 3, n_unseen=2, a_scale=1.5), want)


def test_a_key_names_one_problem_in_every_dtype():
    """float32 truth == float64 truth of the same key rounded to float32: with x64 on
    (dtype=float32) and off (eagerly, under jit and under vmap), for both samplers."""
    def draw(k, **kw):
        return linmeta.sample_truth(k, 5, 2, 3, n_unseen=2, a_scale=0.3, **kw)

    def ortho(k, **kw):
        return linmeta.orthogonal_truth(k, 6, 1, 3, s=0.3, **kw)

    key = jax.random.key(11)
    keys = jax.random.split(key, 2)
    with jax.enable_x64(True):
        want = [np.asarray(x).astype(np.float32) for x in draw(key)]
        want_o = [np.asarray(x).astype(np.float32) for x in ortho(key)]
        want_v = np.stack([np.asarray(draw(k).A_star) for k in keys]).astype(np.float32)
        _equal(draw(key, dtype=jnp.float32), want)
        _equal(ortho(key, dtype=jnp.float32), want_o)
    with jax.enable_x64(False):
        _equal(draw(key), want)
        _equal(jax.jit(draw)(key), want)
        _equal(ortho(key), want_o)
        _equal(draw(jax.random.PRNGKey(11)), want)
        np.testing.assert_array_equal(np.asarray(jax.vmap(lambda k: draw(k).A_star)(keys)),
                                      want_v)


@pytest.mark.parametrize("bad", [0, 3.5, "seed", np.zeros(3), np.zeros(2, np.int32)])
def test_key_must_be_a_prng_key(bad):
    with pytest.raises(ValueError, match=r"^key must be one JAX PRNG key"):
        linmeta.sample_truth(bad, 3, 1, 1)
    with pytest.raises(ValueError, match=r"^key must be one JAX PRNG key"):
        linmeta.orthogonal_truth(bad, 3, 1, 1)
    with pytest.raises(ValueError, match=r"^key .* shape \(2,\)"):
        linmeta.sample_truth(jax.random.split(jax.random.key(0), 2), 3, 1, 1)  # a batch of keys


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_save_truth_file_gets_the_mode_the_umask_gives(tmp_path, umask, mode):
    import os

    t = linmeta.Truth(np.eye(2), np.ones((1, 2, 1)))
    old = os.umask(umask)
    try:
        linmeta.save_truth(tmp_path / "t.npz", t)
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "t.npz").st_mode & 0o777 == mode
