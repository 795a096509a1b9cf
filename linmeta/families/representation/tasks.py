"""Task data of the shared-representation model as the core's statistics (p = 1 output).

Task t's loss of a predictor ``v`` (d,) is the core's quadratic (:mod:`linmeta.core.data`) with p = 1,
``M = v^T``:

    L_t(v) = 1/(2n) sum_i (y_i - <x_i, v>)^2 = 1/2 v^T S_xx v - <s_t, v> + 1/2 S_yy,
    s_t = S_yx[t, 0],

so :class:`linmeta.TaskStats` with ``Syx`` of shape (T, 1, d) carries it, and
:func:`linmeta.core.data.task_statistics` reduces raw samples to it. In the population (n -> infinity,
x ~ N(0, I)) ``S_xx = I``, ``s_t = beta_t``, ``S_yy = ||beta_t||^2 + sigma^2``.

The method of moments needs the fourth-order statistic ``(1/(nT)) sum_{t,i} y_ti^2 x_ti x_ti^T``
(:func:`moment_matrix`), which ``TaskStats`` does not hold: it is computed from raw samples;
:func:`nested_moment_matrices` gives it for nested prefixes (first T tasks, first n samples) of one
draw at the cost of one pass (cumulative sums).
Its expectation is ``(sigma^2 + mean_t ||beta_t||^2) I + 2 mean_t beta_t beta_t^T``
(:func:`linmeta.families.representation.theory.moment_expectation`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from linmeta.core._validate import check_array, check_choice, check_int, check_scalar, is_concrete
from linmeta.core.data import Samples, TaskStats, task_statistics
from .truth import RepTruth

__all__ = ["task_betas", "population", "population_from_betas", "draw_samples",
           "samples_from_betas", "sample_tasks", "moment_matrix", "nested_moment_matrices"]


def task_betas(truth: RepTruth, tasks: str = "source") -> jax.Array:
    """(T, d) source (``tasks="source"``) or (m, d) target (``"target"``) task parameters."""
    check_choice("tasks", tasks, ("source", "target"))
    if not isinstance(truth, RepTruth):
        raise ValueError(f"truth must be a linmeta.representation.RepTruth, got "
                         f"{type(truth).__name__}")
    betas = truth.betas if tasks == "source" else truth.target_betas
    if betas.shape[-2] == 0:
        raise ValueError("tasks='target' needs a truth with target tasks (target_heads of shape "
                         "(m, k), m >= 1)")
    return betas


def _check_betas(betas):
    betas = check_array("betas", betas)
    if betas.ndim != 2 or betas.shape[0] < 1 or betas.shape[1] < 1:
        raise ValueError(f"betas must have shape (T, d) with T, d >= 1, got {tuple(betas.shape)}")
    return betas


def population_from_betas(betas, noise_std=0.0) -> TaskStats:
    """Population statistics (p = 1) of tasks with parameters ``betas`` (T, d)."""
    betas = _check_betas(betas)
    check_scalar("noise_std", noise_std, 0.0)
    T, d = betas.shape
    dt = betas.dtype
    sig = jnp.broadcast_to(jnp.asarray(noise_std, dt), (T,))
    eye = jnp.broadcast_to(jnp.eye(d, dtype=dt), (T, d, d))
    M = betas[:, None, :]
    return TaskStats(eye, M, jnp.sum(betas * betas, axis=-1) + sig ** 2,
                     jnp.full((T,), jnp.inf, dt), M, sig)


def population(truth: RepTruth, noise_std=0.0, *, tasks: str = "source") -> TaskStats:
    """Exact population statistics of the source or target tasks of ``truth``."""
    return population_from_betas(task_betas(truth, tasks), noise_std)


def samples_from_betas(key, betas, n, noise_std) -> Samples:
    """n samples per task: ``x ~ N(0, I_d)``, ``y = <x, beta_t> + eps``,
    ``eps ~ N(0, noise_std^2)``; ``X`` (T, n, d), ``Y`` (T, n, 1) (one ``jax.random.normal``
    call)."""
    betas = _check_betas(betas)
    n = check_int("n", n, 1)
    check_scalar("noise_std", noise_std, 0.0)
    T, d = betas.shape
    dt = betas.dtype
    Z = jax.random.normal(key, (T, n, d + 1), dt)
    X, E = Z[..., :d], Z[..., d:]
    sig = jnp.asarray(noise_std, dt)
    Y = jnp.einsum("tnd,td->tn", X, betas)[..., None] + sig * E
    return Samples(X, Y, betas[:, None, :], jnp.full((T,), sig))


def draw_samples(key, truth: RepTruth, n, noise_std, *, tasks: str = "source") -> Samples:
    """Raw samples of the source or target tasks of ``truth`` (see :func:`samples_from_betas`)."""
    return samples_from_betas(key, task_betas(truth, tasks), n, noise_std)


def sample_tasks(key, truth: RepTruth, n, noise_std, *, tasks: str = "source") -> TaskStats:
    """Finite-sample statistics (p = 1) of n fresh samples per task."""
    return task_statistics(draw_samples(key, truth, n, noise_std, tasks=tasks))


def moment_matrix(samples: Samples) -> jax.Array:
    """``(1/(n T)) sum_{t,i} y_ti^2 x_ti x_ti^T`` (d, d) from raw scalar-output samples."""
    if not isinstance(samples, Samples):
        raise ValueError(f"samples must be linmeta.Samples (raw samples; TaskStats do not hold "
                         f"the fourth moments), got {type(samples).__name__}")
    X, Y = samples.X, samples.Y
    if Y.ndim != 3 or Y.shape[-1] != 1:
        raise ValueError(f"samples.Y must have shape (T, n, 1) (scalar outputs), got "
                         f"{tuple(Y.shape)}")
    if is_concrete(X):
        check_array("samples.X", X)
        check_array("samples.Y", Y)
    T, n = X.shape[0], X.shape[1]
    Xw = X * Y  # y x
    return jnp.einsum("tni,tnj->ij", Xw, Xw) / (n * T)


def _check_scalar_samples(samples):
    if not isinstance(samples, Samples):
        raise ValueError(f"samples must be linmeta.Samples (raw samples; TaskStats do not hold "
                         f"the fourth moments), got {type(samples).__name__}")
    if samples.Y.ndim != 3 or samples.Y.shape[-1] != 1:
        raise ValueError(f"samples.Y must have shape (T, n, 1) (scalar outputs), got "
                         f"{tuple(samples.Y.shape)}")
    return samples


def nested_moment_matrices(samples: Samples, ns, Ts) -> jax.Array:
    """:func:`moment_matrix` of nested prefixes of one draw: entry ``[i, j]`` is
    ``(1/(n_i T_j)) sum_{t < T_j, m < n_i} y_tm^2 x_tm x_tm^T`` (the first ``T_j`` tasks, the first
    ``n_i`` samples of each), shape (len(ns), len(Ts), d, d). One pass over the samples: per-task
    sums over the blocks between consecutive n, then cumulative sums over blocks and tasks.
    ``ns`` and ``Ts``: increasing integers, at most the draw's n and T."""
    _check_scalar_samples(samples)
    X, Y = samples.X, samples.Y
    T, n = X.shape[0], X.shape[1]
    ns, Ts = tuple(int(v) for v in ns), tuple(int(v) for v in Ts)
    for name, vals, hi in (("ns", ns, n), ("Ts", Ts, T)):
        if not vals or any(b <= a for a, b in zip(vals, vals[1:])) or vals[0] < 1 or vals[-1] > hi:
            raise ValueError(f"{name} must be increasing integers in [1, {hi}], got {vals}")
    Xw = X * Y  # y x
    edges = (0,) + ns
    blocks = jnp.stack([jnp.einsum("tni,tnj->tij", Xw[:, a:b], Xw[:, a:b])
                        for a, b in zip(edges[:-1], edges[1:])], axis=1)  # (T, len(ns), d, d)
    sums = jnp.cumsum(jnp.cumsum(blocks, axis=1), axis=0)[jnp.asarray(Ts) - 1]  # (nT, nn, d, d)
    counts = jnp.asarray(ns, X.dtype)[:, None] * jnp.asarray(Ts, X.dtype)[None, :]
    return jnp.swapaxes(sums, 0, 1) / counts[:, :, None, None]
