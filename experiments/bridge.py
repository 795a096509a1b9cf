"""The bridge between the two families: does retraining leave a bias that target fine-tuning cannot
remove?

Both models answer the same question the same way, and this script puts them side by side against
the target sample size:

- base-matrix model (docs/theory.md, claims C2, C3, C6): standard retraining (SR) and Meta-LoRA on the
  population of T retraining tasks (:func:`linmeta.standard_retraining`,
  :func:`linmeta.meta_lora`), then the best rank-k adapter fitted on n samples of the unseen task
  (:func:`linmeta.finetune`, ``method="exact"``: reduced-rank regression). Excess risk
  ``||M - M*||_F^2`` against n; SR's floor is the Eckart-Young bias of ``U_new U_new^T - Rbar``
  (:func:`linmeta.theory.lora_bias`), which no n removes; Meta-LoRA's base is A*, so its risk falls
  like ``sigma^2 k (2d - k) / n`` (C6).
- shared-representation model (docs/representation.md; claims R2, R7): FrozenRep and AdaptRep on the
  separation instance of R7, then head-only fine-tuning on FrozenRep's representation (closed form
  ``f + (sigma^2 + f) k / (m - k - 1)``, floor f) and on AdaptRep's (closed form), AdaptRep's
  head-and-representation fine-tuning (Monte Carlo, quick and full settings), and least squares
  from scratch (``sigma^2 d / (m - d - 1)``), against m.

Run ``python -m experiments.bridge --setting full --out figures``: writes ``figures/bridge.png``,
``.pdf`` and ``figures/bridge.json`` (the numbers of both panels). ``--setting tiny`` takes
seconds (the tests run it).
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

from linmeta.engine.claim_support import experiment_args, experiment_parser

SETTINGS = {
    "tiny": dict(d=6, k=1, T=3, ns=(20, 80), draws=20, rep_setting="tiny", rep_mc=False),
    "quick": dict(d=10, k=1, T=3, ns=(20, 50, 100, 300, 1000), draws=100,
                  rep_setting="quick", rep_mc=True),
    "full": dict(d=10, k=1, T=3, ns=(20, 50, 100, 300, 1000, 3000), draws=400,
                 rep_setting="quick", rep_mc=True),
}
NOISE_STD = 0.1  # base-matrix model (the noise standard deviation of docs/theory.md)


def base_matrix_panel(cfg, seed):
    """SR and Meta-LoRA (population) then exact rank-k fine-tuning on n samples (Monte Carlo)."""
    import jax
    import jax.numpy as jnp

    import linmeta
    from linmeta.families.representation.claims import r7

    d, k, T, draws = cfg["d"], cfg["k"], cfg["T"], cfg["draws"]
    truth, km, kd = r7.bridge_truth(seed, d, k, T)
    pop = linmeta.population(truth)
    sr = linmeta.standard_retraining(pop).base
    ml = linmeta.meta_lora(pop, k, key=km).base
    many = linmeta.Truth(truth.A_star, truth.U_star, jnp.repeat(truth.U_new, draws, axis=0))
    out = dict(n=list(cfg["ns"]), sr_mean=[], sr_se=[], ml_mean=[], ml_se=[])
    for i, n in enumerate(cfg["ns"]):
        stats = linmeta.sample_tasks(jax.random.fold_in(kd, i), many, n, NOISE_STD,
                                     tasks="unseen")
        for name, base in (("sr", sr), ("ml", ml)):
            M = linmeta.finetune(base, stats, k, method="exact").task_matrix
            risk = np.asarray(jnp.sum((M - many.M_new) ** 2, axis=(-2, -1)))
            out[f"{name}_mean"].append(float(risk.mean()))
            out[f"{name}_se"].append(float(risk.std() / math.sqrt(draws)))
    out.update(r7.bridge_closed_forms(seed, d, k, T, NOISE_STD),  # also R7's bridge row
               ml_base_error=float(linmeta.metrics.base_error(ml, truth.A_star)), draws=draws)
    return out


def representation_panel(cfg, seed):
    """The R7 instance: closed forms, and the Monte Carlo arms where the setting measures them."""
    from linmeta.families.representation.claims import r7

    rcfg = dict(r7.SETTINGS[cfg["rep_setting"]])
    if cfg["rep_mc"]:
        rcfg.update(n_mc=1, draws=cfg["draws"])
    res = r7.measure(rcfg, seed, cfg["rep_setting"])
    D = res.data
    b = D["best"]
    out = dict(m=D["ms"].tolist(), frozen_closed_form=D["th_frozen"][b].tolist(),
               frozen_floor=float(D["floor"][b]),
               adapt_head_closed_form=D["th_adapt_head"][b].tolist(),
               scratch_closed_form=[float(x) if np.isfinite(x) else None
                                    for x in D["th_scratch"]],
               instance=dict(D["shown"]), d=D["d"], k=D["k"], T=D["T"],
               noise_std=r7.NOISE_STD, target_norm2=1.0)
    if D["risks"] is not None:
        out["adapt_finetune_mean"] = D["risks"][b, :, 0, 2].tolist()
        out["adapt_finetune_se"] = D["risks"][b, :, 1, 2].tolist()
        out["frozen_finetune_mean"] = D["risks"][b, :, 0, 1].tolist()
    return out


def run(setting: str = "full", seed: int = 0) -> dict:
    """Both panels' numbers for ``setting``."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {', '.join(SETTINGS)}; got {setting!r}")
    cfg = SETTINGS[setting]
    t0 = time.perf_counter()
    out = dict(setting=setting, seed=seed, base_matrix=base_matrix_panel(cfg, seed),
               representation=representation_panel(cfg, seed))
    out["seconds"] = time.perf_counter() - t0
    return out


def plot(result: dict, out_dir) -> list:
    """``bridge.{png,pdf}``: the two panels, risk relative to the target's squared norm."""
    from linmeta.engine.claim_support import figure_dpi, pyplot, save_figure

    plt = pyplot()
    A, R = result["base_matrix"], result["representation"]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.2))
    n = np.asarray(A["n"], float)
    z = A["target_norm2"]
    for key, color, label in (("sr", "tab:blue", "SR, then rank-k fine-tuning"),
                              ("ml", "tab:red", "Meta-LoRA, then rank-k fine-tuning")):
        mean, se = np.asarray(A[f"{key}_mean"]) / z, np.asarray(A[f"{key}_se"]) / z
        ax0.errorbar(n, mean, yerr=3 * se, marker="o", ms=4, capsize=2, color=color,
                     label=label)
    ax0.axhline(A["sr_floor"] / z, color="tab:blue", ls="--", lw=1,
                label=r"SR bias $E_{SR}(k)$ (Eckart-Young)")
    ax0.plot(n, A["ml_rate_constant"] / n / z, "--", color="tab:red", lw=1,
             label=r"$\sigma^2 k(2d-k)/n$")
    ax0.set_title(f"base-matrix model (d={A['d']}, k={A['k']}, T={A['T']})", fontsize=9)
    ax0.set_xlabel("target samples n")
    ax0.set_ylabel(r"excess risk / $\|M^*_{new}\|_F^2$")
    m = np.asarray(R["m"], float)
    ax1.plot(m, R["frozen_closed_form"], "o--", color="tab:blue", ms=4,
             label="FrozenRep, head only (closed form)")
    ax1.axhline(R["frozen_floor"], color="tab:blue", ls=":", lw=1, label="frozen floor f")
    ax1.plot(m, R["adapt_head_closed_form"], "s--", color="tab:pink", ms=4,
             label="AdaptRep, head only (closed form)")
    if "adapt_finetune_mean" in R:
        ax1.errorbar(m, R["adapt_finetune_mean"], yerr=3 * np.asarray(R["adapt_finetune_se"]),
                     marker="s", ms=4, capsize=2, color="tab:red",
                     label="AdaptRep, head + representation (MC)")
    sc = np.asarray([np.nan if x is None else x for x in R["scratch_closed_form"]])
    ok = np.isfinite(sc)
    ax1.plot(m[ok], sc[ok], "k--", lw=1, label=r"scratch $\sigma^2 d/(m-d-1)$")
    p = R["instance"]
    ax1.set_title(f"shared representation (R7 instance: eps={p['eps']:g}, delta={p['delta']:g}, "
                  f"d={R['d']}, k={R['k']}, T={R['T']})", fontsize=9)
    ax1.set_xlabel("target samples m")
    ax1.set_ylabel(r"$E\|\hat\beta-\beta_0\|^2$ / $\|\beta_0\|^2$")
    for ax in (ax0, ax1):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Retraining that ignores fine-tuning leaves a floor; fine-tuning-aware "
                 f"retraining does not  ({result['setting']})", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_dir, "bridge", dpi=figure_dpi(result["setting"]))


def main(setting: str = "full", out_dir="figures", seed: int = 0) -> dict:
    """Compute both panels, write ``bridge.{png,pdf,json}`` into ``out_dir``, print a summary."""
    import jax

    from linmeta.engine.claim_support import figure_name, plot_claim, single_thread_blas
    from linmeta.engine.results import atomic_write_json

    jax.config.update("jax_enable_x64", True)
    single_thread_blas()
    result = run(setting, seed)
    paths = plot_claim(plot, result, out_dir, setting)
    json_path = Path(out_dir) / figure_name("bridge.json", setting)
    atomic_write_json(json_path, result)
    A, R = result["base_matrix"], result["representation"]
    print(f"base-matrix model: SR floor E_SR(k) = {A['sr_floor']:.4g}; at n = {A['n'][-1]}: "
          f"SR {A['sr_mean'][-1]:.4g}, Meta-LoRA {A['ml_mean'][-1]:.4g} "
          f"(sigma^2 k(2d-k)/n = {A['ml_rate_constant'] / A['n'][-1]:.4g})")
    print(f"representation model: frozen floor f = {R['frozen_floor']:.4g}; at m = {R['m'][-1]}: "
          f"FrozenRep {R['frozen_closed_form'][-1]:.4g}, AdaptRep head only "
          f"{R['adapt_head_closed_form'][-1]:.4g}, scratch {R['scratch_closed_form'][-1]}")
    for p in list(paths) + [json_path]:
        print(f"figure: {p}" if p.suffix != ".json" else f"numbers: {p}")
    print(f"bridge: {result['seconds']:.1f} s", flush=True)
    return result


def build_parser():
    """The command line (:func:`linmeta.engine.claim_support.experiment_parser`)."""
    return experiment_parser(__doc__, prog="python -m experiments.bridge",
                             settings=tuple(SETTINGS))


if __name__ == "__main__":
    a = experiment_args(build_parser())
    main(a.setting, a.out, a.seed)
    sys.exit(0)
