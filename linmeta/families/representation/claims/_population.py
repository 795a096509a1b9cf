"""The population computations behind claims R1 (FrozenRep = PCA), R3 (ANIL, first-order ANIL,
one-step MAML, average loss), R5 (FedRep) and R6 (AdaptRep as lambda -> infinity): one compiled
program per (setting, seed), shared by the four claims (:func:`population_runs`, cached).

Per seed, from one Gaussian draw: a Haar ``B*`` (d x k), a task diversity
``Sigma = Q diag(0.3 .. 1) Q^T`` (``lambda_min = 0.3``), and three source-task sets in the
population (noise 0.1): balanced heads (second moment exactly Sigma, odd moments zero),
i.i.d. Gaussian heads ``N(0, Sigma)``, and the Gaussian heads with perturbed representations
(``Delta*_t`` entries ``N(0, 0.3^2 / d)``). One random orthonormal start ``B0``. Then:

- alternating minimisation (FrozenRep's and FedRep's iteration) on the four runs (balanced heads,
  step ``eta``: FedRep; the three sets, step ``1.9 / lambda_1(C)``: FrozenRep), and FedRep at the
  two steps of :data:`ETA_EDGE`, on either side of ``eta (lambda_min + lambda_max) = 2``, where
  its late rate changes regime (claim R5);
- ANIL from ``B0 * 0.5 / sqrt(alpha)``, w0 = 0, on balanced (beta 0.4) and Gaussian heads
  (beta 0.2); first-order ANIL
  on balanced heads; one-step MAML with w0 learned (balanced and Gaussian heads) and fixed at 0
  (Gaussian heads); average-loss training (balanced heads, mean zero); ANIL and first-order ANIL
  at ``alpha beta lambda_max = BETA_EDGE`` (balanced heads, lambda_max = 1), between the two
  methods' stability bounds 1/2 and 1 (claim R3);
- every ANIL and first-order-ANIL step against the closed form of the wrong-subspace update;
- one-step MAML's update (w0 learned) from every ANIL iterate at w0 = 0, on balanced heads;
- the MAML gradient in w0 at w0 = 0, autodiff and closed form (Gaussian heads);
- AdaptRep on the perturbed tasks for lambda in :data:`LAMBDAS` (gamma 0.01, step
  ``1 / lambda_1(C)``, 2 inner updates per step), and its inner problem
  at the fixed ``B0`` (step 0) for lambda in :data:`GAP_LAMBDAS` beside the frozen objective there.

The iterative methods run as lanes of two vmapped loops (AdaptRep's step with ``lam = inf`` for
FrozenRep and FedRep; ``meta_step`` with its flags for the others): the same updates as the public
functions (tested), compiled once.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from linmeta.core import metrics
from linmeta.families.representation import methods, theory
from linmeta.families.representation.tasks import population_from_betas
from linmeta.methods import run_steps

from linmeta.engine.claim_support import key_for

SETTINGS = {
    "tiny": dict(d=5, k=2, T=8, seeds=5, steps=400),
    "quick": dict(d=6, k=2, T=8, seeds=5, steps=400),
    "full": dict(d=16, k=3, T=24, seeds=16, steps=600),
}
# ANIL's scale dynamics contract with 1 - 2 alpha beta (lambda_i + lambda_j)
# (docs/representation.md#r3), stable while alpha beta lambda_max(Sigma_hat) < 1/2: beta = BETA on
# balanced heads (lambda_max = 1), BETA_GAUSS on Gaussian heads (lambda_max random, about 2 at most)
ALPHA, BETA, BETA_GAUSS, ETA, INIT_SCALE, AVG_LR, LAMBDA_MIN = 1.0, 0.4, 0.2, 0.5, 0.5, 0.2, 0.3
# FedRep's late rate is 1 - eta lambda_min while eta (lambda_min + lambda_max) <= 2 and
# eta lambda_max - 1 beyond (claim R5); with Sigma's eigenvalues 0.3 .. 1 the boundary is
# eta = 2 / 1.3 = 1.54: one step on each side (rates 0.58 and 0.8; at 1.8 the other extreme mode,
# 1 - 1.8 * 0.3 = 0.46, dies out fast enough for the fitted rate to be the slowest mode's)
ETA_EDGE = (1.4, 1.8)
# ANIL's scale part is stable for alpha beta lambda_max < 1/2, first-order ANIL's for < 1 (R3)
BETA_EDGE = 0.7
NOISE_STD, DELTA_SCALE, GAMMA = 0.1, 0.3, 0.01
LAMBDAS = (1e2, 1e4, 1e6)
GAP_LAMBDAS = (1e2, 1e3, 1e4, 1e5, 1e6)
INNER_STEPS = 2
# FrozenRep's step 1.9 / lambda_1(C): modes contract by 1 - step (lambda_i - lambda_j), all within
# (-1, 1) for a step below 2 / lambda_1; the slowest is 1 - 1.9 (lambda_k - lambda_{k+1}) / lambda_1
FROZEN_STEP = 1.9
STREAM = "R1R3R5R6"  # one random stream for the four claims
KINDS = ("balanced heads", "Gaussian heads", f"perturbed (delta {DELTA_SCALE})")


def _draw(key, d, k, T):
    shapes = dict(B=(d, k), Q=(k, k), G0=(T // 2, k), Wg=(T, k), D=(T, d, k), B0=(d, k))
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    z = jax.random.normal(key, (sum(sizes.values()),))
    out, start = {}, 0
    for n, s in shapes.items():
        out[n] = z[start:start + sizes[n]].reshape(s)
        start += sizes[n]
    return out


def _stack(*trees):
    return jax.tree.map(lambda *x: jnp.stack(x), *trees)


def _haar(Z):
    Q, R = np.linalg.qr(Z)
    return Q * np.sign(np.diagonal(R))


def _instances(key, d, k, T):
    """The three source-task sets of one seed and the start: one Gaussian draw (JAX), the rest in
    NumPy (the construction of :func:`linmeta.families.representation.balanced_heads`; no compiled
    LAPACK call)."""
    z = {n: np.asarray(v, float) for n, v in _draw(key, d, k, T).items()}
    Bs = _haar(z["B"])
    Q = _haar(z["Q"])
    Sigma = (Q * np.linspace(LAMBDA_MIN, 1.0, k)) @ Q.T
    L = np.linalg.cholesky(Sigma)
    w, V = np.linalg.eigh(z["G0"].T @ z["G0"])
    G = math.sqrt(T / 2) * z["G0"] @ (V / np.sqrt(w)) @ V.T @ L.T
    Wb = np.concatenate([G, -G])  # balanced: second moment exactly Sigma
    Wg = z["Wg"] @ L.T
    Delta = DELTA_SCALE / math.sqrt(d) * z["D"]
    betas = np.stack([Wb @ Bs.T, Wg @ Bs.T, np.einsum("tdk,tk->td", Bs + Delta, Wg)])
    lam_C = np.linalg.eigvalsh(np.swapaxes(betas, -1, -2) @ betas / T)  # (3, d), increasing
    dt = jnp.asarray(0.0).dtype
    return {n: jnp.asarray(v, dt) for n, v in dict(Bs=Bs, Wb=Wb, betas=betas, B0=_haar(z["B0"]),
                                                   lam_C=lam_C).items()}


def _loops(inst, *, d, k, T, steps):
    """Every iterative run of one seed: two vmapped loops, no LAPACK call (compiled)."""
    betas, B0, lam_C = inst["betas"], inst["B0"], inst["lam_C"]
    stats = jax.vmap(lambda b: population_from_betas(b, NOISE_STD))(betas)  # 3 kinds
    sb = jax.tree.map(lambda x: x[0], stats)
    sg = jax.tree.map(lambda x: x[1], stats)
    A0 = INIT_SCALE / math.sqrt(ALPHA) * B0
    w0 = jnp.zeros((k,))
    out = {}

    # FrozenRep, FedRep and AdaptRep: lanes of one vmapped loop of AdaptRep's step (lam = inf for
    # FrozenRep and FedRep). Lanes: FedRep (balanced, eta); FrozenRep on the three kinds (step
    # 1 / lambda_1(C)); AdaptRep on the perturbed tasks, lam in LAMBDAS; and AdaptRep's inner
    # problem at the fixed B0 (step 0) on the perturbed tasks, lam in (inf,) + GAP_LAMBDAS.
    nl, ng = len(LAMBDAS), len(GAP_LAMBDAS) + 1
    # (last: FedRep at the steps of ETA_EDGE, balanced heads)
    ne = len(ETA_EDGE)
    lane_kind = jnp.asarray([0, 0, 1, 2] + [2] * (nl + ng) + [0] * ne)
    lane_stats = jax.tree.map(lambda x: x[lane_kind], stats)
    lane_lr = jnp.concatenate([jnp.asarray([ETA]), FROZEN_STEP / lam_C[:, -1],
                               jnp.full((nl,), 1.0 / lam_C[2, -1]), jnp.zeros((ng,)),
                               jnp.asarray(ETA_EDGE)])
    lane_lam = jnp.asarray([jnp.inf] * 4 + list(LAMBDAS) + [jnp.inf] + list(GAP_LAMBDAS)
                           + [jnp.inf] * ne)
    lane_gamma = jnp.asarray([0.0] * 4 + [GAMMA] * (nl + ng) + [0.0] * ne)

    def rep_lane(st, lr, lam, g):
        s0 = (B0, jnp.zeros((T, d, k)), methods.frozen_heads(B0, st, g))
        (B, D, w), hist = run_steps(
            lambda c: methods.adaptrep_step(c[0], c[1], c[2], st, lr, lam, g, INNER_STEPS), s0,
            steps, 1, lambda c: c[0])
        return B, methods.adaptrep_objective(B, D, w, st, lam, g), hist.value

    out["B_rep"], out["obj_rep"], out["traj_rep"] = jax.vmap(rep_lane)(lane_stats, lane_lr,
                                                                       lane_lam, lane_gamma)

    # ANIL, first-order ANIL, one-step MAML, average loss: lanes of one vmapped loop of
    # meta_step (its flags). Lanes: ANIL (balanced), ANIL (Gaussian), first-order ANIL
    # (balanced), MAML w0 learned (balanced), MAML w0 learned (Gaussian), MAML w0 fixed
    # (Gaussian), average loss (balanced); ANIL and first-order ANIL at beta = BETA_EDGE (balanced).
    meta_kind = jnp.asarray([0, 1, 0, 0, 1, 1, 0, 0, 0])
    meta_stats = jax.tree.map(lambda x: x[meta_kind], stats)
    flags = jnp.asarray([[0, 0, 0], [0, 0, 0], [0, 0, 1], [1, 1, 0], [1, 1, 0], [1, 0, 0],
                         [0, 1, 0], [0, 0, 0], [0, 0, 1]],
                        float)  # inner_on_rep, learn_head_init, first_order
    alphas = jnp.asarray([ALPHA] * 6 + [0.0] + [ALPHA] * 2)
    betas_ = jnp.asarray([BETA, BETA_GAUSS, BETA, BETA, BETA_GAUSS, BETA_GAUSS, AVG_LR]
                         + [BETA_EDGE / ALPHA] * 2)
    starts = jnp.stack([A0] * 6 + [B0] + [A0] * 2)
    heads0 = jnp.stack([w0] * 6 + [jnp.ones((k,)) / math.sqrt(k)] + [w0] * 2)

    def meta_lane(st, b0, h0, a, be, f):
        (B, w), hist = run_steps(
            lambda c: methods.meta_step(c[0], c[1], st, a, be, f[0], f[1], f[2]), (b0, h0), steps,
            1, lambda c: c[0])
        return B, w, hist.value

    out["B_meta"], out["w_meta"], out["traj_meta"] = jax.vmap(meta_lane)(
        meta_stats, starts, heads0, alphas, betas_, flags)

    # one-step MAML's update (w0 learned) from every ANIL iterate at w0 = 0, symmetric heads:
    # equal to ANIL's next iterate, and no move of w0
    Ban = out["traj_meta"][0]
    Bn, wn = jax.vmap(lambda B: methods.meta_step(B, w0, sb, ALPHA, BETA, 1.0, 1.0, 0.0))(
        Ban[:-1])
    out["maml_step_gap"] = jnp.max(jnp.abs(Bn - Ban[1:]))
    out["maml_step_w0"] = jnp.max(jnp.abs(wn))
    out["maml_grad"] = jax.grad(methods.maml_objective, argnums=1)(A0, w0, sg, ALPHA)
    return out


def _measures(inst, loop, *, d, k, T, steps):
    """Distances and closed forms for all seeds at once (leading axis: seeds). The library's
    LAPACK-based functions (theory, metrics) are called eagerly, each on one batch, so their LAPACK
    calls run one at a time; the remaining arithmetic is NumPy."""
    S = inst["Bs"].shape[0]
    Bs, betas, B0 = inst["Bs"], inst["betas"], inst["B0"]
    lam_C = np.asarray(inst["lam_C"])
    nl = len(LAMBDAS)
    out = {}
    obj_rep = np.asarray(loop["obj_rep"])
    want = 0.5 * lam_C[:, :, :-k].sum(axis=2) + NOISE_STD ** 2 / 2
    out["r1_obj_rel"] = np.abs(obj_rep[:, 1:4] - want) / want
    # the exact late contraction of the iteration (the slowest of 1 - step (lambda_i - lambda_j),
    # i <= k < j): theory.alternating_late_rate, step 1.9 / lambda_1 per run
    out["r1_rate"] = np.asarray([[theory.alternating_late_rate(FROZEN_STEP / lam[-1], lam, k)
                                  for lam in per_seed] for per_seed in lam_C])
    gap_obj = obj_rep[:, 4 + nl:4 + nl + len(GAP_LAMBDAS) + 1]
    out["gap_scaled"] = np.asarray(GAP_LAMBDAS) * (gap_obj[:, :1] - gap_obj[:, 1:])
    out["gap_limit"] = np.asarray([theory.adaptrep_gap_limit(B0[i], betas[i, 2], GAMMA)
                                   for i in range(S)])
    Bm = np.asarray(loop["traj_meta"])  # (S, 7, steps + 1, d, k)
    B_meta, w_meta = np.asarray(loop["B_meta"]), np.asarray(loop["w_meta"])
    out["sigma_hat"] = (np.swapaxes(np.asarray(inst["Wb"]), -1, -2) @ np.asarray(inst["Wb"])
                        / T)  # the heads' second moment (S, k, k): the late rates' Sigma
    out["lambda_min"] = np.linalg.eigvalsh(out["sigma_hat"])[:, 0]
    eye = np.eye(k)
    out["anil_gram"] = np.linalg.norm(ALPHA * np.swapaxes(B_meta[:, 0], -1, -2) @ B_meta[:, 0]
                                      - eye, 2, axis=(-2, -1))
    out["fo_gram"] = np.linalg.norm(ALPHA * np.swapaxes(B_meta[:, 2], -1, -2) @ B_meta[:, 2]
                                    - eye, 2, axis=(-2, -1))
    # at alpha beta lambda_max = BETA_EDGE: ||alpha B^T B - I||_2, largest over the last 10 steps
    # (ANIL's oscillates there), for ANIL and first-order ANIL (S, 2)
    last = Bm[:, 7:9, -10:]
    out["edge_gram"] = np.linalg.norm(ALPHA * np.swapaxes(last, -1, -2) @ last - eye, 2,
                                      axis=(-2, -1)).max(axis=-1)
    # ANIL's and first-order ANIL's steps against the closed form, along their trajectories
    cf, fo = [], []
    for i in range(S):
        C = theory.task_moment(betas[i, 0])
        Pp = np.asarray(theory.projector_complement(Bs[i]))
        prev = np.concatenate([Bm[i, 0, :-1], Bm[i, 2, :-1]])
        nxt = np.concatenate([Bm[i, 0, 1:], Bm[i, 2, 1:]])
        pred = np.asarray(theory.anil_wrong_subspace_update(prev, Bs[i], C, ALPHA, BETA))
        gap = (np.linalg.norm(Pp @ nxt - pred, axis=(1, 2)) / np.linalg.norm(prev, axis=(1, 2)))
        cf.append(gap[:steps].max())
        fo.append(gap[steps:].max())
    out["closed_form_gap"], out["fo_closed_form_gap"] = np.asarray(cf), np.asarray(fo)
    out["maml_step_gap"] = np.asarray(loop["maml_step_gap"])
    out["maml_step_w0"] = np.asarray(loop["maml_step_w0"])
    out["maml_sym_gap"] = np.abs(Bm[:, 3] - Bm[:, 0]).max(axis=(1, 2, 3))
    out["maml_gauss_gap"] = np.abs(B_meta[:, 4] - B_meta[:, 1]).max(axis=(1, 2))
    out["maml_fixed_gap"] = np.abs(Bm[:, 5] - Bm[:, 1]).max(axis=(1, 2, 3))
    out["maml_sym_w0"] = np.linalg.norm(w_meta[:, 3], axis=1)
    out["maml_gauss_w0"] = np.linalg.norm(w_meta[:, 4], axis=1)
    A0 = INIT_SCALE / math.sqrt(ALPHA) * np.asarray(B0)
    g_cf = np.asarray([theory.maml_head_init_gradient(A0[i], betas[i, 1], ALPHA)
                       for i in range(S)])
    out["maml_grad_rel"] = (np.linalg.norm(np.asarray(loop["maml_grad"]) - g_cf, axis=1)
                            / np.linalg.norm(g_cf, axis=1))
    # subspace distances: one batched call of the core's metric for every trajectory and end point
    pca = np.stack([np.stack([np.asarray(theory.pca_subspace(betas[i, j], k)[0])
                              for j in range(3)]) for i in range(S)])  # (S, 3, d, k)
    Bsn = np.asarray(Bs)
    ne = len(ETA_EDGE)
    trajs = np.concatenate([np.asarray(loop["traj_rep"])[:, :4], Bm[:, [0, 1, 2, 6]],
                            np.asarray(loop["traj_rep"])[:, -ne:], Bm[:, [7, 8]]], axis=1)
    refs = np.concatenate([Bsn[:, None], pca, np.repeat(Bsn[:, None], 6 + ne, axis=1)], axis=1)
    B_rep = np.asarray(loop["B_rep"])
    ends = np.concatenate([B_meta[:, [3, 4]], B_rep[:, 4:4 + nl]], axis=1)
    end_refs = np.concatenate([np.repeat(Bsn[:, None], 2, axis=1),
                               np.repeat(B_rep[:, 3:4], nl, axis=1)], axis=1)
    n_tr = trajs.shape[1]
    n_t = n_tr * (steps + 1)
    allB = np.concatenate([trajs.reshape(S, -1, d, k), ends], axis=1)
    allR = np.concatenate([np.repeat(refs, steps + 1, axis=1), end_refs], axis=1)
    dist = np.asarray(metrics.subspace_distance(allB.reshape(-1, d, k),
                                                allR.reshape(-1, d, k))).reshape(S, -1)
    dist_t = dist[:, :n_t].reshape(S, n_tr, steps + 1)
    dist_e = dist[:, n_t:]
    out["fedrep_traj"], out["r1_traj"] = dist_t[:, 0], dist_t[:, 1:4]
    out["anil_traj"], out["anil_gauss_traj"] = dist_t[:, 4], dist_t[:, 5]
    out["fo_traj"], out["avg_traj"] = dist_t[:, 6], dist_t[:, 7]
    out["fedrep_edge_traj"] = dist_t[:, 8:8 + ne]                 # (S, len(ETA_EDGE), steps + 1)
    out["edge_anil_traj"], out["edge_fo_traj"] = dist_t[:, 8 + ne], dist_t[:, 9 + ne]
    out["maml_sym_dist"], out["maml_gauss_dist"] = dist_e[:, 0], dist_e[:, 1]
    out["adapt_vs_frozen"] = dist_e[:, 2:]
    return out


@functools.lru_cache(maxsize=4)
def population_runs(setting: str, seed: int):
    """NumPy arrays for every seed of ``setting`` (cached: R1, R3, R5, R6 read the same run).

    Three phases per seed: the instances (eager), every iterative run (one compiled program over
    all seeds, no LAPACK call), the distances and closed forms (eager). Eager evaluation runs the
    LAPACK calls one at a time: concurrent batched LAPACK calls inside one compiled program were
    seen to hang XLA:CPU (jax 0.10)."""
    cfg = SETTINGS[setting]
    sizes = dict(d=cfg["d"], k=cfg["k"], T=cfg["T"])
    keys = jax.random.split(key_for(seed, STREAM), cfg["seeds"])
    insts = [_instances(kk, **sizes) for kk in keys]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *insts)
    loops = jax.jit(lambda i: jax.lax.map(functools.partial(_loops, steps=cfg["steps"],
                                                            **sizes), i))(stacked)
    return _measures(stacked, loops, steps=cfg["steps"], **sizes)
