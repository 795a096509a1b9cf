"""The shared-representation protocol for one configuration (jit/vmap-able; claims R1-R7).

One run, given a :class:`~linmeta.families.representation.RepTruth` (source tasks and ``n_target`` target
tasks):

1. Source statistics: population (``Shape.n`` None) or n samples per task
   (:func:`linmeta.families.representation.samples_from_betas` on ``keys.source``), noise ``noise_std``.
2. Training, each from the same random orthonormal start (``keys.init``; ANIL's scaled by
   ``init_scale / sqrt(alpha)``): FrozenRep (``frozen_steps`` alternating steps of size
   ``frozen_lr``), FedRep (``fedrep_steps`` steps of size ``eta``), ANIL (``anil_steps`` outer
   steps, ``alpha``/``beta``, w0 = 0), AdaptRep (``adapt_steps`` outer steps, ``adapt_inner``
   inner updates, ``adapt_lr``, ``lam``/``gamma``; ``n_starts`` starts, the first the common one,
   best objective kept). The updates are :mod:`linmeta.families.representation.methods`' step functions
   driven by :func:`linmeta.methods.run_steps`: the same numbers as
   :func:`~linmeta.families.representation.frozen_rep`, :func:`~linmeta.families.representation.fedrep`,
   :func:`~linmeta.families.representation.adapt_rep` and :func:`~linmeta.families.representation.anil` with
   those settings (tested). FrozenRep, FedRep and AdaptRep run as lanes of one loop of
   ``max(frozen_steps, fedrep_steps, adapt_steps)`` iterations, a lane with fewer steps holding
   its state; trajectories are recorded every ``record_every`` iterations of that loop.
3. Targets: m fresh samples of each target task (``keys.target``); fine-tuning of FrozenRep's B
   (head only, and head and representation), AdaptRep's B (head and representation, and head
   only), ANIL's B (head only), and least squares from scratch; AdaptRep-style fine-tuning uses
   ``target_lam``/``target_gamma`` and ``target_steps`` updates.
4. Record: subspace distances to B* (sine of the largest principal angle, ``||sin Theta||_F^2``;
   computed without LAPACK by :mod:`linmeta.families.representation._linalg`, equal to
   :func:`linmeta.core.metrics.subspace_distance` and :func:`linmeta.core.metrics.sin_theta_frobenius_sq` up
   to rounding, tested: the protocol calls no LAPACK routine, so it is safe to batch and shard),
   objectives, ``||alpha B^T B - I||_2`` for ANIL, target excess risks (mean over target tasks),
   closed forms beside them (:mod:`linmeta.families.representation.theory`: the frozen floor and the
   frozen target risk of FrozenRep's B, the scratch risk, the late rates: NaN outside their
   domains), divergence flags, and
   the trajectories of the distance (``*_traj``) and of the training objective
   (``*_objective_traj``), recorded at :func:`linmeta.methods.record_steps` of
   ``max(frozen_steps, fedrep_steps, adapt_steps)`` (ANIL: of ``anil_steps``).

The sweep engine reaches this function by name: :mod:`linmeta.families.representation.registry` registers
it as the protocol ``"representation"`` of :mod:`linmeta.engine.protocols`.

Random streams: ``run_keys(seed)`` folds :data:`RUN_STREAM` into ``jax.random.key(seed)`` and
splits it into ``(source, target, init)``.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from linmeta.core.data import task_statistics
from linmeta.core.divergence import divergence_index
from linmeta.methods._common import run_steps
from . import theory
from .methods import (adaptrep_inner, adaptrep_objective, adaptrep_step, anil_objective,
                      frozen_heads, meta_step)
from .target import head_and_representation_fit, head_only_fit, scratch_fit, target_excess_risk
from .tasks import population_from_betas, samples_from_betas
from ._linalg import lambda_max_psd, orthonormalise, sin_theta_fro2, sin_theta_max
from .truth import RepTruth
from linmeta.core._validate import check_int

__all__ = ["Shape", "Hyper", "RunKeys", "Outcome", "RUN_STREAM", "run_keys", "default_hyper",
           "check_shape", "check_hyper", "run_protocol", "METHODS"]

RUN_STREAM = 0x4E7  # folded into the run key (keeps seed == truth seed from reusing a stream)
METHODS = ("frozen_rep", "fedrep", "anil", "adapt_rep")


class Shape(NamedTuple):
    """Static part of a configuration (sizes and loop lengths); ``n`` None = population source."""

    d: int
    k: int
    T: int
    n: int | None
    m: int
    n_target: int
    frozen_steps: int = 300
    fedrep_steps: int = 300
    anil_steps: int = 600
    adapt_steps: int = 600
    adapt_inner: int = 5
    n_starts: int = 1
    target_steps: int = 50
    record_every: int = 10


class Hyper(NamedTuple):
    """Traced part of a configuration (arrays; one value per run when batched)."""

    noise_std: jax.Array
    frozen_lr: jax.Array
    eta: jax.Array
    alpha: jax.Array
    beta: jax.Array
    adapt_lr: jax.Array
    lam: jax.Array
    gamma: jax.Array
    target_lam: jax.Array
    target_gamma: jax.Array
    init_scale: jax.Array


def default_hyper(dtype=None, **overrides) -> Hyper:
    """Defaults: noise 0.5, FrozenRep/FedRep/AdaptRep steps 0.5, ANIL alpha 0.5 and beta 0.2,
    AdaptRep lam 0.1, gamma 0.01, target lam 10, gamma 1e-3, ANIL init scale 0.5."""
    dt = jnp.asarray(0.0).dtype if dtype is None else dtype
    vals = dict(noise_std=0.5, frozen_lr=0.5, eta=0.5, alpha=0.5, beta=0.2, adapt_lr=0.5,
                lam=0.1, gamma=0.01, target_lam=10.0, target_gamma=1e-3, init_scale=0.5)
    unknown = set(overrides) - set(vals)
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {', '.join(sorted(unknown))}; allowed: "
                         f"{', '.join(vals)}")
    vals.update(overrides)
    return Hyper(**{k: jnp.asarray(v, dt) for k, v in vals.items()})


def check_shape(shape: Shape) -> Shape:
    """Validate a :class:`Shape` eagerly (ValueError naming the field and its range)."""

    if not isinstance(shape, Shape):
        raise ValueError(f"shape must be a linmeta.representation.protocol.Shape, got "
                         f"{type(shape).__name__}")
    d = check_int("d", shape.d, 1)
    check_int("k", shape.k, 1, d, hi_label="d")
    check_int("T", shape.T, 1)
    if shape.n is not None:
        check_int("n", shape.n, 1)
    check_int("m", shape.m, 1)
    check_int("n_target", shape.n_target, 1)
    for name in ("frozen_steps", "fedrep_steps", "anil_steps", "adapt_steps"):
        check_int(name, getattr(shape, name), 0)
    for name in ("adapt_inner", "n_starts", "target_steps", "record_every"):
        check_int(name, getattr(shape, name), 1)
    return shape


def check_hyper(hyper: Hyper) -> Hyper:
    """Validate concrete hyperparameters (scalars or one value per run): step sizes and lam > 0,
    noise_std, gamma, target_gamma >= 0, all finite."""
    import numpy as np

    for name, value in hyper._asdict().items():
        v = np.asarray(value, dtype=float)
        positive = name not in ("noise_std", "gamma", "target_gamma")
        if not np.all(np.isfinite(v)) or np.any(v < 0) or (positive and np.any(v <= 0)):
            rng = "(0, inf)" if positive else "[0, inf)"
            raise ValueError(f"hyper.{name} must be finite and in {rng}, got {value!r}")
    return hyper


class RunKeys(NamedTuple):
    source: jax.Array
    target: jax.Array
    init: jax.Array


def run_keys(seed) -> RunKeys:
    """The three independent streams of a run: source data, target data, initialisation."""
    return RunKeys(*jax.random.split(jax.random.fold_in(jax.random.key(seed), RUN_STREAM), 3))


class Outcome(NamedTuple):
    """Arrays of one run (see the module docstring). ``*_sin_max``: sine of the largest principal
    angle to B*; ``*_sin_fro2``: ``||sin Theta||_F^2``; ``*_risk``: mean target excess risk."""

    frozen_sin_max: jax.Array
    frozen_sin_fro2: jax.Array
    fedrep_sin_max: jax.Array
    fedrep_sin_fro2: jax.Array
    anil_sin_max: jax.Array
    anil_sin_fro2: jax.Array
    adapt_sin_max: jax.Array
    adapt_sin_fro2: jax.Array
    frozen_objective: jax.Array
    adapt_objective: jax.Array
    anil_objective: jax.Array
    anil_gram_error: jax.Array
    frozen_head_risk: jax.Array
    frozen_finetune_risk: jax.Array
    adapt_finetune_risk: jax.Array
    adapt_head_risk: jax.Array
    anil_head_risk: jax.Array
    scratch_risk: jax.Array
    theory_frozen_floor: jax.Array
    theory_frozen_risk: jax.Array
    theory_scratch_risk: jax.Array
    theory_anil_rate: jax.Array
    theory_fedrep_rate: jax.Array
    frozen_diverged: jax.Array
    fedrep_diverged: jax.Array
    anil_diverged: jax.Array
    adapt_diverged: jax.Array
    frozen_traj: jax.Array
    fedrep_traj: jax.Array
    anil_traj: jax.Array
    adapt_traj: jax.Array
    frozen_objective_traj: jax.Array
    fedrep_objective_traj: jax.Array
    anil_objective_traj: jax.Array
    adapt_objective_traj: jax.Array


def _diverged(B, objective_history):
    """Non-finite end point, or a recorded objective that blew up (:mod:`linmeta.core.divergence`)."""
    return ~jnp.all(jnp.isfinite(B)) | (divergence_index(objective_history) >= 0)


def _lambda_min_psd(M):
    k = M.shape[-1]
    t = jnp.trace(M, axis1=-2, axis2=-1)[..., None, None]
    return t[..., 0, 0] - lambda_max_psd(t * jnp.eye(k, dtype=M.dtype) - M)


def run_protocol(truth: RepTruth, keys: RunKeys, hyper: Hyper, shape: Shape) -> Outcome:
    """One run of the protocol (module docstring); jit- and vmap-able (``shape`` is static).

    FrozenRep, FedRep and the AdaptRep starts are lanes of one vmapped loop of
    :func:`~linmeta.families.representation.methods.adaptrep_step` (``lam = inf`` for the first two), ANIL
    is :func:`~linmeta.families.representation.methods.meta_step`; the target fits are vmapped over the
    representations: one compiled program per shape, every hyperparameter traced."""
    d, k, T, m = shape.d, shape.k, shape.T, shape.m
    Bs = truth.B_star
    dt = Bs.dtype
    betas, betas0 = truth.betas, truth.target_betas
    if shape.n is None:
        src = population_from_betas(betas, hyper.noise_std)
    else:
        src = task_statistics(samples_from_betas(keys.source, betas, shape.n, hyper.noise_std))
    tgt = task_statistics(samples_from_betas(keys.target, betas0, m, hyper.noise_std))
    kinit, kstarts = jax.random.split(keys.init)
    B0 = orthonormalise(jax.random.normal(kinit, (d, k), dt))
    re = shape.record_every
    inf = jnp.asarray(jnp.inf, dt)

    # lanes: FrozenRep, FedRep, AdaptRep x n_starts (the first start is the common B0)
    starts = B0[None]
    if shape.n_starts > 1:
        extra = orthonormalise(jax.random.normal(kstarts, (shape.n_starts - 1, d, k), dt))
        starts = jnp.concatenate([starts, extra])
    lane_B0 = jnp.concatenate([B0[None], B0[None], starts])
    lane_lr = jnp.concatenate([jnp.stack([hyper.frozen_lr, hyper.eta]),
                               jnp.full((shape.n_starts,), hyper.adapt_lr)])
    lane_lam = jnp.concatenate([jnp.stack([inf, inf]), jnp.full((shape.n_starts,), hyper.lam)])
    lane_gamma = jnp.concatenate([jnp.zeros((2,), dt), jnp.full((shape.n_starts,), hyper.gamma)])
    steps = max(shape.frozen_steps, shape.fedrep_steps, shape.adapt_steps)
    lane_steps = jnp.asarray([shape.frozen_steps, shape.fedrep_steps]
                             + [shape.adapt_steps] * shape.n_starts)

    def lane(b0, lr, lam, gamma, n_steps):
        s0 = (b0, jnp.zeros((T, d, k), dt), frozen_heads(b0, src, gamma))

        def step(c):
            s, i = c
            new = adaptrep_step(s[0], s[1], s[2], src, lr, lam, gamma, shape.adapt_inner)
            keep = i < n_steps  # lanes with fewer steps stop (masked)
            return jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, s), i + 1

        def record(c):
            s = c[0]
            return sin_theta_max(s[0], Bs), adaptrep_objective(
                s[0], s[1], s[2], src, lam, gamma)

        (s, _), hist = run_steps(step, (s0, jnp.asarray(0)), steps, re, record)
        D, w = adaptrep_inner(s[0], src, lam, gamma, shape.adapt_inner, s[1], s[2])
        return s[0], adaptrep_objective(s[0], D, w, src, lam, gamma), hist.value

    B_l, obj_l, hist_l = jax.vmap(lane)(lane_B0, lane_lr, lane_lam, lane_gamma, lane_steps)
    B_fr, B_fe = B_l[0], B_l[1]
    obj_ad_all = jnp.where(jnp.isfinite(obj_l[2:]), obj_l[2:], jnp.inf)
    best = 2 + jnp.argmin(obj_ad_all)
    B_ad, obj_ad = B_l[best], obj_l[best]

    # ANIL from w0 = 0
    w0 = jnp.zeros((k,), dt)
    A0 = hyper.init_scale / jnp.sqrt(hyper.alpha) * B0
    (B_an, _), an_hist = run_steps(
        lambda s: meta_step(s[0], s[1], src, hyper.alpha, hyper.beta, 0.0, 0.0, 0.0), (A0, w0),
        shape.anil_steps, re,
        lambda s: (sin_theta_max(s[0], Bs), anil_objective(s[0], src, hyper.alpha, w0)))

    # targets
    def risk(v):
        return jnp.mean(target_excess_risk(v, tgt))

    Bh = jnp.stack([B_fr, B_ad, B_an])
    head = jax.vmap(lambda B: risk(head_only_fit(B, tgt)[0]))(Bh)
    ft = jax.vmap(lambda B: risk(head_and_representation_fit(
        B, tgt, hyper.target_lam, hyper.target_gamma, shape.target_steps)[0]))(Bh[:2])
    scratch = risk(scratch_fit(tgt))

    floor = jnp.mean(theory.frozen_floor(B_fr, betas0))
    nan = jnp.asarray(jnp.nan, dt)
    th_frozen = (jnp.mean(theory.frozen_target_risk(B_fr, betas0, hyper.noise_std, m))
                 if m > k + 1 else nan)
    th_scratch = theory.scratch_risk(d, m, hyper.noise_std) if m > d + 1 else nan
    lam_min = _lambda_min_psd(truth.head_moment)
    lam_max = lambda_max_psd(truth.head_moment)
    ends = jnp.stack([B_fr, B_fe, B_an, B_ad])
    sin_max = jax.vmap(lambda B: sin_theta_max(B, Bs))(ends)
    sin_fro2 = jax.vmap(lambda B: sin_theta_fro2(B, Bs))(ends)
    G = hyper.alpha * B_an.T @ B_an - jnp.eye(k, dtype=dt)
    gram = jnp.sqrt(jnp.maximum(lambda_max_psd(G.T @ G), 0.0))  # ||G||_2 without LAPACK
    return Outcome(
        frozen_sin_max=sin_max[0], frozen_sin_fro2=sin_fro2[0], fedrep_sin_max=sin_max[1],
        fedrep_sin_fro2=sin_fro2[1], anil_sin_max=sin_max[2], anil_sin_fro2=sin_fro2[2],
        adapt_sin_max=sin_max[3], adapt_sin_fro2=sin_fro2[3],
        frozen_objective=obj_l[0], adapt_objective=obj_ad,
        anil_objective=anil_objective(B_an, src, hyper.alpha, w0), anil_gram_error=gram,
        frozen_head_risk=head[0], frozen_finetune_risk=ft[0], adapt_finetune_risk=ft[1],
        adapt_head_risk=head[1], anil_head_risk=head[2], scratch_risk=scratch,
        theory_frozen_floor=floor, theory_frozen_risk=jnp.asarray(th_frozen, dt),
        theory_scratch_risk=jnp.asarray(th_scratch, dt),
        # theory.anil_late_rate and theory.fedrep_late_rate without LAPACK; NaN outside their
        # domains (ANIL's fixed point unstable; FedRep not contracting)
        theory_anil_rate=jnp.where(hyper.alpha * hyper.beta * lam_max < 0.5,
                                   1 - hyper.alpha * hyper.beta * lam_min, nan),
        theory_fedrep_rate=jnp.where(hyper.eta * lam_max < 2,
                                     jnp.maximum(jnp.abs(1 - hyper.eta * lam_min),
                                                 jnp.abs(1 - hyper.eta * lam_max)), nan),
        frozen_diverged=_diverged(B_fr, hist_l[1][0]),
        fedrep_diverged=_diverged(B_fe, hist_l[1][1]),
        anil_diverged=_diverged(B_an, an_hist.value[1]),
        adapt_diverged=_diverged(B_ad, hist_l[1][best]),
        frozen_traj=hist_l[0][0], fedrep_traj=hist_l[0][1], anil_traj=an_hist.value[0],
        adapt_traj=hist_l[0][best], frozen_objective_traj=hist_l[1][0],
        fedrep_objective_traj=hist_l[1][1], anil_objective_traj=an_hist.value[1],
        adapt_objective_traj=hist_l[1][best])
