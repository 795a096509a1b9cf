"""The sweep engine: configuration checks, grouping, one compile per shape, sharding, and
equality with the core API run by hand on the same draws."""
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import linmeta
from linmeta.families.paper import protocol as paper
from linmeta.engine import protocols, sweep
from tests.helpers import count_compiles, rel

# One tiny shape shared by the tests (compiled programs are cached per shape and batch size).
SHAPE = dict(d=4, k=1, T=3, N=37, n=11, outer_steps=6, inner_steps=3, sr_steps=7, ft_steps=9,
             record_every=4)


# ------------------------------------------------------------------------------ configurations

def test_validate_fills_defaults_and_canonicalises():
    v = sweep.validate_config({})
    assert set(v) == set(sweep.DEFAULTS)
    assert {k: v[k] for k in v if k != "ft_rank"} == {
        k: sweep.DEFAULTS[k] for k in sweep.DEFAULTS if k != "ft_rank"}
    assert v["ft_rank"] == 1                                   # 0 -> k
    assert sweep.validate_config({"T": 2, "k": 2})["ft_rank"] == 6   # 3k at T = 2
    assert sweep.validate_config({"T": 2, "k": 4, "d": 10})["ft_rank"] == 10  # capped at d
    for pop in (0, "inf", "population", math.inf, 0.0):
        assert sweep.validate_config({"N": pop, "n": pop})["N"] == "inf"
    assert sweep.validate_config({"N": 100.0})["N"] == 100
    assert sweep.validate_config({"lr_base": 1})["lr_base"] == 1.0
    assert sweep.validate_config(v) == v                        # idempotent


@pytest.mark.parametrize("cfg, words", [
    ({"bogus": 1}, ["bogus", "allowed keys"]),
    ({"k": 11}, ["k", "[1, d=10]", "11"]),
    ({"k": 0}, ["k", "[1, d=10]"]),
    ({"T": 0}, ["T", "[1, inf]"]),
    ({"d": 0}, ["d"]),
    ({"N": -5}, ["N", ">= 1", "inf"]),
    ({"n": 2.5}, ["n", ">= 1"]),
    ({"n": "lots"}, ["n", "population"]),
    ({"lr_base": 0}, ["lr_base", "(0, inf)"]),
    ({"ft_lr": -0.1}, ["ft_lr", "(0, inf)"]),
    ({"sr_lr": math.nan}, ["sr_lr"]),
    ({"noise_std": -1.0}, ["noise_std", "[0, 1e+150]"]),
    ({"init_scale": math.inf}, ["init_scale"]),
    ({"ml_solver": "adam"}, ["ml_solver", "'alternating'", "'newton'"]),
    ({"sampler": "sobol"}, ["sampler", "'raw'", "'wishart'"]),
    ({"ft_rank": 11}, ["ft_rank", "d=10"]),
    ({"record_every": 0}, ["record_every", "[1, inf]"]),
    ({"outer_steps": -1}, ["outer_steps"]),
    ({"seed": -1}, ["seed"]),
    ({"d": True}, ["d", "integer"]),
    ({"T": 2.5}, ["T", "integer"]),
    ({"sampler": "wishart", "N": 5}, ["wishart", "N >= d=10"]),
    ({"protocol": "bogus"}, ["protocol", "'paper'", "'paper_code'", "'bogus'"]),
    ({"protocol": 3}, ["protocol", "'paper'"]),
])
def test_validate_rejects_bad_values(cfg, words):
    with pytest.raises(ValueError) as e:
        sweep.validate_config(cfg)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_config_id_is_stable_and_canonical():
    # ids of paper configurations are those of the releases before protocols were selectable
    # (resumed sweeps must still match): the default protocol is left out of the hash
    assert sweep.config_id({}) == "0a4b7c3f31bf"
    assert sweep.config_id({"T": 2, "seed": 3}) == "9977fd5cf3ae"
    assert sweep.config_id({"protocol": "paper", "T": 2, "seed": 3}) == "9977fd5cf3ae"
    assert sweep.config_id({"d": 8, "N": "inf", "ml_solver": "newton"}) == "701510d12ee6"
    assert sweep.config_id({"protocol": "paper_code"}) != sweep.config_id({})
    assert sweep.validate_config({"protocol": "paper_code"})["protocol"] == "paper_code"
    assert list(sweep.validate_config({}))[0] == "protocol"
    a = sweep.config_id({"T": 2, "k": 1, "seed": 3})
    assert a == sweep.config_id({"seed": 3, "k": 1, "T": 2})
    assert a == sweep.config_id({"seed": 3, "k": 1, "T": 2, "ft_rank": 3})  # resolved rank
    assert a == sweep.config_id(sweep.validate_config({"T": 2, "seed": 3}))
    assert a != sweep.config_id({"T": 2, "k": 1, "seed": 4})
    assert len(a) == 12 and int(a, 16) >= 0


def test_expand_grid_order_seeds_and_dedup():
    cfgs = sweep.expand_grid({"grid": {"T": [2, 3], "n": [100, 1000]}, "fixed": {"d": 8},
                              "seeds": 2})
    assert [(c["T"], c["n"], c["seed"]) for c in cfgs] == [
        (2, 100, 0), (2, 100, 1), (2, 1000, 0), (2, 1000, 1),
        (3, 100, 0), (3, 100, 1), (3, 1000, 0), (3, 1000, 1)]
    assert all(c["d"] == 8 for c in cfgs)
    assert [c["seed"] for c in sweep.expand_grid({"seeds": [7, 3]})] == [7, 3]
    assert len(sweep.expand_grid({"grid": {"ft_rank": [0, 3]}, "fixed": {"T": 2}})) == 1
    assert len(sweep.expand_grid({})) == 1
    assert sweep.expand_grid({"grid": {"T": [2]}, "chunk_size": 4, "name": "x"})[0]["T"] == 2


@pytest.mark.parametrize("spec, word", [
    ({"grid": {"bogus": [1]}}, "bogus"),
    ({"fixed": {"bogus": 1}}, "bogus"),
    ({"grid": {"T": []}}, "grid.T"),
    ({"grid": {"T": 3}}, "grid.T"),
    ({"grid": {"T": [2]}, "fixed": {"T": 3}}, "both"),
    ({"seeds": 0}, "seeds"),
    ({"seeds": 2, "fixed": {"seed": 1}}, "seed"),
    ({"grid": {"k": [1, 20]}}, "k"),
    ({"other": 1}, "other"),
])
def test_expand_grid_errors(spec, word):
    with pytest.raises(ValueError, match=word):
        sweep.expand_grid(spec)


def test_shape_key_and_grouping():
    base = sweep.validate_config(SHAPE)
    same = [dict(base, seed=5), dict(base, lr_base=0.1, noise_std=0.3, init_scale=0.2,
                                     truth_seed=4)]
    assert all(sweep.shape_key(c) == sweep.shape_key(base) for c in same)
    assert sweep.shape_key(dict(base, N=38)) != sweep.shape_key(base)
    assert sweep.shape_key(dict(base, ft_steps=10)) != sweep.shape_key(base)
    # T (and with it the fine-tuning rank, 3k at T = 2) is padded inside one program...
    assert sweep.shape_key(dict(base, T=2)) == sweep.shape_key(dict(base, T=5))
    # ...except for the Newton solver, and protocols never share a program
    newton = dict(base, ml_solver="newton")
    assert sweep.shape_key(dict(newton, T=2)) != sweep.shape_key(dict(newton, T=5))
    assert sweep.shape_key(dict(base, protocol="paper_code")) != sweep.shape_key(base)
    cfgs = [base, dict(base, N=38), same[0], dict(base, N=38, seed=1), same[1]]
    groups = sweep.group_by_shape(cfgs)
    assert [[c["N"] for c in g] for g in groups] == [[37, 37, 37], [38, 38]]
    assert [c["seed"] for c in groups[0]] == [0, 5, 0]


# ------------------------------------------------------------------------------ compiled runs

def _finite(res):
    keys = [k for k in sweep.RESULT_KEYS if not k.endswith("_diverged")]
    return all(np.isfinite(res[k]) for k in keys)


def test_thousand_seeds_compile_once():
    sweep.run_batch([dict(SHAPE, seed=s) for s in range(2)])  # warm the truth helpers
    cfgs = sweep.expand_grid({"fixed": SHAPE, "seeds": 1000})
    with count_compiles() as n:
        res = sweep.run_sweep(cfgs)
    assert n() == 1
    assert len(res) == 1000 and all(_finite(r) for r in res)
    assert res[0]["seconds"]["batch"] == 1000
    losses = np.array([r["ml_ft_test_loss"] for r in res])
    assert len(np.unique(losses)) == 1000  # every seed draws its own data
    with count_compiles() as n:             # a second sweep of the same shape: no compile
        sweep.run_sweep(cfgs[:1000])
    assert n() == 0


def _lr_batch():
    rng = np.random.default_rng(0)
    cfgs = []
    for i in range(7):
        cfgs.append(dict(SHAPE, seed=i, truth_seed=i % 2,
                         lr_adapter=float(rng.uniform(1e-3, 1e-2)),
                         lr_base=float(rng.uniform(0.01, 0.05)),
                         sr_lr=float(rng.uniform(0.01, 0.05)),
                         ft_lr=float(rng.uniform(1e-3, 1e-2)),
                         noise_std=float(rng.uniform(0, 0.1)),
                         init_scale=float(rng.uniform(0.05, 0.2))))
    cfgs[3]["lr_base"] = 50.0  # diverges: flagged, not raised
    cfgs[5]["sr_lr"] = 6.0     # SR grows ~5^7-fold in 7 steps: finite, flagged as a blow-up
    return cfgs


@pytest.fixture(scope="module")
def lr_results():
    cfgs = _lr_batch()
    programs = len(sweep._COMPILED)
    with count_compiles() as n:
        res = sweep.run_batch(cfgs)
    assert len(sweep._COMPILED) == programs + 1  # one batch program
    return cfgs, res, n()


def test_learning_rates_noise_and_truths_cost_one_compile(lr_results):
    cfgs, res, compiles = lr_results
    # the batch program plus, at most, the helpers that draw the (here two) truths
    assert compiles <= 3
    assert res[0]["seconds"]["batch"] == 8  # 7 padded to 2 devices
    with count_compiles() as n:
        again = sweep.run_batch([dict(c, lr_adapter=c["lr_adapter"] * 1.1) for c in cfgs])
    assert n() == 0
    assert again[0]["ml_objective"] != res[0]["ml_objective"]
    assert res[3]["ml_diverged"] and not res[3]["sr_diverged"]
    assert res[5]["sr_diverged"] and not res[5]["ml_diverged"]
    assert np.all(np.isfinite(res[5]["trajectories"]["sr_objective"]))  # a blow-up, not NaN
    assert not any(r["ml_diverged"] or r["sr_diverged"] for i, r in enumerate(res)
                   if i not in (3, 5))
    assert not any(r["ft_diverged"] for i, r in enumerate(res) if i not in (3, 5))


def test_divergence_message_names_stage_step_size_and_iteration(lr_results):
    cfgs, res, _ = lr_results
    cfg3, cfg5 = (sweep.validate_config(c) for c in (cfgs[3], cfgs[5]))
    msg = protocols.divergence_message(cfg3, res[3])
    assert msg.startswith("Meta-LoRA retraining diverged at iteration")
    assert "lr_base=50" in msg and "lr_adapter=" in msg and "\n" not in msg
    err = protocols.divergence_error(cfg5, res[5])
    assert isinstance(err, linmeta.DivergenceError) and err.stage == "standard retraining"
    assert err.step_sizes == {"sr_lr": 6.0} and err.iteration in (4, 7)
    assert err.value > 1e3 * err.start
    assert protocols.diverged_stages(cfg5, res[5])[0] == "sr"
    assert protocols.divergence_message(sweep.validate_config(cfgs[0]), res[0]) is None
    # a result without engine flags is judged from its trajectories (NaN pads Newton traces)
    calm = np.array([5.0, 2.0, 1.0])
    traj = {"ml_objective": calm, "sr_objective": 5.0 * 49.0 ** np.arange(3),
            "ml_ft_test_loss": calm, "sr_ft_test_loss": calm, "sr_steps": np.array([0, 4, 7])}
    assert protocols.diverged_stages(cfg3, {"trajectories": traj}) == ["sr"]
    err = protocols.divergence_error(cfg3, {"trajectories": traj})
    assert err.iteration == 7 and err.step_sizes == {"sr_lr": cfg3["sr_lr"]}
    newton = dict(cfg3, ml_solver="newton")
    padded = dict(traj, ml_objective=np.array([3.0, 1e-9, np.nan]), sr_objective=calm)
    assert protocols.diverged_stages(newton, {"trajectories": padded}) == []


def test_sharded_run_equals_single_device(lr_results):
    cfgs, res, _ = lr_results
    assert len(jax.devices()) >= 2
    one = sweep.run_batch(cfgs, devices=jax.devices()[:1])
    assert one[0]["seconds"]["batch"] == 7
    for a, b in zip(res, one):  # the same numbers up to the last bit of a reduction (a norm)
        for key in sweep.RESULT_KEYS:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-13, atol=0, err_msg=key)
        for key, traj in a["trajectories"].items():
            np.testing.assert_allclose(traj, b["trajectories"][key], rtol=1e-13, err_msg=key)


def test_run_batch_equals_core_api_by_hand():
    cfg = sweep.validate_config(dict(SHAPE, seed=1, noise_std=0.05))
    res = sweep.run_batch([cfg, dict(cfg, seed=0)])[0]
    truth = sweep.truth_for(cfg)
    keys = paper.run_keys(cfg["seed"])
    shape = paper.Shape(**{**{f: cfg.get(f) for f in paper.Shape._fields}, "m": 1})
    U0, Uf, Vf = paper.initial_factors(keys, shape, cfg["init_scale"], jnp.float64)
    X, Y = paper.raw_samples(keys.retrain, truth.M_star, cfg["N"], cfg["noise_std"])
    Xf, Yf = paper.raw_samples(keys.finetune, truth.M_new, cfg["n"], cfg["noise_std"])
    stats = linmeta.stats_from_arrays(X, Y, truth.M_star)
    ft_stats = linmeta.stats_from_arrays(Xf, Yf, truth.M_new)
    ml = linmeta.meta_lora(stats, cfg["k"], U0=U0, method="alternating",
                           outer_steps=cfg["outer_steps"], inner_steps=cfg["inner_steps"],
                           lr_adapter=cfg["lr_adapter"], lr_base=cfg["lr_base"],
                           record_every=cfg["record_every"])
    sr = linmeta.standard_retraining(stats, method="gd", steps=cfg["sr_steps"], lr=cfg["sr_lr"],
                                     record_every=cfg["record_every"])
    r = cfg["ft_rank"]
    fts = [linmeta.finetune(b, ft_stats, r, U0=Uf, V0=Vf, steps=cfg["ft_steps"], lr=cfg["ft_lr"],
                            record_every=cfg["record_every"]) for b in (ml.base, sr.base)]
    tol = 1e-10
    assert rel(res["ml_objective"], ml.objective) < tol
    assert rel(res["sr_objective"], sr.objective) < tol
    assert rel(res["ml_base_error"], linmeta.metrics.base_error(ml.base, truth.A_star)) < tol
    assert rel(res["sr_base_rel_error"],
               linmeta.metrics.base_error(sr.base, truth.A_star, relative=True)) < tol
    assert rel(res["trajectories"]["ml_objective"], ml.history.value) < tol
    assert rel(res["trajectories"]["sr_objective"], sr.history.value) < tol
    for ft, name in zip(fts, ("ml", "sr")):
        assert rel(res[f"{name}_ft_test_loss"], ft.test_loss[0]) < tol
        assert rel(res["trajectories"][f"{name}_ft_test_loss"],
                   ft.history.value.test_loss[:, 0]) < tol
        risk = float(jnp.sum((ft.task_matrix[0] - truth.M_new[0]) ** 2))
        assert rel(res[f"{name}_ft_excess_risk"], risk) < tol
    # (the sweep computes it on the host: linmeta.families.paper.theory.sr_bias_host)
    residual = linmeta.theory.sr_residual(truth.U_star, truth.U_new)
    assert rel(res["theory_sr_bias"], linmeta.theory.lora_bias(residual, r)[0]) < tol
    assert res["theory_ft_error"] == pytest.approx(
        linmeta.theory.predicted_finetune_error(cfg["d"], r, cfg["n"], cfg["noise_std"]))
    # the given-truth path is the same program and gives the same numbers
    with count_compiles() as n:
        given = sweep.run_batch([cfg, dict(cfg, seed=0)], truth=truth)[0]
    assert n() == 0
    assert all(given[k] == res[k] for k in sweep.RESULT_KEYS)


def test_trajectories_are_strided():
    cfg = sweep.validate_config(SHAPE)
    res = sweep.run_batch([cfg, dict(cfg, seed=1)])[0]
    tr = res["trajectories"]
    assert list(tr["outer_steps"]) == [0, 4, 6]
    assert list(tr["sr_steps"]) == [0, 4, 7]
    assert list(tr["ft_steps"]) == [0, 4, 8, 9]
    for key, idx in (("ml_objective", "outer_steps"), ("sr_objective", "sr_steps"),
                     ("ml_ft_test_loss", "ft_steps"), ("sr_ft_test_loss", "ft_steps")):
        assert tr[key].shape == tr[idx].shape
    assert tr["ml_ft_test_loss"][-1] == res["ml_ft_test_loss"]
    assert tr["ml_objective"][-1] == res["ml_objective"]


def test_truth_and_batch_errors():
    cfg = sweep.validate_config(SHAPE)
    with pytest.raises(ValueError, match="one shape"):
        sweep.run_batch([cfg, dict(cfg, N=38)])
    other = linmeta.sample_truth(jax.random.key(0), 5, 1, 3)
    with pytest.raises(ValueError, match="d=4 does not match"):
        sweep.run_batch([cfg], truth=other)
    no_unseen = linmeta.Truth(np.eye(4), np.ones((3, 4, 1)))
    with pytest.raises(ValueError, match="unseen"):
        sweep.run_batch([cfg], truth=no_unseen)
    with pytest.raises(ValueError, match="chunk_size"):
        sweep.run_sweep([cfg], chunk_size=0)
    assert sweep.run_batch([]) == []


def test_run_sweep_groups_chunks_and_calls_back():
    base = sweep.validate_config(SHAPE)
    cfgs = [dict(base, seed=s) for s in range(5)]
    seen = []
    res = sweep.run_sweep(cfgs, chunk_size=2, on_result=lambda c, r: seen.append(c["seed"]))
    assert seen == [0, 1, 2, 3, 4]
    assert all(r["seconds"]["batch"] == 2 for r in res)  # chunks of 2, the last one padded
    ref = sweep.run_batch(cfgs[:2])
    assert res[1]["ml_ft_test_loss"] == ref[1]["ml_ft_test_loss"]


def test_run_sweep_compiles_shape_groups_ahead():
    cfgs = [dict(SHAPE, seed=s, N=N) for N in (37, 39) for s in range(2)]
    programs = len(sweep._COMPILED)
    res = sweep.run_sweep(cfgs)
    assert 1 <= len(sweep._COMPILED) - programs <= 2  # one program per shape (unless cached)
    with count_compiles() as n:
        again = sweep.run_sweep(cfgs, compile_ahead=False)
    assert n() == 0
    for a, b in zip(res, again):
        assert a["ml_ft_test_loss"] == b["ml_ft_test_loss"]
    assert res[2]["seconds"]["compile"] > 0 and again[2]["seconds"]["compile"] == 0


def test_run_sweep_truth_per_group():
    base = sweep.validate_config(SHAPE)
    cfgs = [dict(base, seed=s) for s in range(2)]
    truth = linmeta.sample_truth(jax.random.key(42), 4, 1, 3)
    asked = []
    res = sweep.run_sweep(cfgs, truth=lambda c: asked.append(c["d"]) or truth)
    assert asked == [4]  # once per shape group
    ref = sweep.run_batch(cfgs, truth=truth)
    assert [r["ml_objective"] for r in res] == [r["ml_objective"] for r in ref]


# ------------------------------------------------------------------------------ padding across T

def test_padded_run_equals_unpadded_run():
    """T = 2 (rank-3 fine-tuning) and T = 3 (rank 1) in one program padded to T = 3, rank 3:
    each equals its run in a batch of its own T (no padding) to rounding."""
    cfgs = [sweep.validate_config(dict(SHAPE, T=T, seed=s)) for T in (2, 3) for s in (0, 1)]
    assert [c["ft_rank"] for c in cfgs] == [3, 3, 1, 1]
    mixed = sweep.run_batch(cfgs)
    alone = sweep.run_batch(cfgs[:2]) + sweep.run_batch(cfgs[2:])
    for cfg, a, b in zip(cfgs, mixed, alone):
        for key in sweep.RESULT_KEYS:
            if not key.endswith("_diverged"):
                # (the SR bias at T = 2, rank 3 is zero up to rounding: absolute there)
                np.testing.assert_allclose(a[key], b[key], rtol=1e-12, atol=1e-20,
                                           err_msg=f"T={cfg['T']} {key}")
        for key, traj in a["trajectories"].items():
            np.testing.assert_allclose(traj, b["trajectories"][key], rtol=1e-12, err_msg=key)


# ------------------------------------------------------------------------------ registry

class _ToyHyper(NamedTuple):
    lr: jax.Array


class _ToyShape(NamedTuple):
    d: int
    steps: int


class _ToyRecord(NamedTuple):
    final_loss: jax.Array
    loss: jax.Array


def _toy_run(truth, keys, hyper, shape):
    """Gradient descent on 1/2 ||A - A*||^2 from A = 0: loss_t = (1 - lr)^(2t) ||A*||^2."""
    def step(A, _):
        A = A - hyper.lr * (A - truth)
        return A, jnp.sum((A - truth) ** 2)

    A, loss = jax.lax.scan(step, jnp.zeros_like(truth), None, length=shape.steps)
    start = jnp.sum(truth ** 2)[None]
    return _ToyRecord(loss[-1], jnp.concatenate([start, loss]))


def _toy_truth(cfg, dtype):  # NumPy: no compile outside the programs under test
    return np.random.default_rng(cfg["truth_seed"]).normal(size=(cfg["d"], cfg["d"])).astype(dtype)


def test_registered_toy_protocol_runs_through_run_sweep_one_compile_per_group():
    protocols.register(protocols.Protocol(
        name="toy_gd", run=_toy_run, hyper=_ToyHyper, shape=_ToyShape,
        defaults=dict(d=3, steps=5, lr=0.1, seed=0, truth_seed=0),
        truth=_toy_truth, truth_keys=("truth_seed", "d"),
        stages=(protocols.Stage("fit", "toy fit", fields=("loss",), step_sizes=("lr",)),),
        checks={"lr": protocols.Check("float", 0, open_lo=True), "d": protocols.Check("int", 1)},
    ), replace=True)
    assert "toy_gd" in protocols.names() and "paper" in protocols.names()
    with pytest.raises(ValueError, match="already registered"):
        protocols.register(protocols.get("toy_gd"))
    with pytest.raises(ValueError, match="lr must be a finite number in \\(0, inf\\)"):
        sweep.validate_config({"protocol": "toy_gd", "lr": 0})
    with pytest.raises(ValueError, match="unknown configuration key 'T' for protocol 'toy_gd'"):
        sweep.validate_config({"protocol": "toy_gd", "T": 3})
    cfgs = sweep.expand_grid({"grid": {"steps": [5, 8], "lr": [0.1, 0.3, 3.5]},
                              "fixed": {"protocol": "toy_gd"}, "seeds": 2})
    assert len({sweep.shape_key(c) for c in cfgs}) == 2
    with count_compiles() as n:
        res = sweep.run_sweep(cfgs)
    assert n() == 2  # one program per shape group; learning rates and seeds are traced
    A = _toy_truth({"truth_seed": 0, "d": 3}, np.float64)
    for cfg, r in zip(cfgs, res):
        want = (1 - cfg["lr"]) ** (2 * cfg["steps"]) * np.sum(A ** 2)
        assert rel(r["final_loss"], want) < 1e-12
        assert r["trajectories"]["loss"].shape == (cfg["steps"] + 1,)
        assert r["fit_diverged"] == (cfg["lr"] == 3.5)  # |1 - lr|^(2t) = 2.5^(2t) > 1e3
    bad = next(r for c, r in zip(cfgs, res) if c["lr"] == 3.5 and c["steps"] == 8)
    bad_cfg = next(c for c in cfgs if c["lr"] == 3.5 and c["steps"] == 8)
    msg = protocols.divergence_message(bad_cfg, bad)
    assert msg.startswith("toy fit diverged at iteration") and "lr=3.5" in msg


# ------------------------------------------------------------------------------ program store

def test_program_store_round_trip_and_recovery(tmp_path, monkeypatch):
    from linmeta.engine import program_cache
    monkeypatch.setattr(program_cache, "folder", lambda: str(tmp_path))
    devices = jax.local_devices()[:1]
    U = np.arange(6.0).reshape(3, 2)
    fn = linmeta.lora.symmetric_delta

    def lower():
        return jax.jit(fn).lower(U)

    desc = ("test symmetric_delta", 3, 2)
    exe, loaded = program_cache.load_or_compile(desc, devices, lower, {}, (fn,))
    assert not loaded and len(list(tmp_path.iterdir())) == 1
    again, loaded = program_cache.load_or_compile(desc, devices, lower, {}, (fn,))
    assert loaded
    np.testing.assert_array_equal(again(U + 1), (U + 1) @ (U + 1).T)
    entry = next(tmp_path.iterdir())
    entry.write_bytes(b"not a program")           # a broken entry is recompiled and replaced
    _, loaded = program_cache.load_or_compile(desc, devices, lower, {}, (fn,))
    assert not loaded
    _, loaded = program_cache.load_or_compile(desc, devices, lower, {}, (fn,))
    assert loaded
    # code outside linmeta is never stored (its source is not part of the key)
    _, loaded = program_cache.load_or_compile(("other",), devices, lower, {}, (_toy_run,))
    assert not loaded and len(list(tmp_path.iterdir())) == 1
    assert program_cache.fingerprint(desc, devices) != program_cache.fingerprint(
        ("test symmetric_delta", 3, 3), devices)
