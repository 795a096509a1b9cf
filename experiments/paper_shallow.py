"""The paper's shallow-network experiment, T sweep and d sweep (docs/theory.md#protocol;
:mod:`linmeta.shallow`).

Task t: ``y = c*^T sigmoid((A* + U*_t U*_t^T) x) + eps``. Meta-LoRA retraining (shared ``A, c`` plus
one low-rank adapter per task) against standard retraining (one ``A, c``), both with full-batch AdamW
(lr 1e-3, weight decay 0.01); then a rank-k LoRA adapter (and rank 3k at T = 2) is fine-tuned on an
unseen task with the base frozen. Plotted: the paper's test task loss (MSE against the noiseless
targets of the n fine-tuning inputs) per fine-tuning epoch, median over trials with the paper's
central range as a band, one panel per T (or d); below, the retraining loss.

Two sweeps, as in the paper's code: T in {2, 3, 5, 10} at d = 10 (``shallow/run_vary_T.py``) and
d in {5, 10, 20} at T = 3 (``shallow/run.py``). The (d = 10, T = 3) run is one run shared by both
sweeps (the paper runs it twice with other draws).

The paper's statistic (``shallow/make_plot.py``): the median over the 10 trials of the final test
loss and its "central range", the 4th and 8th of the 10 sorted values (indices 3 and -3);
:func:`central_range` generalises the indices to other trial counts.

Settings: ``tiny`` (seconds, for the tests), ``quick`` (under a minute; shorter runs, so lr 3e-3
instead of 1e-3, N = 250, 3 trials; stated on the figure) and ``full``: the paper's protocol (k = 1,
N = 1000, n = 100, sigma = 0.1, AdamW lr 1e-3 with weight decay 0.01, 10 trials, 40000 retraining
and 15000 fine-tuning epochs, float32) for every T and d of both sweeps.

Run: ``python -m experiments.paper_shallow --setting full --out figures --json
figures/paper_shallow_full.json`` writes ``figures/paper_shallow_vary_T_full.png``,
``figures/paper_shallow_vary_d_full.png`` (and ``.pdf``) and the numbers.
"""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

import jax
import numpy as np

from linmeta.families.paper import shallow
from linmeta.core.files import atomic_write_bytes
from linmeta.engine.claim_support import experiment_args, experiment_parser

PAPER = dict(d=10, k=1, Ts=(2, 3, 5, 10), ds=(5, 10, 20), T_of_d_sweep=3, N=1000, n=100,
             noise_std=0.1, lr=1e-3, weight_decay=0.01, n_trials=10, retrain_steps=40000,
             finetune_steps=15000, dtype="float32")

SETTINGS = {
    "tiny": dict(PAPER, d=4, Ts=(2, 3), ds=(3, 4), N=64, n=16, n_trials=2, retrain_steps=200,
                 finetune_steps=100, record_every=10),
    "quick": dict(PAPER, Ts=(2, 3, 5), ds=(5, 10), N=250, n_trials=3, lr=3e-3,
                  retrain_steps=4000, finetune_steps=3000, record_every=50),
    "full": dict(PAPER, record_every=100),
}
SWEEPS = ("T", "d")


def central_range(x, axis=0):
    """The paper's central range of trials (``shallow/make_plot.py``): with the values sorted along
    ``axis``, the ones at indices ``floor(3 n / 10)`` and ``n - 1 - floor(2 n / 10)`` (3 and 7, i.e.
    ``[3]`` and ``[-3]``, for n = 10 trials). Returns ``(low, median, high)``."""
    x = np.sort(np.asarray(x, dtype=float), axis=axis)
    n = x.shape[axis]
    lo, hi = (3 * n) // 10, n - 1 - (2 * n) // 10
    return (np.take(x, lo, axis=axis), np.median(x, axis=axis), np.take(x, hi, axis=axis))


def _cell(res, T, *, label) -> tuple[dict, list[dict]]:
    """Arrays of one (T, d) cell and its summary rows."""
    ranks = [int(r) for r in res.ranks]
    res = jax.tree.map(np.asarray, res)
    entry = {"ranks": ranks, "retrain_step": res.retrain_step,
             "finetune_step": res.finetune_step}
    rows = []
    for name, m in (("meta_lora", res.meta_lora), ("sr", res.sr)):
        entry[name] = {"test_loss": m.test_loss, "finetune_loss": m.finetune_loss,
                       "retrain_loss": m.retrain_loss, "base_error": m.base_error}
        for j, r in enumerate(ranks):
            final = m.test_loss[:, j, -1]
            lo, med, hi = central_range(final)
            rows.append(dict(label, rank=r, method=name, final_test_loss_median=float(med),
                             final_test_loss_central_low=float(lo),
                             final_test_loss_central_high=float(hi),
                             final_test_loss_q25=float(np.quantile(final, 0.25)),
                             final_test_loss_q75=float(np.quantile(final, 0.75)),
                             final_retrain_loss_median=float(np.median(m.retrain_loss[:, -1]) / T)))
    return entry, rows


def run(setting: str = "full", seed: int = 0, retrain_adapter: str = "asymmetric",
        Ts=None, ds=None, sweeps=SWEEPS) -> dict:
    """Numbers only (no figure): one vmapped batch of trials per T of the T sweep (at the setting's
    d) and per d of the d sweep (at T = ``T_of_d_sweep``); ``Ts`` / ``ds`` override the setting's
    values, ``sweeps`` picks the sweeps. A (d, T) cell both sweeps name is run once."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {', '.join(SETTINGS)}; got {setting!r}")
    sweeps = tuple(sweeps)
    if not sweeps or any(w not in SWEEPS for w in sweeps):
        raise ValueError(f"sweeps must name some of {', '.join(SWEEPS)}; got {sweeps!r}")
    cfg = dict(SETTINGS[setting])
    Ts = tuple(cfg.pop("Ts") if Ts is None else Ts)
    ds = tuple(cfg.pop("ds") if ds is None else ds)
    cfg.pop("Ts", None), cfg.pop("ds", None)
    T_d = cfg.pop("T_of_d_sweep")
    if not Ts or any(int(T) != T or T < 1 for T in Ts):
        raise ValueError(f"Ts must be task counts >= 1, got {Ts!r}")
    if not ds or any(int(d) != d or d < cfg["k"] for d in ds):
        raise ValueError(f"ds must be dimensions >= k = {cfg['k']}, got {ds!r}")
    key = jax.random.key(seed)
    out = {"setting": setting, "seed": seed, "retrain_adapter": retrain_adapter,
           "config": dict(cfg, Ts=list(Ts), ds=list(ds), T_of_d_sweep=T_d),
           "paper": dict(PAPER, Ts=list(PAPER["Ts"]), ds=list(PAPER["ds"])),
           "per_T": {}, "per_d": {}, "rows": [], "rows_d": [], "cell_seconds": {}}
    cells = {}
    if "T" in sweeps:
        cells.update({(cfg["d"], T): None for T in Ts})
    if "d" in sweeps:
        cells.update({(d, T_d): None for d in ds})
    t0 = time.perf_counter()
    for d, T in cells:
        t1 = time.perf_counter()
        # the T sweep's keys are those of the T-only script (fold_in T); other d fold in d too
        cell_key = jax.random.fold_in(key, T)
        if d != cfg["d"]:
            cell_key = jax.random.fold_in(cell_key, 1000 + d)
        # blocked on: JAX dispatches asynchronously, and each cell's time must be its own
        res = jax.block_until_ready(shallow.run_trials(cell_key, **dict(cfg, d=d, T=T),
                                                       retrain_adapter=retrain_adapter))
        cells[d, T] = (res, time.perf_counter() - t1)
        out["cell_seconds"][f"d={d},T={T}"] = cells[d, T][1]
    if "T" in sweeps:
        for T in Ts:
            res, sec = cells[cfg["d"], T]
            entry, rows = _cell(res, T, label={"T": T, "d": cfg["d"]})
            out["per_T"][T] = dict(entry, seconds=sec)
            out["rows"] += rows
    if "d" in sweeps:
        for d in ds:
            res, sec = cells[d, T_d]
            entry, rows = _cell(res, T_d, label={"T": T_d, "d": d})
            out["per_d"][d] = dict(entry, seconds=sec)
            out["rows_d"] += rows
    out["seconds"] = time.perf_counter() - t0
    return out


def _ordinal(i: int) -> str:
    return f"{i}{'th' if 10 <= i % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(i % 10, 'th')}"


def _save(fig, out_dir: Path, stem: str) -> list[str]:
    paths = []
    for fmt in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=150, bbox_inches="tight")
        path = out_dir / f"{stem}.{fmt}"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(str(path))
    return paths


def plot(result: dict, out_dir="figures") -> list[str]:
    """Write ``paper_shallow_vary_T_<setting>`` and ``paper_shallow_vary_d_<setting>`` (``.png``,
    ``.pdf``), one per sweep run: test loss during fine-tuning (top row) and the retraining loss
    per task (bottom row), one column per T (or d), median with the paper's central range."""
    import matplotlib  # deferred: plotting is optional for the numbers

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = result["config"]
    paths = []
    for sweep, per in (("T", result["per_T"]), ("d", result["per_d"])):
        if not per:
            continue
        values = sorted(per)
        fig, axes = plt.subplots(2, len(values), figsize=(3.4 * len(values) + 0.6, 6.4),
                                 squeeze=False, sharey="row",
                                 gridspec_kw={"height_ratios": [1.6, 1.0]})
        colors = {"meta_lora": "tab:blue", "sr": "tab:red"}
        labels = {"meta_lora": "Meta-LoRA", "sr": "SR"}
        for col, v in enumerate(values):
            e = per[v]
            T = v if sweep == "T" else cfg["T_of_d_sweep"]
            ax = axes[0, col]
            for name in ("meta_lora", "sr"):
                for j, r in enumerate(e["ranks"]):
                    lo, med, hi = central_range(e[name]["test_loss"][:, j])
                    ls = "-" if j == 0 else "--"
                    ax.semilogy(e["finetune_step"], med, ls, color=colors[name],
                                label=f"{labels[name]}, rank {r}")
                    ax.fill_between(e["finetune_step"], lo, hi, color=colors[name],
                                    alpha=0.18, lw=0)
            ax.set_title(f"T = {v}, d = {cfg['d']}" if sweep == "T"
                         else f"d = {v}, T = {T}")
            ax.set_xlabel("fine-tuning epoch")
            ax.grid(True, which="major", alpha=0.4)
            ax.legend(fontsize=7, loc="upper right")
            ax2 = axes[1, col]
            for name in ("meta_lora", "sr"):
                lo, med, hi = central_range(e[name]["retrain_loss"] / T)
                ax2.semilogy(e["retrain_step"], med, color=colors[name], label=labels[name])
                ax2.fill_between(e["retrain_step"], lo, hi, color=colors[name], alpha=0.18,
                                 lw=0)
            ax2.axhline(cfg["noise_std"] ** 2, color="0.4", lw=0.8, ls=":",
                        label="noise variance")
            ax2.set_xlabel("retraining epoch")
            ax2.grid(True, which="major", alpha=0.4)
            if col == 0:
                ax2.legend(fontsize=7)
        axes[0, 0].set_ylabel("test task loss (MSE vs noiseless)")
        axes[1, 0].set_ylabel("retraining loss per task")
        paper = result["paper"]
        reduced = [f"{key} {cfg[key]} (paper {paper[key]})" for key in
                   ("retrain_steps", "finetune_steps", "n_trials", "N", "n", "lr", "dtype")
                   + (("d",) if sweep == "T" else ())
                   if cfg[key] != paper[key]]
        swept = "Ts" if sweep == "T" else "ds"
        if cfg[swept] != paper[swept]:
            reduced.append(f"{sweep} in {cfg[swept]} (paper {paper[swept]})")
        adapter = ("asymmetric B C^T (paper's code)" if result["retrain_adapter"] == "asymmetric"
                   else "symmetric U U^T (paper's text)")
        fixed = f"d={cfg['d']}" if sweep == "T" else f"T={cfg['T_of_d_sweep']}"
        n_tr = cfg["n_trials"]
        lo_i, hi_i = (3 * n_tr) // 10 + 1, n_tr - (2 * n_tr) // 10
        seconds = sum(per[v]["seconds"] for v in values)
        note = (f"y = c^T sigmoid((A* + U_t U_t^T) x) + eps, {fixed}, k={cfg['k']}, N={cfg['N']}, "
                f"n={cfg['n']}, noise std {cfg['noise_std']}; AdamW lr {cfg['lr']}, weight decay "
                f"{cfg['weight_decay']}; {cfg['retrain_steps']} retraining / "
                f"{cfg['finetune_steps']} fine-tuning epochs; {cfg['dtype']}; retraining adapters "
                f"{adapter}; median over {n_tr} trials, band: the paper's central range "
                f"({_ordinal(lo_i)} to {_ordinal(hi_i)} of {n_tr} sorted values); '{result['setting']}' setting, "
                f"{seconds:.0f} s on 2 shared CPU cores.")
        if reduced:
            note += "\nDeparts from the paper's protocol: " + "; ".join(reduced) + "."
        fig.suptitle(f"Shallow network (paper section 6), {sweep} sweep, '{result['setting']}' "
                     "setting: LoRA fine-tuning on an unseen task after Meta-LoRA vs standard "
                     "retraining", fontsize=10)
        fig.text(0.01, -0.01, note, fontsize=7, va="top", wrap=True)
        fig.tight_layout()
        paths += _save(fig, out_dir, f"paper_shallow_vary_{sweep}_{result['setting']}")
        plt.close(fig)
    return paths


def main(setting: str = "full", out_dir="results/experiments", seed: int = 0,
         retrain_adapter: str = "asymmetric", Ts=None, ds=None, sweeps=SWEEPS) -> dict:
    """Run the sweeps, write the figures, return a summary dict (rows of final test losses)."""
    result = run(setting, seed, retrain_adapter, Ts, ds, sweeps)
    result["figures"] = plot(result, out_dir)
    return result


JSON_KEYS = ("setting", "seed", "retrain_adapter", "config", "paper", "rows", "rows_d",
             "cell_seconds", "seconds")


def _print(summary: dict) -> None:
    print(f"paper_shallow ({summary['setting']}, retraining adapters "
          f"{summary['retrain_adapter']}): {summary['seconds']:.1f} s")
    print(f"{'T':>3} {'d':>3} {'rank':>4} {'method':>9} {'final test loss median [central range]':>40}"
          f" {'retrain loss/task':>18}")
    for r in summary["rows"] + summary["rows_d"]:
        print(f"{r['T']:>3} {r['d']:>3} {r['rank']:>4} {r['method']:>9} "
              f"{r['final_test_loss_median']:>12.4g} [{r['final_test_loss_central_low']:.3g}, "
              f"{r['final_test_loss_central_high']:.3g}]{r['final_retrain_loss_median']:>18.4g}")
    print("figures:", ", ".join(summary["figures"]))


def build_parser():
    """The command line (:func:`linmeta.engine.claim_support.experiment_parser`)."""
    parser = experiment_parser(__doc__, prog="python -m experiments.paper_shallow",
                               settings=tuple(SETTINGS))
    parser.add_argument("--retrain-adapter", choices=shallow.RETRAIN_ADAPTERS,
                        default="asymmetric")
    parser.add_argument("--Ts", type=int, nargs="+", help="task counts (default: the setting's)")
    parser.add_argument("--ds", type=int, nargs="+", help="dimensions (default: the setting's)")
    parser.add_argument("--sweeps", nargs="+", choices=SWEEPS, default=list(SWEEPS))
    parser.add_argument("--json", help="also write the summary rows to this JSON file")
    return parser


if __name__ == "__main__":
    args = experiment_args(build_parser())
    s = main(args.setting, args.out, args.seed, args.retrain_adapter, args.Ts, args.ds,
             args.sweeps)
    _print(s)
    if args.json:
        atomic_write_bytes(args.json, json.dumps({k: s[k] for k in JSON_KEYS},
                                                 indent=1).encode())
