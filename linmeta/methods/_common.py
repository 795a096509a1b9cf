"""Shared pieces of the retraining solvers: the result container and a strided scan driver."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from linmeta.core._validate import check_int

__all__ = ["RetrainResult", "History", "run_steps", "record_steps", "DENSE_MAX_D",
           "cholesky_ok"]

# Up to this d, dense SVD / eigendecompositions (the small-d numbers); above, where they cost
# minutes at d = 4096 on two cores, Cholesky factorisations and subspace iteration
# (linmeta.finetune.reduced_rank_fit, linmeta.retrain.pooled_least_squares).
DENSE_MAX_D = 512


def cholesky_ok(L, S):
    """True when the Cholesky factor ``L`` of the PSD ``S`` is usable: finite, and every pivot
    ``L_ii^2`` above ``sqrt(eps) max_i S_ii`` (condition number below ~1/sqrt(eps); a singular
    ``S`` can give tiny positive pivots instead of NaN). Callers fall back to the dense SVD."""
    piv = jnp.diagonal(L, axis1=-2, axis2=-1)
    floor = jnp.sqrt(jnp.finfo(S.dtype).eps) * jnp.max(jnp.diagonal(S, axis1=-2, axis2=-1))
    return jnp.all(jnp.isfinite(L)) & (jnp.min(piv * piv) > floor)


class History(NamedTuple):
    """Values recorded along an iterative solver: ``step`` (n_rec,) and ``value`` (n_rec, ...)."""

    step: jax.Array
    value: Any


class RetrainResult(NamedTuple):
    """Output of a retraining method.

    Attributes:
      base: (d, d) retrained base ``A_hat`` (kept for fine-tuning).
      adapters: (T, d, r) per-task adapter factors ``U_t`` (Meta-LoRA), ``None`` for standard retraining.
      objective: excess objective ``(1/T) sum_t [L_t(A_hat + U_t U_t^T) - min L_t]`` at the returned
        point (``U_t = 0`` for standard retraining). Zero at a population global minimum.
      history: :class:`History` of the excess objective along the solver (``None`` for closed forms).
      start_objectives: (n_starts,) final excess objective of every start (the best one is returned).
    """

    base: jax.Array
    adapters: Any
    objective: jax.Array
    history: Any
    start_objectives: Any


def record_steps(steps: int, record_every: int) -> np.ndarray:
    """The step numbers at which :func:`run_steps` records: 0, s, 2s, ... and ``steps``."""
    marks = list(range(0, steps + 1, record_every))
    if marks[-1] != steps:
        marks.append(steps)
    return np.asarray(marks)


def run_steps(step: Callable, state, steps: int, record_every: int, record: Callable):
    """Apply ``state = step(state)`` ``steps`` times inside ``lax.scan``, recording
    ``record(state)`` at the steps of :func:`record_steps`. Memory grows with the number of
    records, not with ``steps``. Returns ``(state, History)``."""
    steps = check_int("steps", steps, 0)
    record_every = check_int("record_every", record_every, 1)
    n_chunks, rem = divmod(steps, record_every)

    def many(s, n):
        return lax.scan(lambda c, _: (step(c), None), s, None, length=n)[0] if n else s

    def chunk(s, _):
        s = many(s, record_every)
        return s, record(s)

    first = record(state)
    state, recs = lax.scan(chunk, state, None, length=n_chunks)
    parts = [jax.tree.map(lambda x: x[None], first), recs]
    if rem:
        state = many(state, rem)
        parts.append(jax.tree.map(lambda x: x[None], record(state)))
    values = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *parts)
    return state, History(jnp.asarray(record_steps(steps, record_every)), values)
