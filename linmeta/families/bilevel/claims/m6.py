"""Measurement M6: where each method diverges or stalls as the inner step grows
(docs/bilevel.md#m6).

The inner loop is gradient descent on a quartic in the adapter factors; its stable step shrinks
with the size of the residual it fits, ``||M*_t - A||_2`` (at the start, ``A = 0``:
``lambda = max_t ||M*_t||_2``). The inner step is therefore given as ``alpha = a / lambda`` and
swept over the dimensionless ``a`` at ``K_alpha`` inner steps (T = 3, population), for every
method, with the rank-k LoRA inner loop (and, at the full setting, the full-rank one, whose
stability limit is exact: ``|1 - alpha| < 1``, i.e. ``alpha < 2``; relation M1).

Each run is classified by the protocol (:mod:`linmeta.families.bilevel`): **diverged** (the recorded
objective blew up or the base became non-finite, or an inner loop blew up from a finite start:
:mod:`linmeta.core.divergence`), **stalled** (the objective fell by less than 1% over the outer loop)
or converged; rows give the largest ``a`` at which no seed diverged and the smallest at which one
did, as measured. The stall flag reads the recorded objective only: plain Reptile near
``alpha = 1`` is flagged stalled although its base moves with the step ``beta (1 - (1-alpha)^K)``
(about beta) and reaches SR's (relation M1), because its objective ``F_K = (1-alpha)^(2K)`` times
SR's is rounding noise from the start; plain MAML and first-order MAML there do not move (their
steps ``beta (1-alpha)^(2K)``, ``beta (1-alpha)^K`` vanish). One row is a check (full setting): for the full-rank inner loop the support loss
after j inner steps is exactly ``(1 - alpha)^(2j)`` times its start, so the inner loop is flagged
diverged exactly when ``|1 - alpha|^(2K) > 1000`` (the blow-up factor of
:mod:`linmeta.core.divergence`).

A second check (every setting): the step scale ``lambda`` itself,
:func:`linmeta.families.bilevel.methods.inner_step_scale` (what ``inner_lr="auto"`` divides by),
against ``max_t`` of NumPy's spectral norm (``numpy.linalg.norm(ord=2)`` on the batch of task
matrices ``S_yx,t S_xx,t^{-1}``) for population and finite-sample statistics; tolerance rounding,
``10 d eps cond(S_xx)``.
"""
from __future__ import annotations

import time

import numpy as np

from linmeta.engine.claims import ClaimResult, Verdict
from linmeta.engine.verdict import Tolerance
from linmeta.families.bilevel.methods import inner_step_scale
from ._grid import (GRID, METHOD_COLOR, METHOD_LABEL, grid_cached, median, numpy_population,
                    numpy_split, numpy_truths, positive, rng_for, select, task_matrices, to_jax)
from linmeta.engine.claim_support import figure_dpi, pyplot, save_figure, settings_value
from linmeta.core.divergence import BLOWUP_FACTOR

CLAIM = "M6"


def sweep(runs, cfg, m, full: bool):
    """``(a values, rel. base error (seeds, a), diverged (seeds, a), stalled (seeds, a))``."""
    As = np.asarray(cfg["as_"], float)
    rs = [select(runs, method=m, a=a, inner_steps=cfg["K_alpha"], inner_full=full,
                 start_lr=0.0, inner_rank=cfg["d"] if full else cfg["k"])[0] for a in As]
    err = np.stack([r["base_rel_error"] for r in rs], axis=1)
    div = np.stack([r["diverged"] | r["inner_diverged"] for r in rs], axis=1)
    inner = np.stack([r["inner_diverged"] for r in rs], axis=1)
    stall = np.stack([r["stalled"] for r in rs], axis=1)
    return As, err, div, stall, inner


def _plain_limit_row(runs, cfg, lam, note):
    """Plain MAML's inner loop blows up exactly when ``|1 - alpha|^(2K) > BLOWUP_FACTOR``: its
    support loss after j steps is ``(1 - alpha)^(2j)`` times the loss before (relation M1)."""
    K = cfg["K_alpha"]
    As = np.asarray(cfg["as_"], float)
    alpha = As[None, :] / lam[:, None]                          # (seeds, a)
    predicted = np.abs(1 - alpha) ** (2 * K) > BLOWUP_FACTOR
    agree, n = 0, 0
    for m in cfg["methods"]:
        _, _, _, _, inner = sweep(runs, cfg, m, True)
        agree += int(np.sum(inner == predicted))
        n += inner.size
    return Verdict(
        CLAIM, f"plain (full-rank inner) MAML, first-order MAML, Reptile: inner loop flagged "
        f"diverged iff |1 - alpha|^(2K) > {BLOWUP_FACTOR:g} (K={K}), runs agreeing",
        n, agree, float("nan"), "all (the inner loss is (1-alpha)^2j times its start)",
        agree == n, "check", note + f"; predicted diverged in {int(predicted.sum())} of "
        f"{predicted.size} (seed, a) cases per method")


def inner_step_scale_row(rng, *, S: int = 3, T: int = 3, d: int = 4, N: int = 12) -> Verdict:
    """:func:`linmeta.families.bilevel.methods.inner_step_scale` (the ``lambda`` of ``alpha = a /
    lambda`` and of ``inner_lr="auto"``) against NumPy: ``max_t ||M_t||_2`` by
    ``numpy.linalg.norm(ord=2)`` on the batch of task matrices ``M_t = S_yx,t S_xx,t^{-1}``
    (``numpy.linalg.solve``), for the population statistics and the finite-sample statistics (N/2
    samples) of S random problems."""
    A, U, _ = numpy_truths(rng, S, d, 1, T)
    M = task_matrices(A, U)
    sup, _ = numpy_split(rng, M, N, 0.1)
    errs, conds = [], []
    for stats in (numpy_population(M), sup):
        for s_ in range(S):
            st = tuple(np.asarray(x)[s_] for x in stats)
            B = np.swapaxes(np.linalg.solve(st[0], np.swapaxes(st[1], -1, -2)), -1, -2)
            want = float(np.max(np.linalg.norm(B, ord=2, axis=(-2, -1))))
            errs.append(abs(inner_step_scale(to_jax(st)) - want) / want)
            conds.append(float(np.max(np.linalg.cond(st[0]))))
    tol = Tolerance.rounding(10 * d, max(conds), what="a d x d solve and an SVD")
    return Verdict(
        CLAIM, "inner_step_scale vs max_t numpy.linalg.norm(S_yx S_xx^-1, ord=2) on a batch of "
        "tasks (population and finite-sample statistics): max rel. difference", 0.0,
        float(max(errs)), float("nan"), tol, tol.below(errs), "check",
        f"{S} problems x 2 kinds of statistics, T={T}, d={d}, finite: N/2 = {N // 2} samples; "
        f"max cond(S_xx) {max(conds):.3g}")


def run(setting: str = "quick", seed: int = 0) -> ClaimResult:
    """Measure M6 at ``setting`` (module docstring)."""
    cfg = settings_value(GRID, setting)
    t0 = time.perf_counter()
    runs, lam, refs = grid_cached(cfg, seed, 3, newton=setting == "full")
    note = (f"T=3, population, d={cfg['d']}, k={cfg['k']}, K={cfg['K_alpha']}, "
            f"beta={cfg['beta']}, {cfg['seeds']} seeds, lambda = {np.min(lam):.3g}.."
            f"{np.max(lam):.3g}")
    rows, curves = [], {}
    kinds = [False] + ([True] if cfg.get("alpha_full", True) else [])
    for full in kinds:
        for m in cfg["methods"]:
            As, err, div, stall, inner = sweep(runs, cfg, m, full)
            curves[(m, full)] = (As, err, div, stall)
            ok = ~div.any(axis=0)
            last_ok = float(As[ok].max()) if ok.any() else float("nan")
            first_bad = float(As[~ok].min()) if (~ok).any() else float("nan")
            stalled = ", ".join(f"{a:g}" for a, s in zip(As, stall.any(axis=0)) if s) or "none"
            what = "plain (full-rank inner)" if full else "rank-k LoRA inner"
            rows.append(Verdict(
                CLAIM, f"{METHOD_LABEL[m]}, {what}: largest a = alpha lambda with no diverged "
                f"seed / smallest a with one (a in {', '.join(f'{a:g}' for a in As)})",
                "measured" + (" (M1: plain MAML's inner loop is stable iff alpha < 2)"
                              if full else ""), f"{last_ok:g} / {first_bad:g}", float("nan"),
                "measured", True, "measured",
                note + f"; inner-loop divergences {int(inner.sum())} of {int(div.sum())}; "
                f"stalled at a = {stalled}; median rel. base error at the largest stable a: "
                f"{median(err[:, ok][:, -1]) if ok.any() else float('nan'):.3g}"))
    if cfg.get("alpha_full", True):
        rows.append(_plain_limit_row(runs, cfg, lam, note))
    rows.append(inner_step_scale_row(rng_for(seed, CLAIM)))
    data = dict(setting=setting, seed=seed, cfg=cfg, curves=curves)
    return ClaimResult(CLAIM, rows, data, time.perf_counter() - t0)


def plot(result: ClaimResult, out_dir) -> list:
    """``bilevel_step_size.{png,pdf}``: relative base error against ``a = alpha lambda`` per
    method (an x at the top where a seed diverged), and the fraction of diverged and stalled
    runs; one legend below the panels explains colours, line styles and markers."""
    plt = pyplot()
    D = result.data
    cfg = D["cfg"]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 5.6))
    top = 10.0
    for (m, full), (As, err, div, stall) in D["curves"].items():
        ls, mk = ("--", "s") if full else ("-", "o")
        lab = f"plain {METHOD_LABEL[m]} (full-rank inner)" if full else \
            f"{METHOD_LABEL[m]}, rank-{cfg['k']} LoRA inner"
        Y = positive(np.where(div, np.nan, err))
        ax0.plot(As, np.nanmedian(np.where(np.isnan(Y), np.inf, Y), 0), ls=ls, marker=mk,
                 color=METHOD_COLOR[m], label=lab, ms=4)
        bad = div.any(axis=0)
        ax0.plot(As[bad], np.full(bad.sum(), top), "x", color=METHOD_COLOR[m], ms=8)
        ax1.plot(As, div.mean(axis=0), ls=ls, marker=mk, color=METHOD_COLOR[m], ms=4)
        ax1.plot(As, stall.mean(axis=0), ls=":", marker=mk, mfc="none", color=METHOD_COLOR[m],
                 ms=4)
    ax0.set_xscale("log")
    ax0.set_yscale("log")
    ax0.set_xlabel("a = alpha lambda,  lambda = max_t ||M*_t||_2")
    ax0.set_ylabel("median ||A_hat - A*||_F / ||A*||_F")
    ax0.set_title(f"base error, median over {cfg['seeds']} seeds (a diverged seed counts as "
                  "+inf: no point where half diverged)", fontsize=9)
    ax0.grid(True, alpha=0.3)
    ax1.set_xscale("log")
    ax1.set_xlabel("a = alpha lambda")
    ax1.set_ylabel(f"fraction of the {cfg['seeds']} seeds")
    ax1.set_title("diverged (filled markers) and stalled (dotted, open markers)", fontsize=9)
    ax1.set_ylim(-0.05, 1.05)
    ax1.grid(True, alpha=0.3)
    handles, names = ax0.get_legend_handles_labels()
    handles += [plt.Line2D([], [], color="grey", marker="x", ls="none", ms=8),
                plt.Line2D([], [], color="grey", ls=":", marker="o", mfc="none", ms=4)]
    names += [f"x at {top:g} (left): at least one seed diverged at this a",
              "dotted, open marker (right): fraction stalled (objective fell < 1%)"]
    fig.legend(handles, names, loc="lower center", ncol=3, fontsize=7.5, frameon=False)
    fig.suptitle(f"M6  inner step size: divergence and stalls   T=3, d={cfg['d']}, k={cfg['k']}, "
                 f"K={cfg['K_alpha']}, population, {cfg['seeds']} seeds ({D['setting']})",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.14, 1, 0.97))
    return save_figure(fig, out_dir, "bilevel_step_size", dpi=figure_dpi(D["setting"]))
