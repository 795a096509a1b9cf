"""Claim R7 (measured): the separation between frozen and fine-tuned representations.

Statement (Chua, Lei, Lee 2021, with its quantifier; the hard instance is unconfirmed here): in the
worst case over task distributions, any method built on the frozen representation does no better
than learning the target from scratch, while AdaptRep (training and fine-tuning the representation
too) benefits. Here the
instances are built, searched and measured (docs/representation.md#r7); nothing is asserted beyond
what is measured.

Instance family (:func:`separation_instance`): ``B* = [e_1 .. e_k]``; T balanced heads with
diversity ``Sigma_w = diag(1, .., 1, eps)`` (the last shared direction is weakly used); the first
``n_perturbed`` tasks carry a shift ``Delta*_t w_t = delta u_t`` (least-norm ``Delta*_t``), with
``u_t = e_{k+1}`` for all of them ("shared" direction) or distinct axes ``e_{k+1+t}`` ("spread"),
the perturbed tasks being those with the largest (or the smallest) heads;
one target ``beta_0 = B* (cos phi e_1 + sin phi e_k)`` (``phi = pi/2``: the target loads on the
weak direction). PCA (FrozenRep) ranks directions by energy ``sum_t <beta_t, u>^2``: a shift of
energy ``n_perturbed delta^2 / T`` above ``eps`` displaces the weak direction. The scale-free
penalty ``sqrt(lambda gamma) ||Delta_t w_t||`` would be linear in the shift's size, but it needs the
head's scale to be free; a task's head is pinned by its own shared signal, and the cost of a shift
v on a task with fitted head w is then ``lambda ||v||^2 / (2 (||w||^2 + lambda))`` to leading order
(:func:`linmeta.families.representation.theory.adaptrep_shift_cost`, docs/representation.md#r6):
quadratic in the shift, like PCA's energy, but divided by ``||w||^2 + lambda``. A shift on a task
with a small head is expensive to explain by ``Delta_t``, and AdaptRep then rotates B as PCA does
(measured: which tasks carry the shift matters).

Measured per instance (population source tasks, noise 0.5 on the targets): the subspaces of
FrozenRep, AdaptRep (lambda 0.1, gamma 0.01, 4 starts) and ANIL (w0 = 0, alpha 1,
beta 0.2 / ||C||_F, within ANIL's stability bound; its population objective
``1/2 tr((alpha B B^T - I)^2 C)`` depends on the tasks only through C, like FrozenRep's); target
risk
``E||beta_hat - beta_0||^2`` against the target sample size m for head-only fine-tuning on each
representation, AdaptRep's fine-tuning of head and representation (target lambda 10, gamma 1e-3) on
FrozenRep's and AdaptRep's, and least squares from scratch; beside them the closed forms of the
frozen risk (``f + (sigma^2 + f) k / (m - k - 1)``; its floor f bounds every predictor in
col(B_hat)) and of the scratch risk (``sigma^2 d / (m - d - 1)``). The target lambda of the
fine-tuning arms and the ridge of a second scratch arm are chosen per m by their measured risk over
the grids :data:`TARGET_LAMS` and :data:`SCRATCH_RIDGES` (an oracle choice, given to both sides).
An instance separates at m when the frozen closed form is >= the better scratch arm and AdaptRep's
measured risk is < it.
Two stages: every (source instance, target) pair is screened by closed forms (FrozenRep's head-only
risk, AdaptRep's head-only risk, both exact for head-only least squares on the learned
representation, against the scratch risk); the best pairs are then measured by Monte Carlo with
all arms (full setting). The quick and tiny settings show one instance found by the full search,
by the closed forms only.
"""
from __future__ import annotations

import itertools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from linmeta.core import metrics
from linmeta.families import representation as rep
from linmeta.core.data import TaskStats
from linmeta.families.representation import methods, theory
from linmeta.families.representation._linalg import orthonormalise
from linmeta.families.representation.target import (head_and_representation_fit, head_only_fit,
                                                    scratch_fit, target_excess_risk)
from linmeta.methods import run_steps

from linmeta.core import theory as base_theory
from linmeta.core.problem import sample_truth
from linmeta.engine.claims import ClaimResult, Verdict
from linmeta.engine.claim_support import figure_dpi, key_for, pyplot, save_figure, settings_value

CLAIM = "R7"
NOISE_STD = 0.5
LAM, GAMMA, TARGET_GAMMA, TARGET_STEPS = 0.1, 0.01, 1e-3, 50
TARGET_LAMS = (0.01, 0.1, 1.0, 10.0, 100.0)  # target lambda: oracle choice per m
SCRATCH_RIDGES = (1e-3, 1e-2, 0.1, 1.0, 10.0)  # scratch ridge: oracle choice per m
ALPHA, BETA = 1.0, 0.2
# an instance found by the full search (seed 0): shown by the quick and tiny settings
FOUND = dict(eps=0.16, delta=0.6, direction="shared", n_perturbed=3, phi=math.pi / 2,
             perturbed="largest")

SETTINGS = {
    "tiny": dict(d=8, k=2, T=10, ms=(16, 64), draws=0, steps=300, starts=2, anil_steps=300,
                 grid=None, n_mc=0, inner=2),
    "quick": dict(d=12, k=2, T=10, ms=(16, 32, 64, 128), draws=0, steps=400, starts=4,
                  anil_steps=400, grid=None, n_mc=0, inner=2),
    "full": dict(d=12, k=2, T=10, ms=(16, 24, 32, 64, 128, 256), draws=400, steps=1000,
                 starts=4, anil_steps=1000, n_mc=8, inner=5,
                 grid=dict(eps=(0.01, 0.04, 0.16), delta=(0.3, 0.6, 1.2, 2.4),
                           direction=("shared", "spread"), n_perturbed=(1, 3, 10),
                           perturbed=("largest", "smallest"),
                           phi=(0.0, math.pi / 4, math.pi / 2))),
}


def separation_instance(d, k, T, *, eps, delta, direction="shared", n_perturbed=1, phi=None,
                        phis=None, perturbed="largest", key=None, dtype=None):
    """The instance family of the module docstring as a :class:`~linmeta.families.representation.RepTruth`
    (heads: balanced, the construction of :func:`~linmeta.families.representation.balanced_heads` from
    the normal draw of ``key``, default key 0, done in NumPy; the perturbed tasks are those with
    the ``"largest"`` or ``"smallest"`` heads; one target per loading in ``phis``, or the single
    ``phi``)."""
    dt = np.dtype(jnp.asarray(0.0).dtype if dtype is None else dtype)
    if direction not in ("shared", "spread"):
        raise ValueError(f"direction must be 'shared' or 'spread'; got {direction!r}")
    if perturbed not in ("largest", "smallest"):
        raise ValueError(f"perturbed must be 'largest' or 'smallest'; got {perturbed!r}")
    if not 1 <= n_perturbed <= T:
        raise ValueError(f"n_perturbed must be in [1, T={T}], got {n_perturbed}")
    if k >= d or T % 2 or T < 2 * k:
        raise ValueError(f"the instance needs k < d and an even T >= 2k; got d={d}, k={k}, T={T}")
    phis = (phi,) if phis is None else tuple(phis)
    if any(p is None for p in phis):
        raise ValueError("give the target loading phi (or a tuple phis)")
    key = jax.random.key(0) if key is None else key
    G0 = np.asarray(jax.random.normal(key, (T // 2, k), dt), float)
    w, V = np.linalg.eigh(G0.T @ G0)
    G = math.sqrt(T / 2) * G0 @ (V / np.sqrt(w)) @ V.T * np.sqrt([1.0] * (k - 1) + [eps])
    heads = np.concatenate([G, -G])  # second moment exactly diag(1, .., 1, eps)
    B = np.eye(d, k)
    order = np.argsort(np.sum(heads ** 2, axis=1))
    tasks = (order[::-1] if perturbed == "largest" else order)[:n_perturbed]
    shift = np.zeros((T, d))
    for j, t in enumerate(tasks):
        shift[t, k if direction == "shared" else k + (j % (d - k))] = delta
    Delta = shift[:, :, None] * heads[:, None, :] / np.sum(heads ** 2, axis=1)[:, None, None]
    W0 = np.zeros((len(phis), k))
    W0[:, 0] = np.cos(phis)
    W0[:, k - 1] += np.sin(phis)
    Sigma = np.diag([1.0] * (k - 1) + [eps])
    return rep.RepTruth(*(np.asarray(x, dt) for x in (B, heads, Delta, W0)), None,
                        np.asarray(Sigma, dt))


def _prefix_stats(X, Y, beta0, ms):
    """Statistics of the first m samples of every draw, for every m in ``ms``, stacked:
    TaskStats with leading axes (len(ms), draws)."""
    draws, mmax, d = X.shape
    edges = (0,) + tuple(ms)
    bx = jnp.stack([jnp.einsum("rni,rnj->rij", X[:, a:b], X[:, a:b])
                    for a, b in zip(edges[:-1], edges[1:])])
    by = jnp.stack([jnp.einsum("rn,rnj->rj", Y[:, a:b, 0], X[:, a:b])
                    for a, b in zip(edges[:-1], edges[1:])])
    byy = jnp.stack([jnp.sum(Y[:, a:b, 0] ** 2, axis=1) for a, b in zip(edges[:-1], edges[1:])])
    m = jnp.asarray(ms, X.dtype)
    Sxx = jnp.cumsum(bx, 0) / m[:, None, None, None]
    Syx = (jnp.cumsum(by, 0) / m[:, None, None])[:, :, None, :]
    Syy = jnp.cumsum(byy, 0) / m[:, None]
    L = len(ms)
    return TaskStats(Sxx, Syx, Syy, jnp.broadcast_to(m[:, None], (L, draws)),
                               jnp.broadcast_to(beta0, (L, draws, 1, d)),
                               jnp.full((L, draws), NOISE_STD, X.dtype))


def _targets(key, B_fr, B_ad, B_an, beta0, *, d, ms, draws):
    """Target risks (mean and standard error over ``draws``), shape (len(ms), 2, len(ARMS)), at
    every m (nested prefixes of one draw), and the chosen regularisations (len(ms), 3)."""
    mmax = max(ms)
    Z = jax.random.normal(key, (draws, mmax, d + 1))
    X, E = Z[..., :d], Z[..., d:]
    Y = X @ beta0[:, None] + NOISE_STD * E
    stats = _prefix_stats(X, Y, beta0, ms)
    lams = jnp.asarray(TARGET_LAMS)
    ridges = jnp.asarray(SCRATCH_RIDGES)

    def per_m(st):
        def risk(v):
            return target_excess_risk(v, st)

        fz = risk(head_only_fit(B_fr, st)[0])
        ft = jax.vmap(lambda B: jax.vmap(lambda lam: risk(head_and_representation_fit(
            B, st, lam, TARGET_GAMMA, TARGET_STEPS)[0]))(lams))(jnp.stack([B_fr, B_ad]))
        ad_head = risk(head_only_fit(B_ad, st)[0])
        an_head = risk(head_only_fit(B_an, st)[0])
        ols = risk(scratch_fit(st))
        ridge = jax.vmap(lambda r: risk(scratch_fit(st._replace(
            Sxx=st.Sxx + r * jnp.eye(d, dtype=st.Sxx.dtype)))))(ridges)
        # oracle choice over the grids (the same privilege for fine-tuning and scratch)
        i_fr = jnp.argmin(jnp.mean(ft[0], 1))
        i_ad = jnp.argmin(jnp.mean(ft[1], 1))
        i_rg = jnp.argmin(jnp.mean(ridge, 1))
        err = jnp.stack([fz, ft[0, i_fr], ft[1, i_ad], ad_head, an_head, ols, ridge[i_rg]])
        stat = jnp.stack([jnp.mean(err, 1), jnp.std(err, 1) / math.sqrt(draws)])
        return stat, jnp.stack([lams[i_fr], lams[i_ad], ridges[i_rg]])

    return jax.lax.map(per_m, stats)


ARMS = ("FrozenRep, head only", "FrozenRep, head + representation",
        "AdaptRep, head + representation", "AdaptRep, head only", "ANIL, head only",
        "from scratch, least squares", "from scratch, ridge")


def _train(truths, key, cfg):
    """Stage 1, every source instance (stacked truths, ``lax.map``): FrozenRep and the AdaptRep
    starts as lanes of one loop of AdaptRep's step (``lam = inf`` for FrozenRep), ANIL, on the
    population; their distances to B*, and the closed forms per target and m."""
    d, k, ms, steps = cfg["d"], cfg["k"], tuple(cfg["ms"]), cfg["steps"]
    def one(truth, key):
        ks, ka = jax.random.split(key)
        src = rep.population(truth)
        starts = orthonormalise(jax.random.normal(ks, (cfg["starts"], d, k)))
        s_ = truth.betas
        C = s_.T @ s_ / s_.shape[0]
        cnorm = jnp.sqrt(jnp.sum(C * C))
        lam = jnp.asarray([jnp.inf] + [LAM] * cfg["starts"])
        gamma = jnp.asarray([0.0] + [GAMMA] * cfg["starts"])
        lr = jnp.ones((1 + cfg["starts"],)) / cnorm
        B0 = jnp.concatenate([starts[:1], starts])

        def lane(b0, lr, lam, g):
            T = truth.heads.shape[0]
            s0 = (b0, jnp.zeros((T, d, k)), methods.frozen_heads(b0, src, g))
            (B, D, w), _ = run_steps(
                lambda c: methods.adaptrep_step(c[0], c[1], c[2], src, lr, lam, g, cfg["inner"]),
                s0,
                steps, steps, lambda c: c[0])
            return B, methods.adaptrep_objective(B, D, w, src, lam, g)

        B_l, obj_l = jax.vmap(lane)(B0, lr, lam, gamma)
        best = 1 + jnp.argmin(jnp.where(jnp.isfinite(obj_l[1:]), obj_l[1:], jnp.inf))
        B_fr, B_ad = B_l[0], B_l[best]
        w0 = jnp.zeros((k,))
        A0 = orthonormalise(jax.random.normal(ka, (d, k))) * 0.5 / math.sqrt(ALPHA)
        (B_an, _), _ = run_steps(
            lambda c: methods.meta_step(c[0], c[1], src, ALPHA, BETA / cnorm, 0.0, 0.0, 0.0),
            (A0, w0), cfg["anil_steps"], cfg["anil_steps"], lambda c: c[0])
        reps = jnp.stack([B_fr, B_ad, B_an])
        b0 = truth.target_betas  # (n_phi, d)
        th = jnp.stack([jnp.stack([theory.frozen_target_risk(B, b0, NOISE_STD, m) for m in ms],
                                  axis=-1) for B in (B_fr, B_ad)])
        return dict(reps=reps, th_frozen=th[0], th_adapt_head=th[1],
                    floor=theory.frozen_floor(B_fr, b0), adapt_starts=obj_l[1:],
                    anil_finite=jnp.all(jnp.isfinite(B_an)))

    keys = jax.random.split(key, truths.heads.shape[0])
    out = jax.jit(lambda t, kk: jax.lax.map(lambda a: one(*a), (t, kk)))(truths, keys)
    out = {name: np.asarray(v) for name, v in out.items()}
    # distances after the compiled program, eagerly (one batched LAPACK call at a time)
    n = out["reps"].shape[0]
    ref = jnp.repeat(jnp.asarray(truths.B_star), 3, axis=0)
    out["dist"] = np.asarray(metrics.subspace_distance(jnp.asarray(out["reps"]).reshape(
        n * 3, d, k), ref)).reshape(n, 3)
    return out


def _monte_carlo(reps, betas0, key, cfg):
    """Stage 2, selected (instance, target) pairs: the target arms by Monte Carlo."""
    d, ms, draws = cfg["d"], tuple(cfg["ms"]), cfg["draws"]
    keys = jax.random.split(key, reps.shape[0])
    f = jax.jit(lambda R, b, kk: jax.lax.map(
        lambda a: _targets(a[2], a[0][0], a[0][1], a[0][2], a[1], d=d, ms=ms, draws=draws),
        (R, b, kk)))
    risks, chosen = f(jnp.asarray(reps), jnp.asarray(betas0), keys)
    return np.asarray(risks), np.asarray(chosen)


def _grid(cfg):
    g = cfg["grid"]
    if g is None:
        return [{n: v for n, v in FOUND.items() if n != "phi"}], (FOUND["phi"],)
    names = [n for n in g if n != "phi"]
    return ([dict(zip(names, vals)) for vals in itertools.product(*(g[n] for n in names))],
            tuple(g["phi"]))


def _scratch_cf(d, ms):
    return np.array([float(theory.scratch_risk(d, m, NOISE_STD)) if m > d + 1 else np.inf
                     for m in ms])


def proxy_separation(th_frozen, th_adapt_head, scratch):
    """Stage-1 screen from closed forms: FrozenRep's risk >= scratch and AdaptRep's head-only
    risk < scratch at some m; score = max over m of min(frozen/scratch, scratch/adapt)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.minimum(th_frozen / scratch, scratch / th_adapt_head)
    s = np.where(np.isfinite(scratch), s, 0.0)
    return s.max(axis=-1)


def separation(th_frozen, scratch_cf, risks):
    """Stage-2 verdict per m: ``scratch`` = the better of least squares (closed form) and the
    oracle ridge (measured); FrozenRep's closed form >= scratch, and AdaptRep's fine-tuned
    measured risk is below scratch by more than 3 standard errors. Margins ``frozen/scratch``
    and ``adapt/scratch``."""
    sc = np.minimum(scratch_cf, risks[..., 0, 6])
    sc_se = np.where(scratch_cf <= risks[..., 0, 6], 0.0, risks[..., 1, 6])
    ad, ad_se = risks[..., 0, 2], risks[..., 1, 2]
    better = sc - ad > 3 * np.sqrt(ad_se ** 2 + sc_se ** 2)
    return dict(frozen_no_better=th_frozen >= sc, adapt_better=better,
                sep=(th_frozen >= sc) & better, frozen_margin=th_frozen / sc,
                adapt_margin=ad / sc)


BRIDGE = dict(d=10, k=1, T=3, noise_std=0.1)  # the base-matrix side of the bridge figure
BRIDGE_STREAM = 0xB41D


def bridge_truth(seed: int = 0, d: int = 10, k: int = 1, T: int = 3):
    """The base-matrix truth of the bridge (experiments/bridge.py) and its two other keys:
    ``(truth, meta_lora_key, data_key)`` from ``fold_in(key(seed), BRIDGE_STREAM)``."""
    kt, km, kd = jax.random.split(jax.random.fold_in(jax.random.key(seed), BRIDGE_STREAM), 3)
    return sample_truth(kt, d, k, T, n_unseen=1), km, kd


def bridge_closed_forms(seed: int = 0, d: int = 10, k: int = 1, T: int = 3,
                        noise_std: float = 0.1) -> dict:
    """The base-matrix side of the bridge in closed form (docs/theory.md, C2 and C6): standard
    retraining's fine-tuning floor, the Eckart-Young bias ``lora_bias(U_new U_new^T - Rbar, k)``
    that no number n of fine-tuning samples removes, and Meta-LoRA's fine-tuning risk constant
    ``sigma^2 k (2d - k)`` (risk ``~ constant / n``)."""
    truth, _, _ = bridge_truth(seed, d, k, T)
    resid = base_theory.sr_residual(truth.U_star, truth.U_new[0])
    return dict(sr_floor=float(base_theory.lora_bias(resid, k)),
                ml_rate_constant=float(noise_std ** 2 * base_theory.adapter_dof(d, k, False)),
                target_norm2=float(jnp.sum(truth.M_new[0] ** 2)), d=d, k=k, T=T,
                noise_std=noise_std)


def run(setting: str = "quick", seed: int = 0) -> ClaimResult:
    """Measure R7 at ``setting`` (tiny/quick/full); see the module docstring."""
    return measure(settings_value(SETTINGS, setting), seed, setting)


def measure(cfg: dict, seed: int = 0, setting: str = "custom") -> ClaimResult:
    """:func:`run` with an explicit configuration (a :data:`SETTINGS` entry, possibly edited: the
    bridge experiment measures the quick instance by Monte Carlo with ``n_mc=1``)."""
    t0 = time.perf_counter()
    d, k, T, ms = cfg["d"], cfg["k"], cfg["T"], tuple(cfg["ms"])
    params, phis = _grid(cfg)
    hkey = jax.random.fold_in(key_for(seed, CLAIM), 1)
    truths = [separation_instance(d, k, T, key=hkey, phis=phis, **p) for p in params]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *truths)
    st1 = _train(stacked, key_for(seed, CLAIM), cfg)
    scratch_cf = _scratch_cf(d, ms)
    score = proxy_separation(st1["th_frozen"], st1["th_adapt_head"], scratch_cf)  # (n, n_phi)
    n_mc = cfg["n_mc"]
    order = np.argsort(-score, axis=None)[:max(n_mc, 1)]
    pairs = [tuple(int(x) for x in np.unravel_index(i, score.shape)) for i in order]
    th_fz = np.stack([st1["th_frozen"][i, j] for i, j in pairs])
    th_ad = np.stack([st1["th_adapt_head"][i, j] for i, j in pairs])
    if n_mc:
        reps = np.stack([st1["reps"][i] for i, _ in pairs])
        betas0 = np.stack([np.asarray(stacked.target_betas[i, j]) for i, j in pairs])
        risks, chosen = _monte_carlo(reps, betas0, jax.random.fold_in(key_for(seed, CLAIM), 2),
                                     cfg)
        sep = separation(th_fz, scratch_cf, risks)
        adapt_value, adapt_name = risks[:, :, 0, 2], "AdaptRep (head + representation, MC)"
    else:  # closed forms only: head-only fine-tuning on AdaptRep's representation
        risks = chosen = None
        with np.errstate(divide="ignore", invalid="ignore"):
            sep = dict(frozen_no_better=th_fz >= scratch_cf, adapt_better=th_ad < scratch_cf,
                       sep=(th_fz >= scratch_cf) & (th_ad < scratch_cf),
                       frozen_margin=th_fz / scratch_cf, adapt_margin=th_ad / scratch_cf)
        adapt_value, adapt_name = th_ad, "AdaptRep (head only, closed form)"
    n_sep = sep["sep"].any(axis=1)
    mc_score = np.where(sep["sep"], np.minimum(sep["frozen_margin"], 1 / sep["adapt_margin"]),
                        0).max(axis=1)
    b = int(np.argmax(mc_score)) if n_sep.any() else 0
    bi, bj = pairs[b]
    bp = dict(params[bi], phi=phis[bj])
    desc = (f"eps={bp['eps']:g}, delta={bp['delta']:g}, {bp['direction']}, "
            f"n_perturbed={bp['n_perturbed']} ({bp['perturbed']} heads), phi={bp['phi']:.2f}")
    note = f"d={d}, k={k}, T={T}, sigma={NOISE_STD}; instance {desc}"
    if n_mc:
        note += f"; {cfg['draws']} target draws"
    dist = st1["dist"][bi]
    rows = [Verdict(CLAIM, "separation instance: sin(largest principal angle) to B* of "
                    "FrozenRep / AdaptRep / ANIL", "measured", float(dist[1]),
                    float("nan"), "", bool(np.all(np.isfinite(dist[:2]))), "measured",
                    note + f"; FrozenRep {dist[0]:.3f}, AdaptRep {dist[1]:.3f}, "
                    f"ANIL {dist[2]:.3f}; frozen floor ||P_perp beta_0||^2 = "
                    f"{st1['floor'][bi, bj]:.3f}")]
    for j, m in enumerate(ms):
        extra = ""
        if n_mc:
            r = risks[b, j, 0]
            extra = (f" (MC {r[0]:.3g}), frozen + fine-tune {r[1]:.3g}, AdaptRep head only "
                     f"{r[3]:.3g}, ANIL head only {r[4]:.3g}, scratch MC {r[5]:.3g}, ridge "
                     f"{r[6]:.3g}; oracle target lambda {chosen[b, j, 1]:g}, ridge "
                     f"{chosen[b, j, 2]:g}")
        rows.append(Verdict(
            CLAIM, f"separation at m={m}: target risk of {adapt_name}", "measured",
            float(adapt_value[b, j]), float(risks[b, j, 1, 2]) if n_mc else 0.0, "",
            bool(np.isfinite(adapt_value[b, j])), "measured",
            note + f"; frozen closed form {th_fz[b, j]:.3g}{extra}; AdaptRep head only closed "
            f"form {th_ad[b, j]:.3g}; scratch closed form {scratch_cf[j]:.3g}; separates: "
            f"{bool(sep['sep'][b, j])}"))
    n_proxy = int((score > 1).sum())
    how = (f"the top {len(pairs)} measured by Monte Carlo" if n_mc else
           "closed forms only (head-only fine-tuning)")
    rows.append(Verdict(
        CLAIM, "separation search: (instance, target) pairs where FrozenRep does no better than "
        "scratch and AdaptRep does better, at some m", "measured",
        f"{int(n_sep.sum())}/{len(pairs)}", float("nan"), "", True, "measured",
        f"{len(params)} source instances x {len(phis)} targets; closed-form screen passes "
        f"{n_proxy}; {how}; m in {ms}; shown {desc}: frozen/scratch "
        f"{np.array2string(sep['frozen_margin'][b], precision=2)}, AdaptRep/scratch "
        f"{np.array2string(sep['adapt_margin'][b], precision=2)}; ANIL finite in "
        f"{int(st1['anil_finite'].sum())}/{len(params)} instances"))
    bridge = bridge_closed_forms(seed)
    m_last = ms[-1]
    rows.append(Verdict(
        CLAIM, "bridge: bias left by retraining that target fine-tuning cannot remove "
        "(base-matrix SR floor; FrozenRep's floor on the separation instance)", "measured",
        float(st1["floor"][bi, bj]), float("nan"), "", bool(np.isfinite(bridge["sr_floor"])),
        "measured",
        f"base-matrix model (d={bridge['d']}, k={bridge['k']}, T={bridge['T']}, "
        f"sigma={bridge['noise_std']}): SR + rank-k fine-tuning risk >= floor "
        f"{bridge['sr_floor']:.4g} = {bridge['sr_floor'] / bridge['target_norm2']:.3g} "
        f"||M_new||_F^2 at every n; Meta-LoRA {bridge['ml_rate_constant']:.3g}/n "
        f"(= {bridge['ml_rate_constant'] / 1000 / bridge['target_norm2']:.2g} ||M_new||_F^2 "
        f"at n=1000); "
        f"representation model ({note}): FrozenRep floor {st1['floor'][bi, bj]:.4g}, at "
        f"m={m_last} FrozenRep head only {th_fz[b, -1]:.4g} (closed form), AdaptRep head only "
        f"{th_ad[b, -1]:.4g}, scratch {scratch_cf[-1]:.4g}; Monte Carlo of both panels: "
        f"experiments/bridge.py (figures/bridge.png, bridge.json)"))
    data = dict(setting=setting, d=d, k=k, T=T, ms=np.asarray(ms, float), params=params,
                phis=phis, pairs=pairs, best=b, sep=sep, score=score, risks=risks,
                chosen=chosen, th_frozen=th_fz, th_adapt_head=th_ad, th_scratch=scratch_cf,
                floor=np.array([st1["floor"][i, j] for i, j in pairs]), dist=st1["dist"],
                shown=bp)
    return ClaimResult(CLAIM, rows, data, time.perf_counter() - t0)


def plot(result: ClaimResult, out_dir) -> list:
    """``rep_r7_separation.{png,pdf}``: target risk against m on the instance shown (Monte Carlo
    arms where measured, closed forms always)."""
    plt = pyplot()
    D = result.data
    b = D["best"]
    ms = D["ms"]
    scratch = D["th_scratch"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if D["risks"] is not None:
        R = D["risks"][b]  # (len(ms), 2, arms)
        styles = [("tab:blue", "o", "-"), ("tab:cyan", "v", "-"), ("tab:red", "s", "-"),
                  ("tab:pink", "D", ":"), ("tab:olive", "^", ":"), ("k", "x", "-"),
                  ("tab:gray", "+", ":")]
        for a, (name, (c, mk, ls)) in enumerate(zip(ARMS, styles)):
            ax.errorbar(ms, R[:, 0, a], yerr=3 * R[:, 1, a], color=c, marker=mk, ls=ls, ms=4,
                        capsize=2, label=name + " (MC)")
    ax.plot(ms, D["th_frozen"][b], "--", color="tab:blue", lw=1.2,
            label=r"FrozenRep head only, closed form $f + (\sigma^2+f)k/(m-k-1)$")
    ax.plot(ms, D["th_adapt_head"][b], "--", color="tab:pink", lw=1.2,
            label="AdaptRep head only, closed form")
    ok = np.isfinite(scratch)
    ax.plot(ms[ok], scratch[ok], "k--", lw=1.2,
            label=r"scratch least squares, closed form $\sigma^2 d/(m-d-1)$")
    ax.axhline(D["floor"][b], color="tab:blue", ls=":", lw=1, label="frozen floor f")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("target samples m")
    ax.set_ylabel(r"$E\|\hat\beta - \beta_0\|^2$")
    p = D["shown"]
    ax.set_title(f"R7  separation: eps={p['eps']:g}, delta={p['delta']:g}, {p['direction']}, "
                 f"{p['n_perturbed']} perturbed ({p['perturbed']} heads), phi={p['phi']:.2f}  "
                 f"(d={D['d']}, k={D['k']}, T={D['T']}; {D['setting']})", fontsize=8)
    ax.legend(fontsize=6, loc="upper right", ncol=2, framealpha=0.9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out_dir, "rep_r7_separation", dpi=figure_dpi(D["setting"]))
