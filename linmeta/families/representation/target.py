"""Fine-tuning a learned representation on target tasks (claims R2, R7).

A target task has m samples (statistics ``S``, ``s``; p = 1) and the learned ``B_hat`` (d, k):

- **head only** (:func:`head_only_fit`): the representation frozen, least squares (ridge ``gamma``)
  in the head: ``a = (B^T S B + gamma I)^+ B^T s``, predictor ``B a``. Its expected error on an
  orthonormal B is the floor formula of :func:`linmeta.families.representation.theory.frozen_target_risk`.
- **head and representation** (:func:`head_and_representation_fit`): AdaptRep's inner problem on
  the target, ``min_{Delta, w} L((B + Delta) w) + lambda/2 ||Delta||_F^2 + gamma/2 ||w||^2``,
  by exact alternating minimisation from the ridge head and ``Delta = 0``; predictor
  ``(B + Delta) w``.
- **from scratch** (:func:`scratch_fit`): least squares ``S^+ s`` in d dimensions, no source
  information (minimum norm when m < d).

The pseudo-inverses are :func:`linmeta.core.kernels.psd_pinv` (Newton-Schulz, matrix products only):
batched LAPACK calls running concurrently were seen to hang XLA:CPU (jax 0.10) in these
Monte Carlo programs.

The excess risk of a predictor ``v`` is ``E_x <x, v - beta_0>^2 = ||v - beta_0||^2`` (x ~ N(0, I)),
with ``beta_0`` the truth behind the statistics (``M_star``).
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from linmeta.core._validate import check_array, check_choice, check_int, check_scalar
from linmeta.core.data import TaskStats
from linmeta.core.kernels import psd_pinv
from .methods import _s, adaptrep_inner, check_rep_stats

__all__ = ["TargetFit", "head_only_fit", "head_and_representation_fit", "scratch_fit",
           "target_excess_risk", "finetune_target"]


class TargetFit(NamedTuple):
    """``predictor`` (m, d); ``heads`` (m, k) and ``perturbations`` (m, d, k) where the method has
    them (else ``None``); ``excess_risk`` (m,) ``||predictor - beta_0||^2`` (NaN when the truth is
    unknown)."""

    predictor: jax.Array
    heads: Any
    perturbations: Any
    excess_risk: jax.Array


def target_excess_risk(v, stats: TaskStats):
    """``||v_t - beta_t||^2`` per target task (population excess risk for x ~ N(0, I))."""
    r = v - stats.M_star[..., 0, :]
    return jnp.sum(r * r, axis=-1)


def head_only_fit(B, stats: TaskStats, gamma=0.0):
    """Heads ``a_t = (B^T S_t B + gamma I)^+ B^T s_t`` (any leading batch axes; pseudo-inverse:
    minimum norm when m < k;
    :func:`linmeta.core.kernels.psd_pinv`, matrix products only); returns ``(predictors (m, d),
    heads (m, k))``."""
    k = B.shape[-1]
    G = jnp.einsum("dk,...de,el->...kl", B, stats.Sxx, B) + gamma * jnp.eye(k, dtype=B.dtype)
    a = jnp.einsum("...kl,...l->...k", psd_pinv(G), _s(stats) @ B)
    return a @ B.T, a


def head_and_representation_fit(B, stats: TaskStats, lam, gamma, steps: int):
    """AdaptRep's inner problem on each target task (``steps`` alternating updates); returns
    ``(predictors (m, d), heads (m, k), perturbations (m, d, k))``."""
    Delta, w = adaptrep_inner(B, stats, lam, gamma, steps)
    return w @ B.T + jnp.einsum("tdk,tk->td", Delta, w), w, Delta


def scratch_fit(stats: TaskStats):
    """Least squares in d dimensions, ``S^+ s`` (m, d): the core's OLS solution
    (:func:`linmeta.core.kernels.ols_solution`'s pseudo-inverse, matrix products only)."""
    return jnp.einsum("...de,...e->...d", psd_pinv(stats.Sxx), _s(stats))


@functools.partial(jax.jit, static_argnames=("method", "steps"))
def _target_kernel(B, stats, lam, gamma, *, method, steps):
    if method == "head":
        v, a = head_only_fit(B, stats, gamma)
        return TargetFit(v, a, None, target_excess_risk(v, stats))
    if method == "head_and_representation":
        v, a, D = head_and_representation_fit(B, stats, lam, gamma, steps)
        return TargetFit(v, a, D, target_excess_risk(v, stats))
    v = scratch_fit(stats)
    return TargetFit(v, None, None, target_excess_risk(v, stats))


def finetune_target(B, target: TaskStats, method: str = "head", *, lam=1.0, gamma=0.0,
                    steps: int = 50) -> TargetFit:
    """Fine-tune the learned representation ``B`` (d, k) on every task of ``target`` (p = 1).

    ``method``: ``"head"`` (representation frozen), ``"head_and_representation"`` (AdaptRep's
    regularised fine-tuning, ``lam`` > 0, ``gamma`` >= 0, ``steps`` alternating updates) or
    ``"scratch"`` (least squares without B)."""
    stats = check_rep_stats(target, "target")
    d = stats.d
    check_choice("method", method, ("head", "head_and_representation", "scratch"))
    B = check_array("B", B).astype(stats.Sxx.dtype)
    if B.ndim != 2 or B.shape[0] != d or not 1 <= B.shape[1] <= d:
        raise ValueError(f"B must have shape (d={d}, k) with 1 <= k <= d, got {tuple(B.shape)}")
    check_scalar("gamma", gamma, 0.0)
    if method == "head_and_representation":
        check_scalar("lam", lam, 0.0, lo_open=True)
        steps = check_int("steps", steps, 1)
    dt = stats.Sxx.dtype
    return _target_kernel(B, stats, jnp.asarray(lam, dt), jnp.asarray(gamma, dt), method=method,
                          steps=int(steps))
