"""The core numerics in the session's dtype, with tolerances per dtype (tests/helpers.py ``tol``,
``eps``): float64 in the main suite, float32 in tests/test_float32.py's subprocess
(``JAX_ENABLE_X64=0 python -m pytest -m core``).

Each check compares against an independent computation (NumPy in float64 on the same arrays, a
closed form of :mod:`linmeta.theory`) within a rounding bound: ``c * eps`` times the scale of the
quantity, ``c`` counting the operations that round (a sum of N terms: N; a d x d factorisation:
about d). One shape (d = 6, k = 1, T = 3) throughout, so each program compiles once. In a float64 session these
are skipped: the core test files check the same in float64 with tighter, hand-derived bounds.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

import linmeta
from linmeta.core import losses, metrics, theory
from linmeta.engine import runs

from conftest import X64
from helpers import dtype, eps

pytestmark = [pytest.mark.core,
              pytest.mark.skipif(X64, reason="float32 checks: tests/test_float32.py runs them")]

D, K, T = 6, 1, 3


def _truth(seed=1):
    return linmeta.sample_truth(jax.random.key(seed), D, K, T)


def _f64(x):
    return np.asarray(x, np.float64)


@given(st.integers(0, 10 ** 6))
def test_population_statistics_losses_and_sr_minimiser(seed):
    """Population: S_xx = I, S_yx = M*_t; excess loss = 1/2 ||M - M*_t||^2; SR = A* + Rbar (C1)."""
    truth = _truth(seed)
    pop = linmeta.population(truth)
    assert pop.Sxx.dtype == dtype() and truth.A_star.dtype == dtype()
    np.testing.assert_array_equal(_f64(pop.Sxx), np.broadcast_to(np.eye(D), (T, D, D)))
    M_star = _f64(truth.A_star) + np.einsum("tik,tjk->tij", _f64(truth.U_star),
                                            _f64(truth.U_star))
    scale = np.max(np.abs(M_star))
    np.testing.assert_allclose(_f64(pop.Syx), M_star, atol=4 * K * eps() * scale)
    M = jnp.zeros((D, D), dtype())
    np.testing.assert_allclose(_f64(losses.excess_loss(M, pop)),
                               0.5 * np.sum(M_star ** 2, axis=(1, 2)),
                               rtol=4 * D * D * eps())
    sr = linmeta.standard_retraining(pop)
    np.testing.assert_allclose(_f64(sr.base), M_star.mean(axis=0), atol=8 * T * eps() * scale)


def test_sample_statistics_are_the_arrays_moments():
    """Finite samples: the statistics are the second moments of the drawn arrays (NumPy, float64,
    on the same arrays); a sum of N products rounds N times."""
    truth = _truth()
    N = 40
    s = linmeta.draw_samples(jax.random.key(4), truth, N, 0.1)
    assert s.X.dtype == dtype()
    X, Y = _f64(s.X), _f64(s.Y)
    stats = linmeta.stats_from_arrays(s.X, s.Y)
    for got, want in ((stats.Sxx, np.einsum("tni,tnj->tij", X, X) / N),
                      (stats.Syx, np.einsum("tni,tnj->tij", Y, X) / N)):
        np.testing.assert_allclose(_f64(got), want, atol=2 * N * eps() * np.max(np.abs(want)))


def test_gradient_descent_sr_reaches_the_exact_minimiser():
    """SR gradient descent at the population contracts by |1 - lr| per step: after 300 steps of
    lr 0.5 only rounding is left."""
    pop = linmeta.population(_truth())
    exact = _f64(linmeta.standard_retraining(pop).base)
    gd = linmeta.standard_retraining(pop, method="gd", steps=300, lr=0.5)
    np.testing.assert_allclose(_f64(gd.base), exact, atol=16 * eps() * np.max(np.abs(exact)))


def test_meta_lora_recovers_A_star_and_lora_fits_the_unseen_task():
    """C3 at T = 3: Newton's objective falls to the rounding floor (eps^2 times the scale of the
    objective) and A* is recovered to a few hundred eps; the unseen task's residual
    U_new U_new^T has rank k, so rank-k fine-tuning from A* fits it to that floor too (C6 at
    n = infinity)."""
    truth = _truth()
    pop = linmeta.population(truth)
    ml = linmeta.meta_lora(pop, K, key=jax.random.key(2), n_starts=2)
    assert ml.base.dtype == dtype()
    scale = float(np.sum(_f64(truth.M_star) ** 2))
    assert float(ml.objective) < 1e3 * eps() ** 2 * scale
    assert float(metrics.base_error(ml.base, truth.A_star, relative=True)) < 1e3 * eps()
    unseen = linmeta.population(truth, tasks="unseen")
    ft = linmeta.finetune(ml.base, unseen, K, method="gd", steps=300, lr=0.05,
                          key=jax.random.key(3))
    assert float(np.max(_f64(ft.test_loss))) < (1e3 * eps()) ** 2 * scale


def test_finetuning_the_sr_base_leaves_the_eckart_young_tail():
    """C2: exact rank-k fine-tuning of the SR base leaves the tail of the residual's singular
    values (NumPy SVD in float64 of the same residual)."""
    truth = _truth()
    sr = linmeta.standard_retraining(linmeta.population(truth))
    ft = linmeta.finetune(sr.base, linmeta.population(truth, tasks="unseen"), K, method="exact")
    R = _f64(truth.M_new[0]) - _f64(sr.base)
    sv = np.linalg.svd(R, compute_uv=False)
    want = float(np.sum(sv[K:] ** 2))
    np.testing.assert_allclose(float(ft.test_loss[0]), want, atol=16 * D * eps() * sv[0] ** 2)
    np.testing.assert_allclose(float(theory.lora_bias(truth.M_new[0] - sr.base, K)), want,
                               atol=16 * D * eps() * sv[0] ** 2)
    # the residual's rank is (T + 1) k, counted with the dtype's default threshold
    resid = theory.sr_residual(truth.U_star, truth.U_new)
    assert int(metrics.numerical_rank(resid[0])) == min((T + 1) * K, D)


def test_a_diverging_step_size_raises_in_this_dtype():
    pop = linmeta.population(_truth())
    with pytest.raises(linmeta.DivergenceError, match="lr=50"):
        linmeta.standard_retraining(pop, method="gd", steps=50, lr=50.0)


def test_one_protocol_run_in_this_dtype():
    """linmeta.runs.run end to end (the sweep engine's program) in the session's dtype."""
    cfg = {"d": 4, "k": 1, "T": 3, "N": 50, "n": 20, "outer_steps": 20, "inner_steps": 2,
           "sr_steps": 20, "ft_steps": 20, "record_every": 5}
    record = runs.run(cfg)
    assert record["environment"]["dtype"] == str(dtype())
    assert all(np.asarray(v).dtype == dtype() for k, v in record["trajectories"].items()
               if not k.endswith("steps"))
    assert not record["divergence"]["stages"]
    assert all(np.isfinite(v) for k, v in record["results"].items() if not k.endswith("diverged"))
    # the truth is the float64 truth of the same seed, rounded
    with jax.enable_x64(True):
        A64 = np.asarray(linmeta.sweep.truth_for(cfg).A_star)
    A = np.asarray(linmeta.sweep.truth_for(cfg).A_star)
    np.testing.assert_array_equal(A, A64.astype(dtype()))
