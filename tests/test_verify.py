"""``linmeta verify``: the runner, its report files and its exit code.

One real claim runs at its tiny setting (C1, no figures), and C5 in worker processes beside a
stand-in that stalls (compared with C5 run in a fresh process); the failure paths use stand-in
claim modules so that they cost no computation.
"""
import argparse
import json
import os
import types

import numpy as np
import pytest

from linmeta.engine import claims as claims_pkg
from linmeta.front import verify
from linmeta.engine.claims import ClaimResult, Verdict, all_claims
from linmeta.engine.verdict import Tolerance, audit, audited


def _parser():
    return verify.add_arguments(argparse.ArgumentParser())


def _fake_module(claim, passed=True, kind="check", plot_raises=False, run_raises=False):
    def run(setting="quick", seed=0):
        if run_raises:
            raise RuntimeError("boom")
        return ClaimResult(claim, [Verdict(claim, "a quantity | with a pipe", 1.0, 1.5, 0.0,
                                           "|x-1| <= 0.1", passed, kind, "note")],
                           {"setting": setting, "seed": seed}, 0.01)

    def plot(result, out_dir):
        if plot_raises:
            raise RuntimeError("no figure")
        from pathlib import Path

        paths = []
        for ext in ("png", "pdf"):
            p = Path(out_dir) / f"{claim.lower()}_fake.{ext}"
            p.write_bytes(b"not really an image")
            paths.append(p)
        return paths

    return types.SimpleNamespace(run=run, plot=plot)


@pytest.fixture
def fake_claims(monkeypatch):
    """Replace claim_module by a table of stand-ins; returns the table to fill."""
    table = {}

    def claim_module(cid):
        if cid not in table:
            module = all_claims()[cid][1]   # the registered module, absent here
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)
        return table[cid]

    monkeypatch.setattr(claims_pkg, "claim_module", claim_module)
    monkeypatch.setattr(verify, "claim_module", claim_module)  # the name verify calls
    return table


def test_arguments_and_defaults():
    a = _parser().parse_args([])
    # the default output folder is the git-ignored results/verify, never the committed figures/
    assert (a.setting, a.claims, a.out, a.seed, a.json, a.figures) == \
        ("quick", None, os.path.join("results", "verify"), 0, False, True)
    a = _parser().parse_args(["--tiny", "--claims", "c1, C3", "--out", "x", "--seed", "3",
                              "--json", "--no-figures"])
    assert (a.setting, a.out, a.seed, a.json, a.figures) == ("tiny", "x", 3, True, False)
    assert verify._parse_claims(a.claims) == ["C1", "C3"]
    assert _parser().parse_args(["--full"]).setting == "full"
    with pytest.raises(SystemExit):
        _parser().parse_args(["--quick", "--full"])
    with pytest.raises(ValueError, match="C1, C2"):
        verify._parse_claims("C1,C9")


def test_run_verify_tiny_writes_report_and_json(tmp_path):
    results, ok = verify.run_verify("tiny", ["C1"], tmp_path, seed=0, figures=False)
    assert ok and [r.claim for r in results] == ["C1"]
    report = (tmp_path / "REPORT-C1.md").read_text()          # a partial run: its own report
    assert "| [C1](" in report and "docs/theory.md#c1)" in report        # linked to its section
    assert "Setting **tiny**" in report and "float64" in report
    assert "jax:" in report and "Overall: **PASS**" in report
    data = json.loads((tmp_path / "verdicts-C1.json").read_text())
    assert data["ok"] is True and data["meta"]["setting"] == "tiny"
    assert data["meta"]["dtype"] == "float64"
    assert all(r["claim"] == "C1" and r["passed"] for r in data["verdicts"])
    assert all("tolerance_rule" in r for r in data["verdicts"] if r["kind"] == "check")
    assert len(data["verdicts"]) == len(results[0].verdicts)
    assert not list(tmp_path.glob(".*.tmp"))
    table = verify.format_table(results)
    assert table.splitlines()[2].startswith("C1") and "pass" in table


def test_failing_claim_gives_exit_code_1_and_report(tmp_path, fake_claims, capsys):
    fake_claims["C1"] = _fake_module("C1")
    fake_claims["C2"] = _fake_module("C2", passed=False)
    args = _parser().parse_args(["--tiny", "--claims", "C1,C2", "--out", str(tmp_path),
                                 "--jobs", "1"])   # stand-ins live in this process only
    assert verify.run_from_args(args) == 1
    printed = capsys.readouterr().out
    assert "C2" in printed and "FAIL" in printed and "1/2 claims pass" in printed
    report = (tmp_path / "REPORT-C1_C2.md").read_text()
    assert "Overall: **FAIL**" in report and "**NO**" in report
    assert "a quantity \\| with a pipe" in report          # pipes escaped in the table
    assert "![C1](c1_fake_tiny.png)" in report and "c2_fake_tiny.pdf" in report
    data = json.loads((tmp_path / "verdicts-C1_C2.json").read_text())
    assert data["ok"] is False
    assert [c["passed"] for c in data["claims"]] == [True, False]


def test_all_passing_gives_exit_code_0_and_json(tmp_path, fake_claims, capsys):
    fake_claims["C4"] = _fake_module("C4")
    fake_claims["C8"] = _fake_module("C8", kind="measured")
    args = _parser().parse_args(["--claims", "C4,C8", "--out", str(tmp_path), "--json",
                                 "--jobs", "1"])
    assert verify.run_from_args(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and [c["claim"] for c in data["claims"]] == ["C4", "C8"]


def test_missing_module_raising_run_and_raising_plot_are_failed_rows(tmp_path, fake_claims):
    fake_claims["C2"] = _fake_module("C2", run_raises=True)
    fake_claims["C3"] = _fake_module("C3", plot_raises=True)
    results, ok = verify.run_verify("tiny", "C8,C2,C3", tmp_path, seed=0)
    assert not ok
    by = {r.claim: r for r in results}
    assert by["C8"].verdicts[0].quantity == "module missing" and not by["C8"].verdicts[0].passed
    assert "RuntimeError: boom" in by["C2"].verdicts[0].note
    assert [v.quantity for v in by["C3"].verdicts if not v.passed] == ["figure"]
    report = (tmp_path / "REPORT-C8_C2_C3.md").read_text()
    assert "## Errors" in report and "boom" in report


def test_jobs_argument_is_checked(tmp_path, capsys):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="jobs must be an integer >= 1"):
            verify.run_verify("tiny", ["C5", "C8"], tmp_path, jobs=bad)
    with pytest.raises(SystemExit):
        _parser().parse_args(["--jobs", "0"])
    assert "--jobs must be an integer >= 1, got 0" in capsys.readouterr().err
    assert _parser().parse_args([]).jobs is None and verify.default_jobs() >= 1


STALL_CLAIM = """
import os, pathlib, time
from linmeta.engine.claims import ClaimResult, Verdict

def run(setting="quick", seed=0):
    mark = pathlib.Path(os.environ["LINMETA_TEST_STALL_MARK"])
    if not mark.exists():          # the first run stalls without using CPU, as XLA's did
        mark.write_text("stalled once")
        time.sleep(3600)
    return ClaimResult(CLAIM, [Verdict(CLAIM, "q", 0.0, 0.0, 0.0, "exact", True, "check")], {})
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"),
                    reason="the watchdog reads the workers' CPU time from /proc")
def test_parallel_run_reruns_a_stalled_claim_and_keeps_the_serial_rows(tmp_path, monkeypatch):
    """--jobs 2: claims in spawned workers, reported in claim order; a worker that uses no CPU
    while its claim is pending (XLA's runtime stalled) is killed after STALL_SECONDS and the claim
    runs again in a fresh worker, and the report says so; a real claim's rows (values included)
    are those of a run in this process."""
    from linmeta.engine import families

    pkg = tmp_path / "stallpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for cid in ("Z1", "Z2"):
        (pkg / f"{cid.lower()}.py").write_text(f"CLAIM = {cid!r}\n" + STALL_CLAIM)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("LINMETA_TEST_STALL_MARK", str(tmp_path / "z1.mark"))
    (tmp_path / "z2.mark").write_text("never stalls")
    monkeypatch.setattr(verify, "STALL_SECONDS", 4.0)
    fam = families.Family(name="stalltest", title="t", doc="docs/x.md",
                          claims={"Z1": "stallpkg.z1"})
    families.register(fam, replace=True)
    seen = []
    try:
        results, ok = verify.run_verify("tiny", ["Z1", "C5"], tmp_path / "out", figures=False,
                                        jobs=2, progress=lambda r: seen.append(r.claim))
        report, verdicts = verify.report_files(["Z1", "C5"])
    finally:
        families._REGISTRY.pop("stalltest", None)
    assert ok and [r.claim for r in results] == seen == ["Z1", "C5"]
    # the serial reference in a fresh process: this one may have re-imported modules (other
    # tests do), which a spawned worker never sees
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "linmeta.verify", "--tiny", "--claims", "C5", "--jobs",
                    "1", "--no-figures", "--out", str(tmp_path / "one")], check=True,
                   capture_output=True, timeout=300)
    serial = json.loads((tmp_path / "one" / "verdicts-C5.json").read_text())["verdicts"]
    got = [(v.quantity, float(v.measured) if isinstance(v.measured, (int, float)) else
            str(v.measured), bool(v.passed)) for v in results[1].verdicts]
    want = [(v["quantity"], v["measured"] if isinstance(v["measured"], (int, float)) else
             str(v["measured"]), v["passed"]) for v in serial]
    assert got == want and len(want) > 2
    meta = json.loads((tmp_path / "out" / verdicts).read_text())["meta"]
    assert meta["reruns"] == ["Z1 (run 2: XLA's runtime had stalled)"] and meta["jobs"] == 2
    text = (tmp_path / "out" / report).read_text()
    assert "2 claims at once" in text and "rerun in fresh processes: Z1" in text


def test_a_malformed_row_is_a_failed_claim_not_a_crash(tmp_path, fake_claims):
    """A claim whose rows are not Verdicts (here a list inside the list) fails its claim with a
    traceback in the report; the runner and the other claims go on."""
    good = _fake_module("C1")
    bad = _fake_module("C2")
    bad.run = lambda setting="quick", seed=0: ClaimResult("C2", [good.run().verdicts], {}, 0.0)
    fake_claims.update(C1=good, C2=bad)
    results, ok = verify.run_verify("tiny", "C1,C2", tmp_path, figures=False)
    assert not ok and results[0].verdicts[0].passed
    assert results[1].verdicts[0].quantity == "run raised"
    assert "AttributeError" in results[1].verdicts[0].note and results[1].data["traceback"]


def test_main_rejects_bad_input(tmp_path, capsys):
    assert verify.main(["--claims", "C0", "--out", str(tmp_path)]) == 2
    assert "--claims" in capsys.readouterr().err
    with pytest.raises(ValueError, match="setting"):
        verify.run_verify("huge", ["C1"], tmp_path)
    args = _parser().parse_args(["--out", str(tmp_path)])
    args.float32 = True
    with pytest.raises(ValueError, match="float64"):
        verify.run_from_args(args)


def test_unwritable_out_is_one_line_and_exit_2(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    bad = str(blocker / "sub")              # a folder inside a regular file cannot be created
    assert verify.main(["--tiny", "--claims", "C1", "--out", bad]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not writable" in err and "choose a writable --out" in err
    from linmeta.front import cli

    assert cli.main(["verify", "--tiny", "--claims", "C1", "--out", bad]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not writable" in err and "choose a writable --out" in err


# ----------------------------------------------------------------------------- tolerances as data
def test_tolerance_rules_and_audit():
    eps = float(np.finfo(float).eps)
    t = Tolerance.rounding(100)
    assert t.value == pytest.approx(100 * eps) and audit(t) == ""
    loose = Tolerance.rounding(100 * 1e6)                   # the "C1 tolerance x 1e6" mutation
    assert "factor" in audit(loose)
    assert "without a reason" in audit(Tolerance.rounding(1e4, cond=1e5))
    assert audit(Tolerance.rounding(1e4, cond=1e5, why="a stated reason")) == ""
    edited = Tolerance(1e-4, "rounding", dict(factor=100.0, eps=eps, cond=1.0), "edited")
    assert "differs from its derivation" in audit(edited)
    assert "p =" in audit(Tolerance.seeds(0.1, 5, p=1e-9))
    assert "why" in audit(Tolerance.seeds(0.1, 5, bias=0.2))             # a bias without its reason
    assert audit(Tolerance.seeds(0.1, 5, bias=0.2, bias_why="d/N")) == ""
    with pytest.raises(ValueError, match="why"):
        Tolerance.stated(1e-6, "")
    band = Tolerance.chi2(1000, p=1e-6)
    assert band.contains_ratio(1.0) and not band.contains_ratio(1.5)
    assert not band.contains_ratio(1 - band.lower - 1e-9) and band.contains_ratio(1 + band.value)
    s = Tolerance.seeds(0.1, 4, p=0.01)
    from scipy import stats

    assert s.value == pytest.approx(stats.t.ppf(0.995, 3) * 0.1)
    c = Tolerance.contraction(0.97, 3000, floor=1e-13)
    assert c.value == pytest.approx(0.97 ** 3000 + 1e-13)
    assert "rate" in audit(Tolerance(1.0, "contraction", dict(rate=1.0, steps=3.0, scale=1.0,
                                                                 floor=0.0), ""))


def test_a_row_whose_tolerance_fails_the_audit_fails(tmp_path, fake_claims):
    eps = float(np.finfo(float).eps)

    def run(setting="quick", seed=0):
        good = Tolerance.rounding(100)
        bad = Tolerance(100 * eps * 1e6, "rounding", dict(factor=100 * 1e6, eps=eps, cond=1.0),
                        "a tolerance a million times its derivation")
        return ClaimResult("C1", [
            Verdict("C1", "fine", 0.0, 1e-16, 0.0, good, good.below(1e-16), "check"),
            Verdict("C1", "too loose", 0.0, 1e-12, 0.0, bad, bad.below(1e-12), "check")], {}, 0.0)

    fake_claims["C1"] = types.SimpleNamespace(run=run, plot=lambda r, o: [])
    results, ok = verify.run_verify("tiny", ["C1"], tmp_path, figures=False)
    assert not ok
    fine, loose = results[0].verdicts
    assert fine.passed and not loose.passed and "tolerance audit failed" in loose.note
    rows = json.loads((tmp_path / "verdicts-C1.json").read_text())["verdicts"]
    assert rows[1]["tolerance_rule"] == "rounding" and rows[1]["passed"] is False
    # measured rows and rows with a text tolerance pass through the audit unchanged
    plain = Verdict("C9", "q", 1, 1, 0.0, "text", True, "check")
    assert audited([plain]) == [plain]


# ----------------------------------------------------------------------------- partial runs (issue 20)
def test_a_partial_run_writes_its_own_report_and_leaves_the_full_one(tmp_path, fake_claims,
                                                                     capsys):
    from linmeta.engine.claims import claim_ids, family_claims

    for cid in claim_ids():
        fake_claims[cid] = _fake_module(cid)
    verify.run_verify("tiny", None, tmp_path, figures=False)         # every registered claim
    full = {name: (tmp_path / name).read_bytes() for name in ("REPORT.md", "verdicts.json")}
    assert "Partial run" not in full["REPORT.md"].decode()
    args = _parser().parse_args(["--tiny", "--claims", "C3,C6", "--out", str(tmp_path),
                                 "--no-figures", "--jobs", "1"])
    assert verify.run_from_args(args) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "REPORT-C3_C6.md" in last and "partial run" in last and "REPORT.md" in last
    assert {name: (tmp_path / name).read_bytes() for name in full} == full   # untouched
    partial = (tmp_path / "REPORT-C3_C6.md").read_text()
    assert "Partial run: 2 of" in partial and "REPORT.md" in partial
    data = json.loads((tmp_path / "verdicts-C3_C6.json").read_text())
    assert [c["claim"] for c in data["claims"]] == ["C3", "C6"]
    # the rule: a whole family is named by its name; every claim is the full report
    assert verify.report_files(family_claims("bilevel")) == ("REPORT-bilevel.md",
                                                            "verdicts-bilevel.json")
    assert verify.report_files(claim_ids()) == ("REPORT.md", "verdicts.json")
    long = verify.report_files(claim_ids()[:-1])[0]
    assert len(long) <= len("REPORT-.md") + verify.MAX_TAG
    assert "REPORT-<claims>.md" in verify.PARTIAL_RULE and "REPORT-<claims>.md" in (
        verify.__doc__ + _parser().format_help())



def test_openblas_starts_single_threaded_unless_chosen():
    """Importing linmeta before NumPy starts OpenBLAS with one thread; a user's own
    OPENBLAS_NUM_THREADS is kept. Fresh processes: NumPy is loaded here already."""
    import subprocess
    import sys

    code = "import os, linmeta; print(os.environ['OPENBLAS_NUM_THREADS'])"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    got = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=e, check=True).stdout.strip()
           for e in (env, dict(env, OPENBLAS_NUM_THREADS="3"))]
    assert got == ["1", "3"]
