"""The sweep protocol "difference": reached by name, one compile for a grid over traced keys,
the paper's truth through the same program, and bad keys refused with the key named."""
import math

import pytest

from linmeta.engine import protocols, sweep


def test_difference_protocol_sweeps_by_name_with_one_program():
    assert "difference" in protocols.names()
    cfgs = sweep.expand_grid({"fixed": {"protocol": "difference", "d": 3, "r": 1, "T": 3,
                                        "n_unseen": 2, "m": 12, "lm_steps": 30, "n_starts": 2},
                              "grid": {"noise_std": [0.1, 0.3], "truth": ["structured", "paper"]}})
    res = sweep.run_sweep(cfgs)
    assert len(res) == 4
    for cfg, r in zip(cfgs, res):
        assert not r["joint_diverged"]
        if cfg["truth"] == "structured":
            assert r["subspace_gap"] < 1e-8 and r["joint_objective"] < 1e-20
            assert r["ft_coef_risk"] < r["ft_full_risk"]
        else:
            assert math.isnan(r["subspace_gap"]) and r["joint_objective"] > 0
        assert r["trajectories"]["joint_objective_traj"].shape == (31,)


@pytest.mark.parametrize("key, value", [("r", 5), ("truth", "other"), ("n", -1), ("m", 0)])
def test_difference_protocol_refuses_bad_keys(key, value):
    with pytest.raises(ValueError, match=key):
        protocols.validate({"protocol": "difference", "d": 4, key: value})
