"""Claim C8: a census of where Meta-LoRA optimisers end, over the (d, k, T) grid of the C3 map.

Not claimed by the paper: the paper states recovery at the global minima (C3) and a strict-saddle
landscape at T = 2 (C4); for T >= 3 it says nothing about the other critical points. This module
measures where optimisers end.

**Object.** The population reduced objective (``docs/theory.md``, section "Meta-LoRA";
:mod:`linmeta.methods.landscape`)

    G(U) = 1/2 sum_t ||E_t - Ebar||_F^2,   E_t = R*_t - U_t U_t^T,   Ebar = mean_t E_t,

with the base eliminated, ``A(U) = A* + Ebar``. G >= 0, and G = 0 exactly at the global minima;
a global minimum identifies A* when ``Ebar = 0``. G is invariant under ``U_t -> U_t Q_t``
(``Q_t`` orthogonal: ``T k(k-1)/2`` zero modes, projected out of the Hessian before classifying).
G also has directions along which it tends to a finite value at infinity: a column ``u`` shared by
every ``U_t`` adds ``u u^T`` to every ``U_t U_t^T`` and leaves every ``E_t - Ebar`` unchanged, so
solvers can drift outwards with a vanishing gradient.

**Census.** For each cell ``(d, k, T)`` of the grid (full setting: d = 2..9, k = 1..3 with
k <= d, T = 3..5, the T >= 3 part of the C3 map), ``truths`` Gaussian truths (the paper's model,
:mod:`linmeta.engine.claims._draws`) and ``starts`` random starts per truth, ``U_t ~ N(0, s^2)`` with the
scale s cycling through :data:`SCALES` = (0.1, 0.5, 1, 2) (0.1 is the paper's initialisation;
``U*`` has entries of scale 1). Every start is run by three methods (:data:`METHODS`), from the
same starting point:

- ``"newton"``: the saddle-free damped Newton of ``meta_lora(method="newton")``
  (``linmeta.retrain.meta_lora``; ``ftol = 1e-26``, ``gtol = 1e-14``, ``newton_iter`` iterations)
  on ``G / T``, which is what ``meta_lora``'s reduced objective equals at population statistics.
  It runs in two legs of ``newton_iter / 2`` iterations (the iterates are those of one run; the
  size half-way is recorded for :func:`linmeta.methods.landscape.escaped`).
- ``"alternating"``: the paper's protocol (:func:`linmeta.methods.alternating_step`, as in
  ``meta_lora(method="alternating")``): from ``A = 0``, ``alt_outer`` outer iterations of 10
  adapter steps (lr 0.003) and one base step (lr 0.03) on the population statistics. A gradient
  method stops near, not at, a critical point, so every end point ``U_end`` is polished by
  ``polish_iter`` Levenberg-Marquardt iterations on ``||grad G||^2``
  (:func:`linmeta.methods.landscape.find_critical_points`, which converges to the nearby critical point of
  any index). The run takes the class of that critical point when the polishing moved it by at
  most :data:`POLISH_RADIUS` (1%) of ``||U_end||_F``; otherwise it is ``global`` if
  ``G(U_end) <= 1e-12 c^2`` and ``not converged`` if not (the protocol was still on its way, e.g.
  passing a saddle slowly). The class of the nearest critical point at any distance is recorded
  beside it (``"nearest critical point (polished)"``), with the raw objective and the relative
  distance the polishing moved. A run whose objective became non-finite or rose 1000-fold
  (:func:`linmeta.core.divergence.divergence_index`; ``meta_lora`` raises ``DivergenceError`` there)
  counts as escaped.
- ``"critical points"``: :func:`linmeta.methods.landscape.find_critical_points` itself from the start
  (``cp_iter`` iterations): critical points of every index, so the saddles are counted too.

**Classes** (:func:`linmeta.methods.landscape.census_counts`; tolerances relative to ``c = sqrt(2 G(0))``,
float64): ``global`` (``G <= 1e-12 c^2``), ``strict spurious`` (a critical point,
``||grad G|| <= 1e-6 c^{3/2}``, with ``G > 1e-12 c^2`` that the local quadratic model cannot bring
to the global tolerance, and every restricted Hessian eigenvalue ``> 1e-6 c``), ``degenerate
spurious`` (the same with restricted eigenvalues in ``[-1e-6 c, 1e-6 c]``: the second-order test is
inconclusive), ``saddle`` (restricted eigenvalue ``< -1e-6 c``), ``not converged`` and ``escaped to
infinity`` (diverged, or not converged with ``||U||_F^2 / c >= 10`` and still growing: at least 1.25
times its size half-way through the run; :func:`linmeta.methods.landscape.escaped`). Global minima are
split by identifiability, ``A_hat = A*`` when ``||A(U) - A*||_F <= 1e-6 ||A*||_F`` (C3's
threshold) and ``A_hat != A*`` when it exceeds ``1e-3 ||A*||_F``; in between is counted as
undecided.

**Checks** (exact statements, kind ``"check"``):

- at the hand-built critical point ``U = 0`` the gradient vanishes, the Hessian is
  ``-2 (R*_t - Rbar) (x) I_k`` per task, so the classifier must report a strict saddle with
  smallest eigenvalue ``-2 max_t lambda_max(R*_t - Rbar)`` (closed form, NumPy) up to
  eigensolver rounding ``10 n eps ||H||`` (n = T d k);
- at the hand-built global minimum ``U_t = U*_t Q_t`` (random orthogonal ``Q_t``) G vanishes to
  rounding, the classifier reports a global minimum, the symmetry orbit has rank exactly
  ``T k(k-1)/2`` (:func:`linmeta.methods.landscape.known_zero_modes`) and the Hessian annihilates every
  orbit generator (``||H z|| <= 10 n eps ||H||_F ||z||``);
- where C3 claims recovery (T >= 3, 3k <= d) no global minimum found has ``A_hat != A*``.

Everything else is ``"measured"`` (no theory predicts it): per method, the share of runs at strict
spurious minima over all cells, at k = 1, at 3k > d and at T = 4, 5 (a subset row only where it
differs from all cells; the note gives the census, the degenerate spurious minima and how many lie
far out, and the cells with spurious minima with their counts); where identifiability fails
(3k > d). The first row is Newton's share over all cells. Checks on hand-built input: the census
classes (:func:`census_classes_row`), the classifier's levels next to a global minimum
(:func:`classifier_levels_row`) and :func:`~linmeta.methods.landscape.random_starts`' scales
(:func:`random_starts_row`, chi-square band).

**Found** (full setting, seed 0: ``figures/c8_census.json``, map ``figures/c8_census_map.png``;
69 cells x 128 runs per method):

- Newton: 8439 of 8832 runs end at a global minimum, 282 (3.2%) at a strict spurious local
  minimum, 60 at a degenerate one (40 of them far out, ``||U||^2/c >= 10``, stalled on a direction
  where G flattens towards infinity), 45 escaped, 5 not converged, 1 at a saddle.
- Strict spurious minima in 10 cells (runs of 128): (2,1,4) 42, (4,2,4) 93, (4,2,5) 16,
  (5,3,5) 21, (6,2,3) 5, (6,3,4) 66, (6,3,5) 9, (7,3,4) 16, (7,3,5) 5, (8,2,3) 9. They are shallow:
  ``G/c^2`` between 4e-8 and 3e-4, smallest restricted Hessian eigenvalue between 5e-6 c and 4e-2 c.
- k = 1: only at d = 2 (where 3k > d): (2,1,4) and (2,1,3) (one critical-point run); none in
  the 21 cells with k = 1 and d >= 3.
- 3k > d: 268 of the 282; with 3k <= d only at (6,2,3) and (8,2,3) (T = 3), and only from starts
  of scale 2 (none from the paper's 0.1). T = 4, 5: 268, all in cells with 3k > d. The largest
  rates are in identifiable cells next to non-identifiable ones: (4,2,4) beside (4,2,3), (6,3,4)
  beside (6,3,3), (2,1,4) beside (2,1,3).
- The alternating protocol: 2 runs at a strict spurious minimum ((4,2,5), the one Newton finds
  there), 6056 global, 2770 not converged after 3000 outer iterations (mostly k >= 2 with
  3k > d), none escaped. The critical-point finder: 7102 saddles, 79 global, 3 strict spurious,
  1369 escaped to infinity.
- Identifiability: no global minimum with ``A_hat != A*`` in any cell with 3k <= d; in 21 of the
  33 cells with 3k > d some global minimum found has ``A_hat != A*``; the other 12 ((2,1,4),
  (2,1,5), (4,2,4), (4,2,5), (5,2,4), (5,2,5), (6,3,5), (7,3,4), (7,3,5), (8,3,3), (8,3,4),
  (8,3,5)) identified A* at every global minimum found.

Every stage is its own compiled program per cell shape (truths with ``lax.map``; starts vmapped,
except the Newton runs, mapped so that each stops on its own); one compile per shape and stage.
The full run writes its census after every cell (``c8_census.json``, atomically) and, given that
file, resumes where it stopped (:func:`census`).

Settings: ``tiny`` (tests: cell (3,1,3), 2 truths x 8 starts, Newton 60 iterations, alternating
shortened to 300 outer iterations), ``quick`` (``linmeta verify --quick``: cell (2,1,4), 2 truths
x 12 starts), ``full`` (69 cells, 2 truths x 64 starts, 3000 outer iterations; the documented run
``python -m experiments.c8_landscape_census --setting full --out figures``: 70 minutes on the
shared 2-core machine under heavy load from other jobs, niced; resumable).
"""
from __future__ import annotations

import functools
import itertools
import json
import math
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from scipy.stats import chi2

from linmeta.core.data import population
from linmeta.core.problem import sample_truth
from linmeta.methods import landscape
from linmeta.core.divergence import divergence_index
from linmeta.core.losses import ols_solution
from linmeta.engine.results import atomic_write_json
from linmeta.methods._common import record_steps, run_steps
from linmeta.methods.meta_lora import (_saddle_free_newton, alternating_step, meta_lora_excess,
                                       population_reduced_objective)

from linmeta.engine.claims import ClaimResult, Verdict
from linmeta.engine.verdict import Tolerance
from ._draws import draw, gaussian_truth, truth_shapes
from linmeta.engine.claim_support import (history_problems, key_for, pyplot, save_figure,
                                          settings_value)

CLAIM = "C8"
SCHEMA = "linmeta.c8_census/1"
SCALES = (0.1, 0.5, 1.0, 2.0)
METHODS = ("newton", "alternating", "critical points")
POLISH_RADIUS = 1e-2    # alternating: polishing moved the end point by at most this (relative)
IDENTIFIED = 1e-6       # ||A_hat - A*||_F / ||A*||_F at or below: A_hat = A* (C3's threshold)
NOT_IDENTIFIED = 1e-3   # above: A_hat != A*
NEWTON_FTOL, NEWTON_GTOL = 1e-26, 1e-14   # meta_lora(method="newton") defaults
LR_ADAPTER, LR_BASE, INNER_STEPS = 0.003, 0.03, 10  # the paper's alternating protocol

SETTINGS = {
    "tiny": dict(d=(3,), k=(1,), T=(3,), truths=2, starts=8, newton_iter=60, alt_outer=300,
                 polish_iter=100, cp_iter=150),
    "quick": dict(d=(2,), k=(1,), T=(4,), truths=2, starts=12, newton_iter=200, alt_outer=3000,
                  polish_iter=150, cp_iter=200),
    "full": dict(d=tuple(range(2, 10)), k=(1, 2, 3), T=(3, 4, 5), truths=2, starts=64,
                 newton_iter=200, alt_outer=3000, polish_iter=200, cp_iter=300),
}
# ----------------------------------------------------------------------------- grid
def grid_cells(ds, ks, Ts) -> list:
    """The cells ``(d, k, T)`` of ``ds x ks x Ts`` with ``k <= d``, in the C3 map's order."""
    return [(int(d), int(k), int(T)) for d, k, T in itertools.product(ds, ks, Ts) if k <= d]


def region(d: int, k: int) -> str:
    """``"3k <= d"`` (where C3 is sure of recovery for T >= 3) or ``"3k > d"``."""
    return "3k <= d" if 3 * k <= d else "3k > d"


def start_scales(n_starts: int) -> np.ndarray:
    """Scale of each start: :data:`SCALES` cycled."""
    return np.asarray(SCALES)[np.arange(n_starts) % len(SCALES)]


# ----------------------------------------------------------------------------- compiled stages
@functools.partial(jax.jit, static_argnames=("shape",))
def _draw_cell(key, *, shape):
    """Truths and standard-normal starts of one cell: A (P, d, d), U (P, T, d, k),
    U_new (P, 1, d, k), Z (P, S, T, d, k), W (P, T, k, k) (for the rotations Q_t)."""
    d, k, T, P, S = shape
    return draw(key, [(P,) + s for s in truth_shapes(d, k, T) + [(S, T, d, k), (T, k, k)]])


def _starts(Z):
    scales = jnp.asarray(start_scales(Z.shape[0]), Z.dtype)
    return scales[:, None, None, None] * Z


def _evidence(info, U, truth, size_mid, diverged=None, extra=None, label=None, size=None):
    """Per-run arrays from the classifier's :class:`~linmeta.methods.landscape.PointInfo` at end points U
    (``label``/``size``: the run's own, when they differ from the classified point's)."""
    c = info.scale
    label = info.label if label is None else label
    size = info.size if size is None else size
    Ebar = jnp.mean(truth.R_star - U @ jnp.swapaxes(U, -1, -2), axis=-3)  # A(U) - A*
    base_error = jnp.linalg.norm(Ebar, axis=(-2, -1)) / jnp.linalg.norm(truth.A_star)
    esc = landscape.escaped(label, size_mid, size, diverged)
    out = dict(label=label, n_flat=info.n_flat, objective=info.objective / c ** 2,
               grad_norm=info.grad_norm / c ** 1.5, min_eig=info.min_eig / c, size=size,
               size_mid=size_mid, escaped=esc, base_error=base_error, U=U)
    out.update(extra or {})
    return out


@functools.partial(jax.jit, static_argnames=("newton_iter",))
def _newton_stage(A, U, U_new, Z, ftol, gtol, *, newton_iter):
    half = (newton_iter + 1) // 2

    def one(z):
        A, U, U_new, Z = z
        truth = gaussian_truth(A, U, U_new)
        T, d, k = U.shape
        R = truth.R_star

        def f(x):
            return population_reduced_objective(x.reshape(T, d, k), R) / T

        def solve(u):
            # two legs of newton_iter / 2 iterations in one scan (one compiled Newton loop)
            x, sq = lax.scan(lambda x, _: (lambda y: (y, jnp.sum(y * y)))(
                _saddle_free_newton(f, x, half, ftol, gtol)[0]), u.reshape(-1), None, length=2)
            return x.reshape(T, d, k), sq[0]

        ends, sq_mid = lax.map(solve, _starts(Z))   # each run stops on its own
        info = landscape.classify(ends, R)
        return _evidence(info, ends, truth, sq_mid / info.scale)

    return lax.map(one, (A, U, U_new, Z))


@functools.partial(jax.jit, static_argnames=("outer", "inner", "polish_iter"))
def _alternating_stage(A, U, U_new, Z, lr_adapter, lr_base, *, outer, inner, polish_iter):
    every = max(outer // 30, 1)
    steps = record_steps(outer, every)
    i_mid = int(np.argmin(np.abs(steps - outer / 2)))

    def one(z):
        A, U, U_new, Z = z
        truth = gaussian_truth(A, U, U_new)
        T, d, k = U.shape
        src = population(truth)
        B = ols_solution(src)

        def run(u0):
            (_, Uf), hist = run_steps(
                lambda s: alternating_step(s[0], s[1], src, lr_adapter, lr_base, inner),
                (jnp.zeros((d, d), u0.dtype), u0), outer, every,
                lambda s: (meta_lora_excess(s[0], s[1], src, B), jnp.sum(s[1] * s[1])))
            value, sq = hist.value
            diverged = (divergence_index(value) >= 0) | ~jnp.all(jnp.isfinite(Uf))
            return Uf, value[-1], sq[i_mid], diverged

        raw, _, sq_mid, diverged = jax.vmap(run)(_starts(Z))
        safe = jnp.where(diverged[:, None, None, None], 0.0, raw)
        R = truth.R_star
        pol = landscape.find_critical_points(R, safe, max_iter=polish_iter)
        info = pol.info
        c = info.scale
        tol = landscape.default_tolerances(R.dtype)
        # where the protocol stopped: G and ||grad G|| at the raw end point (closed forms)
        E = R - safe @ jnp.swapaxes(safe, -1, -2)
        D = E - jnp.mean(E, axis=-3, keepdims=True)
        raw_G = 0.5 * jnp.sum(D * D, axis=(1, 2, 3)) / c ** 2
        raw_grad = jnp.sqrt(jnp.sum((-2 * D @ safe) ** 2, axis=(1, 2, 3))) / c ** 1.5
        moved = jnp.sqrt(jnp.sum((pol.U - safe) ** 2, axis=(1, 2, 3))
                         / jnp.maximum(jnp.sum(safe ** 2, axis=(1, 2, 3)), jnp.finfo(c.dtype).tiny))
        # the run's class: the class of the critical point the polishing reaches if that lies
        # within POLISH_RADIUS of where it stopped; else global if G <= tol there, else not
        # converged
        label = jnp.where(moved <= POLISH_RADIUS, info.label,
                          jnp.where(raw_G <= tol.objective, landscape.GLOBAL_MIN,
                                    landscape.NOT_CONVERGED))
        return _evidence(info, pol.U, truth, sq_mid / c, diverged,
                         dict(raw_objective=raw_G, raw_grad=raw_grad, moved=moved,
                              polished_label=info.label),
                         label=label, size=jnp.sum(safe * safe, axis=(1, 2, 3)) / c)

    return lax.map(one, (A, U, U_new, Z))


@functools.partial(jax.jit, static_argnames=("cp_iter",))
def _critical_point_stage(A, U, U_new, Z, W, *, cp_iter):
    def one(z):
        A, U, U_new, Z, W = z
        truth = gaussian_truth(A, U, U_new)
        T, d, k = U.shape
        R = truth.R_star
        # hand-built critical points U = 0 and U*_t Q_t ride along as two extra starts: the
        # finder stops at once where the gradient vanishes and classifies the point unchanged
        Q = jnp.linalg.qr(W)[0]
        U_opt = U @ Q
        S = Z.shape[0]
        cp = landscape.find_critical_points(
            R, jnp.concatenate([_starts(Z), jnp.zeros((1, T, d, k), R.dtype), U_opt[None]]),
            max_iter=cp_iter)
        zero = jax.tree.map(lambda a: a[S:S + 1], cp.info)
        opt = jax.tree.map(lambda a: a[S + 1:], cp.info)
        cp = jax.tree.map(lambda a: a[:S], cp)
        out = _evidence(cp.info, cp.U, truth, cp.size_mid)
        H = landscape.hessian(U_opt, R)
        orbit = landscape.orbit_tangent(U_opt)
        Hz = jnp.linalg.norm(H @ orbit, axis=0) / jnp.maximum(
            jnp.linalg.norm(H) * jnp.linalg.norm(orbit, axis=0), jnp.finfo(R.dtype).tiny)
        out["checks"] = dict(
            R=R, zero_label=zero.label[0], zero_grad=zero.grad_norm[0],
            zero_min_eig=zero.min_eig[0], zero_n_orbit=zero.n_orbit[0],
            zero_hess_norm=2 * jnp.sqrt(k * jnp.sum((R - jnp.mean(R, axis=0)) ** 2)),
            opt_label=opt.label[0], opt_objective=opt.objective[0] / opt.scale[0] ** 2,
            opt_n_orbit=opt.n_orbit[0], opt_n_flat=opt.n_flat[0],
            opt_Hz=jnp.max(Hz, initial=0.0))
        return out

    return lax.map(one, (A, U, U_new, Z, W))


# ----------------------------------------------------------------------------- one cell
def run_cell(key, d: int, k: int, T: int, *, truths: int, starts: int, newton_iter: int,
             alt_outer: int, polish_iter: int, cp_iter: int) -> dict:
    """Run the three methods of the census on one cell ``(d, k, T)``.

    Returns ``{"runs": {method: {name: array (truths * starts, ...)}}, "checks": {...},
    "seconds": {method: s}}``; the per-run arrays are ``label``, ``n_flat``, ``objective``
    (G / c^2), ``grad_norm`` (/ c^1.5), ``min_eig`` (/ c), ``size``, ``size_mid``, ``escaped``,
    ``base_error`` (``||A(U) - A*||_F / ||A*||_F``), ``U``, ``truth_index``, ``start_index``,
    ``scale`` (and ``raw_objective``, ``moved`` for the alternating protocol).
    """
    P, S = truths, starts
    dt = jnp.asarray(0.0).dtype
    A, U, U_new, Z, W = _draw_cell(key, shape=(d, k, T, P, S))
    runs, secs = {}, {}
    t0 = time.perf_counter()
    runs["newton"] = _newton_stage(A, U, U_new, Z, jnp.asarray(NEWTON_FTOL, dt),
                                   jnp.asarray(NEWTON_GTOL, dt), newton_iter=newton_iter)
    jax.block_until_ready(runs["newton"])
    secs["newton"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    runs["alternating"] = _alternating_stage(A, U, U_new, Z, jnp.asarray(LR_ADAPTER, dt),
                                             jnp.asarray(LR_BASE, dt), outer=alt_outer,
                                             inner=INNER_STEPS, polish_iter=polish_iter)
    jax.block_until_ready(runs["alternating"])
    secs["alternating"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cp = _critical_point_stage(A, U, U_new, Z, W, cp_iter=cp_iter)
    checks = jax.tree.map(np.asarray, cp.pop("checks"))
    runs["critical points"] = cp
    jax.block_until_ready(cp)
    secs["critical points"] = time.perf_counter() - t0
    flat = {}
    for m, r in runs.items():
        f = {n: np.asarray(v).reshape((P * S,) + np.shape(v)[2:]) for n, v in r.items()}
        f["truth_index"] = np.repeat(np.arange(P), S)
        f["start_index"] = np.tile(np.arange(S), P)
        f["scale"] = np.tile(start_scales(S), P)
        flat[m] = f
    return dict(runs=flat, checks=checks, seconds=secs)


def _check_summary(checks, d, k, T) -> dict:
    """Verdicts of the hand-built critical points of one cell (NumPy, from the stage's arrays)."""
    n = T * d * k
    eps = float(np.finfo(np.asarray(checks["R"]).dtype).eps)
    R = np.asarray(checks["R"], float)
    D = R - R.mean(axis=1, keepdims=True)
    lam = np.linalg.eigvalsh(D)[..., -1].max(axis=1)            # max_t lambda_max(D*_t) per truth
    zero_err = np.abs(np.asarray(checks["zero_min_eig"]) + 2 * lam)
    zero_tol = 10 * n * eps * np.asarray(checks["zero_hess_norm"])
    want_orbit = landscape.known_zero_modes(T, k)
    return dict(
        zero_ok=bool(np.all((checks["zero_label"] == landscape.STRICT_SADDLE)
                            & (checks["zero_grad"] == 0) & (checks["zero_n_orbit"] == 0)
                            & (zero_err <= zero_tol))),
        zero_rel_error=float(np.max(zero_err / np.maximum(2 * lam, 1e-300))),
        opt_ok=bool(np.all((checks["opt_label"] == landscape.GLOBAL_MIN)
                           & (checks["opt_objective"] <= (10 * n * eps) ** 2)
                           & (checks["opt_n_orbit"] == want_orbit)
                           & (checks["opt_Hz"] <= 10 * n * eps))),
        opt_objective=float(np.max(checks["opt_objective"])),
        opt_Hz=float(np.max(checks["opt_Hz"])),
        opt_n_orbit=[int(x) for x in np.atleast_1d(checks["opt_n_orbit"])],
        known_zero_modes=want_orbit,
        opt_n_flat=[int(x) for x in np.atleast_1d(checks["opt_n_flat"])],
    )


def summarise_runs(r: dict) -> dict:
    """Census counts of one method on one cell (per-run arrays as from :func:`run_cell`), the
    identifiability split of the global minima and the evidence at every spurious minimum."""
    counts = landscape.census_counts(r["label"], r["n_flat"], r["escaped"])
    esc = np.asarray(r["escaped"], bool)
    glob = ~esc & (r["label"] == landscape.GLOBAL_MIN)
    err = np.asarray(r["base_error"], float)
    counts["global, A_hat = A*"] = int(np.sum(glob & (err <= IDENTIFIED)))
    counts["global, A_hat != A*"] = int(np.sum(glob & (err > NOT_IDENTIFIED)))
    counts["global, undecided"] = int(np.sum(glob & (err > IDENTIFIED) & (err <= NOT_IDENTIFIED)))
    ident = glob & (err <= IDENTIFIED)
    nonid = glob & (err > IDENTIFIED)
    counts["max base error, A_hat = A*"] = float(err[ident].max()) if ident.any() else None
    counts["min base error, other global"] = float(err[nonid].min()) if nonid.any() else None
    sp = ~esc & (r["label"] == landscape.SPURIOUS_MIN)
    counts["spurious"] = [dict(truth=int(r["truth_index"][i]), start=int(r["start_index"][i]),
                               scale=float(r["scale"][i]), objective=float(r["objective"][i]),
                               grad_norm=float(r["grad_norm"][i]),
                               min_eig=float(r["min_eig"][i]), n_flat=int(r["n_flat"][i]),
                               size=float(r["size"][i]), base_error=float(err[i]))
                          for i in np.where(sp)[0]]
    by_scale = {}
    for s in SCALES:
        m = np.isclose(r["scale"], s)
        by_scale[f"{s:g}"] = landscape.census_counts(r["label"][m], r["n_flat"][m], esc[m])
    counts["by scale"] = by_scale
    if "polished_label" in r:   # the alternating protocol: where it stopped, before polishing
        raw, moved = np.asarray(r["raw_objective"], float), np.asarray(r["moved"], float)
        ok = ~esc & np.isfinite(raw)
        counts["raw objective / c^2 (median, max)"] = (
            [float(np.median(raw[ok])), float(np.max(raw[ok]))] if ok.any() else None)
        counts["polish moved (median, max)"] = (
            [float(np.median(moved[ok])), float(np.max(moved[ok]))] if ok.any() else None)
        counts["nearest critical point (polished)"] = landscape.census_counts(
            r["polished_label"], r["n_flat"], esc)
    return counts


def summarise_cell(d, k, T, cell: dict) -> dict:
    """The JSON entry of one cell: counts per method, checks, seconds."""
    return dict(d=d, k=k, T=T, region=region(d, k),
                methods={m: summarise_runs(r) for m, r in cell["runs"].items()},
                checks=_check_summary(cell["checks"], d, k, T),
                seconds={m: round(float(s), 2) for m, s in cell["seconds"].items()})


# ----------------------------------------------------------------------------- the grid
def _header(cfg, setting, seed) -> dict:
    tol = landscape.default_tolerances()
    return dict(
        schema=SCHEMA, claim=CLAIM, setting=setting, seed=seed,
        dtype=str(jnp.asarray(0.0).dtype),
        config=dict(d=list(cfg["d"]), k=list(cfg["k"]), T=list(cfg["T"]), truths=cfg["truths"],
                    starts_per_truth=cfg["starts"], scales=list(SCALES),
                    newton_iter=cfg["newton_iter"], alt_outer=cfg["alt_outer"],
                    alt_inner=INNER_STEPS, lr_adapter=LR_ADAPTER, lr_base=LR_BASE,
                    polish_iter=cfg["polish_iter"], cp_iter=cfg["cp_iter"]),
        tolerances=dict(objective=float(tol.objective), gradient=float(tol.gradient),
                        hessian=float(tol.hessian), orbit=float(tol.orbit),
                        escape_growth=landscape.ESCAPE_GROWTH,
                        escape_size=landscape.ESCAPE_SIZE, polish_radius=POLISH_RADIUS,
                        identified=IDENTIFIED,
                        not_identified=NOT_IDENTIFIED),
        methods={
            "newton": "saddle-free damped Newton of meta_lora(method='newton') on G/T",
            "alternating": "the paper's alternating protocol (10 adapter steps lr 0.003, one "
                           "base step lr 0.03 per outer iteration, from A = 0); a run takes the "
                           "class of the critical point Levenberg-Marquardt on ||grad G||^2 "
                           "reaches from its end point when that moved it by at most "
                           "polish_radius (relative), else global if G <= tol.objective c^2, else "
                           "not converged",
            "critical points": "Levenberg-Marquardt on ||grad G||^2 (critical points of any "
                               "index)"},
        classes={
            "global": "G <= tol.objective c^2",
            "strict spurious": "critical point, G above the global tolerance, restricted Hessian "
                               "spectrum > tol.hessian c",
            "degenerate spurious": "as strict spurious, with restricted eigenvalues in "
                                   "[-tol.hessian c, tol.hessian c]",
            "saddle": "critical point with a restricted eigenvalue < -tol.hessian c",
            "not converged": "||grad G|| > tol.gradient c^1.5 (and not escaped)",
            "escaped to infinity": "diverged, or not converged with ||U||^2/c >= escape_size and "
                                   ">= escape_growth times its size half-way",
            "global, A_hat = A*": "||A(U) - A*||_F <= identified ||A*||_F",
            "global, A_hat != A*": "||A(U) - A*||_F > not_identified ||A*||_F"},
        c="sqrt(2 G(0))")


def census(setting: str = "quick", seed: int = 0, *, checkpoint=None, cfg=None, log=None):
    """Run the census of ``setting`` (or an explicit ``cfg`` dict shaped like :data:`SETTINGS`).

    Returns ``(record, raw)``: ``record`` is the JSON-able census (header, ``cells`` in grid
    order, ``complete``), ``raw`` maps each cell computed in this call to :func:`run_cell`'s
    output. With ``checkpoint`` (a path) the record is written there atomically after every cell,
    and cells already in a checkpoint with the same header are taken from it instead of being
    recomputed (resume). ``log``: optional callable receiving one line per cell.
    """
    if cfg is None:
        cfg = settings_value(SETTINGS, setting)
    header = _header(cfg, setting, seed)
    cells = grid_cells(cfg["d"], cfg["k"], cfg["T"])
    if not cells:
        raise ValueError("the grid has no cell with k <= d")
    done = {}
    if checkpoint is not None and Path(checkpoint).exists():
        try:
            old = json.loads(Path(checkpoint).read_text())
        except (OSError, ValueError):
            old = {}
        if all(old.get(n) == header[n] for n in ("schema", "setting", "seed", "dtype", "config")):
            done = {(c["d"], c["k"], c["T"]): c for c in old.get("cells", [])}
    key = key_for(seed, CLAIM)
    record = dict(header, complete=False, cells=[])
    raw = {}
    for d, k, T in cells:
        if (d, k, T) in done:
            record["cells"].append(done[(d, k, T)])
            continue
        t0 = time.perf_counter()
        cell = run_cell(jax.random.fold_in(key, 10000 * d + 100 * k + T), d, k, T,
                        truths=cfg["truths"], starts=cfg["starts"],
                        newton_iter=cfg["newton_iter"], alt_outer=cfg["alt_outer"],
                        polish_iter=cfg["polish_iter"], cp_iter=cfg["cp_iter"])
        raw[(d, k, T)] = cell
        entry = summarise_cell(d, k, T, cell)
        record["cells"].append(entry)
        if checkpoint is not None:
            atomic_write_json(checkpoint, record)
        if log is not None:
            m = entry["methods"]
            log(f"(d,k,T)=({d},{k},{T}) {time.perf_counter() - t0:.1f} s: " + "; ".join(
                f"{n}: {m[n]['global']} global, {m[n]['strict spurious']}+"
                f"{m[n]['degenerate spurious']} spurious" for n in METHODS))
    record["complete"] = True
    record["totals"] = totals(record)
    if checkpoint is not None:
        atomic_write_json(checkpoint, record)
    return record, raw


def totals(record, cells=None) -> dict:
    """Counts per method summed over ``cells`` of ``record`` (default: all)."""
    cells = record["cells"] if cells is None else cells
    out = {}
    for m in METHODS:
        out[m] = {n: sum(c["methods"][m][n] for c in cells)
                  for n in landscape.CENSUS_KEYS + ("global, A_hat = A*", "global, A_hat != A*",
                                                    "global, undecided")}
    return out


def write_census(record, path) -> Path:
    """Write the census record as JSON, atomically."""
    atomic_write_json(path, record)
    return Path(path)


# ----------------------------------------------------------------------------- verdicts
def _far(c, m):
    """Degenerate spurious minima of cell c, method m, far out (||U||^2/c >= ESCAPE_SIZE): a
    solver stalled on a direction where G flattens towards infinity."""
    return sum(1 for s in c["methods"][m]["spurious"]
               if s["n_flat"] > 0 and s["size"] >= landscape.ESCAPE_SIZE)


def _cell_list(cells, m):
    """``(d,k,T): strict/degenerate (far)/runs`` for the cells with spurious minima."""
    parts = []
    for c in cells:
        r = c["methods"][m]
        if r["strict spurious"] + r["degenerate spurious"]:
            parts.append(f"({c['d']},{c['k']},{c['T']}): {r['strict spurious']}/"
                         f"{r['degenerate spurious']} ({_far(c, m)})/{r['runs']}")
    return ", ".join(parts) if parts else "none"


def _subsets(cells):
    return [("all cells", cells),
            ("k = 1", [c for c in cells if c["k"] == 1]),
            ("3k > d", [c for c in cells if 3 * c["k"] > c["d"]]),
            ("T = 4, 5", [c for c in cells if c["T"] >= 4])]


def verdicts(record) -> list:
    """Verdict rows of a census record (see the module docstring)."""
    cells = record["cells"]
    dtype = record["dtype"]
    cfg = record["config"]
    rows = []
    n_cells = len(cells)
    chk = [c["checks"] for c in cells]
    rows.append(Verdict(
        CLAIM, "hand-built critical point U = 0: label strict saddle, smallest Hessian eigenvalue "
        "= -2 max_t lambda_max(R*_t - Rbar) (max rel. error over cells and truths)", 0.0,
        max(x["zero_rel_error"] for x in chk), float("nan"),
        "every truth: gradient exactly 0, label strict saddle, |error| <= 10 n eps ||H||_F",
        all(x["zero_ok"] for x in chk), "check", f"{n_cells} cells x {cfg['truths']} truths; "
        f"{dtype}"))
    rows.append(Verdict(
        CLAIM, "hand-built global minimum U*_t Q_t: G/c^2, label global, orbit rank "
        "T k(k-1)/2, H z = 0 on the orbit (max ||Hz||/(||H|| ||z||))", 0.0,
        max(x["opt_Hz"] for x in chk), float("nan"),
        "every truth: G/c^2 <= (10 n eps)^2, label global, orbit rank exact, "
        "||Hz|| <= 10 n eps ||H||_F ||z||", all(x["opt_ok"] for x in chk), "check",
        f"max G/c^2 {max(x['opt_objective'] for x in chk):.1e}; extra flat directions at U* in "
        "cells " + (", ".join(f"({c['d']},{c['k']},{c['T']})" for c in cells
                               if max(c["checks"]["opt_n_flat"]) > 0) or "none")))
    sure = [c for c in cells if 3 * c["k"] <= c["d"]]
    if sure:
        bad = sum(c["methods"][m]["global, A_hat != A*"] for c in sure for m in METHODS)
        und = sum(c["methods"][m]["global, undecided"] for c in sure for m in METHODS)
        n_glob = sum(c["methods"][m]["global"] for c in sure for m in METHODS)
        rows.append(Verdict(
            CLAIM, "3k <= d (C3 claims recovery): global minima found with A_hat != A*", 0, bad,
            float("nan"), f"exactly 0 (||A_hat - A*|| > {NOT_IDENTIFIED:g} ||A*||)", bad == 0,
            "check", f"{n_glob} global minima in {len(sure)} cells, all methods; "
            f"{und} undecided ({IDENTIFIED:g} < error <= {NOT_IDENTIFIED:g})"))
    beyond = [c for c in cells if 3 * c["k"] > c["d"]]
    if beyond:
        nonid = [c for c in beyond if any(c["methods"][m]["global, A_hat != A*"] for m in METHODS)]
        rows.append(Verdict(
            CLAIM, "3k > d: cells where a global minimum with A_hat != A* was found", "measured",
            f"{len(nonid)}/{len(beyond)} cells", float("nan"), "measured (identifiability map)",
            True, "measured", "cells: " + (", ".join(
                f"({c['d']},{c['k']},{c['T']})" for c in nonid) or "none")))
    census_rows = []
    for m in METHODS:
        for name, sub in _subsets(cells):
            if not sub or (name != "all cells" and len(sub) == len(cells)):
                continue   # empty, or the same cells as the "all cells" row
            runs = sum(c["methods"][m]["runs"] for c in sub)
            strict = sum(c["methods"][m]["strict spurious"] for c in sub)
            far = sum(_far(c, m) for c in sub)
            tot = {n: sum(c["methods"][m][n] for c in sub) for n in landscape.CENSUS_KEYS[1:]}
            finite = all(np.isfinite(s["objective"]) for c in sub
                         for s in c["methods"][m]["spurious"])
            note = (f"{len(sub)} cells, {runs} runs; census " + ", ".join(
                f"{n}: {v}" for n, v in tot.items()) + f" (degenerate spurious far out, "
                f"||U||^2/c >= {landscape.ESCAPE_SIZE:g}: {far}); cells with spurious minima "
                f"(strict/degenerate (far)/runs): {_cell_list(sub, m)}")
            if m == "alternating":
                note += f"; {cfg['alt_outer']} outer iterations"
            census_rows.append(Verdict(
                CLAIM, f"{m}: fraction of runs at strict spurious local minima, {name}",
                "measured", strict / max(runs, 1), float("nan"),
                "strict spurious: critical point, G > 1e-12 c^2, restricted eig > 1e-6 c", finite,
                "measured", note + f"; {dtype}"))
    # the headline first (Newton over all cells), then the checks, then the other census rows
    return census_rows[:1] + rows + census_rows[1:]


def run(setting: str = "quick", seed: int = 0, *, checkpoint=None, log=None) -> ClaimResult:
    """Measure C8 for ``setting`` (tiny/quick/full); see the module docstring. ``checkpoint``: a
    JSON path to write the census to after every cell and to resume from."""
    cfg = settings_value(SETTINGS, setting)
    t0 = time.perf_counter()
    record, raw = census(setting, seed, checkpoint=checkpoint, log=log)
    spurious = []
    for (d, k, T), cell in raw.items():
        for m, r in cell["runs"].items():
            sp = ~np.asarray(r["escaped"], bool) & (r["label"] == landscape.SPURIOUS_MIN)
            for i in np.where(sp)[0]:
                spurious.append(dict(cell=(d, k, T), method=m, truth_index=int(r["truth_index"][i]),
                                     start_index=int(r["start_index"][i]),
                                     objective=float(r["objective"][i]),
                                     min_eig=float(r["min_eig"][i]), n_flat=int(r["n_flat"][i]),
                                     U=r["U"][i]))
    data = dict(setting=setting, seed=seed, cfg=cfg, census=record, spurious=spurious)
    return ClaimResult(CLAIM, verdicts(record) + [census_classes_row(), classifier_levels_row(),
                                                  random_starts_row(key_for(seed, CLAIM)),
                                                  rosenbrock_newton_row()], data,
                       time.perf_counter() - t0)


def census_classes_row() -> Verdict:
    """The census classes on a hand-built batch of ten runs whose classes are known by
    construction (:func:`linmeta.methods.landscape.escaped`, then
    :func:`~linmeta.methods.landscape.census_counts`): NOT_CONVERGED runs that grew by
    ``ESCAPE_GROWTH`` to at least ``ESCAPE_SIZE`` (escaped), that grew but stayed small, that are
    large but did not grow (not escaped); a non-finite end point and a diverged run of other labels
    (escaped); one global minimum, two spurious minima (one with flat directions), one saddle.
    Measured: the classes that differ from the construction, and the escape flags that do."""
    L = landscape
    g, s = L.ESCAPE_GROWTH, L.ESCAPE_SIZE
    #            label              size_mid   size           diverged n_flat escaped?
    runs = [(L.NOT_CONVERGED, 2 * s, 2 * s * g, False, 0, True),
            (L.NOT_CONVERGED, 1.0, 0.5 * s, False, 0, False),      # grew, below ESCAPE_SIZE
            (L.NOT_CONVERGED, 4 * s, 4 * s * g * 0.99, False, 0, False),   # large, no growth
            (L.NOT_CONVERGED, 1.0, 2.0, False, 0, False),
            (L.GLOBAL_MIN, 1.0, 1.0, False, 0, False),
            (L.GLOBAL_MIN, 1.0, np.inf, False, 0, True),           # end point not finite
            (L.SPURIOUS_MIN, 1.0, 1.0, False, 0, False),
            (L.SPURIOUS_MIN, 1.0, 1.0, False, 2, False),
            (L.STRICT_SADDLE, 1.0, 1.0, True, 0, True),            # diverged
            (L.STRICT_SADDLE, 1.0, 1.0, False, 0, False)]
    label, mid, size, div, n_flat, esc_want = (np.array(c) for c in zip(*runs))
    want = {"runs": 10, "global": 1, "strict spurious": 1, "degenerate spurious": 1, "saddle": 1,
            "not converged": 3, "escaped to infinity": 3}
    esc = np.asarray(L.escaped(label, mid, size, div), bool)
    esc_jax = np.asarray(L.escaped(jnp.asarray(label), jnp.asarray(mid), jnp.asarray(size),
                                   jnp.asarray(div)), bool)
    got = L.census_counts(label, n_flat, esc)
    wrong = [k for k in want if got.get(k) != want[k]] + \
        [f"escaped[{i}]" for i in np.where((esc != esc_want) | (esc_jax != esc_want))[0]]
    assert set(want) == set(L.CENSUS_KEYS)
    return Verdict(CLAIM, "census classes (escaped, census_counts) on a hand-built batch of 10 "
                   "runs: classes or escape flags that differ from the construction", 0,
                   len(wrong), 0.0, Tolerance.exact(), not wrong, "check",
                   "counts " + ", ".join(f"{k} {got.get(k)}" for k in want)
                   + (f"; differ: {', '.join(wrong)}" if wrong else ""))


def classifier_levels_row(d: int = 4, k: int = 1, T: int = 3) -> Verdict:
    """The classifier's levels (:func:`linmeta.methods.landscape.analyse_point`, default
    tolerances) on two points built next to a global minimum ``U*`` of a population problem
    (``c = sqrt(2 G(0))`` well above 1): ``U* + eps z`` along the flattest restricted Hessian
    direction z (:func:`~linmeta.methods.landscape.hessian`, eigenvalue lambda), eps set so that
    ``G = lambda eps^2 / 2`` is ``0.1 tol.objective c^2`` (label global) and
    ``3 tol.objective c^2`` with ``||grad G|| <= tol.gradient c^{3/2}`` (converged, not global:
    the local quadratic model reaches the global level, ``G - ||g||^2 / (2 lambda) ~ 0``, so it
    is not certified spurious: label not converged). Counts the labels that differ."""
    truth = sample_truth(jax.random.PRNGKey(3), d, k, T)
    R, U = truth.R_star, truth.U_star
    tol = landscape.default_tolerances()
    c = float(landscape.objective_scale(R))
    w, V = np.linalg.eigh(np.asarray(landscape.hessian(U, R)))
    j = int(np.argmax(w > 10 * tol.hessian * c))     # the flattest direction off the orbit
    lam, z = float(w[j]), V[:, j].reshape(U.shape)
    cases = [(0.1, landscape.GLOBAL_MIN), (3.0, landscape.NOT_CONVERGED)]
    wrong, notes = [], []
    for mult, want in cases:
        eps = math.sqrt(2 * mult * tol.objective * c ** 2 / lam)
        info = landscape.analyse_point(U + eps * jnp.asarray(z, U.dtype), R)
        g_rel = float(info.grad_norm) / (tol.gradient * c ** 1.5)
        G_rel = float(info.objective) / (tol.objective * c ** 2)
        notes.append(f"G = {G_rel:.2f} tol c^2, ||g|| = {g_rel:.2f} tol_g c^1.5: label "
                     f"{int(info.label)} (want {want})")
        if int(info.label) != want or g_rel > 1:
            wrong.append(mult)
    return Verdict(
        CLAIM, "classifier levels on hand-built points next to a global minimum (c >> 1): "
        "G = 0.1 tol c^2 labelled global; G = 3 tol c^2 with a converged gradient not certified "
        "spurious (not converged): labels that differ", 0, len(wrong), float("nan"),
        Tolerance.exact("labels counted"), not wrong, "check",
        f"d={d}, k={k}, T={T}, c = {c:.3g}, lambda/c = {lam / c:.3g}; " + "; ".join(notes))


def _newton_transcription_problems(name, trace, fns, x0, max_iter, ftol, gtol) -> list:
    """Where the trace of :func:`linmeta.methods.meta_lora._saddle_free_newton` departs from a
    NumPy transcription of its documented iteration (:func:`rosenbrock_newton_row`) on
    ``fns = (f, grad, hess)`` (NumPy) from ``x0``."""
    f_np, grad_np, hess_np = fns
    z, gn_last, stalled = np.asarray(x0, float), np.inf, False
    fz = f_np(z)
    ref = [fz]
    while len(ref) - 1 < max_iter and fz > ftol and gn_last > gtol and not stalled:
        g = grad_np(z)
        gn_last = np.linalg.norm(g)
        w, V = np.linalg.eigh(hess_np(z))
        p = -V @ ((V.T @ g) / (np.abs(w) + gn_last))
        t, ft, n = 1.0, f_np(z + p), 0
        while ft > fz + 1e-4 * t * (g @ p) and n < 60:
            t, n = 0.5 * t, n + 1
            ft = f_np(z + t * p)
        stalled = not ft < fz
        if not stalled:
            z, fz = z + t * p, ft
        ref.append(fz)
    ref = np.asarray(ref)
    if len(ref) != len(trace):
        return [f"{name}: {len(trace) - 1} iterations, the transcription {len(ref) - 1}"]
    off = np.abs(trace - ref) > 1e-9 * np.abs(ref) + 1e-12 * abs(ref[0])
    if np.any(off):
        i = int(np.argmax(off))
        return [f"{name}: trace departs from the transcription at iteration {i}: "
                f"{trace[i]:.6g} vs {ref[i]:.6g}"]
    return []


def rosenbrock_newton_row(max_iter: int = 200, ftol: float = 1e-26, gtol: float = 1e-14) -> Verdict:
    """The census's Newton solver (:func:`linmeta.methods.meta_lora._saddle_free_newton`, the one
    of ``meta_lora(method="newton")``) on Rosenbrock's function from (-1.2, 1), where full
    Newton steps overshoot and the line search must cut them: it reaches the minimiser (1, 1)
    (``||x - x*|| <= 1e-8``), reports ``f`` at the point it returns, its trace (objective per
    iteration, NaN after the stop) starts at ``f(x0)``, never rises and holds one value per
    iteration, and it stops at the first iteration whose objective is at most ``ftol``; and its
    trace is the one of a NumPy transcription of the documented iteration (the step
    ``-V (V^T g) / (|w| + ||g||)`` on the eigendecomposition ``V diag(w) V^T`` of the Hessian, an
    Armijo backtracking line search with constant 1e-4 that halves the step at most 60 times, a
    step kept only if it lowers f, a stop on ``f <= ftol``, on ``||g|| <= gtol`` at the last
    step's start, or on a step not kept) with Rosenbrock's exact gradient and Hessian: the same
    number of iterations, values within 1e-9 relative (or 1e-12 of ``f(x0)``); the same on a
    steep rippled bowl ``100 (x^2/2 + 0.3 sin(5 x) + y^2/2)`` from (2, 1/2) (gtol 1e-8), where
    full steps cross ripples and the line search must halve them several times.
    Counts the statements that fail."""
    def f(x):
        return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2

    x0 = jnp.asarray([-1.2, 1.0])
    x, fx, info = jax.jit(lambda z: _saddle_free_newton(f, z, max_iter, ftol, gtol))(x0)
    x, fx, trace = np.asarray(x), float(fx), np.asarray(info.trace)
    its = int(info.iterations)
    fin = np.isfinite(trace)
    n_fin = int(np.sum(fin))
    low = np.flatnonzero(trace[:n_fin] <= ftol)
    bad = history_problems(np.arange(n_fin), trace[:n_fin], trace=True, final=fx,
                           start=float(f(x0)), rel=1e-12)
    if np.linalg.norm(x - 1.0) > 1e-8:
        bad.append(f"ends at {x}, not (1, 1)")
    if abs(fx - float(f(jnp.asarray(x)))) > 1e-12 * max(abs(fx), 1e-300) + 1e-300:
        bad.append(f"reports f = {fx:.3g} at a point where f = {float(f(jnp.asarray(x))):.3g}")
    if n_fin != its + 1 or not np.all(fin[:n_fin]):
        bad.append(f"{its} iterations, {n_fin} trace values")
    if low.size and low[0] != n_fin - 1:
        bad.append(f"objective <= ftol first at iteration {low[0]}, stopped at {n_fin - 1}")

    def rosen_grad(z):
        return np.array([-2 * (1 - z[0]) - 400 * z[0] * (z[1] - z[0] ** 2),
                         200 * (z[1] - z[0] ** 2)])

    def rosen_hess(z):
        return np.array([[2 - 400 * z[1] + 1200 * z[0] ** 2, -400 * z[0]], [-400 * z[0], 200.0]])

    bad += _newton_transcription_problems("Rosenbrock", trace[:n_fin], (f, rosen_grad, rosen_hess),
                                          [-1.2, 1.0], max_iter, ftol, gtol)   # (f: NumPy too)

    # a steep rippled bowl: full steps cross ripples, the line search halves them several times
    def ripple(z, xp=jnp):
        return 100 * (0.5 * z[0] ** 2 + 0.3 * xp.sin(5 * z[0]) + 0.5 * z[1] ** 2)

    def ripple_grad(z):
        return 100 * np.array([z[0] + 1.5 * np.cos(5 * z[0]), z[1]])

    def ripple_hess(z):
        return 100 * np.array([[1 - 7.5 * np.sin(5 * z[0]), 0.0], [0.0, 1.0]])

    r0, r_gtol = jnp.asarray([2.0, 0.5]), 1e-8   # (stops before the rounding floor of f)
    _, _, r_info = jax.jit(lambda z: _saddle_free_newton(ripple, z, max_iter, ftol, r_gtol))(r0)
    r_trace = np.asarray(r_info.trace)
    bad += _newton_transcription_problems("rippled bowl", r_trace[np.isfinite(r_trace)],
                                          (lambda z: ripple(z, np), ripple_grad, ripple_hess),
                                          [2.0, 0.5],
                                          max_iter, ftol, r_gtol)
    return Verdict(
        CLAIM, "saddle-free Newton (the census's and meta_lora's) on Rosenbrock from (-1.2, 1): "
        "reaches (1, 1), reports f at its point, trace from f(x0) never rising, one value per "
        "iteration, stops at the first objective <= ftol, trace = a NumPy transcription's (and "
        "on a rippled bowl): "
        "statements that fail", 0, len(bad),
        float("nan"), Tolerance.exact("statements counted"), not bad, "check",
        f"{its} iterations, final f {fx:.2g}; " + ("; ".join(bad) if bad else "all hold"))


def random_starts_row(key, n_starts: int = 24, T: int = 3, d: int = 4, k: int = 2) -> Verdict:
    """:func:`linmeta.methods.landscape.random_starts` against its statement: start i is
    Gaussian with standard deviation ``scales[i % len(scales)]`` (default (0.1, 0.3, 1.0)):
    the sum of squares of each scale's starts over its variance is chi-square with (starts of
    that scale) T d k degrees of freedom (two-sided band, p = 1e-6 per scale, Bonferroni)."""
    scales = (0.1, 0.3, 1.0)
    Z = np.asarray(landscape.random_starts(key, n_starts, T, d, k))
    p = 1e-6 / len(scales)
    bad, notes = [], []
    for j, s in enumerate(scales):
        x = Z[j::len(scales)]
        dof = x.size
        q = float(np.sum(x * x) / s ** 2)
        lo, hi = chi2.ppf(p / 2, dof), chi2.ppf(1 - p / 2, dof)
        notes.append(f"scale {s}: {q:.0f} in [{lo:.0f}, {hi:.0f}]")
        if not lo <= q <= hi or Z.shape != (n_starts, T, d, k):
            bad.append(s)
    return Verdict(
        CLAIM, f"random_starts: start i ~ N(0, scales[i % 3]^2), {n_starts} starts (T, d, k) = "
        f"({T}, {d}, {k}): scales whose chi-square statistic is outside its band", 0, len(bad),
        float("nan"), Tolerance.exact("scales counted; band p = 1e-6 (Bonferroni over scales)"),
        not bad, "check", "; ".join(notes))


# ----------------------------------------------------------------------------- figures
def _shares(record, m, what):
    """(d, k, T) -> (share of runs, text) for the map panels."""
    out = {}
    for c in record["cells"]:
        r = c["methods"][m]
        if what == "spurious":
            num = r["strict spurious"]
            txt = (f"{r['strict spurious']}/{r['degenerate spurious']}"
                   if r["strict spurious"] + r["degenerate spurious"] else "")
        else:
            num = r[what]
            txt = str(num) if num else ""
        out[(c["d"], c["k"], c["T"])] = (num / max(r["runs"], 1), txt)
    return out


def _identifiability(record):
    out = {}
    for c in record["cells"]:
        g = sum(c["methods"][m]["global"] for m in METHODS)
        bad = sum(c["methods"][m]["global, A_hat != A*"] for m in METHODS)
        out[(c["d"], c["k"], c["T"])] = (bad / g if g else np.nan, f"{bad}/{g}")
    return out


def draw_map(record):
    """The census as maps over (d, k), one column per T (like the C3 phase map): identifiability
    of the global minima found, strict spurious minima per method, runs of the alternating protocol
    that had not converged, and the Hessian evidence at every spurious minimum. Returns the
    figure."""
    plt = pyplot()
    cells = record["cells"]
    ds = sorted({c["d"] for c in cells})
    ks = sorted({c["k"] for c in cells})
    Ts = sorted({c["T"] for c in cells})
    outer = record["config"]["alt_outer"]
    panels = [("global minima found with A_hat != A*, all methods (share; text: "
               "non-identifying/global)", _identifiability(record), "Purples", 1.0,
               "share of global minima\nwith A_hat != A*")]
    for m in METHODS:
        panels.append((f"{m}: runs at strict spurious minima (share; text: strict/degenerate "
                       "spurious)", _shares(record, m, "spurious"), "Reds", None,
                       f"{m}: share of runs\nat strict spurious minima"))
    panels.append((f"alternating: runs not converged after {outer} outer iterations (share; "
                   "text: count)", _shares(record, "alternating", "not converged"), "Greys", 1.0,
                   "share of runs\nnot converged"))
    nrow, ncol = len(panels), len(Ts)
    titles = [textwrap.wrap(f"({'abcdefgh'[i]}) {p[0]}", 40 * ncol) for i, p in enumerate(panels)]
    lines = max(len(t) for t in titles)
    cfg = record["config"]
    suptitle = textwrap.fill(
        f"C8  landscape census of G(U) ({record['setting']}: {len(cells)} "
        f"cell{'s' if len(cells) > 1 else ''}, {cfg['truths']} truths x "
        f"{cfg['starts_per_truth']} starts at scales {', '.join(f'{s:g}' for s in cfg['scales'])} "
        "per cell and method; blue step: 3k = d, cells above it have 3k <= d)", 70 + 45 * ncol)
    row_height = 0.24 * len(ds) + 0.6 + 0.15 * lines
    # the top margin (inches) holds the suptitle's lines, then panel (a)'s title, which sits
    # 0.12 of an axes height above its axes, its lines stacked upwards
    margin = 0.25 + 0.17 * (suptitle.count("\n") + 1) + 0.12 * row_height + 0.15 * lines + 0.1
    height = margin + 0.4 + row_height * nrow
    fig = plt.figure(figsize=(2.2 * ncol + 5.8, height))
    top = 1 - margin / height
    # columns: the T panels, an empty one (the rows' colour bars and their labels), the scatter
    gs = fig.add_gridspec(nrow, ncol + 2, width_ratios=[1] * ncol + [0.45, 1.9],
                          hspace=0.3 + 0.2 * lines, wspace=0.45, left=0.06, right=0.98,
                          bottom=0.05, top=top)
    for pi, (title, vals, cmap, vmax, bar_label) in enumerate(panels):
        if vmax is None:
            vmax = max([v[0] for v in vals.values() if np.isfinite(v[0])] + [0.05])
        row_axes = []
        for ti, T in enumerate(Ts):
            ax = fig.add_subplot(gs[pi, ti])
            grid = np.full((len(ds), len(ks)), np.nan)
            for (d, k, t), (v, txt) in vals.items():
                if t != T:
                    continue
                grid[ds.index(d), ks.index(k)] = v
                ax.text(ks.index(k), ds.index(d), txt, ha="center", va="center", fontsize=5.5,
                        color="white" if np.isfinite(v) and v > 0.6 * vmax else "black")
            image = ax.imshow(grid, origin="lower", cmap=cmap, vmin=0, vmax=vmax, aspect="auto")
            row_axes.append(ax)
            for j, k in enumerate(ks):  # the line 3k = d: cells on and above it have 3k <= d
                y = next((i for i, d in enumerate(ds) if d >= 3 * k), len(ds)) - 0.5
                ax.plot([j - 0.5, j + 0.5], [y, y], "b-", lw=2)
            ax.set_xticks(range(len(ks)), [str(k) for k in ks] if pi == nrow - 1 else [],
                          fontsize=7)
            ax.set_yticks(range(len(ds)), [str(d) for d in ds], fontsize=7)
            ax.set_ylim(-0.5, len(ds) - 0.5)
            if pi == nrow - 1:
                ax.set_xlabel("k", fontsize=8)
            ax.set_title(f"T={T}", fontsize=7, pad=2)
            if ti == 0:
                ax.set_ylabel("d", fontsize=8)
                ax.text(-0.25, 1.12, "\n".join(titles[pi]), transform=ax.transAxes,
                        fontsize=7.5, ha="left", va="bottom").set_in_layout(False)
        # one colour bar per row (the T panels of a row share vmin = 0 and vmax)
        bar = fig.colorbar(image, ax=row_axes, fraction=0.03, pad=0.02, aspect=12)
        bar.ax.tick_params(labelsize=6)
        bar.set_label(bar_label, fontsize=6.5)
    ax = fig.add_subplot(gs[:, ncol + 1])
    markers = {"newton": "o", "alternating": "s", "critical points": "^"}
    any_point = False
    for c in cells:
        for m in METHODS:
            for s in c["methods"][m]["spurious"]:
                any_point = True
                color = "tab:red" if s["n_flat"] == 0 else "tab:orange"
                far = s["size"] >= landscape.ESCAPE_SIZE
                ax.scatter(max(s["objective"], 1e-30), s["min_eig"], marker=markers[m], s=18,
                           facecolors="none" if far else color, edgecolors=color if far else "k",
                           linewidths=0.8 if far else 0.3, alpha=0.7)
    for m in METHODS:
        ax.scatter([], [], marker=markers[m], color="gray", label=m)
    ax.scatter([], [], marker="s", color="tab:red", label="strict (n_flat = 0)")
    ax.scatter([], [], marker="s", color="tab:orange", label="degenerate (n_flat > 0)")
    ax.scatter([], [], marker="s", facecolors="none", edgecolors="tab:orange",
               label=f"hollow: far out, ||U||^2/c >= {landscape.ESCAPE_SIZE:g}")
    # the census' own tolerances (its dtype's), not those of the process drawing it
    tol = record.get("tolerances") or landscape.default_tolerances(record.get("dtype"))._asdict()
    ax.axvline(tol["objective"], color="k", ls=":", lw=1)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1e-7)
    ax.set_ylim(-tol["hessian"], 1.0)  # spurious: eig >= -tol.hessian c
    ax.set_xlabel(f"G/c^2 (global tolerance {tol['objective']:g} dotted)", fontsize=8)
    ax.set_ylabel("smallest restricted Hessian eigenvalue / c", fontsize=8)
    ax.set_title("Hessian evidence at every spurious minimum" + ("" if any_point else
                                                                  " (none found)"), fontsize=8)
    ax.legend(fontsize=6, loc="lower left")
    ax.grid(True, alpha=0.3)
    fig.suptitle(suptitle, fontsize=9, y=1 - 0.12 / height, va="top")
    return fig


def plot(result: ClaimResult, out_dir) -> list:
    """The census map (:func:`draw_map`): ``c8_landscape_census.{png,pdf}`` for the tiny and quick
    settings; for the full setting ``c8_census_map.{png,pdf}`` and the census ``c8_census.json``
    (so that a quick verification never overwrites the committed full census)."""
    record = result.data["census"]
    fig = draw_map(record)
    if result.data["setting"] != "full":
        return save_figure(fig, out_dir, "c8_landscape_census",
                           dpi=60 if result.data["setting"] == "tiny" else 150)
    paths = save_figure(fig, out_dir, "c8_census_map")
    paths.append(write_census(record, Path(out_dir) / "c8_census.json"))
    return paths
