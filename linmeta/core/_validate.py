"""Input validation shared by every public entry point.

Every check raises ``ValueError`` whose message names the argument and the allowed range, so bad
input never turns into a NaN, a hang or a traceback from deep inside JAX. Checks on array *values*
(finiteness) run only on concrete arrays: inside ``jit``/``vmap`` the values are tracers and only
shapes can be checked.
"""
from __future__ import annotations

import numbers
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
    """True when ``x`` holds values (not a tracer inside jit/vmap/grad)."""
    return not isinstance(x, jax.core.Tracer)


def check_int(name: str, value, lo: int | None = None, hi: int | None = None,
              hi_label: str | None = None) -> int:
    """Return ``value`` as int, or raise ValueError naming ``name`` and the range [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    lo_s = "-inf" if lo is None else str(lo)
    hi_s = "inf" if hi is None else (f"{hi_label}={hi}" if hi_label else str(hi))
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{name} must be an integer in [{lo_s}, {hi_s}], got {value}")
    return value


def check_scalar(name: str, value, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False, hi_open: bool = False):
    """Check a real scalar (Python number or 0-d array) against an interval; tracers pass through."""
    if isinstance(value, jax.core.Tracer):
        return value
    try:
        v = float(np.asarray(value))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if np.ndim(value) != 0:
        raise ValueError(f"{name} must be a scalar, got shape {np.shape(value)}")
    lb = "(" if lo_open else "["
    rb = ")" if hi_open else "]"
    rng = f"{lb}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{rb}"
    bad = not np.isfinite(v)
    if bad or (lo is not None and (v < lo or (lo_open and v == lo))) or \
            (hi is not None and (v > hi or (hi_open and v == hi))):
        raise ValueError(f"{name} must be a finite number in {rng}, got {value!r}")
    return value


def check_array(name: str, x, ndim: int | None = None, shape: Sequence[int | None] | None = None,
                dtype=None):
    """Convert ``x`` to a JAX array and check rank, shape (None = any size) and finiteness."""
    if x is None:
        raise ValueError(f"{name} is required, got None")
    if not isinstance(x, jax.Array):
        try:
            arr = np.asarray(x)
        except Exception:  # pragma: no cover - exotic objects
            raise ValueError(f"{name} must be an array, got {type(x).__name__}") from None
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
        x = jnp.asarray(arr, dtype=dtype) if dtype is not None else jnp.asarray(arr)
    elif dtype is not None:
        x = x.astype(dtype)
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if shape is not None:
        want = tuple(shape)
        if len(want) != x.ndim or any(w is not None and w != s for w, s in zip(want, x.shape)):
            pretty = "(" + ", ".join("*" if w is None else str(w) for w in want) + ")"
            raise ValueError(f"{name} must have shape {pretty}, got {tuple(x.shape)}")
    if is_concrete(x) and jnp.issubdtype(x.dtype, jnp.inexact):
        # NumPy, not jnp: inside a jit trace jnp would turn a captured concrete array into a tracer
        if not bool(np.all(np.isfinite(np.asarray(x)))):
            raise ValueError(f"{name} contains NaN or inf; all entries must be finite")
    return x


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def float_dtype(dtype=None):
    if dtype is None:
        return jnp.asarray(0.0).dtype
    dt = jnp.dtype(dtype)
    if not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(f"dtype must be a floating dtype (float32 or float64), got {dt}")
    if dt == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError("dtype float64 needs jax.config.update('jax_enable_x64', True) "
                         "before any array is created")
    return dt


def memory_budget() -> int:
    """Bytes a computation may plan to use: 80% of the default accelerator's memory when it
    reports one, else half of the host's physical memory."""
    dev = jax.devices()[0]
    if dev.platform != "cpu":
        try:
            limit = (dev.memory_stats() or {}).get("bytes_limit")
        except Exception:  # pragma: no cover - backends without memory stats
            limit = None
        if limit:
            return int(0.8 * limit)
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2)
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 * 2 ** 30


def format_bytes(x) -> str:
    """``x`` bytes as GiB (from 1 GiB) or MiB."""
    return f"{x / 2 ** 30:.3g} GiB" if x >= 2 ** 30 else f"{x / 2 ** 20:.3g} MiB"
