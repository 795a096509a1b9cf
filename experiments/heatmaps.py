"""Sweeps over adapter rank k and task count T (issue 3, item 3): heatmaps of the base error and of
the rank-k fine-tuning error, Meta-LoRA against standard retraining (SR), measured beside the theory.

For every cell (k, T) and every seed: a Gaussian truth (:func:`linmeta.sample_truth`, d fixed, one
unseen task), retrained from (i) the population statistics and (ii) N noisy samples per task
(noise std sigma), with SR (pooled least squares, ``method="exact"``) and Meta-LoRA
(``method="newton"``, best of ``n_starts`` random starts). Measured:

- base error ``||A_hat - A*||_F / ||A*||_F``;
- rank-k fine-tuning error on the unseen task: the exact reduced-rank fit in the population
  (``linmeta.finetune(..., method="exact")``, the bias that no amount of fine-tuning data removes),
  ``||M_ft - M*_new||_F^2 / ||U_new U_new^T||_F^2`` (1 = no better than the true base left unadapted).

Theory (from the truth alone, :mod:`linmeta.theory`):

- SR, claims C1/C2: ``A_SR = A* + Rbar`` so the base error is ``||Rbar||_F / ||A*||_F``; the
  fine-tuning error is the Eckart-Young tail ``theory.lora_bias(U_new U_new^T - Rbar, k)`` (divided
  by the same ``||U_new U_new^T||_F^2``). At finite N the panel shows the population (N = inf) value.
- Meta-LoRA, claim C3: both errors are 0 where T >= 3 and 3k <= d (generic Gaussian U*: the
  identifiable region measured by the lead); for T <= 2 (C4, C5) or 3k > d the theory makes no claim
  about these numbers (cells hatched).

Numbers are means over seeds (seeds vmapped inside one compiled program per (k, T) shape group; the
population and finite-N sources are vmapped side by side so they share it). Zero and values below
the color floor are drawn at the floor of the log color scale.

Run: ``python -m experiments.heatmaps --setting full --out figures`` writes
``figures/heatmap_base_error.png/.pdf`` and ``figures/heatmap_finetune_error.png/.pdf``.
"""
from __future__ import annotations

import functools
import io
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import linmeta
from linmeta.core import metrics, theory
from linmeta.engine.claim_support import experiment_args, experiment_parser
from linmeta.engine.results import atomic_write_bytes

SETTINGS = {
    "tiny": dict(d=5, ks=(1, 2), Ts=(3,), n_seeds=2, N=400, noise_std=0.1, n_starts=2,
                 max_iter=60),
    "quick": dict(d=6, ks=(1, 3), Ts=(2, 3), n_seeds=2, N=1000, noise_std=0.1, n_starts=3,
                  max_iter=60),
    "full": dict(d=8, ks=(1, 2, 3), Ts=(1, 2, 3, 4, 5, 6, 7, 8), n_seeds=4, N=1000,
                 noise_std=0.1, n_starts=4, max_iter=80),
}
SOURCES = ("population", "finite N")
METHODS = ("sr", "meta_lora")
COLOR_FLOOR = 1e-12


def claimed(d: int, k: int, T: int) -> bool:
    """Where the theory predicts exact recovery by Meta-LoRA (C3): T >= 3 and 3k <= d."""
    return T >= 3 and 3 * k <= d


@functools.partial(jax.jit, static_argnames=("d", "k", "T", "N", "n_starts", "max_iter"))
def _cell_kernel(keys, noise_std, *, d, k, T, N, n_starts, max_iter):
    """All seeds of one (k, T) cell. Returns measured (seeds, source, method) arrays for the base
    and fine-tuning errors, the Meta-LoRA excess objective (seeds, source), the Newton
    iterations of the best start (seeds, source) and the SR predictions (seeds,)."""

    def one_seed(key):
        k_truth, k_data, k_ml = jax.random.split(key, 3)
        truth = linmeta.sample_truth(k_truth, d, k, T, n_unseen=1)
        pop = linmeta.population(truth, noise_std)
        fin = linmeta.sample_tasks(k_data, truth, N, noise_std)
        sources = jax.tree.map(lambda a, b: jnp.stack([a, b]), pop, fin)
        unseen = linmeta.population(truth, tasks="unseen")
        R_new = truth.U_new[0] @ truth.U_new[0].T
        shift = jnp.sum(R_new * R_new)

        def solve(src):
            sr = linmeta.standard_retraining(src)
            ml = linmeta.meta_lora(src, k, key=k_ml, n_starts=n_starts, max_iter=max_iter)
            bases = jnp.stack([sr.base, ml.base])  # METHODS order
            base_err = metrics.base_error(bases, truth.A_star, relative=True)
            ft = jax.vmap(lambda b: linmeta.finetune(b, unseen, k, method="exact").test_loss[0])(
                bases)
            iters = jnp.sum(jnp.isfinite(ml.history.value)) - 1  # Newton iterations, best start
            return base_err, ft / shift, ml.objective, iters

        base_err, ft_err, obj, iters = jax.vmap(solve)(sources)
        sr_base = metrics.base_error(theory.sr_population(truth.A_star, truth.U_star),
                                     truth.A_star, relative=True)
        sr_ft = theory.lora_bias(theory.sr_residual(truth.U_star, truth.U_new[0]), k) / shift
        return base_err, ft_err, obj, iters, sr_base, sr_ft

    return jax.vmap(one_seed)(keys)


def run(setting: str = "full", seed: int = 0) -> dict:
    """Numbers only: measured and predicted grids (source, method, k, T), means over seeds.
    Runs in float64 (inside ``jax.enable_x64``): the population checks are at 1e-15 precision."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {', '.join(SETTINGS)}; got {setting!r}")
    with jax.enable_x64(True):
        return _run(setting, seed)


def _run(setting, seed):
    cfg = dict(SETTINGS[setting])
    d, ks, Ts = cfg["d"], cfg["ks"], cfg["Ts"]
    shape = (len(SOURCES), len(METHODS), len(ks), len(Ts))
    grids = {name: np.full(shape, np.nan) for name in
             ("base_measured", "base_predicted", "ft_measured", "ft_predicted",
              "base_measured_max", "ft_measured_max")}
    ml_objective_max = np.full((len(SOURCES), len(ks), len(Ts)), np.nan)
    newton_iters_max = np.full((len(SOURCES), len(ks), len(Ts)), np.nan)
    key = jax.random.key(seed)
    seconds = {}
    t0 = time.perf_counter()
    for i, k in enumerate(ks):
        for j, T in enumerate(Ts):
            t1 = time.perf_counter()
            keys = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, k), T),
                                    cfg["n_seeds"])
            out = _cell_kernel(keys, jnp.asarray(cfg["noise_std"]), d=d, k=k, T=T, N=cfg["N"],
                               n_starts=cfg["n_starts"], max_iter=cfg["max_iter"])
            base_err, ft_err, obj, iters, sr_base, sr_ft = (np.asarray(x, dtype=float)
                                                            for x in out)
            newton_iters_max[:, i, j] = iters.max(axis=0)
            grids["base_measured"][:, :, i, j] = base_err.mean(axis=0)
            grids["ft_measured"][:, :, i, j] = ft_err.mean(axis=0)
            grids["base_measured_max"][:, :, i, j] = base_err.max(axis=0)
            grids["ft_measured_max"][:, :, i, j] = ft_err.max(axis=0)
            ml_objective_max[:, i, j] = obj.max(axis=0)
            # SR theory (population value, shown for both sources); Meta-LoRA: 0 where claimed.
            grids["base_predicted"][:, 0, i, j] = sr_base.mean()
            grids["ft_predicted"][:, 0, i, j] = sr_ft.mean()
            if claimed(d, k, T):
                grids["base_predicted"][:, 1, i, j] = 0.0
                grids["ft_predicted"][:, 1, i, j] = 0.0
            seconds[(k, T)] = time.perf_counter() - t1
    total = time.perf_counter() - t0
    claim_mask = np.array([[claimed(d, k, T) for T in Ts] for k in ks])
    pop, sr, ml = 0, 0, 1
    summary = {
        "sr_population_max_abs_diff_base": float(np.max(np.abs(
            grids["base_measured"][pop, sr] - grids["base_predicted"][pop, sr]))),
        "sr_population_max_abs_diff_ft": float(np.max(np.abs(
            grids["ft_measured"][pop, sr] - grids["ft_predicted"][pop, sr]))),
        "meta_lora_population_claimed_max_base": float(np.max(
            grids["base_measured_max"][pop, ml][claim_mask], initial=0.0)),
        "meta_lora_population_claimed_max_ft": float(np.max(
            grids["ft_measured_max"][pop, ml][claim_mask], initial=0.0)),
        "meta_lora_finiteN_claimed_mean_base": float(np.mean(
            grids["base_measured"][1, ml][claim_mask])) if claim_mask.any() else float("nan"),
        "sr_finiteN_mean_base": float(np.mean(grids["base_measured"][1, sr])),
    }
    return {"setting": setting, "seed": seed, "config": dict(cfg, ks=list(ks), Ts=list(Ts)),
            "grids": grids, "claimed": claim_mask, "ml_objective_max": ml_objective_max,
            "newton_iterations_max": newton_iters_max,
            "summary": summary, "seconds": total,
            "cell_seconds": {f"k={k},T={T}": s for (k, T), s in seconds.items()}}


def _save(fig, out_dir: Path, stem: str) -> list[str]:
    paths = []
    for fmt in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=150, bbox_inches="tight")
        path = out_dir / f"{stem}.{fmt}"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(str(path))
    return paths


def _fmt(v: float) -> str:
    if not np.isfinite(v):
        return ""
    if v == 0.0:
        return "0"
    if v < 0.01 or v >= 1e3:
        m, e = f"{v:.0e}".split("e")
        return f"{m}e{int(e)}"
    return f"{v:.2g}" if v < 0.1 else f"{v:.2f}"


def _heatmap_figure(result: dict, quantity: str, title: str, short: str, out_dir: Path,
                    stem: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    cfg = result["config"]
    ks, Ts, d = cfg["ks"], cfg["Ts"], cfg["d"]
    meas = result["grids"][f"{quantity}_measured"]
    pred = result["grids"][f"{quantity}_predicted"]
    finite = np.concatenate([meas[np.isfinite(meas)], pred[np.isfinite(pred)]])
    vmax = max(float(np.max(finite)) if finite.size else 1.0, 1e-12) * 1.5
    norm = LogNorm(vmin=COLOR_FLOOR, vmax=vmax)
    cmap = plt.get_cmap("viridis").copy()
    panels = [("sr", "measured"), ("sr", "predicted"), ("meta_lora", "measured"),
              ("meta_lora", "predicted")]
    names = {"sr": "SR", "meta_lora": "Meta-LoRA"}
    fig, axes = plt.subplots(2, 4, figsize=(3.1 * 4 + 1.2, 2.2 * 2 + 1.3 + 0.12 * len(ks)),
                             squeeze=False, constrained_layout=True)
    small = len(Ts) > 6
    image = None
    for row, source in enumerate(SOURCES):
        for col, (method, kind) in enumerate(panels):
            ax = axes[row, col]
            m = METHODS.index(method)
            grid = (meas if kind == "measured" else pred)[row, m]
            shown = np.where(np.isfinite(grid), np.clip(grid, COLOR_FLOOR, None), np.nan)
            image = ax.imshow(shown, norm=norm, cmap=cmap, origin="lower", aspect="auto")
            for i in range(len(ks)):
                for j in range(len(Ts)):
                    v = grid[i, j]
                    if not np.isfinite(v):
                        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=True,
                                                   facecolor="0.92", edgecolor="0.6",
                                                   hatch="///", lw=0))
                        ax.text(j, i, "no\nclaim", ha="center", va="center", fontsize=6.5,
                                color="0.3")
                        continue
                    bright = np.log10(max(v, COLOR_FLOOR)) > np.log10(COLOR_FLOOR) + 0.7 * (
                        np.log10(vmax) - np.log10(COLOR_FLOOR))
                    ax.text(j, i, _fmt(v), ha="center", va="center",
                            fontsize=5.5 if small else 7, color="black" if bright else "white")
            label = "theory" + (" (N = inf)" if row == 1 and method == "sr" else "")
            ax.set_title(f"{names[method]}, {'measured' if kind == 'measured' else label}\n"
                         f"{source}" + (f", N = {cfg['N']}, sigma = {cfg['noise_std']}"
                                         if row == 1 else ""), fontsize=8)
            ax.set_xticks(range(len(Ts)), [str(t) for t in Ts], fontsize=7)
            ax.set_yticks(range(len(ks)), [str(k) for k in ks], fontsize=7)
            if row == 1:
                ax.set_xlabel("T (retraining tasks)", fontsize=8)
            if col == 0:
                ax.set_ylabel("k (adapter rank)", fontsize=8)
    cb = fig.colorbar(image, ax=axes, shrink=0.85, pad=0.01)
    cb.set_label(f"{short} (log; < {COLOR_FLOOR:.0e} and 0 at the floor)", fontsize=8)
    fig.suptitle(f"{title}, mean over {cfg['n_seeds']} seeds, d = {d}\n"
                 f"SR = pooled least squares; Meta-LoRA = saddle-free Newton, best of "
                 f"{cfg['n_starts']} starts; theory: SR from C1/C2 (Eckart-Young), Meta-LoRA 0 "
                 f"where T >= 3 and 3k <= d (C3), no claim elsewhere", fontsize=9)
    paths = _save(fig, out_dir, stem)
    plt.close(fig)
    return paths


def plot(result: dict, out_dir="figures") -> list[str]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return (_heatmap_figure(result, "base", "Base error ||A_hat - A*||_F / ||A*||_F",
                            "base error", out_dir, "heatmap_base_error")
            + _heatmap_figure(result, "ft", "Rank-k fine-tuning error on an unseen task (exact "
                              "reduced-rank fit, population): ||M_ft - M*_new||_F^2 / "
                              "||U_new U_new^T||_F^2", "fine-tuning error", out_dir,
                              "heatmap_finetune_error"))


def main(setting: str = "full", out_dir="figures", seed: int = 0) -> dict:
    """Run the (k, T) sweep, write both heatmap figures, return the grids and a summary."""
    result = run(setting, seed)
    result["figures"] = plot(result, out_dir)
    return result


def _print(result: dict) -> None:
    cfg = result["config"]
    print(f"heatmaps ({result['setting']}): d={cfg['d']}, k in {cfg['ks']}, T in {cfg['Ts']}, "
          f"{cfg['n_seeds']} seeds: {result['seconds']:.1f} s")
    for key, v in result["summary"].items():
        print(f"  {key}: {v:.3g}")
    g = result["grids"]
    for qi, q in enumerate(("base", "ft")):
        for si, source in enumerate(SOURCES):
            for mi, method in enumerate(METHODS):
                print(f"  {q} {source} {method} measured (rows k, columns T):")
                print(np.array2string(g[f"{q}_measured"][si, mi], precision=3,
                                      max_line_width=150, prefix="    "))
    print("figures:", ", ".join(result["figures"]))


def build_parser():
    """The command line (:func:`linmeta.engine.claim_support.experiment_parser`)."""
    return experiment_parser(__doc__, prog="python -m experiments.heatmaps",
                             settings=tuple(SETTINGS))


if __name__ == "__main__":
    args = experiment_args(build_parser())
    _print(main(args.setting, args.out, args.seed))
