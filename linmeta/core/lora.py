"""Low-rank adapters (docs/theory.md#meta-lora).

- Symmetric adapter (retraining): ``Delta = U U^T``, U of shape (..., d, r); PSD, rank <= r.
- Asymmetric adapter (fine-tuning): ``Delta = U V^T``, U, V of shape (..., d, r); rank <= r.

Gradients through the adapter, for a loss with matrix gradient G = dL/dM at M = A + Delta:

    d/dU L(A + U U^T) = (G + G^T) U,        d/dU L(A + U V^T) = G V,   d/dV L(A + U V^T) = G^T U.

A symmetric adapter started at exactly zero has zero gradient and never moves, hence the random
initialisation ``N(0, init_scale^2)`` (the paper uses 0.1).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["symmetric_delta", "asymmetric_delta", "init_factor", "symmetric_grad",
           "asymmetric_grads", "adapter_dof"]


def _T(x):
    return jnp.swapaxes(x, -1, -2)


def symmetric_delta(U):
    """``U U^T`` for U of shape (..., d, r)."""
    return U @ _T(U)


def asymmetric_delta(U, V):
    """``U V^T`` for U, V of shape (..., d, r)."""
    return U @ _T(V)


def init_factor(key, shape, scale=0.1, dtype=None):
    """A factor with i.i.d. ``N(0, scale^2)`` entries (the paper's adapter initialisation)."""
    dtype = jnp.asarray(0.0).dtype if dtype is None else dtype
    return scale * jax.random.normal(key, shape, dtype)


def symmetric_grad(G, U):
    """Gradient with respect to U of ``L(A + U U^T)`` given ``G = dL/dM``."""
    return (G + _T(G)) @ U


def asymmetric_grads(G, U, V):
    """Gradients with respect to (U, V) of ``L(A + U V^T)`` given ``G = dL/dM``."""
    return G @ V, _T(G) @ U


def adapter_dof(d: int, r: int, symmetric: bool = False) -> int:
    """Dimension of the set of rank-r adapters: ``r(2d - r)`` for U V^T, ``dr - r(r-1)/2`` for U U^T."""
    r = min(r, d)
    return r * (2 * d - r) if not symmetric else d * r - r * (r - 1) // 2
