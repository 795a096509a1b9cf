"""Protocols: named, registered values that :mod:`linmeta.engine.sweep` runs (a protocol is a value; the
sweep is generic).

A protocol is what one configuration (a flat dict of keys) computes, as a pure function

    run(truth, keys, hyper, shape) -> NamedTuple of arrays (scalars and strided trajectories)

of the ground truth (a pytree of arrays), the run's PRNG keys, the traced hyperparameters (a
NamedTuple of scalars, one per configuration; a sweep over them costs no compile) and the static
shape (sizes and loop lengths; configurations of equal shape share one compiled program). Around
it, a :class:`Protocol` states its configuration keys and defaults, which keys are static and which
are traced, how a configuration is validated (``ValueError`` naming the key and the allowed range),
how its truth is obtained (drawn once per ``truth_seed`` on the host, or passed in), how its keys
are derived from ``seed`` (and ``truth_seed``), and its stages for divergence. The sweep engine
does the rest for every registered protocol: grouping by shape, chunking, padding, compile-ahead,
sharding over devices, results dicts, and the ``*_diverged`` flags, computed in the program over
the recorded trajectories with :func:`linmeta.core.divergence.divergence_index` (non-finite, or a
1000-fold rise over the first record; NaN-padded traces allowed per stage).

Built in: ``"paper"`` (the default: the paper's protocol, clean, :mod:`linmeta.families.paper.protocol`) and
``"paper_code"`` (the same with the official code's SR baseline and fine-tuning starts), selected
by the configuration key ``protocol``.

How to register a protocol
--------------------------
Write the run function for ONE configuration (the sweep vmaps, shards and compiles it), a
NamedTuple class of its traced hyperparameters (fields = configuration keys) and one of its static
shape (fields = configuration keys), then register (``examples/register_protocol.py`` runs this)::

    from typing import NamedTuple
    import jax, jax.numpy as jnp
    from linmeta import protocols, sample_truth, sweep

    class Hyper(NamedTuple):          # traced: a grid over these compiles once
        lr: jax.Array

    class Shape(NamedTuple):          # static: sets shapes and loop lengths
        d: int
        k: int
        T: int
        steps: int

    class Record(NamedTuple):         # scalars become result columns, arrays trajectories
        final_loss: jax.Array
        loss: jax.Array

    def run_protocol(truth, keys, hyper, shape):      # one configuration; jit/vmap-able
        def step(A, _):
            A = A - hyper.lr * (A - truth.A_star)
            return A, 0.5 * jnp.sum((A - truth.A_star) ** 2)
        _, loss = jax.lax.scan(step, jnp.zeros((shape.d, shape.d)), None, length=shape.steps)
        return Record(loss[-1], loss)

    protocols.register(protocols.Protocol(
        name="toy", run=run_protocol, hyper=Hyper, shape=Shape,
        defaults=dict(d=4, k=1, T=3, steps=50, lr=0.1, seed=0, truth_seed=0),
        truth=lambda cfg, dtype: sample_truth(jax.random.key(cfg["truth_seed"]), cfg["d"],
                                              cfg["k"], cfg["T"], dtype=dtype),
        truth_keys=("truth_seed", "d", "k", "T"),
        stages=(protocols.Stage("fit", "toy gradient descent", fields=("loss",),
                                step_sizes=("lr",)),),
        checks={"lr": protocols.Check("float", 0, open_lo=True),
                "k": protocols.Check("int", 1, "d")},
    ))
    cfgs = sweep.expand_grid({"grid": {"lr": [0.05, 0.5, 2.5]}, "fixed": {"protocol": "toy"}})
    results = sweep.run_sweep(cfgs)    # one compile; results[2]["fit_diverged"] is True
    protocols.divergence_message(cfgs[2], results[2])
    # 'toy gradient descent diverged at iteration 9: loss 2.44e+04 from 16.5 with lr=2.5; ...'

A family with its own ``run_protocol(truth, keys, hyper, shape)`` (bilevel retraining, the shared
representation model) registers the same way, from its own module (imported by
``linmeta/__init__``), with its ``Hyper``, ``Shape``, truth sampler and stages.

Every key in ``defaults`` is validated (``checks``, else by the default's type: integers >= 0,
finite reals >= 0, strings unchanged); ``seed`` (and ``truth_seed`` if present) are the run's
seeds. ``keys(seed, truth_seed)`` defaults to ``fold_in(jax.random.key(seed), 0x5EED)`` split
into :class:`linmeta.families.paper.protocol.RunKeys` (retrain, finetune, init, newton). A result dict holds every
0-d field of the record as a float (bool for bool fields), every other field in
``result["trajectories"]``, and one ``<stage>_diverged`` flag per stage. Families with their own
``run_protocol(truth, keys, hyper, shape)`` register the same way; the paper's entries below use
the optional hooks (``validate``, ``group_key``, ``batch``, ``results``) for padding across T and
the records of :mod:`linmeta.engine.sweep`.

Figures: the optional ``plots`` (a :class:`Plots` of :class:`Curves`, :class:`Finals` and
:class:`Series`) says what ``linmeta plot`` draws from the protocol's stored result columns and
trajectories (:mod:`linmeta.front.plotting`): which trajectories are curves against which steps,
which columns are plotted against each swept key, which keys are never pooled (``split_by``),
with labels, colours, dashed closed forms and log scales. For the toy above::

    plots=protocols.Plots(
        curves=(protocols.Curves("loss_curves", "toy gradient descent", "loss",
                                 (protocols.Series("loss", "toy"),)),),
        finals=(protocols.Finals("final loss", (protocols.Series("final_loss", "toy"),)),))

Without it, the figures are read off the stored results (every numeric column, every float
trajectory); ``Plots()`` declares that there is nothing to plot.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import threading
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from linmeta.core import sampling
from linmeta.core.divergence import DivergenceError, divergence_index
from linmeta.core.problem import Truth
from . import families, program_cache

__all__ = ["Protocol", "Stage", "Check", "Batch", "register", "get", "names", "DEFAULT",
           "validate", "divergence_error", "divergence_message", "diverged_stages",
           "stage_flags", "default_keys", "unknown_key_error", "Series", "Curves", "Finals",
           "Plots"]

DEFAULT = "paper"
SEED_MAX = 2 ** 31 - 1


class Stage(NamedTuple):
    """A stage of a protocol, for divergence: ``name`` (its flag is ``<name>_diverged``),
    ``words`` (for messages), ``fields`` (record fields holding its recorded losses, checked in
    the program; a record field ``<name>_diverged``, if present, is or-ed in: e.g. a non-finite
    end state), ``step_sizes`` (configuration keys of its step sizes, or a function
    ``cfg -> keys``), ``curves``/``steps`` (names of those trajectories and of their step numbers
    in ``result["trajectories"]``; default: the field names, and record indices),
    ``nan_is_padding`` (bool or ``cfg -> bool``: NaN marks records after a solver stopped)."""

    name: str
    words: str
    fields: tuple
    step_sizes: Any = ()
    curves: tuple | None = None
    steps: tuple | None = None
    nan_is_padding: Any = False


class Check(NamedTuple):
    """Validation of one configuration key. ``kind``: ``"int"``, ``"float"``, ``"count"``
    (integer >= 1, or 0 / 'inf' for the population, stored as ``"inf"``) or ``"choice"``. ``lo``,
    ``hi``: bounds (``hi`` may name another key, e.g. ``"d"``; None = unbounded); ``open_lo``:
    exclude ``lo``; ``choices``: allowed values of a choice."""

    kind: str
    lo: Any = None
    hi: Any = None
    open_lo: bool = False
    choices: tuple = ()


class Batch(NamedTuple):
    """What the sweep runs for a list of configurations of one shape group (the ``batch`` hook):
    the static ``shape`` of the program, one ``hyper`` NamedTuple of numbers per configuration and
    one truth pytree per configuration (the same object for configurations sharing it), and
    ``context`` (anything the ``results`` hook needs)."""

    shape: Any
    hyper: list
    truths: list
    context: Any = None


class Series(NamedTuple):
    """One plotted quantity of a protocol (:class:`Plots`): ``name`` is a result column (in
    :class:`Finals` and as a level of :class:`Curves`) or a trajectory (in :class:`Curves`);
    ``label`` its legend entry; ``color`` a matplotlib colour (None: the cycle); ``steps`` the
    trajectory holding its x values (default: the figure's ``steps``); ``dashed``: a theory
    level, drawn dashed, values below 1e-12 (an exact fit) left out; ``scale``: a result column
    the value is multiplied by (e.g. ``"n"``: a per-sample closed form in the units of a sum over
    n samples; rows where it is not a finite number are left out)."""

    name: str
    label: str
    color: str | None = None
    steps: str | None = None
    dashed: bool = False
    scale: str | None = None


class Curves(NamedTuple):
    """A figure of trajectories against their steps: in a sweep, ``<stem>.png`` with one panel
    per grid point (mean line and min-max band over seeds) when ``sweep`` is true; in a run, one
    panel of the run's figure. ``levels``: result columns drawn as horizontal dashed lines (their
    mean over the panel's rows), e.g. a closed-form floor."""

    stem: str
    title: str
    ylabel: str
    series: tuple
    steps: str | None = None
    xlabel: str = "iteration"
    levels: tuple = ()
    logy: bool = True
    sweep: bool = True


class Finals(NamedTuple):
    """A panel of final values (result columns) against each swept key, in the sweep figures
    ``final_vs_<key>.png``: mean line and min-max band over seeds, per group of the other swept
    keys (and of :attr:`Plots.split_by`)."""

    ylabel: str
    series: tuple
    logy: bool = True


class Plots(NamedTuple):
    """What ``linmeta plot`` draws for a protocol (:attr:`Protocol.plots`): ``curves`` (figures of
    trajectories, :class:`Curves`), ``finals`` (panels of result columns against each swept key,
    :class:`Finals`), ``split_by`` (keys never pooled into one line, also when a sweep does not
    sweep them, e.g. the fine-tuning rank that the paper's protocol sets from T), ``fixed``
    (keys named in the titles as the setting) and ``note`` (a line under each figure: what the
    plotted quantities are). A protocol without a ``plots`` value gets one read off its stored
    results (:func:`linmeta.front.plotting.default_plots`); ``Plots()`` plots nothing."""

    curves: tuple = ()
    finals: tuple = ()
    split_by: tuple = ()
    fixed: tuple = ("d", "k", "T", "N", "n", "noise_std")
    note: str = ""


def default_keys(seed, truth_seed=None):
    """:func:`linmeta.core.sampling.run_keys`: independent retrain, finetune, init, newton
    streams."""
    return sampling.run_keys(seed)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """A registered protocol (module docstring). Required: ``name``, ``run``, ``defaults``,
    ``hyper`` (NamedTuple class of traced keys) and ``shape`` (NamedTuple class of static keys, or
    a function ``cfg -> hashable static shape``). Optional: ``truth`` (``(cfg, dtype) -> pytree``;
    ``None``: the run gets ``None``), ``truth_keys`` (keys the truth depends on: one draw per
    distinct value tuple), ``keys``, ``stages``, ``checks``, ``result_keys`` (the scalar keys of a
    result, for tables), ``description``, ``help`` (key -> text). Hooks (replace the generic
    behaviour): ``validate(cfg) -> dict``, ``group_key(cfg) -> tuple``, ``batch(cfgs, truths,
    dtype) -> Batch``, ``results(cfg, batch, record, flags) -> dict``, ``single_device(shape)``,
    ``chunk_size(cfg)``, ``sub_batch(shape, dtype)``. Run records: ``divergence_flags``,
    ``diverged_stages``, ``divergence_error``, ``record_theory``, ``summary``, ``accepts_truth``.
    Figures: ``plots`` (a :class:`Plots`: what ``linmeta plot`` draws from its result columns and
    trajectories)."""

    name: str
    run: Callable
    defaults: Mapping[str, Any]
    hyper: type
    shape: Any
    truth: Callable | None = None
    truth_keys: tuple = ("truth_seed",)
    keys: Callable = default_keys
    stages: tuple = ()
    checks: Mapping[str, Check] = dataclasses.field(default_factory=dict)
    result_keys: tuple | None = None
    description: str = ""
    help: Mapping[str, str] = dataclasses.field(default_factory=dict)
    validate: Callable | None = None
    group_key: Callable | None = None
    batch: Callable | None = None
    results: Callable | None = None
    single_device: Callable | None = None
    chunk_size: Callable | None = None
    sub_batch: Callable | None = None
    # run records (linmeta.engine.runs): a protocol may replace the generic divergence report of
    # its stages, add closed-form values to a run's record, and accept a user's truth
    divergence_flags: Callable | None = None
    diverged_stages: Callable | None = None
    divergence_error: Callable | None = None
    record_theory: Callable | None = None
    summary: Callable | None = None
    accepts_truth: bool = False
    # figures (linmeta.front.plotting): which columns and trajectories 'linmeta plot' draws
    plots: Plots | None = None

    @property
    def static(self) -> tuple:
        """Configuration keys of the static shape (when ``shape`` is a NamedTuple class)."""
        return tuple(getattr(self.shape, "_fields", ()))

    # The engine's view: each uses the hook when given, else the generic behaviour.
    def validated(self, cfg: Mapping) -> dict:
        """``cfg`` (without ``protocol``) filled and checked (``validate`` hook or ``checks``)."""
        return self.validate(cfg) if self.validate is not None else _generic_validate(self, cfg)

    def shape_of(self, cfg: Mapping):
        """The static shape of one validated configuration."""
        if isinstance(self.shape, type) and hasattr(self.shape, "_fields"):
            return self.shape(**{f: cfg[f] for f in self.shape._fields})
        return self.shape(cfg)

    def group_of(self, cfg: Mapping) -> tuple:
        """Hashable key: configurations with equal keys run in one compiled program."""
        if self.group_key is not None:
            return tuple(self.group_key(cfg))
        return (self.name, self.shape_of(cfg))

    def make_batch(self, cfgs: list, given: list | None, dtype, group: list) -> Batch:
        """:class:`Batch` of configurations of one group (``batch`` hook, or: the shape of the
        first, hyperparameters from the keys of ``hyper``, one truth per distinct values of
        ``truth_keys`` drawn by ``truth``, or the given ones)."""
        if self.batch is not None:
            return self.batch(cfgs, given, dtype, group)
        shape = self.shape_of(cfgs[0])
        hyper = [self.hyper(*(c[f] for f in self.hyper._fields)) for c in cfgs]
        truths, cache = [], {}
        for i, c in enumerate(cfgs):
            if given is not None and given[i] is not None:
                key = ("given", id(given[i]))
                if key not in cache:
                    cache[key] = jax.tree.map(lambda x: np.asarray(x), given[i])
            elif self.truth is None:
                key = None
                cache[key] = None
            else:
                key = tuple(c[k] for k in self.truth_keys)
                if key not in cache:
                    cache[key] = jax.tree.map(np.asarray, self.truth(c, dtype))
            truths.append(cache[key])
        return Batch(shape, hyper, truths, None)

    def result_of(self, cfg: Mapping, batch: Batch, record, flags) -> dict:
        """The result dict of one configuration from its record (NumPy) and flags."""
        if self.results is not None:
            return self.results(cfg, batch, record, flags)
        return record_results(record, flags)

    def one_device(self, shape) -> bool:
        """Whether batches of this shape must run on one CPU device (LAPACK in the loop)."""
        return bool(self.single_device(shape)) if self.single_device is not None else False

    def default_chunk(self, cfg: Mapping) -> int:
        return int(self.chunk_size(cfg)) if self.chunk_size is not None else MAX_CHUNK

    def sub_batch_of(self, shape, dtype) -> int:
        return int(self.sub_batch(shape, dtype)) if self.sub_batch is not None else SUB_BATCH


_REGISTRY: dict[str, Protocol] = {}
_LOCK = threading.Lock()


def record_results(record, flags: Mapping) -> dict:
    """The default result dict of one run: the record's scalars as floats (boolean ones as bools),
    its arrays under ``"trajectories"``, and ``<stage>_diverged`` from ``flags``."""
    res: dict[str, Any] = {}
    traj: dict[str, Any] = {}
    for field, value in zip(record._fields, record):
        value = np.asarray(value)
        if value.ndim == 0:
            res[field] = bool(value) if value.dtype == bool else float(value)
        else:
            traj[field] = value
    for name, flag in flags.items():
        res[f"{name}_diverged"] = bool(flag)
    res["trajectories"] = traj
    return res


def register(protocol: Protocol, *, replace: bool = False) -> Protocol:
    """Add ``protocol`` to the registry under ``protocol.name`` (``replace=True`` to redefine it).
    Raises ``ValueError`` for a name already taken, a bad name or missing parts."""
    if not isinstance(protocol, Protocol):
        raise ValueError(f"register needs a linmeta.protocols.Protocol, got "
                         f"{type(protocol).__name__}")
    name = protocol.name
    if not isinstance(name, str) or not name or not name.replace("_", "").isalnum():
        raise ValueError(f"protocol name must be a non-empty word (letters, digits, _), "
                         f"got {name!r}")
    if not callable(protocol.run):
        raise ValueError(f"protocol {name!r}: run must be a function (truth, keys, hyper, shape) "
                         "-> NamedTuple of arrays")
    for attr in ("hyper",):
        if not hasattr(getattr(protocol, attr), "_fields"):
            raise ValueError(f"protocol {name!r}: {attr} must be a NamedTuple class whose fields "
                             "are configuration keys")
    missing = [f for f in protocol.hyper._fields if f not in protocol.defaults
               and protocol.batch is None]
    missing += [f for f in protocol.static if f not in protocol.defaults and protocol.batch is None]
    if missing:
        raise ValueError(f"protocol {name!r}: key {missing[0]!r} of hyper/shape has no default")
    if "protocol" in protocol.defaults:
        raise ValueError(f"protocol {name!r}: 'protocol' is reserved (it selects the protocol)")
    with _LOCK:
        if name in _REGISTRY and not replace:
            raise ValueError(f"protocol {name!r} is already registered; pass replace=True to "
                             "redefine it")
        _REGISTRY[name] = protocol
    return protocol


def get(name) -> Protocol:
    """The registered protocol ``name``; ``ValueError`` naming the registered ones otherwise.
    The families (built in and installed, :mod:`linmeta.engine.families`) register theirs when
    first needed."""
    if not (isinstance(name, str) and name in _REGISTRY):
        families.load()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"protocol must be one of {', '.join(map(repr, names()))}; "
                         f"got {name!r}") from None


def names() -> tuple[str, ...]:
    """Names of the registered protocols (the built-in ones first, then the families')."""
    families.load()
    return tuple(_REGISTRY)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

def as_int(key, value, lo, hi, cfg):
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, numbers.Real)):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    if not isinstance(value, numbers.Integral):
        if not (math.isfinite(float(value)) and float(value).is_integer()):
            raise ValueError(f"{key} must be an integer, got {value!r}")
    value = int(value)
    hi_v = cfg[hi] if isinstance(hi, str) else hi
    hi_s = "inf" if hi is None else (f"{hi}={hi_v}" if isinstance(hi, str) else str(hi))
    lo = 0 if lo is None else lo
    if value < lo or (hi_v is not None and value > hi_v):
        raise ValueError(f"{key} must be an integer in [{lo}, {hi_s}], got {value}")
    return value


def as_count(key, value):
    what = {"N": "N (retraining samples per task)", "n": "n (fine-tuning samples)"}.get(key, key)
    msg = f"{what} must be an integer >= 1, or 0 / 'inf' for the population; got {value!r}"
    if isinstance(value, str):
        if value.strip().lower() in ("inf", "infinity", "population"):
            return "inf"
        raise ValueError(msg)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(msg)
    v = float(value)
    if v == math.inf or v == 0:
        return "inf"
    if not (math.isfinite(v) and v.is_integer() and v >= 1):
        raise ValueError(msg)
    return int(v)


def as_float(key, value, lo=0.0, open_lo=False, hi=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{key} must be a real number, got {value!r}")
    v = float(value)
    lo = 0.0 if lo is None else float(lo)
    rng = f"{'(' if open_lo else '['}{lo:g}, {'inf)' if hi is None else f'{hi:g}]'}"
    if (not math.isfinite(v) or v < lo or (open_lo and v == lo)
            or (hi is not None and v > hi)):
        raise ValueError(f"{key} must be a finite number in {rng}, got {value!r}")
    return v


def as_choice(key, value, choices):
    if value not in choices:
        raise ValueError(f"{key} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def _check_value(key, check: Check, value, cfg):
    if check.kind == "int":
        return as_int(key, value, check.lo, check.hi, cfg)
    if check.kind == "count":
        return as_count(key, value)
    if check.kind == "float":
        hi = cfg[check.hi] if isinstance(check.hi, str) else check.hi
        return as_float(key, value, check.lo, check.open_lo, hi)
    if check.kind == "choice":
        return as_choice(key, value, check.choices)
    raise ValueError(f"unknown check kind {check.kind!r} for key {key!r}")


def _inferred_check(key, default) -> Check | None:
    if key in ("seed", "truth_seed"):
        return Check("int", 0, SEED_MAX)
    if isinstance(default, bool):
        return Check("choice", choices=(False, True))
    if isinstance(default, numbers.Integral):
        return Check("int", 0)
    if isinstance(default, numbers.Real):
        return Check("float", 0.0)
    return None


def unknown_key_error(key, protocol: str | list, allowed, where: str = "") -> ValueError:
    """The error for a configuration key that ``protocol`` (a name, or the names of a grid over
    protocols) does not have: it names the key, says that the keys depend on the protocol (the
    key ``protocol`` chooses it) and lists the registered protocols and ``allowed``, the chosen
    protocol's keys."""
    names_ = [protocol] if isinstance(protocol, str) else list(protocol)
    chosen = " / ".join(map(repr, names_))
    keys = ["protocol", *[k for k in allowed if k != "protocol"]]
    others = [n for n in names() if n not in names_]
    example = f"; e.g. protocol = \"{others[0]}\" has other keys" if others else ""
    return ValueError(
        f"unknown configuration key {key!r}{' in ' + where if where else ' for protocol ' + chosen}"
        f"; allowed keys: {', '.join(keys)} (the keys of protocol {chosen}: the keys depend on "
        f"the protocol, which the key protocol chooses, one of {', '.join(map(repr, names()))}"
        f"{example})")


def _unknown_keys(proto: Protocol, cfg: Mapping) -> None:
    unknown = [key for key in cfg if key not in proto.defaults]
    if unknown:
        raise unknown_key_error(unknown[0], proto.name, proto.defaults)


def _generic_validate(proto: Protocol, cfg: Mapping) -> dict:
    _unknown_keys(proto, cfg)
    out = dict(proto.defaults)
    out.update(cfg)
    res: dict[str, Any] = {}
    checks = {key: proto.checks.get(key) or _inferred_check(key, proto.defaults[key])
              for key in proto.defaults}
    # keys whose bounds name another key come last
    order = sorted(proto.defaults, key=lambda k: isinstance(getattr(checks[k], "hi", None), str))
    for key in order:
        check = checks[key]
        res[key] = out[key] if check is None else _check_value(key, check, out[key],
                                                               {**out, **res})
    return {key: res[key] for key in proto.defaults}


def validate(cfg: Mapping) -> dict:
    """Fill the defaults of the configuration's protocol (key ``protocol``, default
    :data:`DEFAULT`) and check every value; returns a new dict with canonical types, the key
    ``protocol`` first. ``ValueError`` names the key and the allowed range or values."""
    if not isinstance(cfg, Mapping):
        raise ValueError(f"a configuration must be a mapping of keys to values, got "
                         f"{type(cfg).__name__}")
    proto = get(cfg.get("protocol", DEFAULT))
    rest = {k: v for k, v in cfg.items() if k != "protocol"}
    return {"protocol": proto.name, **proto.validated(rest)}


# --------------------------------------------------------------------------------------------
# Divergence
# --------------------------------------------------------------------------------------------

def _nan_is_padding(stage: Stage, cfg: Mapping) -> bool:
    p = stage.nan_is_padding
    return bool(p(cfg) if callable(p) else p)


def stage_flags(proto: Protocol, record, cfg: Mapping) -> dict:
    """In-program (traced) divergence flags of one run's ``record``: per stage, the or of the
    record's ``<name>_diverged`` field (if any) and :func:`linmeta.core.divergence.divergence_index`
    over the stage's recorded fields. ``cfg``: a configuration of the group (static choices such
    as ``nan_is_padding``)."""
    flags = {}
    for stage in proto.stages:
        flag = jnp.asarray(False)
        own = getattr(record, f"{stage.name}_diverged", None)
        if own is not None:
            flag = flag | jnp.asarray(own, bool)
        for field in stage.fields:
            idx = divergence_index(jnp.asarray(getattr(record, field)),
                                   nan_is_padding=_nan_is_padding(stage, cfg))
            flag = flag | (idx >= 0)
        flags[stage.name] = flag
    return flags


def _stage_diverged(stage: Stage, cfg: Mapping, result: Mapping) -> bool:
    flag = f"{stage.name}_diverged"
    if flag in result:  # computed in the program (linmeta.sweep)
        return bool(result[flag])
    traj = result.get("trajectories") or {}  # a result without flags: from its trajectories
    return any(int(divergence_index(np.asarray(traj[c], dtype=float),
                                    nan_is_padding=_nan_is_padding(stage, cfg))) >= 0
               for c in (stage.curves or stage.fields) if c in traj)


def diverged_stages(cfg: Mapping, result: Mapping) -> list[str]:
    """Names of the stages of ``cfg``'s protocol that diverged in ``result``, in the protocol's
    order: its ``<name>_diverged`` flags (computed by :mod:`linmeta.engine.sweep`), or, for a result
    without them, the blow-up test on its trajectories. A later stage fed by a diverged one is
    listed too (its flag is set); :func:`divergence_error` names the first."""
    proto = get(cfg.get("protocol", DEFAULT))
    return [s.name for s in proto.stages if _stage_diverged(s, cfg, result)]


def divergence_error(cfg: Mapping, result: Mapping) -> DivergenceError | None:
    """A :class:`linmeta.DivergenceError` for the first diverged stage of ``result`` (naming the
    stage, its step size(s), the iteration and the loss there), or ``None``. A downstream stage
    fed by a diverged one is not blamed: the first stage in the protocol's order is named."""
    proto = get(cfg.get("protocol", DEFAULT))
    traj = result.get("trajectories") or {}
    for stage in proto.stages:
        if not _stage_diverged(stage, cfg, result):
            continue
        keys = stage.step_sizes(cfg) if callable(stage.step_sizes) else stage.step_sizes
        sizes = {key: cfg[key] for key in keys if key in cfg}
        curves = stage.curves or stage.fields
        steps = stage.steps or (None,) * len(curves)
        best = None  # (iteration, value, start, stride)
        for curve, step_key in zip(curves, steps):
            if curve not in traj:
                continue
            v = np.asarray(traj[curve], dtype=float)
            idx = int(divergence_index(v, nan_is_padding=_nan_is_padding(stage, cfg)))
            if idx < 0:
                continue
            st = np.asarray(traj[step_key]) if step_key in traj else np.arange(len(v))
            stride = int(st[1] - st[0]) if st.size > 1 else 1
            it = int(st[idx])
            row = v.reshape(v.shape[0], -1)[idx]
            worst = row[~np.isfinite(row)][0] if np.any(~np.isfinite(row)) else np.max(row)
            start = float(np.max(np.abs(v.reshape(v.shape[0], -1)[0])))
            if best is None or it < best[0]:
                best = (it, float(worst), start, stride)
        if best is None:  # only the end state is non-finite
            last = [np.asarray(traj[s])[-1] for s in (stage.steps or ()) if s in traj]
            best = (int(last[0]) if last else 0, float("nan"), float("nan"), 1)
        return DivergenceError(stage.words, sizes, best[0], best[1], best[2], best[3])
    return None


def divergence_message(cfg: Mapping, result: Mapping) -> str | None:
    """One line naming the first diverged stage of ``result``, its step size(s) and the
    iteration (:func:`divergence_error`), or ``None`` when no stage diverged."""
    err = divergence_error(cfg, result)
    return None if err is None else str(err)



# --------------------------------------------------------------------------------------------
# Engine defaults and the base-matrix truth of a configuration
# --------------------------------------------------------------------------------------------

SAMPLE_BYTES = 64 * 2 ** 20   # temporary memory of the data draws per device (raw sampler)
TRAIN_BYTES = 256 * 2 ** 20   # default chunk: live training state per device
MAX_CHUNK = 1024
SUB_BATCH = 32                # configurations vmapped together (their state stays in cache)


@functools.lru_cache(maxsize=None)
def _truth_program(d: int, k: int, T: int, dtype):
    """The compiled program ``truth_seed -> (A*, U*, U_new)`` of :func:`linmeta.core.sampling.truth_for_seed`
    (from :mod:`linmeta.engine.program_cache` when stored)."""
    devices = jax.local_devices()[:1]
    opts = cpu_options() if devices[0].platform == "cpu" else {}
    seed = np.zeros((), np.int64 if jax.config.jax_enable_x64 else np.int32)

    def lower():
        return jax.jit(sampling.truth_for_seed, static_argnums=(1, 2, 3, 4)).lower(
            seed, d, k, T, dtype)

    exe, _ = program_cache.load_or_compile(("linmeta.core.sampling.truth_for_seed", d, k, T,
                                            str(jnp.dtype(dtype)), str(seed.dtype)), devices,
                                           lower, opts, (sampling.truth_for_seed,))
    return exe


def truth_program():
    """``f(truth_seed, d, k, T, dtype) -> Truth`` through the cached compiled programs."""
    def draw(truth_seed, d, k, T, dtype):
        seed = np.asarray(truth_seed, np.int64 if jax.config.jax_enable_x64 else np.int32)
        return Truth(*_truth_program(d, k, T, jnp.dtype(dtype))(seed))
    return draw


def cpu_options() -> dict:
    """XLA:CPU compile options of linmeta's programs (jax 0.10; measured on the paper's T sweep,
    whole program: the same numbers to the last bit). LLVM optimisation level 1: the default
    level spends seconds on the constant tables of the counter-based random number generator and
    the loops run no faster. The classic (non-MLIR) fusion emitters: half the compile time, and
    the loops run ~20 % faster. Codegen split in 2 parts (the default splits in many, which
    costs more CPU than two cores win back)."""
    return {"xla_backend_optimization_level": 1, "xla_cpu_use_fusion_emitters": False,
            "xla_cpu_parallel_codegen_split_count": 2}


def _float_dtype():
    return jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64))


def truth_for(cfg: Mapping) -> Truth:
    """The ground truth a paper configuration runs on: ``linmeta.sample_truth(jax.random.key(
    truth_seed), d, k, T, n_unseen=1)`` (see :mod:`linmeta.families.paper.protocol`)."""
    cfg = validate(cfg)
    return truth_program()(cfg["truth_seed"], cfg["d"], cfg["k"], cfg["T"], _float_dtype())


def check_given_truth(truth, cfg: Mapping) -> None:
    """``ValueError`` unless ``truth`` is a :class:`linmeta.Truth` with the configuration's d, k, T
    and at least one unseen task."""
    if not isinstance(truth, Truth):
        raise ValueError(f"truth must be a linmeta.Truth, got {type(truth).__name__}")
    for key, value in (("d", truth.d), ("k", truth.k), ("T", truth.T)):
        if cfg[key] != value:
            raise ValueError(f"configuration {key}={cfg[key]} does not match the truth "
                             f"({key}={value})")
    if truth.n_unseen < 1:
        raise ValueError("truth needs at least one unseen task (U_new of shape (m, d, k), "
                         "m >= 1) to fine-tune on")
