"""The paper's shallow-network experiment, T sweep (docs/theory.md#protocol;
:mod:`linmeta.shallow`).

Task t: ``y = c*^T sigmoid((A* + U*_t U*_t^T) x) + eps``. Meta-LoRA retraining (shared ``A, c`` plus
one low-rank adapter per task) against standard retraining (one ``A, c``), both with full-batch AdamW
(lr 1e-3, weight decay 0.01); then a rank-k LoRA adapter (and rank 3k at T = 2) is fine-tuned on an
unseen task with the base frozen. Plotted: the paper's test task loss (MSE against the noiseless
targets of the n fine-tuning inputs) per fine-tuning epoch, median over trials with the 25-75 %
band, one panel per T; below, the retraining loss.

Settings: ``tiny`` (seconds, for the tests), ``quick`` (< ~30 s; shorter runs, so lr 3e-3 instead
of 1e-3, N = 250, 3 trials; stated on the figure) and ``full``: the paper's protocol
from ``shallow/run_vary_T.py`` (d = 10, k = 1, N = 1000, n = 100, sigma = 0.1, 10 trials, 40000
retraining and 15000 fine-tuning epochs) for T in {2, 3, 5}; the paper also runs T = 10, which
alone costs as much again on a CPU (``--Ts 2 3 5 10`` adds it).

Run: ``python -m experiments.paper_shallow --setting full --out figures`` writes
``figures/paper_shallow_vary_T.png`` and ``.pdf``.
"""
from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import jax
import numpy as np

from linmeta.families.paper import shallow
from linmeta.engine.results import atomic_write_bytes

PAPER = dict(d=10, k=1, Ts=(2, 3, 5, 10), N=1000, n=100, noise_std=0.1, lr=1e-3,
             weight_decay=0.01, n_trials=10, retrain_steps=40000, finetune_steps=15000)

SETTINGS = {
    "tiny": dict(PAPER, d=4, Ts=(2, 3), N=64, n=16, n_trials=2, retrain_steps=200,
                 finetune_steps=100, record_every=10),
    "quick": dict(PAPER, Ts=(2, 3, 5), N=250, n_trials=3, lr=3e-3, retrain_steps=4000,
                  finetune_steps=3000, record_every=50),
    "full": dict(PAPER, Ts=(2, 3, 5), record_every=100),
}


def _quartiles(x, axis=0):
    x = np.asarray(x, dtype=float)
    return (np.quantile(x, 0.25, axis=axis), np.median(x, axis=axis),
            np.quantile(x, 0.75, axis=axis))


def run(setting: str = "full", seed: int = 0, retrain_adapter: str = "asymmetric",
        Ts=None) -> dict:
    """Numbers only (no figure): one vmapped batch of trials per T (``Ts`` overrides the
    setting's task counts)."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {', '.join(SETTINGS)}; got {setting!r}")
    cfg = dict(SETTINGS[setting])
    Ts = tuple(cfg.pop("Ts") if Ts is None else Ts)
    if not Ts or any(int(T) != T or T < 1 for T in Ts):
        raise ValueError(f"Ts must be task counts >= 1, got {Ts!r}")
    key = jax.random.key(seed)
    out = {"setting": setting, "seed": seed, "retrain_adapter": retrain_adapter,
           "config": dict(cfg, Ts=list(Ts)), "paper": dict(PAPER, Ts=list(PAPER["Ts"])),
           "per_T": {}, "rows": []}
    t0 = time.perf_counter()
    for T in Ts:
        t1 = time.perf_counter()
        res = shallow.run_trials(jax.random.fold_in(key, T), T=T, retrain_adapter=retrain_adapter,
                                 **cfg)
        ranks = [int(r) for r in res.ranks]
        res = jax.tree.map(np.asarray, res)
        entry = {"ranks": ranks, "retrain_step": res.retrain_step,
                 "finetune_step": res.finetune_step, "seconds": time.perf_counter() - t1}
        for name, m in (("meta_lora", res.meta_lora), ("sr", res.sr)):
            entry[name] = {"test_loss": m.test_loss, "finetune_loss": m.finetune_loss,
                           "retrain_loss": m.retrain_loss, "base_error": m.base_error}
            for j, r in enumerate(ranks):
                q25, med, q75 = _quartiles(m.test_loss[:, j, -1])
                out["rows"].append({"T": T, "rank": r, "method": name,
                                    "final_test_loss_median": float(med),
                                    "final_test_loss_q25": float(q25),
                                    "final_test_loss_q75": float(q75),
                                    "final_retrain_loss_median":
                                        float(np.median(m.retrain_loss[:, -1]) / T)})
        out["per_T"][T] = entry
    out["seconds"] = time.perf_counter() - t0
    return out


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
    """Write ``paper_shallow_vary_T.png/.pdf``: test loss during fine-tuning (top row) and the
    retraining loss per task (bottom row), one column per T, median with the 25-75 % band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    Ts = sorted(result["per_T"])
    cfg = result["config"]
    fig, axes = plt.subplots(2, len(Ts), figsize=(3.4 * len(Ts) + 0.6, 6.4), squeeze=False,
                             sharey="row", gridspec_kw={"height_ratios": [1.6, 1.0]})
    colors = {"meta_lora": "tab:blue", "sr": "tab:red"}
    labels = {"meta_lora": "Meta-LoRA", "sr": "SR"}
    for col, T in enumerate(Ts):
        e = result["per_T"][T]
        ax = axes[0, col]
        for name in ("meta_lora", "sr"):
            for j, r in enumerate(e["ranks"]):
                q25, med, q75 = _quartiles(e[name]["test_loss"][:, j])
                ls = "-" if j == 0 else "--"
                ax.semilogy(e["finetune_step"], med, ls, color=colors[name],
                            label=f"{labels[name]}, rank {r}")
                ax.fill_between(e["finetune_step"], q25, q75, color=colors[name], alpha=0.18,
                                lw=0)
        ax.set_title(f"T = {T}")
        ax.set_xlabel("fine-tuning epoch")
        ax.grid(True, which="major", alpha=0.4)
        ax.legend(fontsize=7, loc="upper right")
        ax2 = axes[1, col]
        for name in ("meta_lora", "sr"):
            q25, med, q75 = _quartiles(e[name]["retrain_loss"] / T)
            ax2.semilogy(e["retrain_step"], med, color=colors[name], label=labels[name])
            ax2.fill_between(e["retrain_step"], q25, q75, color=colors[name], alpha=0.18, lw=0)
        ax2.axhline(cfg["noise_std"] ** 2, color="0.4", lw=0.8, ls=":", label="noise variance")
        ax2.set_xlabel("retraining epoch")
        ax2.grid(True, which="major", alpha=0.4)
        if col == 0:
            ax2.legend(fontsize=7)
    axes[0, 0].set_ylabel("test task loss (MSE vs noiseless)")
    axes[1, 0].set_ylabel("retraining loss per task")
    paper = result["paper"]
    reduced = [f"{key} {cfg[key]} (paper {paper[key]})" for key in
               ("retrain_steps", "finetune_steps", "n_trials", "N", "n", "d", "lr")
               if cfg[key] != paper[key]]
    if cfg["Ts"] != paper["Ts"]:
        reduced.append(f"T in {cfg['Ts']} (paper {paper['Ts']})")
    adapter = ("asymmetric B C^T (paper's code)" if result["retrain_adapter"] == "asymmetric"
               else "symmetric U U^T (paper's text)")
    note = (f"y = c^T sigmoid((A* + U_t U_t^T) x) + eps, d={cfg['d']}, k={cfg['k']}, N={cfg['N']}, "
            f"n={cfg['n']}, noise std {cfg['noise_std']}; AdamW lr {cfg['lr']}, weight decay "
            f"{cfg['weight_decay']}; {cfg['retrain_steps']} retraining / {cfg['finetune_steps']} "
            f"fine-tuning epochs; retraining adapters {adapter}; median over {cfg['n_trials']} "
            f"trials, band 25-75 %; '{result['setting']}' setting, {result['seconds']:.0f} s.")
    if reduced:
        note += "\nDeparts from the paper's protocol: " + "; ".join(reduced) + "."
    fig.suptitle("Shallow network (paper section 6): LoRA fine-tuning on an unseen task after "
                 "Meta-LoRA vs standard retraining", fontsize=11)
    fig.text(0.01, -0.01, note, fontsize=7, va="top", wrap=True)
    fig.tight_layout()
    paths = _save(fig, out_dir, "paper_shallow_vary_T")
    plt.close(fig)
    return paths


def main(setting: str = "full", out_dir="figures", seed: int = 0,
         retrain_adapter: str = "asymmetric", Ts=None) -> dict:
    """Run the T sweep, write the figure, return a summary dict (rows of final test losses)."""
    result = run(setting, seed, retrain_adapter, Ts)
    result["figures"] = plot(result, out_dir)
    summary = {k: result[k] for k in ("setting", "seed", "retrain_adapter", "config", "rows",
                                      "seconds", "figures")}
    summary["per_T"] = result["per_T"]
    return summary


def _print(summary: dict) -> None:
    print(f"paper_shallow ({summary['setting']}, retraining adapters "
          f"{summary['retrain_adapter']}): {summary['seconds']:.1f} s")
    print(f"{'T':>3} {'rank':>4} {'method':>9} {'test loss median [q25, q75]':>34} "
          f"{'retrain loss/task':>18}")
    for r in summary["rows"]:
        print(f"{r['T']:>3} {r['rank']:>4} {r['method']:>9} {r['final_test_loss_median']:>12.4g} "
              f"[{r['final_test_loss_q25']:.3g}, {r['final_test_loss_q75']:.3g}]"
              f"{r['final_retrain_loss_median']:>18.4g}")
    print("figures:", ", ".join(summary["figures"]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=tuple(SETTINGS), default="full")
    parser.add_argument("--out", default="figures", help="output folder for the figure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retrain-adapter", choices=shallow.RETRAIN_ADAPTERS,
                        default="asymmetric")
    parser.add_argument("--Ts", type=int, nargs="+", help="task counts (default: the setting's)")
    parser.add_argument("--json", help="also write the summary rows to this JSON file")
    from linmeta.engine import compile_cache
    compile_cache.add_argument(parser)
    args = parser.parse_args()
    compile_cache.enable_from_args(args)
    s = main(args.setting, args.out, args.seed, args.retrain_adapter, args.Ts)
    _print(s)
    if args.json:
        atomic_write_bytes(args.json, json.dumps({k: s[k] for k in ("setting", "config", "rows",
                                                                   "seconds")}, indent=1).encode())
