"""Results a paper can cite: atomic files, run records with their provenance, sweep folders.

Every file is written atomically: to a temporary file in the same folder, then ``os.replace``, so a
reader (or a restarted sweep) sees either the old complete file or the new complete file, never half
of one. Files get the mode the user's umask gives (0o644 under umask 022), so the results of a
shared sweep are readable by whoever the umask allows.

Layout written by ``linmeta run --out DIR``::

    DIR/record.json        config, seed, truth (sampled: truth_seed; file: path + sha256), results,
                           theory, divergence flags, versions, dtype, device, timings
    DIR/trajectories.npz   recorded curves (retraining objective, fine-tuning test losses, ...)

Layout written by ``linmeta sweep SPEC --out DIR``::

    DIR/manifest.json          spec, versions, device, dtype, chunk size, start/update/finish times,
                               planned and finished configuration ids, per-chunk timings
    DIR/results.csv            tidy table: one row per configuration x seed, in grid order
    DIR/trajectories/<id>.npz  recorded curves of configuration <id>

Resume rule: a configuration is finished when its row is in ``results.csv``. Its trajectories are
written before the row, the manifest after it, so a kill at any moment loses at most the chunk that
was running; a restart recomputes exactly that chunk.
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np

from linmeta.core.files import (atomic_write_bytes, atomic_write_csv, atomic_write_json,
                                atomic_write_npz, atomic_write_text, check_writable_dir,
                                file_sha256, to_jsonable)
from linmeta.core.version import __version__ as _VERSION

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_write_npz",
           "atomic_write_csv", "read_csv", "TEXT_COLUMNS", "to_jsonable", "environment",
           "file_sha256",
           "now_iso", "check_writable_dir", "SweepStore", "load_sweep", "load_trajectories",
           "RUN_RECORD", "TRAJECTORIES",
           "MANIFEST", "RESULTS_CSV", "TRAJ_DIR"]

RUN_RECORD = "record.json"
TRAJECTORIES = "trajectories.npz"
MANIFEST = "manifest.json"
RESULTS_CSV = "results.csv"
TRAJ_DIR = "trajectories"
FORMAT_VERSION = 1


def _parse_cell(s: str):
    if s == "":
        return None
    if s in ("true", "false"):
        return s == "true"
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        return s


TEXT_COLUMNS = ("id",)


def read_csv(path, text_columns=TEXT_COLUMNS) -> list[dict]:
    """Rows of a CSV written by :func:`atomic_write_csv`, with numbers and booleans parsed, except
    in ``text_columns`` (default: ``id``), which stay strings: a configuration id is a hex digest,
    and one made of digits only (``"123456789012"``) or of digits and one ``e`` (``"12e345678901"``)
    must not become a number."""
    keep = frozenset(text_columns or ())
    with open(path, newline="") as f:
        return [{k: (v if k in keep else _parse_cell(v)) for k, v in row.items()}
                for row in csv.DictReader(f)]


# ----------------------------------------------------------------------------- provenance
def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def environment() -> dict:
    """Versions of linmeta, JAX, jaxlib, NumPy, Python; the default dtype; the devices."""
    try:
        import jaxlib  # its version attribute moved across releases
        jaxlib_version = getattr(jaxlib, "__version__", None) or jaxlib.version.__version__
    except Exception:  # pragma: no cover - jaxlib layout differs across versions
        jaxlib_version = None
    devices = jax.devices()
    dev = devices[0]
    return {
        "linmeta": _VERSION,
        "jax": jax.__version__,
        "jaxlib": jaxlib_version,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "dtype": str(jnp.asarray(0.0).dtype),
        "x64": bool(jax.config.jax_enable_x64),
        "device": _device_name(dev),
        "device_count": len(devices),
        "backend": jax.default_backend(),
    }


def _device_name(dev) -> str:
    kind = getattr(dev, "device_kind", None) or dev.platform
    return dev.platform if kind.lower() == dev.platform.lower() else f"{dev.platform} ({kind})"


# ----------------------------------------------------------------------------- sweep folders
class SweepStore:
    """The on-disk state of one sweep: manifest, tidy table, trajectories; resumable.

    ``columns`` fixes the CSV column order (config keys, then the scalar results). Rows are kept in
    the order of ``planned_ids`` (grid order), so an interrupted and resumed sweep writes the same
    table as an uninterrupted one.
    """

    def __init__(self, folder, spec: dict, planned_ids: list[str], *, truth_info=None,
                 chunk_size: int | None, env: dict | None = None):
        self.folder = os.path.abspath(os.fspath(folder))
        self.spec = to_jsonable(spec)
        self.planned_ids = list(planned_ids)
        self.truth_info = truth_info
        self.chunk_size = None if chunk_size is None else int(chunk_size)  # None: engine default
        self.env = env
        self.rows: dict[str, dict] = {}
        self.columns: list[str] | None = None
        self.manifest: dict | None = None

    # paths
    @property
    def manifest_path(self):
        return os.path.join(self.folder, MANIFEST)

    @property
    def csv_path(self):
        return os.path.join(self.folder, RESULTS_CSV)

    def traj_path(self, cid: str):
        return os.path.join(self.folder, TRAJ_DIR, f"{cid}.npz")

    def open(self) -> int:
        """Create the folder or reopen an earlier run of the same sweep; returns the number of
        configurations already finished. ValueError if the folder holds a different sweep."""
        if os.path.exists(self.manifest_path):
            with open(self.manifest_path) as f:
                old = json.load(f)
            if old.get("spec") != self.spec or old.get("truth") != to_jsonable(self.truth_info):
                raise ValueError(f"output folder {self.folder!r} already holds a different sweep "
                                 "(its manifest.json has another spec or truth); use a new --out "
                                 "or delete the folder")
            old_dtype = (old.get("environment") or {}).get("dtype")
            new_dtype = (self.env or {}).get("dtype")
            if old_dtype and new_dtype and old_dtype != new_dtype:
                raise ValueError(f"output folder {self.folder!r} holds a {old_dtype} sweep; resume "
                                 f"it in {old_dtype} (now {new_dtype}: "
                                 f"{'drop' if old_dtype == 'float64' else 'add'} --float32)")
            self.chunk_size = old.get("chunk_size", self.chunk_size)
            self.manifest = old
            if os.path.exists(self.csv_path):
                planned = set(self.planned_ids)
                for row in read_csv(self.csv_path):
                    if row.get("id") in planned and os.path.exists(self.traj_path(row["id"])):
                        self.rows[row["id"]] = row
                with open(self.csv_path, newline="") as f:
                    self.columns = next(csv.reader(f), None)
            self.manifest["resumed"] = list(self.manifest.get("resumed", [])) + [
                {"at": now_iso(), "environment": self.env}]
            self.manifest["status"] = "running"
        else:
            os.makedirs(self.folder, exist_ok=True)
            self.manifest = {
                "kind": "linmeta.sweep", "format_version": FORMAT_VERSION,
                "spec": self.spec, "truth": to_jsonable(self.truth_info),
                "environment": self.env, "chunk_size": self.chunk_size,
                "started": now_iso(), "updated": None, "finished": None, "status": "running",
                "planned": len(self.planned_ids), "planned_ids": self.planned_ids,
                "finished_ids": [], "chunks": [],
            }
        os.makedirs(os.path.join(self.folder, TRAJ_DIR), exist_ok=True)
        self._write_manifest()
        return len(self.rows)

    def finished(self, cid: str) -> bool:
        return cid in self.rows

    def add_chunk(self, rows: list[dict], trajectories: list[dict], seconds: float,
                  columns: list[str]) -> None:
        """Store one finished chunk: trajectories first, then the table, then the manifest."""
        for row, traj in zip(rows, trajectories):
            atomic_write_npz(self.traj_path(row["id"]), traj)
        if self.columns is None:
            self.columns = list(columns)
        else:
            self.columns += [c for c in columns if c not in self.columns]
        for row in rows:
            self.rows[row["id"]] = row
        ordered = [self.rows[i] for i in self.planned_ids if i in self.rows]
        atomic_write_csv(self.csv_path, ordered, self.columns)
        self.manifest["chunks"].append({"ids": [r["id"] for r in rows],
                                        "seconds": float(seconds), "finished": now_iso()})
        self._write_manifest()

    def close(self, status: str = "finished") -> None:
        self.manifest["status"] = status
        if status == "finished":
            self.manifest["finished"] = now_iso()
        self._write_manifest()

    def _write_manifest(self) -> None:
        self.manifest["updated"] = now_iso()
        self.manifest["finished_ids"] = [i for i in self.planned_ids if i in self.rows]
        atomic_write_json(self.manifest_path, self.manifest)


def load_sweep(folder) -> tuple[dict, list[dict]]:
    """Manifest and table rows of a sweep folder."""
    with open(os.path.join(folder, MANIFEST)) as f:
        manifest = json.load(f)
    path = os.path.join(folder, RESULTS_CSV)
    rows = read_csv(path) if os.path.exists(path) else []
    return manifest, rows


def load_trajectories(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: np.array(z[k]) for k in z.files}

