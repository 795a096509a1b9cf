"""Claim R5: FedRep's late contraction in the population is
``max(|1 - eta lambda_min(Sigma)|, |1 - eta lambda_max(Sigma)|)``.

FedRep's alternating minimisation (heads exactly, ``w_t = B^T beta_t`` for orthonormal B; one
gradient step ``B + eta (I - B B^T) C B``; QR) moves the wrong-subspace part by
``E+ = E (I - eta S^T Sigma_hat S)`` and the right-subspace part by
``S+ = S + eta (I - S S^T) Sigma_hat S`` before the QR, with ``E = B_perp^T B``, ``S = B*^T B``.
QR does not change the column space, so the tangents of the principal angles are the singular
values of ``X = E S^{-1}``. B is orthonormal, so ``I - S^T S = E^T E``: second order near
convergence, where S is orthogonal (Q) up to that order and ``X+ = X (I - eta Sigma_hat)`` to first
order (docs/representation.md#r5). The angles' modes contract by ``1 - eta lambda_i``; the slowest
is ``1 - eta lambda_min`` while ``eta (lambda_min + lambda_max) <= 2`` and ``eta lambda_max - 1``
beyond (:func:`linmeta.families.representation.theory.fedrep_late_rate`; B* attracts iff
``eta lambda_max < 2``). Checked on the population runs shared with R1/R3/R6 (balanced heads,
``Sigma_hat = Sigma`` exactly, eigenvalues 0.3 .. 1) at ``eta = 0.5`` and at the two steps of
:data:`~linmeta.engine.claims._rep_population.ETA_EDGE`, 1.4 and 1.8, on either side of the regime
boundary ``eta = 2 / 1.3``: the rate fitted over the records whose sine lies in [1e-10, 1e-4],
within 1e-3 of ``1 - rate`` (at ``eta = 0.5``: of ``eta lambda_min``).

Closed-form rows (issue 18): ``fedrep_late_rate`` for a 3 x 3 Sigma against the spectral radius of
FedRep's Jacobian at B* (central differences) on both sides of the regime boundary; its stated
domain.
"""
from __future__ import annotations

import time
import zlib

import jax.numpy as jnp
import numpy as np

from linmeta.engine.claims import ClaimResult, Verdict
from linmeta.engine.claim_support import (DomainCase, domain_row, figure_dpi, pyplot, save_figure,
                                          settings_value, spread)
from .. import theory as rep_theory
from ._population import ETA, ETA_EDGE, SETTINGS, population_runs
from linmeta.engine.verdict import Tolerance
from ._rates import FD_STEP, RATE_WINDOW, late_rate, tangent_spectral_radius

CLAIM = "R5"
RATE_TOL = 1e-3  # fraction of 1 - rate (eta lambda_min in the first regime)


def _predicted(eta, sigma_hat):
    """:func:`fedrep_late_rate` per seed (eagerly: outside its domain it raises)."""
    return np.asarray([float(rep_theory.fedrep_late_rate(eta, s)) for s in sigma_hat])


def run(setting: str = "quick", seed: int = 0) -> ClaimResult:
    """Measure R5 at ``setting`` (tiny/quick/full); see the module docstring."""
    cfg = settings_value(SETTINGS, setting)
    t0 = time.perf_counter()
    out = population_runs(setting, seed)
    lam = out["lambda_min"]
    sig = jnp.asarray(out["sigma_hat"])
    pred = _predicted(ETA, sig)
    traj = out["fedrep_traj"]
    fits = [late_rate(t) for t in traj]
    r = np.array([f[0] for f in fits])
    err = np.abs(r - pred)
    tol = RATE_TOL * ETA * lam
    note = (f"d={cfg['d']}, k={cfg['k']}, T={cfg['T']} balanced heads, lambda_min(Sigma)="
            f"{lam.min():.2f}, eta={ETA}, {cfg['seeds']} seeds, {cfg['steps']} steps; records "
            f"in the window: {min(f[1] for f in fits)}..{max(f[1] for f in fits)}")
    rows = [Verdict(CLAIM, f"FedRep (eta={ETA}) late contraction of sin(largest principal "
                    "angle) vs 1 - eta lambda_min(Sigma)", float(pred.mean()),
                    float(np.nanmean(r)), spread(r), f"every seed within {RATE_TOL:g} eta "
                    f"lambda_min ({tol.min():.1e}); window {RATE_WINDOW}",
                    bool(np.all(err <= tol)), "check",
                    note + f"; max |error| {np.nanmax(err):.1e}")]
    lam_max = np.linalg.eigvalsh(out["sigma_hat"])[:, -1]
    edge = []
    for j, eta in enumerate(ETA_EDGE):
        p = _predicted(eta, sig)
        fit = [late_rate(t) for t in out["fedrep_edge_traj"][:, j]]
        re = np.array([f[0] for f in fit])
        e = np.abs(re - p)
        t = RATE_TOL * (1 - p)
        b = eta * (lam + lam_max)
        side = "<= 2: rate 1 - eta lambda_min" if b.max() <= 2 else \
            "> 2: rate eta lambda_max - 1" if b.min() > 2 else "on both sides of 2"
        rows.append(Verdict(
            CLAIM, f"FedRep (eta={eta}, eta (lambda_min + lambda_max) = {b.min():.3g}.."
            f"{b.max():.3g} {side}) late contraction vs max(|1 - eta lambda_min|, "
            "|1 - eta lambda_max|)", float(p.mean()), float(np.nanmean(re)), spread(re),
            f"every seed within {RATE_TOL:g} (1 - rate) ({t.min():.1e})",
            bool(np.all(e <= t)), "check",
            note.split("; records")[0].replace(f"eta={ETA}", f"eta={eta}")
            + f"; records in the window: {min(f[1] for f in fit)}..{max(f[1] for f in fit)}"
            + f"; max |error| {np.nanmax(e):.1e}; "
            f"1 - eta lambda_min would give {float(np.mean(1 - eta * lam)):.3g}"))
        edge.append((eta, re, p))
    end = traj[:, -1]
    rows.append(Verdict(CLAIM, "FedRep: sin(largest principal angle) to B* at the end (rounding "
                        "floor)", "measured", float(end.max()), spread(end), "",
                        bool(np.all(np.isfinite(end))), "measured", note))
    rows.append(jacobian_row(seed))
    rows.append(closed_form_domains())
    data = dict(setting=setting, traj=traj, rate=r, pred=pred, d=cfg["d"], k=cfg["k"],
                T=cfg["T"], edge=edge, edge_traj=out["fedrep_edge_traj"])
    return ClaimResult(CLAIM, rows, data, time.perf_counter() - t0)


def jacobian_row(seed: int, *, d: int = 5) -> Verdict:
    """:func:`~linmeta.families.representation.theory.fedrep_late_rate` for a non-diagonal Sigma
    (k = 3: lambda_min, lambda_max and a middle eigenvalue) against the spectral radius of the
    Jacobian of FedRep's population iteration at B* (``C = B* Sigma B*^T``, central differences:
    :func:`~._rates.tangent_spectral_radius`), at steps on both sides of
    ``eta (lambda_min + lambda_max) = 2``."""
    rng = np.random.default_rng([int(seed) % 2 ** 31, zlib.crc32(b"R5 jacobian")])
    lam = np.array([1.6, 1.1, 0.5])        # lambda_max != 1: eta lambda_max != eta / lambda_max
    Q = np.linalg.qr(rng.standard_normal((3, 3)))[0]
    V = np.linalg.qr(rng.standard_normal((d, d)))[0]
    Sigma = (Q * lam) @ Q.T
    lam_C = np.concatenate([lam, np.zeros(d - 3)])
    errs, got = [], []
    for eta in (0.5, 0.9, 1.15):          # eta (lambda_min + lambda_max) = 1.05, 1.89, 2.4
        rho = tangent_spectral_radius(V, lam_C, eta, 3)
        pred = float(rep_theory.fedrep_late_rate(eta, Sigma))
        errs.append(abs(pred - rho))
        got.append(f"eta={eta}: {pred:.3f}")
    tol = Tolerance.rounding(10, 1 / FD_STEP, what=f"central differences of step {FD_STEP:g}")
    return Verdict(
        CLAIM, "fedrep_late_rate vs the spectral radius of FedRep's Jacobian at B* (central "
        "differences), k = 3", 0.0, float(max(errs)), spread(errs), tol, tol.below(errs), "check",
        f"d={d}, Sigma's eigenvalues {lam.tolist()} (non-diagonal); " + ", ".join(got))


def closed_form_domains() -> Verdict:
    """Stated domain of :func:`~linmeta.families.representation.theory.fedrep_late_rate`: eta > 0,
    Sigma square and positive definite, ``eta lambda_max(Sigma) < 2`` (both sides of each
    bound)."""
    f = rep_theory.fedrep_late_rate
    sig = np.array([[0.5, 0.2], [0.2, 1.0]])
    hi = float(np.linalg.eigvalsh(sig)[-1])
    cases = [
        DomainCase("eta lambda_max = 2 (1 - 1e-12)", lambda: f(2 * (1 - 1e-12) / hi, sig)),
        DomainCase("eta lambda_max = 2", lambda: f(1.0, np.diag([0.5, 2.0])),
                   ("eta lambda_max(Sigma) < 2", "got 2")),
        DomainCase("eta lambda_max = 3", lambda: f(1.5, np.diag([0.5, 2.0])),
                   ("eta lambda_max(Sigma) < 2", "got 3")),
        DomainCase("small eta", lambda: f(1e-3, sig)),
        DomainCase("eta = 0", lambda: f(0.0, sig), ("eta", "(0.0, inf]")),
        DomainCase("eta = -0.5", lambda: f(-0.5, sig), ("eta", "(0.0, inf]")),
        DomainCase("Sigma singular", lambda: f(0.5, np.diag([1.0, 0.0])),
                   ("Sigma must be positive definite", "lambda_min = 0")),
        DomainCase("Sigma indefinite", lambda: f(0.5, np.diag([1.0, -0.25])),
                   ("Sigma must be positive definite", "lambda_min = -0.25")),
        DomainCase("Sigma (2, 3)", lambda: f(0.5, np.ones((2, 3))), ("Sigma must be square",)),
        DomainCase("Sigma (1, 2, 2)", lambda: f(0.5, sig[None]), ("Sigma must be square",)),
        DomainCase("Sigma the identity of size 257 (NumPy)", lambda: f(0.5, np.eye(257))),
    ]
    return domain_row(CLAIM, "fedrep_late_rate (eta > 0, Sigma positive definite, eta "
                      "lambda_max < 2)", cases)


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
    for j, (eta, _, p) in enumerate(D.get("edge", ())):
        Y = np.maximum(D["edge_traj"][:, j], 1e-17)
        color = ("tab:purple", "tab:red")[j % 2]
        for s in range(Y.shape[0]):
            ax.semilogy(it, Y[s], color=color, lw=0.8, alpha=0.6,
                        label=f"FedRep, eta={eta:g}" if s == 0 else None)
        j0 = max(1, it.size // 20)
        ax.semilogy(it, Y[0, j0] * p[0] ** (it - j0), ls=":", color=color, lw=1,
                    label=rf"slope max$|1-\eta\lambda|$ = {p[0]:.3g}")
    ax.axhspan(*RATE_WINDOW, color="k", alpha=0.05, lw=0, label="rate-fit window")
    ax.set_ylim(1e-17, 2)
    ax.set_xlabel("iteration (heads exactly, a step on B, QR)")
    ax.set_ylabel(r"$\sin\theta_{\max}(B_t, B^*)$")
    ax.set_title(f"R5  FedRep late contraction   d={D['d']}, k={D['k']}, T={D['T']}, "
                 f"{traj.shape[0]} seeds ({D['setting']})", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out_dir, "rep_r5_fedrep", dpi=figure_dpi(D["setting"]))
