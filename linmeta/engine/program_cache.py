"""Compiled programs kept across processes, so that a warm process skips tracing and lowering.

JAX's persistent compilation cache skips XLA's compilation, but a new process still traces and
lowers every program to find its cache entry (for the paper's T sweep about as long as running
it). linmeta's own programs are determined by a short description (protocol, static shape, batch
layout, devices, dtype) plus the code and the environment, so they can be found without tracing:

    key = sha256(description, linmeta's source files, jax/jaxlib versions, every jax.config
                 value, XLA_FLAGS, backend platform and devices, the CPU's model and flags)

and the executable is stored with :mod:`jax.experimental.serialize_executable`. The store is a
folder ``linmeta-programs`` inside JAX's persistent compilation cache folder
(``jax.config.jax_compilation_cache_dir``): it is used exactly when that cache is on (which
:mod:`linmeta`'s entry points arrange), moves and clears with it, and is skipped otherwise. Only
programs whose code lives in the linmeta package are stored (their code is in the key); an entry
that cannot be read or loaded is recompiled and replaced. Entries are the user's own files, read
with :mod:`pickle` (as JAX's own cache holds executables).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pickle
import platform
import threading
import zlib
from typing import Any, Callable

import jax

from linmeta.core.files import atomic_write_bytes

__all__ = ["folder", "fingerprint", "load_or_compile", "FOLDER_NAME"]

FOLDER_NAME = "linmeta-programs"
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the whole linmeta package


def folder() -> str | None:
    """The store's folder, or None when JAX's persistent compilation cache is off."""
    base = jax.config.jax_compilation_cache_dir
    if not base or not jax.config.jax_enable_compilation_cache:
        return None
    return os.path.join(os.path.expanduser(str(base)), FOLDER_NAME)


@functools.lru_cache(maxsize=1)
def _source_hash() -> str:
    h = hashlib.sha256()
    for root, dirs, files in os.walk(_PACKAGE):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                h.update(os.path.relpath(path, _PACKAGE).encode())
                with open(path, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def _cpu_identity() -> str:
    text = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features")):
                    text += line
                    if line.startswith(("flags", "Features")):
                        break
    except OSError:
        pass
    return hashlib.sha256(text.encode()).hexdigest()


def _environment(devices) -> str:
    import jaxlib

    config = {k: repr(v) for k, v in jax.config.values.items()
              if k != "jax_compilation_cache_dir"}
    d0 = devices[0]
    return repr((jax.__version__, jaxlib.__version__, sorted(config.items()),
                 os.environ.get("XLA_FLAGS", ""), d0.platform, d0.client.platform_version,
                 [(d.id, d.device_kind, d.process_index) for d in devices],
                 jax.process_count(), _cpu_identity(), _source_hash()))


def fingerprint(description: Any, devices) -> str:
    """The key of a program: ``description`` (its repr must say everything the program depends
    on besides linmeta's code and the environment) and the environment."""
    return hashlib.sha256((repr(description) + _environment(devices)).encode()).hexdigest()


def _in_package(fns) -> bool:
    for fn in fns:
        mod = getattr(fn, "__module__", None) or ""
        if not (mod == "linmeta" or mod.startswith("linmeta.")):
            return False
    return True


@functools.lru_cache(maxsize=1)
def _lapack_ready() -> None:
    """Lower (not compile) a tiny SVD once: that initialises jaxlib's CPU LAPACK kernels. A stored
    program that calls LAPACK, loaded into a process that has lowered no LAPACK call yet, would
    call uninitialised kernels (a segmentation fault; ``jax.export`` initialises them before it
    runs a deserialised program, for the same reason). About 0.2 s, so only for programs stored
    with a LAPACK call in their text."""
    import jax.numpy as jnp
    import numpy as np

    jax.jit(jnp.linalg.svd, static_argnames=("full_matrices", "compute_uv")).lower(
        np.zeros((2, 2), np.float32), compute_uv=False)


_HITS = threading.local()


def _count_hit(event, **kwargs):
    if event == "/jax/compilation_cache/cache_hits":
        _HITS.n = getattr(_HITS, "n", 0) + 1


jax.monitoring.register_event_listener(_count_hit)


@contextlib.contextmanager
def _jax_cache_bypassed():
    """JAX's persistent compilation cache unused inside the block (JAX has no public switch once
    its cache is initialised; this sets its private flag and restores it). Yields False when that
    flag does not exist in this JAX version."""
    try:
        from jax._src import compilation_cache as cc

        lock, _ = cc._cache_initialized_mutex, cc._cache_used
    except (ImportError, AttributeError):
        yield False
        return
    cc.is_cache_used(jax.devices()[0].client)  # initialise the flags before changing them
    with lock:
        old = cc._cache_used
        cc._cache_used = False
    try:
        yield True
    finally:
        with lock:
            cc._cache_used = old


def _compiled_here(lower: Callable[[], Any], options: dict):
    """``lower().compile(options)`` compiled by XLA in this process without JAX's persistent
    cache, or None when that cache cannot be bypassed (or answered anyway). With jax 0.10 an
    XLA:CPU executable that JAX read from its cache, or compiled after reading the same program
    from it in this process, serializes without some of its functions (the next process fails
    with "Function ... not found"; tested in tests/test_compile_cache.py). A code change of
    linmeta changes this store's key but not the program's HLO, so JAX's cache would answer."""
    with _jax_cache_bypassed() as bypassed:
        if not bypassed:
            return None
        _HITS.n = 0
        lowered = lower()
        exe = lowered.compile(options)
    if _HITS.n:
        return None
    try:
        uses_lapack = "lapack" in lowered.as_text()
    except Exception:  # pragma: no cover - no text: assume it does
        uses_lapack = True
    return exe, uses_lapack


def load_or_compile(description: Any, devices, lower: Callable[[], Any], options: dict,
                    code: tuple = ()) -> tuple[Any, bool]:
    """The compiled program: from the store when an entry for ``description`` exists, else
    ``lower().compile(options)`` (then stored). ``devices``: the devices the program runs on
    (in order). ``code``: the functions the program runs (stored only when all are linmeta's
    own). Returns ``(executable, loaded)``."""
    where = folder()
    if where is not None and _in_package(code):
        path = os.path.join(where, fingerprint((description, options), devices) + ".bin")
        try:
            with open(path, "rb") as f:
                payload, in_tree, out_tree, uses_lapack = pickle.loads(
                    zlib.decompress(f.read()))
            from jax.experimental import serialize_executable
            if uses_lapack and devices[0].platform == "cpu":
                _lapack_ready()
            exe = serialize_executable.deserialize_and_load(
                payload, in_tree, out_tree, backend=devices[0].client,
                execution_devices=list(devices))
            return exe, True
        except FileNotFoundError:
            pass
        except Exception:  # unreadable or incompatible entry: compile again and replace it
            pass
        compiled = _compiled_here(lower, options)
        if compiled is None:  # JAX's cache answered and could not be bypassed: usable, not stored
            return lower().compile(options), False
        exe, uses_lapack = compiled
        try:
            from jax.experimental import serialize_executable

            data = zlib.compress(pickle.dumps((*serialize_executable.serialize(exe),
                                               uses_lapack)), 1)
            os.makedirs(where, exist_ok=True)
            atomic_write_bytes(path, data)
        except Exception:  # a store that cannot be written only costs the next process time
            pass
        return exe, False
    return lower().compile(options), False
