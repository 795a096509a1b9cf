"""Claim D2: the fine-tuning rate of coefficient-only adaptation (docs/difference.md#d2).

After exact recovery (D1: the fit's space is ``L*`` and its base ``A*`` modulo ``L*``; the claim
uses the truth's, which any zero-loss fit equals for fine-tuning), an unseen task
``M*_new = A* + U* diag(s_new) V*^T`` is fine-tuned on n samples (``x ~ N(0, I_d)``, noise
``N(0, sigma^2 I_d)``) by least squares in

- its r coefficients: ``E||M_hat - M*_new||_F^2 = sigma^2 E tr(G Q^{-1})`` with
  ``Q = sum_j Z_j^T Z_j``, ``Z_j = U* diag(V*^T x_j)``, ``G = E Z^T Z``; exactly
  ``sigma^2 r / (n - 2)`` for orthonormal ``U*, V*`` (``Q`` is diagonal with chi-square entries),
  and ``sigma^2 (r/n + c_2/n^2) + O(n^-3)`` in general (Isserlis' theorem gives ``c_2``);
- a rank-r LoRA adapter (reduced-rank regression, :func:`linmeta.methods.finetune.reduced_rank_fit`):
  ``sigma^2 r (2d - r) / n`` to first order;
- all d^2 entries (least squares): ``sigma^2 d^2 / (n - d - 1)`` exactly.

Monte Carlo: ``draws`` data sets per n (nested prefixes of one draw of ``max(ns)`` samples), on
``truths`` orthonormal and as many Gaussian truths. Rows: per n, the orthonormal truths' mean
coefficient risk against ``sigma^2 r/(n-2)`` (Student-t band of the Monte Carlo standard error,
p = 1e-3); the Gaussian truths' against the second-order form (the band plus the next term of the
expansion, ``2 sigma^2 c_2^2 / (r n^3)``, as the bias allowance), at the n above ``4 c_2 / r``;
the log-log slope in n of the coefficient risk against the slope of the closed form over the same
n; full least squares against ``sigma^2 d^2/(n-d-1)`` (n >= 2d + 2, where its variance is
finite); LoRA's ratio to its first-order form (measured).
"""
from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from linmeta.engine.claims import ClaimResult, Verdict
from linmeta.engine.claim_support import (figure_dpi, key_for, loglog_slope, pyplot, save_figure,
                                     settings_value, working_dtype)
from linmeta.engine.verdict import Tolerance
from linmeta.families.difference import theory
from linmeta.families.difference.truth import (difference_space, sample_difference_truth,
                                               unseen_matrices)

from ._finetune import finetune_risks

CLAIM = "D2"
NOISE_STD = 0.5
P_BAND = 1e-3

SETTINGS = {
    "tiny": dict(d=4, r=2, truths=1, draws=400, ns=(8, 16, 32)),
    "quick": dict(d=5, r=2, truths=2, draws=1500, ns=(8, 16, 32, 64)),
    "full": dict(d=8, r=2, truths=4, draws=20000, ns=(8, 16, 32, 64, 128, 256)),
}


def run(setting: str = "quick", seed: int = 0) -> ClaimResult:
    """Measure D2 at ``setting`` (module docstring)."""
    cfg = settings_value(SETTINGS, setting)
    t0 = time.perf_counter()
    d, r, R, ns, S = cfg["d"], cfg["r"], cfg["draws"], tuple(cfg["ns"]), cfg["truths"]
    root = key_for(seed, CLAIM)
    sig2 = NOISE_STD ** 2
    kinds = ["orthonormal"] * S + ["gaussian"] * S
    truths = [sample_difference_truth(jax.random.fold_in(root, i), d, r, 3, n_unseen=1,
                                      directions=kind, dtype=working_dtype())
              for i, kind in enumerate(kinds)]
    keys = jnp.stack([jax.random.fold_in(root, 1000 + i) for i in range(len(truths))])
    stack = lambda f: jnp.stack([f(t) for t in truths])  # noqa: E731
    risks = np.asarray(jax.vmap(functools.partial(finetune_risks, r=r, ns=ns, draws=R),
                                in_axes=(0, 0, 0, 0, None))(
        stack(lambda t: t.A_star), stack(lambda t: difference_space(t.U_star, t.V_star)),
        stack(lambda t: unseen_matrices(t)[0]), keys, NOISE_STD))  # (truths, 3, len(ns), R)
    mean, se = risks.mean(-1), risks.std(-1, ddof=1) / math.sqrt(R)
    nsa = np.asarray(ns, float)
    orth = slice(0, S)
    gauss = slice(S, 2 * S)
    c2 = np.array([float(theory.second_order_constant(t.U_star, t.V_star)) for t in truths])
    pred_orth = np.array([theory.coefficient_risk_orthonormal(r, n, NOISE_STD) for n in ns])
    pred_2nd = np.array([[float(theory.coefficient_risk_second_order(t.U_star, t.V_star, n,
                                                                      NOISE_STD)) for n in ns]
                         for t in truths])
    note = (f"d={d}, r={r}, sigma={NOISE_STD}, {S} orthonormal + {S} Gaussian truths x {R} "
            f"draws, base and space of exact recovery, {working_dtype()}")
    rows = []
    for j, n in enumerate(ns):
        m = float(mean[orth, 0, j].mean())
        s = float(np.sqrt(np.sum(se[orth, 0, j] ** 2)) / S)
        tol = Tolerance.seeds(s, S * R, p=P_BAND)
        rows.append(Verdict(CLAIM, f"coefficient-only risk, orthonormal U*, V*, n={n}: vs "
                            f"sigma^2 r/(n-2)", float(pred_orth[j]), m,
                            float(np.ptp(mean[orth, 0, j])), tol,
                            abs(m - pred_orth[j]) <= tol.value, "check", note))
    big = [j for j, n in enumerate(ns) if n >= 4 * c2[gauss].max() / r]
    for j in big:
        n = ns[j]
        dev = mean[gauss, 0, j] - pred_2nd[gauss, j]
        s = float(np.sqrt(np.sum(se[gauss, 0, j] ** 2)) / S)
        nxt = float(np.max(2 * sig2 * c2[gauss] ** 2 / (r * n ** 3)))
        tol = Tolerance.seeds(s, S * R, bias=nxt, bias_why="next term of the 1/n expansion, "
                              "2 sigma^2 c_2^2 / (r n^3)", p=P_BAND)
        rows.append(Verdict(CLAIM, f"coefficient-only risk, Gaussian U*, V*, n={n}: vs "
                            f"sigma^2 (r/n + c_2/n^2) (mean deviation)", 0.0, float(dev.mean()),
                            float(np.ptp(dev)), tol, abs(float(dev.mean())) <= tol.value,
                            "check", note + f"; c_2 = {', '.join(f'{c:.3g}' for c in c2[gauss])}"
                            f" (orthonormal: 2r = {2 * r})"))
    sel = [j for j, n in enumerate(ns) if n >= 16] or list(range(len(ns)))
    slopes = np.array([loglog_slope(nsa[sel], mean[i, 0, sel])[0] for i in range(2 * S)])
    pslopes = np.array([loglog_slope(nsa[sel], (pred_orth if i < S else pred_2nd[i])[sel])[0]
                        for i in range(2 * S)])
    # the slope's Monte Carlo error: delta method from the per-n relative standard errors
    rel = se[:, 0, sel] / mean[:, 0, sel]
    lx = np.log(nsa[sel]) - np.log(nsa[sel]).mean()
    slope_se = float(np.sqrt(np.sum((lx / np.sum(lx ** 2)) ** 2 * rel ** 2, axis=-1)).max())
    tol_s = Tolerance.seeds(slope_se, R, p=P_BAND)
    dslope = slopes - pslopes
    rows.append(Verdict(CLAIM, f"coefficient-only risk: log-log slope in n over n={[ns[j] for j in sel]}"
                        " minus the closed form's slope (exact / second order)", 0.0,
                        float(dslope[np.argmax(np.abs(dslope))]), float(np.ptp(slopes)), tol_s,
                        bool(np.all(np.abs(dslope) <= tol_s.value)), "check",
                        note + f"; slopes {', '.join(f'{x:.3f}' for x in slopes)}"))
    fj = [j for j, n in enumerate(ns) if n >= 2 * d + 2]
    for j in fj[-1:]:
        n = ns[j]
        p_full = theory.full_risk(d, n, NOISE_STD)
        m = float(mean[:, 2, j].mean())
        s = float(np.sqrt(np.sum(se[:, 2, j] ** 2)) / (2 * S))
        tol = Tolerance.seeds(s, 2 * S * R, p=P_BAND)
        rows.append(Verdict(CLAIM, f"full fine-tuning risk, n={n}: vs sigma^2 d^2/(n-d-1)",
                            float(p_full), m, float(np.ptp(mean[:, 2, j])), tol,
                            abs(m - p_full) <= tol.value, "check", note))
    nl = ns[-1]
    ratio = mean[:, 1, -1] / theory.lora_risk(d, r, nl, NOISE_STD)
    rows.append(Verdict(CLAIM, f"rank-r LoRA risk / (sigma^2 r(2d-r)/n), n={nl} (first order)",
                        "measured", float(ratio.mean()), float(np.ptp(ratio)),
                        "no prediction beyond first order", bool(np.all(np.isfinite(ratio))),
                        "measured", note + f"; coefficient-only / LoRA / full at n={nl}: "
                        f"{mean[:, 0, -1].mean():.3g} / {mean[:, 1, -1].mean():.3g} / "
                        f"{mean[:, 2, -1].mean():.3g}"))
    data = dict(setting=setting, d=d, r=r, ns=nsa, mean=mean, se=se, pred_orth=pred_orth,
                pred_2nd=pred_2nd, S=S, lora=np.array([theory.lora_risk(d, r, n, NOISE_STD)
                                                       for n in ns]),
                full=np.array([theory.full_risk(d, n, NOISE_STD) if n > d + 1 else np.nan
                               for n in ns]))
    return ClaimResult(CLAIM, rows, data, time.perf_counter() - t0)


def plot(result: ClaimResult, out_dir) -> list:
    """``difference_d2_rate.{png,pdf}``: fine-tuning risk against n, three ways, with the closed
    forms."""
    plt = pyplot()
    D = result.data
    ns, S = D["ns"], D["S"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, (label, c) in enumerate((("coefficients only", "tab:blue"),
                                    ("rank-r LoRA", "tab:orange"), ("full", "tab:green"))):
        for kind, sl, mk in (("orthonormal", slice(0, S), "o"), ("Gaussian", slice(S, 2 * S), "s")):
            ax.errorbar(ns, D["mean"][sl, i].mean(0), yerr=3 * D["se"][sl, i].max(0), fmt=mk,
                        color=c, ms=4, capsize=2, label=f"{label} ({kind} U*, V*)")
    ax.plot(ns, D["pred_orth"], "b-", lw=1, label=r"$\sigma^2 r/(n-2)$")
    ax.plot(ns, D["pred_2nd"][S:].mean(0), "b:", lw=1, label=r"$\sigma^2(r/n + c_2/n^2)$")
    ax.plot(ns, D["lora"], "-", color="tab:orange", lw=1, label=r"$\sigma^2 r(2d-r)/n$")
    ax.plot(ns, D["full"], "-", color="tab:green", lw=1, label=r"$\sigma^2 d^2/(n-d-1)$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("target samples n")
    ax.set_ylabel(r"$E\|\hat M - M^*_{new}\|_F^2$")
    ax.set_title(f"D2  fine-tuning after exact recovery, d={D['d']}, r={D['r']} "
                 f"({D['setting']})", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out_dir, "difference_d2_rate", dpi=figure_dpi(D["setting"]))
