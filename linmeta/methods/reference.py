"""Plain NumPy reference implementations over raw samples, written the way such scripts usually are.

They share no code with the JAX solvers and work on the raw samples (not on sufficient statistics),
so agreement with them is an independent check, and they are the baseline of
``benchmarks/paper_protocol.py``. Conventions: ``X``, ``Y`` of shape (T, N, d), samples as rows,
``Y = X M^T + noise``; loss of task t is ``1/(2N) sum_i ||y_i - M x_i||^2``.

- :func:`alternating_protocol`: the paper's Meta-LoRA protocol (docs/theory.md#meta-lora), per outer
  iteration ``inner_steps`` adapter steps ``U_t -= lr_adapter (G_t + G_t^T) U_t`` then one base step
  ``A -= lr_base mean_t G_t``, with ``G_t = (1/N) sum_i ((A + U_t U_t^T) x_i - y_i) x_i^T``.
- :func:`standard_gd`: gradient descent on the pooled samples.
- :func:`finetune_gd`: the asymmetric fine-tuning loop, recording the paper's test loss
  ``sum_i ||(M - M*) x_i||^2``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["alternating_protocol", "standard_gd", "finetune_gd", "raw_loss"]


def raw_loss(M, X, Y):
    """Per-task ``1/(2N) sum_i ||y_i - M_t x_i||^2`` for M of shape (T, d, d) or (d, d)."""
    M = np.broadcast_to(M, (X.shape[0],) + M.shape[-2:])
    R = np.einsum("tij,tnj->tni", M, X) - Y
    return 0.5 * np.sum(R * R, axis=(1, 2)) / X.shape[1]


def _task_grad(M, X, Y):
    """``(1/N) sum_i (M x_i - y_i) x_i^T`` for each task."""
    N = X.shape[1]
    R = np.einsum("tij,tnj->tni", M, X) - Y
    return np.einsum("tni,tnj->tij", R, X) / N


def alternating_protocol(X, Y, U0, A0=None, outer_steps=3000, inner_steps=10, lr_adapter=0.003,
                         lr_base=0.03, record=False):
    """The paper's alternating protocol; returns ``(A, U, history)`` (history: list of (A, U) copies)."""
    X = np.asarray(X, float)
    Y = np.asarray(Y, float)
    U = np.array(U0, float)
    T, N, d = X.shape
    A = np.zeros((d, d)) if A0 is None else np.array(A0, float)
    history = []
    for _ in range(outer_steps):
        for _ in range(inner_steps):
            G = _task_grad(A + U @ U.transpose(0, 2, 1), X, Y)
            U = U - lr_adapter * (G + G.transpose(0, 2, 1)) @ U
        G = _task_grad(A + U @ U.transpose(0, 2, 1), X, Y)
        A = A - lr_base * G.mean(axis=0)
        if record:
            history.append((A.copy(), U.copy()))
    return A, U, history


def standard_gd(X, Y, A0=None, steps=3000, lr=0.03):
    """Gradient descent on ``(1/T) sum_t L_t(A)`` over raw samples."""
    X = np.asarray(X, float)
    Y = np.asarray(Y, float)
    T, N, d = X.shape
    A = np.zeros((d, d)) if A0 is None else np.array(A0, float)
    for _ in range(steps):
        G = _task_grad(np.broadcast_to(A, (T, d, d)), X, Y)
        A = A - lr * G.mean(axis=0)
    return A


def finetune_gd(X, Y, base, U0, V0, M_star, steps=1000, lr=0.005):
    """Asymmetric fine-tuning ``M = base + U V^T`` by simultaneous gradient steps on each task.

    Returns ``(U, V, test_loss)`` with ``test_loss`` of shape (steps + 1, T): the paper's
    ``sum_i ||(M - M*) x_i||^2`` before each step and after the last."""
    X = np.asarray(X, float)
    Y = np.asarray(Y, float)
    U = np.array(U0, float)
    V = np.array(V0, float)
    M_star = np.asarray(M_star, float)

    def test_loss(M):
        D = np.einsum("tij,tnj->tni", M - M_star, X)
        return np.sum(D * D, axis=(1, 2))

    losses = []
    for _ in range(steps):
        M = base + U @ V.transpose(0, 2, 1)
        losses.append(test_loss(M))
        G = _task_grad(M, X, Y)
        U, V = U - lr * G @ V, V - lr * G.transpose(0, 2, 1) @ U
    losses.append(test_loss(base + U @ V.transpose(0, 2, 1)))
    return U, V, np.asarray(losses)
