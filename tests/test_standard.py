"""Claim C1: standard retraining returns A* + Rbar (population) and pooled least squares (samples)."""
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, strategies as st

import linmeta
from linmeta.methods import reference
from linmeta.core import theory

SHAPES = st.sampled_from([(4, 1, 1), (6, 2, 3), (5, 1, 4)])


@given(SHAPES, st.integers(0, 10 ** 6))
def test_population_sr_is_A_star_plus_Rbar(shape, seed):
    d, k, T = shape
    truth = linmeta.sample_truth(jax.random.key(seed), d, k, T)
    sr = linmeta.standard_retraining(linmeta.population(truth, noise_std=0.2))
    # independent: Rbar as a NumPy mean of outer products
    U = np.asarray(truth.U_star)
    want = np.asarray(truth.A_star) + np.mean([u @ u.T for u in U], axis=0)
    np.testing.assert_allclose(sr.base, want, atol=1e-10, rtol=0)
    np.testing.assert_allclose(theory.sr_population(truth.A_star, truth.U_star), want, atol=1e-12)


def test_hand_built_sr():
    # A* = 0, U*_1 = e1, U*_2 = 2 e2: Rbar = diag(1/2, 2, 0)
    A = np.zeros((3, 3))
    U = np.array([[[1.0], [0], [0]], [[0], [2.0], [0]]])
    truth = linmeta.Truth(A, U)
    sr = linmeta.standard_retraining(linmeta.population(truth))
    np.testing.assert_allclose(sr.base, np.diag([0.5, 2.0, 0.0]), atol=1e-14)
    # excess objective: (1/T) sum_t 1/2 ||A_SR - M*_t||^2 = 1/2 * (1/2)(0.25 + 4 + 0.25 + 4)/... exact:
    M = np.asarray(truth.M_star)
    want = np.mean([0.5 * np.sum((np.diag([0.5, 2.0, 0.0]) - m) ** 2) for m in M])
    np.testing.assert_allclose(sr.objective, want, rtol=1e-12)


@given(SHAPES, st.sampled_from([3, 50]), st.integers(0, 10 ** 6))
def test_finite_sample_sr_is_pooled_least_squares(shape, N, seed):
    d, k, T = shape
    truth = linmeta.sample_truth(jax.random.key(seed), d, k, T)
    smp = linmeta.draw_samples(jax.random.key(seed + 1), truth, N, 0.3)
    sr = linmeta.standard_retraining(linmeta.task_statistics(smp))
    X = np.asarray(smp.X).reshape(-1, d)
    Y = np.asarray(smp.Y).reshape(-1, d)
    want = np.linalg.lstsq(X, Y, rcond=None)[0].T  # min-norm pooled LS over all raw samples
    np.testing.assert_allclose(sr.base, want, atol=1e-8, rtol=1e-8)


def test_sr_gradient_descent_matches_numpy_loop_and_converges():
    truth = linmeta.sample_truth(jax.random.key(0), 5, 1, 3)
    smp = linmeta.draw_samples(jax.random.key(1), truth, 40, 0.1)
    stats = linmeta.task_statistics(smp)
    gd = linmeta.standard_retraining(stats, method="gd", steps=200, lr=0.05, record_every=50)
    ref = reference.standard_gd(np.asarray(smp.X), np.asarray(smp.Y), steps=200, lr=0.05)
    np.testing.assert_allclose(gd.base, ref, rtol=1e-10, atol=1e-12)
    assert gd.history.value.shape == (5,) and list(gd.history.step) == [0, 50, 100, 150, 200]
    assert bool(jnp.all(jnp.diff(gd.history.value) <= 1e-12))  # monotone for a small step
    long = linmeta.standard_retraining(stats, method="gd", steps=3000, lr=0.05)
    exact = linmeta.standard_retraining(stats)
    np.testing.assert_allclose(long.base, exact.base, atol=1e-8)


def test_sr_error_rate_is_the_c1_constant():
    """N E ||A_SR(N) - (A* + Rbar)||_F^2 -> C = theory.sr_sample_error_constant at N = 100 and
    10000: mean over 32 independent draws within a 99.9% Student-t band plus the O(d / (T N))
    correction (so the rate N^(-1/2) and its constant are both pinned)."""
    from scipy import stats

    d, k, T, sigma, S = 4, 1, 3, 0.5, 32
    truth = linmeta.sample_truth(jax.random.key(2), d, k, T)
    target = theory.sr_population(truth.A_star, truth.U_star)
    C = float(theory.sr_sample_error_constant(truth.U_star, sigma))
    for N in (100, 10000):
        err = jax.jit(jax.vmap(lambda kk: jnp.sum((linmeta.standard_retraining(
            linmeta.sample_tasks(kk, truth, N, sigma)).base - target) ** 2)))(
            jax.random.split(jax.random.key(N), S))
        ratio = N * np.asarray(err) / C
        se = ratio.std(ddof=1) / np.sqrt(S)
        tol = stats.t.ppf(1 - 0.0005, S - 1) * se + 2 * d / (T * N)
        assert abs(ratio.mean() - 1) <= tol, (N, ratio.mean(), tol)


def test_non_finite_statistics_are_rejected():
    import pytest
    pop = linmeta.population(linmeta.sample_truth(jax.random.key(0), 3, 1, 2))
    bad = pop._replace(Syx=pop.Syx.at[0, 0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match="source.Syx"):
        linmeta.standard_retraining(bad)
    with pytest.raises(ValueError, match="source.Syx"):
        linmeta.meta_lora(bad, 1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="source.Syx"):
        linmeta.finetune(jnp.zeros((3, 3)), bad, 1, method="exact")
