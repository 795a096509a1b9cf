"""Sufficient statistics against raw samples; population limit; losses and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

import linmeta
from linmeta.core import losses
from linmeta.methods import reference

SHAPES = st.sampled_from([(3, 1, 1), (4, 2, 3), (5, 1, 2)])


@given(SHAPES, st.sampled_from([1, 7, 40]), st.floats(0.0, 1.0), st.integers(0, 10 ** 6))
def test_statistics_match_raw_samples(shape, N, noise, seed):
    d, k, T = shape
    truth = linmeta.sample_truth(jax.random.key(seed), d, k, T)
    smp = linmeta.draw_samples(jax.random.key(seed + 1), truth, N, noise)
    stats = linmeta.task_statistics(smp)
    X, Y = np.asarray(smp.X), np.asarray(smp.Y)
    for t in range(T):
        np.testing.assert_allclose(stats.Sxx[t], X[t].T @ X[t] / N, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(stats.Syx[t], Y[t].T @ X[t] / N, rtol=1e-12, atol=1e-12)
    # the quadratic form equals the raw-sample loss for any M
    M = jax.random.normal(jax.random.key(seed + 2), (T, d, d))
    np.testing.assert_allclose(losses.task_loss(M, stats), reference.raw_loss(np.asarray(M), X, Y),
                               rtol=1e-10)
    # the excess form differs from it by a constant (the unconstrained minimum)
    ex = losses.excess_loss(M, stats)
    ex0 = losses.excess_loss(losses.ols_solution(stats), stats)
    np.testing.assert_allclose(ex0, 0.0, atol=1e-10)
    M2 = M + 0.3
    np.testing.assert_allclose(losses.task_loss(M, stats) - losses.task_loss(M2, stats),
                               ex - losses.excess_loss(M2, stats), rtol=1e-8, atol=1e-9)


@given(SHAPES, st.sampled_from([2, 30]), st.integers(0, 10 ** 6))
def test_gradient_matches_autodiff_of_raw_loss(shape, N, seed):
    d, k, T = shape
    truth = linmeta.sample_truth(jax.random.key(seed), d, k, T)
    smp = linmeta.draw_samples(jax.random.key(seed + 1), truth, N, 0.5)
    stats = linmeta.task_statistics(smp)
    M = jax.random.normal(jax.random.key(seed + 2), (T, d, d))

    def raw(M):
        R = jnp.einsum("tij,tnj->tni", M, smp.X) - smp.Y
        return 0.5 * jnp.sum(R * R) / N

    np.testing.assert_allclose(losses.task_loss_grad(M, stats), jax.grad(raw)(M), rtol=1e-10,
                               atol=1e-12)


def test_population_loss_closed_form():
    truth = linmeta.sample_truth(jax.random.key(0), 5, 2, 3)
    pop = linmeta.population(truth, noise_std=0.3)
    M = jax.random.normal(jax.random.key(1), (3, 5, 5))
    want = 0.5 * jnp.sum((M - truth.M_star) ** 2, axis=(1, 2)) + 5 * 0.3 ** 2 / 2
    np.testing.assert_allclose(losses.task_loss(M, pop), want, rtol=1e-12)
    np.testing.assert_allclose(losses.excess_loss(M, pop),
                               0.5 * jnp.sum((M - truth.M_star) ** 2, axis=(1, 2)), rtol=1e-12)
    assert bool(jnp.all(jnp.isinf(pop.n_samples)))


@pytest.mark.parametrize("noise", [0.1, 0.3, 2.0])
def test_sample_moments_match_the_population(noise):
    """Moments of the drawn samples against the population (not against the same draw): the
    residual y - M* x has mean square noise_std^2 (chi-square band), S_xx -> I, S_yx -> M*,
    S_yy -> ||M*||^2 + d noise_std^2 (CLT bands), each two-sided at level 1e-6 (Bonferroni over
    entries), for two independent draws."""
    from scipy import stats

    d, k, T, N = 4, 1, 3, 20000
    truth = linmeta.sample_truth(jax.random.key(0), d, k, T)
    M = np.asarray(truth.M_star)
    p = 1e-6
    for key in (jax.random.key(11), jax.random.key(12)):
        smp = linmeta.draw_samples(key, truth, N, noise)
        X, Y = np.asarray(smp.X), np.asarray(smp.Y)
        resid = Y - np.einsum("tij,tnj->tni", M, X)
        dof = resid.size
        ratio = np.sum(resid ** 2) / (dof * noise ** 2)
        assert stats.chi2.ppf(p / 2, dof) / dof <= ratio <= stats.chi2.isf(p / 2, dof) / dof
        st_ = linmeta.task_statistics(smp)
        z = stats.norm.isf(p / 2 / (T * d * d))                     # Bonferroni over entries
        sd_xx = np.sqrt((1 + np.eye(d)) / N)                         # var x_i x_j: 1, diagonal 2
        assert np.all(np.abs(np.asarray(st_.Sxx) - np.eye(d)) <= z * sd_xx)
        # S_yx - M* S_xx = (1/N) sum eps x^T: entries with variance noise^2 / N
        D = np.asarray(st_.Syx) - M @ np.asarray(st_.Sxx)
        assert np.all(np.abs(D) <= z * noise / np.sqrt(N))
        Sigma = M @ M.transpose(0, 2, 1) + noise ** 2 * np.eye(d)   # covariance of y
        want = np.trace(Sigma, axis1=1, axis2=2)                    # ||M*||^2 + d noise^2
        sd = np.sqrt(2 * np.trace(Sigma @ Sigma, axis1=1, axis2=2) / N)
        assert np.all(np.abs(np.asarray(st_.Syy) - want) <= stats.norm.isf(p / 2 / T) * sd)


def test_population_statistics_carry_the_noise():
    """2 L_t(M*_t) / d = noise_std^2 in the population (the noise level enters S_yy as d sigma^2)."""
    truth = linmeta.sample_truth(jax.random.key(0), 5, 2, 3)
    pop = linmeta.population(truth, noise_std=0.3)
    np.testing.assert_allclose(2 * losses.task_loss(truth.M_star, pop) / 5, 0.09, rtol=1e-12)


def test_finite_samples_approach_population():
    truth = linmeta.sample_truth(jax.random.key(0), 4, 1, 2)
    pop = linmeta.population(truth, 0.5)
    errs = []
    for N in (100, 10000):
        st_ = linmeta.sample_tasks(jax.random.key(N), truth, N, 0.5)
        errs.append(float(jnp.max(jnp.abs(st_.Syx - pop.Syx))))
    # fluctuations of S_yx scale like 1/sqrt(N): a 100x larger N shrinks them about 10x
    assert errs[1] < errs[0] / 3


def test_unseen_tasks_and_errors():
    truth = linmeta.sample_truth(jax.random.key(0), 4, 1, 2, n_unseen=3)
    s = linmeta.sample_tasks(jax.random.key(1), truth, 7, 0.1, tasks="unseen")
    assert s.Sxx.shape == (3, 4, 4)
    np.testing.assert_allclose(s.M_star, truth.M_new)
    with pytest.raises(ValueError, match="N"):
        linmeta.sample_tasks(jax.random.key(1), truth, 0, 0.1)
    with pytest.raises(ValueError, match="noise_std"):
        linmeta.sample_tasks(jax.random.key(1), truth, 5, -1.0)
    with pytest.raises(ValueError, match="noise_std"):
        linmeta.population(truth, float("nan"))
    with pytest.raises(ValueError, match="tasks"):
        linmeta.population(truth, tasks="test")
    t0 = linmeta.sample_truth(jax.random.key(0), 4, 1, 2, n_unseen=0)
    with pytest.raises(ValueError, match="n_unseen"):
        linmeta.population(t0, tasks="unseen")


def test_stats_from_user_arrays():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2, 9, 3))
    Y = rng.normal(size=(2, 9, 3))
    s = linmeta.stats_from_arrays(X, Y)
    np.testing.assert_allclose(s.Sxx[1], X[1].T @ X[1] / 9)
    with pytest.raises(ValueError, match="Y"):
        linmeta.stats_from_arrays(X, Y[:, :5])
    X[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="X"):
        linmeta.stats_from_arrays(X, Y)


@pytest.mark.parametrize("dtype, rtol", [(jnp.float64, 1e-12), (jnp.float32, 2e-5)])
def test_chunked_statistics_equal_the_one_shot_statistics(dtype, rtol):
    truth = linmeta.sample_truth(jax.random.key(3), 6, 2, 3, dtype=dtype)
    key = jax.random.key(4)
    sizes = [5, 5, 5, 5, 3]  # N = 23 in chunks of 5: the last chunk shorter
    chunked = linmeta.sample_tasks(key, truth, 23, 0.3, chunk_size=5)
    # chunk j is draw_samples(fold_in(key, j), ...): the same samples drawn at once, reduced once
    parts = [linmeta.draw_samples(jax.random.fold_in(key, j), truth, n, 0.3)
             for j, n in enumerate(sizes)]
    X = jnp.concatenate([p.X for p in parts], axis=1)
    Y = jnp.concatenate([p.Y for p in parts], axis=1)
    one_shot = linmeta.stats_from_arrays(X, Y, truth.M_star)
    from_chunks = linmeta.stats_from_chunks(((p.X, p.Y) for p in parts), truth.M_star)
    for got in (chunked, from_chunks):
        for f in ("Sxx", "Syx", "Syy"):
            assert getattr(got, f).dtype == dtype
            np.testing.assert_allclose(getattr(got, f), getattr(one_shot, f), rtol=rtol,
                                       atol=rtol * float(jnp.max(jnp.abs(getattr(one_shot, f)))))
        np.testing.assert_array_equal(got.n_samples, 23.0)
    np.testing.assert_array_equal(chunked.M_star, truth.M_star)


def test_chunked_sampling_refusals(monkeypatch):
    truth = linmeta.sample_truth(jax.random.key(3), 6, 2, 3)
    import linmeta.data as data_mod
    need = data_mod.sampling_memory(3, 1000, 6)
    monkeypatch.setattr(data_mod, "memory_budget", lambda: need - 1)
    with pytest.raises(ValueError, match=r"needs ~.*over the memory budget.*chunk_size=\d+"):
        linmeta.sample_tasks(jax.random.key(0), truth, 1000, 0.1)
    with pytest.raises(ValueError, match=r"chunk_size=1000 .*use chunk_size <= \d+"):
        linmeta.sample_tasks(jax.random.key(0), truth, 1000, 0.1, chunk_size=1000)
    with pytest.raises(ValueError, match="chunk_size"):
        linmeta.sample_tasks(jax.random.key(0), truth, 10, 0.1, chunk_size=0)
    with pytest.raises(ValueError, match="chunks is empty"):
        linmeta.stats_from_chunks([])
    with pytest.raises(ValueError, match="chunk 1"):
        linmeta.stats_from_chunks([(np.ones((2, 3, 4)), np.ones((2, 3, 4))),
                                   (np.ones((2, 3, 5)), np.ones((2, 3, 5)))])
