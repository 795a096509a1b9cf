"""Representation family, core pieces (run again in float32 by tests/test_float32.py): the truth
and its validation, task statistics with p = 1, the closed forms of
linmeta.representation.theory against independent computations, the LAPACK-free linear algebra
of the solvers, and the subspace metric."""
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

import linmeta
from linmeta.core import metrics
from linmeta.families import representation as rep
from linmeta.families.representation import _linalg, methods, theory
from helpers import dtype, tol

pytestmark = pytest.mark.core

def _truth(seed, d=5, k=2, T=4, **kw):
    return rep.sample_rep_truth(jax.random.key(seed), d, k, T, **kw)


# ----------------------------------------------------------------------------- truth, validation
def test_truth_shapes_and_exact_balanced_moments():
    S = jnp.asarray([[1.0, 0.3], [0.3, 0.5]], dtype())
    t = _truth(0, 6, 2, 8, Sigma_w=S, n_target=3, delta_scale=0.2)
    assert (t.d, t.k, t.T, t.n_target) == (6, 2, 8, 3)
    assert t.betas.shape == (8, 6) and t.target_betas.shape == (3, 6)
    np.testing.assert_allclose(t.head_moment, S, atol=tol(1e-13))  # exactly Sigma_w
    np.testing.assert_allclose(jnp.mean(t.heads, 0), 0.0, atol=tol(1e-14))  # symmetric
    np.testing.assert_allclose(t.B_star.T @ t.B_star, np.eye(2), atol=tol(1e-14))
    # betas = (B* + Delta_t) w_t, computed by hand
    want = np.einsum("tdk,tk->td", np.asarray(t.B_star)[None] + np.asarray(t.Delta),
                     np.asarray(t.heads))
    np.testing.assert_allclose(t.betas, want, rtol=tol(1e-12), atol=tol(1e-14))


@pytest.mark.parametrize("kwargs, match", [
    (dict(B_star=np.ones((3, 4)), heads=np.ones((2, 4))), "k"),
    (dict(B_star=2 * np.eye(4)[:, :2], heads=np.ones((2, 2))), "orthonormal"),
    (dict(B_star=np.eye(4)[:, :2], heads=np.ones((2, 3))), "heads"),
    (dict(B_star=np.eye(4)[:, :2], heads=np.eye(2), Sigma_w=np.diag([1.0, 0.0])), "Sigma_w"),
    (dict(B_star=np.eye(4)[:, :2], heads=np.eye(2), Sigma_w=np.diag([1.0, -0.5])), "Sigma_w"),
    (dict(B_star=np.eye(4)[:, :2], heads=np.eye(2), Sigma_w=[[1.0, 0.5], [0.0, 1.0]]),
     "symmetric"),
    (dict(B_star=np.eye(4)[:, :2], heads=np.array([[1.0, np.nan], [0.0, 1.0]])), "heads"),
    (dict(B_star=np.eye(4)[:, :2], heads=np.array([[1.0, 0.0], [2.0, 0.0]])), "span"),
    (dict(B_star=np.eye(4)[:, :2], heads=np.eye(2), Delta=np.zeros((2, 4, 3))), "Delta"),
])
def test_bad_truth_is_rejected_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        rep.RepTruth(**kwargs)
    assert "\n" not in str(e.value)


def test_bad_sampler_and_data_arguments():
    with pytest.raises(ValueError, match="k must be"):
        rep.sample_rep_truth(jax.random.key(0), 3, 4, 8)
    with pytest.raises(ValueError, match="even T"):
        rep.sample_rep_truth(jax.random.key(0), 5, 2, 3)
    with pytest.raises(ValueError, match="Sigma_w"):
        rep.sample_rep_truth(jax.random.key(0), 5, 2, 4, Sigma_w=np.diag([1.0, 0.0]))
    t = _truth(0)
    with pytest.raises(ValueError, match="n must be"):
        rep.sample_tasks(jax.random.key(1), t, 0, 0.1)
    with pytest.raises(ValueError, match="noise_std"):
        rep.population(t, -1.0)
    with pytest.raises(ValueError, match="m must be"):
        theory.frozen_target_risk(t.B_star, t.target_betas[0], 0.1, 3)
    with pytest.raises(ValueError, match="target"):
        rep.population(_truth(0, n_target=0), tasks="target")


# ----------------------------------------------------------------------------- statistics
@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _statistics_gaps(key, d, k, T, n):
    kt, ks, kv = jax.random.split(key, 3)
    t = rep.sample_rep_truth(kt, d, k, T)
    smp = rep.draw_samples(ks, t, n, 0.3)
    stats = linmeta.task_statistics(smp)
    v = jax.random.normal(kv, (T, d), t.B_star.dtype)
    raw = 0.5 * jnp.mean((smp.Y[..., 0] - jnp.einsum("tnd,td->tn", smp.X, v)) ** 2, axis=1)
    pop = rep.population(t, 0.3)
    want_pop = 0.5 * jnp.sum((v - t.betas) ** 2, 1) + 0.5 * 0.3 ** 2
    return (methods.predictor_loss(v, stats), raw, methods.predictor_loss(v, pop), want_pop,
            stats.Syx.shape)


@given(st.integers(0, 10 ** 6))
def test_statistics_are_the_core_quadratic_with_p_1(seed):
    d, k, T, n = 5, 2, 4, 9
    got, raw, got_pop, want_pop, shape = _statistics_gaps(jax.random.key(seed), d, k, T, n)
    assert shape == (T, 1, d)
    np.testing.assert_allclose(got, raw, rtol=tol(1e-11), atol=tol(1e-13))
    np.testing.assert_allclose(got_pop, want_pop, rtol=tol(1e-12))


def test_user_arrays_with_scalar_outputs_and_square_check():
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(2, 7, 3)), rng.normal(size=(2, 7))
    s = linmeta.stats_from_arrays(X, Y)
    assert s.Syx.shape == (2, 1, 3) and s.p == 1
    np.testing.assert_allclose(s.Syx[1, 0], Y[1] @ X[1] / 7, rtol=tol(1e-12))
    with pytest.raises(ValueError, match="source.Syx"):  # base-matrix methods need p = d
        linmeta.standard_retraining(s)
    with pytest.raises(ValueError, match="Y must"):
        linmeta.stats_from_arrays(X, Y[:, :5])
    with pytest.raises(ValueError, match="source.Syx"):
        rep.frozen_rep(linmeta.population(linmeta.sample_truth(jax.random.key(0), 3, 1, 2)), 1,
                       key=jax.random.key(0))


# ----------------------------------------------------------------------------- closed forms
def _gauss_hermite_expectation(fn, d, beta, noise_std):
    """E_x[fn(x)] for x ~ N(0, I_d) by tensor Gauss-Hermite (3 nodes: exact to degree 5 per
    coordinate), the noise integrated out by its two moments."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(3)
    weights = weights / weights.sum()
    total = 0.0
    for idx in itertools.product(range(3), repeat=d):
        x = nodes[list(idx)]
        total = total + np.prod(weights[list(idx)]) * fn(x, beta, noise_std)
    return total


@given(st.sampled_from([3, 4]), st.integers(0, 10 ** 6), st.floats(0.0, 1.5))
def test_moment_identity_against_exact_quadrature(d, seed, noise):
    beta = np.asarray(jax.random.normal(jax.random.key(seed), (d,)), float)

    def integrand(x, b, s):  # E_eps[(x.b + eps)^2] x x^T
        return ((x @ b) ** 2 + s ** 2) * np.outer(x, x)

    want = _gauss_hermite_expectation(integrand, d, beta, noise)
    got = np.asarray(theory.moment_expectation(jnp.asarray(beta, dtype()), noise))
    np.testing.assert_allclose(got, want, rtol=tol(1e-12), atol=tol(1e-12))


def test_moment_identity_hand_built():
    beta = jnp.asarray([1.0, 2.0, 0.0], dtype())  # ||beta||^2 = 5, sigma = 1
    want = 6.0 * np.eye(3) + 2 * np.outer([1, 2, 0], [1, 2, 0])
    np.testing.assert_allclose(theory.moment_expectation(beta, 1.0), want, rtol=tol(1e-15))


def test_pooled_moment_is_the_mean_of_the_task_moments_and_late_rates_hand_built():
    betas = jnp.asarray([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]], dtype())
    want = np.mean([np.asarray(theory.moment_expectation(b, 0.5)) for b in betas], axis=0)
    np.testing.assert_allclose(theory.pooled_moment_expectation(betas, 0.5), want,
                               rtol=tol(1e-15))
    Sigma = jnp.asarray([[0.65, 0.35], [0.35, 0.65]], dtype())  # eigenvalues 0.3 and 1
    assert float(theory.anil_late_rate(0.5, 0.4, Sigma)) == pytest.approx(1 - 0.5 * 0.4 * 0.3,
                                                                          rel=tol(1e-14))
    assert float(theory.fedrep_late_rate(0.5, Sigma)) == pytest.approx(1 - 0.5 * 0.3,
                                                                       rel=tol(1e-14))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _anil_identity(key, d, k, T, alpha):
    """For balanced and for Gaussian heads: ANIL's and first-order ANIL's wrong-subspace steps
    against the closed form, and MAML's w0-gradient by autodiff and in closed form."""
    kt, kb = jax.random.split(key)
    out = []
    for heads in ("balanced", "gaussian"):
        t = rep.sample_rep_truth(kt, d, k, T, heads=heads)
        src = rep.population(t)
        B = jax.random.normal(kb, (d, k), t.B_star.dtype) / math.sqrt(d)
        beta = 0.3
        w0 = jnp.zeros((k,), B.dtype)
        a = methods.anil_step(B, src, alpha, beta, w0)
        f = methods.anil_step(B, src, alpha, beta, w0, first_order=True)
        Pp = theory.projector_complement(t.B_star)
        pred = theory.anil_wrong_subspace_update(B, t.B_star, theory.task_moment(t.betas),
                                                 alpha, beta)
        auto = jax.grad(methods.maml_objective, argnums=1)(B, w0, src, alpha)
        cf = theory.maml_head_init_gradient(B, t.betas, alpha)
        out.append((jnp.max(jnp.abs(Pp @ a - pred)), jnp.max(jnp.abs(Pp @ f - pred)),
                    jnp.max(jnp.abs(a - f)), auto, cf))
    return out


@given(st.integers(0, 10 ** 6), st.floats(0.1, 2.0))
def test_anil_wrong_subspace_update_first_order_and_maml_gradient(seed, alpha):
    d, k, T = 6, 3, 6
    balanced, gaussian = _anil_identity(jax.random.key(seed), d, k, T, alpha)
    for gap_a, gap_f, diff, _, _ in (balanced, gaussian):
        assert float(gap_a) < tol(1e-13, 1e-5) and float(gap_f) < tol(1e-13, 1e-5)
        assert float(diff) > 1e-6  # the two steps differ in the right subspace: not vacuous
    *_, auto, cf = gaussian
    np.testing.assert_allclose(auto, cf, rtol=tol(1e-10, 1e-3), atol=tol(1e-13, 1e-5))
    *_, auto, cf = balanced  # symmetric heads: zero
    assert float(jnp.max(jnp.abs(cf))) < tol(1e-13, 1e-5)
    assert float(jnp.max(jnp.abs(auto))) < tol(1e-13, 1e-5)


def test_closed_forms_outside_their_domains_are_refused():
    t = _truth(0, 5, 2, 4, delta_scale=0.3)          # perturbed tasks: C leaves col(B*)
    C = theory.task_moment(t.betas)
    with pytest.raises(ValueError, match="col\\(B_star\\)"):
        theory.anil_wrong_subspace_update(t.B_star, t.B_star, C, 1.0, 0.1)
    with pytest.raises(ValueError, match="share a 2-dimensional subspace"):
        theory.moments_error_constant(t.betas, 0.1, 2)
    Sigma = jnp.asarray([[1.0, 0.0], [0.0, 0.2]], dtype())
    with pytest.raises(ValueError, match="positive definite"):
        theory.fedrep_late_rate(0.5, jnp.asarray([[1.0, 0.0], [0.0, 0.0]], dtype()))
    with pytest.raises(ValueError, match="eta lambda_max"):
        theory.fedrep_late_rate(2.0, Sigma)
    with pytest.raises(ValueError, match="1/2|0.5"):
        theory.anil_late_rate(1.0, 0.5, Sigma)
    assert float(theory.anil_late_rate(1.0, 0.5, Sigma, first_order=True)) == pytest.approx(0.9)
    # both regimes of FedRep's rate (boundary eta = 2 / 1.2)
    assert float(theory.fedrep_late_rate(1.5, Sigma)) == pytest.approx(0.7, rel=tol(1e-14))
    assert float(theory.fedrep_late_rate(1.8, Sigma)) == pytest.approx(0.8, rel=tol(1e-14))


def _least_norm_penalty(v, w, lam, gamma):
    d = v.shape[0]
    A = np.kron(w[None, :], np.eye(d))
    delta = np.linalg.pinv(A) @ v
    return 0.5 * lam * delta @ delta + 0.5 * gamma * w @ w


@given(st.integers(0, 10 ** 6))
def test_penalty_identity_against_a_numerical_minimisation(seed):
    from scipy.optimize import minimize_scalar

    rng = np.random.default_rng(seed)
    v, direc = rng.normal(size=5), rng.normal(size=3)
    lam, gamma = float(np.exp(rng.normal())), float(np.exp(rng.normal()))
    res = minimize_scalar(lambda lt: _least_norm_penalty(v, np.exp(lt) * direc, lam, gamma),
                          bounds=(-20, 20), method="bounded", options=dict(xatol=1e-12))
    want = float(theory.adaptrep_penalty(jnp.asarray(v, dtype()), lam, gamma))
    assert res.fun == pytest.approx(want, rel=tol(1e-10, 1e-6))
    # hand-built: v = (3, 4), lam = 4, gamma = 1: 2 * 5
    assert float(theory.adaptrep_penalty(jnp.asarray([3.0, 4.0]), 4.0, 1.0)) == pytest.approx(10)


def test_frozen_target_risk_and_scratch_hand_built():
    B = jnp.eye(3, 1, dtype=dtype())
    beta0 = jnp.asarray([1.0, 1.0, 0.0], dtype())  # f = 1
    # f + (sigma^2 + f) k / (m - k - 1) = 1 + 2 * 1 / 3 with sigma = 1, m = 5, k = 1
    assert float(theory.frozen_target_risk(B, beta0, 1.0, 5)) == pytest.approx(1 + 2 / 3)
    assert float(theory.scratch_risk(3, 10, 1.0)) == pytest.approx(3 / 6)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _variance_terms(key, d, k, T):
    kt, kz = jax.random.split(key)
    t = rep.sample_rep_truth(kt, d, k, T)
    beta = t.betas[0]
    b = theory.pca_subspace(t.betas, k)[0][:, 0]
    u = theory.projector_complement(t.B_star)[:, 0]
    u = u / jnp.linalg.norm(u)
    n = 200_000
    Z = jax.random.normal(kz, (n, d + 1), beta.dtype)
    y = Z[:, :d] @ beta + 0.5 * Z[:, d]
    vals = (y ** 2 * (Z[:, :d] @ u) * (Z[:, :d] @ b)) ** 2
    q, c = beta @ beta, beta @ b
    v = 3 * q ** 2 + 12 * q * c ** 2 + 6 * 0.25 * (q + 2 * c ** 2) + 3 * 0.25 ** 2
    return jnp.mean(vals), jnp.std(vals) / math.sqrt(n), v


@given(st.integers(0, 10 ** 6))
def test_moments_constant_variance_term_by_monte_carlo(seed):
    """K's ingredient, each task's E[(y^2 <x,u><x,b>)^2] = v_t(b) (u orthogonal to the tasks),
    against an average over raw samples (4 standard errors)."""
    d, k, T = 5, 2, 4
    mean, se, v = _variance_terms(jax.random.key(seed), d, k, T)
    assert abs(float(mean) - float(v)) < 4 * float(se) + tol(0.0, 1e-2) * float(v)


# ----------------------------------------------------------------------------- linear algebra
@functools.partial(jax.jit, static_argnums=(1,))
def _linear_algebra(key, k):
    dt = jnp.asarray(0.0).dtype
    ka, kr, kb, ks = jax.random.split(key, 4)
    A = jax.random.normal(ka, (3, k + 2, k), dt)
    G = jnp.swapaxes(A, -1, -2) @ A + 0.1 * jnp.eye(k, dtype=dt)
    r = jax.random.normal(kr, (3, k), dt)
    B = jax.random.normal(kb, (6, k), dt)
    Q = methods.orthonormalise(B)
    S = jnp.eye(k + 2, dtype=dt) + A @ jnp.swapaxes(A, -1, -2)
    c = jnp.asarray([0.0, 0.5, 3.0], dt)
    rhs = jax.random.normal(ks, (3, k + 2), dt)
    M = jnp.eye(k + 2, dtype=dt) + c[:, None, None] * S
    return (methods.spd_solve(G, r), jnp.linalg.solve(G, r[..., None])[..., 0], Q,
            metrics.subspace_distance(Q, B), methods._shifted_solve(S, c, rhs),
            jnp.linalg.solve(M, rhs[..., None])[..., 0])


@given(st.integers(0, 10 ** 6))
def test_lapack_free_solves_and_orthonormalisation(seed):
    k = 3
    x, want, Q, dist, u, u_want = _linear_algebra(jax.random.key(seed), k)
    np.testing.assert_allclose(x, want, rtol=tol(1e-10, 1e-3), atol=tol(1e-12, 1e-4))
    np.testing.assert_allclose(Q.T @ Q, np.eye(k), atol=tol(1e-14, 1e-6))
    assert float(dist) < tol(1e-7, 1e-3)
    np.testing.assert_allclose(u, u_want, rtol=tol(1e-9, 1e-3), atol=tol(1e-11, 1e-4))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _sines(key, d, k):
    dt = jnp.asarray(0.0).dtype
    kx, ky = jax.random.split(key)
    X = jax.random.normal(kx, (d, k), dt)
    Y = X + 0.3 * jax.random.normal(ky, (d, k), dt)
    Qx, Qy = jnp.linalg.qr(X)[0], jnp.linalg.qr(Y)[0]
    M = X.T @ X
    M2 = jnp.diag(jnp.asarray([2.0] + [2.0] + [1.0] * (k - 2), dt))  # a tied top eigenvalue
    return (metrics.sin_theta_frobenius_sq(X, Y),
            jnp.sum(jnp.sin(metrics.principal_angles(X, Y)) ** 2), k - jnp.sum((Qx.T @ Qy) ** 2),
            metrics.sin_theta_frobenius_sq(X, 2 * X),
            _linalg.sin_theta_fro2(X, Y), _linalg.sin_theta_max(X, Y),
            metrics.subspace_distance(X, Y), _linalg.lambda_max_psd(jnp.stack([M, M2])),
            jnp.stack([jnp.linalg.eigvalsh(M)[-1], 2.0]))


@given(st.integers(0, 10 ** 6))
def test_sin_theta_frobenius_against_principal_angles(seed):
    got, angles, cancel, same, fro2, smax, smax_core, lmax, lmax_want = _sines(
        jax.random.key(seed), 6, 3)
    np.testing.assert_allclose(got, angles, rtol=tol(1e-10, 1e-4))
    np.testing.assert_allclose(got, cancel, atol=tol(1e-12, 1e-5))
    assert 0 <= float(same) < tol(1e-28, 1e-12)  # same subspace: zero, no cancellation
    # the LAPACK-free versions used inside compiled loops and the protocol
    np.testing.assert_allclose(fro2, got, rtol=tol(1e-12, 1e-4), atol=tol(1e-15, 1e-6))
    np.testing.assert_allclose(smax, smax_core, rtol=tol(1e-10, 1e-3), atol=tol(1e-14, 1e-5))
    np.testing.assert_allclose(lmax, lmax_want, rtol=tol(1e-12, 1e-5))
