"""The population computations behind claims R1 (FrozenRep = PCA), R3 (ANIL, first-order ANIL,
one-step MAML, average loss), R5 (FedRep) and R6 (AdaptRep as lambda -> infinity): one compiled
program per (setting, seed), shared by the four claims (:func:`population_runs`, cached).

Per seed, from one Gaussian draw: a Haar ``B*`` (d x k), a task diversity
``Sigma = Q diag(0.3 .. 1) Q^T`` (``lambda_min = 0.3``), and three source-task sets in the
population (noise 0.1): balanced heads (second moment exactly Sigma, odd moments zero),
i.i.d. Gaussian heads ``N(0, Sigma)``, and the Gaussian heads with perturbed representations
(``Delta*_t`` entries ``N(0, 0.3^2 / d)``). One random orthonormal start ``B0``. Then:

- alternating minimisation (FrozenRep's and FedRep's iteration) on the four runs (balanced heads,
  step ``eta``: FedRep; the three sets, step ``1 / lambda_1(C)``: FrozenRep);
- ANIL from ``B0 * 0.5 / sqrt(alpha)``, w0 = 0, on balanced (beta 0.4) and Gaussian heads
  (beta 0.2); first-order ANIL
  on balanced heads; one-step MAML with w0 learned (balanced and Gaussian heads) and fixed at 0
  (Gaussian heads); average-loss training (balanced heads, mean zero);
- every ANIL and first-order-ANIL step against the closed form of the wrong-subspace update;
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

from linmeta import metrics
from linmeta import representation as rep
from linmeta.representation import methods, theory
from linmeta.representation.tasks import population_from_betas
from linmeta.retrain import run_steps
from linmeta.representation.truth import _balanced_from, _qr_haar

from ._support import key_for

SETTINGS = {
    "tiny": dict(d=5, k=2, T=4, seeds=5, steps=400),
    "quick": dict(d=6, k=2, T=8, seeds=5, steps=400),
    "full": dict(d=16, k=3, T=24, seeds=16, steps=600),
}
# ANIL's scale dynamics contract with 1 - 2 alpha beta (lambda_i + lambda_j)
# (docs/representation.md#r3), stable while alpha beta lambda_max(Sigma_hat) < 1/2: beta = BETA on
# balanced heads (lambda_max = 1), BETA_GAUSS on Gaussian heads (lambda_max random, about 2 at most)
ALPHA, BETA, BETA_GAUSS, ETA, INIT_SCALE, AVG_LR, LAMBDA_MIN = 1.0, 0.4, 0.2, 0.5, 0.5, 0.2, 0.3
NOISE_STD, DELTA_SCALE, GAMMA = 0.1, 0.3, 0.01
LAMBDAS = (1e2, 1e4, 1e6)
GAP_LAMBDAS = (1e2, 1e3, 1e4, 1e5, 1e6)
INNER_STEPS = 2
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


def _one_seed(key, *, d, k, T, steps):
    z = _draw(key, d, k, T)
    Bs = _qr_haar(z["B"])
    Q = _qr_haar(z["Q"])
    Sigma = (Q * jnp.linspace(LAMBDA_MIN, 1.0, k)) @ Q.T
    Wb = _balanced_from(z["G0"], Sigma)
    Wg = z["Wg"] @ jnp.linalg.cholesky(Sigma).T
    Delta = DELTA_SCALE / math.sqrt(d) * z["D"]
    betas = jnp.stack([Wb @ Bs.T, Wg @ Bs.T, jnp.einsum("tdk,tk->td", Bs + Delta, Wg)])
    stats = jax.vmap(lambda b: population_from_betas(b, NOISE_STD))(betas)  # 3 kinds
    sb, sg, sp = (jax.tree.map(lambda x, i=i: x[i], stats) for i in range(3))
    B0 = _qr_haar(z["B0"])
    A0 = INIT_SCALE / math.sqrt(ALPHA) * B0
    w0 = jnp.zeros((k,))
    out = {}

    # FrozenRep, FedRep and AdaptRep: lanes of one vmapped loop of AdaptRep's step (lam = inf for
    # FrozenRep and FedRep). Lanes: FedRep (balanced, eta); FrozenRep on the three kinds (step
    # 1 / lambda_1(C)); AdaptRep on the perturbed tasks, lam in LAMBDAS; and AdaptRep's inner
    # problem at the fixed B0 (step 0) on the perturbed tasks, lam in (inf,) + GAP_LAMBDAS.
    lam_C = jax.vmap(lambda b: jnp.linalg.eigvalsh(b.T @ b / T))(betas)  # increasing
    nl, ng = len(LAMBDAS), len(GAP_LAMBDAS) + 1
    lane_kind = jnp.asarray([0, 0, 1, 2] + [2] * (nl + ng))
    lane_stats = jax.tree.map(lambda x: x[lane_kind], stats)
    lane_lr = jnp.concatenate([jnp.asarray([ETA]), 1.0 / lam_C[:, -1],
                               jnp.full((nl,), 1.0 / lam_C[2, -1]), jnp.zeros((ng,))])
    lane_lam = jnp.asarray([jnp.inf] * 4 + list(LAMBDAS) + [jnp.inf] + list(GAP_LAMBDAS))
    lane_gamma = jnp.asarray([0.0] * 4 + [GAMMA] * (nl + ng))

    def rep_lane(st, lr, lam, g):
        s0 = (B0, jnp.zeros((T, d, k)), methods.frozen_heads(B0, st, g))
        (B, D, w), hist = run_steps(
            lambda c: methods.adaptrep_step(c[0], c[1], c[2], st, lr, lam, g, INNER_STEPS), s0,
            steps, 1, lambda c: c[0])
        return B, methods.adaptrep_objective(B, D, w, st, lam, g), hist.value

    B_rep, obj_rep, traj_rep = jax.vmap(rep_lane)(lane_stats, lane_lr, lane_lam, lane_gamma)
    pca = jax.vmap(lambda b: theory.pca_subspace(b, k)[0])(betas)
    want = 0.5 * jnp.sum(lam_C[:, :-k], axis=1) + NOISE_STD ** 2 / 2
    out["r1_obj_rel"] = jnp.abs(obj_rep[1:4] - want) / want
    out["r1_rate"] = 1 - (lam_C[:, -k] - lam_C[:, -k - 1]) / lam_C[:, -1]
    gap_obj = obj_rep[4 + nl:]
    out["gap_scaled"] = jnp.asarray(GAP_LAMBDAS) * (gap_obj[0] - gap_obj[1:])
    out["gap_limit"] = theory.adaptrep_gap_limit(B0, betas[2], GAMMA)
    out["gap_B_moved"] = jnp.max(jnp.abs(B_rep[4 + nl:] - B0))  # step 0: B stays at B0

    # ANIL, first-order ANIL, one-step MAML, average loss: lanes of one vmapped loop of
    # meta_step (its flags). Lanes: ANIL (balanced), ANIL (Gaussian), first-order ANIL
    # (balanced), MAML w0 learned (balanced), MAML w0 learned (Gaussian), MAML w0 fixed
    # (Gaussian), average loss (balanced).
    meta_kind = jnp.asarray([0, 1, 0, 0, 1, 1, 0])
    meta_stats = jax.tree.map(lambda x: x[meta_kind], stats)
    flags = jnp.asarray([[0, 0, 0], [0, 0, 0], [0, 0, 1], [1, 1, 0], [1, 1, 0], [1, 0, 0],
                         [0, 1, 0]], float)  # inner_on_rep, learn_head_init, first_order
    alphas = jnp.asarray([ALPHA] * 6 + [0.0])
    betas_ = jnp.asarray([BETA, BETA_GAUSS, BETA, BETA, BETA_GAUSS, BETA_GAUSS, AVG_LR])
    starts = jnp.stack([A0] * 6 + [B0])
    heads0 = jnp.stack([w0] * 6 + [jnp.ones((k,)) / math.sqrt(k)])

    def meta_lane(st, b0, h0, a, be, f):
        (B, w), hist = run_steps(
            lambda c: methods.meta_step(c[0], c[1], st, a, be, f[0], f[1], f[2]), (b0, h0), steps,
            1, lambda c: c[0])
        return B, w, hist.value

    B_meta, w_meta, Bm = jax.vmap(meta_lane)(meta_stats, starts, heads0, alphas, betas_, flags)
    eye = jnp.eye(k)
    out["lambda_min"] = jnp.linalg.eigvalsh(Wb.T @ Wb / T)[0]
    out["anil_gram"] = jnp.linalg.norm(ALPHA * B_meta[0].T @ B_meta[0] - eye, 2)
    out["fo_gram"] = jnp.linalg.norm(ALPHA * B_meta[2].T @ B_meta[2] - eye, 2)
    # ANIL's and first-order ANIL's steps against the closed form, along their trajectories
    C = theory.task_moment(betas[0])
    Pp = theory.projector_complement(Bs)
    prev = jnp.concatenate([Bm[0, :-1], Bm[2, :-1]])
    nxt = jnp.concatenate([Bm[0, 1:], Bm[2, 1:]])
    pred = jax.vmap(lambda B: theory.anil_wrong_subspace_update(B, Bs, C, ALPHA, BETA))(prev)
    gap = (jnp.linalg.norm(jnp.einsum("de,nek->ndk", Pp, nxt) - pred, axis=(1, 2))
           / jnp.linalg.norm(prev, axis=(1, 2)))
    out["closed_form_gap"], out["fo_closed_form_gap"] = jnp.max(gap[:steps]), jnp.max(gap[steps:])
    out["maml_sym_gap"] = jnp.max(jnp.abs(Bm[3] - Bm[0]))
    out["maml_gauss_gap"] = jnp.max(jnp.abs(B_meta[4] - B_meta[1]))
    out["maml_fixed_gap"] = jnp.max(jnp.abs(Bm[5] - Bm[1]))
    out["maml_sym_w0"] = jnp.linalg.norm(w_meta[3])
    out["maml_gauss_w0"] = jnp.linalg.norm(w_meta[4])
    g_auto = jax.grad(methods.maml_objective, argnums=1)(A0, w0, sg, ALPHA)
    g_cf = theory.maml_head_init_gradient(A0, betas[1], ALPHA)
    out["maml_grad_rel"] = jnp.linalg.norm(g_auto - g_cf) / jnp.linalg.norm(g_cf)

    # subspace distances: one vmapped call for every trajectory and end point
    trajs = jnp.concatenate([traj_rep[:4], Bm[jnp.asarray([0, 1, 2, 6])]])  # (8, steps+1, d, k)
    refs = jnp.stack([Bs, pca[0], pca[1], pca[2], Bs, Bs, Bs, Bs])
    ends = jnp.concatenate([B_meta[jnp.asarray([3, 4])], B_rep[4:4 + nl]])
    end_refs = jnp.concatenate([jnp.stack([Bs, Bs]), jnp.broadcast_to(B_rep[3], (nl, d, k))])
    allB = jnp.concatenate([trajs.reshape(-1, d, k), ends])
    allR = jnp.concatenate([jnp.repeat(refs, steps + 1, axis=0), end_refs])
    dist = jax.vmap(metrics.subspace_distance)(allB, allR)
    dist_t = dist[:8 * (steps + 1)].reshape(8, steps + 1)
    dist_e = dist[8 * (steps + 1):]
    out["fedrep_traj"], out["r1_traj"] = dist_t[0], dist_t[1:4]
    out["anil_traj"], out["anil_gauss_traj"], out["fo_traj"], out["avg_traj"] = dist_t[4:8]
    out["maml_sym_dist"], out["maml_gauss_dist"] = dist_e[0], dist_e[1]
    out["adapt_vs_frozen"] = dist_e[2:]
    return out


@functools.lru_cache(maxsize=4)
def population_runs(setting: str, seed: int):
    """NumPy arrays of :func:`_one_seed` for every seed of ``setting`` (cached: R1, R3, R5, R6
    read the same run)."""
    cfg = SETTINGS[setting]
    one = functools.partial(_one_seed, d=cfg["d"], k=cfg["k"], T=cfg["T"], steps=cfg["steps"])
    keys = jax.random.split(key_for(seed, STREAM), cfg["seeds"])
    out = jax.jit(lambda ks: jax.lax.map(one, ks))(keys)
    return {n: np.asarray(v) for n, v in out.items()}
