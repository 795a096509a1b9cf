"""Closed forms of the shared-representation model (docs/representation.md; claims R1-R7).

This module never imports a solver, so checking a solver against it stays a check (it uses the
LAPACK-free linear algebra of :mod:`linmeta.representation._linalg` and, for the independent
eigendecomposition of R1 and R4, ``jnp.linalg.eigh``). Notation:
``C = (1/T) sum_t beta_t beta_t^T`` (:func:`task_moment`); in the exactly shared model
``C = B* Sigma_hat B*^T`` with ``Sigma_hat`` the heads' second moment.

- R1 FrozenRep = PCA: the population frozen objective ``(1/T) sum_t min_w 1/2 ||beta_t - B w||^2``
  over orthonormal B is ``1/2 tr((I - B B^T) C)``, minimised by the top-k eigenvectors of C
  (:func:`pca_subspace`).
- R2 frozen target floor: head-only least squares on m target samples with an orthonormal
  ``B_hat`` has ``E||B_hat a_hat - beta_0||^2 = f + (sigma^2 + f) k / (m - k - 1)``,
  ``f = ||(I - B_hat B_hat^T) beta_0||^2`` (:func:`frozen_target_risk`); from scratch,
  ``E||beta_hat - beta_0||^2 = sigma^2 d / (m - d - 1)`` (:func:`scratch_risk`).
- R3 ANIL (population, head step alpha from w0 = 0, outer step beta): the wrong-subspace part obeys
  ``P_perp B+ = P_perp B (I - alpha^2 beta B^T C B)`` for ANIL and first-order ANIL alike
  (:func:`anil_wrong_subspace_update`); late rate ``1 - alpha beta lambda_min(Sigma_hat)``
  (:func:`anil_late_rate`) with ``alpha B^T B -> I``. One-step MAML's gradient in the head
  initialisation at w0 = 0 (:func:`maml_head_init_gradient`) vanishes for symmetric heads.
- R4 moments: ``E[y^2 x x^T] = (sigma^2 + ||beta||^2) I + 2 beta beta^T``
  (:func:`moment_expectation`); ``n T E||sin Theta||_F^2 / (d - k) -> K``
  (:func:`moments_error_constant`).
- R5 FedRep late rate ``1 - eta lambda_min(Sigma_hat)`` (:func:`fedrep_late_rate`).
- R6 AdaptRep: ``min {lambda/2 ||Delta||_F^2 + gamma/2 ||w||^2 : Delta w = v} = sqrt(lambda gamma)
  ||v||`` (:func:`adaptrep_penalty`); ``lambda (F_frozen(B) - F_adapt(B)) -> 1/2 mean_t ||g_t||^2
  ||w_t||^2`` (:func:`adaptrep_gap_limit`).
"""
from __future__ import annotations

import jax.numpy as jnp

from linmeta.core._validate import check_array, check_int, check_scalar
from ._linalg import orthonormalise

__all__ = ["task_moment", "pca_subspace", "projector_complement", "frozen_floor",
           "frozen_target_risk", "scratch_risk", "anil_wrong_subspace_update", "anil_late_rate",
           "fedrep_late_rate", "maml_head_init_gradient", "moment_expectation",
           "pooled_moment_expectation", "moments_error_constant", "adaptrep_penalty",
           "frozen_heads", "adaptrep_gap_limit"]


def _T(x):
    return jnp.swapaxes(x, -1, -2)


def _betas(betas, name="betas"):
    betas = check_array(name, betas)
    if betas.ndim != 2:
        raise ValueError(f"{name} must have shape (T, d), got {tuple(betas.shape)}")
    return betas


def _rep(B, name="B"):
    B = check_array(name, B)
    if B.ndim != 2 or B.shape[1] > B.shape[0]:
        raise ValueError(f"{name} must have shape (d, k) with k <= d, got {tuple(B.shape)}")
    return B


def task_moment(betas):
    """``C = (1/T) sum_t beta_t beta_t^T`` (d, d)."""
    betas = _betas(betas)
    return betas.T @ betas / betas.shape[0]


def pca_subspace(betas, k):
    """Top-k eigenvectors (d, k) of ``sum_t beta_t beta_t^T`` (FrozenRep's population solution,
    claim R1) and the eigenvalues of C in decreasing order (the gap ``lambda_k - lambda_{k+1}``
    decides how well the subspace is determined)."""
    betas = _betas(betas)
    k = check_int("k", k, 1, betas.shape[1], hi_label="d")
    lam, V = jnp.linalg.eigh(task_moment(betas))
    return V[:, ::-1][:, :k], lam[::-1]


def projector_complement(B):
    """``I - Q Q^T`` with Q an orthonormal basis of the columns of B (Gram-Schmidt: no LAPACK
    call, so the closed forms can sit in compiled loops)."""
    B = _rep(B)
    Q = orthonormalise(B)
    return jnp.eye(B.shape[0], dtype=B.dtype) - Q @ Q.T


def frozen_floor(B, beta0):
    """``||(I - P_B) beta_0||^2``: the part of the target no predictor in col(B) can reach."""
    beta0 = check_array("beta0", beta0)
    r = beta0 @ projector_complement(B)
    return jnp.sum(r * r, axis=-1)


def frozen_target_risk(B, beta0, noise_std, m):
    """``E||B a_hat - beta_0||^2`` of head-only least squares on m target samples (claim R2):
    ``f + (sigma^2 + f) k / (m - k - 1)`` with ``f`` = :func:`frozen_floor`; needs ``m > k + 1``.

    Derivation: with orthonormal B, ``z = B^T x ~ N(0, I_k)`` and ``(I - P_B) x`` are independent,
    so ``y = <z, B^T beta_0> + e`` with ``e = <x, (I - P_B) beta_0> + eps ~ N(0, sigma^2 + f)``
    independent of z: ordinary least squares in k dimensions, whose error is
    ``(sigma^2 + f) tr E[(Z^T Z)^{-1}] = (sigma^2 + f) k / (m - k - 1)`` (inverse Wishart mean)."""
    B = _rep(B)
    k = B.shape[1]
    m = check_int("m", m, k + 2)
    check_scalar("noise_std", noise_std, 0.0)
    f = frozen_floor(B, beta0)
    return f + (noise_std ** 2 + f) * k / (m - k - 1)


def scratch_risk(d, m, noise_std):
    """``E||beta_hat - beta_0||^2 = sigma^2 d / (m - d - 1)`` of least squares on m target samples
    in d dimensions (learning the target from scratch); needs ``m > d + 1``."""
    d = check_int("d", d, 1)
    m = check_int("m", m, d + 2)
    check_scalar("noise_std", noise_std, 0.0)
    return noise_std ** 2 * d / (m - d - 1)


def anil_wrong_subspace_update(B, B_star, C, alpha, beta):
    """``(I - P*) B+`` after one population step of ANIL or first-order ANIL from w0 = 0 (claim
    R3), ``P* = B* B*^T``, when C lives in col(B*): ``(I - P*) B (I - alpha^2 beta B^T C B)``.
    ``B`` may be a stack (..., d, k).

    ANIL's gradient is ``alpha (P C + C P) B`` with ``P = alpha B B^T - I``, first-order ANIL's is
    ``alpha P C B``; ``(I - P*) C = 0`` removes the second term of ANIL's, and
    ``(I - P*) P C B = alpha (I - P*) B B^T C B`` for both."""
    B = check_array("B", B)
    if B.ndim < 2 or B.shape[-1] > B.shape[-2]:
        raise ValueError(f"B must have shape (..., d, k) with k <= d, got {tuple(B.shape)}")
    Pp = projector_complement(_rep(B_star, "B_star"))
    d, k = B.shape[-2:]
    C = check_array("C", C, shape=(d, d))
    return Pp @ B @ (jnp.eye(k, dtype=B.dtype) - alpha ** 2 * beta * _T(B) @ C @ B)


def _lambda_min(Sigma):
    Sigma = check_array("Sigma", Sigma)
    if Sigma.ndim != 2 or Sigma.shape[0] != Sigma.shape[1]:
        raise ValueError(f"Sigma must be square (k, k), got {tuple(Sigma.shape)}")
    return jnp.linalg.eigvalsh((Sigma + Sigma.T) / 2)[0]


def anil_late_rate(alpha, beta, Sigma):
    """``1 - alpha beta lambda_min(Sigma)``: ANIL's late contraction of the wrong-subspace part."""
    check_scalar("alpha", alpha, 0.0, lo_open=True)
    check_scalar("beta", beta, 0.0, lo_open=True)
    return 1 - alpha * beta * _lambda_min(Sigma)


def fedrep_late_rate(eta, Sigma):
    """``1 - eta lambda_min(Sigma)``: FedRep's late contraction (of the largest principal
    angle)."""
    check_scalar("eta", eta, 0.0, lo_open=True)
    return 1 - eta * _lambda_min(Sigma)


def maml_head_init_gradient(B, betas, alpha):
    """Gradient in the head initialisation w0, at w0 = 0, of the population one-step MAML objective
    ``F(B, w0) = (1/T) sum_t 1/2 ||B'_t w'_t - beta_t||^2`` (inner step alpha on B and w):

        (1/T) sum_t [ (I - alpha B^T B) B^T r_t + alpha <beta_t, r_t> w'_t ],
        r_t = (alpha B B^T - I) beta_t,  w'_t = alpha B^T beta_t.

    The first term is linear in beta_t, the second cubic: both average to zero over a symmetric
    head set (``+-w`` pairs), so w0 stays at 0 and MAML's B-update is ANIL's."""
    B = _rep(B)
    betas = _betas(betas)
    k = B.shape[1]
    r = betas @ (alpha * B @ B.T - jnp.eye(B.shape[0], dtype=B.dtype))  # (T, d), symmetric
    w = alpha * betas @ B  # (T, k)
    first = r @ B @ (jnp.eye(k, dtype=B.dtype) - alpha * B.T @ B)
    second = alpha * jnp.sum(betas * r, axis=1)[:, None] * w
    return jnp.mean(first + second, axis=0)


def moment_expectation(beta, noise_std):
    """``E[y^2 x x^T] = (sigma^2 + ||beta||^2) I + 2 beta beta^T`` for ``y = <x, beta> + eps``,
    ``x ~ N(0, I)`` (Isserlis: ``E[x_i x_j x_k x_l]`` = sum of the three pairings)."""
    beta = check_array("beta", beta, ndim=1)
    check_scalar("noise_std", noise_std, 0.0)
    d = beta.shape[0]
    return (noise_std ** 2 + beta @ beta) * jnp.eye(d, dtype=beta.dtype) + 2 * jnp.outer(beta,
                                                                                         beta)


def pooled_moment_expectation(betas, noise_std):
    """Mean over tasks of :func:`moment_expectation`:
    ``(sigma^2 + mean ||beta_t||^2) I + 2 C``."""
    betas = _betas(betas)
    check_scalar("noise_std", noise_std, 0.0)
    d = betas.shape[1]
    q = jnp.mean(jnp.sum(betas * betas, axis=1))
    return (noise_std ** 2 + q) * jnp.eye(d, dtype=betas.dtype) + 2 * task_moment(betas)


def moments_error_constant(betas, noise_std, k):
    """``K = lim n T E||sin Theta||_F^2 / (d - k)`` for the top-k eigenspace of the moment matrix,
    tasks sharing a k-dimensional subspace exactly (claim R4; derivation in
    docs/representation.md):

        K = sum_{i<=k} mean_t v_t(b_i) / (4 lambda_i^2),
        v_t(b) = 3 q_t^2 + 12 q_t c_t^2 + 6 sigma^2 (q_t + 2 c_t^2) + 3 sigma^4,

    with ``(lambda_i, b_i)`` the top-k eigenpairs of C, ``q_t = ||beta_t||^2``,
    ``c_t = <beta_t, b_i>``."""
    betas = _betas(betas)
    check_scalar("noise_std", noise_std, 0.0)
    k = check_int("k", k, 1, betas.shape[1] - 1, hi_label="d - 1")
    V, lam = pca_subspace(betas, k)
    q = jnp.sum(betas * betas, axis=1)[:, None]  # (T, 1)
    c = betas @ V  # (T, k)
    s2 = noise_std ** 2
    v = 3 * q ** 2 + 12 * q * c ** 2 + 6 * s2 * (q + 2 * c ** 2) + 3 * s2 ** 2
    return jnp.sum(jnp.mean(v, axis=0) / (4 * lam[:k] ** 2))


def adaptrep_penalty(v, lam, gamma):
    """``min {lambda/2 ||Delta||_F^2 + gamma/2 ||w||^2 : Delta w = v} = sqrt(lambda gamma) ||v||``
    (claim R6): ``||v|| <= ||Delta||_F ||w||`` and ``lambda a^2 / 2 + gamma b^2 / 2 >=
    sqrt(lambda gamma) a b``; equality at ``Delta = v w^T / ||w||^2``,
    ``||w||^2 = sqrt(lambda / gamma) ||v||``."""
    v = check_array("v", v)
    check_scalar("lam", lam, 0.0)
    check_scalar("gamma", gamma, 0.0)
    return jnp.sqrt(lam * gamma) * jnp.linalg.norm(v, axis=-1)


def frozen_heads(B, betas, gamma=0.0):
    """Population FrozenRep heads ``w_t = (B^T B + gamma I)^{-1} B^T beta_t`` (T, k)."""
    B = _rep(B)
    betas = _betas(betas)
    check_scalar("gamma", gamma, 0.0)
    k = B.shape[1]
    G = B.T @ B + gamma * jnp.eye(k, dtype=B.dtype)
    return jnp.linalg.solve(G, B.T @ betas.T).T


def adaptrep_gap_limit(B, betas, gamma=0.0):
    """``lim_{lambda -> inf} lambda (F_frozen(B) - F_adapt(B)) = 1/2 mean_t ||g_t||^2 ||w_t||^2``
    in the population, ``w_t`` = :func:`frozen_heads`, ``g_t = B w_t - beta_t`` (claim R6).

    At Delta = 0 the gradient of the inner objective in Delta is ``g_t w_t^T`` (envelope theorem);
    minimising ``<g w^T, Delta> + lambda/2 ||Delta||^2`` gives ``Delta = -g w^T / lambda`` and the
    decrease ``||g||^2 ||w||^2 / (2 lambda)``, exact to O(1/lambda^2)."""
    w = frozen_heads(B, betas, gamma)
    g = w @ _rep(B).T - _betas(betas)
    return 0.5 * jnp.mean(jnp.sum(g * g, axis=1) * jnp.sum(w * w, axis=1))
