"""Figures from stored results (``linmeta plot``); reads files only, never recomputes.

The figure conventions are the paper's (docs/theory.md#protocol): fine-tuning test loss against
iteration on a log scale, Meta-LoRA beside standard retraining (SR), a mean line with a min-max band
over seeds (runs). From a sweep folder (:mod:`linmeta.results` layout):

- ``finetune_curves``: one panel per grid point (the swept values, seeds pooled);
- ``final_vs_<key>``: for each swept key, the final fine-tuning test loss and the base error
  ``||A_hat - A*||_F`` of both methods against the key (mean, min-max over seeds and other keys).

From a run folder: ``finetune_curves`` of that run, beside the retraining objectives (Meta-LoRA
against its outer iterations, SR against its gradient steps: two axes, since the step counts
differ).

What the figures show, stated on them: the *test loss* is the paper's "test task loss", the sum over
the n fine-tuning inputs of ``||(M - M*) x_i||^2`` (``n ||M - M*||_F^2`` in expectation; the excess
risk at the population); its theory levels are SR's rank-r bias ``n E_SR(r)`` (C2) and the LoRA
estimation floor ``n sigma^2 dof / n = sigma^2 dof``, ``dof = r(2d - r)``, ``sigma`` = noise_std
(C6). Against T, a point whose fine-tuning rank differs from its neighbours' (the paper's rank 3k
at T = 2, claim C4) is drawn apart, not joined, and the figure says so.

matplotlib is imported inside the functions, with the "Agg" backend, so importing linmeta never
pulls it in.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from linmeta.engine.results import (MANIFEST, RESULTS_CSV, RUN_RECORD, TRAJ_DIR, TRAJECTORIES,
                                    load_trajectories, read_csv)
from linmeta.engine.results import atomic_write_bytes
from linmeta.engine.results import check_writable_dir

__all__ = ["plot_results", "plot_sweep", "plot_run"]

ML_COLOR, SR_COLOR = "tab:blue", "tab:red"
MAX_PANELS = 24
_STEP_KEYS = ("ft_steps", "ft_step", "step", "steps")
ZERO_LEVEL = 1e-12  # a closed form below this (in ||.||_F^2 units) is an exact fit: not drawn


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_dir: Path, stem: str, formats) -> list[Path]:

    import io

    paths = []
    for fmt in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=150, bbox_inches="tight")
        path = out_dir / f"{stem}.{fmt}"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


def _curve(traj: dict, name: str):
    """(steps, values) of a recorded fine-tuning curve; values averaged over unseen tasks."""
    if name not in traj:
        return None
    y = np.asarray(traj[name], dtype=float)
    while y.ndim > 1:
        y = y.mean(axis=-1)
    x = next((np.asarray(traj[k]) for k in _STEP_KEYS if k in traj and np.size(traj[k]) == y.size),
             None)
    if x is None:
        x = np.arange(y.size)
    return x.astype(float), y


def _band(ax, curves, color, label):
    """Mean line with a min-max band over the curves (all on the same steps)."""
    curves = [c for c in curves if c is not None]
    if not curves:
        return
    n = min(c[1].size for c in curves)
    x = curves[0][0][:n]
    Y = np.stack([c[1][:n] for c in curves])
    Y = np.where(np.isfinite(Y) & (Y > 0), Y, np.nan)
    with np.errstate(all="ignore"), _quiet():
        mean = np.nanmean(Y, axis=0)
        lo, hi = np.nanmin(Y, axis=0), np.nanmax(Y, axis=0)
    ax.plot(x, mean, color=color, label=f"{label} (mean of {len(curves)})" if len(curves) > 1
            else label)
    if len(curves) > 1:
        ax.fill_between(x, lo, hi, color=color, alpha=0.25, linewidth=0)


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)


def _theory_lines(ax, rows: list[dict]) -> None:
    """Dashed levels of the theory in test-loss units (the paper's test loss is a sum over the n
    fine-tuning inputs, so about n times the excess risk ||M - M*||_F^2): SR's rank-r bias
    n E_SR(r) (C2) and the LoRA estimation floor n sigma^2 dof / n = sigma^2 dof (C6)."""
    def mean_of(key):
        vals = [r[key] * r["n"] for r in rows if isinstance(r.get(key), (int, float))
                and isinstance(r.get("n"), (int, float)) and math.isfinite(r["n"])
                and r[key] > ZERO_LEVEL]
        return float(np.mean(vals)) if vals else None

    bias, floor = mean_of("theory_sr_bias"), mean_of("theory_ft_error")
    if bias and bias > 0:
        ax.axhline(bias, color=SR_COLOR, ls="--", lw=1, label="theory: SR bias n E_SR(r) (C2)")
    if floor and floor > 0:
        ax.axhline(floor, color=ML_COLOR, ls="--", lw=1, label="theory: sigma^2 dof (C6)")


TEST_LOSS_LABEL = "test loss (sum over the n samples)"
TEST_LOSS_NOTE = ("test loss = sum over the n fine-tuning inputs of ||(M - M*) x||^2 (the paper's "
                  "test task loss); dashed: theory, n E_SR(r) = SR's rank-r bias (C2), "
                  "sigma^2 dof = LoRA floor (C6), sigma = noise_std, dof = r(2d - r)")


def _check_out(out_dir) -> Path:

    return Path(check_writable_dir(out_dir))


def _fixed_text(cfg: dict, skip=()) -> str:
    keys = ("d", "k", "T", "N", "n", "noise_std", "ml_solver", "outer_steps", "ft_steps")
    return ", ".join(f"{k}={cfg[k]}" for k in keys if k in cfg and k not in skip)


def _value_label(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


# ----------------------------------------------------------------------------- run
def plot_run(folder, out_dir=None, formats=("png", "pdf")) -> list[Path]:
    """``finetune_curves`` of one run folder (record.json + trajectories.npz)."""
    folder = Path(folder)
    with open(folder / RUN_RECORD) as f:
        record = json.load(f)
    traj_path = folder / TRAJECTORIES
    if not traj_path.exists():
        raise ValueError(f"run folder {str(folder)!r} has no {TRAJECTORIES}; nothing to plot")
    traj = load_trajectories(traj_path)
    out_dir = _check_out(out_dir if out_dir else folder / "figures")
    plt = _plt()
    cfg = record.get("config", {})
    panels = [("ml_objective", "outer_steps", ML_COLOR, "Meta-LoRA"),
              ("sr_objective", "sr_steps", SR_COLOR, "SR")]
    panels = [p for p in panels if p[0] in traj and np.size(traj[p[0]]) > 1]
    fig, axes = plt.subplots(1, 1 + len(panels), figsize=(5.2 * (1 + len(panels)), 4.2),
                             squeeze=False)
    ax = axes[0, 0]
    _band(ax, [_curve(traj, "ml_ft_test_loss")], ML_COLOR, "Meta-LoRA base")
    _band(ax, [_curve(traj, "sr_ft_test_loss")], SR_COLOR, "SR base")
    _theory_lines(ax, [{**cfg, **record.get("theory", {})}])
    ax.set_yscale("log")
    ax.set_xlabel("fine-tuning iteration")
    ax.set_ylabel(TEST_LOSS_LABEL)
    ax.set_title("fine-tuning on the unseen task", fontsize=10)
    ax.legend(fontsize=7)
    solver = cfg.get("ml_solver", "alternating")
    for ax, (name, axis, color, who) in zip(axes[0, 1:], panels):
        y = np.asarray(traj[name], float)
        while y.ndim > 1:
            y = y.mean(axis=-1)
        x = np.asarray(traj.get(axis, np.arange(y.size)), float)[:y.size]
        ax.plot(x, np.where(y > 0, y, np.nan), color=color, label=who)
        ax.set_yscale("log")
        if name == "ml_objective":
            ax.set_xlabel("Newton iteration" if solver == "newton" else
                          f"outer iteration ({cfg.get('inner_steps', '')} adapter steps + one "
                          f"base step)")
            ax.set_title(f"Meta-LoRA retraining ({solver})", fontsize=10)
        else:
            ax.set_xlabel("gradient step")
            ax.set_title("standard retraining (SR)", fontsize=10)
        ax.set_ylabel("excess retraining objective")
    fig.suptitle(f"linmeta run {record.get('id', '')}: {_fixed_text(cfg)}", fontsize=9)
    fig.text(0.5, -0.01, TEST_LOSS_NOTE, ha="center", va="top", fontsize=7, wrap=True)
    fig.tight_layout()
    paths = _save(fig, out_dir, "finetune_curves", formats)
    plt.close(fig)
    return paths


# ----------------------------------------------------------------------------- sweep
def plot_sweep(folder, out_dir=None, formats=("png", "pdf")) -> list[Path]:
    """``finetune_curves`` and ``final_vs_<key>`` of a sweep folder."""
    folder = Path(folder)
    with open(folder / MANIFEST) as f:
        manifest = json.load(f)
    csv_path = folder / RESULTS_CSV
    rows = read_csv(csv_path) if csv_path.exists() else []
    if not rows:
        raise ValueError(f"sweep folder {str(folder)!r} has no finished configurations yet "
                         f"({RESULTS_CSV} is empty or missing); nothing to plot")
    spec = manifest.get("spec", {})
    grid_keys = [k for k in spec.get("grid", {}) if k != "seed"]
    out_dir = _check_out(out_dir if out_dir else folder / "figures")
    plt = _plt()
    paths = []

    # group rows by grid point (seeds pooled), in table order
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in grid_keys), []).append(row)

    # --- fine-tuning curves, one panel per grid point
    points = list(groups.items())[:MAX_PANELS]
    all_ranks = {r.get("ft_rank") for r in rows}
    ncols = min(len(points), 4)
    nrows = math.ceil(len(points) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.3 * nrows), squeeze=False,
                             sharey=True)
    for ax in axes.flat[len(points):]:
        ax.set_visible(False)
    for i, (ax, (values, members)) in enumerate(zip(axes.flat, points)):
        trajs = []
        for row in members:
            p = folder / TRAJ_DIR / f"{row['id']}.npz"
            if p.exists():
                trajs.append(load_trajectories(p))
        _band(ax, [_curve(t, "ml_ft_test_loss") for t in trajs], ML_COLOR, "Meta-LoRA")
        _band(ax, [_curve(t, "sr_ft_test_loss") for t in trajs], SR_COLOR, "SR")
        _theory_lines(ax, members)
        ax.set_yscale("log")
        title = ", ".join(f"{k}={_value_label(v)}" for k, v in zip(grid_keys, values))
        if len(all_ranks) > 1 and "ft_rank" not in grid_keys:  # e.g. rank 3k at T = 2 (C4)
            title += ", ft_rank=" + "/".join(map(str, sorted({r.get("ft_rank") for r in members
                                                              if r.get("ft_rank") is not None})))
        ax.set_title(title or "all configurations", fontsize=9)
        ax.set_xlabel("fine-tuning iteration")
        if i % ncols == 0:  # the y axis is shared: its label and ticks on the left column only
            ax.set_ylabel(TEST_LOSS_LABEL)
        ax.legend(fontsize=7)
    more = "" if len(groups) <= MAX_PANELS else f" (first {MAX_PANELS} of {len(groups)} points)"
    fixed = spec.get("fixed", {})
    fig.suptitle(f"{spec.get('name') or 'linmeta sweep'}: mean and min-max over seeds{more}\n"
                 f"fixed: {_fixed_text({**rows[0], **fixed}, skip=grid_keys)}", fontsize=9)
    fig.text(0.5, -0.01, TEST_LOSS_NOTE, ha="center", va="top", fontsize=7, wrap=True)
    fig.tight_layout()
    paths += _save(fig, out_dir, "finetune_curves", formats)
    plt.close(fig)

    # --- final values against each swept key
    for key in grid_keys:
        values = list(dict.fromkeys(row.get(key) for row in rows))
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric:
            values = sorted(values)
        xs = values if numeric else list(range(len(values)))
        segments, rank_note = _rank_segments(rows, key, values)
        fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), squeeze=False)
        for ax, (ylabel, ml_col, sr_col, ml_th, sr_th) in zip(axes.flat, (
                (f"final {TEST_LOSS_LABEL}", "ml_ft_test_loss", "sr_ft_test_loss", None, None),
                ("fine-tuning excess risk ||M - M*||_F^2", "ml_ft_excess_risk",
                 "sr_ft_excess_risk", "theory_ft_error", "theory_sr_bias"),
                ("base error ||A_hat - A*||_F", "ml_base_error", "sr_base_error", None, None))):
            curves = [(ml_col, ML_COLOR, "Meta-LoRA", "-", "o"), (sr_col, SR_COLOR, "SR", "-", "o")]
            if ml_th and any(ml_th in r for r in rows):
                curves += [(ml_th, ML_COLOR, "theory: sigma^2 dof / n (C6)", "--", None),
                           (sr_th, SR_COLOR, "theory: SR bias E_SR(r) (C2)", "--", None)]
            for col, color, label, ls, marker in curves:
                mean, lo, hi = [], [], []
                for v in values:
                    ys = np.array([r.get(col) for r in rows if r.get(key) == v
                                   and isinstance(r.get(col), (int, float))], float)
                    ys = ys[np.isfinite(ys)]
                    if ls == "--":
                        ys = ys[ys > ZERO_LEVEL]  # an exact fit (0 up to rounding) is not drawn
                    mean.append(ys.mean() if ys.size else np.nan)
                    lo.append(ys.min() if ys.size else np.nan)
                    hi.append(ys.max() if ys.size else np.nan)
                mean, lo, hi = map(np.asarray, (mean, lo, hi))
                if not np.any(np.isfinite(mean) & (mean > 0)):
                    continue
                # fine-tuning numbers of another adapter rank are not joined (retraining's are)
                segs = segments if ml_col != "ml_base_error" else [list(range(len(values)))]
                for j, seg in enumerate(segs):
                    x = [xs[i] for i in seg]
                    ax.plot(x, mean[seg], ls=ls, marker=marker if len(seg) > 1 or ls == "-"
                            else "_", ms=None if ls == "-" else 14, color=color,
                            label=label if j == 0 else None)
                    if ls == "-" and len(seg) > 1:
                        ax.fill_between(x, lo[seg], hi[seg], color=color, alpha=0.25, linewidth=0)
                    elif ls == "-":  # a lone point: its min-max range as a bar
                        ax.vlines(x, lo[seg], hi[seg], color=color, alpha=0.4, lw=6)
            ax.set_yscale("log")
            if numeric and all(v > 0 for v in values) and max(values) / min(values) >= 20:
                ax.set_xscale("log")
            if not numeric or len(values) <= 8:
                ax.set_xticks(xs, [_value_label(v) for v in values])
                ax.minorticks_off()
            ax.set_xlabel(key)
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=8)
        title = f"against {key}: mean, min-max band over seeds and other swept keys"
        if rank_note:
            title += f"\n{rank_note}"
        fig.suptitle(title, fontsize=9)
        fig.text(0.5, -0.01, TEST_LOSS_NOTE, ha="center", va="top", fontsize=7, wrap=True)
        fig.tight_layout()
        paths += _save(fig, out_dir, f"final_vs_{key}", formats)
        plt.close(fig)
    return paths


def _rank_segments(rows, key, values):
    """Runs of consecutive ``values`` whose rows fine-tune with the same adapter rank (indices into
    ``values``), and a note naming the ranks when there is more than one run (e.g. the paper's
    rank 3k at T = 2, claim C4), else ''."""
    ranks = []
    for v in values:
        rs = sorted({r.get("ft_rank") for r in rows if r.get(key) == v
                     and isinstance(r.get("ft_rank"), int)})
        ranks.append(tuple(rs))
    segments = []
    for i, r in enumerate(ranks):
        if segments and ranks[segments[-1][-1]] == r:
            segments[-1].append(i)
        else:
            segments.append([i])
    if len(segments) <= 1:
        return segments, ""
    parts = []
    for seg in segments:
        r = ranks[seg[0]]
        rank = "/".join(map(str, r)) if r else "?"
        vals = ", ".join(_value_label(values[i]) for i in seg)
        parts.append(f"{key} = {vals}: ft_rank {rank}")
    extra = (" (T = 2 fine-tunes with rank 3k, the paper's choice: claim C4)"
             if key == "T" and any(values[s[0]] == 2 for s in segments) else "")
    return segments, ("fine-tuning numbers not joined where the adapter rank differs: "
                      + "; ".join(parts) + extra)


def plot_results(folder, out_dir=None, formats=("png", "pdf")) -> list[Path]:
    """Figures of a sweep folder (manifest.json) or a run folder (record.json)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"results folder {str(folder)!r} does not exist")
    if (folder / MANIFEST).exists():
        return plot_sweep(folder, out_dir, formats)
    if (folder / RUN_RECORD).exists():
        return plot_run(folder, out_dir, formats)
    raise ValueError(f"{str(folder)!r} is neither a sweep folder ({MANIFEST}) nor a run folder "
                     f"({RUN_RECORD}); pass a folder written by 'linmeta sweep' or 'linmeta run'")
