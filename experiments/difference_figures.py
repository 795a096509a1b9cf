"""Difference family (docs/difference.md): fine-tuning error against n after each retraining
method, on the structured truth and on the paper's truth, with the closed forms.

Retraining in the population (T tasks): the joint fit of rank r, the principal components of the
centred tasks (PCA), standard retraining (SR) and Meta-LoRA with rank-r symmetric adapters.
Fine-tuning each of ``n_unseen`` unseen tasks on n samples (noise ``sigma``): coefficients only
(after the joint fit and after PCA), rank-r LoRA (after every method) and full least squares.
Closed forms overlaid: ``sigma^2 (r/n + c_2/n^2)`` (coefficients, structured truth, after exact
recovery, D2), ``sigma^2 r(2d - r)/n`` (LoRA, first order), ``sigma^2 d^2/(n - d - 1)`` (full),
and on the paper's truth the coefficient-only bias ``E bias`` (D3, mean over unseen tasks; the
measured mean uses ``n_unseen`` tasks) plus ``sigma^2 r/n``; there Meta-LoRA's population base is
A* (claim C3), so Meta-LoRA + rank-r LoRA follows the LoRA form.

Run ``python -m experiments.difference_figures --out figures`` (about a minute on 2 cores):
writes ``difference_finetune.{png,pdf,json}``.
"""
from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import linmeta
from linmeta.core.data import matrix_tasks
from linmeta.engine.claim_support import experiment_args, experiment_parser
from linmeta.families.difference import methods, theory
from linmeta.families.difference.claims._finetune import finetune_risks
from linmeta.families.difference.truth import (difference_space, sample_difference_truth,
                                               task_matrices, unseen_matrices)

SETTINGS = {
    "tiny": dict(d=4, r=2, k=1, T=4, n_unseen=2, draws=40, ns=(8, 16, 64)),
    "full": dict(d=6, r=2, k=1, T=6, n_unseen=8, draws=400, ns=(4, 8, 16, 32, 64, 128, 256)),
}
SIGMA = 0.5


def compute(setting: str = "full", seed: int = 0) -> dict:
    """Risks (mean over unseen tasks and draws) per (truth, method, fine-tuning, n)."""
    cfg = SETTINGS[setting]
    d, r, k, T, ns = cfg["d"], cfg["r"], cfg["k"], cfg["T"], tuple(cfg["ns"])
    root = jax.random.fold_in(jax.random.key(seed), 17)
    fin = functools.partial(finetune_risks, r=r, ns=ns, draws=cfg["draws"])
    out = dict(setting=setting, d=d, r=r, k=k, T=T, ns=list(ns), sigma=SIGMA, truths={})
    for name in ("structured", "paper"):
        kt = jax.random.fold_in(root, 0 if name == "structured" else 1)
        if name == "structured":
            t = sample_difference_truth(kt, d, r, T, n_unseen=cfg["n_unseen"])
            M, M_new = task_matrices(t), unseen_matrices(t)
        else:
            t = linmeta.sample_truth(kt, d, k, T, n_unseen=cfg["n_unseen"])
            M, M_new = t.M_star, t.M_new
        src = matrix_tasks(M)
        joint = methods.joint_fit(src, r, key=jax.random.fold_in(kt, 1), n_starts=6,
                                  max_iter=150)
        pca = methods.difference_svd(src, r)
        sr = linmeta.standard_retraining(src).base
        ml = linmeta.meta_lora(src, r, key=jax.random.fold_in(kt, 2)).base
        keys = jax.random.split(jax.random.fold_in(kt, 3), cfg["n_unseen"])

        def risks(base, basis):
            R = jax.vmap(fin, in_axes=(None, None, 0, 0, None))(base, basis, M_new, keys, SIGMA)
            return np.asarray(R).mean(axis=(0, 3))  # (3, len(ns))

        rj, rp, rs, rm = (risks(b, B) for b, B in ((joint.base, joint.basis),
                                                    (pca.base, pca.basis),
                                                    (sr, joint.basis), (ml, joint.basis)))
        curves = {"joint + coefficients": rj[0], "joint + rank-r LoRA": rj[1],
                  "PCA + coefficients": rp[0], "SR + rank-r LoRA": rs[1],
                  "Meta-LoRA + rank-r LoRA": rm[1], "full least squares": rj[2]}
        nsa = np.asarray(ns, float)
        theory_curves = {
            "sigma^2 r(2d-r)/n (LoRA)": [float(theory.lora_risk(d, r, n, SIGMA)) for n in ns],
            "sigma^2 d^2/(n-d-1) (full)": [float(theory.full_risk(d, n, SIGMA)) if n > d + 1
                                           else float("nan") for n in ns]}
        if name == "structured":
            theory_curves["sigma^2 (r/n + c_2/n^2) (coefficients)"] = [
                float(theory.coefficient_risk_second_order(t.U_star, t.V_star, n, SIGMA))
                for n in ns]
            extra = dict(subspace_gap=float(methods.subspace_gap(
                joint.basis, difference_space(t.U_star, t.V_star))))
        else:
            eb = float(theory.expected_paper_bias(joint.basis, jnp.mean(t.R_star, axis=0), k))
            meas = float(jnp.mean(theory.projection_bias(joint.basis, joint.base, M_new)))
            theory_curves["E bias + sigma^2 r/n (coefficients)"] = list(eb + SIGMA ** 2 * r / nsa)
            extra = dict(expected_bias=eb, bias_of_these_unseen_tasks=meas)
        out["truths"][name] = dict(curves={a: [float(x) for x in b] for a, b in curves.items()},
                                   theory=theory_curves, joint_objective=float(joint.objective),
                                   **extra)
    return out


def plot(data: dict, out_dir) -> list:
    """``difference_finetune.{png,pdf}``: one panel per truth."""
    from linmeta.engine.claim_support import pyplot, save_figure

    plt = pyplot()
    ns = np.asarray(data["ns"], float)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    colors = {"joint + coefficients": "tab:blue", "joint + rank-r LoRA": "tab:orange",
              "PCA + coefficients": "tab:cyan", "SR + rank-r LoRA": "tab:gray",
              "Meta-LoRA + rank-r LoRA": "tab:red", "full least squares": "tab:green"}
    styles = ["k-", "k--", "k:", "k-."]
    for ax, (name, v) in zip(axes, data["truths"].items()):
        for label, ys in v["curves"].items():
            ax.plot(ns, ys, "o", color=colors[label], ms=4, label=label)
        for (label, ys), st in zip(v["theory"].items(), styles):
            ax.plot(ns, ys, st, lw=1, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("fine-tuning samples n")
        ax.set_ylabel(r"$E\|\hat M - M^*_{new}\|_F^2$")
        what = ("structured truth A* + U* diag(s_t) V*^T" if name == "structured"
                else "paper's truth A* + U_t U_t^T (k=%d)" % data["k"])
        ax.set_title(f"{what}\nd={data['d']}, r={data['r']}, T={data['T']}, "
                     f"sigma={data['sigma']} ({data['setting']})", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6.5)
    fig.tight_layout()
    return save_figure(fig, out_dir, "difference_finetune",
                       dpi=60 if data["setting"] == "tiny" else 150)


def main(setting: str = "full", out_dir="results/experiments", seed: int = 0, replot: bool = False) -> list:
    from linmeta.engine.results import atomic_write_bytes

    jax.config.update("jax_enable_x64", True)
    t0 = time.perf_counter()
    path = Path(out_dir) / "difference_finetune.json"
    data = json.loads(path.read_text()) if replot else compute(setting, seed)
    paths = plot(data, out_dir)
    atomic_write_bytes(path, (json.dumps(data, indent=1) + "\n").encode())
    print(json.dumps({n: {k: v for k, v in t.items() if k not in ("curves", "theory")}
                      for n, t in data["truths"].items()}, indent=1))
    print(f"figures: {[str(p) for p in paths] + [str(path)]}; {time.perf_counter() - t0:.1f} s")
    return paths


def build_parser():
    """The command line (:func:`linmeta.engine.claim_support.experiment_parser`)."""
    p = experiment_parser(__doc__, prog="python -m experiments.difference_figures",
                          settings=tuple(SETTINGS))
    p.add_argument("--replot", action="store_true", help="redraw from the JSON in --out")
    return p


if __name__ == "__main__":
    a = experiment_args(build_parser())
    main(a.setting, a.out, a.seed, a.replot)
    sys.exit(0)
