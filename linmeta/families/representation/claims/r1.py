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

Closed-form rows (issue 18): ``alternating_late_rate`` against the spectral radius of the
iteration's Jacobian at the top-k eigenspace (central differences, NumPy); the stated domains of
``task_moment``, ``pca_subspace`` and ``alternating_late_rate`` (both sides of every bound).

The public solver (one row): :func:`linmeta.families.representation.frozen_rep` with a ridge
``gamma > 0`` and its default step, a few iterations on finite samples; at the B it returns, its
reported objective, its heads and ``frozen_objective`` against NumPy (ridge heads by
``numpy.linalg.solve``, the samples' mean squared error plus ``gamma/2 ||w||^2``); tolerance
rounding, ``100 d eps cond(B^T S B + gamma I)``.
"""
from __future__ import annotations

import time
import zlib

import jax.numpy as jnp
import numpy as np

from linmeta.core.data import Samples, task_statistics
from linmeta.engine.claims import ClaimResult, Verdict
from linmeta.engine.verdict import Tolerance
from .. import theory
from ..methods import frozen_objective, frozen_rep
from ._population import KINDS, NOISE_STD, SETTINGS, population_runs
from ._rates import FD_STEP, tangent_spectral_radius
from linmeta.engine.claim_support import (DomainCase, domain_row, figure_dpi, float_tol, pyplot,
                                          save_figure, settings_value, spread)

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
    rows.append(alternating_rate_row(seed))
    rows.append(frozen_rep_objective_row(seed))
    rows.append(closed_form_domains())
    data = dict(setting=setting, d=d, k=k, T=T, steps=steps, dist=dist, traj=traj, rate=rate,
                tol=tol_d)
    return ClaimResult(CLAIM, rows, data, time.perf_counter() - t0)


def alternating_rate_row(seed: int, *, d: int = 5) -> Verdict:
    """:func:`~linmeta.families.representation.theory.alternating_late_rate` against the spectral
    radius of the Jacobian of the iteration's map at the top-k eigenspace (central differences of
    :func:`~._rates.tangent_spectral_radius`), NumPy eigenvalues): the late contraction of
    the largest principal angle. Eigenvalues passed in a scrambled order; k = 1, 2 and d - 1; steps
    where the eigengap's mode is the slowest and where the spread's mode is."""
    rng = np.random.default_rng([int(seed) % 2 ** 31, zlib.crc32(b"R1 alternating rate")])
    V = np.linalg.qr(rng.standard_normal((d, d)))[0]
    lam = np.array([3.0, 2.0, 1.2, 0.9, 0.2])      # decreasing: V's columns in that order
    order = np.array([3, 0, 4, 1, 2])              # what the closed form is given
    h = FD_STEP
    errs, got = [], []
    for k, eta in ((2, 0.1), (2, 0.6), (1, 0.2), (1, 0.7), (d - 1, 0.3)):
        rho = tangent_spectral_radius(V, lam, eta, k, h)
        pred = float(theory.alternating_late_rate(eta, lam[order], k))
        errs.append(abs(pred - rho))
        got.append(f"k={k} eta={eta}: {pred:.4f}")
    tol = Tolerance.rounding(10, 1 / h, what=f"central differences of step {h:g}")
    return Verdict(
        CLAIM, "alternating_late_rate vs the spectral radius of the iteration's Jacobian at the "
        "top-k eigenspace (central differences)", 0.0, float(max(errs)), spread(errs), tol,
        tol.below(errs), "check",
        f"d={d}, C's eigenvalues {lam.tolist()} (given scrambled); " + ", ".join(got))


def finite_instance(rng, *, T: int, d: int, n: int, noise_std: float = 0.3):
    """n samples per task of T random scalar-output tasks (NumPy: ``x ~ N(0, I_d)``,
    ``y = <x, beta_t> + eps``). Returns ``(X (T, n, d), y (T, n), stats)``: the library's
    :class:`~linmeta.TaskStats` of those samples (working dtype)."""
    betas = rng.standard_normal((T, d))
    X = rng.standard_normal((T, n, d))
    y = np.einsum("tnd,td->tn", X, betas) + noise_std * rng.standard_normal((T, n))
    dt = jnp.asarray(0.0).dtype
    stats = task_statistics(Samples(jnp.asarray(X, dt), jnp.asarray(y[..., None], dt),
                                    jnp.asarray(betas[:, None, :], dt),
                                    jnp.full((T,), noise_std, dt)))
    return X, y, stats


def sample_loss(v, X, y):
    """``L_t(v_t) = (1/n) sum_i 1/2 (y_ti - <x_ti, v_t>)^2`` per task, from the raw samples."""
    r = y - np.einsum("tnd,td->tn", X, v)
    return 0.5 * np.mean(r * r, axis=-1)


def frozen_rep_objective_row(seed: int, *, T: int = 3, d: int = 4, k: int = 2, n: int = 8,
                             gamma: float = 0.3, steps: int = 3) -> Verdict:
    """The public solver :func:`~linmeta.families.representation.frozen_rep` (ridge ``gamma``,
    default step, a few iterations) on finite samples: at the representation B it returns, its
    reported objective, its heads and
    :func:`~linmeta.families.representation.methods.frozen_objective` against NumPy: the ridge
    heads ``w_t = (B^T S_t B + gamma I)^{-1} B^T s_t`` by ``numpy.linalg.solve`` and
    ``mean_t [L_t(B w_t) + gamma/2 ||w_t||^2]`` with ``L_t`` the mean squared error over the raw
    samples."""
    rng = np.random.default_rng([int(seed) % 2 ** 31, zlib.crc32(b"R1 frozen_rep objective")])
    X, y, stats = finite_instance(rng, T=T, d=d, n=n)
    B0 = np.linalg.qr(rng.standard_normal((d, k)))[0]
    res = frozen_rep(stats, k, B0=jnp.asarray(B0, stats.Sxx.dtype), steps=steps, gamma=gamma)
    B = np.asarray(res.representation, float)
    S = np.swapaxes(X, 1, 2) @ X / n
    s = np.einsum("tnd,tn->td", X, y) / n
    G = np.swapaxes(B, 0, 1)[None] @ S @ B + gamma * np.eye(k)
    w = np.linalg.solve(G, (s @ B)[..., None])[..., 0]                     # (T, k)
    want = float(np.mean(sample_loss(w @ B.T, X, y) + 0.5 * gamma * np.sum(w * w, axis=-1)))
    got = dict(reported=abs(float(res.objective) - want) / want,
               frozen_objective=abs(float(frozen_objective(jnp.asarray(B, stats.Sxx.dtype),
                                                           stats, gamma)) - want) / want,
               heads=float(np.max(np.abs(np.asarray(res.heads) - w)) / np.max(np.abs(w))))
    cond = float(np.max(np.linalg.cond(G)))
    tol = Tolerance.rounding(100 * d, cond, what="a k x k solve and sums over d, n")
    moved = float(np.linalg.norm(B @ B.T - B0 @ B0.T))
    return Verdict(
        CLAIM, f"frozen_rep (gamma={gamma:g}, default step) on finite samples: reported objective, "
        "heads and frozen_objective at the returned B vs NumPy (ridge heads by solve, the "
        "samples' mean squared error + gamma/2 ||w||^2): max rel. difference", 0.0,
        max(got.values()), float("nan"), tol, tol.below(list(got.values())), "check",
        f"T={T}, d={d}, k={k}, n={n}, {steps} steps (||BB^T - B0B0^T||_F = {moved:.3g}); "
        + ", ".join(f"{k_}: {v:.1e}" for k_, v in got.items()))


def closed_form_domains() -> Verdict:
    """Stated domains of R1's closed forms: ``task_moment`` (betas (T, d)), ``pca_subspace``
    (``1 <= k <= d``), ``alternating_late_rate`` (eta > 0, eigenvalues (d,), ``1 <= k <= d - 1``,
    ``lambda_k > lambda_{k+1}``, ``eta (lambda_1 - lambda_d) < 2``; both sides of each bound)."""
    betas = np.arange(1.0, 13.0).reshape(4, 3) / 10
    tm, pca, rate = theory.task_moment, theory.pca_subspace, theory.alternating_late_rate
    lam = np.array([0.5, 3.0, 1.0, -1.0])           # lambda_1 - lambda_d = 4
    cases = [
        DomainCase("task_moment, betas (T, d)", lambda: tm(betas)),
        DomainCase("task_moment, betas (d,)", lambda: tm(betas[0]), ("betas", "(T, d)", "(3,)")),
        DomainCase("task_moment, betas (1, T, d)", lambda: tm(betas[None]),
                   ("betas", "(T, d)", "(1, 4, 3)")),
        DomainCase("pca_subspace, k = 1", lambda: pca(betas, 1)),
        DomainCase("pca_subspace, k = d", lambda: pca(betas, 3)),
        DomainCase("pca_subspace, k = 0", lambda: pca(betas, 0), ("k", "[1, d=3]", "got 0")),
        DomainCase("pca_subspace, k = d + 1", lambda: pca(betas, 4), ("k", "[1, d=3]", "got 4")),
        DomainCase("pca_subspace, betas (d,)", lambda: pca(betas[0], 1), ("betas", "(T, d)")),
        DomainCase("late rate, k = 1", lambda: rate(0.1, lam, 1)),
        DomainCase("late rate, k = d - 1", lambda: rate(0.1, lam, 3)),
        DomainCase("late rate, k = 0", lambda: rate(0.1, lam, 0), ("k", "[1, d - 1=3]")),
        DomainCase("late rate, k = d", lambda: rate(0.1, lam, 4), ("k", "[1, d - 1=3]")),
        DomainCase("late rate, eta = 0", lambda: rate(0.0, lam, 1), ("eta", "(0.0, inf]")),
        DomainCase("late rate, eta = -0.1", lambda: rate(-0.1, lam, 1), ("eta", "(0.0, inf]")),
        DomainCase("late rate, eta (lambda_1 - lambda_d) = 2 (1 - 1e-12)",
                   lambda: rate(0.5 * (1 - 1e-12), lam, 1)),
        DomainCase("late rate, eta (lambda_1 - lambda_d) = 2", lambda: rate(0.5, lam, 1),
                   ("eta (lambda_1 - lambda_d) < 2", "got 2")),
        DomainCase("late rate, eta (lambda_1 - lambda_d) = 2.4", lambda: rate(0.6, lam, 1),
                   ("eta (lambda_1 - lambda_d) < 2", "got 2.4")),
        DomainCase("late rate, a tie lambda_2 = lambda_3", lambda: rate(0.1, [2.0, 1.0, 1.0, 0.0],
                                                                         2),
                   ("top-2 eigenspace must be unique", "lambda_k - lambda_(k+1) = 0")),
        DomainCase("late rate, a tie lambda_1 = lambda_2", lambda: rate(0.1, [1.0, 1.0, 0.0], 1),
                   ("top-1 eigenspace must be unique",)),
        DomainCase("late rate, eigenvalues (1, d)", lambda: rate(0.1, lam[None], 1),
                   ("eigenvalues", "1 dimensions")),
    ]
    return domain_row(CLAIM, "task_moment, pca_subspace, alternating_late_rate", cases)


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
