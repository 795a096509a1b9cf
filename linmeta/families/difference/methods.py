"""Solvers of the difference family (docs/difference.md#methods; claims D1-D5).

Every method works on task statistics (:class:`linmeta.core.data.TaskStats`, population or samples,
p = d) and returns the learned base, the learned adaptation directions as a basis of d x d
matrices ``B_i`` (the space ``L = span{B_i}`` is what fine-tuning adapts in) and per-task
coefficients, so that task t is modelled as ``M_t = A + sum_i s_ti B_i``.

- :func:`coefficient_fit` (fine-tuning "coefficients only", and the inner solve of the joint fit):
  for a frozen base A and basis B, each task's loss is quadratic in its r coefficients,

      L_t(A + sum_i a_i B_i):  K_t a = beta_t,  K_t[i, j] = <B_i, B_j S_xx,t>,
                                                beta_t[i] = <B_i, S_yx,t - A S_xx,t>,

  solved in closed form (r x r per task).
- :func:`joint_fit` (method (a)): the joint least-squares fit of ``(A, U, V, s_t)`` with
  ``B_i = u_i v_i^T / (||u_i|| ||v_i||)``; for fixed (U, V) the model is linear in ``(A, s_t)``,
  which are eliminated in closed form (:func:`inner_solution`), leaving the profile objective of
  (U, V) alone (variable projection), minimised by damped Gauss-Newton (Levenberg-Marquardt,
  :func:`levenberg_marquardt`, on the residuals ``(M_t - B_t) S_xx,t^{1/2}`` differentiated through
  the elimination) from several random starts (vmapped; the lowest objective kept). The base is only identified modulo
  ``L`` (adding ``sum_i c_i B_i`` to A and subtracting c from every s_t changes no prediction,
  docs/difference.md#d1); the solver returns the representative orthogonal to L (Frobenius).
  Population (every ``S_xx = I``): ``s_t = G^{-1} <B, S_yx,t>``, ``G = <B_i, B_j>`` and
  ``A = mean_t S_yx,t - sum_i sbar_i B_i``, O(T d^2 r). Finite samples: block elimination of the
  d^2 + T r normal equations (a d^2 x d^2 solve per evaluation, meant for d up to about 16).
- :func:`difference_svd` (method (c), the "strongest simple baseline", after BOLT): the pooled
  least-squares (standard retraining) base ``A_SR``, the per-task least-squares differences
  ``D_t = B_t - A_SR``, then either ``kind="pca"``: the top-r principal directions of the
  vectorised ``D_t`` (general d x d matrices), or ``kind="paired"``: the top-r left singular vectors
  of ``[D_1 .. D_T]`` paired in order with the top-r right singular vectors of
  ``[D_1; ..; D_T]`` (rank-one directions); coefficients by :func:`coefficient_fit`.
- :func:`coefficient_maml` (method (b), TARP's training): outer parameters (A, U, V) (scales
  free: the inner step size acts through them), inner loop K gradient steps of size ``alpha`` on
  each task's coefficients from 0, ``lax.scan``; second order (``first_order=False``:
  Levenberg-Marquardt on the residuals of the exact meta-objective, differentiated through the
  inner loop) or first order (Adam on the
  gradient at the adapted coefficients, treated as constants).
- :func:`structure_learner` (method (e), TAMS's analogue): R >= r candidate rank-one directions
  (unit norm) with per-task coefficients and the group penalty ``lam sum_i ||s_{.i}||_2`` (the
  coefficient energy of direction i over the tasks); proximal gradient (group soft-threshold), the
  base eliminated in closed form. Directions whose group is exactly zero are pruned; ``kept``
  counts the distinct others (directions with ``|<B_i, B_j>| > 0.999`` count once).
- Fine-tuning on unseen tasks: :func:`finetune_coefficients` (r numbers per task),
  and the core's rank-r LoRA (:func:`linmeta.methods.finetune.reduced_rank_fit`) and full least squares
  (:func:`linmeta.core.losses.ols_solution`); :func:`population_risk` = ``||M - M*||_F^2``, the excess
  risk for ``x ~ N(0, I)``.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from linmeta.core._validate import check_int, check_scalar, memory_budget
from linmeta.core.data import TaskStats
from linmeta.core.losses import excess_loss, ols_solution
from linmeta.core.metrics import subspace_distance
from linmeta.methods.standard import _check_stats, pooled_least_squares

__all__ = ["DifferenceFit", "StructureFit", "rank_one_basis", "basis_gram", "coefficient_fit",
           "adapted", "inner_solution", "profile_objective", "joint_fit", "joint_fit_starts",
           "core_basis", "direction_basis", "difference_svd",
           "coefficient_maml", "maml_objective", "maml_fit", "structure_learner", "finetune_coefficients",
           "population_risk", "is_population", "subspace_gap", "orthonormalise",
           "levenberg_marquardt", "profile_residual", "distinct_directions", "joint_fit_memory"]


class DifferenceFit(NamedTuple):
    """A fitted difference model: ``base`` (d, d), ``basis`` (r, d, d) adaptation directions,
    ``coefficients`` (T, r), ``objective`` = mean_t [L_t(M_t) - min L_t] (0 at a zero-loss
    population fit), ``U``, ``V`` (d, r) unit-norm direction factors (None for ``kind="pca"``),
    ``start_objectives`` (n_starts,) of every start (None for closed forms)."""

    base: jax.Array
    basis: jax.Array
    coefficients: jax.Array
    objective: jax.Array
    U: Any = None
    V: Any = None
    start_objectives: Any = None


class StructureFit(NamedTuple):
    """The structure learner's result: ``base`` (d, d), ``U``, ``V`` (d, R) unit columns,
    ``coefficients`` (T, R), ``group_norms`` (R,) = ``||s_{.i}||_2``, ``kept`` = number of
    distinct directions with a nonzero group (:func:`distinct_directions`), ``objective``
    (smooth part: mean excess loss)."""

    base: jax.Array
    U: jax.Array
    V: jax.Array
    coefficients: jax.Array
    group_norms: jax.Array
    kept: jax.Array
    objective: jax.Array


def _T(x):
    return jnp.swapaxes(x, -1, -2)


def _unit_columns(X):
    return X / jnp.linalg.norm(X, axis=0, keepdims=True)


def rank_one_basis(U, V):
    """``B_i = u_i v_i^T / (||u_i|| ||v_i||)``, shape (r, d, d)."""
    return jnp.einsum("ai,bi->iab", _unit_columns(U), _unit_columns(V))


def core_basis(U, V):
    """``B_(i,j) = u_i v_j^T / (||u_i|| ||v_j||)``, shape (r^2, d, d): the basis of
    ``{U S V^T : S in R^{r x r}}`` (the core variant)."""
    d, r = U.shape
    return jnp.einsum("ai,bj->ijab", _unit_columns(U), _unit_columns(V)).reshape(r * r, d, d)


def direction_basis(U, V, core: bool = False):
    """:func:`core_basis` when ``core``, else :func:`rank_one_basis`."""
    return core_basis(U, V) if core else rank_one_basis(U, V)


def basis_gram(B, Sxx):
    """``K[t, i, j] = <B_i, B_j S_xx,t> = tr(B_i S_xx,t B_j^T)``, shape (T, r, r)."""
    return jnp.einsum("iab,tbc,jac->tij", B, Sxx, B)


def adapted(base, B, coef):
    """``base + sum_i coef_ti B_i``, shape (T, d, d)."""
    return base + jnp.einsum("ti,iab->tab", coef, B)


def coefficient_fit(base, B, stats: TaskStats):
    """Least-squares coefficients (T, r) of every task for the frozen ``base`` ((d, d) or
    (T, d, d)) and basis ``B`` (r, d, d) (module docstring)."""
    K = basis_gram(B, stats.Sxx)
    resid = stats.Syx - base @ stats.Sxx  # (T, d, d)
    beta = jnp.einsum("iab,tab->ti", B, resid)
    return jnp.linalg.solve(K, beta[..., None])[..., 0]


def population_risk(M, M_star):
    """``||M - M*||_F^2`` per task: the excess risk for ``x ~ N(0, I)``."""
    D = M - M_star
    return jnp.sum(D * D, axis=(-2, -1))


def orthonormalise(B):
    """An orthonormal basis (Frobenius; QR of the vectorised matrices) of ``span{B_i}``."""
    r, d = B.shape[0], B.shape[-1]
    return jnp.linalg.qr(B.reshape(r, d * d).T)[0].T.reshape(r, d, d)


def finetune_coefficients(base, B, target: TaskStats):
    """Coefficient-only fine-tuning on the target tasks: ``base + sum_i a_i E_i`` with ``a`` the
    least-squares coefficients (:func:`coefficient_fit`) in an orthonormal basis ``E`` of
    ``span{B_i}`` (the fit depends only on the span; the orthonormal basis keeps the r x r solve
    well conditioned when the ``B_i`` are nearly dependent), shape (m, d, d)."""
    E = orthonormalise(B)
    return adapted(base, E, coefficient_fit(base, E, target))


def is_population(stats: TaskStats) -> bool:
    """Whether concrete statistics are the population (``n_samples`` infinite, ``S_xx = I``)."""
    n = np.asarray(stats.n_samples)
    if not np.all(np.isinf(n)):
        return False
    return bool(np.allclose(np.asarray(stats.Sxx), np.eye(stats.d), rtol=0, atol=0))


def inner_solution(B, stats: TaskStats, population: bool):
    """The least-squares ``(A, s)`` for a fixed basis ``B`` (r, d, d), with ``A`` orthogonal to
    ``span{B_i}`` (the gauge, module docstring). ``population``: the closed form for
    ``S_xx = I``; else block elimination of the normal equations (``S_xx`` full rank)."""
    r, d = B.shape[0], B.shape[-1]
    if population:
        # QR of the vectorised basis: well conditioned even when the B_i are nearly dependent
        Q, Rm = jnp.linalg.qr(B.reshape(r, d * d).T)
        m = stats.Syx.reshape(-1, d * d)
        s = jax.scipy.linalg.solve_triangular(Rm, Q.T @ m.T, lower=False).T  # (T, r)
        mbar = jnp.mean(m, axis=0)
        A = (mbar - Q @ (Q.T @ mbar)).reshape(d, d)
        return A, s
    T = stats.T
    HB = jnp.einsum("iab,tbc->tiac", B, stats.Sxx)            # B_i S_t, (T, r, d, d)
    K = jnp.einsum("iab,tjab->tij", B, HB)                      # <B_i, B_j S_t>
    beta = jnp.einsum("iab,tab->ti", B, stats.Syx)
    HBv = HB.reshape(T, r, d * d)
    Kinv_HB = jnp.linalg.solve(K, HBv)                          # (T, r, d^2)
    eye = jnp.eye(d, dtype=B.dtype)
    N = jnp.kron(eye, jnp.sum(stats.Sxx, axis=0)) - jnp.einsum("tia,tib->ab", HBv, Kinv_HB)
    rhs = (jnp.sum(stats.Syx, axis=0).reshape(d * d)
           - jnp.einsum("tia,ti->a", HBv, jnp.linalg.solve(K, beta[..., None])[..., 0]))
    Phi = B.reshape(r, d * d).T
    P = Phi @ jnp.linalg.solve(Phi.T @ Phi, Phi.T)
    a = jnp.linalg.solve(N / T + P, rhs / T)
    A = a.reshape(d, d)
    s = jnp.linalg.solve(K, (beta - jnp.einsum("tiab,ab->ti", HB, A))[..., None])[..., 0]
    return A, s


def _excess(M, stats, ols):
    return jnp.mean(excess_loss(M, stats, ols), axis=-1)


def _sqrt_psd(S):
    w, Q = jnp.linalg.eigh(S)
    return (Q * jnp.sqrt(jnp.maximum(w, 0.0))[..., None, :]) @ _T(Q)


def profile_residual(U, V, stats: TaskStats, ols, sqrt_sxx, population: bool, core: bool = False):
    """Residuals ``(A + sum_i s_ti B_i - B_t) S_xx,t^{1/2}`` (T, d, d) at the eliminated
    ``(A, s)`` (:func:`inner_solution`) for ``B = direction_basis(U, V, core)``; half their
    squared norm over T is the profile objective (mean excess loss). Differentiable in (U, V)
    through the elimination (variable projection)."""
    B = direction_basis(U, V, core)
    A, s = inner_solution(B, stats, population)
    R = adapted(A, B, s) - ols
    return R if population else R @ sqrt_sxx


def profile_objective(U, V, stats: TaskStats, ols, population: bool, core: bool = False):
    """``min over (A, s) of mean_t [L_t(A + U diag(s_t) V^T) - min L_t]`` (unit columns; ``core``:
    ``U S_t V^T``)."""
    B = direction_basis(U, V, core)
    A, s = inner_solution(B, stats, population)
    return _excess(adapted(A, B, s), stats, ols)


def levenberg_marquardt(residual, x0, iterations: int):
    """Damped Gauss-Newton (Levenberg-Marquardt) on ``1/2 ||residual(x)||^2`` from ``x0`` (flat),
    ``iterations`` steps in ``lax.scan``: step ``-(J^T J + mu m I)^{-1} J^T r`` with ``m`` the
    largest diagonal entry of ``J^T J``; a step is taken only when it lowers the objective
    (then ``mu /= 3``, else ``mu *= 4``). Invariances of the model (scales of the directions,
    the base's freedom) make ``J^T J`` singular; the damping keeps the steps finite. Returns
    ``(x, objective, trace of the objective)``."""
    def cost(x):
        r = residual(x).ravel()
        return 0.5 * jnp.vdot(r, r)

    def body(c, _):
        x, mu, f = c
        r = residual(x).ravel()
        J = jax.jacfwd(lambda y: residual(y).ravel())(x)
        H = J.T @ J
        g = J.T @ r
        scale = jnp.max(jnp.diag(H)) + jnp.finfo(x.dtype).tiny
        step = -jnp.linalg.solve(H + mu * scale * jnp.eye(x.shape[0], dtype=x.dtype), g)
        x_new = x + step
        f_new = cost(x_new)
        ok = jnp.isfinite(f_new) & (f_new < f)
        x = jnp.where(ok, x_new, x)
        f = jnp.where(ok, f_new, f)
        mu = jnp.clip(jnp.where(ok, mu / 3, mu * 4), 1e-15, 1e15)
        return (x, mu, f), f

    (x, _, f), trace = lax.scan(body, (x0, jnp.asarray(1e-3, x0.dtype), cost(x0)), None,
                                length=iterations)
    return x, f, trace


def joint_fit_starts(stats: TaskStats, key, *, rank: int, n_starts: int, max_iter: int,
                     population: bool, core: bool = False):
    """Every start of the joint fit (jit/vmap-able; :func:`joint_fit` validates and keeps the
    best): Levenberg-Marquardt on the profile residuals (:func:`profile_residual`) from
    ``U, V`` with i.i.d. N(0, 1) entries; returns unit-column ``U``, ``V`` (n_starts, d, rank),
    final objectives (n_starts,) (mean excess loss) and their traces (n_starts, max_iter + 1)."""
    d, T = stats.d, stats.T
    dt = stats.Sxx.dtype
    ols = ols_solution(stats)
    root = None if population else _sqrt_psd(stats.Sxx)
    x0s = jax.random.normal(key, (n_starts, 2 * d * rank), dt)

    def res(x):
        return profile_residual(x[:d * rank].reshape(d, rank), x[d * rank:].reshape(d, rank),
                                stats, ols, root, population, core)

    def one(x0):
        x, fx, trace = levenberg_marquardt(res, x0, max_iter)
        r0 = res(x0).ravel()
        trace = jnp.concatenate([(0.5 * jnp.vdot(r0, r0))[None], trace]) / T
        return (_unit_columns(x[:d * rank].reshape(d, rank)),
                _unit_columns(x[d * rank:].reshape(d, rank)), fx / T, trace)

    return jax.vmap(one)(x0s)


@functools.partial(jax.jit, static_argnames=("rank", "n_starts", "max_iter", "population",
                                             "core"))
def _joint_kernel(stats, key, *, rank, n_starts, max_iter, population, core):
    Us, Vs, fs, _ = joint_fit_starts(stats, key, rank=rank, n_starts=n_starts,
                                  max_iter=max_iter, population=population, core=core)
    best = jnp.argmin(jnp.where(jnp.isfinite(fs), fs, jnp.inf))
    U, V = Us[best], Vs[best]
    B = direction_basis(U, V, core)
    A, s = inner_solution(B, stats, population)
    ols = ols_solution(stats)
    return DifferenceFit(A, B, s, _excess(adapted(A, B, s), stats, ols), U, V, fs)


def _population_flag(stats, population):
    if population is None:
        try:
            return is_population(stats)
        except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
            raise ValueError("population must be given (True/False) when the statistics are "
                             "traced") from None
    return bool(population)


def joint_fit(source: TaskStats, rank, *, key, n_starts: int = 8, max_iter: int = 100,
              population=None, core: bool = False) -> DifferenceFit:
    """Method (a): the joint fit of ``(A, U, V, s_t)`` (module docstring).

    Args:
      source: retraining statistics (T, d, d); finite samples need full-rank ``S_xx``.
      rank: number of directions r (1 <= r <= d).
      key: PRNG key of the random starts (``U, V`` with i.i.d. N(0, 1) entries).
      n_starts, max_iter: starts (vmapped, best kept) and Levenberg-Marquardt iterations per
        start.
      population: use the population closed form (default: detected from concrete ``source``).
      core: fit ``U S_t V^T`` with r x r cores (basis of r^2 matrices) instead of diagonal
        coefficients.
    """
    _check_stats(source)
    rank = check_int("rank", rank, 1, source.d, hi_label="d")
    n_starts = check_int("n_starts", n_starts, 1)
    max_iter = check_int("max_iter", max_iter, 1)
    pop = _population_flag(source, population)
    need = joint_fit_memory(source.d, source.T, rank, n_starts, pop, core=bool(core))
    if need > memory_budget():
        raise ValueError(f"joint_fit: d={source.d}, T={source.T}, rank={rank}, n_starts={n_starts} "
                         f"needs about {need / 2 ** 30:.1f} GiB (the finite-sample elimination forms "
                         f"d^2 x d^2 normal equations and a Jacobian per start), more than the "
                         f"{memory_budget() / 2 ** 30:.1f} GiB budget; use fewer starts, a smaller d, "
                         "or population statistics")
    return _joint_kernel(source, key, rank=rank, n_starts=n_starts,
                         max_iter=max_iter, population=pop, core=bool(core))


def joint_fit_memory(d: int, T: int, rank: int, n_starts: int, population: bool,
                     core: bool = False) -> int:
    """Bytes the joint fit plans to hold (float64), per start: the Jacobian of the T d^2
    residuals in the 2 d r unknowns (``jax.jacfwd``) and about four arrays of its size (the
    tangents of the residuals, the step's products); at finite samples also the d^2 x d^2 normal
    equations and the (T, q, d^2) products of the basis with the statistics (q = r, or r^2 for a
    core), each carried with its 2 d r forward-mode tangents (about six copies). Measured against
    XLA's memory analysis of the compiled fit (tests/test_difference_memory.py): an upper bound,
    at most 4 times XLA's count at small shapes (it was 20-40 times too small at finite samples,
    4 times in the population, before the tangents and copies were counted)."""
    q = rank * rank if core else rank
    jac = T * d * d * 2 * d * rank
    finite = (d ** 4 + T * q * d * d) * (4 + 6 * 2 * d * rank)
    return 8 * n_starts * (5 * jac + (0 if population else finite))


def difference_svd(source: TaskStats, rank, *, kind: str = "pca") -> DifferenceFit:
    """Method (c): directions from the SVD of the tasks' least-squares differences from the pooled
    (standard-retraining) solution, then coefficients (module docstring). Needs full-rank
    ``S_xx`` per task (``n >= d``). For ``kind="pca"`` and ``rank`` above the number of nonzero
    principal components the remaining directions are an arbitrary orthonormal completion."""
    _check_stats(source)
    if kind not in ("pca", "paired"):
        raise ValueError(f"kind must be 'pca' or 'paired'; got {kind!r}")
    rank = check_int("rank", rank, 1, source.d, hi_label="d")
    return _svd_kernel(source, rank=rank, kind=kind)


@functools.partial(jax.jit, static_argnames=("rank", "kind"))
def _svd_kernel(stats, *, rank, kind):
    T, d = stats.T, stats.d
    A = pooled_least_squares(stats)
    ols = ols_solution(stats)
    D = ols - A
    if kind == "pca":
        W = jnp.linalg.svd(D.reshape(T, d * d).T, full_matrices=True)[0]  # (d^2, d^2)
        B = W[:, :rank].T.reshape(rank, d, d)
        U = V = None
    else:
        U = jnp.linalg.svd(jnp.concatenate(list(D), axis=1), full_matrices=False)[0][:, :rank]
        V = jnp.linalg.svd(jnp.concatenate(list(D), axis=0), full_matrices=False)[2][:rank].T
        B = rank_one_basis(U, V)
    s = coefficient_fit(A, B, stats)
    return DifferenceFit(A, B, s, _excess(adapted(A, B, s), stats, ols), U, V, None)


# ------------------------------------------------------------------------------------------
# (b) meta-learning with an inner loop on the coefficients
# ------------------------------------------------------------------------------------------

def _inner_coefficients(A, U, V, stats, alpha, K, K_max: int):
    """``K`` (traced, <= ``K_max``) gradient steps on every task's coefficients from 0:
    ``s <- s - alpha [u_i^T G_t v_i]``, ``G_t = (A + U diag(s_t) V^T) S_xx,t - S_yx,t``."""
    T = stats.T

    def step(s, k):
        M = A + (U * s[:, None, :]) @ V.T
        G = M @ stats.Sxx - stats.Syx
        return jnp.where(k < K, s - alpha * jnp.einsum("ai,tab,bi->ti", U, G, V), s), None

    s0 = jnp.zeros((T, U.shape[1]), U.dtype)
    return lax.scan(step, s0, jnp.arange(K_max))[0] if K_max else s0


def maml_objective(params, stats: TaskStats, ols, alpha, K, K_max: int,
                   first_order: bool = False):
    """Meta-objective ``mean_t [L_t(A + U diag(s_t^K) V^T) - min L_t]`` with ``s^K`` the inner
    loop's coefficients; ``first_order``: ``s^K`` treated as a constant (first-order MAML)."""
    A, U, V = params
    s = _inner_coefficients(A, U, V, stats, alpha, K, K_max)
    if first_order:
        s = lax.stop_gradient(s)
    return _excess(A + (U * s[:, None, :]) @ V.T, stats, ols)


def maml_fit(stats: TaskStats, key, alpha, K, lr, *, rank: int, K_max: int, first_order: bool,
             n_starts: int, max_iter: int, steps: int) -> DifferenceFit:
    """Coefficient MAML without validation (jit/vmap-able; ``K`` traced, at most ``K_max``):
    see :func:`coefficient_maml`."""
    d = stats.d
    dt = stats.Sxx.dtype
    ols = ols_solution(stats)
    root = _sqrt_psd(stats.Sxx)
    A0 = pooled_least_squares(stats)
    UV0 = jax.random.normal(key, (n_starts, 2, d, rank), dt) / jnp.sqrt(d)

    def unflat(x):
        return (x[:d * d].reshape(d, d), x[d * d:d * d + d * rank].reshape(d, rank),
                x[d * d + d * rank:].reshape(d, rank))

    def f(x):
        return maml_objective(unflat(x), stats, ols, alpha, K, K_max, first_order)

    def one(uv):
        x0 = jnp.concatenate([A0.ravel(), uv[0].ravel(), uv[1].ravel()])
        if not first_order:
            def res(x):
                A, U, V = unflat(x)
                s = _inner_coefficients(A, U, V, stats, alpha, K, K_max)
                return (A + (U * s[:, None, :]) @ V.T - ols) @ root

            x, fx, _ = levenberg_marquardt(res, x0, max_iter)
            return x, fx / stats.T
        opt = optax.adam(lr)

        def step(c, _):
            x, st = c
            u, st = opt.update(jax.grad(f)(x), st, x)
            return (optax.apply_updates(x, u), st), None

        x = lax.scan(step, (x0, opt.init(x0)), None, length=steps)[0][0]
        return x, f(x)

    xs, fs = jax.vmap(one)(UV0)
    best = jnp.argmin(jnp.where(jnp.isfinite(fs), fs, jnp.inf))
    A, U, V = unflat(xs[best])
    s = _inner_coefficients(A, U, V, stats, alpha, K, K_max)
    scale = jnp.linalg.norm(U, axis=0) * jnp.linalg.norm(V, axis=0)
    return DifferenceFit(A, rank_one_basis(U, V), s * scale, fs[best], _unit_columns(U),
                         _unit_columns(V), fs)


_maml_kernel = jax.jit(maml_fit, static_argnames=("rank", "K_max", "first_order", "n_starts",
                                                  "max_iter", "steps"))


def coefficient_maml(source: TaskStats, rank, *, key, inner_steps: int = 1, alpha=0.5,
                     first_order: bool = False, n_starts: int = 4, max_iter: int = 100,
                     steps: int = 2000, lr=0.01) -> DifferenceFit:
    """Method (b): meta-learning whose inner loop adapts only the coefficients (module
    docstring). ``inner_steps`` K >= 0 steps of size ``alpha`` from 0; second order:
    ``max_iter`` Levenberg-Marquardt iterations on the meta-objective; ``first_order``: ``steps``
    Adam steps of rate ``lr``. Starts: base = pooled least squares, ``U, V`` i.i.d. N(0, 1/d).
    The returned coefficients are the adapted ones, expressed in the unit-norm basis;
    ``objective`` is the meta-objective."""
    _check_stats(source)
    rank = check_int("rank", rank, 1, source.d, hi_label="d")
    K = check_int("inner_steps", inner_steps, 0)
    check_scalar("alpha", alpha, 0.0, lo_open=True)
    check_scalar("lr", lr, 0.0, lo_open=True)
    n_starts = check_int("n_starts", n_starts, 1)
    dt = source.Sxx.dtype
    return _maml_kernel(source, key, jnp.asarray(alpha, dt), K, jnp.asarray(lr, dt), rank=rank,
                        K_max=K, first_order=bool(first_order), n_starts=n_starts,
                        max_iter=check_int("max_iter", max_iter, 1),
                        steps=check_int("steps", steps, 1))


# ------------------------------------------------------------------------------------------
# (e) the structure learner
# ------------------------------------------------------------------------------------------

def _pooled_base(U, V, s, stats):
    delta = (U * s[:, None, :]) @ V.T
    C = jnp.sum(stats.Syx - delta @ stats.Sxx, axis=0)
    return C @ jnp.linalg.inv(jnp.sum(stats.Sxx, axis=0))


@functools.partial(jax.jit, static_argnames=("R", "steps"))
def _structure_kernel(stats, key, lam, *, R, steps):
    d = stats.d
    dt = stats.Sxx.dtype
    ols = ols_solution(stats)
    ku, kv = jax.random.split(key)
    U = _unit_columns(jax.random.normal(ku, (d, R), dt))
    V = _unit_columns(jax.random.normal(kv, (d, R), dt))
    A = pooled_least_squares(stats)
    s = coefficient_fit(A, rank_one_basis(U, V), stats)
    lmax = jnp.max(jnp.linalg.eigvalsh(stats.Sxx)[:, -1])

    def smooth(U, V, s, A):
        return jnp.sum(excess_loss(A + (U * s[:, None, :]) @ V.T, stats, ols))

    def step(c, _):
        U, V, s = c
        A = lax.stop_gradient(_pooled_base(U, V, s, stats))
        gU, gV, gs = jax.grad(smooth, argnums=(0, 1, 2))(U, V, s, A)
        eta_s = 1.0 / (R * lmax)
        energy = jnp.sum(s * s, axis=0)
        eta_uv = 0.5 / (lmax * (jnp.max(energy) + 1e-30))
        U = _unit_columns(U - eta_uv * gU)
        V = _unit_columns(V - eta_uv * gV)
        z = s - eta_s * gs
        norm = jnp.linalg.norm(z, axis=0)
        shrink = jnp.maximum(0.0, 1.0 - eta_s * lam / jnp.where(norm > 0, norm, 1.0))
        return (U, V, z * shrink), None

    U, V, s = lax.scan(step, (U, V, s), None, length=steps)[0]
    A = _pooled_base(U, V, s, stats)
    norms = jnp.linalg.norm(s, axis=0)
    obj = jnp.mean(excess_loss(A + (U * s[:, None, :]) @ V.T, stats, ols))
    return StructureFit(A, U, V, s, norms, distinct_directions(U, V, norms > 0), obj)


def distinct_directions(U, V, active, cos_merge=0.999):
    """Number of distinct directions among the active unit rank-one ``u_i v_i^T``: a direction
    counts unless an earlier active one has ``|<B_i, B_j>| > cos_merge`` (the group penalty is
    indifferent to splitting one direction's coefficients between copies of it, since
    ``||a||_2 + ||b||_2 = ||a + b||_2`` for parallel a, b, so copies are one direction)."""
    B = rank_one_basis(U, V)
    G = jnp.abs(jnp.einsum("iab,jab->ij", B, B))
    R = G.shape[0]
    earlier = jnp.tril(jnp.ones((R, R), bool), -1)
    dup = jnp.any(earlier & active[None, :] & (G > cos_merge), axis=1)
    return jnp.sum(active & ~dup)


def structure_learner(source: TaskStats, n_directions, *, lam, key, steps: int = 3000) -> StructureFit:
    """Method (e): ``n_directions`` R candidate unit rank-one directions, group penalty ``lam``
    (>= 0) on each direction's coefficients over the tasks, ``steps`` proximal-gradient steps
    (module docstring). A step: the base eliminated (least squares given the directions and
    coefficients), gradients of the tasks' summed loss in U, V and s at that base, step sizes
    ``eta_s = 1 / (R lambda_max)`` and ``eta_uv = 1 / (2 lambda_max max_i sum_t s_ti^2)``
    (``lambda_max``: the largest eigenvalue of any ``S_xx,t``); U and V take a gradient step and
    their columns are rescaled to unit norm, s takes a gradient step and the group soft-threshold
    at ``eta_s lam``."""
    _check_stats(source)
    R = check_int("n_directions", n_directions, 1)
    check_scalar("lam", lam, 0.0)
    dt = source.Sxx.dtype
    return _structure_kernel(source, key, jnp.asarray(lam, dt), R=R,
                             steps=check_int("steps", steps, 1))


def subspace_gap(B, B_star):
    """Sine of the largest principal angle between ``span{B_i}`` and ``span{B*_j}`` (both sets of
    d x d matrices, vectorised): 0 when the learned and true difference spaces agree."""
    X = B.reshape(B.shape[0], -1).T
    Y = B_star.reshape(B_star.shape[0], -1).T
    return subspace_distance(X, Y)
