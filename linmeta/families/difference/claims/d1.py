"""Claim D1: identifiability of the difference model in the population (docs/difference.md#d1).

Statement (derived in the document; :func:`linmeta.families.difference.theory.identifiability`):
with ``M*_t = A* + U* diag(s*_t) V*^T``, ``U*, V*`` of full column rank r <= d and generic
coefficients, every zero-loss population fit ``(A, U, V, s_t)`` has

- T >= 3 (T >= 2 when r = 1): ``span{u_i v_i^T} = L* = span{u*_i v*_i^T}`` (each rank-one
  direction up to order and scale: Kruskal's uniqueness of the three-way array of the task
  differences) and ``A = A*`` modulo ``L*`` (``P_perp*(A - A*) = 0``); nothing more: every
  ``A* + U* diag(c) V*^T`` is the base of a zero-loss fit;
- T = 2 (r >= 2) or T = 1: zero-loss fits with ``span{u_i v_i^T} != L*`` exist;
- the principal components of the centred task matrices (the baseline ``difference_svd``) span
  ``L*`` iff ``T - 1 >= r``.

Measured on a grid of (r, T) cells at fixed d, ``seeds`` random truths each (Gaussian directions):
the joint fit (:func:`~linmeta.families.difference.methods.joint_fit_starts`, Levenberg-Marquardt, ``starts``
random starts, every start kept). A start is a zero-loss fit when its objective is below
``1e-18`` times the tasks' mean ``||M*_t||_F^2`` (1e-8 in float32). The T distinct tasks of a
cell are repeated cyclically to ``T_max`` tasks (a repeated task changes no zero-loss fit) so that
one compiled program serves every T of a rank.

Rows (all checks): every cell has a zero-loss start (the truth is one; a miss would be the
optimiser's); identified cells: the largest ``sin`` of the principal angle between the learned and
the true difference space over their zero-loss starts, and the largest relative identified base
error ``||P_perp*(A - A*)|| / ||A*||``, below the recovery threshold 1e-6 (1e-2 in float32);
non-identified cells: a zero-loss start at least 1e-3 away from ``L*``; the principal-component
baseline against ``T - 1 >= r``; the boundary: cells whose outcome differs from the statement
(exact, 0). Closed forms: ``identifiability`` against the tangent space of the zero-loss fits, its
stated domain, ``base_gap`` against NumPy least squares.

Rows on the solvers (small instances, d = 2..3): the finite-sample elimination
(:func:`~linmeta.families.difference.methods.inner_solution`, unused by the population grid) --
its first-order condition by jax.grad of the plainly written loss, and (A, s) against NumPy's
least squares on the explicit design in the same gauge; the principal-component baseline with
more directions than components (the documented orthonormal completion); ``is_population`` on
population, sampled and ``n = inf, S_xx = 2I`` statistics; ``joint_fit``'s stated domain (rank,
starts, iterations, a plan above the memory budget refused before any computation); and
``joint_fit_memory`` against the arrays it says it counts (shapes by ``jax.eval_shape``).
"""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from linmeta.engine.claims import ClaimResult, Verdict
from linmeta.engine.claim_support import (DomainCase, domain_row, figure_dpi, float_tol, key_for,
                                          pyplot, save_figure, settings_value, working_dtype)
from linmeta.engine.verdict import Tolerance
from linmeta.core.data import TaskStats, matrix_tasks
from linmeta.families.difference import methods, theory
from linmeta.families.difference.truth import (difference_space, sample_difference_truth,
                                               task_matrices)

CLAIM = "D1"
RECOVERY = 1e-6       # recovery threshold (float64)
AWAY = 1e-3           # a zero-loss fit this far from L* shows non-identifiability

SETTINGS = {
    "tiny": dict(d=3, ranks=(2,), T_max=3, seeds=1, starts=3, max_iter=60),
    "quick": dict(d=4, ranks=(3,), T_max=4, seeds=2, starts=6, max_iter=150),
    "full": dict(d=5, ranks=(1, 2, 3, 4), T_max=5, seeds=2, starts=6, max_iter=200),
}


@functools.partial(jax.jit, static_argnames=("rank", "starts", "max_iter"))
def _cells(stats, keys, A_star, U_star, V_star, *, rank, starts, max_iter):
    """Every start of the joint fit and the PCA baseline on a batch of cells: objectives, the
    sine of the largest angle to ``L*``, the relative identified base error."""
    def one(st, key, A, Us, Vs):
        U, V, f, _ = methods.joint_fit_starts(st, key, rank=rank, n_starts=starts,
                                           max_iter=max_iter, population=True)
        B_star = difference_space(Us, Vs)

        def start(u, v):
            B = methods.rank_one_basis(u, v)
            base = methods.inner_solution(B, st, True)[0]
            return (methods.subspace_gap(B, B_star),
                    theory.base_gap(base, A, B_star) / jnp.linalg.norm(A))

        gaps, base_gaps = jax.vmap(start)(U, V)
        f_ref = jnp.mean(jnp.sum(st.Syx * st.Syx, axis=(-2, -1)))  # the tasks' size
        pca = methods._svd_kernel(st, rank=rank, kind="pca")
        return f, f_ref, gaps, base_gaps, methods.subspace_gap(pca.basis, B_star)

    return jax.vmap(one)(stats, keys, A_star, U_star, V_star)


def _truths(cfg, seed):
    d, T_max = cfg["d"], cfg["T_max"]
    out = {}
    root = key_for(seed, CLAIM)
    for r in cfg["ranks"]:
        for s in range(cfg["seeds"]):
            out[r, s] = sample_difference_truth(jax.random.fold_in(root, 100 * r + s), d, r,
                                                T_max, n_unseen=0, dtype=working_dtype())
    return out


def run(setting: str = "quick", seed: int = 0) -> ClaimResult:
    """Measure D1 at ``setting`` (module docstring)."""
    cfg = settings_value(SETTINGS, setting)
    t0 = time.perf_counter()
    d, T_max, S = cfg["d"], cfg["T_max"], cfg["seeds"]
    zero_rel = float_tol(1e-18, 1e-8)
    recovery = float_tol(RECOVERY, 1e-2)
    truths = _truths(cfg, seed)
    cells = []
    for r in cfg["ranks"]:
        Ts = list(range(1, T_max + 1))
        mats, keys, meta = [], [], []
        for T in Ts:
            for s in range(S):
                M = np.asarray(task_matrices(truths[r, s]))
                mats.append(M[np.arange(T_max) % T])
                keys.append(jax.random.fold_in(key_for(seed, CLAIM), 1000 * r + 10 * T + s))
                meta.append((T, s))
        stats = matrix_tasks(jnp.asarray(np.stack(mats).reshape(-1, d, d)))
        stats = jax.tree.map(lambda x: x.reshape((len(mats), T_max) + x.shape[1:]), stats)
        pick = lambda name: jnp.asarray(np.stack([np.asarray(getattr(truths[r, s], name))  # noqa
                                                  for _, s in meta]))
        f, f_ref, gaps, bgaps, pca = (np.asarray(x) for x in _cells(
            stats, jnp.stack(keys), pick("A_star"), pick("U_star"), pick("V_star"), rank=r,
            starts=cfg["starts"], max_iter=cfg["max_iter"]))
        for b, (T, s) in enumerate(meta):
            ident = theory.identifiability(d, r, T)
            cells.append(dict(r=r, T=T, seed=s, zero=f[b] <= zero_rel * f_ref[b], gaps=gaps[b],
                              base_gaps=bgaps[b], identified=ident["space"],
                              pca_predicted=ident["pca_space"], pca_gap=float(pca[b])))
    idc = [c for c in cells if c["identified"]]
    nid = [c for c in cells if not c["identified"]]
    missed = [c for c in cells if not c["zero"].any()]
    zg = lambda c, key: c[key][c["zero"]] if c["zero"].any() else np.array([np.inf])  # noqa
    gap_id = max(float(zg(c, "gaps").max()) for c in idc) if idc else 0.0
    base_id = max(float(zg(c, "base_gaps").max()) for c in idc) if idc else 0.0
    away = min(float(zg(c, "gaps")[np.isfinite(zg(c, "gaps"))].max(initial=0.0)) for c in nid) \
        if nid else float("inf")
    recovered = lambda c: c["zero"].any() and float(zg(c, "gaps").max()) < recovery  # noqa
    wrong = [c for c in cells if recovered(c) != c["identified"]]
    pca_ok = [(c["pca_gap"] < recovery) == c["pca_predicted"] and
              (c["pca_predicted"] or c["pca_gap"] > AWAY) for c in cells]
    note = (f"d={d}, ranks {cfg['ranks']}, T = 1..{T_max}, {S} Gaussian truths per cell, "
            f"{cfg['starts']} Levenberg-Marquardt starts, population, {working_dtype()}")
    tol_rec = Tolerance.stated(recovery, "recovery threshold of a zero-loss fit (float64 "
                                         "1e-6, float32 1e-2)")
    rows = [
        Verdict(CLAIM, "cells without a zero-loss start (objective < 1e-18 mean ||M*_t||^2)", 0,
                len(missed), 0.0, Tolerance.exact("every cell has one (the truth is one)"),
                not missed, "check", note + "; missed: " + ", ".join(
                    f"(r={c['r']}, T={c['T']})" for c in missed)),
        Verdict(CLAIM, "identified cells (T>=3, or r=1 and T>=2): max sin angle(L, L*) over "
                "zero-loss starts", 0.0, gap_id, 0.0, tol_rec, gap_id < recovery, "check", note),
        Verdict(CLAIM, "identified cells: max ||P_perp*(A - A*)||_F / ||A*||_F (base modulo L*)",
                0.0, base_id, 0.0, tol_rec, base_id < recovery, "check",
                note + "; A is the representative orthogonal to L"),
        Verdict(CLAIM, "non-identified cells (T=1; T=2 with r>=2): min over cells of the largest "
                "sin angle(L, L*) among zero-loss starts", f"> {AWAY:g}", away, 0.0,
                Tolerance.stated(AWAY, "a zero-loss fit this far from L* shows that L* is not "
                                       "determined"), away > AWAY, "check", note),
        Verdict(CLAIM, "PCA of the centred tasks spans L* iff T - 1 >= r: cells that disagree", 0,
                int(np.sum(~np.asarray(pca_ok))), 0.0, Tolerance.exact(), all(pca_ok), "check",
                note + "; recovered: sin < threshold, not: sin > 1e-3"),
        Verdict(CLAIM, "boundary map (r, T): cells whose joint-fit outcome differs from the "
                "statement", 0, len(wrong), 0.0, Tolerance.exact(), not wrong, "check",
                note + "; " + ", ".join(f"(r={c['r']}, T={c['T']})" for c in wrong)),
    ]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xD1]))
    rows += [identifiability_vs_tangent_space(rng), identifiability_domain(),
             base_gap_vs_least_squares(rng)]
    rows += inner_solution_optimality(rng)
    rows += [pca_completion(rng), population_detection(rng), joint_fit_domain(),
             joint_fit_memory_plan()]
    data = dict(setting=setting, d=d, ranks=np.asarray(cfg["ranks"]), T_max=T_max,
                cells=[{k: (v.tolist() if isinstance(v, np.ndarray) else v)
                        for k, v in c.items()} for c in cells], recovery=recovery)
    return ClaimResult(CLAIM, rows, data, time.perf_counter() - t0)


# ----------------------------------------------------------------------------- closed forms
#: (d, r, T) cells of :func:`identifiability_vs_tangent_space`, both sides of every boundary:
#: diagonal coefficients (directions at T >= 3, or r = 1 and T >= 2; PCA at T - 1 >= r) and
#: r x r cores (spans at T >= 2; PCA at T - 1 >= r^2, so r = 3 needs T = 9, 10); r = d at T = 1.
IDENT_CELLS = {
    False: [(4, r, T) for r in (1, 2, 3) for T in range(1, 6)] + [(3, 3, T) for T in (1, 2, 3)],
    True: [(4, r, T) for r in (1, 2) for T in range(1, 7)] + [(4, 3, T) for T in (1, 2, 9, 10)]
    + [(3, 3, T) for T in (1, 2)],
}
ZERO = 1e-8     # a unit null vector's component counted as 0 (rounding of d x d SVDs is ~1e-15)


def _num_rank(X, rel: float = 1e-9) -> int:
    s = np.linalg.svd(np.atleast_2d(X), compute_uv=False)
    return int(np.sum(s > rel * s[0])) if s.size and s[0] > 0 else 0


def tangent_identifiability(rng, d: int, r: int, T: int, core: bool) -> dict:
    """What a zero-loss population fit of ``M_t = A + U C_t V^T`` determines near a random
    generic truth, from the tangent space of the set of zero-loss fits: the null space of the
    Jacobian of ``(A, U, V, C_1..C_T) -> (M_1..M_T)`` (NumPy SVD; ``C_t`` diagonal, or r x r for
    a core). Keys as :func:`linmeta.families.difference.theory.identifiability`: ``base_free``
    the rank of the null space's A-block; ``spans`` no null direction moves ``col U`` or
    ``col V``; ``directions`` none moves a column ``u_i`` or ``v_i`` off its own line; ``space``
    none moves a basis matrix ``u_a v_b^T`` of L off L; ``pca_space`` the centred task matrices
    span a space of L's dimension."""
    A = rng.standard_normal((d, d))
    U, V = rng.standard_normal((d, r)), rng.standard_normal((d, r))
    C = (rng.standard_normal((T, r, r)) if core else
         np.stack([np.diag(c) for c in rng.standard_normal((T, r))]))
    M = A + np.einsum("ia,tab,jb->tij", U, C, V)
    CVt, UC = np.einsum("tab,jb->taj", C, V), np.einsum("ia,tab->tib", U, C)
    pairs = [(a, b) for a in range(r) for b in range(r)] if core else [(a, a) for a in range(r)]
    cols = []
    for a in range(d):              # dA
        for b in range(d):
            dM = np.zeros((T, d, d))
            dM[:, a, b] = 1.0
            cols.append(dM)
    for i in range(d):              # dU
        for a in range(r):
            dM = np.zeros((T, d, d))
            dM[:, i, :] = CVt[:, a, :]
            cols.append(dM)
    for j in range(d):              # dV
        for a in range(r):
            dM = np.zeros((T, d, d))
            dM[:, :, j] = UC[:, :, a]
            cols.append(dM)
    for t in range(T):              # dC_t
        for a, b in pairs:
            dM = np.zeros((T, d, d))
            dM[t] = np.outer(U[:, a], V[:, b])
            cols.append(dM)
    J = np.stack([c.ravel() for c in cols], axis=1)
    _, sv, Wt = np.linalg.svd(J)
    N = Wt[int(np.sum(sv > 1e-9 * sv[0])):]          # orthonormal rows: the null space
    dU = N[:, d * d:d * d + d * r].reshape(-1, d, r)
    dV = N[:, d * d + d * r:d * d + 2 * d * r].reshape(-1, d, r)
    off_U, off_V = np.eye(d) - U @ np.linalg.pinv(U), np.eye(d) - V @ np.linalg.pinv(V)
    spans = all(np.abs(off_U @ x).max() < ZERO and np.abs(off_V @ y).max() < ZERO
                for x, y in zip(dU, dV))
    lines = True
    for i in range(r):
        pu = np.eye(d) - np.outer(U[:, i], U[:, i]) / (U[:, i] @ U[:, i])
        pv = np.eye(d) - np.outer(V[:, i], V[:, i]) / (V[:, i] @ V[:, i])
        lines &= all(np.abs(pu @ x[:, i]).max() < ZERO and np.abs(pv @ y[:, i]).max() < ZERO
                     for x, y in zip(dU, dV))
    basis = np.stack([np.outer(U[:, a], V[:, b]).ravel() for a, b in pairs], axis=1)
    Q = np.linalg.qr(basis)[0]
    space = True
    for x, y in zip(dU, dV):
        for a, b in pairs:
            db = (np.outer(x[:, a], V[:, b]) + np.outer(U[:, a], y[:, b])).ravel()
            space &= np.abs(db - Q @ (Q.T @ db)).max() < ZERO
    centred = (M - M.mean(axis=0)).reshape(T, -1)
    return dict(directions=bool(lines), space=bool(space), spans=bool(spans),
                base_free=_num_rank(N[:, :d * d]) if len(N) else 0,
                pca_space=bool(T > 1 and _num_rank(centred) == _num_rank(basis)))


def identifiability_vs_tangent_space(rng) -> Verdict:
    """:func:`linmeta.families.difference.theory.identifiability` (every key, both variants)
    against :func:`tangent_identifiability` on the cells of :data:`IDENT_CELLS`. Not compared:
    at r = d the spans (and a core's space: every matrix) are all there is, known without data,
    which ``identifiability`` reports as not identified at T = 1; a core's ``directions`` at
    r = 1 (a 1 x 1 core is the diagonal model: its one direction is identified, while
    ``identifiability`` says False for every core)."""
    wrong, n = [], 0
    for core, cells in IDENT_CELLS.items():
        for d, r, T in cells:
            want = (theory.identifiability(d, r, T, core=True) if core else
                    theory.identifiability(d, r, T))      # the default: diagonal
            got = tangent_identifiability(rng, d, r, T, core)
            for key in want:
                if r == d and (key == "spans" or (core and key == "space")):
                    continue
                if core and r == 1 and key == "directions":   # a 1 x 1 core is a direction
                    continue
                n += 1
                if want[key] != got[key]:
                    wrong.append(f"{'core ' if core else ''}(d={d}, r={r}, T={T}) {key}: "
                                 f"{want[key]} vs {got[key]}")
    return Verdict(
        CLAIM, "identifiability(d, r, T, core) vs the tangent space of the zero-loss fits at a "
        "random truth (null space of the parametrisation's Jacobian): (cell, key) pairs that "
        "disagree", 0, len(wrong), 0.0, Tolerance.exact(), not wrong, "check",
        f"{n} pairs, {sum(map(len, IDENT_CELLS.values()))} cells (diagonal and core); "
        + ("disagree: " + "; ".join(wrong)[:600] if wrong else "all agree"))


def identifiability_domain() -> Verdict:
    """The stated domain of :func:`linmeta.families.difference.theory.identifiability`:
    integers ``d >= 1``, ``1 <= r <= d``, ``T >= 1``, both variants."""
    f = theory.identifiability
    cases = []
    for core in (False, True):
        c = " (core)" if core else ""
        cases += [
            DomainCase("d = r = T = 1" + c, lambda core=core: f(1, 1, 1, core=core)),
            DomainCase("r = d = 3, T = 2" + c, lambda core=core: f(3, 3, 2, core=core)),
            DomainCase("d = 0" + c, lambda core=core: f(0, 1, 1, core=core), ("d", "[1, inf]")),
            DomainCase("r = 0" + c, lambda core=core: f(3, 0, 2, core=core), ("r", "[1, d=3]")),
            DomainCase("r = d + 1" + c, lambda core=core: f(3, 4, 2, core=core),
                       ("r", "[1, d=3]")),
            DomainCase("T = 0" + c, lambda core=core: f(3, 2, 0, core=core), ("T", "[1, inf]")),
            DomainCase("T = 2.5" + c, lambda core=core: f(3, 2, 2.5, core=core),
                       ("T", "integer")),
        ]
    return domain_row(CLAIM, "identifiability (integers d >= 1, 1 <= r <= d, T >= 1)", cases)


def base_gap_vs_least_squares(rng, d: int = 4) -> Verdict:
    """:func:`linmeta.families.difference.theory.base_gap` against the residual of NumPy's least
    squares of ``vec(A - A*)`` on the vectorised ``B*_i`` (no orthonormal basis), for spaces of
    q = 3 < d and q = 6 > d random (non-symmetric) matrices, one base and a batch of 3 bases."""
    worst, n = 0.0, 0
    for q in (3, 6):
        B = rng.standard_normal((q, d, d))
        Bm = B.reshape(q, d * d).T
        A_star = rng.standard_normal((d, d))
        for A in (rng.standard_normal((d, d)), rng.standard_normal((3, d, d))):
            X = (A - A_star).reshape(-1, d * d).T                     # (d^2, m)
            res = X - Bm @ np.linalg.lstsq(Bm, X, rcond=None)[0]
            ref = np.sqrt(np.sum(res * res, axis=0)).reshape(np.shape(A)[:-2])
            got = np.asarray(theory.base_gap(A, A_star, B))
            if got.shape != ref.shape:
                return Verdict(CLAIM, "base_gap vs least squares", "shape " + str(ref.shape),
                               "shape " + str(got.shape), float("nan"), Tolerance.exact(),
                               False, "check", f"q={q}, A of shape {np.shape(A)}")
            scale = np.sqrt(np.sum(X * X, axis=0)).reshape(ref.shape)
            err = float(np.max(np.abs(got - ref) / scale))
            worst = max(worst, err) if np.isfinite(err) else float("inf")
            n += 1
    tol = Tolerance.rounding(20 * d * d, what="QR and least squares of d^2 x q, relative to "
                             "||A - A*||")
    return Verdict(CLAIM, "base_gap ||P_perp*(A - A*)|| vs NumPy least-squares residual on "
                   "span{B*_i}: max rel. difference (one base and a batch of 3)", 0.0, worst,
                   float("nan"), tol, tol.below(worst), "check",
                   f"d={d}, q in (3, 6) random matrices, {n} comparisons")


# ----------------------------------------------------------------------------- the solvers
def _sampled_stats(rng, d: int, T: int, n: int):
    """Statistics of n samples per task (``x ~ N(0, I)``, noise 0.5) of T random task matrices,
    drawn with NumPy in float64 and cast to the working dtype."""
    X = rng.standard_normal((T, n, d))
    M = rng.standard_normal((T, d, d))
    Y = X @ np.swapaxes(M, -1, -2) + 0.5 * rng.standard_normal((T, n, d))
    dt = working_dtype()
    return TaskStats(jnp.asarray(np.swapaxes(X, -1, -2) @ X / n, dt),
                     jnp.asarray(np.swapaxes(Y, -1, -2) @ X / n, dt),
                     jnp.asarray(np.sum(Y * Y, axis=(-2, -1)) / n, dt), jnp.full((T,), n * 1.0, dt),
                     jnp.asarray(M, dt), jnp.full((T,), 0.5, dt))


def _plain_mean_loss(A, s, B, st):
    """``(1/T) sum_t [tr(M_t S_xx,t M_t^T)/2 - tr(S_yx,t M_t^T)]``, ``M_t = A + sum_i s_ti B_i``."""
    M = A + jnp.einsum("ti,iab->tab", s, B)
    quad = jnp.einsum("tab,tbc,tac->t", M, st.Sxx, M)
    return jnp.mean(0.5 * quad - jnp.sum(st.Syx * M, axis=(-2, -1)))


@jax.jit
def _inner_and_gradients(B, st):
    """The finite-sample ``inner_solution`` and the plain loss's gradient there and at 0."""
    A, s = methods.inner_solution(B, st, False)
    grad = jax.grad(_plain_mean_loss, argnums=(0, 1))
    return A, s, grad(A, s, B, st), grad(jnp.zeros_like(A), jnp.zeros_like(s), B, st)


def inner_solution_optimality(rng, d: int = 3, r: int = 2, T: int = 3, n: int = 12) -> list:
    """:func:`~linmeta.families.difference.methods.inner_solution` at finite samples (block
    elimination of the d^2 + T r normal equations, what the joint fit minimises over for fixed
    directions) on a random basis B (r, d, d) and sampled statistics, against the problem written
    plainly: ``f(A, s) = (1/T) sum_t [tr(M_t S_xx,t M_t^T)/2 - tr(S_yx,t M_t^T)]``,
    ``M_t = A + sum_i s_ti B_i``. Two rows: the first-order condition ``||grad f(A, s)|| /
    ||grad f(0)||`` (jax.grad); and (A, s) against NumPy's least squares on the explicit design
    (rows ``(M_t - S_yx,t S_xx,t^{-1}) C_t``, ``S_xx,t = C_t C_t^T``), moved to the solver's gauge
    (A orthogonal to span{B_i}, the shift subtracted from every s_t): the largest relative
    difference."""
    st = _sampled_stats(rng, d, T, n)
    B = jnp.asarray(rng.standard_normal((r, d, d)), st.Sxx.dtype)
    A, s, g_hat, g_0 = _inner_and_gradients(B, st)
    gnorm = lambda g: float(np.sqrt(sum(np.sum(np.asarray(x, float) ** 2) for x in g)))  # noqa
    foc = gnorm(g_hat) / gnorm(g_0)
    # the explicit design, float64
    S, Syx, Bn = (np.asarray(x, float) for x in (st.Sxx, st.Syx, B))
    nx = d * d + T * r
    rows, rhs = [], []
    for t in range(T):
        C = np.linalg.cholesky(S[t])
        blk = np.zeros((d * d, nx))
        blk[:, :d * d] = np.kron(np.eye(d), C.T)                  # vec(A C) (row-major vec)
        for i in range(r):
            blk[:, d * d + t * r + i] = (Bn[i] @ C).ravel()
        rows.append(blk)
        rhs.append(np.linalg.solve(C, Syx[t].T).T.ravel())        # S_yx C^{-T}
    X = np.concatenate(rows)
    x = np.linalg.lstsq(X, np.concatenate(rhs), rcond=None)[0]
    sv = np.linalg.svd(X, compute_uv=False)
    cond = float(sv[0] / sv[nx - r - 1])                           # r gauge directions: rank nx - r
    Bm = Bn.reshape(r, d * d).T
    A_ls = x[:d * d]
    c = np.linalg.lstsq(Bm, A_ls, rcond=None)[0]                   # the part of A in span{B_i}
    A_ref = (A_ls - Bm @ c).reshape(d, d)
    s_ref = x[d * d:].reshape(T, r) + c
    A_hat, s_hat = np.asarray(A, float), np.asarray(s, float)
    if A_hat.shape != A_ref.shape or s_hat.shape != s_ref.shape:
        diff = float("inf")
    else:
        diff = max(float(np.linalg.norm(A_hat - A_ref) / np.linalg.norm(A_ref)),
                   float(np.linalg.norm(s_hat - s_ref) / np.linalg.norm(s_ref)))
    diff = diff if np.isfinite(diff) else float("inf")
    foc = foc if np.isfinite(foc) else float("inf")
    why = "the elimination solves normal equations, whose errors grow with cond^2 of the design"
    tol = Tolerance.rounding(10 * nx, cond ** 2, what=f"normal equations of {nx} unknowns",
                             why=why)
    note = (f"d={d}, r={r}, T={T}, n={n} samples per task, random Gaussian B; design "
            f"cond {cond:.3g} (on its rank nx - r: the base's freedom along span{{B_i}})")
    return [Verdict(CLAIM, "inner_solution at finite samples: ||grad f(A, s)|| / ||grad f(0)|| "
                    "(jax.grad of the plainly written mean loss)", 0.0, foc, float("nan"), tol,
                    tol.below(foc), "check", note),
            Verdict(CLAIM, "inner_solution at finite samples vs NumPy least squares on the "
                    "explicit design, in the gauge A _|_ span{B_i}: max rel. difference of A, s",
                    0.0, diff, float("nan"), tol, tol.below(diff), "check", note)]


def pca_completion(rng, d: int = 3, T: int = 2) -> Verdict:
    """:func:`~linmeta.families.difference.methods.difference_svd` (``kind="pca"``) with more
    directions than principal components (rank d > T - 1, population tasks): the docstring's
    orthonormal completion. Measured: the largest of ``|<B_i, B_j> - delta_ij|`` and of the
    relative residual of each centred task ``M_t - mean M`` off span{B_i} (NumPy least
    squares)."""
    M = rng.standard_normal((T, d, d))
    fit = methods.difference_svd(matrix_tasks(jnp.asarray(M, working_dtype())), d, kind="pca")
    B = np.asarray(fit.basis, float)
    if B.shape != (d, d, d):
        return Verdict(CLAIM, "difference_svd pca completion: basis shape", str((d, d, d)),
                       str(B.shape), float("nan"), Tolerance.exact(), False, "check", "")
    Bm = B.reshape(d, d * d).T
    D = (M - M.mean(axis=0)).reshape(T, d * d).T
    res = D - Bm @ np.linalg.lstsq(Bm, D, rcond=None)[0]
    err = max(float(np.abs(Bm.T @ Bm - np.eye(d)).max()),
              float(np.max(np.linalg.norm(res, axis=0) / np.linalg.norm(D, axis=0))))
    err = err if np.isfinite(err) else float("inf")
    tol = Tolerance.rounding(20 * d * d, what=f"SVD of d^2 x T and least squares of d^2 x {d}")
    return Verdict(CLAIM, f"difference_svd pca with rank {d} > T - 1 = {T - 1} principal "
                   "components: max of |<B_i, B_j> - delta_ij| and of the centred tasks' "
                   "relative residual off span{B_i}", 0.0, err, float("nan"), tol,
                   tol.below(err), "check", f"d={d}, T={T} random population tasks (one "
                   "nonzero component; the rest is the orthonormal completion)")


def population_detection(rng, d: int = 3, T: int = 2) -> Verdict:
    """:func:`~linmeta.families.difference.methods.is_population` (how ``joint_fit`` picks its
    closed form when ``population`` is not given) on population statistics (True), sampled ones
    (False) and statistics with infinite n but ``S_xx = 2 I`` (False): cases that disagree."""
    M = jnp.asarray(rng.standard_normal((T, d, d)), working_dtype())
    pop = matrix_tasks(M)
    cases = [("population", pop, True),
             ("n = 12 samples", _sampled_stats(rng, d, T, 12), False),
             ("n = inf, S_xx = 2 I", pop._replace(Sxx=2 * pop.Sxx), False)]
    wrong = [lab for lab, st, want in cases if methods.is_population(st) is not want]
    return Verdict(CLAIM, "is_population on population, sampled and n = inf, S_xx = 2 I "
                   "statistics: cases that disagree", 0, len(wrong), 0.0, Tolerance.exact(),
                   not wrong, "check", ", ".join(wrong) if wrong else
                   f"{len(cases)} cases agree")


def joint_fit_domain() -> Verdict:
    """The stated domain of :func:`~linmeta.families.difference.methods.joint_fit`: ``1 <= rank
    <= d``, ``n_starts >= 1``, ``max_iter >= 1``, and a plan within the memory budget (a plan of
    10^12 starts is refused before any computation, population and finite samples). Every call
    runs under ``jax.eval_shape``: a call that is not refused is traced, never run."""
    M = jnp.asarray(np.arange(8.0).reshape(2, 2, 2) / 8, working_dtype())
    pop = matrix_tasks(M)
    key = jax.random.PRNGKey(0)

    def call(st, rank=1, population=True, **kw):
        return lambda: jax.eval_shape(lambda: methods.joint_fit(st, rank, key=key,
                                                                population=population, **kw))
    big = 10 ** 12
    return domain_row(CLAIM, "joint_fit (1 <= rank <= d, n_starts >= 1, max_iter >= 1, the plan "
                      "within the memory budget)", [
        DomainCase("rank = 0", call(pop, 0), ("rank", "[1, d=2]")),
        DomainCase("rank = d + 1", call(pop, 3), ("rank", "[1, d=2]")),
        DomainCase("n_starts = 0", call(pop, n_starts=0), ("n_starts", "[1, inf]")),
        DomainCase("max_iter = 0", call(pop, max_iter=0), ("max_iter", "[1, inf]")),
        DomainCase("10^12 starts (population)", call(pop, n_starts=big),
                   ("joint_fit", "GiB", "budget")),
        DomainCase("10^12 starts (finite samples)", call(pop, population=False, n_starts=big),
                   ("joint_fit", "GiB", "budget")),
    ])


def joint_fit_memory_plan() -> Verdict:
    """:func:`~linmeta.families.difference.methods.joint_fit_memory` (what ``joint_fit``
    refuses by) against the arrays its docstring says it counts, their shapes taken from the
    fit's own functions by ``jax.eval_shape`` (float64: 8 bytes an entry): in the population the
    plan is exactly ``5 n_starts`` Jacobians of :func:`~linmeta.families.difference.methods.profile_residual`
    in the 2 d r unknowns (``jax.jacfwd``; the Jacobian and about four arrays of its size; on
    the first and the third shape); at finite samples it adds at least one d^2 x d^2
    normal-equation matrix and one (T, q, d^2) product per start, each with its 2 d r
    forward-mode tangents (q: the number of basis matrices
    :func:`~linmeta.families.difference.methods.direction_basis` gives, r or r^2 for a core); the
    default is the diagonal model (``core=False``). Cases that disagree (exact). Shapes: (d, T, r)
    = (3, 3, 2), (2, 20, 1) (the (T, q, d^2) term above the d^4 one), (2, 2, 2), 3 starts. Not
    compared here: XLA's own memory analysis of the compiled fit (a compile per shape)."""
    wrong, S = [], 3
    for d, T, r in ((3, 3, 2), (2, 20, 1), (2, 2, 2)):
        dt = working_dtype()
        st = matrix_tasks(jnp.zeros((T, d, d), dt))
        x = jax.ShapeDtypeStruct((2 * d * r,), dt)
        uv = jax.ShapeDtypeStruct((d, r), dt)
        ols = jnp.zeros((T, d, d), dt)

        def res(x, core=False):
            return methods.profile_residual(x[:d * r].reshape(d, r), x[d * r:].reshape(d, r),
                                            st, ols, None, True, core).ravel()
        pop = methods.joint_fit_memory(d, T, r, S, True)
        if T < 20:                  # (the Jacobian's shape by tracing: two shapes suffice)
            J = jax.eval_shape(jax.jacfwd(res), x)
            if pop != 5 * S * 8 * int(np.prod(J.shape)):
                wrong.append(f"(d={d}, T={T}, r={r}) population: {pop} vs 5 x {S} x 8 x "
                             f"{J.shape}")
        for core in (False, True):
            q = jax.eval_shape(lambda u, v: methods.direction_basis(u, v, core), uv, uv).shape[0]
            fin = methods.joint_fit_memory(d, T, r, S, False, core=core)
            low = (methods.joint_fit_memory(d, T, r, S, True, core=core)
                   + S * 8 * (d ** 4 + T * q * d * d) * (1 + 2 * d * r))
            if fin < low:
                wrong.append(f"(d={d}, T={T}, r={r}, core={core}) finite: {fin} < {low}")
        default = methods.joint_fit_memory(d, T, r, S, False)
        if default != methods.joint_fit_memory(d, T, r, S, False, core=False):
            wrong.append(f"(d={d}, T={T}, r={r}) default core differs from core=False")
    return Verdict(CLAIM, "joint_fit_memory vs the arrays it counts (eval_shape of the fit's "
                   "Jacobian and basis): cases that disagree", 0, len(wrong), 0.0,
                   Tolerance.exact(), not wrong, "check",
                   "; ".join(wrong) if wrong else "3 shapes x (population, finite, core, "
                   "default) agree")


def plot(result: ClaimResult, out_dir) -> list:
    """``difference_d1_identifiability.{png,pdf}``: the (r, T) map of the joint fit's and the
    PCA baseline's distance to L* (zero-loss starts), with the predicted boundaries."""
    plt = pyplot()
    D = result.data
    ranks, T_max = list(D["ranks"]), D["T_max"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, title in ((axes[0], "joint", "joint fit (zero-loss starts, worst)"),
                           (axes[1], "pca", "PCA of the centred tasks")):
        grid = np.full((len(ranks), T_max), np.nan)
        for c in D["cells"]:
            i, j = ranks.index(c["r"]), c["T"] - 1
            if key == "joint":
                g = np.asarray(c["gaps"])[np.asarray(c["zero"], bool)]
                v = g.max() if g.size else np.nan
            else:
                v = c["pca_gap"]
            grid[i, j] = np.nanmax([grid[i, j], v]) if np.isfinite(grid[i, j]) else v
        im = ax.imshow(np.log10(np.maximum(grid, 1e-16)), origin="lower", aspect="auto",
                       cmap="viridis", vmin=-16, vmax=0,
                       extent=(0.5, T_max + 0.5, -0.5, len(ranks) - 0.5))
        for i, r in enumerate(ranks):
            bound = (2 if r == 1 else 3) if key == "joint" else r + 1
            ax.plot([bound - 0.5] * 2, [i - 0.5, i + 0.5], "r-", lw=2)
        ax.set_yticks(range(len(ranks)), [str(r) for r in ranks])
        ax.set_xlabel("tasks T")
        ax.set_ylabel("directions r")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, label="log10 sin angle(L, L*)")
    fig.suptitle(f"D1  identifiability, d={D['d']} (red: predicted boundary, identified to its "
                 f"right)  ({D['setting']})", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out_dir, "difference_d1_identifiability", dpi=figure_dpi(D["setting"]))
