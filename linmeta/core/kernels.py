"""Kernels on task statistics for compiled protocol programs: least squares without LAPACK and
the excess objective, and small products written out (docs/theory.md, the model and losses).

XLA:CPU in jax 0.10 was seen to deadlock when several host devices run LAPACK calls concurrently,
so the programs of the sweep engine use :func:`psd_pinv` (matrix products only) for the
least-squares solution behind their excess objectives.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from . import losses
from .data import TaskStats

__all__ = ["psd_pinv", "ols_solution", "excess_objective", "UNROLL", "mm", "all_finite",
           "task_mean"]

def psd_pinv(S, iterations: int = 64):
    """Pseudo-inverse of symmetric PSD matrices (..., d, d) by the Newton-Schulz iteration
    ``X <- X (2 I - S X)`` from ``X0 = S / ||S||_inf^2`` (matrix products only, no LAPACK).

    In the eigenbasis each eigenvalue's residual ``1 - lambda x`` squares every step, starting from
    ``1 - (lambda / ||S||_inf)^2``; zero eigenvalues stay at zero, so the limit is ``S^+``. 64 steps
    reach machine precision for condition numbers up to about ``1 / sqrt(eps)`` (1e8 in float64).
    Used by the sweep because XLA:CPU in jax 0.10 was seen to deadlock when several host devices
    run LAPACK calls concurrently; it agrees with ``jnp.linalg.pinv`` to rounding on the sample
    covariances of the protocol (tested).
    """
    d = S.shape[-1]
    eye = jnp.eye(d, dtype=S.dtype)
    norm = jnp.max(jnp.sum(jnp.abs(S), axis=-1), axis=-1)[..., None, None]
    X = S / jnp.where(norm > 0, norm, 1.0) ** 2

    def step(X, _):
        return X @ (2 * eye - S @ X), None

    return lax.scan(step, X, None, length=iterations)[0]


def ols_solution(stats: TaskStats, N: int | None):
    """The unconstrained minimiser ``S_yx S_xx^+`` of each task's loss, LAPACK-free, or ``None``
    when ``N <= d`` (then least squares interpolates the samples and ``min L_t = 0``).

    Population (``N`` None): ``S_xx = I``, so it is ``S_yx``. ``N > d``: ``S_yx`` times
    :func:`psd_pinv` of ``S_xx`` (nonsingular with probability one). The same quantity as
    :func:`linmeta.core.losses.ols_solution`.
    """
    if N is None:
        return stats.Syx
    if N <= stats.Sxx.shape[-1]:
        return None
    return stats.Syx @ psd_pinv(stats.Sxx)


def task_mean(x, n_tasks):
    """Mean over the last (task) axis; with ``n_tasks``, of a zero-padded axis."""
    return jnp.mean(x, axis=-1) if n_tasks is None else jnp.sum(x, axis=-1) / n_tasks


def excess_objective(M, stats: TaskStats, B, n_tasks=None):
    """``(1/T) sum_t [L_t(M_t) - min L_t]``: the sum of squares ``1/2 tr((M - B) S_xx (M - B)^T)``
    with ``B`` from :func:`ols_solution`, or ``L_t`` itself when ``B`` is None (``N <= d``).
    ``n_tasks``: tasks beyond it have zero statistics and are left out of the mean."""
    if B is None:
        return task_mean(losses.task_loss(M, stats), n_tasks)
    return task_mean(losses.excess_loss(M, stats, B), n_tasks)


def _T(x):
    return jnp.swapaxes(x, -1, -2)


UNROLL = 16   # contractions up to this length are written out as sums of products


def mm(a, b):
    """``a @ b`` for small matrices: for a contraction of length <= :data:`UNROLL`, the sum of
    its rank-1 terms (XLA:CPU fuses it into one elementwise loop, several times faster than a
    batch of tiny matrix products); otherwise ``a @ b``."""
    n = a.shape[-1]
    if n > UNROLL:
        return a @ b
    out = a[..., :, 0:1] * b[..., 0:1, :]
    for l in range(1, n):
        out = out + a[..., :, l:l + 1] * b[..., l:l + 1, :]
    return out


def all_finite(*xs):
    ok = jnp.asarray(True)
    for x in xs:
        ok = ok & jnp.all(jnp.isfinite(x))
    return ok
