"""Figures from stored results (``linmeta plot``); reads files only, never recomputes.

What is drawn comes from the protocol that produced the results: its
:attr:`linmeta.engine.protocols.Protocol.plots` value (a :class:`~linmeta.engine.protocols.Plots`)
names the result columns and the trajectories to draw, with their labels, colours, steps and theory
levels. The paper's, the bilevel family's and the representation family's protocols declare theirs
in their registration code; a protocol without one (e.g. a plugin's) gets :func:`default_plots`,
read off its stored columns and trajectories; a protocol that declares ``Plots()`` (nothing), or
whose results hold nothing numeric, is refused with one line (``ValueError``; ``linmeta plot``
exits with 2).

From a sweep folder (:mod:`linmeta.engine.results` layout: ``results.csv``,
``trajectories/<id>.npz``, ``manifest.json``):

- ``<stem>`` for each :class:`~linmeta.engine.protocols.Curves` of the protocol (e.g. the paper's
  ``finetune_curves``): one panel per grid point (seeds pooled: mean line, min-max band), its
  series against their steps, its levels dashed;
- ``final_vs_<key>`` for each swept key: one column of panels per
  :class:`~linmeta.engine.protocols.Finals` (result columns against the key: mean line, min-max
  band over seeds) and one row per group of the other swept keys and of the protocol's
  ``split_by`` keys (the paper's: ``ft_rank``, which it sets to 3k at T = 2, claim C4): a line
  never pools different values of another swept key or of a fine-tuning rank. More than
  :data:`MAX_GROUPS` groups are pooled over the other swept keys (never over ``split_by``), and the
  figure says so.

From a run folder (``record.json``, ``trajectories.npz``): one figure, named after the protocol's
first curves (the paper's ``finetune_curves``), with one panel per
:class:`~linmeta.engine.protocols.Curves` (the sweep ones and the run-only ones, e.g. the paper's
retraining objectives).

A panel whose series hold no finite value says so on the panel; a log axis is used only where
every drawn value is positive. A sweep over several protocols with different plots gets one set of
figures per protocol (``<stem>_<protocol>``).

matplotlib is imported inside the functions, with the "Agg" backend, so importing linmeta never
pulls it in.
"""
from __future__ import annotations

import io
import json
import math
import numbers
from pathlib import Path

import numpy as np

from linmeta.engine import protocols
from linmeta.engine.protocols import Curves, Finals, Plots, Series
from linmeta.engine.results import (MANIFEST, RESULTS_CSV, RUN_RECORD, TRAJ_DIR, TRAJECTORIES,
                                    atomic_write_bytes, check_writable_dir, load_trajectories,
                                    read_csv)

__all__ = ["plot_results", "plot_sweep", "plot_run", "default_plots", "plots_of"]

MAX_PANELS = 24     # grid points drawn in a curves figure
MAX_GROUPS = 6      # rows of a final_vs_<key> figure before the other swept keys are pooled
MAX_DEFAULT = 6     # panels of a default_plots figure
ZERO_LEVEL = 1e-12  # a dashed (closed-form) value below this is an exact fit: not drawn
_NOT_COLUMNS = ("id", "protocol", "seed", "truth_seed")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_dir: Path, stem: str, formats) -> list[Path]:
    paths = []
    for fmt in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=150, bbox_inches="tight")
        path = out_dir / f"{stem}.{fmt}"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _value_label(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _points_label(keys, values) -> str:
    return ", ".join(f"{k}={_value_label(v)}" for k, v in zip(keys, values))


# ----------------------------------------------------------------------------- the protocol's plots
def plots_of(protocol: str, rows: list[dict], trajectories: dict | None) -> Plots:
    """The :class:`~linmeta.engine.protocols.Plots` of ``protocol`` (registered, built in or an
    installed plugin's): its declared value, else :func:`default_plots` of the stored ``rows``
    and a sample of its ``trajectories``. ``ValueError`` when there is nothing to plot."""
    proto = protocols.get(protocol)  # ValueError naming the registered protocols
    plots = proto.plots if proto.plots is not None else default_plots(rows, trajectories)
    if not (plots.curves or plots.finals):
        raise ValueError(f"protocol {protocol!r} has nothing to plot (its plots declare no "
                         "curves and no final values, or its results hold no numeric column or "
                         "trajectory)")
    return plots


def default_plots(rows: list[dict], trajectories: dict | None) -> Plots:
    """Plots read off stored results, for a protocol that declares none: each numeric result
    column (the first :data:`MAX_DEFAULT`; flags and configuration keys left out) as a panel of
    final values, each one-dimensional float trajectory (the first :data:`MAX_DEFAULT`) as a
    curve against its record index."""
    config = set(_NOT_COLUMNS)
    if rows:
        proto = protocols.get(rows[0].get("protocol", protocols.DEFAULT))
        config |= set(proto.defaults)
    columns = []
    for key in (rows[0] if rows else {}):
        if key in config or key.endswith("_diverged"):
            continue
        if any(_is_number(r.get(key)) for r in rows):
            columns.append(key)
    finals = tuple(Finals(c, (Series(c, c),)) for c in columns[:MAX_DEFAULT])
    curves = []
    for name, arr in (trajectories or {}).items():
        arr = np.asarray(arr)
        if arr.ndim >= 1 and arr.size > 1 and np.issubdtype(arr.dtype, np.floating):
            curves.append(Curves(name, name, name, (Series(name, name),), xlabel="record"))
    return Plots(curves=tuple(curves[:MAX_DEFAULT]), finals=finals)


# ----------------------------------------------------------------------------- drawing helpers
def _series_xy(traj: dict, series: Series, steps: str | None):
    """(x, y) of one recorded trajectory (trailing axes averaged, e.g. over unseen tasks); None
    when the trajectory is missing."""
    if series.name not in traj:
        return None
    y = np.asarray(traj[series.name], dtype=float)
    if y.ndim == 0:
        return None
    while y.ndim > 1:
        y = np.nanmean(y, axis=-1) if np.isfinite(y).any() else y.mean(axis=-1)
    key = series.steps or steps
    x = np.asarray(traj[key], dtype=float) if key and key in traj else None
    if x is None or x.size != y.size:
        x = np.arange(y.size, dtype=float)
    return x, y


def _row_value(row: dict, series: Series):
    """The value of ``series`` in one result row (scaled), or None."""
    v = row.get(series.name)
    if not _is_number(v):
        return None
    v = float(v)
    if series.scale is not None:
        s = row.get(series.scale)
        if not _is_number(s) or not math.isfinite(float(s)):
            return None
        v *= float(s)
    if not math.isfinite(v) or (series.dashed and v <= ZERO_LEVEL):
        return None
    return v


class _Panel:
    """The values drawn on one axis (to choose its scale and to tell an empty one)."""

    def __init__(self, ax):
        self.ax = ax
        self.values: list[np.ndarray] = []

    def seen(self, y) -> None:
        y = np.asarray(y, float)
        self.values.append(y[np.isfinite(y)])

    def finish(self, logy: bool) -> bool:
        """Log scale if wanted and every value is positive; a note when nothing was drawn.
        Returns whether the panel shows data."""
        vals = np.concatenate(self.values) if self.values else np.zeros(0)
        if vals.size == 0:
            self.ax.text(0.5, 0.5, "no finite values", ha="center", va="center",
                         transform=self.ax.transAxes, fontsize=9, color="0.4")
            return False
        if logy and np.all(vals > 0):
            self.ax.set_yscale("log")
        if self.ax.get_legend_handles_labels()[0]:
            self.ax.legend(fontsize=7)
        return True


MARKERS = ("o", "s", "^", "D", "v", "P")


def _width(i: int, n: int) -> float:
    """Line width of the i-th of n series: the first drawn widest, so that a series hidden
    under a later one with the same values still shows."""
    return 1.0 + 1.5 * (n - 1 - i)


def _band(panel: _Panel, curves, color, label, dashed=False, lw=1.5) -> None:
    """Mean line with a min-max band over curves (the shortest length), NaN-aware."""
    curves = [c for c in curves if c is not None]
    if not curves:
        return
    n = min(c[1].size for c in curves)
    x = curves[0][0][:n]
    Y = np.stack([c[1][:n] for c in curves])
    Y = np.where(np.isfinite(Y), Y, np.nan)
    if not np.isfinite(Y).any():
        return
    with np.errstate(all="ignore"), _quiet():
        mean, lo, hi = np.nanmean(Y, axis=0), np.nanmin(Y, axis=0), np.nanmax(Y, axis=0)
    text = f"{label} (mean of {len(curves)})" if len(curves) > 1 else label
    line, = panel.ax.plot(x, mean, color=color, ls="--" if dashed else "-", lw=lw, label=text)
    if len(curves) > 1:
        panel.ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.25, linewidth=0)
    panel.seen(mean)


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)


def _levels(panel: _Panel, rows: list[dict], levels) -> None:
    for series in levels:
        vals = [v for v in (_row_value(r, series._replace(dashed=True)) for r in rows)
                if v is not None]
        if vals:
            level = float(np.mean(vals))
            panel.ax.axhline(level, color=series.color, ls="--", lw=1, label=series.label)
            panel.seen([level])


def _fixed_text(cfg: dict, keys, skip=()) -> str:
    return ", ".join(f"{k}={_value_label(cfg[k])}" for k in keys if k in cfg and k not in skip)


def _note(fig, plots: Plots) -> None:
    if plots.note:
        fig.text(0.5, -0.01, plots.note, ha="center", va="top", fontsize=7, wrap=True)


# ----------------------------------------------------------------------------- run
def plot_run(folder, out_dir=None, formats=("png", "pdf")) -> list[Path]:
    """The figure of one run folder (``record.json`` + ``trajectories.npz``): one panel per
    :class:`~linmeta.engine.protocols.Curves` of its protocol."""
    folder = Path(folder)
    with open(folder / RUN_RECORD) as f:
        record = json.load(f)
    traj_path = folder / TRAJECTORIES
    if not traj_path.exists():
        raise ValueError(f"run folder {str(folder)!r} has no {TRAJECTORIES}; nothing to plot")
    traj = load_trajectories(traj_path)
    cfg = record.get("config", {})
    protocol = cfg.get("protocol", protocols.DEFAULT)
    row = {**cfg, **(record.get("results") or {}), **(record.get("theory") or {})}
    plots = plots_of(protocol, [row], traj)
    if not plots.curves:
        raise ValueError(f"protocol {protocol!r} draws no trajectories, and a run folder has one "
                         "configuration: nothing to plot (plot a sweep of it instead)")
    out_dir = Path(check_writable_dir(out_dir if out_dir else folder / "figures"))
    plt = _plt()
    n = len(plots.curves)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.2), squeeze=False)
    shown = 0
    for ax, c in zip(axes.flat, plots.curves):
        panel = _Panel(ax)
        for i, s in enumerate(c.series):
            _band(panel, [_series_xy(traj, s, c.steps)], s.color, s.label, s.dashed,
                  _width(i, len(c.series)))
        _levels(panel, [row], c.levels)
        ax.set_xlabel(c.xlabel)
        ax.set_ylabel(c.ylabel)
        ax.set_title(c.title, fontsize=10)
        shown += panel.finish(c.logy)
    if not shown:
        plt.close(fig)
        raise ValueError(f"run folder {str(folder)!r}: its trajectories hold no finite value; "
                         "nothing to plot")
    fig.suptitle(f"linmeta run {record.get('id', '')} ({protocol}): "
                 f"{_fixed_text(cfg, plots.fixed)}", fontsize=9)
    _note(fig, plots)
    fig.tight_layout()
    paths = _save(fig, out_dir, plots.curves[0].stem, formats)
    plt.close(fig)
    return paths


# ----------------------------------------------------------------------------- sweep
def _varying(rows, key) -> bool:
    return len({repr(r.get(key)) for r in rows}) > 1


def _sorted_values(values: list):
    numeric = all(_is_number(v) for v in values)
    return (sorted(values) if numeric else values), numeric


def _groups(rows: list[dict], keys: list[str]) -> list[tuple[tuple, list[dict]]]:
    """Rows grouped by the values of ``keys``, groups in sorted order of their values."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in keys), []).append(row)
    items = list(groups.items())
    try:
        items.sort(key=lambda kv: tuple((0, v) if _is_number(v) else (1, str(v))
                                        for v in kv[0]))
    except TypeError:  # pragma: no cover - mixed values: keep table order
        pass
    return items


def _sweep_curves(folder: Path, rows, grid_keys, plots: Plots, c: Curves, title: str,
                  fixed: str, plt):
    point_keys = grid_keys + [k for k in plots.split_by if k not in grid_keys
                              and _varying(rows, k)]
    points = _groups(rows, point_keys)
    more = "" if len(points) <= MAX_PANELS else f" (first {MAX_PANELS} of {len(points)} points)"
    points = points[:MAX_PANELS]
    ncols = min(len(points), 4)
    nrows = math.ceil(len(points) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.3 * nrows), squeeze=False,
                             sharey=True)
    for ax in axes.flat[len(points):]:
        ax.set_visible(False)
    cache: dict[str, dict] = {}
    panels, shown = [], 0
    for i, (ax, (values, members)) in enumerate(zip(axes.flat, points)):
        trajs = []
        for row in members:
            path = folder / TRAJ_DIR / f"{row['id']}.npz"
            if str(path) not in cache and path.exists():
                cache[str(path)] = load_trajectories(path)
            if str(path) in cache:
                trajs.append(cache[str(path)])
        panel = _Panel(ax)
        for j, s in enumerate(c.series):
            _band(panel, [_series_xy(t, s, c.steps) for t in trajs], s.color, s.label, s.dashed,
                  _width(j, len(c.series)))
        _levels(panel, members, c.levels)
        ax.set_title(_points_label(point_keys, values) or "all configurations", fontsize=9)
        ax.set_xlabel(c.xlabel)
        if i % ncols == 0:
            ax.set_ylabel(c.ylabel)
        panels.append(panel)
    vals = np.concatenate([np.concatenate(p.values) if p.values else np.zeros(0)
                           for p in panels])
    logy = c.logy and vals.size > 0 and bool(np.all(vals > 0))
    for panel in panels:  # the y axis is shared: one scale for all
        shown += panel.finish(logy)
    fig.suptitle(f"{title}: {c.title}; mean and min-max over seeds{more}\nfixed: {fixed}",
                 fontsize=9)
    return fig, shown


def _final_panel(panel: _Panel, rows, key, values, xs, finals: Finals) -> None:
    ax = panel.ax
    solid = [s for s in finals.series if not s.dashed]
    for s in finals.series:
        i = solid.index(s) if s in solid else 0
        mean, lo, hi = [], [], []
        for v in values:
            ys = np.array([y for y in (_row_value(r, s) for r in rows if r.get(key) == v)
                           if y is not None], float)
            mean.append(ys.mean() if ys.size else np.nan)
            lo.append(ys.min() if ys.size else np.nan)
            hi.append(ys.max() if ys.size else np.nan)
        mean, lo, hi = map(np.asarray, (mean, lo, hi))
        ok = np.isfinite(mean)
        if not ok.any():
            continue
        x = np.asarray(xs, float)[ok]
        line, = ax.plot(x, mean[ok], ls="--" if s.dashed else "-",
                        marker="_" if s.dashed else MARKERS[i % len(MARKERS)],
                        ms=12 if s.dashed else 4 + 2 * (len(solid) - 1 - i),
                        lw=1 if s.dashed else _width(i, len(solid)), color=s.color,
                        label=s.label)
        if not s.dashed:
            if ok.sum() > 1:
                ax.fill_between(x, lo[ok], hi[ok], color=line.get_color(), alpha=0.2,
                                linewidth=0)
            else:  # a lone point: its min-max range as a bar
                ax.vlines(x, lo[ok], hi[ok], color=line.get_color(), alpha=0.4, lw=6)
            panel.seen(lo[ok])
            panel.seen(hi[ok])
        panel.seen(mean[ok])


def _sweep_finals(rows, grid_keys, key, plots: Plots, title: str, fixed: str, plt):
    values, numeric = _sorted_values(list(dict.fromkeys(r.get(key) for r in rows)))
    xs = values if numeric else list(range(len(values)))
    others = [k for k in grid_keys if k != key]
    split = [k for k in plots.split_by if k != key and k not in others and _varying(rows, k)]
    group_keys = others + split
    groups = _groups(rows, group_keys)
    pooled = ""
    if len(groups) > MAX_GROUPS:
        pooled_keys = [k for k in others if k not in plots.split_by]
        group_keys = [k for k in group_keys if k not in pooled_keys]
        groups = _groups(rows, group_keys)[:MAX_GROUPS]
        pooled = f"; pooled over {', '.join(pooled_keys)} (more than {MAX_GROUPS} groups)"
    nrow, ncol = len(groups), len(plots.finals)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.7 * ncol, 3.4 * nrow), squeeze=False,
                             sharex=True)
    shown = 0
    for r, (gvalues, members) in enumerate(groups):
        label = _points_label(group_keys, gvalues)
        for col, finals in enumerate(plots.finals):
            ax = axes[r, col]
            panel = _Panel(ax)
            _final_panel(panel, members, key, values, xs, finals)
            if numeric and all(v > 0 for v in values) and max(values) / min(values) >= 20:
                ax.set_xscale("log")
            if not numeric or len(values) <= 8:
                ax.set_xticks(xs, [_value_label(v) for v in values])
                ax.minorticks_off()
            ax.set_ylabel(finals.ylabel, fontsize=8)
            if label:
                ax.set_title(label, fontsize=9)
            if r == nrow - 1:
                ax.set_xlabel(key)
            shown += panel.finish(finals.logy)
    split_note = (f"; rows never pool different {', '.join(split)}" if split else "")
    fig.suptitle(f"{title}: final values against {key}, mean and min-max band over seeds"
                 f"{pooled}{split_note}\nfixed: {fixed}", fontsize=9)
    return fig, shown


def plot_sweep(folder, out_dir=None, formats=("png", "pdf")) -> list[Path]:
    """The figures of a sweep folder (module docstring): each curves figure of its protocol and
    ``final_vs_<key>`` for each swept key."""
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
    by_protocol: dict[str, list[dict]] = {}
    for row in rows:
        by_protocol.setdefault(row.get("protocol", protocols.DEFAULT), []).append(row)
    plans = []
    for name, members in by_protocol.items():
        sample = folder / TRAJ_DIR / f"{members[0]['id']}.npz"
        plans.append((name, members, plots_of(name, members, load_trajectories(sample)
                                              if sample.exists() else None)))
    # protocols with the same plots are drawn together (e.g. "paper" and "paper_code")
    sets: list[tuple[list[str], list[dict], Plots]] = []
    for name, members, plots in plans:
        same = next((s for s in sets if s[2] == plots), None)
        if same is None:
            sets.append(([name], list(members), plots))
        else:
            same[0].append(name)
            same[1].extend(members)
    out_dir = Path(check_writable_dir(out_dir if out_dir else folder / "figures"))
    plt = _plt()
    paths: list[Path] = []
    fixed_spec = spec.get("fixed", {})
    for names, members, plots in sets:
        suffix = "" if len(sets) == 1 else "_" + "_".join(names)
        keys = [k for k in grid_keys if k != "protocol" or len(names) > 1]
        title = (f"{spec.get('name') or 'linmeta sweep'} (protocol {', '.join(names)}, "
                 f"{len({r.get('seed') for r in members})} seeds)")
        fixed = _fixed_text({**members[0], **fixed_spec}, plots.fixed, skip=keys) or "-"
        figures = [(c.stem, lambda c=c: _sweep_curves(folder, members, keys, plots, c, title,
                                                        fixed, plt))
                   for c in plots.curves if c.sweep]
        if plots.finals:
            figures += [(f"final_vs_{key}", lambda key=key: _sweep_finals(
                members, keys, key, plots, title, fixed, plt)) for key in keys]
        for stem, draw in figures:
            fig, shown = draw()
            if shown:
                _note(fig, plots)
                fig.tight_layout()
                paths += _save(fig, out_dir, stem + suffix, formats)
            plt.close(fig)
    if not paths:
        raise ValueError(f"sweep folder {str(folder)!r}: nothing to plot (no swept key for the "
                         "final values and no finite value in the recorded curves)")
    return paths


def plot_results(folder, out_dir=None, formats=("png", "pdf")) -> list[Path]:
    """Figures of a sweep folder (manifest.json) or a run folder (record.json)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"results folder {str(folder)!r} is a file, not a folder; pass a "
                         "folder written by 'linmeta sweep' or 'linmeta run'")
    if not folder.is_dir():
        raise ValueError(f"results folder {str(folder)!r} does not exist")
    if (folder / MANIFEST).exists():
        return plot_sweep(folder, out_dir, formats)
    if (folder / RUN_RECORD).exists():
        return plot_run(folder, out_dir, formats)
    raise ValueError(f"{str(folder)!r} is neither a sweep folder ({MANIFEST}) nor a run folder "
                     f"({RUN_RECORD}); pass a folder written by 'linmeta sweep' or 'linmeta run'")
