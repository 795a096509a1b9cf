"""Random streams and the data of a task, drawn without materialising it.

Random streams (documented so that others can regenerate the same draws): the truth key is
``jax.random.key(truth_seed)`` (:func:`truth_key`); the run key is
``fold_in(jax.random.key(seed), RUN_STREAM)``, split into ``(retrain, finetune, init, newton)``
(:func:`run_keys`): the two data streams, the initial factors and the random starts of a solver.

The data of task t (``y = M_t x + eps``, ``x ~ N(0, I_d)``, ``eps ~ N(0, noise_std^2 I)``) reduced
to its sufficient statistics ``(S_xx, S_yx, S_yy)`` (docs/theory.md, the model):

- ``sampler="raw"``: raw Gaussian samples, drawn in blocks of :data:`BLOCK` samples per task and
  reduced inside a ``lax.scan``, so memory is O(BLOCK d) per run, not O(N d). Raw block ``b`` of
  task ``t`` uses ``normal(fold_in(fold_in(key, t), b), (BLOCK, 2, d))`` (x = ``[:, 0]``,
  eps = ``[:, 1]``). :func:`raw_samples` materialises exactly the same samples (for the NumPy
  reference); :func:`normal` is ``jax.random.normal`` with the threefry hash unrolled (bit for bit
  the same numbers).
- ``sampler="wishart"``: the statistics drawn directly, exactly in distribution, in O(d^3) per task
  whatever N (needs N >= d). Bartlett: ``X^T X = L L^T`` with L lower triangular,
  ``L_ii = sqrt(chi2(N - i))`` (i = 0..d-1), ``L_ij ~ N(0, 1)`` below the diagonal. Given X, the
  rows of ``E^T X`` are i.i.d. ``N(0, X^T X)``, so ``E^T X = Z L^T`` with Z standard normal (d x d).
  ``||E||_F^2 = ||P_X E||^2 + ||P_perp E||^2 = ||Z||_F^2 + chi2(d (N - d))`` (independent). Hence
  ``N S_xx = L L^T``, ``N S_yx = M L L^T + s Z L^T`` and
  ``N S_yy = <M L L^T, M> + 2 s <Z L^T, M> + s^2 (||Z||_F^2 + chi2(d(N - d)))``.

The random streams are prefix-stable (threefry draws in JAX's default partitionable mode), so a
zero-padded run draws exactly the numbers of the unpadded one (tested to equality).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .data import TaskStats
from .problem import Truth, sample_truth

__all__ = ["RunKeys", "RUN_STREAM", "BLOCK", "truth_key", "truth_for_seed", "run_keys", "normal",
           "raw_samples", "raw_statistics", "raw_statistics_pair", "wishart_statistics",
           "task_statistics"]

RUN_STREAM = 0x5EED         # folded into the run key: seed == truth_seed never reuses a stream
BLOCK = 512                 # raw samples drawn (and reduced) per block and task


class RunKeys(NamedTuple):
    """The independent random streams of a run (:func:`run_keys`); ``start`` only for
    ``paper_code`` (:func:`code_keys`)."""

    retrain: jax.Array
    finetune: jax.Array
    init: jax.Array
    newton: jax.Array
    start: Any = None



def truth_key(truth_seed):
    return jax.random.key(truth_seed)


def truth_for_seed(truth_seed, d: int, k: int, T: int, dtype=None) -> Truth:
    """The ground truth a configuration with ``truth_seed`` uses (one unseen task)."""
    return sample_truth(truth_key(truth_seed), d, k, T, n_unseen=1, dtype=dtype)


def run_keys(seed) -> RunKeys:
    """The four independent streams of a run: retraining data, fine-tuning data, inits, Newton."""
    base = jax.random.fold_in(jax.random.key(seed), RUN_STREAM)
    return RunKeys(*jax.random.split(base, 4))


def _threefry2x32(k0, k1, x0, x1):
    """The Threefry-2x32 hash (20 rounds), unrolled: the function of JAX's ``threefry2x32``
    primitive, whose CPU lowering rolls the rounds into a loop (smaller code, ~6x slower)."""
    def rotl(x, r):
        return (x << np.uint32(r)) | (x >> np.uint32(32 - r))

    ks = (k0, k1, k0 ^ k1 ^ np.uint32(0x1BD11BDA))
    rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in rotations[i % 2]:
            x0 = x0 + x1
            x1 = rotl(x1, r) ^ x0
        x0, x1 = x0 + ks[(i + 1) % 3], x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def _fast_normal_applies(key, dtype) -> bool:
    return (bool(jax.config.jax_threefry_partitionable)
            and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
            and str(jax.random.key_impl(key)) == "threefry2x32"
            and jnp.dtype(dtype) in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)))


def normal(key, shape, dtype):
    """``jax.random.normal(key, shape, dtype)``, bit for bit (tested), with the hash unrolled:
    JAX's partitionable threefry stream (counter = flat index, split in two 32-bit words), its
    uniform in ``[nextafter(-1, 0), 1)`` from the top mantissa bits and ``sqrt(2) erfinv(u)``.
    Other key implementations, the non-partitionable stream or other dtypes use
    ``jax.random.normal`` itself."""
    shape = tuple(shape)
    size = math.prod(shape)
    if not _fast_normal_applies(key, dtype) or size >= 2 ** 32:
        return jax.random.normal(key, shape, dtype)
    dt = jnp.dtype(dtype)
    kd = jax.random.key_data(key)
    b1, b2 = _threefry2x32(kd[0], kd[1], jnp.zeros(size, jnp.uint32), lax.iota(jnp.uint32, size))
    if dt == jnp.float64:
        bits = (b1.astype(jnp.uint64) << np.uint64(32)) | b2.astype(jnp.uint64)
        nbits, nmant, utype = 64, 52, jnp.uint64
    else:
        bits = b1 ^ b2
        nbits, nmant, utype = 32, 23, jnp.uint32
    one_bits = np.array(1.0, dt).view(np.uint64 if nbits == 64 else np.uint32)
    float_bits = (bits >> utype(nbits - nmant)) | utype(one_bits)
    floats = lax.bitcast_convert_type(float_bits, dt) - dt.type(1.0)
    lo_v = np.nextafter(np.array(-1.0, dt), np.array(0.0, dt), dtype=dt)
    hi_v = np.array(1.0, dt)
    u = lax.max(lo_v, floats * (hi_v - lo_v) + lo_v)
    z = np.array(np.sqrt(2), dt) * lax.erf_inv(u)
    # computed flat (long vectorised loops), then reshaped: without the barrier XLA fuses the
    # reshape and runs the whole computation over the short minor axis of ``shape``
    return lax.optimization_barrier(z).reshape(shape)


def _block_normals(key, t, b, block, d, dtype):
    return jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, t), b), (block, 2, d),
                             dtype)


def raw_samples(key, M, N: int, noise_std, block: int = BLOCK):
    """The raw samples behind :func:`raw_statistics`: ``X``, ``Y`` of shape (T, N, d), rows =
    samples, ``Y = X M^T + noise_std * eps``. Materialises O(T N d) memory (checks, benchmarks)."""
    T, d = M.shape[-3], M.shape[-1]
    blk = min(N, block)
    nb = math.ceil(N / blk)

    def task(t):
        Z = jax.vmap(lambda b: _block_normals(key, t, b, blk, d, M.dtype))(jnp.arange(nb))
        return Z.reshape(nb * blk, 2, d)[:N]

    Z = jax.vmap(task)(jnp.arange(T))  # (T, N, 2, d)
    X, E = Z[:, :, 0], Z[:, :, 1]
    Y = X @ jnp.swapaxes(M, -1, -2) + noise_std * E
    return X, Y


def raw_statistics(key, M, N: int, noise_std, block: int = BLOCK) -> TaskStats:
    """Sufficient statistics of N raw samples per task (``M``: (T, d, d) true task matrices),
    reduced block by block in a ``lax.scan``: the same numbers as
    ``linmeta.task_statistics`` of :func:`raw_samples`, in O(block d) memory."""
    T, d = M.shape[-3], M.shape[-1]
    dt = M.dtype
    blk = min(N, block)
    nb = math.ceil(N / blk)
    ragged = nb * blk != N

    def task(t, Mt):
        def body(carry, b):
            Sxx, Syx, Syy = carry
            Z = _block_normals(key, t, b, blk, d, dt)
            X, E = Z[:, 0], Z[:, 1]
            Y = X @ Mt.T + noise_std * E
            if ragged:
                w = (b * blk + jnp.arange(blk) < N).astype(dt)[:, None]
                Xw, Yw = X * w, Y * w
            else:
                Xw, Yw = X, Y
            return (Sxx + Xw.T @ X, Syx + Yw.T @ X, Syy + jnp.sum(Yw * Y)), None

        zero = jnp.zeros((d, d), dt)
        (Sxx, Syx, Syy), _ = lax.scan(body, (zero, zero, jnp.zeros((), dt)), jnp.arange(nb))
        return Sxx / N, Syx / N, Syy / N

    Sxx, Syx, Syy = jax.vmap(task)(jnp.arange(T), M)
    return TaskStats(Sxx, Syx, Syy, jnp.full((T,), float(N), dt), M,
                     jnp.full((T,), noise_std, dt))


def wishart_statistics(key, M, N: int, noise_std) -> TaskStats:
    """Statistics of N samples per task drawn directly (Bartlett decomposition, see the module
    docstring): exact in distribution, O(d^3) per task. Needs ``N >= d``."""
    T, d = M.shape[-3], M.shape[-1]
    if N < d:
        raise ValueError(f"the wishart sampler needs N >= d; got N={N}, d={d}")
    dt = M.dtype
    s = jnp.asarray(noise_std, dt)

    def task(t, Mt):
        k1, k2, k3, k4 = jax.random.split(jax.random.fold_in(key, t), 4)
        df = (N - jnp.arange(d)).astype(dt)
        diag = jnp.sqrt(jax.random.chisquare(k1, df, (d,), dt))
        L = jnp.tril(jax.random.normal(k2, (d, d), dt), -1) + jnp.diag(diag)
        W = L @ L.T
        Z = jax.random.normal(k3, (d, d), dt)
        EX = Z @ L.T  # E^T X given X
        rest = (jax.random.chisquare(k4, float(d * (N - d)), (), dt) if N > d
                else jnp.zeros((), dt))
        MW = Mt @ W
        Syy = jnp.sum(MW * Mt) + 2 * s * jnp.sum(EX * Mt) + s ** 2 * (jnp.sum(Z * Z) + rest)
        return W / N, (MW + s * EX) / N, Syy / N

    Sxx, Syx, Syy = jax.vmap(task)(jnp.arange(T), M)
    return TaskStats(Sxx, Syx, Syy, jnp.full((T,), float(N), dt), M, jnp.full((T,), s, dt))


def task_statistics(key, M, N: int | None, noise_std, sampler: str = "raw") -> TaskStats:
    """Statistics of the tasks with true matrices ``M`` (T, d, d): population when ``N`` is None."""
    if N is None:
        T, d = M.shape[-3], M.shape[-1]
        dt = M.dtype
        s = jnp.broadcast_to(jnp.asarray(noise_std, dt), (T,))
        eye = jnp.broadcast_to(jnp.eye(d, dtype=dt), M.shape)
        Syy = jnp.sum(M * M, axis=(-2, -1)) + d * s ** 2
        return TaskStats(eye, M, Syy, jnp.full((T,), jnp.inf, dt), M, s)
    if sampler == "wishart":
        return wishart_statistics(key, M, N, noise_std)
    if sampler != "raw":
        raise ValueError(f"sampler must be 'raw' or 'wishart'; got {sampler!r}")
    return raw_statistics(key, M, N, noise_std)


def raw_statistics_pair(key_a, M_a, N_a: int, key_b, M_b, N_b: int, noise_std,
                        block: int = BLOCK) -> tuple[TaskStats, TaskStats]:
    """:func:`raw_statistics` of two streams (retraining and fine-tuning data) in one pass: the
    same samples, drawn by one random-number kernel instead of one per stream.

    Every block of either stream is drawn at the larger block length (a prefix of that draw is
    the stream's own block: the draws are prefix-stable) and masked to its own rows, in one
    ``lax.scan`` over the blocks of both streams (per task in block order, as
    :func:`raw_statistics`). Equal to two calls of :func:`raw_statistics` up to the rounding of
    the masked products (tested)."""
    T_a, T_b, d = M_a.shape[-3], M_b.shape[-3], M_a.shape[-1]
    dt = M_a.dtype
    blks = (min(N_a, block), min(N_b, block))
    nbs = (math.ceil(N_a / blks[0]), math.ceil(N_b / blks[1]))
    blk = max(blks)
    # the flat list of blocks: (stream, task, block index), tasks numbered across both streams
    stream = [0] * (T_a * nbs[0]) + [1] * (T_b * nbs[1])
    task = [t for t in range(T_a) for _ in range(nbs[0])] + \
        [t for t in range(T_b) for _ in range(nbs[1])]
    index = [b for _ in range(T_a) for b in range(nbs[0])] + \
        [b for _ in range(T_b) for b in range(nbs[1])]
    slot = [t + (T_a if s else 0) for s, t in zip(stream, task)]
    rows = [min(blks[s], (N_a, N_b)[s] - b * blks[s]) for s, b in zip(stream, index)]
    keys = jnp.stack([key_a, key_b])[jnp.asarray(stream)]
    block_keys = jax.vmap(lambda k, t, b: jax.random.fold_in(jax.random.fold_in(k, t), b))(
        keys, jnp.asarray(task), jnp.asarray(index))
    M_all = jnp.concatenate([M_a, M_b])
    masked = any(r != blk for r in rows)
    s = jnp.asarray(noise_std, dt)

    # per task: X^T X, E^T X and ||E||^2 summed over its blocks; then, with Y = X M^T + s E,
    # Y^T X = M X^T X + s E^T X and ||Y||^2 = <M X^T X, M> + 2 s <E^T X, M> + s^2 ||E||^2
    def body(carry, x):
        XX, EX, EE = carry
        bkey, j, n_rows = x
        Z = normal(bkey, (blk, 2, d), dt)
        if masked:
            Z = Z * (jnp.arange(blk) < n_rows).astype(dt)[:, None, None]
        X, E = Z[:, 0], Z[:, 1]
        W = Z.reshape(blk, 2 * d).T @ X  # [X^T X; E^T X]
        return (XX.at[j].add(W[:d]), EX.at[j].add(W[d:]), EE.at[j].add(jnp.sum(E * E))), None

    n_all = T_a + T_b
    zero = (jnp.zeros((n_all, d, d), dt), jnp.zeros((n_all, d, d), dt), jnp.zeros((n_all,), dt))
    (XX, EX, EE), _ = lax.scan(body, zero, (block_keys, jnp.asarray(slot), jnp.asarray(rows)))
    MXX = M_all @ XX
    Sxx = XX
    Syx = MXX + s * EX
    Syy = jnp.sum(MXX * M_all, axis=(-2, -1)) + 2 * s * jnp.sum(EX * M_all, axis=(-2, -1)) \
        + s ** 2 * EE

    def stats(lo, hi, M, N):
        n = hi - lo
        return TaskStats(Sxx[lo:hi] / N, Syx[lo:hi] / N, Syy[lo:hi] / N,
                         jnp.full((n,), float(N), dt), M, jnp.full((n,), noise_std, dt))

    return stats(0, T_a, M_a, N_a), stats(T_a, n_all, M_b, N_b)


def take_prefix(z, start, rows: int, cols: int, n_cols, count: int):
    """``count`` blocks of (rows, n_cols) entries of the flat ``z`` from offset ``start`` (traced),
    laid out row-major with ``n_cols`` (traced, <= cols) columns, zero-padded to (count, rows,
    cols)."""
    q = jnp.arange(count)[:, None, None]
    i = jnp.arange(rows)[None, :, None]
    c = jnp.arange(cols)[None, None, :]
    idx = start + (q * rows + i) * n_cols + c
    return jnp.where(c < n_cols, jnp.take(z, jnp.where(c < n_cols, idx, 0)), 0)
