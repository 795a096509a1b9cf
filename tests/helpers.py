"""Small helpers shared by the tests."""
import contextlib

import jax


@contextlib.contextmanager
def count_compiles():
    """Count XLA compilations inside the block: ``with count_compiles() as n: ...; n()``."""
    counter = {"n": 0}
    try:
        from jax._src import monitoring
    except ImportError:  # pragma: no cover
        monitoring = None

    def listener(event, duration_secs=None, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            counter["n"] += 1

    monitoring.register_event_duration_secs_listener(listener)
    try:
        yield lambda: counter["n"]
    finally:
        monitoring.unregister_event_duration_listener(listener)


def rel(a, b):
    import numpy as np
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


# ----------------------------------------------------------------------------- dtype-aware tolerances
def dtype():
    """The session's float dtype: float64, or float32 under ``JAX_ENABLE_X64=0`` (see conftest)."""
    import numpy as np

    return np.dtype(jax.dtypes.canonicalize_dtype(np.float64))


def eps(dt=None) -> float:
    """Machine epsilon of ``dt`` (default: the session's dtype)."""
    import numpy as np

    return float(np.finfo(np.dtype(dt) if dt is not None else dtype()).eps)


def tol(float64: float, float32: float | None = None, dt=None) -> float:
    """The tolerance for ``dt`` (default: the session's dtype): ``float64`` in float64; in float32
    ``float32``, by default ``float64`` scaled by eps32 / eps64 = 2^29 (for errors that grow in
    proportion to the rounding unit). Give ``float32`` explicitly where the error grows faster
    (a condition number, an iteration that stops at a dtype-dependent floor)."""
    import numpy as np

    dt = np.dtype(dt) if dt is not None else dtype()
    if dt == np.float64:
        return float64
    return float32 if float32 is not None else float64 * eps(np.float32) / eps(np.float64)
