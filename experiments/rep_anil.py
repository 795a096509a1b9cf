"""Claim R3: ANIL, first-order ANIL, one-step MAML and average loss in the population.

Thin script over :mod:`linmeta.claims.r3`: late contraction 1 - alpha beta lambda_min(Sigma), alpha
B^T B -> I, the wrong-subspace update shared by ANIL and first-order ANIL, average loss keeping its
column space, one-step MAML equal to ANIL at w0 = 0.

Run ``python -m experiments.rep_anil --setting full --out figures``: writes
``figures/rep_r3_anil.png`` and ``.pdf`` and prints the verdict rows (exit code 1 if a check
fails). ``--setting tiny`` takes seconds (the tests run it); ``quick`` is the ``linmeta verify
--quick`` setting.
"""
from __future__ import annotations

import sys

from linmeta.families.representation.claims import r3
from linmeta.engine.claim_support import experiment_cli, experiment_main


def main(setting: str = "full", out_dir="figures", seed: int = 0) -> list:
    """Run claim R3 at ``setting``, write its figure into ``out_dir``, print and return
    the verdict rows."""
    return experiment_main(r3, setting, out_dir, seed)


if __name__ == "__main__":
    sys.exit(experiment_cli(main, __doc__))
