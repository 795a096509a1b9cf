"""Ridge-shrunk standard retraining on linmeta's task statistics.

``min_A (1/T) sum_t L_t(A) + lam/2 ||A||_F^2`` with ``L_t`` the quadratic task loss of
:mod:`linmeta.core.losses`; gradient descent, ``lax.scan`` over steps, jit- and vmap-able (``lam``
and ``lr`` may be traced).
"""
import jax
import jax.numpy as jnp

from linmeta.core.data import TaskStats
from linmeta.core.losses import task_loss, task_loss_grad


def shrunk_objective(A, stats: TaskStats, lam):
    return jnp.mean(task_loss(A, stats)) + 0.5 * lam * jnp.sum(A ** 2)


def shrunk_retraining(stats: TaskStats, lam, lr, steps: int):
    """Gradient descent from ``A = 0``; returns ``(A, objective per step)``."""
    d_out, d_in = stats.Syx.shape[-2:]

    def step(A, _):
        grad = jnp.mean(task_loss_grad(A, stats), axis=0) + lam * A
        A = A - lr * grad
        return A, shrunk_objective(A, stats, lam)

    A0 = jnp.zeros((d_out, d_in), stats.Syx.dtype)
    return jax.lax.scan(step, A0, None, length=steps)
