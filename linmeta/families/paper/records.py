"""Run records of the paper's protocols: divergence in words a user can act on (docs/theory.md, methods and
protocol).

A stage diverged when the engine's flag says so (NaN/inf in its state or records) or when one of
its recorded losses blew up: :func:`linmeta.core.divergence.divergence_index` (non-finite, or above
``BLOWUP_FACTOR`` = 1e3 times its first record; a stable gradient step never raises a quadratic
loss, an unstable one raises it geometrically and stays finite for many steps). The stages are
``"ml"`` (Meta-LoRA retraining), ``"sr"`` (standard retraining) and ``"ft"`` (fine-tuning);
:func:`divergence_error` names the first stage that diverged and what to change: the step size (a
:class:`linmeta.DivergenceError`), or ``init_scale`` / ``noise_std`` when the initial adapters or
the data are what overflows. These, the closed forms a run's record carries (:func:`record_theory`) and its printed summary
(:func:`summary`) are the hooks of the paper's protocols in the run records of
:mod:`linmeta.engine.runs`.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from linmeta.core import theory
from linmeta.core.divergence import BLOWUP_FACTOR, DivergenceError, divergence_index
from linmeta.engine.runs import format_value

__all__ = ["STAGES", "divergence_flags", "diverged_stages", "divergence_error", "stage_words",
           "record_theory", "summary", "PAPER_DEFAULTS"]

STAGES = {"ml": "Meta-LoRA retraining", "sr": "standard retraining", "ft": "fine-tuning"}

PAPER_DEFAULTS: dict = {
    "d": 10,
    "k": 1,
    "T": 3,
    "N": 5000,             # retraining samples per task; 0 or "inf" = population
    "n": 100,              # fine-tuning samples; 0 or "inf" = population
    "noise_std": 0.01,     # std of the noise drawn (the paper's code: sigma^2 with sigma = 0.1)
    "seed": 0,             # data and initialisations
    "truth_seed": 0,       # ground truth, fixed across seeds as in the paper
    "ml_solver": "alternating",
    "outer_steps": 3000,
    "inner_steps": 10,
    "lr_adapter": 0.003,
    "lr_base": 0.03,
    "sr_steps": 3000,
    "sr_lr": 0.03,
    "ft_steps": 1000,
    "ft_lr": 0.005,
    "ft_rank": 0,          # 0 = k, or 3k when T == 2 (as the paper); resolved by validation
    "init_scale": 0.1,
    "record_every": 10,
    "sampler": "raw",      # "raw" samples (streamed) or "wishart" statistics (exact, O(d^3))
}


def _curve(result: Mapping, name: str):
    traj = result.get("trajectories") or {}
    c = traj.get(name)
    if c is None or np.size(c) == 0:
        return None
    y = np.asarray(c, dtype=float)
    return y.reshape(y.shape[0], -1)


def _first_bad(y, nan_is_padding: bool) -> int:
    """First record of ``y`` that is non-finite (NaN only unless padding) or blew up; -1."""
    if y is None:
        return -1
    idx = int(divergence_index(y, BLOWUP_FACTOR, nan_is_padding=True))
    if not nan_is_padding:
        nonfinite = ~np.all(np.isfinite(y), axis=1)
        if nonfinite.any():
            j = int(np.argmax(nonfinite))
            idx = j if idx < 0 else min(idx, j)
    return idx


def _stage_curves(cfg: Mapping, result: Mapping) -> dict:
    """Recorded losses of each stage: (name, curve, step axis name, NaN is padding)."""
    newton = cfg.get("ml_solver") == "newton"
    return {
        # Newton's trace is NaN-padded after it stops, and its objective is not a descent
        # sequence one can hold to the blow-up rule: only the engine's flag counts there
        "ml": [] if newton else [("ml_objective", _curve(result, "ml_objective"), "outer_steps")],
        "sr": [("sr_objective", _curve(result, "sr_objective"), "sr_steps")],
        "ft": [("ml_ft_test_loss", _curve(result, "ml_ft_test_loss"), "ft_steps"),
               ("sr_ft_test_loss", _curve(result, "sr_ft_test_loss"), "ft_steps")],
    }


def stage_words(cfg: Mapping, stage: str) -> str:
    """The name in words of stage ``stage`` of the configuration's protocol."""
    return STAGES.get(stage, stage)


def divergence_flags(cfg: Mapping, result: Mapping) -> dict:
    """``{"<stage>_diverged": bool}`` per stage of the configuration's protocol: for the paper's
    ``{"ml_diverged", "sr_diverged", "ft_diverged"}``, the engine's NaN/inf flag of each stage or
    a blow-up of one of its recorded losses; for another protocol its stages' flags
    (:func:`linmeta.engine.protocols.diverged_stages`)."""
    out = {}
    for stage, curves in _stage_curves(cfg, result).items():
        out[f"{stage}_diverged"] = bool(result.get(f"{stage}_diverged")) or any(
            _first_bad(y, nan_is_padding=True) >= 0 for _, y, _ in curves)
    return out


def diverged_stages(cfg: Mapping, result: Mapping) -> list[str]:
    """The stages that diverged, causes only, in order: ``"ml"`` (Meta-LoRA retraining), ``"sr"``
    (standard retraining), ``"ft"`` (fine-tuning; not when only the fine-tuning of a diverged SR
    base blew up, which is a consequence)."""
    flags = divergence_flags(cfg, result)
    stages = [s for s in ("ml", "sr") if flags[f"{s}_diverged"]]
    ml_ft = _first_bad(_curve(result, "ml_ft_test_loss"), True) >= 0
    sr_ft = _first_bad(_curve(result, "sr_ft_test_loss"), True) >= 0
    if (result.get("ft_diverged") and not stages) or ml_ft or (sr_ft and "sr" not in stages):
        stages.append("ft")
    return stages


def _defaults() -> dict:
    return PAPER_DEFAULTS


def _ratio(cfg: Mapping, key: str) -> float:
    try:
        return float(cfg[key]) / float(_defaults()[key])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return 1.0


def divergence_error(cfg: Mapping, result: Mapping) -> ValueError | None:
    """The error for the first stage that diverged (None when none did), naming the stage, the
    iteration and what to change:

    - the stage's first record is already non-finite: nothing was stepped yet, so no step size is
      to blame; the initial adapters (``init_scale``; Meta-LoRA, fine-tuning) or the data
      (``noise_std``) overflow the dtype;
    - ``init_scale`` is further above its default than the step sizes are (the curvature of the
      factored losses grows with the adapters' size, which lowers the stable step sizes): the
      error names ``init_scale``;
    - otherwise a :class:`linmeta.DivergenceError` naming the stage's step size(s), the one
      furthest above its default first.
    """
    stages = diverged_stages(cfg, result)
    if not stages:
        return None
    stage = stages[0]
    where = STAGES[stage]
    defaults = _defaults()
    steps_of = {"ml": ("lr_adapter", "lr_base"), "sr": ("sr_lr",), "ft": ("ft_lr",)}[stage]
    if stage == "ml" and cfg.get("ml_solver") == "newton":
        return ValueError(f"{where} (ml_solver='newton') produced NaN/inf with init_scale="
                          f"{cfg.get('init_scale')}; try ml_solver='alternating', a smaller "
                          f"init_scale (default {defaults['init_scale']}) or smaller sizes")
    traj = result.get("trajectories") or {}
    found = None
    for name, y, axis in _stage_curves(cfg, result)[stage]:
        i = _first_bad(y, nan_is_padding=False)
        if i >= 0 and (found is None or i < found[1]):
            found = (y, i, axis)
    dtype = next((str(np.asarray(v).dtype) for v in traj.values()
                  if np.issubdtype(np.asarray(v).dtype, np.floating)), "float64")
    if found is None:  # the engine flagged its final state only
        y, i, axis = None, None, None
        iteration, value, start, stride = (cfg.get({"ml": "outer_steps", "sr": "sr_steps",
                                                    "ft": "ft_steps"}[stage]), math.nan,
                                           math.nan, 1)
    else:
        y, i, axis = found
        steps = np.asarray(traj.get(axis, np.arange(y.shape[0])))
        iteration = int(steps[i]) if i < steps.size else i
        stride = int(steps[1] - steps[0]) if steps.size > 1 else 1
        row = y[i]
        value = float(row[~np.isfinite(row)][0]) if np.any(~np.isfinite(row)) else float(
            np.max(row))
        start = float(np.max(np.abs(y[0])))
    huge = math.sqrt(float(np.finfo(np.dtype(dtype)).max))
    if found is not None and (i == 0 or (not math.isfinite(value) and start > huge)):
        # non-finite before any step, or a loss already near the overflow range: the sizes of
        # the data or of the initial adapters are to blame, not a step size
        culprit = "noise_std" if stage == "sr" or _ratio(cfg, "noise_std") >= _ratio(
            cfg, "init_scale") else "init_scale"
        what = ("the task data (noise_std=" if culprit == "noise_std" else
                "the initial adapters' products (init_scale=") + f"{cfg.get(culprit)})"
        when = "starts from a non-finite loss" if i == 0 else (
            f"overflows at iteration {iteration} (its loss starts at {start:.3g})")
        return ValueError(f"{where} {when}: {what} are too large for {dtype}; choose a smaller "
                          f"{culprit} (default {defaults[culprit]})")
    sizes = sorted(steps_of, key=lambda k: -_ratio(cfg, k))
    step_sizes = {k: float(cfg[k]) for k in sizes}
    if stage in ("ml", "ft") and _ratio(cfg, "init_scale") > max(1.0, *(_ratio(cfg, k)
                                                                     for k in sizes)):
        err = DivergenceError(where, step_sizes, iteration, value, start, stride)
        err.args = (f"{where} diverged at iteration {iteration}: loss "
                    f"{'non-finite' if not math.isfinite(value) else f'{value:.3g}'} from "
                    f"{start:.3g} with init_scale={cfg['init_scale']:g} (large initial adapters "
                    f"raise the curvature past the stability limit of "
                    f"{', '.join(f'{k}={v:g}' for k, v in step_sizes.items())}); choose a "
                    f"smaller init_scale (default {defaults['init_scale']})",)
        return err
    err = DivergenceError(where, step_sizes, iteration, value, start, stride)
    key = sizes[0]
    err.args = (f"{err.args[0]} (default {key}={defaults[key]})",)
    return err


def record_theory(cfg: Mapping, truth) -> dict:
    """Closed forms a run's record carries: C1, the population SR minimiser is ``A* + Rbar``, so
    its base error is ``||Rbar||_F``."""
    return {"theory_sr_base_error": float(np.linalg.norm(np.asarray(
        theory.sr_bias_matrix(truth.U_star))))}


def summary(record: Mapping) -> list[str]:
    """The lines ``linmeta run`` prints for a paper run: sizes, truth, Meta-LoRA beside SR, and
    the closed forms beside them (C1, C2, C6)."""
    out = []
    cfg, r, th, env = record["config"], record["results"], record["theory"], record["environment"]
    sizes = " ".join(f"{k}={cfg[k]}" for k in ("d", "k", "T", "N", "n", "noise_std", "seed")
                     if k in cfg)
    truth = record["truth"]
    tsrc = {"file": f"truth file {truth.get('path')}",
            "arrays": f"truth arrays (sha256 {str(truth.get('sha256'))[:12]})"}.get(
        truth["source"], f"sampled truth (truth_seed={truth.get('truth_seed')})")
    out.append(f"linmeta run {record['id']}: {sizes}")
    out.append(f"  {tsrc}; Meta-LoRA solver {cfg.get('ml_solver')}; {env['dtype']} on {env['device']}")
    rows = [("base error ||A_hat - A*||_F", "ml_base_error", "sr_base_error"),
            ("relative base error", "ml_base_rel_error", "sr_base_rel_error"),
            ("fine-tuning test loss (final)", "ml_ft_test_loss", "sr_ft_test_loss"),
            ("excess risk ||M - M*||_F^2", "ml_ft_excess_risk", "sr_ft_excess_risk"),
            ("final retraining excess objective", "ml_objective", "sr_objective")]
    out.append(f"  {'':34s}{'Meta-LoRA':>12s}{'SR':>12s}")
    for label, a, b in rows:
        if a in r or b in r:
            out.append(f"  {label:34s}{format_value(r.get(a)):>12s}{format_value(r.get(b)):>12s}")
    if th:
        out.append("  theory:")
        if "theory_sr_base_error" in th:
            out.append(f"    C1 SR population base error ||Rbar||_F:          "
                  f"{format_value(th['theory_sr_base_error']):>10s}   (vs SR base error)")
        if "theory_sr_bias" in th:
            out.append(f"    C2 SR rank-{cfg.get('ft_rank')} bias E_SR(r) (Eckart-Young):      "
                  f"{format_value(th['theory_sr_bias']):>10s}   (vs SR excess risk)")
        if "theory_ft_error" in th:
            out.append(f"    C6 LoRA fine-tuning error sigma^2 dof / n:       "
                  f"{format_value(th['theory_ft_error']):>10s}   (vs Meta-LoRA excess risk)")
    return out
