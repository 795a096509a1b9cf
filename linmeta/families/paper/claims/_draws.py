"""One Gaussian draw per program for the claim modules C4, C6, C8.

Every ``jax.random.normal`` call site inside a jitted program costs a few hundred milliseconds of
XLA compilation on CPU (the threefry hash), which dominates the "quick" settings. :func:`draw` takes
all the normal variates a program needs from a single call and slices them.
:func:`gaussian_truth` builds the paper's ground truth from such a slice: the same distribution as
:func:`linmeta.sample_truth` (``A*`` symmetrised N(0, 1), ``U*_t`` and ``U_new`` i.i.d. N(0, 1)),
not the same random stream.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from linmeta.core.problem import Truth

__all__ = ["draw", "gaussian_truth", "truth_shapes"]


def draw(key, shapes, dtype=None):
    """Standard normal arrays of the given shapes, all from one ``jax.random.normal`` call."""
    dt = jnp.asarray(0.0).dtype if dtype is None else dtype
    sizes = [math.prod(s) for s in shapes]
    z = jax.random.normal(key, (sum(sizes),), dt)
    out, start = [], 0
    for shape, n in zip(shapes, sizes):
        out.append(z[start:start + n].reshape(shape))
        start += n
    return out


def truth_shapes(d, k, T, n_unseen=1):
    return [(d, d), (T, d, k), (n_unseen, d, k)]


def gaussian_truth(A, U, U_new):
    """``Truth((A + A^T)/2, U, U_new)`` from three standard normal arrays."""
    return Truth((A + A.T) / 2, U, U_new)
