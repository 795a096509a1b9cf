"""Shared pieces of the representation family's claim modules R1-R7.

- :func:`random_diversity`: a random task-diversity matrix ``Sigma_w = Q diag(lam) Q^T`` with
  eigenvalues spread over ``[lo, hi]`` (so ``lambda_min(Sigma_w) = lo`` exactly).
- :func:`distances`: sine of the largest principal angle to a reference for a stack of
  representations (a trajectory).
- :func:`late_rate`: the per-step contraction factor of a geometric decay, fitted on the records
  whose value lies in a window ``[lo, hi]`` (late enough to be asymptotic, above the rounding
  floor of about 1e-15).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from linmeta.core import metrics

__all__ = ["random_diversity", "distances", "late_rate", "RATE_WINDOW"]

RATE_WINDOW = (1e-10, 1e-4)


def random_diversity(key, k, lo=0.3, hi=1.0, dtype=None):
    """``Q diag(lam) Q^T``: Haar Q (k x k), eigenvalues ``lo, ..., hi`` evenly spaced
    (k = 1: lo)."""
    dt = jnp.asarray(0.0).dtype if dtype is None else dtype
    Q, R = jnp.linalg.qr(jax.random.normal(key, (k, k), dt))
    Q = Q * jnp.sign(jnp.diagonal(R))
    lam = jnp.linspace(lo, hi, k, dtype=dt) if k > 1 else jnp.asarray([lo], dt)
    return (Q * lam) @ Q.T


def distances(Bs, B_ref):
    """Sine of the largest principal angle between each ``Bs[i]`` (n, d, k) and ``B_ref``."""
    return jax.vmap(lambda B: metrics.subspace_distance(B, B_ref))(Bs)


def late_rate(values, window=RATE_WINDOW):
    """``exp(slope)`` of ``log values`` against the record index over the records inside
    ``window`` (one record per step); NaN when fewer than 3 records fall inside."""
    v = np.asarray(values, float)
    idx = np.nonzero((v >= window[0]) & (v <= window[1]))[0]
    if idx.size < 3:
        return float("nan"), int(idx.size)
    slope = np.polyfit(idx.astype(float), np.log(v[idx]), 1)[0]
    return float(np.exp(slope)), int(idx.size)
