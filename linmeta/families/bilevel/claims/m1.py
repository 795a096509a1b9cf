"""Relation M1: where bilevel retraining is standard retraining (docs/bilevel.md#m1).

1. **K = 0** with a fixed start with ``Delta(theta_start) = 0`` (e.g. the LoRA start U random,
   V = 0): ``F_0(A) = (1/T) sum_t L^Q_t(A)``, so a MAML step is ``A - beta (1/T) sum_t grad
   L^Q_t(A)`` and so is a first-order step: standard retraining by gradient descent on the query
   statistics (:func:`linmeta.standard_retraining`, ``method="gd"``, ``lr = beta``), step for step.
   A learned start breaks it: its gradient ``(G V, G^T U)`` moves V off 0 at the first step, so
   from the second step on ``Delta(theta_start) != 0`` and the run leaves SR's (a row checks both:
   the first step equal, the trajectory then different by more than 1e-6).
2. **A start that cannot move** (``U = V = 0``): every inner gradient vanishes, theta_K = theta_0
   for every K, and the run equals the K = 0 run exactly.
3. **Plain MAML in the population** (full-rank inner update from W = 0): the inner loop gives
   ``M_K - M*_t = (1 - alpha)^K (A - M*_t)``, so every outer step is an SR gradient step of size
   ``beta (1-alpha)^(2K)`` (MAML), ``beta (1-alpha)^K`` (first order) or ``beta (1-(1-alpha)^K)``
   (Reptile) (:func:`linmeta.families.bilevel.theory.full_rank_sr_step`), for any alpha: SR's minimiser is
   the only fixed point, attracting iff the step lies in (0, 2). Checked at alpha = 0.2 (all three
   move), at alpha = 1 (MAML and first order: step 0, the base does not move; Reptile: the full
   step beta) and at alpha = 1.5 with K = 3 odd (first order: the negative step -beta/8, so the
   base moves away from SR's minimiser: its distance grows by ``(1 + beta/8)`` per step).

Rows compare whole trajectories (the base after every outer iteration), for every seed, in the
population and (items 1-2) with finite support and query sets. Tolerance: 1e-12 relative in float64
(the compared updates are the same floating-point operations up to the order of a sum, so the
differences are rounding: ``steps x eps`` at most), 1e-4 in float32.
"""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from linmeta.core.data import TaskStats
from linmeta.families.bilevel.methods import maml
from linmeta.methods import standard_retraining
from linmeta.families.bilevel import theory as bl_theory
from linmeta.methods import run_steps, sr_gradient_step
from linmeta.families.bilevel.methods import BilevelHyper, Factors, method_weights

from linmeta.engine.claims import ClaimResult, Verdict
from linmeta.engine.claim_support import (DomainCase, domain_row, figure_dpi, float_tol, pyplot,
                                          save_figure, settings_value, spread)
from linmeta.engine.verdict import Tolerance
from ._grid import (numpy_population, numpy_split, numpy_truths, rel_diff, rng_for, task_matrices,
                    to_jax, trajectories)

CLAIM = "M1"
ALPHA, BETA = 0.1, 0.3          # inner and outer steps of items 1-2
FULL_ALPHA, FULL_K = 0.2, 3     # item 3
FULL_ALPHAS = (FULL_ALPHA, 1.0, 1.5)   # item 3: all move; MAML/FO still, Reptile full step;
#                                        first order's step negative (K odd, 1 < alpha < 2)
START_LR = 0.05                 # item 1 with a learned start
SETTINGS = {
    "tiny": dict(d=4, k=1, T=3, seeds=2, steps=10, N=12, K_zero=4),
    "quick": dict(d=4, k=1, T=3, seeds=3, steps=30, N=12, K_zero=4),
    "full": dict(d=8, k=2, T=4, seeds=8, steps=200, N=40, K_zero=10),
}


def _stack(stats_list):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *stats_list)


def _problems(rng, *, S, d, k, T, N):
    """Population statistics and finite (support, query) statistics (N/2 samples each, noise
    std 0.1) of S Gaussian truths, and three starts (width d): the LoRA start (U random on k
    columns, V = 0), the zero start and the full-rank start (W = 0, V = I). NumPy."""
    A, U, _ = numpy_truths(rng, S, d, k, T)
    M = task_matrices(A, U)
    sup, qry = numpy_split(rng, M, N, 0.1)
    zero = np.zeros((d, d))
    lora = (0.1 * rng.standard_normal((d, d)) * (np.arange(d) < k), zero)
    starts = (lora, (zero, zero), (zero, np.eye(d)))
    return (numpy_population(M, 0.1), sup, qry), starts


def _configs(S, K_zero):
    """(tag, problem index, source, start index, K, alpha, train_v, method, start lr) of every
    run."""
    out = []
    for s in range(S):
        for src in ("population", "finite"):
            for m in ("maml", "fomaml"):
                out.append((("K=0", src), s, src, 0, 0, ALPHA, 1.0, m, 0.0))
                out.append((("zero start", src), s, src, 1, K_zero, ALPHA, 1.0, m, 0.0))
            out.append((("K=0 learned start", src), s, src, 0, 0, ALPHA, 1.0, "maml", START_LR))
        for a in FULL_ALPHAS:
            for m in ("maml", "fomaml", "reptile"):
                out.append(((f"full alpha={a:g}", "population"), s, "population", 2, FULL_K, a,
                            0.0, m, 0.0))
    return out


@functools.partial(jax.jit, static_argnames=("S", "K_zero", "steps"))
def _run_all(problems, starts, *, S, K_zero, steps):
    """Bilevel and SR base trajectories of every run of :func:`_configs` (one program)."""
    pop, sp, qr = problems
    runs = _configs(S, K_zero)
    dt = pop.Sxx.dtype
    pick = lambda tree, i: jax.tree.map(lambda x: x[i], tree)  # noqa: E731
    sup = _stack([pick(pop if r[2] == "population" else sp, r[1]) for r in runs])
    qry = _stack([pick(pop if r[2] == "population" else qr, r[1]) for r in runs])
    st = _stack([Factors(*starts[r[3]]) for r in runs])
    hyp = BilevelHyper(jnp.asarray([r[5] for r in runs], dt), jnp.full(len(runs), BETA, dt),
                       jnp.asarray([r[8] for r in runs], dt),
                       jnp.asarray([r[4] for r in runs], jnp.int32),
                       jnp.asarray([r[6] for r in runs], dt))
    w = jnp.stack([method_weights(r[7], dt) for r in runs])
    d = pop.Sxx.shape[-1]
    A0 = jnp.zeros((d, d), dt)
    bases = trajectories(sup, qry, A0, st, hyp, w, adapter="asymmetric",
                         length=max(FULL_K, K_zero), steps=steps)
    lrs = jnp.asarray([BETA if not r[0][0].startswith("full") else
                       bl_theory.full_rank_sr_step(r[7], BETA, r[5], r[4]) for r in runs], dt)
    sr = jax.vmap(lambda st_, lr: run_steps(lambda a: sr_gradient_step(a, st_, lr), A0, steps,
                                            1, lambda a: a)[1].value)(qry, lrs)
    return bases, sr


def run(setting: str = "quick", seed: int = 0) -> ClaimResult:
    """Measure M1 at ``setting`` (module docstring)."""
    cfg = settings_value(SETTINGS, setting)
    t0 = time.perf_counter()
    d, k, T, S, steps, N = cfg["d"], cfg["k"], cfg["T"], cfg["seeds"], cfg["steps"], cfg["N"]
    dt = jnp.asarray(0.0).dtype
    tol = float_tol(1e-12, 1e-4)
    note = f"d={d}, k={k}, T={T}, {S} seeds, {steps} outer steps, {dt}"

    problems, starts = _problems(rng_for(seed, CLAIM), S=S, d=d, k=k, T=T, N=N)
    problems, starts = tuple(to_jax(p) for p in problems), to_jax(starts)
    bases, sr_bases = _run_all(problems, starts, S=S, K_zero=cfg["K_zero"], steps=steps)
    tags = [r[0] for r in _configs(S, cfg["K_zero"])]
    bases, sr_bases = np.asarray(bases), np.asarray(sr_bases)
    diffs = {}
    for i, (name, src) in enumerate(tags):
        diffs.setdefault((name, src), []).append(rel_diff(bases[i], sr_bases[i]))
    pop0 = TaskStats(*(np.asarray(x)[0] for x in problems[0]))
    pub_diff = None
    if setting == "full":  # the public entry point (the tests check it at every setting)
        U0 = np.asarray(starts[0][0])[:, :k]
        pub = maml(pop0, k, method="maml", inner_steps=0, outer_steps=steps,
                           outer_lr=BETA, U0=U0, V0=np.zeros_like(U0), record_every=1)
        sr0 = standard_retraining(pop0, method="gd", steps=steps, lr=BETA,
                                          record_every=1)
        pub_diff = max(rel_diff(pub.base, sr0.base),
                       rel_diff(pub.history.value, sr0.history.value))

    rows = []
    for (name, src), vals in diffs.items():
        if name == "K=0 learned start":
            continue
        if name.startswith("full"):
            a = float(name.split("=")[1])
            c = (1 - a) ** FULL_K
            what = (f"plain MAML (full-rank inner, alpha={a:g}, K={FULL_K}): maml, fomaml, reptile "
                    f"vs SR with step beta(1-a)^2K, beta(1-a)^K, beta(1-(1-a)^K) = "
                    f"{BETA * c * c:.4g}, {BETA * c:.4g}, {BETA * (1 - c):.4g}")
        else:
            what = {"K=0": "K = 0, fixed LoRA start (Delta = 0): maml and fomaml vs SR gradient "
                           "descent on the query set",
                    "zero start": f"start U = V = 0, K = {cfg['K_zero']}: maml and fomaml vs SR "
                                  "gradient descent (the start cannot move)"}[name]
        rows.append(Verdict(CLAIM, f"{what} ({src}): max rel. difference of the base, every step",
                            0.0, float(np.max(vals)), float(np.max(vals) - np.min(vals)),
                            f"< {tol:g} (rounding; dtype)", bool(np.max(vals) < tol), "check",
                            note + ("; finite: N/2 support, N/2 query samples, N=" + str(N)
                                    if src == "finite" else "")))
    # K = 0 with a learned start: the first outer step is SR's, then the start has moved
    learned = [i for i, t in enumerate(tags) if t[0] == "K=0 learned start"]
    first = np.asarray([rel_diff(bases[i, 1], sr_bases[i, 1]) for i in learned])
    later = np.asarray([rel_diff(bases[i], sr_bases[i]) for i in learned])
    rows.append(Verdict(
        CLAIM, f"K = 0, learned LoRA start (start step {START_LR:g}), maml, population and "
        "finite: max rel. difference of the base to SR's after the first outer step / min over "
        "runs of the max along the trajectory", f"< {tol:g} / > 1e-6",
        f"{first.max():.2e} / {later.min():.2e}", spread(later),
        f"first step < {tol:g}; trajectory > 1e-6 (the start moves: Delta != 0 from step 2)",
        bool(first.max() < tol and later.min() > 1e-6), "check", note))
    # alpha = 1.5, K = 3 (odd): first-order MAML's step beta (1-alpha)^K < 0 repels SR's minimiser
    sr_fix_all = np.mean(np.asarray(problems[0].Syx), axis=1)        # (S, d, d): mean_t M*_t
    fo = [i for i, t in enumerate(_configs(S, cfg["K_zero"]))
          if t[0][0] == "full alpha=1.5" and t[7] == "fomaml"]
    step = float(bl_theory.full_rank_sr_step("fomaml", BETA, 1.5, FULL_K))
    growth = np.asarray([np.linalg.norm(bases[i, -1] - sr_fix_all[tags_s]) /
                         np.linalg.norm(bases[i, 0] - sr_fix_all[tags_s])
                         for i, tags_s in zip(fo, range(S))])
    want = (1 - step) ** steps
    rows.append(Verdict(
        CLAIM, f"first-order MAML, full-rank inner, alpha=1.5, K={FULL_K} (odd): step "
        f"beta(1-alpha)^K = {step:.4g} < 0, so SR's minimiser repels: ||A_N - (A* + Rbar)|| / "
        f"||A_0 - (A* + Rbar)|| vs (1 - step)^N", float(want), float(growth.max()),
        spread(growth), f"rel. < {tol:g}", bool(np.max(np.abs(growth / want - 1)) < tol),
        "check", note))
    if pub_diff is not None:
        rows.append(Verdict(CLAIM, "public linmeta.maml(inner_steps=0) vs "
                            "linmeta.standard_retraining(method='gd'): bases and recorded "
                            "objectives", 0.0, pub_diff, 0.0, f"< {tol:g}", bool(pub_diff < tol),
                            "check", note + "; first seed, population"))
    rows += [sr_step_vs_unrolled_loop(), sr_step_domain()]
    # the consequence of item 3: plain MAML's fixed point is SR's A* + Rbar
    sr_fix = np.mean(np.asarray(pop0.Syx), axis=0)  # population SR minimiser: mean_t M*_t
    full = [i for i, t in enumerate(tags) if t[0] == f"full alpha={FULL_ALPHA:g}"][:3]
    data = dict(setting=setting, seed=seed, d=d, k=k, T=T, steps=steps,
                diffs={f"{a} | {b}": np.asarray(v) for (a, b), v in diffs.items()
                       if a != "K=0 learned start"},   # (not a reduction: it differs from SR)
                full_traj=np.stack([np.linalg.norm(bases[i] - sr_fix[None], axis=(-2, -1))
                                    for i in full]),
                full_methods=["maml", "fomaml", "reptile"], tol=tol)
    return ClaimResult(CLAIM, rows, data, time.perf_counter() - t0)


#: item 3's grid for :func:`sr_step_vs_unrolled_loop`: alpha (0: no inner move; 1: the inner loop
#: lands on M*_t; 1.5 and 2.5: it overshoots, (1 - alpha)^K changes sign with K), K (0: the
#: start is the base), beta (0: the base does not move)
STEP_ALPHAS, STEP_KS, STEP_BETAS = (0.0, 0.5, 1.0, 1.5, 2.5), (0, 1, 2, 3, 5), (0.0, 0.3, 1.7)


def unrolled_outer_step(method: str, a: float, m_star, alpha: float, K: int, beta: float) -> float:
    """One outer step of plain bilevel retraining on scalar population tasks ``1/2 (m - m*_t)^2``
    from the base ``a`` (full-rank inner update from ``W = 0``, K inner gradient steps of size
    alpha, outer step beta), simulated: the inner loop run with its derivative in ``a`` carried
    along (forward mode), MAML's outer gradient ``mean_t (m_K - m*_t) dm_K/da``, first order's
    ``mean_t (m_K - m*_t)``, Reptile's displacement ``mean_t (m_K - a)``. Returns the new base."""
    m_star = np.asarray(m_star, float)
    m = np.full_like(m_star, a)
    dm = np.ones_like(m_star)
    for _ in range(K):
        m, dm = m - alpha * (m - m_star), dm - alpha * dm
    if method == "maml":
        return a - beta * float(np.mean((m - m_star) * dm))
    if method == "fomaml":
        return a - beta * float(np.mean(m - m_star))
    return a + beta * float(np.mean(m - a))


def sr_step_vs_unrolled_loop() -> Verdict:
    """:func:`linmeta.families.bilevel.theory.full_rank_sr_step` against the simulated outer step
    (:func:`unrolled_outer_step`) on a scalar population problem: the step s of SR gradient
    descent it equals must move the base as ``a - s (a - mean_t m*_t)``, for every method and
    every (alpha, K, beta) of :data:`STEP_ALPHAS` x :data:`STEP_KS` x :data:`STEP_BETAS`."""
    a, m_star = 1.3, np.array([-0.4, 0.2, 0.5])        # a - mean m* = 1.2
    gap = a - float(np.mean(m_star))
    worst, where, n = 0.0, "", 0
    for method in ("maml", "fomaml", "reptile"):
        for alpha in STEP_ALPHAS:
            for K in STEP_KS:
                for beta in STEP_BETAS:
                    s = float(bl_theory.full_rank_sr_step(method, beta, alpha, K))
                    sim = unrolled_outer_step(method, a, m_star, alpha, K, beta)
                    scale = max(1.0, abs(1.0 - alpha) ** (2 * K)) * max(beta, 1.0)
                    err = abs((a - s * gap) - sim) / scale
                    n += 1
                    if err > worst or not np.isfinite(err):
                        worst, where = err, f"{method}, alpha={alpha:g}, K={K}, beta={beta:g}"
    tol = Tolerance.rounding(16 * (2 * max(STEP_KS) + 2), what="2K + 2 operations of the "
                             "unrolled loop on numbers of size max(1, |1 - alpha|^2K) "
                             "max(1, beta)")
    return Verdict(
        CLAIM, "full_rank_sr_step vs one simulated outer step of plain maml / fomaml / reptile "
        "(scalar population tasks, inner loop and its derivative unrolled): |a - s (a - mean m*) "
        "- a_new| / scale, max over the grid", 0.0, worst, float("nan"), tol,
        tol.below(worst), "check",
        f"{n} cases: alpha in {STEP_ALPHAS}, K in {STEP_KS}, beta in {STEP_BETAS}; worst at "
        f"{where or '-'}")


def sr_step_domain() -> Verdict:
    """The stated domain of :func:`linmeta.families.bilevel.theory.full_rank_sr_step`: every
    method, ``alpha, beta >= 0``, ``K >= 0`` (edges inside; just outside refused, naming the
    argument and its range)."""
    f = bl_theory.full_rank_sr_step
    cases = [DomainCase(f"{m}, beta = alpha = 0, K = 0", functools.partial(f, m, 0.0, 0.0, 0))
             for m in ("maml", "fomaml", "reptile")]
    cases += [
        DomainCase("alpha = 2.5, K = 7, beta = 3 (inner loop diverges: still the identity)",
                   lambda: f("fomaml", 3.0, 2.5, 7)),
        DomainCase("method 'sr'", lambda: f("sr", 0.1, 0.1, 1),
                   ("method", "'maml', 'fomaml', 'reptile'")),
        DomainCase("beta = -0.1", lambda: f("maml", -0.1, 0.1, 1), ("outer_lr", "[0.0, inf]")),
        DomainCase("beta = nan", lambda: f("maml", float("nan"), 0.1, 1), ("outer_lr", "finite")),
        DomainCase("alpha = -0.1", lambda: f("maml", 0.1, -0.1, 1), ("inner_lr", "[0.0, inf]")),
        DomainCase("alpha = inf", lambda: f("reptile", 0.1, float("inf"), 1),
                   ("inner_lr", "finite")),
        DomainCase("K = -1", lambda: f("fomaml", 0.1, 0.1, -1), ("inner_steps", "[0, inf]")),
        DomainCase("K = 1.5", lambda: f("fomaml", 0.1, 0.1, 1.5), ("inner_steps", "integer")),
    ]
    return domain_row(CLAIM, "full_rank_sr_step (method, beta >= 0, alpha >= 0, K >= 0)", cases)


def plot(result: ClaimResult, out_dir) -> list:
    """``bilevel_m1_reductions.{png,pdf}``: the differences against SR per relation; plain MAML's
    distance to SR's fixed point along the outer loop."""
    plt = pyplot()
    D = result.data
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(D["diffs"])
    for i, n in enumerate(names):
        v = np.maximum(D["diffs"][n], 1e-18)
        ax0.semilogy(np.full(v.shape, i), v, "o", ms=5)
    ax0.axhline(D["tol"], color="k", ls="--", lw=1, label=f"tolerance {D['tol']:g}")
    ax0.set_xticks(range(len(names)))
    ax0.set_xticklabels([n.replace(" | ", "\n") for n in names], fontsize=7)
    ax0.set_ylabel("max rel. difference to SR (every step, every seed)")
    ax0.set_ylim(1e-18, 1)
    ax0.set_title("reductions to standard retraining (0 = equal)")
    ax0.legend(fontsize=8)
    steps = np.arange(D["full_traj"].shape[1])
    for m, tr in zip(D["full_methods"], D["full_traj"]):
        ax1.semilogy(steps, np.maximum(tr, 1e-18), label=f"plain {m} (full-rank inner)")
    ax1.set_xlabel("outer iteration")
    ax1.set_ylabel("||A - (A* + Rbar)||_F")
    ax1.set_title("plain MAML heads for SR's minimiser A* + Rbar")
    ax1.legend(fontsize=8)
    fig.suptitle(f"M1  bilevel retraining reduces to SR  d={D['d']}, k={D['k']}, T={D['T']} "
                 f"({D['setting']})", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_dir, "bilevel_m1_reductions", dpi=figure_dpi(D["setting"]))
