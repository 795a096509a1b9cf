"""The command line: help, run, run --truth against the Python API, sweep with resume, plot, theory,
and one-line errors (exit code 2) for every kind of bad input.

All runs share one tiny shape (d=4, k=1, T=3) and a few steps, so the suite compiles little.
"""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import linmeta

from linmeta.front import cli
from linmeta.engine import results
from linmeta.front.cli import main

SHAPE = {"d": 4, "k": 1, "T": 3, "N": 50, "n": 20}
STEPS = {"outer_steps": 20, "inner_steps": 2, "sr_steps": 20, "ft_steps": 20, "record_every": 5}
TINY = [x for key, v in {**SHAPE, **STEPS}.items() for x in (cli._flag(key), str(v))]


def call(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(capsys, *argv):
    """Run a bad command: exit code 2, exactly one line on stderr, no traceback; return it."""
    rc, out, err = call(capsys, *argv)
    assert rc == 2, (rc, out, err)
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def make_truth(path, *, d=4, k=1, T=3, m=2, seed=7, **override):
    truth = linmeta.sample_truth(jax.random.key(seed), d, k, T, n_unseen=m)
    arrays = {"A_star": np.asarray(truth.A_star), "U_star": np.asarray(truth.U_star),
              "U_new": np.asarray(truth.U_new)}
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


# ----------------------------------------------------------------------------- help
@pytest.mark.parametrize("command", ["run", "sweep", "verify", "plot", "theory"])
def test_help_of_each_subcommand_is_complete_with_an_example(capsys, command):
    rc, out, err = call(capsys, command, "--help")
    assert rc == 0 and err == ""
    assert f"usage: linmeta {command}" in out
    assert "example" in out and f"linmeta {command}" in out.split("example", 1)[1]
    if command in ("run", "theory"):
        for flag in ("--d", "--k", "--T", "--n", "--noise-std", "--truth", "--json", "--float32"):
            assert flag in out
    if command == "run":
        for key in linmeta.sweep.DEFAULTS:
            assert cli._flag(key) in out  # every configuration key has a flag


def test_top_level_help_and_version(capsys):
    rc, out, _ = call(capsys, "--help")
    assert rc == 0
    for command in ("run", "sweep", "verify", "plot", "theory"):
        assert command in out
    rc, out, _ = call(capsys, "--version")
    assert rc == 0 and linmeta.__version__ in out


# ----------------------------------------------------------------------------- theory
def _numpy_theory(A, U, U_new, rank):
    """Independent NumPy closed forms: Rbar, residual spectra, Eckart-Young and PSD tails."""
    Rbar = np.mean(U @ U.transpose(0, 2, 1), axis=0)
    out = []
    for Un in U_new:
        R = Un @ Un.T - Rbar
        lam = np.sort(np.linalg.eigvalsh(R))[::-1]
        sv = np.linalg.svd(R, compute_uv=False)
        asym = float(np.sum(sv[rank:] ** 2))
        keep = np.zeros_like(lam, bool)
        keep[:rank] = lam[:rank] > 0
        psd = float(np.sum(lam[~keep] ** 2))
        out.append((lam, asym, psd))
    return np.linalg.norm(Rbar), out


def test_theory_json_equals_independent_closed_forms(tmp_path, capsys):
    path = make_truth(tmp_path / "truth.npz", d=4, k=1, T=3, m=2)
    truth = linmeta.load_truth(path)
    rank, n, sigma = 2, 50, 0.1
    rc, out, _ = call(capsys, "theory", "--truth", path, "--rank", rank, "--n", n,
                      "--noise-std", sigma, "--json")
    assert rc == 0
    rep = json.loads(out)
    A, U, Un = (np.asarray(x) for x in truth)
    sr_err, per_task = _numpy_theory(A, U, Un, rank)
    np.testing.assert_allclose(rep["sr_base_error"], sr_err, rtol=1e-12)
    np.testing.assert_allclose(rep["sr_base_rel_error"], sr_err / np.linalg.norm(A), rtol=1e-12)
    for task, (lam, asym, psd) in zip(rep["unseen"], per_task):
        np.testing.assert_allclose(task["eigenvalues"], lam, atol=1e-12)
        np.testing.assert_allclose(task["bias_asymmetric"][rank - 1], asym, rtol=1e-10,
                                   atol=1e-14)
        np.testing.assert_allclose(task["bias_psd"][rank - 1], psd, rtol=1e-10, atol=1e-14)
        # C2: generic residual rank (T+1)k with k positive and Tk negative eigenvalues
        assert task["rank"] == rep["generic_residual_rank"] == 4
        assert (task["n_positive"], task["n_negative"]) == (1, 3)
    np.testing.assert_allclose(rep["sr_bias"], np.mean([t[1] for t in per_task]), rtol=1e-10)
    # and the same numbers as linmeta.theory itself
    resid = linmeta.theory.sr_residual(truth.U_star, truth.U_new)
    np.testing.assert_allclose(rep["sr_bias_psd"],
                               np.mean(linmeta.theory.lora_bias(resid, rank, psd=True)),
                               rtol=1e-12)
    assert rep["dof"] == rank * (2 * 4 - rank)
    np.testing.assert_allclose(rep["predicted_ft_error"], sigma ** 2 * rep["dof"] / n, rtol=1e-12)
    np.testing.assert_allclose(rep["predicted_full_ft_error"], sigma ** 2 * 16 / n, rtol=1e-12)
    assert rep["truth"]["sha256"] == results.file_sha256(path)


def test_theory_table_and_sampled_truth_match_run_truth(capsys):
    rc, out, _ = call(capsys, "theory", "--d", 4, "--k", 1, "--T", 2, "--truth-seed", 3)
    assert rc == 0
    assert "C1" in out and "C2" in out and "C6" in out and "rank-3 adapter" in out  # 3k at T=2
    rc, out, _ = call(capsys, "theory", "--d", 4, "--k", 1, "--T", 2, "--seed", 3, "--json")
    rep = json.loads(out)
    truth = linmeta.sweep.truth_for({"d": 4, "k": 1, "T": 2, "truth_seed": 3})
    np.testing.assert_allclose(rep["sr_base_error"],
                               np.linalg.norm(np.asarray(linmeta.theory.sr_bias_matrix(
                                   truth.U_star))), rtol=1e-12)


def test_theory_float32_is_the_same_problem(capsys):
    """A seed names one problem in every dtype: the float32 report is the float64 one rounded."""
    rc, out, _ = call(capsys, "theory", "--d", 4, "--k", 1, "--T", 3, "--json", "--float32")
    assert rc == 0
    rep32 = json.loads(out)
    assert rep32["dtype"] == "float32"
    assert jax.config.jax_enable_x64  # main() restores the caller's precision
    rep64 = json.loads(call(capsys, "theory", "--d", 4, "--k", 1, "--T", 3, "--json")[1])
    eps32 = float(np.finfo(np.float32).eps)
    for key in ("sr_base_error", "sr_base_rel_error", "sr_bias"):
        np.testing.assert_allclose(rep32[key], rep64[key], rtol=64 * eps32, err_msg=key)
    np.testing.assert_allclose(rep32["unseen"][0]["eigenvalues"],
                               rep64["unseen"][0]["eigenvalues"],
                               atol=64 * eps32 * max(map(abs, rep64["unseen"][0]["eigenvalues"])))


# ----------------------------------------------------------------------------- run
def test_run_prints_summary_and_writes_a_record_with_provenance(tmp_path, capsys):
    out_dir = tmp_path / "run"
    rc, out, err = call(capsys, "run", *TINY, "--seed", 2, "--out", out_dir)
    assert rc == 0, err
    assert "Meta-LoRA" in out and "SR" in out and "theory" in out
    rec = json.loads((out_dir / results.RUN_RECORD).read_text())
    assert rec["config"] == linmeta.sweep.validate_config({**SHAPE, **STEPS, "seed": 2})
    assert rec["seed"] == 2 and rec["id"] == linmeta.sweep.config_id(rec["config"])
    env = rec["environment"]
    assert env["linmeta"] == linmeta.__version__ and env["jax"] == jax.__version__
    assert env["numpy"] == np.__version__ and env["dtype"] == "float64" and env["device"]
    assert rec["timings"]["total_seconds"] >= rec["timings"]["run_batch_seconds"] > 0
    for key in ("ml_base_error", "sr_base_error", "ml_ft_test_loss", "sr_ft_test_loss"):
        assert np.isfinite(rec["results"][key])
    assert "theory_sr_bias" in rec["theory"]
    traj = results.load_trajectories(out_dir / results.TRAJECTORIES)
    assert traj and all(np.size(v) > 0 for v in traj.values())

    # --json prints the same record; a record passed back as --config repeats the run
    rc, out, _ = call(capsys, "run", "--config", out_dir / results.RUN_RECORD, "--json",
                      "--no-write")
    again = json.loads(out)
    assert rc == 0 and again["id"] == rec["id"] and again["results"] == rec["results"]


def test_run_ids_name_the_dtype_and_the_truth_file(tmp_path, capsys, monkeypatch):
    """Different inputs, different ids; a folder holding another run is refused, the same run is
    reused without recomputing, --overwrite recomputes."""
    from linmeta.engine import runs

    a = make_truth(tmp_path / "a.npz", seed=1)
    b = make_truth(tmp_path / "b.npz", seed=2)
    cfg = {**SHAPE, **STEPS}
    ids = {"float64": runs.plan(cfg).id, "truth a": runs.plan(cfg, truth=str(a)).id,
           "truth b": runs.plan(cfg, truth=str(b)).id}
    with jax.enable_x64(False):
        ids["float32"] = runs.plan(cfg).id
    assert len(set(ids.values())) == 4, ids
    assert ids["float64"] == linmeta.sweep.config_id(cfg)  # the sweep's id of the same config
    assert ids["float32"].endswith("-float32")
    assert ids["truth a"].endswith("-truth" + results.file_sha256(a)[:12])

    out_dir = tmp_path / "run"
    assert call(capsys, "run", *TINY, "--out", out_dir)[0] == 0
    before = (out_dir / results.RUN_RECORD).read_bytes()
    line = one_line_error(capsys, "run", *TINY, "--out", out_dir, "--float32")
    assert "another run" in line and ids["float32"] in line and "--overwrite" in line
    truth_dir = tmp_path / "truth_run"
    assert call(capsys, "run", "--truth", a, *TINY[6:], "--out", truth_dir)[0] == 0
    assert "another run" in one_line_error(capsys, "run", "--truth", b, *TINY[6:], "--out",
                                           truth_dir)
    assert (out_dir / results.RUN_RECORD).read_bytes() == before  # nothing overwritten

    calls = []
    real = linmeta.sweep.run_batch
    monkeypatch.setattr(linmeta.sweep, "run_batch",
                        lambda configs, **kw: calls.append(1) or real(configs, **kw))
    rc, out, _ = call(capsys, "run", *TINY, "--out", out_dir)
    assert rc == 0 and calls == [] and "not recomputed" in out  # the same run: reused
    rc, out, _ = call(capsys, "run", *TINY, "--out", out_dir, "--json")
    assert rc == 0 and json.loads(out) == json.loads(before)
    assert call(capsys, "run", *TINY, "--out", out_dir, "--overwrite")[0] == 0 and calls == [1]


def test_run_config_files_toml_and_json_with_flags_overriding(tmp_path, capsys):
    toml = tmp_path / "run.toml"
    toml.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in {**SHAPE, **STEPS}.items())
                    + '\nseed = 5\nml_solver = "alternating"\n')
    rc, out, _ = call(capsys, "run", "--config", toml, "--seed", 1, "--json", "--no-write")
    assert rc == 0
    rec = json.loads(out)
    assert rec["config"]["seed"] == 1 and rec["config"]["d"] == 4  # flag beats file
    js = tmp_path / "run.json"
    js.write_text(json.dumps({**SHAPE, **STEPS, "seed": 1}))
    rc, out, _ = call(capsys, "run", "--config", js, "--json", "--no-write")
    assert rc == 0 and json.loads(out)["id"] == rec["id"]


def _core_api_run(truth, cfg):
    """The same run composed from the core API and the documented random streams
    (:mod:`linmeta.paper`): raw samples -> statistics -> meta_lora / standard_retraining ->
    finetune from the shared adapter initialisation."""
    import types

    from linmeta.families.paper import protocol as paper

    d, k, T, m, r = truth.d, truth.k, truth.T, truth.n_unseen, cfg["ft_rank"]
    keys = paper.run_keys(cfg["seed"])
    X, Y = paper.raw_samples(keys.retrain, truth.M_star, cfg["N"], cfg["noise_std"])
    src = linmeta.stats_from_arrays(X, Y, truth.M_star)
    X, Y = paper.raw_samples(keys.finetune, truth.M_new, cfg["n"], cfg["noise_std"])
    ft_src = linmeta.stats_from_arrays(X, Y, truth.M_new)
    sizes = types.SimpleNamespace(d=d, k=k, T=T, m=m, ft_rank=r)
    U0, Uf, Vf = paper.initial_factors(keys, sizes, cfg["init_scale"], X.dtype)
    ml = linmeta.meta_lora(src, k, U0=U0, method="alternating", outer_steps=cfg["outer_steps"],
                           inner_steps=cfg["inner_steps"], lr_adapter=cfg["lr_adapter"],
                           lr_base=cfg["lr_base"])
    sr = linmeta.standard_retraining(src, method="gd", steps=cfg["sr_steps"], lr=cfg["sr_lr"])
    out = {"ml_base_error": linmeta.metrics.base_error(ml.base, truth.A_star),
           "sr_base_error": linmeta.metrics.base_error(sr.base, truth.A_star),
           "ml_objective": ml.objective}
    for name, base in (("ml", ml.base), ("sr", sr.base)):
        ft = linmeta.finetune(base, ft_src, r, U0=Uf, V0=Vf, steps=cfg["ft_steps"],
                              lr=cfg["ft_lr"])
        out[f"{name}_ft_test_loss"] = np.mean(ft.test_loss)
        out[f"{name}_ft_excess_risk"] = np.mean(np.sum((np.asarray(ft.task_matrix)
                                                        - np.asarray(truth.M_new)) ** 2, (1, 2)))
    return {key: float(v) for key, v in out.items()}


def test_run_truth_file_gives_the_python_api_numbers(tmp_path, capsys):
    path = make_truth(tmp_path / "truth.npz", seed=11, m=2)
    rc, out, err = call(capsys, "run", "--truth", path, *TINY[6:], "--N", 50, "--n", 20,
                        "--seed", 4, "--json", "--out", tmp_path / "r")
    assert rc == 0, err
    rec = json.loads(out)
    assert rec["truth"]["source"] == "file" and rec["truth"]["sha256"] == results.file_sha256(path)
    cfg = linmeta.sweep.validate_config({**SHAPE, **STEPS, "seed": 4})
    assert rec["config"] == cfg
    api = linmeta.sweep.run_batch([cfg], truth=linmeta.load_truth(path))[0]
    for key, value in rec["results"].items():
        assert value == results.to_jsonable(api[key]), key
    for key in ("theory_sr_bias", "theory_ft_error"):
        assert rec["theory"][key] == results.to_jsonable(api[key]), key
    U = np.load(path)["U_star"]
    np.testing.assert_allclose(rec["theory"]["theory_sr_base_error"],
                               np.linalg.norm(np.mean(U @ U.transpose(0, 2, 1), 0)), rtol=1e-12)
    # the record repeats the run; a changed truth file is refused unless --truth is given
    rc, out, _ = call(capsys, "run", "--config", tmp_path / "r" / results.RUN_RECORD, "--json",
                      "--no-write")
    assert rc == 0 and json.loads(out)["results"] == rec["results"]
    traj = results.load_trajectories(tmp_path / "r" / results.TRAJECTORIES)
    for key, value in api["trajectories"].items():
        np.testing.assert_array_equal(traj[key], np.asarray(value))
    # ... and the numbers of the core API composed by hand on the same arrays
    for key, value in _core_api_run(linmeta.load_truth(path), cfg).items():
        np.testing.assert_allclose(rec["results"][key], value, rtol=1e-9, err_msg=key)
    shutil.copy(make_truth(tmp_path / "other.npz", seed=12, m=2), path)  # the file changes
    record = tmp_path / "r" / results.RUN_RECORD
    assert "has changed" in one_line_error(capsys, "run", "--config", record, "--no-write")
    assert call(capsys, "run", "--config", record, "--truth", path, "--no-write")[0] == 0


# ----------------------------------------------------------------------------- sweep + plot
SPEC = {"name": "tiny noise sweep", "seeds": 2, "chunk_size": 2,
        "fixed": {**SHAPE, **STEPS}, "grid": {"noise_std": [0.01, 0.1]}}


def _write_spec(folder, spec=SPEC, suffix=".toml"):
    path = folder / f"spec{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(spec))
        return path
    lines = [f'name = "{spec["name"]}"', f"seeds = {spec['seeds']}",
             f"chunk_size = {spec['chunk_size']}", "[fixed]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in spec["fixed"].items()]
    lines += ["[grid]"] + [f"{k} = {json.dumps(v)}" for k, v in spec["grid"].items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    spec = _write_spec(folder)
    assert main(["sweep", str(spec), "--out", str(folder / "full"), "--no-progress",
                 "--quiet"]) == 0
    return folder / "full"


def test_sweep_writes_table_trajectories_manifest(finished_sweep):
    man, rows = results.load_sweep(finished_sweep)
    configs = linmeta.sweep.expand_grid({k: SPEC[k] for k in ("grid", "fixed", "seeds")})
    ids = [linmeta.sweep.config_id(c) for c in configs]
    assert [r["id"] for r in rows] == ids  # one row per configuration x seed, grid order
    assert sorted({(r["noise_std"], r["seed"]) for r in rows}) == [(0.01, 0), (0.01, 1),
                                                                   (0.1, 0), (0.1, 1)]
    for col in ("ml_base_error", "sr_base_error", "ml_ft_test_loss", "sr_ft_test_loss",
                "ml_diverged"):
        assert col in rows[0]
    assert man["status"] == "finished" and man["finished_ids"] == ids
    assert man["spec"]["grid"] == SPEC["grid"] and man["chunk_size"] == 2
    assert man["environment"]["dtype"] == "float64" and man["started"] <= man["finished"]
    assert len(man["chunks"]) == 2 and all(c["seconds"] > 0 for c in man["chunks"])
    for i in ids:
        assert results.load_trajectories(finished_sweep / results.TRAJ_DIR / f"{i}.npz")


def test_interrupted_sweep_resumes_to_the_same_table(tmp_path, capsys, monkeypatch,
                                                     finished_sweep):
    spec = _write_spec(tmp_path, suffix=".json")
    out_dir = tmp_path / "resumed"

    def kill_after_first_chunk(store):
        raise RuntimeError("simulated kill")

    monkeypatch.setattr(cli, "_SWEEP_HOOK", kill_after_first_chunk)
    with pytest.raises(RuntimeError, match="simulated kill"):
        main(["sweep", str(spec), "--out", str(out_dir), "--no-progress"])
    man, rows = results.load_sweep(out_dir)
    assert man["status"] == "interrupted" and len(rows) == 2 == len(man["finished_ids"])
    monkeypatch.setattr(cli, "_SWEEP_HOOK", None)

    calls = []
    real = linmeta.sweep.run_batch
    monkeypatch.setattr(linmeta.sweep, "run_batch",
                        lambda configs, **kw: calls.append(len(configs)) or real(configs, **kw))
    rc, out, err = call(capsys, "sweep", spec, "--out", out_dir, "--no-progress")
    assert rc == 0, err
    assert calls == [2]  # only the unfinished chunk ran
    assert "2 from an earlier run" in out
    assert (out_dir / results.RESULTS_CSV).read_bytes() == \
        (finished_sweep / results.RESULTS_CSV).read_bytes()
    for i in results.load_sweep(finished_sweep)[0]["finished_ids"]:
        a = results.load_trajectories(out_dir / results.TRAJ_DIR / f"{i}.npz")
        b = results.load_trajectories(finished_sweep / results.TRAJ_DIR / f"{i}.npz")
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    man = results.load_sweep(out_dir)[0]
    assert man["status"] == "finished" and man["resumed"]
    # a third start finds nothing to do
    calls.clear()
    assert call(capsys, "sweep", spec, "--out", out_dir, "--no-progress")[0] == 0 and calls == []


def test_sweep_with_diverged_configurations_exits_3_with_a_summary(tmp_path, capsys):
    """A learning rate past the stability limit blows the loss up by 1e17 in 20 steps, still
    finite: flagged in the table (a blow-up counts), named on stderr, exit code 3; a resumed
    sweep with nothing left to do says the same."""
    spec = _write_spec(tmp_path, dict(SPEC, seeds=1, grid={"sr_lr": [0.03, 50.0]}), ".json")
    for _ in range(2):
        rc, out, err = call(capsys, "sweep", spec, "--out", tmp_path / "s", "--no-progress")
        assert rc == 3, err
        assert "1 of 2 configurations diverged" in err and "standard retraining" in err
        assert "sweep finished" in out
    man, rows = results.load_sweep(tmp_path / "s")
    assert man["status"] == "finished"
    assert [r["sr_diverged"] for r in rows] == [False, True]
    assert all(np.isfinite(r["sr_objective"]) for r in rows)  # finite, yet diverged
    rc, out, _ = call(capsys, "sweep", "--help")
    assert "3 when the sweep finished but some configurations" in " ".join(out.split())


def test_sweep_interrupted_by_the_user_exits_130_keeping_the_chunk(tmp_path, capsys,
                                                                   monkeypatch):
    def ctrl_c(store):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_SWEEP_HOOK", ctrl_c)
    spec = _write_spec(tmp_path, suffix=".json")
    rc, _, err = call(capsys, "sweep", spec, "--out", tmp_path / "s", "--no-progress")
    assert rc == 130 and "2 of 4 configurations are saved" in err and "resume" in err
    assert results.load_sweep(tmp_path / "s")[0]["status"] == "interrupted"


def test_sweep_progress_bar_on_stderr(tmp_path, capsys):
    spec = dict(SPEC, seeds=1, grid={"noise_std": [0.01]})
    rc, out, err = call(capsys, "sweep", _write_spec(tmp_path, spec, ".json"),
                        "--out", tmp_path / "s")
    assert rc == 0 and "1/1" in err and "linmeta sweep" in err and "1/1" not in out


def test_plot_sweep_and_run_from_stored_files_only(tmp_path, capsys, monkeypatch,
                                                   finished_sweep):
    def no_compute(*a, **k):
        raise AssertionError("plot must not recompute")

    monkeypatch.setattr(linmeta.sweep, "run_batch", no_compute)
    rc, out, err = call(capsys, "plot", finished_sweep, "--out", tmp_path / "figs", "--json")
    assert rc == 0, err
    paths = json.loads(out)
    names = sorted(os.path.basename(p) for p in paths)
    assert names == ["final_vs_noise_std.pdf", "final_vs_noise_std.png",
                     "finetune_curves.pdf", "finetune_curves.png"]
    for p in paths:
        assert os.path.getsize(p) > 1000
    with open(next(p for p in paths if p.endswith(".png")), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_run_folder(tmp_path, capsys):
    monkeypatch_free_dir = tmp_path / "run"
    assert call(capsys, "run", *TINY, "--out", monkeypatch_free_dir)[0] == 0
    rc, out, _ = call(capsys, "plot", monkeypatch_free_dir, "--format", "png")
    assert rc == 0
    assert (monkeypatch_free_dir / "figures" / "finetune_curves.png").exists()


# ----------------------------------------------------------------------------- the scripts
def test_python_m_linmeta_and_console_script_smoke(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "linmeta", "theory", "--d", "2", "--k", "1",
                           "--T", "1", "--json"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["dtype"] == "float64"  # float64 by default
    script = shutil.which("linmeta") or os.path.join(os.path.dirname(sys.executable), "linmeta")
    if not os.path.exists(script):
        pytest.skip("console script not installed")
    proc = subprocess.run([script, "run", "--k", "9", "--d", "4"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "k must be an integer in [1, d=4], got 9" in proc.stderr


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("flags, names", [
    (["--d", 3, "--k", 4], "k"),     # k > d
    (["--k", 0], "k"),               # k < 1
    (["--T", 0], "T"),               # T < 1
    (["--N", -3], "N"),              # N < 1 (0 and inf mean the population)
    (["--n", -1], "n"),              # n < 1 (0 and inf mean the population)
    (["--d", 0], "d"),
    (["--ml-solver", "sgd"], "ml_solver"),  # unknown method
    (["--noise-std", "1e200"], "noise_std"),  # its square would overflow the closed forms
    (["--set", "outer_steps"], "--set"),      # not KEY=VALUE
])
def test_bad_sizes_and_methods_exit_2_with_one_line(tmp_path, capsys, flags, names):
    out_dir = tmp_path / "never"
    line = one_line_error(capsys, "run", *TINY, *flags, "--out", out_dir)
    assert names in line and ("must" in line or "one of" in line)
    assert not out_dir.exists()  # nothing half-written


def test_argument_type_errors_are_one_line(capsys):
    line = one_line_error(capsys, "run", "--d", "ten")
    assert "--d" in line
    one_line_error(capsys, "run", "--N", "lots")
    one_line_error(capsys, "frobnicate")


@pytest.mark.parametrize("case", ["wrong_shape", "non_finite", "missing_key", "no_unseen",
                                  "not_npz", "npy", "absent", "size_conflict"])
def test_bad_truth_files_exit_2_with_one_line(tmp_path, capsys, case):
    path = tmp_path / "truth.npz"
    extra = []
    if case == "wrong_shape":
        make_truth(path, U_star=np.ones((3, 5, 1)))            # d=5 against A_star (4, 4)
        expect = "U_star"
    elif case == "non_finite":
        A = np.eye(4)
        A[1, 2] = np.nan
        make_truth(path, A_star=A)
        expect = "A_star"
    elif case == "missing_key":
        make_truth(path, U_star=None)
        expect = "U_star"
    elif case == "no_unseen":
        make_truth(path, U_new=None)
        expect = "U_new"
    elif case == "not_npz":
        path.write_text("not an npz")
        expect = "not a valid truth .npz"
    elif case == "npy":
        np.save(tmp_path / "a.npy", np.eye(4))
        os.replace(tmp_path / "a.npy", path)     # a bare array under an .npz name
        expect = "A_star (d,d), U_star (T,d,k)"
    elif case == "absent":
        path = tmp_path / "nope.npz"
        expect = "does not exist"
    else:
        make_truth(path)
        extra = ["--d", 6]
        expect = "d=6"
    for command in ("run", "theory"):
        line = one_line_error(capsys, command, "--truth", path, *extra,
                              *(["--out", tmp_path / "o"] if command == "run" else []))
        assert expect in line and "allow_pickle" not in line, line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag, value, stage", [
    ("--lr-adapter", 5.0, "Meta-LoRA"),
    ("--sr-lr", 50.0, "standard retraining"),
    ("--ft-lr", 50.0, "fine-tuning"),
])
def test_diverging_learning_rate_exit_2_naming_it(tmp_path, capsys, flag, value, stage):
    out_dir = tmp_path / "run"
    line = one_line_error(capsys, "run", *TINY, flag, value, "--out", out_dir)
    key = flag[2:].replace("-", "_")
    assert f"{key}={value:g}" in line and "diverged" in line and stage in line
    assert "iteration" in line and f"smaller {key}" in line
    assert not out_dir.exists()  # nothing half-written


def test_huge_init_scale_is_named_not_a_learning_rate(tmp_path, capsys):
    """The initial adapters overflow before any step: init_scale is to blame, not lr_adapter."""
    line = one_line_error(capsys, "run", *TINY, "--init-scale", "1e200", "--out", tmp_path / "r")
    assert "init_scale" in line and "lr_adapter" not in line and "smaller init_scale" in line
    assert not (tmp_path / "r").exists()


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    line = one_line_error(capsys, "run", *TINY, "--out", blocker / "sub")
    assert "a_file" in line and "not writable" in line
    spec = _write_spec(tmp_path, dict(SPEC, seeds=1, grid={"noise_std": [0.01]}), ".json")
    line = one_line_error(capsys, "sweep", spec, "--out", blocker / "sweep")
    assert "not writable" in line


def test_plot_to_an_unwritable_folder_is_one_clear_line(tmp_path, capsys, finished_sweep):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    line = one_line_error(capsys, "plot", finished_sweep, "--out", blocker / "figs")
    assert "a_file" in line and "not writable" in line and "choose a writable --out" in line
    assert "Errno" not in line


@pytest.mark.parametrize("content, expect", [
    ('seeds = 2\n[grid]\nk = [0, 1]\n', "k"),                  # a bad grid value
    ('seeds = 2\n[grid]\nlearning_rate = [1]\n', "learning_rate"),  # unknown key
    ('seedz = 2\n', "seedz"),                                   # unknown top-level key
    ('seeds = 0\n', "seeds"),
    ('seeds = [\n', "TOML"),                                    # not TOML
    ('[grid]\nT = 3\n', "grid.T"),                              # not a list
])
def test_bad_sweep_specs_exit_2_and_write_nothing(tmp_path, capsys, content, expect):
    spec = tmp_path / "spec.toml"
    spec.write_text(content)
    out_dir = tmp_path / "out"
    line = one_line_error(capsys, "sweep", spec, "--out", out_dir)
    assert expect in line
    assert not out_dir.exists()


def test_bad_run_config_file(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("d = 4\nlearnign_rate = 0.1\n")
    assert "learnign_rate" in one_line_error(capsys, "run", "--config", cfg)
    assert ".toml or .json" in one_line_error(capsys, "run", "--config", tmp_path / "c.yaml")
    assert "rank" in one_line_error(capsys, "theory", "--d", 4, "--rank", 7)


def test_sweep_refuses_a_folder_holding_another_sweep(tmp_path, capsys, finished_sweep):
    other = _write_spec(tmp_path, dict(SPEC, grid={"noise_std": [0.2, 0.3]}), ".json")
    before = (finished_sweep / results.RESULTS_CSV).read_bytes()
    line = one_line_error(capsys, "sweep", other, "--out", finished_sweep)
    assert "different sweep" in line
    same = _write_spec(tmp_path, SPEC, ".json")
    line = one_line_error(capsys, "sweep", same, "--out", finished_sweep, "--float32")
    assert "float64" in line and "--float32" in line  # no mixing of precisions
    assert (finished_sweep / results.RESULTS_CSV).read_bytes() == before


def test_sweep_with_a_truth_file_in_the_spec(tmp_path, capsys):
    truth_path = make_truth(tmp_path / "truth.npz", seed=11, m=2)
    spec = dict(SPEC, seeds=[4], grid={"noise_std": [0.01]}, truth="truth.npz",
                fixed={k: v for k, v in {**SHAPE, **STEPS}.items() if k not in ("d", "k", "T")})
    rc, _, err = call(capsys, "sweep", _write_spec(tmp_path, spec, ".json"), "--out",
                      tmp_path / "s", "--no-progress")
    assert rc == 0, err
    man, rows = results.load_sweep(tmp_path / "s")
    assert man["truth"] == {"source": "file", "path": str(truth_path),
                            "sha256": results.file_sha256(truth_path)}
    cfg = linmeta.sweep.validate_config({**SHAPE, **STEPS, "seed": 4})
    api = linmeta.sweep.run_batch([cfg], truth=linmeta.load_truth(truth_path))[0]
    assert [r["id"] for r in rows] == [linmeta.sweep.config_id(cfg)]
    for key in linmeta.sweep.RESULT_KEYS:
        assert rows[0][key] == api[key], key
    # a grid over d, k or T cannot go with a truth file
    bad = dict(spec, grid={"T": [2, 3]})
    line = one_line_error(capsys, "sweep", _write_spec(tmp_path, bad, ".json"), "--out",
                          tmp_path / "bad")
    assert "T" in line and "truth" in line


def test_sigkilled_sweep_resumes_to_the_same_table(tmp_path, capsys, finished_sweep):
    """A real kill (SIGKILL, no cleanup) right after the first chunk is stored."""
    spec = _write_spec(tmp_path, suffix=".json")
    out_dir = tmp_path / "killed"
    script = ("import os, signal, sys, jax\n"
              "jax.config.update('jax_enable_x64', True)\n"
              "from linmeta import cli\n"
              "cli._SWEEP_HOOK = lambda store: os.kill(os.getpid(), signal.SIGKILL)\n"
              "sys.exit(cli.main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", script, "sweep", str(spec), "--out",
                           str(out_dir), "--no-progress"], capture_output=True, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
    assert proc.returncode == -9, proc.stderr
    man, rows = results.load_sweep(out_dir)
    assert man["status"] == "running" and len(rows) == 2  # killed: no chance to say more
    rc, out, err = call(capsys, "sweep", spec, "--out", out_dir, "--no-progress")
    assert rc == 0, err
    assert "2 from an earlier run" in out
    assert (out_dir / results.RESULTS_CSV).read_bytes() == \
        (finished_sweep / results.RESULTS_CSV).read_bytes()
    assert not [f for f in os.listdir(out_dir / results.TRAJ_DIR) if f.endswith(".tmp")]


def test_verify_delegates_to_linmeta_verify(capsys, monkeypatch):
    """The wiring only: options come from linmeta.verify.add_arguments, the work from
    run_from_args, whose return value is the exit code (a stand-in module records the call)."""
    import types

    seen = {}

    def add_arguments(parser):
        parser.add_argument("--quick", action="store_true", help="the quick setting")

    def run_from_args(args):
        import jax as _jax

        seen.update(quick=args.quick, x64=_jax.config.jax_enable_x64)
        return 1

    fake = types.SimpleNamespace(add_arguments=add_arguments, run_from_args=run_from_args)
    monkeypatch.setitem(sys.modules, "linmeta.front.verify", fake)
    rc, out, _ = call(capsys, "verify", "--help")
    assert rc == 0 and "--quick" in out
    assert call(capsys, "verify", "--quick")[0] == 1
    assert seen == {"quick": True, "x64": True}  # float64 on by default
