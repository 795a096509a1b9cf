"""The benchmarks' tiny modes run (benchmarks are not tests: only their smoke mode is run here).

The two largest, ``paper_protocol --tiny`` and ``scaling --tiny`` (each starts processes of its
own), run in the background chain of ``helpers.tiny_claim_runs`` from the session's start, while
the other tests run; the tests below check what they returned. The other tiny settings reuse the
shapes and batch sizes of tests/test_sweep.py, so that within one session they mostly reuse its
compiled programs."""
import json

import numpy as np

from benchmarks import paper_protocol, run_all, scaling

from helpers import tiny_claim_runs

bench_runs = tiny_claim_runs({}, "benchmarks", name="bench_runs", body="""
import contextlib, io, os
from benchmarks import paper_protocol, scaling
printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    s = paper_protocol.main(["--tiny", "--no-compile-cache", "--out",
                             os.path.join(out, "pp.json")])
rows["paper_protocol"] = json.loads(json.dumps(s, default=str))
rows["paper_protocol_stdout"] = printed.getvalue()
s = scaling.main(["--tiny", "--no-compile-cache", "--figure", os.path.join(out, "recovery.png")])
rows["scaling"] = json.loads(json.dumps(s, default=str))
""")


def test_paper_protocol_tiny(bench_runs):
    out, data = bench_runs
    s = data["rows"]["paper_protocol"]
    assert json.loads((out / "pp.json").read_text())["numpy_statistics"]["rows"][0]["T"] == 3
    # cold and warm whole processes (their own fresh cache): same numbers as in this process
    assert s["linmeta_cold_process_s"] > 0 and s["linmeta_warm_process_s"] > 0
    assert s["cache_entries"] > 0 and s["processes_max_rel_diff"] <= 1e-12
    # the statistics loop and the raw-sample loop: same updates on the same data, same numbers
    assert s["numpy_statistics"]["max_rel_diff_vs_linmeta"] <= 1e-12
    for row in s["numpy_statistics"]["rows"]:
        assert abs(row["ml_numpy"] - row["ml_linmeta"]) <= 1e-12 * abs(row["ml_linmeta"])
    assert s["numpy_raw"]["max_rel_diff_vs_linmeta"] <= 1e-8
    assert s["paper_code"]["seconds"] == paper_protocol.PAPER_CODE_SECONDS
    tp = s["throughput"]
    assert tp["configs_per_s"] > 0 and 0 < tp["fraction_of_flop_floor"] < 1
    assert "HEADLINE" in data["rows"]["paper_protocol_stdout"]


def test_numpy_statistics_loop_is_the_protocol():
    # against linmeta.reference (raw samples, an independent loop) on a hand-sized problem
    from benchmarks import numpy_statistics
    from linmeta.methods import reference
    rng = np.random.default_rng(0)
    T, N, n, d, k, r = 3, 40, 12, 5, 1, 1
    M = rng.standard_normal((T, d, d))
    X = rng.standard_normal((T, N, d))
    Y = X @ M.transpose(0, 2, 1) + 0.1 * rng.standard_normal((T, N, d))
    M_new = rng.standard_normal((1, d, d))
    Xf = rng.standard_normal((1, n, d))
    Yf = Xf @ M_new.transpose(0, 2, 1) + 0.1 * rng.standard_normal((1, n, d))
    U0 = 0.1 * rng.standard_normal((T, d, k))
    Uf, Vf = 0.1 * rng.standard_normal((2, 1, d, r))
    cfg = dict(outer_steps=7, inner_steps=3, lr_adapter=0.003, lr_base=0.03, sr_steps=9,
               sr_lr=0.03, ft_steps=11, ft_lr=0.005)
    got = numpy_statistics.protocol(X, Y, Xf, Yf, U0, Uf, Vf, M_new, cfg)
    A_ml = reference.alternating_protocol(X, Y, U0, outer_steps=7, inner_steps=3)[0]
    A_sr = reference.standard_gd(X, Y, steps=9)
    for name, base in (("ml", A_ml), ("sr", A_sr)):
        loss = reference.finetune_gd(Xf, Yf, base, Uf, Vf, M_new, steps=11)[2]
        np.testing.assert_allclose(got[f"{name}_ft_test_loss"], loss[-1, 0], rtol=1e-12)


def test_paper_protocol_linmeta_only_prints_json_last(capsys):
    paper_protocol.main(["--tiny", "--linmeta-only", "--no-compile-cache"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    finals = json.loads(last)["final_losses"]
    assert list(finals) == ["3"] and len(finals["3"]) == 2
    assert all(np.isfinite(r["ml_ft_test_loss"]) for r in finals["3"])


def test_scaling_tiny(bench_runs):
    out, data = bench_runs
    fig = out / "recovery.png"
    s = data["rows"]["scaling"]
    assert [r["batch"] for r in s["batch"]["rows"]] == [1, 2]
    assert all(r["configs_per_s"] > 0 for r in s["batch"]["rows"])
    assert s["dim"]["rows"][0]["flops_model"] > 0
    assert s["devices"]["max_rel_diff"] < 1e-12
    assert s["memory"]["finite"]
    rec = s["recovery"]
    head = rec["headline"]  # above the switch: the matrix-free solver, its flops counted
    assert head["method"] == "lbfgs" and head["rel_base_error"] < 1e-10
    assert head["evaluations"] >= head["iterations_max"] > 0
    assert 0 < head["fraction_of_matmul_peak"] < 1
    assert rec["by_d"][0]["rel_base_error"] < 1e-10 and rec["by_T"][0]["warm_s"] > 0
    assert fig.stat().st_size > 0
    # the device is reported: here no accelerator, every recovery row on the CPU; the
    # population L-BFGS rows ran in the span of the centred task matrices (m = T k)
    assert s["machine"]["gpu"] is None and "CPU only" in s["note"]
    assert head["device"]["platform"] == "cpu" and head["span_dim"] == 3 * 4
    assert rec["large"] == [] and head["iterations_per_start"] and head["iterations_max"] > 0


def test_flops_model_counts_the_dominant_products():
    from linmeta.engine import sweep
    cfg = sweep.validate_config(dict(d=100, k=1, T=3, N="inf", n="inf", outer_steps=1,
                                     inner_steps=0, sr_steps=0, ft_steps=0))
    assert scaling.flops_per_config(cfg) == 3 * (2 * 100 * 100 + 2 * 100 ** 3)


def test_run_all_tiny(monkeypatch):
    calls = []
    monkeypatch.setattr(paper_protocol, "main", lambda argv: calls.append(("pp", argv)) or {})
    monkeypatch.setattr(scaling, "main", lambda argv: calls.append(("sc", argv)) or {})
    out = run_all.main(["--tiny", "--no-compile-cache"])
    assert [c[0] for c in calls] == ["pp", "sc"] and all("--tiny" in c[1] for c in calls)
    assert set(out) == {"paper_protocol", "scaling", "seconds"}
