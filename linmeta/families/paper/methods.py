"""The paper's protocol stages as fused updates (docs/theory.md, methods and protocol): the
alternating Meta-LoRA protocol, standard retraining by gradient descent, and fine-tuning of several
bases at once. Each is the update of the methods layer's step functions
(:func:`linmeta.methods.alternating_step`, :func:`linmeta.methods.sr_gradient_step`,
:func:`linmeta.methods.finetune.finetune_gd_step`) rearranged so that what stays fixed over many
steps is computed once (exact in exact arithmetic; tests check equality):

- Meta-LoRA adapter steps, base A fixed: ``G_t = (A + U_t U_t^T) S_t - Y_t = C_t + U_t (U_t^T S_t)``
  with ``C_t = A S_t - Y_t`` formed once per outer iteration: O(d^2 k) per adapter step.
- SR: ``(1/T) sum_t (A S_t - Y_t) = (A sum_t S_t - sum_t Y_t) / T``: one product per step.
- Fine-tuning, base frozen: ``G = C + U (V^T S)`` with ``C = A S - Y`` formed once.

Products of small matrices inside the loops are written out as sums of rank-1 terms
(:func:`linmeta.core.kernels.mm`).
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from linmeta.core import losses
from linmeta.core.data import TaskStats
from linmeta.core.kernels import excess_objective, mm as _mm
from linmeta.methods import run_steps

__all__ = ["meta_lora_alternating", "sr_retraining", "finetune_both"]


def _T(x):
    return jnp.swapaxes(x, -1, -2)



def meta_lora_alternating(stats: TaskStats, U0, lr_adapter, lr_base, *, outer_steps: int,
                          inner_steps: int, record_every: int, B=None, n_tasks=None):
    """The paper's alternating Meta-LoRA protocol from ``A = 0``: the updates of
    :func:`linmeta.methods.alternating_step` with ``C_t = A S_t - Y_t`` formed once per outer
    iteration. Returns ``(A, U, history)``; the history records the excess objective."""
    S, Y = stats.Sxx, stats.Syx
    d = S.shape[-1]
    A0 = jnp.zeros((d, d), S.dtype)

    def outer(state):
        A, U = state
        C = _mm(A, S) - Y

        def inner(U, _):
            G = C + _mm(U, _mm(_T(U), S))
            return U - lr_adapter * _mm(G + _T(G), U), None

        U = lax.scan(inner, U, None, length=inner_steps)[0]
        G = C + _mm(U, _mm(_T(U), S))
        return A - lr_base * _task_mean_matrices(G, n_tasks), U

    def record(state):
        return excess_objective(state[0] + state[1] @ _T(state[1]), stats, B, n_tasks)

    (A, U), hist = run_steps(outer, (A0, U0), outer_steps, record_every, record)
    return A, U, hist


def _task_mean_matrices(G, n_tasks):
    return jnp.mean(G, axis=-3) if n_tasks is None else jnp.sum(G, axis=-3) / n_tasks


def sr_retraining(stats: TaskStats, lr, *, steps: int, record_every: int, B=None, n_tasks=None,
                  adapters=None):
    """Standard retraining by gradient descent from ``A = 0``; returns ``(A, history)``.

    ``adapters=None`` (clean): ``A <- A - lr (A sum_t S_t - sum_t Y_t) / T``, the update of
    :func:`linmeta.methods.sr_gradient_step`. ``adapters`` = the untrained ``U_t`` (T, d, k) of the
    official code (``paper_code``): ``A <- A - lr [(A + Ubar) sum_t S_t - sum_t Y_t]`` with
    ``Ubar = (1/T) sum_t U_t U_t^T`` (module docstring); fixed point
    ``(sum_t Y_t)(sum_t S_t)^{-1} - Ubar``."""
    S_sum = jnp.sum(stats.Sxx, axis=-3)
    Y_sum = jnp.sum(stats.Syx, axis=-3)
    T = stats.Sxx.shape[-3]
    n = T if n_tasks is None else n_tasks
    if adapters is None:
        def step(A):
            return A - lr * ((_mm(A, S_sum) - Y_sum) / n)
    else:
        U_bar = jnp.sum(adapters @ _T(adapters), axis=-3) / n
        Y_shift = Y_sum - U_bar @ S_sum

        def step(A):
            return A - lr * (_mm(A, S_sum) - Y_shift)

    A0 = jnp.zeros(S_sum.shape, S_sum.dtype)
    return run_steps(step, A0, steps, record_every,
                     lambda a: excess_objective(a, stats, B, n_tasks))


def finetune_both(bases, stats: TaskStats, U0, V0, lr, *, steps: int, record_every: int):
    """Gradient-descent fine-tuning of several frozen bases (b, 1, d, d) on the unseen tasks of
    ``stats`` (m tasks) from factors ``U0, V0`` (b, m, d, r): the update of
    :func:`linmeta.methods.finetune.finetune_gd_step`, ``G = (A + U V^T) S - Y = C + U (V^T S)`` with
    ``C = A S - Y`` formed once. Returns ``((U, V), history)`` of the paper test loss (b,), mean
    over the unseen tasks."""
    S = stats.Sxx
    C = bases @ S - stats.Syx  # (b, m, d, d)

    def step(state):
        U, V = state
        G = C + _mm(U, _mm(_T(V), S))
        return U - lr * _mm(G, V), V - lr * _mm(_T(G), U)

    def record(state):
        return jnp.mean(losses.paper_test_loss(bases + state[0] @ _T(state[1]), stats), axis=-1)

    return run_steps(step, (U0, V0), steps, record_every, record)
