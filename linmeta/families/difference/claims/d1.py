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
(exact, 0).
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
from linmeta.core.data import matrix_tasks
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
