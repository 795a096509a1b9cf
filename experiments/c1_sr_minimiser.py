"""Claim C1: the standard-retraining minimiser is A* + Rbar; empirical SR converges to it.

Thin script over :mod:`linmeta.claims.c1`: population SR (pooled least squares and the paper's
gradient descent) against theory.sr_population, and the finite-N error ||A_SR(N) - (A* + Rbar)||_F
against N with its fitted log-log slope (theory: -1/2) and constant; the gradient-descent
trajectory against its contraction; the noise level of linmeta.draw_samples (chi-square band).

Run ``python -m experiments.c1_sr_minimiser --setting full --out figures``: writes
``figures/c1_sr_minimiser.png`` and ``.pdf`` and prints the verdict rows (exit code 1 if a check
fails).
``--setting tiny`` takes seconds (the tests run it); ``quick`` is the ``linmeta verify --quick``
setting.
"""
from __future__ import annotations

import sys

from linmeta.families.paper.claims import c1
from linmeta.engine.claim_support import experiment_cli, experiment_main


def main(setting: str = "full", out_dir="figures", seed: int = 0) -> list:
    """Run claim C1 at ``setting``, write its figure into ``out_dir``, print and return
    the verdict rows."""
    return experiment_main(c1, setting, out_dir, seed)


if __name__ == "__main__":
    sys.exit(experiment_cli(main, __doc__))
