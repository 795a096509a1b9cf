"""Training a shared representation on source tasks (docs/representation.md).

Everything runs on :class:`linmeta.TaskStats` with p = 1 (:mod:`linmeta.families.representation.tasks`), so
the same call works on the population and on finite samples. A predictor ``v`` of task t has the
core's loss ``L_t(v) = 1/2 v^T S_t v - <s_t, v> + 1/2 S_yy,t`` (:func:`linmeta.core.losses.task_loss`
with ``M = v^T``; ``S_t = S_xx,t``, ``s_t = S_yx,t``), gradient ``g_t = S_t v - s_t``. Objectives
are means over the T tasks. Every loop is a ``lax.scan`` (:func:`linmeta.methods.run_steps`),
tasks are a batch axis, step sizes are traced arrays.

- **FrozenRep** (average loss with per-task heads, heads minimised out):
  ``F(B) = mean_t min_w [L_t(B w) + gamma/2 ||w||^2]`` over orthonormal B; heads
  ``w_t = (B^T S_t B + gamma I)^{-1} B^T s_t`` (:func:`frozen_heads`). Minimised by alternating
  minimisation (:func:`alternating_step`): heads exactly, one gradient step ``B - lr G`` with
  ``G = mean_t g_t w_t^T`` (the gradient of F, by the envelope theorem), then QR. In the population
  (``gamma = 0``) F is ``1/2 tr((I - B B^T) C) + const``: the top-k eigenvectors of C (claim R1).
- **FedRep** (Collins et al. 2021): the same iteration (heads exactly, a step eta on B, QR), named
  after its source (:func:`fedrep`); late contraction ``max(|1 - eta lambda_min|, |1 - eta lambda_max|)`` (claim R5).
- **ANIL** (:func:`anil_step`): inner step on the head, ``w'_t = w0 - alpha B^T g_t(B w0)``;
  outer step ``B <- B - beta grad_B mean_t L_t(B w'_t(B))`` through the inner step
  (``first_order=True``: ``w'_t`` held fixed, ``G = mean_t g_t(B w'_t) w'_t^T``).
- **One-step MAML** (:func:`maml_step`): inner step alpha on both ``(B, w)`` from ``(B, w0)``, outer
  step beta on B and (``learn_head_init=True``) on w0, second order.
- **Average loss** (:func:`average_loss_step`): one shared head for all tasks, gradient steps on
  ``(B, w)`` of ``mean_t L_t(B w)``; in the population its B-gradient ``(B w - mean beta) w^T``
  never involves B* when the heads average to zero (claim R3).
- **AdaptRep** (Chua et al. 2021; :func:`adaptrep_step`): ``F(B) = mean_t min_{Delta, w} L_t((B +
  Delta) w) + lambda/2 ||Delta||_F^2 + gamma/2 ||w||^2`` over orthonormal B. Inner problem by exact
  alternating minimisation: ``w = ((B+Delta)^T S (B+Delta) + gamma I)^{-1} (B+Delta)^T s``; for
  fixed w, ``u = Delta w`` solves ``(lambda I + ||w||^2 S) u = -||w||^2 (S B w - s)`` (conjugate
  gradients) and
  ``Delta = -(S (B w + u) - s) w^T / lambda``. Then a step on B with the envelope gradient
  ``mean_t g_t w_t^T`` and QR.
- **Method of moments** (:func:`method_of_moments`): top-k eigenvectors of
  ``(1/(nT)) sum y^2 x x^T`` (raw samples; claim R4).

Two compiled programs serve all iterative methods, with the method-defining numbers traced (so a
sweep over methods or step sizes compiles once per shape): ``_rep_kernel`` runs AdaptRep's
iteration, of which FrozenRep and FedRep are the ``lambda = inf`` case (``Delta = 0``, the inner
update is then the exact ridge heads); ``_meta_kernel`` runs :func:`meta_step`, the one-step
inner/outer update of which ANIL (inner step on the head only), one-step MAML (on head and
representation), first-order variants (derivative stopped at the inner step) and average-loss
training (``alpha = 0``, the shared head learned) are settings of three flags.

Public functions validate their input eagerly (``ValueError`` naming the argument) and raise
:class:`linmeta.DivergenceError` when an iteration diverges (:mod:`linmeta.core.divergence`), naming the
step sizes and the iteration. The ``*_step`` functions are the pure updates (jit/vmap-able).
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from linmeta.core._validate import check_array, check_int, check_scalar, is_concrete
from linmeta.core.data import Samples, TaskStats
from linmeta.core.divergence import check_history
from linmeta.core.losses import task_loss, task_loss_grad
from linmeta.methods._common import History, run_steps
from linmeta.methods.standard import _check_stats
from ._linalg import orthonormalise, shifted_solve as _shifted_solve, spd_solve
from .tasks import moment_matrix
from .truth import orthonormal_columns

__all__ = ["RepRecord", "RepResult", "predictor_loss", "predictor_grad", "frozen_heads",
           "frozen_objective", "alternating_step", "frozen_rep", "fedrep", "anil_heads",
           "meta_objective", "meta_step", "anil_objective", "anil_step", "anil", "maml_objective",
           "maml_step", "maml", "average_loss_objective", "average_loss_step", "average_loss",
           "spd_solve", "adaptrep_inner_step",
           "adaptrep_objective", "adaptrep_step", "adaptrep_inner", "adapt_rep",
           "moments_subspace", "method_of_moments", "orthonormalise", "check_rep_stats"]


class RepRecord(NamedTuple):
    """Recorded along a solver: the objective and the representation B (d, k)."""

    objective: jax.Array
    representation: jax.Array


class RepResult(NamedTuple):
    """Output of a representation-learning method.

    Attributes:
      representation: (d, k) learned B (orthonormal for FrozenRep, FedRep, AdaptRep and the
        method of moments; ANIL and MAML learn its scale too, ``alpha B^T B -> I``).
      heads: (T, k) per-task heads at the end (FrozenRep/FedRep: exact; AdaptRep: the inner
        solution; ANIL/MAML: after the inner step; average loss: the shared head, repeated), or
        ``None`` (method of moments).
      perturbations: (T, d, k) AdaptRep's ``Delta_t``; ``None`` otherwise.
      head_init: (k,) MAML's head initialisation w0 (ANIL's, fixed); ``None`` otherwise.
      objective: the method's objective at the end.
      history: :class:`~linmeta.methods.History` of :class:`RepRecord` (``None`` for closed forms).
      start_objectives: (n_starts,) final objective of each start (AdaptRep), else ``None``.
    """

    representation: jax.Array
    heads: Any
    perturbations: Any
    head_init: Any
    objective: jax.Array
    history: Any
    start_objectives: Any


# ----------------------------------------------------------------------------- shared pieces
def check_rep_stats(source, name: str = "source") -> TaskStats:
    """Validate scalar-output task statistics: ``Sxx`` (T, d, d), ``Syx`` (T, 1, d), finite."""
    _check_stats(source, name, square=False)
    if source.Syx.shape[-2] != 1:
        raise ValueError(f"{name}.Syx must have shape (T, 1, d) (scalar outputs, p = 1), got "
                         f"{tuple(source.Syx.shape)}")
    return source


def _s(stats):
    return stats.Syx[..., 0, :]  # (T, d)


def predictor_loss(v, stats: TaskStats):
    """``L_t(v_t)`` for predictors ``v`` (T, d) (or a shared (d,)), shape (T,)."""
    v = jnp.broadcast_to(v, stats.Syx.shape[:-2] + (stats.Sxx.shape[-1],))
    return task_loss(v[..., None, :], stats)


def predictor_grad(v, stats: TaskStats):
    """``g_t = S_t v_t - s_t`` (T, d)."""
    v = jnp.broadcast_to(v, stats.Syx.shape[:-2] + (stats.Sxx.shape[-1],))
    return task_loss_grad(v[..., None, :], stats)[..., 0, :]


def _outer_mean(g, w):
    """``mean_t g_t w_t^T`` for g (T, d), w (T, k)."""
    return jnp.swapaxes(g, -1, -2) @ w / g.shape[-2]


# ----------------------------------------------------------------------------- FrozenRep / FedRep
def frozen_heads(B, stats: TaskStats, gamma=0.0):
    """``w_t = (B^T S_t B + gamma I)^{-1} B^T s_t`` (T, k)."""
    k = B.shape[-1]
    G = jnp.einsum("dk,tde,el->tkl", B, stats.Sxx, B) + gamma * jnp.eye(k, dtype=B.dtype)
    return spd_solve(G, _s(stats) @ B)


def frozen_objective(B, stats: TaskStats, gamma=0.0):
    """``mean_t [L_t(B w_t) + gamma/2 ||w_t||^2]`` with the heads minimised out."""
    w = frozen_heads(B, stats, gamma)
    return jnp.mean(predictor_loss(w @ B.T, stats) + 0.5 * gamma * jnp.sum(w * w, axis=-1))


def alternating_step(B, stats: TaskStats, lr, gamma=0.0):
    """Heads exactly, one gradient step of size ``lr`` on B, QR (FrozenRep's and FedRep's
    update)."""
    w = frozen_heads(B, stats, gamma)
    G = _outer_mean(predictor_grad(w @ B.T, stats), w)
    return orthonormalise(B - lr * G)


def _init_rep(key, B0, d, k, dt, scale=1.0, name="B0"):
    if B0 is None:
        if key is None:
            raise ValueError("key is required (a jax.random key for the initial representation) "
                             f"unless {name} is given")
        return scale * orthonormal_columns(key, d, k, dt)
    return check_array(name, B0, shape=(d, k)).astype(dt)


def _sizes(source, k):
    stats = check_rep_stats(source)
    d = stats.d
    k = check_int("k", k, 1, d, hi_label="d")
    return stats, d, k, stats.Sxx.dtype


def _default_lr(stats):
    """``1 / ||mean_t s_t s_t^T||_F`` (<= ``1 / lambda_max``; in the population ``1 / lambda_1``
    gives the fastest contraction, ``1 - (lambda_k - lambda_{k+1}) / lambda_1``, and steps beyond
    ``2 / lambda_1`` oscillate). Matrix products only."""
    s = _s(stats)
    C = jnp.swapaxes(s, -1, -2) @ s / s.shape[-2]
    lr = 1.0 / jnp.maximum(jnp.sqrt(jnp.sum(C * C)), jnp.finfo(s.dtype).tiny)
    return float(lr) if is_concrete(lr) else lr


def frozen_rep(source: TaskStats, k, *, key=None, B0=None, steps: int = 500, lr=None,
               gamma=0.0, record_every: int = 1) -> RepResult:
    """FrozenRep: minimise ``mean_t min_w [L_t(B w) + gamma/2 ||w||^2]`` over orthonormal B (d, k).

    Args:
      source: source-task statistics (p = 1), e.g. ``linmeta.representation.population(truth)``.
      k: representation dimension, 1 <= k <= d.
      key / B0: random orthonormal start, or an explicit (d, k) start (orthonormalised).
      steps, lr: alternating-minimisation iterations and the step on B (default
        ``1 / ||mean_t s_t s_t^T||_F``); ``gamma``: ridge on the heads (default 0).

    Returns: :class:`RepResult` (orthonormal ``representation``, exact heads).
    """
    stats, d, k, dt = _sizes(source, k)
    steps = check_int("steps", steps, 0)
    record_every = check_int("record_every", record_every, 1)
    lr = _default_lr(stats) if lr is None else lr
    check_scalar("lr", lr, 0.0, lo_open=True)
    check_scalar("gamma", gamma, 0.0)
    B0 = _init_rep(key, B0, d, k, dt)
    res = _rep_kernel(stats, B0[None], jnp.asarray(lr, dt), jnp.asarray(jnp.inf, dt),
                      jnp.asarray(gamma, dt), steps=steps, inner_steps=1,
                      record_every=record_every)
    check_history("FrozenRep (alternating minimisation)", res.history.step,
                  res.history.value.objective, {"lr": lr}, final=res.representation)
    return res._replace(perturbations=None, start_objectives=None)


def fedrep(source: TaskStats, k, *, eta, key=None, B0=None, steps: int = 500,
           record_every: int = 1) -> RepResult:
    """FedRep-style alternating minimisation: heads exactly, a gradient step ``eta`` on B, QR.

    The same iteration as :func:`frozen_rep` with ``gamma = 0``; its late contraction in the
    population is ``max(|1 - eta lambda_min(Sigma)|, |1 - eta lambda_max(Sigma)|)``, i.e.
    ``1 - eta lambda_min`` while ``eta (lambda_min + lambda_max) <= 2`` (claim R5)."""
    stats, d, k, dt = _sizes(source, k)
    steps = check_int("steps", steps, 0)
    record_every = check_int("record_every", record_every, 1)
    check_scalar("eta", eta, 0.0, lo_open=True)
    B0 = _init_rep(key, B0, d, k, dt)
    res = _rep_kernel(stats, B0[None], jnp.asarray(eta, dt), jnp.asarray(jnp.inf, dt),
                      jnp.zeros((), dt), steps=steps, inner_steps=1, record_every=record_every)
    check_history("FedRep (alternating minimisation)", res.history.step,
                  res.history.value.objective, {"eta": eta}, final=res.representation)
    return res._replace(perturbations=None, start_objectives=None)


# ------------------------------------------------------------------ ANIL, MAML, average loss
def anil_heads(B, stats: TaskStats, alpha, w0):
    """Heads after the inner step: ``w'_t = w0 - alpha B^T g_t(B w0)`` (T, k)."""
    g0 = predictor_grad(B @ w0, stats)
    return w0 - alpha * g0 @ B


def meta_objective(B, w0, stats: TaskStats, alpha, inner_on_rep=1.0, first_order=0.0):
    """``mean_t L_t(B'_t w'_t)`` after one inner step of size alpha from ``(B, w0)``:
    ``w'_t = w0 - alpha B^T g_t``, ``B'_t = B - inner_on_rep alpha g_t w0^T`` (``g_t = g_t(B w0)``;
    ``inner_on_rep`` 1: one-step MAML, 0: ANIL; ``alpha = 0``: average loss with the shared head
    w0). ``first_order`` 1 stops the derivative through the inner step (the adapted parameters
    enter the outer gradient as constants). The flags are numbers (traced in a sweep)."""
    g0 = predictor_grad(B @ w0, stats)  # (T, d)
    dB = -(alpha * inner_on_rep) * g0[:, :, None] * w0[None, None, :]  # (T, d, k)
    dw = -alpha * g0 @ B  # (T, k)
    dB = first_order * lax.stop_gradient(dB) + (1 - first_order) * dB
    dw = first_order * lax.stop_gradient(dw) + (1 - first_order) * dw
    v = jnp.einsum("tdk,tk->td", B + dB, w0 + dw)
    return jnp.mean(predictor_loss(v, stats))


def meta_step(B, w0, stats: TaskStats, alpha, beta, inner_on_rep=1.0, learn_head_init=1.0,
              first_order=0.0):
    """One outer gradient step of size beta of :func:`meta_objective` on B and (times
    ``learn_head_init``) on w0; returns ``(B, w0)``."""
    gB, gw = jax.grad(meta_objective, argnums=(0, 1))(B, w0, stats, alpha, inner_on_rep,
                                                      first_order)
    return B - beta * gB, w0 - (beta * learn_head_init) * gw


def anil_objective(B, stats: TaskStats, alpha, w0):
    """``mean_t L_t(B w'_t(B))``: the loss after ANIL's inner step."""
    return meta_objective(B, w0, stats, alpha, 0.0)


def anil_step(B, stats: TaskStats, alpha, beta, w0, first_order: bool = False):
    """One outer step of ANIL (second order, through the inner step) or first-order ANIL (the
    adapted heads held fixed: ``G = mean_t g_t(B w'_t) w'_t^T``)."""
    return meta_step(B, w0, stats, alpha, beta, 0.0, 0.0, 1.0 if first_order else 0.0)[0]


def maml_objective(B, w0, stats: TaskStats, alpha):
    """One-step MAML's objective (inner step alpha on both B and the head)."""
    return meta_objective(B, w0, stats, alpha, 1.0)


def maml_step(B, w0, stats: TaskStats, alpha, beta, learn_head_init: bool = True):
    """One outer step of one-step MAML on B and (``learn_head_init``) on w0; returns (B, w0)."""
    return meta_step(B, w0, stats, alpha, beta, 1.0, 1.0 if learn_head_init else 0.0)


def average_loss_objective(B, w, stats: TaskStats):
    """``mean_t L_t(B w)`` with one head w shared by all tasks."""
    return jnp.mean(predictor_loss(B @ w, stats))


def average_loss_step(B, w, stats: TaskStats, lr):
    """Simultaneous gradient step of size lr on ``(B, w)`` of the average loss (:func:`meta_step`
    with ``alpha = 0``); returns ``(B, w)``."""
    return meta_step(B, w, stats, 0.0, lr, 0.0, 1.0)


@functools.partial(jax.jit, static_argnames=("steps", "record_every"))
def _meta_kernel(stats, B0, w0, alpha, beta, inner_on_rep, learn_head_init, first_order, *,
                 steps, record_every):
    """ANIL, first-order ANIL, one-step MAML and average loss: one compiled program per shape."""
    def step(s):
        return meta_step(s[0], s[1], stats, alpha, beta, inner_on_rep, learn_head_init,
                         first_order)

    def objective(s):
        return meta_objective(s[0], s[1], stats, alpha, inner_on_rep)

    (B, w), hist = run_steps(step, (B0, w0), steps, record_every,
                             lambda s: RepRecord(objective(s), s[0]))
    return RepResult(B, anil_heads(B, stats, alpha, w), None, w, objective((B, w)), hist, None)


def _check_steps(alpha_name, alpha, beta_name, beta, steps, record_every):
    check_scalar(alpha_name, alpha, 0.0, lo_open=True)
    check_scalar(beta_name, beta, 0.0, lo_open=True)
    return check_int("steps", steps, 0), check_int("record_every", record_every, 1)


def _head_init(w0, k, dt):
    if w0 is None:
        return jnp.zeros((k,), dt)
    return check_array("w0", w0, shape=(k,)).astype(dt)


def _run_meta(stage, sizes, stats, B0, w0, alpha, beta, flags, steps, record_every):
    dt = stats.Sxx.dtype
    f = [jnp.asarray(x, dt) for x in flags]
    res = _meta_kernel(stats, B0, w0, jnp.asarray(alpha, dt), jnp.asarray(beta, dt), *f,
                       steps=steps, record_every=record_every)
    check_history(stage, res.history.step, res.history.value.objective, sizes,
                  final=(res.representation, res.head_init))
    return res


def anil(source: TaskStats, k, *, alpha, beta, key=None, B0=None, w0=None, steps: int = 1000,
         first_order: bool = False, init_scale=0.5, record_every: int = 1) -> RepResult:
    """ANIL (inner step ``alpha`` on the head from ``w0``, default 0; outer step ``beta`` on B).

    ``B0`` default: ``init_scale / sqrt(alpha)`` times a random orthonormal matrix, so that
    ``alpha B0^T B0 = init_scale^2 I``. ``first_order=True`` is first-order ANIL.
    In the population (w0 = 0) the wrong-subspace part of B contracts at the late rate
    ``1 - alpha beta lambda_min(Sigma)`` and ``alpha B^T B -> I`` (claim R3), when that fixed
    point is stable: ``alpha beta lambda_max(Sigma) < 1/2`` for ANIL, ``< 1`` for first order."""
    stats, d, k, dt = _sizes(source, k)
    steps, record_every = _check_steps("alpha", alpha, "beta", beta, steps, record_every)
    check_scalar("init_scale", init_scale, 0.0, lo_open=True)
    scale = init_scale / jnp.sqrt(jnp.asarray(alpha, dt)) if B0 is None else 1.0
    B0 = _init_rep(key, B0, d, k, dt, scale)
    w0 = _head_init(w0, k, dt)
    fo = 1.0 if first_order else 0.0
    name = "first-order ANIL" if first_order else "ANIL"
    return _run_meta(f"{name} retraining", {"alpha": alpha, "beta": beta}, stats, B0, w0, alpha,
                     beta, (0.0, 0.0, fo), steps, record_every)


def maml(source: TaskStats, k, *, alpha, beta, key=None, B0=None, w0=None, steps: int = 1000,
         learn_head_init: bool = True, init_scale=0.5, record_every: int = 1) -> RepResult:
    """One-step MAML: inner step ``alpha`` on head and representation, outer step ``beta`` on B and
    the head initialisation w0 (default start 0; ``learn_head_init=False`` keeps it fixed). The
    start ``B0`` is as in :func:`anil`. At w0 = 0 the inner step leaves B unchanged, so the
    B-update is ANIL's; with symmetric heads w0 stays at 0 (claim R3)."""
    stats, d, k, dt = _sizes(source, k)
    steps, record_every = _check_steps("alpha", alpha, "beta", beta, steps, record_every)
    check_scalar("init_scale", init_scale, 0.0, lo_open=True)
    scale = init_scale / jnp.sqrt(jnp.asarray(alpha, dt)) if B0 is None else 1.0
    B0 = _init_rep(key, B0, d, k, dt, scale)
    w0 = _head_init(w0, k, dt)
    return _run_meta("one-step MAML retraining", {"alpha": alpha, "beta": beta}, stats, B0, w0,
                     alpha, beta, (1.0, 1.0 if learn_head_init else 0.0, 0.0), steps,
                     record_every)


def average_loss(source: TaskStats, k, *, lr, key=None, B0=None, w0=None, steps: int = 1000,
                 record_every: int = 1) -> RepResult:
    """Average-loss training: one head shared by all tasks, gradient steps ``lr`` on ``(B, w)``.
    Default start: a random orthonormal B and ``w0 = (1, ..., 1) / sqrt(k)``. In the population
    with heads of mean zero, B's column space never changes (claim R3). ``head_init`` of the
    result is the learned shared head."""
    stats, d, k, dt = _sizes(source, k)
    check_scalar("lr", lr, 0.0, lo_open=True)
    steps = check_int("steps", steps, 0)
    record_every = check_int("record_every", record_every, 1)
    B0 = _init_rep(key, B0, d, k, dt)
    w0 = (jnp.ones((k,), dt) / jnp.sqrt(jnp.asarray(k, dt)) if w0 is None
          else check_array("w0", w0, shape=(k,)).astype(dt))
    return _run_meta("average-loss training", {"lr": lr}, stats, B0, w0, 0.0, lr,
                     (0.0, 1.0, 0.0), steps, record_every)


# ----------------------------------------------------------------------------- AdaptRep
def _check_lam(lam):
    """lam > 0, finite or ``inf`` (the frozen limit); tracers pass through."""
    if not is_concrete(lam):
        return lam
    try:
        v = float(np.asarray(lam))
    except (TypeError, ValueError):
        raise ValueError(f"lam must be a positive number or inf, got {lam!r}") from None
    if not v > 0:  # also NaN
        raise ValueError(f"lam must be a positive number or inf, got {lam!r}")
    return lam


def _inv(lam):
    return 1.0 / lam  # 0 for lam = inf: the frozen limit


def adaptrep_inner_step(B, Delta, w, stats: TaskStats, lam, gamma):
    """One exact alternating update of every task's ``(w_t, Delta_t)`` (see the module docstring);
    returns ``(Delta, w)``. ``lam = inf`` keeps ``Delta = 0`` (FrozenRep's ridge heads). The
    d x d system ``(I + (||w||^2/lambda) S) u = -(||w||^2/lambda)(S B w - s)`` is solved by
    conjugate gradients (:func:`_shifted_solve`)."""
    d, k = B.shape
    R = B + Delta  # (T, d, k)
    S, s = stats.Sxx, _s(stats)
    G = jnp.swapaxes(R, -1, -2) @ S @ R + gamma * jnp.eye(k, dtype=B.dtype)
    w = spd_solve(G, jnp.einsum("tdk,td->tk", R, s))
    c = jnp.sum(w * w, axis=-1) * _inv(lam)  # ||w||^2 / lambda, (T,)
    Bw = w @ B.T  # (T, d)
    u = _shifted_solve(S, c, -c[:, None] * (jnp.einsum("tde,te->td", S, Bw) - s))
    g = jnp.einsum("tde,te->td", S, Bw + u) - s
    Delta = -_inv(lam) * g[:, :, None] * w[:, None, :]
    return Delta, w


def adaptrep_objective(B, Delta, w, stats: TaskStats, lam, gamma):
    """``mean_t [L_t((B + Delta_t) w_t) + lambda/2 ||Delta_t||_F^2 + gamma/2 ||w_t||^2]``
    (the lambda term is 0 when ``lam = inf``, where ``Delta = 0``)."""
    v = w @ B.T + jnp.einsum("tdk,tk->td", Delta, w)
    dd = jnp.sum(Delta * Delta, axis=(-2, -1))
    pen = jnp.where(jnp.isinf(lam), 0.0, 0.5 * jnp.where(jnp.isinf(lam), 0.0, lam) * dd)
    return jnp.mean(predictor_loss(v, stats) + pen + 0.5 * gamma * jnp.sum(w * w, -1))


def adaptrep_inner(B, stats: TaskStats, lam, gamma, steps: int, Delta=None, w=None):
    """``steps`` alternating updates from ``Delta = 0`` and the ridge heads (or the given ones);
    returns ``(Delta, w)``: the inner problem at a fixed B (AdaptRep's target fine-tuning too)."""
    T, (d, k) = stats.Syx.shape[0], B.shape
    if Delta is None:
        Delta = jnp.zeros((T, d, k), B.dtype)
    if w is None:
        w = frozen_heads(B, stats, gamma)
    def body(c, _):
        return adaptrep_inner_step(B, c[0], c[1], stats, lam, gamma), None

    return lax.scan(body, (Delta, w), None, length=steps)[0]


def adaptrep_step(B, Delta, w, stats: TaskStats, lr, lam, gamma, inner_steps: int):
    """``inner_steps`` inner updates, then a step ``lr`` on B with ``mean_t g_t w_t^T`` and QR;
    returns ``(B, Delta, w)``. With ``lam = inf`` (and any ``inner_steps``) this is
    :func:`alternating_step` (FrozenRep's and FedRep's update)."""
    Delta, w = adaptrep_inner(B, stats, lam, gamma, inner_steps, Delta, w)
    v = w @ B.T + jnp.einsum("tdk,tk->td", Delta, w)
    G = _outer_mean(predictor_grad(v, stats), w)
    return orthonormalise(B - lr * G), Delta, w


@functools.partial(jax.jit, static_argnames=("steps", "inner_steps", "record_every"))
def _rep_kernel(stats, B0, lr, lam, gamma, *, steps, inner_steps, record_every):
    """FrozenRep, FedRep (``lam = inf``) and AdaptRep: one compiled program per shape; every start
    of ``B0`` (n_starts, d, k) runs (vmapped) and the lowest final objective is returned."""
    def run(b0):
        b0 = orthonormalise(b0)
        T, (d, k) = stats.Syx.shape[0], b0.shape
        s0 = (b0, jnp.zeros((T, d, k), b0.dtype), frozen_heads(b0, stats, gamma))

        def record(s):
            return RepRecord(adaptrep_objective(s[0], s[1], s[2], stats, lam, gamma), s[0])

        (B, D, w), hist = run_steps(
            lambda s: adaptrep_step(s[0], s[1], s[2], stats, lr, lam, gamma, inner_steps),
            s0, steps, record_every, record)
        D, w = adaptrep_inner(B, stats, lam, gamma, inner_steps, D, w)
        return B, D, w, adaptrep_objective(B, D, w, stats, lam, gamma), hist

    B, D, w, obj, hist = jax.vmap(run)(B0)
    obj = jnp.where(jnp.isfinite(obj), obj, jnp.inf)
    best = jnp.argmin(obj)
    return RepResult(B[best], w[best], D[best], None, obj[best],
                     History(hist.step[0], jax.tree.map(lambda x: x[best], hist.value)), obj)


def adapt_rep(source: TaskStats, k, *, lam, gamma, key=None, B0=None, n_starts: int = 1,
              steps: int = 500, inner_steps: int = 5, lr=None,
              record_every: int = 1) -> RepResult:
    """AdaptRep: minimise ``mean_t min_{Delta_t, w_t} [L_t((B + Delta_t) w_t) + lambda/2
    ||Delta_t||_F^2 + gamma/2 ||w_t||^2]`` over orthonormal B (d, k).

    Args:
      lam, gamma: penalties on the representation perturbations (lam > 0; ``inf`` is FrozenRep
        with ridge gamma on the heads) and on the heads (gamma >= 0).
      key / B0: ``n_starts`` random orthonormal starts, or explicit starts (d, k) or
        (n_starts, d, k); the start with the lowest final objective is returned.
      steps, inner_steps, lr: outer iterations, inner alternating updates per outer iteration, the
        step on B (default ``0.5 / ||mean_t s_t s_t^T||_F``).
    """
    stats, d, k, dt = _sizes(source, k)
    _check_lam(lam)
    check_scalar("gamma", gamma, 0.0)
    steps = check_int("steps", steps, 0)
    inner_steps = check_int("inner_steps", inner_steps, 1)
    record_every = check_int("record_every", record_every, 1)
    lr = 0.5 * _default_lr(stats) if lr is None else lr
    check_scalar("lr", lr, 0.0, lo_open=True)
    if B0 is None:
        n_starts = check_int("n_starts", n_starts, 1)
        if key is None:
            raise ValueError("key is required (a jax.random key for the initial representation) "
                             "unless B0 is given")
        B0 = jax.vmap(lambda kk: orthonormal_columns(kk, d, k, dt))(jax.random.split(key,
                                                                                     n_starts))
    else:
        B0 = check_array("B0", B0).astype(dt)
        if B0.ndim == 2:
            B0 = B0[None]
        if B0.ndim != 3 or B0.shape[1:] != (d, k):
            raise ValueError(f"B0 must have shape (d={d}, k={k}) or (n_starts, {d}, {k}), got "
                             f"{tuple(B0.shape)}")
    res = _rep_kernel(stats, B0, jnp.asarray(lr, dt), jnp.asarray(lam, dt),
                      jnp.asarray(gamma, dt), steps=steps, inner_steps=inner_steps,
                      record_every=record_every)
    check_history("AdaptRep retraining", res.history.step, res.history.value.objective,
                  {"lr": lr}, final=(res.representation, res.perturbations))
    return res


# ----------------------------------------------------------------------------- moments
def moments_subspace(M, k: int):
    """Top-k eigenvectors (d, k) of a symmetric moment matrix."""
    _, V = jnp.linalg.eigh((M + jnp.swapaxes(M, -1, -2)) / 2)
    return V[..., ::-1][..., :k]


def method_of_moments(samples: Samples, k) -> RepResult:
    """Method of moments: the top-k eigenvectors of ``(1/(nT)) sum_{t,i} y_ti^2 x_ti x_ti^T``,
    whose expectation is ``(sigma^2 + mean ||beta||^2) I + 2 C`` (claim R4). Needs raw samples
    (``linmeta.representation.draw_samples``): the fourth moments are not in ``TaskStats``."""
    M = moment_matrix(samples)
    k = check_int("k", k, 1, M.shape[-1], hi_label="d")
    B = moments_subspace(M, k)
    return RepResult(B, None, None, None, jnp.asarray(jnp.nan, M.dtype), None, None)
