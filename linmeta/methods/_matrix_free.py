"""Matrix-free Meta-LoRA solver: L-BFGS on the reduced objective (docs/theory.md#meta-lora,
claim C3).

The unknowns are the adapters U (T x d x r); the base is eliminated, ``A = A(U)`` (see
:mod:`linmeta.retrain.meta_lora`), and the reduced excess objective

    f(U) = F(A(U), U) - (1/T) sum_t min L_t        (population: f = G(U) / T)

is minimised by ``optax.lbfgs`` (memory 10, zoom line search with the strong Wolfe conditions),
every start of a batch of random starts vmapped, the lowest final objective kept. One iteration
costs a few evaluations of ``f`` and its gradient and O(m T d r) memory, against the dense
Newton's (T d r)^2 Hessian and (T d r)^3 eigendecomposition per iteration.

Structure used:

- **Population** (every task has ``S_xx = I``, as :func:`linmeta.population` gives): then
  ``A(U) = mean_t (M*_t - U_t U_t^T)`` and the excess of task t is ``1/2 ||D_t||_F^2`` with

      D_t = E_t - mean_s E_s,   E_t = C_t - U_t U_t^T,   C_t = M*_t - mean_s M*_s,

  so ``f(U) = G(U)/T`` is :func:`~linmeta.retrain.population_reduced_objective` of the centred task
  matrices (centring removes the common part ``A*`` once, before the loop; ``G`` is invariant to
  adding one matrix to every ``E_t``): O(T d^2 r) per evaluation, no pseudo-inverse and no
  d x d x d product; its gradient ``-(1/T)(D_t + D_t^T) U_t`` is written out
  (:func:`population_excess`).
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

import jax
import jax.numpy as jnp
import optax
from jax import lax

__all__ = ["PATIENCE", "default_rtol", "lbfgs_minimise", "centred_task_matrices",
           "population_excess"]

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


def lbfgs_minimise(f, x0, max_iter: int, f_stop, gtol):
    """Minimise ``f`` from the flat vector ``x0`` with ``optax.lbfgs`` inside ``lax.while_loop``.

    Keeps the best point: the lowest value, or, among values equal to rounding (a nonzero
    minimum, finite N), the smallest gradient. Stops when ``f <= f_stop``, ``||grad|| <= gtol``,
    after :data:`PATIENCE` iterations without a new best point, on a non-finite value, or after
    ``max_iter`` iterations. Returns
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
        better = (v < best[1]) | ((v <= best[1] + 8 * eps * jnp.abs(best[1])) & (gn < best[2]))
        best = jax.tree.map(lambda new, old: jnp.where(better, new, old), (x, v, gn), best)
        stall = jnp.where(better, 0, stall + 1)
        trace = trace.at[it + 1].set(best[1])
        return x, state, v, g, best, it + 1, evals, stall, trace

    init = (x0, opt.init(x0), v0, g0, (x0, v0, jnp.linalg.norm(g0)), 0, 1, 0, trace0)
    _, _, _, _, (x, fx, _), it, evals, _, trace = lax.while_loop(cond, body, init)
    return x, fx, it, evals, jnp.linalg.norm(jax.grad(f)(x)), trace
