"""Closed forms of the bilevel family (docs/bilevel.md), from the ground truth alone.

Like :mod:`linmeta.theory` this module never imports a solver, so checking
:func:`linmeta.maml` against it stays a check.

Population losses ``L_t(M) = 1/2 ||M - M*_t||_F^2 + d sigma^2 / 2``; ``R_t = M*_t - A`` is what
task t's adapter has to fit at the base A.

- **Exact inner solution, support = query** (relation M2). The bilevel objective with the inner
  problem solved exactly is the objective with the adapters minimised out at A,
  ``F_inf(A) - const = (1/T) sum_t min_Delta 1/2 ||R_t - Delta||_F^2`` over the adapter's set:

  * ``U U^T`` (PSD, rank <= r; Meta-LoRA's adapter): ``||R - Delta||^2 = ||skew R||^2 +
    ||sym R - Delta||^2`` and the best PSD rank-r ``Delta`` keeps the r largest positive
    eigenvalues of ``sym R`` (``theory.lora_bias(sym R, r, psd=True)``);
  * ``U V^T`` (rank <= r): Eckart-Young, ``sum_{i > r} sigma_i(R)^2`` (``theory.lora_bias``);
  * ``W`` (full rank): 0.

  (:func:`profiled_objective`.) For ``U U^T`` this is Meta-LoRA's objective ``(1/T) sum_t
  L_t(A + U_t U_t^T)`` with every ``U_t`` minimised out; for ``U V^T`` that of Meta-LoRA with
  asymmetric adapters, which is never larger (a PSD rank-r matrix is a rank-r matrix).
- **Plain MAML** (full-rank inner loop from ``W = 0``, relation M1). ``M_j - M*_t = (1 -
  alpha)^j (A - M*_t)``, so ``F_K(A) = (1 - alpha)^(2K) (1/T) sum_t 1/2 ||A - M*_t||^2 + const``
  and each outer step is a standard-retraining gradient step of size (:func:`full_rank_sr_step`)
  ``beta (1-alpha)^(2K)`` (MAML), ``beta (1-alpha)^K`` (first order: the query gradient at
  ``M_K`` is ``(1-alpha)^K (A - M*_t)``) or ``beta (1 - (1-alpha)^K)`` (Reptile: the displacement
  ``M_K - A`` is ``(1 - (1-alpha)^K)(M*_t - A)``). All three keep SR's fixed point ``A* + Rbar``.
- **K = 0** (or a start that cannot move) with ``Delta(theta_start) = 0``: MAML and first-order
  MAML are standard retraining with step beta (:func:`full_rank_sr_step` with K = 0 gives
  ``beta`` for both; Reptile does not move: step 0).
"""
from __future__ import annotations

import jax.numpy as jnp

from linmeta.core._validate import check_array, check_choice, check_int, check_scalar
from linmeta.core.theory import lora_bias

__all__ = ["profiled_objective", "full_rank_sr_step", "PROFILE_ADAPTERS"]

PROFILE_ADAPTERS = ("symmetric", "asymmetric", "full")


def _T(x):
    return jnp.swapaxes(x, -1, -2)


def profiled_objective(A, M_star, rank, adapter: str = "symmetric"):
    """Population ``(1/T) sum_t min_Delta 1/2 ||M*_t - A - Delta||_F^2`` over rank-``rank``
    adapters ``Delta`` of the given kind (module docstring); ``M_star`` is (T, d, d)."""
    A = check_array("A", A, ndim=2)
    d = A.shape[0]
    M_star = check_array("M_star", M_star, shape=(None, d, d))
    rank = check_int("rank", rank, 0, d, hi_label="d")
    check_choice("adapter", adapter, PROFILE_ADAPTERS)
    R = M_star - A
    if adapter == "full":
        return jnp.zeros((), R.dtype)
    if adapter == "asymmetric":
        return jnp.mean(0.5 * lora_bias(R, rank), axis=-1)
    S = (R + _T(R)) / 2
    K = (R - _T(R)) / 2
    per_task = jnp.sum(K * K, axis=(-2, -1)) + lora_bias(S, rank, psd=True)
    return jnp.mean(0.5 * per_task, axis=-1)


def full_rank_sr_step(method: str, outer_lr, inner_lr, inner_steps):
    """The standard-retraining step size that one outer step of plain (full-rank, ``W = 0``
    start) bilevel retraining equals in the population: ``beta (1-alpha)^(2K)`` (``"maml"``),
    ``beta (1-alpha)^K`` (``"fomaml"``), ``beta (1 - (1-alpha)^K)`` (``"reptile"``)."""
    check_choice("method", method, ("maml", "fomaml", "reptile"))
    check_scalar("outer_lr", outer_lr, 0.0)
    check_scalar("inner_lr", inner_lr, 0.0)
    K = check_int("inner_steps", inner_steps, 0)
    c = (1.0 - inner_lr) ** K
    return {"maml": outer_lr * c * c, "fomaml": outer_lr * c, "reptile": outer_lr * (1.0 - c)}[
        method]
