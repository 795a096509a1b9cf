"""Evaluate many small closed-form calls as one compiled program (for the rows that check
:mod:`linmeta.core`'s closed forms against NumPy).

Called eagerly, every (primitive, shape) pair of a call is its own XLA compilation: a row that
evaluates a few dozen small calls pays a few seconds on a loaded CPU. :func:`in_one_program`
traces all of them into one ``jax.jit`` program (one compilation, stored by the persistent
compilation cache) and returns NumPy arrays.
"""
from __future__ import annotations

import jax
import numpy as np

__all__ = ["in_one_program"]


def in_one_program(calls):
    """``[fn(*args) for fn, args in calls]`` computed in one jitted program; ``args`` hold only
    arrays (bind every static argument into ``fn``). Returns the outputs as NumPy arrays."""
    fns = [fn for fn, _ in calls]
    program = jax.jit(lambda args: [fn(*a) for fn, a in zip(fns, args)])
    return jax.tree.map(np.asarray, program([tuple(a) for _, a in calls]))
