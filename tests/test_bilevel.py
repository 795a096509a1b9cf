"""The bilevel family's protocol (linmeta.bilevel) and the tiny runs of claims M1-M6.

The tiny runs happen once, in one subprocess that calls ``python -m experiments.claims bilevel``
(every claim M1-M6, one grid) at ``setting="tiny"`` (``helpers.tiny_claim_runs``: started in the
background when collection finishes, while the other tests run).
"""
import functools
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import linmeta
from linmeta.families import bilevel
from linmeta.families.paper import protocol as paper
from linmeta.engine import protocols, sweep
from linmeta.families.bilevel.claims._grid import numpy_truths, to_jax

from helpers import count_compiles, rel, tiny_claim_runs

FIGURES = ("bilevel_m1_reductions", "bilevel_m2_exact_inner", "bilevel_m3_gradients",
           "bilevel_vs_K_T3", "bilevel_ablation", "bilevel_step_size")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
tiny_runs = tiny_claim_runs({}, "bilevel", body="""
t0 = time.perf_counter()
verdicts = importlib.import_module("experiments.claims").main(["bilevel"], "tiny", out, 0)
secs["all"] = time.perf_counter() - t0
for v in verdicts:
    rows.setdefault(v.claim, []).append(v.as_dict())
""")


# ----------------------------------------------------------------------------- the protocol
D, T = 6, 3
SHAPE = bilevel.make_shape(D, 1, T, m=2, width=1, inner_length=100, outer_steps=300,
                           record_every=50)


def _truths(seed, B, d=D, T=T, m=2):
    """B copies of one Gaussian truth (NumPy draw), stacked."""
    arrays = numpy_truths(np.random.default_rng(seed), 1, d, 1, T, m)
    return linmeta.Truth(*to_jax(tuple(np.repeat(x, B, axis=0) for x in arrays)))


def _batch(hypers, shape=SHAPE, seed=0):
    """run_batch on the hypers (seeds 0, 1, ...), padded to a batch of 4 so that the tests of a
    shape share one compiled program; NumPy outputs of the B given."""
    B = len(hypers)
    B4 = -(-B // 4) * 4
    h = bilevel.stack_hypers(list(hypers) + [hypers[-1]] * (B4 - B))
    out = bilevel.run_batch(_truths(seed, B4, d=shape.d, T=shape.T, m=shape.m), jnp.arange(B4),
                            h, shape)
    return jax.tree.map(lambda x: np.asarray(x)[:B], out)


def test_matched_lora_inner_loop_recovers_a_star_and_flags_divergence():
    hy = [bilevel.make_hyper(SHAPE, method=m, inner_steps=100, inner_lr=0.1)
          for m in ("maml", "fomaml")]
    hy.append(bilevel.make_hyper(SHAPE, method="maml", inner_steps=0))
    hy.append(bilevel.make_hyper(SHAPE, method="maml", inner_steps=20, inner_lr=3.0))
    out = _batch(hy)
    err = np.asarray(out.base_rel_error)
    assert err[0] < 1e-4 and err[1] < 1e-4                 # MAML, first-order MAML approach A*
    assert float(out.ft_bias[0]) < 1e-6 * float(out.sr_ft_bias[0])
    assert abs(float(out.base_error[2]) - float(out.sr_base_error[2])) < 1e-6   # K = 0: SR
    assert bool(out.diverged[3]) and not bool(out.diverged[0])     # never NaN silently
    assert np.isinf(float(out.ft_bias[3]))
    assert not np.asarray(out.diverged[:3]).any() and not np.asarray(out.stalled[:2]).any()


@functools.partial(jax.jit, static_argnums=(1, 3))
def _start_of_seed(seed, shape, hyper, dtype):
    """The protocol's adapter start of run ``seed`` (jitted: one compile, not one per op)."""
    return bilevel.protocol.initial_start(paper.run_keys(seed).init, shape, hyper, dtype)


def test_protocol_run_equals_linmeta_maml():
    h = bilevel.make_hyper(SHAPE, method="fomaml", inner_steps=7, inner_lr=0.08)
    out = _batch([h], seed=1)
    truth = linmeta.Truth(*(np.asarray(x)[0] for x in _truths(1, 1)))
    start = _start_of_seed(0, SHAPE, h, jnp.float64)
    pop = jax.jit(linmeta.population)(truth)
    res = linmeta.maml(pop, 1, method="fomaml", inner_steps=7, inner_lr=0.08,
                       outer_steps=SHAPE.outer_steps, outer_lr=0.3, U0=start.U, V0=start.V,
                       max_inner_steps=SHAPE.inner_length, record_every=SHAPE.record_every)
    assert rel(out.base_error[0], linmeta.metrics.base_error(res.base, truth.A_star)) < 1e-12
    assert rel(out.objective_traj[0], res.history.value) < 1e-10


def test_padded_width_equals_unpadded_and_one_compile_per_shape():
    wide = SHAPE._replace(width=D)
    hs = [bilevel.make_hyper(SHAPE, method="maml", inner_steps=30, inner_lr=0.1)]
    narrow = _batch(hs, SHAPE, seed=2)
    padded = _batch([bilevel.make_hyper(wide, method="maml", inner_steps=30, inner_lr=0.1)],
                    wide, seed=2)
    for f in ("base_error", "objective", "ft_bias", "objective_traj"):   # summation order only
        assert rel(getattr(padded, f), getattr(narrow, f)) < 1e-10
    # a sweep over traced hyperparameters reuses the compiled program of its shape
    with count_compiles() as n:
        _batch([bilevel.make_hyper(SHAPE, method=m, inner_steps=K, inner_lr=a, outer_lr=b)
                for m, K, a, b in (("reptile", 5, 0.05, 0.2),)], SHAPE, seed=3)
    assert n() == 0


def test_finite_support_query_and_pooled_sr_reference():
    shape = bilevel.make_shape(4, 1, 3, N=16, support=6, n=8, m=2, width=1, inner_length=3,
                               outer_steps=10, record_every=5, methods="maml")   # static method
    h = bilevel.make_hyper(shape, method="maml", inner_steps=3, noise_std=0.1)
    truth = linmeta.Truth(*(np.asarray(x)[0] for x in _truths(4, 1, d=4)))

    # the run and its statistics in one program (one compile of the sampler), compiled as
    # run_batch compiles
    @functools.partial(jax.jit, compiler_options=protocols.cpu_options())
    def run_and_stats(t, seed):
        keys = paper.run_keys(seed)
        return (bilevel.run_protocol(t, keys, h, shape),
                bilevel.retrain_statistics(t, keys.retrain, shape, h.noise_std))

    out, (sup, qry, pooled) = run_and_stats(truth, 0)
    assert float(sup.n_samples[0]) == 6 and float(qry.n_samples[0]) == 10
    sr = linmeta.standard_retraining(pooled).base
    assert rel(out.sr_base_error, linmeta.metrics.base_error(sr, truth.A_star)) < 1e-8
    # a rank-r adapter fitted on n samples is a rank-r adapter: never below the Eckart-Young bias
    assert float(out.ft_bias) <= float(out.ft_excess_risk) < np.inf


@pytest.mark.parametrize("kwargs, word", [
    (dict(N=10, support=10), "support"), (dict(support=3), "support"), (dict(k=7), "k"),
    (dict(adapter="full"), "adapter"), (dict(width=7), "width"), (dict(methods="sgd"), "methods"),
])
def test_bad_shape(kwargs, word):
    kw = dict(d=6, k=1, T=3)
    kw.update(kwargs)
    with pytest.raises(ValueError, match=word):
        bilevel.make_shape(**kw)


@pytest.mark.parametrize("kwargs, word", [
    (dict(inner_steps=101), "inner_steps"), (dict(inner_rank=2), "inner_rank"),
    (dict(inner_lr=-1.0), "inner_lr"), (dict(outer_lr=0.0), "outer_lr"),
    (dict(inner_full=True), "inner_full"), (dict(method="adam"), "method"),
])
def test_bad_hyper(kwargs, word):
    with pytest.raises(ValueError, match=word):
        bilevel.make_hyper(SHAPE, **kwargs)


# ----------------------------------------------------------------------------- the sweep engine
# One shape group of the registered protocol "bilevel": every method, K in {0, 3}, the LoRA rank-1
# and the full-rank inner update, plus a diverging inner step and a diverging outer step. Traced
# keys only, so the group is one compiled program (padded to K = 3, width d, method traced).
SWEEP_FIXED = {"protocol": "bilevel", "d": 4, "k": 1, "T": 3, "outer_steps": 20,
               "record_every": 10, "inner_lr": 0.1}
SWEEP_EXTRA = [{"method": "maml", "inner_steps": 3, "inner_lr": 5.0},      # inner loop blows up
               {"method": "fomaml", "inner_steps": 3, "outer_lr": 50.0}]   # outer loop blows up


@pytest.fixture(scope="module")
def bilevel_sweep():
    cfgs = sweep.expand_grid({"grid": {"method": list(bilevel.METHODS), "inner_steps": [0, 3],
                                       "inner_full": [False, True]},
                              "fixed": SWEEP_FIXED})
    cfgs += [sweep.validate_config({**SWEEP_FIXED, **c}) for c in SWEEP_EXTRA]
    protocols.truth_for(cfgs[0])          # the truth's own small program, compiled beforehand
    with count_compiles() as n:
        res = sweep.run_sweep(cfgs)
    return cfgs, res, n()


def test_sweep_reaches_the_family_by_name_in_one_compile(bilevel_sweep):
    cfgs, res, compiles = bilevel_sweep
    assert "bilevel" in protocols.names()
    assert len({sweep.shape_key(c) for c in cfgs}) == 1 and compiles == 1
    assert res[0]["seconds"]["compile"] > 0 and res[0]["seconds"]["batch"] >= len(cfgs)


def test_sweep_equals_the_family_run_batch(bilevel_sweep):
    cfgs, res, _ = bilevel_sweep
    shape = bilevel.protocol.sweep_shape(cfgs[0], cfgs)
    assert (shape.width, shape.inner_length, shape.methods) == (4, 3, "all")
    hypers = [bilevel.make_hyper(shape, method=c["method"], inner_steps=c["inner_steps"],
                                 inner_lr=c["inner_lr"], outer_lr=c["outer_lr"],
                                 inner_rank=c["inner_rank"], inner_full=c["inner_full"],
                                 noise_std=c["noise_std"]) for c in cfgs]
    truth = paper.truth_for_seed(0, 4, 1, 3)
    B = len(cfgs)
    truths = linmeta.Truth(*(jnp.repeat(x[None], B, axis=0) for x in truth))
    seeds = jnp.asarray([c["seed"] for c in cfgs])
    out = bilevel.run_batch(truths, seeds, bilevel.stack_hypers(hypers), shape)
    ok = [i for i, r in enumerate(res) if not r["retrain_diverged"]]
    assert len(ok) == B - 2
    for key in ("base_error", "base_rel_error", "objective", "ft_bias", "sr_base_error",
                "sr_ft_bias"):
        assert rel([res[i][key] for i in ok], np.asarray(getattr(out, key))[ok]) < 1e-12, key
    assert rel(np.stack([res[i]["trajectories"]["objective"] for i in ok]),
               np.asarray(out.objective_traj)[ok]) < 1e-12
    for i, r in enumerate(res):
        assert r["retrain_diverged"] == bool(out.diverged[i])
        assert r["inner_diverged"] == bool(out.inner_diverged[i])
        assert r["stalled"] == bool(out.stalled[i])
    # and an unpadded program of one configuration (static method, width 1, K = 3): padding is
    # exact up to summation order
    i = next(j for j, c in enumerate(cfgs) if c["method"] == "fomaml" and c["inner_steps"] == 3
             and not c["inner_full"] and c["outer_lr"] == 0.3)
    one = bilevel.make_shape(4, 1, 3, width=1, inner_length=3, outer_steps=20, record_every=10,
                             methods="fomaml")
    h = bilevel.make_hyper(one, method="fomaml", inner_steps=3, inner_lr=0.1, noise_std=0.01)
    o1 = bilevel.run_batch(linmeta.Truth(*(x[None] for x in truth)), jnp.asarray([0]),
                           bilevel.stack_hypers([h]), one)
    assert rel(res[i]["base_error"], o1.base_error[0]) < 1e-12
    assert rel(res[i]["trajectories"]["objective"], o1.objective_traj[0]) < 1e-10


def test_sweep_flags_the_stage_that_diverged(bilevel_sweep):
    cfgs, res, _ = bilevel_sweep
    inner, outer = res[-2], res[-1]
    assert inner["inner_diverged"] and not outer["inner_diverged"]
    assert outer["retrain_diverged"]
    assert not any(r["inner_diverged"] or r["retrain_diverged"] for r in res[:-2])
    assert protocols.diverged_stages(cfgs[-1], outer) == ["retrain"]
    msg = protocols.divergence_message(cfgs[-2], inner)
    assert msg.startswith("the bilevel inner loop") and "inner_lr=5" in msg, msg
    msg = protocols.divergence_message(cfgs[-1], outer)
    assert msg.startswith("bilevel retraining") and "outer_lr=50" in msg, msg
    assert np.isinf(outer["ft_bias"]) and np.isfinite(outer["sr_ft_bias"])   # never NaN


@pytest.mark.parametrize("bad, key", [
    ({"inner_lr": -0.1}, "inner_lr"), ({"outer_lr": 0}, "outer_lr"), ({"inner_steps": -1},
                                                                      "inner_steps"),
    ({"inner_rank": 5}, "inner_rank"), ({"k": 5}, "k"), ({"method": "adam"}, "method"),
    ({"N": 10, "support": 10}, "support"), ({"support": 3}, "support"), ({"N": 1}, "N"),
    ({"adapter": "symmetric", "inner_full": True}, "inner_full"), ({"inner_lr": float("nan")},
                                                                   "inner_lr"),
    ({"init_scale": 0.0}, "init_scale"), ({"lr_base": 0.1}, "lr_base"),
])
def test_sweep_bad_value_is_a_one_line_error(bad, key):
    with pytest.raises(ValueError) as e:
        sweep.validate_config({**SWEEP_FIXED, **bad})
    assert key in str(e.value) and "\n" not in str(e.value)
    if key not in ("support", "inner_full", "N", "lr_base"):   # the range is stated
        assert re.search(r"[\[(]\S*, \S*[\])]| one of ", str(e.value)), str(e.value)


def test_sweep_refuses_a_truth_of_other_sizes():
    truth = linmeta.sample_truth(jax.random.key(0), 5, 1, 3)          # d = 5, the config's 4
    with pytest.raises(ValueError, match="d=4 does not match the truth"):
        sweep.run_batch([SWEEP_FIXED], truth=truth)
    with pytest.raises(ValueError, match="unseen task"):
        sweep.run_batch([SWEEP_FIXED], truth=linmeta.sample_truth(jax.random.key(0), 4, 1, 3,
                                                                  n_unseen=0))


def _spec(path, fixed, grid):
    lines = ["seeds = 2", "[fixed]"] + [f"{k} = {json.dumps(v)}" for k, v in fixed.items()]
    lines += ["[grid]"] + [f"{k} = {json.dumps(v)}" for k, v in grid.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_sweep_of_the_bilevel_protocol_writes_the_table(tmp_path):
    from linmeta.engine import results
    from linmeta.front.cli import main

    fixed = {"protocol": "bilevel", "d": 4, "outer_steps": 20, "record_every": 10}
    spec = _spec(tmp_path / "spec.toml", fixed, {"inner_steps": [0, 3]})
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--no-progress",
                 "--quiet"]) == 0
    _, rows = results.load_sweep(tmp_path / "out")
    cfgs = sweep.expand_grid({"fixed": fixed, "grid": {"inner_steps": [0, 3]}, "seeds": 2})
    want = sweep.run_sweep(cfgs)
    assert len(rows) == 4
    got = {(int(r["inner_steps"]), int(r["seed"])): float(r["base_error"]) for r in rows}
    for c, w in zip(cfgs, want):
        assert got[(c["inner_steps"], c["seed"])] == pytest.approx(w["base_error"], rel=1e-12)


def test_cli_sweep_loads_the_stored_program_in_a_new_process(tmp_path):
    """With the program store on, a second process loads the compiled "bilevel" program instead of
    compiling it; the program calls LAPACK, which must be initialised first (else: SIGSEGV)."""
    spec = _spec(tmp_path / "spec.toml", {"protocol": "bilevel", "d": 3, "outer_steps": 4,
                                          "record_every": 2}, {"inner_steps": [0, 1]})
    env = {k: v for k, v in os.environ.items() if k != "LINMETA_NO_CACHE"}
    env["LINMETA_CACHE_DIR"] = str(tmp_path / "cache")
    tables = []
    for i in range(2):
        proc = subprocess.run([sys.executable, "-m", "linmeta", "sweep", str(spec), "--out",
                               str(tmp_path / f"out{i}"), "--no-progress", "--quiet"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (i, proc.returncode, proc.stderr[-2000:])
        tables.append((tmp_path / f"out{i}" / "results.csv").read_text())
    assert os.listdir(tmp_path / "cache" / "linmeta-programs")   # the second run loaded it
    assert tables[0] == tables[1]


def test_cli_sweep_over_the_bilevel_keys(tmp_path):
    from linmeta.front.cli import main

    fixed = {"protocol": "bilevel", "d": 4, "outer_steps": 20, "record_every": 10,
             "inner_steps": 3}
    spec = _spec(tmp_path / "spec.toml", fixed, {"method": ["maml", "reptile"]})
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--no-progress",
                 "--quiet"]) == 0


def test_cli_sweep_reports_a_diverged_bilevel_run(tmp_path):
    from linmeta.engine import results
    from linmeta.front.cli import main

    fixed = {"protocol": "bilevel", "d": 4, "outer_steps": 20, "record_every": 10,
             "init_scale": 30.0}     # a huge LoRA start: the inner loop blows up when K > 0
    spec = _spec(tmp_path / "spec.toml", fixed, {"inner_steps": [0, 3]})
    rc = main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--no-progress", "--quiet"])
    _, rows = results.load_sweep(tmp_path / "out")
    assert [r["inner_diverged"] for r in rows] == [False, False, True, True]   # the engine's flags
    assert "ml_diverged" not in rows[0]      # no columns of another protocol's stages
    assert rc == 3                           # a sweep with diverged runs exits 3


def test_cost_benchmark_tiny():
    from benchmarks import maml_cost

    rows = maml_cost.main(["--tiny"])["rows"]
    assert [r["K"] for r in rows] == [1, 4] and all(r["step_ms"] > 0 for r in rows)
    # second-order MAML keeps the inner loop's residuals: its memory grows with K
    assert rows[1]["temp_bytes"] > rows[0]["temp_bytes"]
    assert rows[1]["model_bytes"] == 4 * rows[0]["model_bytes"]


# ----------------------------------------------------------------------------- tiny runs
def test_tiny_run_rows_pass_and_figures_exist(tiny_runs):
    out, data = tiny_runs
    for cid, rows in data["rows"].items():
        assert rows, cid
        assert all(r["passed"] for r in rows), [r for r in rows if not r["passed"]]
        kinds = {r["kind"] for r in rows}
        want = ({"check"} if cid in ("M1", "M2", "M3") else
                {"check", "measured"} if cid in ("M4", "M6") else {"measured"})
        assert kinds == want, (cid, kinds)
        # (M4's checks: the plain runs against M1's closed form of the base; M6's: inner_step_scale
        # against NumPy, and at the full setting the full-rank alpha sweep's blow-up rule)
    for stem in FIGURES:
        assert (out / f"{stem}_tiny.png").stat().st_size > 1000
        assert (out / f"{stem}_tiny.pdf").exists()
    assert (out / "bilevel_tiny.json").exists()


def test_tiny_run_measured_rows_carry_numbers(tiny_runs):
    _, data = tiny_runs
    m4 = data["rows"]["M4"]
    assert any(isinstance(r["measured"], (int, float)) for r in m4)
    m6 = [r for r in data["rows"]["M6"] if r["kind"] == "measured"]
    assert m6 and all("/" in str(r["measured"]) for r in m6)


def test_a_measured_row_with_diverged_runs_says_so_first():
    """Issue: quick M5 printed '... < SR (12) < learned start (diverged)' inside a passing row.
    A variant with non-finite runs now leads the row's result."""
    from linmeta.families.bilevel.claims import m5

    clean = {"a": np.array([1.0, 2.0]), "b": np.array([3.0, 4.0])}
    text, diverged = m5.ordering(clean)
    assert text == "a (1.5) < b (3.5)" and diverged == ""
    text, diverged = m5.ordering({**clean, "learned start": np.array([0.5, np.nan])})
    assert text.startswith("DIVERGED RUNS in learned start (1 of 2 seeds); ordering: ")
    assert text.endswith("learned start (diverged)") and diverged == "learned start (1 of 2 seeds)"
