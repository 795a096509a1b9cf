"""Critical points of the Meta-LoRA reduced objective and their Hessians (claims C4 and C8).

**Objective.** With the base eliminated (``docs/theory.md``, Meta-LoRA), the population objective
over the adapters ``U = (U_1, ..., U_T)``, ``U_t`` of shape (d, k), is

    G(U) = 1/2 sum_t ||E_t - Ebar||_F^2,   E_t = R*_t - U_t U_t^T,   Ebar = (1/T) sum_t E_t

(:func:`linmeta.methods.population_reduced_objective`). For general task statistics the same role
is played by ``T * reduced_objective(U, stats)`` (the excess of ``F(A(U), U)`` times T), which equals
G in the population. ``source`` in this module is either the (T, d, d) stack ``R*`` or a
:class:`~linmeta.core.data.TaskStats`. U is flattened row-major from (T, d, k) to a vector of length
``n = T d k``. For a population ``R*`` gradient and Hessian are the closed forms below (checked
against ``jax.hessian`` and finite differences in the tests; about 20x cheaper); for TaskStats
they are ``jax.grad`` / ``jax.hessian`` of the flattened objective.

Derivatives (``D_t = E_t - Ebar``, and ``sum_t D_t = 0``):

    dG/dU_t = -2 D_t U_t,
    d^2G[V, V] = sum_t ||dE_t - mean_s dE_s||_F^2 - 2 sum_t <D_t, V_t V_t^T>,
                 dE_t = -(V_t U_t^T + U_t V_t^T),

i.e. ``H = [(delta_ts - 1/T) J_t^T J_s]_{ts} - blockdiag_t(2 D_t (x) I_k)`` with
``J_t v = V U_t^T + U_t V^T`` and ``J_t^T J_s [(m,a),(m',b)] = 2 (delta_mm' (U_t^T U_s)_ab +
U_t[m',a] U_s[m,b])``.

At ``U = 0`` the gradient vanishes and the Hessian is block diagonal, ``-2 D*_t (x) I_k`` with
``D*_t = R*_t - Rbar``: a strict saddle whenever the R*_t differ.

**Known zero modes (symmetries).** ``G`` depends on ``U_t`` only through ``U_t U_t^T``, so it is
constant along ``U_t -> U_t Q_t``, ``Q_t`` in O(k): tangent directions ``U_t S_t`` with ``S_t`` skew,
``T k(k-1)/2`` of them when every ``U_t`` has full column rank. At ``T = 2`` the objective depends
only on ``U_1 U_1^T - U_2 U_2^T`` (``G = 1/4 ||R*_1 - R*_2 - U_1U_1^T + U_2U_2^T||^2``), which is
invariant under the indefinite orthogonal group O(k, k) acting on ``[U_1, U_2]``; besides the two
rotations this adds the ``k^2`` "boosts" ``(dU_1, dU_2) = (U_2 B^T, U_1 B)``, B any k x k matrix
(for k = 1 this is the hyperbolic family of C4). Known zero modes: ``T k(k-1)/2``, plus ``k^2``
at T = 2 (``k(2k-1)`` in all), see :func:`known_zero_modes`. The boosts are a symmetry of the
population objective, and of finite-sample statistics only when both tasks share S_xx.
At a critical point every symmetry direction z satisfies ``H z = 0`` exactly. :func:`orbit_tangent`
builds the generators at U; their span (rank from an SVD, tolerance ``tol.orbit``) is projected out
of the Hessian, and the *restricted spectrum* is the spectrum of H on the orthogonal complement.
Discounting by projection rather than by dropping the smallest |eigenvalues| keeps a genuine flat
or negative direction from being mistaken for a symmetry.

**Scale.** With ``c = sqrt(2 G(0))`` (``= (sum_t ||R*_t - Rbar||^2)^{1/2}`` in the population),
U ~ c^{1/2}, G ~ c^2, grad G ~ c^{3/2}, Hessian ~ c. All tolerances are relative to these powers.

**Classifier** (:func:`analyse_point`), tolerances :class:`Tolerances` (float64 defaults
``objective=1e-12, gradient=1e-6, hessian=1e-6, orbit=1e-7``; float32 ``1e-6, 1e-3, 1e-3, 1e-4``):

- ``GLOBAL_MIN``: ``G <= tol.objective c^2`` (G >= 0, so this is a global minimum up to tolerance);
- ``NOT_CONVERGED``: otherwise, when ``||grad G|| > tol.gradient c^{3/2}``;
- ``STRICT_SADDLE``: a critical point whose smallest restricted eigenvalue is ``< -tol.hessian c``;
- ``SPURIOUS_MIN``: a critical point with ``G > tol`` and restricted spectrum ``>= -tol.hessian c``
  (a second-order stationary point that is not global), provided the local quadratic model cannot
  reach the global tolerance: ``G - ||g||^2 / (2 max(lambda_min, tol.hessian c)) > tol.objective
  c^2``; otherwise (a slowly converging point that may still be heading to a global minimum) it is
  ``NOT_CONVERGED``. ``n_flat`` counts restricted eigenvalues with ``|lambda| <= tol.hessian c``;
  when it is positive the second-order test is inconclusive (``degenerate``) and the point is
  reported as such.

**Critical-point finder** (:func:`find_critical_points`). Minimising G is biased towards minima;
instead the finder solves ``grad G(U) = 0`` by Levenberg-Marquardt on ``1/2 ||grad G||^2`` (residual
``g``, Jacobian ``H``): ``p = -(H^2 + mu I)^{-1} H g`` by a Cholesky solve, with the damping
``mu = theta c^{1/2} ||g||`` (it vanishes with the residual, which keeps the convergence fast on the
non-isolated critical sets that the symmetries create; floored at ``100 eps ||H||_F^2``) and
``theta`` adapted by the gain ratio (``/ 3`` when the linear model predicts the decrease of
``||g||^2`` well, ``* 2`` when it does not; a step that does not decrease ``||g||`` is rejected). Saddles,
maxima and minima are all zeros of the residual, so each start ends at whichever critical point
lies in its basin of the merit function. Local minima of ``||g||^2`` with ``g != 0`` exist; they end
as ``NOT_CONVERGED``, as do runs that escape to infinity along asymptotically flat directions
(large ``info.size``). The loop is a ``lax.while_loop``, vmapped over starts; one compile per
(shape, max_iter). The finder stops at ``||g|| <= tol.gradient c^{3/2} / 100``; it also returns
the size of its iterate half-way through the run (``CriticalPoints.size_mid``).

**Census classes** (:func:`census_counts`, :data:`CENSUS_KEYS`): the runs of a census are
partitioned into ``global``, ``strict spurious`` (``SPURIOUS_MIN`` with ``n_flat = 0``),
``degenerate spurious`` (``SPURIOUS_MIN`` with ``n_flat > 0``), ``saddle``, ``not converged`` and
``escaped to infinity`` (:func:`escaped`: the run diverged or is not finite, or it ended
``NOT_CONVERGED`` with ``size >= ESCAPE_SIZE = 10`` and ``size >= ESCAPE_GROWTH = 1.25`` times its
size half-way through the run: still moving outwards along a direction where G flattens at
infinity, e.g. a column shared by every U_t when T >= 3; the thresholds separate, in the runs of
the C8 census, the runs that keep drifting outwards from those that stall at bounded size).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from linmeta.core._validate import check_array, check_int, is_concrete
from linmeta.core.data import TaskStats
from linmeta.core.losses import ols_solution
from .meta_lora import _pooled_pinv, population_reduced_objective, reduced_objective

__all__ = ["GLOBAL_MIN", "SPURIOUS_MIN", "STRICT_SADDLE", "NOT_CONVERGED", "LABELS",
           "Tolerances", "default_tolerances", "PointInfo", "CriticalPoints", "objective",
           "gradient", "hessian", "hessian_spectrum", "objective_scale", "orbit_tangent",
           "known_zero_modes", "analyse_point", "classify", "find_critical_points",
           "random_starts", "census", "CENSUS_KEYS", "ESCAPE_GROWTH", "ESCAPE_SIZE", "escaped",
           "census_counts"]

GLOBAL_MIN, SPURIOUS_MIN, STRICT_SADDLE, NOT_CONVERGED = 0, 1, 2, 3
LABELS = ("global minimum", "spurious local minimum", "strict saddle", "not converged")
CENSUS_KEYS = ("runs", "global", "strict spurious", "degenerate spurious", "saddle",
               "not converged", "escaped to infinity")
ESCAPE_GROWTH = 1.25  # see escaped()
ESCAPE_SIZE = 10.0


class Tolerances(NamedTuple):
    """Relative tolerances of the classifier (multiplied by c^2, c^{3/2}, c, c^{1/2}, see module)."""

    objective: float
    gradient: float
    hessian: float
    orbit: float


def default_tolerances(dtype=None) -> Tolerances:
    """Float64: ``(1e-12, 1e-6, 1e-6, 1e-7)``; float32: ``(1e-6, 1e-3, 1e-3, 1e-4)``.

    The gradient tolerance is looser than the objective's because near-degenerate saddles (tiny
    Hessian eigenvalues besides the symmetries) are approached only linearly by any solver."""
    dt = jnp.dtype(jnp.asarray(0.0).dtype if dtype is None else dtype)
    if dt == jnp.float64:
        return Tolerances(1e-12, 1e-6, 1e-6, 1e-7)
    return Tolerances(1e-6, 1e-3, 1e-3, 1e-4)


class PointInfo(NamedTuple):
    """Evidence at one point (leading batch axis when vmapped).

    Attributes:
      objective: G(U).
      grad_norm: ||grad G(U)||.
      min_eig: smallest eigenvalue of the Hessian restricted to the complement of the symmetry orbit.
      min_eig_full: smallest eigenvalue of the full Hessian.
      eigenvalues: restricted spectrum, ascending, NaN-padded at the end to length n.
      n_orbit: rank of the symmetry tangent space at U (the zero modes discounted).
      n_flat: restricted eigenvalues with |lambda| <= tol.hessian c (extra flat directions).
      label: GLOBAL_MIN, SPURIOUS_MIN, STRICT_SADDLE or NOT_CONVERGED.
      scale: c = sqrt(2 G(0)).
      size: ||U||_F^2 / c (order 1 at the global minima; large for runs escaping to infinity).
    """

    objective: jax.Array
    grad_norm: jax.Array
    min_eig: jax.Array
    min_eig_full: jax.Array
    eigenvalues: jax.Array
    n_orbit: jax.Array
    n_flat: jax.Array
    label: jax.Array
    scale: jax.Array
    size: jax.Array

    @property
    def degenerate(self):
        """Second-order test inconclusive: flat directions beyond the known symmetries."""
        return self.n_flat > 0


class CriticalPoints(NamedTuple):
    """Output of :func:`find_critical_points`: end points ``U`` (S, T, d, k), their
    :class:`PointInfo`, the solver iterations used per start, and ``size_mid``, the size
    ``||U||_F^2 / c`` of the iterate after ``max_iter // 2`` iterations (the end point's when the
    solver stopped earlier), which :func:`escaped` compares with the end point's."""

    U: jax.Array
    info: PointInfo
    iterations: jax.Array
    size_mid: jax.Array


# ----------------------------------------------------------------------------- objective


def _objective_fn(source, shape):
    """``x -> G(x.reshape(shape))`` with per-source constants computed once."""
    if isinstance(source, TaskStats):
        B = ols_solution(source)
        P = _pooled_pinv(source)
        T = source.T
        return lambda x: T * reduced_objective(x.reshape(shape), source, B, P)
    return lambda x: population_reduced_objective(x.reshape(shape), source)


def _population_hessian(U, R_star):
    """Closed-form Hessian of the population G at U (T, d, k), flattened row-major.

    ``H = [(delta_ts - 1/T) J_t^T J_s] - blockdiag_t(2 D_t (x) I_k)`` with ``J_t v = V U_t^T + U_t V^T``
    and ``J_t^T J_s[(m,a),(m',b)] = 2 (delta_mm' (U_t^T U_s)_ab + U_t[m',a] U_s[m,b])``.
    """
    T, d, k = U.shape
    E = R_star - U @ jnp.swapaxes(U, -1, -2)
    D = E - jnp.mean(E, axis=0)
    W = jnp.einsum("tma,smb->tsab", U, U)
    eye_d = jnp.eye(d, dtype=U.dtype)
    C = 2 * (jnp.einsum("mn,tsab->tmasnb", eye_d, W) + jnp.einsum("tna,smb->tmasnb", U, U))
    coef = jnp.eye(T, dtype=U.dtype) - 1.0 / T
    H = coef[:, None, None, :, None, None] * C \
        - 2 * jnp.einsum("ts,tmn,ab->tmasnb", jnp.eye(T, dtype=U.dtype), D, jnp.eye(k, dtype=U.dtype))
    n = T * d * k
    return H.reshape(n, n)


def _derivative_fns(source, shape):
    """``(f, grad, hess)`` on the flattened variable: closed forms for a population R*,
    automatic differentiation for TaskStats."""
    f = _objective_fn(source, shape)
    if isinstance(source, TaskStats):
        hess = jax.hessian(f)
        return f, jax.grad(f), lambda x: (lambda H: (H + H.T) / 2)(hess(x))

    def grad(x):
        U = x.reshape(shape)
        E = source - U @ jnp.swapaxes(U, -1, -2)
        return (-2 * (E - jnp.mean(E, axis=0)) @ U).reshape(-1)

    return f, grad, lambda x: _population_hessian(x.reshape(shape), source)


def _check_source(source):
    if isinstance(source, TaskStats):
        return source
    return check_array("source", source, ndim=3)


def _check_U(U, source, batched=False):
    U = check_array("U", U)
    T = source.T if isinstance(source, TaskStats) else source.shape[0]
    d = source.d if isinstance(source, TaskStats) else source.shape[-1]
    want = 4 if batched else 3
    if U.ndim != want or U.shape[-3:-1] != (T, d):
        lead = "(n_starts, " if batched else "("
        raise ValueError(f"U must have shape {lead}T={T}, d={d}, k), got {tuple(U.shape)}")
    dt = source.Sxx.dtype if isinstance(source, TaskStats) else source.dtype
    return U.astype(dt)


def objective(U, source):
    """``G(U)`` for U (T, d, k); ``source`` is R* (T, d, d) or TaskStats."""
    source = _check_source(source)
    U = _check_U(U, source)
    return _objective_kernel(U, source)


@jax.jit
def _objective_kernel(U, source):
    return _objective_fn(source, U.shape)(U.reshape(-1))


def gradient(U, source):
    """``grad G(U)``, shape (T, d, k)."""
    source = _check_source(source)
    U = _check_U(U, source)
    return _gradient_kernel(U, source)


@jax.jit
def _gradient_kernel(U, source):
    return _derivative_fns(source, U.shape)[1](U.reshape(-1)).reshape(U.shape)


def hessian(U, source):
    """Hessian of G at U on the flattened (row-major (T, d, k)) variable, shape (n, n)."""
    source = _check_source(source)
    U = _check_U(U, source)
    return _hessian_kernel(U, source)


@jax.jit
def _hessian_kernel(U, source):
    return _derivative_fns(source, U.shape)[2](U.reshape(-1))


def hessian_spectrum(U, source):
    """Eigenvalues of the Hessian of G at U, ascending."""
    return jnp.linalg.eigvalsh(hessian(U, source))


def objective_scale(source):
    """``c = sqrt(2 G(0))``, the scale the tolerances are relative to (1 when G(0) = 0)."""
    source = _check_source(source)
    return jax.jit(_scale)(source)


def _scale(source):
    T = source.T if isinstance(source, TaskStats) else source.shape[0]
    d = source.d if isinstance(source, TaskStats) else source.shape[-1]
    shape = (T, d, 1)
    dt = source.Sxx.dtype if isinstance(source, TaskStats) else source.dtype
    G0 = _objective_fn(source, shape)(jnp.zeros(T * d, dt))
    c = jnp.sqrt(2 * G0)
    return jnp.where(c > 0, c, jnp.ones_like(c))


# ----------------------------------------------------------------------------- symmetries


def known_zero_modes(T: int, k: int, boosts: bool = None) -> int:
    """Dimension of the symmetry orbit at a generic point: ``T k(k-1)/2`` (+ ``k^2`` at T = 2 when
    ``boosts``, default True at T = 2)."""
    T = check_int("T", T, 1)
    k = check_int("k", k, 1)
    if boosts is None:
        boosts = T == 2
    return T * k * (k - 1) // 2 + (k * k if (boosts and T == 2) else 0)


def orbit_tangent(U, boosts: bool = False):
    """Generators of the symmetry orbit at U (T, d, k), as columns of an (n, m) matrix.

    Rotations ``U_t S`` for each task and each ``S = e_i e_j^T - e_j e_i^T`` (i < j); with
    ``boosts`` (T = 2 only) also ``(U_2 B^T, U_1 B)`` for each ``B = e_i e_j^T``. The columns are
    not orthonormal and may be dependent (rank-deficient U_t); :func:`analyse_point` takes their
    span through an SVD.
    """
    U = jnp.asarray(U)
    T, d, k = U.shape
    cols = []
    for t in range(T):
        for i in range(k):
            for j in range(i + 1, k):
                Z = jnp.zeros_like(U).at[t, :, i].set(-U[t, :, j]).at[t, :, j].set(U[t, :, i])
                cols.append(Z.reshape(-1))  # U_t (e_j e_i^T - e_i e_j^T): column i <- -u_j, j <- u_i
    if boosts:
        if T != 2:
            raise ValueError(f"boosts exist only at T = 2, got T = {T}")
        for i in range(k):
            for j in range(k):
                # B = e_i e_j^T:  dU_1 = U_2 B^T (column i <- u2_j),  dU_2 = U_1 B (column j <- u1_i)
                Z = jnp.zeros_like(U).at[0, :, i].set(U[1, :, j]).at[1, :, j].set(U[0, :, i])
                cols.append(Z.reshape(-1))
    if not cols:
        return jnp.zeros((T * d * k, 0), U.dtype)
    return jnp.stack(cols, axis=1)


def _resolve_boosts(boosts, source):
    T = source.T if isinstance(source, TaskStats) else source.shape[0]
    if boosts is None:
        if T != 2:
            return False
        if isinstance(source, TaskStats):
            S = source.Sxx
            return bool(is_concrete(S) and np.allclose(np.asarray(S[0]), np.asarray(S[1]),
                                                       rtol=0.0, atol=0.0))
        return True
    if boosts and T != 2:
        raise ValueError(f"boosts=True needs T = 2, got T = {T}")
    return bool(boosts)


# ----------------------------------------------------------------------------- classifier


def _analyse(fns, U, c, tol, boosts):
    f, grad, hess = fns
    x = U.reshape(-1)
    n = x.shape[0]
    dt = x.dtype
    G = f(x)
    g = grad(x)
    H = hess(x)
    Z = orbit_tangent(U, boosts)
    eye = jnp.eye(n, dtype=dt)
    if Z.shape[1] > 0:
        Q, s, _ = jnp.linalg.svd(Z, full_matrices=False)
        keep = s > jnp.maximum(tol.orbit * s[0], tol.orbit * jnp.sqrt(c))
        Qk = Q * keep
        P = eye - Qk @ Qk.T
        r = jnp.sum(keep)
    else:
        P = eye
        r = jnp.asarray(0)
    shift = 2 * jnp.linalg.norm(H) + c  # above every restricted eigenvalue
    w = jnp.linalg.eigvalsh(P @ H @ P + shift * (eye - P))
    restricted = jnp.arange(n) < n - r
    w = jnp.where(restricted, w, jnp.nan)
    min_eig = w[0]
    htol = tol.hessian * c
    n_flat = jnp.sum(restricted & (jnp.abs(w) <= htol))
    gn = jnp.linalg.norm(g)
    is_global = G <= tol.objective * c ** 2
    converged = gn <= tol.gradient * c ** 1.5
    # a minimum is certified spurious only if the local quadratic model cannot bring G down to
    # the global tolerance: G - ||g||^2 / (2 max(lambda_min, htol)) > tol.objective c^2
    floor = G - gn ** 2 / (2 * jnp.maximum(min_eig, htol))
    certified = floor > tol.objective * c ** 2
    label = jnp.where(is_global, GLOBAL_MIN,
                      jnp.where(~converged, NOT_CONVERGED,
                                jnp.where(min_eig < -htol, STRICT_SADDLE,
                                          jnp.where(certified, SPURIOUS_MIN, NOT_CONVERGED))))
    return PointInfo(G, gn, min_eig, jnp.linalg.eigvalsh(H)[0], w, r, n_flat, label, c,
                     jnp.sum(x * x) / c)


def _tol_array(tol, dt):
    tol = default_tolerances(dt) if tol is None else Tolerances(*tol)
    for name, v in tol._asdict().items():
        if not (np.ndim(v) == 0 and float(v) > 0):
            raise ValueError(f"tol.{name} must be a positive number, got {v!r}")
    return Tolerances(*(jnp.asarray(v, dt) for v in tol))


def analyse_point(U, source, *, tol: Tolerances = None, boosts: bool = None) -> PointInfo:
    """Objective, gradient norm, restricted Hessian spectrum and label of G at U (T, d, k).

    Args:
      U: adapters (T, d, k).
      source: R* (T, d, d) or TaskStats.
      tol: relative :class:`Tolerances` (default :func:`default_tolerances` of the dtype).
      boosts: discount the T = 2 boost symmetry (default: at T = 2 for a population source, or
        when both tasks share S_xx).
    """
    source = _check_source(source)
    U = _check_U(U, source)
    b = _resolve_boosts(boosts, source)
    info = _analyse_kernel(U[None], source, _tol_array(tol, U.dtype), boosts=b)
    return jax.tree.map(lambda a: a[0], info)


def classify(U, source, *, tol: Tolerances = None, boosts: bool = None) -> PointInfo:
    """:func:`analyse_point` vmapped over a batch of points U (S, T, d, k)."""
    source = _check_source(source)
    U = _check_U(U, source, batched=True)
    b = _resolve_boosts(boosts, source)
    return _analyse_kernel(U, source, _tol_array(tol, U.dtype), boosts=b)


@functools.partial(jax.jit, static_argnames=("boosts",))
def _analyse_kernel(U, source, tol, *, boosts):
    fns = _derivative_fns(source, U.shape[1:])
    c = _scale(source)
    return jax.vmap(lambda u: _analyse(fns, u, c, tol, boosts))(U)


# ----------------------------------------------------------------------------- finder


def _levenberg_marquardt(fns, x0, c, gtol_abs, max_iter):
    """Solve grad f = 0 by LM on 1/2 ||grad f||^2 (Jacobian = Hessian of f), damping
    ``mu = theta c^{1/2} ||g||`` (vanishes with the residual), floored at ``100 eps ||H||_F^2`` so
    the Cholesky factorisation of ``H^2 + mu I`` stays well posed."""
    _, grad, hess = fns
    dt = x0.dtype
    n = x0.shape[0]
    eps = jnp.finfo(dt).eps
    eye = jnp.eye(n, dtype=dt)

    half = max_iter // 2

    def cond(s):
        x, g, theta, it, _ = s
        return (it < max_iter) & (jnp.linalg.norm(g) > gtol_abs) & (theta < 1e14)

    def body(s):
        x, g, theta, it, x_mid = s
        H = hess(x)
        Hg = H @ g
        mu = jnp.maximum(theta * jnp.sqrt(c) * jnp.linalg.norm(g), 100 * eps * jnp.sum(H * H))
        p = -jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(H @ H + mu * eye), Hg)
        model = g + H @ p
        pred = 0.5 * (g @ g - model @ model)
        x_new = x + p
        g_new = grad(x_new)
        actual = 0.5 * (g @ g - g_new @ g_new)
        rho = actual / jnp.where(pred > 0, pred, jnp.asarray(1.0, dt))
        ok = (actual > 0) & (rho > 1e-4) & jnp.all(jnp.isfinite(g_new))
        theta = jnp.where(ok & (rho > 0.75), theta / 3,
                          jnp.where(ok & (rho > 0.25), theta, theta * 2))
        theta = jnp.maximum(theta, 1e-30)
        x = jnp.where(ok, x_new, x)
        g = jnp.where(ok, g_new, g)
        x_mid = jnp.where(it + 1 <= half, x, x_mid)  # the iterate after max_iter // 2 iterations
        return x, g, theta, it + 1, x_mid

    init = (x0, grad(x0), jnp.asarray(1e-2, dt), 0, x0)
    x, g, theta, it, x_mid = lax.while_loop(cond, body, init)
    x_mid = jnp.where(it <= half, x, x_mid)  # stopped before half-way: the end point
    return x, it, x_mid


def find_critical_points(source, U0, *, max_iter: int = 200, tol: Tolerances = None,
                         boosts: bool = None) -> CriticalPoints:
    """Critical points of G from the starts U0 (S, T, d, k), of any index, and their labels.

    Runs Levenberg-Marquardt on ``1/2 ||grad G||^2`` from every start (vmapped), stopping when
    ``||grad G|| <= tol.gradient c^{3/2} / 100``, after ``max_iter`` iterations, or when the
    damping factor reaches 1e14, then classifies each end point with :func:`analyse_point`. An
    iteration: ``H`` the Hessian and ``g`` the gradient of G, the step ``p`` solves
    ``(H^2 + mu I) p = -H g`` with ``mu = max(theta sqrt(c) ||g||, 100 eps ||H||_F^2)``
    (``theta`` starts at 1e-2); with the predicted decrease ``(||g||^2 - ||g + H p||^2) / 2`` and
    the actual one ``(||g||^2 - ||g_new||^2) / 2``, the step is kept when the actual decrease is
    positive, finite, and more than 1e-4 of the predicted one; ``theta`` is divided by 3 when that
    ratio exceeds 0.75 (step kept), kept when it exceeds 0.25 (step kept), and doubled otherwise
    (never below 1e-30). Starts whose merit decreases only along a path to
    infinity (G has asymptotically flat directions, e.g. a column shared by every U_t when T >= 3)
    end as ``NOT_CONVERGED`` with a large ``info.size``.
    """
    source = _check_source(source)
    U0 = _check_U(U0, source, batched=True)
    max_iter = check_int("max_iter", max_iter, 1)
    b = _resolve_boosts(boosts, source)
    return _finder_kernel(U0, source, _tol_array(tol, U0.dtype), boosts=b, max_iter=max_iter)


@functools.partial(jax.jit, static_argnames=("boosts", "max_iter"))
def _finder_kernel(U0, source, tol, *, boosts, max_iter):
    shape = U0.shape[1:]
    fns = _derivative_fns(source, shape)
    c = _scale(source)
    gtol_abs = tol.gradient * c ** 1.5 / 100

    def one(u0):
        x, it, x_mid = _levenberg_marquardt(fns, u0.reshape(-1), c, gtol_abs, max_iter)
        U = x.reshape(shape)
        return U, _analyse(fns, U, c, tol, boosts), it, jnp.sum(x_mid * x_mid) / c

    U, info, it, size_mid = jax.vmap(one)(U0)
    return CriticalPoints(U, info, it, size_mid)


def random_starts(key, n_starts: int, T: int, d: int, k: int, scales=(0.1, 0.3, 1.0),
                  dtype=None):
    """``n_starts`` Gaussian starts (S, T, d, k); start i has standard deviation
    ``scales[i % len(scales)]`` (mixing scales reaches saddles near 0 and far from it)."""
    n_starts = check_int("n_starts", n_starts, 1)
    T, d, k = check_int("T", T, 1), check_int("d", d, 1), check_int("k", k, 1, d, hi_label="d")
    dt = jnp.asarray(0.0).dtype if dtype is None else dtype
    sc_np = np.asarray(scales, float)
    if sc_np.ndim != 1 or sc_np.shape[0] == 0 or not np.all(sc_np > 0):
        raise ValueError(f"scales must be a non-empty sequence of positive numbers, got {scales!r}")
    sc = jnp.asarray(sc_np, dt)
    s = sc[jnp.arange(n_starts) % sc.shape[0]]
    return s[:, None, None, None] * jax.random.normal(key, (n_starts, T, d, k), dt)


def census(labels) -> dict:
    """Counts per label name, e.g. ``{"global minimum": 12, "strict saddle": 4, ...}``."""
    labels = np.asarray(labels).reshape(-1)
    return {name: int(np.sum(labels == i)) for i, name in enumerate(LABELS)}


def escaped(label, size_mid, size, diverged=None):
    """Runs that escaped to infinity (boolean, elementwise; NumPy or JAX).

    A run escaped when it ``diverged`` (optional boolean: non-finite values or a 1000-fold rise of
    its objective, :func:`linmeta.core.divergence.divergence_index`), when its end point is not finite,
    or when it ended ``NOT_CONVERGED`` still moving outwards: its size ``||U||_F^2 / c`` at least
    ``ESCAPE_GROWTH`` times its size half-way through the run, and at least ``ESCAPE_SIZE`` (a few
    times the size of the global minimisers, about ``||U*||_F^2 / c``, 1-5 for Gaussian truths).
    G has directions along which it tends to a finite value at infinity (a column shared by every
    U_t leaves every ``E_t - Ebar`` unchanged); solvers drift along them with a vanishing gradient.
    """
    xp = jnp if any(isinstance(a, jax.Array) for a in (label, size_mid, size, diverged)) else np
    label, size_mid, size = xp.asarray(label), xp.asarray(size_mid), xp.asarray(size)
    out = ~xp.isfinite(size) | ((label == NOT_CONVERGED) & (size >= ESCAPE_GROWTH * size_mid)
                                & (size >= ESCAPE_SIZE))
    if diverged is not None:
        out = out | xp.asarray(diverged)
    return out


def census_counts(label, n_flat, escaped_runs) -> dict:
    """Counts of the census classes :data:`CENSUS_KEYS` for a batch of runs.

    ``label`` and ``n_flat`` are :class:`PointInfo` fields of the end points, ``escaped_runs`` the
    boolean of :func:`escaped`. The classes partition the runs: an escaped run counts only as
    ``"escaped to infinity"``; a spurious minimum is ``"degenerate spurious"`` when its restricted
    spectrum has flat directions (``n_flat > 0``), else ``"strict spurious"``; the remaining
    ``NOT_CONVERGED`` runs are ``"not converged"``.
    """
    label = np.asarray(label).reshape(-1)
    n_flat = np.asarray(n_flat).reshape(-1)
    esc = np.asarray(escaped_runs, bool).reshape(-1)
    if not (label.shape == n_flat.shape == esc.shape):
        raise ValueError(f"label, n_flat and escaped_runs must have the same size, got "
                         f"{label.size}, {n_flat.size}, {esc.size}")
    ok = ~esc
    sp = ok & (label == SPURIOUS_MIN)
    counts = {"runs": int(label.size),
              "global": int(np.sum(ok & (label == GLOBAL_MIN))),
              "strict spurious": int(np.sum(sp & (n_flat == 0))),
              "degenerate spurious": int(np.sum(sp & (n_flat > 0))),
              "saddle": int(np.sum(ok & (label == STRICT_SADDLE))),
              "not converged": int(np.sum(ok & (label == NOT_CONVERGED))),
              "escaped to infinity": int(np.sum(esc))}
    return counts
