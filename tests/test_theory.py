"""Closed forms of linmeta.theory (C2, C6) against independent NumPy computations."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

import linmeta
from linmeta.core import theory


@given(st.sampled_from([(8, 1, 2), (9, 2, 3), (12, 1, 5), (6, 2, 4)]), st.integers(0, 10 ** 6),
       st.integers(1, 4))
def test_lora_bias_asymmetric_equals_svd_tail(shape, seed, r):
    d, k, T = shape
    truth = linmeta.sample_truth(jax.random.key(seed), d, k, T, n_unseen=1)
    res = np.asarray(theory.sr_residual(truth.U_star, truth.U_new[0]))
    s = np.linalg.svd(res, compute_uv=False)
    scale = np.sum(s ** 2)
    np.testing.assert_allclose(theory.lora_bias(res, r), np.sum(s[r:] ** 2), rtol=1e-10,
                               atol=1e-12 * scale)
    # and equals the error of the truncated SVD itself
    u, sv, vt = np.linalg.svd(res)
    approx = (u[:, :r] * sv[:r]) @ vt[:r]
    np.testing.assert_allclose(theory.lora_bias(res, r), np.sum((res - approx) ** 2), rtol=1e-10,
                               atol=1e-12 * scale)


@given(st.sampled_from([(8, 1, 2), (9, 2, 3), (6, 1, 6)]), st.integers(0, 10 ** 6))
def test_sr_residual_spectrum_signs_and_rank(shape, seed):
    d, k, T = shape
    truth = linmeta.sample_truth(jax.random.key(seed), d, k, T, n_unseen=1)
    res = np.asarray(theory.sr_residual(truth.U_star, truth.U_new[0]))
    lam = np.linalg.eigvalsh(res)
    tol = 1e-9 * np.abs(lam).max()
    want_rank = theory.generic_sr_residual_rank(d, k, T)
    assert np.sum(np.abs(lam) > tol) == want_rank == min((T + 1) * k, d)
    if (T + 1) * k <= d:
        assert np.sum(lam > tol) == k and np.sum(lam < -tol) == T * k
    np.testing.assert_allclose(theory.residual_spectrum(res), np.sort(lam)[::-1], atol=1e-12)


def _best_psd_error_bruteforce(S, r):
    """min over PSD rank <= r of ||S - P||^2, by checking every subset of <= r positive eigenvalues
    kept (the optimum keeps a subset of eigen-directions)."""
    lam = np.linalg.eigvalsh(S)
    best = np.inf
    idx = range(len(lam))
    for m in range(r + 1):
        for keep in itertools.combinations(idx, m):
            err = sum(l ** 2 for i, l in enumerate(lam) if i not in keep or l < 0)
            best = min(best, err)
    return best


@given(st.integers(0, 10 ** 6), st.integers(0, 4))
def test_lora_bias_psd(seed, r):
    rng = np.random.default_rng(seed)
    G = rng.normal(size=(6, 6))
    S = (G + G.T) / 2
    np.testing.assert_allclose(theory.lora_bias(S, r, psd=True), _best_psd_error_bruteforce(S, r),
                               rtol=1e-10, atol=1e-12)
    # PSD error >= asymmetric error; it keeps every negative eigenvalue
    lam = np.linalg.eigvalsh(S)
    assert float(theory.lora_bias(S, r, psd=True)) >= float(theory.lora_bias(S, r)) - 1e-12
    assert float(theory.lora_bias(S, r, psd=True)) >= np.sum(lam[lam < 0] ** 2) - 1e-12


@given(st.sampled_from([(6, 1, 2), (10, 2, 3), (12, 1, 5), (8, 2, 1), (9, 3, 2)]),
       st.floats(0.5, 2.0), st.integers(0, 10 ** 6))
def test_orthogonal_case(shape, s, seed):
    """orthogonal_case_bias at every rank, U V^T and PSD, against an explicit SVD / eigen-
    decomposition of the orthogonal truth's residual built here in NumPy."""
    d, k, T = shape
    truth = linmeta.orthogonal_truth(jax.random.key(seed), d, k, T, s=s)
    U, u = np.asarray(truth.U_star), np.asarray(truth.U_new[0])
    res = u @ u.T - np.mean(U @ U.transpose(0, 2, 1), axis=0)       # M*_new - (A* + Rbar)
    sv = np.linalg.svd(res, compute_uv=False)
    lam = np.sort(np.linalg.eigvalsh(res))[::-1]
    pos = lam[lam > 1e-9 * s ** 2]
    for r in range(d + 1):
        assert theory.orthogonal_case_bias(k, s, T, rank=r) == pytest.approx(
            np.sum(sv[r:] ** 2), rel=1e-10, abs=1e-12 * s ** 4)
        # best PSD rank-r: keep the r largest positive eigenvalues, every negative one stays
        want_psd = np.sum(lam ** 2) - np.sum(pos[:r] ** 2)
        assert theory.orthogonal_case_bias(k, s, T, rank=r, psd=True) == pytest.approx(
            want_psd, rel=1e-10, abs=1e-12 * s ** 4)
    assert theory.orthogonal_case_bias(k, s, T) == pytest.approx(np.sum(sv[k:] ** 2), rel=1e-10)
    np.testing.assert_allclose(lam[:k], s ** 2, rtol=1e-10)
    np.testing.assert_allclose(lam[-T * k:], -s ** 2 / T, rtol=1e-10)


def test_hand_built_worked_case():
    # d = 3, k = 1, T = 2, U*_t = e_t, U_new = e3: residual diag(-1/2, -1/2, 1), rank-1 bias 1/2
    U = np.array([[[1.0], [0], [0]], [[0], [1.0], [0]]])
    res = theory.sr_residual(U, np.array([[0.0], [0], [1.0]]))
    np.testing.assert_allclose(res, np.diag([-0.5, -0.5, 1.0]), atol=1e-15)
    assert float(theory.lora_bias(res, 1)) == pytest.approx(0.5)
    assert float(theory.lora_bias(res, 1, psd=True)) == pytest.approx(0.5)
    assert float(theory.lora_bias(res, 0, psd=True)) == pytest.approx(1.5)


@pytest.mark.parametrize("d, k, T", [(3, 1, 1), (4, 2, 3), (3, 1, 50)])
def test_rbar_mean_square_deviation(d, k, T):
    """E ||Rbar - k I||_F^2 = k d (d+1) / T for Gaussian factors, at small T as well (so a
    1/(T+1) in Rbar or in the formula fails): mean over M independent truths within 4 standard
    errors of the sample."""
    M = 4000
    keys = jax.random.split(jax.random.key(T), M)
    Rbar = jax.jit(jax.vmap(lambda kk: theory.sr_bias_matrix(
        linmeta.sample_truth(kk, d, k, T).U_star)))(keys)
    dev = np.sum((np.asarray(Rbar) - k * np.eye(d)) ** 2, axis=(1, 2))
    se = dev.std(ddof=1) / np.sqrt(M)
    want = theory.rbar_mean_square_deviation(d, k, T)
    assert abs(dev.mean() - want) <= 4 * se, (dev.mean(), want, se)
    if T <= 3:  # the band is narrow enough to see an average over T + 1 instead of T
        wrong = np.sum(((T / (T + 1)) * np.asarray(Rbar) - k * np.eye(d)) ** 2, axis=(1, 2))
        assert abs(wrong.mean() - want) > 4 * se


def test_many_task_limit_residual_full_rank():
    truth = linmeta.sample_truth(jax.random.key(0), 5, 2, 4000, n_unseen=1)
    res = theory.sr_residual(truth.U_star, truth.U_new[0])
    assert int(jnp.sum(jnp.abs(jnp.linalg.eigvalsh(res)) > 1e-6)) == 5  # full rank


def test_sr_sample_error_constant_against_monte_carlo():
    """N E ||A_SR(N) - (A* + Rbar)||_F^2 -> C over independent draws (4 standard errors plus the
    O(d / (T N)) correction)."""
    d, k, T, N, sigma, M = 4, 1, 3, 2000, 0.3, 400
    truth = linmeta.sample_truth(jax.random.key(5), d, k, T)
    target = theory.sr_population(truth.A_star, truth.U_star)

    def one(kk):
        base = linmeta.standard_retraining(linmeta.sample_tasks(kk, truth, N, sigma)).base
        return jnp.sum((base - target) ** 2)

    err = N * np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(6), M)))
    C = float(theory.sr_sample_error_constant(truth.U_star, sigma))
    D = np.asarray(truth.M_star - target)        # independent NumPy form of the constant
    assert C == pytest.approx(np.sum((d + 1) * np.sum(D * D, axis=(1, 2)) + d * d * sigma ** 2)
                              / T ** 2, rel=1e-12)
    se = err.std(ddof=1) / np.sqrt(M)
    assert abs(err.mean() - C) <= 4 * se + C * d / (T * N), (err.mean(), C, se)


def test_alternating_jacobian_against_the_solver_step():
    """theory.alternating_jacobian (autodiff of the protocol written from its definition) against
    central differences of the library's own outer step (retrain.alternating_step) at (A*, U*)."""
    from linmeta import methods as retrain

    d, k, T = 4, 1, 3
    truth = linmeta.sample_truth(jax.random.key(2), d, k, T)
    pop = linmeta.population(truth)
    J = np.asarray(theory.alternating_jacobian(truth.A_star, truth.U_star))
    n = d * d

    @jax.jit
    def step(x):
        A, U = retrain.alternating_step(x[:n].reshape(d, d), x[n:].reshape(T, d, k), pop,
                                        0.003, 0.03, 10)
        return jnp.concatenate([A.reshape(-1), U.reshape(-1)])

    x = jnp.concatenate([truth.A_star.reshape(-1), truth.U_star.reshape(-1)])
    h = 1e-5
    fd = np.stack([(np.asarray(step(x + h * e)) - np.asarray(step(x - h * e))) / (2 * h)
                   for e in np.eye(x.size)], axis=1)
    # central differences: O(h^2) truncation, O(eps / h) rounding
    np.testing.assert_allclose(J, fd, atol=1e-8)
    np.testing.assert_allclose(np.asarray(step(x)), np.asarray(x), atol=1e-13)  # fixed point
    rho = np.max(np.abs(np.linalg.eigvals(J)))
    assert 0.9 < rho < 1  # a contraction, slow (the paper's small steps)


def test_dof_and_prediction():
    d, r = 7, 2
    # dof of rank-r d x d matrices: dimension of the manifold = r(2d - r); check against the
    # rank of the Jacobian of (U, V) -> U V^T at a random point
    rng = np.random.default_rng(0)
    U, V = rng.normal(size=(d, r)), rng.normal(size=(d, r))
    J = np.zeros((d * d, 2 * d * r))
    for i in range(d * r):
        e = np.zeros(d * r)
        e[i] = 1
        J[:, i] = (e.reshape(d, r) @ V.T).ravel()
        J[:, d * r + i] = (U @ e.reshape(d, r).T).ravel()
    assert np.linalg.matrix_rank(J) == theory.adapter_dof(d, r) == r * (2 * d - r)
    Js = np.zeros((d * d, d * r))
    for i in range(d * r):
        e = np.zeros(d * r)
        e[i] = 1
        E = e.reshape(d, r)
        Js[:, i] = (E @ U.T + U @ E.T).ravel()
    assert np.linalg.matrix_rank(Js) == theory.adapter_dof(d, r, symmetric=True)
    assert theory.predicted_finetune_error(d, r, 100, 0.1) == pytest.approx(0.01 * r * (2 * d - r) / 100)


@pytest.mark.parametrize("call, word", [
    (lambda: theory.lora_bias(np.ones((3, 4)), 1), "residual"),
    (lambda: theory.lora_bias(np.eye(3), 4), "rank"),
    (lambda: theory.sr_population(np.eye(3), np.ones((2, 4, 1))), "U_star"),
    (lambda: theory.sr_residual(np.ones((2, 3, 1)), np.ones((4, 1))), "U_new"),
    (lambda: theory.generic_sr_residual_rank(3, 4, 1), "k"),
    (lambda: theory.predicted_finetune_error(3, 1, 0, 0.1), "n"),
])
def test_bad_input(call, word):
    with pytest.raises(ValueError, match=word):
        call()
