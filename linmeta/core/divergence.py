"""Divergence of the iterative solvers: detection inside compiled code, a clear error outside.

Every gradient method in linmeta descends a loss that is bounded below (a quadratic in the task
matrix, or a quartic in low-rank factors). With a step size past the stability limit (for a
quadratic with largest curvature ``L``, any ``lr > 2 / L``) the error grows geometrically:
``|1 - lr L|^t``. For many steps that is still finite (50 standard-retraining steps at ``lr = 50``
give a loss of ~1e84), so finiteness alone misses it. A recorded loss counts as diverged when it is

    non-finite,   or   larger than ``BLOWUP_FACTOR`` times its first recorded value

(a stable descent method never raises its loss that much: gradient descent on a quadratic with a
stable step never raises it at all). A first value below the dtype's epsilon counts as epsilon, so
rounding noise around a zero loss is not mistaken for a blow-up. Newton traces are padded with NaN after the solver stops, so
callers pass ``nan_is_padding=True`` there and only infinities and blow-ups count.

- :func:`divergence_index` works on arrays (NumPy or JAX, inside ``jit``/``vmap`` too) and returns
  the index of the first diverged record, ``-1`` when none.
- :func:`check_history` is for eager public entry points: given a recorded history it raises
  :class:`DivergenceError` naming the stage, its step size(s) and the iteration, and does nothing
  when the values are tracers (inside a user's ``jit``, where an exception cannot be raised).
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["BLOWUP_FACTOR", "DivergenceError", "divergence_index", "check_history"]

BLOWUP_FACTOR = 1e3


class DivergenceError(ValueError):
    """A solver diverged. Attributes: ``stage`` (words), ``step_sizes`` (name -> value),
    ``iteration`` (the recorded step at which divergence was detected), ``value`` (the loss
    there) and ``start`` (the first recorded loss)."""

    def __init__(self, stage: str, step_sizes: Mapping[str, float], iteration: int, value: float,
                 start: float, stride: int = 1):
        self.stage = stage
        self.step_sizes = dict(step_sizes)
        self.iteration = int(iteration)
        self.value = float(value)
        self.start = float(start)
        sizes = ", ".join(f"{k}={v:g}" for k, v in self.step_sizes.items())
        what = "non-finite" if not np.isfinite(self.value) else f"{self.value:.3g}"
        when = (f"iteration {self.iteration}" if stride <= 1 else
                f"iteration {self.iteration} (recorded every {stride})")
        names = " or ".join(self.step_sizes) or "the step size"
        super().__init__(f"{stage} diverged at {when}: loss {what} from {self.start:.3g} with "
                         f"{sizes}; choose a smaller {names}")


def divergence_index(values, factor=BLOWUP_FACTOR, nan_is_padding: bool = False):
    """Index of the first record of ``values`` (records on axis 0, any trailing shape: a record
    diverges if any of its entries does) that is non-finite or exceeds ``factor`` times the first
    record's magnitude; ``-1`` when none. NumPy in, NumPy out; JAX arrays (also traced) give a
    JAX int."""
    xp = jnp if isinstance(values, jax.Array) else np
    v = xp.asarray(values)
    if v.ndim == 0 or v.shape[0] == 0:
        return xp.asarray(-1)
    v = v.reshape(v.shape[0], -1)
    start = xp.abs(v[0])
    start = xp.where(xp.isfinite(start), start, 0.0)
    nonfinite = xp.isinf(v) if nan_is_padding else ~xp.isfinite(v)
    big = xp.isfinite(v) & (v > factor * xp.maximum(start, xp.finfo(v.dtype).eps))
    bad = xp.any(nonfinite | big, axis=1)
    return xp.where(xp.any(bad), xp.argmax(bad), -1)


def _concrete(x) -> bool:
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(x))


def check_history(stage: str, steps, values, step_sizes: Mapping[str, float], *,
                  factor=BLOWUP_FACTOR, nan_is_padding: bool = False, final=None) -> None:
    """Raise :class:`DivergenceError` when the recorded ``values`` (at ``steps``) diverged, or when
    ``final`` (arrays of the end state, optional) is not finite. No-op on tracers."""
    if not _concrete((steps, values, final)):
        return
    steps = np.asarray(steps)
    v = np.asarray(values, dtype=float)
    idx = int(divergence_index(v, factor, nan_is_padding))
    v2 = v.reshape(v.shape[0], -1) if v.ndim else v.reshape(1, 1)
    stride = int(steps[1] - steps[0]) if steps.size > 1 else 1
    if idx >= 0:
        row = v2[idx]
        worst = row[~np.isfinite(row)][0] if np.any(~np.isfinite(row)) else np.max(row)
        raise DivergenceError(stage, step_sizes, int(steps[idx]), worst, float(np.max(np.abs(
            v2[0]))), stride)
    if final is not None:
        leaves = [np.asarray(x) for x in jax.tree.leaves(final)]
        if not all(np.all(np.isfinite(x)) for x in leaves):
            last = int(steps[-1]) if steps.size else 0
            raise DivergenceError(stage, step_sizes, last, float("nan"),
                                  float(np.max(np.abs(v2[0]))) if v2.size else float("nan"),
                                  stride)
