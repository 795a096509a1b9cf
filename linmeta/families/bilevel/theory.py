"""Closed forms of the bilevel family (docs/bilevel.md), from the ground truth alone.

Like :mod:`linmeta.core.theory` this module never imports a solver, so checking
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
  asymmetric adapters, which is never larger (a PSD rank-r matrix is a rank-r matrix) and equal
  for a task iff some best rank-r approximation of its residual is PSD (a skew part alone does
  not make it smaller). Where each task's optimal adapter is unique (for ``U V^T``:
  ``sigma_r(R_t) > sigma_{r+1}(R_t)``) ``F_inf`` is differentiable with gradient ``(1/T) sum_t
  (A + Delta*_t - M*_t)``, the first-order update at the exact inner solution (Danskin); where it
  is not, ``F_inf`` has a kink there.
- **Plain MAML** (full-rank inner loop from ``W = 0``, relation M1). ``M_j - M*_t = (1 -
  alpha)^j (A - M*_t)``, so ``F_K(A) = (1 - alpha)^(2K) (1/T) sum_t 1/2 ||A - M*_t||^2 + const``
  and each outer step is a standard-retraining gradient step of size (:func:`full_rank_sr_step`)
  ``beta (1-alpha)^(2K)`` (MAML), ``beta (1-alpha)^K`` (first order: the query gradient at
  ``M_K`` is ``(1-alpha)^K (A - M*_t)``) or ``beta (1 - (1-alpha)^K)`` (Reptile: the displacement
  ``M_K - A`` is ``(1 - (1-alpha)^K)(M*_t - A)``). All three have SR's minimiser ``A* + Rbar`` as
  their only fixed point when the step is not 0, attracting iff the step lies in (0, 2): at
  ``alpha = 1`` MAML's and first order's steps are 0 (the base does not move) while Reptile's is
  ``beta``; for ``1 < alpha < 2`` and odd K first order's step is negative (SR's minimiser
  repels); as K grows Reptile's step tends to ``beta`` (for ``0 < alpha < 2``), the others' to 0.
- **K = 0** (or a start that cannot move) with a *fixed* start and ``Delta(theta_start) = 0``:
  MAML and first-order MAML are standard retraining with step beta (:func:`full_rank_sr_step`
  with K = 0 gives ``beta`` for both; Reptile does not move: step 0). A learned start moves off
  ``Delta = 0`` after the first outer step, and the run is no longer SR's.
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
    adapters ``Delta`` of the given kind (module docstring); ``M_star`` is (T, d, d).

    Domain: any A, M_star and ``0 <= rank <= d`` (the minimum always exists; it is the bilevel
    objective of the exact inner solve when support = query, relation M2). ``"asymmetric"`` is
    strictly below ``"symmetric"`` iff for some task no best rank-r approximation of
    ``M*_t - A`` is PSD."""
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
    ``beta (1-alpha)^K`` (``"fomaml"``), ``beta (1 - (1-alpha)^K)`` (``"reptile"``).

    Domain: population statistics (``S_xx = I``, support = query) and the full-rank start
    ``W = 0`` held fixed (a learned start, or finite samples, break the reduction for K >= 1);
    any ``alpha >= 0``, ``K >= 0``, ``beta >= 0``: the identity is exact for all of them. The
    value is the step of SR gradient descent the run equals, also where that step is 0
    (``alpha = 1``, MAML and first order: the base does not move), negative (first order with
    ``1 < alpha < 2`` and K odd: gradient ascent, SR's minimiser repels) or at least 2 (SR's
    minimiser repels too); the inner loop itself diverges for ``alpha > 2`` (``|1 - alpha| > 1``).
    """
    check_choice("method", method, ("maml", "fomaml", "reptile"))
    check_scalar("outer_lr", outer_lr, 0.0)
    check_scalar("inner_lr", inner_lr, 0.0)
    K = check_int("inner_steps", inner_steps, 0)
    c = (1.0 - inner_lr) ** K
    return {"maml": outer_lr * c * c, "fomaml": outer_lr * c, "reptile": outer_lr * (1.0 - c)}[
        method]
