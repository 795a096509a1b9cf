"""Families as plugins: examples/plugin_family (an installable package with one method, one claim
and one protocol) reaches ``linmeta verify``, ``linmeta sweep`` and ``linmeta run`` through the
entry-point group ``linmeta.families`` alone; a broken plugin is one line naming it, and the
built-in families still run.

The plugin is made visible to ``importlib.metadata`` the way pip installs it (a ``*.dist-info``
folder with ``entry_points.txt`` on ``sys.path``), without building a wheel."""
from __future__ import annotations

import csv
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from linmeta.engine import families

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "plugin_family"


def _site(tmp_path, entry_points: dict[str, str], copy_example=True) -> pathlib.Path:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    if copy_example:
        shutil.copytree(EXAMPLE / "linmeta_shrink", site / "linmeta_shrink")
    info = site / "linmeta_plugins_under_test-0.1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: linmeta-plugins-under-test\n"
                                   "Version: 0.1.0\n")
    (info / "entry_points.txt").write_text(
        "[linmeta.families]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    return site


def _run(args, site, cwd, timeout=300):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO)]),
               LINMETA_NO_CACHE="1")
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_plugin_family_through_verify_sweep_and_run(tmp_path):
    """One fresh process (the entry point is read at start-up) runs the three commands."""
    site = _site(tmp_path, {"shrink": "linmeta_shrink"})
    spec = tmp_path / "shrink.toml"
    spec.write_text('seeds = 1\n[fixed]\nprotocol = "shrink"\nsteps = 100\n'
                    '[grid]\nlam = [0.0, 1.0, 4.0]\n')
    code = (
        "import sys\nfrom linmeta.front import cli\n"
        f"codes = [cli.main(['verify', '--tiny', '--claims', 'shrink', '--out', "
        f"{str(tmp_path / 'verify')!r}]),\n"
        f"         cli.main(['sweep', {str(spec)!r}, '--out', {str(tmp_path / 'sweep')!r}]),\n"
        "         cli.main(['run', '--protocol', 'shrink', '--set', 'lam=2', '--no-write'])]\n"
        "print('exit codes', codes)\n")
    proc = _run(["-c", code], site, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "exit codes [0, 0, 0]" in proc.stdout, proc.stdout + proc.stderr
    # verify: X1 beside the built-in claims, a partial report naming the family
    assert "X1" in proc.stdout and "1/1 claims pass" in proc.stdout
    report = (tmp_path / "verify" / "REPORT-shrink.md").read_text()
    assert "X1" in report and "https://example.org/linmeta-shrink/theory.md#x1" in report
    assert (tmp_path / "verify" / "shrink_x1_tiny.png").exists()
    # sweep: one row per grid value, each at the closed form
    with open(tmp_path / "sweep" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["lam"]) for r in rows] == [0.0, 1.0, 4.0]
    # lr = 0.3 contracts by |1 - 0.3 (1 + lam)| = 0.7, 0.4, 0.5 per step: 100 steps reach rounding
    assert all(float(r["error_to_closed_form"]) < 1e-10 for r in rows)
    # run: the generic summary of a protocol without a summary hook
    assert "protocol shrink" in proc.stdout and "error_to_closed_form" in proc.stdout


def test_a_broken_plugin_is_one_line_and_the_builtins_still_run(tmp_path):
    site = _site(tmp_path, {"broken": "no_such_module_for_linmeta", "shrink": "linmeta_shrink"})
    code = ("from linmeta.engine import claims, families, protocols\n"
            "print(families.names()); print('shrink' in protocols.names(), "
            "claims.claim_ids()[0])")
    proc = _run(["-c", code], site, tmp_path)
    assert proc.returncode == 0, proc.stderr
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and "plugin family 'broken'" in err[0], proc.stderr
    assert "no_such_module_for_linmeta" in err[0]
    assert "'paper', 'bilevel', 'representation'" in proc.stdout and "'shrink'" in proc.stdout
    assert "True C1" in proc.stdout


def test_family_values_are_validated():
    with pytest.raises(ValueError, match="claim id"):
        families.Family(name="x", title="t", doc="d", claims={"c1": "m"})
    with pytest.raises(ValueError, match="lower-case identifier"):
        families.Family(name="X-y", title="t", doc="d", claims={})
    with pytest.raises(ValueError, match="already claimed by family 'paper'"):
        families.register(families.Family(name="clash", title="t", doc="d",
                                          claims={"C1": "somewhere"}))
    with pytest.raises(ValueError, match="already registered"):
        families.register(families.get("paper"))
    assert "clash" not in families.names()


def test_quick_seconds_hints_order_the_parallel_work_longest_first():
    from linmeta.engine.claims import longest_first

    order = longest_first(["M6", "C5", "C3", "R5", "C2"])
    assert order == ["C3", "C2", "C5", "M6", "R5"]   # hints 35, 21, 6, 1, 1 (ties keep the order)
    with pytest.raises(ValueError, match="quick_seconds"):
        families.Family(name="hinted", title="t", doc="d", claims={"X1": "m"},
                        quick_seconds={"X2": 1.0})
    with pytest.raises(ValueError, match="quick_seconds"):
        families.Family(name="hinted", title="t", doc="d", claims={"X1": "m"},
                        quick_seconds={"X1": -1.0})
