"""Claim D5: the structure learner's number of directions against the truth's r, across noise
levels (docs/difference.md#d5; measured).

TAMS's analogue (:func:`~linmeta.families.difference.methods.structure_learner`): R = r + 3
candidate unit rank-one directions with per-task coefficients and the group penalty
``lam sum_i ||s_{.i}||_2``, proximal gradient, distinct directions with a nonzero group counted.
Data: T tasks of a structured truth with r directions, n samples per task at noise levels sigma
(sigma = 0: the population), ``lam = lam0 sigma (sqrt(T) + sqrt(2d)) / sqrt(n)`` (the size of the
largest coefficient-gradient group that noise alone produces, up to lam0; ``lam_pop`` in the
population). No theory predicts the count at a finite penalty: every row is measured (the count
per noise level, median and range over truths, and how many runs found exactly r).
"""
from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from linmeta.engine.claims import ClaimResult, Verdict
from linmeta.engine.claim_support import (figure_dpi, key_for, pyplot, save_figure, settings_value,
                                     working_dtype)
from linmeta.core.data import matrix_tasks
from linmeta.families.difference import methods
from linmeta.families.difference.truth import sample_difference_truth, task_matrices

CLAIM = "D5"
LAM0 = 1.0
LAM_POP = 0.01
EXTRA = 3

SETTINGS = {
    "tiny": dict(d=4, ranks=(2,), T=6, n=50, sigmas=(0.0, 0.3), truths=1, steps=500),
    "quick": dict(d=5, ranks=(2,), T=8, n=100, sigmas=(0.0, 0.1, 0.3, 1.0, 3.0), truths=3,
                  steps=3000),
    "full": dict(d=6, ranks=(1, 2, 3), T=10, n=100, sigmas=(0.0, 0.1, 0.3, 1.0, 3.0),
                 truths=8, steps=6000),
}


@functools.partial(jax.jit, static_argnames=("R", "steps"))
def _learn(stats, keys, lams, *, R, steps):
    res = jax.vmap(lambda st, k, lam: methods._structure_kernel(st, k, lam, R=R, steps=steps))(
        stats, keys, lams)
    return res.kept, res.group_norms


def run(setting: str = "quick", seed: int = 0) -> ClaimResult:
    """Measure D5 at ``setting`` (module docstring)."""
    cfg = settings_value(SETTINGS, setting)
    t0 = time.perf_counter()
    d, T, n, sigmas, S = cfg["d"], cfg["T"], cfg["n"], tuple(cfg["sigmas"]), cfg["truths"]
    root = key_for(seed, CLAIM)
    rows, table = [], {}
    for r in cfg["ranks"]:
        stats, keys, lams, meta = [], [], [], []
        for i in range(S):
            tr = sample_difference_truth(jax.random.fold_in(root, 10 * r + i), d, r, T,
                                         n_unseen=0, dtype=working_dtype())
            M = task_matrices(tr)
            for j, sig in enumerate(sigmas):
                k = jax.random.fold_in(root, 1000 * r + 10 * i + j)
                stats.append(matrix_tasks(M) if sig == 0 else
                             matrix_tasks(M, sig, N=n, key=k))
                keys.append(jax.random.fold_in(k, 1))
                lams.append(LAM_POP if sig == 0 else
                            LAM0 * sig * (math.sqrt(T) + math.sqrt(2 * d)) / math.sqrt(n))
                meta.append((i, j))
        batch = jax.tree.map(lambda *x: jnp.stack(x), *stats)
        kept, norms = _learn(batch, jnp.stack(keys), jnp.asarray(lams, working_dtype()),
                             R=r + EXTRA, steps=cfg["steps"])
        kept = np.asarray(kept).reshape(S, len(sigmas))
        table[r] = kept
        for j, sig in enumerate(sigmas):
            kj = kept[:, j]
            rows.append(Verdict(
                CLAIM, f"structure learner, r={r}, R={r + EXTRA}, sigma={sig:g}"
                f"{' (population)' if sig == 0 else f', n={n}'}: directions kept (median)",
                "measured", float(np.median(kj)), float(np.ptp(kj)),
                "no prediction at a finite penalty", True, "measured",
                f"d={d}, T={T}, lam={lams[j]:.3g}, {S} truths: kept {kj.tolist()}; exactly r in "
                f"{int(np.sum(kj == r))}/{S}"))
    data = dict(setting=setting, d=d, T=T, n=n, sigmas=np.asarray(sigmas, float),
                ranks=list(cfg["ranks"]), kept={str(r): v for r, v in table.items()})
    return ClaimResult(CLAIM, rows, data, time.perf_counter() - t0)


def plot(result: ClaimResult, out_dir) -> list:
    """``difference_d5_structure.{png,pdf}``: directions kept against the noise level, per r."""
    plt = pyplot()
    D = result.data
    fig, ax = plt.subplots(figsize=(6.5, 4))
    x = np.arange(len(D["sigmas"]))
    for i, r in enumerate(D["ranks"]):
        kept = np.asarray(D["kept"][str(r)], float)
        jitter = (np.arange(kept.shape[0]) - kept.shape[0] / 2) * 0.03
        for s in range(kept.shape[0]):
            ax.plot(x + jitter[s] + 0.1 * i, kept[s], "o", color=f"C{i}", ms=4, alpha=0.7,
                    label=f"r = {r}" if s == 0 else None)
        ax.axhline(r, color=f"C{i}", ls="--", lw=1)
    ax.set_xticks(x, [("pop." if s == 0 else f"{s:g}") for s in D["sigmas"]])
    ax.set_xlabel("noise sigma")
    ax.set_ylabel("distinct directions kept")
    ax.set_title(f"D5  structure learner, d={D['d']}, T={D['T']}, n={D['n']} "
                 f"({D['setting']})", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out_dir, "difference_d5_structure", dpi=figure_dpi(D["setting"]))
