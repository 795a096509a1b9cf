"""Claim X1: ridge-shrunk retraining converges to ``Mbar / (1 + lam)`` at the population.

A check row: gradient descent (:mod:`linmeta_shrink.methods`) against the closed form
(:mod:`linmeta_shrink.theory`), relative error within a contraction tolerance (the iteration's
rate to the power of the steps, plus rounding).
"""
import jax
import jax.numpy as jnp
import numpy as np

from linmeta.core.data import population
from linmeta.core.problem import sample_truth
from linmeta.engine.claim_support import figure_dpi, key_for, pyplot, save_figure, settings_value
from linmeta.engine.claims import ClaimResult, Verdict
from linmeta.engine.verdict import Tolerance

from ..methods import shrunk_retraining
from ..theory import contraction_rate, shrunk_population_minimiser

SETTINGS = {"tiny": dict(d=5, steps=150, seeds=2), "quick": dict(d=8, steps=300, seeds=4),
            "full": dict(d=16, steps=600, seeds=16)}
LAM, LR = 0.5, 0.3


def run(setting: str = "quick", seed: int = 0) -> ClaimResult:
    cfg = settings_value(SETTINGS, setting)
    keys = jax.random.split(key_for(seed, "X1"), cfg["seeds"])
    errors = []
    for key in keys:   # a handful of seeds: a plain loop keeps the example short
        truth = sample_truth(key, cfg["d"], 1, 3)
        A, objective = shrunk_retraining(population(truth), LAM, LR, cfg["steps"])
        M = truth.A_star + truth.U_star @ jnp.swapaxes(truth.U_star, -1, -2)
        target = shrunk_population_minimiser(M, LAM)
        errors.append(float(jnp.linalg.norm(A - target) / jnp.linalg.norm(target)))
    rate = float(contraction_rate(LR, LAM))
    tol = Tolerance.contraction(rate, cfg["steps"], floor=1e-13,
                                floor_why="float64 rounding of the iteration")
    worst = max(errors)
    row = Verdict("X1", "ridge-shrunk retraining vs Mbar/(1+lam), relative error (worst seed)",
                  0.0, worst, spread=float(np.std(errors)), tolerance=tol.text,
                  passed=tol.admits(worst), tol=tol)
    return ClaimResult("X1", [row], data=dict(errors=errors, setting=setting))


def plot(result: ClaimResult, out_dir):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.semilogy(np.maximum(result.data["errors"], 1e-20), "o")
    ax.set_xlabel("seed")
    ax.set_ylabel("relative error to Mbar/(1+lam)")
    ax.set_title(f"X1 ({result.data['setting']} setting)")
    return save_figure(fig, out_dir, "shrink_x1", dpi=figure_dpi(result.data["setting"]))
