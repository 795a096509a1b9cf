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

Closed-form rows (issue 18): ``frozen_target_risk`` and ``scratch_risk`` by NumPy Monte Carlos
(z-scores within a Student-t band); ``frozen_floor`` (one target, a batch) and
``projector_complement`` against NumPy least squares; the stated domains of the four.
"""
from __future__ import annotations

import functools
import math
import time
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from linmeta.core.data import TaskStats
from linmeta.families.representation import theory
from linmeta.families.representation.target import head_only_fit, target_excess_risk
from linmeta.families.representation._linalg import orthonormalise

from linmeta.engine.claims import ClaimResult, Verdict
from linmeta.engine.claim_support import (DomainCase, domain_row, figure_dpi, key_for, pyplot,
                                          save_figure, settings_value, spread)
from linmeta.engine.verdict import Tolerance

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
    rows.append(scratch_risk_row(seed))
    rows.append(frozen_risk_row(seed))
    rows.append(floor_row(seed))
    rows.append(closed_form_domains())
    data = dict(setting=setting, d=d, k=k, draws=R, ms=np.asarray(ms, float), **out)
    return ClaimResult(CLAIM, rows, data, time.perf_counter() - t0)


SCRATCH_CASES = ((1, 6, 1.0), (3, 9, 0.5))   # (d, m, sigma)
SCRATCH_DRAWS = 20000
SCRATCH_P = 1e-3


def scratch_risk_row(seed: int) -> Verdict:
    """:func:`~linmeta.families.representation.theory.scratch_risk` by Monte Carlo: least squares on
    m samples ``x ~ N(0, I_d)``, ``y = <x, beta_0> + sigma e`` (NumPy, batched normal equations),
    ``SCRATCH_DRAWS`` draws per case; the z-score of the mean of ``||beta_hat - beta_0||^2``
    against the closed form, every case within the Student-t band of level ``SCRATCH_P`` (split
    over the cases)."""
    rng = np.random.default_rng([int(seed) % 2 ** 31, zlib.crc32(b"R2 scratch risk")])
    N = SCRATCH_DRAWS
    z, got = [], []
    for d, m, sigma in SCRATCH_CASES:
        beta0 = rng.standard_normal(d)
        X = rng.standard_normal((N, m, d))
        y = X @ beta0 + sigma * rng.standard_normal((N, m))
        Xty = np.einsum("nmd,nm->nd", X, y)[..., None]
        bh = np.linalg.solve(np.swapaxes(X, 1, 2) @ X, Xty)[..., 0]
        err = np.sum((bh - beta0) ** 2, axis=1)
        pred = float(theory.scratch_risk(d, m, sigma))
        z.append((err.mean() - pred) / (err.std(ddof=1) / math.sqrt(N)))
        got.append(f"d={d}, m={m}, sigma={sigma}: {err.mean():.4f} vs {pred:.4f}")
    tol = Tolerance.seeds(1.0, N, p=SCRATCH_P / len(SCRATCH_CASES))
    return Verdict(CLAIM, "learning the target from scratch: Monte Carlo E||beta_hat - beta_0||^2 "
                   "vs sigma^2 d / (m - d - 1), |z| (mean over draws)", 0.0,
                   float(np.max(np.abs(z))), spread(z), tol, tol.admits(z), "check",
                   f"{N} draws per case; " + "; ".join(got))


FROZEN_CASES = ((4, 2, 7, 0.5), (4, 2, 8, 0.7))   # (d, k, m, sigma): m - k - 1 even and odd
FROZEN_DRAWS = 20000


def frozen_risk_row(seed: int) -> Verdict:
    """:func:`~linmeta.families.representation.theory.frozen_target_risk` by a NumPy Monte Carlo
    (beside the claim's rows, which fit with the library): a random orthonormal ``B_hat`` and a
    target with floor f = 0.3, head-only least squares ``a_hat = argmin ||X B_hat a - y||`` on m
    samples, ``FROZEN_DRAWS`` draws per case (d = 4, k = 2, m = 7 and 8); the z-score of the mean of
    ``||B_hat a_hat - beta_0||^2``, every case within the Student-t band of level
    ``SCRATCH_P`` (split over the cases)."""
    rng = np.random.default_rng([int(seed) % 2 ** 31, zlib.crc32(b"R2 frozen risk")])
    N = FROZEN_DRAWS
    z, got = [], []
    for d, k, m, sigma in FROZEN_CASES:
        Q = np.linalg.qr(rng.standard_normal((d, d)))[0]
        B = Q[:, :k]
        beta0 = B @ rng.standard_normal(k) + math.sqrt(0.3) * Q[:, k]   # floor f = 0.3
        X = rng.standard_normal((N, m, d))
        y = X @ beta0 + sigma * rng.standard_normal((N, m))
        Z = X @ B
        a = np.linalg.solve(np.swapaxes(Z, 1, 2) @ Z, np.einsum("nmk,nm->nk", Z, y)[..., None])
        err = np.sum((a[..., 0] @ B.T - beta0) ** 2, axis=1)
        pred = float(theory.frozen_target_risk(B, beta0, sigma, m))
        z.append((err.mean() - pred) / (err.std(ddof=1) / math.sqrt(N)))
        got.append(f"d={d}, k={k}, m={m}, sigma={sigma}: {err.mean():.4f} vs {pred:.4f}")
    tol = Tolerance.seeds(1.0, N, p=SCRATCH_P / len(FROZEN_CASES))
    return Verdict(CLAIM, "frozen B_hat, head-only least squares: NumPy Monte Carlo "
                   "E||B_hat a_hat - beta_0||^2 vs f + (sigma^2+f) k/(m-k-1), |z| (mean over "
                   "draws)", 0.0, float(np.max(np.abs(z))), spread(z), tol, tol.admits(z),
                   "check", f"{N} draws per case, floor 0.3; " + "; ".join(got))


def floor_row(seed: int, *, d: int = 4, k: int = 2, T: int = 3) -> Verdict:
    """:func:`~linmeta.families.representation.theory.frozen_floor` (one target and a batch (T, d))
    and :func:`~linmeta.families.representation.theory.projector_complement` for a B of full
    column rank that is not orthonormal, against NumPy's least-squares residual
    ``||beta_0 - B lstsq(B, beta_0)||^2`` and ``I - B pinv(B)``."""
    rng = np.random.default_rng([int(seed) % 2 ** 31, zlib.crc32(b"R2 floor")])
    B = rng.standard_normal((d, k)) @ np.array([[2.0, 0.5], [0.0, 0.7]])
    b0 = rng.standard_normal((T, d))
    res = b0.T - B @ np.linalg.lstsq(B, b0.T, rcond=None)[0]
    want = np.sum(res * res, axis=0)
    batch = np.asarray(theory.frozen_floor(B, b0))
    one = np.asarray([theory.frozen_floor(B, b) for b in b0])
    proj = np.asarray(theory.projector_complement(B)) - (np.eye(d) - B @ np.linalg.pinv(B))
    errs = [np.max(np.abs(batch - want) / want) if batch.shape == want.shape else np.inf,
            np.max(np.abs(one - want) / want), np.max(np.abs(proj))]
    cond = float(np.linalg.cond(B))
    tol = Tolerance.rounding(100 * d, cond ** 2, what="Gram-Schmidt and least squares, cond(B)^2")
    return Verdict(
        CLAIM, "frozen_floor (one target, a batch) and projector_complement vs NumPy's "
        "least-squares residual and I - B pinv(B), B not orthonormal (relative)", 0.0,
        float(max(errs)), spread(errs), tol, tol.below(errs), "check",
        f"d={d}, k={k}, cond(B) {cond:.2f}, {T} targets; floors "
        f"{np.array2string(want, precision=3)}")


def closed_form_domains() -> Verdict:
    """Stated domains of R2's closed forms: ``projector_complement`` and ``frozen_floor`` (B (d, k),
    k <= d; beta0 (d,) or a batch), ``frozen_target_risk`` (``m >= k + 2``, sigma >= 0),
    ``scratch_risk`` (``d >= 1``, ``m >= d + 2``, sigma >= 0); both sides of each bound."""
    d, k = 4, 2
    B = np.eye(d)[:, :k] + 0.1
    b0 = np.array([0.3, -1.0, 0.5, 2.0])
    B1 = np.eye(d)[:, :1] + 0.1                  # k = 1: k + 2 differs from 2 k and k^2
    pc, ff, fr, sr = (theory.projector_complement, theory.frozen_floor, theory.frozen_target_risk,
                      theory.scratch_risk)
    cases = [
        DomainCase("projector, B (d, k)", lambda: pc(B)),
        DomainCase("projector, B (d, d)", lambda: pc(np.eye(d))),
        DomainCase("projector, B (d, d + 1)", lambda: pc(np.ones((d, d + 1))),
                   ("B", "(d, k) with k <= d", "got (4, 5)")),
        DomainCase("projector, B (d,)", lambda: pc(np.ones(d)), ("B", "(d, k)", "got (4,)")),
        DomainCase("projector, B (1, d, k)", lambda: pc(B[None]), ("B", "(d, k)")),
        DomainCase("projector, B (d, k, k)", lambda: pc(np.ones((d, k, k))), ("B", "(d, k)")),
        DomainCase("frozen floor, beta0 (d,)", lambda: ff(B, b0)),
        DomainCase("frozen floor, beta0 a batch (2, d)", lambda: ff(B, np.stack([b0, -b0]))),
        DomainCase("frozen floor, B (d, d + 1)", lambda: ff(np.ones((d, d + 1)), b0), ("B",)),
        DomainCase("frozen floor, beta0 with NaN", lambda: ff(B, b0 * np.nan), ("beta0", "NaN")),
        DomainCase("frozen risk, m = k + 2", lambda: fr(B, b0, 0.5, k + 2)),
        DomainCase("frozen risk, sigma = 0", lambda: fr(B, b0, 0.0, 10)),
        DomainCase("frozen risk, k = 1, m = k + 2", lambda: fr(B1, b0, 0.5, 3)),
        DomainCase("frozen risk, k = 1, m = k + 1", lambda: fr(B1, b0, 0.5, 2), ("m", "[3, inf]")),
        DomainCase("frozen risk, m = k + 1", lambda: fr(B, b0, 0.5, k + 1), ("m", "[4, inf]")),
        DomainCase("frozen risk, sigma = -0.1", lambda: fr(B, b0, -0.1, 10),
                   ("noise_std", "[0.0, inf]")),
        DomainCase("frozen risk, B (d, d + 1)", lambda: fr(np.ones((d, d + 1)), b0, 0.5, 10),
                   ("B", "k <= d")),
        DomainCase("scratch risk, d = 1, m = 3", lambda: sr(1, 3, 0.5)),
        DomainCase("scratch risk, m = d + 2, sigma = 0", lambda: sr(4, 6, 0.0)),
        DomainCase("scratch risk, d = 3, m = d + 2", lambda: sr(3, 5, 0.5)),
        DomainCase("scratch risk, d = 3, m = d + 1", lambda: sr(3, 4, 0.5), ("m", "[5, inf]")),
        DomainCase("scratch risk, d = 0", lambda: sr(0, 3, 0.5), ("d", "[1, inf]")),
        DomainCase("scratch risk, m = d + 1", lambda: sr(4, 5, 0.5), ("m", "[6, inf]")),
        DomainCase("scratch risk, sigma = -0.1", lambda: sr(4, 10, -0.1),
                   ("noise_std", "[0.0, inf]")),
    ]
    return domain_row(CLAIM, "projector_complement, frozen_floor, frozen_target_risk, "
                      "scratch_risk", cases)


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
