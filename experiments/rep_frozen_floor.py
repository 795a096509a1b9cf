"""Claim R2: the frozen-representation target floor, by Monte Carlo.

Thin script over :mod:`linmeta.claims.r2`: head-only least squares on m target samples with an
orthonormal B_hat against f + (sigma^2 + f) k / (m - k - 1), f = ||(I - P) beta_0||^2, within 3
standard errors.

Run ``python -m experiments.rep_frozen_floor --setting full --out figures``: writes
``figures/rep_r2_frozen_floor.png`` and ``.pdf`` and prints the verdict rows (exit code 1 if a
check fails). ``--setting tiny`` takes seconds (the tests run it); ``quick`` is the ``linmeta
verify --quick`` setting.
"""
from __future__ import annotations

import sys

from linmeta.families.representation.claims import r2
from linmeta.engine.claim_support import experiment_cli, experiment_main


def main(setting: str = "full", out_dir="figures", seed: int = 0) -> list:
    """Run claim R2 at ``setting``, write its figure into ``out_dir``, print and return
    the verdict rows."""
    return experiment_main(r2, setting, out_dir, seed)


if __name__ == "__main__":
    sys.exit(experiment_cli(main, __doc__))
