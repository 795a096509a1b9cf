"""The claims at the width of a real layer: C3 recovery, C2's SR bias and C6's fine-tuning rate at
d up to 4096 (the width of a 7B language model's attention projections).

For each (d, k) of the setting, T = 8 retraining tasks, one unseen task, float64:

- **C3** (docs/theory.md#meta-lora): ``linmeta.meta_lora(population(truth), k)`` with the default
  method (at these sizes: L-BFGS in the exact span of the centred task matrices,
  :mod:`linmeta.retrain._matrix_free`) on the paper's Gaussian truth. Closed form: the base is
  ``A*`` (relative error 0; criterion <= 1e-10). Beside it, standard retraining's base error
  (pooled least squares) against its closed form ``||Rbar||_F / ||A*||_F`` (C1,
  :func:`linmeta.theory.sr_bias_matrix`).
- **C2** (docs/theory.md#standard-retraining): the orthogonal worked case
  (:func:`linmeta.orthogonal_truth`, s = 1): the best rank-k fine-tuning error after SR,
  ``||A_SR + U V^T - M_new||_F^2`` with ``(U, V)`` from :func:`linmeta.reduced_rank_fit` (subspace
  iteration above d = 512), against the closed form ``k s^4 / T``
  (:func:`linmeta.theory.orthogonal_case_bias`). Constant = measured / closed form (1).
- **C6** (docs/theory.md#fine-tuning): the unseen task of the C3 truth fine-tuned at rank k on
  n = 2d samples (statistics drawn in chunks of 512, ``linmeta.sample_tasks(..., chunk_size=)``)
  from the Meta-LoRA base of the C3 point: in-sample excess risk against the closed form
  ``sigma^2 k (2d - k) / n`` (:func:`linmeta.theory.predicted_finetune_error`, first order in the
  noise). Constant = measured / closed form (1, within the sampling spread ``sqrt(2 / dof)`` of one
  task, dof = k (2d - k)).

Every point records its wall time and its peak resident memory (VmHWM, reset before the point
through ``/proc/self/clear_refs`` where the kernel allows it; otherwise the process's peak so far,
flagged).

Run ``python -m experiments.scale --setting full --out figures``: writes ``scale_full.json`` and
``scale_full.png`` there (``--setting quick|tiny`` write ``scale_quick.*`` / ``scale_tiny.*``;
default ``--out results/scale``). ``tiny`` takes seconds (the tests run it). The full run's time
and memory per point are in its JSON (figures/scale_full.json).
"""
from __future__ import annotations

import io
import os
import sys
import time

import numpy as np

from linmeta.engine.claim_support import experiment_args, experiment_parser

SETTINGS = {
    "tiny": dict(points=((64, 2),), T=4),
    "quick": dict(points=((128, 4), (256, 4)), T=8),
    "full": dict(points=((256, 4), (1024, 8), (4096, 16)), T=8),
}
NOISE_STD = 0.1
CHUNK = 512
C3_CRITERION = 1e-10
C2_TOL = 1e-8


def _peak_kib() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reset_peak() -> bool:
    """Reset this process's peak resident set (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _measured(fn):
    """``fn()`` with its wall time and peak memory: ``(value, seconds, peak GiB, reset)``."""
    reset = _reset_peak()
    t0 = time.perf_counter()
    value = fn()
    secs = time.perf_counter() - t0
    return value, secs, _peak_kib() / 2 ** 20, reset


def run_point(d: int, k: int, T: int, seed: int) -> dict:
    """The three measurements at one (d, k) (module docstring)."""
    import jax
    import jax.numpy as jnp

    import linmeta
    from linmeta import metrics, retrain, theory
    from linmeta.losses import excess_risk

    out = {"d": d, "k": k, "T": T}
    key = jax.random.key(seed)
    k_truth, k_ml, k_orth, k_ft = jax.random.split(key, 4)
    truth = linmeta.sample_truth(k_truth, d, k, T)

    def c3():
        pop = linmeta.population(truth)
        res = linmeta.meta_lora(pop, k, key=k_ml)
        a_sr = retrain.pooled_least_squares(pop)
        return res, a_sr

    (res, a_sr), secs, peak, reset = _measured(lambda: jax.block_until_ready(c3()))
    a_norm = float(jnp.linalg.norm(truth.A_star))
    out["c3"] = {
        "rel_base_error": float(metrics.base_error(res.base, truth.A_star, relative=True)),
        "closed_form": 0.0, "criterion": C3_CRITERION,
        "objective": float(res.objective),
        "method": retrain.default_solver(T, d, k),
        "sr_rel_base_error": float(jnp.linalg.norm(a_sr - truth.A_star)) / a_norm,
        "sr_closed_form": float(jnp.linalg.norm(theory.sr_bias_matrix(truth.U_star))) / a_norm,
        "seconds": secs, "peak_gib": peak, "peak_reset": reset}
    out["c3"]["pass"] = out["c3"]["rel_base_error"] <= C3_CRITERION
    base = res.base
    del res, a_sr

    def c2():
        orth = linmeta.orthogonal_truth(k_orth, d, k, T, s=1.0)
        a_sr = retrain.pooled_least_squares(linmeta.population(orth))
        new = linmeta.population(orth, tasks="unseen")
        U, V = linmeta.reduced_rank_fit(a_sr, new, k)
        D = a_sr + U[0] @ V[0].T - new.M_star[0]
        return jnp.sum(D * D)

    bias, secs, peak, reset = _measured(lambda: float(c2()))
    closed = float(theory.orthogonal_case_bias(k, 1.0, T))
    out["c2"] = {"bias": bias, "closed_form": closed, "constant": bias / closed,
                 "tolerance": C2_TOL, "seconds": secs, "peak_gib": peak, "peak_reset": reset}
    out["c2"]["pass"] = abs(bias / closed - 1) <= C2_TOL

    n = 2 * d

    def c6():
        stats = linmeta.sample_tasks(k_ft, truth, n, NOISE_STD, tasks="unseen",
                                     chunk_size=min(CHUNK, n))
        U, V = linmeta.reduced_rank_fit(base, stats, k)
        M = base + U @ jnp.swapaxes(V, -1, -2)
        return excess_risk(M, stats)[0]

    err, secs, peak, reset = _measured(lambda: float(c6()))
    pred = float(theory.predicted_finetune_error(d, k, float(n), NOISE_STD))
    dof = k * (2 * d - k)
    spread = float(np.sqrt(2.0 / dof))
    out["c6"] = {"n": n, "noise_std": NOISE_STD, "excess_risk": err, "closed_form": pred,
                 "constant": err / pred, "sampling_spread": spread, "dof": dof,
                 "seconds": secs, "peak_gib": peak, "peak_reset": reset}
    out["c6"]["pass"] = abs(err / pred - 1) <= 4 * spread
    return out


def plot(summary: dict, path: str) -> str:
    """Four panels against d: C3 base errors, C2 bias, C6 excess risk (closed forms as lines,
    measurements as markers) and each point's seconds and peak memory."""
    import matplotlib
    matplotlib.use("Agg")  # deferred: plotting is optional for the measurements
    import matplotlib.pyplot as plt

    from linmeta.results import atomic_write_bytes

    pts = summary["points"]
    d = np.array([p["d"] for p in pts])
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    fig.subplots_adjust(wspace=0.45)
    ax = axes[0]
    ax.loglog(d, [p["c3"]["sr_closed_form"] for p in pts], "-", color="tab:orange",
              label=r"SR closed form $\|\bar R\|_F/\|A^*\|_F$")
    ax.loglog(d, [p["c3"]["sr_rel_base_error"] for p in pts], "o", color="tab:orange",
              mfc="none", label="SR measured")
    ax.loglog(d, [max(p["c3"]["rel_base_error"], 1e-17) for p in pts], "s", color="tab:blue",
              label="Meta-LoRA measured (closed form: 0)")
    ax.axhline(C3_CRITERION, color="tab:blue", ls=":", label="criterion 1e-10")
    ax.set_title("C3: relative base error", fontsize=10)
    ax = axes[1]
    ax.loglog(d, [p["c2"]["closed_form"] for p in pts], "-", color="k",
              label=r"closed form $k s^4/T$")
    ax.loglog(d, [p["c2"]["bias"] for p in pts], "o", color="tab:red", mfc="none",
              label="measured (rank-k fit after SR)")
    ax.set_title("C2: SR bias, orthogonal case", fontsize=10)
    ax = axes[2]
    ax.loglog(d, [p["c6"]["closed_form"] for p in pts], "-", color="k",
              label=r"closed form $\sigma^2 k(2d-k)/n$")
    ax.loglog(d, [p["c6"]["excess_risk"] for p in pts], "o", color="tab:green", mfc="none",
              label="measured (n = 2d)")
    ax.set_title("C6: fine-tuning excess risk", fontsize=10)
    ax = axes[3]
    for part, mk in (("c3", "s"), ("c2", "o"), ("c6", "^")):
        ax.loglog(d, [p[part]["seconds"] for p in pts], mk + "-", label=f"{part} seconds")
    ax2 = ax.twinx()
    for part, mk in (("c3", "s"), ("c2", "o"), ("c6", "^")):
        ax2.plot(d, [p[part]["peak_gib"] for p in pts], mk + ":", color="gray")
    ax2.set_ylabel("peak memory (GiB), dotted")
    ax.set_title("time (solid) and peak memory (dotted)", fontsize=10)
    for a in axes:
        a.set_xlabel("d")
        a.set_xticks(d)
        a.set_xticklabels([str(int(x)) for x in d])
        a.minorticks_off()
        a.legend(fontsize=7, loc="best")
    ks = ", ".join(f"d={p['d']}: k={p['k']}" for p in pts)
    fig.suptitle(f"claims at scale, setting {summary['setting']} (T={pts[0]['T']}; {ks}; "
                 f"float64, CPU)", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def main(setting: str = "full", out_dir: str = os.path.join("results", "scale"),
         seed: int = 0) -> dict:
    """Run every point of ``setting``; write ``scale_<setting>.json`` and ``.png`` into
    ``out_dir``; return the summary."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {', '.join(SETTINGS)}; got {setting!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"out must be a folder, got the file {out_dir!r}")
    import jax
    jax.config.update("jax_enable_x64", True)

    from linmeta.results import atomic_write_json

    s = SETTINGS[setting]
    t0 = time.perf_counter()
    points = []
    for d, k in s["points"]:
        p = run_point(d, k, s["T"], seed)
        points.append(p)
        print(f"d={d:>5} k={k:>2} T={s['T']}: C3 rel. base error {p['c3']['rel_base_error']:.1e}"
              f" ({p['c3']['seconds']:.1f} s, {p['c3']['peak_gib']:.2f} GiB); C2 bias/closed "
              f"form {p['c2']['constant']:.12f} ({p['c2']['seconds']:.1f} s, "
              f"{p['c2']['peak_gib']:.2f} GiB); C6 excess/closed form {p['c6']['constant']:.4f} "
              f"+- {p['c6']['sampling_spread']:.4f} ({p['c6']['seconds']:.1f} s, "
              f"{p['c6']['peak_gib']:.2f} GiB)", flush=True)
    summary = {"experiment": "scale", "setting": setting, "seed": seed, "points": points,
               "all_pass": all(p[c]["pass"] for p in points for c in ("c2", "c3", "c6")),
               "seconds": time.perf_counter() - t0, "cpus": os.cpu_count(),
               "devices": [str(x) for x in jax.devices()],
               "load_average": list(os.getloadavg())}
    os.makedirs(out_dir, exist_ok=True)
    summary["figure"] = plot(summary, os.path.join(out_dir, f"scale_{setting}.png"))
    atomic_write_json(os.path.join(out_dir, f"scale_{setting}.json"), summary)
    print(f"wrote {out_dir}/scale_{setting}.json and .png; all checks pass: "
          f"{summary['all_pass']}", flush=True)
    return summary


def build_parser():
    """The command line (:func:`linmeta.engine.claim_support.experiment_parser`)."""
    return experiment_parser(__doc__, prog="python -m experiments.scale",
                             default_out=os.path.join("results", "scale"),
                             settings=tuple(SETTINGS))


def cli(argv=None) -> int:
    p = build_parser()
    a = experiment_args(p, argv)
    try:
        summary = main(a.setting, a.out, a.seed)
    except ValueError as e:
        p.error(str(e))
    return 0 if summary["all_pass"] else 1


if __name__ == "__main__":
    sys.exit(cli())
