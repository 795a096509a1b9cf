"""The cosmic-ray configurations of benchmarks/mutation_tool.py: every closed-form module in full,
the solver modules sampled (>= 200 mutants in all), each with a family's verify as the test
command; the run's config rewriting; the test command's exit codes (no cosmic-ray needed)."""
import json
import tomllib

import pytest

from benchmarks import mutation_runner, mutation_tool as mt

CLOSED_FORMS = {"linmeta/core/theory.py", "linmeta/core/losses.py", "linmeta/core/lora.py",
                "linmeta/core/metrics.py", "linmeta/families/paper/theory.py",
                "linmeta/families/bilevel/theory.py",
                "linmeta/families/representation/theory.py",
                "linmeta/families/difference/theory.py"}


def _configs():
    return {p.stem: mt.load(p) for p in sorted(mt.CONFIGS.glob("*.toml"))}


def test_configurations_cover_the_closed_forms_in_full_and_sample_the_solvers():
    cfgs = _configs()
    full, sampled = set(), 0
    for name, cfg in cfgs.items():
        mods = cfg["cosmic-ray"]["module-path"]
        for m in mods:
            assert (mt.REPO / m).is_file(), (name, m)
        assert "benchmarks.mutation_tool check" in cfg["cosmic-ray"]["test-command"], name
        if cfg["linmeta-mutation"]["sample"] == 0:
            full |= set(mods)
        else:
            sampled += cfg["linmeta-mutation"]["sample"]
    assert CLOSED_FORMS <= full
    assert sampled >= 200
    for fam in (mt.REPO / "linmeta" / "families").iterdir():   # every family's methods sampled
        if (fam / "methods.py").is_file():
            assert any(f"linmeta/families/{fam.name}/methods.py" in c["cosmic-ray"]["module-path"]
                       for c in cfgs.values() if c["linmeta-mutation"]["sample"]), fam.name


def test_write_config_sets_the_setting_python_and_modules(tmp_path):
    src = mt.CONFIGS / "closed-forms.toml"
    out = tmp_path / "c.toml"
    mt.write_config(src, out, "tiny", 300.0, "/x/python", ["linmeta/core/theory.py"])
    cfg = tomllib.loads(out.read_text())["cosmic-ray"]
    assert cfg["module-path"] == ["linmeta/core/theory.py"]
    assert cfg["test-command"].startswith("/x/python -m benchmarks.mutation_tool check --setting "
                                          "tiny")
    assert cfg["timeout"] == 360.0
    with pytest.raises(SystemExit, match="not in"):
        mt.write_config(src, out, "tiny", 300.0, "/x/python", ["linmeta/methods/standard.py"])


SOURCE = """\
import math


@staticmethod
def f(x,
      y=2):
    if (x >
            y):
        return math.sqrt(x
                         + y)
    return -x
"""


def test_statement_lines_map_every_line_to_the_statement_coverage_reports():
    lines = mutation_runner.statement_lines(SOURCE)
    assert lines[1] == {1}
    assert {4, 5} <= lines[5] and {4, 5} <= lines[6]   # decorator and def header
    assert lines[7] == {7} and lines[8] == {7}          # the if's condition over two lines
    assert lines[10] == {9}                             # a continued return
    assert lines[11] == {11}


def test_claims_for_picks_the_claims_that_execute_the_statement():
    cov = {"A": {"lines": {"m.py": [7, 9]}}, "B": {"lines": {"m.py": [11]}},
           "C": {"lines": {"x.py": [8]}}}
    stmt = mutation_runner.statement_lines(SOURCE)
    assert mutation_runner.claims_for(range(8, 9), "m.py", stmt, cov, ["C", "B", "A"]) == ["A"]
    assert mutation_runner.claims_for(range(10, 11), "m.py", stmt, cov, ["A", "B"]) == ["A"]
    assert mutation_runner.claims_for(range(11, 12), "m.py", stmt, cov, ["A", "B"]) == ["B"]
    assert mutation_runner.claims_for(range(3, 4), "m.py", stmt, cov, ["A", "B", "C"]) == []


def test_apply_diff_moves_a_mutant_to_the_current_file_or_says_it_cannot():
    diff = ("--- a/m.py\n+++ b/m.py\n@@ -9,3 +9,3 @@\n         return math.sqrt(x\n"
            "-                         + y)\n+                         - y)\n     return -x\n")
    moved = "# a new first line\n" + SOURCE
    out = mutation_runner.apply_diff(moved, diff)
    assert out == moved.replace("+ y)", "- y)")
    assert mutation_runner.apply_diff(SOURCE.replace("return -x", "return x"), diff) is None
    assert mutation_runner.apply_diff(SOURCE + SOURCE, diff) is None   # not unique


def test_module_name_of_a_path():
    assert mutation_runner.module_name("linmeta/core/theory.py") == "linmeta.core.theory"
    assert mutation_runner.module_name("linmeta/families/paper/__init__.py") == \
        "linmeta.families.paper"


def test_classify_counts_a_recheck_kill_as_verify_and_a_test_kill_apart():
    def rec(key, outcome):
        return dict(key=key, outcome=outcome, module="m.py", diff="")

    recs = [rec("a", "killed by verify"), rec("b", "survived"), rec("c", "survived"),
            rec("d", "survived"), rec("e", "survived")]
    rechecks = [("quick", {"b": dict(verify=["C1: x"], tests=[], setting="quick"),
                           "c": dict(verify=[], tests=["tests/t.py::t"], setting="quick")})]
    mt.classify(recs, rechecks, {"d": "same value for every valid input"})
    assert [r["final"] for r in recs] == ["verify", "verify", "test", "equivalent", "open"]


@pytest.mark.parametrize("stdout, rc, want", [
    (json.dumps({"verdicts": [{"claim": "C1", "quantity": "q", "passed": True}]}), 0, 0),
    (json.dumps({"verdicts": [{"claim": "C1", "quantity": "q", "passed": False}]}), 1, 1),
    ("Traceback ...", 1, 3)])
def test_check_exit_codes(monkeypatch, capsys, stdout, rc, want):
    class P:
        returncode, stderr = rc, "boom"

    P.stdout = stdout
    monkeypatch.setattr(mt.subprocess, "run", lambda *a, **k: P)
    assert mt.check("tiny", "C1", 10.0) == want
    if want == 1:
        assert f"{mt.MARK} FAIL C1: q" in capsys.readouterr().out
