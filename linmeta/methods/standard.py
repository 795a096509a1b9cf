"""Standard retraining (SR), docs/theory.md#standard-retraining and claim C1.

SR fits all T tasks with one matrix: ``min_A sum_t L_t(A)``. On statistics the minimiser is pooled
least squares,

    A_SR = (sum_t S_yx,t) (sum_t S_xx,t)^{-1},

which in the population (S_xx = I, S_yx = M*_t) is ``A* + Rbar`` with ``Rbar = (1/T) sum_t U*_t U*_t^T``.
Gradient descent on ``(1/T) sum_t L_t(A)`` takes ``A <- A - lr * (1/T) sum_t (A S_xx,t - S_yx,t)``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import cho_solve

from linmeta.core._validate import check_array, check_choice, check_int, check_scalar
from linmeta.core.data import TaskStats
from linmeta.core.divergence import check_history
from linmeta.core.losses import excess_loss, ols_solution, task_loss_grad
from ._common import DENSE_MAX_D, RetrainResult, cholesky_ok, run_steps

__all__ = ["standard_retraining", "pooled_least_squares", "sr_gradient_step"]


def _check_stats(source, name="source", *, square: bool = True):
    """Validate task statistics: ``Sxx`` (T, d, d), ``Syx`` (T, p, d), ``Syy`` (T,), all finite.
    ``square`` (the base-matrix methods): also require p = d."""
    if not isinstance(source, TaskStats):
        raise ValueError(f"{name} must be linmeta TaskStats (linmeta.population(truth) or "
                         f"linmeta.sample_tasks(...)), got {type(source).__name__}")
    d = source.Sxx.shape[-1]
    T = source.Sxx.shape[0] if source.Sxx.ndim == 3 else None
    check_array(f"{name}.Sxx", source.Sxx, shape=(None, d, d))
    check_array(f"{name}.Syx", source.Syx, shape=(T, None, d))
    if square and source.Syx.shape[-2] != d:
        raise ValueError(f"{name}.Syx must have shape (T, d={d}, d={d}) for the base-matrix "
                         f"methods (p = d outputs), got {tuple(source.Syx.shape)}; scalar-output "
                         "statistics belong to linmeta.representation")
    check_array(f"{name}.Syy", source.Syy, shape=source.Sxx.shape[:1])
    return source


def pooled_least_squares(stats: TaskStats) -> jax.Array:
    """Exact SR minimiser ``(sum_t S_yx,t)(sum_t S_xx,t)^+`` (minimum-norm when singular).

    ``d <=`` :data:`~linmeta.methods._common.DENSE_MAX_D`: least squares by SVD
    (``jnp.linalg.lstsq``); above, a Cholesky solve when the pooled ``S_xx`` is positive definite
    and well conditioned (:func:`~linmeta.methods._common.cholesky_ok`; the population's ``T I``,
    or N T well above d samples), the SVD otherwise."""
    Sxx = jnp.sum(stats.Sxx, axis=-3)
    Syx = jnp.sum(stats.Syx, axis=-3)
    # A Sxx = Syx  <=>  Sxx A^T = Syx^T (Sxx symmetric)
    rhs = jnp.swapaxes(Syx, -1, -2)
    if Sxx.shape[-1] <= DENSE_MAX_D or Sxx.ndim != 2:
        return jnp.linalg.lstsq(Sxx, rhs)[0].swapaxes(-1, -2)
    L = jnp.linalg.cholesky(Sxx)
    return lax.cond(cholesky_ok(L, Sxx),
                    lambda L: cho_solve((L, True), rhs),
                    lambda L: jnp.linalg.lstsq(Sxx, rhs)[0], L).swapaxes(-1, -2)


def sr_gradient_step(A, stats: TaskStats, lr):
    """One gradient step on ``(1/T) sum_t L_t(A)``."""
    return A - lr * jnp.mean(task_loss_grad(A, stats), axis=-3)


def _sr_excess(A, stats, B):
    return jnp.mean(excess_loss(A, stats, B), axis=-1)


def standard_retraining(source: TaskStats, *, method: str = "exact", steps: int = 3000,
                        lr=0.03, A0=None, record_every: int = 1) -> RetrainResult:
    """Standard retraining on ``source`` (population or finite-sample :class:`TaskStats`).

    Args:
      source: retraining-task statistics.
      method: ``"exact"`` (pooled least squares) or ``"gd"`` (gradient descent, the paper's
        SR baseline: ``steps`` steps of size ``lr`` from ``A0``, default zero).
      record_every: stride of the recorded objective history (``"gd"`` only).

    Returns:
      :class:`RetrainResult` with ``adapters=None``.

    Raises:
      linmeta.DivergenceError: ``"gd"`` diverged (see :mod:`linmeta.core.divergence`); names ``lr`` and
        the iteration. (Not raised inside a caller's ``jit``, where the values are traced.)
    """
    stats = _check_stats(source)
    check_choice("method", method, ("exact", "gd"))
    B = ols_solution(stats)
    if method == "exact":
        A = pooled_least_squares(stats)
        obj = _sr_excess(A, stats, B)
        return RetrainResult(A, None, obj, None, obj[None])
    steps = check_int("steps", steps, 0)
    check_scalar("lr", lr, 0.0, lo_open=True)
    record_every = check_int("record_every", record_every, 1)
    d = stats.d
    dt = stats.Sxx.dtype
    A0 = jnp.zeros((d, d), dt) if A0 is None else check_array("A0", A0, shape=(d, d)).astype(dt)
    res = _sr_gd_kernel(stats, A0, jnp.asarray(lr, dt), steps=steps, record_every=record_every)
    check_history("standard retraining (gradient descent)", res.history.step, res.history.value,
                  {"lr": lr}, final=res.base)
    return res


@functools.partial(jax.jit, static_argnames=("steps", "record_every"))
def _sr_gd_kernel(stats, A0, lr, *, steps, record_every):
    B = ols_solution(stats)
    A, hist = run_steps(lambda a: sr_gradient_step(a, stats, lr), A0, steps, record_every,
                        lambda a: _sr_excess(a, stats, B))
    obj = _sr_excess(A, stats, B)
    return RetrainResult(A, None, obj, hist, obj[None])
