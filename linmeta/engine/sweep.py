"""Sweeps: many configurations of any registered protocol as a few compiled, batched programs.

A configuration is a flat dict; its key ``protocol`` names a registered protocol
(:mod:`linmeta.engine.protocols`; default ``"paper"``, the paper's protocol of :mod:`linmeta.families.paper.protocol`,
docs/theory.md, methods and protocol, claims C2-C7; ``"paper_code"`` is the same with the
official code's SR baseline and fine-tuning starts). :data:`DEFAULTS` lists the keys of the default protocol. One
paper configuration samples the truth (from ``truth_seed``), draws N retraining samples per task
(from ``seed``), retrains with Meta-LoRA and with standard retraining, fine-tunes both bases on the
unseen task on the same n samples, and records strided trajectories.

How a sweep runs (for every protocol):

- :func:`expand_grid` turns a spec ``{"grid": {...}, "fixed": {...}, "seeds": 5}`` into validated
  configurations; :func:`group_by_shape` groups them by :func:`shape_key` (the protocol's static
  keys: sizes and loop lengths). For the paper's protocols, configurations that differ only in T
  (and so in the fine-tuning rank, 3k at T = 2) share a group: the program is built for the
  group's largest T and rank, and smaller runs are masked inside it (tasks and adapter columns
  padded with zeros, left out of every mean; the same numbers as an unpadded run).
- :func:`run_batch` runs one shape group (or a chunk of it) as ONE jitted program: each device's
  share of the batch in sub-batches of a few dozen configurations (``lax.map`` over sub-batches,
  ``vmap`` inside: the training state stays in cache and the data draws' temporaries stay under
  :data:`SAMPLE_BYTES`), ``lax.scan`` over steps; the seeds and the traced hyperparameters
  (learning rates, noise level, initialisation scale, and the padded sizes) are arrays, so a grid
  over them costs one compilation. Compiled programs are cached per (protocol, shape, batch size,
  devices, dtype); the program's size does not grow with the step counts.
- :func:`run_sweep` splits each group into equal chunks (the last one padded, so a group compiles
  once), calls :func:`run_batch` per chunk and ``on_result(cfg, result)`` as each chunk finishes;
  the programs of later shape groups are compiled in two background threads meanwhile.
- The ground truth (one draw per ``truth_seed`` and sizes, on the host, by a small cached
  program) and its theory values are passed in, replicated or batched per configuration.
- Compiled programs are also kept across processes (:mod:`linmeta.engine.program_cache`, beside JAX's
  persistent compilation cache when that is on): a warm process loads them without tracing.
- Divergence: each result carries one ``<stage>_diverged`` flag per stage of the protocol,
  computed in the program from the recorded trajectories (:func:`linmeta.divergence.
  divergence_index`: non-finite, or a 1000-fold rise over the first record; Newton traces are
  NaN-padded). :func:`linmeta.engine.protocols.divergence_message` names the stage, its step size(s)
  and the iteration.

Devices: the batch axis is sharded over a :class:`jax.sharding.Mesh` of ``devices`` (default: all
local devices) with ``jax.shard_map``; a batch that does not divide evenly is padded with copies of
its last configuration (dropped from the results). Each configuration's numbers do not depend on
how the batch is split (tested to equality). To try it on a CPU, start Python with
``XLA_FLAGS=--xla_force_host_platform_device_count=2``. XLA:CPU in jax 0.10 was seen to deadlock
(nondeterministically, in the runtime) when several simulated host devices run a program that
calls LAPACK; the paper's program therefore calls none (the OLS solution behind the excess
objectives uses :func:`linmeta.families.paper.protocol.psd_pinv`, matrix products only), and ``ml_solver="newton"``
batches (LAPACK ``eigh`` in the loop) run on the first CPU device only.

Several hosts (``jax.distributed``): start the same script on every host with the same list of
configurations, and call, before anything else touches JAX::

    import jax
    jax.distributed.initialize()   # or (coordinator_address="host0:1234", num_processes=P,
                                   #     process_id=i) outside SLURM/TPU pods
    from linmeta import sweep
    results = sweep.run_sweep(configs, devices=jax.devices())   # all devices of all hosts

``run_batch`` then builds the global input arrays with ``jax.make_array_from_callback`` (each host
fills only its own shards), runs one SPMD program over the global mesh and gathers the results on
every host with ``multihost_utils.process_allgather``; write results from ``jax.process_index() ==
0`` only. Tested with two processes on one machine (``tests/test_multiprocess.py``: two
``jax.distributed`` processes over the gloo CPU collectives give the numbers of one process, bit for
bit); not tested on several physical hosts.

Random streams: see :mod:`linmeta.families.paper.protocol` (``truth_for_seed``, ``run_keys``, ``code_keys``). The
noise level ``noise_std`` is the standard deviation of the noise actually drawn; the paper's code
uses ``sigma^2 = 0.01`` with sigma = 0.1, hence the default 0.01.

Example::

    from linmeta import sweep
    cfgs = sweep.expand_grid({"grid": {"T": [2, 3, 5], "protocol": ["paper", "paper_code"]},
                              "fixed": {"ft_steps": 1000}, "seeds": 5})
    for cfg, res in zip(cfgs, sweep.run_sweep(cfgs)):
        print(cfg["protocol"], cfg["T"], cfg["seed"], res["ml_ft_test_loss"],
              res["sr_ft_test_loss"])
"""
from __future__ import annotations

import hashlib
import itertools
import json
import numbers
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from linmeta.core.problem import Truth
from . import program_cache, protocols
from .protocols import MAX_CHUNK, SAMPLE_BYTES, TRAIN_BYTES, truth_for

__all__ = ["DEFAULTS", "validate_config", "config_id", "expand_grid", "shape_key",
           "group_by_shape", "run_batch", "run_sweep", "truth_for", "default_chunk_size",
           "RESULT_KEYS", "SAMPLE_BYTES", "TRAIN_BYTES", "MAX_CHUNK"]



def __getattr__(name):
    """``DEFAULTS``: every key of the default protocol and its default (``"protocol"`` first);
    ``RESULT_KEYS``: its scalar results. Looked up in the registry (the default protocol is
    registered by its family, which the engine does not import)."""
    if name == "DEFAULTS":
        return {"protocol": protocols.DEFAULT, **protocols.get(protocols.DEFAULT).defaults}
    if name == "RESULT_KEYS":
        return tuple(protocols.get(protocols.DEFAULT).result_keys)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------------

def validate_config(cfg: Mapping) -> dict:
    """Fill defaults and check every value; returns a new dict with canonical types.

    The key ``protocol`` (default ``"paper"``) selects the protocol, whose keys and checks apply
    (:mod:`linmeta.engine.protocols`). For the paper's protocols: ``N``/``n`` become an int or ``"inf"``
    (population; 0 is accepted for it); ``ft_rank`` 0 is resolved to k (``min(3k, d)`` when
    T == 2). Raises ``ValueError`` naming the key and the allowed range or values for unknown keys
    or protocols, out-of-range sizes (k > d, k < 1, T < 1, N < 1, n < 1, ft_rank > d),
    non-positive learning rates, and the like.
    """
    return protocols.validate(cfg)


def config_id(cfg: Mapping) -> str:
    """Stable short hash (12 hex digits) of the validated configuration (sorted JSON). The
    ``protocol`` key is left out when it is the default, so that the ids of paper
    configurations are those they had before protocols were selectable."""
    v = validate_config(cfg)
    if v["protocol"] == protocols.DEFAULT:
        v = {k: x for k, x in v.items() if k != "protocol"}
    text = json.dumps(v, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:12]


_SPEC_EXTRA = ("chunk_size", "truth", "name", "description")


def _spec_protocols(grid: Mapping, fixed: Mapping) -> list:
    if "protocol" in grid:
        values = grid["protocol"]
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise ValueError(f"grid.protocol must be a non-empty list of values, got {values!r}")
        values = list(values)
    else:
        values = [fixed.get("protocol", protocols.DEFAULT)]
    return [protocols.get(v) for v in values]


def expand_grid(spec: Mapping) -> list[dict]:
    """Validated configurations of ``{"grid": {key: [values]}, "fixed": {key: value},
    "seeds": int n (seeds 0..n-1) or a list}``.

    Order: the Cartesian product of the grid keys in the order given (last key fastest), seeds
    innermost, so that a group's seeds are adjacent. Configurations that validate to the same
    dict (e.g. ``ft_rank`` 0 and 3k at T = 2) are kept once. Other spec keys ``chunk_size``,
    ``truth``, ``name``, ``description`` are ignored here. ``protocol`` may be fixed or a grid key.
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"a sweep spec must be a mapping, got {type(spec).__name__}")
    unknown = [key for key in spec if key not in ("grid", "fixed", "seeds") + _SPEC_EXTRA]
    if unknown:
        raise ValueError(f"unknown sweep spec key {unknown[0]!r}; allowed: grid, fixed, seeds, "
                         f"{', '.join(_SPEC_EXTRA)}")
    grid = spec.get("grid") or {}
    fixed = spec.get("fixed") or {}
    if not isinstance(grid, Mapping) or not isinstance(fixed, Mapping):
        raise ValueError("sweep spec 'grid' and 'fixed' must be mappings of configuration keys")
    allowed = ["protocol"]
    chosen = _spec_protocols(grid, fixed)
    for proto in chosen:
        allowed += [k for k in proto.defaults if k not in allowed]
    for where, table in (("grid", grid), ("fixed", fixed)):
        bad = [key for key in table if key not in allowed]
        if bad:
            raise protocols.unknown_key_error(bad[0], [p.name for p in chosen], allowed, where)
    both = [key for key in grid if key in fixed]
    if both:
        raise ValueError(f"key {both[0]!r} is both in grid and fixed; keep one")
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise ValueError(f"grid.{key} must be a non-empty list of values, got {values!r}")
        if not list(values):
            raise ValueError(f"grid.{key} must be a non-empty list of values, got {values!r}")
    seeds = spec.get("seeds")
    if seeds is not None and ("seed" in grid or "seed" in fixed):
        raise ValueError("give the seeds either as 'seeds' or as the key 'seed', not both")
    if seeds is None:
        seed_list = [None]
    elif isinstance(seeds, bool):
        raise ValueError(f"seeds must be an integer >= 1 or a list of integers >= 0, got {seeds!r}")
    elif isinstance(seeds, numbers.Integral):
        if seeds < 1:
            raise ValueError(f"seeds must be an integer >= 1 or a list of integers >= 0, "
                             f"got {seeds!r}")
        seed_list = list(range(int(seeds)))
    else:
        seed_list = list(seeds)
        if not seed_list:
            raise ValueError("seeds must be an integer >= 1 or a non-empty list of integers >= 0")
    keys = list(grid)
    out, seen = [], set()
    for combo in itertools.product(*(list(grid[key]) for key in keys)):
        for seed in seed_list:
            cfg = dict(fixed)
            cfg.update(zip(keys, combo))
            if seed is not None:
                cfg["seed"] = seed
            v = validate_config(cfg)
            cid = config_id(v)
            if cid not in seen:
                seen.add(cid)
                out.append(v)
    return out


def _proto(cfg: Mapping) -> protocols.Protocol:
    return protocols.get(cfg.get("protocol", protocols.DEFAULT))


def shape_key(cfg: Mapping) -> tuple:
    """The static part of a configuration (hashable), starting with the protocol's name:
    configurations with equal keys run in one compiled program. Paper: (protocol, d, k, N, n,
    solver, step counts, stride, sampler); T and the fine-tuning rank are padded within a group
    (alternating solver), or part of the key (``ml_solver="newton"``)."""
    cfg = validate_config(cfg)
    return _proto(cfg).group_of(cfg)


def group_by_shape(configs: Sequence[Mapping]) -> list[list[dict]]:
    """Configurations grouped by :func:`shape_key`, groups in order of first appearance, each
    group in the input order."""
    groups: dict[tuple, list[dict]] = {}
    for cfg in configs:
        v = validate_config(cfg)
        groups.setdefault(shape_key(v), []).append(v)
    return list(groups.values())


def _float_dtype():
    """The default float dtype (float64 under ``jax_enable_x64``), without creating an array."""
    return jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64))


def default_chunk_size(cfg: Mapping) -> int:
    """Configurations per compiled call for ``cfg``'s protocol (paper: records and inputs of
    about :data:`linmeta.engine.protocols.TRAIN_BYTES` per device, at most
    :data:`linmeta.engine.protocols.MAX_CHUNK`)."""
    cfg = validate_config(cfg)
    return _proto(cfg).default_chunk(cfg)


# --------------------------------------------------------------------------------------------
# The batched program
# --------------------------------------------------------------------------------------------

def _sub_batch(per_device: int, cap: int) -> tuple[int, int]:
    """(sub-batch, padded per-device count): a divisor of the count when a large enough one
    exists, else the count padded up to a multiple (lax.map compiles its body once)."""
    cap = max(1, min(cap, per_device))
    for b in range(cap, 0, -1):
        if per_device % b == 0:
            if 2 * b >= cap:
                return b, per_device
            break
    n_sub = -(-per_device // cap)
    b = -(-per_device // n_sub)
    return b, b * n_sub


def _program(proto: protocols.Protocol, shape, truth_batched: bool, treedef, mesh: Mesh,
             sub: int, cfg0: dict):
    """The jitted batch program of one shape (not yet compiled). Inputs: seeds and truth seeds
    (B,), hyper (NamedTuple of (B,) arrays), the truth's leaves (replicated, or batched when
    ``truth_batched``). Output: (record, flags), each with a leading batch axis."""

    def one(seed, truth_seed, hyper, truth):
        keys = proto.keys(seed, truth_seed)
        rec = proto.run(truth, keys, hyper, shape)
        return rec, protocols.stage_flags(proto, rec, cfg0)

    def per_device(seeds, truth_seeds, hyper, truth_leaves):
        # the truth travels as leaves: pytrees such as linmeta.Truth validate their fields when
        # rebuilt, which JAX does with placeholder leaves at jit/shard_map boundaries
        truth = jax.tree.unflatten(treedef, truth_leaves)
        if truth_batched:
            xs = (seeds, truth_seeds, hyper, truth)

            def f(x):
                return one(*x)
        else:
            xs = (seeds, truth_seeds, hyper)

            def f(x):
                return one(*x, truth)
        if sub >= seeds.shape[0]:
            return jax.vmap(f)(xs)
        return lax.map(f, xs, batch_size=sub)

    batch = P("batch")
    t_spec = batch if truth_batched else P()
    fn = jax.shard_map(per_device, mesh=mesh, in_specs=(batch, batch, batch, t_spec),
                       out_specs=batch, check_vma=False)
    return jax.jit(fn)


class _Entry:
    """A compiled program (or one being compiled by another thread)."""

    def __init__(self):
        self.done = threading.Event()
        self.executable = None
        self.seconds = 0.0
        self.error: BaseException | None = None
        self.used = False


_COMPILED: dict[tuple, _Entry] = {}
_LOCK = threading.Lock()


def _compiler_options(devices) -> dict:
    return protocols.cpu_options() if devices[0].platform == "cpu" else {}


def _global_array(host: np.ndarray, sharding) -> jax.Array:
    host = np.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def _default_devices():
    return jax.devices() if jax.process_count() > 1 else jax.local_devices()


def run_batch(configs: Sequence[Mapping], *, truth: Truth | None = None,
              devices: Sequence | None = None,
              group: Sequence[Mapping] | None = None) -> list[dict]:
    """Run configurations that share one :func:`shape_key` as one compiled, batched program.

    Args:
      configs: configurations (validated here); all must have the same shape key.
      truth: a :class:`linmeta.Truth` to use instead of sampling one from ``truth_seed`` (same
        d, k, T as the configurations, at least one unseen task; every unseen task is fine-tuned
        and the fine-tuning numbers are averaged over them).
      devices: devices of the mesh the batch is sharded over (default: all local devices; all
        devices of all processes after ``jax.distributed.initialize()``).
      group: the whole shape group the configurations are a chunk of (default: ``configs``).
        The paper's program is padded to the group's largest T and fine-tuning rank, so that
        every chunk of a group runs the same compiled program; pass the group when calling this
        chunk by chunk.

    Returns:
      One dict per configuration with the scalars of the protocol (paper: the floats of
      :data:`RESULT_KEYS`, the ``*_diverged`` bools), ``"trajectories"`` (NumPy arrays; paper:
      ``ml_objective`` over ``outer_steps`` (Newton iterations for ``ml_solver="newton"``, NaN
      after it stopped), ``sr_objective`` over ``sr_steps``, ``ml_ft_test_loss``/
      ``sr_ft_test_loss`` over ``ft_steps``) and ``"seconds"`` (of the whole batch: ``compile``
      (the program's compilation, or its loading from the program store of
      :mod:`linmeta.engine.program_cache`, on the batch that first used it, else 0), ``run``,
      ``prepare`` (truths drawn on the host), ``batch`` = configurations in it including
      padding).
    """
    cfgs = [validate_config(c) for c in configs]
    if not cfgs:
        return []
    given = None if truth is None else [truth] * len(cfgs)
    grp = None if group is None else [validate_config(c) for c in group]
    prepared = _prepare(cfgs, given, devices, grp)
    compiled, compile_s = _compiled(prepared)
    return _execute(prepared, compiled, compile_s)


class _Prepared(NamedTuple):
    cfgs: list
    proto: Any
    batch: Any
    args: tuple
    cache_key: tuple
    program: Callable
    devices: list
    prep_s: float


def _stack(values: list, dtype, int_dt):
    if all(v is None for v in values):
        return None
    if all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values):
        return np.asarray(values, int_dt)
    return np.asarray(values, dtype)


def _prepare(cfgs: list[dict], given: list | None, devices, group: list | None) -> _Prepared:
    keys = {shape_key(c) for c in cfgs}
    if group is not None:
        keys |= {shape_key(c) for c in group}
    if len(keys) != 1:
        raise ValueError(f"run_batch needs configurations of one shape (protocol, d, k, N, n, "
                         f"solver, step counts, record_every, sampler); got {len(keys)} shapes: "
                         f"split them with group_by_shape or call run_sweep")
    proto = _proto(cfgs[0])
    dtype = _float_dtype()
    devices = list(devices) if devices is not None else _default_devices()
    if not devices:
        raise ValueError("devices must be a non-empty list of jax devices")
    if given is not None and len(given) != len(cfgs):
        raise ValueError("one truth per configuration expected")

    t0 = time.perf_counter()
    batch = proto.make_batch(cfgs, given, dtype, group or cfgs)
    prep_s = time.perf_counter() - t0
    if proto.one_device(batch.shape) and devices[0].platform == "cpu":
        # LAPACK inside the loop (paper: the Newton solver's eigh); XLA:CPU (jax 0.10) was seen
        # to deadlock when several host devices run LAPACK calls at once, so such batches run on
        # one device.
        devices = devices[:1]
    n_dev = len(devices)
    B = len(cfgs)
    per_dev = -(-B // n_dev)
    sub, per_dev = _sub_batch(per_dev, proto.sub_batch_of(batch.shape, dtype))
    B_pad = per_dev * n_dev
    idx = list(range(B)) + [B - 1] * (B_pad - B)

    int_dt = np.int64 if jax.config.jax_enable_x64 else np.int32
    seeds = np.asarray([cfgs[i]["seed"] for i in idx], int_dt)
    truth_seeds = np.asarray([cfgs[i].get("truth_seed", 0) for i in idx], int_dt)
    hyper_cls = type(batch.hyper[0])
    hyper = hyper_cls(*(_stack([batch.hyper[i][j] for i in idx], dtype, int_dt)
                        for j in range(len(hyper_cls._fields))))
    first = batch.truths[0]
    batched = any(t is not first for t in batch.truths)
    leaves, treedef = jax.tree.flatten(first)
    if batched:
        per = [jax.tree.leaves(batch.truths[i]) for i in idx]
        leaves = [np.stack([np.asarray(p[j]) for p in per]) for j in range(len(leaves))]
    else:
        leaves = [np.asarray(x) for x in leaves]

    mesh = Mesh(np.asarray(devices), ("batch",))
    sharding = NamedSharding(mesh, P("batch"))
    t_sharding = sharding if batched else NamedSharding(mesh, P())
    args = (_global_array(seeds, sharding), _global_array(truth_seeds, sharding),
            jax.tree.map(lambda h: _global_array(h, sharding), hyper),
            [_global_array(x, t_sharding) for x in leaves])
    flags_key = tuple(protocols._nan_is_padding(s, cfgs[0]) for s in proto.stages)
    hyper_key = tuple(None if h is None else str(h.dtype) for h in hyper)
    cache_key = (proto.name, batch.shape, batched, treedef, hyper_key, flags_key,
                 tuple(d.id for d in devices), str(dtype), B_pad, sub)

    def program():
        return _program(proto, batch.shape, batched, treedef, mesh, sub, cfgs[0])

    return _Prepared(cfgs, proto, batch, args, cache_key, program, devices, prep_s)


def _compiled(p: _Prepared, mark_used: bool = True):
    """The compiled program of a prepared batch: cached per (protocol, shape, truth layout,
    devices, dtype, batch size); compiled once even when several threads ask at the same time
    (run_sweep compiles the next groups in the background). Returns (executable, compile seconds
    if this is its first use, else 0)."""
    with _LOCK:
        entry = _COMPILED.get(p.cache_key)
        if entry is None:
            entry = _COMPILED[p.cache_key] = _Entry()
            owner = True
        else:
            owner = False
    if owner:
        try:
            t0 = time.perf_counter()
            proto = p.proto
            code = tuple(f for f in (proto.run, proto.keys, proto.batch, proto.results,
                                     proto.group_key) if f is not None)
            entry.executable, _ = program_cache.load_or_compile(
                ("linmeta.sweep",) + p.cache_key, p.devices,
                lambda: p.program().lower(*p.args), _compiler_options(p.devices), code)
            entry.seconds = time.perf_counter() - t0
        except BaseException as e:
            entry.error = e
            with _LOCK:
                _COMPILED.pop(p.cache_key, None)
            raise
        finally:
            entry.done.set()
    entry.done.wait()
    if entry.error is not None:
        raise entry.error
    if not mark_used:
        return entry.executable, 0.0
    with _LOCK:
        first, entry.used = not entry.used, True
    return entry.executable, (entry.seconds if first else 0.0)


def _execute(p: _Prepared, compiled, compile_s: float) -> list[dict]:
    t0 = time.perf_counter()
    out = compiled(*p.args)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        out = multihost_utils.process_allgather(out, tiled=True)
    rec, flags = jax.tree.map(np.asarray, jax.block_until_ready(out))
    run_s = time.perf_counter() - t0
    seconds = {"compile": compile_s, "run": run_s, "prepare": p.prep_s,
               "batch": len(p.args[0])}
    results = []
    for i, cfg in enumerate(p.cfgs):
        r = jax.tree.map(lambda x: x[i], rec)
        f = {name: v[i] for name, v in flags.items()}
        res = p.proto.result_of(cfg, p.batch, r, f)
        res["seconds"] = dict(seconds)
        results.append(res)
    return results


def _chunks(group: list, chunk_size: int) -> tuple[list[list], int]:
    """Equal chunks (the last padded with copies of its last configuration)."""
    n_chunks = -(-len(group) // chunk_size)
    size = -(-len(group) // n_chunks)
    return [group[i * size:(i + 1) * size] for i in range(n_chunks)], size


def run_sweep(configs: Sequence[Mapping], *, chunk_size: int | None = None,
              on_result: Callable[[dict, dict], Any] | None = None,
              truth: Truth | Callable[[dict], Truth] | None = None,
              devices: Sequence | None = None, compile_ahead: bool = True) -> list[dict]:
    """Run any list of configurations: grouped by shape, each group in equal chunks of at most
    ``chunk_size`` configurations (default :func:`default_chunk_size`), one compiled program per
    group. ``on_result(cfg, result)`` is called for every configuration as its chunk finishes.
    ``truth``: as in :func:`run_batch`, or a function ``cfg -> Truth`` called once per distinct
    truth size in a group (paper: once per (d, k, T), e.g. slices of one large truth). With
    ``compile_ahead`` (default), the programs of the shape groups are compiled in two background
    threads while earlier groups run. Returns the results in the order of ``configs``."""
    cfgs = [validate_config(c) for c in configs]
    if chunk_size is not None and (isinstance(chunk_size, bool)
                                   or not isinstance(chunk_size, numbers.Integral)
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    order: dict[tuple, list[int]] = {}
    for i, c in enumerate(cfgs):
        order.setdefault(shape_key(c), []).append(i)
    given: list = [None] * len(cfgs)
    if callable(truth):
        asked: dict = {}
        for i, c in enumerate(cfgs):
            key = (shape_key(c), tuple(c.get(k) for k in ("d", "k", "T")))
            if key not in asked:
                asked[key] = truth(c)
            given[i] = asked[key]
    elif truth is not None:
        given = [truth] * len(cfgs)
    plan = []  # (group, positions in cfgs, batch padded to the group's chunk size)
    for g, idx in enumerate(order.values()):
        group = [cfgs[i] for i in idx]
        size_cap = chunk_size or default_chunk_size(group[0])
        chunks, size = _chunks(idx, size_cap)
        for chunk in chunks:
            padded = chunk + [chunk[-1]] * (size - len(chunk))  # one size: one compile
            plan.append((g, chunk, padded, group))
    use_given = truth is not None

    def prepare(batch_idx, group):
        return _prepare([cfgs[i] for i in batch_idx],
                        [given[i] for i in batch_idx] if use_given else None, devices, group)

    ahead = {}
    pool = None
    if compile_ahead and len(order) > 1:
        pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="linmeta-compile")
        firsts = {}
        for g, _, batch, group in plan:
            firsts.setdefault(g, (batch, group))
        for g, (batch, group) in firsts.items():
            ahead[g] = pool.submit(lambda b, gr: _compiled(prepare(b, gr), mark_used=False),
                                   batch, group)
    results: list[dict | None] = [None] * len(cfgs)
    try:
        for g, positions, batch, group in plan:
            if g in ahead:
                ahead.pop(g).result()  # raises what the background compilation raised
            prepared = prepare(batch, group)
            compiled, compile_s = _compiled(prepared)
            res = _execute(prepared, compiled, compile_s)
            for i, r in zip(positions, res):
                results[i] = r
                if on_result is not None:
                    on_result(cfgs[i], r)
    finally:
        if pool is not None:
            for f in ahead.values():
                f.cancel()
            pool.shutdown(wait=True)
    return results  # type: ignore[return-value]
