"""The paper's synthetic linear protocol for one configuration (docs/theory.md, methods and protocol).

One run, as in the paper's code (``jacob-block/peft-ml``, folder ``linear/``):

1. Ground truth ``A*`` (d x d, symmetrised Gaussian), ``U*_t`` (T x d x k) and one unseen task
   ``U_new``: ``linmeta.sample_truth(truth_key(truth_seed), d, k, T, n_unseen=1)``, fixed across
   runs (the runs differ in data and initialisation).
2. Retraining data: N samples per task, ``x ~ N(0, I_d)``, ``y = M*_t x + eps``,
   ``eps ~ N(0, noise_std^2 I)``. The paper's code draws the noise with standard deviation
   ``sigma^2 = 0.01`` (sigma = 0.1); ``noise_std`` is the standard deviation actually used.
   ``N = None`` is the population (``S_xx = I``, ``S_yx = M*_t``).
3. Meta-LoRA (claims C3-C5): the paper's alternating protocol (``outer_steps`` iterations of
   ``inner_steps`` adapter steps with ``lr_adapter`` then one base step with ``lr_base``, from
   ``A = 0``, ``U_t ~ N(0, init_scale^2)``), or ``"newton"`` (global minimiser, 8 starts).
4. Standard retraining (SR): ``sr_steps`` gradient steps of size ``sr_lr`` from ``A = 0``.
5. Fine-tuning (C2, C6): n fresh samples of the unseen task; both bases are fine-tuned with an
   asymmetric rank-``ft_rank`` adapter ``U V^T`` by ``ft_steps`` gradient steps of size ``ft_lr``
   on the *same* n samples. The recorded "test task loss" is the paper's
   ``sum_i ||(M - M*) x_i||^2`` over the n fine-tuning inputs
   (:func:`linmeta.core.losses.paper_test_loss`); the excess risk is the population one,
   ``||M - M*||_F^2``, to compare with ``sigma^2 dof / n`` (C6) and, for SR, with the rank-r
   Eckart-Young bias of ``U_new U_new^T - Rbar`` (C2).

Two variants (``variant=``), which differ only in steps 4 and 5:

- ``"clean"`` (the default, registered as protocol ``"paper"``): SR is gradient descent on
  ``(1/T) sum_t L_t(A)``, ``A <- A - sr_lr (1/T) sum_t (A S_xx,t - S_yx,t)``, converging to pooled
  least squares ``(sum_t S_yx,t)(sum_t S_xx,t)^{-1}`` (claim C1); both bases are fine-tuned from
  the *same* ``U, V ~ N(0, init_scale^2)``, drawn per run.
- ``"paper_code"`` (protocol ``"paper_code"``): what the official code does (``linear/run.py``,
  ``linear/learners.py``). Its SR learner is a ``MetaLearner`` on the pooled data whose T random
  adapters ``U_t ~ N(0, 0.1^2)`` are never trained but enter its gradient
  ``sum_t ((A + U_t U_t^T) X - Y) X^T / (N T)`` over the pooled ``X`` (T N samples). With
  ``Sbar = (1/T) sum_t S_xx,t``, ``Ybar = (1/T) sum_t S_yx,t`` and ``Ubar = (1/T) sum_t U_t U_t^T``
  that step is

      A <- A - sr_lr T [(A + Ubar) Sbar - Ybar],

  T times the clean step and shifted, so SR converges to pooled least squares minus ``Ubar``. The
  Meta-LoRA base is fine-tuned from one start ``start_Us``, ``start_Vs`` drawn once and reused
  across runs (here: from ``truth_seed``, :func:`fixed_start`), the SR base from fresh draws
  (here: the run's ``U, V``). Meta-LoRA retraining and all data are those of the clean variant.

Every step is the update of the core's step functions (:func:`linmeta.methods.alternating_step`,
:func:`linmeta.methods.sr_gradient_step`, :func:`linmeta.methods.finetune.finetune_gd_step`), rearranged
so that what stays fixed over many steps is computed once (exact in exact arithmetic; tests check
equality with :func:`linmeta.meta_lora`, :func:`linmeta.standard_retraining`,
:func:`linmeta.finetune`
and with the NumPy loops of :mod:`linmeta.methods.reference`):

- Meta-LoRA adapter steps, base A fixed: ``G_t = (A + U_t U_t^T) S_t - Y_t = C_t + U_t (U_t^T S_t)``
  with ``C_t = A S_t - Y_t`` formed once per outer iteration: O(d^2 k) per adapter step instead of
  O(d^3).
- SR: ``(1/T) sum_t (A S_t - Y_t) = (A sum_t S_t - sum_t Y_t) / T``: one product per step.
- Fine-tuning, base frozen: ``G = C + U (V^T S)`` with ``C = A S - Y`` formed once.

Products of small matrices inside the loops (contraction length <= :data:`UNROLL`) are written
out as sums of rank-1 terms (:func:`_mm`): XLA:CPU fuses them into one elementwise loop over the
batch, several times faster than a batch of tiny matrix products. The raw data of both streams
are drawn in one pass (:func:`raw_statistics_pair`) by :func:`normal`, ``jax.random.normal``
with the threefry hash unrolled (bit for bit the same numbers).

Padding (for one compiled program across T): ``Hyper.n_tasks`` and ``Hyper.rank`` (traced integers)
may be smaller than ``Shape.T`` and ``Shape.ft_rank``. Tasks ``t >= n_tasks`` get zero statistics,
zero adapters and drop out of every mean (divided by ``n_tasks``); adapter columns ``>= rank`` start
at zero and stay there (their gradient is zero). The random streams are prefix-stable (threefry
draws in JAX's default partitionable mode), so a padded run draws exactly the numbers of the
unpadded one (tested to equality).

The rest of the module: random streams, the least-squares solution behind both excess objectives
computed once without LAPACK (:func:`ols_solution`), and a memory-bounded way to draw the data:

- ``sampler="raw"``: raw Gaussian samples, drawn in blocks of :data:`BLOCK` samples per task and
  reduced to ``(S_xx, S_yx, S_yy)`` inside a ``lax.scan``, so memory is O(BLOCK d) per run, not
  O(N d). :func:`raw_samples` materialises exactly the same samples (for the NumPy reference).
- ``sampler="wishart"``: the statistics drawn directly, exactly in distribution, in O(d^3) per task
  whatever N (needs N >= d). Bartlett: ``X^T X = L L^T`` with L lower triangular,
  ``L_ii = sqrt(chi2(N - i))`` (i = 0..d-1), ``L_ij ~ N(0, 1)`` below the diagonal. Given X, the
  rows of ``E^T X`` are i.i.d. ``N(0, X^T X)``, so ``E^T X = Z L^T`` with Z standard normal (d x d).
  ``||E||_F^2 = ||P_X E||^2 + ||P_perp E||^2 = ||Z||_F^2 + chi2(d (N - d))`` (independent). Hence
  ``N S_xx = L L^T``, ``N S_yx = M L L^T + s Z L^T`` and
  ``N S_yy = <M L L^T, M> + 2 s <Z L^T, M> + s^2 (||Z||_F^2 + chi2(d(N - d)))``.

Random streams (documented so that others can regenerate the same draws): the truth key is
``jax.random.key(truth_seed)``; the run key is ``fold_in(jax.random.key(seed), RUN_STREAM)``, split
into ``(retrain, finetune, init, newton)`` (:func:`run_keys`): the two data streams, the initial
factors (:func:`initial_factors`) and the Newton solver's random starts. Raw block ``b`` of task
``t`` uses ``normal(fold_in(fold_in(key, t), b), (BLOCK, 2, d))`` (x = ``[:, 0]``,
eps = ``[:, 1]``). ``paper_code`` adds the SR adapters, ``init_scale * normal(fold_in(init,
SR_ADAPTER_STREAM), (T d k,))`` reshaped to (T, d, k) (:func:`sr_adapters`), and the fixed
fine-tuning start from ``fold_in(truth key, START_STREAM)`` (:func:`fixed_start`).
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from linmeta.core import losses, metrics
from linmeta.core.data import TaskStats
from linmeta.core.kernels import all_finite as _all_finite, excess_objective, ols_solution, psd_pinv
from linmeta.core.problem import Truth
from linmeta.core.sampling import (BLOCK, RUN_STREAM, RunKeys, normal, raw_samples, raw_statistics,
                                   raw_statistics_pair, run_keys, task_statistics, truth_for_seed,
                                   truth_key, wishart_statistics, take_prefix as _take_prefix)
from linmeta.core.lora import adapter_dof
from linmeta.engine import protocols
from linmeta.engine.protocols import MAX_CHUNK, SAMPLE_BYTES, SUB_BATCH, TRAIN_BYTES
from linmeta.methods import meta_lora, record_steps
from .records import PAPER_DEFAULTS
from . import records as _records
from .methods import finetune_both, meta_lora_alternating, sr_retraining
from .theory import sr_bias_host, theory_sr_bias


def _T(x):
    return jnp.swapaxes(x, -1, -2)

__all__ = ["Shape", "Hyper", "RunKeys", "Outcome", "RUN_STREAM", "SR_ADAPTER_STREAM",
           "START_STREAM", "BLOCK", "VARIANTS", "truth_key", "truth_for_seed", "run_keys",
           "code_keys", "raw_samples", "raw_statistics", "raw_statistics_pair",
           "wishart_statistics", "task_statistics",
           "initial_factors", "sr_adapters", "fixed_start", "theory_sr_bias", "run_protocol",
           "meta_lora_alternating", "sr_retraining", "finetune_both", "psd_pinv", "ols_solution",
           "excess_objective", "resolve_ft_rank"]

SR_ADAPTER_STREAM = 0x5A    # folded into the init key: paper_code's untrained SR adapters
START_STREAM = 0x57A7       # folded into the truth key: paper_code's fixed fine-tuning start
VARIANTS = ("clean", "paper_code")


class Shape(NamedTuple):
    """The static part of a configuration: everything that sets array shapes or loop lengths.

    ``N``/``n`` are ``None`` for the population. ``m`` is the number of unseen tasks fine-tuned.
    ``T`` and ``ft_rank`` are the sizes of the program; a run may use fewer (``Hyper.n_tasks``,
    ``Hyper.rank``).
    """

    d: int
    k: int
    T: int
    N: int | None
    n: int | None
    m: int
    ft_rank: int
    ml_solver: str
    outer_steps: int
    inner_steps: int
    sr_steps: int
    ft_steps: int
    record_every: int
    sampler: str


class Hyper(NamedTuple):
    """The traced part of a configuration (arrays; one value per run when batched).

    ``n_tasks``/``rank``: tasks and fine-tuning rank this run uses when the program is padded to
    ``Shape.T``/``Shape.ft_rank`` (integers; ``None``: all of them).
    """

    noise_std: jax.Array
    lr_adapter: jax.Array
    lr_base: jax.Array
    sr_lr: jax.Array
    ft_lr: jax.Array
    init_scale: jax.Array
    n_tasks: Any = None
    rank: Any = None


class Outcome(NamedTuple):
    """Arrays of one run (scalars and strided trajectories; see :func:`run_protocol`).

    The ``*_diverged`` flags here say that a stage's state or record is not finite; the sweep adds
    the blow-up test of :mod:`linmeta.core.divergence` on the trajectories."""

    ml_base_error: jax.Array
    ml_base_rel_error: jax.Array
    sr_base_error: jax.Array
    sr_base_rel_error: jax.Array
    ml_objective: jax.Array
    sr_objective: jax.Array
    ml_ft_test_loss: jax.Array
    sr_ft_test_loss: jax.Array
    ml_ft_excess_risk: jax.Array
    sr_ft_excess_risk: jax.Array
    theory_sr_bias: jax.Array
    ml_diverged: jax.Array
    sr_diverged: jax.Array
    ft_diverged: jax.Array
    ml_objective_traj: jax.Array   # (n_outer_records,) or Newton iterations
    sr_objective_traj: jax.Array   # (n_sr_records,)
    ml_ft_traj: jax.Array          # (n_ft_records,) paper test loss, mean over unseen tasks
    sr_ft_traj: jax.Array


def resolve_ft_rank(ft_rank: int, k: int, T: int, d: int) -> int:
    """``ft_rank`` if positive, else k (``min(3k, d)`` when T == 2, as the paper; claim C4)."""
    if ft_rank > 0:
        return ft_rank
    return min(3 * k, d) if T == 2 else k


# --------------------------------------------------------------------------------------------
# Random streams
# --------------------------------------------------------------------------------------------

def code_keys(seed, truth_seed) -> RunKeys:
    """:func:`run_keys` plus ``start``, the key of ``paper_code``'s fixed fine-tuning start: a
    function of ``truth_seed`` only, so every run of a truth starts Meta-LoRA's fine-tuning from
    the same factors (as the official code's ``start_Us``/``start_Vs``)."""
    return run_keys(seed)._replace(start=jax.random.fold_in(truth_key(truth_seed), START_STREAM))


def initial_factors(keys: RunKeys, shape, init_scale, dtype, n_tasks=None, rank=None):
    """``U0`` (T, d, k) of Meta-LoRA and the shared fine-tuning factors ``(U, V)``
    (m, d, ft_rank), all i.i.d. ``N(0, init_scale^2)``: one draw ``normal(keys.init, (L,))``
    cut in that order (one random-number kernel instead of three).

    With ``n_tasks``/``rank`` (traced, at most ``shape.T``/``shape.ft_rank``) the factors of that
    smaller run, zero-padded to the shape's sizes: the same numbers (the draw is prefix-stable)."""
    d, k, T, m, r = shape.d, shape.k, shape.T, shape.m, shape.ft_rank
    sizes = (T * d * k, m * d * r, m * d * r)
    z = jax.random.normal(keys.init, (sum(sizes),), dtype) * init_scale
    if n_tasks is None and rank is None:
        U0 = z[:sizes[0]].reshape(T, d, k)
        Uf = z[sizes[0]:sizes[0] + sizes[1]].reshape(m, d, r)
        Vf = z[sizes[0] + sizes[1]:].reshape(m, d, r)
        return U0, Uf, Vf
    n_tasks = T if n_tasks is None else n_tasks
    rank = r if rank is None else rank
    U0 = z[:sizes[0]].reshape(T, d, k) * (jnp.arange(T) < n_tasks)[:, None, None]
    off = n_tasks * d * k
    Uf = _take_prefix(z, off, d, r, rank, m)
    Vf = _take_prefix(z, off + m * d * rank, d, r, rank, m)
    return U0, Uf, Vf


def sr_adapters(keys: RunKeys, shape, init_scale, dtype, n_tasks=None):
    """``paper_code``'s untrained SR adapters ``U_t`` (T, d, k), i.i.d. ``N(0, init_scale^2)``
    (tasks ``>= n_tasks`` zero)."""
    d, k, T = shape.d, shape.k, shape.T
    key = jax.random.fold_in(keys.init, SR_ADAPTER_STREAM)
    U = (jax.random.normal(key, (T * d * k,), dtype) * init_scale).reshape(T, d, k)
    if n_tasks is not None:
        U = U * (jnp.arange(T) < n_tasks)[:, None, None]
    return U


def fixed_start(key, m: int, d: int, r: int, init_scale, dtype, rank=None):
    """``paper_code``'s fixed fine-tuning start ``(U, V)`` (m, d, r), i.i.d. ``N(0,
    init_scale^2)``: row i of task q's U is ``normal(fold_in(fold_in(ku, q), i), (r,))`` with
    ``ku, kv = split(key)`` (V likewise), so the start for (d, r) is the top-left block of the start
    for any larger (d', r'), as the official code slices one ``start_Us`` for every panel value."""
    ku, kv = jax.random.split(key)

    def draw(kk):
        def row(q, i):
            return jax.random.normal(jax.random.fold_in(jax.random.fold_in(kk, q), i), (r,),
                                     dtype)
        return jax.vmap(lambda q: jax.vmap(lambda i: row(q, i))(jnp.arange(d)))(jnp.arange(m))

    both = jax.vmap(draw)(jnp.stack([ku, kv])) * init_scale
    if rank is not None:
        both = both * (jnp.arange(r) < rank)
    return both[0], both[1]


# --------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------

def _mask_tasks(stats: TaskStats, n_tasks) -> TaskStats:
    w = (jnp.arange(stats.Sxx.shape[-3]) < n_tasks).astype(stats.Sxx.dtype)
    return stats._replace(Sxx=stats.Sxx * w[:, None, None], Syx=stats.Syx * w[:, None, None],
                          Syy=stats.Syy * w)


def run_protocol(truth: Truth, keys: RunKeys, hyper: Hyper, shape: Shape,
                 retrain_stats: TaskStats | None = None,
                 finetune_stats: TaskStats | None = None, sr_bias=None, *,
                 variant: str = "clean") -> Outcome:
    """One run of the protocol (module docstring); jit- and vmap-able (``shape`` is static).

    ``variant``: ``"clean"`` or ``"paper_code"`` (module docstring; ``paper_code`` needs
    ``keys.start``, :func:`code_keys`). ``retrain_stats``/``finetune_stats`` may be passed in
    precomputed; ``sr_bias`` likewise (:func:`theory_sr_bias`, a function of the truth only).
    ``hyper.n_tasks``/``hyper.rank`` run a smaller configuration inside this shape (zero-padded
    truth: tasks beyond ``n_tasks`` are ignored).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(map(repr, VARIANTS))}; "
                         f"got {variant!r}")
    dt = truth.A_star.dtype
    d, k, m, r = shape.d, shape.k, shape.m, shape.ft_rank
    n_tasks, rank = hyper.n_tasks, hyper.rank
    padded = n_tasks is not None or rank is not None
    if (retrain_stats is None and finetune_stats is None and shape.sampler == "raw"
            and shape.N is not None and shape.n is not None):
        retrain_stats, finetune_stats = raw_statistics_pair(
            keys.retrain, truth.M_star, shape.N, keys.finetune, truth.M_new, shape.n,
            hyper.noise_std)
    if retrain_stats is None:
        retrain_stats = task_statistics(keys.retrain, truth.M_star, shape.N, hyper.noise_std,
                                        shape.sampler)
    if finetune_stats is None:
        finetune_stats = task_statistics(keys.finetune, truth.M_new, shape.n, hyper.noise_std,
                                         shape.sampler)
    if n_tasks is not None:
        retrain_stats = _mask_tasks(retrain_stats, n_tasks)
    if sr_bias is None:
        sr_bias = theory_sr_bias(truth, r if rank is None else rank, n_tasks)
    st, fs = retrain_stats, finetune_stats
    if padded:
        U0, Uf, Vf = initial_factors(keys, shape, hyper.init_scale, dt, n_tasks, rank)
    else:
        U0, Uf, Vf = initial_factors(keys, shape, hyper.init_scale, dt)
    B = ols_solution(st, shape.N)

    # Meta-LoRA
    if shape.ml_solver == "newton":
        if padded:
            raise ValueError("ml_solver='newton' runs unpadded (Hyper.n_tasks and Hyper.rank None)")
        ml = meta_lora(st, k, key=keys.newton, method="newton", init_scale=hyper.init_scale)
        A_ml, U_ml, ml_obj, ml_traj = ml.base, ml.adapters, ml.objective, ml.history.value
        ml_ok = _all_finite(A_ml, U_ml, ml_obj)
    else:
        A_ml, U_ml, ml_hist = meta_lora_alternating(
            st, U0, hyper.lr_adapter, hyper.lr_base, outer_steps=shape.outer_steps,
            inner_steps=shape.inner_steps, record_every=shape.record_every, B=B, n_tasks=n_tasks)
        ml_obj = excess_objective(A_ml + U_ml @ _T(U_ml), st, B, n_tasks)
        ml_traj = ml_hist.value
        ml_ok = _all_finite(A_ml, U_ml, ml_traj)
        ml_obj = jnp.where(jnp.isfinite(ml_obj), ml_obj, jnp.inf)

    # Standard retraining
    adapters = (sr_adapters(keys, shape, hyper.init_scale, dt, n_tasks)
                if variant == "paper_code" else None)
    A_sr, sr_hist = sr_retraining(st, hyper.sr_lr, steps=shape.sr_steps,
                                  record_every=shape.record_every, B=B, n_tasks=n_tasks,
                                  adapters=adapters)
    sr_obj = excess_objective(A_sr, st, B, n_tasks)

    # Fine-tuning of both bases on the same data
    if variant == "paper_code":
        Us, Vs = fixed_start(keys.start, m, d, r, hyper.init_scale, dt, rank)
        U_start, V_start = jnp.stack([Us, Uf]), jnp.stack([Vs, Vf])
    else:
        U_start = jnp.broadcast_to(Uf, (2,) + Uf.shape)
        V_start = jnp.broadcast_to(Vf, (2,) + Vf.shape)
    bases = jnp.stack([A_ml, A_sr])[:, None]  # (2, 1, d, d), broadcast over the m unseen tasks
    (U_ft, V_ft), ft_hist = finetune_both(bases, fs, U_start, V_start, hyper.ft_lr,
                                          steps=shape.ft_steps, record_every=shape.record_every)
    M_ft = bases + U_ft @ _T(V_ft)  # (2, m, d, d)
    test_loss = jnp.mean(losses.paper_test_loss(M_ft, fs), axis=-1)
    risk = jnp.mean(jnp.sum((M_ft - truth.M_new) ** 2, axis=(-2, -1)), axis=-1)
    return Outcome(
        ml_base_error=metrics.base_error(A_ml, truth.A_star),
        ml_base_rel_error=metrics.base_error(A_ml, truth.A_star, relative=True),
        sr_base_error=metrics.base_error(A_sr, truth.A_star),
        sr_base_rel_error=metrics.base_error(A_sr, truth.A_star, relative=True),
        ml_objective=ml_obj,
        sr_objective=sr_obj,
        ml_ft_test_loss=test_loss[0],
        sr_ft_test_loss=test_loss[1],
        ml_ft_excess_risk=risk[0],
        sr_ft_excess_risk=risk[1],
        theory_sr_bias=jnp.asarray(sr_bias, dt),
        ml_diverged=~ml_ok,
        sr_diverged=~_all_finite(A_sr, sr_hist.value),
        ft_diverged=~_all_finite(U_ft, V_ft, ft_hist.value),
        ml_objective_traj=ml_traj,
        sr_objective_traj=sr_hist.value,
        ml_ft_traj=ft_hist.value[:, 0],
        sr_ft_traj=ft_hist.value[:, 1],
    )


# --------------------------------------------------------------------------------------------
# Registration: "paper" (clean) and "paper_code" (the official code's baseline)
# --------------------------------------------------------------------------------------------


PAPER_RESULT_KEYS = ("ml_base_error", "ml_base_rel_error", "sr_base_error", "sr_base_rel_error",
                     "ml_objective", "sr_objective", "ml_ft_test_loss", "sr_ft_test_loss",
                     "ml_ft_excess_risk", "sr_ft_excess_risk", "theory_sr_bias",
                     "theory_ft_error", "ml_diverged", "sr_diverged", "ft_diverged")

_PAPER_INT = {"d": (1, None), "k": (1, "d"), "T": (1, None), "seed": (0, protocols.SEED_MAX),
              "truth_seed": (0, protocols.SEED_MAX), "outer_steps": (0, None), "inner_steps": (0, None),
              "sr_steps": (0, None), "ft_steps": (0, None), "ft_rank": (0, "d"),
              "record_every": (1, None)}
_PAPER_POSITIVE = ("lr_adapter", "lr_base", "sr_lr", "ft_lr", "init_scale")
_PAPER_CHOICES = {"ml_solver": ("alternating", "newton"), "sampler": ("raw", "wishart")}
NOISE_STD_MAX = 1e150          # its square (the noise variance, in the closed forms) stays finite
_PAPER_HYPER = ("noise_std", "lr_adapter", "lr_base", "sr_lr", "ft_lr", "init_scale")
_NEWTON_MAX_ITER = 200        # linmeta.meta_lora's default for method="newton"


def _paper_validate(cfg: Mapping, name: str = "paper") -> dict:
    unknown = [key for key in cfg if key not in PAPER_DEFAULTS]
    if unknown:
        raise protocols.unknown_key_error(unknown[0], name, PAPER_DEFAULTS)
    out = dict(PAPER_DEFAULTS)
    out.update(cfg)
    res: dict[str, Any] = {}
    for key in ("d", "k", "T", "seed", "truth_seed", "outer_steps", "inner_steps", "sr_steps",
                "ft_steps", "ft_rank", "record_every"):
        lo, hi = _PAPER_INT[key]
        res[key] = protocols.as_int(key, out[key], lo, hi, res)
    for key in ("N", "n"):
        res[key] = protocols.as_count(key, out[key])
    res["noise_std"] = protocols.as_float("noise_std", out["noise_std"], hi=NOISE_STD_MAX)
    for key in _PAPER_POSITIVE:
        res[key] = protocols.as_float(key, out[key], open_lo=True)
    for key, choices in _PAPER_CHOICES.items():
        res[key] = protocols.as_choice(key, out[key], choices)
    res["ft_rank"] = resolve_ft_rank(res["ft_rank"], res["k"], res["T"], res["d"])
    if res["sampler"] == "wishart":
        for key in ("N", "n"):
            if res[key] != "inf" and res[key] < res["d"]:
                raise ValueError(f"sampler='wishart' needs {key} >= d={res['d']} (or the "
                                 f"population); got {key}={res[key]}; use sampler='raw'")
    return {key: res[key] for key in PAPER_DEFAULTS}


def _count(x):
    return None if x == "inf" else int(x)


def _paddable(cfg: Mapping) -> bool:
    """Configurations differing only in T (and so in the fine-tuning rank) share one padded
    program: the alternating solver masks tasks; the draws are prefix-stable only with JAX's
    partitionable threefry (its default)."""
    return cfg["ml_solver"] == "alternating" and bool(jax.config.jax_threefry_partitionable)


def paper_shape(cfg: Mapping, m: int = 1, T: int | None = None,
                ft_rank: int | None = None) -> Shape:
    """The static shape of a validated paper configuration (``m`` unseen tasks; ``T``/``ft_rank``
    override the sizes of a padded program)."""
    return Shape(d=cfg["d"], k=cfg["k"], T=cfg["T"] if T is None else T,
                       N=_count(cfg["N"]), n=_count(cfg["n"]), m=m,
                       ft_rank=cfg["ft_rank"] if ft_rank is None else ft_rank,
                       ml_solver=cfg["ml_solver"], outer_steps=cfg["outer_steps"],
                       inner_steps=cfg["inner_steps"], sr_steps=cfg["sr_steps"],
                       ft_steps=cfg["ft_steps"], record_every=cfg["record_every"],
                       sampler=(cfg["sampler"] if cfg["N"] != "inf" or cfg["n"] != "inf"
                                else "raw"))


def _paper_group_key(cfg: Mapping) -> tuple:
    s = paper_shape(cfg)
    newton = s.ml_solver == "newton"
    key = (cfg["protocol"], s.d, s.k, cfg["N"], cfg["n"], s.ml_solver,
           0 if newton else s.outer_steps, 0 if newton else s.inner_steps, s.sr_steps,
           s.ft_steps, s.record_every, s.sampler)
    return key if _paddable(cfg) else key + (s.T, s.ft_rank)


class PaperTruth(NamedTuple):
    """The truth a paper run gets: ``A*``, ``U*`` (zero-padded to the program's T), ``U_new`` and
    the theory's SR bias at the run's own T and fine-tuning rank."""

    A_star: Any
    U_star: Any
    U_new: Any
    sr_bias: Any


def _paper_batch(cfgs: list[dict], given: list | None, dtype, group: list[dict]) -> protocols.Batch:
    """Shape, hyperparameters and truths of a batch of one shape group. ``given``: a user truth
    per configuration (or None: drawn from ``truth_seed``); ``group``: the configurations whose
    sizes the program must fit (the whole shape group, so that its chunks share one compile).

    Drawn truths: one draw per ``truth_seed`` at the group's largest T (each smaller T is a prefix
    of it), with the SR biases of all its (T, rank) pairs, by one small cached program."""
    c0 = cfgs[0]
    pad = _paddable(c0)
    T_pad = max(c["T"] for c in group) if pad else c0["T"]
    r_pad = max(c["ft_rank"] for c in group) if pad else c0["ft_rank"]
    # sources: a given truth object, or a truth_seed; pairs (T, rank) needed of each
    sources: dict[tuple, Any] = {}
    pairs: dict[tuple, list] = {}
    for i, c in enumerate(cfgs):
        if given is not None and given[i] is not None:
            protocols.check_given_truth(given[i], c)
            skey = ("given", id(given[i]))
            sources[skey] = given[i]
        else:
            skey = ("seed", c["truth_seed"])
        pl = pairs.setdefault(skey, [])
        if (c["T"], c["ft_rank"]) not in pl:
            pl.append((c["T"], c["ft_rank"]))
    prepared: dict[tuple, PaperTruth] = {}
    for skey, pl in pairs.items():
        if skey[0] == "seed":
            A, U, Un = (np.asarray(x) for x in protocols.truth_program()(skey[1], c0["d"], c0["k"], T_pad,
                                                            dtype))
        else:
            A, U, Un = (np.asarray(x, dtype) for x in sources[skey])
        biases = [np.asarray(sr_bias_host(U, Un, T, r), dtype) for T, r in pl]
        for j, (T, r) in enumerate(pl):
            U_T = U[:T]
            if T < T_pad:
                U_T = np.concatenate([U_T, np.zeros((T_pad - T,) + U.shape[1:], U.dtype)])
            prepared[(skey, T, r)] = PaperTruth(A, U_T, Un, biases[j])
    truths = []
    for i, c in enumerate(cfgs):
        skey = (("given", id(given[i])) if given is not None and given[i] is not None
                else ("seed", c["truth_seed"]))
        truths.append(prepared[(skey, c["T"], c["ft_rank"])])
    m = truths[0].U_new.shape[0]
    if any(t.U_new.shape[0] != m for t in truths):
        raise ValueError("the truths of one batch must have the same number of unseen tasks")
    shape = paper_shape(c0, m, T_pad, r_pad)
    hyper = [Hyper(*(c[k] for k in _PAPER_HYPER), n_tasks=c["T"] if pad else None,
                         rank=c["ft_rank"] if pad else None) for c in cfgs]
    return protocols.Batch(shape, hyper, truths, None)


def _paper_run(variant):
    def run(truth: PaperTruth, keys, hyper, shape):
        return run_protocol(Truth(truth.A_star, truth.U_star, truth.U_new), keys, hyper,
                                  shape, sr_bias=truth.sr_bias, variant=variant)
    run.__name__ = f"run_{variant}"
    run.__doc__ = (f"linmeta.run_protocol(..., variant={variant!r}) on a "
                   ":class:`PaperTruth`.")
    return run


def _paper_results(cfg: Mapping, batch: protocols.Batch, rec, flags) -> dict:
    shape = batch.shape
    if shape.ml_solver == "newton":
        outer_idx = np.arange(_NEWTON_MAX_ITER + 1)
    else:
        outer_idx = record_steps(shape.outer_steps, shape.record_every)
    sr_idx = record_steps(shape.sr_steps, shape.record_every)
    ft_idx = record_steps(shape.ft_steps, shape.record_every)
    dof = adapter_dof(shape.d, cfg["ft_rank"])
    res: dict[str, Any] = {}
    for key in PAPER_RESULT_KEYS:
        if key == "theory_ft_error":
            res[key] = 0.0 if shape.n is None else cfg["noise_std"] ** 2 * dof / shape.n
        elif key.endswith("_diverged"):
            res[key] = bool(flags[key[:-len("_diverged")]])
        else:
            res[key] = float(getattr(rec, key))
    res["trajectories"] = {
        "ml_objective": rec.ml_objective_traj, "outer_steps": outer_idx,
        "sr_objective": rec.sr_objective_traj, "sr_steps": sr_idx,
        "ml_ft_test_loss": rec.ml_ft_traj, "sr_ft_test_loss": rec.sr_ft_traj,
        "ft_steps": ft_idx,
    }
    return res


def _paper_chunk_size(cfg: Mapping) -> int:
    """Configurations per compiled call: inputs and records of about :data:`TRAIN_BYTES` per
    device (the live training state is bounded by the sub-batch), at most :data:`MAX_CHUNK`."""
    s = paper_shape(cfg)
    n_rec = (len(record_steps(s.outer_steps, s.record_every)) + len(record_steps(
        s.sr_steps, s.record_every)) + 2 * len(record_steps(s.ft_steps, s.record_every)))
    per = 8 * (16 * s.T * s.d * s.d + 24 * s.m * s.d * s.d + 4 * n_rec)
    if s.ml_solver == "newton":
        per += 8 * 8 * (s.T * s.d * s.k) ** 2 * 3
    return int(max(1, min(MAX_CHUNK, TRAIN_BYTES // per)))


def _paper_sub_batch(shape: Shape, dtype) -> int:
    """Configurations vmapped together inside a device's share: small enough that their training
    state stays in cache (:data:`SUB_BATCH`) and the raw data draws' temporaries stay under
    :data:`SAMPLE_BYTES`."""
    itemsize = jnp.dtype(dtype).itemsize
    per = 0
    for count, tasks in ((shape.N, shape.T), (shape.n, shape.m)):
        if count is not None and shape.sampler == "raw":
            per += 6 * itemsize * tasks * min(count, BLOCK) * 2 * shape.d
    cap = SUB_BATCH if per == 0 else max(1, min(SUB_BATCH, SAMPLE_BYTES // per))
    if shape.ml_solver == "newton":
        cap = max(1, min(cap, TRAIN_BYTES // (8 * 8 * (shape.T * shape.d * shape.k) ** 2 * 3)))
    return cap


def _ml_step_sizes(cfg):
    return ("lr_adapter", "lr_base") if cfg.get("ml_solver") == "alternating" else ()


_PAPER_STAGES = (
    protocols.Stage("ml", "Meta-LoRA retraining", fields=("ml_objective_traj",),
          step_sizes=_ml_step_sizes, curves=("ml_objective",), steps=("outer_steps",),
          nan_is_padding=lambda cfg: cfg.get("ml_solver") == "newton"),
    protocols.Stage("sr", "standard retraining", fields=("sr_objective_traj",), step_sizes=("sr_lr",),
          curves=("sr_objective",), steps=("sr_steps",)),
    protocols.Stage("ft", "fine-tuning", fields=("ml_ft_traj", "sr_ft_traj"), step_sizes=("ft_lr",),
          curves=("ml_ft_test_loss", "sr_ft_test_loss"), steps=("ft_steps", "ft_steps")),
)

_PAPER_DESCRIPTIONS = {
    "paper": ("the paper's synthetic linear protocol (clean): Meta-LoRA and standard retraining "
              "by gradient descent, both bases fine-tuned from the same start (linmeta.families.paper)"),
    "paper_code": ("the paper's protocol as its official code runs it: the SR baseline adds its "
                   "untrained random adapters into a T-times larger step (converging to pooled "
                   "least squares minus mean_t U_t U_t^T); Meta-LoRA fine-tunes from one start "
                   "reused across runs, SR from fresh draws (linmeta.families.paper)"),
}


# What 'linmeta plot' draws (linmeta.front.plotting): the paper's figures, Meta-LoRA (blue) beside
# SR (red), the test loss a sum over the n fine-tuning inputs, the theory's levels dashed (C2, C6)
_ML, _SR = "tab:blue", "tab:red"
_S = protocols.Series
PAPER_PLOTS = protocols.Plots(
    curves=(
        protocols.Curves("finetune_curves", "fine-tuning on the unseen task",
                         "test loss (sum over the n samples)",
                         (_S("ml_ft_test_loss", "Meta-LoRA", _ML), _S("sr_ft_test_loss", "SR", _SR)),
                         steps="ft_steps", xlabel="fine-tuning iteration",
                         levels=(_S("theory_sr_bias", "theory: SR bias n E_SR(r) (C2)", _SR,
                                    scale="n"),
                                 _S("theory_ft_error", "theory: sigma^2 dof (C6)", _ML,
                                    scale="n"))),
        protocols.Curves("ml_objective", "Meta-LoRA retraining", "excess retraining objective",
                         (_S("ml_objective", "Meta-LoRA", _ML),), steps="outer_steps",
                         xlabel="outer iteration (Newton iteration with ml_solver = newton)",
                         sweep=False),
        protocols.Curves("sr_objective", "standard retraining (SR)",
                         "excess retraining objective", (_S("sr_objective", "SR", _SR),),
                         steps="sr_steps", xlabel="gradient step", sweep=False)),
    finals=(
        protocols.Finals("final test loss (sum over the n samples)",
                         (_S("ml_ft_test_loss", "Meta-LoRA", _ML),
                          _S("sr_ft_test_loss", "SR", _SR))),
        protocols.Finals("fine-tuning excess risk ||M - M*||_F^2",
                         (_S("ml_ft_excess_risk", "Meta-LoRA", _ML),
                          _S("sr_ft_excess_risk", "SR", _SR),
                          _S("theory_ft_error", "theory: sigma^2 dof / n (C6)", _ML, dashed=True),
                          _S("theory_sr_bias", "theory: SR bias E_SR(r) (C2)", _SR,
                             dashed=True))),
        protocols.Finals("base error ||A_hat - A*||_F",
                         (_S("ml_base_error", "Meta-LoRA", _ML),
                          _S("sr_base_error", "SR", _SR)))),
    split_by=("ft_rank",),
    fixed=("d", "k", "T", "N", "n", "noise_std", "ml_solver", "outer_steps", "ft_steps"),
    note=("test loss = sum over the n fine-tuning inputs of ||(M - M*) x||^2 (the paper's test "
          "task loss); dashed: theory, n E_SR(r) = SR's rank-r bias (C2), sigma^2 dof = LoRA "
          "floor (C6), sigma = noise_std, dof = r(2d - r); the fine-tuning rank is 3k at T = 2 "
          "(C4): rows and panels name it"))


def _paper_entry(name: str, variant: str) -> protocols.Protocol:
    return protocols.Protocol(
        name=name, run=_paper_run(variant), defaults=PAPER_DEFAULTS, hyper=Hyper,
        shape=paper_shape, truth=lambda cfg, dtype: protocols.truth_for(cfg),
        truth_keys=("truth_seed", "d", "k", "T"),
        keys=code_keys if variant == "paper_code" else protocols.default_keys,
        stages=_PAPER_STAGES, result_keys=PAPER_RESULT_KEYS,
        description=_PAPER_DESCRIPTIONS[name],
        validate=functools.partial(_paper_validate, name=name),
        group_key=_paper_group_key, batch=_paper_batch, results=_paper_results,
        single_device=lambda shape: shape.ml_solver == "newton",
        chunk_size=_paper_chunk_size, sub_batch=_paper_sub_batch,
        divergence_flags=_records.divergence_flags,
        diverged_stages=_records.diverged_stages,
        divergence_error=_records.divergence_error,
        record_theory=_records.record_theory, summary=_records.summary,
        accepts_truth=True, plots=PAPER_PLOTS)


PAPER = protocols.register(_paper_entry("paper", "clean"), replace=True)
PAPER_CODE = protocols.register(_paper_entry("paper_code", "paper_code"), replace=True)
