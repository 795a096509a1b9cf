"""linmeta.runs from Python: the record of one run (what `linmeta run` prints and writes), its
divergence flags and errors, and a sweep into a folder with a truth given as arrays.

Same tiny shape as tests/test_cli.py (d=4, k=1, T=3, 20 steps), so the programs are shared.
"""
import json

import jax
import numpy as np
import pytest

import linmeta
from linmeta.engine import results, runs

CFG = {"d": 4, "k": 1, "T": 3, "N": 50, "n": 20, "outer_steps": 20, "inner_steps": 2,
       "sr_steps": 20, "ft_steps": 20, "record_every": 5}


def test_run_returns_the_engine_numbers_with_flags_and_round_trips(tmp_path):
    record = runs.run(dict(CFG, seed=3), out=tmp_path / "r")
    cfg = linmeta.sweep.validate_config(dict(CFG, seed=3))
    api = linmeta.sweep.run_batch([cfg])[0]
    assert record["config"] == cfg and record["id"] == linmeta.sweep.config_id(cfg)
    for key in linmeta.sweep.RESULT_KEYS:
        where = "theory" if key.startswith("theory_") else "results"
        assert record[where][key] == api[key], key
    assert record["divergence"] == {"stages": [], "message": None}
    for key, value in api["trajectories"].items():
        np.testing.assert_array_equal(record["trajectories"][key], value)
    back = runs.load(tmp_path / "r")
    stored = json.loads((tmp_path / "r" / results.RUN_RECORD).read_text())
    assert "trajectories" not in stored and stored["files"] == record["files"]
    assert back["results"] == results.to_jsonable(record["results"])
    for key, value in record["trajectories"].items():
        np.testing.assert_array_equal(back["trajectories"][key], value)
    again = runs.run(dict(CFG, seed=3), out=tmp_path / "r")  # the same run: reused
    assert again["reused"] and again["created"] == stored["created"]


def test_a_blow_up_is_flagged_in_the_record_and_raised_by_default():
    """sr_lr = 50 multiplies the SR loss by ~1e17 in 20 steps: finite, so the engine's NaN/inf
    flag stays False, but the record's flag says diverged; by default run() raises."""
    cfg = dict(CFG, sr_lr=50.0)
    record = runs.run(cfg, check_divergence=False)
    assert record["results"]["sr_diverged"] and np.isfinite(record["results"]["sr_objective"])
    assert record["divergence"]["stages"] == ["sr"]
    assert "standard retraining diverged" in record["divergence"]["message"]
    with pytest.raises(linmeta.DivergenceError, match=r"standard retraining .* sr_lr=50") as e:
        runs.run(cfg)
    assert e.value.step_sizes == {"sr_lr": 50.0} and e.value.iteration > 0


def _result(**curves):
    calm = np.array([5.0, 2.0, 1.0])
    traj = {"ml_objective": calm, "sr_objective": calm, "ml_ft_test_loss": calm,
            "sr_ft_test_loss": calm, "outer_steps": np.array([0, 5, 10]),
            "sr_steps": np.array([0, 5, 10]), "ft_steps": np.array([0, 5, 10])}
    traj.update(curves)
    return {"trajectories": traj}


def test_diverged_stages_catch_nan_and_blow_up():
    cfg = {"ml_solver": "alternating"}
    assert runs.diverged_stages(cfg, _result()) == []
    grown = _result(sr_objective=5.0 * 49.0 ** np.arange(3), sr_ft_test_loss=np.array(
        [1.0, 1e30, 1e60]))
    assert runs.diverged_stages(cfg, grown) == ["sr"]  # the fine-tuning blow-up on it follows
    assert runs.divergence_flags(cfg, grown) == {"ml_diverged": False, "sr_diverged": True,
                                                 "ft_diverged": True}
    assert runs.diverged_stages(cfg, dict(_result(), ml_diverged=True)) == ["ml"]
    assert runs.diverged_stages(cfg, dict(_result(), ft_diverged=True)) == ["ft"]
    newton = _result(ml_objective=np.array([3.0, 1e-9, np.nan]))  # NaN-padded after it stopped
    assert runs.diverged_stages({"ml_solver": "newton"}, newton) == []


def test_divergence_error_names_what_to_change():
    defaults = dict(linmeta.sweep.DEFAULTS)
    inf = np.array([np.inf, np.inf, np.inf])
    # non-finite before any step: the initial adapters, not a learning rate
    e = runs.divergence_error(dict(defaults, init_scale=1e200), _result(ml_objective=inf))
    assert "init_scale=1e+200" in str(e) and "lr_" not in str(e) and "starts" in str(e)
    e = runs.divergence_error(defaults, _result(sr_objective=inf))
    assert "noise_std" in str(e) and "sr_lr" not in str(e)
    # a blow-up after some steps: the step size furthest above its default, iteration named
    grown = np.array([1.0, 10.0, 1e5])
    e = runs.divergence_error(dict(defaults, lr_base=3.0), _result(ml_objective=grown))
    assert isinstance(e, linmeta.DivergenceError) and e.iteration == 10
    assert "Meta-LoRA retraining diverged at iteration 10" in str(e)
    assert "choose a smaller lr_base or lr_adapter" in str(e)
    # a large init_scale with default step sizes: init_scale is named
    e = runs.divergence_error(dict(defaults, init_scale=30.0), _result(ml_objective=grown))
    assert "init_scale=30" in str(e) and "smaller init_scale" in str(e)
    e = runs.divergence_error(dict(defaults, ft_lr=1.0), _result(ml_ft_test_loss=grown))
    assert "fine-tuning diverged" in str(e) and "ft_lr=1" in str(e)
    assert runs.divergence_error(defaults, _result()) is None


def test_sweep_to_folder_with_a_truth_given_as_arrays(tmp_path):
    truth = linmeta.sample_truth(jax.random.key(7), 4, 1, 3)
    fixed = {k: v for k, v in CFG.items() if k not in ("d", "k", "T")}
    spec = {"grid": {"noise_std": [0.01]}, "fixed": fixed, "seeds": 1, "chunk_size": 1}
    summary = runs.sweep_to_folder(spec, tmp_path / "s", truth=truth)
    assert summary == {"out": str(tmp_path / "s"), "planned": 1, "computed": 1, "reused": 0,
                       "diverged": []}
    man, rows = results.load_sweep(tmp_path / "s")
    assert man["truth"]["source"] == "arrays" and len(man["truth"]["sha256"]) == 64
    api = linmeta.sweep.run_batch([dict(CFG, noise_std=0.01, seed=0)], truth=truth)[0]
    for key in linmeta.sweep.RESULT_KEYS:
        assert rows[0][key] == api[key], key
    assert runs.sweep_to_folder(spec, tmp_path / "s", truth=truth)["reused"] == 1
    other = linmeta.sample_truth(jax.random.key(8), 4, 1, 3)
    with pytest.raises(ValueError, match="different sweep"):
        runs.sweep_to_folder(spec, tmp_path / "s", truth=other)


# ----------------------------------------------------------------------------- registered protocols
def _toy_protocol():
    """examples/register_protocol.py's toy protocol (gradient descent on 1/2 ||A - A*||^2)."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples",
                        "register_protocol.py")
    spec = importlib.util.spec_from_file_location("register_protocol_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # registers "toy" (replace=True)
    return module


def test_run_and_sweep_reach_a_registered_protocol_by_name(tmp_path, capsys):
    from linmeta.front import cli

    _toy_protocol()
    cfg = {"protocol": "toy", "steps": 30, "lr": 0.2}
    record = runs.run(cfg, out=tmp_path / "run")
    engine = linmeta.sweep.run_batch([linmeta.sweep.validate_config(cfg)])[0]
    assert record["results"]["final_loss"] == engine["final_loss"]
    assert record["results"]["fit_diverged"] is False and record["theory"] == {}
    assert record["divergence"] == {"stages": [], "message": None}
    # the command line: --protocol and --set, a family-style summary
    assert cli.main(["run", "--protocol", "toy", "--set", "steps=30", "--set", "lr=0.2",
                     "--no-write", "--no-compile-cache"]) == 0
    out = capsys.readouterr().out
    assert "protocol toy" in out and f"{engine['final_loss']:.4g}" in out
    # a diverging step size: flagged, raised by run, exit 2 on the command line naming lr
    with pytest.raises(linmeta.DivergenceError, match="lr"):
        runs.run({"protocol": "toy", "steps": 30, "lr": 2.5})
    bad = runs.run({"protocol": "toy", "steps": 30, "lr": 2.5}, check_divergence=False)
    assert bad["results"]["fit_diverged"] is True and bad["divergence"]["stages"] == ["fit"]
    assert cli.main(["run", "--protocol", "toy", "--set", "lr=2.5", "--no-write"]) == 2
    assert "lr" in capsys.readouterr().err
    # keys of another protocol are refused by name; a truth file is for the paper's protocols
    with pytest.raises(ValueError, match="'outer_steps'"):
        runs.plan({"protocol": "toy", "outer_steps": 3})
    with pytest.raises(ValueError, match="truth"):
        runs.plan({"protocol": "toy"}, truth=linmeta.sample_truth(jax.random.key(0), 4, 1, 3))
    # a sweep spec that names the protocol: its keys are checked against the protocol's
    spec = tmp_path / "toy.toml"
    spec.write_text('seeds = 2\n[fixed]\nprotocol = "toy"\nsteps = 30\n[grid]\nlr = [0.2, 2.5]\n')
    assert cli.main(["sweep", str(spec), "--out", str(tmp_path / "sw"), "--no-progress"]) == 3
    manifest, rows = results.load_sweep(tmp_path / "sw")
    assert len(rows) == 4
    assert sorted(r["fit_diverged"] for r in rows) == [False, False, True, True]
    assert "2 of 4 configurations diverged (toy gradient descent 2" in capsys.readouterr().err
