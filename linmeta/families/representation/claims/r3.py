"""Claim R3: ANIL and first-order ANIL learn the representation; one-step MAML and average loss.

Population, heads with second moment Sigma_hat, ``C = B* Sigma_hat B*^T``, ANIL with inner step
alpha on the head from w0 = 0 and outer step beta on B (derivations: docs/representation.md#r3):

- ANIL's gradient is ``alpha (P C + C P) B`` with ``P = alpha B B^T - I``; first-order ANIL's is
  ``alpha P C B``. Both move the wrong-subspace part the same way:
  ``(I - P*) B+ = (I - P*) B (I - alpha^2 beta B^T C B)``
  (:func:`linmeta.families.representation.theory.anil_wrong_subspace_update`), checked at every step of
  both trajectories (1e-12).
- Near the fixed point ``alpha B^T B = I`` that factor is ``I - alpha beta Q^T Sigma_hat Q``: the
  late contraction of the largest principal angle is ``1 - alpha beta lambda_min(Sigma_hat)`` for
  both (fitted over the records whose sine lies in [1e-10, 1e-4]; tolerance 1e-3 of
  ``alpha beta lambda_min``). The scale part ``D = alpha S S^T - I`` moves by
  ``D+ = D - c alpha beta (D Sigma + Sigma D)`` near 0, c = 2 for ANIL and 1 for first-order ANIL
  (:func:`linmeta.families.representation.theory.anil_scale_update`): its modes contract by
  ``1 - c alpha beta (lambda_i + lambda_j)``, stable for ``alpha beta lambda_max < 1/2`` (ANIL) and
  ``< 1`` (first order), so ``alpha B^T B -> I`` (checked to 1e-3 at ``alpha beta lambda_max =
  0.4``). At ``alpha beta lambda_max = 0.7`` (between the bounds) first-order ANIL still converges
  (``||alpha B^T B - I|| < 1e-3``, late rate ``1 - 0.7 lambda_min``) while ANIL's scale part does
  not (``> 0.01`` over the last 10 steps: its factor ``1 - 2.8`` is below -1).
- Average loss (one shared head): with heads of mean zero its B-gradient is ``B w w^T``, which never
  involves B*: ``B+ = B (I - lr w w^T)`` keeps the column space, so the distance to B* stays
  exactly where it started (1e-12).
- One-step MAML (inner step on B and the head): at w0 = 0 the inner step does not move B and its
  derivative in B is the identity, so the B-update equals ANIL's for any heads (w0 fixed: the
  trajectories agree to 1e-12). The gradient in w0 at w0 = 0 is
  ``mean_t [(I - alpha B^T B) B^T r_t + alpha <beta_t, r_t> w'_t]`` (linear plus cubic in beta_t,
  :func:`linmeta.families.representation.theory.maml_head_init_gradient`, checked against autodiff):
  zero for a symmetric head set: from every ANIL iterate at w0 = 0, MAML's step (w0 learned)
  equals ANIL's and leaves w0 at 0 (1e-12). Run freely, w0 = 0 is a fixed point but rounding in w0
  can grow where it is unstable (measured); with Gaussian heads w0 drifts (measured).

Closed-form rows (issue 18): ``anil_scale_update`` against the linear part (central differences)
of the library's ANIL and first-order ANIL steps, and ``anil_wrong_subspace_update`` against those
steps at ``alpha = 0.8`` (the trajectories above run at alpha = 1); the stated domains of ANIL's
closed forms and of ``maml_head_init_gradient``.

The named objectives (one row): ``anil_objective``, ``maml_objective`` and
``average_loss_objective`` on finite samples at a random B and a head ``w0 != 0`` against the one
inner step written out in NumPy (ANIL: the head moves; MAML: head and representation; average
loss: none) and the samples' mean squared error; tolerance rounding, ``100 d eps``.
"""
from __future__ import annotations

import math
import time
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from linmeta.engine.claims import ClaimResult, Verdict
from linmeta.engine.claim_support import (DomainCase, domain_row, figure_dpi, float_tol, pyplot,
                                          save_figure, settings_value, spread)
from linmeta.engine.verdict import Tolerance
from .. import methods as rep_methods
from .. import theory as rep_theory
from ..tasks import population_from_betas
from ._population import ALPHA, BETA, BETA_EDGE, SETTINGS, population_runs
from ._rates import RATE_WINDOW, late_rate
from .r1 import finite_instance, sample_loss

CLAIM = "R3"
RATE_TOL = 1e-3  # fraction of alpha beta lambda_min


def _rates(trajs):
    return np.array([late_rate(t)[0] for t in trajs])


def run(setting: str = "quick", seed: int = 0) -> ClaimResult:
    """Measure R3 at ``setting`` (tiny/quick/full); see the module docstring."""
    cfg = settings_value(SETTINGS, setting)
    t0 = time.perf_counter()
    out = population_runs(setting, seed)
    S, steps = cfg["seeds"], cfg["steps"]
    lam = out["lambda_min"]
    sig = jnp.asarray(out["sigma_hat"])
    pred = np.asarray([float(rep_theory.anil_late_rate(ALPHA, BETA, s)) for s in sig])
    note = (f"d={cfg['d']}, k={cfg['k']}, T={cfg['T']} balanced heads, lambda_min(Sigma)="
            f"{lam.min():.2f}, alpha={ALPHA}, beta={BETA}, {S} seeds, {steps} steps")
    tol_rate = RATE_TOL * ALPHA * BETA * lam
    exact = float_tol(1e-12, 1e-5)
    rows = []
    for name, key in (("ANIL", "anil_traj"), ("first-order ANIL", "fo_traj")):
        r = _rates(out[key])
        err = np.abs(r - pred)
        rows.append(Verdict(
            CLAIM, f"{name} late contraction of sin(largest principal angle) vs "
            "1 - alpha beta lambda_min(Sigma)", float(pred.mean()), float(np.nanmean(r)),
            spread(r), f"every seed within {RATE_TOL:g} alpha beta lambda_min "
            f"({tol_rate.min():.1e}); window {RATE_WINDOW}", bool(np.all(err <= tol_rate)),
            "check", note + f"; max |error| {np.nanmax(err):.1e}"))
    for name, key in (("ANIL", "anil_gram"), ("first-order ANIL", "fo_gram")):
        g = out[key]
        rows.append(Verdict(CLAIM, f"{name}: ||alpha B^T B - I||_2 at the end", 0.0,
                            float(g.max()), spread(g), "every seed < 1e-3",
                            bool(np.all(g < 1e-3)), "check", note))
    for quantity, key in (
            ("ANIL: every step's wrong-subspace part vs the closed form (I-P*)B(I - alpha^2 beta "
             "B^T C B), ||.||_F/||B||_F", "closed_form_gap"),
            ("first-order ANIL: every step's wrong-subspace part vs the same closed form",
             "fo_closed_form_gap")):
        v = out[key]
        rows.append(Verdict(CLAIM, quantity, 0.0, float(v.max()), spread(v),
                            f"every seed < {exact:g}", bool(np.all(v < exact)), "check", note))
    # between the stability bounds: alpha beta lambda_max(Sigma_hat) = BETA_EDGE (balanced heads)
    ab_max = ALPHA * (BETA_EDGE / ALPHA) * np.linalg.eigvalsh(out["sigma_hat"])[:, -1]
    eg = out["edge_gram"]                                                # (S, 2): ANIL, FO
    edge_note = (note.replace(f"beta={BETA}", f"beta={BETA_EDGE / ALPHA:g}")
                 + f"; alpha beta lambda_max = {ab_max.min():.3g}..{ab_max.max():.3g}")
    fo_pred = np.asarray([float(rep_theory.anil_late_rate(ALPHA, BETA_EDGE / ALPHA, s_,
                                                          first_order=True)) for s_ in sig])
    fo_r = _rates(out["edge_fo_traj"])
    fo_tol = RATE_TOL * BETA_EDGE * lam
    rows.append(Verdict(
        CLAIM, f"first-order ANIL at alpha beta lambda_max = {BETA_EDGE:g} (stable below 1): "
        "||alpha B^T B - I||_2, max over the last 10 steps", 0.0, float(eg[:, 1].max()),
        spread(eg[:, 1]), "every seed < 1e-3", bool(np.all(eg[:, 1] < 1e-3)), "check",
        edge_note + f"; late rate {np.nanmean(fo_r):.4f} vs 1 - alpha beta lambda_min "
        f"{fo_pred.mean():.4f} (max |error| {np.nanmax(np.abs(fo_r - fo_pred)):.1e})"))
    rows.append(Verdict(
        CLAIM, f"first-order ANIL at alpha beta lambda_max = {BETA_EDGE:g}: late contraction vs "
        "1 - alpha beta lambda_min(Sigma)", float(fo_pred.mean()), float(np.nanmean(fo_r)),
        spread(fo_r), f"every seed within {RATE_TOL:g} alpha beta lambda_min "
        f"({fo_tol.min():.1e})", bool(np.all(np.abs(fo_r - fo_pred) <= fo_tol)), "check",
        edge_note))
    rows.append(Verdict(
        CLAIM, f"ANIL at alpha beta lambda_max = {BETA_EDGE:g} (stable only below 1/2): "
        "||alpha B^T B - I||_2, max over the last 10 steps", "> 0.01 (the scale mode's factor "
        f"1 - 4 alpha beta lambda_max = {1 - 4 * BETA_EDGE:g})", float(eg[:, 0].min()),
        spread(eg[:, 0]), "every seed > 0.01", bool(np.all(eg[:, 0] > 0.01)), "check",
        edge_note + f"; per seed {np.array2string(eg[:, 0], precision=2)}"))
    avg = np.abs(out["avg_traj"] - out["avg_traj"][:, :1]).max(axis=1)
    anil_end = out["anil_traj"][:, -1]
    rows.append(Verdict(
        CLAIM, "average loss (shared head, E[w*]=0): max_t |sin theta(B_t,B*) - sin theta(B_0,B*)|",
        0.0, float(avg.max()), spread(avg), f"every seed < {exact:g}",
        bool(np.all(avg < exact)), "check",
        note + f"; start {out['avg_traj'][:, 0].mean():.3f}, ANIL ends at {anil_end.max():.1e}"))
    for quantity, key in (
            ("one-step MAML (w0 fixed at 0, Gaussian heads) vs ANIL: max |B_MAML - B_ANIL| over "
             "the trajectory", "maml_fixed_gap"),
            ("one-step MAML (w0 learned, symmetric heads): its step from every ANIL iterate at "
             "w0=0 vs ANIL's next iterate, max |B diff|", "maml_step_gap"),
            ("one-step MAML (w0 learned, symmetric heads): |w0 after that step|, max over the "
             "iterates", "maml_step_w0")):
        v = out[key]
        rows.append(Verdict(CLAIM, quantity, 0.0, float(v.max()), spread(v),
                            f"every seed < {exact:g}", bool(np.all(v < exact)), "check", note))
    gap, w0e = out["maml_sym_gap"], out["maml_sym_w0"]
    rows.append(Verdict(
        CLAIM, "one-step MAML run freely (w0 learned, symmetric heads): max |B_MAML - B_ANIL| over "
        "the trajectory", "measured", float(gap.max()), spread(gap), "",
        bool(np.all(np.isfinite(gap))), "measured",
        note + f"; ||w0|| at the end, max {w0e.max():.1e}: w0 = 0 is a fixed point, but rounding "
        "in w0 (the pairwise cancellation of the head set is not exact in floating point) grows "
        "where that fixed point is unstable in w0"))
    g = out["maml_grad_rel"]
    tol_g = float_tol(1e-10, 1e-4)
    rows.append(Verdict(
        CLAIM, "one-step MAML gradient in w0 at w0=0: autodiff vs closed form (relative)", 0.0,
        float(g.max()), spread(g), f"every seed < {tol_g:g}", bool(np.all(g < tol_g)), "check",
        note + "; Gaussian heads"))
    w0g, gapg = out["maml_gauss_w0"], out["maml_gauss_gap"]
    rows.append(Verdict(
        CLAIM, "one-step MAML (w0 learned, Gaussian heads: not symmetric): ||w0|| and "
        "max |B_MAML - B_ANIL| at the end", "measured", float(w0g.mean()), spread(w0g), "",
        bool(np.all(np.isfinite(w0g)) and np.all(np.isfinite(gapg))), "measured",
        f"||w0|| per seed {np.array2string(w0g, precision=2)}; |B diff| per seed "
        f"{np.array2string(gapg, precision=2)}; final sin theta MAML "
        f"{out['maml_gauss_dist'].max():.1e}, ANIL {out['anil_gauss_traj'][:, -1].max():.1e}"))
    rows += anil_rows(seed)
    rows.append(objectives_row(seed))
    rows += closed_form_domains()
    data = dict(setting=setting, **{k: out[k] for k in (
        "anil_traj", "fo_traj", "avg_traj", "anil_gauss_traj", "lambda_min", "fo_closed_form_gap",
        "closed_form_gap", "maml_fixed_gap", "maml_step_gap", "maml_step_w0", "maml_grad_rel",
        "maml_gauss_w0")}, d=cfg["d"], k=cfg["k"], T=cfg["T"], steps=steps)
    return ClaimResult(CLAIM, rows, data, time.perf_counter() - t0)


def _rng(seed, what):
    return np.random.default_rng([int(seed) % 2 ** 31, zlib.crc32(what.encode())])


SCALE_EPS = 1e-5  # size of the scale perturbation D (central differences)


@jax.jit
def _anil_steps(Bs, stats, alpha, beta, first_order):
    """One step of the library's ANIL (first_order 0) or first-order ANIL (1) from w0 = 0, for
    each of a stack of starts (:func:`~linmeta.families.representation.methods.meta_step`)."""
    w0 = jnp.zeros((Bs.shape[-1],), Bs.dtype)
    return jax.vmap(lambda B, f: rep_methods.meta_step(B, w0, stats, alpha, beta, 0.0, 0.0,
                                                       f)[0])(Bs, first_order)


def anil_rows(seed: int, *, d: int = 4, k: int = 2, alpha: float = 0.8,
              beta: float = 0.3) -> list:
    """Two rows from the library's ANIL and first-order ANIL steps
    (:func:`~linmeta.families.representation.methods.meta_step` with ANIL's flags: autodiff of
    the population objective) at ``alpha = 0.8`` (not 1), balanced heads with a non-diagonal
    Sigma that does not commute with D:

    - :func:`~linmeta.families.representation.theory.anil_scale_update`: from ``B = B* S`` with
      ``alpha S S^T = I + D`` (no wrong-subspace part, D of size ``eps``) one step gives
      ``D+ = alpha S+ S+^T - I``, ``S+ = B*^T B+``; the central difference
      ``(D+(eps D0) - D+(-eps D0)) / 2`` is the linear part, to which the closed form (linear in D;
      ANIL by the default ``first_order``) must agree up to the third-order term, relative
      ``O(eps^2)``;
    - :func:`~linmeta.families.representation.theory.anil_wrong_subspace_update` (exact for any
      B): from a random B with a wrong-subspace part, ``(I - P*) B+`` of both steps against the
      closed form on the stack of the two starts, relative to ``||(I - P*) B||``."""
    rng = _rng(seed, "R3 scale update")
    Bs = np.linalg.qr(rng.standard_normal((d, k)))[0]
    A = rng.standard_normal((k, k))
    Sigma = A @ A.T / k + 0.3 * np.eye(k)
    L = np.linalg.cholesky(Sigma)
    H = math.sqrt(k) * np.concatenate([L.T, -L.T])   # balanced heads: second moment Sigma
    C = Bs @ Sigma @ Bs.T
    stats = population_from_betas(jnp.asarray(H @ Bs.T), 0.1)
    D0 = rng.standard_normal((k, k))
    D0 = (D0 + D0.T) / np.linalg.norm(D0 + D0.T)
    B_off = rng.standard_normal((d, k)) / math.sqrt(d)
    eps = SCALE_EPS
    starts = []
    for sgn in (1.0, -1.0):
        lam, V = np.linalg.eigh(np.eye(k) + sgn * eps * D0)
        starts.append(Bs @ (V * np.sqrt(lam / alpha)) @ V.T)   # alpha S S^T = I + D
    # the six steps (ANIL and first order from +-D and from B_off) as one compiled program
    ends = np.asarray(_anil_steps(jnp.asarray(np.stack(starts * 2 + [B_off] * 2)), stats, alpha,
                                  beta, jnp.asarray([0.0, 0.0, 1.0, 1.0, 0.0, 1.0])))
    errs, sizes = [], []
    for i, first_order in enumerate((False, True)):
        Sn = Bs.T @ ends[2 * i:2 * i + 2]                           # (2, k, k)
        Dn = alpha * Sn @ np.swapaxes(Sn, 1, 2) - np.eye(k)
        lin = (Dn[0] - Dn[1]) / 2
        pred = np.asarray(rep_theory.anil_scale_update(eps * D0, alpha, beta, Sigma,
                                                       first_order=True) if first_order else
                          rep_theory.anil_scale_update(eps * D0, alpha, beta, Sigma))
        errs.append(np.linalg.norm(pred - lin) / np.linalg.norm(lin))
        sizes.append(np.linalg.norm(lin - eps * D0) / eps)
    tol = Tolerance.asymptotic(10, eps ** 2, "third-order term of the central difference, "
                               "relative eps^2 with eps = ||D||")
    rows = [Verdict(
        CLAIM, "ANIL and first-order ANIL scale part D = alpha S S^T - I: one library step "
        "(linear part by central differences) vs D - c alpha beta (D Sigma + Sigma D), c = 2, 1 "
        "(relative)", 0.0, float(max(errs)), spread(errs), tol, tol.admits(errs), "check",
        f"d={d}, k={k}, alpha={alpha}, beta={beta}, ||D|| = {eps:g}, Sigma non-diagonal "
        f"(eigenvalues {np.array2string(np.linalg.eigvalsh(Sigma), precision=2)}); "
        f"||D+ - D|| / ||D||: ANIL {sizes[0]:.3f}, first order {sizes[1]:.3f}")]
    Pp = np.eye(d) - Bs @ Bs.T
    pred = np.asarray(rep_theory.anil_wrong_subspace_update(np.stack([B_off] * 2), Bs, C, alpha,
                                                            beta))
    wrong = np.linalg.norm(Pp @ ends[4:] - pred, axis=(1, 2)) / np.linalg.norm(Pp @ B_off)
    tol_w = Tolerance.rounding(100 * d, what="one step, relative to ||(I - P*) B||")
    rows.append(Verdict(
        CLAIM, f"ANIL and first-order ANIL at alpha={alpha}: the library step's wrong-subspace "
        "part vs (I-P*)B(I - alpha^2 beta B^T C B), ||.||_F / ||(I-P*)B||_F", 0.0,
        float(wrong.max()), spread(wrong), tol_w, tol_w.below(wrong), "check",
        f"d={d}, k={k}, beta={beta}, a random B (stack of two: ANIL, first order)"))
    return rows


def objectives_row(seed: int, *, T: int = 3, d: int = 4, k: int = 2, n: int = 6,
                   alpha: float = 0.3) -> Verdict:
    """The named objectives of :mod:`linmeta.families.representation.methods` on finite samples at
    a random B and a non-zero head w0, against the one inner step written out in NumPy
    (``g_t = S_t B w0 - s_t``): ANIL ``mean_t L_t(B (w0 - alpha B^T g_t))``
    (:func:`~linmeta.families.representation.methods.anil_objective`), one-step MAML
    ``mean_t L_t((B - alpha g_t w0^T)(w0 - alpha B^T g_t))`` (``maml_objective``) and the average
    loss ``mean_t L_t(B w0)`` (``average_loss_objective``), ``L_t`` the mean squared error over
    the raw samples."""
    rng = _rng(seed, "R3 named objectives")
    X, y, stats = finite_instance(rng, T=T, d=d, n=n)
    B = rng.standard_normal((d, k)) / math.sqrt(d)
    w0 = rng.standard_normal(k)
    S = np.swapaxes(X, 1, 2) @ X / n
    g = S @ (B @ w0) - np.einsum("tnd,tn->td", X, y) / n          # (T, d)
    w1 = w0[None] - alpha * g @ B                                  # (T, k)
    want = dict(anil=sample_loss(w1 @ B.T, X, y),
                maml=sample_loss(np.einsum("tdk,tk->td", B[None] - alpha * g[:, :, None]
                                           * w0[None, None, :], w1), X, y),
                average=sample_loss(np.broadcast_to(B @ w0, (T, d)), X, y))
    dt = stats.Sxx.dtype
    Bj, wj = jnp.asarray(B, dt), jnp.asarray(w0, dt)
    got = dict(anil=rep_methods.anil_objective(Bj, stats, alpha, wj),
               maml=rep_methods.maml_objective(Bj, wj, stats, alpha),
               average=rep_methods.average_loss_objective(Bj, wj, stats))
    err = {m: abs(float(got[m]) - float(np.mean(want[m]))) / float(np.mean(want[m]))
           for m in want}
    tol = Tolerance.rounding(100 * d, what="one inner step and sums over d, n")
    return Verdict(
        CLAIM, "anil_objective, maml_objective, average_loss_objective (finite samples, random B, "
        "w0 != 0) vs the inner step written out in NumPy and the samples' mean squared error: "
        "max rel. difference", 0.0, max(err.values()), float("nan"), tol,
        tol.below(list(err.values())), "check",
        f"T={T}, d={d}, k={k}, n={n}, alpha={alpha}; " + ", ".join(
            f"{m}: {float(np.mean(want[m])):.4g} (rel. {e:.1e})" for m, e in err.items()))


def closed_form_domains() -> list:
    """Stated-domain rows of R3's closed forms: ``anil_wrong_subspace_update`` (B (..., d, k),
    k <= d; C (d, d) in col(B*) to ``1000 eps ||C||_F``), ``anil_late_rate`` (alpha, beta > 0,
    Sigma positive definite, ``alpha beta lambda_max < 1/2`` or ``< 1``), ``anil_scale_update``
    (alpha, beta > 0, Sigma square, D of Sigma's shape), ``maml_head_init_gradient``."""
    th = rep_theory
    d, k = 4, 2
    eps = float(jnp.finfo(jnp.asarray(0.0).dtype).eps)
    Bs = np.eye(d)[:, :k]                        # axis-aligned: (I - P*) C is exactly 0
    Cin = np.zeros((d, d))
    Cin[:k, :k] = [[2.0, 0.5], [0.5, 1.0]]
    B = np.arange(1.0, d * k + 1).reshape(d, k) / 10

    def off(r):                                   # C with ||(I - P*) C||_F = r ||C||_F
        C = Cin.copy()
        C[-1, -1] = r * np.linalg.norm(Cin) / math.sqrt(1 - r * r)
        return C

    def wsu(B_=B, Bs_=Bs, C=Cin):
        return th.anil_wrong_subspace_update(B_, Bs_, C, 0.5, 0.3)

    cases = [
        DomainCase("wrong-subspace update, B (d, k)", wsu),
        DomainCase("wrong-subspace update, B a stack (2, d, k)", lambda: wsu(np.stack([B, -B]))),
        DomainCase("wrong-subspace update, B (d, d)", lambda: wsu(np.eye(d))),
        DomainCase("wrong-subspace update, B a stack (2, d, 3): k above the batch size",
                   lambda: wsu(np.ones((2, d, 3)))),
        DomainCase("wrong-subspace update, C = 0", lambda: wsu(C=np.zeros((d, d)))),
        DomainCase("wrong-subspace update, B (d,)", lambda: wsu(B[:, 0]),
                   ("B must have shape (..., d, k) with k <= d", "got (4,)")),
        DomainCase("wrong-subspace update, B (d, d + 1)", lambda: wsu(np.ones((d, d + 1))),
                   ("B must have shape (..., d, k) with k <= d", "got (4, 5)")),
        DomainCase("wrong-subspace update, B a stack (2, d, d + 1)",
                   lambda: wsu(np.ones((2, d, d + 1))),
                   ("B must have shape (..., d, k) with k <= d", "got (2, 4, 5)")),
        DomainCase("wrong-subspace update, B_star (d, d + 1)",
                   lambda: wsu(Bs_=np.ones((d, d + 1))), ("B_star", "k <= d")),
        DomainCase("wrong-subspace update, B_star (d,)", lambda: wsu(Bs_=np.ones(d)),
                   ("B_star", "k <= d")),
        DomainCase("wrong-subspace update, C (d, d + 1)", lambda: wsu(C=np.ones((d, d + 1))),
                   ("C", "shape (4, 4)")),
        DomainCase("wrong-subspace update, ||(I - P*) C|| = 999.5 eps ||C||",
                   lambda: wsu(C=off(999.5 * eps))),
        DomainCase("wrong-subspace update, ||(I - P*) C|| = 1000.5 eps ||C||",
                   lambda: wsu(C=off(1000.5 * eps)), ("C must lie in col(B_star)",)),
        DomainCase("wrong-subspace update, ||(I - P*) C|| = 0.6 ||C||",
                   lambda: wsu(C=off(0.6)),
                   ("C must lie in col(B_star)", "||(I - P*) C||_F = 1.76 against ||C||_F = 2.93")),
    ]
    sig = np.diag([0.25, 1.0])
    late = th.anil_late_rate
    sig2 = np.diag([0.25, 2.0])
    cases += [
        # lambda_max = 2, alpha = 0.5: alpha beta lambda_max differs from alpha beta / lambda_max,
        # alpha beta^lambda_max and alpha - beta lambda_max
        DomainCase("late rate, alpha beta lambda_max = 0.4999 (ANIL)",
                   lambda: late(0.5, 0.4999, sig2)),
        DomainCase("late rate, alpha beta lambda_max = 0.5 (ANIL)", lambda: late(0.5, 0.5, sig2),
                   ("ANIL's fixed point", "lambda_max(Sigma) < 0.5; got 0.5")),
        DomainCase("late rate, alpha beta lambda_max = 0.75 (ANIL)",
                   lambda: late(0.5, 0.75, sig2),
                   ("ANIL's fixed point", "lambda_max(Sigma) < 0.5; got 0.75")),
        DomainCase("late rate, alpha beta lambda_max = 0.9999 (first order)",
                   lambda: late(0.5, 0.9999, sig2, first_order=True)),
        DomainCase("late rate, alpha beta lambda_max = 1 (first order)",
                   lambda: late(0.5, 1.0, sig2, first_order=True),
                   ("first-order ANIL's fixed point", "lambda_max(Sigma) < 1; got 1")),
        DomainCase("late rate, alpha beta lambda_max = 1.5 (first order)",
                   lambda: late(0.5, 1.5, sig2, first_order=True),
                   ("first-order ANIL's fixed point", "lambda_max(Sigma) < 1; got 1.5")),
        DomainCase("late rate, small alpha and beta", lambda: late(1e-3, 1e-3, sig)),
        DomainCase("late rate, alpha = 0", lambda: late(0.0, 0.1, sig), ("alpha", "(0.0, inf]")),
        DomainCase("late rate, beta = 0", lambda: late(0.1, 0.0, sig), ("beta", "(0.0, inf]")),
        DomainCase("late rate, alpha = -0.5", lambda: late(-0.5, 0.1, sig),
                   ("alpha", "(0.0, inf]")),
        DomainCase("late rate, beta = -0.5", lambda: late(0.1, -0.5, sig), ("beta", "(0.0, inf]")),
        DomainCase("late rate, Sigma singular", lambda: late(0.1, 0.1, np.diag([0.0, 1.0])),
                   ("Sigma must be positive definite", "lambda_min = 0")),
        DomainCase("late rate, Sigma indefinite", lambda: late(0.1, 0.1, np.diag([-0.5, 2.0])),
                   ("Sigma must be positive definite", "lambda_min = -0.5")),
        DomainCase("late rate, Sigma (2, 3)", lambda: late(0.1, 0.1, np.ones((2, 3))),
                   ("Sigma must be square", "got (2, 3)")),
        DomainCase("late rate, Sigma (2,)", lambda: late(0.1, 0.1, np.ones(2)),
                   ("Sigma must be square", "got (2,)")),
        DomainCase("late rate, Sigma (3, 2)", lambda: late(0.1, 0.1, np.ones((3, 2))),
                   ("Sigma must be square", "got (3, 2)")),
        DomainCase("late rate, Sigma (2, 2, 2)", lambda: late(0.1, 0.1, np.stack([sig, sig])),
                   ("Sigma must be square", "got (2, 2, 2)")),
    ]
    scale = th.anil_scale_update
    D = np.array([[0.1, 0.02], [0.02, -0.05]])
    cases += [
        DomainCase("scale update, small alpha and beta", lambda: scale(D, 1e-3, 1e-3, sig)),
        DomainCase("scale update, large steps (a linearisation: any step)",
                   lambda: scale(D, 3.0, 2.0, sig)),
        DomainCase("scale update, alpha = 0", lambda: scale(D, 0.0, 0.1, sig),
                   ("alpha", "(0.0, inf]")),
        DomainCase("scale update, beta = 0", lambda: scale(D, 0.1, 0.0, sig),
                   ("beta", "(0.0, inf]")),
        DomainCase("scale update, alpha = -1", lambda: scale(D, -1.0, 0.1, sig),
                   ("alpha", "(0.0, inf]")),
        DomainCase("scale update, beta = -1", lambda: scale(D, 0.1, -1.0, sig),
                   ("beta", "(0.0, inf]")),
        DomainCase("scale update, D (3, 3)", lambda: scale(np.eye(3), 0.1, 0.1, sig),
                   ("D", "shape (2, 2)")),
        DomainCase("scale update, Sigma (2, 3)", lambda: scale(D, 0.1, 0.1, np.ones((2, 3))),
                   ("Sigma must be square",)),
    ]
    betas = np.arange(1.0, 3 * d + 1).reshape(3, d) / 10
    grad = th.maml_head_init_gradient
    cases += [
        DomainCase("MAML w0-gradient, B (d, k)", lambda: grad(B, betas, 0.5)),
        DomainCase("MAML w0-gradient, B (d, d)", lambda: grad(np.eye(d), betas, 0.5)),
        DomainCase("MAML w0-gradient, B (d, d + 1)", lambda: grad(np.ones((d, d + 1)), betas, 0.5),
                   ("B", "(d, k) with k <= d")),
        DomainCase("MAML w0-gradient, B a stack (2, d, k)",
                   lambda: grad(np.stack([B, B]), betas, 0.5), ("B", "(d, k) with k <= d")),
        DomainCase("MAML w0-gradient, betas (d,)", lambda: grad(B, betas[0], 0.5),
                   ("betas", "(T, d)")),
        DomainCase("MAML w0-gradient, betas (1, T, d)", lambda: grad(B, betas[None], 0.5),
                   ("betas", "(T, d)")),
    ]
    return [domain_row(CLAIM, "ANIL's closed forms (wrong-subspace update, late rate, scale "
                       "update) and one-step MAML's w0-gradient", cases)]


def plot(result: ClaimResult, out_dir) -> list:
    """``rep_r3_anil.{png,pdf}``: distance to B* per step (ANIL, first-order ANIL, average loss)
    beside the predicted late rate; the exact identities' residuals."""
    plt = pyplot()
    D = result.data
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw=dict(width_ratios=[1.5, 1]))
    it = np.arange(D["anil_traj"].shape[-1])
    for key, color, label in (("anil_traj", "tab:blue", "ANIL"),
                              ("fo_traj", "tab:orange", "first-order ANIL"),
                              ("avg_traj", "tab:gray", "average loss (E[w*] = 0)")):
        Y = np.maximum(D[key], 1e-17)
        for s in range(Y.shape[0]):
            ax0.semilogy(it, Y[s], color=color, lw=0.8, alpha=0.7, label=label if s == 0 else None)
    rate = 1 - ALPHA * BETA * D["lambda_min"].mean()
    y0 = D["anil_traj"][0, it.size // 3]
    ax0.semilogy(it, y0 * rate ** (it - it.size // 3), "k--", lw=1,
                 label=r"slope $1-\alpha\beta\lambda_{\min}(\Sigma_w)$")
    ax0.axhspan(*RATE_WINDOW, color="k", alpha=0.05, lw=0, label="rate-fit window")
    ax0.set_ylim(1e-17, 2)
    ax0.set_xlabel("outer step")
    ax0.set_ylabel(r"$\sin\theta_{\max}(B_t, B^*)$")
    ax0.set_title(f"population, d={D['d']}, k={D['k']}, T={D['T']}, "
                  f"{D['anil_traj'].shape[0]} seeds (one line each)", fontsize=9)
    ax0.legend(fontsize=7, loc="lower left")
    ax0.grid(True, which="both", alpha=0.3)
    names = ["closed form\nvs ANIL", "closed form\nvs FO-ANIL", "MAML (w0=0)\nvs ANIL",
             "MAML step\nvs ANIL step", "MAML step\n|w0|", "MAML w0-grad\nvs autodiff"]
    keys = ["closed_form_gap", "fo_closed_form_gap", "maml_fixed_gap", "maml_step_gap",
            "maml_step_w0", "maml_grad_rel"]
    floor = 1e-20   # a log axis: residuals below it (exact zeros among them) drawn at it
    clipped_any = False
    for i, k_ in enumerate(keys):
        v = np.asarray(D[k_], float)
        low = v < floor
        clipped_any |= bool(low.any())
        ax1.semilogy(np.full(int((~low).sum()), i), v[~low], "o", color="tab:blue", ms=4,
                     label="residual of one seed" if i == 0 else None)
        ax1.semilogy(np.full(int(low.sum()), i), np.full(int(low.sum()), floor), "v",
                     mfc="none", color="tab:red", ms=7)
    if clipped_any:
        ax1.plot([], [], "v", mfc="none", color="tab:red", ms=7,
                 label=f"below {floor:g} (0 included): drawn at {floor:g}")
    ax1.axhline(1e-12, color="k", ls="--", lw=1, label="tolerance 1e-12")
    ax1.set_xticks(range(len(names)))
    ax1.set_xticklabels(names, fontsize=6, rotation=30, ha="right")
    ax1.set_ylabel("residual (per seed)")
    ax1.set_title("exact identities", fontsize=9)
    ax1.set_ylim(top=ax1.get_ylim()[1] * 1e4)   # room for the legend above the points
    ax1.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"R3  ANIL, first-order ANIL, one-step MAML, average loss  ({D['setting']})",
                 fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_dir, "rep_r3_anil", dpi=figure_dpi(D["setting"]))
