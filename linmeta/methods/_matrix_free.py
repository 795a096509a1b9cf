"""Matrix-free Meta-LoRA solver: L-BFGS on the reduced objective (docs/theory.md#meta-lora,
claim C3).

The unknowns are the adapters U (T x d x r); the base is eliminated, ``A = A(U)`` (see
:mod:`linmeta.methods.meta_lora`), and the reduced excess objective

    f(U) = F(A(U), U) - (1/T) sum_t min L_t        (population: f = G(U) / T)

is minimised by ``optax.lbfgs`` (memory 10, zoom line search with the strong Wolfe conditions),
every start of a batch of random starts vmapped, the lowest final objective kept. One iteration
costs a few evaluations of ``f`` and its gradient and O(m T d r) memory, against the dense
Newton's (T d r)^2 Hessian and (T d r)^3 eigendecomposition per iteration.

Structure used:

- **Population** (every task has ``S_xx = I``, as :func:`linmeta.population` gives): then
  ``A(U) = mean_t (M*_t - U_t U_t^T)`` and the excess of task t is ``1/2 ||D_t||_F^2`` with

      D_t = E_t - mean_s E_s,   E_t = C_t - U_t U_t^T,   C_t = M*_t - mean_s M*_s,

  so ``f(U) = G(U)/T`` is :func:`~linmeta.methods.population_reduced_objective` of the centred task
  matrices (centring removes the common part ``A*`` once, before the loop; ``G`` is invariant to
  adding one matrix to every ``E_t``): O(T d^2 r) per evaluation, no pseudo-inverse and no
  d x d x d product; its gradient ``-(1/T)(D_t + D_t^T) U_t`` is written out
  (:func:`population_excess`).
- **Population, compressed** (:func:`population_span`, :func:`compress_population`): only the
  symmetric part of ``C_t`` meets ``U_t U_t^T`` (the antisymmetric part is orthogonal to every
  symmetric matrix), and if ``Q`` (d x m, orthonormal columns) spans the joint column space of the
  symmetric parts ``C^s_t``, then for ``U_t = Q a_t + Q_perp b_t`` the blocks of ``D_t`` outside
  ``Q Q^T . Q Q^T`` only add nonnegative terms, so setting ``b_t = 0`` never raises G. Hence

      min_U G(U) = min_a G_m(a) + 1/2 sum_t ||N_t||_F^2,   K_t = Q^T C^s_t Q,
      N_t = C_t - Q K_t Q^T,

  exactly (``G_m`` is G of the m x m matrices ``K_t``; the minimisers are ``U_t = Q a_t``), and
  ``f(Q a) = G_m(a)/T + sum_t ||N_t||^2 / (2T)`` for every a. In the population of the model the
  C_t have rank <= T k (their span is that of the U*_t), so m <= T k: at (d, k, T) = (4096, 16,
  8) the unknowns fall from T d k = 524288 to T m k <= 16384 and an evaluation from O(T d^2 k) to
  O(T m^2 k). ``Q`` comes from a randomised range finder (Gaussian sketch
  ``Y = sum_t C^s_t Omega_t``, widened until its singular values show a gap); ``N_t`` is computed
  directly (one task at a time, no T d x d temporaries) and the compression is used only when it
  is exact to rounding, ``||N_t||_F <= 64 eps (||S_yx,t||_F + ||mean_s S_yx,s||_F)`` (the
  rounding of the stored ``S_yx`` itself), else the full-space path runs. This needs ``S_xx = I``:
  at finite N the reduced objective couples every direction through ``S_xx``, and no such
  compression is exact.
- **Finite N, large d** (:func:`finite_parts`, :func:`finite_excess`; ``d >`` DENSE_MAX_D and every
  ``S_xx,t`` and their sum positive definite): with ``P = (sum_t S_xx,t)^{-1}``,
  ``A_0 = (sum_t S_yx,t) P`` and ``W_s = P S_xx,s U_s`` the eliminated base is
  ``A(U) = A_0 - sum_s U_s W_s^T``, so the residual of task t,
  ``X_t = A(U) + U_t U_t^T - B_t = K_t + F_t G_t^T`` with ``K_t = A_0 - B_t``,
  ``F_t = [U_t, -U_1..-U_T]``, ``G_t = [U_t, W_1..W_T]`` (d x (T+1) r), is a fixed matrix plus a
  low-rank one, and

      2 T f = sum_t c_t + 2 <F_t, H_t G_t> + tr((F_t^T F_t)(G_t^T S_xx,t G_t)),

  ``H_t = K_t S_xx,t = A_0 S_xx,t - S_yx,t`` (``S_yx,t S_xx,t^{-1} S_xx,t = S_yx,t``),
  ``c_t = tr(K_t S_xx,t K_t^T) = tr(H_t A_0^T) - tr(A_0 S_yx,t^T) + ||L_t^{-1} S_yx,t^T||_F^2``
  (``S_xx,t = L_t L_t^T``): Cholesky factors instead of pseudo-inverses, computed once, and an
  evaluation costs O(T^2 r d^2) with no per-start d x d matrix (against O(T d^3)).
- **Finite N**: the per-task least-squares solutions ``B_t = S_yx,t S_xx,t^+`` and the pooled
  ``(sum_t S_xx,t)^+`` are computed once, outside the loop; an evaluation costs O(T d^3).

Stopping (per start): ``f <= max(ftol, rtol * f_ref)`` with ``f_ref`` = f at U = 0 (the excess of
standard retraining, the scale of the problem), ``||grad f|| <= gtol``, no new best point in
:data:`PATIENCE` consecutive iterations (a lower value, or a value equal to rounding with a
smaller gradient: at a nonzero minimum, finite N, the gradient keeps resolving the minimiser after
the values stop), a non-finite value, or ``max_iter`` iterations. In float64 the default
``rtol = 1e-28`` puts the relative base error at 1e-12 or below on the problems tested
(condition numbers up to 1e4 at the identifiability boundary 3k = d, T = 3); rounding bounds f
below at about ``eps^2 f_ref``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import jax.scipy.linalg
import optax
from jax import lax

from ._common import cholesky_ok

__all__ = ["PATIENCE", "default_rtol", "lbfgs_minimise", "centred_task_matrices",
           "population_excess", "population_span", "compress_population", "SKETCH_EXTRA",
           "sketch_width", "compression_memory", "finite_parts", "finite_excess",
           "finite_base"]

PATIENCE = 10
LBFGS_MEMORY = 10


def default_rtol(dtype) -> float:
    """Relative objective tolerance of :func:`lbfgs_minimise` per dtype: 1e-28 in float64
    (base error ~ sqrt(rtol) relative), 1e-10 in float32 (rounding floor ~ eps^2 = 1.4e-14)."""
    return 1e-28 if jnp.dtype(dtype).itemsize >= 8 else 1e-10


def centred_task_matrices(Syx):
    """``C_t = S_yx,t - mean_s S_yx,s`` (population: ``R*_t - Rbar``)."""
    return Syx - jnp.mean(Syx, axis=-3, keepdims=True)


def _population_parts(U, C):
    T = U.shape[-3]
    E = C - U @ jnp.swapaxes(U, -1, -2)
    D = E - jnp.mean(E, axis=-3, keepdims=True)
    return 0.5 * jnp.sum(D * D) / T, D


@jax.custom_vjp
def population_excess(U, C):
    """``f(U) = G(U)/T = 1/(2T) sum_t ||D_t||_F^2`` on the centred task matrices ``C``
    (:func:`centred_task_matrices`), with its gradient written out: since ``sum_t D_t = 0``,

        df/dU_t = -(1/T) (D_t + D_t^T) U_t,

    two products per task and no transposed intermediates (about half the memory traffic of
    reverse-mode autodiff of the same expression, which matters: an evaluation is memory-bound).
    Not differentiable with respect to ``C``."""
    return _population_parts(U, C)[0]


def _population_fwd(U, C):
    f, D = _population_parts(U, C)
    return f, (D, U)


def _population_bwd(res, ct):
    D, U = res
    T = U.shape[-3]
    g = -(D @ U + jnp.swapaxes(D, -1, -2) @ U) * (ct / T)
    return g, None


population_excess.defvjp(_population_fwd, _population_bwd)


def lbfgs_minimise(f, x0, max_iter: int, f_stop, gtol, f_noise=0.0):
    """Minimise ``f`` from the flat vector ``x0`` with ``optax.lbfgs`` inside ``lax.while_loop``.

    Keeps the best point: the lowest value, or, among values equal to rounding (a nonzero
    minimum, finite N), the smallest gradient. Stops when ``f <= f_stop``, ``||grad|| <= gtol``,
    after :data:`PATIENCE` iterations without a new best point, on a non-finite value, or after
    ``max_iter`` iterations. ``f_noise``: an absolute rounding level of the values beyond
    ``8 eps |f|`` (an objective computed as a sum of large terms, :func:`finite_excess`), within
    which values count as equal. Returns
    ``(x_best, f_best, iterations, evaluations, grad_norm, trace)``: ``evaluations`` counts the
    line-search evaluations of ``f`` and its gradient (plus the one at ``x0``), ``trace[i]`` is the
    lowest value after iteration i (NaN after the stop)."""
    opt = optax.lbfgs(memory_size=LBFGS_MEMORY)
    dt = x0.dtype
    v0, g0 = jax.value_and_grad(f)(x0)
    trace0 = jnp.full((max_iter + 1,), jnp.nan, dt).at[0].set(v0)

    eps = jnp.finfo(dt).eps

    def cond(c):
        x, state, v, g, best, it, evals, stall, trace = c
        return ((it < max_iter) & (best[1] > f_stop) & (best[2] > gtol)
                & (stall < PATIENCE) & jnp.isfinite(v))

    def body(c):
        x, state, v, g, best, it, evals, stall, trace = c
        updates, state = opt.update(g, state, x, value=v, grad=g, value_fn=f)
        x = optax.apply_updates(x, updates)
        v = optax.tree.get(state, "value")  # the line search evaluated f and grad at the new x
        g = optax.tree.get(state, "grad")
        evals = evals + optax.tree.get(state, "num_linesearch_steps")
        gn = jnp.linalg.norm(g)
        # a new best point: a lower value, or (at a nonzero minimum, where values stop
        # resolving) a value equal to rounding and a smaller gradient
        better = (v < best[1]) | ((v <= best[1] + 8 * eps * jnp.abs(best[1]) + f_noise)
                                  & (gn < best[2]))
        best = jax.tree.map(lambda new, old: jnp.where(better, new, old), (x, v, gn), best)
        stall = jnp.where(better, 0, stall + 1)
        trace = trace.at[it + 1].set(best[1])
        return x, state, v, g, best, it + 1, evals, stall, trace

    init = (x0, opt.init(x0), v0, g0, (x0, v0, jnp.linalg.norm(g0)), 0, 1, 0, trace0)
    _, _, _, _, (x, fx, _), it, evals, _, trace = lax.while_loop(cond, body, init)
    return x, fx, it, evals, jnp.linalg.norm(jax.grad(f)(x)), trace


SKETCH_EXTRA = 16  # sketch columns beyond T * rank (the span has dimension <= T k at r = k)
_SKETCH_SEED = 0   # the sketch's Gaussian test matrix: fixed, the span found does not depend on it


def sketch_width(T: int, d: int, rank: int) -> int:
    """First width of the range finder's sketch: ``T rank +`` :data:`SKETCH_EXTRA` (capped at d)."""
    return min(d, T * rank + SKETCH_EXTRA)


def compression_memory(T: int, d: int, width: int, itemsize: int = 8) -> int:
    """Estimated peak bytes of :func:`population_span` and :func:`compress_population` beyond the
    statistics themselves: ~6 d x d temporaries (the mean, one task's centred matrix and its
    symmetric part, the lifted block, the remainder) and ~3 (T, d, width) sketch arrays."""
    return int((6 * d * d + 3 * T * d * width + 4 * T * width * width) * itemsize)


@functools.partial(jax.jit, static_argnames=("width",))
def population_span(Syx, *, width: int):
    """Randomised range finder of the symmetric centred task matrices ``C^s_t``: the left singular
    vectors ``Q`` (d, width) and singular values ``s`` (width,) of the sketch
    ``Y = sum_t C^s_t Omega_t`` (``Omega_t`` Gaussian d x width, a fixed seed). Exact rank-m
    matrices give ``s_i`` at rounding level for i >= m; the caller keeps the leading columns."""
    T, d, _ = Syx.shape
    omega = jax.random.normal(jax.random.key(_SKETCH_SEED), (T, d, width), Syx.dtype)
    mean = jnp.mean(Syx, axis=0)

    def add(Y, x):
        S, om = x
        C = S - mean  # centred elementwise first: no cancellation of the common part in Y
        return Y + 0.5 * (C @ om + C.T @ om), None

    Y = lax.scan(add, jnp.zeros((d, width), Syx.dtype), (Syx, omega))[0]
    Q, s, _ = jnp.linalg.svd(Y, full_matrices=False)
    return Q, s


@jax.jit
def compress_population(Syx, Q):
    """``K_t = Q^T C^s_t Q`` (T, m, m), and per task ``||N_t||_F^2`` with
    ``N_t = C_t - Q K_t Q^T``, ``||S_yx,t||_F`` and ``||mean_s S_yx,s||_F`` (module docstring),
    one task at a time."""
    mean = jnp.mean(Syx, axis=0)

    def one(S):
        C = S - mean
        CQ = C @ Q
        K = Q.T @ (0.5 * (CQ + C.T @ Q))
        N = C - (Q @ K) @ Q.T
        return K, jnp.sum(N * N), jnp.linalg.norm(S)

    K, rest, norms = lax.map(one, Syx)
    return 0.5 * (K + jnp.swapaxes(K, -1, -2)), rest, norms, jnp.linalg.norm(mean)


@jax.jit
def finite_parts(Sxx, Syx):
    """Precomputed pieces of :func:`finite_excess` (module docstring, "Finite N, large d"):
    ``(S_xx, H, L_pooled, c, A_0, ok)``; ``ok`` is False when a Cholesky factor is unusable
    (:func:`linmeta.methods._common.cholesky_ok`), and then the pieces must not be used."""
    pooled = jnp.sum(Sxx, axis=0)
    Lp = jnp.linalg.cholesky(pooled)
    A0 = jax.scipy.linalg.cho_solve((Lp, True), jnp.sum(Syx, axis=0).T).T
    ok = cholesky_ok(Lp, pooled)

    def one(x):
        S, Y = x
        L = jnp.linalg.cholesky(S)
        H = A0 @ S - Y
        Z = jax.scipy.linalg.solve_triangular(L, Y.T, lower=True)
        c = jnp.sum(H * A0) - jnp.sum(A0 * Y) + jnp.sum(Z * Z)
        return H, c, cholesky_ok(L, S)

    H, c, oks = lax.map(one, (Sxx, Syx))
    return Sxx, H, Lp, c, A0, ok & jnp.all(oks)


def _pooled_solve(Lp, U):
    """``W_s = P S_s U_s`` given ``S_s U_s`` as (T, d, r), one solve for all tasks."""
    T, d, r = U.shape
    flat = jnp.moveaxis(U, 0, 1).reshape(d, T * r)
    return jnp.moveaxis(jax.scipy.linalg.cho_solve((Lp, True), flat).reshape(d, T, r), 1, 0)


def finite_excess(U, parts):
    """Reduced excess objective ``f(U) = F(A(U), U) - (1/T) sum_t min L_t`` at finite N from the
    pieces of :func:`finite_parts`, O(T^2 r d^2) (module docstring)."""
    Sxx, H, Lp, c, _, _ = parts
    T, d, r = U.shape
    W = _pooled_solve(Lp, Sxx @ U)
    U_all = jnp.moveaxis(U, 0, 1).reshape(d, T * r)
    W_all = jnp.moveaxis(W, 0, 1).reshape(d, T * r)

    def task(x):
        S, Ht, Ut = x
        F = jnp.concatenate([Ut, -U_all], axis=1)
        G = jnp.concatenate([Ut, W_all], axis=1)
        cross = jnp.sum(F * (Ht @ G))
        quad = jnp.sum((F.T @ F) * (G.T @ (S @ G)))
        return 2 * cross + quad

    return (jnp.sum(c) + jnp.sum(jax.vmap(task)((Sxx, H, U)))) / (2 * T)


def finite_base(U, parts):
    """``A(U) = A_0 - sum_s U_s W_s^T`` from the pieces of :func:`finite_parts`."""
    Sxx, _, Lp, _, A0, _ = parts
    T, d, r = U.shape
    W = _pooled_solve(Lp, Sxx @ U)
    return A0 - jnp.moveaxis(U, 0, 1).reshape(d, T * r) @ jnp.moveaxis(W, 0, 1).reshape(d, T * r).T
