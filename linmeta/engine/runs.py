"""One configuration run and recorded; a grid run into a resumable folder (``linmeta run``,
``linmeta sweep``).

:func:`run` runs one configuration of the paper's protocol (:mod:`linmeta.families.paper.protocol` through
:func:`linmeta.engine.sweep.run_batch`: retrain with Meta-LoRA and with standard retraining (SR), fine-tune
both bases on the unseen task) and returns its *record*: the validated configuration, the truth's
provenance, the results, the closed forms beside them (C1: ``||Rbar||_F``; C2: ``E_SR(r)``; C6:
``sigma^2 r(2d - r) / n``), the divergence flags, the environment and timings, and the recorded
trajectories. ``linmeta run`` prints that record and writes it (:func:`write`: ``record.json`` and
``trajectories.npz``). :func:`sweep_to_folder` runs a sweep spec chunk by chunk into a
:class:`linmeta.engine.results.SweepStore` folder, resumable after a kill.

Run ids. A run is named by its validated configuration, its dtype and its truth:
``<config id>`` (float64, truth sampled from ``truth_seed``; the same id as in a sweep), with
``-float32`` for a float32 run and ``-truth<first 12 hex digits of the sha256>`` for a truth given
as a file (of the file's bytes) or as arrays (of their float64 bytes). A folder that holds the same
run is reused, not recomputed; one that holds another run is refused; ``overwrite=True`` recomputes.

Divergence. A stage diverged when the engine's flag says so (NaN/inf in its state or records) or
when one of its recorded losses blew up: :func:`linmeta.core.divergence.divergence_index` (non-finite,
or above ``BLOWUP_FACTOR`` = 1e3 times its first record; a stable gradient step never raises a
quadratic loss, an unstable one raises it geometrically and stays finite for many steps). The
record's ``results.*_diverged`` flags include these blow-ups; :func:`divergence_error` names the
first stage that diverged and what to change: the step size (a :class:`linmeta.DivergenceError`),
or ``init_scale`` when the initial adapters are what overflows or what makes the steps unstable.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from linmeta.core.divergence import BLOWUP_FACTOR
from linmeta.core.problem import Truth, load_truth
from . import protocols, results as res
from .config import config_for_truth, load_sweep_spec
from . import sweep

__all__ = ["RunPlan", "plan", "run", "run_id", "write", "load", "diverged_stages",
           "divergence_flags", "divergence_error", "truth_source", "sweep_to_folder",
           "summary_lines", "format_value",
           "BLOWUP_FACTOR"]



def _proto(cfg: Mapping) -> protocols.Protocol:
    return protocols.get(cfg.get("protocol", protocols.DEFAULT))


def _accepts_truth(cfg: Mapping) -> bool:
    """True for protocols that run on a given truth of the base-matrix model (the paper's)."""
    return _proto(cfg).accepts_truth


def _truth_protocols() -> str:
    return ", ".join(n for n in protocols.names() if protocols.get(n).accepts_truth)


# ----------------------------------------------------------------------------- truth and ids
def _arrays_sha256(truth) -> str:
    h = hashlib.sha256()
    for name, x in zip(("A_star", "U_star", "U_new"), truth):
        a = np.ascontiguousarray(np.asarray(x, np.float64))
        h.update(f"{name}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def truth_source(truth=None, truth_seed: int | None = None):
    """``(Truth or None, provenance dict)`` of a truth given as None (sampled from ``truth_seed``
    by the engine), a path to an ``.npz`` file (:func:`linmeta.load_truth`; path and sha256 of
    the file) or a :class:`linmeta.Truth` (sha256 of its arrays in float64)."""

    if truth is None:
        return None, {"source": "sampled", "truth_seed": truth_seed}
    if isinstance(truth, Truth):
        return truth, {"source": "arrays", "sha256": _arrays_sha256(truth)}
    if isinstance(truth, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(truth))
        loaded = load_truth(path)
        return loaded, {"source": "file", "path": path, "sha256": res.file_sha256(path)}
    raise ValueError(f"truth must be None, a path to an .npz file or a linmeta.Truth, got "
                     f"{type(truth).__name__}")


def _dtype_name() -> str:
    import jax

    return "float64" if jax.config.jax_enable_x64 else "float32"


def run_id(config: Mapping, dtype: str = "float64", truth_sha256: str | None = None) -> str:
    """The id of a run (module docstring): the sweep's :func:`linmeta.engine.sweep.config_id`, plus
    ``-float32`` and ``-truth<sha256[:12]>`` when they apply."""

    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    rid = sweep.config_id(config)
    if dtype != "float64":
        rid += f"-{dtype}"
    if truth_sha256:
        rid += f"-truth{truth_sha256[:12]}"
    return rid


class RunPlan(NamedTuple):
    """A validated run before it runs: ``config`` (all keys), ``truth`` (a Truth, or None for the
    sampled one), ``truth_info`` (provenance), ``dtype`` and ``id``."""
    config: dict
    truth: Any
    truth_info: dict
    dtype: str
    id: str


def plan(config: Mapping | None = None, *, truth=None) -> RunPlan:
    """Validate ``config`` (keys of :data:`linmeta.engine.sweep.DEFAULTS`, defaults filled in) against the
    truth (a file or a Truth sets d, k, T; a config that names other sizes is refused) and name
    the run. Computes nothing; the dtype is JAX's current default (float64 with x64 enabled)."""

    if isinstance(config, RunPlan):
        return config
    if config is not None and not isinstance(config, Mapping):
        raise ValueError(f"config must be a mapping of configuration keys, got "
                         f"{type(config).__name__}")
    user = dict(config or {})
    if truth is not None and not _accepts_truth(user):
        raise ValueError(f"truth: a truth file or arrays are for the protocols "
                         f"{_truth_protocols()}; protocol {user.get('protocol')!r} "
                         "draws its own from its configuration keys")
    truth_obj, info = truth_source(truth)
    if truth_obj is not None:
        user = config_for_truth(user, truth_obj)
    cfg = sweep.validate_config(user)
    if truth_obj is None:
        info = {"source": "sampled", "truth_seed": cfg.get("truth_seed")}
    dtype = _dtype_name()
    return RunPlan(cfg, truth_obj, info, dtype, run_id(cfg, dtype, info.get("sha256")))


# ----------------------------------------------------------------------------- divergence
def stage_words(cfg: Mapping, stage: str) -> str:
    """The name in words of stage ``stage`` of the configuration's protocol."""
    return next((s.words for s in _proto(cfg).stages if s.name == stage), stage)


def divergence_flags(cfg: Mapping, result: Mapping) -> dict:
    """``{"<stage>_diverged": bool}`` per stage of the configuration's protocol (its own report,
    e.g. the paper's blow-up test on the recorded losses, or the engine's generic one:
    :func:`linmeta.engine.protocols.diverged_stages`)."""
    proto = _proto(cfg)
    if proto.divergence_flags is not None:
        return proto.divergence_flags(cfg, result)
    bad = set(protocols.diverged_stages(cfg, result))
    return {f"{st.name}_diverged": st.name in bad for st in proto.stages}


def diverged_stages(cfg: Mapping, result: Mapping) -> list[str]:
    """The stages that diverged, causes only, in order (the protocol's stage names)."""
    proto = _proto(cfg)
    if proto.diverged_stages is not None:
        return proto.diverged_stages(cfg, result)
    return protocols.diverged_stages(cfg, result)


def divergence_error(cfg: Mapping, result: Mapping) -> ValueError | None:
    """The error for the first stage that diverged (None when none did), naming the stage, the
    iteration and what to change (a :class:`linmeta.DivergenceError` for a step size)."""
    proto = _proto(cfg)
    if proto.divergence_error is not None:
        return proto.divergence_error(cfg, result)
    return protocols.divergence_error(cfg, result)


# ----------------------------------------------------------------------------- one run
def _compute(p: RunPlan, command) -> dict:

    t_start = time.perf_counter()
    env = res.environment()
    t0 = time.perf_counter()
    result = sweep.run_batch([p.config], truth=p.truth)[0]
    t_batch = time.perf_counter() - t0
    scalars = {k: v for k, v in result.items() if k not in ("trajectories", "seconds")}
    scalars.update(divergence_flags(p.config, result))
    proto = _proto(p.config)
    if proto.record_theory is not None:
        truth = p.truth if p.truth is not None else sweep.truth_for(p.config)
        scalars.update(proto.record_theory(p.config, truth))
    err = divergence_error(p.config, result)
    return {
        "kind": "linmeta.run", "format_version": res.FORMAT_VERSION, "id": p.id,
        "created": res.now_iso(), "command": list(command) if command else None,
        "config": dict(p.config), "seed": p.config.get("seed"), "truth": dict(p.truth_info),
        "results": {k: v for k, v in scalars.items() if not k.startswith("theory_")},
        "theory": {k: v for k, v in scalars.items() if k.startswith("theory_")},
        "divergence": {"stages": diverged_stages(p.config, result),
                       "message": None if err is None else str(err)},
        "environment": env,
        "timings": {"run_batch_seconds": t_batch, "engine_seconds": result.get("seconds"),
                    "total_seconds": time.perf_counter() - t_start},
        "trajectories": {k: np.asarray(v) for k, v in (result.get("trajectories") or {}).items()},
    }


def _stored_id(folder: str):
    path = os.path.join(folder, res.RUN_RECORD)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return str(json.load(f).get("id"))
    except (OSError, ValueError, AttributeError):
        return "<unreadable>"


def run(config: Mapping | RunPlan | None = None, *, truth=None, out=None,
        overwrite: bool = False, check_divergence: bool = True, command=None) -> dict:
    """Run one configuration and return its record (module docstring).

    Args:
      config: configuration keys (:data:`linmeta.engine.sweep.DEFAULTS`; missing keys take the
        defaults), or a :class:`RunPlan` from :func:`plan`.
      truth: None (sampled from ``truth_seed``), a path to a truth ``.npz`` or a
        :class:`linmeta.Truth`; sets d, k, T.
      out: folder to write ``record.json`` and ``trajectories.npz`` into (created), or None.
        A folder holding this run already (same id) is reused: its stored record is returned,
        with ``"reused": True``, and nothing is computed. One holding another run or a sweep is
        refused (ValueError) unless ``overwrite``.
      check_divergence: raise the :func:`divergence_error` of a run that diverged (before
        anything is written); False returns (and writes) the record with its flags instead.
      command: the command line to record (``linmeta run`` passes its arguments).

    Returns:
      The record: ``id``, ``config``, ``seed``, ``truth`` (provenance), ``results`` (the
      floats of :data:`linmeta.engine.sweep.RESULT_KEYS`, the ``*_diverged`` flags including
      blow-ups), ``theory`` (closed forms), ``divergence`` (``stages``, ``message``),
      ``environment``, ``timings``, ``trajectories`` (NumPy arrays; in ``trajectories.npz``,
      not in ``record.json``) and ``files`` when written.
    """
    p = plan(config, truth=truth)
    created = False
    if out is not None:
        out = os.path.abspath(os.fspath(out))
        if os.path.exists(os.path.join(out, res.MANIFEST)):
            raise ValueError(f"output folder {out!r} holds a sweep (manifest.json); give the run "
                             "a folder of its own")
        stored = _stored_id(out)
        if stored is not None and not overwrite:
            if stored != p.id:
                raise ValueError(f"output folder {out!r} holds another run (id {stored}; this "
                                 f"run is {p.id}); choose another folder, or overwrite it "
                                 "(--overwrite)")
            record = load(out)
            record["reused"] = True
            return record
        created = not os.path.exists(out)
        res.check_writable_dir(out)
    try:
        record = _compute(p, command)
        if check_divergence and record["divergence"]["stages"]:
            raise divergence_error(record["config"], {**record["results"],
                                                      "trajectories": record["trajectories"]})
    except BaseException:
        if created and os.path.isdir(out) and not os.listdir(out):
            os.rmdir(out)  # nothing half-written: drop the folder this run made
        raise
    if out is not None:
        write(record, out)
    return record


def write(record: Mapping, out) -> dict:
    """Write ``record`` into the folder ``out``: ``trajectories.npz`` first, then ``record.json``
    (without the arrays, with a ``files`` entry), each atomically. Returns the record written."""
    out = res.check_writable_dir(out)
    files = {"record": os.path.join(out, res.RUN_RECORD),
             "trajectories": os.path.join(out, res.TRAJECTORIES)}
    res.atomic_write_npz(files["trajectories"], dict(record.get("trajectories") or {}))
    stored = {k: v for k, v in record.items() if k not in ("trajectories", "reused", "files")}
    stored["files"] = files
    res.atomic_write_json(files["record"], stored)
    if isinstance(record, dict):
        record["files"] = files
    return stored


def load(folder) -> dict:
    """The record of a run folder, with its ``trajectories`` (NumPy arrays) when stored."""
    folder = os.fspath(folder)
    with open(os.path.join(folder, res.RUN_RECORD)) as f:
        record = json.load(f)
    traj = os.path.join(folder, res.TRAJECTORIES)
    record["trajectories"] = res.load_trajectories(traj) if os.path.exists(traj) else {}
    return record


# ----------------------------------------------------------------------------- sweeps
def _chunks_for(configs: list[dict], chunk_size: int | None):
    """Deterministic chunks ``(configs, batch size)``: each shape group (first-appearance order)
    split into equal chunks of at most ``chunk_size`` (default
    :func:`linmeta.engine.sweep.default_chunk_size`); a short last chunk is padded to the batch size when
    it runs, so every group compiles once (as :func:`linmeta.engine.sweep.run_sweep`).

    The chunks depend only on the planned configurations and the chunk size, so a resumed sweep
    runs exactly the chunks an uninterrupted one would (same compiled programs, same numbers)."""

    for group in sweep.group_by_shape(configs):
        cs = chunk_size or sweep.default_chunk_size(group[0])
        n_chunks = -(-len(group) // cs)
        size = -(-len(group) // n_chunks)
        for i in range(n_chunks):
            yield group[i * size:(i + 1) * size], size


def _row(cid: str, cfg: dict, result: dict) -> dict:
    row = {"id": cid}
    row.update(cfg)
    for k, v in result.items():
        if k in ("trajectories", "seconds"):
            continue
        row[k] = v
    row.update(divergence_flags(cfg, result))
    return row


def sweep_to_folder(spec, out, *, truth=None, chunk_size: int | None = None,
                    progress: bool = False, on_chunk: Callable | None = None) -> dict:
    """Run a sweep spec into the folder ``out`` (:class:`linmeta.engine.results.SweepStore` layout),
    chunk by chunk; started again on the same folder it computes only the unfinished chunks.

    Args:
      spec: a spec file (``.toml``/``.json``, :func:`linmeta.engine.config.load_sweep_spec`) or a spec
        dict (``grid``, ``fixed``, ``seeds``, optional ``chunk_size``, ``name``).
      out: the sweep folder (created).
      truth: a truth ``.npz`` path or a :class:`linmeta.Truth` (overrides the spec's ``truth``).
      chunk_size: configurations per compiled call (default: the spec's, else
        :func:`linmeta.engine.sweep.default_chunk_size`); a resumed sweep keeps the size it started with.
      progress: a progress bar on stderr.
      on_chunk: called with the store after each stored chunk.

    Returns:
      ``{"out", "planned", "computed", "reused", "diverged"}``; ``diverged`` lists
      ``{"id", "stages", "words"}`` (the stages, and their names in words) of every
      configuration in the table whose ``*_diverged`` flag is set (flags include blow-ups),
      computed now or earlier.
    """

    if isinstance(spec, (str, os.PathLike)):
        where = os.fspath(spec)
        spec, spec_truth = load_sweep_spec(spec)
    elif isinstance(spec, Mapping):
        where, spec, spec_truth = "sweep spec", dict(spec), spec.get("truth")
        spec.pop("truth", None)
        spec.setdefault("grid", {})
        spec.setdefault("fixed", {})
    else:
        raise ValueError(f"spec must be a spec file path or a dict, got {type(spec).__name__}")
    truth_obj, truth_info = truth_source(truth if truth is not None else spec_truth)
    if truth_obj is not None:
        for key in ("d", "k", "T"):
            if key in spec["grid"]:
                raise ValueError(f"grid key {key!r} cannot vary with a truth file (it fixes "
                                 f"d={truth_obj.d}, k={truth_obj.k}, T={truth_obj.T}); remove "
                                 f"it from [grid]")
        spec["fixed"] = config_for_truth(spec["fixed"], truth_obj)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise ValueError(f"--chunk-size must be an integer >= 1, got {chunk_size!r}")
    configs = sweep.expand_grid({k: spec[k] for k in ("grid", "fixed", "seeds") if k in spec})
    if truth_obj is not None and not all(_accepts_truth(c) for c in configs):
        raise ValueError(f"truth: a truth file is for the protocols "
                         f"({_truth_protocols()}); {where!r} selects another protocol, "
                         "which draws its own truth from its configuration keys")
    ids = [sweep.config_id(c) for c in configs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{where!r} gives duplicate configurations (a grid list repeats a "
                         "value); make every grid value distinct")
    chunk_size = chunk_size or spec.get("chunk_size")  # None: linmeta.sweep's default

    folder = res.check_writable_dir(out)
    if truth_obj is None:  # each configuration's own truth_seed
        truth_info = {"source": "sampled", "truth_seed": None}
    store = res.SweepStore(folder, spec, ids, truth_info=truth_info, chunk_size=chunk_size,
                           env=res.environment())
    n_done = store.open()
    todo = [(c, size) for c, size in _chunks_for(configs, store.chunk_size)
            if not all(store.finished(sweep.config_id(x)) for x in c)]

    from tqdm.auto import tqdm

    bar = tqdm(total=len(configs), initial=n_done, unit="cfg", desc="linmeta sweep",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    try:
        for chunk, size in todo:
            chunk = [c for c in chunk if not store.finished(sweep.config_id(c))]
            batch = chunk + [chunk[-1]] * (size - len(chunk))  # padded: one compile per group
            t0 = time.perf_counter()
            outcome = sweep.run_batch(batch, truth=truth_obj)[:len(chunk)]
            seconds = time.perf_counter() - t0
            rows = [_row(sweep.config_id(c), c, r) for c, r in zip(chunk, outcome)]
            store.add_chunk(rows, [r.get("trajectories") or {} for r in outcome], seconds,
                            list(rows[0]))
            bar.update(len(chunk))
            if on_chunk is not None:
                on_chunk(store)
    except BaseException:  # an interrupt or an error: keep what is written, say so
        bar.close()
        store.close("interrupted")
        raise
    bar.close()
    store.close("finished")
    diverged = []
    by_id = dict(zip(ids, configs))
    for cid in ids:
        row = store.rows.get(cid, {})
        stages = [c[:-len("_diverged")] for c in row
                  if c.endswith("_diverged") and row.get(c) is True]
        if stages:
            diverged.append({"id": cid, "stages": stages,
                             "words": [stage_words(by_id[cid], s) for s in stages]})
    return {"out": folder, "planned": len(configs), "computed": len(configs) - n_done,
            "reused": n_done, "diverged": diverged}


# ----------------------------------------------------------------------------- summaries
def format_value(x, digits=4) -> str:
    """A result value as a summary prints it: 4 significant digits, "-" for None, yes/no."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int,)) and not isinstance(x, bool):
        return str(x)
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v) or math.isinf(v):
        return str(v)
    if v == 0 or 1e-3 <= abs(v) < 1e5:
        return f"{v:.{digits}g}"
    return f"{v:.{digits - 1}e}"


def summary_lines(record: Mapping) -> list[str]:
    """The lines that summarise a run record (``linmeta run`` prints them): the protocol's own
    (its ``summary`` hook), or its configuration and every scalar result."""
    proto = _proto(record["config"])
    if proto.summary is not None:
        return list(proto.summary(record))
    cfg, r, env = record["config"], record["results"], record["environment"]
    lines = [f"linmeta run {record['id']}: protocol {cfg['protocol']}; {env['dtype']} on "
             f"{env['device']}",
             "  " + " ".join(" ".join(f"{k}={v}" for k, v in cfg.items()
                                      if k != "protocol").split())]
    width = max((len(k) for k in r), default=10)
    lines += [f"  {key:{width}s}  {format_value(value):>12s}" for key, value in r.items()]
    return lines
