"""Shared pieces of the representation family's claim modules R1-R7.

- :func:`random_diversity`: a random task-diversity matrix ``Sigma_w = Q diag(lam) Q^T`` with
  eigenvalues spread over ``[lo, hi]`` (so ``lambda_min(Sigma_w) = lo`` exactly).
- :func:`distances`: sine of the largest principal angle to a reference for a stack of
  representations (a trajectory).
- :func:`alternating_tangent_step`, :func:`tangent_spectral_radius`: the alternating iteration
  (exact heads, ``B + eta (I - B B^T) C B``, QR; FrozenRep and FedRep in the population) in the
  tangent coordinates of C's top-k eigenspace, and the spectral radius of its Jacobian there by
  central differences (NumPy): the late contraction of the largest principal angle, computed
  without the closed forms.
- :func:`late_rate`: the per-step contraction factor of a geometric decay, fitted on the records
  whose value lies in a window ``[lo, hi]`` (late enough to be asymptotic, above the rounding
  floor of about 1e-15).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from linmeta.core import metrics

__all__ = ["random_diversity", "distances", "late_rate", "RATE_WINDOW", "alternating_tangent_step",
           "tangent_spectral_radius", "FD_STEP"]

RATE_WINDOW = (1e-10, 1e-4)
FD_STEP = 1e-6  # central differences of the tangent map


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


def alternating_tangent_step(X, V, lam, eta, k):
    """One step of the alternating iteration (``B + eta (I - B B^T) C B``, QR) with
    ``C = V diag(lam) V^T`` (lam decreasing) in the tangent coordinates of the top-k eigenspace:
    ``B ~ V_k + V_perp X`` -> ``X+`` (NumPy)."""
    C = (V * lam) @ V.T
    B = np.linalg.qr(V[:, :k] + V[:, k:] @ X)[0]
    Bn = B + eta * (C @ B - B @ (B.T @ C @ B))
    return (V[:, k:].T @ Bn) @ np.linalg.inv(V[:, :k].T @ Bn)


def tangent_spectral_radius(V, lam, eta, k, h=FD_STEP):
    """Largest |eigenvalue| of the Jacobian of :func:`alternating_tangent_step` at X = 0 (central
    differences of step h in every tangent direction, NumPy eigenvalues)."""
    d = V.shape[0]
    n = (d - k) * k
    J = np.empty((n, n))
    for i in range(n):
        E = np.zeros(n)
        E[i] = h
        E = E.reshape(d - k, k)
        J[:, i] = ((alternating_tangent_step(E, V, lam, eta, k)
                    - alternating_tangent_step(-E, V, lam, eta, k)) / (2 * h)).ravel()
    return float(np.max(np.abs(np.linalg.eigvals(J))))
