"""Small helpers shared by the tests: compile counting, relative error, the claims' tiny runs in a
subprocess, and an independent recomputation of the claims' tolerances."""
import contextlib
import json
import math
import os
import subprocess
import sys
import textwrap

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
def tiny_claim_runs(experiments: dict, tag: str):
    """Two module-scoped fixtures for a test module that checks claims at their tiny setting.

    ``experiments`` maps claim ids to ``experiments/<name>.py`` scripts. The first fixture
    (autouse) starts one subprocess that calls every script's ``main(setting="tiny")`` with XLA's
    cheap backend optimisation level (the runs are compile-bound and the flag must be set before
    JAX starts, which the pytest process has already done), as soon as the module's first test
    runs and only when a test using the runs is selected; the hand-built tests of the module run
    while it compiles. The second, ``tiny_runs``, waits for it and returns ``(out_dir, data)``
    with ``data["rows"][cid]`` the verdict rows as dicts (``Verdict.as_dict``) and
    ``data["seconds"][cid]``.

    Use: ``_start_tiny_runs, tiny_runs = helpers.tiny_claim_runs(EXPERIMENTS, "name")``.
    """
    state = {}

    @pytest.fixture(scope="module", autouse=True)
    def _start_tiny_runs(request, tmp_path_factory):
        if not any(item.module is request.module and "tiny_runs" in getattr(item, "fixturenames", ())
                   for item in request.session.items):
            yield
            return
        out = tmp_path_factory.mktemp(f"{tag}_tiny")
        script = textwrap.dedent(f"""
            import importlib, json, time
            rows, secs = {{}}, {{}}
            for cid, name in {experiments!r}.items():
                t0 = time.perf_counter()
                verdicts = importlib.import_module("experiments." + name).main(
                    setting="tiny", out_dir={str(out)!r}, seed=0)
                secs[cid] = time.perf_counter() - t0
                rows[cid] = [v.as_dict() for v in verdicts]
            json.dump(dict(rows=rows, seconds=secs), open({str(out / "rows.json")!r}, "w"))
        """)
        env = dict(os.environ)
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                            + " --xla_backend_optimization_level=0").strip()
        env["JAX_PLATFORMS"] = env.get("JAX_PLATFORMS", "cpu")
        state["out"] = out
        state["proc"] = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        yield
        if state["proc"].poll() is None:  # pragma: no cover - only when the tests were skipped
            state["proc"].kill()
            state["proc"].communicate()

    @pytest.fixture(scope="module")
    def tiny_runs():
        proc, out = state["proc"], state["out"]
        if "data" not in state:
            stdout, stderr = proc.communicate(timeout=900)
            assert proc.returncode == 0, stdout[-3000:] + stderr[-5000:]
            state["data"] = json.loads((out / "rows.json").read_text())
        return out, state["data"]

    return _start_tiny_runs, tiny_runs


# ----------------------------------------------------------------------------- tolerances
EPS64 = 2.220446049250313e-16


def _t_quantile(q, dof):
    from scipy import stats
    return stats.t.ppf(q, dof)


def recompute_tolerance(rule, inputs):
    """The tolerance a rule gives for its inputs, written out here independently of
    ``linmeta.claims._verdict`` (which the claims use). Returns ``(value, lower or None)``."""
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
