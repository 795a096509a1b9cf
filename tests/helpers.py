"""Small helpers shared by the tests: compile counting, relative error, the claims' tiny runs in a
subprocess, and an independent recomputation of the claims' tolerances."""
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import jax
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


# ----------------------------------------------------------------------------- claims' tiny runs
class _Job:
    """One background run of experiments at their tiny setting (see :func:`tiny_claim_runs`)."""

    def __init__(self, tag: str, body: str, module_file: str, wanted):
        self.tag, self.body, self.module_file, self.wanted = tag, body, module_file, wanted
        self.done = threading.Event()
        self.started = False
        self.proc = None
        self.out = None
        self.result = None  # (returncode, stdout, stderr)


_JOBS: list = []  # registered when the test modules are imported (collection)
DEFAULT_BODY = """
for cid, name in EXPERIMENTS.items():
    t0 = time.perf_counter()
    if name:   # a script of its own (it does more than the claim's rows)
        verdicts = importlib.import_module("experiments." + name).main(setting="tiny",
                                                                       out_dir=out, seed=0)
    else:      # the one entry for every claim
        verdicts = importlib.import_module("experiments.claims").main([cid], setting="tiny",
                                                                      out_dir=out, seed=0)
    secs[cid] = time.perf_counter() - t0
    rows[cid] = [v.as_dict() for v in verdicts]
"""


def tiny_claim_runs(experiments: dict, tag: str, *, body: str | None = None, name="tiny_runs",
                    wanted=None):
    """A module-scoped fixture ``tiny_runs`` for a test module that checks claims at their tiny
    setting: ``(out_dir, data)`` with ``data["rows"][cid]`` the verdict rows as dicts
    (``Verdict.as_dict``) and ``data["seconds"][cid]``.

    The runs happen in a subprocess with XLA's cheap backend optimisation level (they are
    compile-bound, and the flag must be set before JAX starts, which the pytest process has
    already done). Every module's runs are registered here at collection and started by
    ``tests/conftest.py`` when collection finishes, one module after another in one background
    chain, only for modules where a selected test (``wanted(item)``) uses them: they run on the
    second core while the suite's other tests run, and a module's tests wait only if its runs
    are not finished yet. ``experiments`` maps claim ids to ``experiments/<name>.py`` scripts
    (each called with ``main(setting="tiny", out_dir=out, seed=0)``), or to None for the
    generic ``experiments/claims.py``; ``body`` replaces that loop
    (Python code that fills ``rows`` and ``secs``, with ``out``, ``EXPERIMENTS``, ``importlib``
    and ``time`` at hand).

    Use: ``tiny_runs = helpers.tiny_claim_runs(EXPERIMENTS, "name")``; ``name`` names the fixture
    (and, by default, selects the tests that want it).
    """
    import inspect

    if wanted is None:
        def wanted(item):
            return name in getattr(item, "fixturenames", ())

    caller = os.path.abspath(inspect.stack()[1].filename)
    code = (f"import importlib, json, sys, time\nEXPERIMENTS = {experiments!r}\n"
            "out = sys.argv[1]\nrows, secs = {}, {}\n" + textwrap.dedent(body or DEFAULT_BODY)
            + "\nimport os\njson.dump(dict(rows=rows, seconds=secs), "
              "open(os.path.join(out, 'rows.json'), 'w'))\n")
    job = _Job(tag, code, caller, wanted)
    _JOBS.append(job)

    @pytest.fixture(scope="module", name=name)
    def tiny_runs():
        if not job.started:
            start_jobs([job])  # not started at collection (a plugin-less or partial session)
        assert job.done.wait(timeout=1200), f"tiny runs of {tag} did not finish in 20 minutes"
        code, out, err = job.result
        assert code == 0, f"exit code {code}\n" + out[-3000:] + err[-5000:]
        with open(os.path.join(job.out, "rows.json")) as f:
            data = json.load(f)
        return Path(job.out), data

    return tiny_runs


def _run_chain(jobs: list) -> None:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                        + ("" if "xla_cpu_multi_thread_eigen" in env.get("XLA_FLAGS", "")
                           else " --xla_cpu_multi_thread_eigen=false")).strip()
    env["JAX_PLATFORMS"] = env.get("JAX_PLATFORMS", "cpu")
    for job in jobs:
        try:
            job.out = tempfile.mkdtemp(prefix=f"linmeta_{job.tag}_tiny_")
            proc = subprocess.Popen([sys.executable, "-c", job.body, job.out], cwd=REPO, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            job.proc = proc
            out, err = proc.communicate()
            job.result = (proc.returncode, out, err)
        except Exception as e:  # pragma: no cover - reported by the waiting fixture
            job.result = (-1, "", repr(e))
        finally:
            job.done.set()


def start_jobs(jobs: list) -> None:
    """Start ``jobs`` one after another in a background thread (each a subprocess)."""
    jobs = [job for job in jobs if not job.started]
    for job in jobs:
        job.started = True
    if jobs:
        threading.Thread(target=_run_chain, args=(list(jobs),), daemon=True).start()


def chain_modules_last(items: list, last_ids=()) -> list:
    """``items`` reordered for the background chain: the test modules that read a registered
    job's runs move (whole, in collection order, which is the chain's order) behind every other
    module, and the tests named in ``last_ids`` behind those. The main process then runs the
    independent modules while the chain computes, instead of waiting for the first job at the
    third module."""
    with_job = {job.module_file for job in _JOBS}

    def key(pair):
        i, item = pair
        if item.nodeid in last_ids:
            return (2, i)
        return (1 if os.path.abspath(str(item.fspath)) in with_job else 0, i)

    return [item for _, item in sorted(enumerate(items), key=key)]


def start_tiny_runs(session) -> None:
    """conftest's hook: start the registered tiny runs wanted by the session's selected tests."""
    wanted = [job for job in _JOBS
              if any(os.path.abspath(str(item.fspath)) == job.module_file and job.wanted(item)
                     for item in session.items)]
    start_jobs(wanted)


def stop_tiny_runs() -> None:
    """Kill runs still going (the session was interrupted) and remove their folders."""
    import shutil

    for job in _JOBS:
        if job.proc is not None and job.proc.poll() is None:
            job.proc.kill()
        if job.out is not None:
            shutil.rmtree(job.out, ignore_errors=True)


# ----------------------------------------------------------------------------- tolerances
EPS64 = 2.220446049250313e-16


def _t_quantile(q, dof):
    from scipy import stats
    return stats.t.ppf(q, dof)


def recompute_tolerance(rule, inputs):
    """The tolerance a rule gives for its inputs, written out here independently of
    ``linmeta.engine.verdict`` (which the claims use). Returns ``(value, lower or None)``."""
    from scipy import stats

    i = inputs
    if rule == "rounding":
        return i["factor"] * i["eps"] * i["cond"], None
    if rule == "rounding_sq":
        return (i["factor"] * i["eps"] * i["cond"]) ** 2, None
    if rule == "asymptotic":
        return i["factor"] * i["scale"], None
    if rule == "seeds":
        return _t_quantile(1 - i["p"] / 2, i["n_seeds"] - 1) * i["se"] + i["bias"], None
    if rule == "chi2":
        n = i["dof"]
        return stats.chi2.isf(i["p"] / 2, n) / n - 1, 1 - stats.chi2.ppf(i["p"] / 2, n) / n
    if rule == "contraction":
        return i["scale"] * math.exp(i["steps"] * math.log(i["rate"])) + i["floor"], None
    if rule == "richardson":
        return max((2 * q + r) / p for q, r, p in
                   zip(i["quadratic"], i["rounding"], i["prediction"])), None
    if rule == "exact":
        return 0.0, None
    if rule == "stated":
        return i["value"], None
    raise AssertionError(f"unknown tolerance rule {rule!r}")


def check_row_tolerances(rows):
    """Every check row carries a structured tolerance equal to its derivation, and none is looser
    than its rule allows: float64 rounding tolerances at most 1e-8 (1e-16 for squared rounding)
    unless the derivation says why, at most 1e4 eps steps, Student-t and chi-square bands at
    level p >= 1e-6 with >= 2 seeds, contraction rates below 1, constants in front of a
    neglected term at most 10, stated thresholds with a reason. Returns the number checked."""
    n = 0
    for r in rows:
        if r["kind"] != "check":
            continue
        n += 1
        where = f"{r['claim']}: {r['quantity']}"
        assert "tolerance_rule" in r, f"check row without a structured tolerance: {where}"
        rule, i, value = r["tolerance_rule"], r["tolerance_inputs"], r["tolerance_value"]
        want, lower = recompute_tolerance(rule, i)
        assert math.isclose(value, want, rel_tol=1e-9, abs_tol=0.0), (where, value, want)
        if lower is not None:
            assert math.isclose(r["tolerance_lower"], lower, rel_tol=1e-9), where
        if rule in ("rounding", "rounding_sq"):
            assert i["eps"] == EPS64 and i["cond"] >= 1 and i["factor"] <= 1e4, where
            cap = 1e-8 if rule == "rounding" else 1e-16
            assert value <= cap or i.get("why"), f"rounding tolerance {value:.2g} > {cap}: {where}"
        elif rule == "seeds":
            assert i["p"] >= 1e-6 and i["n_seeds"] >= 2 and math.isfinite(i["se"]), where
            assert i["bias"] == 0 or i.get("why"), where
        elif rule == "chi2":
            assert i["p"] >= 1e-6 and i["dof"] >= 1, where
        elif rule == "contraction":
            assert 0 <= i["rate"] < 1, where
            assert value <= 1e-8, where  # what a float64 end point of a contraction must reach
        elif rule == "asymptotic":
            assert 0 < i["factor"] <= 10 and i.get("why"), where
        elif rule == "stated":
            assert i.get("why"), where
        elif rule == "richardson":
            assert min(i["prediction"]) > 0, where
    return n
