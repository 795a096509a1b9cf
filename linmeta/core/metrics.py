"""Recovery metrics (claims C3-C7).

- ``base_error(A_hat, A*) = ||A_hat - A*||_F`` (``relative=True`` divides by ``||A*||_F``).
- ``adapter_error(U, U*) = ||U U^T - U* U*^T||_F`` per task: recovery of the shift itself.
- ``procrustes_distance(U, U*) = min_{Q in O(k)} ||U Q - U*||_F
  = sqrt(||U||_F^2 + ||U*||_F^2 - 2 ||U^T U*||_*)`` (recovery modulo the O(k) invariance of U U^T).
- ``numerical_rank(M, rtol, atol)``: number of singular values above
  ``max(atol, rtol * sigma_max)``; the tolerance is part of the answer, so it is an argument.
- ``principal_angles(X, Y)``: angles between the column spaces, ``arccos`` of the singular values of
  ``Q_X^T Q_Y`` (increasing); ``sin`` of the largest is the usual subspace distance.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

__all__ = ["base_error", "adapter_error", "procrustes_distance", "numerical_rank",
           "principal_angles", "subspace_distance"]


def _T(x):
    return jnp.swapaxes(x, -1, -2)


def base_error(A_hat, A_star, relative: bool = False):
    """``||A_hat - A*||_F``, divided by ``||A*||_F`` when ``relative``."""
    err = jnp.linalg.norm(A_hat - A_star, axis=(-2, -1))
    return err / jnp.linalg.norm(A_star, axis=(-2, -1)) if relative else err


def adapter_error(U, U_star, relative: bool = False):
    """``||U_t U_t^T - U*_t U*_t^T||_F`` for each task (works on (..., d, k) stacks)."""
    R = U_star @ _T(U_star)
    err = jnp.linalg.norm(U @ _T(U) - R, axis=(-2, -1))
    return err / jnp.linalg.norm(R, axis=(-2, -1)) if relative else err


def procrustes_distance(U, U_star):
    """``min_Q ||U Q - U*||_F`` over orthogonal Q (U, U* of equal shape (..., d, k))."""
    nuc = jnp.sum(jnp.linalg.svd(_T(U) @ U_star, compute_uv=False), axis=-1)
    sq = jnp.sum(U * U, axis=(-2, -1)) + jnp.sum(U_star * U_star, axis=(-2, -1)) - 2 * nuc
    return jnp.sqrt(jnp.maximum(sq, 0.0))


def numerical_rank(M, rtol=None, atol=0.0):
    """Count of singular values ``> max(atol, rtol * sigma_max)``; default ``rtol = max(shape) * eps``."""
    M = jnp.asarray(M)
    s = jnp.linalg.svd(M, compute_uv=False)
    if rtol is None:
        rtol = max(M.shape[-2:]) * jnp.finfo(M.dtype).eps
    tol = jnp.maximum(atol, rtol * s[..., :1])
    return jnp.sum(s > tol, axis=-1)


def principal_angles(X, Y):
    """Principal angles (radians, increasing) between the column spaces of X and Y."""
    Qx, _ = jnp.linalg.qr(X)
    Qy, _ = jnp.linalg.qr(Y)
    if Qy.shape[-1] > Qx.shape[-1]:
        Qx, Qy = Qy, Qx
    C = _T(Qx) @ Qy
    c = jnp.linalg.svd(C, compute_uv=False)  # cosines, decreasing -> angles increasing
    s = jnp.linalg.svd(Qy - Qx @ C, compute_uv=False)[..., ::-1]  # sines, increasing
    # arccos loses precision near 0 and arcsin near pi/2: use whichever is well conditioned.
    return jnp.where(c * c > 0.5, jnp.arcsin(jnp.clip(s, 0.0, 1.0)),
                     jnp.arccos(jnp.clip(c, -1.0, 1.0)))


def subspace_distance(X, Y):
    """Sine of the largest principal angle between the column spaces."""
    return jnp.sin(jnp.max(principal_angles(X, Y), axis=-1))


__all__ += ["sin_theta_frobenius_sq"]


def sin_theta_frobenius_sq(X, Y):
    """``||sin Theta||_F^2`` between the column spaces of X and Y (both of rank k): the sum of the
    squared sines of the principal angles, ``k - ||Q_X^T Q_Y||_F^2``, computed without that
    cancellation as ``||Q_Y - Q_X Q_X^T Q_Y||_F^2``."""
    Qx, _ = jnp.linalg.qr(X)
    Qy, _ = jnp.linalg.qr(Y)
    R = Qy - Qx @ (_T(Qx) @ Qy)
    return jnp.sum(R * R, axis=(-2, -1))


__all__ += ["unseen_task_risk"]


def unseen_task_risk(M, truth, task=None):
    """The population excess risk ``||M - M*_new||_F^2`` of a model ``M`` on the unseen task(s) of
    ``truth`` (a :class:`linmeta.Truth` with ``U_new``; ``M*_new = A* + U_new U_new^T``):
    the risk a fine-tuned model has beyond the noise, with ``x ~ N(0, I)`` (docs/theory.md, C6).

    ``M``: (d, d) or (m, d, d), one model per unseen task. ``task``: the index of one unseen task
    (``M`` then (d, d)); by default every unseen task, returning shape (m,). Against the
    statistics of samples use :func:`linmeta.core.losses.excess_risk`.
    """
    if truth.U_new is None:
        raise ValueError("truth has no unseen task (U_new is None); draw it with n_unseen >= 1")
    M_new = truth.M_new
    if task is not None:
        m = M_new.shape[0]
        if isinstance(task, bool) or not isinstance(task, (int, np.integer)) or not 0 <= task < m:
            raise ValueError(f"task must be an integer in [0, {m - 1}] (the unseen tasks), "
                             f"got {task!r}")
        M_new = M_new[task]
    D = jnp.asarray(M) - M_new
    return jnp.sum(D * D, axis=(-2, -1))
