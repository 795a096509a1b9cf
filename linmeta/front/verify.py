"""``linmeta verify``: run the claim checks of every registered family and report.

The claims are read from the registry (:func:`linmeta.engine.claims.claim_ids`: the families'
claims, e.g. C1-C8 of docs/theory.md, M1-M6 of docs/bilevel.md, R1-R7 of docs/representation.md,
and an installed plugin's). Each claim's module (:func:`linmeta.engine.claims.claim_module`) is run
at the chosen setting (``tiny``: seconds per claim, for tests; ``quick``: the default, minutes for
the whole set, dominated by compilation; ``full``: the documented full run). Each claim returns
verdict rows (claim, quantity, predicted, measured, spread, tolerance, passed, kind); its ``plot``
writes PNG and PDF figures. The runner prints one table row per claim, writes a report (all rows,
each claim linked to its section of the theory document (:func:`linmeta.engine.claims.claim_doc`),
the figures, setting, seed, dtype, versions, time) and the verdicts as JSON, both atomically, and
exits with 1 when a check fails. The default ``<out>`` is ``results/verify`` (git-ignored); the
committed figures are regenerated with ``--out figures``. An output folder that cannot be created
is one error line (exit 2).

Full and partial runs (:func:`report_files`): a run of every registered claim writes
``<out>/REPORT.md`` and ``<out>/verdicts.json``. A partial run (``--claims C3,C6``, ``--claims
bilevel``) never replaces them: it writes ``<out>/REPORT-<claims>.md`` and
``<out>/verdicts-<claims>.json`` beside them (``<claims>``: the claim ids joined by ``_``, a whole
family by its name, e.g. ``REPORT-C3_C6.md``, ``REPORT-bilevel.md``), says so at the top of its
report and on its last line, and replaces only the figures of the claims it ran.

Tolerances are data: a check row carries a :class:`~linmeta.engine.verdict.Tolerance` (rule,
inputs, value) and the runner audits it (:func:`linmeta.engine.verdict.audit`): a row whose
tolerance is looser than its derivation allows fails, whatever its measurement.

A claim whose module is missing, or whose run or plot raises, is reported as a failed row (the
other claims still run). Rows of kind ``"measured"`` map unconfirmed statements: they fail only
when the measurement itself did not produce a finite result.

Verification runs in float64 (``jax_enable_x64`` is switched on). The tiny and quick settings are
dominated by XLA compilation, so when JAX's backend has not started yet they ask XLA for a cheaper
backend optimisation level (``--xla_backend_optimization_level=0`` appended to ``XLA_FLAGS``);
a ``XLA_FLAGS`` that already sets that option is left alone. OpenBLAS (used by NumPy, SciPy and
jaxlib's CPU LAPACK kernels) is asked for one thread unless ``OPENBLAS_NUM_THREADS`` is set: the
runs make many small eigendecompositions, where threads only contend. XLA's CPU Eigen runs on one
thread (``--xla_cpu_multi_thread_eigen=false`` appended to ``XLA_FLAGS`` before the backend
starts, unless set).
``--jobs N`` runs N claims at once, each in a spawned process with the same flags; where
``/proc`` shows the workers' CPU time, a pool that used no CPU for ``STALL_SECONDS`` while claims
were pending (a stalled XLA run) is stopped and the unfinished claims run again in fresh workers,
at most ``MAX_ATTEMPTS`` times each; the report and the last line name every rerun.

Usage::

    python -m linmeta.verify --quick                 # or: linmeta verify --quick (results/verify)
    python -m linmeta.verify --quick --out figures   # regenerate the committed figures
    python -m linmeta.verify --full --out figures
    python -m linmeta.verify --tiny --claims C1,C3 --no-figures --json
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import math
import multiprocessing
import os
import pickle
import platform
import sys
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from linmeta.core.files import atomic_write_text, check_writable_dir
from linmeta.core.version import __version__
from linmeta.engine import compile_cache, families
from linmeta.engine.claim_support import plot_claim, single_thread_blas, working_dtype
from linmeta.engine.claims import (SETTINGS, ClaimResult, Verdict, all_claims, claim_doc,
                                   claim_ids, claim_module, family_claims, family_names, fmt,
                                   longest_first)
from linmeta.engine.verdict import audited

__all__ = ["add_arguments", "run_from_args", "run_verify", "format_table", "main",
           "claim_summary", "report_files", "PARTIAL_RULE", "default_jobs"]

_FAST_COMPILE_FLAG = "--xla_backend_optimization_level=0"
_SINGLE_THREAD_EIGEN = "--xla_cpu_multi_thread_eigen=false"
MAX_AUTO_JOBS = 4
JOB_MEMORY_GIB = 3
DEFAULT_OUT = os.path.join("results", "verify")


# ----------------------------------------------------------------------------- arguments
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the verify options to ``parser`` (used by ``linmeta verify`` and ``python -m``)."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="setting", action="store_const", const="quick",
                      help="the quick checks (default; minutes for every claim, mostly "
                           "compilation)")
    mode.add_argument("--full", dest="setting", action="store_const", const="full",
                      help="the full checks (the documented run; much longer than --quick)")
    mode.add_argument("--tiny", dest="setting", action="store_const", const="tiny",
                      help="the smallest settings (seconds per claim; used by the tests)")
    parser.set_defaults(setting="quick")
    parser.add_argument("--claims", metavar="C1,C3", default=None,
                        help="comma-separated claim ids or family names to run (default: every "
                             f"registered claim, {_claims_by_family()}; families: "
                             f"{', '.join(family_names())}). A partial run writes "
                             "REPORT-<claims>.md and verdicts-<claims>.json, never the full "
                             "REPORT.md and verdicts.json")
    parser.add_argument("--out", metavar="DIR", default=DEFAULT_OUT,
                        help="folder for figures, REPORT.md and verdicts.json "
                             f"(default: {DEFAULT_OUT}; the committed figures: --out figures)")
    parser.add_argument("--seed", type=int, default=0, metavar="INT",
                        help="root random seed (default: 0)")
    parser.add_argument("--json", action="store_true",
                        help="print the verdict rows as JSON instead of the table")
    parser.add_argument("--no-figures", dest="figures", action="store_false",
                        help="skip the figures (REPORT.md then lists the rows only)")
    parser.add_argument("--jobs", type=_jobs_arg, default=None, metavar="N",
                        help="claims run at once, each in its own process (default: "
                             f"{default_jobs()} here: the CPU cores, at most {MAX_AUTO_JOBS}, and "
                             f"one per {JOB_MEMORY_GIB} GiB of memory; 1 runs them one after "
                             "another in this process). The rows do not depend on it")
    return parser


def _jobs_arg(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--jobs must be an integer >= 1, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"--jobs must be an integer >= 1, got {n}")
    return n


def default_jobs() -> int:
    """Claims ``linmeta verify`` runs at once by default: the CPU cores this process may use, at
    most :data:`MAX_AUTO_JOBS`, and at most one per :data:`JOB_MEMORY_GIB` GiB of physical memory
    (a --quick claim peaks at about 2.4 GiB)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        mem_gib = JOB_MEMORY_GIB
    return max(1, min(cores, MAX_AUTO_JOBS, int(mem_gib // JOB_MEMORY_GIB)))


def _claims_by_family() -> str:
    """The registered claims as ranges by family, e.g. ``C1-C8, M1-M6, R1-R7``."""
    parts = []
    for family in family_names():
        ids = family_claims(family)
        if ids:
            parts.append(ids[0] if len(ids) == 1 else f"{ids[0]}-{ids[-1]}")
    return ", ".join(parts)


#: The rule for partial runs, as the help states it.
PARTIAL_RULE = ("A partial run (--claims) writes OUT/REPORT-<claims>.md and "
                "OUT/verdicts-<claims>.json (e.g. REPORT-C3_C6.md, REPORT-bilevel.md) beside the "
                "full run's OUT/REPORT.md and OUT/verdicts.json, which only a run of every "
                "registered claim writes; it replaces the figures of the claims it ran.")
MAX_TAG = 60  # longest <claims> part of a partial report's file name


def report_files(claims) -> tuple[str, str]:
    """File names of the report and the verdicts of a run of ``claims`` (ids): ``REPORT.md`` and
    ``verdicts.json`` when they are every registered claim, else ``REPORT-<tag>.md`` and
    ``verdicts-<tag>.json``, the tag naming the claims (a whole family by its name; ids joined by
    ``_``; a long list by its first and last id and its count)."""
    ids = list(claims)
    if set(ids) == set(claim_ids()):
        return "REPORT.md", "verdicts.json"
    words, rest = [], list(ids)
    for family in family_names():
        members = family_claims(family)
        if members and all(c in rest for c in members):
            words.append(family)
            rest = [c for c in rest if c not in members]
    words += rest
    tag = "_".join(words)
    if len(tag) > MAX_TAG:
        tag = f"{ids[0]}-{ids[-1]}_{len(ids)}claims"
    return f"REPORT-{tag}.md", f"verdicts-{tag}.json"


def _parse_claims(text):
    """Claim ids from ``--claims``: ids (``C1``, ``M2``; a bare number means ``C<number>``) and
    family names (``paper``, ``bilevel``, ``representation``), comma-separated."""

    if text is None or str(text).strip() == "":
        return list(claim_ids())
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    allowed = f"{', '.join(claim_ids())} or a family ({', '.join(family_names())})"
    out = []
    for item in items:
        word = str(item).strip()
        if not word:
            continue
        if word.lower() in family_names():
            ids = family_claims(word.lower())
        else:
            cid = word.upper()
            if cid.isdigit():
                cid = "C" + cid
            if cid not in claim_ids():
                raise ValueError(f"--claims must be a comma-separated list of {allowed}; "
                                 f"got {item!r}")
            ids = (cid,)
        out.extend(c for c in ids if c not in out)
    if not out:
        raise ValueError(f"--claims names no claim; use {allowed}")
    return out


# ----------------------------------------------------------------------------- running
def _backend_started() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except Exception:  # noqa: BLE001 - private API moved: count it as started, flags untouched
        return True


def _single_thread_eigen() -> bool:
    """Append ``--xla_cpu_multi_thread_eigen=false`` to ``XLA_FLAGS`` when the backend has not
    started and the flag is not set; True when it is in effect. The verification's matrices are
    small, so one Eigen thread costs little, and ``--jobs`` runs claims side by side instead.
    (XLA's CPU runtime occasionally stalls, every thread parked and the caller waiting on a
    result; seen in C2 with multi-threaded Eigen and, less often, with this flag too: the
    ``--jobs`` watchdog reruns such a claim.)"""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" in flags:
        return "xla_cpu_multi_thread_eigen=false" in flags
    if _backend_started():
        return False
    os.environ["XLA_FLAGS"] = (flags + " " + _SINGLE_THREAD_EIGEN).strip()
    return True


def _prefer_fast_compile() -> bool:
    """Append the cheap-compile XLA flag when the backend has not started; True if it applies."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" in flags:
        return "xla_backend_optimization_level=0" in flags
    if _backend_started():
        return False
    os.environ["XLA_FLAGS"] = (flags + " " + _FAST_COMPILE_FLAG).strip()
    return True


def _failed(claim, quantity, note):

    return ClaimResult(claim, [Verdict(claim, quantity, "runs", "error", float("nan"), "",
                                       False, "check", note)], {}, 0.0)


def _is_finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return True  # text values (counts, statements) are not numbers to check


def _row_ok(v) -> bool:
    return bool(v.passed)


def run_claim(claim: str, setting: str, seed: int, out_dir=None, figures: bool = True):
    """Run one claim (and its figure) and never raise: failures become failed rows.
    Returns ``(ClaimResult, [figure paths])``."""

    t0 = time.perf_counter()
    try:
        mod = claim_module(claim)
    except ModuleNotFoundError as e:
        if e.name == all_claims()[claim][1]:
            return _failed(claim, "module missing", f"{all_claims()[claim][1]} not found"), []
        raise
    try:
        result = mod.run(setting=setting, seed=seed)
        result.verdicts = audited(result.verdicts, float64=working_dtype() == jnp.float64)
    except Exception as e:  # noqa: BLE001 - reported as a failed claim, the others still run
        res = _failed(claim, "run raised", f"{type(e).__name__}: {e}")
        res.data["traceback"] = traceback.format_exc()
        res.seconds = time.perf_counter() - t0
        return res, []

    paths = []
    if figures and out_dir is not None:
        try:
            paths = plot_claim(mod, result, out_dir, setting)
        except Exception as e:  # noqa: BLE001

            result.verdicts = list(result.verdicts) + [Verdict(
                claim, "figure", "written", "error", float("nan"), "", False, "check",
                f"{type(e).__name__}: {e}")]
    result.seconds = time.perf_counter() - t0
    return result, paths


def _worker_start(cache_dir, registered) -> None:
    """Set up a worker process of a parallel run as the parent is set up: float64, the same
    compilation cache, single-threaded OpenBLAS, and the parent's families (one registered at
    run time with :func:`linmeta.engine.families.register` included; the environment, XLA_FLAGS
    and ``sys.path`` are the parent's)."""
    jax.config.update("jax_enable_x64", True)
    if cache_dir:
        compile_cache.enable(cache_dir)
    single_thread_blas()
    known = families.names()
    for family in registered:
        if family.name not in known:
            families.register(family)


def _portable(result: ClaimResult) -> ClaimResult:
    """The result as it crosses to the parent process: the figure data only if it pickles (the
    parent needs just the rows and a traceback)."""
    try:
        pickle.dumps(result.data)
    except Exception:  # noqa: BLE001 - any unpicklable leaf: keep what the report reads
        result.data = {k: v for k, v in result.data.items() if k == "traceback"}
    return result


def _worker_claim(claim: str, setting: str, seed: int, out_dir, figures: bool):
    res, paths = run_claim(claim, setting, seed, out_dir, figures)
    return _portable(res), paths


STALL_SECONDS = 60.0   # a pool whose workers used no CPU for this long, claims pending: stalled
MAX_ATTEMPTS = 3       # runs of a claim (the first and the reruns after stalls)


def _cpu_seconds(pid: int):
    """CPU time (user + system) of process ``pid`` from /proc, or None where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _pool_cpu(pool):
    """Total CPU seconds of the pool's worker processes (None when unknown)."""
    total = 0.0
    for proc in list(getattr(pool, "_processes", {}).values()):
        t = _cpu_seconds(proc.pid)
        if t is None:
            return None
        total += t
    return total


def _run_claims_parallel(claim_ids, setting, seed, out, figures, jobs, progress, reruns):
    """Run the claims in ``jobs`` worker processes (spawned: JAX is not fork-safe); results come
    back in claim order, and ``progress`` sees them in that order as soon as each is ready.

    A watchdog (where /proc gives the workers' CPU time): when claims are pending and no worker
    has used CPU for :data:`STALL_SECONDS`, XLA's runtime has stalled (a run that never returns,
    every thread parked); the pool is stopped and the unfinished claims run again in fresh
    workers, at most :data:`MAX_ATTEMPTS` times each (then a failed row says so). Each rerun is
    appended to ``reruns`` as ``(claim, attempt)``."""
    ctx = multiprocessing.get_context("spawn")
    results, figs = {}, {}
    attempts = dict.fromkeys(claim_ids, 0)
    shown = [0]

    def show_ready():  # progress in claim order, as soon as the next claim's result is in
        while shown[0] < len(claim_ids) and claim_ids[shown[0]] in results:
            if progress is not None:
                progress(results[claim_ids[shown[0]]])
            shown[0] += 1

    pending = list(claim_ids)
    while pending:
        workers = min(jobs, len(pending))
        pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_worker_start,
            initargs=(compile_cache.enabled_dir(), families.all_families()))
        queue, running, stalled = longest_first(pending), {}, False
        try:
            while queue or running:
                while queue and len(running) < workers:   # in flight = running: no queue
                    cid = queue.pop(0)                    # inside the pool, so a stall names
                    attempts[cid] += 1                    # only the claims that ran
                    running[pool.submit(_worker_claim, cid, setting, seed, out, figures)] = cid
                    last_cpu, last_change = None, time.monotonic()
                finished, _ = concurrent.futures.wait(
                    running, timeout=5.0, return_when=concurrent.futures.FIRST_COMPLETED)
                for fut in finished:
                    cid = running.pop(fut)
                    try:
                        results[cid], figs[cid] = fut.result()
                    except Exception as e:  # noqa: BLE001 - a worker died (e.g. out of memory)
                        results[cid] = _failed(cid, "run raised", f"worker process failed: "
                                                                 f"{type(e).__name__}: {e}")
                        figs[cid] = []
                show_ready()
                cpu = _pool_cpu(pool)
                if finished or cpu is None or last_cpu is None or cpu > last_cpu + 0.05:
                    last_cpu, last_change = cpu, time.monotonic()
                elif time.monotonic() - last_change > STALL_SECONDS:
                    stalled = True
                    break
        except BaseException:
            _stop_pool(pool)
            raise
        if stalled:
            _stop_pool(pool)
            for cid in running.values():
                if attempts[cid] >= MAX_ATTEMPTS:
                    results[cid] = _failed(cid, "run stalled", f"XLA's runtime stalled (no CPU "
                                           f"for {STALL_SECONDS:.0f} s) in {attempts[cid]} runs")
                    figs[cid] = []
                else:
                    reruns.append((cid, attempts[cid] + 1))
        else:
            pool.shutdown(wait=True)
        pending = [c for c in claim_ids if c not in results]
        show_ready()
    return [results[c] for c in claim_ids], figs


def _stop_pool(pool) -> None:
    """Kill the pool's workers (a stalled XLA run ignores everything else) and drop the pool."""
    for proc in list(getattr(pool, "_processes", {}).values()):
        try:
            proc.kill()
        except OSError:  # already gone
            pass
    pool.shutdown(wait=False, cancel_futures=True)


def run_verify(setting: str = "quick", claims=None, out_dir=DEFAULT_OUT, seed: int = 0,
               figures: bool = True, *, progress=None, jobs: int = 1):
    """Run ``claims`` (ids, default all) at ``setting`` and write the report into ``out_dir``.

    Returns ``(results, ok)``: the list of :class:`~linmeta.engine.claims.ClaimResult` and whether every
    check row passed. ``progress`` (optional) is called with each finished result and its
    seconds. Writes the report and the verdicts (:func:`report_files`: ``out_dir/REPORT.md`` and
    ``out_dir/verdicts.json`` for every registered claim, ``REPORT-<claims>.md`` and
    ``verdicts-<claims>.json`` for a partial run) atomically. ``jobs`` > 1 runs that many claims
    at once, each in a spawned worker process with the same settings (float64, compilation
    cache, XLA flags); the rows are the same as with ``jobs=1`` (each claim draws from its own
    seed), only the claims' wall-clock seconds change.
    """

    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {', '.join(SETTINGS)}; got {setting!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    claim_ids = _parse_claims(claims)
    fast = _prefer_fast_compile() if setting in ("tiny", "quick") else False
    eigen1 = _single_thread_eigen()



    out = Path(check_writable_dir(out_dir))
    jax.config.update("jax_enable_x64", True)
    blas1 = single_thread_blas()
    t0 = time.perf_counter()
    results, figs, reruns = [], {}, []
    jobs = min(jobs, len(claim_ids))
    if jobs > 1:
        results, figs = _run_claims_parallel(claim_ids, setting, seed, out, figures, jobs,
                                             progress, reruns)
    else:
        for cid in claim_ids:
            res, paths = run_claim(cid, setting, seed, out, figures)
            results.append(res)
            figs[cid] = paths
            if progress is not None:
                progress(res)
    total = time.perf_counter() - t0
    ok = all(_row_ok(v) for r in results for v in r.verdicts)
    meta = _meta(setting, seed, claim_ids, total, fast)
    meta["jobs"] = jobs
    meta["xla_single_thread_eigen"] = bool(eigen1)
    meta["reruns"] = [f"{c} (run {n}: XLA's runtime had stalled)" for c, n in reruns]
    meta["blas_single_thread"] = bool(blas1)
    report_name, verdicts_name = report_files(claim_ids)
    meta["report"], meta["verdicts"] = report_name, verdicts_name
    _write_atomic(out / verdicts_name, json.dumps(_json_payload(results, meta, ok), indent=2,
                                                  allow_nan=False) + "\n")
    _write_atomic(out / report_name, _report(results, figs, meta, ok, out))
    return results, ok


def _meta(setting, seed, claim_ids, total, fast):

    return dict(setting=setting, seed=seed, claims=list(claim_ids),
                dtype=str(jax.numpy.asarray(0.0).dtype), total_seconds=round(total, 2),
                linmeta=__version__, jax=jax.__version__, jaxlib=jaxlib.__version__,
                numpy=np.__version__, python=platform.python_version(),
                platform=platform.platform(), cpus=os.cpu_count(),
                backend=jax.default_backend(), fast_compile=bool(fast),
                date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"))


def _jsonable(x):
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def _jsonable_tree(x):
    if isinstance(x, dict):
        return {str(k): _jsonable_tree(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable_tree(v) for v in x]
    return _jsonable(x)


def _json_payload(results, meta, ok):
    rows = []
    for r in results:
        for v in r.verdicts:
            d = {k: _jsonable_tree(val) for k, val in v.as_dict().items()}
            d["passed"] = bool(v.passed)
            rows.append(d)
    return dict(ok=bool(ok), meta=meta,
                claims=[dict(claim=r.claim, passed=all(_row_ok(v) for v in r.verdicts),
                             seconds=round(r.seconds, 2)) for r in results],
                verdicts=rows)


def _write_atomic(path: Path, text: str) -> None:
    atomic_write_text(path, text)


# ----------------------------------------------------------------------------- tables
def claim_summary(result) -> dict:
    """One line per claim: checks passed, the key (or first failing) row, seconds."""

    checks = [v for v in result.verdicts if v.kind == "check"]
    measured = [v for v in result.verdicts if v.kind != "check"]
    failing = [v for v in result.verdicts if not _row_ok(v)]
    key = failing[0] if failing else (checks[0] if checks else
                                      (result.verdicts[0] if result.verdicts else None))
    return dict(claim=result.claim,
                checks=f"{sum(_row_ok(v) for v in checks)}/{len(checks)}",
                measured=len(measured),
                quantity="" if key is None else key.quantity,
                predicted="" if key is None else fmt(key.predicted),
                value="" if key is None else fmt(key.measured),
                result="pass" if not failing else "FAIL",
                seconds=f"{result.seconds:.1f}")


_COLUMNS = (("claim", "claim"), ("checks", "checks"), ("measured", "mapped"),
            ("quantity", "key (or first failing) quantity"), ("predicted", "predicted"),
            ("value", "measured"), ("result", "result"), ("seconds", "s"))


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _table_header() -> tuple[str, str]:
    widths = _widths()
    head = "  ".join(title.ljust(widths[k]) for k, title in _COLUMNS)
    return head, "-" * len(head)


def _widths():
    return dict(claim=5, checks=6, measured=6, quantity=56, predicted=12, value=12, result=6,
                seconds=7)


def format_row(result) -> str:
    """One text table row for a claim (see :func:`format_table`)."""
    s = claim_summary(result)
    w = _widths()
    return "  ".join(_clip(str(s[k]), w[k]).ljust(w[k]) for k, _ in _COLUMNS)


def format_table(results) -> str:
    """Plain-text table, one row per claim: claim, checks passed, rows of kind "measured", the key
    (or first failing) quantity with predicted and measured value, pass/FAIL, seconds."""
    head, rule = _table_header()
    lines = [head, rule] + [format_row(r) for r in results]
    n_fail = sum(claim_summary(r)["result"] != "pass" for r in results)
    total = sum(r.seconds for r in results)
    lines.append(rule)
    lines.append(f"{len(results) - n_fail}/{len(results)} claims pass; {total:.1f} s")
    return "\n".join(lines)


def _md(x) -> str:

    return fmt(x).replace("|", "\\|").replace("\n", " ")


def _doc_link(claim: str, out: Path) -> str:
    """``[C1](<relative path>/docs/theory.md#c1)`` from the report folder to the claim's section
    of the theory document in the repository this linmeta lives in (plain id when unknown)."""

    if claim not in all_claims():
        return _md(claim)
    doc = claim_doc(claim)
    if doc.startswith(("http://", "https://")):   # a plugin's document published elsewhere
        return f"[{claim}]({doc})"
    path, _, anchor = doc.partition("#")
    repo = Path(__file__).resolve().parents[2]
    rel = os.path.relpath(repo / path, Path(out).resolve())
    return f"[{claim}]({Path(rel).as_posix()}#{anchor})"


def _partial_note(meta) -> list[str]:
    """The report's statement that it covers part of the registered claims (else nothing)."""
    if meta.get("report", "REPORT.md") == "REPORT.md":
        return []
    return [f"Partial run: {len(meta['claims'])} of {len(claim_ids())} registered claims "
            f"({', '.join(meta['claims'])}). The full report, REPORT.md and verdicts.json, is "
            "written only by a run of every claim and is not changed by this one.", ""]


def _jobs_note(meta) -> str:
    jobs = meta.get("jobs", 1)
    note = "" if jobs == 1 else f" wall ({jobs} claims at once, each in its own process)"
    if meta.get("reruns"):
        note += "; rerun in fresh processes: " + ", ".join(meta["reruns"])
    return note


def _report(results, figs, meta, ok, out: Path) -> str:
    lines = ["# linmeta verify report", "",
             f"Setting **{meta['setting']}**, seed {meta['seed']}, dtype {meta['dtype']}, "
             f"total {meta['total_seconds']:.1f} s{_jobs_note(meta)}. Overall: **{'PASS' if ok else 'FAIL'}**.", "",
             *_partial_note(meta),
             "## Claims", "",
             "Each claim links to its section of the theory document.", "",
             "| claim | checks passed | mapped rows | key (or first failing) quantity | predicted "
             "| measured | result | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = claim_summary(r)
        cells = [_md(s[k]) for k, _ in _COLUMNS]
        cells[0] = _doc_link(r.claim, out)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## All verdict rows", "",
              "Kind `check`: a prediction tested within the tolerance. Kind `measured`: no "
              "theory predicts the value; the row maps it (passes when the measurement is "
              "finite). Rule: how the tolerance was derived (`rounding`: factor x eps x condition; "
              "`rounding_sq`: its square, for sums of squares; `seeds`: Student-t band over seeds "
              "plus a stated bias; `chi2`: chi-square band; `contraction`: rate^steps plus a "
              "floor; `asymptotic`: a constant times the first neglected term; `richardson`: "
              "measured second-order term of a linearisation; `exact`: counts; `stated`: a "
              "definition or an independent solver's stopping rule). The runner recomputes each "
              "tolerance from its inputs and fails a row whose tolerance is looser than its rule "
              "allows.", "",
              "| claim | quantity | predicted | measured | spread | tolerance | rule | passed "
              "| kind | note |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for v in r.verdicts:
            tol = getattr(v, "tol", None)
            lines.append("| " + " | ".join([
                _md(v.claim), _md(v.quantity), _md(v.predicted), _md(v.measured),
                _md(v.spread), _md(v.tolerance), _md(tol.rule) if tol is not None else "",
                "yes" if v.passed else "**NO**", _md(v.kind), _md(v.note)]) + " |")
    errors = [(r.claim, r.data.get("traceback")) for r in results
              if isinstance(r.data, dict) and r.data.get("traceback")]
    if errors:
        lines += ["", "## Errors", ""]
        for cid, tb in errors:
            lines += [f"### {cid}", "", "```", tb.rstrip(), "```", ""]
    shown = [(cid, p) for cid, paths in figs.items() for p in paths if p.suffix == ".png"]
    if shown:
        lines += ["", "## Figures", ""]
        for cid, p in shown:
            rel = os.path.relpath(p, out)
            pdf = Path(rel).with_suffix(".pdf").as_posix()
            lines += [f"### {cid}: {Path(rel).stem}", "", f"![{cid}]({Path(rel).as_posix()})", "",
                      f"PDF: [{pdf}]({pdf})", ""]
    lines += ["", "## Environment", ""]
    for k in ("linmeta", "jax", "jaxlib", "numpy", "python", "platform", "cpus", "backend",
              "fast_compile", "blas_single_thread", "date"):
        lines.append(f"- {k}: {meta[k]}")
    lines.append(f"- command: `linmeta verify --{meta['setting']} --seed {meta['seed']} "
                 f"--claims {','.join(meta['claims'])}`")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- entry points
def run_from_args(args) -> int:
    """Run verify from parsed arguments (see :func:`add_arguments`); returns the exit code:
    0 when every check passes, 1 when a claim fails. Raises ValueError for bad arguments and
    OSError ("... is not writable; choose a writable --out") for an output folder that cannot be
    created (the command line prints either as one line and exits 2)."""
    if getattr(args, "float32", False):
        raise ValueError("linmeta verify runs in float64 (its tolerances are float64 ones); "
                         "--float32 is not supported here")
    setting = getattr(args, "setting", None) or "quick"
    claims = _parse_claims(getattr(args, "claims", None))
    as_json = bool(getattr(args, "json", False))
    out_dir = getattr(args, "out", None) or DEFAULT_OUT
    seed = getattr(args, "seed", 0)
    seed = 0 if seed is None else seed
    figures = bool(getattr(args, "figures", True))
    jobs = getattr(args, "jobs", None)
    jobs = default_jobs() if jobs is None else jobs

    def progress(res):
        if not as_json:
            print(format_row(res), flush=True)


    check_writable_dir(out_dir)  # one clear line (OSError) before any work
    t_start = time.perf_counter()
    if not as_json:
        head, rule = _table_header()
        print(f"linmeta verify --{setting} (seed {seed}, float64): {', '.join(claims)}",
              flush=True)
        print(head)
        print(rule, flush=True)
    results, ok = run_verify(setting, claims, out_dir, seed, figures, progress=progress,
                             jobs=jobs)
    report_name, verdicts_name = report_files(claims)
    if as_json:
        report = json.loads((Path(out_dir) / verdicts_name).read_text(encoding="utf-8"))
        print(json.dumps(report, indent=2))
    else:
        n_fail = sum(claim_summary(r)["result"] != "pass" for r in results)
        total = sum(r.seconds for r in results)
        wall = time.perf_counter() - t_start
        at_once = min(jobs, len(claims))
        timing = (f"{total:.1f} s" if at_once == 1 else
                  f"{wall:.1f} s wall ({total:.1f} s of claims, {at_once} at once)")
        partial = ("" if report_name == "REPORT.md" else
                   f" (a partial run: {Path(out_dir) / 'REPORT.md'}, the full report, is left "
                   "as it was)")
        print("-" * len(_table_header()[0]))
        meta = json.loads((Path(out_dir) / verdicts_name).read_text(encoding="utf-8"))["meta"]
        for line in meta.get("reruns", []):
            print(f"note: {line}")
        print(f"{len(results) - n_fail}/{len(results)} claims pass; {timing}. "
              f"Report: {Path(out_dir) / report_name}{partial}")
    return 0 if ok else 1


def main(argv=None) -> int:
    """``python -m linmeta.verify [--quick|--full|--tiny] [--claims ...] [--out DIR] ...``."""
    parser = argparse.ArgumentParser(prog="python -m linmeta.verify",
                                     description=f"Check every registered claim "
                                                 f"({_claims_by_family()}), print one row per "
                                                 "claim, write REPORT.md.",
                                     epilog=PARTIAL_RULE)

    add_arguments(parser)
    compile_cache.add_argument(parser)
    args = parser.parse_args(argv)
    compile_cache.enable_from_args(args)
    try:
        return run_from_args(args)
    except ValueError as e:
        print(f"linmeta verify: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        text = e.strerror if e.strerror and not e.filename else str(e)
        print(f"linmeta verify: error: {text}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
