"""Task data as sufficient statistics (docs/theory.md#model and #losses).

The empirical loss of task t, ``L_t(M) = 1/(2N) sum_i ||y_i - M x_i||^2``, depends on the data only
through

    S_xx = (1/N) sum_i x_i x_i^T,   S_yx = (1/N) sum_i y_i x_i^T,   S_yy = (1/N) sum_i ||y_i||^2,

    L_t(M) = 1/2 tr(M S_xx M^T) - tr(M^T S_yx) + 1/2 S_yy.

The population limit (N -> infinity, x ~ N(0, I), y = M*_t x + eps, eps ~ N(0, sigma^2 I)) is the same
object with ``S_xx = I``, ``S_yx = M*_t``, ``S_yy = ||M*_t||_F^2 + d sigma^2``, so that
``L_t(M) = 1/2 ||M - M*_t||_F^2 + d sigma^2 / 2``. Every solver takes a :class:`TaskStats` and runs
unchanged on either source; a gradient step costs O(d^3) whatever N is.

Conventions: samples are rows, ``X`` is (T, N, d), ``Y = X M*^T + noise`` is (T, N, p). The noise
standard deviation is always given explicitly (the paper's code draws noise with standard deviation
``sigma^2``; pass ``noise_std=sigma**2`` to reproduce that).

Chunks: the statistics are sums over samples, so they can be accumulated chunk by chunk,
``S = (1/N) sum_j sum_{i in chunk j} ...``, holding one chunk of raw samples at a time
(``sample_tasks(..., chunk_size=c)``, :func:`stats_from_chunks`); at d = 1024 and N = 2d the raw
samples of T = 8 tasks are 3 x 8 x 2048 x 1024 doubles = 0.4 GiB, at d = 4096 and N = 2d 6 GiB.

Output dimension: the task matrices are p x d. The base-matrix model (docs/theory.md) has p = d; the
shared-representation family (:mod:`linmeta.families.representation`, scalar outputs ``y = <x, beta_t> +
eps``) has p = 1, ``M*_t = beta_t^T``. The quadratic above, :mod:`linmeta.core.losses` and
:func:`task_statistics` hold for any p.
"""
from __future__ import annotations

import functools
from typing import Iterable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ._validate import (check_array, check_choice, check_int, check_scalar, format_bytes,
                        memory_budget)
from .problem import Truth

__all__ = ["TaskStats", "Samples", "population", "draw_samples", "task_statistics",
           "sample_tasks", "stats_from_arrays", "stats_from_chunks", "sampling_memory",
           "matrix_tasks"]


class TaskStats(NamedTuple):
    """Per-task sufficient statistics; leading axis = tasks.

    Attributes:
      Sxx: (T, d, d) input second moments ``(1/N) sum x x^T`` (identity in the population).
      Syx: (T, p, d) cross moments ``(1/N) sum y x^T`` (``M*_t`` in the population); p = d for
        the base-matrix model, p = 1 for scalar outputs.
      Syy: (T,) output second moments ``(1/N) sum ||y||^2``.
      n_samples: (T,) sample counts N (``inf`` for the population).
      M_star: (T, p, d) the true task matrices behind the data, used only by evaluation metrics
        (test loss against noiseless targets); NaN when unknown (user data).
      noise_std: (T,) noise standard deviation used to generate the data (NaN when unknown).
    """

    Sxx: jax.Array
    Syx: jax.Array
    Syy: jax.Array
    n_samples: jax.Array
    M_star: jax.Array
    noise_std: jax.Array

    @property
    def d(self) -> int:
        return self.Sxx.shape[-1]

    @property
    def T(self) -> int:
        return self.Sxx.shape[-3]

    @property
    def p(self) -> int:
        """Output dimension (rows of ``Syx``): d for the base-matrix model, 1 for scalar outputs."""
        return self.Syx.shape[-2]


class Samples(NamedTuple):
    """Raw samples: ``X`` (T, N, d) inputs as rows, ``Y`` (T, N, p) outputs, the true task
    matrices ``M_star`` (T, p, d) and the noise standard deviation (T,)."""

    X: jax.Array
    Y: jax.Array
    M_star: jax.Array
    noise_std: jax.Array


def _task_matrices(truth: Truth, tasks: str) -> jax.Array:
    check_choice("tasks", tasks, ("retrain", "unseen"))
    if not isinstance(truth, Truth):
        raise ValueError(f"truth must be a linmeta.Truth, got {type(truth).__name__}")
    M = truth.M_star if tasks == "retrain" else truth.M_new
    if M.shape[-3] == 0:
        raise ValueError("tasks='unseen' needs a truth with unseen tasks (n_unseen >= 1)")
    return M


def population(truth: Truth, noise_std=0.0, *, tasks: str = "retrain") -> TaskStats:
    """Exact population statistics (N = infinity) of the retraining or unseen tasks of ``truth``."""
    check_scalar("noise_std", noise_std, 0.0)
    M = _task_matrices(truth, tasks)
    T, d = M.shape[-3], M.shape[-1]
    dt = M.dtype
    eye = jnp.broadcast_to(jnp.eye(d, dtype=dt), M.shape)
    sig = jnp.broadcast_to(jnp.asarray(noise_std, dt), M.shape[:-2])
    Syy = jnp.sum(M * M, axis=(-2, -1)) + d * sig ** 2
    return TaskStats(eye, M, Syy, jnp.full(M.shape[:-2], jnp.inf, dt), M, sig)


def draw_samples(key, truth: Truth, N, noise_std, *, tasks: str = "retrain") -> Samples:
    """Draw N samples per task: ``x ~ N(0, I_d)``, ``y = M*_t x + eps``, ``eps ~ N(0, noise_std^2 I)``."""
    N = check_int("N", N, 1)
    check_scalar("noise_std", noise_std, 0.0)
    M = _task_matrices(truth, tasks)
    T, d = M.shape[-3], M.shape[-1]
    kx, ke = jax.random.split(key)
    X = jax.random.normal(kx, (T, N, d), M.dtype)
    E = jax.random.normal(ke, (T, N, d), M.dtype)
    sig = jnp.asarray(noise_std, M.dtype)
    Y = X @ jnp.swapaxes(M, -1, -2) + sig * E
    return Samples(X, Y, M, jnp.full((T,), sig))


def task_statistics(samples: Samples) -> TaskStats:
    """Reduce raw samples to sufficient statistics (one pass, O(T N d^2))."""
    X, Y = samples.X, samples.Y
    N = X.shape[-2]
    Xt = jnp.swapaxes(X, -1, -2)
    Sxx = Xt @ X / N
    Syx = jnp.swapaxes(Y, -1, -2) @ X / N
    Syy = jnp.sum(Y * Y, axis=(-2, -1)) / N
    n = jnp.full(X.shape[:-2], float(N), X.dtype)
    return TaskStats(Sxx, Syx, Syy, n, samples.M_star, samples.noise_std)


def sampling_memory(T: int, N: int, d: int, p: int | None = None, itemsize: int = 8) -> int:
    """Estimated peak bytes of drawing N samples per task at once and reducing them: X, the noise
    and Y (``T N (d + 2p)`` numbers) and the statistics (``T d (d + p)``)."""
    p = d if p is None else p
    return int((T * N * (d + 2 * p) + T * d * (d + p)) * itemsize)


def _chunk_samples(key, M, sig, size: int):
    T, p, d = M.shape
    kx, ke = jax.random.split(key)
    X = jax.random.normal(kx, (T, size, d), M.dtype)
    E = jax.random.normal(ke, (T, size, p), M.dtype)
    return X, X @ jnp.swapaxes(M, -1, -2) + sig * E


def _chunk_sums(X, Y):
    Xt = jnp.swapaxes(X, -1, -2)
    return Xt @ X, jnp.swapaxes(Y, -1, -2) @ X, jnp.sum(Y * Y, axis=(-2, -1))


@functools.partial(jax.jit, static_argnames=("N", "chunk_size"))
def _sample_tasks_chunked(key, M, sig, *, N, chunk_size):
    n_full, rem = divmod(N, chunk_size)

    def add(acc, j):
        X, Y = _chunk_samples(jax.random.fold_in(key, j), M, sig, chunk_size)
        return jax.tree.map(jnp.add, acc, _chunk_sums(X, Y)), None

    T, p, d = M.shape
    zero = (jnp.zeros((T, d, d), M.dtype), jnp.zeros((T, p, d), M.dtype),
            jnp.zeros((T,), M.dtype))
    acc = lax.scan(add, zero, jnp.arange(n_full))[0]
    if rem:
        X, Y = _chunk_samples(jax.random.fold_in(key, n_full), M, sig, rem)
        acc = jax.tree.map(jnp.add, acc, _chunk_sums(X, Y))
    return tuple(a / N for a in acc)


def sample_tasks(key, truth: Truth, N, noise_std, *, tasks: str = "retrain",
                 chunk_size=None) -> TaskStats:
    """Finite-sample statistics of N fresh samples per task (see :func:`draw_samples`).

    ``chunk_size`` (optional): draw and reduce the samples ``chunk_size`` at a time (a compiled
    loop; never more than one chunk of raw samples in memory). Chunk j (samples ``j c`` to
    ``(j + 1) c - 1``, the last one shorter when c does not divide N) is
    ``draw_samples(jax.random.fold_in(key, j), truth, size_j, noise_std)``: the same distribution
    as the one-shot draw, other numbers. Without ``chunk_size``, a draw whose memory estimate
    (:func:`sampling_memory`) is past the budget is refused, naming a chunk size that fits."""
    N = check_int("N", N, 1)
    check_scalar("noise_std", noise_std, 0.0)
    M = _task_matrices(truth, tasks)
    T, p, d = M.shape
    it = M.dtype.itemsize
    budget = memory_budget()
    if chunk_size is None:
        need = sampling_memory(T, N, d, p, it)
        if need > budget:
            raise ValueError(f"drawing N={N} samples for each of T={T} tasks at d={d} at once "
                             f"needs ~{format_bytes(need)}, over the memory budget "
                             f"{format_bytes(budget)}; pass chunk_size (e.g. "
                             f"chunk_size={max(1, _chunk_that_fits(T, d, p, it, budget))})")
        return task_statistics(draw_samples(key, truth, N, noise_std, tasks=tasks))
    chunk_size = check_int("chunk_size", chunk_size, 1)
    chunk_size = min(chunk_size, N)
    need = sampling_memory(T, 2 * chunk_size, d, p, it)  # two chunks: the loop's and the rest
    if need > budget:
        fits = _chunk_that_fits(T, d, p, it, budget)
        raise ValueError(f"chunk_size={chunk_size} at T={T}, d={d} needs ~{format_bytes(need)}, "
                         f"over the memory budget {format_bytes(budget)}; "
                         + (f"use chunk_size <= {fits}" if fits >= 1 else
                            "not even the statistics fit: reduce d or T"))
    sig = jnp.asarray(noise_std, M.dtype)
    Sxx, Syx, Syy = _sample_tasks_chunked(key, M, sig, N=N, chunk_size=chunk_size)
    return TaskStats(Sxx, Syx, Syy, jnp.full((T,), float(N), M.dtype), M, jnp.full((T,), sig))


def _chunk_that_fits(T, d, p, itemsize, budget) -> int:
    """Largest chunk size whose two chunks and statistics fit ``budget`` (0 when none)."""
    free = budget // itemsize - T * d * (d + p)
    return int(max(0, free // (2 * T * (d + 2 * p))))


def stats_from_chunks(chunks: Iterable, M_star=None) -> TaskStats:
    """Statistics of user data given in chunks: an iterable of ``(X, Y)`` pairs, ``X`` of shape
    (T, n_j, d) and ``Y`` of shape (T, n_j, p) (any chunk sizes n_j >= 1), reduced one chunk at a
    time; equal (to rounding) to :func:`stats_from_arrays` of the concatenated samples.
    ``M_star`` (optional): the true (T, p, d) task matrices."""
    sums = shape = None
    N = 0
    for j, pair in enumerate(chunks):
        try:
            X, Y = pair
        except (TypeError, ValueError):
            raise ValueError(f"chunk {j} must be a pair (X, Y), got {type(pair).__name__}") \
                from None
        X = check_array(f"chunk {j} X", X, ndim=3)
        Y = check_array(f"chunk {j} Y", Y, ndim=3).astype(X.dtype)
        if Y.shape[:2] != X.shape[:2] or (sums is not None and (
                X.shape[::2] != shape[::2] or Y.shape[-1] != sums[1].shape[-2])):
            want = "" if sums is None else f" with T={shape[0]}, d={shape[2]}"
            raise ValueError(f"chunk {j}: X must be (T, n, d) and Y (T, n, p) with the same "
                             f"(T, n){want}, got {tuple(X.shape)} and {tuple(Y.shape)}")
        shape = X.shape
        part = _chunk_sums_jit(X, Y)
        sums = part if sums is None else jax.tree.map(jnp.add, sums, part)
        N += X.shape[1]
    if sums is None:
        raise ValueError("chunks is empty: give at least one (X, Y) pair")
    T, p, d = sums[1].shape
    dt = sums[0].dtype
    if M_star is None:
        M_star = jnp.full((T, p, d), jnp.nan, dt)
    else:
        M_star = jnp.broadcast_to(check_array("M_star", M_star).astype(dt), (T, p, d))
    nan = jnp.full((T,), jnp.nan, dt)
    Sxx, Syx, Syy = (a / N for a in sums)
    return TaskStats(Sxx, Syx, Syy, jnp.full((T,), float(N), dt), M_star, nan)


_chunk_sums_jit = jax.jit(_chunk_sums)


def stats_from_arrays(X, Y, M_star=None) -> TaskStats:
    """Statistics of user data: ``X`` of shape (T, N, d) (or (N, d) for one task) and ``Y`` of
    shape (T, N, p) (or (N, p)); scalar outputs may be given as ``Y`` of shape (T, N) (or (N,)),
    read as p = 1. ``M_star`` (optional): the true (T, p, d) task matrices."""
    X = check_array("X", X)
    Y = check_array("Y", Y)
    if Y.ndim == X.ndim - 1 and Y.shape == X.shape[:-1]:
        Y = Y[..., None]  # scalar outputs
    if X.ndim == 2:
        X, Y = X[None], Y[None] if Y.ndim == 2 else Y
    if X.ndim != 3:
        raise ValueError(f"X must have shape (T, N, d) or (N, d), got {tuple(X.shape)}")
    if Y.ndim != 3 or Y.shape[:2] != X.shape[:2]:
        raise ValueError(f"Y must have shape (T, N, p) with (T, N) = {tuple(X.shape[:2])} as X, "
                         f"got {tuple(Y.shape)}")
    T, N, d = X.shape
    p = Y.shape[-1]
    if M_star is None:
        M_star = jnp.full((T, p, d), jnp.nan, X.dtype)
    else:
        M_star = check_array("M_star", M_star)
        if M_star.shape[-2:] != (p, d):
            raise ValueError(f"M_star must have shape (T={T}, p={p}, d={d}) or ({p}, {d}), "
                             f"got {tuple(M_star.shape)}")
        M_star = jnp.broadcast_to(M_star, (T, p, d))
    nan = jnp.full((T,), jnp.nan, X.dtype)
    return task_statistics(Samples(X, Y.astype(X.dtype), M_star.astype(X.dtype), nan))


def matrix_tasks(M, noise_std=0.0, *, N=None, key=None) -> TaskStats:
    """Statistics of tasks given by arbitrary task matrices ``M`` (T, p, d) (or (p, d), one task):
    the population (``N=None``: ``S_xx = I``, ``S_yx = M_t``, ``S_yy = ||M_t||_F^2 + p sigma^2``)
    or ``N`` fresh samples per task, ``x ~ N(0, I_d)``, ``y = M_t x + eps``,
    ``eps ~ N(0, noise_std^2 I_p)`` (``key`` required). For truths that are not a
    :class:`linmeta.Truth` (any family whose task matrices are computed elsewhere)."""
    M = check_array("M", M)
    if M.ndim == 2:
        M = M[None]
    if M.ndim != 3:
        raise ValueError(f"M must have shape (T, p, d) or (p, d), got {tuple(M.shape)}")
    check_scalar("noise_std", noise_std, 0.0)
    T, p, d = M.shape
    dt = M.dtype if jnp.issubdtype(M.dtype, jnp.floating) else jnp.asarray(0.0).dtype
    M = M.astype(dt)
    sig = jnp.full((T,), noise_std, dt)
    if N is None:
        eye = jnp.broadcast_to(jnp.eye(d, dtype=dt), (T, d, d))
        Syy = jnp.sum(M * M, axis=(-2, -1)) + p * sig ** 2
        return TaskStats(eye, M, Syy, jnp.full((T,), jnp.inf, dt), M, sig)
    N = check_int("N", N, 1)
    if key is None:
        raise ValueError("key is required (a jax.random key) when N is given")
    kx, ke = jax.random.split(key)
    X = jax.random.normal(kx, (T, N, d), dt)
    Y = X @ jnp.swapaxes(M, -1, -2) + sig[:, None, None] * jax.random.normal(ke, (T, N, p), dt)
    return task_statistics(Samples(X, Y, M, sig))
