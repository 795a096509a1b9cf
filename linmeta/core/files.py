"""Files written atomically with the user's umask, and the small helpers around them.

Every file is written to a temporary file in the same folder, then ``os.replace``d over the target,
so a reader (or a restarted sweep) sees either the old complete file or the new complete file, never
half of one. Files get the mode the user's umask gives (0o644 under umask 022), not the 0o600 of
``tempfile.mkstemp``. This is the one writer of the package: truth files, run records, sweep
folders, reports and figures all go through it.
"""
from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import math
import os
import secrets
import tempfile

import numpy as np

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_write_npz",
           "atomic_write_csv", "to_jsonable", "file_sha256", "check_writable_dir"]


def _create_temp(folder: str, name: str) -> tuple[int, str]:
    """A new, empty temporary file next to ``name`` in ``folder``, created with mode 0o666 minus
    the umask (``tempfile.mkstemp`` would make it 0o600 whatever the umask, and ``os.replace``
    keeps that mode)."""

    for _ in range(100):
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                           0o666), tmp
        except FileExistsError:  # pragma: no cover - 32 random bits taken
            continue
    raise FileExistsError(f"no free temporary file name for {name!r} in {folder!r}")


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``.

    The file gets the mode the user's umask gives a new file (e.g. 0o644 under umask 022)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = _create_temp(folder, os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj):
    """Plain JSON types: arrays -> lists, NumPy/JAX scalars -> Python, non-finite floats ->
    the strings ``"nan"``, ``"inf"``, ``"-inf"`` (strict JSON has no such numbers)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    if obj is None or isinstance(obj, str):
        return obj
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):  # numpy / jax arrays
        arr = np.asarray(obj)
        return to_jsonable(arr.item() if arr.ndim == 0 else arr.tolist())
    return str(obj)


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n")


def atomic_write_npz(path, arrays: dict) -> None:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write_bytes(path, buf.getvalue())


def _csv_cell(v) -> str:
    v = to_jsonable(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)  # shortest round-trip representation
    if v is None:
        return ""
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def atomic_write_csv(path, rows: list[dict], columns: list[str]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for row in rows:
        w.writerow([_csv_cell(row.get(c)) for c in columns])
    atomic_write_text(path, buf.getvalue())


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_writable_dir(path) -> str:
    """Create ``path`` (and parents) if needed and prove it is writable; OSError otherwise.

    The OSError message names the folder, so the command line can print it as one line; a path
    that is a file (or lies under one) is named as a file, not as an unwritable folder.
    """
    path = os.path.abspath(os.fspath(path))
    existing = path
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if os.path.exists(existing) and not os.path.isdir(existing):
        if existing == path:
            raise OSError(errno.ENOTDIR, f"output folder {path!r} is a file, not a folder; "
                                         "choose a writable --out folder")
        raise OSError(errno.ENOTDIR, f"output folder {path!r} is not writable ({existing!r} is "
                                     "a file, not a folder); choose a writable --out")
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise OSError(e.errno, f"output folder {path!r} is not writable "
                               f"({e.strerror or type(e).__name__}); choose a writable --out") \
            from None
    return path
