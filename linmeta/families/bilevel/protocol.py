"""The bilevel family's protocol for one configuration (docs/bilevel.md; claims M1-M6).

One run, every step the core's own function:

1. Ground truth ``A*``, ``U*_t`` (T tasks) and ``m`` unseen tasks (passed in: one per seed in the
   experiments, :func:`linmeta.sampling.truth_for_seed` in a sweep).
2. Retraining statistics (:func:`linmeta.sampling.task_statistics`): the population (``N = None``;
   support = query), or N samples per task split into a support set of ``support`` samples and a
   query set of ``N - support`` samples, drawn independently (the same distribution as splitting
   one draw of N) from the two halves of ``keys.retrain``.
3. Bilevel retraining (:func:`linmeta.families.bilevel.methods.bilevel_step` driven by
   :func:`linmeta.methods.run_steps`, as :func:`linmeta.maml` does): from ``A = 0`` and a start
   shared by the tasks, ``outer_steps`` outer iterations. The inner adapter has
   ``shape.width`` columns of which the first ``hyper.inner_rank`` are used (the others start at
   zero in both factors and stay there: a padded run equals the unpadded one), so every inner
   rank r <= width, and the full-rank inner update (``hyper.inner_full = 1``: ``U = W`` from 0,
   ``V = I`` fixed; needs ``width = d``), run in one compiled program. The method is static
   (``shape.methods`` names it: only its update is computed) or, with ``shape.methods = "all"``,
   traced (``hyper.method_id``; all three updates are computed and one is kept).
   Asymmetric adapters start as LoRA does (U ~ N(0, s^2) on the used columns, V = 0); symmetric
   ones from U ~ N(0, s^2). ``hyper.start_lr > 0`` learns the start.
4. Reference: standard retraining's exact minimiser on the pooled statistics (support and query
   together): ``(sum_t S_yx,t)(sum_t S_xx,t)^+`` (the mean of the ``M*_t`` in the population).
5. Fine-tuning on the unseen tasks: the exact rank-``ft_rank`` adapter
   (:func:`linmeta.reduced_rank_fit`) on n samples (or the population) of each unseen task, for the
   bilevel base and SR's; recorded as ``||M_ft - M*_new||_F^2`` (mean over unseen tasks) and, for
   the n -> infinity limit, the Eckart-Young bias of ``M*_new - A_hat`` at rank ``ft_rank``
   (:func:`linmeta.core.theory.lora_bias`); in the population the two are equal.

Everything but the fine-tuning fit at finite n (and the SVD of the bias) is LAPACK-free (the
least-squares solutions use :func:`linmeta.kernels.psd_pinv`), as the sweep's sharded CPU
programs require.

Divergence: ``diverged`` (the recorded objective blew up or the base is non-finite) and
``inner_diverged`` (some record's inner loop blew up from a finite start), computed in the
program with :func:`linmeta.core.divergence.divergence_index`; never NaN silently
(``inner_objective_traj``: the inner trace of the first record that blew up, else of the first
record). ``stalled``: the objective fell by less than 1% over the run while the run did not
diverge (a statement about the objective only: a run whose objective is at the rounding level
from the start, plain Reptile near alpha = 1 for instance, is flagged although its base moves).

:func:`run_protocol` is jit- and vmap-able (``shape`` static, everything else traced);
:func:`run_batch` vmaps it over configurations and compiles once per (shape, batch size, dtype).

The sweep engine runs it as the registered protocol ``"bilevel"`` (:data:`SWEEP_PROTOCOL`,
registered by :mod:`linmeta.families.bilevel`; keys and defaults :data:`SWEEP_DEFAULTS`): a configuration
names ``method``, ``adapter``, ``inner_steps``, ``inner_lr``, ``outer_lr``, ``start_lr``,
``inner_rank``, ``inner_full``, ... as flat keys. Configurations that differ only in the traced
keys (method, K, alpha, beta, the start's step and scale, the inner rank, the full-rank inner
update, the noise) share one compiled program: the group's program is padded to its largest K
(``inner_length``), to the widest inner adapter (``width``; d with a full-rank inner update) and
traces the method when the group has several (``methods = "all"``); padding is exact. The truth
is drawn from ``truth_seed`` as the paper protocol's (:func:`linmeta.sampling.truth_for_seed`: one
unseen task). Stages for divergence: ``inner`` (``inner_diverged``, curve ``inner_objective``
over the inner steps, step size ``inner_lr``) and ``retrain`` (``retrain_diverged``, curve
``objective`` over ``outer_steps``, step sizes ``outer_lr`` and, when learned, ``start_lr``).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from linmeta.core import metrics, theory
from linmeta.core import kernels, sampling
from linmeta.engine import protocols
from linmeta.core._validate import check_choice, check_int, check_scalar
from linmeta.core.data import TaskStats
from linmeta.core.divergence import divergence_index
from linmeta.methods.finetune import reduced_rank_fit
from linmeta.core.problem import Truth
from linmeta.methods import record_steps, run_steps
from .methods import (METHODS, BilevelHyper, BilevelState, Factors, adapt_with_trace,
                      adapter_delta, bilevel_step)

__all__ = ["Shape", "Hyper", "Outcome", "make_shape", "make_hyper", "stack_hypers",
           "retrain_statistics", "initial_start", "run_protocol", "run_batch", "STALL_FRACTION",
           "SWEEP_DEFAULTS", "SWEEP_RESULT_KEYS", "SweepRecord", "SWEEP_PROTOCOL"]

STALL_FRACTION = 0.99  # final objective above this fraction of the first one: stalled


class Shape(NamedTuple):
    """Static part of a configuration (sets shapes and loop lengths).

    ``N``/``n`` are None for the population; ``support`` is the support size when N is finite;
    ``adapter`` is ``"asymmetric"`` (U V^T, also the full-rank inner update) or ``"symmetric"``;
    ``width`` the number of factor columns (>= every inner rank used; d for the full-rank update);
    ``inner_length`` the static inner scan length (>= every K used); ``methods`` ``"all"``
    (method traced) or one name of :data:`linmeta.families.bilevel.methods.METHODS`."""

    d: int
    k: int
    T: int
    N: int | None
    support: int | None
    n: int | None
    m: int
    ft_rank: int
    adapter: str
    width: int
    inner_length: int
    outer_steps: int
    record_every: int
    sampler: str
    methods: str


class Hyper(NamedTuple):
    """Traced part of a configuration (scalar arrays; one value per run when batched).

    ``method_id``: index into (maml, fomaml, reptile), used when ``shape.methods == "all"``;
    ``inner_steps`` K and ``inner_rank`` r are integers; ``inner_full`` 1.0 selects the
    full-rank inner update."""

    noise_std: jax.Array
    method_id: jax.Array
    inner_steps: jax.Array
    inner_lr: jax.Array
    outer_lr: jax.Array
    start_lr: jax.Array
    inner_rank: jax.Array
    inner_full: jax.Array
    init_scale: jax.Array


class Outcome(NamedTuple):
    """Arrays of one run (see the module docstring)."""

    base_error: jax.Array
    base_rel_error: jax.Array
    objective: jax.Array
    ft_excess_risk: jax.Array
    ft_bias: jax.Array
    sr_base_error: jax.Array
    sr_ft_excess_risk: jax.Array
    sr_ft_bias: jax.Array
    diverged: jax.Array
    inner_diverged: jax.Array
    stalled: jax.Array
    objective_traj: jax.Array    # (n_records,) query excess objective after adaptation
    base_error_traj: jax.Array   # (n_records,) ||A - A*||_F
    inner_objective_traj: jax.Array  # (inner_length + 1,) support excess over the inner steps at
    #                                  the first record whose inner loop blew up (else the first)


def make_shape(d: int, k: int, T: int, *, N=None, support=None, n=None, m: int = 1,
               ft_rank=None, adapter: str = "asymmetric", width=None, inner_length: int = 10,
               outer_steps: int = 500, record_every: int = 10, sampler: str = "raw",
               methods: str = "all") -> Shape:
    """A validated :class:`Shape` (``ft_rank`` default k; ``width`` default d; ``support``
    default N // 2)."""
    d = check_int("d", d, 1)
    k = check_int("k", k, 1, d, hi_label="d")
    T = check_int("T", T, 1)
    if N is not None:
        N = check_int("N", N, 2)
        support = N // 2 if support is None else check_int("support", support, 1, N - 1,
                                                           hi_label="N-1")
    elif support is not None:
        raise ValueError("support must be None for the population (N=None): support = query")
    n = None if n is None else check_int("n", n, 1)
    m = check_int("m", m, 1)
    ft_rank = k if ft_rank is None else check_int("ft_rank", ft_rank, 1, d, hi_label="d")
    check_choice("adapter", adapter, ("asymmetric", "symmetric"))
    width = d if width is None else check_int("width", width, 1, d, hi_label="d")
    inner_length = check_int("inner_length", inner_length, 0)
    outer_steps = check_int("outer_steps", outer_steps, 0)
    record_every = check_int("record_every", record_every, 1)
    check_choice("sampler", sampler, ("raw", "wishart"))
    check_choice("methods", methods, ("all",) + METHODS)
    return Shape(d, k, T, N, support, n, m, ft_rank, adapter, width, inner_length, outer_steps,
                 record_every, sampler, methods)


def make_hyper(shape: Shape, *, method: str = "maml", inner_steps=None, inner_lr=0.05,
               outer_lr=0.3, start_lr=0.0, inner_rank=None, inner_full: bool = False,
               init_scale=0.1, noise_std=0.0, dtype=None) -> Hyper:
    """A validated :class:`Hyper` for ``shape`` (``inner_steps`` default ``shape.inner_length``,
    ``inner_rank`` default ``shape.k``; ``inner_full`` needs ``shape.width == d``)."""
    dt = jnp.dtype(dtype) if dtype is not None else jnp.asarray(0.0).dtype
    check_choice("method", method, METHODS)
    if shape.methods != "all" and method != shape.methods:
        raise ValueError(f"method must be {shape.methods!r} for this shape (methods="
                         f"{shape.methods!r}), got {method!r}")
    K = shape.inner_length if inner_steps is None else check_int(
        "inner_steps", inner_steps, 0, shape.inner_length, hi_label="inner_length")
    r = shape.k if inner_rank is None else inner_rank
    r = check_int("inner_rank", r, 1, shape.width, hi_label="width")
    if inner_full:
        if shape.adapter != "asymmetric" or shape.width != shape.d:
            raise ValueError("inner_full needs adapter='asymmetric' and width=d")
        r = shape.d
    check_scalar("inner_lr", inner_lr, 0.0)
    check_scalar("outer_lr", outer_lr, 0.0, lo_open=True)
    check_scalar("start_lr", start_lr, 0.0)
    check_scalar("init_scale", init_scale, 0.0, lo_open=True)
    check_scalar("noise_std", noise_std, 0.0)
    return Hyper(jnp.asarray(noise_std, dt), jnp.asarray(METHODS.index(method), jnp.int32),
                 jnp.asarray(K, jnp.int32),
                 jnp.asarray(inner_lr, dt), jnp.asarray(outer_lr, dt), jnp.asarray(start_lr, dt),
                 jnp.asarray(r, jnp.int32), jnp.asarray(float(bool(inner_full)), dt),
                 jnp.asarray(init_scale, dt))


def stack_hypers(hypers) -> Hyper:
    """Stack a list of :class:`Hyper` into one with a leading batch axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *hypers)


def _pooled(a: TaskStats, b: TaskStats, na: int, nb: int) -> TaskStats:
    wa, wb = na / (na + nb), nb / (na + nb)
    return TaskStats(wa * a.Sxx + wb * b.Sxx, wa * a.Syx + wb * b.Syx, wa * a.Syy + wb * b.Syy,
                     a.n_samples + b.n_samples, a.M_star, a.noise_std)


def retrain_statistics(truth: Truth, key, shape: Shape, noise_std):
    """``(support, query, pooled)`` statistics of the retraining tasks (step 2)."""
    if shape.N is None:
        st = sampling.task_statistics(key, truth.M_star, None, noise_std)
        return st, st, st
    ks, kq = jax.random.split(key)
    s, q = shape.support, shape.N - shape.support
    sup = sampling.task_statistics(ks, truth.M_star, s, noise_std, shape.sampler)
    qry = sampling.task_statistics(kq, truth.M_star, q, noise_std, shape.sampler)
    return sup, qry, _pooled(sup, qry, s, q)


def initial_start(key, shape: Shape, hyper: Hyper, dtype) -> Factors:
    """The shared adapter start of step 3 (columns beyond ``inner_rank`` zero)."""
    d, w = shape.d, shape.width
    mask = (jnp.arange(w) < hyper.inner_rank).astype(dtype)
    # drawn as d x d and cut: a column's values do not depend on the width (padding is exact)
    U = hyper.init_scale * jax.random.normal(key, (d, d), dtype)[:, :w] * mask
    if shape.adapter == "symmetric":
        return Factors(U)
    f = hyper.inner_full
    eye = jnp.eye(d, w, dtype=dtype)
    return Factors((1 - f) * U, f * eye)


def _ols(stats: TaskStats, N):
    """``S_yx S_xx^+`` without LAPACK (:func:`linmeta.kernels.ols_solution`); ``None`` when
    ``N <= d`` (least squares interpolates: ``min L_t = 0``)."""
    return kernels.ols_solution(stats, N)


def _method_arg(shape: Shape, hyper: Hyper):
    """The method: a name (static) or one-hot weights from the traced ``method_id``."""
    if shape.methods != "all":
        return shape.methods
    return jax.nn.one_hot(hyper.method_id, len(METHODS), dtype=hyper.inner_lr.dtype)


def run_protocol(truth: Truth, keys: sampling.RunKeys, hyper: Hyper, shape: Shape) -> Outcome:
    """One run of the protocol (module docstring); jit- and vmap-able (``shape`` static)."""
    dt = truth.A_star.dtype
    d, r_ft = shape.d, shape.ft_rank
    sup, qry, pooled = retrain_statistics(truth, keys.retrain, shape, hyper.noise_std)
    fs = sampling.task_statistics(keys.finetune, truth.M_new, shape.n, hyper.noise_std,
                               shape.sampler)
    Bs = _ols(sup, shape.support if shape.N is not None else None)
    Bq = Bs if shape.N is None else _ols(qry, shape.N - shape.support)
    bh = BilevelHyper(hyper.inner_lr, hyper.outer_lr, hyper.start_lr, hyper.inner_steps,
                      1 - hyper.inner_full)
    kw = dict(adapter=shape.adapter, length=shape.inner_length)
    method = _method_arg(shape, hyper)

    def record(s):
        theta, trace = adapt_with_trace(
            s.base, s.start, sup, bh.inner_lr, bh.inner_steps, train_v=bh.train_v,
            excess_fn=lambda M: kernels.excess_objective(M, sup, Bs), **kw)
        obj = kernels.excess_objective(s.base + adapter_delta(theta, shape.adapter), qry, Bq)
        return obj, metrics.base_error(s.base, truth.A_star), trace

    state0 = BilevelState(jnp.zeros((d, d), dt), initial_start(keys.init, shape, hyper, dt))
    state, hist = run_steps(lambda s: bilevel_step(s, sup, qry, bh, method=method, **kw), state0,
                            shape.outer_steps, shape.record_every, record)
    obj_traj, err_traj, traces = hist.value
    A = state.base
    obj = obj_traj[-1]

    # SR's exact minimiser on the pooled statistics (LAPACK-free, as the paper protocol)
    if shape.N is None:
        A_sr = jnp.mean(pooled.Syx, axis=0)
    else:
        A_sr = jnp.sum(pooled.Syx, axis=0) @ kernels.psd_pinv(jnp.sum(pooled.Sxx, axis=0))
    ok = jnp.all(jnp.isfinite(A))
    bases = jnp.stack([jnp.where(ok, A, 0.0), A_sr])
    bias = jax.vmap(lambda b: jnp.mean(theory.lora_bias(truth.M_new - b, r_ft)))(bases)
    if shape.n is None:  # the exact rank-r fit leaves exactly the Eckart-Young bias
        risk = bias
    else:
        def finetune(base):
            U, V = reduced_rank_fit(base, fs, r_ft)
            M = base + U @ jnp.swapaxes(V, -1, -2)
            return jnp.mean(jnp.sum((M - truth.M_new) ** 2, axis=(-2, -1)))

        risk = jax.vmap(finetune)(bases)
    first = jnp.arange(2) == 0
    risk = jnp.where(first & ~ok, jnp.inf, risk)
    bias = jnp.where(first & ~ok, jnp.inf, bias)

    diverged = (divergence_index(obj_traj) >= 0) | ~ok
    inner_bad = jax.vmap(lambda row: jnp.isfinite(row[0]) & (divergence_index(row) >= 0))(traces)
    stalled = ~diverged & (obj > STALL_FRACTION * obj_traj[0])
    return Outcome(
        base_error=metrics.base_error(A, truth.A_star),
        base_rel_error=metrics.base_error(A, truth.A_star, relative=True),
        objective=obj,
        ft_excess_risk=risk[0],
        ft_bias=bias[0],
        sr_base_error=metrics.base_error(A_sr, truth.A_star),
        sr_ft_excess_risk=risk[1],
        sr_ft_bias=bias[1],
        diverged=diverged,
        inner_diverged=jnp.any(inner_bad),
        stalled=stalled,
        objective_traj=obj_traj,
        base_error_traj=err_traj,
        inner_objective_traj=traces[jnp.argmax(inner_bad)],
    )


@functools.lru_cache(maxsize=None)
def _batch_program(shape: Shape):
    def run(truth_arrays, seeds, hyper):
        def one(ta, seed, h):
            return run_protocol(Truth(*ta), sampling.run_keys(seed), h, shape)

        return jax.vmap(one)(truth_arrays, seeds, hyper)

    # XLA:CPU with linmeta.sweep's options (optimisation level 1, the classic fusion emitters):
    # compiles in about half the time, runs as fast
    opts = protocols.cpu_options() if jax.default_backend() == "cpu" else None
    return jax.jit(run, compiler_options=opts)


def run_batch(truths: Truth, seeds, hypers: Hyper, shape: Shape) -> Outcome:
    """:func:`run_protocol` for B configurations at once: ``truths`` (a Truth with a leading
    axis B), ``seeds`` (B,) integers (:func:`linmeta.sampling.run_keys`), ``hypers`` (a stacked
    :class:`Hyper`). One compiled program per (shape, B, dtype)."""
    return _batch_program(shape)(tuple(truths), jnp.asarray(seeds), hypers)


# --------------------------------------------------------------------------------------------
# The sweep engine's entry: the registered protocol "bilevel" (linmeta.protocols)
# --------------------------------------------------------------------------------------------

#: Configuration keys of the protocol ``"bilevel"`` and their defaults.
SWEEP_DEFAULTS: dict[str, Any] = {
    "d": 10,
    "k": 1,
    "T": 3,
    "N": "inf",            # retraining samples per task (support + query); 0 or "inf" = population
    "support": 0,          # support samples of the N (finite N); 0 = N // 2
    "n": "inf",            # fine-tuning samples per unseen task; 0 or "inf" = population
    "noise_std": 0.01,
    "seed": 0,             # data and the adapter start
    "truth_seed": 0,       # ground truth (linmeta.sampling.truth_for_seed), fixed across seeds
    "method": "maml",      # "maml", "fomaml" or "reptile" (traced within a group)
    "adapter": "asymmetric",   # inner adapter U V^T ("asymmetric") or U U^T ("symmetric")
    "inner_steps": 10,     # K
    "inner_lr": 0.05,      # alpha
    "outer_steps": 500,
    "outer_lr": 0.3,       # beta
    "start_lr": 0.0,       # step of a learned adapter start; 0 = fixed start
    "inner_rank": 0,       # r; 0 = k
    "inner_full": False,   # full-rank inner update (plain MAML; asymmetric adapter only)
    "init_scale": 0.1,     # std of the start's random factor
    "ft_rank": 0,          # fine-tuning rank; 0 = k
    "record_every": 10,
    "sampler": "raw",      # "raw" samples or "wishart" statistics (finite N or n)
}

#: Scalar result columns of a ``"bilevel"`` run (the ``*_diverged`` flags are the stages').
SWEEP_RESULT_KEYS = ("base_error", "base_rel_error", "objective", "ft_excess_risk", "ft_bias",
                     "sr_base_error", "sr_ft_excess_risk", "sr_ft_bias", "stalled",
                     "inner_diverged", "retrain_diverged")

_SWEEP_CHECKS = {
    "d": protocols.Check("int", 1), "k": protocols.Check("int", 1, "d"),
    "T": protocols.Check("int", 1), "N": protocols.Check("count"),
    "support": protocols.Check("int", 0), "n": protocols.Check("count"),
    "noise_std": protocols.Check("float", 0.0),
    "method": protocols.Check("choice", choices=METHODS),
    "adapter": protocols.Check("choice", choices=("asymmetric", "symmetric")),
    "inner_steps": protocols.Check("int", 0), "inner_lr": protocols.Check("float", 0.0),
    "outer_steps": protocols.Check("int", 0),
    "outer_lr": protocols.Check("float", 0.0, open_lo=True),
    "start_lr": protocols.Check("float", 0.0), "inner_rank": protocols.Check("int", 0, "d"),
    "inner_full": protocols.Check("choice", choices=(False, True)),
    "init_scale": protocols.Check("float", 0.0, open_lo=True),
    "ft_rank": protocols.Check("int", 0, "d"), "record_every": protocols.Check("int", 1),
    "sampler": protocols.Check("choice", choices=("raw", "wishart")),
}


class SweepRecord(NamedTuple):
    """What a ``"bilevel"`` run returns to the sweep: :class:`Outcome`'s fields, ``diverged``
    named ``retrain_diverged`` (the stage's own flag)."""

    base_error: jax.Array
    base_rel_error: jax.Array
    objective: jax.Array
    ft_excess_risk: jax.Array
    ft_bias: jax.Array
    sr_base_error: jax.Array
    sr_ft_excess_risk: jax.Array
    sr_ft_bias: jax.Array
    retrain_diverged: jax.Array
    inner_diverged: jax.Array
    stalled: jax.Array
    objective_traj: jax.Array
    base_error_traj: jax.Array
    inner_objective_traj: jax.Array


def _sweep_validate(cfg: Mapping) -> dict:
    """The generic validation of the keys (:data:`SWEEP_DEFAULTS`, ``_SWEEP_CHECKS``), then the
    checks across keys and the resolved defaults (``support``, ``inner_rank``, ``ft_rank``)."""
    res = dict(_GENERIC_VALIDATION.validated(cfg))
    res["inner_full"] = bool(res["inner_full"])
    if res["N"] != "inf":
        if res["N"] < 2:
            raise ValueError(f"N (retraining samples per task) must be >= 2 to split into support "
                             f"and query, or 0 / 'inf' for the population; got {res['N']}")
        if res["support"] == 0:
            res["support"] = res["N"] // 2
        elif res["support"] > res["N"] - 1:
            raise ValueError(f"support must be an integer in [1, N-1={res['N'] - 1}] (0 = N // 2), "
                             f"got {res['support']}")
    elif res["support"] != 0:
        raise ValueError(f"support must be 0 for the population (N = 'inf': support = query), "
                         f"got {res['support']}")
    res["inner_rank"] = res["inner_rank"] or res["k"]
    res["ft_rank"] = res["ft_rank"] or res["k"]
    if res["inner_full"]:
        if res["adapter"] != "asymmetric":
            raise ValueError("inner_full = true (the full-rank inner update) needs "
                             f"adapter = 'asymmetric', got adapter = {res['adapter']!r}")
        res["inner_rank"] = res["d"]
    if res["N"] == "inf" and res["n"] == "inf":
        res["sampler"] = "raw"     # no samples drawn: one program for both
    if res["sampler"] == "wishart":
        for key in ("N", "n"):
            if res[key] != "inf" and res[key] < res["d"]:
                raise ValueError(f"sampler='wishart' needs {key} >= d={res['d']} (or the "
                                 f"population); got {key}={res[key]}; use sampler='raw'")
    return res


def _sweep_group_key(cfg: Mapping) -> tuple:
    return ("bilevel", cfg["d"], cfg["k"], cfg["T"], cfg["N"], cfg["support"], cfg["n"],
            cfg["ft_rank"], cfg["adapter"], cfg["outer_steps"], cfg["record_every"],
            cfg["sampler"])


def _count(x):
    return None if x == "inf" else int(x)


def sweep_shape(cfg: Mapping, group=None, m: int = 1) -> Shape:
    """The static :class:`Shape` of validated ``"bilevel"`` configurations: ``cfg``'s sizes,
    padded to what every configuration of ``group`` (default ``[cfg]``) needs (largest K, widest
    adapter, the method traced when the group has several)."""
    group = [cfg] if group is None else list(group)
    methods = {c["method"] for c in group}
    return make_shape(cfg["d"], cfg["k"], cfg["T"], N=_count(cfg["N"]),
                      support=cfg["support"] if cfg["N"] != "inf" else None,
                      n=_count(cfg["n"]), m=m, ft_rank=cfg["ft_rank"], adapter=cfg["adapter"],
                      width=max(c["inner_rank"] for c in group),
                      inner_length=max(c["inner_steps"] for c in group),
                      outer_steps=cfg["outer_steps"], record_every=cfg["record_every"],
                      sampler=cfg["sampler"],
                      methods=methods.pop() if len(methods) == 1 else "all")


def _sweep_hyper(c: Mapping) -> Hyper:
    """The traced values of one configuration, as Python numbers (the sweep stacks them)."""
    return Hyper(noise_std=float(c["noise_std"]), method_id=METHODS.index(c["method"]),
                 inner_steps=int(c["inner_steps"]), inner_lr=float(c["inner_lr"]),
                 outer_lr=float(c["outer_lr"]), start_lr=float(c["start_lr"]),
                 inner_rank=int(c["inner_rank"]), inner_full=float(c["inner_full"]),
                 init_scale=float(c["init_scale"]))


def _sweep_truth(given, c: Mapping, dtype):
    if given is None:
        truth = protocols.truth_for(c)
    else:
        protocols.check_given_truth(given, c)
        truth = given
    return tuple(np.asarray(x, dtype) for x in (truth.A_star, truth.U_star, truth.U_new))


def _sweep_batch(cfgs: list, given, dtype, group: list) -> protocols.Batch:
    # the program calls LAPACK (the SVD of the fine-tuning bias, the fit at finite n): a stored copy
    # is loaded only after jaxlib's CPU LAPACK kernels are initialised (linmeta.program_cache)
    truths, cache = [], {}
    for i, c in enumerate(cfgs):
        g = None if given is None else given[i]
        key = ("given", id(g)) if g is not None else ("seed", c["truth_seed"])
        if key not in cache:
            cache[key] = _sweep_truth(g, c, dtype)
        truths.append(cache[key])
    m = truths[0][2].shape[0]
    if any(t[2].shape[0] != m for t in truths):
        raise ValueError("the truths of one batch must have the same number of unseen tasks")
    shape = sweep_shape(cfgs[0], group, m)
    return protocols.Batch(shape, [_sweep_hyper(c) for c in cfgs], truths, None)


def _sweep_run(truth, keys, hyper: Hyper, shape: Shape) -> SweepRecord:
    """:func:`run_protocol` on a truth given as its arrays ``(A*, U*, U_new)``."""
    out = run_protocol(Truth(*truth), keys, hyper, shape)
    fields = out._asdict()
    fields["retrain_diverged"] = fields.pop("diverged")
    return SweepRecord(**fields)


def _sweep_results(cfg: Mapping, batch: protocols.Batch, rec: SweepRecord, flags) -> dict:
    shape = batch.shape
    res: dict[str, Any] = {}
    for key in SWEEP_RESULT_KEYS:
        if key.endswith("_diverged"):
            res[key] = bool(flags[key[:-len("_diverged")]])
        elif key == "stalled":
            res[key] = bool(rec.stalled)
        else:
            res[key] = float(getattr(rec, key))
    res["trajectories"] = {
        "objective": np.asarray(rec.objective_traj),
        "base_error": np.asarray(rec.base_error_traj),
        "outer_steps": record_steps(shape.outer_steps, shape.record_every),
        "inner_objective": np.asarray(rec.inner_objective_traj),
        "inner_steps": np.arange(shape.inner_length + 1),
    }
    return res


def _retrain_step_sizes(cfg: Mapping) -> tuple:
    return ("outer_lr", "start_lr") if cfg.get("start_lr", 0) > 0 else ("outer_lr",)


SWEEP_STAGES = (
    protocols.Stage("inner", "the bilevel inner loop (task adaptation)",
                    fields=("inner_objective_traj",), step_sizes=("inner_lr",),
                    curves=("inner_objective",), steps=("inner_steps",)),
    protocols.Stage("retrain", "bilevel retraining (outer loop)", fields=("objective_traj",),
                    step_sizes=_retrain_step_sizes, curves=("objective",),
                    steps=("outer_steps",)),
)

#: What ``linmeta plot`` draws for ``"bilevel"`` (:mod:`linmeta.front.plotting`): the bilevel
#: base (blue) beside SR's exact minimiser (red), fine-tuning biases dashed.
SWEEP_PLOTS = protocols.Plots(
    curves=(
        protocols.Curves("retrain_curves", "bilevel retraining", "query excess objective",
                         (protocols.Series("objective", "bilevel (after adaptation)", "tab:blue"),),
                         steps="outer_steps", xlabel="outer step"),
        protocols.Curves("base_error_curves", "base error during retraining",
                         "||A - A*||_F",
                         (protocols.Series("base_error", "bilevel base", "tab:blue"),),
                         steps="outer_steps", xlabel="outer step",
                         levels=(protocols.Series("sr_base_error", "SR's exact minimiser",
                                                  "tab:red"),)),
        protocols.Curves("inner_curves", "the inner loop (first record, or the first that blew "
                         "up)", "support excess objective",
                         (protocols.Series("inner_objective", "inner loop", "tab:green"),),
                         steps="inner_steps", xlabel="inner step", sweep=False)),
    finals=(
        protocols.Finals("fine-tuning excess risk ||M_ft - M*_new||_F^2", (
            protocols.Series("ft_excess_risk", "bilevel", "tab:blue"),
            protocols.Series("sr_ft_excess_risk", "SR", "tab:red"),
            protocols.Series("ft_bias", "bilevel: rank-ft_rank bias (n -> inf)", "tab:blue",
                             dashed=True),
            protocols.Series("sr_ft_bias", "SR: rank-ft_rank bias (n -> inf)", "tab:red",
                             dashed=True))),
        protocols.Finals("base error ||A_hat - A*||_F", (
            protocols.Series("base_error", "bilevel", "tab:blue"),
            protocols.Series("sr_base_error", "SR", "tab:red"))),
        protocols.Finals("final query excess objective", (
            protocols.Series("objective", "bilevel", "tab:blue"),))),
    split_by=("ft_rank", "inner_rank"),
    fixed=("d", "k", "T", "N", "n", "noise_std", "method", "inner_steps", "outer_steps"),
    note=("bilevel: the base retrained by the chosen method (MAML, first-order MAML or Reptile) "
          "with a low-rank inner loop; SR: standard retraining's exact minimiser; both fine-tuned "
          "on the unseen task at rank ft_rank (docs/bilevel.md)"))

#: The protocol ``"bilevel"`` of :mod:`linmeta.engine.protocols` (registered by :mod:`linmeta.families.bilevel`).
SWEEP_PROTOCOL = protocols.Protocol(
    name="bilevel", run=_sweep_run, defaults=SWEEP_DEFAULTS, hyper=Hyper, shape=sweep_shape,
    truth=lambda cfg, dtype: protocols.truth_for(cfg), truth_keys=("truth_seed", "d", "k", "T"),
    stages=SWEEP_STAGES, checks=_SWEEP_CHECKS, result_keys=SWEEP_RESULT_KEYS,
    description=("bilevel retraining (MAML, first-order MAML, Reptile) with low-rank inner loops "
                 "from A = 0, SR's exact minimiser as reference, both fine-tuned at rank ft_rank "
                 "on an unseen task (linmeta.bilevel, docs/bilevel.md)"),
    validate=_sweep_validate, group_key=_sweep_group_key, batch=_sweep_batch,
    results=_sweep_results, plots=SWEEP_PLOTS)

# the same protocol without the validate hook: its generic, per-key validation
_GENERIC_VALIDATION = dataclasses.replace(SWEEP_PROTOCOL, validate=None)
