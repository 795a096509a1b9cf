"""The paper's synthetic linear protocol for one configuration (THEORY.md sections 4 and 6).

One run, as in the paper's code (``jacob-block/peft-ml``, folder ``linear/``):

1. Ground truth ``A*`` (d x d, symmetrised Gaussian), ``U*_t`` (T x d x k) and one unseen task
   ``U_new``: ``linmeta.sample_truth(truth_key(truth_seed), d, k, T, n_unseen=1)``, fixed across
   runs (the runs differ in data and initialisation).
2. Retraining data: N samples per task, ``x ~ N(0, I_d)``, ``y = M*_t x + eps``,
   ``eps ~ N(0, noise_std^2 I)``. The paper's code draws the noise with standard deviation
   ``sigma^2 = 0.01`` (sigma = 0.1); ``noise_std`` is the standard deviation actually used.
   ``N = None`` is the population (``S_xx = I``, ``S_yx = M*_t``).
3. Meta-LoRA (claims C3-C5): the paper's alternating protocol (``outer_steps`` iterations of
   ``inner_steps`` adapter steps with ``lr_adapter`` then one base step with ``lr_base``, from
   ``A = 0``, ``U_t ~ N(0, init_scale^2)``), or ``"newton"`` (global minimiser, 8 starts).
4. Standard retraining (SR): ``sr_steps`` gradient steps of size ``sr_lr`` from ``A = 0``.
5. Fine-tuning (C2, C6): n fresh samples of the unseen task; both bases are fine-tuned with an
   asymmetric rank-``ft_rank`` adapter ``U V^T`` by ``ft_steps`` gradient steps of size ``ft_lr``
   on the *same* n samples. The recorded "test task loss" is the paper's
   ``sum_i ||(M - M*) x_i||^2`` over the n fine-tuning inputs
   (:func:`linmeta.losses.paper_test_loss`); the excess risk is the population one,
   ``||M - M*||_F^2``, to compare with ``sigma^2 dof / n`` (C6) and, for SR, with the rank-r
   Eckart-Young bias of ``U_new U_new^T - Rbar`` (C2).

Two variants (``variant=``), which differ only in steps 4 and 5:

- ``"clean"`` (the default, registered as protocol ``"paper"``): SR is gradient descent on
  ``(1/T) sum_t L_t(A)``, ``A <- A - sr_lr (1/T) sum_t (A S_xx,t - S_yx,t)``, converging to pooled
  least squares ``(sum_t S_yx,t)(sum_t S_xx,t)^{-1}`` (claim C1); both bases are fine-tuned from
  the *same* ``U, V ~ N(0, init_scale^2)``, drawn per run.
- ``"paper_code"`` (protocol ``"paper_code"``): what the official code does (``linear/run.py``,
  ``linear/learners.py``). Its SR learner is a ``MetaLearner`` on the pooled data whose T random
  adapters ``U_t ~ N(0, 0.1^2)`` are never trained but enter its gradient
  ``sum_t ((A + U_t U_t^T) X - Y) X^T / (N T)`` over the pooled ``X`` (T N samples). With
  ``Sbar = (1/T) sum_t S_xx,t``, ``Ybar = (1/T) sum_t S_yx,t`` and ``Ubar = (1/T) sum_t U_t U_t^T``
  that step is

      A <- A - sr_lr T [(A + Ubar) Sbar - Ybar],

  T times the clean step and shifted, so SR converges to pooled least squares minus ``Ubar``. The
  Meta-LoRA base is fine-tuned from one start ``start_Us``, ``start_Vs`` drawn once and reused
  across runs (here: from ``truth_seed``, :func:`fixed_start`), the SR base from fresh draws
  (here: the run's ``U, V``). Meta-LoRA retraining and all data are those of the clean variant.

Every step is the update of the core's step functions (:func:`linmeta.retrain.alternating_step`,
:func:`linmeta.retrain.sr_gradient_step`, :func:`linmeta.finetune.finetune_gd_step`), rearranged
so that what stays fixed over many steps is computed once (exact in exact arithmetic; tests check
equality with :func:`linmeta.meta_lora`, :func:`linmeta.standard_retraining`,
:func:`linmeta.finetune`
and with the NumPy loops of :mod:`linmeta.reference`):

- Meta-LoRA adapter steps, base A fixed: ``G_t = (A + U_t U_t^T) S_t - Y_t = C_t + U_t (U_t^T S_t)``
  with ``C_t = A S_t - Y_t`` formed once per outer iteration: O(d^2 k) per adapter step instead of
  O(d^3).
- SR: ``(1/T) sum_t (A S_t - Y_t) = (A sum_t S_t - sum_t Y_t) / T``: one product per step.
- Fine-tuning, base frozen: ``G = C + U (V^T S)`` with ``C = A S - Y`` formed once.

Products of small matrices inside the loops (contraction length <= :data:`UNROLL`) are written
out as sums of rank-1 terms (:func:`_mm`): XLA:CPU fuses them into one elementwise loop over the
batch, several times faster than a batch of tiny matrix products. The raw data of both streams
are drawn in one pass (:func:`raw_statistics_pair`) by :func:`normal`, ``jax.random.normal``
with the threefry hash unrolled (bit for bit the same numbers).

Padding (for one compiled program across T): ``Hyper.n_tasks`` and ``Hyper.rank`` (traced integers)
may be smaller than ``Shape.T`` and ``Shape.ft_rank``. Tasks ``t >= n_tasks`` get zero statistics,
zero adapters and drop out of every mean (divided by ``n_tasks``); adapter columns ``>= rank`` start
at zero and stay there (their gradient is zero). The random streams are prefix-stable (threefry
draws in JAX's default partitionable mode), so a padded run draws exactly the numbers of the
unpadded one (tested to equality).

The rest of the module: random streams, the least-squares solution behind both excess objectives
computed once without LAPACK (:func:`ols_solution`), and a memory-bounded way to draw the data:

- ``sampler="raw"``: raw Gaussian samples, drawn in blocks of :data:`BLOCK` samples per task and
  reduced to ``(S_xx, S_yx, S_yy)`` inside a ``lax.scan``, so memory is O(BLOCK d) per run, not
  O(N d). :func:`raw_samples` materialises exactly the same samples (for the NumPy reference).
- ``sampler="wishart"``: the statistics drawn directly, exactly in distribution, in O(d^3) per task
  whatever N (needs N >= d). Bartlett: ``X^T X = L L^T`` with L lower triangular,
  ``L_ii = sqrt(chi2(N - i))`` (i = 0..d-1), ``L_ij ~ N(0, 1)`` below the diagonal. Given X, the
  rows of ``E^T X`` are i.i.d. ``N(0, X^T X)``, so ``E^T X = Z L^T`` with Z standard normal (d x d).
  ``||E||_F^2 = ||P_X E||^2 + ||P_perp E||^2 = ||Z||_F^2 + chi2(d (N - d))`` (independent). Hence
  ``N S_xx = L L^T``, ``N S_yx = M L L^T + s Z L^T`` and
  ``N S_yy = <M L L^T, M> + 2 s <Z L^T, M> + s^2 (||Z||_F^2 + chi2(d(N - d)))``.

Random streams (documented so that others can regenerate the same draws): the truth key is
``jax.random.key(truth_seed)``; the run key is ``fold_in(jax.random.key(seed), RUN_STREAM)``, split
into ``(retrain, finetune, init, newton)`` (:func:`run_keys`): the two data streams, the initial
factors (:func:`initial_factors`) and the Newton solver's random starts. Raw block ``b`` of task
``t`` uses ``normal(fold_in(fold_in(key, t), b), (BLOCK, 2, d))`` (x = ``[:, 0]``,
eps = ``[:, 1]``). ``paper_code`` adds the SR adapters, ``init_scale * normal(fold_in(init,
SR_ADAPTER_STREAM), (T d k,))`` reshaped to (T, d, k) (:func:`sr_adapters`), and the fixed
fine-tuning start from ``fold_in(truth key, START_STREAM)`` (:func:`fixed_start`).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import losses, metrics, theory
from .data import TaskStats
from .problem import Truth, sample_truth
from .retrain import meta_lora, run_steps

__all__ = ["Shape", "Hyper", "RunKeys", "Outcome", "RUN_STREAM", "SR_ADAPTER_STREAM",
           "START_STREAM", "BLOCK", "VARIANTS", "truth_key", "truth_for_seed", "run_keys",
           "code_keys", "raw_samples", "raw_statistics", "raw_statistics_pair",
           "wishart_statistics", "task_statistics",
           "initial_factors", "sr_adapters", "fixed_start", "theory_sr_bias", "run_protocol",
           "meta_lora_alternating", "sr_retraining", "finetune_both", "psd_pinv", "ols_solution",
           "excess_objective", "resolve_ft_rank"]

RUN_STREAM = 0x5EED         # folded into the run key: seed == truth_seed never reuses a stream
SR_ADAPTER_STREAM = 0x5A    # folded into the init key: paper_code's untrained SR adapters
START_STREAM = 0x57A7       # folded into the truth key: paper_code's fixed fine-tuning start
BLOCK = 512                 # raw samples drawn (and reduced) per block and task
VARIANTS = ("clean", "paper_code")


class Shape(NamedTuple):
    """The static part of a configuration: everything that sets array shapes or loop lengths.

    ``N``/``n`` are ``None`` for the population. ``m`` is the number of unseen tasks fine-tuned.
    ``T`` and ``ft_rank`` are the sizes of the program; a run may use fewer (``Hyper.n_tasks``,
    ``Hyper.rank``).
    """

    d: int
    k: int
    T: int
    N: int | None
    n: int | None
    m: int
    ft_rank: int
    ml_solver: str
    outer_steps: int
    inner_steps: int
    sr_steps: int
    ft_steps: int
    record_every: int
    sampler: str


class Hyper(NamedTuple):
    """The traced part of a configuration (arrays; one value per run when batched).

    ``n_tasks``/``rank``: tasks and fine-tuning rank this run uses when the program is padded to
    ``Shape.T``/``Shape.ft_rank`` (integers; ``None``: all of them).
    """

    noise_std: jax.Array
    lr_adapter: jax.Array
    lr_base: jax.Array
    sr_lr: jax.Array
    ft_lr: jax.Array
    init_scale: jax.Array
    n_tasks: Any = None
    rank: Any = None


class RunKeys(NamedTuple):
    """The independent random streams of a run (:func:`run_keys`); ``start`` only for
    ``paper_code`` (:func:`code_keys`)."""

    retrain: jax.Array
    finetune: jax.Array
    init: jax.Array
    newton: jax.Array
    start: Any = None


class Outcome(NamedTuple):
    """Arrays of one run (scalars and strided trajectories; see :func:`run_protocol`).

    The ``*_diverged`` flags here say that a stage's state or record is not finite; the sweep adds
    the blow-up test of :mod:`linmeta.divergence` on the trajectories."""

    ml_base_error: jax.Array
    ml_base_rel_error: jax.Array
    sr_base_error: jax.Array
    sr_base_rel_error: jax.Array
    ml_objective: jax.Array
    sr_objective: jax.Array
    ml_ft_test_loss: jax.Array
    sr_ft_test_loss: jax.Array
    ml_ft_excess_risk: jax.Array
    sr_ft_excess_risk: jax.Array
    theory_sr_bias: jax.Array
    ml_diverged: jax.Array
    sr_diverged: jax.Array
    ft_diverged: jax.Array
    ml_objective_traj: jax.Array   # (n_outer_records,) or Newton iterations
    sr_objective_traj: jax.Array   # (n_sr_records,)
    ml_ft_traj: jax.Array          # (n_ft_records,) paper test loss, mean over unseen tasks
    sr_ft_traj: jax.Array


def resolve_ft_rank(ft_rank: int, k: int, T: int, d: int) -> int:
    """``ft_rank`` if positive, else k (``min(3k, d)`` when T == 2, as the paper; claim C4)."""
    if ft_rank > 0:
        return ft_rank
    return min(3 * k, d) if T == 2 else k


# --------------------------------------------------------------------------------------------
# Random streams
# --------------------------------------------------------------------------------------------

def truth_key(truth_seed):
    return jax.random.key(truth_seed)


def truth_for_seed(truth_seed, d: int, k: int, T: int, dtype=None) -> Truth:
    """The ground truth a configuration with ``truth_seed`` uses (one unseen task)."""
    return sample_truth(truth_key(truth_seed), d, k, T, n_unseen=1, dtype=dtype)


def run_keys(seed) -> RunKeys:
    """The four independent streams of a run: retraining data, fine-tuning data, inits, Newton."""
    base = jax.random.fold_in(jax.random.key(seed), RUN_STREAM)
    return RunKeys(*jax.random.split(base, 4))


def code_keys(seed, truth_seed) -> RunKeys:
    """:func:`run_keys` plus ``start``, the key of ``paper_code``'s fixed fine-tuning start: a
    function of ``truth_seed`` only, so every run of a truth starts Meta-LoRA's fine-tuning from
    the same factors (as the official code's ``start_Us``/``start_Vs``)."""
    return run_keys(seed)._replace(start=jax.random.fold_in(truth_key(truth_seed), START_STREAM))


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


def _take_prefix(z, start, rows: int, cols: int, n_cols, count: int):
    """``count`` blocks of (rows, n_cols) entries of the flat ``z`` from offset ``start`` (traced),
    laid out row-major with ``n_cols`` (traced, <= cols) columns, zero-padded to (count, rows,
    cols)."""
    q = jnp.arange(count)[:, None, None]
    i = jnp.arange(rows)[None, :, None]
    c = jnp.arange(cols)[None, None, :]
    idx = start + (q * rows + i) * n_cols + c
    return jnp.where(c < n_cols, jnp.take(z, jnp.where(c < n_cols, idx, 0)), 0)


def initial_factors(keys: RunKeys, shape, init_scale, dtype, n_tasks=None, rank=None):
    """``U0`` (T, d, k) of Meta-LoRA and the shared fine-tuning factors ``(U, V)``
    (m, d, ft_rank), all i.i.d. ``N(0, init_scale^2)``: one draw ``normal(keys.init, (L,))``
    cut in that order (one random-number kernel instead of three).

    With ``n_tasks``/``rank`` (traced, at most ``shape.T``/``shape.ft_rank``) the factors of that
    smaller run, zero-padded to the shape's sizes: the same numbers (the draw is prefix-stable)."""
    d, k, T, m, r = shape.d, shape.k, shape.T, shape.m, shape.ft_rank
    sizes = (T * d * k, m * d * r, m * d * r)
    z = jax.random.normal(keys.init, (sum(sizes),), dtype) * init_scale
    if n_tasks is None and rank is None:
        U0 = z[:sizes[0]].reshape(T, d, k)
        Uf = z[sizes[0]:sizes[0] + sizes[1]].reshape(m, d, r)
        Vf = z[sizes[0] + sizes[1]:].reshape(m, d, r)
        return U0, Uf, Vf
    n_tasks = T if n_tasks is None else n_tasks
    rank = r if rank is None else rank
    U0 = z[:sizes[0]].reshape(T, d, k) * (jnp.arange(T) < n_tasks)[:, None, None]
    off = n_tasks * d * k
    Uf = _take_prefix(z, off, d, r, rank, m)
    Vf = _take_prefix(z, off + m * d * rank, d, r, rank, m)
    return U0, Uf, Vf


def sr_adapters(keys: RunKeys, shape, init_scale, dtype, n_tasks=None):
    """``paper_code``'s untrained SR adapters ``U_t`` (T, d, k), i.i.d. ``N(0, init_scale^2)``
    (tasks ``>= n_tasks`` zero)."""
    d, k, T = shape.d, shape.k, shape.T
    key = jax.random.fold_in(keys.init, SR_ADAPTER_STREAM)
    U = (jax.random.normal(key, (T * d * k,), dtype) * init_scale).reshape(T, d, k)
    if n_tasks is not None:
        U = U * (jnp.arange(T) < n_tasks)[:, None, None]
    return U


def fixed_start(key, m: int, d: int, r: int, init_scale, dtype, rank=None):
    """``paper_code``'s fixed fine-tuning start ``(U, V)`` (m, d, r), i.i.d. ``N(0,
    init_scale^2)``: row i of task q's U is ``normal(fold_in(fold_in(ku, q), i), (r,))`` with
    ``ku, kv = split(key)`` (V likewise), so the start for (d, r) is the top-left block of the start
    for any larger (d', r'), as the official code slices one ``start_Us`` for every panel value."""
    ku, kv = jax.random.split(key)

    def draw(kk):
        def row(q, i):
            return jax.random.normal(jax.random.fold_in(jax.random.fold_in(kk, q), i), (r,),
                                     dtype)
        return jax.vmap(lambda q: jax.vmap(lambda i: row(q, i))(jnp.arange(d)))(jnp.arange(m))

    both = jax.vmap(draw)(jnp.stack([ku, kv])) * init_scale
    if rank is not None:
        both = both * (jnp.arange(r) < rank)
    return both[0], both[1]


def theory_sr_bias(truth: Truth, rank, n_tasks=None):
    """Mean over unseen tasks of the rank-``rank`` Eckart-Young bias of the population SR
    residual ``U_new U_new^T - Rbar`` (claim C2). With ``n_tasks`` (traced) only the first
    ``n_tasks`` tasks of ``truth`` count (a zero-padded truth), and ``rank`` may be traced."""
    if n_tasks is None and isinstance(rank, int):
        return jnp.mean(theory.lora_bias(theory.sr_residual(truth.U_star, truth.U_new), rank))
    T = truth.U_star.shape[-3]
    n_tasks = T if n_tasks is None else n_tasks
    R = truth.U_star @ jnp.swapaxes(truth.U_star, -1, -2)
    Rbar = jnp.sum(R * (jnp.arange(T) < n_tasks)[:, None, None], axis=0) / n_tasks
    residual = truth.U_new @ jnp.swapaxes(truth.U_new, -1, -2) - Rbar
    s = jnp.linalg.svd(residual, compute_uv=False)  # decreasing
    return jnp.mean(jnp.sum(jnp.where(jnp.arange(s.shape[-1]) >= rank, s ** 2, 0), axis=-1))


# --------------------------------------------------------------------------------------------
# Least squares and objectives
# --------------------------------------------------------------------------------------------

def psd_pinv(S, iterations: int = 64):
    """Pseudo-inverse of symmetric PSD matrices (..., d, d) by the Newton-Schulz iteration
    ``X <- X (2 I - S X)`` from ``X0 = S / ||S||_inf^2`` (matrix products only, no LAPACK).

    In the eigenbasis each eigenvalue's residual ``1 - lambda x`` squares every step, starting from
    ``1 - (lambda / ||S||_inf)^2``; zero eigenvalues stay at zero, so the limit is ``S^+``. 64 steps
    reach machine precision for condition numbers up to about ``1 / sqrt(eps)`` (1e8 in float64).
    Used by the sweep because XLA:CPU in jax 0.10 was seen to deadlock when several host devices
    run LAPACK calls concurrently; it agrees with ``jnp.linalg.pinv`` to rounding on the sample
    covariances of the protocol (tested).
    """
    d = S.shape[-1]
    eye = jnp.eye(d, dtype=S.dtype)
    norm = jnp.max(jnp.sum(jnp.abs(S), axis=-1), axis=-1)[..., None, None]
    X = S / jnp.where(norm > 0, norm, 1.0) ** 2

    def step(X, _):
        return X @ (2 * eye - S @ X), None

    return lax.scan(step, X, None, length=iterations)[0]


def ols_solution(stats: TaskStats, N: int | None):
    """The unconstrained minimiser ``S_yx S_xx^+`` of each task's loss, LAPACK-free, or ``None``
    when ``N <= d`` (then least squares interpolates the samples and ``min L_t = 0``).

    Population (``N`` None): ``S_xx = I``, so it is ``S_yx``. ``N > d``: ``S_yx`` times
    :func:`psd_pinv` of ``S_xx`` (nonsingular with probability one). The same quantity as
    :func:`linmeta.losses.ols_solution`.
    """
    if N is None:
        return stats.Syx
    if N <= stats.Sxx.shape[-1]:
        return None
    return stats.Syx @ psd_pinv(stats.Sxx)


def _task_mean(x, n_tasks):
    """Mean over the last (task) axis; with ``n_tasks``, of a zero-padded axis."""
    return jnp.mean(x, axis=-1) if n_tasks is None else jnp.sum(x, axis=-1) / n_tasks


def excess_objective(M, stats: TaskStats, B, n_tasks=None):
    """``(1/T) sum_t [L_t(M_t) - min L_t]``: the sum of squares ``1/2 tr((M - B) S_xx (M - B)^T)``
    with ``B`` from :func:`ols_solution`, or ``L_t`` itself when ``B`` is None (``N <= d``).
    ``n_tasks``: tasks beyond it have zero statistics and are left out of the mean."""
    if B is None:
        return _task_mean(losses.task_loss(M, stats), n_tasks)
    return _task_mean(losses.excess_loss(M, stats, B), n_tasks)


def _T(x):
    return jnp.swapaxes(x, -1, -2)


UNROLL = 16   # contractions up to this length are written out as sums of products


def _mm(a, b):
    """``a @ b`` for small matrices: for a contraction of length <= :data:`UNROLL`, the sum of
    its rank-1 terms (XLA:CPU fuses it into one elementwise loop, several times faster than a
    batch of tiny matrix products); otherwise ``a @ b``."""
    n = a.shape[-1]
    if n > UNROLL:
        return a @ b
    out = a[..., :, 0:1] * b[..., 0:1, :]
    for l in range(1, n):
        out = out + a[..., :, l:l + 1] * b[..., l:l + 1, :]
    return out


def _all_finite(*xs):
    ok = jnp.asarray(True)
    for x in xs:
        ok = ok & jnp.all(jnp.isfinite(x))
    return ok


# --------------------------------------------------------------------------------------------
# The stages (fused updates)
# --------------------------------------------------------------------------------------------

def meta_lora_alternating(stats: TaskStats, U0, lr_adapter, lr_base, *, outer_steps: int,
                          inner_steps: int, record_every: int, B=None, n_tasks=None):
    """The paper's alternating Meta-LoRA protocol from ``A = 0``: the updates of
    :func:`linmeta.retrain.alternating_step` with ``C_t = A S_t - Y_t`` formed once per outer
    iteration. Returns ``(A, U, history)``; the history records the excess objective."""
    S, Y = stats.Sxx, stats.Syx
    d = S.shape[-1]
    A0 = jnp.zeros((d, d), S.dtype)

    def outer(state):
        A, U = state
        C = _mm(A, S) - Y

        def inner(U, _):
            G = C + _mm(U, _mm(_T(U), S))
            return U - lr_adapter * _mm(G + _T(G), U), None

        U = lax.scan(inner, U, None, length=inner_steps)[0]
        G = C + _mm(U, _mm(_T(U), S))
        return A - lr_base * _task_mean_matrices(G, n_tasks), U

    def record(state):
        return excess_objective(state[0] + state[1] @ _T(state[1]), stats, B, n_tasks)

    (A, U), hist = run_steps(outer, (A0, U0), outer_steps, record_every, record)
    return A, U, hist


def _task_mean_matrices(G, n_tasks):
    return jnp.mean(G, axis=-3) if n_tasks is None else jnp.sum(G, axis=-3) / n_tasks


def sr_retraining(stats: TaskStats, lr, *, steps: int, record_every: int, B=None, n_tasks=None,
                  adapters=None):
    """Standard retraining by gradient descent from ``A = 0``; returns ``(A, history)``.

    ``adapters=None`` (clean): ``A <- A - lr (A sum_t S_t - sum_t Y_t) / T``, the update of
    :func:`linmeta.retrain.sr_gradient_step`. ``adapters`` = the untrained ``U_t`` (T, d, k) of the
    official code (``paper_code``): ``A <- A - lr [(A + Ubar) sum_t S_t - sum_t Y_t]`` with
    ``Ubar = (1/T) sum_t U_t U_t^T`` (module docstring); fixed point
    ``(sum_t Y_t)(sum_t S_t)^{-1} - Ubar``."""
    S_sum = jnp.sum(stats.Sxx, axis=-3)
    Y_sum = jnp.sum(stats.Syx, axis=-3)
    T = stats.Sxx.shape[-3]
    n = T if n_tasks is None else n_tasks
    if adapters is None:
        def step(A):
            return A - lr * ((_mm(A, S_sum) - Y_sum) / n)
    else:
        U_bar = jnp.sum(adapters @ _T(adapters), axis=-3) / n
        Y_shift = Y_sum - U_bar @ S_sum

        def step(A):
            return A - lr * (_mm(A, S_sum) - Y_shift)

    A0 = jnp.zeros(S_sum.shape, S_sum.dtype)
    return run_steps(step, A0, steps, record_every,
                     lambda a: excess_objective(a, stats, B, n_tasks))


def finetune_both(bases, stats: TaskStats, U0, V0, lr, *, steps: int, record_every: int):
    """Gradient-descent fine-tuning of several frozen bases (b, 1, d, d) on the unseen tasks of
    ``stats`` (m tasks) from factors ``U0, V0`` (b, m, d, r): the update of
    :func:`linmeta.finetune.finetune_gd_step`, ``G = (A + U V^T) S - Y = C + U (V^T S)`` with
    ``C = A S - Y`` formed once. Returns ``((U, V), history)`` of the paper test loss (b,), mean
    over the unseen tasks."""
    S = stats.Sxx
    C = bases @ S - stats.Syx  # (b, m, d, d)

    def step(state):
        U, V = state
        G = C + _mm(U, _mm(_T(V), S))
        return U - lr * _mm(G, V), V - lr * _mm(_T(G), U)

    def record(state):
        return jnp.mean(losses.paper_test_loss(bases + state[0] @ _T(state[1]), stats), axis=-1)

    return run_steps(step, (U0, V0), steps, record_every, record)


# --------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------

def _mask_tasks(stats: TaskStats, n_tasks) -> TaskStats:
    w = (jnp.arange(stats.Sxx.shape[-3]) < n_tasks).astype(stats.Sxx.dtype)
    return stats._replace(Sxx=stats.Sxx * w[:, None, None], Syx=stats.Syx * w[:, None, None],
                          Syy=stats.Syy * w)


def run_protocol(truth: Truth, keys: RunKeys, hyper: Hyper, shape: Shape,
                 retrain_stats: TaskStats | None = None,
                 finetune_stats: TaskStats | None = None, sr_bias=None, *,
                 variant: str = "clean") -> Outcome:
    """One run of the protocol (module docstring); jit- and vmap-able (``shape`` is static).

    ``variant``: ``"clean"`` or ``"paper_code"`` (module docstring; ``paper_code`` needs
    ``keys.start``, :func:`code_keys`). ``retrain_stats``/``finetune_stats`` may be passed in
    precomputed; ``sr_bias`` likewise (:func:`theory_sr_bias`, a function of the truth only).
    ``hyper.n_tasks``/``hyper.rank`` run a smaller configuration inside this shape (zero-padded
    truth: tasks beyond ``n_tasks`` are ignored).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(map(repr, VARIANTS))}; "
                         f"got {variant!r}")
    dt = truth.A_star.dtype
    d, k, m, r = shape.d, shape.k, shape.m, shape.ft_rank
    n_tasks, rank = hyper.n_tasks, hyper.rank
    padded = n_tasks is not None or rank is not None
    if (retrain_stats is None and finetune_stats is None and shape.sampler == "raw"
            and shape.N is not None and shape.n is not None):
        retrain_stats, finetune_stats = raw_statistics_pair(
            keys.retrain, truth.M_star, shape.N, keys.finetune, truth.M_new, shape.n,
            hyper.noise_std)
    if retrain_stats is None:
        retrain_stats = task_statistics(keys.retrain, truth.M_star, shape.N, hyper.noise_std,
                                        shape.sampler)
    if finetune_stats is None:
        finetune_stats = task_statistics(keys.finetune, truth.M_new, shape.n, hyper.noise_std,
                                         shape.sampler)
    if n_tasks is not None:
        retrain_stats = _mask_tasks(retrain_stats, n_tasks)
    if sr_bias is None:
        sr_bias = theory_sr_bias(truth, r if rank is None else rank, n_tasks)
    st, fs = retrain_stats, finetune_stats
    if padded:
        U0, Uf, Vf = initial_factors(keys, shape, hyper.init_scale, dt, n_tasks, rank)
    else:
        U0, Uf, Vf = initial_factors(keys, shape, hyper.init_scale, dt)
    B = ols_solution(st, shape.N)

    # Meta-LoRA
    if shape.ml_solver == "newton":
        if padded:
            raise ValueError("ml_solver='newton' runs unpadded (Hyper.n_tasks and Hyper.rank None)")
        ml = meta_lora(st, k, key=keys.newton, method="newton", init_scale=hyper.init_scale)
        A_ml, U_ml, ml_obj, ml_traj = ml.base, ml.adapters, ml.objective, ml.history.value
        ml_ok = _all_finite(A_ml, U_ml, ml_obj)
    else:
        A_ml, U_ml, ml_hist = meta_lora_alternating(
            st, U0, hyper.lr_adapter, hyper.lr_base, outer_steps=shape.outer_steps,
            inner_steps=shape.inner_steps, record_every=shape.record_every, B=B, n_tasks=n_tasks)
        ml_obj = excess_objective(A_ml + U_ml @ _T(U_ml), st, B, n_tasks)
        ml_traj = ml_hist.value
        ml_ok = _all_finite(A_ml, U_ml, ml_traj)
        ml_obj = jnp.where(jnp.isfinite(ml_obj), ml_obj, jnp.inf)

    # Standard retraining
    adapters = (sr_adapters(keys, shape, hyper.init_scale, dt, n_tasks)
                if variant == "paper_code" else None)
    A_sr, sr_hist = sr_retraining(st, hyper.sr_lr, steps=shape.sr_steps,
                                  record_every=shape.record_every, B=B, n_tasks=n_tasks,
                                  adapters=adapters)
    sr_obj = excess_objective(A_sr, st, B, n_tasks)

    # Fine-tuning of both bases on the same data
    if variant == "paper_code":
        Us, Vs = fixed_start(keys.start, m, d, r, hyper.init_scale, dt, rank)
        U_start, V_start = jnp.stack([Us, Uf]), jnp.stack([Vs, Vf])
    else:
        U_start = jnp.broadcast_to(Uf, (2,) + Uf.shape)
        V_start = jnp.broadcast_to(Vf, (2,) + Vf.shape)
    bases = jnp.stack([A_ml, A_sr])[:, None]  # (2, 1, d, d), broadcast over the m unseen tasks
    (U_ft, V_ft), ft_hist = finetune_both(bases, fs, U_start, V_start, hyper.ft_lr,
                                          steps=shape.ft_steps, record_every=shape.record_every)
    M_ft = bases + U_ft @ _T(V_ft)  # (2, m, d, d)
    test_loss = jnp.mean(losses.paper_test_loss(M_ft, fs), axis=-1)
    risk = jnp.mean(jnp.sum((M_ft - truth.M_new) ** 2, axis=(-2, -1)), axis=-1)
    return Outcome(
        ml_base_error=metrics.base_error(A_ml, truth.A_star),
        ml_base_rel_error=metrics.base_error(A_ml, truth.A_star, relative=True),
        sr_base_error=metrics.base_error(A_sr, truth.A_star),
        sr_base_rel_error=metrics.base_error(A_sr, truth.A_star, relative=True),
        ml_objective=ml_obj,
        sr_objective=sr_obj,
        ml_ft_test_loss=test_loss[0],
        sr_ft_test_loss=test_loss[1],
        ml_ft_excess_risk=risk[0],
        sr_ft_excess_risk=risk[1],
        theory_sr_bias=jnp.asarray(sr_bias, dt),
        ml_diverged=~ml_ok,
        sr_diverged=~_all_finite(A_sr, sr_hist.value),
        ft_diverged=~_all_finite(U_ft, V_ft, ft_hist.value),
        ml_objective_traj=ml_traj,
        sr_objective_traj=sr_hist.value,
        ml_ft_traj=ft_hist.value[:, 0],
        sr_ft_traj=ft_hist.value[:, 1],
    )
