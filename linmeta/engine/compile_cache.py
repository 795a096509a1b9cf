"""Persistent compilation cache: compile a program once, reuse it in every later process.

linmeta's programs (a sweep's shape groups, the Meta-LoRA solvers) take 1-3 s each to compile with
XLA, often more than running them. JAX can keep compiled executables on disk, keyed by the
program, the backend and the compile options; a later process that builds the same program loads
it instead of compiling. :func:`enable` switches this on for linmeta's entry points (the command
line, ``linmeta verify``, the experiments and the benchmarks call it first):

- Folder: ``LINMETA_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/linmeta`` (default
  ``~/.cache/linmeta``), or the ``path`` argument. Created with the user's umask.
- Off: ``LINMETA_NO_CACHE=1`` (also ``true``/``yes``), or the flag ``--no-compile-cache`` of
  the entry points (:func:`add_argument`, :func:`enable_from_args`). Off means linmeta does not
  switch the cache on; a cache that the user configured for JAX directly is left alone.
- Every program is written (JAX's defaults skip programs that compile in under 1 s and leave the
  entry size to the file system; linmeta's programs are smaller): the minimum compile time is
  set to :data:`MIN_COMPILE_SECONDS` and the minimum entry size is disabled.
- A folder that cannot be created or written gives one warning line on stderr and no cache,
  never an error; JAX itself only warns when a cache read or write fails later.
- Idempotent: a second call with the same folder does nothing. A call after JAX has already
  compiled something re-initialises JAX's cache, so later compilations use the folder.

The cache holds executable code that JAX loads without checking it: keep it private to the user
(the default folder is), and never point it at a folder others can write.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

__all__ = ["MIN_COMPILE_SECONDS", "cache_dir", "enable", "disable", "enabled_dir",
           "add_argument", "enable_from_args", "disabled_by_env"]

MIN_COMPILE_SECONDS = 0.0
_TRUE = ("1", "true", "yes", "on")

_state = {"path": None}   # the folder this process has switched on (None: off)
_warned: set = set()


def disabled_by_env() -> bool:
    """True when ``LINMETA_NO_CACHE`` is set to 1/true/yes/on."""
    return os.environ.get("LINMETA_NO_CACHE", "").strip().lower() in _TRUE


def cache_dir() -> str:
    """The cache folder: ``LINMETA_CACHE_DIR``, else ``$XDG_CACHE_HOME/linmeta``, else
    ``~/.cache/linmeta`` (absolute; not created here)."""
    path = os.environ.get("LINMETA_CACHE_DIR")
    if not path:
        xdg = os.environ.get("XDG_CACHE_HOME")
        if not xdg or not os.path.isabs(os.path.expanduser(xdg)):  # XDG: relative paths are invalid
            xdg = os.path.join("~", ".cache")
        path = os.path.join(xdg, "linmeta")
    return os.path.abspath(os.path.expanduser(path))


def enabled_dir() -> Optional[str]:
    """The folder :func:`enable` switched on in this process, or None."""
    return _state["path"]


def _usable_folder(path: str) -> Optional[str]:
    """Create ``path`` (user's umask) and check it is a writable folder; the reason if not."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        return f"cannot create it ({e.strerror or e})"
    if not os.path.isdir(path):
        return "it is not a folder"
    if not os.access(path, os.W_OK | os.X_OK):
        return "it is not writable"
    return None


def enable(path: Optional[str] = None) -> Optional[str]:
    """Switch JAX's persistent compilation cache on in ``path`` (default :func:`cache_dir`).

    Returns the folder in use, or None when the cache is off (``LINMETA_NO_CACHE``) or the folder
    is unusable (one warning line on stderr, once per folder)."""
    if disabled_by_env():
        return None
    path = os.path.abspath(os.path.expanduser(path)) if path else cache_dir()
    if _state["path"] == path:
        return path
    why = _usable_folder(path)
    if why is not None:
        if path not in _warned:
            _warned.add(path)
            print(f"linmeta: warning: compilation cache off: folder {path}: {why}",
                  file=sys.stderr, flush=True)
        return None
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    cc.reset_cache()  # takes effect even if this process has compiled before
    _state["path"] = path
    return path


def disable() -> None:
    """Switch off a cache that :func:`enable` switched on in this process."""
    if _state["path"] is None:
        return
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc
    jax.config.update("jax_compilation_cache_dir", None)
    cc.reset_cache()
    _state["path"] = None


def add_argument(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--no-compile-cache`` to an entry point's parser (see :func:`enable_from_args`)."""
    parser.add_argument("--no-compile-cache", action="store_true",
                        help="do not use the persistent compilation cache (folder: "
                             "LINMETA_CACHE_DIR, else $XDG_CACHE_HOME/linmeta, default "
                             "~/.cache/linmeta; LINMETA_NO_CACHE=1 also turns it off)")
    return parser


def enable_from_args(args: argparse.Namespace) -> Optional[str]:
    """:func:`enable` unless the parsed arguments carry ``--no-compile-cache``."""
    if getattr(args, "no_compile_cache", False):
        return None
    return enable()
