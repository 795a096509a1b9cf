"""Closed-form predictions of the theory (docs/theory.md), from the ground truth alone.

This module never imports a solver, so checking a solver against it stays a check.

- C1: ``sr_population(A*, U*) = A* + Rbar``, ``Rbar = (1/T) sum_t U*_t U*_t^T``.
- C2: SR residual on an unseen task, ``M*_new - A_SR = U_new U_new^T - Rbar``
  (:func:`sr_residual`); generically rank ``min((T+1)k, d)`` with k positive and Tk negative
  eigenvalues (:func:`residual_spectrum`, :func:`generic_sr_residual_rank`). Best rank-r adapter error
  (:func:`lora_bias`): Eckart-Young ``sum_{i>r} sigma_i^2`` for ``U V^T``; for a PSD adapter ``U U^T``
  the best rank-r PSD approximation keeps the r largest positive eigenvalues, so the error is
  ``sum_{lambda_i<0} lambda_i^2 + sum_{positive beyond the top r} lambda_i^2``.
  Orthogonal worked case (mutually orthogonal ``U*_t`` with ``U*_t^T U*_t = s^2 I_k``): the residual
  has eigenvalues ``s^2`` (k times) and ``-s^2/T`` (Tk times), so the rank-r errors are closed forms,
  ``k s^4 / T`` at r = k (:func:`orthogonal_case_bias`).
- Many tasks: ``Rbar -> k I`` with ``E ||Rbar - k I||_F^2 = k d (d + 1) / T`` exactly for Gaussian
  ``U*`` (:func:`rbar_mean_square_deviation`).
- C1 at finite N: ``N E ||A_SR(N) - (A* + Rbar)||_F^2 -> C = sum_t [(d+1) ||R*_t - Rbar||_F^2 +
  d^2 sigma^2] / T^2`` (:func:`sr_sample_error_constant`; derivation in :mod:`linmeta.claims.c1`).
- C3, the paper's alternating protocol in the population: one outer iteration is the map
  ``Phi(A, U)``: ``inner_steps`` steps ``U_t <- U_t - lr_adapter grad_{U_t} l_t`` on each task's own
  loss ``l_t = 1/2 ||A + U_t U_t^T - M*_t||_F^2``, then ``A <- A - lr_base grad_A (1/T) sum_t l_t``.
  ``(A*, U*)`` is a fixed point; near it the error contracts as ``e_{n+1} = J e_n + O(||e_n||^2)``
  with ``J = dPhi`` (:func:`alternating_jacobian`).
  The map is written here from its definition (automatic differentiation of ``l_t``), not taken
  from the solver, so comparing the solver with it is a check.
- C4: with T = 2, ``rank(A_hat - A*) <= 2k`` so a rank-3k adapter removes the bias.
- C6: degrees of freedom of rank-r adapters, ``r(2d - r)`` (U V^T), and the predicted fine-tuning
  excess error ``sigma^2 dof / n``: to first order in the noise the reduced-rank estimator projects
  the least-squares noise onto the dof-dimensional tangent space of the rank-r matrices, so its
  in-sample excess risk is ``sigma^2 dof / n`` in expectation (full fine-tuning: ``dof = d^2``,
  exact for least squares).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ._validate import check_array, check_int, check_scalar
from .lora import adapter_dof

__all__ = ["sr_population", "sr_bias_matrix", "sr_residual", "residual_spectrum", "lora_bias",
           "orthogonal_case_bias", "generic_sr_residual_rank", "adapter_dof",
           "predicted_finetune_error", "meta_lora_population_base", "t2_adapter_rank",
           "rbar_mean_square_deviation", "sr_sample_error_constant", "alternating_jacobian"]


def _T(x):
    return jnp.swapaxes(x, -1, -2)


def _check_pair(A_star, U_star):
    A_star = check_array("A_star", A_star, ndim=2)
    d = A_star.shape[0]
    U_star = check_array("U_star", U_star, ndim=3)
    if U_star.shape[1] != d or A_star.shape != (d, d):
        raise ValueError(f"U_star must have shape (T, d={d}, k) for A_star of shape (d, d); got "
                         f"A_star {tuple(A_star.shape)}, U_star {tuple(U_star.shape)}")
    return A_star, U_star


def sr_bias_matrix(U_star):
    """``Rbar = (1/T) sum_t U*_t U*_t^T``."""
    U_star = check_array("U_star", U_star, ndim=3)
    return jnp.mean(U_star @ _T(U_star), axis=0)


def sr_population(A_star, U_star):
    """Population standard-retraining minimiser ``A* + Rbar`` (claim C1)."""
    A_star, U_star = _check_pair(A_star, U_star)
    return A_star + sr_bias_matrix(U_star)


def meta_lora_population_base(A_star):
    """Meta-LoRA's population base for T >= 3 under task diversity: ``A*`` itself (claim C3)."""
    return check_array("A_star", A_star, ndim=2)


def sr_residual(U_star, U_new):
    """``U_new U_new^T - Rbar``: what an adapter must fit on unseen task(s) after SR (claim C2).

    ``U_new`` is (d, k) for one task or (m, d, k) for several."""
    U_star = check_array("U_star", U_star, ndim=3)
    U_new = check_array("U_new", U_new)
    if U_new.ndim not in (2, 3) or U_new.shape[-2] != U_star.shape[1]:
        raise ValueError(f"U_new must have shape (d={U_star.shape[1]}, k) or (m, d, k), "
                         f"got {tuple(U_new.shape)}")
    return U_new @ _T(U_new) - sr_bias_matrix(U_star)


def residual_spectrum(residual):
    """Eigenvalues of a symmetric residual in decreasing order."""
    residual = check_array("residual", residual)
    return jnp.linalg.eigvalsh(residual)[..., ::-1]


def lora_bias(residual, rank, psd: bool = False):
    """Smallest ``||residual - Delta||_F^2`` over adapters of rank <= ``rank``.

    ``psd=False``: asymmetric ``U V^T``, Eckart-Young ``sum_{i>rank} sigma_i^2``.
    ``psd=True``: symmetric PSD ``U U^T`` (residual must be symmetric): keeps the ``rank`` largest
    positive eigenvalues; every negative eigenvalue stays in the error.
    Works on a single (d, d) matrix or a batch (..., d, d).
    """
    residual = check_array("residual", residual)
    if residual.ndim < 2 or residual.shape[-1] != residual.shape[-2]:
        raise ValueError(f"residual must be square (..., d, d), got {tuple(residual.shape)}")
    d = residual.shape[-1]
    rank = check_int("rank", rank, 0, d, hi_label="d")
    if not psd:
        s = jnp.linalg.svd(residual, compute_uv=False)  # decreasing
        return jnp.sum(s[..., rank:] ** 2, axis=-1)
    lam = jnp.linalg.eigvalsh((residual + _T(residual)) / 2)[..., ::-1]  # decreasing
    kept = (jnp.arange(d) < rank) & (lam > 0)
    return jnp.sum(jnp.where(kept, 0.0, lam ** 2), axis=-1)


def orthogonal_case_bias(k, s, T, rank=None, psd: bool = False):
    """Worked case of C2: mutually orthogonal ``U*_t`` with ``U^T U = s^2 I_k`` give an SR residual
    with eigenvalues ``s^2`` (k times) and ``-s^2/T`` (Tk times); its best rank-``rank`` error is

    - ``U V^T`` (default): Eckart-Young keeps the ``rank`` largest ``|eigenvalues|``:
      ``(k - r) s^4 + k s^4 / T`` for ``r <= k`` (``E_SR(k) = k s^4 / T``), and
      ``(Tk - (r - k)) s^4 / T^2`` for ``k < r <= (T+1)k``;
    - ``U U^T`` (``psd=True``): keeps at most the k positive ones, every negative one stays:
      ``(k - min(r, k)) s^4 + k s^4 / T``.

    ``rank`` defaults to k."""
    k = check_int("k", k, 1)
    T = check_int("T", T, 1)
    check_scalar("s", s, 0.0)
    r = k if rank is None else check_int("rank", rank, 0)
    pos, neg = s ** 4, s ** 4 / T ** 2          # squared eigenvalues: k positive, Tk negative
    if psd:
        return (k - min(r, k)) * pos + T * k * neg
    if r <= k:
        return (k - r) * pos + T * k * neg
    return max(T * k - (r - k), 0) * neg


def rbar_mean_square_deviation(d, k, T):
    """``E ||Rbar - k I||_F^2 = k d (d + 1) / T`` for i.i.d. N(0, 1) factors ``U*_t`` (d x k): the
    entries of ``U U^T`` have variance k off the diagonal and 2k on it."""
    d = check_int("d", d, 1)
    k = check_int("k", k, 1)
    T = check_int("T", T, 1)
    return k * d * (d + 1) / T


def sr_sample_error_constant(U_star, noise_std):
    """C1 at finite N: ``C = lim N E ||A_SR(N) - (A* + Rbar)||_F^2
    = sum_t [(d + 1) ||R*_t - Rbar||_F^2 + d^2 sigma^2] / T^2`` (x ~ N(0, I), noise std sigma)."""
    U_star = check_array("U_star", U_star, ndim=3)
    check_scalar("noise_std", noise_std, 0.0)
    T, d = U_star.shape[-3], U_star.shape[-2]
    R = U_star @ _T(U_star)
    D = R - jnp.mean(R, axis=0)
    return jnp.sum((d + 1) * jnp.sum(D * D, axis=(-2, -1)) + d * d * noise_std ** 2) / T ** 2


def _protocol_map(A, U, M, lr_adapter, lr_base, inner_steps):
    """One outer iteration of the paper's protocol on the population losses (see module doc)."""
    def task_losses(A, U):
        D = A + U @ _T(U) - M
        return 0.5 * jnp.sum(D * D, axis=(-2, -1))

    def inner(U, _):
        return U - lr_adapter * jax.grad(lambda V: jnp.sum(task_losses(A, V)))(U), None

    U = jax.lax.scan(inner, U, None, length=inner_steps)[0]
    A = A - lr_base * jax.grad(lambda B: jnp.mean(task_losses(B, U)))(A)
    return A, U


def alternating_jacobian(A_star, U_star, lr_adapter=0.003, lr_base=0.03, inner_steps: int = 10):
    """Jacobian ``J = dPhi(x*)`` of one outer iteration of the paper's alternating protocol at its
    population fixed point ``x* = (A*, U*)`` (C3; see the module docstring for ``Phi``).

    The state is ``x = (vec A, vec U)`` (row-major, A first), so J is square of size
    ``d^2 + T d k``. Near x* the protocol's error evolves as ``e_{n+1} = J e_n + O(||e_n||^2)``:
    after n outer iterations from ``x* + delta`` it is ``J^n delta`` to first order. Without
    symmetries (k = 1) the spectral radius of J is the asymptotic contraction per outer iteration;
    for k >= 2, J has the eigenvalue 1 along the ``T k(k-1)/2`` rotations ``U_t -> U_t Q``.
    """
    A_star, U_star = _check_pair(A_star, U_star)
    inner_steps = check_int("inner_steps", inner_steps, 0)
    check_scalar("lr_adapter", lr_adapter, 0.0, lo_open=True)
    check_scalar("lr_base", lr_base, 0.0, lo_open=True)
    M = A_star + U_star @ _T(U_star)
    n = A_star.size

    def phi(x):
        A, U = _protocol_map(x[:n].reshape(A_star.shape), x[n:].reshape(U_star.shape), M,
                             lr_adapter, lr_base, inner_steps)
        return jnp.concatenate([A.reshape(-1), U.reshape(-1)])

    return jax.jacfwd(phi)(jnp.concatenate([A_star.reshape(-1), U_star.reshape(-1)]))


def generic_sr_residual_rank(d, k, T):
    """Generic rank of the SR residual: ``min((T + 1) k, d)`` (k positive, Tk negative eigenvalues)."""
    d = check_int("d", d, 1)
    k = check_int("k", k, 1, d, hi_label="d")
    T = check_int("T", T, 1)
    return min((T + 1) * k, d)


def t2_adapter_rank(k):
    """Rank that suffices to fine-tune after Meta-LoRA at T = 2 (claim C4): ``3k``."""
    return 3 * check_int("k", k, 1)


def predicted_finetune_error(d, rank, n, noise_std, symmetric: bool = False):
    """Predicted in-sample excess risk ``sigma^2 dof / n`` of a rank-``rank`` fine-tuned adapter
    fitted on n samples when the base leaves a rank-``rank`` residual (C6): exact in expectation to
    first order in the noise (``rank = d``: least squares, exact for every n >= d)."""
    d = check_int("d", d, 1)
    rank = check_int("rank", rank, 1, d, hi_label="d")
    check_scalar("n", n, 0.0, lo_open=True)
    check_scalar("noise_std", noise_std, 0.0)
    return noise_std ** 2 * adapter_dof(d, rank, symmetric) / n
