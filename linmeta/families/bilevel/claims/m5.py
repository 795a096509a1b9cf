"""Measurement M5: the priming ablation (docs/bilevel.md#m5).

Does the inner loop have to simulate the fine-tuning that follows? The priming work (docs/bilevel.md) expects
the inner adapter matched to the fine-tuning rank k to approach A* for T >= 3 while full-rank
inner updates and SR keep a bias. Measured here at ``K_ablation`` inner steps, T = 3, population,
for each method, by the rank-k fine-tuning error on unseen tasks (exact fit, the n -> infinity
error) of the retrained base:

- inner adapter ``U V^T`` of rank r = k (matched, the LoRA start), of larger ranks r > k (up to d);
- full-rank inner update W (plain MAML; relation M1: SR with a shrunk step);
- the matched adapter with a learned start (step ``start_lr``);
- K = 0 (relation M1: standard retraining by gradient descent);

beside Meta-LoRA and SR (references as in M4). No theory orders these; the rows state the order
as measured (median over seeds).
"""
from __future__ import annotations

import time

import numpy as np

from linmeta.engine.claims import ClaimResult, Verdict
from ._grid import GRID, METHOD_COLOR, METHOD_LABEL, grid_cached, median, positive, select
from linmeta.engine.claim_support import figure_dpi, pyplot, save_figure, settings_value

CLAIM = "M5"


def variants(runs, cfg, m):
    """``{label: ft_bias over seeds}`` of method ``m``'s ablation variants."""
    K, k, d = cfg["K_ablation"], cfg["k"], cfg["d"]
    one = lambda **w: select(runs, method=m, a=cfg["a"], **w)[0]["ft_bias"]  # noqa: E731
    out = {f"matched r=k={k}": one(inner_steps=K, inner_rank=k, inner_full=False, start_lr=0.0),
           "learned start": one(inner_steps=K, inner_rank=k, inner_full=False,
                                start_lr=cfg["start_lr"])}
    for r in cfg["ranks"]:
        if r != k:
            out[f"r={r}"] = one(inner_steps=K, inner_rank=r, inner_full=False, start_lr=0.0)
    out["full-rank W"] = one(inner_steps=K, inner_rank=d, inner_full=True, start_lr=0.0)
    out["K=0"] = one(inner_steps=0, inner_rank=k, inner_full=False, start_lr=0.0)
    return out


def ordering(v: dict) -> tuple[str, str]:
    """``(text, diverged)``: the variants of ``v`` ({label: errors over seeds}) in order of their
    median, and which of them have non-finite runs ("" when none). A variant with diverged runs is
    a failure inside a measured row, so the text then starts with ``DIVERGED RUNS in ...``."""
    order = sorted(v, key=lambda lab: median(v[lab]))
    text = " < ".join(f"{lab} ({median(v[lab]):.2g})" if np.isfinite(median(v[lab])) else
                      f"{lab} (diverged)" for lab in order)
    counts = {lab: int(np.sum(~np.isfinite(np.asarray(v[lab], float)))) for lab in v}
    diverged = ", ".join(f"{lab} ({n} of {np.size(v[lab])} seeds)"
                         for lab, n in counts.items() if n)
    return (f"DIVERGED RUNS in {diverged}; ordering: {text}" if diverged else text), diverged


def run(setting: str = "quick", seed: int = 0) -> ClaimResult:
    """Measure M5 at ``setting`` (module docstring)."""
    cfg = settings_value(GRID, setting)
    t0 = time.perf_counter()
    runs, lam, refs = grid_cached(cfg, seed, 3, newton=setting == "full")
    note = (f"T=3, population, d={cfg['d']}, k={cfg['k']}, K={cfg['K_ablation']}, a={cfg['a']}, "
            f"beta={cfg['beta']}, {cfg['seeds']} seeds; rank-{cfg['ft_rank']} fine-tuning error "
            f"(exact fit); Meta-LoRA {median(refs['ml_ft_bias']):.3g}, "
            f"SR {median(refs['sr_ft_bias']):.3g}")
    rows, table = [], {}
    for m in cfg["methods"]:
        v = variants(runs, cfg, m)
        v["Meta-LoRA"] = refs["ml_ft_bias"]
        v["SR"] = refs["sr_ft_bias"]
        table[m] = v
        text, diverged = ordering(v)
        row_note = note if not diverged else (
            note + f"; {diverged} diverged (non-finite fine-tuning error): those variants are "
            "ordered by their median, and their step sizes are outside the stable range of M6")
        rows.append(Verdict(CLAIM, f"priming ablation, {METHOD_LABEL[m]}: variants ordered by "
                            "median rank-k fine-tuning error", "measured (priming: matched "
                            "< full-rank ~ SR)", text, float("nan"), "measured", True,
                            "measured", row_note))
    mm = table["maml"] if "maml" in table else next(iter(table.values()))
    matched = mm[f"matched r=k={cfg['k']}"]
    frac = float(np.mean(matched < mm["full-rank W"]))
    rows.append(Verdict(CLAIM, "MAML: matched rank-k inner loop beats the full-rank inner loop "
                        "(fraction of seeds, rank-k fine-tuning error)", "measured", frac,
                        float("nan"), "measured", True, "measured", note))
    ranks = [r for r in cfg["ranks"]]
    rank_curves = {m: np.stack([select(runs, method=m, a=cfg["a"], inner_steps=cfg["K_ablation"],
                                       inner_rank=r, inner_full=False, start_lr=0.0)[0]["ft_bias"]
                                for r in ranks], axis=1) for m in cfg["methods"]}
    data = dict(setting=setting, seed=seed, cfg=cfg, table=table, ranks=ranks,
                rank_curves=rank_curves)
    return ClaimResult(CLAIM, rows, data, time.perf_counter() - t0)


def plot(result: ClaimResult, out_dir) -> list:
    """``bilevel_ablation.{png,pdf}``: rank-k fine-tuning error against the inner rank r, and
    every variant per method."""
    plt = pyplot()
    D = result.data
    cfg = D["cfg"]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 5.2),
                                   gridspec_kw=dict(width_ratios=[1, 1.6]))
    ranks = np.asarray(sorted(set(D["ranks"]) | {cfg["k"]}), float)
    for m in cfg["methods"]:
        t = D["table"][m]
        Y = np.stack([t[f"matched r=k={cfg['k']}"] if r == cfg["k"] else t[f"r={int(r)}"]
                      for r in ranks], axis=1)
        Y = positive(Y, 1e-28)
        ax0.fill_between(ranks, np.nanmin(Y, 0), np.nanmax(Y, 0), color=METHOD_COLOR[m],
                         alpha=0.15, lw=0)
        ax0.plot(ranks, np.nanmedian(Y, 0), "o-", color=METHOD_COLOR[m], label=METHOD_LABEL[m])
    t = D["table"][cfg["methods"][0]]
    ax0.axhline(max(np.median(t["Meta-LoRA"]), 1e-28), color="k",
                label="Meta-LoRA (median; drawn at the floor 1e-28 where below it)")
    ax0.axhline(np.median(t["SR"]), color="tab:red", ls=":", label="SR (median)")
    ax0.axvline(cfg["ft_rank"], color="grey", lw=0.8, ls="--",
                label=f"fine-tuning rank {cfg['ft_rank']}")
    ax0.set_yscale("log")
    ax0.set_xlabel("inner adapter rank r (U V^T)")
    ax0.set_ylabel(f"rank-{cfg['ft_rank']} fine-tuning error")
    ax0.set_title(f"inner rank (K={cfg['K_ablation']}; median, band: min-max over seeds)",
                  fontsize=9)
    labels = list(t)
    x = np.arange(len(labels))
    for j, m in enumerate(cfg["methods"]):
        tm = D["table"][m]
        Y = positive(np.stack([tm[lab] for lab in labels], axis=1), 1e-28)
        off = (j - 1) * 0.25
        ax1.bar(x + off, np.nanmedian(Y, 0), width=0.25, color=METHOD_COLOR[m], alpha=0.8)
        ax1.plot(np.repeat(x + off, Y.shape[0]).reshape(len(x), -1).T, Y, "k.", ms=3)
    ax1.set_yscale("log")
    ax1.set_xticks(x)
    ax1.set_xticklabels(labels, fontsize=7, rotation=20)
    ax1.set_ylabel(f"rank-{cfg['ft_rank']} fine-tuning error")
    ax1.set_title(f"priming ablation (K={cfg['K_ablation']}; bars: median, dots: seeds, "
                  "values below 1e-28 drawn at it)", fontsize=9)
    handles, names = ax0.get_legend_handles_labels()
    handles.append(plt.Line2D([], [], color="k", marker=".", ls="none", ms=6))
    names.append(f"one seed (of {cfg['seeds']})")
    fig.legend(handles, names, loc="lower center", ncol=4, fontsize=7.5, frameon=False)
    fig.suptitle(f"M5  does the inner loop have to match the fine-tuning?  T=3, d={cfg['d']}, "
                 f"k={cfg['k']}, population, {cfg['seeds']} seeds ({D['setting']})", fontsize=10)
    fig.tight_layout(rect=(0, 0.09, 1, 0.97))
    return save_figure(fig, out_dir, "bilevel_ablation", dpi=figure_dpi(D["setting"]))
