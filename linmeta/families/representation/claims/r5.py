"""Claim R5: FedRep's late contraction is ``1 - eta lambda_min(Sigma)`` in the population.

FedRep's alternating minimisation (heads exactly, ``w_t = B^T beta_t`` for orthonormal B; one
gradient step ``B + eta (I - B B^T) C B``; QR) moves the wrong-subspace part by
``E+ = E (I - eta S^T Sigma_hat S)`` and the right-subspace part by
``S+ = S + eta (I - S S^T) Sigma_hat S`` before the QR, with ``E = B_perp^T B``, ``S = B*^T B``.
QR does not change the column space, so the tangents of the principal angles are the singular
values of ``E+ S+^{-1}``. Near convergence ``S`` is orthogonal (``I - S S^T = E^T E``-small), so
``tan Theta+ ~ E (I - eta Q^T Sigma_hat Q) Q^T``: the largest principal angle contracts at
``1 - eta lambda_min(Sigma_hat)`` per step (docs/representation.md#r5). Checked on the same runs
as R1/R3/R6 (balanced heads, ``Sigma_hat = Sigma`` exactly): the rate fitted over the records
whose sine lies in [1e-10, 1e-4], within 1e-3 of ``eta lambda_min``.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from linmeta.families.representation import theory as rep_theory
from linmeta.engine.claims import ClaimResult, Verdict
from ._population import ETA, SETTINGS, population_runs
from ._rates import RATE_WINDOW, late_rate
from linmeta.engine.claim_support import figure_dpi, pyplot, save_figure, settings_value, spread

CLAIM = "R5"
RATE_TOL = 1e-3  # fraction of eta lambda_min


def run(setting: str = "quick", seed: int = 0) -> ClaimResult:
    """Measure R5 at ``setting`` (tiny/quick/full); see the module docstring."""
    cfg = settings_value(SETTINGS, setting)
    t0 = time.perf_counter()
    out = population_runs(setting, seed)
    lam = out["lambda_min"]
    pred = np.asarray(jax.vmap(lambda s: rep_theory.fedrep_late_rate(ETA, s))(
        jnp.asarray(out["sigma_hat"])))
    traj = out["fedrep_traj"]
    fits = [late_rate(t) for t in traj]
    r = np.array([f[0] for f in fits])
    err = np.abs(r - pred)
    tol = RATE_TOL * ETA * lam
    note = (f"d={cfg['d']}, k={cfg['k']}, T={cfg['T']} balanced heads, lambda_min(Sigma)="
            f"{lam.min():.2f}, eta={ETA}, {cfg['seeds']} seeds, {cfg['steps']} steps; records "
            f"in the window: {min(f[1] for f in fits)}..{max(f[1] for f in fits)}")
    rows = [Verdict(CLAIM, "FedRep late contraction of sin(largest principal angle) vs "
                    "1 - eta lambda_min(Sigma)", float(pred.mean()), float(np.nanmean(r)),
                    spread(r), f"every seed within {RATE_TOL:g} eta lambda_min "
                    f"({tol.min():.1e}); window {RATE_WINDOW}", bool(np.all(err <= tol)),
                    "check", note + f"; max |error| {np.nanmax(err):.1e}")]
    end = traj[:, -1]
    rows.append(Verdict(CLAIM, "FedRep: sin(largest principal angle) to B* at the end (rounding "
                        "floor)", "measured", float(end.max()), spread(end), "",
                        bool(np.all(np.isfinite(end))), "measured", note))
    data = dict(setting=setting, traj=traj, rate=r, pred=pred, d=cfg["d"], k=cfg["k"],
                T=cfg["T"])
    return ClaimResult(CLAIM, rows, data, time.perf_counter() - t0)


def plot(result: ClaimResult, out_dir) -> list:
    """``rep_r5_fedrep.{png,pdf}``: FedRep's distance to B* per step and the predicted slope."""
    plt = pyplot()
    D = result.data
    traj = np.maximum(D["traj"], 1e-17)
    it = np.arange(traj.shape[-1])
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for s in range(traj.shape[0]):
        ax.semilogy(it, traj[s], color="tab:green", lw=0.8, alpha=0.8,
                    label="FedRep (per seed)" if s == 0 else None)
    i0 = max(1, it.size // 10)
    ax.semilogy(it, traj[0, i0] * D["pred"][0] ** (it - i0), "k--", lw=1,
                label=r"slope $1-\eta\,\lambda_{\min}(\Sigma_w)$")
    ax.axhspan(*RATE_WINDOW, color="k", alpha=0.05, lw=0, label="rate-fit window")
    ax.set_ylim(1e-17, 2)
    ax.set_xlabel("iteration (heads exactly, a step on B, QR)")
    ax.set_ylabel(r"$\sin\theta_{\max}(B_t, B^*)$")
    ax.set_title(f"R5  FedRep late contraction   d={D['d']}, k={D['k']}, T={D['T']} "
                 f"({D['setting']})", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out_dir, "rep_r5_fedrep", dpi=figure_dpi(D["setting"]))
