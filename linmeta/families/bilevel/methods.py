"""Bilevel retraining with low-rank inner loops: MAML, first-order MAML, Reptile (docs/bilevel.md).

Retraining simulates the fine-tuning that follows. Each task t adapts the shared base A by K
gradient steps of size ``alpha`` (the inner loop) on a rank-r adapter ``Delta(theta)``, on its
*support* statistics S_t, with the base held fixed:

    theta_0 = theta_start,   theta_{j+1} = theta_j - alpha grad_theta L^S_t(A + Delta(theta_j)),

and the base is trained (the outer loop, step ``beta``) for what the adapted model does on the
task's *query* statistics Q_t:

    F_K(A, theta_start) = (1/T) sum_t L^Q_t(A + Delta(theta_K^t(A, theta_start))).      (B1)

Adapters (``adapter=``; theta and Delta(theta)):

- ``"asymmetric"``: theta = (U, V), U, V in R^{d x r}, Delta = U V^T (the fine-tuning adapter);
  gradients ``(G V, G^T U)`` with ``G = grad L(M) = M S_xx - S_yx`` (:mod:`linmeta.core.lora`).
- ``"symmetric"``: theta = U, Delta = U U^T (Meta-LoRA's adapter); gradient ``(G + G^T) U``.
- ``"full"``: theta = W in R^{d x d}, Delta = W (plain MAML: the inner loop moves the whole
  task matrix M = A + W); gradient G.

Starts (``start=``; one start shared by all tasks, drawn once per run start and kept fixed over the
outer iterations unless it is learned):

- ``"lora"`` (asymmetric only, the usual LoRA start): U ~ N(0, s^2), V = 0, so Delta = 0 and the V
  gradient ``G^T U`` is non-zero: it moves.
- ``"random"``: every factor ~ N(0, s^2) (Delta != 0); the only start of ``U U^T`` that moves.
- ``"zero"``: every factor 0. ``U U^T`` at U = 0 has gradient ``(G + G^T) 0 = 0`` and ``U V^T`` with
  U = V = 0 has gradients ``(G 0, G^T 0) = 0``: these adapters never move, the inner loop is the
  identity and every method reduces to its K = 0 form. ``W = 0`` (``"full"``) moves.
- an explicit start ``U0`` (and ``V0``): fixed (or learned) by the caller.

Outer updates (``method=``), with ``M_K^t = A + Delta(theta_K^t)`` and
``G^Q_t = M_K^t S^Q_xx,t - S^Q_yx,t``:

- ``"maml"`` (exact second order): ``A <- A - beta dF_K/dA``, the total derivative through the
  unrolled inner loop (reverse-mode through a ``lax.scan`` of static length; memory O(K)).
- ``"fomaml"`` (first order): ``A <- A - beta (1/T) sum_t G^Q_t`` : the Jacobian
  ``d theta_K / dA`` is dropped, i.e. the term ``(d theta_K/dA)^T grad_theta L^Q_t(M_K^t)``.
- ``"reptile"``: ``A <- A + beta (1/T) sum_t (Delta(theta_K^t) - Delta(theta_start))``: the base
  moves toward the adapted task matrices (Reptile's ``phi - theta`` in the space of merged task
  matrices; it uses the support statistics only).

Learned start (``learn_start=True``, step ``start_lr``): ``theta_start`` is a second outer variable,
the linear analogue of meta-learning the initialisation of the low-rank difference. MAML: its exact
gradient; first-order: ``(1/T) sum_t grad_theta L^Q_t(M_K^t)`` (``d theta_K / d theta_start``
dropped); Reptile: ``theta_start <- theta_start + start_lr (1/T) sum_t (theta_K^t - theta_start)``.

Exact relations (tested; verify rows M1-M3, derivations in docs/bilevel.md):

- K = 0 (or a start that cannot move) with ``Delta(theta_start) = 0`` and the start fixed
  (``start_lr = 0``): ``"maml"`` and ``"fomaml"`` are standard retraining by gradient descent on
  the query statistics, step for step (a learned start leaves ``Delta = 0`` after one step).
- Exact inner solution and support = query:
  ``F_inf(A) = (1/T) sum_t min_theta L_t(A + Delta(theta))``, the objective of Meta-LoRA with the
  adapters minimised out at A when the adapter is ``U U^T`` (the PSD rank-r optimum,
  population), of its asymmetric variant when it is ``U V^T``
  (reduced-rank regression; Eckart-Young in the population): :func:`inner_optimum`,
  :func:`exact_bilevel_objective`.
- Plain MAML in the population: ``M_K - M*_t = (1 - alpha)^K (A - M*_t)``, so the outer loop is
  standard retraining with step ``beta (1-alpha)^(2K)`` (MAML), ``beta (1-alpha)^K`` (first order)
  or ``beta (1 - (1-alpha)^K)`` (Reptile); SR's ``A* + Rbar`` is the fixed point, reached only
  where that step times the number of outer steps is large (it is 0 for MAML and first order at
  alpha = 1, negative for first order with 1 < alpha < 2 and K odd, and tends to 0 for both as K
  grows, while Reptile's tends to beta).

The inner loop has a static length ``length`` (``lax.scan``) and a traced number of active steps
``K <= length`` (step ``j`` uses ``alpha * [j < K]``, an exact identity when inactive), so a sweep
over K, alpha, beta compiles once per (shape, length).
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from linmeta.core._validate import check_array, check_choice, check_int, check_scalar
from linmeta.core.data import Samples, TaskStats, task_statistics
from linmeta.core.divergence import check_history, divergence_index
from linmeta.core.lora import init_factor
from linmeta.core.losses import excess_loss, ols_solution, task_loss, task_loss_grad
from linmeta.methods._common import History, RetrainResult, run_steps
from linmeta.methods.standard import _check_stats
from linmeta.methods.finetune import reduced_rank_fit

__all__ = ["ADAPTERS", "METHODS", "STARTS", "Factors", "BilevelState", "BilevelHyper",
           "BilevelAdapters", "adapter_delta", "adapter_grads", "inner_step", "adapt",
           "adapt_with_trace", "bilevel_objective", "bilevel_excess", "method_weights",
           "outer_gradients", "bilevel_step", "inner_optimum", "exact_bilevel_objective",
           "split_support_query", "initial_start", "check_bilevel_divergence", "maml"]

ADAPTERS = ("asymmetric", "symmetric", "full")
METHODS = ("maml", "fomaml", "reptile")
STARTS = ("lora", "random", "zero")
DEFAULT_START = {"asymmetric": "lora", "symmetric": "random", "full": "zero"}


def _T(x):
    return jnp.swapaxes(x, -1, -2)


class Factors(NamedTuple):
    """Adapter parameters theta: ``U`` (..., d, r) (``W`` (..., d, d) for ``"full"``) and ``V``
    (..., d, r) for ``"asymmetric"`` (``None`` otherwise)."""

    U: jax.Array
    V: Any = None


class BilevelState(NamedTuple):
    """Outer variables: the base ``A`` (d, d) and the adapter start ``theta_start`` (Factors of
    (d, r))."""

    base: jax.Array
    start: Factors


class BilevelHyper(NamedTuple):
    """Traced hyperparameters: ``inner_lr`` (alpha), ``outer_lr`` (beta), ``start_lr`` (step of a
    learned start; 0 keeps the start fixed), ``inner_steps`` (K, an integer array: active steps of
    the inner scan) and ``train_v`` (1: V is trained; 0: V stays at its start, which with
    ``V = I`` makes ``U V^T = W`` the full-rank inner update)."""

    inner_lr: jax.Array
    outer_lr: jax.Array
    start_lr: jax.Array
    inner_steps: jax.Array
    train_v: jax.Array = 1.0


class BilevelAdapters(NamedTuple):
    """``adapted``: theta_K of every task at the returned base (Factors with a leading T axis);
    ``start``: theta_start (learned or fixed)."""

    adapted: Factors
    start: Factors


# ----------------------------------------------------------------------------- adapters
def adapter_delta(theta: Factors, adapter: str):
    """``Delta(theta)``: ``U V^T`` (``"asymmetric"``) or ``U U^T`` (``"symmetric"``)."""
    if adapter == "asymmetric":
        return theta.U @ _T(theta.V)
    return theta.U @ _T(theta.U)


def adapter_grads(G, theta: Factors, adapter: str, train_v=1.0) -> Factors:
    """Gradient with respect to theta of ``L(A + Delta(theta))`` given ``G = dL/dM`` (the V part
    multiplied by ``train_v``)."""
    if adapter == "asymmetric":
        return Factors(G @ theta.V, train_v * (_T(G) @ theta.U))
    return Factors((G + _T(G)) @ theta.U)


def _tree_axpy(a, x: Factors, y: Factors) -> Factors:
    """``y + a x`` leaf by leaf (None leaves stay None)."""
    return jax.tree.map(lambda xi, yi: yi + a * xi, x, y)


def _broadcast_start(start: Factors, T: int) -> Factors:
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (T,) + x.shape[-2:]), start)


def inner_step(A, theta: Factors, stats: TaskStats, lr, adapter: str, train_v=1.0) -> Factors:
    """One inner gradient step of every task: ``theta - lr grad_theta L_t(A + Delta(theta))``."""
    G = task_loss_grad(A + adapter_delta(theta, adapter), stats)
    return _tree_axpy(-lr, adapter_grads(G, theta, adapter, train_v), theta)


def _active_lr(inner_lr, inner_steps, length, dtype):
    return inner_lr * (jnp.arange(length) < inner_steps).astype(dtype)


def adapt(A, start: Factors, support: TaskStats, inner_lr, inner_steps, *, adapter: str,
          length: int, train_v=1.0) -> Factors:
    """theta_K of every task: ``length`` scan steps of :func:`inner_step` from ``start``, the first
    ``inner_steps`` (K, traced, ``<= length``) with step ``inner_lr``, the rest the identity."""
    theta0 = _broadcast_start(start, support.T)
    lrs = _active_lr(inner_lr, inner_steps, length, support.Sxx.dtype)
    return lax.scan(lambda th, lr: (inner_step(A, th, support, lr, adapter, train_v), None),
                    theta0, lrs)[0]


def adapt_with_trace(A, start: Factors, support: TaskStats, inner_lr, inner_steps, *,
                     adapter: str, length: int, train_v=1.0, B=None, excess_fn=None):
    """:func:`adapt` and the support excess loss (mean over tasks) before every inner step and
    after the last one, shape (length + 1,) (constant after step K). The excess is
    ``excess_fn(M)`` if given, else :func:`linmeta.core.losses.excess_loss` with ``B`` (default the
    least-squares solution of ``support``)."""
    if excess_fn is None:
        B = ols_solution(support) if B is None else B

        def excess_fn(M):
            return jnp.mean(excess_loss(M, support, B), axis=-1)

    theta0 = _broadcast_start(start, support.T)
    lrs = _active_lr(inner_lr, inner_steps, length, support.Sxx.dtype)

    def excess(th):
        return excess_fn(A + adapter_delta(th, adapter))

    def body(th, lr):
        return inner_step(A, th, support, lr, adapter, train_v), excess(th)

    theta, trace = lax.scan(body, theta0, lrs)
    return theta, jnp.concatenate([trace, excess(theta)[None]])


def _adapt_hyper(A, start, support, hyper: BilevelHyper, adapter, length):
    return adapt(A, start, support, hyper.inner_lr, hyper.inner_steps, adapter=adapter,
                 length=length, train_v=hyper.train_v)


def bilevel_objective(A, start: Factors, support: TaskStats, query: TaskStats,
                      hyper: BilevelHyper, *, adapter: str, length: int):
    """``F_K(A, theta_start)`` of (B1): the mean query loss ``L^Q_t`` after the inner loop."""
    theta = _adapt_hyper(A, start, support, hyper, adapter, length)
    return jnp.mean(task_loss(A + adapter_delta(theta, adapter), query), axis=-1)


def bilevel_excess(A, start: Factors, support: TaskStats, query: TaskStats, hyper: BilevelHyper,
                   *, adapter: str, length: int, B_query=None):
    """``F_K - (1/T) sum_t min L^Q_t`` as a sum of squares (the recorded objective)."""
    B_query = ols_solution(query) if B_query is None else B_query
    theta = _adapt_hyper(A, start, support, hyper, adapter, length)
    return jnp.mean(excess_loss(A + adapter_delta(theta, adapter), query, B_query), axis=-1)


# ----------------------------------------------------------------------------- outer loop
def method_weights(method: str, dtype=None):
    """One-hot weights of ``method`` over :data:`METHODS` (a traced way to choose the update)."""
    check_choice("method", method, METHODS)
    return jnp.asarray([m == method for m in METHODS], dtype or jnp.asarray(0.0).dtype)


def outer_gradients(state: BilevelState, support: TaskStats, query: TaskStats, hyper: BilevelHyper,
                    *, method, adapter: str, length: int) -> BilevelState:
    """The outer (pseudo-)gradients ``(g_A, g_start)``; the update is ``x <- x - step g``.

    With ``G^Q_t = grad L^Q_t(M_K^t)`` and ``g_t = grad_theta L^Q_t(M_K^t) / T``:

    - ``"fomaml"``: ``((1/T) sum_t G^Q_t, sum_t g_t)``: the query gradient at the adapted point;
    - ``"maml"``: the same plus the term first order drops, ``J^T g`` with ``J`` the Jacobian of
      theta_K with respect to (A, theta_start) (one reverse pass through the inner scan); for the
      start it is ``J^T g`` alone. Equal to ``jax.grad`` of :func:`bilevel_objective`;
    - ``"reptile"``: minus the mean inner displacement, ``(1/T) sum_t (Delta(theta_start) -
      Delta(theta_K^t))`` and ``theta_start - (1/T) sum_t theta_K^t``.

    ``method`` is a name of :data:`METHODS` (only that update is computed) or an array of weights
    over them (:func:`method_weights`; all three are computed, for a traced choice).
    The V part of ``g_start`` is multiplied by ``hyper.train_v``.
    """
    A, start = state
    T = support.T
    if isinstance(method, str):
        check_choice("method", method, METHODS)
        w = {m: float(m == method) for m in METHODS}
    else:
        w = dict(zip(METHODS, (method[i] for i in range(len(METHODS)))))

    def inner(A_, s_):
        return _adapt_hyper(A_, s_, support, hyper, adapter, length)

    need_maml = not isinstance(method, str) or method == "maml"
    if need_maml:
        theta, pullback = jax.vjp(inner, A, start)
    else:
        theta = inner(A, start)
    zeros_s = jax.tree.map(jnp.zeros_like, start)
    gA = jnp.zeros_like(A)
    gs = zeros_s
    if not isinstance(method, str) or method in ("maml", "fomaml"):
        Gq = task_loss_grad(A + adapter_delta(theta, adapter), query)
        g_theta = jax.tree.map(lambda x: x / T, adapter_grads(Gq, theta, adapter))
        first_A = jnp.mean(Gq, axis=-3)
        first_s = jax.tree.map(lambda x: jnp.sum(x, axis=0), g_theta)
        gA = gA + (w["maml"] + w["fomaml"]) * first_A
        gs = _tree_axpy(w["fomaml"], first_s, gs)
        if need_maml:
            corr_A, corr_s = pullback(g_theta)
            gA = gA + w["maml"] * corr_A
            gs = _tree_axpy(w["maml"], corr_s, gs)
    if not isinstance(method, str) or method == "reptile":
        disp = adapter_delta(theta, adapter) - adapter_delta(start, adapter)
        gA = gA - w["reptile"] * jnp.mean(disp, axis=-3)
        rep_s = jax.tree.map(lambda th, s0: s0 - jnp.mean(th, axis=0), theta, start)
        gs = _tree_axpy(w["reptile"], rep_s, gs)
    if adapter == "asymmetric":
        gs = Factors(gs.U, hyper.train_v * gs.V)
    return BilevelState(gA, gs)


def bilevel_step(state: BilevelState, support: TaskStats, query: TaskStats, hyper: BilevelHyper,
                 *, method, adapter: str, length: int) -> BilevelState:
    """One outer iteration: ``A <- A - outer_lr g_A``, ``start <- start - start_lr g_start``
    (``start_lr = 0``: a fixed start)."""
    g = outer_gradients(state, support, query, hyper, method=method, adapter=adapter,
                        length=length)
    return BilevelState(state.base - hyper.outer_lr * g.base,
                        _tree_axpy(-hyper.start_lr, g.start, state.start))


# ----------------------------------------------------------------------------- exact inner solve
def _structure(adapter: str) -> str:
    """The factor structure behind a public adapter name: ``"full"`` is U V^T with V = I frozen."""
    return "symmetric" if adapter == "symmetric" else "asymmetric"


def inner_optimum(A, support: TaskStats, rank: int, adapter: str) -> Factors:
    """The exact inner solution ``argmin_theta L^S_t(A + Delta(theta))`` of every task.

    - ``"asymmetric"``: reduced-rank regression (:func:`linmeta.reduced_rank_fit`), exact for any
      statistics; Eckart-Young on ``M*_t - A`` in the population.
    - ``"symmetric"``: the best PSD matrix of rank <= r to the symmetric part of ``B_t - A``
      (``B_t = S_yx S_xx^+``): its r largest eigenvalues, clipped at 0. Exact when ``S_xx = I``
      (the population); with other ``S_xx`` the weighted PSD problem has no closed form and this is
      not its optimum.
    - ``"full"``: ``W = B_t - A`` (least squares; the excess loss is 0), as ``Factors(W, I)``.
    """
    B = ols_solution(support)
    if adapter == "asymmetric":

        return Factors(*reduced_rank_fit(A, support, rank))
    if adapter == "full":
        W = B - A
        return Factors(W, jnp.broadcast_to(jnp.eye(W.shape[-1], dtype=W.dtype), W.shape))
    R = B - A
    lam, Q = jnp.linalg.eigh((R + _T(R)) / 2)
    lam, Q = lam[..., ::-1][..., :rank], Q[..., ::-1][..., :rank]
    return Factors(Q * jnp.sqrt(jnp.maximum(lam, 0.0))[..., None, :])


def exact_bilevel_objective(A, support: TaskStats, query: TaskStats, rank: int, adapter: str,
                            B_query=None):
    """Excess of ``F_inf(A) = (1/T) sum_t L^Q_t(A + Delta(inner_optimum))`` (sum of squares).
    With support = query this is the objective with the adapters minimised out at A."""
    B_query = ols_solution(query) if B_query is None else B_query
    theta = inner_optimum(A, support, rank, adapter)
    delta = adapter_delta(theta, _structure(adapter))
    return jnp.mean(excess_loss(A + delta, query, B_query), axis=-1)


# ----------------------------------------------------------------------------- data
def split_support_query(samples: Samples, support: int):
    """Support and query statistics of each task: its first ``support`` samples and the rest.

    Raises ValueError unless ``1 <= support <= N - 1``."""
    if not isinstance(samples, Samples):
        raise ValueError(f"samples must be linmeta Samples (linmeta.draw_samples), got "
                         f"{type(samples).__name__}")
    N = samples.X.shape[-2]
    if N < 2:
        raise ValueError(f"a support/query split needs N >= 2 samples per task, got N={N}")
    support = check_int("support", support, 1, N - 1, hi_label="N-1")
    s = Samples(samples.X[:, :support], samples.Y[:, :support], samples.M_star, samples.noise_std)
    q = Samples(samples.X[:, support:], samples.Y[:, support:], samples.M_star, samples.noise_std)
    return task_statistics(s), task_statistics(q)


def initial_start(key, d: int, rank: int, adapter: str, start: str, init_scale, dtype,
                  n_starts: int = 1) -> Factors:
    """``n_starts`` adapter starts (Factors with a leading axis), see the module docstring.
    ``"full"``: ``U = W`` (d x d; 0 for ``"zero"``, N(0, s^2) for ``"random"``) and ``V = I``."""
    cols = d if adapter == "full" else rank
    shape = (n_starts, d, cols)
    zeros = jnp.zeros(shape, dtype)
    ku, kv = jax.random.split(key) if start != "zero" else (None, None)
    U = zeros if start == "zero" else init_factor(ku, shape, init_scale, dtype)
    if adapter == "symmetric":
        return Factors(U)
    if adapter == "full":
        return Factors(U, jnp.broadcast_to(jnp.eye(d, dtype=dtype), shape))
    V = init_factor(kv, shape, init_scale, dtype) if start == "random" else zeros
    return Factors(U, V)


# ----------------------------------------------------------------------------- public entry point
def _source_and_query(source, query, support):
    if isinstance(source, Samples):
        if query is not None:
            raise ValueError("query must be None when source is raw Samples (the split gives it)")
        N = source.X.shape[-2]
        support = N // 2 if support is None else support
        return split_support_query(source, support)
    if support is not None:
        raise ValueError("support (a sample count) needs raw samples as source "
                         "(linmeta.draw_samples); with statistics pass query=TaskStats instead")
    src = _check_stats(source)
    if query is None:
        n = np.asarray(src.n_samples) if not isinstance(src.n_samples, jax.core.Tracer) else None
        if n is not None and np.any(np.isfinite(n)):
            # finite samples and no query: the inner and outer losses see the same data. Say so
            # (a split is what MAML assumes); the population needs none.
            warnings.warn("maml: source is finite-sample statistics and no query was given, so "
                          "the support set is also the query set; pass query=TaskStats of held-"
                          "out samples, or raw linmeta.Samples (split into support and query)",
                          UserWarning, stacklevel=3)
        return src, src
    q = _check_stats(query, "query")
    if q.Sxx.shape != src.Sxx.shape:
        raise ValueError(f"query must have the shape of source (T={src.T}, d={src.d}), got "
                         f"statistics of shape {tuple(q.Sxx.shape)}")
    return src, TaskStats(*(x.astype(src.Sxx.dtype) for x in q))


def _check_start_arrays(U0, V0, adapter, d, cols, dt):
    def one(name, X):
        X = check_array(name, X).astype(dt)
        if X.ndim == 2:
            X = X[None]
        if X.ndim != 3 or X.shape[1:] != (d, cols):
            raise ValueError(f"{name} must have shape ({d}, {cols}) or "
                             f"(n_starts, {d}, {cols}), got {tuple(X.shape)}")
        return X

    U = one("U0", U0)
    if adapter == "asymmetric":
        if V0 is None:
            raise ValueError("V0 is required with U0 for adapter='asymmetric' (Delta = U V^T)")
        V = one("V0", V0)
        if V.shape != U.shape:
            raise ValueError(f"V0 must have the shape of U0 {tuple(U.shape)}, got {tuple(V.shape)}")
        return Factors(U, V)
    if V0 is not None:
        raise ValueError(f"V0 must be None for adapter={adapter!r} (one factor)")
    if adapter == "full":
        return Factors(U, jnp.broadcast_to(jnp.eye(d, dtype=dt), U.shape))
    return Factors(U)


def inner_step_scale(source) -> float:
    """``lambda = max_t ||M_t||_2`` for the tasks of ``source`` (population or finite-sample
    statistics: ``M_t = S_yx,t S_xx,t^+``), the residual an inner loop fits at the start A = 0.
    The inner step of a low-rank inner loop is stable when ``inner_lr = a / lambda`` with
    ``a <= 1`` (measured, docs/bilevel.md#m6: MAML with a LoRA inner loop diverges from
    a = 1.5, first-order MAML and Reptile from a = 2; plain MAML exactly when
    ``|1 - a| >= 1``); ``inner_lr="auto"`` in :func:`maml` is ``0.5 / lambda``."""
    src = _check_stats(source)
    M = ols_solution(src)
    return float(jnp.max(jnp.linalg.norm(M, ord=2, axis=(-2, -1))))


def maml(source, rank, *, key=None, method: str = "maml", inner_steps: int = 10, inner_lr=0.05,
         outer_steps: int = 1000, outer_lr=0.3, adapter: str = "asymmetric", start=None,
         init_scale=0.1, U0=None, V0=None, learn_start: bool = False, start_lr=None, query=None,
         support=None, n_starts: int = 1, A0=None, max_inner_steps=None,
         record_every: int = 1) -> RetrainResult:
    """Bilevel retraining (MAML, first-order MAML or Reptile) with a rank-``rank`` inner adapter.

    Args:
      source: retraining-task statistics (:class:`~linmeta.TaskStats`: population or finite
        samples; support = query unless ``query`` is given), or raw :class:`~linmeta.Samples`,
        split per task into a support set (the first ``support`` samples, default N // 2) and a
        query set (the rest), each reduced to statistics.
      rank: adapter rank r, ``1 <= r <= d`` (``adapter="full"`` is d x d: ``rank`` must be d).
      key: PRNG key of the random starts (not needed for ``start="zero"`` or an explicit U0).
      method: ``"maml"`` (second order), ``"fomaml"`` (first order) or ``"reptile"``.
      inner_steps, inner_lr: K >= 0 inner gradient steps of size alpha >= 0; ``inner_lr="auto"``
        scales the step to the problem, ``0.5 / lambda`` with ``lambda = max_t ||M_t||_2``
        (:func:`inner_step_scale`; the default 0.05 suits ``lambda <= 10``).
      outer_steps, outer_lr: outer iterations and step beta > 0 on the base (from ``A0``,
        default 0).
      adapter: ``"asymmetric"`` (U V^T, default), ``"symmetric"`` (U U^T) or ``"full"`` (W, plain
        MAML; represented as ``U V^T`` with ``U = W`` and ``V = I`` kept fixed, which is exactly W).
      start: ``"lora"`` (U random, V = 0; default for U V^T), ``"random"`` (default for U U^T),
        ``"zero"`` (default for W); see the module docstring for which starts can move.
        ``U0`` (and ``V0`` for U V^T), shape (d, r) ((d, d) for W) or with a leading n_starts
        axis, give an explicit start instead.
      init_scale: standard deviation s of the random factors (default 0.1).
      learn_start, start_lr: also train the start theta_start (step ``start_lr``, default
        ``outer_lr``).
      query: query statistics (same T, d as ``source``) when ``source`` is the support.
      support: support size when ``source`` is raw samples (``1 <= support <= N - 1``).
      n_starts: independent random starts, run vmapped; the lowest final objective is returned.
      max_inner_steps: static length of the inner scan (default ``inner_steps``); a larger value
        lets calls with different ``inner_steps`` share one compiled program.
      record_every: stride (outer iterations) of the recorded objective.

    Returns:
      :class:`~linmeta.methods.RetrainResult`: ``base`` A_hat, ``adapters`` a
      :class:`BilevelAdapters` (theta_K of every task at A_hat, and theta_start), ``objective`` the
      query excess objective ``F_K(A_hat) - (1/T) sum_t min L^Q_t``, ``history`` that objective
      along the outer loop, ``start_objectives`` the final objective of every start.

    Raises:
      ValueError: a bad argument (named, with its allowed range).
      linmeta.DivergenceError: the inner loop blew up (its support loss became non-finite or rose
        1000-fold from the start of the inner loop; names ``inner_lr`` and the inner step) or the
        outer loop did (names ``outer_lr``, ``inner_lr`` and the outer iteration).

    Example::

        truth = linmeta.sample_truth(jax.random.key(0), d=6, k=1, T=3)
        res = linmeta.maml(linmeta.population(truth), 1, key=jax.random.key(1),
                           inner_steps=200, inner_lr=0.1, outer_steps=2000)
        linmeta.metrics.base_error(res.base, truth.A_star, relative=True)   # 1e-15
        # (inner_steps=100: 3e-11; the rank-1 LoRA inner loop recovers A* as K grows, T >= 3)
    """
    method = check_choice("method", method, METHODS)
    adapter = check_choice("adapter", adapter, ADAPTERS)
    sup, qry = _source_and_query(source, query, support)
    d = sup.d
    dt = sup.Sxx.dtype
    r = check_int("rank", rank, 1, d, hi_label="d")
    if adapter == "full" and r != d:
        raise ValueError(f"rank must equal d={d} for adapter='full' (a d x d inner update), "
                         f"got {r}")
    K = check_int("inner_steps", inner_steps, 0)
    length = K if max_inner_steps is None else check_int("max_inner_steps", max_inner_steps, K)
    outer_steps = check_int("outer_steps", outer_steps, 0)
    if isinstance(inner_lr, str):
        if inner_lr != "auto":
            raise ValueError(f"inner_lr must be a number >= 0 or 'auto', got {inner_lr!r}")
        inner_lr = 0.5 / inner_step_scale(sup)
    check_scalar("inner_lr", inner_lr, 0.0)
    check_scalar("outer_lr", outer_lr, 0.0, lo_open=True)
    if not isinstance(learn_start, (bool, np.bool_)):
        raise ValueError(f"learn_start must be True or False, got {learn_start!r}")
    start_lr = outer_lr if start_lr is None else start_lr
    check_scalar("start_lr", start_lr, 0.0)
    n_starts = check_int("n_starts", n_starts, 1)
    record_every = check_int("record_every", record_every, 1)
    cols = d if adapter == "full" else r
    if U0 is not None or V0 is not None:
        if start is not None:
            raise ValueError("give either start or an explicit U0/V0, not both")
        if U0 is None:
            raise ValueError("U0 is required when V0 is given")
        theta0 = _check_start_arrays(U0, V0, adapter, d, cols, dt)
    else:
        start = DEFAULT_START[adapter] if start is None else start
        check_choice("start", start, STARTS)
        if start == "lora" and adapter != "asymmetric":
            raise ValueError(f"start='lora' (one factor random, the other zero) needs "
                             f"adapter='asymmetric'; use 'random' or 'zero' for {adapter!r}")
        if start != "zero":
            check_scalar("init_scale", init_scale, 0.0, lo_open=True)
            if key is None:
                raise ValueError("key is required (a jax.random key for the adapter start) "
                                 "unless start='zero' or U0 is given")
        theta0 = initial_start(key, d, r, adapter, start, init_scale, dt, n_starts)
    A0 = jnp.zeros((d, d), dt) if A0 is None else check_array("A0", A0, shape=(d, d)).astype(dt)
    hyper = BilevelHyper(jnp.asarray(inner_lr, dt), jnp.asarray(outer_lr, dt),
                         jnp.asarray(start_lr if learn_start else 0.0, dt),
                         jnp.asarray(K, jnp.int32),
                         jnp.asarray(0.0 if adapter == "full" else 1.0, dt))
    res, inner_trace = _kernel()(sup, qry, A0, theta0, hyper, method=method,
                                 adapter=_structure(adapter), length=length,
                                 outer_steps=outer_steps, record_every=record_every)
    sizes = {"outer_lr": outer_lr, "inner_lr": inner_lr}
    if learn_start:
        sizes["start_lr"] = start_lr
    check_bilevel_divergence(res.history.step, res.history.value, inner_trace, K, sizes,
                             method, final=(res.base, res.adapters))
    return res


def check_bilevel_divergence(steps, objective, inner_trace, K: int, step_sizes, method: str,
                             final=None) -> None:
    """Raise :class:`linmeta.DivergenceError` for a blown-up inner loop (checked first: the
    support loss along ``inner_trace[rec, :K + 1]`` of some outer record ``rec``) or outer loop
    (the recorded ``objective``). No-op on tracers."""
    if isinstance(objective, jax.core.Tracer) or isinstance(inner_trace, jax.core.Tracer):
        return
    steps = np.asarray(steps)
    trace = np.asarray(inner_trace)[:, :K + 1]  # (n_rec, K + 1): constant after step K
    if K > 0 and trace.size:
        # a record whose inner loop starts non-finite has a non-finite base: the outer loop's
        # divergence, reported below
        idx = np.array([int(divergence_index(row)) if np.isfinite(row[0]) else -1
                        for row in trace])
        bad = np.flatnonzero(idx >= 0)
        if bad.size:
            rec = int(bad[0])
            # the loss each inner loop starts from is the outer loop's: when it had already blown
            # up by that record, the outer step moved the base too far (outer_lr is to blame)
            starts = trace[:rec + 1, 0]
            if np.all(np.isfinite(starts)) and int(divergence_index(starts)) >= 0:
                outer = {k: v for k, v in step_sizes.items() if k != "inner_lr"}
                check_history(f"bilevel retraining ({method}, outer loop)", steps[:rec + 1],
                              starts, outer or step_sizes)
            check_history(f"bilevel inner loop ({method}; outer iteration {int(steps[rec])})",
                          np.arange(K + 1), trace[rec], {"inner_lr": step_sizes["inner_lr"]})
    check_history(f"bilevel retraining ({method}, outer loop)", steps, objective, step_sizes,
                  final=final)


@functools.lru_cache(maxsize=None)
def _kernel():
    """The jitted :func:`_maml_kernel`, created on first use. On CPU it is compiled at XLA's
    backend optimisation level 1 (as :mod:`linmeta.engine.sweep` does): measured on these programs
    (d = 10, K = 100, 1000 outer steps) it compiles about a quarter faster and runs as fast."""
    opts = {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else None
    return jax.jit(_maml_kernel, static_argnames=("method", "adapter", "length", "outer_steps",
                                                  "record_every"), compiler_options=opts)


def _maml_kernel(support, query, A0, theta0, hyper, *, method, adapter, length, outer_steps,
                 record_every):
    Bs = ols_solution(support)
    Bq = ols_solution(query)
    kw = dict(adapter=adapter, length=length)

    def step(s):
        return bilevel_step(s, support, query, hyper, method=method, **kw)

    def record(s):
        theta, trace = adapt_with_trace(s.base, s.start, support, hyper.inner_lr,
                                        hyper.inner_steps, train_v=hyper.train_v, B=Bs, **kw)
        obj = jnp.mean(excess_loss(s.base + adapter_delta(theta, adapter), query, Bq), axis=-1)
        return obj, trace

    def run(start):
        state, hist = run_steps(step, BilevelState(A0, start), outer_steps, record_every, record)
        theta = _adapt_hyper(state.base, state.start, support, hyper, adapter, length)
        obj = jnp.mean(excess_loss(state.base + adapter_delta(theta, adapter), query, Bq), axis=-1)
        return state, theta, obj, hist

    state, theta, obj, hist = jax.vmap(run)(theta0)
    obj = jnp.where(jnp.isfinite(obj), obj, jnp.inf)
    best = jnp.argmin(obj)
    pick = functools.partial(jax.tree.map, lambda x: x[best])
    adapters = BilevelAdapters(pick(theta), pick(state.start))
    res = RetrainResult(state.base[best], adapters, obj[best],
                        History(hist.step[0], hist.value[0][best]), obj)
    return res, hist.value[1][best]
