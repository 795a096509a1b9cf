"""Fine-tuning: exact reduced-rank optimum (Eckart-Young at N = inf) and the paper's gradient descent."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import linmeta
from linmeta.core import losses, theory
from linmeta.methods import reference


def _rrr_numpy(X, Y, base, r):
    """Independent reduced-rank regression on raw samples: min ||Y - X (base + D)^T|| over rank(D) <= r.

    Whitening by the inputs' SVD: with X = P S Q^T, the problem is Eckart-Young on S Q^T (B_ols - base)^T."""
    B = np.linalg.lstsq(X, Y, rcond=None)[0].T
    P, s, QT = np.linalg.svd(X, full_matrices=False)
    Z = (s[:, None] * QT) @ (B - base).T          # (d, d): whitened target
    u, sv, vt = np.linalg.svd(Z)
    Zr = (u[:, :r] * sv[:r]) @ vt[:r]
    D = (QT.T @ (Zr / s[:, None])).T
    return base + D


@settings(max_examples=6)
@given(st.sampled_from([(5, 1, 30), (6, 2, 12), (4, 3, 50)]), st.integers(0, 10 ** 6))
def test_exact_finetune_is_reduced_rank_regression(shape, seed):
    d, r, n = shape
    truth = linmeta.sample_truth(jax.random.key(seed), d, 1, 2, n_unseen=2)
    smp = linmeta.draw_samples(jax.random.key(seed + 1), truth, n, 0.3, tasks="unseen")
    stats = linmeta.task_statistics(smp)
    base = jax.random.normal(jax.random.key(seed + 2), (d, d))
    res = linmeta.finetune(base, stats, r, method="exact")
    for j in range(2):
        want = _rrr_numpy(np.asarray(smp.X[j]), np.asarray(smp.Y[j]), np.asarray(base), r)
        np.testing.assert_allclose(res.task_matrix[j], want, rtol=1e-8, atol=1e-8)
    assert int(np.linalg.matrix_rank(np.asarray(res.task_matrix[0] - base), tol=1e-8)) <= r


@settings(max_examples=6)
@given(st.sampled_from([(6, 1), (6, 3), (5, 5)]), st.integers(0, 10 ** 6))
def test_population_finetune_is_eckart_young(shape, seed):
    d, r = shape
    truth = linmeta.sample_truth(jax.random.key(seed), d, 1, 3, n_unseen=1)
    pop = linmeta.population(truth, tasks="unseen")
    base = linmeta.standard_retraining(linmeta.population(truth)).base
    res = linmeta.finetune(base, pop, r, method="exact")
    residual = np.asarray(truth.M_new[0] - base)
    s = np.linalg.svd(residual, compute_uv=False)
    np.testing.assert_allclose(res.test_loss[0], np.sum(s[r:] ** 2), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(res.test_loss[0], theory.lora_bias(residual, r), rtol=1e-9,
                               atol=1e-12)


def test_gd_finetune_matches_numpy_loop():
    truth = linmeta.sample_truth(jax.random.key(0), 5, 1, 3, n_unseen=2)
    smp = linmeta.draw_samples(jax.random.key(1), truth, 25, 0.1, tasks="unseen")
    stats = linmeta.task_statistics(smp)
    base = linmeta.standard_retraining(linmeta.population(truth)).base
    U0 = 0.1 * jax.random.normal(jax.random.key(2), (2, 5, 1))
    V0 = 0.1 * jax.random.normal(jax.random.key(3), (2, 5, 1))
    res = linmeta.finetune(base, stats, 1, U0=U0, V0=V0, steps=60, lr=0.01)
    U, V, L = reference.finetune_gd(np.asarray(smp.X), np.asarray(smp.Y), np.asarray(base),
                                    np.asarray(U0), np.asarray(V0), np.asarray(smp.M_star),
                                    steps=60, lr=0.01)
    np.testing.assert_allclose(res.U, U, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(res.V, V, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(res.history.value.test_loss, L, rtol=1e-9)
    np.testing.assert_allclose(res.test_loss, L[-1], rtol=1e-9)


def test_gd_reaches_the_exact_optimum():
    truth = linmeta.sample_truth(jax.random.key(4), 5, 1, 3, n_unseen=1)
    stats = linmeta.sample_tasks(jax.random.key(5), truth, 40, 0.1, tasks="unseen")
    base = truth.A_star  # a recovered base: the unseen task needs a rank-1 adapter
    ex = linmeta.finetune(base, stats, 1, method="exact")
    gd = linmeta.finetune(base, stats, 1, key=jax.random.key(6), steps=4000, lr=0.05,
                          record_every=4000)
    np.testing.assert_allclose(losses.task_loss(gd.task_matrix, stats),
                               losses.task_loss(ex.task_matrix, stats), rtol=1e-8)


def test_full_rank_is_least_squares():
    truth = linmeta.sample_truth(jax.random.key(7), 4, 1, 3, n_unseen=1)
    smp = linmeta.draw_samples(jax.random.key(8), truth, 30, 0.2, tasks="unseen")
    res = linmeta.finetune(jnp.zeros((4, 4)), linmeta.task_statistics(smp), 4, method="exact")
    B = np.linalg.lstsq(np.asarray(smp.X[0]), np.asarray(smp.Y[0]), rcond=None)[0].T
    np.testing.assert_allclose(res.task_matrix[0], B, rtol=1e-9, atol=1e-10)


def test_bad_input():
    truth = linmeta.sample_truth(jax.random.key(0), 4, 1, 3, n_unseen=1)
    pop = linmeta.population(truth, tasks="unseen")
    with pytest.raises(ValueError, match="rank"):
        linmeta.finetune(jnp.zeros((4, 4)), pop, 5, method="exact")
    with pytest.raises(ValueError, match="base"):
        linmeta.finetune(jnp.zeros((3, 3)), pop, 1, method="exact")
    with pytest.raises(ValueError, match="key"):
        linmeta.finetune(jnp.zeros((4, 4)), pop, 1)
    with pytest.raises(ValueError, match="U0"):
        linmeta.finetune(jnp.zeros((4, 4)), pop, 1, U0=np.zeros((4, 2)), V0=np.zeros((4, 1)))
    with pytest.raises(ValueError, match="lr"):
        linmeta.finetune(jnp.zeros((4, 4)), pop, 1, key=jax.random.key(0), lr=0.0)
    with pytest.raises(ValueError, match="base"):
        linmeta.finetune(np.full((4, 4), np.nan), pop, 1, method="exact")


def test_large_d_reduced_rank_path_is_the_dense_one(dtype=jnp.float64, tol=1e-11):
    # the Cholesky + subspace-iteration fit (used above DENSE_MAX_D), forced at d = 12: the same
    # adapter product as the dense eigh + SVD fit, at finite n (n >= d) and at the population;
    # n < d (singular S_xx) falls back to the dense fit
    ft = importlib.import_module("linmeta.methods.finetune")
    truth = linmeta.sample_truth(jax.random.key(5), 12, 2, 3, n_unseen=2, dtype=dtype)
    base = truth.A_star + 0.1 * jnp.eye(12, dtype=dtype)
    fast = jax.jit(ft._cholesky_reduced_rank, static_argnums=3)
    dense = jax.jit(ft._dense_reduced_rank, static_argnums=3)
    for stats in (linmeta.sample_tasks(jax.random.key(6), truth, 40, 0.3, tasks="unseen"),
                  linmeta.population(truth, tasks="unseen"),
                  linmeta.sample_tasks(jax.random.key(7), truth, 7, 0.3, tasks="unseen")):
        for i in range(2):
            U1, V1 = dense(base, stats.Sxx[i], stats.Syx[i], 2)
            U2, V2 = fast(base, stats.Sxx[i], stats.Syx[i], 2)
            assert U2.dtype == dtype
            M1, M2 = U1 @ V1.T, U2 @ V2.T
            assert float(jnp.max(jnp.abs(M1 - M2))) <= tol * float(jnp.max(jnp.abs(M1)))
    # the top singular triplets against the dense SVD
    W = jax.random.normal(jax.random.key(8), (30, 20), dtype) @ jnp.diag(
        jnp.arange(20, 0, -1).astype(dtype))
    P, s, V = jax.jit(ft.top_singular_triplets, static_argnums=1)(W, 3)
    s_dense = jnp.linalg.svd(W, compute_uv=False)[:3]
    np.testing.assert_allclose(s, s_dense, rtol=tol)
    np.testing.assert_allclose(P * s @ V.T, W @ V @ V.T, atol=tol * float(s_dense[0]))


def test_reduced_rank_fit_routes_by_dense_max_d():
    # d <= DENSE_MAX_D: the dense eigh + SVD fit (no Cholesky); above: Cholesky + subspace
    # iteration (traced only: no array of that size is built)
    ft = importlib.import_module("linmeta.methods.finetune")
    from linmeta.methods._common import DENSE_MAX_D

    def primitives(d):
        sds = jax.ShapeDtypeStruct
        stats = linmeta.TaskStats(sds((1, d, d), jnp.float64), sds((1, d, d), jnp.float64),
                                  sds((1,), jnp.float64), sds((1,), jnp.float64),
                                  sds((1, d, d), jnp.float64), sds((1,), jnp.float64))
        jaxpr = jax.make_jaxpr(lambda b, s: ft.reduced_rank_fit(b, s, 1))(
            sds((d, d), jnp.float64), stats)
        return str(jaxpr)

    at, above = primitives(DENSE_MAX_D), primitives(DENSE_MAX_D + 1)
    assert "eigh" in at and "cholesky" not in at
    assert "cholesky" in above


def test_top_singular_triplets_stops_after_max_iter():
    # a slowly decaying spectrum (s_i = 0.99^i): about a hundred iterations to converge, so
    # max_iter = 2 must stop short of it, and the default budget must reach it
    ft = importlib.import_module("linmeta.methods.finetune")
    Q1, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(64, 64)))
    Q2, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(64, 64)))
    W = jnp.asarray(Q1 @ np.diag(0.99 ** np.arange(64)) @ Q2.T)

    def residual(max_iter):
        P, s, V = jax.jit(ft.top_singular_triplets, static_argnums=(1, 2))(W, 1, max_iter)
        return float(jnp.linalg.norm(W @ V - P * s)) / float(s[0])

    assert residual(2) > 1e-6
    assert residual(200) <= 8 * np.finfo(np.float64).eps * np.sqrt(64)
