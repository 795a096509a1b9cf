"""Every experiment script checks its arguments as the command line does (issue 20, item 8): a
negative seed or an --out that cannot be a folder is one line on standard error and exit code 2,
before any work. Each script exposes its parser as ``build_parser()`` (the shared one of
:func:`linmeta.engine.claim_support.experiment_parser`, plus its own arguments) and runs it
through :func:`linmeta.engine.claim_support.experiment_args`."""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from linmeta.engine.claim_support import experiment_args

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (REPO / "experiments").glob("*.py") if p.stem != "__init__")
# converted on another branch of issue 20; drop this mark when it lands
PENDING: set = set()


def _scripts():
    return [pytest.param(name, marks=pytest.mark.xfail(reason="converted on another branch",
                                                       strict=False))
            if name in PENDING else name for name in SCRIPTS]


def _parser(name):
    module = importlib.import_module(f"experiments.{name}")
    assert callable(getattr(module, "build_parser", None)), f"experiments/{name}.py: no build_parser"
    source = (REPO / "experiments" / f"{name}.py").read_text()
    # the script's entry point goes through the shared checks, not a parser of its own
    assert "experiment_args(" in source or "experiment_cli(" in source or "claims_cli(" in source
    assert "ArgumentParser(" not in source
    return module.build_parser()


def _exit_line(capsys, parser, argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        experiment_args(parser, argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("name", _scripts())
def test_script_refuses_a_negative_seed_and_a_bad_out(name, capsys, tmp_path):
    parser = _parser(name)
    extra = ["C1"] if name == "claims" else []
    seeds = [a for a in ("--seed", "--truth-seed") if a in parser.format_help()]
    assert seeds, f"experiments/{name}.py takes no seed"
    for flag in seeds:
        line = _exit_line(capsys, parser, [*extra, flag, "-1", "--out", str(tmp_path / "x")])
        assert flag in line and "[0, " in line
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    line = _exit_line(capsys, parser, [*extra, "--out", str(blocker)])
    assert "is a file, not a folder" in line and "Errno" not in line
    line = _exit_line(capsys, parser, [*extra, "--out", str(blocker / "sub")])
    assert "not writable" in line and "Errno" not in line
    assert not (tmp_path / "x").exists()           # nothing created before the error
    good = experiment_args(parser, [*extra, "--out", str(tmp_path / "ok"), "--setting", "tiny"])
    assert good.setting == "tiny" and (tmp_path / "ok").is_dir()


def test_script_entry_point_checks_before_running(tmp_path):
    """The real entry point (python -m experiments.bridge): exit 2, one line, no work done."""
    env = dict(os.environ, LINMETA_NO_CACHE="1")
    proc = subprocess.run([sys.executable, "-m", "experiments.bridge", "--seed", "-1",
                           "--setting", "tiny", "--out", str(tmp_path / "out")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "--seed" in proc.stderr
    assert proc.stdout == "" and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", SCRIPTS)
def test_default_out_is_not_the_committed_figures(name):
    """A script run without --out writes under results/ (git-ignored), never into figures/."""
    out = _parser(name).parse_args(["C3"] if name == "claims" else []).out
    assert os.path.normpath(out).split(os.sep)[0] == "results", (name, out)
