"""Measurement M4: what bilevel retraining recovers, against the number of inner steps K
(docs/bilevel.md#m4).

No theorem covers the rank-k inner loop at finite K: with the inner loop matched to the
fine-tuning (a rank-k ``U V^T`` adapter, the LoRA start) the base is expected to approach ``A*``
for T >= 3 as K grows (at the exact inner solution the objective is Meta-LoRA's, relation M2).
Measured here, in the population, for MAML, first-order MAML and Reptile with both inner loops,
against K, with Meta-LoRA and SR as reference lines:

- the relative base error ``||A_hat - A*||_F / ||A*||_F`` after the outer loop;
- the rank-k fine-tuning error on unseen tasks, ``min_{rank k} ||M*_new - A_hat - Delta||_F^2``
  (exact fit; the n -> infinity error, :func:`linmeta.core.theory.lora_bias`).

The full-rank inner loop (plain MAML) is exact (relation M1): every outer step is an SR gradient
step of size ``s = beta (1-alpha)^(2K)`` (MAML), ``beta (1-alpha)^K`` (first order) or
``beta (1 - (1-alpha)^K)`` (Reptile), so from ``A = 0`` the base after N outer steps is
``(1 - (1 - s)^N) (A* + Rbar)``. Where ``s N`` is large it reaches SR's base; where it is small
(MAML and first-order MAML at large K) the base barely leaves its start and its fine-tuning error is
whatever A = 0 gives, above or below SR's by chance. The rows check the base error against this
closed form (a check) and report the fine-tuning error over SR's for every K, with the worst cell
and the spread over K and seeds (measured).

Protocol: :mod:`linmeta.families.bilevel` (``A = 0``, LoRA start U ~ N(0, 0.01), V = 0, shared by the tasks);
inner step ``alpha = a / lambda`` with ``lambda = max_t ||M*_t||_2`` of each truth (a is
dimensionless; the settings say which), outer step beta; Gaussian truths (d, k = 1). Settings
``tiny``/``quick``: T = 3 and closed-form references (Meta-LoRA's population minimiser is A* for
T >= 3, claim C3; SR's is A* + Rbar, C1). ``full`` adds T = 2 (references by
``linmeta.meta_lora``'s Newton solver) and a sweep over T at ``K_ablation`` inner steps.
"""
from __future__ import annotations

import time

import numpy as np

from linmeta.engine.claims import ClaimResult, Verdict
from linmeta.engine.claim_support import (figure_dpi, float_tol, pyplot, save_figure,
                                          settings_value, spread)
from .. import theory as bl_theory
from ._grid import GRID, METHOD_COLOR, METHOD_LABEL, grid_cached, median, positive, select

CLAIM = "M4"
RECOVERED = 1e-6   # relative base error at or below this: A* recovered
SETTINGS = {
    "tiny": dict(Ts=(3,), T2=False, T_sweep=()),
    "quick": dict(Ts=(3,), T2=False, T_sweep=()),
    "full": dict(Ts=(3,), T2=True, T_sweep=(1, 2, 3, 5, 8)),
}


def _curves(runs, refs, cfg, full: bool):
    """(method -> (K values, rel. base error (seeds, K), ft bias (seeds, K), diverged count))."""
    out = {}
    norm = refs["a_norm"][:, None]
    for m in cfg["methods"]:
        rs = [select(runs, method=m, inner_steps=K, inner_full=full, inner_rank=cfg["d"] if full
                     else cfg["k"], start_lr=0.0, a=cfg["a"])[0] for K in cfg["Ks"]]
        err = np.stack([r["base_error"] for r in rs], axis=1) / norm
        ft = np.stack([r["ft_bias"] for r in rs], axis=1)
        div = np.stack([r["diverged"] | r["inner_diverged"] for r in rs], axis=1)
        out[m] = (np.asarray(cfg["Ks"]), err, ft, div)
    return out


def _first_recovering_K(Ks, err):
    ok = np.all(err <= RECOVERED, axis=0)
    return int(Ks[np.argmax(ok)]) if ok.any() else None


PLAIN_STEP = {"maml": "beta (1-alpha)^(2K)", "fomaml": "beta (1-alpha)^K",
              "reptile": "beta (1 - (1-alpha)^K)"}


def plain_base_error(method, cfg, lam, refs):
    """Relative base error of plain (full-rank inner, W = 0 start) bilevel retraining after N
    outer steps from ``A = 0``, by relation M1 (population): SR gradient descent with the step
    ``s`` of :func:`linmeta.families.bilevel.theory.full_rank_sr_step`, ``A_N = (1 - (1 - s)^N)
    (A* + Rbar)``. ``(seeds, K)``."""
    N, out = cfg["outer_steps"], []
    for s_, alpha in enumerate(cfg["a"] / np.asarray(lam)):
        row = []
        for K in cfg["Ks"]:
            step = float(bl_theory.full_rank_sr_step(method, cfg["beta"], alpha, K))
            A_N = (1 - (1 - step) ** N) * refs["sr_base"][s_]
            row.append(np.linalg.norm(A_N - refs["a_star"][s_]) / refs["a_norm"][s_])
        out.append(row)
    return np.asarray(out)


def _rows_for_T(T, runs, refs, cfg, note, lam):
    rows = []
    lora, full = _curves(runs, refs, cfg, False), _curves(runs, refs, cfg, True)
    ml = median(refs["ml_base_error"] / refs["a_norm"])
    sr = median(refs["sr_base_error"] / refs["a_norm"])
    for m in cfg["methods"]:
        Ks, err, ft, div = lora[m]
        K0 = _first_recovering_K(Ks, err)
        rows.append(Verdict(
            CLAIM, f"T={T}: {METHOD_LABEL[m]}, rank-k LoRA inner loop: median rel. base error at "
            f"K={Ks[-1]} (K={Ks[1]}: {median(err[:, 1]):.2e}); smallest K with every seed "
            f"<= {RECOVERED:g}: {K0}", "measured (expected -> 0 as K grows, T >= 3)",
            median(err[:, -1]), float(np.nanmax(err[:, -1]) - np.nanmin(err[:, -1]))
            if np.all(np.isfinite(err[:, -1])) else float("nan"),
            "measured", True, "measured",
            note + f"; Meta-LoRA {ml:.2e}, SR {sr:.3g}; diverged runs {int(div.sum())}"))
    tol = float_tol(1e-10, 1e-4)
    for m in cfg["methods"]:
        Ks, err, ft, div = full[m]
        pred = plain_base_error(m, cfg, lam, refs)                       # (seeds, K)
        diff = np.abs(err - pred)
        rows.append(Verdict(
            CLAIM, f"T={T}: plain {METHOD_LABEL[m]} (full-rank inner loop): rel. base error vs "
            "M1's closed form ||(1 - (1-s)^N)(A* + Rbar) - A*|| / ||A*||, s = "
            f"{PLAIN_STEP[m]}, N outer steps: max |difference| over K = "
            f"{', '.join(map(str, Ks))} and seeds", 0.0, float(np.nanmax(diff)), spread(diff),
            f"< {tol:g} (dtype)", bool(np.all(diff < tol)), "check",
            note + "; median predicted rel. base error per K: " + ", ".join(
                f"{K}: {median(pred[:, j]):.3g}" for j, K in enumerate(Ks))
            + f" (SR {sr:.3g}, start A = 0: 1)"))
        ratio = ft / refs["sr_ft_bias"][:, None]                         # (seeds, K)
        moved = [j for j, K in enumerate(Ks) if K > 0 or m != "reptile"]
        cells = ratio[:, moved]
        worst = cells.flat[int(np.nanargmax(np.abs(np.log(cells))))]
        per_K = "; ".join(f"K={Ks[j]}: {median(ratio[:, j]):.3f} [{np.nanmin(ratio[:, j]):.3f}, "
                          f"{np.nanmax(ratio[:, j]):.3f}]" for j in moved)
        rows.append(Verdict(
            CLAIM, f"T={T}: plain {METHOD_LABEL[m]} (full-rank inner loop): rank-k fine-tuning "
            f"error / SR's, the cell farthest from 1 over K = {Ks[moved[0]]}..{Ks[-1]} and seeds "
            "(spread: max - min over those cells)", "measured (M1: SR's minimiser where s N >> 1; "
            "the start A = 0 where s N << 1)", float(worst),
            float(np.nanmax(cells) - np.nanmin(cells)), "measured", True, "measured",
            note + f"; per K, median [min, max] over seeds: {per_K}; diverged runs "
            f"{int(div.sum())}"))
    Ks, err, ft, _ = lora["maml"]
    rows.append(Verdict(
        CLAIM, f"T={T}: rank-k fine-tuning error after MAML (LoRA inner, K={Ks[-1]}) / after "
        "Meta-LoRA / after SR (medians)", "measured",
        f"{median(ft[:, -1]):.3g} / {median(refs['ml_ft_bias']):.3g} / "
        f"{median(refs['sr_ft_bias']):.3g}", float("nan"), "measured", True, "measured", note))
    return rows


def run(setting: str = "quick", seed: int = 0) -> ClaimResult:
    """Measure M4 at ``setting`` (module docstring)."""
    cfg, own = settings_value(GRID, setting), settings_value(SETTINGS, setting)
    t0 = time.perf_counter()
    rows, data = [], dict(setting=setting, seed=seed, cfg=cfg, per_T={}, sweep=None)
    newton = setting == "full"
    Ts = tuple(own["Ts"]) + ((2,) if own["T2"] else ())
    for T in Ts:
        runs, lam, refs = grid_cached(cfg, seed, T, parts=("K", "rank", "alpha") if T == 3
                                      else ("K",), newton=newton)
        note = (f"population, d={cfg['d']}, k={cfg['k']}, {cfg['seeds']} seeds, a={cfg['a']} "
                f"(alpha = a / max_t ||M*_t||_2: {np.min(cfg['a'] / lam):.3g}.."
                f"{np.max(cfg['a'] / lam):.3g}), beta={cfg['beta']}, "
                f"{cfg['outer_steps']} outer steps")
        rows += _rows_for_T(T, runs, refs, cfg, note, lam)
        data["per_T"][T] = dict(lora=_curves(runs, refs, cfg, False),
                                full=_curves(runs, refs, cfg, True), refs=refs)
    if own["T_sweep"]:
        sweep = {}
        for T in own["T_sweep"]:
            runs, lam, refs = grid_cached(cfg, seed, T, parts=("T",), newton=True)
            for m in cfg["methods"]:
                r = select(runs, method=m, inner_steps=cfg["K_ablation"], inner_full=False,
                           inner_rank=cfg["k"], start_lr=0.0)[0]
                f = select(runs, method=m, inner_steps=cfg["K_ablation"], inner_full=True)[0]
                sweep.setdefault(m, []).append((r["base_error"] / refs["a_norm"],
                                                f["base_error"] / refs["a_norm"]))
            sweep.setdefault("ref", []).append((refs["ml_base_error"] / refs["a_norm"],
                                                refs["sr_base_error"] / refs["a_norm"]))
        data["sweep"] = dict(Ts=own["T_sweep"], values=sweep)
        for m in cfg["methods"]:
            med = [median(v[0]) for v in sweep[m]]
            rows.append(Verdict(
                CLAIM, f"{METHOD_LABEL[m]} (rank-k LoRA inner, K={cfg['K_ablation']}): median rel."
                f" base error for T = {', '.join(map(str, own['T_sweep']))}", "measured",
                " / ".join(f"{x:.2e}" for x in med), float("nan"), "measured", True,
                "measured", f"population, d={cfg['d']}, k={cfg['k']}, {cfg['seeds']} seeds"))
    return ClaimResult(CLAIM, rows, data, time.perf_counter() - t0)


FLOOR = {1: 1e-16, 2: 1e-28}   # plotted floors: relative base error, fine-tuning error


def _panel(ax, x, Y, color, label, ls="-", marker="o", floor=1e-16):
    Y = positive(Y, floor)
    lo, hi = np.nanmin(Y, axis=0), np.nanmax(Y, axis=0)
    ax.fill_between(x, lo, hi, color=color, alpha=0.15, lw=0)
    ax.plot(x, np.nanmedian(Y, axis=0), ls=ls, marker=marker, color=color, label=label, ms=4)


def _floor_note(ax, value, floor):
    """Say on the panel where the Meta-LoRA line is drawn: at its median, or at the floor."""
    text = (f"Meta-LoRA median {value:.1e} < floor: drawn at {floor:g}" if value < floor
            else f"Meta-LoRA median {value:.1e}")
    ax.annotate(text, xy=(0.02, max(value, floor)), xycoords=("axes fraction", "data"),
                xytext=(0, 3), textcoords="offset points", fontsize=7, va="bottom")


def plot(result: ClaimResult, out_dir) -> list:
    """``bilevel_vs_K_T3`` (and ``_T2``, ``bilevel_vs_T`` at the full setting): base error and
    rank-k fine-tuning error against K, every method, with Meta-LoRA and SR. The legends sit
    outside the axes (below the panels, right of the T panel), so no curve is covered."""
    plt = pyplot()
    D = result.data
    cfg = D["cfg"]
    paths = []
    seeds = f"median and min-max over {cfg['seeds']} seeds"
    for T, P in D["per_T"].items():
        fig, axes = plt.subplots(1, 2, figsize=(12, 5.6))
        x = np.asarray(cfg["Ks"], float)
        xp = np.where(x == 0, 0.5, x)  # K = 0 drawn at 0.5 on the log axis
        for j, (key, ylab) in enumerate(((1, "relative base error\n||A_hat - A*||_F / ||A*||_F"),
                                         (2, f"rank-{cfg['ft_rank']} fine-tuning error\n"
                                             "min ||M*_new - A_hat - Delta||_F^2"))):
            ax = axes[j]
            for m in cfg["methods"]:
                _panel(ax, xp, P["lora"][m][key], METHOD_COLOR[m],
                       f"{METHOD_LABEL[m]}, rank-{cfg['k']} LoRA inner", floor=FLOOR[key])
                _panel(ax, xp, P["full"][m][key], METHOD_COLOR[m],
                       f"plain {METHOD_LABEL[m]} (full-rank inner)", ls="--", marker="s",
                       floor=FLOOR[key])
            refs = P["refs"]
            ml = refs["ml_base_error"] / refs["a_norm"] if j == 0 else refs["ml_ft_bias"]
            sr = refs["sr_base_error"] / refs["a_norm"] if j == 0 else refs["sr_ft_bias"]
            ax.axhline(max(np.median(ml), FLOOR[key]), color="k", lw=1.5,
                       label="Meta-LoRA (median; drawn at the panel's floor, "
                       f"{FLOOR[1]:g} left / {FLOOR[2]:g} right, where below it)")
            _floor_note(ax, float(np.median(ml)), FLOOR[key])
            ax.axhline(np.median(sr), color="tab:red", lw=1.5, ls=":", label="SR (median)")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("inner steps K  (K = 0 at 0.5)")
            ax.set_ylabel(ylab)
            ax.set_title("base" if j == 0 else "fine-tuning on unseen tasks", fontsize=9)
            ax.grid(True, alpha=0.3)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7.5, frameon=False)
        fig.suptitle(f"bilevel retraining against K, T={T}, d={cfg['d']}, k={cfg['k']}, "
                     f"population, {seeds} (bands; values below a floor drawn at it) "
                     f"({D['setting']})", fontsize=10)
        fig.tight_layout(rect=(0, 0.13, 1, 0.96), w_pad=3)
        paths += save_figure(fig, out_dir, f"bilevel_vs_K_T{T}", dpi=figure_dpi(D["setting"]))
    if D["sweep"]:
        S = D["sweep"]
        fig, ax = plt.subplots(figsize=(9.5, 4.8))
        Ts = np.asarray(S["Ts"], float)
        for m in cfg["methods"]:
            _panel(ax, Ts, np.stack([v[0] for v in S["values"][m]], axis=1), METHOD_COLOR[m],
                   f"{METHOD_LABEL[m]}, rank-{cfg['k']} LoRA inner")
            _panel(ax, Ts, np.stack([v[1] for v in S["values"][m]], axis=1), METHOD_COLOR[m],
                   f"plain {METHOD_LABEL[m]} (full-rank inner)", ls="--", marker="s")
        _panel(ax, Ts, np.stack([v[0] for v in S["values"]["ref"]], axis=1), "k",
               f"Meta-LoRA (values below {1e-16:g} drawn at it)")
        _panel(ax, Ts, np.stack([v[1] for v in S["values"]["ref"]], axis=1), "tab:red", "SR",
               ls=":")
        ax.set_yscale("log")
        ax.set_xticks(Ts)
        ax.set_xlabel("retraining tasks T")
        ax.set_ylabel("relative base error ||A_hat - A*||_F / ||A*||_F")
        ax.set_title(f"bilevel retraining against T, K={cfg['K_ablation']}, d={cfg['d']}, "
                     f"k={cfg['k']}, population,\n{seeds} (bands) ({D['setting']})",
                     fontsize=10)
        ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        paths += save_figure(fig, out_dir, "bilevel_vs_T", dpi=figure_dpi(D["setting"]))
    return paths
