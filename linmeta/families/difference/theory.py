"""Closed forms of the difference family (docs/difference.md; claims D1-D3). Imports no solver.

Notation: the learned (or true) difference space ``L = span{B_1..B_q}`` of d x d matrices with the
Frobenius inner product; ``P_L`` its orthogonal projector, ``P_perp = I - P_L``.

- :func:`identifiability` (D1): what a zero-loss population fit of ``A + U diag(s_t) V^T``
  determines, from (d, r, T). With ``U*, V*`` of full column rank r <= d and generic coefficients
  (no two directions' centred coefficient vectors collinear): ``T >= 3`` (``T >= 2`` for r = 1)
  -> the rank-one directions ``u*_i v*_i^T`` up to order and scale, hence ``L*``; the base
  modulo ``L*`` (r numbers free); the coefficients up to one common shift. ``T = 2``, r >= 2 ->
  only ``col(U*)`` and ``col(V*)``; the base modulo ``{U* X V*^T}`` (r^2 numbers). ``T = 1`` ->
  nothing (the bases that fit, ``rank(M*_1 - A) <= r``, form a set of dimension ``r (2d - r)``).
  The principal-component baseline (the span of the centred task matrices) recovers
  ``L*`` only when ``T - 1 >= r``. Core variant (``U* S_t V*^T``): ``T >= 2`` -> the spans and
  ``L* = {U* S V*^T}``; the principal components need ``T - 1 >= r^2``.
- :func:`base_gap`: ``||P_perp*(A - A*)||_F``, the identified part of a base error.
- :func:`coefficient_risk_orthonormal` (D2): coefficient-only least squares on n samples with the
  true space ``L*`` of orthonormal ``U*, V*``: ``E||M_hat - M*||_F^2 = sigma^2 r / (n - 2)``,
  exact for n > 2.
- :func:`coefficient_risk_second_order` (D2): any ``U*, V*`` (full column rank):
  ``sigma^2 (r/n + c_2/n^2) + O(n^-3)`` with ``c_2`` from Isserlis' theorem
  (:func:`second_order_constant`).
- :func:`full_risk`: least squares of all d^2 entries, ``sigma^2 d^2 / (n - d - 1)`` (exact).
- :func:`lora_risk`: rank-r LoRA to first order, ``sigma^2 r (2d - r) / n``.
- :func:`projection_bias` (D3): coefficient-only fine-tuning in the population leaves
  ``||P_perp (M_new - A)||_F^2``.
- :func:`expected_paper_bias` (D3): on the paper's truth (unseen task ``A* + U U^T``, U with i.i.d.
  N(0, 1) entries, d x k) after a fit whose base is the least-squares one for its space L
  (``A = mean_t M*_t`` modulo L), the bias averaged over the unseen task is
  ``d k (d + 1) - 2k sum_i ||sym(E_i)||_F^2 + ||P_perp(k I - Rbar*)||_F^2``
  (``E_i`` an orthonormal basis of L).
"""
from __future__ import annotations

import jax.numpy as jnp

from linmeta.core._validate import check_array, check_int, check_scalar

__all__ = ["identifiability", "orthonormal_basis", "project_out", "base_gap",
           "coefficient_risk_orthonormal", "second_order_constant",
           "coefficient_risk_second_order", "full_risk", "lora_risk", "projection_bias",
           "expected_paper_bias"]


def identifiability(d: int, r: int, T: int, core: bool = False) -> dict:
    """What a zero-loss population fit identifies (module docstring; generic coefficients,
    ``U*, V*`` of full column rank). Keys: ``directions`` (the rank-one directions, up to order
    and scale; False for a core), ``space`` (``L*``), ``spans`` (``col U*``, ``col V*``),
    ``base_free`` (dimension of the set of bases that fit: 0 would be the base itself; ``r``,
    ``r^2``, or at T = 1 ``r (2d - r)``: every A with ``rank(M*_1 - A) <= r``), ``pca_space``
    (whether the principal components of the centred tasks span ``L*``)."""
    d = check_int("d", d, 1)
    r = check_int("r", r, 1, d, hi_label="d")
    T = check_int("T", T, 1)
    if core:
        space = T >= 2
        return dict(directions=False, space=space, spans=space,
                    base_free=r * r if space else r * (2 * d - r), pca_space=T - 1 >= r * r)
    directions = T >= 3 or (r == 1 and T >= 2)
    spans = T >= 2
    base_free = r if directions else (r * r if spans else r * (2 * d - r))
    return dict(directions=directions, space=directions, spans=spans, base_free=base_free,
                pca_space=T - 1 >= r)


def orthonormal_basis(B):
    """Orthonormal basis (q, d, d) of ``span{B_i}`` (Frobenius; QR of the vectorised ``B_i``).
    ``B``: (q, d, d) with ``1 <= q <= d^2`` (q directions of the d x d matrices)."""
    B = check_array("B", B, ndim=3)
    q, d = B.shape[0], B.shape[-1]
    if B.shape[1] != d or not 1 <= q <= d * d:
        raise ValueError(f"B must have shape (q, d, d) with 1 <= q <= d^2, got {tuple(B.shape)}")
    Q, _ = jnp.linalg.qr(B.reshape(q, d * d).T)
    return Q.T.reshape(q, d, d)


def project_out(X, B):
    """``P_perp X``: X (..., d, d) minus its Frobenius projection onto ``span{B_i}``."""
    E = orthonormal_basis(B)
    return X - jnp.einsum("...i,iab->...ab", jnp.einsum("iab,...ab->...i", E, X), E)


def base_gap(A, A_star, B_star):
    """``||P_perp*(A - A*)||_F`` with ``P_perp*`` the projector off ``span{B*_i}``: the part of a
    base error that a fit can be asked to remove (D1)."""
    R = project_out(A - A_star, B_star)
    return jnp.sqrt(jnp.sum(R * R, axis=(-2, -1)))


def coefficient_risk_orthonormal(r, n, noise_std):
    """``sigma^2 r / (n - 2)``: coefficient-only fine-tuning on ``L* = {U* diag(c) V*^T}`` with
    orthonormal ``U*, V*`` (D2; exact, n > 2). Derivation: the features of coefficient i are
    ``u_i (v_i^T x)``, their Gram matrix ``sum_j Z_j^T Z_j = diag(chi^2_n)``, and
    ``E[1/chi^2_n] = 1/(n - 2)``."""
    r = check_int("r", r, 1)
    check_scalar("n", n, 2.0, lo_open=True)
    check_scalar("noise_std", noise_std, 0.0)
    return noise_std ** 2 * r / (n - 2)


def second_order_constant(U, V):
    """``c_2 = E tr(Z^T Z H Z^T Z H) - r`` with ``Z = U diag(w)``, ``w ~ N(0, V^T V)``,
    ``H = G^{-1}``, ``G = (U^T U) o (V^T V)`` (Hadamard); by Isserlis' theorem
    ``c_2 = sum Sig_ij Sig_kl K_ik K_jl H_kj H_li + sum Sig_il Sig_kj K_ik K_jl H_kj H_li`` with
    ``K = U^T U``, ``Sig = V^T V``. Orthonormal U, V: ``c_2 = 2r``."""
    K = U.T @ U
    S = V.T @ V
    H = jnp.linalg.inv(K * S)
    t2 = jnp.einsum("ij,kl,ik,jl,kj,li->", S, S, K, K, H, H)
    t3 = jnp.einsum("il,kj,ik,jl,kj,li->", S, S, K, K, H, H)
    return t2 + t3


def coefficient_risk_second_order(U, V, n, noise_std):
    """``sigma^2 (r/n + c_2/n^2)``: coefficient-only fine-tuning on ``span{u_i v_i^T}`` to second
    order in 1/n (D2; the neglected term is O(n^-3)). Derivation in docs/difference.md#d2."""
    check_scalar("n", n, 0.0, lo_open=True)
    r = U.shape[-1]
    return noise_std ** 2 * (r / n + second_order_constant(U, V) / n ** 2)


def full_risk(d, n, noise_std):
    """``sigma^2 d^2 / (n - d - 1)``: least squares of a d x d matrix on n Gaussian samples
    (inverse-Wishart mean; exact for n > d + 1)."""
    d = check_int("d", d, 1)
    check_scalar("n", n, d + 1.0, lo_open=True)
    return noise_std ** 2 * d * d / (n - d - 1)


def lora_risk(d, r, n, noise_std):
    """``sigma^2 r (2d - r) / n``: rank-r LoRA (reduced-rank regression) when the residual has
    rank r, to first order in the noise (the dimension of the rank-r matrices)."""
    d = check_int("d", d, 1)
    r = check_int("r", r, 1, d, hi_label="d")
    check_scalar("n", n, 0.0, lo_open=True)
    return noise_std ** 2 * r * (2 * d - r) / n


def projection_bias(B, base, M_new):
    """``||P_perp (M_new - base)||_F^2`` per unseen task: the population risk of coefficient-only
    fine-tuning on ``span{B_i}`` (D3)."""
    R = project_out(M_new - base, B)
    return jnp.sum(R * R, axis=(-2, -1))


def expected_paper_bias(B, R_bar, k: int):
    """Mean over unseen paper tasks ``A* + U U^T`` (U: d x k, i.i.d. N(0, 1)) of
    :func:`projection_bias` after a fit with space ``span{B_i}`` and the least-squares base
    (``A = A* + Rbar*`` modulo L; ``R_bar`` = mean of the retraining tasks' ``U*_t U*_t^T``):
    ``d k (d + 1) - 2k sum_i ||sym(E_i)||^2 + ||P_perp(k I - Rbar*)||^2``. Derivation: the bias is
    ``||P_perp(UU^T - Rbar*)||^2``; ``E UU^T = k I``, ``E||UU^T - kI||^2 = d k (d + 1)`` and
    ``Var <E_i, UU^T> = 2k ||sym E_i||^2`` (Gaussian quadratic forms), docs/difference.md#d3."""
    d = B.shape[-1]
    k = check_int("k", k, 1)
    E = orthonormal_basis(B)
    sym = 0.5 * (E + jnp.swapaxes(E, -1, -2))
    mean_part = project_out(k * jnp.eye(d, dtype=B.dtype) - R_bar, B)
    return (d * k * (d + 1) - 2 * k * jnp.sum(sym * sym)
            + jnp.sum(mean_part * mean_part))
