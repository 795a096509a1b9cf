"""Claim R7 (measured): the separation between frozen and fine-tuned representations.

Thin script over :mod:`linmeta.families.representation.claims.r7`. The full setting searches the instance family (task
diversity eps, perturbation size delta and direction, the number of perturbed tasks and whether
they carry the largest or the smallest heads, the target's loading phi on the weak direction):
a closed-form screen of every (instance, target) pair, then Monte Carlo of all fine-tuning arms
(FrozenRep head only, FrozenRep and AdaptRep with head-and-representation fine-tuning, AdaptRep and
ANIL head only, least squares and ridge from scratch) on the best pairs, against the target sample
size m. It reports what is found; nothing beyond the measurements is asserted.

Run ``python -m experiments.rep_separation --setting full --out figures``: writes
``figures/rep_r7_separation.png`` and ``.pdf`` (the best instance), ``figures/rep_separation.json``
(every screened pair and the measured curves) and prints the rows. ``--setting tiny`` and
``quick`` show one instance found by the full search, from closed forms only.
"""
from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np

from linmeta.families.representation.claims import r7
from linmeta.core.files import atomic_write_json
from linmeta.engine.claim_support import (experiment_cli, experiment_parser, figure_name,
                                          format_verdicts, plot_claim, single_thread_blas)


def summary(result) -> dict:
    """The search as plain numbers: every screened pair and the Monte Carlo curves."""
    D = result.data
    screened = []
    for i, p in enumerate(D["params"]):
        for j, phi in enumerate(D["phis"]):
            screened.append(dict(p, phi=float(phi), screen_score=float(D["score"][i, j]),
                                 frozen_sin=float(D["dist"][i, 0]),
                                 adapt_sin=float(D["dist"][i, 1]),
                                 anil_sin=float(D["dist"][i, 2])))
    measured = []
    for b, (i, j) in enumerate(D["pairs"]):
        row = dict(D["params"][i], phi=float(D["phis"][j]), m=D["ms"].tolist(),
                   frozen_closed_form=D["th_frozen"][b].tolist(),
                   adapt_head_closed_form=D["th_adapt_head"][b].tolist(),
                   scratch_closed_form=[float(x) if np.isfinite(x) else None
                                        for x in D["th_scratch"]],
                   separates=D["sep"]["sep"][b].astype(bool).tolist(),
                   frozen_over_scratch=D["sep"]["frozen_margin"][b].tolist(),
                   adapt_over_scratch=D["sep"]["adapt_margin"][b].tolist())
        if D["risks"] is not None:
            row["monte_carlo"] = {arm: dict(mean=D["risks"][b, :, 0, a].tolist(),
                                            se=D["risks"][b, :, 1, a].tolist())
                                  for a, arm in enumerate(r7.ARMS)}
            row["oracle_target_lambda"] = D["chosen"][b, :, 1].tolist()
            row["oracle_scratch_ridge"] = D["chosen"][b, :, 2].tolist()
        measured.append(row)
    return dict(setting=D["setting"], d=D["d"], k=D["k"], T=D["T"], noise_std=r7.NOISE_STD,
                lam=r7.LAM, gamma=r7.GAMMA, target_lams=list(r7.TARGET_LAMS),
                scratch_ridges=list(r7.SCRATCH_RIDGES), screened=screened, measured=measured,
                shown=dict(D["shown"]), seconds=result.seconds)


def main(setting: str = "full", out_dir="results/experiments", seed: int = 0) -> list:
    """Run claim R7 at ``setting``; write its figure and ``rep_separation.json`` into
    ``out_dir``; print and return the rows."""
    jax.config.update("jax_enable_x64", True)
    single_thread_blas()
    result = r7.run(setting=setting, seed=seed)
    paths = plot_claim(r7, result, out_dir, setting)
    json_path = Path(out_dir) / figure_name("rep_separation.json", setting)
    atomic_write_json(json_path, summary(result))
    print(format_verdicts(result, list(paths) + [json_path]), flush=True)
    return list(result.verdicts)


def build_parser():
    """The command line (:func:`linmeta.engine.claim_support.experiment_parser`)."""
    return experiment_parser(__doc__, prog="python -m experiments.rep_separation")


if __name__ == "__main__":
    sys.exit(experiment_cli(main, __doc__, parser=build_parser()))
