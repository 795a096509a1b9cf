"""The shared-representation protocol as a registered protocol of :mod:`linmeta.engine.protocols`
(name ``"representation"``), so that :mod:`linmeta.engine.sweep` and ``linmeta sweep`` run it by name.

One configuration (a flat dict; :data:`DEFAULTS` lists its keys) runs
:func:`linmeta.families.representation.protocol.run_protocol` (claims R1-R7) on

- the truth ``sample_rep_truth(jax.random.key(truth_seed), d, k, T, Sigma_w=diag(1, .., 1,
  diversity), heads=heads, delta_scale=delta_scale, n_target=n_target)`` (:func:`truth_for`;
  drawn once per distinct truth keys, on the host),
- the keys ``run_keys(seed)`` (source data, target data, initialisation),
- the traced hyperparameters :class:`~linmeta.families.representation.protocol.Hyper` (noise level, step
  sizes, AdaptRep's lambda and gamma, the target fine-tuning's lambda and gamma, ANIL's
  initialisation scale: a grid over them compiles once) and
- the static :class:`~linmeta.families.representation.protocol.Shape` (sizes, source samples per task ``n``
  (``"inf"`` or 0: the population), target samples ``m``, loop lengths, record stride): one
  compiled program per shape group.

Stages for divergence: ``frozen`` (FrozenRep), ``fedrep`` (FedRep), ``anil`` (ANIL), ``adapt``
(AdaptRep), each flagged from its recorded training objective (``*_objective_traj``: non-finite
or a 1000-fold rise, :func:`linmeta.core.divergence.divergence_index`) or-ed with the run's own flag
(non-finite end point). Result columns: :data:`RESULT_KEYS` (subspace distances, objectives,
target excess risks and their closed forms, late rates, flags); trajectories: the distances
(``*_traj``) and objectives (``*_objective_traj``) at ``train_steps`` (ANIL at
``anil_train_steps``).

Example::

    from linmeta import sweep
    cfgs = sweep.expand_grid({"fixed": {"protocol": "representation", "m": 30},
                              "grid": {"lam": [0.01, 0.1, 1.0]}, "seeds": 3})
    for cfg, res in zip(cfgs, sweep.run_sweep(cfgs)):    # one compile
        print(cfg["lam"], res["adapt_sin_max"], res["adapt_finetune_risk"])
"""
from __future__ import annotations

import math
import numbers
import threading
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from linmeta.engine import protocols
from linmeta.methods import record_steps
from .protocol import Hyper, Outcome, Shape, run_keys, run_protocol
from .truth import sample_rep_truth

__all__ = ["NAME", "DEFAULTS", "RESULT_KEYS", "STAGES", "PROTOCOL", "truth_for", "shape_of",
           "register"]

NAME = "representation"

#: Every configuration key of the protocol and its default (``protocol`` excluded).
DEFAULTS: dict[str, Any] = {
    "d": 10, "k": 2, "T": 10,
    "n": "inf",              # source samples per task; "inf" or 0 = population
    "m": 20,                 # target samples per target task
    "n_target": 4,           # target tasks (risks are means over them)
    "heads": "balanced",     # source heads: "balanced" (exact Sigma_w, T even >= 2k) or "gaussian"
    "diversity": 1.0,        # Sigma_w = diag(1, .., 1, diversity)
    "delta_scale": 0.0,      # perturbations: E||Delta*_t w||^2 = delta_scale^2 ||w||^2
    "seed": 0, "truth_seed": 0,
    "noise_std": 0.5, "frozen_lr": 0.5, "eta": 0.5, "alpha": 0.5, "beta": 0.2,
    "adapt_lr": 0.5, "lam": 0.1, "gamma": 0.01, "target_lam": 10.0, "target_gamma": 1e-3,
    "init_scale": 0.5,
    "frozen_steps": 300, "fedrep_steps": 300, "anil_steps": 600, "adapt_steps": 600,
    "adapt_inner": 5, "n_starts": 1, "target_steps": 50, "record_every": 10,
}

_C = protocols.Check
CHECKS: dict[str, protocols.Check] = {
    "d": _C("int", 1), "k": _C("int", 1, "d"), "T": _C("int", 1), "m": _C("int", 1),
    "n_target": _C("int", 1), "heads": _C("choice", choices=("balanced", "gaussian")),
    "diversity": _C("float", 0.0, open_lo=True), "delta_scale": _C("float", 0.0),
    **{key: _C("float", 0.0, open_lo=True) for key in (
        "frozen_lr", "eta", "alpha", "beta", "adapt_lr", "lam", "target_lam", "init_scale")},
    **{key: _C("float", 0.0) for key in ("noise_std", "gamma", "target_gamma")},
    **{key: _C("int", 0) for key in ("frozen_steps", "fedrep_steps", "anil_steps",
                                     "adapt_steps")},
    **{key: _C("int", 1) for key in ("adapt_inner", "n_starts", "target_steps",
                                     "record_every")},
}

HELP = {
    "n": "source samples per task (an integer >= 1, or 0 / 'inf' for the population)",
    "m": "target samples per target task",
    "diversity": "smallest eigenvalue of the task diversity Sigma_w = diag(1, .., 1, diversity)",
    "delta_scale": "relative size of the task-specific perturbations Delta*_t",
    "lam": "AdaptRep's penalty on Delta_t (lambda)", "gamma": "AdaptRep's ridge on the heads",
    "eta": "FedRep's step size", "frozen_lr": "FrozenRep's step size",
    "alpha": "ANIL's inner step", "beta": "ANIL's outer step",
}

#: Scalar result columns (0-d fields of the run's record; the four ``*_diverged`` are the
#: engine's stage flags).
RESULT_KEYS = tuple(f for f in Outcome._fields if not f.endswith("_traj"))

STAGES = (
    protocols.Stage("frozen", "FrozenRep training", fields=("frozen_objective_traj",),
                    step_sizes=("frozen_lr",), steps=("train_steps",)),
    protocols.Stage("fedrep", "FedRep training", fields=("fedrep_objective_traj",),
                    step_sizes=("eta",), steps=("train_steps",)),
    protocols.Stage("anil", "ANIL training", fields=("anil_objective_traj",),
                    step_sizes=("alpha", "beta"), steps=("anil_train_steps",)),
    protocols.Stage("adapt", "AdaptRep training", fields=("adapt_objective_traj",),
                    step_sizes=("adapt_lr",), steps=("train_steps",)),
)


def _count_message(value) -> str:
    return (f"n (source samples per task) must be an integer >= 1, or 0 / 'inf' for the "
            f"population; got {value!r}")


def _source_count(value):
    if isinstance(value, str):
        if value.strip().lower() in ("inf", "infinity", "population"):
            return "inf"
        raise ValueError(_count_message(value))
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(_count_message(value))
    v = float(value)
    if v == math.inf or v == 0:
        return "inf"
    if not (math.isfinite(v) and v.is_integer() and v >= 1):
        raise ValueError(_count_message(value))
    return int(v)


def validate(cfg: Mapping) -> dict:
    """Defaults filled and every value checked (``ValueError`` naming the key and the allowed
    range): the generic checks of :data:`CHECKS`, then ``n`` (source samples) and balanced
    heads' ``T`` (even, >= 2k)."""
    out = protocols._generic_validate(PROTOCOL, cfg)
    out["n"] = _source_count(out["n"])
    if out["heads"] == "balanced" and (out["T"] % 2 or out["T"] < 2 * out["k"]):
        raise ValueError(f"T must be even and >= 2k = {2 * out['k']} for heads='balanced'; got "
                         f"T={out['T']} (or use heads='gaussian')")
    return out


def shape_of(cfg: Mapping) -> Shape:
    """The static :class:`~linmeta.families.representation.protocol.Shape` of a validated configuration."""
    return Shape(d=cfg["d"], k=cfg["k"], T=cfg["T"], n=None if cfg["n"] == "inf" else cfg["n"],
                 m=cfg["m"], n_target=cfg["n_target"],
                 **{f: cfg[f] for f in Shape._fields[6:]})


def hyper_of(cfg: Mapping, dtype=None) -> Hyper:
    """The traced :class:`~linmeta.families.representation.protocol.Hyper` of a configuration (arrays)."""
    dt = jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64)) if dtype is None else dtype
    return Hyper(*(jnp.asarray(cfg[f], dt) for f in Hyper._fields))


_TRUTH_LOCK = threading.Lock()  # eager LAPACK calls (QR, Cholesky) from one thread at a time


def truth_for(cfg: Mapping, dtype=None):
    """The :class:`~linmeta.families.representation.RepTruth` a configuration runs on (module
    docstring); ``cfg`` is validated first."""
    cfg = validate({k: v for k, v in cfg.items() if k != "protocol"})
    dt = jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64)) if dtype is None else dtype
    sigma = np.diag([1.0] * (cfg["k"] - 1) + [cfg["diversity"]])
    with _TRUTH_LOCK:
        return sample_rep_truth(jax.random.key(cfg["truth_seed"]), cfg["d"], cfg["k"], cfg["T"],
                                Sigma_w=sigma, heads=cfg["heads"],
                                delta_scale=cfg["delta_scale"], n_target=cfg["n_target"],
                                dtype=dt)


def _keys(seed, truth_seed=None):
    """``run_keys(seed)``: the source, target and initialisation streams."""
    return run_keys(seed)


def _run(truth, keys, hyper, shape):
    """:func:`linmeta.families.representation.protocol.run_protocol` of one configuration."""
    return run_protocol(truth, keys, hyper, shape)


def _results(cfg: Mapping, batch: protocols.Batch, record, flags) -> dict:
    """Scalars as floats (flags as bools), arrays as trajectories, with their step numbers."""
    res = protocols.record_results(record, flags)
    traj = res["trajectories"]
    s = batch.shape
    traj["train_steps"] = record_steps(max(s.frozen_steps, s.fedrep_steps, s.adapt_steps),
                                       s.record_every)
    traj["anil_train_steps"] = record_steps(s.anil_steps, s.record_every)
    res["trajectories"] = traj
    return res


_COLOURS = {"frozen": "tab:purple", "fedrep": "tab:green", "anil": "tab:orange",
            "adapt": "tab:blue"}
_NAMES = {"frozen": "FrozenRep", "fedrep": "FedRep", "anil": "ANIL", "adapt": "AdaptRep"}


def _by_method(fmt: str, methods=tuple(_NAMES), **kw) -> tuple:
    return tuple(protocols.Series(fmt.format(m), _NAMES[m], _COLOURS[m],
                                  steps="anil_train_steps" if m == "anil" else None, **kw)
                 for m in methods)


#: What ``linmeta plot`` draws for ``"representation"`` (:mod:`linmeta.front.plotting`).
PLOTS = protocols.Plots(
    curves=(
        protocols.Curves("distance_curves", "distance to the shared representation B*",
                         "sin of the largest principal angle to B*", _by_method("{}_traj"),
                         steps="train_steps", xlabel="training iteration"),
        protocols.Curves("objective_curves", "training objectives", "training objective",
                         _by_method("{}_objective_traj"), steps="train_steps",
                         xlabel="training iteration")),
    finals=(
        protocols.Finals("sin of the largest principal angle to B*", _by_method("{}_sin_max")),
        protocols.Finals("target excess risk, head only", (
            *(protocols.Series(f"{m}_head_risk", _NAMES[m], _COLOURS[m])
              for m in ("frozen", "adapt", "anil")),
            protocols.Series("scratch_risk", "least squares from scratch", "black"),
            protocols.Series("theory_frozen_risk", "theory: FrozenRep", "tab:purple",
                             dashed=True),
            protocols.Series("theory_scratch_risk", "theory: from scratch", "black",
                             dashed=True))),
        protocols.Finals("target excess risk, head and representation fine-tuned", (
            *(protocols.Series(f"{m}_finetune_risk", _NAMES[m], _COLOURS[m])
              for m in ("frozen", "adapt")),
            protocols.Series("scratch_risk", "least squares from scratch", "black"),
            protocols.Series("theory_frozen_floor", "theory: FrozenRep's floor", "tab:purple",
                             dashed=True)))),
    fixed=("d", "k", "T", "n", "m", "noise_std", "diversity", "delta_scale"),
    note=("FrozenRep, FedRep, ANIL and AdaptRep trained on T source tasks; target risks are "
          "means over the target tasks, fine-tuned on m samples each (docs/representation.md)"))

PROTOCOL = protocols.Protocol(
    name=NAME, run=_run, defaults=DEFAULTS, hyper=Hyper, shape=shape_of,
    truth=truth_for, truth_keys=("truth_seed", "d", "k", "T", "n_target", "heads", "diversity",
                                 "delta_scale"),
    keys=_keys, stages=STAGES, checks=CHECKS, result_keys=RESULT_KEYS,
    description=("the shared-representation protocol (claims R1-R7): FrozenRep, FedRep, ANIL "
                 "and AdaptRep trained on T source tasks, fine-tuned on target tasks beside "
                 "least squares from scratch (linmeta.representation.protocol)"),
    help=HELP, validate=validate, results=_results, plots=PLOTS)


def register() -> protocols.Protocol:
    """Register :data:`PROTOCOL` (done when :mod:`linmeta.families.representation` is imported)."""
    return protocols.register(PROTOCOL, replace=True)
