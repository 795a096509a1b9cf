"""Quadratic task losses on sufficient statistics (docs/theory.md#losses).

For task t with statistics (S_xx, S_yx, S_yy) (see :mod:`linmeta.core.data`):

    L_t(M)        = 1/2 tr(M S_xx M^T) - tr(M^T S_yx) + 1/2 S_yy        (= 1/(2N) sum ||y - M x||^2)
    grad L_t(M)   = M S_xx - S_yx
    excess_t(M)   = L_t(M) - min L_t = 1/2 tr((M - B_t) S_xx (M - B_t)^T),  B_t = S_yx S_xx^+

The excess form is a sum of squares, so it can be driven to 1e-20 without the cancellation that the
constant 1/2 S_yy causes in the first form. In the population (S_xx = I, S_yx = M*_t) it is
``1/2 ||M - M*_t||_F^2``.

Evaluation against the truth behind the data:

    excess_risk(M)  = tr((M - M*) S_xx (M - M*)^T)    (mean over samples of ||(M - M*) x||^2)
    paper_test_loss(M) = n * excess_risk(M)               (the paper's "test task loss": sum over the
                                                        n inputs and d outputs against noiseless targets)

In the population ``excess_risk = ||M - M*||_F^2`` and ``paper_test_loss`` is defined as the same value.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .data import TaskStats

__all__ = ["task_loss", "task_loss_grad", "excess_loss", "ols_solution", "excess_risk",
           "paper_test_loss", "mean_loss"]


def _T(x):
    return jnp.swapaxes(x, -1, -2)


def _trace(x):
    return jnp.trace(x, axis1=-2, axis2=-1)


def task_loss(M, stats: TaskStats) -> jax.Array:
    """Empirical loss ``L_t(M)`` of each task, shape (T,). ``M`` is (T, d, d) or a shared (d, d)."""
    MS = M @ stats.Sxx
    return 0.5 * _trace(MS @ _T(M)) - jnp.sum(M * stats.Syx, axis=(-2, -1)) + 0.5 * stats.Syy


def task_loss_grad(M, stats: TaskStats) -> jax.Array:
    """Gradient ``M S_xx - S_yx`` of ``L_t`` with respect to ``M``, shape (T, d, d)."""
    return M @ stats.Sxx - stats.Syx


def ols_solution(stats: TaskStats) -> jax.Array:
    """Per-task unconstrained minimiser ``B_t = S_yx S_xx^+`` (pseudo-inverse when N < d)."""
    return stats.Syx @ jnp.linalg.pinv(stats.Sxx, hermitian=True)


def excess_loss(M, stats: TaskStats, B=None) -> jax.Array:
    """``L_t(M) - min_M L_t(M)`` per task, computed as a sum of squares. ``B`` = :func:`ols_solution`."""
    if B is None:
        B = ols_solution(stats)
    D = M - B
    return 0.5 * jnp.sum((D @ stats.Sxx) * D, axis=(-2, -1))


def mean_loss(M, stats: TaskStats) -> jax.Array:
    """``(1/T) sum_t L_t(M_t)``: the standard-retraining and Meta-LoRA objective up to scaling."""
    return jnp.mean(task_loss(M, stats), axis=-1)


def excess_risk(M, stats: TaskStats) -> jax.Array:
    """``tr((M - M*) S_xx (M - M*)^T)`` per task: mean squared error against noiseless targets."""
    D = M - stats.M_star
    return jnp.sum((D @ stats.Sxx) * D, axis=(-2, -1))


def paper_test_loss(M, stats: TaskStats) -> jax.Array:
    """The paper's plotted "test task loss": ``n * excess_risk`` (``excess_risk`` in the population)."""
    n = stats.n_samples
    r = excess_risk(M, stats)
    return jnp.where(jnp.isfinite(n), n * r, r)
