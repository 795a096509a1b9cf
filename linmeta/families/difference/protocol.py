"""The difference family's sweep protocol ``"difference"`` (docs/difference.md), registered with
:mod:`linmeta.engine.protocols` when :mod:`linmeta.families.difference` is imported, so that
``linmeta run --protocol difference`` and ``linmeta sweep`` reach it by name.

One configuration (flat keys, :data:`DEFAULTS`):

1. Truth (drawn once per ``truth_keys`` on the host, :func:`truth_for`): ``truth="structured"``,
   ``M*_t = A* + U* diag(s*_t) V*^T`` with r directions (``directions``: ``"gaussian"`` or
   ``"orthonormal"``), or ``truth="paper"``, ``A* + U*_t U*_t^T`` with rank-k adapters (the
   misspecified case); ``n_unseen`` unseen tasks. Passed to the program as
   :class:`ProtocolTruth` (task matrices, unseen matrices, ``A*`` and the true difference space,
   NaN for the paper's truth).
2. Retraining statistics: the population (``n = "inf"`` or 0) or n samples per task with noise
   ``noise_std`` (traced).
3. Retraining: the joint fit of rank ``r`` (:func:`~.methods.joint_fit_starts`, ``n_starts``
   Levenberg-Marquardt starts of ``lm_steps`` iterations, the best kept) and the principal
   components of the centred tasks (:func:`~.methods.difference_svd`).
4. Fine-tuning each unseen task on ``m`` samples with noise ``target_noise_std`` (traced):
   coefficients only after the joint fit and after the principal components, rank-r LoRA from the
   joint fit's base, full least squares; risks ``||M_hat - M*_new||_F^2`` (mean over unseen
   tasks) beside the first-order forms ``sigma^2 r/m``, ``sigma^2 r(2d-r)/m``,
   ``sigma^2 d^2/(m-d-1)``.

Result columns: :data:`RESULT_KEYS`; trajectory ``joint_objective_traj`` (the best start's
objective per Levenberg-Marquardt iteration). Stage for divergence: ``joint`` (non-finite or a
1000-fold rise of that trace; the solver takes only decreasing steps, so it flags non-finite
statistics). The program calls LAPACK (QR, SVD, solves): batches run on one CPU device.

Example::

    from linmeta.engine import sweep
    cfgs = sweep.expand_grid({"fixed": {"protocol": "difference", "T": 3, "m": 20},
                              "grid": {"noise_std": [0.1, 0.5]}, "seeds": 2})
    for cfg, res in zip(cfgs, sweep.run_sweep(cfgs)):    # one compile
        print(cfg["noise_std"], res["subspace_gap"], res["ft_coef_risk"])
"""
from __future__ import annotations

import threading
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from linmeta.engine import protocols
from linmeta.core.data import Samples, TaskStats, task_statistics
from linmeta.methods.finetune import reduced_rank_fit
from linmeta.core.losses import ols_solution
from linmeta.core.problem import sample_truth

from . import methods, theory
from .truth import difference_space, sample_difference_truth, task_matrices, unseen_matrices

__all__ = ["NAME", "DEFAULTS", "RESULT_KEYS", "PROTOCOL", "ProtocolTruth", "Hyper", "Shape",
           "Record", "run_protocol", "truth_for", "register"]

NAME = "difference"

DEFAULTS: dict[str, Any] = {
    "d": 6, "r": 2, "T": 4, "n_unseen": 4,
    "truth": "structured", "directions": "gaussian", "k": 1,
    "n": "inf", "m": 20,
    "noise_std": 0.5, "target_noise_std": 0.5,
    "n_starts": 4, "lm_steps": 100,
    "seed": 0, "truth_seed": 0,
}

_C = protocols.Check
CHECKS = {
    "d": _C("int", 1), "r": _C("int", 1, "d"), "T": _C("int", 1), "n_unseen": _C("int", 1),
    "truth": _C("choice", choices=("structured", "paper")),
    "directions": _C("choice", choices=("gaussian", "orthonormal")), "k": _C("int", 1, "d"),
    "n": _C("count"), "m": _C("int", 1), "noise_std": _C("float", 0.0),
    "target_noise_std": _C("float", 0.0), "n_starts": _C("int", 1), "lm_steps": _C("int", 1),
}

HELP = {
    "r": "number of shared directions (the truth's and the fit's)",
    "truth": "'structured' (A* + U* diag(s_t) V*^T) or 'paper' (A* + U_t U_t^T, rank k)",
    "n": "retraining samples per task (an integer >= 1, or 0 / 'inf' for the population)",
    "m": "fine-tuning samples per unseen task",
    "lm_steps": "Levenberg-Marquardt iterations per start of the joint fit",
}


class ProtocolTruth(NamedTuple):
    """The arrays a run needs: ``M_star`` (T, d, d), ``M_new`` (n_unseen, d, d), ``A_star``
    (d, d), ``B_star`` (r, d, d) an orthonormal basis of ``L*`` (NaN for the paper's truth)."""

    M_star: jax.Array
    M_new: jax.Array
    A_star: jax.Array
    B_star: jax.Array


class Hyper(NamedTuple):
    noise_std: jax.Array
    target_noise_std: jax.Array


class Shape(NamedTuple):
    d: int
    r: int
    T: int
    n_unseen: int
    n: Any
    m: int
    n_starts: int
    lm_steps: int


class Record(NamedTuple):
    joint_objective: jax.Array
    subspace_gap: jax.Array
    base_gap: jax.Array
    pca_gap: jax.Array
    ft_coef_risk: jax.Array
    ft_pca_risk: jax.Array
    ft_lora_risk: jax.Array
    ft_full_risk: jax.Array
    pred_coef_risk: jax.Array
    pred_lora_risk: jax.Array
    pred_full_risk: jax.Array
    joint_objective_traj: jax.Array


RESULT_KEYS = tuple(f for f in Record._fields if not f.endswith("_traj"))


def _stats(key, M, N, sig):
    """Population (N None) or N-sample statistics of the task matrices M (jit-safe)."""
    T, d = M.shape[0], M.shape[-1]
    if N is None:
        eye = jnp.broadcast_to(jnp.eye(d, dtype=M.dtype), M.shape)
        return TaskStats(eye, M, jnp.sum(M * M, axis=(-2, -1)) + d * sig ** 2,
                         jnp.full((T,), jnp.inf, M.dtype), M, jnp.full((T,), sig))
    kx, ke = jax.random.split(key)
    X = jax.random.normal(kx, (T, N, d), M.dtype)
    Y = X @ jnp.swapaxes(M, -1, -2) + sig * jax.random.normal(ke, (T, N, d), M.dtype)
    return task_statistics(Samples(X, Y, M, jnp.full((T,), sig)))


def run_protocol(truth: ProtocolTruth, keys, hyper: Hyper, shape: Shape) -> Record:
    """One configuration (module docstring); jit/vmap-able with ``shape`` static."""
    N = None if shape.n == "inf" else int(shape.n)
    src = _stats(keys.retrain, truth.M_star, N, hyper.noise_std)
    U, V, f, traces = methods.joint_fit_starts(src, keys.init, rank=shape.r,
                                               n_starts=shape.n_starts, max_iter=shape.lm_steps,
                                               population=N is None)
    best = jnp.argmin(jnp.where(jnp.isfinite(f), f, jnp.inf))
    B = methods.rank_one_basis(U[best], V[best])
    base, _ = methods.inner_solution(B, src, N is None)
    pca = methods._svd_kernel(src, rank=shape.r, kind="pca")
    tgt = _stats(keys.finetune, truth.M_new, shape.m, hyper.target_noise_std)

    def risk(M):
        return jnp.mean(methods.population_risk(M, truth.M_new))

    Ul, Vl = reduced_rank_fit(base, tgt, shape.r)
    has_truth = jnp.all(jnp.isfinite(truth.B_star))
    nan = jnp.asarray(jnp.nan, base.dtype)
    d, r, m = shape.d, shape.r, shape.m
    sig2 = hyper.target_noise_std ** 2
    return Record(
        joint_objective=f[best],
        subspace_gap=jnp.where(has_truth, methods.subspace_gap(B, truth.B_star), nan),
        base_gap=jnp.where(has_truth, theory.base_gap(base, truth.A_star, truth.B_star)
                           / jnp.linalg.norm(truth.A_star), nan),
        pca_gap=jnp.where(has_truth, methods.subspace_gap(pca.basis, truth.B_star), nan),
        ft_coef_risk=risk(methods.finetune_coefficients(base, B, tgt)),
        ft_pca_risk=risk(methods.finetune_coefficients(pca.base, pca.basis, tgt)),
        ft_lora_risk=risk(base + Ul @ jnp.swapaxes(Vl, -1, -2)),
        ft_full_risk=risk(ols_solution(tgt)),
        pred_coef_risk=sig2 * r / m,
        pred_lora_risk=sig2 * r * (2 * d - r) / m,
        pred_full_risk=sig2 * d * d / (m - d - 1) if m > d + 1 else jnp.inf + 0 * sig2,
        joint_objective_traj=traces[best])


_TRUTH_LOCK = threading.Lock()


def truth_for(cfg: Mapping, dtype=None) -> ProtocolTruth:
    """The :class:`ProtocolTruth` of a configuration (drawn from ``truth_seed``)."""
    cfg = protocols._generic_validate(PROTOCOL, {k: v for k, v in cfg.items() if k != "protocol"})
    dt = jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64)) if dtype is None else dtype
    key = jax.random.key(cfg["truth_seed"])
    d, r = cfg["d"], cfg["r"]
    with _TRUTH_LOCK:
        if cfg["truth"] == "paper":
            t = sample_truth(key, d, cfg["k"], cfg["T"], n_unseen=cfg["n_unseen"], dtype=dt)
            B = jnp.full((r, d, d), jnp.nan, dt)
            return ProtocolTruth(t.M_star, t.M_new, t.A_star, B)
        t = sample_difference_truth(key, d, r, cfg["T"], n_unseen=cfg["n_unseen"],
                                    directions=cfg["directions"], dtype=dt)
        return ProtocolTruth(task_matrices(t), unseen_matrices(t), t.A_star,
                             difference_space(t.U_star, t.V_star))


def _shape(cfg: Mapping) -> Shape:
    return Shape(**{f: cfg[f] for f in Shape._fields})


def _results(cfg: Mapping, batch, record, flags) -> dict:
    res = protocols.record_results(record, flags)
    res["trajectories"]["lm_iterations"] = np.arange(cfg["lm_steps"] + 1)
    return res


STAGES = (protocols.Stage("joint", "joint fit (Levenberg-Marquardt)",
                          fields=("joint_objective_traj",), step_sizes=(),
                          steps=("lm_iterations",)),)

PROTOCOL = protocols.Protocol(
    name=NAME, run=run_protocol, defaults=DEFAULTS, hyper=Hyper, shape=_shape,
    truth=truth_for, truth_keys=("truth_seed", "truth", "d", "r", "k", "T", "n_unseen",
                                 "directions"),
    stages=STAGES, checks=CHECKS, result_keys=RESULT_KEYS,
    description=("the difference protocol (claims D1-D5): joint fit of shared directions and "
                 "per-task coefficients and the principal-component baseline, then "
                 "coefficient-only, rank-r LoRA and full fine-tuning of unseen tasks "
                 "(linmeta.families.difference.protocol)"),
    help=HELP, results=_results, single_device=lambda shape: True)


def register() -> protocols.Protocol:
    """Register :data:`PROTOCOL` (done when :mod:`linmeta.families.difference` is imported)."""
    return protocols.register(PROTOCOL, replace=True)


register()
