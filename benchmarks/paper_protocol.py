"""Benchmark: the paper's synthetic T sweep end to end, linmeta against the strongest simple baseline.

The protocol (docs/theory.md#protocol, :mod:`linmeta.paper`): d=10, k=1, N=5000, n=100,
T in {2,3,5},
5 runs; Meta-LoRA by 3000 outer iterations of 10 adapter steps + 1 base step; SR by 3000 gradient
steps; 10000 fine-tuning steps for each base (rank k, 3k at T = 2); noise std 0.01 (the paper's
sigma^2); float64 everywhere; the same configurations and the same data on every side.

One run measures:

1. **linmeta cold**: ``python benchmarks/paper_protocol.py --linmeta-only`` in a fresh process whose
   compilation cache (:mod:`linmeta.compile_cache`, ``LINMETA_CACHE_DIR``) is a new, empty temporary
   folder: wall time of the whole process (interpreter start, imports, tracing, compilation, run).
2. **linmeta warm**: the same command again with the same cache folder.
3. **NumPy statistics loop** (:mod:`benchmarks.numpy_statistics`, the headline baseline): the
   protocol over per-task sufficient statistics, one configuration at a time, O(d^3) per step, on
   linmeta's raw samples and initial factors; all 15 configurations (``--stats-runs``). Its final
   losses are compared with linmeta's (same updates on the same data: equal to rounding).
4. **Raw-sample NumPy loop** (:mod:`linmeta.methods.reference`, per-step gradients over the N raw samples,
   O(N d^2) per step): one run per T (``--numpy-runs``) on a fraction of the steps
   (``--numpy-fraction``), extrapolated linearly to all steps and runs.
5. **The paper's own code**: :data:`PAPER_CODE_SECONDS` (660 s for the T sweep, measured earlier on
   this machine with ``jacob-block/peft-ml``), quoted, not re-run.
6. **Throughput** at the paper's shapes (T = 3, full protocol): ``--throughput-configs``
   configurations (default 1024) in one compiled batch, configurations per second against the
   statistics loop's, and the fraction of the flop floor reached: the cost model's flops
   (:func:`benchmarks.scaling.flops_per_config`) per second over this machine's dense matmul rate.

Besides, linmeta runs the T sweep in this process with the cache the two processes filled (per-T
compile and run times; the finals for the comparisons).

Usage::

    python benchmarks/paper_protocol.py                     # everything; benchmarks/results/*.json
    python benchmarks/paper_protocol.py --numpy-fraction 0.05 --throughput-fraction 0.1
    python benchmarks/paper_protocol.py --linmeta-only      # linmeta's T sweep; JSON last line
    python benchmarks/paper_protocol.py --tiny              # seconds; for the test suite
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

if __name__ == "__main__":  # run as a script from anywhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))
PAPER = dict(d=10, k=1, N=5000, n=100, noise_std=0.01, outer_steps=3000, inner_steps=10,
             lr_adapter=0.003, lr_base=0.03, sr_steps=3000, sr_lr=0.03, ft_steps=10000,
             ft_lr=0.005, init_scale=0.1, record_every=100, truth_seed=0)
TS = (2, 3, 5)
RUNS = 5
THROUGHPUT_T = 3
# tiny: the shape of the test suite's sweeps (tests/test_sweep.py), so that it reuses their program
TINY = dict(PAPER, d=4, N=37, n=11, outer_steps=6, inner_steps=3, sr_steps=7, ft_steps=9,
            record_every=4)
TINY_TS = (3,)
TINY_RUNS = 2
PAPER_CODE_SECONDS = 660.0
PAPER_CODE_NOTE = ("the paper's code (jacob-block/peft-ml, linear/) for the T sweep, measured "
                   "earlier on this machine; quoted, not re-run")


def _configs(base: dict, Ts, runs: int, fraction: float = 1.0, seeds=None) -> list[dict]:
    from linmeta.engine import sweep
    steps = {key: max(1, int(round(base[key] * fraction)))
             for key in ("outer_steps", "sr_steps", "ft_steps")}
    seeds = range(runs) if seeds is None else seeds
    return [sweep.validate_config(dict(base, **steps, T=T, seed=s)) for T in Ts for s in seeds]


def run_linmeta(configs: list[dict]) -> dict:
    """Run the configurations with linmeta; per-T timings and final numbers."""
    from linmeta.engine import sweep
    t0 = time.perf_counter()
    results = sweep.run_sweep(configs)
    wall = time.perf_counter() - t0
    per_T: dict = {}
    for cfg, res in zip(configs, results):
        row = per_T.setdefault(cfg["T"], {"compile_s": res["seconds"]["compile"],
                                          "run_s": res["seconds"]["run"],
                                          "prepare_s": res["seconds"]["prepare"], "runs": []})
        row["runs"].append({"seed": cfg["seed"], "ml_ft_test_loss": res["ml_ft_test_loss"],
                            "sr_ft_test_loss": res["sr_ft_test_loss"],
                            "ml_base_rel_error": res["ml_base_rel_error"],
                            "sr_base_rel_error": res["sr_base_rel_error"],
                            "theory_sr_bias": res["theory_sr_bias"],
                            "diverged": res["ml_diverged"] or res["sr_diverged"]
                            or res["ft_diverged"]})
    return {"wall_s": wall, "per_T": per_T,
            "compile_s": sum(r["compile_s"] for r in per_T.values()),
            "run_s": sum(r["run_s"] for r in per_T.values())}


def _finals(lm: dict) -> dict:
    return {str(T): [{k: r[k] for k in ("seed", "ml_ft_test_loss", "sr_ft_test_loss")}
                     for r in row["runs"]] for T, row in lm["per_T"].items()}


def numpy_inputs(cfg: dict):
    """The raw samples and initial factors linmeta's run of ``cfg`` uses, as NumPy arrays."""
    import jax.numpy as jnp
    from linmeta.families.paper import protocol as paper
    from linmeta.engine import sweep
    truth = sweep.truth_for(cfg)
    keys = paper.run_keys(cfg["seed"])
    shape = paper.Shape(**{**{f: cfg.get(f) for f in paper.Shape._fields}, "m": 1})
    U0, Uf, Vf = paper.initial_factors(keys, shape, cfg["init_scale"], jnp.float64)
    X, Y = paper.raw_samples(keys.retrain, truth.M_star, cfg["N"], cfg["noise_std"])
    Xf, Yf = paper.raw_samples(keys.finetune, truth.M_new, cfg["n"], cfg["noise_std"])
    return {k: np.asarray(v, np.float64) for k, v in dict(
        X=X, Y=Y, Xf=Xf, Yf=Yf, U0=U0, Uf=Uf, Vf=Vf, M_new=truth.M_new).items()}


def run_numpy_raw(cfg: dict) -> dict:
    """The protocol over raw samples (linmeta.reference) on linmeta's data; draws not timed."""
    from linmeta.methods import reference as ref
    a = numpy_inputs(cfg)
    t0 = time.perf_counter()
    A_ml, _, _ = ref.alternating_protocol(a["X"], a["Y"], a["U0"], outer_steps=cfg["outer_steps"],
                                          inner_steps=cfg["inner_steps"],
                                          lr_adapter=cfg["lr_adapter"], lr_base=cfg["lr_base"])
    t_ml = time.perf_counter() - t0
    A_sr = ref.standard_gd(a["X"], a["Y"], steps=cfg["sr_steps"], lr=cfg["sr_lr"])
    t_sr = time.perf_counter() - t0 - t_ml
    finals = {}
    for name, base in (("ml", A_ml), ("sr", A_sr)):
        _, _, loss = ref.finetune_gd(a["Xf"], a["Yf"], base, a["Uf"], a["Vf"], a["M_new"],
                                     steps=cfg["ft_steps"], lr=cfg["ft_lr"])
        finals[f"{name}_ft_test_loss"] = float(loss[-1, 0])
    total = time.perf_counter() - t0
    return {"seconds": total, "seconds_ml": t_ml, "seconds_sr": t_sr,
            "seconds_ft": total - t_ml - t_sr, **finals}


def run_numpy_statistics(cfg: dict) -> dict:
    """The statistics loop (benchmarks.numpy_statistics) on linmeta's data; draws not timed."""
    from benchmarks import numpy_statistics
    a = numpy_inputs(cfg)
    return numpy_statistics.protocol(a["X"], a["Y"], a["Xf"], a["Yf"], a["U0"], a["Uf"], a["Vf"],
                                     a["M_new"], cfg)


def whole_process(tiny: bool, cache_dir: str, timeout: float = 1800) -> dict:
    """Wall time of ``paper_protocol.py --linmeta-only`` in a new process with the compilation
    cache in ``cache_dir``, and its final losses (last line)."""
    env = {k: v for k, v in os.environ.items() if k != "LINMETA_NO_CACHE"}
    env["LINMETA_CACHE_DIR"] = cache_dir
    cmd = [sys.executable, HERE, "--linmeta-only"] + (["--tiny"] if tiny else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"wall_s": wall, "inner_s": last["seconds"], "final_losses": last["final_losses"],
            "cache_entries": len(os.listdir(cache_dir)) if os.path.isdir(cache_dir) else 0}


def _max_rel(pairs) -> float:
    return max((abs(a - b) / abs(b) if b else abs(a - b)) for a, b in pairs) if pairs else 0.0


def throughput(base: dict, B: int, fraction: float) -> dict:
    """linmeta's configurations per second at T = THROUGHPUT_T with B configurations in one
    compiled batch (run time: a second call of the compiled program)."""
    from linmeta.engine import sweep
    cfgs = _configs(base, (THROUGHPUT_T,), B, fraction)
    res = sweep.run_sweep(cfgs, chunk_size=B)
    compile_s = res[0]["seconds"]["compile"]
    res2 = sweep.run_sweep(cfgs, chunk_size=B)
    run_s = min(res[0]["seconds"]["run"], res2[0]["seconds"]["run"])
    return {"configs": B, "step_fraction": fraction, "compile_s": compile_s, "run_s": run_s,
            "configs_per_s": B / run_s, "configs_per_s_full_length": B / run_s * fraction,
            "config": {k: cfgs[0][k] for k in ("d", "k", "T", "N", "n", "outer_steps",
                                               "inner_steps", "sr_steps", "ft_steps")},
            "finite": all(np.isfinite(r["ml_ft_test_loss"]) for r in res)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny sizes and steps (a smoke test)")
    p.add_argument("--linmeta-only", action="store_true",
                   help="run only linmeta's full T sweep; final losses as JSON on the last line")
    p.add_argument("--stats-runs", type=int, default=None,
                   help="runs per T of the NumPy statistics loop (default: all)")
    p.add_argument("--numpy-runs", type=int, default=1,
                   help="raw-sample NumPy runs measured per T (default 1, extrapolated to all)")
    p.add_argument("--numpy-fraction", type=float, default=1.0,
                   help="fraction of every stage's steps the raw-sample loop runs (default 1)")
    p.add_argument("--throughput-configs", type=int, default=None,
                   help="configurations in the throughput batch (default 1024; tiny 2; 0: skip)")
    p.add_argument("--throughput-fraction", type=float, default=1.0,
                   help="fraction of the steps in the throughput batch (default 1: full)")
    p.add_argument("--out", default=None,
                   help="JSON output (default benchmarks/results/paper_protocol.json; "
                        "tiny: no file unless given)")
    from linmeta.engine import compile_cache
    compile_cache.add_argument(p)
    a = p.parse_args(argv)
    if a.numpy_runs < 1 or not 0 < a.numpy_fraction <= 1 or not 0 < a.throughput_fraction <= 1:
        p.error("--numpy-runs must be >= 1 and --numpy-fraction, --throughput-fraction in (0, 1]")
    compile_cache.enable_from_args(a)  # before anything compiles

    import jax
    jax.config.update("jax_enable_x64", True)
    import linmeta
    from linmeta.engine.results import atomic_write_json

    base, Ts, runs = (TINY, TINY_TS, TINY_RUNS) if a.tiny else (PAPER, TS, RUNS)
    configs = _configs(base, Ts, runs)
    if a.linmeta_only:
        lm = run_linmeta(configs)
        for T, row in lm["per_T"].items():
            print(f"T={T}: compile {row['compile_s']:.1f} s, run {row['run_s']:.2f} s; final "
                  f"test loss Meta-LoRA {np.mean([r['ml_ft_test_loss'] for r in row['runs']]):.3g}"
                  f", SR {np.mean([r['sr_ft_test_loss'] for r in row['runs']]):.3g}")
        print(f"linmeta T sweep: {lm['wall_s']:.2f} s (in process)")
        print(json.dumps({"seconds": lm["wall_s"], "compile_s": lm["compile_s"],
                          "run_s": lm["run_s"], "final_losses": _finals(lm)}))
        return lm

    # 1-2. cold and warm whole processes, one fresh cache folder
    with tempfile.TemporaryDirectory(prefix="linmeta-cache-") as cache:
        print("linmeta whole process, cold (empty compilation cache) ...", flush=True)
        cold = whole_process(a.tiny, cache)
        print(f"  {cold['wall_s']:.2f} s ({cold['cache_entries']} cache entries written); "
              "warm ...", flush=True)
        warm = whole_process(a.tiny, cache)
        print(f"  {warm['wall_s']:.2f} s", flush=True)
        # linmeta in this process, with the same (now filled) cache: the finals of every
        # configuration, per-T compile and run times
        if compile_cache.enabled_dir() is not None:
            compile_cache.enable(cache)
        lm = run_linmeta(configs)
        if compile_cache.enabled_dir() is not None:
            compile_cache.enable_from_args(a)  # back to the user's folder
    finals = _finals(lm)
    lm_by = {(T, r["seed"]): r for T, row in lm["per_T"].items() for r in row["runs"]}
    same_processes = _max_rel([(x[key], y[key]) for fin in (cold["final_losses"],
                                                            warm["final_losses"])
                               for T in finals for x, y in zip(fin[T], finals[T])
                               for key in ("ml_ft_test_loss", "sr_ft_test_loss")])

    # 3. the NumPy statistics loop
    n_stats = runs if a.stats_runs is None else min(max(1, a.stats_runs), runs)
    print(f"NumPy statistics loop, {n_stats} run(s) per T ...", flush=True)
    stats_rows = []
    for cfg in [c for c in configs if c["seed"] < n_stats]:
        s = run_numpy_statistics(cfg)
        ref = lm_by[(cfg["T"], cfg["seed"])]
        stats_rows.append({"T": cfg["T"], "seed": cfg["seed"], "seconds": s["seconds"],
                           "seconds_statistics": s["seconds_statistics"],
                           "ml_numpy": s["ml_ft_test_loss"], "ml_linmeta": ref["ml_ft_test_loss"],
                           "sr_numpy": s["sr_ft_test_loss"],
                           "sr_linmeta": ref["sr_ft_test_loss"]})
    stats_total = sum(r["seconds"] for r in stats_rows) * runs / n_stats
    stats_rel = _max_rel([(r[f"{m}_numpy"], r[f"{m}_linmeta"]) for r in stats_rows
                          for m in ("ml", "sr")])
    tp_T = Ts[0] if a.tiny else THROUGHPUT_T
    stats_T3 = [r["seconds"] for r in stats_rows if r["T"] == tp_T]
    print(f"  {stats_total:.1f} s for all {len(configs)} configurations "
          f"(largest relative difference of the final losses from linmeta's: {stats_rel:.1e})",
          flush=True)

    # 4. the raw-sample NumPy loop
    n_raw = min(a.numpy_runs, runs)
    frac = a.numpy_fraction
    print(f"raw-sample NumPy loop, {n_raw} run(s) per T at {frac:g} of the steps ...",
          flush=True)
    raw_cfgs = _configs(base, Ts, runs, frac, seeds=range(n_raw))
    lm_short = lm if frac == 1 else run_linmeta(raw_cfgs)
    short_by = {(T, r["seed"]): r for T, row in lm_short["per_T"].items() for r in row["runs"]}
    full_by_T = {c["T"]: c for c in configs}
    raw_rows = []
    for T in Ts:
        cfgs_T = [c for c in raw_cfgs if c["T"] == T]
        meas = [run_numpy_raw(c) for c in cfgs_T]
        f, c0 = full_by_T[T], cfgs_T[0]
        per_run = np.mean([m["seconds_ml"] for m in meas]) * f["outer_steps"] / c0["outer_steps"] \
            + np.mean([m["seconds_sr"] for m in meas]) * f["sr_steps"] / c0["sr_steps"] \
            + np.mean([m["seconds_ft"] for m in meas]) * f["ft_steps"] / c0["ft_steps"]
        cmp = [{"seed": c["seed"], "ml_numpy": m["ml_ft_test_loss"],
                "ml_linmeta": short_by[(T, c["seed"])]["ml_ft_test_loss"],
                "sr_numpy": m["sr_ft_test_loss"],
                "sr_linmeta": short_by[(T, c["seed"])]["sr_ft_test_loss"]}
               for m, c in zip(meas, cfgs_T)]
        raw_rows.append({"T": T, "measured_s": sum(m["seconds"] for m in meas),
                         "measured_runs": len(meas), "step_fraction": frac,
                         "extrapolated_s": per_run * runs, "same_data_finals": cmp})
    raw_total = sum(r["extrapolated_s"] for r in raw_rows)
    raw_rel = _max_rel([(c[f"{m}_numpy"], c[f"{m}_linmeta"]) for r in raw_rows
                        for c in r["same_data_finals"] for m in ("ml", "sr")])
    print(f"  {raw_total:.0f} s extrapolated (largest relative difference: {raw_rel:.1e})",
          flush=True)

    # 6. throughput and the flop floor
    from benchmarks import scaling
    B = (2 if a.tiny else 1024) if a.throughput_configs is None else a.throughput_configs
    tp = None
    if B > 0:
        print(f"throughput: {B} configurations at T={tp_T} in one batch ...", flush=True)
        tp = _tiny_throughput(base, tp_T, B) if a.tiny else \
            throughput(base, B, a.throughput_fraction)
        peak = scaling.matmul_flops(jax.numpy.float64, n=256 if a.tiny else 2048,
                                    repeats=2 if a.tiny else 5)["square"]["flops_per_s"]
        full_cfg = _configs(base, (tp["config"]["T"],), 1)[0]
        flops = scaling.flops_per_config(full_cfg)
        stats_cps = 1.0 / float(np.mean(stats_T3))
        tp.update({"matmul_peak_flops_per_s": peak, "flops_per_config": flops,
                   "flop_floor_s_per_config": flops / peak,
                   "fraction_of_flop_floor": tp["configs_per_s_full_length"] * flops / peak,
                   "numpy_statistics_configs_per_s": stats_cps,
                   "speedup_vs_numpy_statistics": tp["configs_per_s_full_length"] / stats_cps})
        print(f"  {tp['configs_per_s_full_length']:.1f} configurations/s (full-length "
              f"equivalent) vs NumPy statistics loop {stats_cps:.2f}/s: "
              f"{tp['speedup_vs_numpy_statistics']:.1f}x; {tp['fraction_of_flop_floor']:.2%} of "
              f"the flop floor", flush=True)

    summary = {
        "benchmark": "paper_protocol", "tiny": a.tiny,
        "protocol": {**base, "T": list(Ts), "runs": runs},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "device": str(jax.devices()[0]), "jax": jax.__version__,
                    "numpy": np.__version__, "linmeta": linmeta.__version__,
                    "dtype": "float64", "load_average": _loadavg()},
        "command_linmeta_only": "python benchmarks/paper_protocol.py --linmeta-only"
                                + (" --tiny" if a.tiny else ""),
        "linmeta_cold_process_s": cold["wall_s"], "linmeta_warm_process_s": warm["wall_s"],
        "linmeta_cold_inner_s": cold["inner_s"], "linmeta_warm_inner_s": warm["inner_s"],
        "cache_entries": cold["cache_entries"],
        "processes_max_rel_diff": same_processes,
        "linmeta_in_process": {"wall_s": lm["wall_s"], "compile_s": lm["compile_s"],
                               "run_s": lm["run_s"],
                               "per_T": {str(T): {k: row[k] for k in ("compile_s", "run_s",
                                                                      "prepare_s")}
                                         for T, row in lm["per_T"].items()}},
        "final_losses": finals,
        "numpy_statistics": {"total_s": stats_total, "runs_per_T": n_stats,
                             "max_rel_diff_vs_linmeta": stats_rel, "rows": stats_rows},
        "numpy_raw": {"extrapolated_s": raw_total, "runs_measured_per_T": n_raw,
                      "step_fraction": frac, "max_rel_diff_vs_linmeta": raw_rel,
                      "extrapolation": "linear in steps per stage, then x runs",
                      "rows": raw_rows},
        "paper_code": {"seconds": PAPER_CODE_SECONDS, "note": PAPER_CODE_NOTE},
        "speedup_warm_vs_numpy_statistics": stats_total / warm["wall_s"],
        "speedup_cold_vs_numpy_statistics": stats_total / cold["wall_s"],
        "speedup_warm_vs_numpy_raw": raw_total / warm["wall_s"],
        "speedup_warm_vs_paper_code": PAPER_CODE_SECONDS / warm["wall_s"],
        "throughput": tp,
    }
    _print_table(summary)
    out = a.out or (None if a.tiny else os.path.join(ROOT, "benchmarks", "results",
                                                     "paper_protocol.json"))
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        atomic_write_json(out, summary)
        print(f"wrote {out}")
    return summary


def _tiny_throughput(base: dict, T: int, B: int) -> dict:
    """The tiny smoke version of :func:`throughput`: the tiny T sweep's own batch (no new
    program)."""
    from linmeta.engine import sweep
    cfgs = _configs(base, (T,), B)
    res = sweep.run_sweep(cfgs)
    run_s = res[0]["seconds"]["run"]
    return {"configs": B, "step_fraction": 1.0, "compile_s": res[0]["seconds"]["compile"],
            "run_s": run_s, "configs_per_s": B / run_s, "configs_per_s_full_length": B / run_s,
            "config": {k: cfgs[0][k] for k in ("d", "k", "T", "N", "n", "outer_steps",
                                               "inner_steps", "sr_steps", "ft_steps")},
            "finite": all(np.isfinite(r["ml_ft_test_loss"]) for r in res)}


def _loadavg():
    try:
        return list(os.getloadavg())
    except OSError:  # pragma: no cover
        return None


def _fmt_s(x):
    return f"{x:.2f}" if x < 10 else (f"{x:.1f}" if x < 100 else f"{x:.0f}")


def _print_table(s: dict) -> None:
    nr, ns = s["numpy_raw"], s["numpy_statistics"]
    n_cfg = len(s["protocol"]["T"]) * s["protocol"]["runs"]
    print(f"\nPaper protocol, T sweep ({n_cfg} configurations), float64, "
          f"{s['machine']['device']} ({s['machine']['cpus']} cores; load average "
          f"{s['machine']['load_average']})")
    rows = [
        ("linmeta, whole process, warm cache", s["linmeta_warm_process_s"], "measured"),
        ("linmeta, whole process, cold (empty cache)", s["linmeta_cold_process_s"], "measured"),
        ("NumPy loop over sufficient statistics", ns["total_s"],
         "measured" if ns["runs_per_T"] == s["protocol"]["runs"] else
         f"{ns['runs_per_T']} run(s)/T, x runs"),
        ("NumPy loop over raw samples (linmeta.reference)", nr["extrapolated_s"],
         f"{nr['runs_measured_per_T']} run(s)/T at {nr['step_fraction']:g} of the steps, "
         "extrapolated"),
        ("the paper's code", s["paper_code"]["seconds"], "quoted (measured earlier)"),
    ]
    warm = s["linmeta_warm_process_s"]
    print(f"{'':48} | {'seconds':>8} | {'vs linmeta warm':>15} | how")
    for name, sec, how in rows:
        print(f"{name:48} | {_fmt_s(sec):>8} | {sec / warm:>14.1f}x | {how}")
    print(f"HEADLINE: linmeta warm {_fmt_s(warm)} s / cold {_fmt_s(s['linmeta_cold_process_s'])} s"
          f" vs the NumPy statistics loop {_fmt_s(ns['total_s'])} s "
          f"({s['speedup_warm_vs_numpy_statistics']:.1f}x warm, "
          f"{s['speedup_cold_vs_numpy_statistics']:.1f}x cold)")
    print(f"same final losses: statistics loop vs linmeta {ns['max_rel_diff_vs_linmeta']:.1e}, "
          f"raw loop vs linmeta {nr['max_rel_diff_vs_linmeta']:.1e}, cold/warm processes vs "
          f"in process {s['processes_max_rel_diff']:.1e} (largest relative differences)")
    lm = s["linmeta_in_process"]
    print(f"linmeta in process: {lm['wall_s']:.2f} s (compile {lm['compile_s']:.1f} s in two "
          f"background threads, run {lm['run_s']:.2f} s)")
    tp = s["throughput"]
    if tp:
        print(f"THROUGHPUT ({tp['configs']} configurations, {tp['config']}, "
              f"{tp['step_fraction']:g} of the steps): {tp['configs_per_s_full_length']:.1f} "
              f"configurations/s (full length) vs NumPy statistics loop "
              f"{tp['numpy_statistics_configs_per_s']:.2f}/s = "
              f"{tp['speedup_vs_numpy_statistics']:.1f}x; flop floor "
              f"{tp['flop_floor_s_per_config'] * 1e3:.2f} ms/configuration at "
              f"{tp['matmul_peak_flops_per_s'] / 1e9:.0f} GFLOP/s, reached "
              f"{tp['fraction_of_flop_floor']:.2%}")


if __name__ == "__main__":
    main()
