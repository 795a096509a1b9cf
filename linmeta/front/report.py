"""Closed-form predictions for one ground truth (``linmeta theory``): claims C1-C6 of
docs/theory.md.

For a truth ``(A*, U*_1..U*_T, U_new)`` and an adapter rank r, from the truth alone (no training):

- C1: the population SR minimiser is ``A_SR = A* + Rbar``, ``Rbar = (1/T) sum_t U*_t U*_t^T``; its
  base error is ``||Rbar||_F`` (relative: over ``||A*||_F``).
- C2: on an unseen task the SR base leaves the residual ``R = U_new U_new^T - Rbar``; generically of
  rank ``min((T+1)k, d)``, with k positive and Tk negative eigenvalues. The best rank-r adapter
  error is the Eckart-Young tail ``E_SR(r) = sum_{i>r} s_i(R)^2`` (asymmetric ``U V^T``) or, for a PSD
  adapter ``U U^T``, the squares of every eigenvalue not among the r largest positive ones.
- C3-C5: what Meta-LoRA's base should be for this T (recovery of A* for T >= 3; the rank-2k
  ambiguity at T = 2, fitted by a rank-3k adapter; no recovery at T = 1).
- C6: a rank-r adapter has ``dof = r(2d - r)`` degrees of freedom; the predicted fine-tuning error
  from n samples with noise standard deviation sigma is ``sigma^2 dof / n`` (full fine-tuning:
  ``sigma^2 d^2 / n``).

Only :mod:`linmeta.core.theory` and :mod:`linmeta.core.metrics` compute here (no solver), so the report is a
check, not a measurement. :func:`theory` resolves a configuration and a truth (sampled from
``truth_seed`` as ``linmeta run`` does, or a file) and calls :func:`theory_report`.
"""
from __future__ import annotations

import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from linmeta.core import metrics, theory as core_theory
from linmeta.engine.runs import truth_source
from linmeta.engine.config import config_for_truth
from linmeta.engine.sweep import truth_for, validate_config

__all__ = ["theory", "theory_report"]

@functools.lru_cache(maxsize=None)
def _theory_arrays():
    """One jitted program for every closed form of :func:`theory_report` (one compile per shape
    instead of one per eager operation)."""


    @functools.partial(jax.jit, static_argnames=("r_max",))
    def arrays(A_star, U_star, U_new, *, r_max):
        resid = core_theory.sr_residual(U_star, U_new)                     # (m, d, d)
        asym = jnp.stack([core_theory.lora_bias(resid, r) for r in range(1, r_max + 1)], -1)
        psd = jnp.stack([core_theory.lora_bias(resid, r, psd=True)
                         for r in range(1, r_max + 1)], -1)
        return (jnp.linalg.norm(core_theory.sr_bias_matrix(U_star)), jnp.linalg.norm(A_star),
                core_theory.residual_spectrum(resid), metrics.numerical_rank(resid), asym, psd)

    return arrays


def theory_report(truth, *, rank: int, n, noise_std: float, truth_info: dict | None = None) -> dict:
    """Closed-form predictions of :mod:`linmeta.core.theory` for ``truth`` (module docstring), as a
    JSON-able dict. ``n`` is the fine-tuning sample count (an int, or ``"inf"`` for the
    population); ``truth_info`` is recorded as given."""

    d, k, T, m = truth.d, truth.k, truth.T, truth.n_unseen
    if m < 1:
        raise ValueError("the truth has no unseen task (U_new with m >= 1 is needed for the SR "
                         "residual); add an array U_new of shape (m, d, k) to the truth file")
    if not 1 <= rank <= d:
        raise ValueError(f"rank must be an integer in [1, d={d}], got {rank}")
    generic = core_theory.generic_sr_residual_rank(d, k, T)
    r_max = max(rank, min(generic, d))
    sr_err, a_norm, spectra, ranks, bias_asym, bias_psd = (
        np.asarray(x) for x in _theory_arrays()(truth.A_star, truth.U_star, truth.U_new,
                                                r_max=r_max))
    sr_err, a_norm = float(sr_err), float(a_norm)
    scale = np.maximum(np.max(np.abs(spectra), axis=-1, keepdims=True), 1e-300)
    tol = d * np.finfo(spectra.dtype).eps * scale
    unseen = []
    for j in range(m):
        unseen.append({
            "eigenvalues": spectra[j].tolist(),
            "rank": int(ranks[j]),
            "n_positive": int(np.sum(spectra[j] > tol[j])),
            "n_negative": int(np.sum(spectra[j] < -tol[j])),
            "bias_asymmetric": bias_asym[j].tolist(),
            "bias_psd": bias_psd[j].tolist(),
        })
    dof = core_theory.adapter_dof(d, rank)
    if T >= 3:
        ml_note = ("T >= 3: Meta-LoRA's population global minimisers have A_hat = A* (C3; needs "
                   "task diversity, e.g. generic Gaussian U* with 3k <= d); the unseen residual "
                   "U_new U_new^T has rank k, so a rank-k adapter leaves no bias")
    elif T == 2:
        ml_note = (f"T = 2: not identifiable (C4): rank(A_hat - A*) <= 2k = {2 * k}, so a rank-3k "
                   f"= {core_theory.t2_adapter_rank(k)} adapter fits the unseen task exactly")
    else:
        ml_note = ("T = 1: no recovery (C5): every A* + R*_1 - U U^T is a global minimiser; SR is "
                   "one")
    return {
        "d": d, "k": k, "T": T, "n_unseen": m, "truth": truth_info,
        "dtype": str(truth.A_star.dtype),
        "rank": rank, "n": n, "noise_std": noise_std,
        "sr_base_error": sr_err,
        "sr_base_rel_error": sr_err / a_norm,
        "generic_residual_rank": generic,
        "unseen": unseen,
        "ranks": list(range(1, r_max + 1)),
        "sr_bias": float(np.mean(bias_asym[:, rank - 1])),
        "sr_bias_psd": float(np.mean(bias_psd[:, rank - 1])),
        "meta_lora_bias": 0.0 if T >= 3 else None,
        "meta_lora_note": ml_note,
        "dof": int(dof),
        "predicted_ft_error": (0.0 if n == "inf" else
                               float(core_theory.predicted_finetune_error(d, rank, n, noise_std))),
        "full_ft_dof": d * d,
        "predicted_full_ft_error": 0.0 if n == "inf" else float(noise_std ** 2 * d * d / n),
    }


def theory(config: Mapping | None = None, *, truth=None, rank: int | None = None) -> dict:
    """:func:`theory_report` for a configuration (keys d, k, T, n, noise_std, truth_seed of
    :data:`linmeta.engine.sweep.DEFAULTS`; defaults filled in) and a truth: None (the truth ``linmeta run``
    samples from ``truth_seed``, in float64 and cast to the current dtype), a path to an ``.npz``
    or a :class:`linmeta.Truth` (sets d, k, T). ``rank`` defaults to the run's fine-tuning rank
    (k, or 3k when T = 2)."""

    user = dict(config or {})
    truth_obj, info = truth_source(truth)
    if truth_obj is not None:
        user = config_for_truth(user, truth_obj)
    cfg = validate_config(user)
    if truth_obj is None:
        truth_obj = truth_for(cfg)
        info = {"source": "sampled", "truth_seed": cfg["truth_seed"]}
    if rank is None:
        rank = cfg["ft_rank"]
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise ValueError(f"rank must be an integer in [1, d={cfg['d']}], got {rank!r}")
    return theory_report(truth_obj, rank=int(rank), n=cfg["n"], noise_std=float(cfg["noise_std"]),
                         truth_info=info)
