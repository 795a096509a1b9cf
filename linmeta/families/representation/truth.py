"""Ground truth of the shared-representation model (docs/representation.md).

Scalar outputs: task t has a parameter vector

    beta_t = (B* + Delta*_t) w*_t,     y = <x, beta_t> + eps,  x ~ N(0, I_d),  eps ~ N(0, sigma^2),

with ``B*`` (d x k) orthonormal (the shared representation), ``w*_t`` (k,) the task's head and
``Delta*_t`` (d x k) a task-specific perturbation of the representation (zero when the tasks share
it exactly). Task diversity is ``Sigma_w = E[w* w*^T]`` (k x k, positive definite); the closed
forms of :mod:`linmeta.families.representation.theory` use the heads' own second moment ``(1/T) sum_t w*_t
w*_t^T`` (:attr:`RepTruth.head_moment`), which equals ``Sigma_w`` exactly for
:func:`balanced_heads`. Target tasks (the tasks fine-tuned after training) have their own heads and
perturbations.

Samplers:
- :func:`orthonormal_columns`: ``B*`` from the QR decomposition of a Gaussian d x k matrix.
- :func:`balanced_heads`: T heads (T even, T >= 2k) in pairs ``+-w`` whose second moment is
  exactly ``Sigma_w`` and whose odd moments are exactly zero (a symmetric head distribution);
  :func:`gaussian_heads`: i.i.d. ``N(0, Sigma_w)``.
- :func:`sample_rep_truth`: all of it, with optional Gaussian perturbations of relative size
  ``delta_scale`` (``E||Delta*_t w||^2 = delta_scale^2 ||w||^2``).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from linmeta.core._validate import (check_array, check_choice, check_int, check_scalar,
                                    float_dtype, is_concrete)

__all__ = ["RepTruth", "orthonormal_columns", "balanced_heads", "gaussian_heads",
           "sample_rep_truth", "check_sigma_w"]


class _RepFields(NamedTuple):
    B_star: jax.Array
    heads: jax.Array
    Delta: jax.Array
    target_heads: jax.Array
    target_Delta: jax.Array
    Sigma_w: jax.Array


def _arraylike(x) -> bool:
    return x is None or hasattr(x, "shape") or isinstance(x, (list, tuple))


def _orthonormal_tol(dtype) -> float:
    return float(np.sqrt(np.finfo(np.dtype(dtype)).eps))


def check_sigma_w(Sigma_w, k: int | None = None, name: str = "Sigma_w"):
    """Validate a task-diversity matrix: (k, k) (or a stack (..., k, k)), finite, symmetric,
    positive definite. Returns it as an array; raises ValueError naming ``name`` (singular or
    indefinite matrices included)."""
    S = check_array(name, Sigma_w)
    if S.ndim < 2 or S.shape[-1] != S.shape[-2] or (k is not None and S.shape[-1] != k):
        want = f"({k}, {k})" if k is not None else "(k, k)"
        raise ValueError(f"{name} must have shape {want}, got {tuple(S.shape)}")
    if not is_concrete(S):
        return S
    Sn = np.asarray(S, dtype=float)
    tol = 100 * np.finfo(np.dtype(S.dtype)).eps * max(1.0, float(np.max(np.abs(Sn))))
    asym = float(np.max(np.abs(Sn - np.swapaxes(Sn, -1, -2)))) if Sn.size else 0.0
    if asym > tol:
        raise ValueError(f"{name} must be symmetric; max |S - S^T| = {asym:.3g}")
    lam = np.linalg.eigvalsh((Sn + np.swapaxes(Sn, -1, -2)) / 2)
    if lam.size and np.min(lam) <= tol * Sn.shape[-1]:
        raise ValueError(f"{name} must be positive definite (task diversity lambda_min > 0); "
                         f"its eigenvalues lie in [{np.min(lam):.3g}, {np.max(lam):.3g}]")
    return S


class RepTruth(_RepFields):
    """Ground truth of the shared-representation model; a pytree (NamedTuple), so it can be vmapped.

    Args:
      B_star: (d, k) shared representation with orthonormal columns.
      heads: (T, k) source-task heads ``w*_t``.
      Delta: (T, d, k) source-task perturbations ``Delta*_t`` (default zero: exactly shared).
      target_heads: (m, k) target-task heads (default: none).
      target_Delta: (m, d, k) target-task perturbations (default zero).
      Sigma_w: (k, k) task diversity (default: the heads' second moment ``(1/T) sum w w^T``).

    Built from concrete arrays it checks ``1 <= k <= d``, orthonormal ``B_star``, shapes,
    finiteness, and a symmetric positive definite ``Sigma_w``, raising ``ValueError`` that names
    the argument. (Inside ``jit``/``vmap`` only the shapes are fixed; nothing is checked.)
    """

    __slots__ = ()

    def __new__(cls, B_star, heads, Delta=None, target_heads=None, target_Delta=None,
                Sigma_w=None):
        leaves = (B_star, heads, Delta, target_heads, target_Delta, Sigma_w)
        if all(_arraylike(x) for x in leaves) and all(is_concrete(x) for x in leaves
                                                       if x is not None):
            B_star = check_array("B_star", B_star)
            if B_star.ndim < 2:
                raise ValueError(f"B_star must have shape (d, k), got {tuple(B_star.shape)}")
            batch = B_star.shape[:-2]  # a stack of truths (e.g. for vmap) is allowed
            nb = len(batch)
            d, k = B_star.shape[-2:]
            check_int("d (B_star.shape[0])", d, 1)
            check_int("k (B_star.shape[1])", k, 1, d, hi_label="d")
            dt = B_star.dtype if jnp.issubdtype(B_star.dtype, jnp.floating) else float_dtype()
            B_star = B_star.astype(dt)
            Bn = np.asarray(B_star, dtype=float)
            gram = np.swapaxes(Bn, -1, -2) @ Bn
            err = float(np.max(np.abs(gram - np.eye(k)))) if gram.size else 0.0
            tol = _orthonormal_tol(dt)
            if err > tol:
                raise ValueError(f"B_star must have orthonormal columns (B_star^T B_star = I_k); "
                                 f"max |B^T B - I| = {err:.3g} > {tol:.2g}")

            def arr(name, x, tail):
                x = check_array(name, x).astype(dt)
                want = batch + tail
                if x.ndim != len(want) or any(w is not None and w != s_ for w, s_ in
                                              zip(want, x.shape)):
                    pretty = "(" + ", ".join("*" if w is None else str(w) for w in want) + ")"
                    raise ValueError(f"{name} must have shape {pretty}, got {tuple(x.shape)}")
                return x

            heads = arr("heads", heads, (None, k))
            T = check_int("T (heads.shape[0])", heads.shape[nb], 1)
            Delta = (jnp.zeros(batch + (T, d, k), dt) if Delta is None
                     else arr("Delta", Delta, (T, d, k)))
            if target_heads is None:
                target_heads = jnp.zeros(batch + (0, k), dt)
            target_heads = arr("target_heads", target_heads, (None, k))
            m = target_heads.shape[nb]
            target_Delta = (jnp.zeros(batch + (m, d, k), dt) if target_Delta is None
                            else arr("target_Delta", target_Delta, (m, d, k)))
            if Sigma_w is None:
                Sigma_w = jnp.swapaxes(heads, -1, -2) @ heads / T
                try:
                    check_sigma_w(Sigma_w, k, "heads' second moment (1/T) sum w w^T")
                except ValueError as e:
                    raise ValueError(f"heads must span R^k when Sigma_w is not given: {e}") \
                        from None
            Sigma_w = check_sigma_w(Sigma_w, k).astype(dt)
            if Sigma_w.shape[:-2] != batch:
                raise ValueError(f"Sigma_w must have shape {batch + (k, k)}, got "
                                 f"{tuple(Sigma_w.shape)}")
        else:  # traced (inside jit/vmap): fill the defaults from the shapes, check nothing
            d, k = B_star.shape[-2:]
            T, dt = heads.shape[-2], heads.dtype
            if Delta is None:
                Delta = jnp.zeros(heads.shape[:-1] + (d, k), dt)
            if target_heads is None:
                target_heads = jnp.zeros(heads.shape[:-2] + (0, k), dt)
            if target_Delta is None:
                target_Delta = jnp.zeros(target_heads.shape[:-1] + (d, k), dt)
            if Sigma_w is None:
                Sigma_w = jnp.swapaxes(heads, -1, -2) @ heads / T
        return super().__new__(cls, B_star, heads, Delta, target_heads, target_Delta, Sigma_w)

    @property
    def d(self) -> int:
        return self.B_star.shape[-2]

    @property
    def k(self) -> int:
        return self.B_star.shape[-1]

    @property
    def T(self) -> int:
        return self.heads.shape[-2]

    @property
    def n_target(self) -> int:
        return self.target_heads.shape[-2]

    @property
    def betas(self) -> jax.Array:
        """(T, d) source-task parameters ``(B* + Delta*_t) w*_t``."""
        return jnp.einsum("...tdk,...tk->...td", self.B_star[..., None, :, :] + self.Delta,
                          self.heads)

    @property
    def target_betas(self) -> jax.Array:
        """(m, d) target-task parameters ``(B* + Delta*_0) w*_0``."""
        return jnp.einsum("...tdk,...tk->...td", self.B_star[..., None, :, :] + self.target_Delta,
                          self.target_heads)

    @property
    def head_moment(self) -> jax.Array:
        """(k, k) second moment of the source heads ``(1/T) sum_t w*_t w*_t^T``."""
        return jnp.swapaxes(self.heads, -1, -2) @ self.heads / self.T


def _qr_haar(Z):
    Q, R = jnp.linalg.qr(Z)
    return Q * jnp.sign(jnp.diagonal(R))  # Haar-distributed columns


def orthonormal_columns(key, d, k, dtype=None) -> jax.Array:
    """A (d, k) matrix with orthonormal columns: Q of the QR decomposition of a Gaussian matrix
    (columns signed so that R has a positive diagonal: Haar distributed)."""
    d = check_int("d", d, 1)
    k = check_int("k", k, 1, d, hi_label="d")
    return _qr_haar(jax.random.normal(key, (d, k), float_dtype(dtype)))


def _sigma_or_identity(Sigma_w, k, dt):
    if Sigma_w is None:
        return jnp.eye(k, dtype=dt)
    return check_sigma_w(Sigma_w, k).astype(dt)


def _balanced_from(G0, Sigma_w):
    """``[G; -G]`` with ``G = sqrt(T/2) G0 (G0^T G0)^{-1/2} L^T``, ``Sigma_w = L L^T``."""
    half = G0.shape[0]
    w, V = jnp.linalg.eigh(G0.T @ G0)
    G = G0 @ (V / jnp.sqrt(w)) @ V.T
    L = jnp.linalg.cholesky(Sigma_w)
    G = jnp.sqrt(jnp.asarray(half, G0.dtype)) * G @ L.T
    return jnp.concatenate([G, -G], axis=0)


def _check_balanced(T, k):
    T = check_int("T", T, 2)
    if T % 2 or T < 2 * k:
        raise ValueError(f"balanced heads need an even T >= 2k = {2 * k}; got T={T}")
    return T


def balanced_heads(key, T, Sigma_w, dtype=None) -> jax.Array:
    """T heads ``[G; -G]`` whose second moment ``(1/T) sum w w^T`` is exactly ``Sigma_w`` and whose
    odd moments vanish. G (T/2 x k) is a Gaussian matrix whitened and rescaled:
    ``G = sqrt(T/2) G0 (G0^T G0)^{-1/2} L^T`` with ``Sigma_w = L L^T``. Needs T even, T >= 2k."""
    Sigma_w = check_sigma_w(Sigma_w)
    k = Sigma_w.shape[0]
    T = _check_balanced(T, k)
    dt = float_dtype(dtype)
    return _balanced_from(jax.random.normal(key, (T // 2, k), dt), jnp.asarray(Sigma_w, dt))


def gaussian_heads(key, T, Sigma_w, dtype=None) -> jax.Array:
    """T i.i.d. heads ``N(0, Sigma_w)``."""
    Sigma_w = check_sigma_w(Sigma_w)
    T = check_int("T", T, 1)
    dt = float_dtype(dtype)
    L = jnp.linalg.cholesky(jnp.asarray(Sigma_w, dt))
    return jax.random.normal(key, (T, Sigma_w.shape[0]), dt) @ L.T


def sample_rep_truth(key, d, k, T, *, Sigma_w=None, heads: str = "balanced", delta_scale=0.0,
                     n_target: int = 1, dtype=None) -> RepTruth:
    """A random instance: ``B*`` Haar orthonormal (d x k); source heads :func:`balanced_heads`
    (``heads="balanced"``, needs T even and T >= 2k) or :func:`gaussian_heads`
    (``"gaussian"``) with diversity ``Sigma_w`` (default I_k); ``n_target`` target heads i.i.d.
    ``N(0, Sigma_w)``; perturbations with i.i.d. ``N(0, delta_scale^2 / d)`` entries (source and
    target), so ``E||Delta*_t w||^2 = delta_scale^2 ||w||^2`` (0: exactly shared).

    All variates come from one ``jax.random.normal`` call, cut in the order B*, heads, target
    heads, perturbations, target perturbations (one random-number kernel when compiled)."""
    d = check_int("d", d, 1)
    k = check_int("k", k, 1, d, hi_label="d")
    T = check_int("T", T, 1)
    n_target = check_int("n_target", n_target, 0)
    check_choice("heads", heads, ("balanced", "gaussian"))
    if heads == "balanced":
        _check_balanced(T, k)
    check_scalar("delta_scale", delta_scale, 0.0)
    dt = float_dtype(dtype)
    S = _sigma_or_identity(Sigma_w, k, dt)
    nh = T // 2 if heads == "balanced" else T
    shapes = [(d, k), (nh, k), (n_target, k), (T, d, k), (n_target, d, k)]
    sizes = [int(np.prod(sh)) for sh in shapes]
    z = jax.random.normal(key, (sum(sizes),), dt)
    parts, start = [], 0
    for sh, n in zip(shapes, sizes):
        parts.append(z[start:start + n].reshape(sh))
        start += n
    Zb, Zh, Zt, Zd, Ze = parts
    B = _qr_haar(Zb)
    L = jnp.linalg.cholesky(S)
    W = _balanced_from(Zh, S) if heads == "balanced" else Zh @ L.T
    W0 = Zt @ L.T
    scale = jnp.asarray(delta_scale, dt) / jnp.sqrt(jnp.asarray(d, dt))
    return RepTruth(B, W, scale * Zd, W0, scale * Ze, S)
