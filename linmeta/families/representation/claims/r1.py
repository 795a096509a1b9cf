"""Claim R1: FrozenRep's population solution is the top-k eigenspace of ``sum_t beta_t beta_t^T``.

With population losses (``S_t = I``, ``s_t = beta_t``) and the heads minimised out
(``w_t = B^T beta_t`` for orthonormal B), the frozen objective is

    F(B) = mean_t 1/2 ||(I - B B^T) beta_t||^2 + sigma^2/2 = 1/2 tr((I - B B^T) C) + sigma^2/2,

``C = (1/T) sum_t beta_t beta_t^T``: minimised by the top-k eigenvectors of C (Ky Fan), with
minimum ``1/2 sum_{i>k} lambda_i(C) + sigma^2/2``. Checked by the library's solver (FrozenRep's
alternating minimisation, :func:`linmeta.families.representation.frozen_rep`'s iteration) against an
independent eigendecomposition (:func:`linmeta.families.representation.theory.pca_subspace`) on random
instances of three kinds: balanced heads (exactly shared), Gaussian heads, and perturbed tasks
(``beta_t = (B* + Delta*_t) w*_t``, where the PCA subspace is no longer B*). The runs come from the
population program shared with R3, R5 and R6 (:mod:`linmeta.engine.claims._rep_population`). Tolerances:
1e-10 (float64; 1e-4 in float32) on the sine of the largest principal angle, 1e-12 (1e-5) relative
on the objective. The solver's step is ``eta = 1.9 / lambda_1(C)``; its asymptotic contraction per
step, ``max(|1 - eta (lambda_k - lambda_{k+1})|, |1 - eta (lambda_1 - lambda_d)|)``
(:func:`linmeta.families.representation.theory.alternating_late_rate`: the eigengap's mode is the slowest
only while ``eta (lambda_k - lambda_{k+1} + lambda_1 - lambda_d) <= 2``), raised to half the number
of steps (the other half allowed for the transient) is added to each run's tolerance.
"""
from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np

from linmeta.engine.claims import ClaimResult, Verdict
from ._population import KINDS, NOISE_STD, SETTINGS, population_runs
from linmeta.engine.claim_support import (figure_dpi, float_tol, pyplot, save_figure,
                                          settings_value, spread)

CLAIM = "R1"


def run(setting: str = "quick", seed: int = 0) -> ClaimResult:
    """Measure R1 at ``setting`` (tiny/quick/full); see the module docstring."""
    cfg = settings_value(SETTINGS, setting)
    t0 = time.perf_counter()
    out = population_runs(setting, seed)
    d, k, T, S, steps = cfg["d"], cfg["k"], cfg["T"], cfg["seeds"], cfg["steps"]
    traj = out["r1_traj"]  # (seeds, kinds, steps + 1): distance to the PCA subspace
    dist, rel, rate = traj[..., -1], out["r1_obj_rel"], out["r1_rate"]
    tol_d, tol_o = float_tol(1e-10, 1e-4), float_tol(1e-12, 1e-5)
    bound = tol_d + rate ** (steps // 2)  # dtype + the iteration error (half the steps allowed
    # for the transient before the asymptotic contraction sets in)
    note = (f"d={d}, k={k}, T={T}, noise {NOISE_STD}, {S} seeds x {len(KINDS)} kinds, {steps} "
            f"steps of size 1.9/lambda_1(C), {jnp.asarray(0.0).dtype}; slowest contraction "
            f"{rate.max():.3f}^{steps // 2} = {rate.max() ** (steps // 2):.1e}")
    rows = [
        Verdict(CLAIM, "FrozenRep (population) vs top-k eigenvectors of sum_t beta_t beta_t^T: "
                "sin of the largest principal angle", 0.0, float(dist.max()), spread(dist),
                f"every run < {tol_d:g} (dtype) + its contraction^(steps/2)",
                bool(np.all(dist < bound)), "check",
                note + "; " + ", ".join(f"{kind}: max {dist[:, i].max():.1e}"
                                        for i, kind in enumerate(KINDS))),
        Verdict(CLAIM, "FrozenRep objective vs 1/2 sum_{i>k} lambda_i(C) + sigma^2/2 (relative)",
                0.0, float(rel.max()), spread(rel), f"every run < {tol_o:g} (dtype)",
                bool(np.all(rel < tol_o)), "check", note),
    ]
    data = dict(setting=setting, d=d, k=k, T=T, steps=steps, dist=dist, traj=traj, rate=rate,
                tol=tol_d)
    return ClaimResult(CLAIM, rows, data, time.perf_counter() - t0)


def plot(result: ClaimResult, out_dir) -> list:
    """``rep_r1_frozen_pca.{png,pdf}``: FrozenRep's distance to the PCA subspace per iteration."""
    plt = pyplot()
    D = result.data
    traj = np.maximum(D["traj"], 1e-17)  # (seeds, kinds, records)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colors = ("tab:blue", "tab:orange", "tab:green")
    it = np.arange(traj.shape[-1])
    for i, kind in enumerate(KINDS):
        for s in range(traj.shape[0]):
            ax.semilogy(it, traj[s, i], color=colors[i], lw=0.8, alpha=0.7,
                        label=kind if s == 0 else None)
    ax.axhline(D["tol"], color="k", ls="--", lw=1, label=f"tolerance {D['tol']:g}")
    ax.set_xlabel("alternating-minimisation iteration")
    ax.set_ylabel("sin(largest principal angle) to top-k eigvecs of C")
    ax.set_title(f"R1  FrozenRep (population) = PCA of the tasks   d={D['d']}, k={D['k']}, "
                 f"T={D['T']}, {D['traj'].shape[0]} seeds  ({D['setting']})", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out_dir, "rep_r1_frozen_pca", dpi=figure_dpi(D["setting"]))
