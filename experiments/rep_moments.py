"""Claim R4: the method of moments: E[y^2 x x^T] and the error scaling (d - k)/(nT).

Thin script over :mod:`linmeta.claims.r4`: the moment identity by Monte Carlo, the fitted slopes of
E||sin Theta||_F^2 in n and T and the constant K of the first-order perturbation formula.

Run ``python -m experiments.rep_moments --setting full --out figures``: writes
``figures/rep_r4_moments.png`` and ``.pdf`` and prints the verdict rows (exit code 1 if a check
fails). ``--setting tiny`` takes seconds (the tests run it); ``quick`` is the ``linmeta verify
--quick`` setting.
"""
from __future__ import annotations

import sys

from linmeta.families.representation.claims import r4
from linmeta.engine.claim_support import experiment_cli, experiment_main


def main(setting: str = "full", out_dir="figures", seed: int = 0) -> list:
    """Run claim R4 at ``setting``, write its figure into ``out_dir``, print and return
    the verdict rows."""
    return experiment_main(r4, setting, out_dir, seed)


if __name__ == "__main__":
    sys.exit(experiment_cli(main, __doc__))
