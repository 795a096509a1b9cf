"""Closed forms of the shared-representation model (docs/representation.md; claims R1-R7).

This module never imports a solver, so checking a solver against it stays a check (it uses the
LAPACK-free linear algebra of :mod:`linmeta.families.representation._linalg` and, for the independent
eigendecomposition of R1 and R4, ``jnp.linalg.eigh``). Notation:
``C = (1/T) sum_t beta_t beta_t^T`` (:func:`task_moment`); in the exactly shared model
``C = B* Sigma_hat B*^T`` with ``Sigma_hat`` the heads' second moment.

- R1 FrozenRep = PCA: the population frozen objective ``(1/T) sum_t min_w 1/2 ||beta_t - B w||^2``
  over orthonormal B is ``1/2 tr((I - B B^T) C)``, minimised by the top-k eigenvectors of C
  (:func:`pca_subspace`; unique when ``lambda_k(C) > lambda_{k+1}(C)``). The alternating iteration
  (exact heads, a step ``eta`` on B, QR) contracts near it at
  ``max(|1 - eta (lambda_k - lambda_{k+1})|, |1 - eta (lambda_1 - lambda_d)|)``
  (:func:`alternating_late_rate`).
- R2 frozen target floor: head-only least squares on m target samples with an orthonormal
  ``B_hat`` has ``E||B_hat a_hat - beta_0||^2 = f + (sigma^2 + f) k / (m - k - 1)``,
  ``f = ||(I - B_hat B_hat^T) beta_0||^2`` (:func:`frozen_target_risk`); from scratch,
  ``E||beta_hat - beta_0||^2 = sigma^2 d / (m - d - 1)`` (:func:`scratch_risk`).
- R3 ANIL (population, head step alpha from w0 = 0, outer step beta): the wrong-subspace part obeys
  ``P_perp B+ = P_perp B (I - alpha^2 beta B^T C B)`` for ANIL and first-order ANIL alike
  (:func:`anil_wrong_subspace_update`); late rate ``1 - alpha beta lambda_min(Sigma_hat)``
  (:func:`anil_late_rate`) with ``alpha B^T B -> I``, which is stable for
  ``alpha beta lambda_max(Sigma_hat) < 1/2`` (ANIL) and ``< 1`` (first-order ANIL): near it the
  scale part ``D = alpha S S^T - I`` moves by ``D+ = D - c alpha beta (D Sigma + Sigma D)``, c = 2
  (ANIL) or 1 (first order) (:func:`anil_scale_update`). One-step MAML's gradient in the head
  initialisation at w0 = 0 (:func:`maml_head_init_gradient`) vanishes for symmetric heads.
- R4 moments: ``E[y^2 x x^T] = (sigma^2 + ||beta||^2) I + 2 beta beta^T``
  (:func:`moment_expectation`); ``n T E||sin Theta||_F^2 / (d - k) -> K``
  (:func:`moments_error_constant`).
- R5 FedRep late rate ``max(|1 - eta lambda_min(Sigma_hat)|, |1 - eta lambda_max(Sigma_hat)|)``:
  ``1 - eta lambda_min`` while ``eta (lambda_min + lambda_max) <= 2`` (:func:`fedrep_late_rate`).
- R6 AdaptRep: ``min {lambda/2 ||Delta||_F^2 + gamma/2 ||w||^2 : Delta w = v} = sqrt(lambda gamma)
  ||v||`` (:func:`adaptrep_penalty`, the head's scale free); ``lambda (F_frozen(B) - F_adapt(B)) ->
  1/2 mean_t ||g_t||^2 ||w_t||^2`` (:func:`adaptrep_gap_limit`); with the head pinned by the task's
  shared signal, a shift v out of col(B) costs ``lambda ||v||^2 / (2 (||w||^2 + lambda))`` to
  leading order (:func:`adaptrep_shift_cost`): quadratic in the shift.

Domains: each function's docstring states the conditions under which its value holds. Where the
arguments are concrete (not traced by ``jit``/``vmap``) a call outside them raises ``ValueError``
naming the condition; a traced call returns the formula's value.
"""
from __future__ import annotations

import jax.numpy as jnp

import numpy as np

from linmeta.core._validate import check_array, check_int, check_scalar, is_concrete
from ._linalg import orthonormalise

__all__ = ["task_moment", "pca_subspace", "projector_complement", "frozen_floor",
           "frozen_target_risk", "scratch_risk", "anil_wrong_subspace_update", "anil_late_rate",
           "anil_scale_update", "alternating_late_rate", "fedrep_late_rate",
           "maml_head_init_gradient", "moment_expectation", "pooled_moment_expectation",
           "moments_error_constant", "adaptrep_penalty", "frozen_heads", "adaptrep_gap_limit",
           "adaptrep_shift_cost"]


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
    decides how well the subspace is determined).

    Domain: any betas, ``1 <= k <= d``. The minimiser is unique iff ``lambda_k > lambda_{k+1}``;
    with a tie the returned eigenvectors are one minimiser among several (the objective value
    ``1/2 sum_{i>k} lambda_i`` is the same for all of them)."""
    betas = _betas(betas)
    k = check_int("k", k, 1, betas.shape[1], hi_label="d")
    lam, V = jnp.linalg.eigh(task_moment(betas))
    return V[:, ::-1][:, :k], lam[::-1]


def projector_complement(B):
    """``I - Q Q^T`` with Q an orthonormal basis of the columns of B (Gram-Schmidt: no LAPACK
    call, so the closed forms can sit in compiled loops). Domain: B of full column rank."""
    B = _rep(B)
    Q = orthonormalise(B)
    return jnp.eye(B.shape[0], dtype=B.dtype) - Q @ Q.T


def frozen_floor(B, beta0):
    """``||(I - P_B) beta_0||^2``: the part of the target no predictor in col(B) can reach
    (B of full column rank)."""
    beta0 = check_array("beta0", beta0)
    r = beta0 @ projector_complement(B)
    return jnp.sum(r * r, axis=-1)


def frozen_target_risk(B, beta0, noise_std, m):
    """``E||B a_hat - beta_0||^2`` of head-only least squares on m target samples (claim R2):
    ``f + (sigma^2 + f) k / (m - k - 1)`` with ``f`` = :func:`frozen_floor`; needs ``m > k + 1``.

    Derivation: with orthonormal B, ``z = B^T x ~ N(0, I_k)`` and ``(I - P_B) x`` are independent,
    so ``y = <z, B^T beta_0> + e`` with ``e = <x, (I - P_B) beta_0> + eps ~ N(0, sigma^2 + f)``
    independent of z: ordinary least squares in k dimensions, whose error is
    ``(sigma^2 + f) tr E[(Z^T Z)^{-1}] = (sigma^2 + f) k / (m - k - 1)`` (inverse Wishart mean).
    Domain: ``x ~ N(0, I_d)``, Gaussian noise, ``m > k + 1`` (else ``ValueError``: the inverse
    Wishart mean is infinite), B of full column rank (the fitted predictor, and so the risk,
    depends only on col(B))."""
    B = _rep(B)
    k = B.shape[1]
    m = check_int("m", m, k + 2)
    check_scalar("noise_std", noise_std, 0.0)
    f = frozen_floor(B, beta0)
    return f + (noise_std ** 2 + f) * k / (m - k - 1)


def scratch_risk(d, m, noise_std):
    """``E||beta_hat - beta_0||^2 = sigma^2 d / (m - d - 1)`` of least squares on m target samples
    in d dimensions (learning the target from scratch); ``x ~ N(0, I_d)``, needs ``m > d + 1``
    (else ``ValueError``)."""
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
    ``(I - P*) P C B = alpha (I - P*) B B^T C B`` for both. Domain: any B, alpha, beta (one exact
    step), C in col(B*) (the exactly shared model); eagerly, ``ValueError`` when
    ``||(I - P*) C||_F`` exceeds rounding (1000 eps ||C||_F)."""
    B = check_array("B", B)
    if B.ndim < 2 or B.shape[-1] > B.shape[-2]:
        raise ValueError(f"B must have shape (..., d, k) with k <= d, got {tuple(B.shape)}")
    Pp = projector_complement(_rep(B_star, "B_star"))
    d, k = B.shape[-2:]
    C = check_array("C", C, shape=(d, d))
    off, size = jnp.linalg.norm(Pp @ C), jnp.linalg.norm(C)
    _require(off <= 1e3 * jnp.finfo(C.dtype).eps * size,
             lambda: "C must lie in col(B_star) (the exactly shared model): ||(I - P*) C||_F = "
             f"{float(np.asarray(off)):.3g} against ||C||_F = {float(np.asarray(size)):.3g}")
    return Pp @ B @ (jnp.eye(k, dtype=B.dtype) - alpha ** 2 * beta * _T(B) @ C @ B)


def _sym(Sigma, name="Sigma"):
    Sigma = check_array(name, Sigma)
    if Sigma.ndim != 2 or Sigma.shape[0] != Sigma.shape[1]:
        raise ValueError(f"{name} must be square (k, k), got {tuple(Sigma.shape)}")
    return (Sigma + Sigma.T) / 2


def _extreme_eigenvalues(Sigma):
    """``(lambda_min, lambda_max)`` of the symmetric part of Sigma; eagerly, Sigma must be
    positive definite (the late rates below need every head direction used)."""
    lam = jnp.linalg.eigvalsh(_sym(Sigma))
    if is_concrete(lam) and not float(np.asarray(lam)[0]) > 0:
        raise ValueError(f"Sigma must be positive definite (lambda_min(Sigma) > 0), got "
                         f"lambda_min = {float(np.asarray(lam)[0]):.3g}: a direction no head "
                         "uses is never learned")
    return lam[0], lam[-1]


def _require(condition, message):
    """Raise ``ValueError(message())`` when ``condition`` is concrete and false (traced: no
    check)."""
    if is_concrete(condition) and not bool(np.asarray(condition)):
        raise ValueError(message())


def anil_late_rate(alpha, beta, Sigma, first_order: bool = False):
    """``1 - alpha beta lambda_min(Sigma)``: the late contraction (per step) of the largest
    principal angle for ANIL, or first-order ANIL, in the population from w0 = 0 (claim R3).

    Near the fixed point ``alpha B^T B = I`` the tangents of the principal angles move by
    ``X+ = X (I - alpha beta Sigma)`` (docs/representation.md#r3), factors
    ``1 - alpha beta lambda_i``. Domain: ``Sigma`` positive definite and that fixed point stable,
    which needs ``alpha beta lambda_max(Sigma) < 1/2`` for ANIL and ``< 1`` for first-order ANIL
    (the scale part contracts by ``1 - c alpha beta (lambda_i + lambda_j)``, c = 2 or 1:
    :func:`anil_scale_update`). Inside it every factor lies in (0, 1) and the slowest is the one
    returned; outside it (eagerly) ``ValueError``."""
    check_scalar("alpha", alpha, 0.0, lo_open=True)
    check_scalar("beta", beta, 0.0, lo_open=True)
    lo, hi = _extreme_eigenvalues(Sigma)
    bound, name = (1.0, "first-order ANIL") if first_order else (0.5, "ANIL")
    _require(alpha * beta * hi < bound,
             lambda: f"{name}'s fixed point alpha B^T B = I is stable only for alpha beta "
             f"lambda_max(Sigma) < {bound:g}; got {float(np.asarray(alpha * beta * hi)):.3g}")
    return 1 - alpha * beta * lo


def anil_scale_update(D, alpha, beta, Sigma, first_order: bool = False):
    """The scale part ``D = alpha S S^T - I`` (S = B*^T B, no wrong-subspace part) after one
    population step of ANIL (``c = 2``) or first-order ANIL (``c = 1``) from w0 = 0, to first order
    in D: ``D - c alpha beta (D Sigma + Sigma D)``.

    ANIL's step moves S by ``-alpha beta (D Sigma + Sigma D) S``, first-order ANIL's by
    ``-alpha beta D Sigma S``; with ``alpha S S^T = I + D`` and D small the products give the
    formula (docs/representation.md#r3). The mode ``D_ij`` (in Sigma's eigenbasis) has the
    factor ``1 - c alpha beta (lambda_i + lambda_j)``: stable for every mode iff
    ``c alpha beta lambda_max < 1``. Valid for any step sizes (it is the linearisation)."""
    check_scalar("alpha", alpha, 0.0, lo_open=True)
    check_scalar("beta", beta, 0.0, lo_open=True)
    Sigma = _sym(Sigma)
    D = check_array("D", D, shape=Sigma.shape)
    c = 1.0 if first_order else 2.0
    return D - c * alpha * beta * (D @ Sigma + Sigma @ D)


def alternating_late_rate(eta, eigenvalues, k):
    """The late contraction (per step) of the largest principal angle between the alternating
    iteration's B (exact heads, ``B + eta (I - B B^T) C B``, QR: FrozenRep and FedRep in the
    population) and the top-k eigenspace of C, given C's eigenvalues (any order, d of them):

        max(|1 - eta (lambda_k - lambda_{k+1})|, |1 - eta (lambda_1 - lambda_d)|).

    Near the top-k eigenspace the tangent X (d-k x k, in C's eigenbasis) moves by
    ``X_ji -> (1 - eta (lambda_i - lambda_j)) X_ji``, i <= k < j; the factors lie between the two
    above, and the slowest is ``1 - eta (lambda_k - lambda_{k+1})`` iff
    ``eta (lambda_k - lambda_{k+1} + lambda_1 - lambda_d) <= 2``. Domain: ``1 <= k < d``, a unique
    top-k eigenspace (``lambda_k > lambda_{k+1}``) and a contracting step
    (``eta (lambda_1 - lambda_d) < 2``); outside it (eagerly) ``ValueError``."""
    check_scalar("eta", eta, 0.0, lo_open=True)
    lam = check_array("eigenvalues", eigenvalues, ndim=1)
    d = lam.shape[0]
    k = check_int("k", k, 1, d - 1, hi_label="d - 1")
    lam = jnp.sort(lam)[::-1]
    gap, width = lam[k - 1] - lam[k], lam[0] - lam[-1]
    _require(gap > 0, lambda: f"the top-{k} eigenspace must be unique (lambda_k > "
             f"lambda_(k+1)); got lambda_k - lambda_(k+1) = {float(np.asarray(gap)):.3g}")
    _require(eta * width < 2, lambda: "the iteration contracts only for eta (lambda_1 - "
             f"lambda_d) < 2; got {float(np.asarray(eta * width)):.3g}")
    return jnp.maximum(jnp.abs(1 - eta * gap), jnp.abs(1 - eta * width))


def fedrep_late_rate(eta, Sigma):
    """FedRep's late contraction (per step) of the largest principal angle in the population
    (claim R5): ``max(|1 - eta lambda_min(Sigma)|, |1 - eta lambda_max(Sigma)|)``.

    It is :func:`alternating_late_rate` for ``C = B* Sigma B*^T`` (eigenvalues those of Sigma and
    zeros): the tangent of the angles moves by ``X+ = X (I - eta Sigma)``. The rate is
    ``1 - eta lambda_min`` while ``eta (lambda_min + lambda_max) <= 2`` and
    ``eta lambda_max - 1`` beyond. Domain: Sigma positive definite and ``eta lambda_max < 2``
    (else B* does not attract: eagerly ``ValueError``)."""
    check_scalar("eta", eta, 0.0, lo_open=True)
    lo, hi = _extreme_eigenvalues(Sigma)
    _require(eta * hi < 2, lambda: "FedRep contracts to B* only for eta lambda_max(Sigma) < 2; "
             f"got {float(np.asarray(eta * hi)):.3g}")
    return jnp.maximum(jnp.abs(1 - eta * lo), jnp.abs(1 - eta * hi))


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
    ``x ~ N(0, I)`` (Isserlis: ``E[x_i x_j x_k x_l]`` = sum of the three pairings). Domain:
    Gaussian x and noise independent of x (exact for any beta, sigma >= 0)."""
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
    ``c_t = <beta_t, b_i>``. Domain: Gaussian x, tasks sharing a k-dimensional subspace exactly
    (C of rank k: ``lambda_k > 0 = lambda_{k+1}``; the first-order perturbation argument needs the
    eigengaps ``2 lambda_i`` and directions u orthogonal to every beta_t); eagerly, ``ValueError``
    when ``lambda_k`` is not above rounding or ``lambda_{k+1}`` is (1000 d eps lambda_1). It is the
    limit as nT -> infinity, not a finite-sample value."""
    betas = _betas(betas)
    check_scalar("noise_std", noise_std, 0.0)
    k = check_int("k", k, 1, betas.shape[1] - 1, hi_label="d - 1")
    V, lam = pca_subspace(betas, k)
    floor = 1e3 * betas.shape[1] * jnp.finfo(betas.dtype).eps * jnp.abs(lam[0])
    _require((lam[k - 1] > floor) & (jnp.abs(lam[k]) <= floor),
             lambda: f"the tasks must share a {k}-dimensional subspace exactly (C of rank {k}); "
             f"lambda_k = {float(np.asarray(lam[k - 1])):.3g}, lambda_(k+1) = "
             f"{float(np.asarray(lam[k])):.3g}")
    q = jnp.sum(betas * betas, axis=1)[:, None]  # (T, 1)
    c = betas @ V  # (T, k)
    s2 = noise_std ** 2
    v = 3 * q ** 2 + 12 * q * c ** 2 + 6 * s2 * (q + 2 * c ** 2) + 3 * s2 ** 2
    return jnp.sum(jnp.mean(v, axis=0) / (4 * lam[:k] ** 2))


def adaptrep_penalty(v, lam, gamma):
    """``min {lambda/2 ||Delta||_F^2 + gamma/2 ||w||^2 : Delta w = v} = sqrt(lambda gamma) ||v||``
    (claim R6; any lambda, gamma >= 0 and v, the head's scale free): ``||v|| <= ||Delta||_F ||w||``
    and ``lambda a^2 / 2 + gamma b^2 / 2 >= sqrt(lambda gamma) a b``; equality at ``Delta = v w^T / ||w||^2``,
    ``||w||^2 = sqrt(lambda / gamma) ||v||``."""
    v = check_array("v", v)
    check_scalar("lam", lam, 0.0)
    check_scalar("gamma", gamma, 0.0)
    return jnp.sqrt(lam * gamma) * jnp.linalg.norm(v, axis=-1)


def frozen_heads(B, betas, gamma=0.0):
    """Population FrozenRep heads ``w_t = (B^T B + gamma I)^{-1} B^T beta_t`` (T, k); needs
    ``B^T B + gamma I`` invertible (B of full column rank, or gamma > 0)."""
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
    decrease ``||g||^2 ||w||^2 / (2 lambda)``, exact to O(1/lambda^2). Domain: any B with
    :func:`frozen_heads` defined; it is a limit (lambda -> infinity), not the gap at a finite
    lambda."""
    w = frozen_heads(B, betas, gamma)
    g = w @ _rep(B).T - _betas(betas)
    return 0.5 * jnp.mean(jnp.sum(g * g, axis=1) * jnp.sum(w * w, axis=1))


def adaptrep_shift_cost(v, w, lam):
    """Leading-order cost in AdaptRep's inner objective of a shift v of a task's parameter out of
    the representation (``beta = B w* + v``, v orthogonal to col(B)), the task's fitted head w held:
    ``lam ||v||^2 / (2 (||w||^2 + lam))``.

    With the head w held, the adapter's product ``u = Delta w`` costs at least
    ``lam ||u||^2 / (2 ||w||^2)`` (least-norm Delta = u w^T / ||w||^2); minimising
    ``1/2 ||v - u||^2 + lam ||u||^2 / (2 ||w||^2)`` over u gives ``u = v ||w||^2 / (||w||^2 + lam)``
    and the value above. The head's own change enters at the next order (envelope theorem), so
    this is the cost to order ``||v||^2``; it is quadratic in the shift, and small on tasks whose
    head is large against lam. (The scale-free identity :func:`adaptrep_penalty`, linear in
    ``||v||``, needs the head's scale to be free.) Valid for lam > 0 and any w."""
    v = check_array("v", v)
    w = check_array("w", w)
    check_scalar("lam", lam, 0.0, lo_open=True)
    w2 = jnp.sum(w * w, axis=-1)
    return 0.5 * lam * jnp.sum(v * v, axis=-1) / (w2 + lam)

