"""Closed forms of the paper's protocol (docs/theory.md, claim C2), from the truth alone: the
rank-r Eckart-Young bias of the SR residual ``U_new U_new^T - Rbar`` averaged over unseen tasks,
traced (padded tasks, traced rank) for the sweep's programs, and on the host. Imports no solver.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from linmeta.core import theory
from linmeta.core.problem import Truth

__all__ = ["theory_sr_bias", "sr_bias_host"]


def theory_sr_bias(truth: Truth, rank, n_tasks=None):
    """Mean over unseen tasks of the rank-``rank`` Eckart-Young bias of the population SR
    residual ``U_new U_new^T - Rbar`` (claim C2). With ``n_tasks`` (traced) only the first
    ``n_tasks`` tasks of ``truth`` count (a zero-padded truth), and ``rank`` may be traced."""
    if n_tasks is None and isinstance(rank, int):
        return jnp.mean(theory.lora_bias(theory.sr_residual(truth.U_star, truth.U_new), rank))
    T = truth.U_star.shape[-3]
    n_tasks = T if n_tasks is None else n_tasks
    R = truth.U_star @ jnp.swapaxes(truth.U_star, -1, -2)
    Rbar = jnp.sum(R * (jnp.arange(T) < n_tasks)[:, None, None], axis=0) / n_tasks
    residual = truth.U_new @ jnp.swapaxes(truth.U_new, -1, -2) - Rbar
    s = jnp.linalg.svd(residual, compute_uv=False)  # decreasing
    return jnp.mean(jnp.sum(jnp.where(jnp.arange(s.shape[-1]) >= rank, s ** 2, 0), axis=-1))


def sr_bias_host(U_star, U_new, n_tasks: int, rank: int) -> float:
    """:func:`theory_sr_bias` in NumPy on the host (the same closed form as
    :func:`linmeta.core.theory.lora_bias` of :func:`linmeta.core.theory.sr_residual`, tested against them):
    mean over unseen tasks of ``sum_{i >= rank} sigma_i^2`` of ``U_new U_new^T - Rbar``, Rbar over
    the first ``n_tasks`` tasks. NumPy, so that preparing a batch compiles nothing and loads no
    LAPACK module of JAX."""
    U = np.asarray(U_star, dtype=float)[:n_tasks]
    Un = np.asarray(U_new, dtype=float)
    Rbar = np.mean(U @ U.transpose(0, 2, 1), axis=0)
    s = np.linalg.svd(Un @ Un.transpose(0, 2, 1) - Rbar, compute_uv=False)  # decreasing
    return float(np.mean(np.sum(s[:, rank:] ** 2, axis=-1)))
