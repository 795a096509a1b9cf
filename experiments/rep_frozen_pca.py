"""Claim R1: FrozenRep's population solution is the top-k eigenspace of sum_t beta_t beta_t^T.

Thin script over :mod:`linmeta.claims.r1`: FrozenRep (alternating minimisation with the heads
minimised out) on random population instances (balanced heads, Gaussian heads, perturbed tasks)
against an independent eigendecomposition.

Run ``python -m experiments.rep_frozen_pca --setting full --out figures``: writes
``figures/rep_r1_frozen_pca.png`` and ``.pdf`` and prints the verdict rows (exit code 1 if a check
fails). ``--setting tiny`` takes seconds (the tests run it); ``quick`` is the ``linmeta verify
--quick`` setting.
"""
from __future__ import annotations

import sys

from linmeta.families.representation.claims import r1
from linmeta.engine.claim_support import experiment_cli, experiment_main


def main(setting: str = "full", out_dir="figures", seed: int = 0) -> list:
    """Run claim R1 at ``setting``, write its figure into ``out_dir``, print and return
    the verdict rows."""
    return experiment_main(r1, setting, out_dir, seed)


if __name__ == "__main__":
    sys.exit(experiment_cli(main, __doc__))
