"""Claim R3: ANIL and first-order ANIL learn the representation; one-step MAML and average loss.

Population, heads with second moment Sigma_hat, ``C = B* Sigma_hat B*^T``, ANIL with inner step
alpha on the head from w0 = 0 and outer step beta on B (derivations: docs/representation.md#r3):

- ANIL's gradient is ``alpha (P C + C P) B`` with ``P = alpha B B^T - I``; first-order ANIL's is
  ``alpha P C B``. Both move the wrong-subspace part the same way:
  ``(I - P*) B+ = (I - P*) B (I - alpha^2 beta B^T C B)``
  (:func:`linmeta.families.representation.theory.anil_wrong_subspace_update`), checked at every step of
  both trajectories (1e-12).
- Near the fixed point ``alpha B^T B = I`` that factor is ``I - alpha beta Q^T Sigma_hat Q``: the
  late contraction of the largest principal angle is ``1 - alpha beta lambda_min(Sigma_hat)`` for
  both (fitted over the records whose sine lies in [1e-10, 1e-4]; tolerance 1e-3 of
  ``alpha beta lambda_min``). The scale part ``D = alpha S S^T - I`` moves by
  ``D+ = D - c alpha beta (D Sigma + Sigma D)`` near 0, c = 2 for ANIL and 1 for first-order ANIL
  (:func:`linmeta.families.representation.theory.anil_scale_update`): its modes contract by
  ``1 - c alpha beta (lambda_i + lambda_j)``, stable for ``alpha beta lambda_max < 1/2`` (ANIL) and
  ``< 1`` (first order), so ``alpha B^T B -> I`` (checked to 1e-3 at ``alpha beta lambda_max =
  0.4``). At ``alpha beta lambda_max = 0.7`` (between the bounds) first-order ANIL still converges
  (``||alpha B^T B - I|| < 1e-3``, late rate ``1 - 0.7 lambda_min``) while ANIL's scale part does
  not (``> 0.01`` over the last 10 steps: its factor ``1 - 2.8`` is below -1).
- Average loss (one shared head): with heads of mean zero its B-gradient is ``B w w^T``, which never
  involves B*: ``B+ = B (I - lr w w^T)`` keeps the column space, so the distance to B* stays
  exactly where it started (1e-12).
- One-step MAML (inner step on B and the head): at w0 = 0 the inner step does not move B and its
  derivative in B is the identity, so the B-update equals ANIL's for any heads (w0 fixed: the
  trajectories agree to 1e-12). The gradient in w0 at w0 = 0 is
  ``mean_t [(I - alpha B^T B) B^T r_t + alpha <beta_t, r_t> w'_t]`` (linear plus cubic in beta_t,
  :func:`linmeta.families.representation.theory.maml_head_init_gradient`, checked against autodiff):
  zero for a symmetric head set: from every ANIL iterate at w0 = 0, MAML's step (w0 learned)
  equals ANIL's and leaves w0 at 0 (1e-12). Run freely, w0 = 0 is a fixed point but rounding in w0
  can grow where it is unstable (measured); with Gaussian heads w0 drifts (measured).
"""
from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np

from linmeta.engine.claims import ClaimResult, Verdict
from linmeta.engine.claim_support import (figure_dpi, float_tol, pyplot, save_figure,
                                          settings_value, spread)
from .. import theory as rep_theory
from ._population import ALPHA, BETA, BETA_EDGE, SETTINGS, population_runs
from ._rates import RATE_WINDOW, late_rate

CLAIM = "R3"
RATE_TOL = 1e-3  # fraction of alpha beta lambda_min


def _rates(trajs):
    return np.array([late_rate(t)[0] for t in trajs])


def run(setting: str = "quick", seed: int = 0) -> ClaimResult:
    """Measure R3 at ``setting`` (tiny/quick/full); see the module docstring."""
    cfg = settings_value(SETTINGS, setting)
    t0 = time.perf_counter()
    out = population_runs(setting, seed)
    S, steps = cfg["seeds"], cfg["steps"]
    lam = out["lambda_min"]
    sig = jnp.asarray(out["sigma_hat"])
    pred = np.asarray([float(rep_theory.anil_late_rate(ALPHA, BETA, s)) for s in sig])
    note = (f"d={cfg['d']}, k={cfg['k']}, T={cfg['T']} balanced heads, lambda_min(Sigma)="
            f"{lam.min():.2f}, alpha={ALPHA}, beta={BETA}, {S} seeds, {steps} steps")
    tol_rate = RATE_TOL * ALPHA * BETA * lam
    exact = float_tol(1e-12, 1e-5)
    rows = []
    for name, key in (("ANIL", "anil_traj"), ("first-order ANIL", "fo_traj")):
        r = _rates(out[key])
        err = np.abs(r - pred)
        rows.append(Verdict(
            CLAIM, f"{name} late contraction of sin(largest principal angle) vs "
            "1 - alpha beta lambda_min(Sigma)", float(pred.mean()), float(np.nanmean(r)),
            spread(r), f"every seed within {RATE_TOL:g} alpha beta lambda_min "
            f"({tol_rate.min():.1e}); window {RATE_WINDOW}", bool(np.all(err <= tol_rate)),
            "check", note + f"; max |error| {np.nanmax(err):.1e}"))
    for name, key in (("ANIL", "anil_gram"), ("first-order ANIL", "fo_gram")):
        g = out[key]
        rows.append(Verdict(CLAIM, f"{name}: ||alpha B^T B - I||_2 at the end", 0.0,
                            float(g.max()), spread(g), "every seed < 1e-3",
                            bool(np.all(g < 1e-3)), "check", note))
    for quantity, key in (
            ("ANIL: every step's wrong-subspace part vs the closed form (I-P*)B(I - alpha^2 beta "
             "B^T C B), ||.||_F/||B||_F", "closed_form_gap"),
            ("first-order ANIL: every step's wrong-subspace part vs the same closed form",
             "fo_closed_form_gap")):
        v = out[key]
        rows.append(Verdict(CLAIM, quantity, 0.0, float(v.max()), spread(v),
                            f"every seed < {exact:g}", bool(np.all(v < exact)), "check", note))
    # between the stability bounds: alpha beta lambda_max(Sigma_hat) = BETA_EDGE (balanced heads)
    ab_max = ALPHA * (BETA_EDGE / ALPHA) * np.linalg.eigvalsh(out["sigma_hat"])[:, -1]
    eg = out["edge_gram"]                                                # (S, 2): ANIL, FO
    edge_note = (note.replace(f"beta={BETA}", f"beta={BETA_EDGE / ALPHA:g}")
                 + f"; alpha beta lambda_max = {ab_max.min():.3g}..{ab_max.max():.3g}")
    fo_pred = np.asarray([float(rep_theory.anil_late_rate(ALPHA, BETA_EDGE / ALPHA, s_,
                                                          first_order=True)) for s_ in sig])
    fo_r = _rates(out["edge_fo_traj"])
    fo_tol = RATE_TOL * BETA_EDGE * lam
    rows.append(Verdict(
        CLAIM, f"first-order ANIL at alpha beta lambda_max = {BETA_EDGE:g} (stable below 1): "
        "||alpha B^T B - I||_2, max over the last 10 steps", 0.0, float(eg[:, 1].max()),
        spread(eg[:, 1]), "every seed < 1e-3", bool(np.all(eg[:, 1] < 1e-3)), "check",
        edge_note + f"; late rate {np.nanmean(fo_r):.4f} vs 1 - alpha beta lambda_min "
        f"{fo_pred.mean():.4f} (max |error| {np.nanmax(np.abs(fo_r - fo_pred)):.1e})"))
    rows.append(Verdict(
        CLAIM, f"first-order ANIL at alpha beta lambda_max = {BETA_EDGE:g}: late contraction vs "
        "1 - alpha beta lambda_min(Sigma)", float(fo_pred.mean()), float(np.nanmean(fo_r)),
        spread(fo_r), f"every seed within {RATE_TOL:g} alpha beta lambda_min "
        f"({fo_tol.min():.1e})", bool(np.all(np.abs(fo_r - fo_pred) <= fo_tol)), "check",
        edge_note))
    rows.append(Verdict(
        CLAIM, f"ANIL at alpha beta lambda_max = {BETA_EDGE:g} (stable only below 1/2): "
        "||alpha B^T B - I||_2, max over the last 10 steps", "> 0.01 (the scale mode's factor "
        f"1 - 4 alpha beta lambda_max = {1 - 4 * BETA_EDGE:g})", float(eg[:, 0].min()),
        spread(eg[:, 0]), "every seed > 0.01", bool(np.all(eg[:, 0] > 0.01)), "check",
        edge_note + f"; per seed {np.array2string(eg[:, 0], precision=2)}"))
    avg = np.abs(out["avg_traj"] - out["avg_traj"][:, :1]).max(axis=1)
    anil_end = out["anil_traj"][:, -1]
    rows.append(Verdict(
        CLAIM, "average loss (shared head, E[w*]=0): max_t |sin theta(B_t,B*) - sin theta(B_0,B*)|",
        0.0, float(avg.max()), spread(avg), f"every seed < {exact:g}",
        bool(np.all(avg < exact)), "check",
        note + f"; start {out['avg_traj'][:, 0].mean():.3f}, ANIL ends at {anil_end.max():.1e}"))
    for quantity, key in (
            ("one-step MAML (w0 fixed at 0, Gaussian heads) vs ANIL: max |B_MAML - B_ANIL| over "
             "the trajectory", "maml_fixed_gap"),
            ("one-step MAML (w0 learned, symmetric heads): its step from every ANIL iterate at "
             "w0=0 vs ANIL's next iterate, max |B diff|", "maml_step_gap"),
            ("one-step MAML (w0 learned, symmetric heads): |w0 after that step|, max over the "
             "iterates", "maml_step_w0")):
        v = out[key]
        rows.append(Verdict(CLAIM, quantity, 0.0, float(v.max()), spread(v),
                            f"every seed < {exact:g}", bool(np.all(v < exact)), "check", note))
    gap, w0e = out["maml_sym_gap"], out["maml_sym_w0"]
    rows.append(Verdict(
        CLAIM, "one-step MAML run freely (w0 learned, symmetric heads): max |B_MAML - B_ANIL| over "
        "the trajectory", "measured", float(gap.max()), spread(gap), "",
        bool(np.all(np.isfinite(gap))), "measured",
        note + f"; ||w0|| at the end, max {w0e.max():.1e}: w0 = 0 is a fixed point, but rounding "
        "in w0 (the pairwise cancellation of the head set is not exact in floating point) grows "
        "where that fixed point is unstable in w0"))
    g = out["maml_grad_rel"]
    tol_g = float_tol(1e-10, 1e-4)
    rows.append(Verdict(
        CLAIM, "one-step MAML gradient in w0 at w0=0: autodiff vs closed form (relative)", 0.0,
        float(g.max()), spread(g), f"every seed < {tol_g:g}", bool(np.all(g < tol_g)), "check",
        note + "; Gaussian heads"))
    w0g, gapg = out["maml_gauss_w0"], out["maml_gauss_gap"]
    rows.append(Verdict(
        CLAIM, "one-step MAML (w0 learned, Gaussian heads: not symmetric): ||w0|| and "
        "max |B_MAML - B_ANIL| at the end", "measured", float(w0g.mean()), spread(w0g), "",
        bool(np.all(np.isfinite(w0g)) and np.all(np.isfinite(gapg))), "measured",
        f"||w0|| per seed {np.array2string(w0g, precision=2)}; |B diff| per seed "
        f"{np.array2string(gapg, precision=2)}; final sin theta MAML "
        f"{out['maml_gauss_dist'].max():.1e}, ANIL {out['anil_gauss_traj'][:, -1].max():.1e}"))
    data = dict(setting=setting, **{k: out[k] for k in (
        "anil_traj", "fo_traj", "avg_traj", "anil_gauss_traj", "lambda_min", "fo_closed_form_gap",
        "closed_form_gap", "maml_fixed_gap", "maml_step_gap", "maml_step_w0", "maml_grad_rel",
        "maml_gauss_w0")}, d=cfg["d"], k=cfg["k"], T=cfg["T"], steps=steps)
    return ClaimResult(CLAIM, rows, data, time.perf_counter() - t0)


def plot(result: ClaimResult, out_dir) -> list:
    """``rep_r3_anil.{png,pdf}``: distance to B* per step (ANIL, first-order ANIL, average loss)
    beside the predicted late rate; the exact identities' residuals."""
    plt = pyplot()
    D = result.data
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw=dict(width_ratios=[1.5, 1]))
    it = np.arange(D["anil_traj"].shape[-1])
    for key, color, label in (("anil_traj", "tab:blue", "ANIL"),
                              ("fo_traj", "tab:orange", "first-order ANIL"),
                              ("avg_traj", "tab:gray", "average loss (E[w*] = 0)")):
        Y = np.maximum(D[key], 1e-17)
        for s in range(Y.shape[0]):
            ax0.semilogy(it, Y[s], color=color, lw=0.8, alpha=0.7, label=label if s == 0 else None)
    rate = 1 - ALPHA * BETA * D["lambda_min"].mean()
    y0 = D["anil_traj"][0, it.size // 3]
    ax0.semilogy(it, y0 * rate ** (it - it.size // 3), "k--", lw=1,
                 label=r"slope $1-\alpha\beta\lambda_{\min}(\Sigma_w)$")
    ax0.axhspan(*RATE_WINDOW, color="k", alpha=0.05, lw=0, label="rate-fit window")
    ax0.set_ylim(1e-17, 2)
    ax0.set_xlabel("outer step")
    ax0.set_ylabel(r"$\sin\theta_{\max}(B_t, B^*)$")
    ax0.set_title(f"population, d={D['d']}, k={D['k']}, T={D['T']}, "
                  f"{D['anil_traj'].shape[0]} seeds (one line each)", fontsize=9)
    ax0.legend(fontsize=7, loc="lower left")
    ax0.grid(True, which="both", alpha=0.3)
    names = ["closed form\nvs ANIL", "closed form\nvs FO-ANIL", "MAML (w0=0)\nvs ANIL",
             "MAML step\nvs ANIL step", "MAML step\n|w0|", "MAML w0-grad\nvs autodiff"]
    keys = ["closed_form_gap", "fo_closed_form_gap", "maml_fixed_gap", "maml_step_gap",
            "maml_step_w0", "maml_grad_rel"]
    floor = 1e-20   # a log axis: residuals below it (exact zeros among them) drawn at it
    clipped_any = False
    for i, k_ in enumerate(keys):
        v = np.asarray(D[k_], float)
        low = v < floor
        clipped_any |= bool(low.any())
        ax1.semilogy(np.full(int((~low).sum()), i), v[~low], "o", color="tab:blue", ms=4,
                     label="residual of one seed" if i == 0 else None)
        ax1.semilogy(np.full(int(low.sum()), i), np.full(int(low.sum()), floor), "v",
                     mfc="none", color="tab:red", ms=7)
    if clipped_any:
        ax1.plot([], [], "v", mfc="none", color="tab:red", ms=7,
                 label=f"below {floor:g} (0 included): drawn at {floor:g}")
    ax1.axhline(1e-12, color="k", ls="--", lw=1, label="tolerance 1e-12")
    ax1.set_xticks(range(len(names)))
    ax1.set_xticklabels(names, fontsize=6, rotation=30, ha="right")
    ax1.set_ylabel("residual (per seed)")
    ax1.set_title("exact identities", fontsize=9)
    ax1.set_ylim(top=ax1.get_ylim()[1] * 1e4)   # room for the legend above the points
    ax1.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"R3  ANIL, first-order ANIL, one-step MAML, average loss  ({D['setting']})",
                 fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_dir, "rep_r3_anil", dpi=figure_dpi(D["setting"]))
