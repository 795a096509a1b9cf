"""Claim C4: with T = 2 Meta-LoRA is not identifiable, but benign.

At T = 2 the population reduced objective depends on the adapters only through
``U_1 U_1^T - U_2 U_2^T``:

    G(U) = 1/4 ||(R*_1 - R*_2) - (U_1 U_1^T - U_2 U_2^T)||_F^2,

so ``[U_1, U_2] -> [U_1, U_2] J`` with J in the indefinite orthogonal group O(k, k) (J diag(I, -I) J^T
= diag(I, -I)) keeps G fixed. The global minima ``[U*_1, U*_2] J`` form a family, and with
``A(U) = A* + (1/2) sum_t (R*_t - U_t U_t^T)``

    A_hat - A* = (1/2) W (I - J J^T) W^T,   W = [U*_1, U*_2] (d x 2k),

which is nonzero for J not orthogonal and has rank <= 2k. The unseen-task residual
``M*_new - A_hat = U_new U_new^T - (A_hat - A*)`` then has rank <= 3k: a rank-3k adapter fits it
exactly (Eckart-Young bias 0), a rank-k adapter generically does not.

Rows:

(a) The hyperbolic family of docs/theory.md (k = 1, ``U*_1 = e1``, ``U*_2 = e2``,
    ``u1 = cosh(th) e1 + sinh(th) e2``, ``u2 = sinh(th) e1 + cosh(th) e2``): G = 0 for every th
    (float64 tolerance 1e-12), ``||A_hat(th) - A*||_F`` equals the closed form
    ``sqrt(((cosh 2th - 1)^2 + sinh^2 2th) / 2)`` (A_hat from the library's ``optimal_base``), and
    ``rank(A_hat - A*) = 2 = 2k`` for th != 0. The same for a generic boost path
    ``J(th) = expm(th [[0, B], [B^T, 0]])`` on Gaussian U* with k = 2.
(b) Gaussian problems at T = 2: Meta-LoRA (``method="newton"``) reaches zero loss, with
    ``0 < rank(A_hat - A*) <= 2k`` (numerical rank, rtol 1e-8); the rank-3k fine-tuning bias
    (:func:`linmeta.core.theory.lora_bias` of ``M*_new - A_hat``) and the exact rank-3k fine-tuning error
    (``finetune(..., method="exact")``) are below 1e-10, while the rank-k bias is positive. The figure
    adds the paper's gradient-descent fine-tuning curves (population unseen task, lr 0.005) for
    rank k and rank 3k.
(c) Strict saddle (the paper's claim, *unconfirmed* here): critical points of G of every index are
    found with :func:`linmeta.methods.landscape.find_critical_points` (Levenberg-Marquardt on
    ``||grad G||^2`` from Gaussian starts of mixed scale) and classified with the known zero modes
    (``k(2k-1)``: O(k) x O(k) rotations plus ``k^2`` boosts) projected out. Reported (kind
    ``"measured"``): the census, the smallest restricted Hessian eigenvalue at every non-global
    critical point (in units of ``c = sqrt(2 G(0))``), and the number of spurious local minima,
    which would contradict the paper (the row fails if one is found; its data are kept in
    ``result.data["spurious"]``). At the global minima found, the number of discounted zero modes is
    checked against ``k(2k-1)`` with no further flat direction.

(d) The landscape module's closed-form gradient and Hessian of G (:mod:`linmeta.methods.landscape`,
    used by the critical-point finder and the classifier) against automatic differentiation of
    :func:`linmeta.methods.population_reduced_objective` at critical points found; the finder's
    evidence against its documented meaning (:func:`critical_point_evidence_row`: the scale from
    the library objective at U = 0, the restricted spectrum's length, the iteration range, the
    label thresholds), and its Levenberg-Marquardt iteration against a NumPy transcription of the
    documented one (:func:`levenberg_marquardt_transcription_row`: the same iteration counts from
    8 starts, end points with the same objective).
(e) The record of ``finetune``'s gradient descent in (b): steps 0, rec, ..., steps, one per
    recorded loss (:func:`linmeta.engine.claim_support.history_problems`).

Tolerances (:class:`~linmeta.engine.verdict.Tolerance`): objectives that vanish in exact arithmetic
to squared rounding (``(10 d eps scale)^2``, the scale being the size of the matrices that cancel),
distances and derivatives to rounding, the Newton-based rows to Newton's stopping rule (excess
objective 1e-26, times 2T) or the rounding floor, counts and ranks exactly (numerical rank with
rtol 1e-8).

Settings: ``tiny`` (tests, a few seconds), ``quick`` (d=8, k=2: ~9 s in ``linmeta verify --quick``),
``full`` (Gaussian groups d=10, k=1,2,3 with 32 seeds and 10000 gradient-descent steps; critical
points for (d,k) in (4,1), (6,1), (6,2), (8,2), (9,3), 16 truths x 64 starts each): about 105 s on the
shared 2-core machine (``python -m experiments.claims C4 --setting full``).
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from linmeta.core import metrics
from linmeta.core.data import population
from linmeta.core.problem import Truth
from linmeta.methods import meta_lora
from linmeta.methods.finetune import finetune
from linmeta.methods import landscape
from linmeta.core import theory
from linmeta.methods import optimal_base, population_reduced_objective

from linmeta.engine.claims import ClaimResult, Verdict
from ._draws import draw, gaussian_truth, truth_shapes
from linmeta.engine.claim_support import (history_problems, key_for, pyplot, save_figure,
                                          settings_value, spread)
from linmeta.engine.verdict import Tolerance

CLAIM = "C4"
T = 2
FT_LR = 0.005  # the paper's fine-tuning step

SETTINGS = {
    "tiny": dict(n_theta=41, theta_max=2.0, d_family=4,
                 groups=((4, 1),), seeds=3, newton_starts=4, ft_steps=0,
                 cp_groups=((4, 1),), cp_truths=2, cp_starts=16, cp_iter=102),
    "quick": dict(n_theta=81, theta_max=2.0, d_family=6,
                  groups=((8, 2),), seeds=8, newton_starts=4, ft_steps=2000,
                  cp_groups=((8, 2),), cp_truths=4, cp_starts=32, cp_iter=202),
    "full": dict(n_theta=161, theta_max=2.5, d_family=8,
                 groups=((10, 1), (10, 2), (10, 3)), seeds=32, newton_starts=8, ft_steps=10000,
                 cp_groups=((4, 1), (6, 1), (6, 2), (8, 2), (9, 3)), cp_truths=16, cp_starts=64,
                 cp_iter=400),
}
START_SCALES = (0.1, 0.3, 1.0, 2.0)  # U* has N(0, 1) entries
N_DERIV = 4  # critical points per truth where the closed-form derivatives are checked


# ----------------------------------------------------------------------------- (a) the family


def hyperbolic_family(A_star, theta):
    """The k = 1 family of global minima: returns ``(U (n, 2, d, 1), truth)`` with
    ``U*_1 = e1, U*_2 = e2`` and ``u1 = cosh e1 + sinh e2, u2 = sinh e1 + cosh e2``."""
    d = A_star.shape[0]
    e = jnp.eye(d, dtype=A_star.dtype)
    truth = Truth(A_star, jnp.stack([e[:, :1], e[:, 1:2]]))
    ch, sh = jnp.cosh(theta)[:, None], jnp.sinh(theta)[:, None]
    u1 = ch * e[0] + sh * e[1]
    u2 = sh * e[0] + ch * e[1]
    return jnp.stack([u1, u2], axis=1)[..., None], truth


def hyperbolic_distance(theta):
    """Closed form ``||A_hat(th) - A*||_F = sqrt(((cosh 2th - 1)^2 + sinh^2 2th) / 2)``."""
    theta = np.asarray(theta, float)
    return np.sqrt(((np.cosh(2 * theta) - 1) ** 2 + np.sinh(2 * theta) ** 2) / 2)


def boost_path(U_star, B, theta):
    """``[U_1, U_2](th) = [U*_1, U*_2] expm(th [[0, B], [B^T, 0]])``: a path in the O(k, k) orbit."""
    k = U_star.shape[-1]
    Z = jnp.zeros((k, k), U_star.dtype)
    X = jnp.block([[Z, B], [B.T, Z]])
    W = jnp.concatenate([U_star[0], U_star[1]], axis=-1)  # (d, 2k)
    lam, V = jnp.linalg.eigh(X)  # X is symmetric: expm(th X) = V diag(exp(th lam)) V^T
    WJ = jax.vmap(lambda th: W @ (V * jnp.exp(th * lam)) @ V.T)(theta)  # (n, d, 2k)
    return jnp.stack([WJ[..., :k], WJ[..., k:]], axis=1)


def _family(cfg, key):
    theta = jnp.linspace(-cfg["theta_max"], cfg["theta_max"], cfg["n_theta"])
    *zt, B = draw(key, truth_shapes(cfg["d_family"], 2, T) + [(2, 2)])
    tb = gaussian_truth(*zt)  # Gaussian, k = 2 (its A* serves both paths)
    A_star = tb.A_star
    U, truth = hyperbolic_family(A_star, theta)
    src = population(truth)
    G = population_reduced_objective(U, truth.R_star)
    A_hat = optimal_base(U, src)
    dist = metrics.base_error(A_hat, A_star)
    rank = metrics.numerical_rank(A_hat - A_star, rtol=1e-8)
    # generic path: Gaussian U*, k = 2, a random unit boost
    B = B / jnp.linalg.norm(B)
    Ub = boost_path(tb.U_star, B, theta / 2)
    c2 = 2 * population_reduced_objective(jnp.zeros_like(tb.U_star), tb.R_star)
    Gb = population_reduced_objective(Ub, tb.R_star) / c2
    Ab = optimal_base(Ub, population(tb))
    dist_b = metrics.base_error(Ab, tb.A_star)
    rank_b = metrics.numerical_rank(Ab - tb.A_star, rtol=1e-8)
    return dict(theta=theta, G=G, dist=dist, rank=rank, theta_boost=theta / 2, G_boost=Gb,
                dist_boost=dist_b, rank_boost=rank_b,
                # scales the rounding is relative to: ||U||_F^2 along each path (over c for the
                # boost path; c = 1 for the hyperbolic family)
                hyp_scale=jnp.max(jnp.sum(U ** 2, axis=(1, 2, 3))),
                boost_scale=jnp.max(jnp.sum(Ub ** 2, axis=(1, 2, 3))) / jnp.sqrt(c2))


# ----------------------------------------------------------------------------- (b) Gaussian T = 2


def _gaussian_shapes(d, k, newton_starts):
    return truth_shapes(d, k, T) + [(newton_starts, T, d, k), (2, 1, d, 3 * k)]


def _gaussian_seed(z, *, d, k, ft_steps):
    """One seed of (b) from its standard normal draws ``z`` (see :func:`_gaussian_shapes`)."""
    *zt, z_newton, z_ft = z
    truth = gaussian_truth(*zt)
    res = meta_lora(population(truth), k, U0=0.1 * z_newton, method="newton")
    diff = res.base - truth.A_star
    resid = truth.M_new[0] - res.base
    unseen = population(truth, tasks="unseen")
    r_t2 = theory.t2_adapter_rank(k)  # 3k
    exact3 = finetune(res.base, unseen, r_t2, method="exact").test_loss[0]
    out = dict(objective=res.objective,
               sv=jnp.linalg.svd(diff, compute_uv=False),
               rank=metrics.numerical_rank(diff, rtol=1e-8),
               base_err=jnp.linalg.norm(diff),
               bias_k=theory.lora_bias(resid, k), bias_3k=theory.lora_bias(resid, r_t2),
               resid_rank=metrics.numerical_rank(resid, rtol=1e-8),
               resid_norm2=jnp.sum(resid * resid), exact_3k=exact3,
               m_scale=jnp.max(jnp.linalg.norm(truth.M_star, axis=(-2, -1))))
    if ft_steps == 0:  # no gradient-descent curves (tiny setting)
        return out
    rec = max(ft_steps // 100, 1)
    # rank k and rank 3k gradient descent in one program: a rank-k adapter is a rank-3k one whose
    # last 2k columns start (and stay) at zero, since the gradients G V, G^T U keep zero columns.
    U0, V0 = 0.1 * z_ft[0], 0.1 * z_ft[1]  # the paper's N(0, 0.1^2) factors
    mask = jnp.stack([jnp.arange(3 * k) < k, jnp.ones(3 * k, bool)]).astype(U0.dtype)
    gd = jax.vmap(lambda m: finetune(res.base, unseen, 3 * k, U0=U0 * m, V0=V0 * m,
                                             steps=ft_steps, lr=FT_LR, record_every=rec))(mask)
    loss = gd.history.value.test_loss[..., 0]  # (2, n_rec)
    return dict(out, gd_step=gd.history.step[0], gd_k=loss[0], gd_3k=loss[1])


def _gaussian(cfg, key, d, k):
    shapes = [(cfg["seeds"],) + s for s in _gaussian_shapes(d, k, cfg["newton_starts"])]

    def program(kk):
        z = draw(kk, shapes)  # every seed's variates from one call; seeds run one after another
        return jax.lax.map(lambda zz: _gaussian_seed(zz, d=d, k=k, ft_steps=cfg["ft_steps"]), z)

    out = jax.jit(program)(key)
    return {name: np.asarray(v) for name, v in out.items()}


# ----------------------------------------------------------------------------- (c) landscape


def _critical_points(cfg, key, d, k):
    S, n_truths = cfg["cp_starts"], cfg["cp_truths"]
    shapes = [(n_truths,) + s for s in truth_shapes(d, k, T) + [(S, T, d, k)]]
    scales = np.asarray(START_SCALES)[np.arange(S) % len(START_SCALES)]

    def one(z):
        A, U, U_new, zs = z
        R = gaussian_truth(A, U, U_new).R_star
        U0 = jnp.asarray(scales, zs.dtype)[:, None, None, None] * zs  # as landscape.random_starts
        cp = landscape.find_critical_points(R, U0, max_iter=cfg["cp_iter"], boosts=True)
        # the closed-form derivatives of the landscape module against automatic differentiation
        # of G (retrain.population_reduced_objective) at the first end points
        G = lambda x: population_reduced_objective(x.reshape((T, d, k)), R)  # noqa: E731
        m = min(N_DERIV, S)
        xs = cp.U[:m].reshape(m, -1)
        H_auto = jax.vmap(jax.hessian(G))(xs)
        g_auto = jax.vmap(jax.grad(G))(xs)
        H_lm = jax.vmap(lambda u: landscape.hessian(u, R))(cp.U[:m])
        g_lm = jax.vmap(lambda u: landscape.gradient(u, R))(cp.U[:m]).reshape(m, -1)
        scale = jnp.linalg.norm(H_auto, axis=(-2, -1)) + cp.info.scale[:m]
        dH = jnp.max(jnp.linalg.norm(H_lm - H_auto, axis=(-2, -1)) / scale)
        dg = jnp.max(jnp.linalg.norm(g_lm - g_auto, axis=-1) / (scale * jnp.sqrt(cp.info.scale[:m])))
        G0 = G(jnp.zeros(T * d * k, R.dtype))  # the library's objective at U = 0
        # the same starts with half the iterations: their end points are the iterates size_mid
        # describes (after max_iter // 2 iterations, or the end point when stopped earlier)
        half = landscape.find_critical_points(R, U0, max_iter=cfg["cp_iter"] // 2, boosts=True)
        return cp, jnp.maximum(dH, dg), G0, half.info.size

    cp, deriv, G0, size_half = jax.jit(lambda kk: jax.lax.map(one, draw(kk, shapes)))(key)
    info = jax.tree.map(lambda a: np.asarray(a).reshape(-1, *np.shape(a)[2:]), cp.info)
    evidence = dict(G0=np.repeat(np.asarray(G0), S), scale=info.scale,
                    n_finite_eigs=np.sum(np.isfinite(info.eigenvalues), axis=-1),
                    grad_abs=info.grad_norm, objective_abs=info.objective,
                    size_mid=np.asarray(cp.size_mid).reshape(-1),
                    size_half=np.asarray(size_half).reshape(-1))
    return dict(label=info.label, objective=info.objective / info.scale ** 2,
                grad_norm=info.grad_norm / info.scale ** 1.5, min_eig=info.min_eig / info.scale,
                n_orbit=info.n_orbit, n_flat=info.n_flat, size=info.size,
                iterations=np.asarray(cp.iterations).reshape(-1),
                U=np.asarray(cp.U).reshape(-1, T, d, k), deriv_gap=float(np.max(deriv)),
                truth_index=np.repeat(np.arange(cfg["cp_truths"]), cfg["cp_starts"]),
                evidence=evidence)


def critical_point_evidence_row(c: dict, *, d: int, k: int, max_iter: int) -> Verdict:
    """The evidence :func:`linmeta.methods.landscape.find_critical_points` reports, against its
    documented meaning (:class:`~linmeta.methods.landscape.PointInfo`): the scale ``c`` is
    ``sqrt(2 G(0))`` with ``G(0)`` from the library's own objective
    (:func:`~linmeta.methods.meta_lora.population_reduced_objective`); the restricted spectrum has
    ``n - n_orbit`` finite entries (n = T d k); the iterations are in [1, max_iter] (no start is
    a critical point); a point labelled global has ``G <= tol.objective c^2``, and a point
    labelled a minimum or saddle has ``||grad G|| <= tol.gradient c^{3/2}`` (default
    tolerances); ``size_mid`` is the size of the end point of the same start run for
    ``max_iter // 2`` iterations (rel. 1e-9). Counts the points that break one of these."""
    ev = c["evidence"]
    tol = landscape.default_tolerances()
    n = T * d * k
    scale_dev = np.abs(ev["scale"] - np.sqrt(2 * ev["G0"])) / np.sqrt(2 * ev["G0"])
    lab = c["label"]
    bad = {
        "scale": int(np.sum(scale_dev > 1e-12)),
        "spectrum length": int(np.sum(ev["n_finite_eigs"] != n - c["n_orbit"])),
        "iterations": int(np.sum((c["iterations"] < 1) | (c["iterations"] > max_iter))),
        "global label": int(np.sum((lab == landscape.GLOBAL_MIN)
                                   != (ev["objective_abs"] <= tol.objective * ev["scale"] ** 2))),
        "converged label": int(np.sum((lab != landscape.NOT_CONVERGED)
                                      & (ev["grad_abs"] > tol.gradient * ev["scale"] ** 1.5))),
        "size_mid": int(np.sum(np.abs(ev["size_mid"] - ev["size_half"])
                               > 1e-9 * np.maximum(np.abs(ev["size_half"]), 1e-300))),
    }
    total = sum(bad.values())
    return Verdict(
        CLAIM, f"find_critical_points' evidence vs its documented meaning, d={d}, k={k}: c = "
        "sqrt(2 G(0)) (library objective, rel. 1e-12), n - n_orbit finite restricted eigenvalues, "
        "1 <= iterations <= max_iter, global label iff G <= tol.objective c^2, labelled points "
        "have ||grad|| <= tol.gradient c^1.5, size_mid = size after max_iter // 2 iterations: "
        "points breaking one", 0, total, float("nan"),
        Tolerance.exact("points counted"), total == 0, "check",
        f"{len(lab)} points; c {np.min(ev['scale']):.3g}..{np.max(ev['scale']):.3g}; max "
        f"rel. scale deviation {np.max(scale_dev):.1e}; "
        + ", ".join(f"{k_}: {v}" for k_, v in bad.items()))


def levenberg_marquardt_transcription_row(d: int = 4, k: int = 1, starts: int = 8,
                                          max_iter: int = 60, seed: int = 3) -> Verdict:
    """:func:`linmeta.methods.landscape.find_critical_points`' iteration against a NumPy
    transcription of its documented Levenberg-Marquardt (the damping, the predicted and actual
    decrease of ``1/2 ||grad G||^2``, the acceptance and damping schedule, the stopping rule
    ``||grad G|| <= tol.gradient c^{3/2} / 100``), built on the library's closed-form gradient and
    Hessian (checked against automatic differentiation in the row above). From the same starts
    (scales 0.1 to 3, so that steps are rejected and damped) both must stop after the same number
    of iterations, at points with the same objective (to rounding)."""
    rng = np.random.default_rng(seed)
    dt = jnp.asarray(0.0).dtype
    truth = gaussian_truth(*(jnp.asarray(rng.normal(size=s_), dt) for s_ in truth_shapes(d, k, T)))
    R = truth.R_star
    scales = np.geomspace(0.1, 3.0, starts)
    U0 = jnp.asarray(scales[:, None, None, None] * rng.normal(size=(starts, T, d, k)), dt)
    cp = landscape.find_critical_points(R, U0, max_iter=max_iter, boosts=True)
    c = float(landscape.objective_scale(R))
    tol = landscape.default_tolerances(dt)
    gtol_abs = float(tol.gradient) * c ** 1.5 / 100
    eps = float(np.finfo(np.dtype(dt)).eps)

    def grad(x):
        return np.asarray(landscape.gradient(jnp.asarray(x.reshape(T, d, k)), R)).reshape(-1)

    def hess(x):
        return np.asarray(landscape.hessian(jnp.asarray(x.reshape(T, d, k)), R))

    def lm(x):
        g, theta, it = grad(x), 1e-2, 0
        while it < max_iter and np.linalg.norm(g) > gtol_abs and theta < 1e14:
            H = hess(x)
            mu = max(theta * np.sqrt(c) * np.linalg.norm(g), 100 * eps * np.sum(H * H))
            L = np.linalg.cholesky(H @ H + mu * np.eye(len(x)))
            p = -np.linalg.solve(L.T, np.linalg.solve(L, H @ g))
            model = g + H @ p
            pred = 0.5 * (g @ g - model @ model)
            g_new = grad(x + p)
            actual = 0.5 * (g @ g - g_new @ g_new)
            rho = actual / (pred if pred > 0 else 1.0)
            ok = actual > 0 and rho > 1e-4 and np.all(np.isfinite(g_new))
            theta = theta / 3 if ok and rho > 0.75 else theta if ok and rho > 0.25 else 2 * theta
            theta = max(theta, 1e-30)
            if ok:
                x, g = x + p, g_new
            it += 1
        return x, it

    ref = [lm(np.asarray(u, float).reshape(-1)) for u in U0]
    its = np.asarray(cp.iterations)
    its_ref = np.asarray([r[1] for r in ref])
    G_ref = np.asarray([float(population_reduced_objective(jnp.asarray(x.reshape(T, d, k)), R))
                        for x, _ in ref])
    dG = float(np.max(np.abs(np.asarray(cp.info.objective) - G_ref))) / c ** 2
    gap = max(float(np.linalg.norm(np.asarray(cp.U[i]).reshape(-1) - ref[i][0])) / np.sqrt(c)
              for i in range(starts))
    same_its = bool(np.all(its == its_ref))
    tol_G = Tolerance.rounding(100 * T * d * k, what="G at the two end points, relative to c^2 "
                               "(critical points need not be isolated: the points themselves "
                               "may differ along a flat direction)")
    return Verdict(
        CLAIM, f"find_critical_points' Levenberg-Marquardt vs a NumPy transcription of its "
        f"documented iteration (d={d}, k={k}, {starts} starts): the same iteration counts, and "
        "|G(U) - G(U_ref)| / c^2 at the end points", 0.0, dG, float("nan"), tol_G,
        tol_G.below(dG) and same_its, "check",
        f"iterations {its.tolist()} vs transcription {its_ref.tolist()}; c {c:.3g}, "
        f"max_iter {max_iter}; end points apart by up to {gap:.1e} sqrt(c)")


def run(setting: str = "quick", seed: int = 0) -> ClaimResult:
    """Measure C4 for ``setting`` (tiny/quick/full); see the module docstring."""
    cfg = settings_value(SETTINGS, setting)
    t0 = time.perf_counter()
    key = key_for(seed, CLAIM)
    k_fam, k_gauss, k_cp = (jax.random.fold_in(key, i) for i in range(3))
    dtype = str(jnp.asarray(0.0).dtype)
    rows = []

    fam = {n: np.asarray(v) for n, v in jax.jit(lambda kk: _family(cfg, kk))(k_fam).items()}
    th = fam["theta"]
    ref = hyperbolic_distance(th)
    off0 = np.abs(th) > 1e-3
    rel_err = np.abs(fam["dist"][off0] - ref[off0]) / ref[off0]
    df = cfg["d_family"]
    tol_G = Tolerance.rounding_sq(10 * df, float(fam["hyp_scale"]),
                                  what="G = 0 up to rounding of U U^T, scale max ||U||_F^2")
    tol_Gb = Tolerance.rounding_sq(10 * df, max(1.0, float(fam["boost_scale"])),
                                   what="G/c^2, scale max ||U||_F^2 / c")
    # ||A_hat - A*|| is a difference of O(||U||^2) entries: relative rounding grows as it shrinks
    tol_rel = Tolerance.rounding(10 * df, float(np.max(2 * np.cosh(2 * th[off0]) / ref[off0])),
                                 what="cancellation 2 cosh(2 th) / ||A_hat - A*||")
    note_fam = f"k=1, d={cfg['d_family']}, th in [-{cfg['theta_max']}, {cfg['theta_max']}] " \
               f"({cfg['n_theta']} values), {dtype}"
    rows += [
        Verdict(CLAIM, "hyperbolic family: max_th G(U(th)) (global minimum for every th)", 0.0,
                float(np.max(np.abs(fam["G"]))), spread(fam["G"]), tol_G,
                tol_G.below(np.abs(fam["G"])), "check", note_fam),
        Verdict(CLAIM, "hyperbolic family: ||A_hat(th)-A*||_F vs sqrt(((cosh2th-1)^2+sinh^2 2th)/2)",
                "closed form", float(np.max(rel_err)), 0.0, tol_rel, tol_rel.below(rel_err), "check",
                note_fam + f"; ||A_hat-A*|| up to {fam['dist'].max():.3g}"),
        Verdict(CLAIM, "hyperbolic family: rank(A_hat(th)-A*) for th != 0", "<= 2k = 2",
                float(np.max(fam["rank"][off0])), spread(fam["rank"][off0]),
                Tolerance.exact("numerical rank with rtol 1e-8"),
                bool(np.all(fam["rank"][off0] == 2)), "check", note_fam + "; 2 for every th != 0"),
        Verdict(CLAIM, "generic O(k,k) boost path (Gaussian U*, k=2): max_th G/c^2", 0.0,
                float(np.max(np.abs(fam["G_boost"]))), spread(fam["G_boost"]), tol_Gb,
                tol_Gb.below(np.abs(fam["G_boost"])), "check",
                f"d={cfg['d_family']}, k=2; ||A_hat-A*|| up to {fam['dist_boost'].max():.3g}, "
                f"rank <= {int(fam['rank_boost'][off0].max())} for th != 0 (2k = 4)"),
    ]

    gauss = {}
    for gi, (d, k) in enumerate(cfg["groups"]):
        g = _gaussian(cfg, jax.random.fold_in(k_gauss, gi), d, k)
        gauss[(d, k)] = g
        note = f"d={d}, k={k}, T=2, {cfg['seeds']} seeds, population, {dtype}"
        # Newton stops at an excess objective <= 1e-26 (or at the rounding floor); the base then
        # sits within sqrt(2 T 1e-26) of a global minimiser, so squared biases are of that size
        floor = Tolerance.rounding_sq(10 * d, float(g["m_scale"].max())).value
        tol_obj = Tolerance.stated(max(2 * T * 1e-26, floor), "Newton's stopping rule (excess "
                                   "objective 1e-26) times 2T, or the rounding floor (10 d eps "
                                   "max||M*||)^2")
        rows += [
            Verdict(CLAIM, f"T=2 Meta-LoRA (newton) excess objective, d={d}, k={k}", 0.0,
                    float(g["objective"].max()), spread(g["objective"]), tol_obj,
                    tol_obj.below(g["objective"]), "check", note + "; every seed, max"),
            Verdict(CLAIM, f"T=2 rank(A_hat-A*), d={d}, k={k}", f"in [1, 2k={2 * k}]",
                    float(g["rank"].mean()), spread(g["rank"]),
                    Tolerance.exact("numerical rank with rtol 1e-8"),
                    bool(np.all((g["rank"] >= 1) & (g["rank"] <= 2 * k))), "check",
                    note + f"; ranks {sorted(set(g['rank'].tolist()))}, "
                    f"||A_hat-A*||_F median {np.median(g['base_err']):.3g}"),
            Verdict(CLAIM, f"T=2 rank-3k fine-tuning bias (Eckart-Young of M*_new-A_hat), k={k}, "
                    "3k = theory.t2_adapter_rank(k); rank(M*_new-A_hat) <= 3k, = 3k for some seed",
                    0.0, float(g["bias_3k"].max()), spread(g["bias_3k"]), tol_obj,
                    tol_obj.below(g["bias_3k"]) and
                    int(g["resid_rank"].max()) == theory.t2_adapter_rank(k), "check",
                    note + "; every seed; numerical ranks of M*_new-A_hat (rtol 1e-8) "
                    f"{sorted(set(g['resid_rank'].tolist()))}"),
            Verdict(CLAIM, f"T=2 exact rank-3k fine-tuning ||M-M*_new||_F^2, k={k}", 0.0,
                    float(g["exact_3k"].max()), spread(g["exact_3k"]), tol_obj,
                    tol_obj.below(g["exact_3k"]), "check",
                    note + "; every seed; finetune(method='exact')"),
            Verdict(CLAIM, f"T=2 rank-k fine-tuning bias, k={k} (min over seeds)", "> 0",
                    float(g["bias_k"].min()), spread(g["bias_k"]), tol_obj,
                    bool(np.all(g["bias_k"] > tol_obj.value)), "check",
                    note + f"; every seed above the tolerance; median {np.median(g['bias_k']):.3g}, "
                    f"median ||resid||^2 {np.median(g['resid_norm2']):.3g}"),
        ]
        if "gd_step" in g:  # finetune's record of its gradient descent (record_every = rec)
            steps_total = cfg["ft_steps"]
            rec = max(steps_total // 100, 1)
            bad = [p for i in range(g["gd_step"].shape[0]) for name in ("gd_k", "gd_3k")
                   for p in history_problems(g["gd_step"][i], g[name][i], total=steps_total,
                                             every=rec)]
            rows.append(Verdict(
                CLAIM, f"fine-tuning gradient descent history (finetune, steps={steps_total}, "
                f"record_every={rec}), d={d}, k={k}: steps 0, rec, 2 rec, ..., steps, one per "
                "recorded loss: problems found", 0, len(bad), float("nan"),
                Tolerance.exact("problems counted"), not bad, "check",
                note + f"; {g['gd_step'].shape[1]} records per run"
                + (f"; {bad[0]}" if bad else "")))

    cps = {}
    spurious = []
    for gi, (d, k) in enumerate(cfg["cp_groups"]):
        c = _critical_points(cfg, jax.random.fold_in(k_cp, gi), d, k)
        cps[(d, k)] = c
        counts = landscape.census(c["label"])
        lab = c["label"]
        nonglobal = (lab == landscape.STRICT_SADDLE) | (lab == landscape.SPURIOUS_MIN)
        n_sp = int(np.sum(lab == landscape.SPURIOUS_MIN))
        for i in np.where(lab == landscape.SPURIOUS_MIN)[0]:
            spurious.append(dict(d=d, k=k, truth_index=int(c["truth_index"][i]),
                                 objective=float(c["objective"][i]),
                                 grad_norm=float(c["grad_norm"][i]),
                                 min_eig=float(c["min_eig"][i]), n_flat=int(c["n_flat"][i]),
                                 U=c["U"][i]))
        note = (f"d={d}, k={k}, T=2, {cfg['cp_truths']} truths x {cfg['cp_starts']} starts, "
                f"LM on ||grad G||^2; census " + ", ".join(f"{n}: {v}" for n, v in counts.items()))
        worst = float(np.max(c["min_eig"][nonglobal])) if nonglobal.any() else float("nan")
        rows += [
            Verdict(CLAIM, f"T=2 spurious local minima among critical points, d={d}, k={k}",
                    "0 (paper: strict saddle)", n_sp, 0.0, "none with min restricted eig >= -1e-6 c",
                    n_sp == 0, "measured", note),
            Verdict(CLAIM, f"T=2 largest smallest-Hessian-eigenvalue/c over non-global critical "
                    f"points, d={d}, k={k}", "< 0 (strict saddle)", worst,
                    spread(c["min_eig"][nonglobal]) if nonglobal.any() else float("nan"),
                    "< -1e-6 (restricted to the complement of the k(2k-1) symmetries)",
                    bool(np.isfinite(worst) and worst < -1e-6), "measured",
                    note + f"; {int(nonglobal.sum())} non-global critical points"),
        ]
        rows.append(critical_point_evidence_row(c, d=d, k=k, max_iter=cfg["cp_iter"]))
        n_pts = cfg["cp_truths"] * min(N_DERIV, cfg["cp_starts"])
        tol_der = Tolerance.rounding(10 * T * d * k, what="closed form vs automatic derivative, "
                                     "relative to ||H||_F + c")
        rows.append(Verdict(
            CLAIM, f"landscape.gradient / landscape.hessian (closed forms) vs jax.grad / "
            f"jax.hessian of G at critical points found, d={d}, k={k}", 0.0, c["deriv_gap"], 0.0,
            tol_der, tol_der.below(c["deriv_gap"]), "check",
            f"{n_pts} points; max relative difference (gradient relative to (||H|| + c) c^1/2)"))
        glob = lab == landscape.GLOBAL_MIN
        if glob.any():
            want = landscape.known_zero_modes(T, k, True)
            ok = bool(np.all(c["n_orbit"][glob] == want) and np.all(c["n_flat"][glob] == 0))
            rows.append(Verdict(
                CLAIM, f"T=2 Hessian zero modes at global minima found, d={d}, k={k}",
                f"k(2k-1) = {want}, no other flat direction", float(np.mean(c["n_orbit"][glob])),
                spread(c["n_orbit"][glob]),
                Tolerance.exact("counts; |eig| <= 1e-6 c counted flat (landscape's tolerance)"),
                ok, "check",
                f"{int(glob.sum())} global minima; extra flat directions "
                f"{sorted(set(c['n_flat'][glob].tolist()))}"))
    rows.append(levenberg_marquardt_transcription_row())

    data = dict(setting=setting, seed=seed, family=fam, family_ref=ref, gauss=gauss, cps=cps,
                tol_G=tol_G.value,
                spurious=spurious, cfg=cfg, ft_lr=FT_LR)
    return ClaimResult(CLAIM, rows, data, time.perf_counter() - t0)


def plot(result: ClaimResult, out_dir) -> list:
    """``c4_two_tasks.{png,pdf}``: the family, rank(A_hat - A*), fine-tuning curves, saddle spectrum."""
    plt = pyplot()
    D = result.data
    fam = D["family"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 9))

    ax = axes[0, 0]
    th = fam["theta"]
    ax.plot(th, D["family_ref"], "k-", lw=1.2, label="closed form, k=1")
    ax.plot(th[::4], fam["dist"][::4], "o", color="tab:blue", ms=4,
            label=r"$\|A(U(\theta)) - A^*\|_F$, hyperbolic family (k=1)")
    ax.plot(fam["theta_boost"], fam["dist_boost"], "-", color="tab:green",
            label=r"generic boost path (Gaussian $U^*$, k=2)")
    ax.set_xlabel(r"$\theta$")
    ax.set_ylabel(r"$\|\hat A - A^*\|_F$")
    ax.set_yscale("symlog", linthresh=1e-2)
    ax2 = ax.twinx()
    floor = 1e-33
    ax2.semilogy(th, np.maximum(np.abs(fam["G"]), floor), ".", color="tab:red", ms=3,
                 label=r"$G(U(\theta))$ (k=1)")
    ax2.semilogy(fam["theta_boost"], np.maximum(np.abs(fam["G_boost"]), floor), ".",
                 color="tab:orange", ms=3, label=r"$G/c^2$ (k=2 path)")
    tol_G = D.get("tol_G", 1e-12)
    ax2.axhline(tol_G, color="tab:red", ls=":", lw=1)
    ax2.set_ylim(1e-34, 1e2)
    ax2.set_ylabel(f"objective $G$ (tolerance {tol_G:.0e} dotted)", color="tab:red")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    # below the axes: inside, it covers the family's points
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13),
              ncol=2, frameon=False)
    ax.set_title("(a) a family of global minima: G = 0, $A$ moves", fontsize=10)

    ax = axes[0, 1]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, ((d, k), g) in enumerate(D["gauss"].items()):
        sv = np.maximum(g["sv"], 1e-18)
        idx = np.arange(1, sv.shape[1] + 1)
        for j, row in enumerate(sv):
            ax.semilogy(idx + 0.08 * i, row, "o-", color=colors[i % len(colors)], ms=3, lw=0.6,
                        alpha=0.6, label=f"d={d}, k={k}" if j == 0 else None)
        ax.axvline(2 * k + 0.5, color=colors[i % len(colors)], ls="--", lw=1)
    ax.set_xlabel("index i")
    ax.set_ylabel(r"$\sigma_i(\hat A - A^*)$")
    ax.set_title("(b) Meta-LoRA at T=2: rank$(\\hat A - A^*) = 2k$ (dashed), one line per seed",
                 fontsize=10)
    ax.legend(fontsize=8)

    ax = axes[1, 0]
    for i, ((d, k), g) in enumerate(D["gauss"].items()):
        col = colors[i % len(colors)]
        if "gd_step" not in g:
            ax.text(0.5, 0.5, "no gradient-descent curves in this setting", ha="center",
                    transform=ax.transAxes)
            continue
        steps = g["gd_step"][0]
        for name, ls in (("gd_k", "-"), ("gd_3k", "--")):
            Y = np.maximum(g[name], 1e-30)
            r = k if name == "gd_k" else 3 * k
            q25, q50, q75 = np.percentile(Y, [25, 50, 75], axis=0)
            ax.fill_between(steps, q25, q75, color=col, alpha=0.15, lw=0)
            ax.plot(steps, q50, ls, color=col, label=f"rank {r} GD (d={d}, k={k})")
        ax.axhline(np.median(g["bias_k"]), color=col, ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel(r"$\|M - M^*_{new}\|_F^2$ (population)")
    ax.set_title(f"(c) fine-tuning after T=2 Meta-LoRA (lr {D['ft_lr']}): rank k stalls at its\n"
                 "Eckart-Young bias (dotted), rank 3k heads to 0; median, quartile band",
                 fontsize=9)
    ax.legend(fontsize=7)

    ax = axes[1, 1]
    txt = []
    bins = np.logspace(-7, 1, 49)
    for i, ((d, k), c) in enumerate(D["cps"].items()):
        lab = c["label"]
        m = lab == landscape.STRICT_SADDLE
        ax.hist(-c["min_eig"][m], bins=bins, histtype="step", lw=1.5,
                color=colors[i % len(colors)], label=f"d={d}, k={k}")
        cnt = landscape.census(lab)
        txt.append(f"d={d},k={k}: {cnt['global minimum']} global, {cnt['strict saddle']} saddle, "
                   f"{cnt['spurious local minimum']} spurious, {cnt['not converged']} n.c.")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.axvline(1e-6, color="k", ls=":", lw=1)
    ax.set_xlabel(r"$-\lambda_{min}/c$ at the strict saddles found ($\lambda_{min}$: smallest "
                  "restricted Hessian eigenvalue;\nspurious minima would have "
                  r"$\lambda_{min} \geq -10^{-6} c$, left of the dotted line)", fontsize=8)
    ax.set_ylabel("count (log)")
    ax.set_title("(d) strict saddle at T=2? every non-global critical point found", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.text(0.98, 0.97, "\n".join(txt), transform=ax.transAxes, ha="right", va="top", fontsize=6.5,
            bbox=dict(fc="white", alpha=0.8, lw=0))
    fig.suptitle(f"C4  T = 2: not identifiable but benign  ({D['setting']})", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, out_dir, "c4_two_tasks")
