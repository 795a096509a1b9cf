"""Relation M2: the exact inner solution gives Meta-LoRA's objective with the adapters minimised
out (docs/bilevel.md#m2).

With support = query and the inner problem solved exactly, the bilevel objective at a base A is

    F_inf(A) = (1/T) sum_t min_theta L_t(A + Delta(theta)),

the objective of Meta-LoRA, ``(1/T) sum_t L_t(A + U_t U_t^T)``, with every ``U_t`` minimised out
at A -- when the inner adapter is Meta-LoRA's ``U U^T``. In the population the inner minimum is
known (:func:`linmeta.families.bilevel.theory.profiled_objective`, from :func:`linmeta.core.theory.lora_bias`):
for ``U U^T`` the PSD rank-r optimum (the skew part of ``M*_t - A`` plus every negative and every
positive eigenvalue beyond the r largest of its symmetric part stay in the error); for ``U V^T``
Eckart-Young (never larger: a PSD rank-r matrix is a rank-r matrix; the inner solve that makes the
relation hold for Meta-LoRA is the PSD one). The two are equal for a task iff some best rank-r
approximation of its residual is PSD (then it is also the best PSD one), so ``U V^T`` is strictly
smaller iff for some task none is: a skew part alone does not decide (``5 e1 e1^T + 0.1 (e3 e4^T -
e4 e3^T)``, r = 1: both 0.01).

Rows, on random Gaussian problems at the bases A = 0, A*, A_SR and a random A:

1. :func:`linmeta.families.bilevel.methods.exact_bilevel_objective` (the library's exact inner solve) against
   the closed form, for ``U U^T``, ``U V^T`` and ``W``;
2. against an independent solver: BFGS (SciPy) on Meta-LoRA's own objective
   :func:`linmeta.methods.meta_lora_excess` over the adapters, with A held fixed, best of 3 starts;
3. the limit K -> infinity: the unrolled inner loop (:func:`linmeta.families.bilevel.methods.bilevel_excess`,
   K gradient steps from the usual starts) at A* and A_SR, with the step ``alpha = 0.2 / max_t
   ||M*_t - A||_2`` (stable for the factorised inner problem), reaches the closed form;
4. ``U V^T`` never above ``U U^T`` (the note counts where it is strictly below), and strictly below
   for a task exactly where no best rank-r approximation of its residual is PSD
   (:func:`best_rank_r_is_psd`, from NumPy's SVD), on every (seed, base, task) and on two
   hand-built residuals: ``5 e1 e1^T + 0.1 (e3 e4^T - e4 e3^T)`` (a skew part, yet equal: 0.01 and
   0.01) and ``-5 e1 e1^T`` (strictly below: 0 against 12.5).

Differences are relative to the objective before adaptation, ``(1/T) sum_t 1/2 ||M*_t - A||_F^2``.
Tolerances: 1e-10 in float64 (1e-4 in float32) for 1 and 3 (rows 3: the inner loop contracts
geometrically; K is chosen so that the contraction is far below the tolerance on these bases),
1e-8 for 2 (BFGS stops at a gradient norm of 1e-12; its objective error is second order in it).
"""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from linmeta.families.bilevel import theory as bl_theory
from linmeta.methods import meta_lora_excess
from linmeta.families.bilevel.methods import (BilevelHyper, Factors, bilevel_excess,
                                              exact_bilevel_objective)

from linmeta.engine.claims import ClaimResult, Verdict
from ._grid import numpy_truths, rng_for, task_matrices, to_jax
from .m3 import population_stats
from linmeta.engine.claim_support import (figure_dpi, float_tol, pyplot, save_figure,
                                          settings_value, spread)
from linmeta.engine.claim_support import DomainCase, domain_row, optimality_measures
from linmeta.engine.verdict import Tolerance
from linmeta.families.bilevel.methods import inner_optimum

CLAIM = "M2"
BASES = ("A=0", "A*", "A_SR", "random A")
SETTINGS = {
    "tiny": dict(d=4, k=1, T=3, r=1, seeds=2, K=1500, bfgs_seeds=1),
    "quick": dict(d=5, k=1, T=3, r=1, seeds=3, K=2000, bfgs_seeds=1),
    "full": dict(d=8, k=2, T=4, r=2, seeds=8, K=20000, bfgs_seeds=8),
}


@functools.partial(jax.jit, static_argnames=("r", "K"))
def _measure(M_star, bases, starts, *, r, K):
    """Closed form, exact inner solve and K-step inner loop at the bases of S problems:
    ``M_star`` (S, T, d, d), ``bases`` (S, 4, d, d), ``starts`` (S, d, r) random factors."""
    d = M_star.shape[-1]
    dt = M_star.dtype

    def one(M, bases, Z):
        pop = population_stats(M)
        scale = jax.vmap(lambda B: jnp.mean(0.5 * jnp.sum((M - B) ** 2, axis=(-2, -1))))(bases)

        def at(B):
            closed = jnp.stack([bl_theory.profiled_objective(B, M, r, a)
                                for a in ("symmetric", "asymmetric", "full")])
            exact = jnp.stack([exact_bilevel_objective(B, pop, pop, r, "symmetric"),
                               exact_bilevel_objective(B, pop, pop, r, "asymmetric"),
                               exact_bilevel_objective(B, pop, pop, d, "full")])
            return closed, exact

        closed, exact = jax.vmap(at)(bases)

        def unrolled(B):  # K -> infinity at A* and A_SR, step 0.2 / max ||M*_t - A||_2
            alpha = 0.2 / jnp.max(jnp.linalg.norm(M - B, ord=2, axis=(-2, -1)))
            h = BilevelHyper(alpha, jnp.asarray(0.0, dt), jnp.asarray(0.0, dt),
                             jnp.asarray(K, jnp.int32), jnp.asarray(1.0, dt))
            sym = Factors(0.1 * Z)
            lora = Factors(0.1 * Z, jnp.zeros((d, r), dt))
            return jnp.stack([
                bilevel_excess(B, sym, pop, pop, h, adapter="symmetric", length=K),
                bilevel_excess(B, lora, pop, pop, h, adapter="asymmetric", length=K)])

        return scale, closed, exact, jax.vmap(unrolled)(bases[1:3])

    return jax.vmap(one)(M_star, bases, starts)


@functools.partial(jax.jit, static_argnames=("T", "d", "r"))
def _ml_value_and_grad(x, B, M_star, *, T, d, r):
    """Meta-LoRA's excess objective at the fixed base B over the flat adapters x, and its
    gradient (population statistics of the task matrices ``M_star``)."""
    stats = population_stats(M_star)

    def f(x):
        return meta_lora_excess(B, x.reshape(T, d, r), stats)

    return jax.value_and_grad(f)(x)


def minimise_over_adapters(B, M_star, r: int, seed: int, starts: int = 3) -> float:
    """``min_U (1/T) sum_t 1/2 ||B + U_t U_t^T - M*_t||^2`` by BFGS, best of ``starts``."""
    T, d = M_star.shape[0], M_star.shape[-1]
    rng = np.random.default_rng(seed)
    best = np.inf
    B, M_star = to_jax((B, M_star))

    def fun(x):
        v, g = _ml_value_and_grad(jnp.asarray(x), B, M_star, T=T, d=d, r=r)
        return float(v), np.asarray(g, float)

    for _ in range(starts):
        x0 = rng.standard_normal(T * d * r).astype(np.asarray(B).dtype)
        res = scipy.optimize.minimize(fun, x0, jac=True, method="BFGS",
                                      options=dict(gtol=1e-12, maxiter=5000))
        best = min(best, float(res.fun))
    return best


def run(setting: str = "quick", seed: int = 0) -> ClaimResult:
    """Measure M2 at ``setting`` (module docstring)."""
    cfg = settings_value(SETTINGS, setting)
    t0 = time.perf_counter()
    d, k, T, r, S, K = cfg["d"], cfg["k"], cfg["T"], cfg["r"], cfg["seeds"], cfg["K"]
    rng = rng_for(seed, CLAIM)
    A, U, _ = numpy_truths(rng, S, d, k, T)
    M_star = task_matrices(A, U)
    Ar = rng.standard_normal((S, d, d))
    bases = np.stack([np.zeros((S, d, d)), A, M_star.mean(axis=1),          # 0, A*, A_SR,
                      (Ar + np.swapaxes(Ar, -1, -2)) / 2 + rng.standard_normal((S, d, d))],
                     axis=1)                                                 # random, not sym.
    out = _measure(*to_jax((M_star, bases, rng.standard_normal((S, d, r)))), r=r, K=K)
    scale, closed, exact, limit = (np.asarray(x) for x in out)
    tol = float_tol(1e-10, 1e-4)
    tol_bfgs = float_tol(1e-8, 1e-3)
    note = f"d={d}, k={k}, T={T}, inner rank r={r}, {S} seeds, bases {', '.join(BASES)}"
    rel = np.abs(exact - closed) / scale[..., None]          # (S, 4, 3)
    rows = []
    for j, (name, how) in enumerate((("U U^T", "PSD rank-r optimum"),
                                     ("U V^T", "Eckart-Young"), ("W", "0"))):
        rows.append(Verdict(
            CLAIM, f"exact inner solve ({name}) vs closed form ({how}): |F_inf - closed| / "
            "F(no adaptation), max over bases and seeds", 0.0, float(rel[..., j].max()),
            spread(rel[..., j]), f"< {tol:g} (dtype)", bool(rel[..., j].max() < tol), "check",
            note))
    # an independent solver on Meta-LoRA's own objective
    bf = []
    for s in range(min(cfg["bfgs_seeds"], S)):
        for b in range(len(BASES)):
            m = minimise_over_adapters(bases[s, b], M_star[s], r, seed=1000 * seed + 10 * s + b)
            bf.append(abs(m - closed[s, b, 0]) / scale[s, b])
    bf = np.asarray(bf)
    rows.append(Verdict(
        CLAIM, "Meta-LoRA's objective with U_t minimised out (BFGS on meta_lora_excess at fixed A, "
        "best of 3) vs the U U^T closed form: rel. difference, max", 0.0, float(bf.max()),
        spread(bf), f"< {tol_bfgs:g} (BFGS gtol 1e-12)", bool(bf.max() < tol_bfgs), "check",
        note + f"; {min(cfg['bfgs_seeds'], S)} seeds"))
    lim = np.abs(limit - closed[:, 1:3, :2]) / scale[:, 1:3, None]   # (S, 2 bases, 2 adapters)
    rows.append(Verdict(
        CLAIM, f"K -> inf: unrolled inner loop (K={K}, alpha=0.2/max||M*-A||_2, U U^T from "
        "U ~ N(0,0.01), U V^T from the LoRA start) vs the closed form at A*, A_SR", 0.0,
        float(lim.max()), spread(lim), f"< {tol:g}", bool(lim.max() < tol), "check", note))
    gap = (closed[..., 0] - closed[..., 1]) / scale               # sym - asym, (S, 4)
    strict = int(np.sum(gap > tol))
    rows.append(Verdict(
        CLAIM, "U V^T profile <= U U^T profile (rel. gap sym - asym, min over bases and seeds)",
        ">= 0", float(gap.min()), spread(gap), f">= -{tol:g}", bool(gap.min() >= -tol), "check",
        note + f"; strictly below in {strict}/{gap.size} cases"))
    rows.append(_strict_gap_row(M_star, bases, scale, r, tol, note))
    rows.append(inner_optimum_where_clipping_binds(rng_for(seed + 1, CLAIM), d=d, k=k, T=T))
    rows.append(profiled_objective_domain(rng_for(seed + 2, CLAIM)))
    rows.append(profiled_objective_names_at_run_time(rng_for(seed + 3, CLAIM)))
    data = dict(setting=setting, seed=seed, d=d, k=k, T=T, r=r, K=K, rel=rel, bfgs=bf, lim=lim,
                closed=closed, scale=scale, tol=tol)
    return ClaimResult(CLAIM, rows, data, time.perf_counter() - t0)


def best_rank_r_is_psd(R, r: int, gap_tol: float = 1e-8) -> bool:
    """Whether the best rank-r approximation of R (Eckart-Young, NumPy's SVD) is positive
    semidefinite. It must be unique: ``sigma_r(R) > sigma_{r+1}(R)`` (relative ``gap_tol``), else
    ``ValueError``; then it is ``U_r S_r V_r^T`` and it is PSD iff it is symmetric with no negative
    eigenvalue."""
    R = np.asarray(R, float)
    U, sv, Vt = np.linalg.svd(R)
    if r < len(sv) and sv[r - 1] - sv[r] <= gap_tol * max(sv[0], 1e-300):
        raise ValueError(f"the best rank-{r} approximation is not unique: sigma_r = "
                         f"{sv[r - 1]:.3g}, sigma_(r+1) = {sv[r]:.3g}")
    Rr = (U[:, :r] * sv[:r]) @ Vt[:r]
    size = max(float(np.abs(Rr).max()), 1e-300)
    if np.abs(Rr - Rr.T).max() > 1e-9 * size:
        return False
    return bool(np.linalg.eigvalsh((Rr + Rr.T) / 2)[0] >= -1e-9 * size)


HAND_BUILT = {   # residual (d = 5), r = 1: (U U^T profile, U V^T profile)
    "5 e1 e1^T + 0.1 (e3 e4^T - e4 e3^T)": (0.01, 0.01),
    "-5 e1 e1^T": (12.5, 0.0),
}


def _hand_built_residuals():
    e = np.eye(5)
    return [5 * np.outer(e[0], e[0]) + 0.1 * (np.outer(e[2], e[3]) - np.outer(e[3], e[2])),
            -5 * np.outer(e[0], e[0])]


def profiles(R, r: int):
    """``(min over PSD rank-r W, min over rank-r W)`` of ``1/2 ||R - W||_F^2`` in NumPy (the
    closed forms of :func:`linmeta.families.bilevel.theory.profiled_objective` for one task, written again
    from NumPy's eigendecomposition and SVD)."""
    R = np.asarray(R, float)
    sym, skew = (R + R.T) / 2, (R - R.T) / 2
    lam = np.sort(np.linalg.eigvalsh(sym))[::-1]
    kept = np.clip(lam[:r], 0.0, None)                      # the r largest, positive part only
    psd = np.sum(skew ** 2) + np.sum(lam ** 2) - np.sum(kept * (2 * lam[:r] - kept))
    sv = np.linalg.svd(R, compute_uv=False)
    return 0.5 * psd, 0.5 * float(np.sum(sv[r:] ** 2))


def _strict_gap_row(M_star, bases, scale, r, tol, note):
    """U V^T strictly below U U^T for a task iff no best rank-r approximation of its residual is
    PSD: every (seed, base, task), and the hand-built residuals of :data:`HAND_BUILT`."""
    S, nb, T = bases.shape[0], bases.shape[1], M_star.shape[1]
    agree, n, strict = 0, 0, 0
    for s_ in range(S):
        for b in range(nb):
            for t in range(T):
                R = M_star[s_, t] - bases[s_, b]
                sym, asym = profiles(R, r)
                below = sym - asym > tol * scale[s_, b]
                agree += int(below == (not best_rank_r_is_psd(R, r)))
                strict += int(below)
                n += 1
    hand = []
    for R, (want_sym, want_asym) in zip(_hand_built_residuals(), HAND_BUILT.values()):
        vals = profiles(R, 1)
        below = vals[0] - vals[1] > tol
        ok = (abs(vals[0] - want_sym) < tol * 25 and abs(vals[1] - want_asym) < tol * 25
              and below == (not best_rank_r_is_psd(R, 1)))
        hand.append((vals, ok))
        agree += int(ok)
        n += 1
    return Verdict(
        CLAIM, "U V^T profile strictly below U U^T's (gap > tol) iff no best rank-r "
        "approximation of the task's residual is PSD: cases agreeing, every (seed, base, task) "
        "and 2 hand-built residuals (r = 1)", n, agree, float("nan"), "all", agree == n, "check",
        note + f"; strictly below in {strict} of {n - len(hand)} random cases; hand-built: "
        + "; ".join(f"{name}: {v[0]:.3g} (U U^T) vs {v[1]:.3g} (U V^T)"
                    for name, (v, _) in zip(HAND_BUILT, hand))
        + " (the first has a skew part and no gap)")


def plot(result: ClaimResult, out_dir) -> list:
    """``bilevel_m2_exact_inner.{png,pdf}``: the profiled objectives per base (U U^T against
    U V^T) and the differences of the three computations."""
    plt = pyplot()
    D = result.data
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(BASES))
    c = D["closed"] / D["scale"][..., None]
    for j, (lab, mk) in enumerate((("U U^T (Meta-LoRA)", "o"), ("U V^T", "s"))):
        ax0.plot(x + 0.1 * (j - 0.5), np.maximum(c[..., j].T, 1e-18), mk, mfc="none" if j else None,
                 color=f"C{j}", label=[lab] + [None] * (c.shape[0] - 1))
    ax0.set_yscale("log")
    ax0.set_xticks(x)
    ax0.set_xticklabels(BASES)
    ax0.set_ylabel("F_inf(A) / F(no adaptation)")
    ax0.set_title("objective with the adapters minimised out")
    ax0.legend(fontsize=8)
    groups = [("exact solve vs closed form", D["rel"].ravel()),
              ("BFGS (Meta-LoRA) vs closed form", D["bfgs"].ravel()),
              (f"K={D['K']} inner steps vs closed form", D["lim"].ravel())]
    for i, (lab, v) in enumerate(groups):
        ax1.semilogy(np.full(v.shape, i), np.maximum(v, 1e-18), "o", ms=4)
    ax1.axhline(D["tol"], color="k", ls="--", lw=1, label=f"tolerance {D['tol']:g}")
    ax1.set_xticks(range(len(groups)))
    ax1.set_xticklabels([g[0] for g in groups], fontsize=7)
    ax1.set_ylim(1e-18, 1)
    ax1.set_ylabel("relative difference")
    ax1.legend(fontsize=8)
    fig.suptitle(f"M2  exact inner solve = Meta-LoRA with adapters minimised out   d={D['d']}, "
                 f"k={D['k']}, T={D['T']}, r={D['r']} ({D['setting']})", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_dir, "bilevel_m2_exact_inner", dpi=figure_dpi(D["setting"]))


def inner_optimum_where_clipping_binds(rng, *, d, k, T, shift=0.3, starts=3) -> Verdict:
    """The exact inner solution for ``U U^T`` (:func:`linmeta.families.bilevel.methods.inner_optimum`,
    symmetric: the r largest eigenvalues of the residual clipped at 0) where the clipping binds:
    rank ``r = k + 1`` and the base ``A_SR + shift I``, so every task's residual
    ``R*_t - Rbar - shift I`` has a negative eigenvalue among its r largest. Against the objective
    it claims to minimise, Meta-LoRA's ``(1/T) sum_t L_t(A + U_t U_t^T)`` at fixed A (population):
    the gradient in U at the returned point relative to that at a random point, and SciPy's L-BFGS
    over U from ``starts`` random starts, which must find nothing lower."""
    r = k + 1
    A, U, _ = numpy_truths(rng, 1, d, k, T)
    M_star = task_matrices(A, U)[0]
    base = M_star.mean(axis=0) + shift * np.eye(d)
    resid = M_star - base
    lam_r = np.linalg.eigvalsh((resid + np.swapaxes(resid, -1, -2)) / 2)[:, -r]  # r-th largest
    B, Mj = to_jax((base, M_star))
    theta = inner_optimum(B, population_stats(Mj), r, "symmetric")
    x_hat = np.asarray(theta.U).ravel()
    x0 = rng.standard_normal((starts, x_hat.size))

    def vg(x):
        return _ml_value_and_grad(jnp.asarray(x, B.dtype), B, Mj, T=T, d=d, r=r)

    foc, gain = optimality_measures(vg, x_hat, x0[0], x0)
    tol_foc = Tolerance.rounding(100 * d, what="gradient in U at the inner optimum / at a random "
                                 "point, eigendecomposition of d x d")
    tol_gain = Tolerance.stated(1e-9, "accuracy of L-BFGS (gtol 1e-10, ftol 1e-13) "
                                "relative to the drop from "
                                "a random point")
    binds = int(np.sum(lam_r < 0))
    return Verdict(
        CLAIM, f"exact inner solve U U^T (inner_optimum, PSD clipping) where it binds (r = k+1 = "
        f"{r}, base A_SR + {shift:g} I): ||grad_U||/||grad at random||; L-BFGS ({starts} starts) "
        "finds nothing lower", 0.0, foc, float("nan"), tol_foc,
        tol_foc.below(foc) and gain < tol_gain.value and binds == T, "check",
        f"d={d}, k={k}, T={T}, population; tasks whose r-th largest eigenvalue is negative: "
        f"{binds}/{T} (must be all); L-BFGS best - F(inner optimum) = {-gain:.1e} x drop (must be "
        f"> -{tol_gain.value:g})")


def profiled_objective_domain(rng, d: int = 4, T: int = 3) -> Verdict:
    """The stated domain of :func:`linmeta.families.bilevel.theory.profiled_objective`: a d x d
    base, task matrices (T, d, d), ``0 <= rank <= d`` for every adapter (the full adapter too,
    whose value does not use the rank), an adapter of :data:`~linmeta.families.bilevel.theory.
    PROFILE_ADAPTERS`. Edges inside (rank 0 and d, one task); just outside refused with a
    ``ValueError`` naming the argument and its range."""
    f = bl_theory.profiled_objective
    A = rng.standard_normal((d, d))
    M = rng.standard_normal((T, d, d))
    cases = []
    for a in bl_theory.PROFILE_ADAPTERS:
        cases += [DomainCase(f"{a}, rank 0", functools.partial(f, A, M, 0, a)),
                  DomainCase(f"{a}, rank d", functools.partial(f, A, M, d, a)),
                  DomainCase(f"{a}, one task", functools.partial(f, A, M[:1], 1, a)),
                  DomainCase(f"{a}, rank -1", functools.partial(f, A, M, -1, a),
                             ("rank", f"[0, d={d}]")),
                  DomainCase(f"{a}, rank d + 1", functools.partial(f, A, M, d + 1, a),
                             ("rank", f"[0, d={d}]"))]
    bad_A = A.copy()
    bad_A[0, 0] = np.nan
    cases += [
        DomainCase("rank 1.5", lambda: f(A, M, 1.5), ("rank", "integer")),
        DomainCase("adapter 'psd'", lambda: f(A, M, 1, "psd"),
                   ("adapter", "'symmetric', 'asymmetric', 'full'")),
        DomainCase("A of shape (d,)", lambda: f(A[0], M, 1), ("A", "2 dimensions")),
        DomainCase("A of shape (2, d, d)", lambda: f(np.stack([A, A]), M, 1),
                   ("A", "2 dimensions")),
        DomainCase("A of shape (1, d): d is A's first dimension", lambda: f(A[:1], M, 1),
                   ("M_star", "(*, 1, 1)")),
        DomainCase("A with a NaN", lambda: f(bad_A, M, 1), ("A", "NaN")),
        DomainCase("M_star of shape (T, d, d + 1)",
                   lambda: f(A, rng.standard_normal((T, d, d + 1)), 1),
                   ("M_star", f"(*, {d}, {d})")),
        DomainCase("M_star of shape (d, d)", lambda: f(A, M[0], 1), ("M_star", f"(*, {d}, {d})")),
    ]
    return domain_row(CLAIM, "profiled_objective (d x d base, (T, d, d) tasks, 0 <= rank <= d, "
                      "adapter)", cases)


def profiled_objective_names_at_run_time(rng, d: int = 4, T: int = 3, r: int = 1) -> Verdict:
    """:func:`linmeta.families.bilevel.theory.profiled_objective` with the adapter's name built
    at run time (a string that is equal to, but not the same object as, the literal: as read
    from a command line or a file) against NumPy's :func:`profiles` (eigendecomposition and SVD
    per task) and 0 for the full adapter, at a random non-symmetric problem where the U U^T and
    U V^T profiles differ."""
    A = rng.standard_normal((d, d))
    M = rng.standard_normal((T, d, d))
    want = np.mean([profiles(Mt - A, r) for Mt in M], axis=0)
    want = {"symmetric": want[0], "asymmetric": want[1], "full": 0.0}
    worst = 0.0
    for name in bl_theory.PROFILE_ADAPTERS:
        built = "".join(list(name))          # equal, not identical
        got = float(bl_theory.profiled_objective(A, M, r, built))
        err = abs(got - want[name]) / want["symmetric"]
        worst = max(worst, err) if np.isfinite(err) else float("inf")
    tol = Tolerance.rounding(100 * d, what="eigendecomposition and SVD of d x d, relative to "
                             "the U U^T profile")
    return Verdict(CLAIM, "profiled_objective with adapter names built at run time vs NumPy "
                   "(PSD rank-r eigenvalues, Eckart-Young, 0 for W): max rel. difference", 0.0,
                   worst, float("nan"), tol, tol.below(worst), "check",
                   f"d={d}, T={T}, r={r}, random A and M*_t; profiles U U^T {want['symmetric']:.4g}"
                   f", U V^T {want['asymmetric']:.4g}")
