"""The paper's synthetic linear experiment (docs/theory.md#protocol): five one-at-a-time sweeps.

Defaults d=10, T=3, N=5000, n=100, k=1; one parameter varies at a time: T in {2,3,5}, k in {1,2,3},
d in {5,10,20}, N in {100,1000,10000}, n in {100,1000,10000}. Each run follows the protocol of
:mod:`linmeta.paper` (claims C2-C7): Meta-LoRA by the paper's alternating protocol (3000 outer
iterations of 10 adapter steps with lr 0.003 and one base step with lr 0.03, from A = 0 and
U_t ~ N(0, 0.1^2)), standard retraining by 3000 gradient steps (lr 0.03), then both bases
fine-tuned on the unseen task with a rank-k asymmetric adapter (rank 3k when T = 2) by gradient
descent (lr 0.005) from the same U, V on the same n samples, for 10000 (T, k), 1400 (d) or 1000
(N, n) steps. The plotted "test task loss" is the paper's ``sum_i ||(M - M*) x_i||^2`` over the n
fine-tuning inputs, per fine-tuning iteration: mean over 5 runs with a min-max band, Meta-LoRA and
SR side by side, log scale.

Noise: as in the paper's code, the noise is drawn with standard deviation sigma^2 = 0.01
(sigma = 0.1); ``noise_std`` below is that standard deviation. Ground truth: as in the paper's code,
one truth is drawn at the largest sizes of the sweep (from ``truth_seed``) and sliced
(``A*[:d, :d]``, ``U*[:T, :d, :k]``), so that the panels share it; the 5 runs differ in data and
initialisations. Expected (paper): Meta-LoRA falls to the noise floor (about sigma_noise^2 times
the adapter's degrees of freedom in this in-sample loss), SR plateaus orders of magnitude higher
(its rank-k bias, C2) for T >= 3.

Protocols (``--protocol``): ``paper`` (linmeta's clean protocol, the default) or ``paper_code``
(the official code's SR baseline and fine-tuning starts, :mod:`linmeta.paper`). The T panel is
always drawn for both, side by side: the official SR baseline adds its untrained random adapters
``U_t ~ N(0, 0.1^2)`` into a T-times larger step, so it converges to pooled least squares minus
``mean_t U_t U_t^T``; at T = 2, where a rank-3k adapter can absorb the whole SR bias (C4), that
shift is what keeps the official SR above Meta-LoRA, while the clean SR falls to the noise floor.

Run: ``python -m experiments.paper_linear --setting full --out figures`` writes
``figures/paper_vary_{T,k,d,N,n}.png/.pdf`` and ``figures/paper_linear_<setting>.json``.
Settings: ``full`` (the paper's), ``quick`` (a tenth of the steps, 3 runs), ``tiny`` (a smoke test).
"""
from __future__ import annotations

import io
import textwrap
import time
from pathlib import Path

import numpy as np

import linmeta
from linmeta.engine import sweep
from linmeta.engine.claim_support import experiment_args, experiment_parser
from linmeta.engine.results import atomic_write_bytes, atomic_write_json

SWEEPS = {"T": (2, 3, 5), "k": (1, 2, 3), "d": (5, 10, 20), "N": (100, 1000, 10000),
          "n": (100, 1000, 10000)}
FT_STEPS = {"T": 10000, "k": 10000, "d": 1400, "N": 1000, "n": 1000}
BASE = dict(d=10, k=1, T=3, N=5000, n=100, noise_std=0.01, outer_steps=3000, inner_steps=10,
            lr_adapter=0.003, lr_base=0.03, sr_steps=3000, sr_lr=0.03, ft_lr=0.005,
            init_scale=0.1)

SETTINGS = {
    "full": dict(runs=5, base={}, sweeps=SWEEPS, ft_scale=1.0, record_every=10),
    "quick": dict(runs=3, base=dict(outer_steps=300, sr_steps=300), sweeps=SWEEPS, ft_scale=0.1,
                  record_every=5),
    "tiny": dict(runs=2, base=dict(d=6, N=200, n=50, outer_steps=20, inner_steps=3,
                                   sr_steps=20),
                 sweeps={"T": (2, 3), "k": (1, 2), "d": (5, 6), "N": (100, 200),
                         "n": (20, 50)}, ft_scale=0.005, record_every=5),
}


def nested_truth(truth_seed: int, d: int, k: int, T: int) -> linmeta.Truth:
    """One truth at the largest sizes, as the paper's code draws it; slice it per panel value."""
    return sweep.truth_for({"d": d, "k": k, "T": T, "truth_seed": truth_seed})


def sliced(truth: linmeta.Truth, d: int, k: int, T: int) -> linmeta.Truth:
    A, U, Un = (np.asarray(x) for x in truth)
    return linmeta.Truth(A[:d, :d], U[:T, :d, :k], Un[:, :d, :k])


PROTOCOLS = ("paper", "paper_code")


def panel_configs(name: str, setting: str, truth_seed: int = 0,
                  protocol: str = "paper") -> list[dict]:
    s = SETTINGS[setting]
    base = dict(BASE, **s["base"], truth_seed=truth_seed, record_every=s["record_every"],
                protocol=protocol)
    ft_steps = max(10, int(round(FT_STEPS[name] * s["ft_scale"])))
    cfgs = []
    for value in s["sweeps"][name]:
        for run in range(s["runs"]):
            cfgs.append(sweep.validate_config(dict(base, **{name: value}, seed=run,
                                                   ft_steps=ft_steps)))
    return cfgs


def run_panel(name: str, setting: str, truth_seed: int = 0,
              protocols=("paper",)) -> dict:
    """Run one sweep (every protocol of ``protocols``); returns the curves (mean, min, max over
    runs) and final numbers per value: ``rows`` of the first protocol, ``rows_by_protocol``."""
    s = SETTINGS[setting]
    by_proto = {p: panel_configs(name, setting, truth_seed, p) for p in protocols}
    cfgs = [c for p in protocols for c in by_proto[p]]
    sizes = {key: max(c[key] for c in cfgs) for key in ("d", "k", "T")}
    big = nested_truth(truth_seed, sizes["d"], sizes["k"], sizes["T"])
    t0 = time.perf_counter()
    # one sweep: the programs compile in the background while earlier ones run
    results = sweep.run_sweep(cfgs, truth=lambda c: sliced(big, c["d"], c["k"], c["T"]))
    batches = {tuple(r["seconds"].values()) for r in results}  # one entry per compiled call
    compile_s = sum(b[0] for b in batches)
    run_s = sum(b[1] for b in batches)
    rows_by = {}
    for p in protocols:
        rows = []
        for value in s["sweeps"][name]:
            group = [c for c in cfgs if c[name] == value and c["protocol"] == p]
            res = [r for c, r in zip(cfgs, results) if c[name] == value and c["protocol"] == p]
            rows.append(_row(value, group, res))
        rows_by[p] = rows
    c0 = by_proto[protocols[0]][0]
    fixed = {key: c0[key] for key in ("d", "k", "T", "N", "n") if key != name}
    return {"name": name, "rows": rows_by[protocols[0]], "rows_by_protocol": rows_by,
            "protocol": protocols[0], "fixed": fixed, "runs": s["runs"],
            "ft_steps": c0["ft_steps"], "outer_steps": c0["outer_steps"],
            "sr_steps": c0["sr_steps"], "noise_std": c0["noise_std"],
            "seconds": {"total": time.perf_counter() - t0, "compile": compile_s, "run": run_s}}


def _row(value, group: list[dict], res: list[dict]) -> dict:
    ml = np.stack([r["trajectories"]["ml_ft_test_loss"] for r in res])
    sr = np.stack([r["trajectories"]["sr_ft_test_loss"] for r in res])
    fin = {key: np.array([r[key] for r in res]) for key in sweep.RESULT_KEYS}
    return {
        "value": value, "steps": res[0]["trajectories"]["ft_steps"],
        "ml_mean": ml.mean(0), "ml_min": ml.min(0), "ml_max": ml.max(0),
        "sr_mean": sr.mean(0), "sr_min": sr.min(0), "sr_max": sr.max(0),
        "ml_final_mean": float(fin["ml_ft_test_loss"].mean()),
        "ml_final_min": float(fin["ml_ft_test_loss"].min()),
        "ml_final_max": float(fin["ml_ft_test_loss"].max()),
        "sr_final_mean": float(fin["sr_ft_test_loss"].mean()),
        "sr_final_min": float(fin["sr_ft_test_loss"].min()),
        "sr_final_max": float(fin["sr_ft_test_loss"].max()),
        "ml_base_rel_error_mean": float(fin["ml_base_rel_error"].mean()),
        "sr_base_rel_error_mean": float(fin["sr_base_rel_error"].mean()),
        "ml_ft_excess_risk_mean": float(fin["ml_ft_excess_risk"].mean()),
        "sr_ft_excess_risk_mean": float(fin["sr_ft_excess_risk"].mean()),
        "theory_sr_bias": float(fin["theory_sr_bias"][0]),
        "theory_ft_error": float(fin["theory_ft_error"][0]),
        "ft_rank": group[0]["ft_rank"],
        "diverged": int(sum(r["ml_diverged"] or r["sr_diverged"] or r["ft_diverged"]
                            for r in res)),
    }


_PROTOCOL_TITLES = {
    "paper": "linmeta (clean): SR = gradient descent on the mean task loss",
    "paper_code": "as the official code: SR with untrained adapters in its step",
}
_LINESTYLES = ("-", "--", ":", "-.")


def _draw(ax, panel: dict, rows: list[dict], name: str) -> None:
    ml_colors, sr_colors = ("C0", "C1", "C2", "C3"), ("C4", "C5", "C6", "C7")
    ml_marks, sr_marks = ("v", "^", "<", ">"), ("o", "s", "p", "h")
    for i, row in enumerate(rows):
        x = row["steps"]
        every = max(1, len(x) // 12)
        # curves that coincide (e.g. Meta-LoRA at T = 3 and 5 on the noise floor) stay visible:
        # their own line style and markers shifted along the curve
        start = (i * every) // max(1, len(rows))
        for kind, colors, marks, label in (("ml", ml_colors, ml_marks, "Meta-LoRA"),
                                           ("sr", sr_colors, sr_marks, "SR")):
            c = colors[i % len(colors)]
            ax.fill_between(x, row[f"{kind}_min"], row[f"{kind}_max"], color=c, alpha=0.15,
                            lw=0)
            ax.semilogy(x, row[f"{kind}_mean"], color=c, marker=marks[i % len(marks)],
                        markevery=(start, every), ms=5, ls=_LINESTYLES[i % len(_LINESTYLES)],
                        lw=1.4, label=f"{name}={row['value']}, {label}")
    ax.set_xlabel("fine-tuning iteration")
    ax.grid(True, which="both", alpha=0.3)


def plot_panel(panel: dict, out_dir: Path, setting: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = panel["name"]
    by = panel.get("rows_by_protocol") or {panel.get("protocol", "paper"): panel["rows"]}
    protos = list(by)
    height = 6.2   # inches: the axes, one legend below them, the note below that
    fig, axes = plt.subplots(1, len(protos), figsize=(7.0 * len(protos), height), squeeze=False,
                             sharey=True)
    for ax, p in zip(axes[0], protos):
        _draw(ax, panel, by[p], name)
        ax.set_title(f"protocol '{p}': {_PROTOCOL_TITLES.get(p, p)}" if len(protos) > 1 else
                     f"vary {name}; protocol '{p}'", fontsize=9)
    axes[0][0].set_ylabel("test task loss  $\\sum_i \\|(M - M^*) x_i\\|^2$ "
                          "(sum over the n fine-tuning inputs)")
    fixed = ", ".join(f"{k}={v}" for k, v in panel["fixed"].items())
    fig.suptitle(f"vary {name} ({fixed}); mean and min-max over {panel['runs']} runs "
                 f"({setting})", y=0.99)
    note = (f"Meta-LoRA: {panel['outer_steps']} x (10 adapter + 1 base) GD steps; SR: "
            f"{panel['sr_steps']} GD steps; fine-tuning: rank k (3k at T=2) U V^T by GD, lr "
            f"0.005, on the same n samples for both bases. Noise std {panel['noise_std']:g} "
            f"(= sigma^2 with sigma = 0.1, as the paper's code); truth fixed, runs differ in "
            f"data and initialisation." + (
                "" if setting == "full" else f" Setting '{setting}' (not the paper's steps)."))
    paragraphs = [note]
    if "paper_code" in protos and len(protos) > 1:
        paragraphs += [
            "Official SR baseline: a MetaLearner whose T untrained adapters U_t ~ N(0, 0.1^2) "
            "enter its gradient, with a T-times larger step: A <- A - lr T [(A + mean_t U_t "
            "U_t^T) Sbar - Ybar]. It converges to pooled least squares minus mean_t U_t U_t^T "
            "(clean SR: to pooled least squares, claim C1). At T = 2 a rank-3k adapter absorbs "
            "the clean SR's bias (C4), so the clean SR reaches the noise floor; the adapter "
            "shift keeps the official SR above it.",
            "Fine-tuning starts: official code, Meta-LoRA from one draw reused across runs and "
            "SR from fresh draws; clean, both bases from the same draw, one per run."]
    width = 125 * len(protos)
    text = "\n".join(line for para in paragraphs for line in textwrap.wrap(para, width))
    n_lines = text.count("\n") + 1
    # the note (bottom), then one legend for every panel (the panels share their curves' labels),
    # outside the axes so that no curve is covered
    note_top = 0.01 + (0.155 * n_lines * (1 if len(protos) > 1 else 1.3) + 0.05) / height
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, note_top),
               ncol=len(by[protos[0]]), fontsize=7.5, frameon=False)
    fig.tight_layout(rect=(0, note_top + 0.5 / height, 1, 0.97))
    fig.text(0.01, 0.01, text, fontsize=7, va="bottom", ha="left")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=60 if setting == "tiny" else 150, bbox_inches="tight")
        path = out_dir / f"paper_vary_{name}.{fmt}"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(str(path))
    plt.close(fig)
    return paths


def main(setting: str = "full", out_dir: str = "figures",
         which=("T", "k", "d", "N", "n"), truth_seed: int = 0, protocol: str = "paper") -> dict:
    """Run the chosen sweeps with ``protocol`` (the T panel with both protocols, ``protocol``
    first), write one figure per sweep and a JSON summary; returns the summary
    (``panels[name]["rows"]`` with the final losses per value, ``rows_by_protocol``, timings)."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {', '.join(SETTINGS)}; got {setting!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")
    bad = [w for w in which if w not in SWEEPS]
    if bad:
        raise ValueError(f"which must be a subset of {', '.join(SWEEPS)}; got {bad[0]!r}")
    import jax
    out = Path(out_dir)
    t0 = time.perf_counter()
    panels = {}
    for name in which:
        protos = ((protocol,) + tuple(p for p in PROTOCOLS if p != protocol) if name == "T"
                  else (protocol,))
        panel = run_panel(name, setting, truth_seed, protos)
        panel["files"] = plot_panel(panel, out, setting)
        panels[name] = panel
        s = panel["seconds"]
        print(f"vary {name}: {s['total']:.1f} s (compile {s['compile']:.1f} s, run "
              f"{s['run']:.1f} s)", flush=True)
        for p, rows in panel["rows_by_protocol"].items():
            for row in rows:
                print(f"  {p:>10} {name}={row['value']:>6}: final test loss Meta-LoRA "
                      f"{row['ml_final_mean']:.3g} [{row['ml_final_min']:.2g}, "
                      f"{row['ml_final_max']:.2g}]   SR {row['sr_final_mean']:.3g} "
                      f"[{row['sr_final_min']:.2g}, {row['sr_final_max']:.2g}]", flush=True)
    summary = {"setting": setting, "dtype": str(np.dtype(jax.numpy.asarray(0.0).dtype)),
               "device": str(jax.devices()[0]), "seconds": time.perf_counter() - t0,
               "panels": panels}
    def scalars(rows):
        return [{kk: vv for kk, vv in r.items() if not isinstance(vv, np.ndarray)} for r in rows]

    slim = {**summary, "protocol": protocol, "panels": {  # scalars (the curves: the figures)
        k: {**p, "rows": scalars(p["rows"]),
            "rows_by_protocol": {q: scalars(r) for q, r in p["rows_by_protocol"].items()}}
        for k, p in panels.items()}}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"paper_linear_{setting}.json", slim)
    print(f"total {summary['seconds']:.1f} s; figures in {out}/", flush=True)
    return summary


def build_parser():
    """The command line (:func:`linmeta.engine.claim_support.experiment_parser` and this
    script's own arguments)."""
    p = experiment_parser(__doc__, prog="python -m experiments.paper_linear",
                          settings=tuple(SETTINGS), seed=False)
    p.add_argument("--which", nargs="+", choices=tuple(SWEEPS), default=list(SWEEPS),
                   help="which one-at-a-time sweeps to run (default: all five)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="paper",
                   help="paper (clean, default) or paper_code (the official code's SR baseline "
                        "and fine-tuning starts); the T panel shows both")
    p.add_argument("--truth-seed", type=int, default=0, help="seed of the ground truth")
    p.add_argument("--float32", action="store_true", help="run in float32 (default float64)")
    return p


def _cli(argv=None):
    a = experiment_args(build_parser(), argv)
    import jax
    jax.config.update("jax_enable_x64", not a.float32)
    main(a.setting, a.out, tuple(a.which), a.truth_seed, a.protocol)


if __name__ == "__main__":
    _cli()
