"""LAPACK-free linear algebra for the representation family's compiled loops and protocol.

Batched LAPACK calls that can run concurrently inside one compiled program were seen to hang
XLA:CPU (jax 0.10; the calls share the intra-op thread pool). The solver loops and the protocol
therefore use only matrix products:

- :func:`spd_solve`: Cholesky factorisation and the two triangular solves written out over the k
  columns (k is small);
- :func:`orthonormalise`: Gram-Schmidt applied twice (the Q of the thin QR decomposition with a
  positive diagonal in R);
- :func:`shifted_solve`: ``(I + c S)^{-1} r`` by conjugate gradients, 2d iterations;
- :func:`lambda_max_psd`: the largest eigenvalue of a small PSD matrix as the Rayleigh quotient of a
  column of its repeated square (exact up to rounding: any vector in the top eigenspace gives it);
- :func:`sin_theta_max` and :func:`sin_theta_fro2`: the sine of the largest principal angle and
  ``||sin Theta||_F^2`` between column spaces (tested equal to :mod:`linmeta.core.metrics`).
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

__all__ = ["spd_solve", "orthonormalise", "shifted_solve", "lambda_max_psd", "sin_theta_max",
           "sin_theta_fro2"]


def spd_solve(G, r):
    """``G^{-1} r`` for symmetric positive definite G (..., k, k) and r (..., k): Cholesky
    factorisation and the two triangular solves written out over the k columns (k is small), so
    the solver loops need no LAPACK call (concurrent LAPACK calls inside loops were seen to hang
    XLA:CPU in jax 0.10)."""
    k = G.shape[-1]
    L = [[None] * k for _ in range(k)]
    for j in range(k):
        L[j][j] = jnp.sqrt(G[..., j, j] - sum(L[j][p] ** 2 for p in range(j)))
        for i in range(j + 1, k):
            L[i][j] = (G[..., i, j] - sum(L[i][p] * L[j][p] for p in range(j))) / L[j][j]
    y = []
    for i in range(k):
        y.append((r[..., i] - sum(L[i][p] * y[p] for p in range(i))) / L[i][i])
    x = [None] * k
    for i in reversed(range(k)):
        x[i] = (y[i] - sum(L[p][i] * x[p] for p in range(i + 1, k))) / L[i][i]
    return jnp.stack(x, axis=-1)


def orthonormalise(B):
    """Orthonormal basis of the columns of B (..., d, k): Gram-Schmidt applied twice (the Q of the
    thin QR decomposition with a positive diagonal in R), written out over the k columns so the
    solver loops need no LAPACK call."""
    cols = []
    for j in range(B.shape[-1]):
        v = B[..., :, j]
        for _ in range(2):
            for q in cols:
                v = v - jnp.sum(q * v, axis=-1, keepdims=True) * q
        cols.append(v / jnp.linalg.norm(v, axis=-1, keepdims=True))
    return jnp.stack(cols, axis=-1)


def shifted_solve(S, c, rhs):
    """``(I + c S)^{-1} rhs`` per task (S (T, d, d) PSD, c (T,) >= 0, rhs (T, d)) by conjugate
    gradients, 2d iterations from 0 (the matrix has eigenvalues in [1, 1 + c ||S||], so this is
    exact to rounding for any reasonable c; matrix products only, no LAPACK call in the solver
    loops)."""
    def mv(x):
        return x + c[:, None] * jnp.einsum("tde,te->td", S, x)

    def body(carry, _):
        x, r, p, rr = carry
        Ap = mv(p)
        pAp = jnp.sum(p * Ap, axis=-1)
        alpha = jnp.where(pAp > 0, rr / jnp.where(pAp > 0, pAp, 1.0), 0.0)
        x = x + alpha[:, None] * p
        r = r - alpha[:, None] * Ap
        rr_new = jnp.sum(r * r, axis=-1)
        beta = jnp.where(rr > 0, rr_new / jnp.where(rr > 0, rr, 1.0), 0.0)
        return (x, r, r + beta[:, None] * p, rr_new), None

    x0 = jnp.zeros_like(rhs)
    rr0 = jnp.sum(rhs * rhs, axis=-1)
    return lax.scan(body, (x0, rhs, rhs, rr0), None, length=2 * rhs.shape[-1])[0][0]


def lambda_max_psd(M, squarings: int = 40):
    """Largest eigenvalue of symmetric PSD matrices (..., k, k) without LAPACK: square
    ``M / ||M||_F`` repeatedly (each squaring squares the eigenvalue ratios), take the column of the
    result with the largest norm and return its Rayleigh quotient in M. A matrix with a non-finite
    entry gets NaN (so a diverged representation never reads as a small distance)."""
    scale = jnp.sqrt(jnp.sum(M * M, axis=(-2, -1), keepdims=True))
    P = M / jnp.where(scale > 0, scale, 1.0)

    def body(P, _):
        P = P @ P
        n = jnp.sqrt(jnp.sum(P * P, axis=(-2, -1), keepdims=True))
        return P / jnp.where(n > 0, n, 1.0), None

    P = lax.scan(body, P, None, length=squarings)[0]
    j = jnp.argmax(jnp.sum(P * P, axis=-2), axis=-1)
    v = jnp.take_along_axis(P, j[..., None, None], axis=-1)[..., 0]  # (..., k)
    num = jnp.einsum("...i,...ij,...j->...", v, M, v)
    den = jnp.sum(v * v, axis=-1)
    value = jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)
    return jnp.where(jnp.all(jnp.isfinite(M), axis=(-2, -1)), value, jnp.nan)


def _residual_gram(X, Y):
    """``Q_X^T (I - Q_Y Q_Y^T) Q_X`` (k x k)."""
    Qx, Qy = orthonormalise(X), orthonormalise(Y)
    R = Qx - Qy @ (jnp.swapaxes(Qy, -1, -2) @ Qx)
    return jnp.swapaxes(R, -1, -2) @ R


def sin_theta_max(X, Y):
    """Sine of the largest principal angle between col(X) and col(Y) (equal ranks), without LAPACK:
    ``sqrt(lambda_max(Q_X^T (I - P_Y) Q_X))``."""
    return jnp.sqrt(jnp.maximum(lambda_max_psd(_residual_gram(X, Y)), 0.0))


def sin_theta_fro2(X, Y):
    """``||sin Theta||_F^2 = ||(I - P_Y) Q_X||_F^2`` (equal ranks), without LAPACK."""
    return jnp.trace(_residual_gram(X, Y), axis1=-2, axis2=-1)
