"""The cosmic-ray configurations of benchmarks/mutation_tool.py: every closed-form module in full,
the solver modules sampled (>= 200 mutants in all), each with a family's verify as the test
command; the run's config rewriting; the test command's exit codes (no cosmic-ray needed)."""
import json
import tomllib

import pytest

from benchmarks import mutation_tool as mt

CLOSED_FORMS = {"linmeta/core/theory.py", "linmeta/core/losses.py", "linmeta/core/lora.py",
                "linmeta/core/metrics.py", "linmeta/families/paper/theory.py",
                "linmeta/families/bilevel/theory.py",
                "linmeta/families/representation/theory.py"}


def _configs():
    return {p.stem: mt.load(p) for p in sorted(mt.CONFIGS.glob("*.toml"))}


def test_configurations_cover_the_closed_forms_in_full_and_sample_the_solvers():
    cfgs = _configs()
    full, sampled = set(), 0
    for name, cfg in cfgs.items():
        mods = cfg["cosmic-ray"]["module-path"]
        for m in mods:
            assert (mt.REPO / m).is_file(), (name, m)
        lm = cfg["linmeta-mutation"]
        assert lm["claims"] in ("paper", "bilevel", "representation"), name
        assert f"--claims {lm['claims']}" in cfg["cosmic-ray"]["test-command"], name
        if lm["sample"] == 0:
            full |= set(mods)
        else:
            sampled += lm["sample"]
    assert CLOSED_FORMS <= full
    assert sampled >= 200


def test_write_config_sets_the_setting_python_and_modules(tmp_path):
    src = mt.CONFIGS / "closed-forms-paper.toml"
    out = tmp_path / "c.toml"
    mt.write_config(src, out, "tiny", 300.0, "/x/python", ["linmeta/core/theory.py"])
    cfg = tomllib.loads(out.read_text())["cosmic-ray"]
    assert cfg["module-path"] == ["linmeta/core/theory.py"]
    assert cfg["test-command"].startswith("/x/python -m benchmarks.mutation_tool check --setting "
                                          "tiny --claims paper")
    assert cfg["timeout"] == 360.0
    with pytest.raises(SystemExit, match="not in"):
        mt.write_config(src, out, "tiny", 300.0, "/x/python", ["linmeta/methods/standard.py"])


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
