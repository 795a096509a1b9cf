"""The committed figures a reader found hard to read (issue 20 item 14), drawn from small hand-built
results: no legend over the axes' data, every line style and marker in a key, a colour bar where
colour carries a value, the setting and the seed count in the title, the constants defined."""
import json
import os

import matplotlib
import numpy as np
import pytest

from linmeta.engine.claims import ClaimResult
from linmeta.families.bilevel.claims import m4, m5, m6
from linmeta.families.paper.claims import c8
from linmeta.families.representation.claims import r2, r3, r4

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("maml", "fomaml", "reptile")


def _capture(monkeypatch, module):
    """The figures ``module.plot`` would save, kept open instead."""
    figs = []
    monkeypatch.setattr(module, "save_figure", lambda fig, out, stem, dpi=150: figs.append(fig)
                        or [stem])
    return figs


def _legends(fig):
    return list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]


def _labels(fig):
    return [t.get_text() for leg in _legends(fig) for t in leg.get_texts()]


def _legends_clear_of_axes(fig):
    """No legend's box meets an axes' box (the data area)."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    boxes = [ax.get_window_extent(r) for ax in fig.axes]
    for leg in _legends(fig):
        lb = leg.get_window_extent(r)
        for b in boxes:
            assert not lb.overlaps(b), (leg, [t.get_text() for t in leg.get_texts()])


def _texts(fig):
    out = [t.get_text() for t in fig.texts]
    if fig._suptitle is not None:
        out.append(fig._suptitle.get_text())
    return out + [ax.get_title() for ax in fig.axes]


def _m_result(claim, data):
    return ClaimResult(claim, [], data, 0.0)


def _bilevel_cfg():
    return dict(d=6, k=1, ft_rank=1, seeds=3, methods=METHODS, Ks=(0, 5, 50), K_ablation=50,
                K_alpha=5, ranks=(1, 2))


def test_bilevel_vs_K_and_vs_T(monkeypatch, tmp_path):
    cfg, rng = _bilevel_cfg(), np.random.default_rng(0)
    S, Ks = cfg["seeds"], np.asarray(cfg["Ks"])
    curve = lambda: (Ks, rng.random((S, 3)) * [[1, 1e-8, 1e-30]], rng.random((S, 3)),  # noqa
                     np.zeros((S, 3), bool))
    refs = dict(ml_base_error=np.full(S, 1e-18), a_norm=np.ones(S), ml_ft_bias=np.full(S, 1e-31),
                sr_base_error=np.full(S, 0.8), sr_ft_bias=np.full(S, 30.0))
    per_T = {3: dict(lora={m: curve() for m in METHODS}, full={m: curve() for m in METHODS},
                     refs=refs)}
    pair = lambda: (rng.random(S), rng.random(S))  # noqa: E731
    sweep = dict(Ts=(1, 2, 3), values={m: [pair() for _ in range(3)] for m in METHODS + ("ref",)})
    figs = _capture(monkeypatch, m4)
    m4.plot(_m_result("M4", dict(setting="full", cfg=cfg, per_T=per_T, sweep=sweep)), tmp_path)
    assert len(figs) == 2
    for fig in figs:
        _legends_clear_of_axes(fig)
        assert any("(full)" in t for t in _texts(fig))
        assert any(f"{S} seeds" in t for t in _texts(fig))
        assert any(lab.startswith("Meta-LoRA") for lab in _labels(fig))
    # the Meta-LoRA line below the plotted floor is said to be drawn at it, on its panel
    assert any("drawn at 1e-16" in t.get_text() for t in figs[0].axes[0].texts)
    assert any("drawn at 1e-28" in t.get_text() for t in figs[0].axes[1].texts)
    # the suptitle does not run into the axes' labels: it lies above every axes
    fig = figs[0]
    r = fig.canvas.get_renderer()
    top = fig._suptitle.get_window_extent(r)
    assert all(top.y0 > ax.get_tightbbox(r).y1 for ax in fig.axes)


def test_bilevel_ablation_and_step_size(monkeypatch, tmp_path):
    cfg, rng = _bilevel_cfg(), np.random.default_rng(1)
    S = cfg["seeds"]
    labels = ("matched r=k=1", "r=2", "full-rank W", "Meta-LoRA", "SR")
    table = {m: {lab: rng.random(S) for lab in labels} for m in METHODS}
    figs = _capture(monkeypatch, m5)
    m5.plot(_m_result("M5", dict(setting="full", cfg=cfg, ranks=(2,), table=table)), tmp_path)
    As = np.asarray([0.5, 1.0, 2.0])
    curves = {(m, full): (As, rng.random((S, 3)), np.array([[0, 0, 1]] * S, bool),
                          np.array([[1, 0, 0]] * S, bool))
              for m in METHODS for full in (False, True)}
    step_figs = _capture(monkeypatch, m6)
    m6.plot(_m_result("M6", dict(setting="full", cfg=cfg, curves=curves)), tmp_path)
    figs += step_figs
    assert len(figs) == 2
    for fig in figs:
        _legends_clear_of_axes(fig)
        assert any("(full)" in t and f"{S} seeds" in t for t in _texts(fig))
    step = " ".join(_labels(figs[1]))
    assert "diverged" in step and "stalled" in step and "plain" in step   # x, dotted, dashed


def test_rep_r2_colour_key_and_r4_defines_K(monkeypatch, tmp_path):
    rng = np.random.default_rng(2)
    S, ms = 5, np.asarray([8.0, 16.0, 32.0])
    floor = rng.random(S)
    figs = _capture(monkeypatch, r2)
    r2.plot(_m_result("R2", dict(setting="full", d=6, k=2, draws=100, ms=ms,
                                 mean=floor[:, None] + 1 / ms, se=np.full((S, 3), 1e-3),
                                 pred=floor[:, None] + 1 / ms, floor=floor)), tmp_path)
    fig = figs[0]
    _legends_clear_of_axes(fig)
    bars = [ax for ax in fig.axes if "floor" in ax.get_ylabel()]
    assert len(bars) == 1          # the colour bar: colour = the seed's floor
    assert any("(full)" in t and f"{S} seeds" in t for t in _texts(fig))
    figs = _capture(monkeypatch, r4)
    r4.plot(_m_result("R4", dict(setting="full", d=6, k=2, ns=np.asarray([2.0, 4.0]),
                                 Ts=np.asarray([8.0, 16.0]), E_fro2=rng.random((S, 4)),
                                 K=np.full(S, 3.0), nmax=4, Tmax=16, reps=10, sigma=0.5)),
            tmp_path)
    text = " ".join(_texts(figs[0]))
    assert "$K = " in text and "lambda_i(C)" in text and "(full)" in text


def test_rep_r3_marks_residuals_below_the_floor(monkeypatch, tmp_path):
    S, steps = 3, 20
    traj = np.geomspace(1.0, 1e-16, steps)[None].repeat(S, 0)
    keys = ("closed_form_gap", "fo_closed_form_gap", "maml_fixed_gap", "maml_step_gap",
            "maml_step_w0", "maml_grad_rel")
    data = dict(setting="full", d=5, k=2, T=8, anil_traj=traj, fo_traj=traj, avg_traj=traj,
                lambda_min=np.full(S, 0.3), **{k: np.full(S, 1e-16) for k in keys})
    data["maml_fixed_gap"] = np.zeros(S)          # exact zeros: below the log axis' floor
    figs = _capture(monkeypatch, r3)
    r3.plot(_m_result("R3", data), tmp_path)
    ax = figs[0].axes[1]
    marked = [ln for ln in ax.get_lines() if ln.get_marker() == "v" and len(ln.get_xdata())]
    assert len(marked) == 1 and list(marked[0].get_xdata()) == [2] * S
    assert any("below 1e-20" in lab for lab in _labels(figs[0]))


def test_c8_map_has_one_colour_bar_per_row():
    record = json.loads(open(os.path.join(REPO, "figures", "c8_census.json")).read())
    record["cells"] = [c for c in record["cells"] if c["d"] <= 4 and c["T"] <= 4]
    fig = c8.draw_map(record)
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 5                 # rows (a)-(e)
    assert all(b.get_ylabel() for b in bars)
    # the Hessian panel's limits are the census' tolerances, whatever the drawing process's dtype
    hessian = [ax for ax in fig.axes if "Hessian" in ax.get_title()][0]
    assert hessian.get_ylim()[0] == pytest.approx(-record["tolerances"]["hessian"])
    plt.close(fig)


def test_paper_vary_legend_outside(monkeypatch, tmp_path):
    from experiments import paper_linear
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: None)
    x = np.arange(5.0)
    def row(v):
        return dict(value=v, steps=x, **{f"{k}_{s}": np.exp(-x) * (1 + v) for k in ("ml", "sr")
                                         for s in ("mean", "min", "max")})
    panel = dict(name="T", rows=[row(2), row(3)], fixed=dict(d=6, k=1), runs=2, outer_steps=3,
                 sr_steps=3, noise_std=0.01, protocol="paper")
    before = set(plt.get_fignums())
    paper_linear.plot_panel(panel, tmp_path, "full")
    fig = plt.figure(max(set(plt.get_fignums()) - before))
    _legends_clear_of_axes(fig)
    assert any("(full)" in t for t in _texts(fig))
    close("all")
