"""Claim R2: the frozen-representation target floor, by Monte Carlo.

Head-only least squares on m samples of a target ``beta_0`` with an orthonormal ``B_hat``
(d x k) has (:func:`linmeta.families.representation.theory.frozen_target_risk`)

    E||B_hat a_hat - beta_0||^2 = f + (sigma^2 + f) k / (m - k - 1),
    f = ||(I - B_hat B_hat^T) beta_0||^2:

the first term never shrinks with m. Derivation (docs/representation.md#r2): ``z = B_hat^T x`` and
``(I - P) x`` are independent Gaussians, so the unreachable part of the target acts as extra noise
of variance f, and least squares in k dimensions has error ``(sigma^2 + f) tr E[(Z^T Z)^{-1}]``
with the inverse-Wishart mean ``I_k / (m - k - 1)``.

Monte Carlo: for each seed a random ``B_hat`` and a target with a random floor; ``draws`` target
data sets of each size m (the first m rows of one draw of ``max(m)`` rows), fitted by the library's
head-only fine-tuning (:func:`linmeta.families.representation.target.head_only_fit` on the core's
statistics, those of every m stacked). Rows: for each m, the mean over seeds of (measured -
predicted) / predicted, within 3 standard errors (the per-seed standard errors of the Monte Carlo
means, combined).
"""
from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from linmeta.core.data import TaskStats
from linmeta.families.representation import theory
from linmeta.families.representation.target import head_only_fit, target_excess_risk
from linmeta.families.representation._linalg import orthonormalise

from linmeta.engine.claims import ClaimResult, Verdict
from linmeta.engine.claim_support import (figure_dpi, key_for, pyplot, save_figure, settings_value,
                                          spread)

CLAIM = "R2"
NOISE_STD = 0.5

SETTINGS = {
    "tiny": dict(d=5, k=2, seeds=5, draws=400, ms=(8, 16, 64)),
    "quick": dict(d=6, k=2, seeds=5, draws=2500, ms=(8, 16, 32)),
    "full": dict(d=20, k=3, seeds=16, draws=10000, ms=(8, 12, 16, 32, 64, 128)),
}


def _one_seed(key, *, d, k, draws, ms):
    mmax = max(ms)
    z = jax.random.normal(key, (d * k + d + 1 + draws * mmax * (d + 1),))
    B = orthonormalise(z[:d * k].reshape(d, k))  # no LAPACK call in the compiled program
    # target: a random direction, a random fraction outside col(B) (floor between 0 and 1)
    u = z[d * k:d * k + d]
    frac = jax.nn.sigmoid(z[d * k + d])
    P = B @ B.T
    inside, outside = P @ u, u - P @ u
    beta0 = (jnp.sqrt(1 - frac) * inside / jnp.linalg.norm(inside)
             + jnp.sqrt(frac) * outside / jnp.linalg.norm(outside))
    ZZ = z[d * k + d + 1:].reshape(draws, mmax, d + 1)
    X, E = ZZ[..., :d], ZZ[..., d:]
    Y = X @ beta0[:, None] + NOISE_STD * E
    # statistics of the first m samples of every draw, every m stacked (nested prefixes of one
    # draw: one head-only fit for all m)
    edges = (0,) + tuple(ms)
    bx = jnp.stack([jnp.einsum("rni,rnj->rij", X[:, a:b], X[:, a:b])
                    for a, b in zip(edges[:-1], edges[1:])])
    by = jnp.stack([jnp.einsum("rn,rnj->rj", Y[:, a:b, 0], X[:, a:b])
                    for a, b in zip(edges[:-1], edges[1:])])
    m = jnp.asarray(ms, z.dtype)
    L = len(ms)
    st = TaskStats(jnp.cumsum(bx, 0) / m[:, None, None, None],
                   (jnp.cumsum(by, 0) / m[:, None, None])[:, :, None, :],
                   jnp.zeros((L, draws)), jnp.broadcast_to(m[:, None], (L, draws)),
                   jnp.broadcast_to(beta0, (L, draws, 1, d)), jnp.full((L, draws), NOISE_STD))
    err = target_excess_risk(head_only_fit(B, st)[0], st)  # (len(ms), draws)
    preds = jnp.stack([theory.frozen_target_risk(B, beta0, NOISE_STD, mm) for mm in ms])
    return dict(mean=jnp.mean(err, 1), se=jnp.std(err, 1) / math.sqrt(draws), pred=preds,
                floor=theory.frozen_floor(B, beta0))


def run(setting: str = "quick", seed: int = 0) -> ClaimResult:
    """Measure R2 at ``setting`` (tiny/quick/full); see the module docstring."""
    cfg = settings_value(SETTINGS, setting)
    t0 = time.perf_counter()
    d, k, S, R, ms = cfg["d"], cfg["k"], cfg["seeds"], cfg["draws"], tuple(cfg["ms"])
    one = functools.partial(_one_seed, d=d, k=k, draws=R, ms=ms)
    keys = jax.random.split(key_for(seed, CLAIM), S)
    out = {n: np.asarray(v) for n, v in jax.jit(lambda ks: jax.lax.map(one, ks))(keys).items()}
    rel = (out["mean"] - out["pred"]) / out["pred"]  # (S, len(ms))
    rel_se = out["se"] / out["pred"]
    z = rel / rel_se
    rows = []
    note = f"d={d}, k={k}, sigma={NOISE_STD}, {S} seeds x {R} draws, floors " \
           f"{out['floor'].min():.2f}..{out['floor'].max():.2f}"
    for j, m in enumerate(ms):
        r = float(rel[:, j].mean())
        se = float(np.sqrt(np.sum(rel_se[:, j] ** 2)) / S)
        rows.append(Verdict(
            CLAIM, f"FrozenRep (frozen B_hat), head-only target risk vs "
            f"f + (sigma^2+f) k/(m-k-1), m={m}: (measured-predicted)/predicted", 0.0, r,
            spread(rel[:, j]),
            f"|mean| <= 3 SE ({se:.2e})", bool(abs(r) <= 3 * se), "check",
            note + f"; per-seed |z| max {np.abs(z[:, j]).max():.2f}"))
    data = dict(setting=setting, d=d, k=k, draws=R, ms=np.asarray(ms, float), **out)
    return ClaimResult(CLAIM, rows, data, time.perf_counter() - t0)


def plot(result: ClaimResult, out_dir) -> list:
    """``rep_r2_frozen_floor.{png,pdf}``: measured risk against m per seed, prediction, floor.
    One colour per seed (a drawn ``B_hat`` and target), coloured by that seed's floor f: the
    colour bar is the key."""
    plt = pyplot()
    D = result.data
    ms = D["ms"]
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    cmap = plt.get_cmap("viridis")
    S = D["mean"].shape[0]
    norm = plt.Normalize(float(np.min(D["floor"])), float(np.max(D["floor"])))
    for s in np.argsort(D["floor"]):
        c = cmap(norm(float(D["floor"][s])))
        ax.errorbar(ms, D["mean"][s], yerr=3 * D["se"][s], fmt="o", color=c, ms=4, capsize=2)
        ax.plot(ms, D["pred"][s], "-", color=c, lw=1)
        ax.axhline(D["floor"][s], color=c, ls=":", lw=1)
    ax.plot([], [], "ko", label="Monte Carlo mean (3 SE bars)")
    ax.plot([], [], "k-", label=r"predicted $f + (\sigma^2 + f)\,k/(m-k-1)$")
    ax.plot([], [], "k:", label=r"floor $f = \|P_\perp \beta_0\|^2$")
    bar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.02)
    bar.set_label(f"the seed's floor f (one colour per seed, {S} seeds)", fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("target samples m")
    ax.set_ylabel(r"$E\|\hat B \hat a - \beta_0\|^2$")
    draws = f" x {D['draws']} draws" if "draws" in D else ""
    ax.set_title(f"R2  frozen representation: the target floor   d={D['d']}, k={D['k']}, "
                 f"{S} seeds{draws} ({D['setting']})", fontsize=9)
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3,
              frameon=False)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out_dir, "rep_r2_frozen_floor", dpi=figure_dpi(D["setting"]))
