"""Fine-tuning a frozen base on unseen tasks with an asymmetric rank-r adapter
(docs/theory.md#fine-tuning, C2, C6).

The base ``A_hat`` is frozen; task j learns ``M_j = A_hat + U_j V_j^T`` (U_j, V_j of shape d x r) from its
statistics (n samples, or the population).

- ``method="gd"``: the paper's gradient descent, simultaneous steps
  ``U <- U - lr G V``, ``V <- V - lr G^T U`` with ``G = M S_xx - S_yx`` (gradient of
  ``L(M) = 1/(2n) sum ||y - M x||^2``), from ``U, V ~ N(0, 0.1^2)``, lr 0.005.
- ``method="exact"``: the global optimum over rank-r adapters, i.e. reduced-rank regression. With
  ``D = S_yx S_xx^+ - A_hat`` and ``S = S_xx^{1/2}``, the loss is ``1/2 ||(Delta - D) S||_F^2 + const``,
  minimised by ``Delta = [D S]_r S^+`` where ``[.]_r`` keeps the top r singular triplets. In the
  population (S = I) this is Eckart-Young on ``M* - A_hat``, leaving ``sum_{i>r} sigma_i^2`` (claim C2).
  ``rank = d`` is full fine-tuning (ordinary least squares).

  Large d (``d >`` :data:`DENSE_MAX_D`): the dense eigendecomposition and SVD above cost minutes at
  d = 4096 on two cores. With a Cholesky factor ``S_xx = L L^T`` (positive definite, n >= d) the
  same minimiser is ``Delta = [D L]_r L^{-1}`` (the loss is ``1/2 ||(Delta - D) L||_F^2`` and
  ``Delta -> Delta L`` preserves rank), with ``D L = S_yx L^{-T} - A_hat L`` (triangular solves,
  no inverse), and the top-r singular triplets of ``D L`` by subspace iteration on r + 10 columns
  (two d x d x (r + 10) products an iteration, until the triplets' residual
  ``||(D L) v_i - sigma_i u_i|| <= 8 eps sqrt(d) sigma_1``, at most 200 iterations); the result
  is the dense path's when sigma_r > sigma_{r+1} (tested). A singular or ill-conditioned ``S_xx``
  (n < d; :func:`~linmeta.methods._common.cholesky_ok`) falls back to the dense path.

Both run on all unseen tasks of the source at once (vmapped over the task axis).
"""
from __future__ import annotations

import functools

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import solve_triangular

from linmeta.core._validate import check_array, check_choice, check_int, check_scalar
from linmeta.core.data import TaskStats
from linmeta.core.divergence import check_history
from linmeta.core.lora import asymmetric_delta, asymmetric_grads, init_factor
from linmeta.core.losses import paper_test_loss, task_loss, task_loss_grad
from ._common import DENSE_MAX_D, History, cholesky_ok, run_steps
from .standard import _check_stats

__all__ = ["FinetuneResult", "FinetuneRecord", "finetune", "reduced_rank_fit", "finetune_gd_step",
           "top_singular_triplets", "DENSE_MAX_D"]


class FinetuneRecord(NamedTuple):
    """Recorded per step: training loss ``L(M)`` and the paper's test loss, each (m,)."""

    loss: jax.Array
    test_loss: jax.Array


class FinetuneResult(NamedTuple):
    """``task_matrix`` (m, d, d) = base + U V^T; adapters ``U``, ``V`` (m, d, r); ``history`` of
    :class:`FinetuneRecord` (``None`` for the exact method); ``test_loss`` (m,) at the end."""

    task_matrix: jax.Array
    U: jax.Array
    V: jax.Array
    history: object
    test_loss: jax.Array


def finetune_gd_step(U, V, base, stats: TaskStats, lr):
    """One simultaneous gradient step on the adapter factors of every task."""
    G = task_loss_grad(base + asymmetric_delta(U, V), stats)
    gU, gV = asymmetric_grads(G, U, V)
    return U - lr * gU, V - lr * gV


def _psd_sqrt_and_pinv_sqrt(S):
    w, Q = jnp.linalg.eigh(S)
    tol = jnp.max(w, axis=-1, keepdims=True) * S.shape[-1] * jnp.finfo(S.dtype).eps
    pos = w > tol
    sq = jnp.where(pos, jnp.sqrt(jnp.where(pos, w, 1.0)), 0.0)
    isq = jnp.where(pos, 1.0 / jnp.where(pos, sq, 1.0), 0.0)
    QT = jnp.swapaxes(Q, -1, -2)
    return (Q * sq[..., None, :]) @ QT, (Q * isq[..., None, :]) @ QT


def _dense_reduced_rank(base, Sxx, Syx, rank: int):
    D = Syx @ jnp.linalg.pinv(Sxx, hermitian=True) - base
    S, S_pinv = _psd_sqrt_and_pinv_sqrt(Sxx)
    P, sv, WT = jnp.linalg.svd(D @ S, full_matrices=False)
    U = P[..., :, :rank] * sv[..., None, :rank]
    V = S_pinv @ jnp.swapaxes(WT[..., :rank, :], -1, -2)
    return U, V


def top_singular_triplets(W, rank: int, max_iter: int = 200):
    """Top-``rank`` singular triplets ``(P, s, V)`` of ``W`` (p x d; P (p, rank), V (d, rank)) by
    block subspace iteration on ``rank + 10`` columns from a fixed Gaussian block,
    re-orthonormalised every half step, stopped when
    ``max_i ||W v_i - s_i p_i|| <= 8 eps sqrt(d) s_1`` or after ``max_iter`` iterations.
    O(p d (rank + 10)) an iteration; exact to rounding when ``s_rank > s_{rank+1}`` (convergence
    factor ``(s_{rank+10+1} / s_rank)^2`` an iteration)."""
    p_dim, d = W.shape
    width = min(rank + 10, p_dim, d)
    dt = W.dtype
    tol = 8 * jnp.finfo(dt).eps * jnp.sqrt(jnp.asarray(d, dt))

    def orth(X):
        return jnp.linalg.qr(X)[0]

    def triplets(Qp):
        B = Qp.T @ W                                  # (width, d)
        u, s, vt = jnp.linalg.svd(B, full_matrices=False)
        P = Qp @ u[:, :rank]
        V = vt[:rank].T
        res = jnp.linalg.norm(W @ V - P * s[:rank], axis=0)  # W^T P = V s holds by construction
        return P, s[:rank], V, jnp.max(res) / jnp.maximum(s[0], jnp.finfo(dt).tiny), vt[:width].T

    omega = jax.random.normal(jax.random.key(0), (d, width), dt)
    Qp = orth(W @ omega)

    def cond(c):
        return (c[1] > tol) & (c[2] < max_iter)

    def body(c):
        Qp, _, it = c
        Qp = orth(W @ orth(W.T @ Qp))
        return Qp, triplets(Qp)[3], it + 1

    Qp = lax.while_loop(cond, body, (Qp, triplets(Qp)[3], 0))[0]
    P, s, V, _, _ = triplets(Qp)
    return P, s, V


def _cholesky_reduced_rank(base, Sxx, Syx, rank: int):
    L = jnp.linalg.cholesky(Sxx)

    def fast(L):
        # D L = S_yx L^{-T} - base L
        W = solve_triangular(L, Syx.T, lower=True).T - base @ L
        P, s, Vw = top_singular_triplets(W, rank)
        V = solve_triangular(L, Vw, lower=True, trans=1)   # L^{-T} V_w
        return P * s, V

    return lax.cond(cholesky_ok(L, Sxx), fast,
                    lambda L: _dense_reduced_rank(base, Sxx, Syx, rank), L)


def reduced_rank_fit(base, stats: TaskStats, rank: int):
    """Exact rank-``rank`` adapter ``(U, V)`` minimising each task's loss with the base frozen.

    ``d <=`` :data:`DENSE_MAX_D`: dense eigendecomposition of ``S_xx`` and SVD (module docstring);
    above: Cholesky and subspace iteration, one task after another (``lax.map``), so that at
    d = 4096 it needs a few d x d arrays and no d^3 decomposition but the Cholesky factor."""
    d = stats.Sxx.shape[-1]
    if d <= DENSE_MAX_D:
        return _dense_reduced_rank(base, stats.Sxx, stats.Syx, rank)
    lead = stats.Syx.shape[:-2]
    base = jnp.broadcast_to(base, lead + base.shape[-2:])
    flat = [x.reshape((-1,) + x.shape[-2:]) for x in (base, stats.Sxx, stats.Syx)]
    U, V = lax.map(lambda a: _cholesky_reduced_rank(*a, rank), tuple(flat))
    return U.reshape(lead + U.shape[-2:]), V.reshape(lead + V.shape[-2:])


def finetune(base, source: TaskStats, rank, *, key=None, method: str = "gd", steps: int = 1000,
             lr=0.005, init_scale=0.1, U0=None, V0=None, record_every: int = 1) -> FinetuneResult:
    """Fine-tune the frozen ``base`` (d, d) on every task of ``source`` with a rank-``rank`` U V^T.

    Args:
      base: retrained base A_hat, (d, d) (or (m, d, d), one per task).
      source: statistics of the unseen task(s), e.g. ``linmeta.sample_tasks(key, truth, n,
        noise_std, tasks="unseen")`` or ``linmeta.population(truth, tasks="unseen")``.
      rank: adapter rank r, 1 <= r <= d (r = d is full fine-tuning).
      key: PRNG key for ``U, V ~ N(0, init_scale^2)`` (``"gd"``, unless U0 and V0 are given).
      method: ``"gd"`` (the paper's gradient descent) or ``"exact"`` (reduced-rank regression).
      steps, lr, record_every: gradient-descent settings (paper: lr 0.005).

    Returns:
      :class:`FinetuneResult`.

    Raises:
      linmeta.DivergenceError: gradient descent diverged (the training loss of some task became
        non-finite or rose 1000-fold, :mod:`linmeta.core.divergence`); names ``lr`` and the iteration.
        Not raised inside a caller's ``jit`` (traced values).
    """
    _check_stats(source)
    check_choice("method", method, ("gd", "exact"))
    m, d = source.T, source.d
    r = check_int("rank", rank, 1, d, hi_label="d")
    dt = source.Sxx.dtype
    base = check_array("base", base).astype(dt)
    if base.shape not in ((d, d), (m, d, d)):
        raise ValueError(f"base must have shape (d={d}, d={d}) or (m={m}, {d}, {d}), "
                         f"got {tuple(base.shape)}")
    if method == "exact":
        return _exact_kernel(base, source, rank=r)

    steps = check_int("steps", steps, 0)
    check_scalar("lr", lr, 0.0, lo_open=True)
    if U0 is None or V0 is None:
        if key is None:
            raise ValueError("key is required (a jax.random key for the adapter initialisation) "
                             "unless U0 and V0 are given")
        check_scalar("init_scale", init_scale, 0.0, lo_open=True)
        ku, kv = jax.random.split(key)
        U0 = init_factor(ku, (m, d, r), init_scale, dt) if U0 is None else U0
        V0 = init_factor(kv, (m, d, r), init_scale, dt) if V0 is None else V0
    U0 = _check_factor("U0", U0, m, d, r, dt)
    V0 = _check_factor("V0", V0, m, d, r, dt)
    record_every = check_int("record_every", record_every, 1)
    res = _gd_kernel(base, source, U0, V0, jnp.asarray(lr, dt), steps=steps,
                     record_every=record_every)
    check_history("fine-tuning (gradient descent)", res.history.step, res.history.value.loss,
                  {"lr": lr}, final=(res.U, res.V))
    return res


@functools.partial(jax.jit, static_argnames=("rank",))
def _exact_kernel(base, source, *, rank):
    U, V = reduced_rank_fit(base, source, rank)
    M = base + asymmetric_delta(U, V)
    return FinetuneResult(M, U, V, None, paper_test_loss(M, source))


def _check_factor(name, X, m, d, r, dt):
    X = check_array(name, X).astype(dt)
    if X.shape == (d, r):
        X = jnp.broadcast_to(X, (m, d, r))
    if X.shape != (m, d, r):
        raise ValueError(f"{name} must have shape (m={m}, d={d}, rank={r}) or ({d}, {r}), "
                         f"got {tuple(X.shape)}")
    return X


@functools.partial(jax.jit, static_argnames=("steps", "record_every"))
def _gd_kernel(base, source, U0, V0, lr, *, steps, record_every):
    def record(s):
        M = base + asymmetric_delta(*s)
        return FinetuneRecord(task_loss(M, source), paper_test_loss(M, source))

    (U, V), hist = run_steps(lambda s: finetune_gd_step(s[0], s[1], base, source, lr), (U0, V0),
                             steps, record_every, record)
    M = base + asymmetric_delta(U, V)
    return FinetuneResult(M, U, V, hist, paper_test_loss(M, source))
