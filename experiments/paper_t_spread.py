"""Where the spread of Meta-LoRA's fine-tuning loss at T = 2 comes from (the paper's T panel).

The official code and linmeta's clean protocol give the same Meta-LoRA numbers at T = 3 and 5,
but at T = 2 (rank-3k fine-tuning, claim C4) the 5-run ranges differ (official 0.0136
[0.0048, 0.046], linmeta 0.045 [0.0064, 0.11]). The two protocols differ there only in the
fine-tuning start of the Meta-LoRA base (``paper_code``: one draw per truth, reused by every run;
``paper``: one draw per run), so this script measures, at the paper's settings:

A. >= 50 runs per T in {2, 3, 5} in both protocols (final paper test loss after 10000
   fine-tuning steps): distributions, and how the official 5-run numbers sit in them.
B. At T = 2, runs that separate the causes:
   1. start only: one run's data and Meta-LoRA base, fine-tuned from 50 different starts;
   2. base only: ``paper_code`` (fixed start, 50 runs' bases) -- from A;
   3. converged fine-tuning: the exact rank-3k optimum (``linmeta.reduced_rank_fit``) of each
      run's base on its own fine-tuning data, and 10x longer gradient descent;
   4. converged retraining: 10x more Meta-LoRA outer iterations;
   5. other truths: 10 ground truths x 20 runs, both protocols.

Run: ``python -m experiments.paper_t_spread --setting full --out figures`` writes
``figures/paper_t_spread.json`` and ``figures/paper_t_spread.png/.pdf``. Settings: ``full``,
``quick`` (fewer runs and steps), ``tiny`` (a smoke test for the test suite).
"""
from __future__ import annotations

import functools
import io
import time
from pathlib import Path

import numpy as np

from linmeta.engine.claim_support import experiment_args, experiment_parser

OFFICIAL = {  # the official code, 5 runs per T, final Meta-LoRA test loss: mean [min, max]
    2: (0.0136, 0.0048, 0.046), 3: (0.0022, 0.0019, 0.0026), 5: (0.0023, 0.0017, 0.0031)}
BASE = dict(d=10, k=1, N=5000, n=100, noise_std=0.01, outer_steps=3000, inner_steps=10,
            lr_adapter=0.003, lr_base=0.03, sr_steps=3000, sr_lr=0.03, ft_steps=10000,
            ft_lr=0.005, init_scale=0.1, record_every=100, truth_seed=0)
SETTINGS = {
    "full": dict(runs=50, Ts=(2, 3, 5), base={}, starts=50, truths=10, truth_runs=20,
                 longer=10),
    "quick": dict(runs=20, Ts=(2, 3, 5), base=dict(outer_steps=1000, ft_steps=3000),
                  starts=20, truths=4, truth_runs=10, longer=5),
    # tiny: a smoke test. The shapes of experiments.paper_linear's tiny T panel (compiled
    # programs are shared within a process); factor 1 and one truth: part B reuses part A's runs
    "tiny": dict(runs=2, Ts=(2, 3), base=dict(d=6, N=200, n=50, outer_steps=20, inner_steps=3,
                                              sr_steps=20, ft_steps=50, record_every=5),
                 starts=2, truths=1, truth_runs=2, longer=1),
}


def _summary(x) -> dict:
    x = np.asarray(x, float)
    q = np.quantile(x, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"runs": int(x.size), "mean": float(x.mean()), "min": float(x.min()),
            "max": float(x.max()), "q05": float(q[0]), "q25": float(q[1]), "median": float(q[2]),
            "q75": float(q[3]), "q95": float(q[4]),
            "log10_std": float(np.std(np.log10(x))) if x.size > 1 else 0.0}


def _five_run(x, official) -> dict:
    """Where a 5-run experiment's mean and range fall: all disjoint groups of 5 runs, and the
    fraction of 5-run means at or below the official mean."""
    x = np.asarray(x, float)
    groups = x[: (x.size // 5) * 5].reshape(-1, 5)
    means = groups.mean(1)
    rng = np.random.default_rng(0)
    boot = rng.choice(x, size=(20000, 5)).mean(1)
    return {"groups_of_5": int(groups.shape[0]),
            "group_means": [float(v) for v in means],
            "group_min": [float(v) for v in groups.min(1)],
            "group_max": [float(v) for v in groups.max(1)],
            "bootstrap_5_run_mean_q05_q50_q95": [float(v) for v in np.quantile(boot,
                                                                               [0.05, 0.5,
                                                                                0.95])],
            "fraction_5_run_means_at_or_below_official": float(np.mean(boot <= official[0])),
            "fraction_runs_within_official_range": float(np.mean((x >= official[1])
                                                                 & (x <= official[2])))}


def _mann_whitney(a, b) -> dict:
    """Two-sided Mann-Whitney U test (normal approximation) of two samples."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    allv = np.concatenate([a, b])
    ranks = np.argsort(np.argsort(allv)) + 1.0
    U = ranks[: a.size].sum() - a.size * (a.size + 1) / 2
    mu, sd = a.size * b.size / 2, np.sqrt(a.size * b.size * (a.size + b.size + 1) / 12)
    z = (U - mu) / sd
    from math import erfc, sqrt
    return {"U": float(U), "z": float(z), "p_two_sided": float(erfc(abs(z) / sqrt(2)))}


@functools.lru_cache(maxsize=None)
def _decomposition_program(shape, ft_steps: int):
    """jit(vmap): for (seed, start key, use own start): the Meta-LoRA base of run ``seed``, its
    fine-tuning by gradient descent from the given start, and the exact rank-r optimum."""
    import jax
    import jax.numpy as jnp

    import linmeta
    from linmeta.core import losses
    from linmeta.families.paper import protocol as paper

    def one(truth, seed, start_key, own, hyper):
        keys = paper.run_keys(seed)
        dt = truth.A_star.dtype
        st, fs = paper.raw_statistics_pair(keys.retrain, truth.M_star, shape.N, keys.finetune,
                                           truth.M_new, shape.n, hyper.noise_std)
        U0, Uf, Vf = paper.initial_factors(keys, shape, hyper.init_scale, dt)
        B = paper.ols_solution(st, shape.N)
        A, _, _ = paper.meta_lora_alternating(st, U0, hyper.lr_adapter, hyper.lr_base,
                                              outer_steps=shape.outer_steps,
                                              inner_steps=shape.inner_steps,
                                              record_every=shape.outer_steps or 1, B=B)
        ks = jax.random.split(start_key)
        Us = hyper.init_scale * jax.random.normal(ks[0], Uf.shape, dt)
        Vs = hyper.init_scale * jax.random.normal(ks[1], Vf.shape, dt)
        U_start, V_start = jnp.where(own, Uf, Us), jnp.where(own, Vf, Vs)
        (U, V), _ = paper.finetune_both(A[None, None], fs, U_start[None], V_start[None],
                                        hyper.ft_lr, steps=ft_steps, record_every=ft_steps)
        gd = jnp.mean(losses.paper_test_loss(A + U[0] @ jnp.swapaxes(V[0], -1, -2), fs))
        Ue, Ve = linmeta.reduced_rank_fit(A, fs, shape.ft_rank)
        exact = jnp.mean(losses.paper_test_loss(A + Ue @ jnp.swapaxes(Ve, -1, -2), fs))
        return gd, exact, linmeta.metrics.base_error(A, truth.A_star, relative=True)

    return jax.jit(jax.vmap(one, in_axes=(None, 0, 0, 0, None)))


def decomposition(cfg: dict, seeds, start_seeds, own) -> dict:
    """Runs of :func:`_decomposition_program` for a validated paper configuration."""
    import jax
    import jax.numpy as jnp

    from linmeta.families.paper import protocol as paper
    from linmeta.engine import protocols, sweep

    shape = paper.paper_shape(cfg)
    truth = sweep.truth_for(cfg)
    hyper = paper.Hyper(*(jnp.asarray(cfg[k]) for k in ("noise_std", "lr_adapter", "lr_base",
                                                         "sr_lr", "ft_lr", "init_scale")))
    keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), 0xC0DE))(
        jnp.asarray(start_seeds))
    gd, exact, base = _decomposition_program(shape, cfg["ft_steps"])(
        truth, jnp.asarray(seeds), keys, jnp.asarray(own), hyper)
    return {"gd": np.asarray(gd), "exact": np.asarray(exact), "base_rel_error": np.asarray(base)}


def main(setting: str = "full", out_dir: str = "figures", seed: int = 0) -> dict:
    """Run studies A and B (module docstring); write the JSON summary and the figure; return
    the summary. ``seed``: the first run seed (runs use seed, seed + 1, ...)."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {', '.join(SETTINGS)}; got {setting!r}")
    import jax

    from linmeta.engine import sweep
    from linmeta.engine.results import atomic_write_json

    s = SETTINGS[setting]
    base = dict(BASE, **s["base"])
    runs = list(range(seed, seed + s["runs"]))
    t0 = time.perf_counter()
    out: dict = {"setting": setting, "base": base, "official_5_runs": {
        str(T): dict(zip(("mean", "min", "max"), v)) for T, v in OFFICIAL.items()}}

    # A. both protocols, every T
    done: dict = {}

    def run(cs):  # run_sweep, reusing the runs already done (same configuration id)
        todo = [c for c in cs if sweep.config_id(c) not in done]
        for c, r in zip(todo, sweep.run_sweep(todo) if todo else []):
            done[sweep.config_id(c)] = r
        return [done[sweep.config_id(c)] for c in cs]

    cfgs = [sweep.validate_config(dict(base, T=T, seed=r, protocol=p))
            for p in ("paper", "paper_code") for T in s["Ts"] for r in runs]
    res = run(cfgs)
    finals: dict = {}
    for c, r in zip(cfgs, res):
        finals.setdefault(c["protocol"], {}).setdefault(c["T"], {"ml": [], "sr": []})
        finals[c["protocol"]][c["T"]]["ml"].append(r["ml_ft_test_loss"])
        finals[c["protocol"]][c["T"]]["sr"].append(r["sr_ft_test_loss"])
    out["A"] = {p: {str(T): {"ml": _summary(v["ml"]), "sr": _summary(v["sr"]),
                             "ml_vs_official": _five_run(v["ml"], OFFICIAL[T]),
                             "ml_values": [float(x) for x in v["ml"]]}
                    for T, v in by_T.items()} for p, by_T in finals.items()}
    T2 = {p: finals[p][2]["ml"] for p in finals}
    out["A"]["T2_ml_clean_vs_paper_code"] = _mann_whitney(np.log(T2["paper"]),
                                                          np.log(T2["paper_code"]))

    # B. at T = 2
    c2 = sweep.validate_config(dict(base, T=2, seed=seed))
    one = decomposition(c2, [seed] * s["starts"], list(range(s["starts"])),
                        [False] * s["starts"])
    own = decomposition(c2, runs, runs, [True] * len(runs))
    longer = dict(base, T=2, ft_steps=base["ft_steps"] * s["longer"])
    more_outer = dict(base, T=2, outer_steps=base["outer_steps"] * s["longer"])
    cl = [sweep.validate_config(dict(longer, seed=r, protocol=p))
          for p in ("paper", "paper_code") for r in runs]
    cm = [sweep.validate_config(dict(more_outer, seed=r, protocol=p))
          for p in ("paper", "paper_code") for r in runs]
    ct = [sweep.validate_config(dict(base, T=2, truth_seed=t, seed=r, protocol=p))
          for p in ("paper", "paper_code") for t in range(s["truths"])
          for r in range(seed, seed + s["truth_runs"])]
    rl, rm, rt = (run(x) for x in (cl, cm, ct))

    def ml(cs, rs, p):
        return [r["ml_ft_test_loss"] for c, r in zip(cs, rs) if c["protocol"] == p]

    out["B"] = {
        "start_only_one_base": {**_summary(one["gd"]),
                                "base_rel_error": float(one["base_rel_error"][0]),
                                "exact_optimum": float(one["exact"][0])},
        "base_only_paper_code": _summary(T2["paper_code"]),
        "exact_fine_tuning_optimum": _summary(own["exact"]),
        "gd_fine_tuning_own_start_recomputed": _summary(own["gd"]),
        "gd_over_exact_ratio": _summary(own["gd"] / own["exact"]),
        "ml_base_rel_error": _summary(own["base_rel_error"]),
        "corr_log_gd_log_base_error": float(np.corrcoef(np.log(own["gd"]),
                                                        np.log(own["base_rel_error"]))[0, 1]),
        f"ft_steps_x{s['longer']}": {p: _summary(ml(cl, rl, p)) for p in ("paper", "paper_code")},
        f"outer_steps_x{s['longer']}": {p: _summary(ml(cm, rm, p))
                                        for p in ("paper", "paper_code")},
        "truths": {p: {str(t): _summary([r["ml_ft_test_loss"] for c, r in zip(ct, rt)
                                         if c["protocol"] == p and c["truth_seed"] == t])
                       for t in range(s["truths"])} for p in ("paper", "paper_code")},
    }
    out["B"]["truths_pooled"] = {p: _summary(ml(ct, rt, p)) for p in ("paper", "paper_code")}
    from linmeta.core import theory
    out["theory_ft_floor"] = {  # sigma^2 dof of the fine-tuning adapter (C6), paper test loss
        str(T): theory.predicted_finetune_error(base["d"], c["ft_rank"], 1, base["noise_std"])
        for T, c in ((T, sweep.validate_config(dict(base, T=T))) for T in s["Ts"])}
    out["B"]["truths_pooled_vs_official"] = {p: _five_run(ml(ct, rt, p), OFFICIAL[2])
                                             for p in ("paper", "paper_code")}
    out["longer_factor"] = s["longer"]
    out["seconds"] = time.perf_counter() - t0
    out["dtype"] = str(np.dtype(jax.numpy.asarray(0.0).dtype))
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "paper_t_spread.json", out)
    longer_ml = ml(cl, rl, "paper")
    out["files"] = [str(folder / "paper_t_spread.json")] + plot(out, finals, one, own, longer_ml,
                                                                folder, setting)
    _print(out)
    return out


def plot(out: dict, finals: dict, one: dict, own: dict, longer: list, folder: Path,
         setting: str) -> list:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from linmeta.engine.results import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(9.0, 5.0))
    steps = out["base"]["ft_steps"]
    rows = [("clean: per-run start", finals["paper"][2]["ml"]),
            ("paper_code: start fixed per truth", finals["paper_code"][2]["ml"]),
            ("one run's base, many starts", one["gd"]),
            (f"clean, {steps * out['longer_factor']} fine-tuning steps", longer),
            ("exact rank-3k optimum (converged)", own["exact"])]
    for i, (label, vals) in enumerate(rows):
        y = np.full(len(vals), i) + np.random.default_rng(i).uniform(-0.15, 0.15, len(vals))
        ax.scatter(vals, y, s=12, alpha=0.6)
    lo, hi = OFFICIAL[2][1], OFFICIAL[2][2]
    ax.axvspan(lo, hi, color="0.85", zorder=0, label="official code, 5 runs: range")
    ax.axvline(OFFICIAL[2][0], color="0.4", ls="--", label="official code, 5 runs: mean")
    ax.axvline(out["theory_ft_floor"]["2"], color="C3", ls=":",
               label="noise floor $\\sigma^2$ dof (C6, rank 3)")
    ax.set_xscale("log")
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.set_xlabel("Meta-LoRA final test task loss at T = 2 (after fine-tuning)")
    ax.set_title(f"T = 2: Meta-LoRA test loss after {steps} fine-tuning steps, one dot per run "
                 f"({setting} setting)", fontsize=10)
    ax.legend(fontsize=8, loc="upper right", framealpha=0.95)
    ax.grid(True, which="both", axis="x", alpha=0.3)
    fig.tight_layout()
    paths = []
    for fmt in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=60 if setting == "tiny" else 150)
        path = folder / f"paper_t_spread.{fmt}"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(str(path))
    plt.close(fig)
    return paths


def _print(out: dict) -> None:
    for p in ("paper", "paper_code"):
        for T, v in out["A"][p].items():
            m = v["ml"]
            print(f"{p:>10} T={T}: Meta-LoRA mean {m['mean']:.3g} median {m['median']:.3g} "
                  f"[{m['min']:.2g}, {m['max']:.2g}] (5-95%: {m['q05']:.2g}-{m['q95']:.2g}); "
                  f"SR mean {v['sr']['mean']:.3g}", flush=True)
    for key, v in out["B"].items():
        if isinstance(v, dict) and "mean" in v:
            print(f"B {key}: mean {v['mean']:.3g} median {v['median']:.3g} "
                  f"[{v['min']:.2g}, {v['max']:.2g}]")
    print(f"total {out['seconds']:.1f} s")


def build_parser():
    """The command line (:func:`linmeta.engine.claim_support.experiment_parser`)."""
    return experiment_parser(__doc__, prog="python -m experiments.paper_t_spread",
                             settings=tuple(SETTINGS))


def _cli(argv=None):
    a = experiment_args(build_parser(), argv)
    import jax
    jax.config.update("jax_enable_x64", True)
    main(a.setting, a.out, a.seed)


if __name__ == "__main__":
    _cli()
