"""The representation family's protocol in the sweep engine (linmeta.representation.registry):
reached by name, the same numbers as run_protocol called directly, one compile per shape group,
divergence flagged per stage, one-line errors, and the command line."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from linmeta.engine import protocols, results, sweep
from linmeta.front.cli import main
from linmeta.families.representation import protocol, registry
from helpers import count_compiles

# the default loop lengths and target sizes (a sweep spec file can set only the keys the
# protocols share, so the command-line test below runs this shape too: its program is reused)
SMALL = {"protocol": "representation", "d": 6, "k": 2, "T": 8}
# two shape groups (population and n = 30 samples per task); beta = 80 makes ANIL blow up
# the reference program, compiled with XLA's cheap backend optimisation (a check, not a hot path)
CHEAP = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
SPEC = {"fixed": SMALL, "grid": {"n": ["inf", 30], "beta": [0.2, 80.0], "lam": [0.1, 1.0]},
        "seeds": 2}


@pytest.fixture(scope="module")
def swept():
    cfgs = sweep.expand_grid(SPEC)
    registry.truth_for(cfgs[0])  # the eager truth draw's kernels, compiled outside the count
    programs = len(sweep._COMPILED)
    with count_compiles() as n:
        res = sweep.run_sweep(cfgs)
    return cfgs, res, (len(sweep._COMPILED) - programs, n())


def test_registered_by_name_with_defaults_and_columns():
    assert "representation" in protocols.names()
    proto = protocols.get("representation")
    assert proto is registry.PROTOCOL and proto.run is not protocol.run_protocol
    cfg = sweep.validate_config({"protocol": "representation"})
    assert cfg == {"protocol": "representation", **registry.DEFAULTS}
    assert sweep.validate_config({"protocol": "representation", "n": 0})["n"] == "inf"
    assert set(registry.RESULT_KEYS) >= {f"{s.name}_diverged" for s in proto.stages}
    assert [s.name for s in proto.stages] == ["frozen", "fedrep", "anil", "adapt"]


def test_sweep_equals_run_protocol_and_compiles_once_per_shape_group(swept):
    cfgs, res, (programs, compiles) = swept
    assert len(sweep.group_by_shape(cfgs)) == 2
    assert programs == 2, "one compiled program per shape group (n = inf and n = 30)"
    # the two programs plus, at most, the placement of the truth's leaves (one per leaf shape)
    leaf_shapes = {np.shape(x) for x in jax.tree.leaves(registry.truth_for(cfgs[0]))}
    assert compiles <= 2 + len(leaf_shapes)
    other = [dict(c, lam=2 * c["lam"], noise_std=0.3, seed=c["seed"] + 5) for c in cfgs]
    with count_compiles() as n:
        again = sweep.run_sweep(other)
    assert n() == 0, "traced hyperparameters and seeds: no new compile"
    assert again[0]["adapt_objective"] != res[0]["adapt_objective"]
    for group in sweep.group_by_shape(cfgs)[1:]:  # n = 30 (the population: the same program)
        shape = registry.shape_of(group[0])
        truth = registry.truth_for(group[0])
        hyper = jax.tree.map(lambda *x: jnp.stack(x), *(registry.hyper_of(c) for c in group))
        keys = jax.vmap(protocol.run_keys)(jnp.asarray([c["seed"] for c in group]))
        own = jax.jit(jax.vmap(protocol.run_protocol, in_axes=(None, 0, 0, None)),
                      static_argnums=3, compiler_options=CHEAP)(truth, keys, hyper, shape)
        for i, cfg in enumerate(group):
            r = res[cfgs.index(cfg)]
            for field, value in zip(own._fields, own):
                got = r["trajectories"][field] if field.endswith("_traj") else r[field]
                want = np.asarray(value[i])
                if field.endswith("_diverged"):
                    assert bool(got) >= bool(want), field  # the engine's flag includes the run's
                else:
                    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15,
                                               err_msg=field)
            steps = r["trajectories"]["train_steps"]
            assert steps[-1] == max(shape.frozen_steps, shape.fedrep_steps, shape.adapt_steps)
            assert len(steps) == len(r["trajectories"]["frozen_objective_traj"])


def test_a_diverging_step_sets_its_stage_flag_and_is_named(swept):
    cfgs, res, _ = swept
    for cfg, r in zip(cfgs, res):
        blown = cfg["beta"] == 80.0
        assert r["anil_diverged"] is blown
        assert not (r["frozen_diverged"] or r["fedrep_diverged"] or r["adapt_diverged"])
        assert protocols.diverged_stages(cfg, r) == (["anil"] if blown else [])
        msg = protocols.divergence_message(cfg, r)
        if blown:
            assert "ANIL training diverged" in msg and "beta=80" in msg
            assert np.isnan(r["anil_sin_max"])  # a diverged B never reads as a small distance
        else:
            assert msg is None and r["anil_sin_max"] < 0.5
            assert np.isfinite(r["adapt_finetune_risk"]) and r["scratch_risk"] > 0


@pytest.mark.parametrize("bad, words", [
    ({"k": 7}, "k must be an integer in [1, d=6]"),
    ({"m": 0}, "m must be an integer in [1,"),
    ({"n": -3}, "n (source samples per task) must be an integer >= 1"),
    ({"n": 2.5}, "n (source samples per task)"),
    ({"diversity": 0.0}, "diversity must be a finite number in (0, inf)"),
    ({"noise_std": float("nan")}, "noise_std must be a finite number"),
    ({"lam": -1.0}, "lam must be a finite number in (0, inf)"),
    ({"heads": "uniform"}, "heads must be one of 'balanced', 'gaussian'"),
    ({"T": 7}, "T must be even and >= 2k = 4 for heads='balanced'"),
    ({"record_every": 0}, "record_every must be an integer in [1,"),
    ({"N": 10}, "unknown configuration key 'N' in fixed; allowed keys: protocol, d, k, T, n, m"),
])
def test_bad_values_are_one_line_errors_naming_the_key(bad, words):
    with pytest.raises(ValueError) as e:
        sweep.expand_grid({"fixed": {**SMALL, **bad}})
    assert words in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- command line
def _spec(path, text):
    path.write_text(text)
    return path


def test_cli_sweep_runs_the_representation_protocol(tmp_path, capsys, swept):
    spec = _spec(tmp_path / "spec.toml", 'seeds = 4\n[fixed]\nprotocol = "representation"\n'
                 'd = 6\nk = 2\nT = 8\n[grid]\nnoise_std = [0.1, 0.5]\n')
    rc = main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--no-progress", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    man, rows = results.load_sweep(tmp_path / "out")
    assert man["status"] == "finished" and len(rows) == 8
    cfgs = sweep.expand_grid({"fixed": SMALL, "grid": {"noise_std": [0.1, 0.5]}, "seeds": 4})
    assert [r["id"] for r in rows] == [sweep.config_id(c) for c in cfgs]
    api = sweep.run_sweep(cfgs)  # the Python API (the same program: no compile)
    for row, cfg in zip(rows, cfgs):
        assert row["protocol"] == "representation" and row["noise_std"] == cfg["noise_std"]
        for key in ("frozen_sin_max", "adapt_finetune_risk", "scratch_risk", "anil_diverged"):
            assert key in row
        assert row["frozen_sin_max"] < 1e-6 and row["anil_diverged"] is False
    for row, res in zip(rows, api):
        for key in registry.RESULT_KEYS:
            assert row[key] == pytest.approx(res[key], rel=1e-12, abs=1e-15, nan_ok=True), key


def test_cli_sweep_accepts_the_protocols_own_keys(tmp_path, capsys):
    spec = _spec(tmp_path / "spec.json", json.dumps(
        {"seeds": 1, "fixed": {**SMALL}, "grid": {"lam": [0.1, 1.0]}}))
    rc = main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--no-progress", "--quiet"])
    assert rc == 0, capsys.readouterr().err


def test_sweep_folder_reports_a_diverged_representation_run(tmp_path, swept):
    from linmeta.engine import runs

    spec = {"seeds": 2, "fixed": dict(SMALL, n="inf"),  # the fixture's first program: no compile
            "grid": {"beta": [0.2, 80.0], "lam": [0.1, 1.0]}}
    summary = runs.sweep_to_folder(spec, tmp_path / "out")
    _, rows = results.load_sweep(tmp_path / "out")
    assert [r["anil_diverged"] for r in rows] == [False] * 4 + [True] * 4
    assert [d["stages"] for d in summary["diverged"]] == [["anil"]] * 4
    assert "ml_diverged" not in rows[0]
