"""The paper's vision protocol on scikit-learn's handwritten digits (:mod:`linmeta.families.paper.vision`).

T = 4 binary retraining tasks {0 v 1, 2 v 3, 4 v 5, 6 v 7} (label = class mod 2); four retraining
methods (Meta-LoRA with a rank-1 adapter per task on every linear layer, standard retraining on the
pooled tasks, last-layer meta-learning, first-order Reptile); then fine-tuning on the unseen task
8 v 9, with rank-1 adapters on every linear layer or a fresh last layer. Two models side by side: a
two-layer linear network (64 -> h -> 2) and a small MLP-Mixer. Reported: test accuracy on 8 v 9 after
the last fine-tuning epoch, mean and standard error over the seeds, and the number of trainable
parameters at fine-tuning.

This is the paper's CIFAR-10 protocol (its code's ``vision/`` folder) on a smaller real dataset that
ships with scikit-learn; it is not a reproduction of the CIFAR-10 numbers. Departures from the
paper's settings, for a dataset of 1797 images of 8 x 8 pixels and a run of minutes on a CPU:
learning rates 1e-3 (retraining) and 5e-3 (fine-tuning) instead of 1e-4 and 5e-4 (the paper's ratio
of 5 kept), batches of 32 instead of 256, Reptile's inner learning rate 0.05 and outer step 0.5, no
dropout, no data augmentation, the last retrained model instead of the best on held-out images.

Settings: ``tiny`` (the tests), ``quick`` and ``full`` (5 seeds, 100 retraining and 100 fine-tuning
epochs). Requires scikit-learn: ``pip install -e '.[vision]'``.

Run: ``python -m experiments.paper_vision --setting full --out figures`` writes
``paper_vision_full.md`` (the table), ``paper_vision_full.json`` and ``paper_vision_full.png/.pdf``.
The default output folder is ``results/paper_vision``.
"""
from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

from linmeta.families.paper import vision
from linmeta.core.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from linmeta.engine.claim_support import experiment_args, experiment_parser

DEFAULT_OUT = "results/paper_vision"

COMMON = dict(n_train_per_class=120, split_seed=0, batch=32, epochs=100, epochs_ft=100,
              inner_steps=20, rank=1, lr=1e-3, lr_ft=5e-3, weight_decay=1e-5, inner_lr=0.05,
              reptile_step=0.5, n_seeds=5, dtype="float32",
              models={"linear": vision.ModelSpec("linear", width=16),
                      "mixer": vision.ModelSpec("mixer", width=16, patch=2)})

SETTINGS = {
    "tiny": dict(COMMON, n_train_per_class=24, batch=16, epochs=2, epochs_ft=2, inner_steps=2,
                 n_seeds=2, models={"linear": vision.ModelSpec("linear", width=4),
                                    "mixer": vision.ModelSpec("mixer", width=4, patch=4,
                                                              token_expansion=1)}),
    "quick": dict(COMMON, epochs=25, epochs_ft=25),
    "full": dict(COMMON),
}

PAPER = dict(lr=1e-4, lr_ft=5e-4, weight_decay=1e-5, batch=256, epochs=100, epochs_ft=100,
             inner_steps=20, inner_lr=1e-2, n_seeds=5, rank=1)

LABELS = {"meta_lora": "Meta-LoRA", "standard": "standard (SR)",
          "last_layer_ml": "last-layer ML", "reptile": "Reptile",
          "lora": "rank-1 LoRA", "last_layer": "last layer",
          "linear": "two-layer linear network", "mixer": "MLP-Mixer"}


def _stats(acc) -> dict:
    acc = np.asarray(acc, dtype=float)
    se = float(np.std(acc, ddof=1) / np.sqrt(acc.size)) if acc.size > 1 else float("nan")
    return {"mean": float(np.mean(acc)), "se": se, "per_seed": [float(a) for a in acc]}


def run(setting: str = "full", seed: int = 0) -> dict:
    """Numbers only: every (model, retraining method) with its seeds vmapped, both fine-tunings."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {', '.join(SETTINGS)}; got {setting!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    cfg = dict(SETTINGS[setting])
    models = cfg.pop("models")
    n_seeds, dtype = cfg.pop("n_seeds"), cfg.pop("dtype")
    images, labels = vision.load_digits_arrays()
    data = vision.build_tasks(images, labels, n_train_per_class=cfg.pop("n_train_per_class"),
                              split_seed=cfg.pop("split_seed"), dtype=dtype)
    keys = jax.random.split(jax.random.key(seed), n_seeds)
    rows, seconds, array_dtypes = [], {}, set()
    t0, c0 = time.perf_counter(), time.process_time()
    for model, spec in models.items():
        for method in vision.METHODS:
            t1 = time.perf_counter()
            res = jax.tree.map(np.asarray, vision.run_method(method, spec, data, keys, **cfg))
            seconds[f"{model}/{method}"] = time.perf_counter() - t1
            array_dtypes.add(str(res["retrain_loss"].dtype))
            for ft in vision.FINETUNES:
                n_train = (vision.n_lora_params(spec, cfg["rank"]) if ft == "lora"
                           else vision.n_head_params(spec))
                rows.append({"model": model, "method": method, "finetune": ft,
                             "accuracy": _stats(res[f"{ft}_accuracy"]),
                             "accuracy_per_epoch_mean":
                                 res[f"{ft}_accuracy_per_epoch"].mean(axis=0).tolist(),
                             "trainable_params": n_train,
                             "zero_shot_accuracy": _stats(res["zero_shot_accuracy"]),
                             "final_retrain_loss_mean": float(np.mean(
                                 res["retrain_loss"][:, -1]))})
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"setting": setting, "seed": seed, "n_seeds": n_seeds, "dtype": dtype,
            "computed_in": sorted(array_dtypes),
            "config": cfg, "paper": PAPER,
            "models": {k: dict(v._asdict(), n_base_layers=len(vision.layer_shapes(v)))
                       for k, v in models.items()},
            "data": {"retraining_tasks": [list(p) for p in vision.TASK_PAIRS],
                     "unseen_task": list(vision.UNSEEN_PAIR),
                     "train_images_per_task": int(data.y.shape[1]),
                     "unseen_train_images": int(data.y_new.shape[0]),
                     "unseen_test_images": int(data.y_test.shape[0])},
            "rows": rows, "seconds_per_run": seconds, "seconds": total, "cpu_seconds": cpu,
            "load_average": list(os.getloadavg())}


def _timing(result: dict) -> str:
    load = result.get("load_average")
    cache = {True: "persistent compilation cache on", False: "compilation included (no cache)",
             None: "compilation included unless cached"}[result.get("compile_cache")]
    return (f"{result['seconds']:.0f} s wall, {result['cpu_seconds']:.0f} s CPU, {cache}, on 2 "
            f"shared CPU cores" + (f" (load average {load[0]:.1f} at the end)" if load else ""))


def table(result: dict) -> str:
    """The markdown table: one row per (model, retraining method, fine-tuning)."""
    n = result["n_seeds"]
    d = result["data"]
    lines = [f"# Vision protocol on scikit-learn's digits ('{result['setting']}' setting)", "",
             f"Retraining tasks {d['retraining_tasks']} (label = class mod 2, "
             f"{d['train_images_per_task']} training images each); unseen task "
             f"{d['unseen_task']}: {d['unseen_train_images']} fine-tuning images, "
             f"{d['unseen_test_images']} test images. Test accuracy on the unseen task after the "
             f"last fine-tuning epoch, mean +- standard error over {n} seeds; "
             f"{result['dtype']}; {_timing(result)}.", "",
             "| model | retraining | fine-tuning | trainable params | test accuracy | "
             "before fine-tuning |",
             "|---|---|---|---:|---:|---:|"]
    for r in result["rows"]:
        a, z = r["accuracy"], r["zero_shot_accuracy"]
        lines.append(f"| {LABELS[r['model']]} | {LABELS[r['method']]} | {LABELS[r['finetune']]} "
                     f"| {r['trainable_params']} | {a['mean']:.3f} +- {a['se']:.3f} | "
                     f"{z['mean']:.3f} |")
    cfg = result["config"]
    lines += ["", f"Settings: {cfg['epochs']} retraining and {cfg['epochs_ft']} fine-tuning "
              f"epochs, batches of {cfg['batch']}, Adam (L2 weight decay {cfg['weight_decay']}, "
              f"cosine schedule) with learning rates {cfg['lr']} (retraining) and {cfg['lr_ft']} "
              f"(fine-tuning); Reptile: {cfg['inner_steps']} inner SGD steps at "
              f"{cfg['inner_lr']}, outer step {cfg['reptile_step']}, as many mini-batch "
              "gradients as Meta-LoRA. 'before fine-tuning': the retrained model's accuracy on "
              "the unseen task's test images (for last-layer ML, with the mean of its heads). "
              "Last-layer ML with LoRA fine-tuning keeps the mean of its T heads (not in the "
              "paper).", ""]
    return "\n".join(lines)


def plot(result: dict, out_dir) -> list[str]:
    """``paper_vision_<setting>.png/.pdf``: test accuracy per retraining method, one panel per
    model, bars per fine-tuning variant with standard errors and the seeds as dots."""
    import matplotlib  # deferred: plotting is optional for the numbers

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(result["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.0), squeeze=False,
                             sharey=True)
    colors = {"lora": "tab:blue", "last_layer": "tab:orange"}
    lowest = min(a for r in result["rows"] for a in r["accuracy"]["per_seed"])
    y_low = max(0.0, np.floor((lowest - 0.05) * 10) / 10)  # zoomed in: the bars start at y_low
    for ax, model in zip(axes[0], models):
        rows = [r for r in result["rows"] if r["model"] == model]
        for j, ft in enumerate(vision.FINETUNES):
            sel = [r for r in rows if r["finetune"] == ft]
            x = np.arange(len(sel)) + (j - 0.5) * 0.38
            mean = [r["accuracy"]["mean"] for r in sel]
            se = [r["accuracy"]["se"] for r in sel]
            ax.bar(x, np.asarray(mean) - y_low, 0.36, bottom=y_low, yerr=se, capsize=3,
                   color=colors[ft], alpha=0.75,
                   label=f"{LABELS[ft]} ({sel[0]['trainable_params']} trainable)")
            for xi, r in zip(x, sel):
                ax.plot(np.full(len(r["accuracy"]["per_seed"]), xi + 0.1),
                        r["accuracy"]["per_seed"], "o", color="k", ms=2.5, mfc="none", mew=0.7)
        methods = [r["method"] for r in rows if r["finetune"] == vision.FINETUNES[0]]
        ax.set_xticks(np.arange(len(methods)), [LABELS[m] for m in methods], fontsize=8)
        if y_low < 0.5:
            ax.axhline(0.5, color="0.5", lw=0.8, ls=":")
        ax.set_title(LABELS[model], fontsize=10)
        ax.set_ylim(y_low, 1.0 + 0.25 * (1.0 - y_low))
        ax.set_yticks([t for t in ax.get_yticks() if y_low <= t <= 1.0 + 1e-9])
        ax.grid(True, axis="y", alpha=0.4)
        ax.legend(fontsize=7, loc="upper center", ncol=2)
    axes[0, 0].set_ylabel(f"test accuracy on 8 v 9\n(bars: mean +- s.e.; circles: the "
                          f"{result['n_seeds']} seeds)")
    cfg = result["config"]
    fig.suptitle(f"Paper's vision protocol on scikit-learn's digits, '{result['setting']}' "
                 f"setting (not CIFAR-10): retrain on 0v1, 2v3, 4v5, 6v7, fine-tune on 8v9",
                 fontsize=10)
    fig.text(0.01, -0.02, f"{cfg['epochs']} retraining / {cfg['epochs_ft']} fine-tuning epochs, "
             f"batch {cfg['batch']}, Adam lr {cfg['lr']} / {cfg['lr_ft']} (paper: 1e-4 / 5e-4 on "
             f"CIFAR-10, batch 256); {result['dtype']}; {_timing(result)}.", fontsize=7,
             va="top")
    fig.tight_layout()
    out_dir = Path(out_dir)
    paths = []
    for fmt in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=150, bbox_inches="tight")
        path = out_dir / f"paper_vision_{result['setting']}.{fmt}"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(str(path))
    plt.close(fig)
    return paths


def main(setting: str = "full", out_dir=DEFAULT_OUT, seed: int = 0,
         compile_cache: bool | None = None) -> dict:
    """Run, write the table (markdown and JSON) and the figure; return the result.
    ``compile_cache``: whether the persistent compilation cache was on (stated with the times)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = dict(run(setting, seed), compile_cache=compile_cache)
    stem = out_dir / f"paper_vision_{setting}"
    atomic_write_text(f"{stem}.md", table(result))
    result["figures"] = plot(result, out_dir)
    atomic_write_json(f"{stem}.json", result)
    result["files"] = [f"{stem}.md", f"{stem}.json"] + result["figures"]
    return result


def build_parser():
    """The command line (:func:`linmeta.engine.claim_support.experiment_parser`)."""
    return experiment_parser(__doc__, prog="python -m experiments.paper_vision",
                             default_out=DEFAULT_OUT, settings=tuple(SETTINGS))


def cli(argv=None) -> int:
    """The command line; returns the exit status (2: bad arguments or scikit-learn missing)."""
    args = experiment_args(build_parser(), argv)
    try:
        res = main(args.setting, args.out, args.seed,
                   compile_cache=not getattr(args, "no_compile_cache", False))
    except ModuleNotFoundError as err:
        print(f"paper_vision: {err}", file=sys.stderr)
        return 2
    print(table(res))
    print("files:", ", ".join(res["files"]))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
