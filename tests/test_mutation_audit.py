"""The mutation audit (benchmarks/mutation_audit.py): its list stays applicable, and its smoke
mode shows one mutant caught by ``linmeta verify`` end to end (scratch copy, verify, report)."""
import json
import subprocess
import sys

from benchmarks import mutation_audit as ma


def test_every_mutation_applies_exactly_once_and_changes_the_line():
    assert len(ma.MUTATIONS) >= 20
    ids = [m["id"] for m in ma.MUTATIONS]
    assert len(set(ids)) == len(ids)
    areas = {m["file"].rsplit("/", 1)[1].split(".")[0] for m in ma.MUTATIONS}
    for area in ("data", "theory", "losses", "meta_lora", "standard", "finetune", "metrics",
                 "landscape", "c1"):
        assert area in areas, area
    for m in ma.MUTATIONS:
        assert ma.locate(ma.REPO, m) > 0            # exactly once (raises otherwise)
        assert m["new"] != m["old"] and m["what"] and m["tests"]


def test_smoke_mode_catches_the_noise_mutant(tmp_path):
    """One mutant (the noise standard deviation used as a variance) on a scratch copy, verify
    --tiny --claims C1: caught; the working tree is left alone."""
    before = (ma.REPO / "linmeta" / "core" / "data.py").read_text()
    p = subprocess.run([sys.executable, str(ma.REPO / "benchmarks" / "mutation_audit.py"),
                        "--smoke", "--out", str(tmp_path)], capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (ma.REPO / "linmeta" / "core" / "data.py").read_text() == before
    rec = json.loads((tmp_path / "mutation_audit.json").read_text())["records"]
    assert [r["id"] for r in rec] == ["noise_std_as_variance"] and rec[0]["caught_by_verify"]
    assert any("noise of linmeta.draw_samples" in f for f in rec[0]["verify"]["failing"])
    table = (tmp_path / "mutation_audit.md").read_text()
    assert "| 1 | `noise_std_as_variance`" in table and "linmeta/core/data.py:" in table
