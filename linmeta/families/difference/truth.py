"""Ground truths of the difference family (docs/difference.md#model).

Structured truth (the family's model): T retraining tasks and m unseen tasks,

    M*_t = A* + U* diag(s*_t) V*^T          (diagonal coefficients, s*_t in R^r), or
    M*_t = A* + U* S*_t V*^T                (the core variant, S*_t in R^{r x r}),

with ``U*, V*`` (d x r) shared: the directions in which the tasks differ. A
:class:`DifferenceTruth` holds ``(A*, U*, V*, S*, S_new)``; ``S*`` of shape (T, r) means diagonal
coefficients, (T, r, r) a core. :func:`sample_difference_truth` draws it: ``A*`` with i.i.d. N(0, 1)
entries, ``U*, V*`` Gaussian (i.i.d. N(0, 1/d), columns of norm about 1) or orthonormal (QR of
Gaussians), coefficients i.i.d. ``N(0, coef_scale^2)``. :func:`difference_truth` builds one from
user arrays (validated).

The misspecified case is the paper's truth ``M*_t = A* + U*_t U*_t^T`` (independent rank-k
adapters per task, :class:`linmeta.Truth`, drawn by :func:`linmeta.sample_truth`);
:func:`task_matrices` and :func:`unseen_matrices` give the (T, d, d) task matrices of either kind,
:func:`difference_space` the r-dimensional space ``L* = {U* diag(c) V*^T}`` (or ``{U* S V*^T}``,
r^2-dimensional, for a core) as an orthonormal basis of d x d matrices.

Draws are made in float64 and cast, so one key names one problem in every dtype.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from linmeta.core._validate import check_array, check_choice, check_int, check_scalar, float_dtype
from linmeta.core.problem import Truth

__all__ = ["DifferenceTruth", "sample_difference_truth", "difference_truth", "task_matrices",
           "unseen_matrices", "difference_space", "is_core"]


class DifferenceTruth(NamedTuple):
    """``A_star`` (d, d), ``U_star``, ``V_star`` (d, r), ``S_star`` (T, r) diagonal coefficients
    or (T, r, r) cores, ``S_new`` (m, r) or (m, r, r) for the unseen tasks (m may be 0)."""

    A_star: jax.Array
    U_star: jax.Array
    V_star: jax.Array
    S_star: jax.Array
    S_new: jax.Array

    @property
    def d(self) -> int:
        return self.A_star.shape[-1]

    @property
    def r(self) -> int:
        return self.U_star.shape[-1]

    @property
    def T(self) -> int:
        return self.S_star.shape[0]


def is_core(truth: DifferenceTruth) -> bool:
    """Whether the coefficients are r x r cores (else diagonal)."""
    return truth.S_star.ndim == 3


def _apply(U, S, V):
    if S.ndim == 3:
        return U @ S @ V.T
    return (U * S[:, None, :]) @ V.T


def task_matrices(truth) -> jax.Array:
    """(T, d, d) retraining task matrices of a :class:`DifferenceTruth` or a :class:`linmeta.Truth`."""
    if isinstance(truth, Truth):
        return truth.M_star
    if isinstance(truth, DifferenceTruth):
        return truth.A_star + _apply(truth.U_star, truth.S_star, truth.V_star)
    raise ValueError(f"truth must be a DifferenceTruth or a linmeta.Truth, got {type(truth).__name__}")


def unseen_matrices(truth) -> jax.Array:
    """(m, d, d) unseen task matrices (``A* + U* diag(s_new) V*^T``, or the paper's ``A* + U_new U_new^T``)."""
    if isinstance(truth, Truth):
        return truth.M_new
    if isinstance(truth, DifferenceTruth):
        return truth.A_star + _apply(truth.U_star, truth.S_new, truth.V_star)
    raise ValueError(f"truth must be a DifferenceTruth or a linmeta.Truth, got {type(truth).__name__}")


def difference_space(U, V, core: bool = False):
    """Orthonormal basis (q, d, d) of ``span{u_i v_i^T}`` (q = r; ``core``: of ``{U S V^T}``,
    q = r^2), in the Frobenius inner product (QR of the vectorised spanning matrices)."""
    d, r = U.shape
    if core:
        span = jnp.einsum("ai,bj->ijab", U, V).reshape(r * r, d, d)
    else:
        span = jnp.einsum("ai,bi->iab", U, V)
    Q, _ = jnp.linalg.qr(span.reshape(span.shape[0], d * d).T)
    return Q.T.reshape(-1, d, d)


def sample_difference_truth(key, d: int, r: int, T: int, *, n_unseen: int = 1,
                            directions: str = "gaussian", core: bool = False, coef_scale=1.0,
                            base_scale=1.0, dtype=None) -> DifferenceTruth:
    """Draw a structured truth (module docstring). ``directions``: ``"gaussian"`` (i.i.d.
    N(0, 1/d) entries) or ``"orthonormal"``; ``core``: r x r cores instead of diagonal
    coefficients; ``coef_scale``, ``base_scale``: standard deviations of the coefficients and of
    ``A*``'s entries."""
    d = check_int("d", d, 1)
    r = check_int("r", r, 1, d, hi_label="d")
    T = check_int("T", T, 1)
    n_unseen = check_int("n_unseen", n_unseen, 0)
    check_choice("directions", directions, ("gaussian", "orthonormal"))
    check_scalar("coef_scale", coef_scale, 0.0, lo_open=True)
    check_scalar("base_scale", base_scale, 0.0)
    dt = float_dtype(dtype)
    ka, ku, kv, ks = jax.random.split(key, 4)
    cshape = (r, r) if core else (r,)
    A = base_scale * _normal64(ka, (d, d))
    U, V = _normal64(ku, (d, r)), _normal64(kv, (d, r))
    if directions == "orthonormal":
        U, V = np.linalg.qr(U)[0], np.linalg.qr(V)[0]
    else:
        U, V = U / np.sqrt(d), V / np.sqrt(d)
    S = coef_scale * _normal64(ks, (T + n_unseen,) + cshape)
    c = lambda x: jnp.asarray(x, dt)  # noqa: E731
    return DifferenceTruth(c(A), c(U), c(V), c(S[:T]), c(S[T:]))


def _normal64(key, shape):
    """i.i.d. N(0, 1) as float64 NumPy: drawn in float64 when x64 is on, else in float32."""
    dt = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    return np.asarray(jax.random.normal(key, shape, dt), np.float64)


def difference_truth(A_star, U_star, V_star, S_star, S_new=None) -> DifferenceTruth:
    """A :class:`DifferenceTruth` from user arrays, validated (``ValueError`` naming the
    argument): ``A_star`` (d, d), ``U_star``, ``V_star`` (d, r) with r <= d, ``S_star`` (T, r) or
    (T, r, r), ``S_new`` (m, r) or (m, r, r) (default: no unseen task)."""
    A = check_array("A_star", A_star)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A_star must be square (d, d), got shape {tuple(A.shape)}")
    d = A.shape[0]
    U = check_array("U_star", U_star)
    if U.ndim != 2 or U.shape[0] != d:
        raise ValueError(f"U_star must have shape (d={d}, r), got {tuple(U.shape)}")
    r = check_int("r (U_star.shape[1])", U.shape[1], 1, d, hi_label="d")
    V = check_array("V_star", V_star, shape=(d, r))
    S = check_array("S_star", S_star)
    if S.shape[1:] not in ((r,), (r, r)) or S.shape[0] < 1:
        raise ValueError(f"S_star must have shape (T, r={r}) or (T, {r}, {r}) with T >= 1, got "
                         f"{tuple(S.shape)}")
    if S_new is None:
        S_new = jnp.zeros((0,) + S.shape[1:], S.dtype)
    S_new = check_array("S_new", S_new)
    if S_new.shape[1:] != S.shape[1:]:
        raise ValueError(f"S_new must have shape (m,) + {tuple(S.shape[1:])} like S_star, got "
                         f"{tuple(S_new.shape)}")
    dt = jnp.result_type(A.dtype, U.dtype, V.dtype, S.dtype)
    if not jnp.issubdtype(dt, jnp.floating):
        dt = jnp.asarray(0.0).dtype
    return DifferenceTruth(*(jnp.asarray(x, dt) for x in (A, U, V, S, S_new)))
