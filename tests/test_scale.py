"""experiments/scale.py: the claims at large d (C3 recovery, C2's SR bias, C6's rate); its tiny
setting runs in the background chain (helpers.tiny_claim_runs), the checks below read its JSON."""
import json

import pytest

from experiments import scale

from helpers import tiny_claim_runs

scale_runs = tiny_claim_runs({}, "scale", name="scale_runs", body="""
from experiments import scale
s = scale.main("tiny", out, seed=0)
rows["scale"] = s
""")


def test_scale_tiny(scale_runs):
    out, data = scale_runs
    s = data["rows"]["scale"]
    assert s == json.loads((out / "scale_tiny.json").read_text())
    assert (out / "scale_tiny.png").stat().st_size > 0
    (p,) = s["points"]
    assert (p["d"], p["k"], p["T"]) == (64, 2, 4)
    # C3: the base recovered (closed form A*), SR's error equals its closed form ||Rbar||/||A*||
    assert p["c3"]["rel_base_error"] < 1e-10 and p["c3"]["method"] == "lbfgs"
    assert abs(p["c3"]["sr_rel_base_error"] / p["c3"]["sr_closed_form"] - 1) < 1e-10
    # C2 (orthogonal case): the rank-k fit after SR leaves k s^4 / T
    assert p["c2"]["closed_form"] == 2 / 4 and abs(p["c2"]["constant"] - 1) < 1e-8
    # C6: within 4 sampling spreads of sigma^2 k(2d - k)/n
    assert abs(p["c6"]["constant"] - 1) < 4 * p["c6"]["sampling_spread"]
    assert p["c6"]["n"] == 128 and p["c6"]["dof"] == 2 * (128 - 2)
    for part in ("c2", "c3", "c6"):
        assert p[part]["pass"] and p[part]["seconds"] > 0 and p[part]["peak_gib"] > 0
    assert s["all_pass"]


@pytest.mark.parametrize("args, word", [(["--setting", "huge"], "invalid choice"),
                                        (["--seed", "-1"], "seed"),
                                        (["--seed", "x"], "invalid int")])
def test_scale_arguments_validated(args, word, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        scale.cli(args + ["--out", str(tmp_path)])
    assert e.value.code == 2 and word in capsys.readouterr().err


def test_scale_out_must_be_a_folder(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(ValueError, match="out must be a folder"):
        scale.main("tiny", str(f))
    with pytest.raises(ValueError, match="setting must be one of"):
        scale.main("large", str(tmp_path))
