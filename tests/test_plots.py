"""``linmeta plot`` draws what each protocol declares (issue 20, items 1 and 7): non-empty figures
for the paper's, the bilevel and the representation protocols, from a sweep folder and from a run
folder; a protocol without a plots value gets one read off its results; one that declares nothing
is one error line. A fine-tuning rank or another swept key is never pooled into one line.

Every sweep here is tiny (a few configurations, tens of steps): the figures' content is checked
on the figure objects before they are saved (every visible panel holds finite data)."""
import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from linmeta.core.files import atomic_write_csv
from linmeta.engine import protocols, runs
from linmeta.engine.results import (MANIFEST, RESULTS_CSV, TRAJ_DIR, load_sweep,
                                    load_trajectories)
from linmeta.families.paper.protocol import PAPER_RESULT_KEYS
from linmeta.front import plotting
from linmeta.front.cli import main


@pytest.fixture
def drawn(monkeypatch):
    """stem -> [(panel title, number of finite data points)] of every figure; the figures are
    not rendered (test_cli.py and test_bilevel_run_folder_figure_is_written render some)."""
    seen = {}

    def spy(fig, out_dir, stem, formats):
        panels = []
        for ax in fig.axes:
            if not ax.get_visible():
                continue
            assert not any(t.get_text() == "no finite values" for t in ax.texts), (stem,
                                                                                   ax.get_title())
            points = sum(int(np.isfinite(np.asarray(line.get_ydata(), float)).sum())
                         for line in ax.get_lines())
            panels.append((ax.get_title(), points))
        seen[stem] = panels
        return [out_dir / f"{stem}.{fmt}" for fmt in formats]

    monkeypatch.setattr(plotting, "_save", spy)
    return seen


def _sweep(tmp_path_factory, name, text):
    folder = tmp_path_factory.mktemp(name)
    spec = folder / "spec.toml"
    spec.write_text(text)
    runs.sweep_to_folder(str(spec), str(folder / "out"), progress=False)
    return folder / "out"


@pytest.fixture(scope="module")
def bilevel_sweep(tmp_path_factory):
    return _sweep(tmp_path_factory, "bilevel", 'seeds = 2\n[fixed]\nprotocol = "bilevel"\n'
                  'd = 4\nk = 1\nT = 3\nouter_steps = 20\nrecord_every = 5\n'
                  '[grid]\ninner_steps = [0, 3]\n')


@pytest.fixture(scope="module")
def representation_sweep(tmp_path_factory):
    return _sweep(tmp_path_factory, "rep", 'seeds = 1\n[fixed]\nprotocol = "representation"\n'
                  'd = 4\nk = 1\nm = 8\nn_target = 2\nfrozen_steps = 20\nfedrep_steps = 20\n'
                  'anil_steps = 20\nadapt_steps = 20\ntarget_steps = 5\nrecord_every = 5\n'
                  'T = 4\n[grid]\nlam = [0.1, 1.0]\nnoise_std = [0.1, 0.5]\n')


@pytest.fixture(scope="module")
def protocols_sweep(tmp_path_factory):
    """The layout of examples/t_sweep_protocols.toml's sweep (both paper protocols, T = 2 with
    the paper's rank 3k and T = 3, two seeds), written directly: plotting reads files only."""
    folder = tmp_path_factory.mktemp("tp")
    spec = {"name": "T sweep, both protocols", "seeds": 2,
            "grid": {"protocol": ["paper", "paper_code"], "T": [2, 3]},
            "fixed": {"d": 4, "N": 50, "n": 20}}
    columns = ["id", "protocol", "T", "ft_rank", "seed", "n", *PAPER_RESULT_KEYS]
    rows, rng = [], np.random.default_rng(0)
    (folder / TRAJ_DIR).mkdir()
    for protocol in ("paper", "paper_code"):
        for T in (2, 3):
            for seed in (0, 1):
                row = {"id": f"{protocol}{T}{seed}", "protocol": protocol, "T": T, "seed": seed,
                       "ft_rank": 3 if T == 2 else 1, "n": 20}
                row.update({k: float(rng.uniform(0.1, 2.0)) for k in PAPER_RESULT_KEYS})
                row.update({k: False for k in PAPER_RESULT_KEYS if k.endswith("_diverged")})
                rows.append(row)
                steps = np.arange(0, 25, 5)
                np.savez(folder / TRAJ_DIR / f"{row['id']}.npz", ft_steps=steps,
                         ml_ft_test_loss=np.exp(-steps / 10.0), sr_ft_test_loss=np.ones(5))
    atomic_write_csv(folder / RESULTS_CSV, rows, columns)
    (folder / MANIFEST).write_text(json.dumps({"spec": spec}))
    return folder


def _all_panels_have_data(drawn, stems):
    assert sorted(drawn) == sorted(stems)
    for stem, panels in drawn.items():
        assert panels and all(points > 0 for _, points in panels), (stem, panels)


def test_bilevel_sweep_figures_show_data(bilevel_sweep, drawn, tmp_path):
    paths = plotting.plot_results(bilevel_sweep, tmp_path, formats=("png",))
    _all_panels_have_data(drawn, ["retrain_curves", "base_error_curves",
                                  "final_vs_inner_steps"])
    assert [p.name for p in paths] == ["retrain_curves.png", "base_error_curves.png",
                                       "final_vs_inner_steps.png"]
    # the bilevel method's line, not only SR's: 3 panels, each with the bilevel series
    assert len(drawn["final_vs_inner_steps"]) == 3


def test_bilevel_run_folder_figure_is_written(bilevel_sweep, tmp_path):
    """A run folder (record.json + trajectories.npz, by the run writer) of one bilevel
    configuration of the sweep: ``linmeta plot`` draws its three trajectory panels."""
    manifest, rows = load_sweep(bilevel_sweep)
    row = next(r for r in rows if r["inner_steps"] == 3)
    config = {k: row[k] for k in protocols.get("bilevel").defaults} | {"protocol": "bilevel"}
    runs.write({"id": row["id"], "config": config,
                "results": {k: row[k] for k in protocols.get("bilevel").result_keys},
                "trajectories": load_trajectories(bilevel_sweep / TRAJ_DIR / f"{row['id']}.npz")},
               tmp_path / "run")
    assert main(["plot", str(tmp_path / "run"), "--format", "png"]) == 0
    png = tmp_path / "run" / "figures" / "retrain_curves.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bilevel_run_folder_panels_show_data(bilevel_sweep, drawn, tmp_path):
    manifest, rows = load_sweep(bilevel_sweep)
    row = next(r for r in rows if r["inner_steps"] == 3)
    runs.write({"id": row["id"], "config": {"protocol": "bilevel", "d": 4},
                "results": {"sr_base_error": row["sr_base_error"]},
                "trajectories": load_trajectories(bilevel_sweep / TRAJ_DIR / f"{row['id']}.npz")},
               tmp_path / "run")
    plotting.plot_results(tmp_path / "run", formats=("png",))
    _all_panels_have_data(drawn, ["retrain_curves"])
    assert [t for t, _ in drawn["retrain_curves"]] == [
        "bilevel retraining", "base error during retraining",
        "the inner loop (first record, or the first that blew up)"]


def test_representation_sweep_figures_show_data(representation_sweep, drawn, tmp_path):
    plotting.plot_results(representation_sweep, tmp_path, formats=("png",))
    _all_panels_have_data(drawn, ["distance_curves", "objective_curves", "final_vs_lam",
                                  "final_vs_noise_std"])
    # final_vs_lam: one row per noise level (never pooled), three panels each
    assert [t for t, _ in drawn["final_vs_lam"]] == ["noise_std=0.1"] * 3 + ["noise_std=0.5"] * 3
    assert len(drawn["distance_curves"]) == 4            # one panel per grid point


def test_final_vs_protocol_keeps_T_and_ft_rank_apart(protocols_sweep, drawn, tmp_path):
    plotting.plot_results(protocols_sweep, tmp_path, formats=("png",))
    _all_panels_have_data(drawn, ["finetune_curves", "final_vs_protocol", "final_vs_T"])
    rows = [t for t, _ in drawn["final_vs_protocol"]]
    assert rows == ["T=2, ft_rank=3"] * 3 + ["T=3, ft_rank=1"] * 3
    # against T, the rank-3k point (T = 2) is a row of its own for each protocol
    assert sorted(set(t for t, _ in drawn["final_vs_T"])) == [
        "protocol=paper, ft_rank=1", "protocol=paper, ft_rank=3",
        "protocol=paper_code, ft_rank=1", "protocol=paper_code, ft_rank=3"]
    titles = [t for t, _ in drawn["finetune_curves"]]
    assert titles == ["protocol=paper, T=2, ft_rank=3", "protocol=paper, T=3, ft_rank=1",
                      "protocol=paper_code, T=2, ft_rank=3", "protocol=paper_code, T=3, ft_rank=1"]


# ----------------------------------------------------------------------------- other protocols
class _Hyper(NamedTuple):
    lr: jax.Array


class _Shape(NamedTuple):
    d: int
    steps: int


class _Record(NamedTuple):
    final_loss: jax.Array
    loss: jax.Array


def _run(truth, keys, hyper, shape):
    def step(a, _):
        a = a - hyper.lr * a
        return a, 0.5 * jnp.sum(a ** 2)

    _, loss = jax.lax.scan(step, jnp.ones((shape.d,)), None, length=shape.steps)
    return _Record(loss[-1], loss)


def _toy(name, plots=None):
    return protocols.register(protocols.Protocol(
        name=name, run=_run, hyper=_Hyper, shape=_Shape,
        defaults=dict(d=3, steps=10, lr=0.1, seed=0), plots=plots), replace=True)


def test_a_protocol_without_plots_gets_them_from_its_results(tmp_path_factory, drawn, tmp_path):
    _toy("plotless_toy")
    folder = _sweep(tmp_path_factory, "toy", 'seeds = 1\n[fixed]\nprotocol = "plotless_toy"\n'
                    '[grid]\nlr = [0.1, 0.5]\n')
    plotting.plot_results(folder, tmp_path, formats=("png",))
    _all_panels_have_data(drawn, ["loss", "final_vs_lr"])


def test_a_protocol_with_nothing_to_plot_is_one_error_line(tmp_path_factory, capsys):
    _toy("silent_toy", plots=protocols.Plots())
    folder = _sweep(tmp_path_factory, "silent", 'seeds = 1\n[fixed]\nprotocol = "silent_toy"\n'
                    '[grid]\nlr = [0.1]\n')
    assert main(["plot", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'silent_toy' has nothing to plot" in err
    assert not (folder / "figures").exists() or not any((folder / "figures").iterdir())


def test_every_registered_family_protocol_declares_its_plots():
    for name in ("paper", "paper_code", "bilevel", "representation"):
        plots = protocols.get(name).plots
        assert isinstance(plots, protocols.Plots) and plots.curves and plots.finals, name
        series = [s for c in plots.curves for s in c.series + c.levels]
        series += [s for f in plots.finals for s in f.series]
        assert all(s.label and s.name for s in series)
        columns = set(protocols.get(name).result_keys)
        assert {s.name for f in plots.finals for s in f.series} <= columns, name
