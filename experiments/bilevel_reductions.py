"""Relation M1: bilevel retraining reduces to standard retraining (K = 0; a start that cannot
move; plain, full-rank-inner MAML in the population).

Thin script over :mod:`linmeta.claims.m1` (docs/bilevel.md#m1).

Run ``nice -n 10 python -m experiments.bilevel_reductions --setting full --out figures``: writes
``figures/bilevel_m1_reductions`` (``.png`` and ``.pdf``) and prints the verdict rows (exit code 1
if a check fails). ``--setting tiny`` takes seconds (the tests run it); ``quick`` is the ``linmeta
verify --quick`` setting. ``python -m experiments.bilevel_all`` runs M1-M6 in one process (M4-M6
share their runs).
"""
from __future__ import annotations

import sys

from linmeta.families.bilevel.claims import m1
from linmeta.engine.claim_support import experiment_cli, experiment_main


def main(setting: str = "full", out_dir="figures", seed: int = 0) -> list:
    """Run M1 at ``setting``, write its figure into ``out_dir``, print and return the
    verdict rows."""
    return experiment_main(m1, setting, out_dir, seed)


if __name__ == "__main__":
    sys.exit(experiment_cli(main, __doc__))
