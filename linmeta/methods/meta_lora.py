"""Meta-LoRA (LoRA-ML) retraining, docs/theory.md#meta-lora and claims C3-C5.

Joint objective over a shared base A and per-task symmetric adapters U_t (d x r):

    F(A, U) = (1/T) sum_t L_t(A + U_t U_t^T).

With ``G_t = (A + U_t U_t^T) S_xx,t - S_yx,t`` (gradient of L_t at the task matrix):

    dF/dA = (1/T) sum_t G_t,            dF/dU_t = (1/T) (G_t + G_t^T) U_t.

**Base eliminated.** For fixed U, F is quadratic in A with minimiser

    A(U) = (sum_t S_yx,t - U_t U_t^T S_xx,t) (sum_t S_xx,t)^{-1}

(population: ``A(U) = A* + (1/T) sum_t (R*_t - U_t U_t^T)``), leaving the reduced objective
``F(A(U), U)``. In the population its excess is ``G(U)/T`` with
``G(U) = 1/2 sum_t ||E_t - Ebar||_F^2``, ``E_t = R*_t - U_t U_t^T``, ``Ebar = mean_t E_t``
(:func:`population_reduced_objective`, the object of the paper's analysis).

Solvers (all compiled, per-task work batched over the task axis, starts vmapped):

- ``"alternating"``: the paper's protocol exactly. From ``A = 0`` and ``U_t ~ N(0, 0.1^2)`` each
  outer iteration takes ``inner_steps`` (10) simultaneous gradient steps on every U_t with step
  ``lr_adapter`` (0.003) and then one step on A with ``lr_base`` (0.03); 3000 outer iterations.
  As in the paper's code, the adapter step uses the gradient of the task's own loss,
  ``(G_t + G_t^T) U_t`` (= T dF/dU_t), and the base step uses ``dF/dA``.
- ``"joint_gd"``: simultaneous gradient descent on (A, U) with the exact gradient of F.
- ``"reduced_gd"``: gradient descent on U for the reduced objective ``F(A(U), U)`` (step
  ``lr_adapter``), the base set to ``A(U)`` after every step.
- ``"newton"``: saddle-free damped Newton on the reduced objective (Hessian eigenvalues replaced by
  their absolute values plus a Levenberg-Marquardt shift ``mu = ||grad||``, Armijo backtracking).
  It drives the population objective below 1e-20 in float64 so that recovery can be tested at
  that precision. It forms the (T d r)^2 Hessian (by T d r Hessian-vector products, each holding
  T d^2 numbers) and its eigendecomposition, O((T d r)^3) per iteration: meant for T d r up to a
  few hundred; refused above :data:`NEWTON_MAX_UNKNOWNS` or past the memory budget.
- ``"lbfgs"``: matrix-free quasi-Newton (``optax.lbfgs``) on the same reduced objective
  (:mod:`linmeta.methods._matrix_free`): O(T d^2 r) per evaluation in the population (no
  pseudo-inverse), O(T d^3) at finite N, O(10 T d r) memory per start. Relative base error
  1e-12 or below in float64 at the population (T >= 3, 3k <= d), e.g. (d, k, T) = (256, 4, 8).
  At the population, when the centred task matrices span at most d/2 dimensions (the model's:
  m <= T k), it solves the exactly equivalent m-dimensional problem and lifts the adapters
  (:func:`population_basis`, :func:`lbfgs_run`): (d, k, T) = (4096, 16, 8) in about a minute and
  4 GiB (benchmarks/results/recovery.json), where the full-space L-BFGS would need ~13 GiB a
  start.
- ``"auto"`` (default): ``"newton"`` when ``T d r <= AUTO_NEWTON_MAX_UNKNOWNS`` (256) and its memory
  estimate fits, else ``"lbfgs"`` (:func:`default_solver`). Below the switch Newton is as fast and
  exact to the last digits; above it its cubic cost and its memory (``n_starts T d r T d^2``
  numbers for the Hessian) grow past L-BFGS's by orders of magnitude.

Memory: before compiling, :func:`solver_memory` estimates the peak working set of the chosen
solver, and a problem past :func:`memory_budget` (half the host memory, or 80% of an
accelerator's) is refused with a ``ValueError`` naming what fits (``method='lbfgs'``) instead of
running out of memory; L-BFGS runs its starts in batches that fit (:func:`lbfgs_start_batch`) and
is refused only when one start does not fit (at the population: when the compression's own
temporaries, :func:`~linmeta.methods._matrix_free.compression_memory`, do not fit, or the
compressed problem's starts do not).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from linmeta.core._validate import (check_array, check_choice, check_int, check_scalar,
                                    format_bytes, memory_budget)
from linmeta.core.data import TaskStats
from linmeta.core.divergence import check_history
from linmeta.core.lora import init_factor, symmetric_delta, symmetric_grad
from linmeta.core.losses import excess_loss, ols_solution, task_loss
from ._common import DENSE_MAX_D, History, RetrainResult, run_steps
from ._matrix_free import (centred_task_matrices, compress_population, compression_memory,
                           default_rtol, finite_base, finite_excess, finite_parts,
                           lbfgs_minimise, population_excess, population_span, sketch_width)
from .standard import _check_stats

__all__ = ["meta_lora", "meta_lora_objective", "meta_lora_excess", "optimal_base",
           "reduced_objective", "population_reduced_objective", "alternating_step",
           "joint_gd_step", "NewtonInfo", "default_solver", "solver_memory", "memory_budget",
           "lbfgs_start_batch", "LbfgsInfo", "LbfgsRun", "lbfgs_run", "population_basis",
           "AUTO_NEWTON_MAX_UNKNOWNS",
           "NEWTON_MAX_UNKNOWNS"]


def meta_lora_objective(A, U, stats: TaskStats):
    """``F(A, U) = (1/T) sum_t L_t(A + U_t U_t^T)`` (the paper's empirical loss, noise included)."""
    return jnp.mean(task_loss(A + symmetric_delta(U), stats), axis=-1)


def meta_lora_excess(A, U, stats: TaskStats, B=None):
    """``F(A, U) - (1/T) sum_t min L_t`` computed as a sum of squares (0 at a zero-loss fit)."""
    return jnp.mean(excess_loss(A + symmetric_delta(U), stats, B), axis=-1)


def _pooled_pinv(stats):
    return jnp.linalg.pinv(jnp.sum(stats.Sxx, axis=-3), hermitian=True)


def optimal_base(U, stats: TaskStats, pooled_pinv=None):
    """Minimiser ``A(U)`` of F over the base for fixed adapters."""
    P = _pooled_pinv(stats) if pooled_pinv is None else pooled_pinv
    C = jnp.sum(stats.Syx - symmetric_delta(U) @ stats.Sxx, axis=-3)
    return C @ P


def reduced_objective(U, stats: TaskStats, B=None, pooled_pinv=None):
    """Excess of the reduced objective ``F(A(U), U)`` (population: ``G(U) / T``)."""
    return meta_lora_excess(optimal_base(U, stats, pooled_pinv), U, stats, B)


def population_reduced_objective(U, R_star):
    """``G(U) = 1/2 sum_t ||E_t - Ebar||_F^2`` with ``E_t = R*_t - U_t U_t^T`` (no 1/T)."""
    E = R_star - symmetric_delta(U)
    D = E - jnp.mean(E, axis=-3, keepdims=True)
    return 0.5 * jnp.sum(D * D, axis=(-3, -2, -1))


def _task_grads(A, U, stats):
    return (A + symmetric_delta(U)) @ stats.Sxx - stats.Syx  # (T, d, d)


def alternating_step(A, U, stats: TaskStats, lr_adapter, lr_base, inner_steps: int = 10):
    """One outer iteration of the paper's protocol: ``inner_steps`` adapter steps, then one base step."""
    def inner(U, _):
        return U - lr_adapter * symmetric_grad(_task_grads(A, U, stats), U), None

    U = lax.scan(inner, U, None, length=inner_steps)[0]
    A = A - lr_base * jnp.mean(_task_grads(A, U, stats), axis=-3)
    return A, U


def joint_gd_step(A, U, stats: TaskStats, lr_adapter, lr_base):
    """One simultaneous gradient step on (A, U) with the exact gradient of F."""
    G = _task_grads(A, U, stats)
    T = G.shape[-3]
    return A - lr_base * jnp.mean(G, axis=-3), U - lr_adapter * symmetric_grad(G, U) / T


class NewtonInfo(NamedTuple):
    """Per start: iterations used, final gradient norm, objective per iteration (NaN after stop)."""

    iterations: jax.Array
    grad_norm: jax.Array
    trace: jax.Array


def _saddle_free_newton(f, x0, max_iter: int, ftol, gtol):
    """Minimise ``f`` from ``x0`` by saddle-free damped Newton inside ``lax.while_loop``.

    An iteration: ``g`` the gradient, ``V diag(w) V^T`` the Hessian, the step
    ``p = -V (V^T g) / (|w| + ||g||)`` (so ``||p|| <= 1``), an Armijo backtracking line search
    (``f(x + t p) <= f(x) + 1e-4 t g.p``, t = 1, 1/2, ..., at most 60 halvings); the step is kept
    only if it lowers f, else the run stops. Stops also when ``f <= ftol``, when the gradient at
    the start of the last step was at most ``gtol``, or after ``max_iter`` iterations. Returns
    ``(x, f(x), NewtonInfo)``; the trace holds f after each iteration (NaN after the stop)."""
    grad = jax.grad(f)
    hess = jax.hessian(f)
    dt = x0.dtype
    trace0 = jnp.full((max_iter + 1,), jnp.nan, dt).at[0].set(f(x0))

    def cond(c):
        x, fx, gn, it, stalled, trace = c
        return (it < max_iter) & (fx > ftol) & (gn > gtol) & (~stalled)

    def body(c):
        x, fx, _, it, _, trace = c
        g = grad(x)
        gn = jnp.linalg.norm(g)
        w, V = jnp.linalg.eigh(hess(x))
        p = -V @ ((V.T @ g) / (jnp.abs(w) + gn))
        slope = g @ p

        def ls_cond(s):
            t, ft, n = s
            return (ft > fx + 1e-4 * t * slope) & (n < 60)

        def ls_body(s):
            t, _, n = s
            t = 0.5 * t
            return t, f(x + t * p), n + 1

        t, ft, n = lax.while_loop(ls_cond, ls_body, (jnp.asarray(1.0, dt), f(x + p), 0))
        ok = ft < fx
        x_new = jnp.where(ok, x + t * p, x)
        f_new = jnp.where(ok, ft, fx)
        trace = trace.at[it + 1].set(f_new)
        return x_new, f_new, gn, it + 1, ~ok, trace

    init = (x0, f(x0), jnp.asarray(jnp.inf, dt), 0, jnp.asarray(False), trace0)
    x, fx, gn, it, _, trace = lax.while_loop(cond, body, init)
    return x, fx, NewtonInfo(it, jnp.linalg.norm(grad(x)), trace)


_METHODS = ("auto", "newton", "lbfgs", "alternating", "joint_gd", "reduced_gd")

AUTO_NEWTON_MAX_UNKNOWNS = 256   # "auto" uses Newton up to this many unknowns T d r
NEWTON_MAX_UNKNOWNS = 2048       # method="newton" is refused above it (eigh of n x n per iteration)
_DEFAULT_MAX_ITER = {"newton": 200, "lbfgs": 5000}


def solver_memory(method: str, T: int, d: int, rank: int, n_starts: int = 8,
                  itemsize: int = 8) -> int:
    """Estimated peak bytes of the ``"newton"`` or ``"lbfgs"`` solver (all starts vmapped).

    Newton: the Hessian is built from ``n = T d r`` Hessian-vector products evaluated together,
    each with ~8 (T, d, d) temporaries, plus the n x n Hessian and its eigenvectors:
    ``n_starts (8 n T d^2 + 4 n^2)`` numbers. L-BFGS: ~12 (T, d, d) temporaries of one evaluation
    and 2 x 10 + 12 vectors of length n per start, plus ~6 shared (T, d, d) statistics.
    Calibrated against peak RSS on CPU within a factor of ~2 (benchmarks/scaling.py)."""
    n = T * d * rank
    td2 = T * d * d
    if method == "newton":
        numbers = n_starts * (8 * n * td2 + 4 * n * n) + 6 * td2
    else:
        numbers = n_starts * (12 * td2 + (2 * 10 + 12) * n) + 6 * td2
    return int(numbers * itemsize)


def default_solver(T: int, d: int, rank: int, n_starts: int = 8, itemsize: int = 8) -> str:
    """The solver ``method="auto"`` runs: ``"newton"`` when ``T d rank <=
    AUTO_NEWTON_MAX_UNKNOWNS`` and its memory estimate fits :func:`memory_budget`, else
    ``"lbfgs"``."""
    if T * d * rank <= AUTO_NEWTON_MAX_UNKNOWNS and \
            solver_memory("newton", T, d, rank, n_starts, itemsize) <= memory_budget():
        return "newton"
    return "lbfgs"


def _check_fits(method: str, T: int, d: int, r: int, n_starts: int, itemsize: int) -> None:
    """Refuse (ValueError) a second-order problem too large for ``method``, naming what fits."""
    n = T * d * r
    budget = memory_budget()
    if method == "newton":
        need = solver_memory("newton", T, d, r, n_starts, itemsize)
        if n > NEWTON_MAX_UNKNOWNS or need > budget:
            why = (f"T*d*rank = {n} unknowns exceeds {NEWTON_MAX_UNKNOWNS}" if
                   n > NEWTON_MAX_UNKNOWNS else
                   f"it needs ~{format_bytes(need)} for {n_starts} starts, over the budget "
                   f"{format_bytes(budget)}")
            raise ValueError(f"method='newton' forms the ({n} x {n}) Hessian of the reduced "
                             f"objective and {why}; use method='lbfgs' (matrix-free) or "
                             f"method='auto'")
        return
    if lbfgs_start_batch(T, d, r, n_starts, itemsize) < 1:
        need = solver_memory("lbfgs", T, d, r, 1, itemsize)
        raise ValueError(f"method='lbfgs' needs ~{format_bytes(need)} for one start (T={T}, "
                         f"d={d}, rank={r}), over the memory budget {format_bytes(budget)}; "
                         f"no Meta-LoRA solver "
                         f"fits: reduce d, T or rank, or use a machine with more memory")


def lbfgs_start_batch(T: int, d: int, rank: int, n_starts: int, itemsize: int = 8) -> int:
    """Starts the L-BFGS solver runs at once (vmapped): all ``n_starts`` when their memory
    estimate fits :func:`memory_budget`, else as many as fit (the batches then run one after
    another); 0 when not even one start fits."""
    shared = solver_memory("lbfgs", T, d, rank, 0, itemsize)
    per_start = solver_memory("lbfgs", T, d, rank, 1, itemsize) - shared
    return int(max(0, min(n_starts, (memory_budget() - shared) // max(per_start, 1))))


def meta_lora(source: TaskStats, rank, *, key=None, method: str = "auto", n_starts=None,
              init_scale=None, U0=None, A0=None,
              outer_steps: int = 3000, inner_steps: int = 10, lr_adapter=0.003, lr_base=0.03,
              steps: int = 30000, max_iter=None, ftol=1e-26, gtol=1e-14, rtol=None,
              record_every: int = 1) -> RetrainResult:
    """Meta-LoRA retraining: shared base plus one rank-``rank`` symmetric adapter per task.

    Args:
      source: retraining-task statistics (population or finite samples).
      rank: adapter rank r (1 <= r <= d); the theory uses r = k.
      key: PRNG key for the adapter initialisation ``U_t ~ N(0, init_scale^2)`` (one per start).
      method: ``"auto"`` (default: ``"newton"`` for ``T d rank <= 256``, else ``"lbfgs"``; see
        :func:`default_solver`), ``"newton"`` (dense saddle-free Newton; global minimiser to
        float64 precision, restarts kept best), ``"lbfgs"`` (matrix-free quasi-Newton, same
        objective and restarts, for large problems), ``"alternating"`` (the paper's protocol),
        ``"joint_gd"`` or ``"reduced_gd"``.
      n_starts: independent initialisations, run vmapped; the lowest final objective is returned
        (default 8 for ``"auto"``, ``"newton"`` and ``"lbfgs"``, 1 otherwise).
        ``start_objectives`` reports all of them.
      init_scale: standard deviation of the initial adapters (default 0.1, the paper's).
      U0: explicit initial adapters (T, d, r) or (n_starts, T, d, r); overrides ``key``.
      A0: initial base for the gradient methods (default zero, the paper's).
      outer_steps, inner_steps, lr_adapter, lr_base: the alternating protocol (paper's defaults);
        ``steps`` with ``lr_adapter``/``lr_base`` for ``"joint_gd"`` (``lr_adapter`` for
        ``"reduced_gd"``).
      max_iter, ftol, gtol: Newton / L-BFGS stopping rules (iterations, default 200 / 5000;
        excess objective; gradient norm).
      rtol: L-BFGS only: also stop when the excess objective is below ``rtol`` times its value at
        U = 0 (default 1e-28 in float64, 1e-10 in float32).
      record_every: history stride (outer iterations / steps) for the gradient methods.

    Returns:
      :class:`~linmeta.methods.RetrainResult` with ``base`` = A_hat, ``adapters`` = U (T, d, r).
      For ``"newton"`` and ``"lbfgs"`` the base is ``A(U)``; ``history.value`` holds the
      objective per iteration of the best start (NaN after it stopped).

    Raises:
      linmeta.DivergenceError: a gradient method's best start diverged (non-finite, or its
        objective rose 1000-fold; :mod:`linmeta.core.divergence`): names the step sizes and the
        iteration. Not raised inside a caller's ``jit`` (traced values).
      ValueError: bad arguments; or a problem too large for the second-order solver asked for
        (``method="newton"`` above :data:`NEWTON_MAX_UNKNOWNS` unknowns or past the memory
        budget: use ``"lbfgs"``; ``"lbfgs"`` when one start does not fit the budget).
    """
    stats = _check_stats(source)
    method = check_choice("method", method, _METHODS)
    T, d = stats.T, stats.d
    r = check_int("rank", rank, 1, d, hi_label="d")
    dt = stats.Sxx.dtype
    second_order = method in ("auto", "newton", "lbfgs")
    if n_starts is None:
        n_starts = 8 if second_order and U0 is None else 1
    n_starts = check_int("n_starts", n_starts, 1)
    init_scale = 0.1 if init_scale is None else init_scale
    check_scalar("init_scale", init_scale, 0.0, lo_open=True)
    if U0 is None:
        if key is None:
            raise ValueError("key is required (a jax.random key for the adapter initialisation) "
                             "unless U0 is given")
        keys = jax.random.split(key, n_starts)
        U0 = jax.vmap(lambda kk: init_factor(kk, (T, d, r), init_scale, dt))(keys)
    else:
        U0 = check_array("U0", U0)
        if U0.ndim == 3:
            U0 = U0[None]
        if U0.ndim != 4 or U0.shape[1:] != (T, d, r):
            raise ValueError(f"U0 must have shape (T={T}, d={d}, rank={r}) or "
                             f"(n_starts, {T}, {d}, {r}), got {tuple(U0.shape)}")
        U0 = U0.astype(dt)
    n_starts = U0.shape[0]
    A0 = jnp.zeros((d, d), dt) if A0 is None else check_array("A0", A0, shape=(d, d)).astype(dt)
    if second_order:
        if method == "auto":
            method = default_solver(T, d, r, n_starts, dt.itemsize)
        max_iter = _DEFAULT_MAX_ITER[method] if max_iter is None else max_iter
        max_iter = check_int("max_iter", max_iter, 1)
        check_scalar("ftol", ftol, 0.0)
        check_scalar("gtol", gtol, 0.0)
        if method == "newton":
            _check_fits(method, T, d, r, n_starts, dt.itemsize)
            return _newton_kernel(stats, U0, jnp.asarray(ftol, dt), jnp.asarray(gtol, dt),
                                  max_iter=max_iter)
        rtol = default_rtol(dt) if rtol is None else rtol
        check_scalar("rtol", rtol, 0.0)
        return lbfgs_run(stats, U0, ftol, gtol, rtol, max_iter=max_iter).result
    check_scalar("lr_adapter", lr_adapter, 0.0, lo_open=True)
    check_scalar("lr_base", lr_base, 0.0, lo_open=True)
    if method == "alternating":
        n_steps = check_int("outer_steps", outer_steps, 0)
        inner_steps = check_int("inner_steps", inner_steps, 0)
    else:
        n_steps = check_int("steps", steps, 0)
    record_every = check_int("record_every", record_every, 1)
    res = _gd_kernel(stats, U0, A0, jnp.asarray(lr_adapter, dt), jnp.asarray(lr_base, dt),
                     method=method, n_steps=n_steps, inner_steps=inner_steps,
                     record_every=record_every)
    sizes = {"lr_adapter": lr_adapter} if method == "reduced_gd" else {"lr_adapter": lr_adapter,
                                                                        "lr_base": lr_base}
    check_history(f"Meta-LoRA retraining ({method})", res.history.step, res.history.value, sizes,
                  final=(res.base, res.adapters))
    return res


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _newton_kernel(stats, U0, ftol, gtol, *, max_iter):
    _, T, d, r = U0.shape
    B = ols_solution(stats)
    P = _pooled_pinv(stats)

    def f(x):
        return reduced_objective(x.reshape(T, d, r), stats, B, P)

    def solve(u0):
        x, fx, info = _saddle_free_newton(f, u0.reshape(-1), max_iter, ftol, gtol)
        U = x.reshape(T, d, r)
        return optimal_base(U, stats, P), U, fx, info

    A, U, obj, info = jax.vmap(solve)(U0)
    obj = jnp.where(jnp.isfinite(obj), obj, jnp.inf)
    best = jnp.argmin(obj)
    hist = History(jnp.arange(max_iter + 1), info.trace[best])
    return RetrainResult(A[best], U[best], obj[best], hist, obj)


def _is_population(stats: TaskStats) -> bool:
    """True when every task's ``S_xx`` is exactly the identity (concrete values only)."""
    if isinstance(stats.Sxx, jax.core.Tracer):
        return False
    Sxx = np.asarray(stats.Sxx)
    return bool(np.array_equal(Sxx, np.broadcast_to(np.eye(Sxx.shape[-1], dtype=Sxx.dtype),
                                                    Sxx.shape)))


class LbfgsInfo(NamedTuple):
    """Per start: iterations, evaluations of the objective and its gradient, final gradient norm,
    lowest objective after each iteration (NaN after the stop)."""

    iterations: jax.Array
    evaluations: jax.Array
    grad_norm: jax.Array
    trace: jax.Array


@functools.partial(jax.jit, static_argnames=("max_iter", "population", "start_batch"))
def _lbfgs_kernel(stats, U0, ftol, gtol, rtol, *, max_iter, population, start_batch):
    """L-BFGS from every start (vmapped in batches of ``start_batch``); returns the
    :class:`RetrainResult` of the best start and the :class:`LbfgsInfo` of all."""
    _, T, d, r = U0.shape
    if population:  # f = G(U)/T on the centred task matrices: no pseudo-inverse, O(T d^2 r)
        C = centred_task_matrices(stats.Syx)

        def f(x):
            return population_excess(x.reshape(T, d, r), C)

        def base(U):
            return jnp.mean(stats.Syx - symmetric_delta(U), axis=-3)
    else:  # B_t and the pooled pseudo-inverse once, outside the loop
        B = ols_solution(stats)
        P = _pooled_pinv(stats)

        def f(x):
            return reduced_objective(x.reshape(T, d, r), stats, B, P)

        def base(U):
            return optimal_base(U, stats, P)

    return _lbfgs_starts(f, base, U0, ftol, gtol, rtol, max_iter, start_batch)


def _lbfgs_starts(f, base, U0, ftol, gtol, rtol, max_iter, start_batch, noise_rel=0.0):
    """L-BFGS on the flat objective ``f`` from every start (traced inside a kernel);
    ``noise_rel``: rounding level of the values relative to f at U = 0 (see
    :func:`~linmeta.methods._matrix_free.lbfgs_minimise`'s ``f_noise``)."""
    _, T, d, r = U0.shape
    f_ref = f(jnp.zeros((T * d * r,), U0.dtype))
    f_stop = jnp.maximum(ftol, rtol * f_ref)

    def solve(u0):
        x, fx, it, evals, gn, trace = lbfgs_minimise(f, u0.reshape(-1), max_iter, f_stop, gtol,
                                                     noise_rel * f_ref)
        return x.reshape(T, d, r), fx, LbfgsInfo(it, evals, gn, trace)

    if start_batch >= U0.shape[0]:
        U, obj, info = jax.vmap(solve)(U0)
    else:
        U, obj, info = lax.map(solve, U0, batch_size=start_batch)
    obj = jnp.where(jnp.isfinite(obj), obj, jnp.inf)
    best = jnp.argmin(obj)
    hist = History(jnp.arange(max_iter + 1), info.trace[best])
    return RetrainResult(base(U[best]), U[best], obj[best], hist, obj), info


@functools.partial(jax.jit, static_argnames=("max_iter", "start_batch"))
def _lbfgs_finite_kernel(parts, U0, ftol, gtol, rtol, *, max_iter, start_batch):
    """L-BFGS at finite N on the low-rank form of the reduced objective
    (:func:`~linmeta.methods._matrix_free.finite_excess`)."""
    _, T, d, r = U0.shape
    noise = 64 * jnp.finfo(U0.dtype).eps  # the value is a sum of terms of the size of f(0)
    return _lbfgs_starts(lambda x: finite_excess(x.reshape(T, d, r), parts),
                         lambda U: finite_base(U, parts), U0, ftol, gtol, rtol, max_iter,
                         start_batch, noise)


def finite_memory(T: int, d: int, rank: int, n_starts: int, itemsize: int = 8) -> int:
    """Estimated peak bytes of the finite-N low-rank L-BFGS path beyond the statistics: ``H``
    (T d^2), ~5 d x d temporaries of :func:`~linmeta.methods._matrix_free.finite_parts`, and per
    start ~12 (T, d, (T+1) r) arrays of an evaluation plus 2 x 10 + 12 vectors of T d r."""
    w = (T + 1) * rank
    return int((T * d * d + 5 * d * d + n_starts * (12 * T * d * w + 32 * T * d * rank))
               * itemsize)


class LbfgsRun(NamedTuple):
    """What :func:`lbfgs_run` did: the :class:`RetrainResult` of the best start, the
    :class:`LbfgsInfo` of every start, and ``span_dim``: the dimension m of the exact compressed
    problem that was solved (``d`` when L-BFGS ran in the full space)."""

    result: RetrainResult
    info: LbfgsInfo
    span_dim: int


def population_basis(stats: TaskStats, rank: int):
    """Orthonormal basis ``Q`` (d, m) of the joint span of the symmetric centred task matrices and
    the per-task squared remainders ``||N_t||_F^2`` (:mod:`linmeta.methods._matrix_free`), or
    ``None`` when the compression would not pay (m > d / 2) or is not exact to rounding.
    Population statistics only (``S_xx = I``, concrete values)."""
    T, d = stats.T, stats.d
    dt = stats.Syx.dtype
    eps = float(jnp.finfo(dt).eps)
    width = sketch_width(T, d, rank)
    while True:
        if 2 * width > d:
            return None
        Q, s = population_span(stats.Syx, width=width)
        s = np.asarray(s)
        m = max(1, int(np.sum(s > np.sqrt(eps) * s[0])))
        if m < width:  # a gap: the sketch holds the whole span
            break
        width = 2 * width
    Q = Q[:, :m]
    K, rest, norms, mean_norm = compress_population(stats.Syx, Q)
    tol = 64 * eps * (np.asarray(norms) + float(mean_norm))
    if not np.all(np.sqrt(np.asarray(rest)) <= tol):
        return None
    return Q, K, rest


@jax.jit
def _lift(Syx, Q, a):
    """Adapters ``U_t = Q a_t`` and the base ``A(U) = mean_t S_yx,t - (1/T) sum_t U_t U_t^T``
    (population) without (T, d, d) temporaries."""
    U = jnp.einsum("im,tmr->tir", Q, a)
    T, d, r = U.shape
    U_all = jnp.moveaxis(U, 0, 1).reshape(d, T * r)
    return U, jnp.mean(Syx, axis=0) - (U_all @ U_all.T) / T


def lbfgs_run(stats: TaskStats, U0, ftol, gtol, rtol, *, max_iter: int,
              finite_lowrank=None) -> LbfgsRun:
    """The ``"lbfgs"`` solver from the starts ``U0`` (n_starts, T, d, r).

    Population statistics (``S_xx = I``) whose centred task matrices span at most d/2 dimensions
    (the model's: at most T k) are solved exactly in that span (:func:`population_basis`; the
    stopping rules apply to the compressed objective, which differs from the full one by the
    constant ``sum_t ||N_t||^2 / (2T)``, added to every value reported) and lifted. Finite-N
    statistics at ``d >`` DENSE_MAX_D (or ``finite_lowrank=True``) use the low-rank form of the
    reduced objective (:func:`~linmeta.methods._matrix_free.finite_excess`, O(T^2 r d^2) an
    evaluation) when every ``S_xx,t`` is positive definite; every other problem runs in the full
    space as before. Refuses (ValueError) a problem whose memory estimate is past
    :func:`memory_budget`, before any work."""
    n_starts, T, d, r = U0.shape
    dt = U0.dtype
    args = [jnp.asarray(x, dt) for x in (ftol, gtol, rtol)]
    population = _is_population(stats)
    if population and 2 * sketch_width(T, d, r) <= d:
        need = compression_memory(T, d, sketch_width(T, d, r), dt.itemsize)
        if need > memory_budget():
            raise ValueError(f"method='lbfgs' needs ~{format_bytes(need)} to compress the "
                             f"population problem (T={T}, d={d}, rank={r}), over the memory "
                             f"budget {format_bytes(memory_budget())}; no Meta-LoRA solver fits: "
                             "reduce d or T, or use a machine with more memory")
        basis = population_basis(stats, r)
        if basis is not None:
            Q, K, rest = basis
            m = Q.shape[1]
            _check_fits("lbfgs", T, m, r, n_starts, dt.itemsize)
            eye = jnp.broadcast_to(jnp.eye(m, dtype=dt), K.shape)
            small = TaskStats(eye, K, jnp.sum(K * K, axis=(-2, -1)), stats.n_samples[:T], K,
                              stats.noise_std)
            a0 = jnp.einsum("im,stir->stmr", Q, U0)
            res, info = _lbfgs_kernel(small, a0, *args, max_iter=max_iter, population=True,
                                      start_batch=lbfgs_start_batch(T, m, r, n_starts,
                                                                    dt.itemsize))
            extra = jnp.sum(rest) / (2 * T)
            U, base = _lift(stats.Syx, Q, res.adapters)
            hist = History(res.history.step, res.history.value + extra)
            out = RetrainResult(base, U, res.objective + extra, hist,
                                res.start_objectives + extra)
            return LbfgsRun(out, info, m)
    if not population and (d > DENSE_MAX_D if finite_lowrank is None else finite_lowrank):
        need = finite_memory(T, d, r, n_starts, dt.itemsize)
        if need > memory_budget():
            raise ValueError(f"method='lbfgs' at finite N needs ~{format_bytes(need)} for "
                             f"{n_starts} starts (T={T}, d={d}, rank={r}), over the memory "
                             f"budget {format_bytes(memory_budget())}; use fewer starts "
                             "(n_starts), or reduce d or T")
        parts = finite_parts(stats.Sxx, stats.Syx)
        if bool(parts[-1]):
            res, info = _lbfgs_finite_kernel(parts, U0, *args, max_iter=max_iter,
                                             start_batch=n_starts)
            return LbfgsRun(res, info, d)
        del parts  # a singular or ill-conditioned S_xx: the pseudo-inverse form below
    _check_fits("lbfgs", T, d, r, n_starts, dt.itemsize)
    res, info = _lbfgs_kernel(stats, U0, *args, max_iter=max_iter, population=population,
                              start_batch=lbfgs_start_batch(T, d, r, n_starts, dt.itemsize))
    return LbfgsRun(res, info, d)


@functools.partial(jax.jit, static_argnames=("method", "n_steps", "inner_steps", "record_every"))
def _gd_kernel(stats, U0, A0, lr_u, lr_a, *, method, n_steps, inner_steps, record_every):
    B = ols_solution(stats)
    P = _pooled_pinv(stats)
    if method == "alternating":
        def step(s):
            return alternating_step(s[0], s[1], stats, lr_u, lr_a, inner_steps)
    elif method == "reduced_gd":
        grad_u = jax.grad(reduced_objective)

        def step(s):
            U = s[1] - lr_u * grad_u(s[1], stats, B, P)
            return optimal_base(U, stats, P), U
    else:
        def step(s):
            return joint_gd_step(s[0], s[1], stats, lr_u, lr_a)

    def run(u0):
        (A, U), hist = run_steps(step, (A0, u0), n_steps, record_every,
                                 lambda s: meta_lora_excess(s[0], s[1], stats, B))
        return A, U, meta_lora_excess(A, U, stats, B), hist

    A, U, obj, hist = jax.vmap(run)(U0)
    obj = jnp.where(jnp.isfinite(obj), obj, jnp.inf)
    best = jnp.argmin(obj)
    return RetrainResult(A[best], U[best], obj[best],
                         History(hist.step[0], hist.value[best]), obj)
