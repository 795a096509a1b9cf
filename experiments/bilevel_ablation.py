"""Measurement M5: the priming ablation (inner adapter rank matched to the fine-tuning, larger
ranks, full-rank inner update, learned start, K = 0).

Thin script over :mod:`linmeta.claims.m5` (docs/bilevel.md#m5).

Run ``nice -n 10 python -m experiments.bilevel_ablation --setting full --out figures``: writes
``figures/bilevel_ablation`` (``.png`` and ``.pdf``) and prints the verdict rows (exit code 1 if a
check fails). ``--setting tiny`` takes seconds (the tests run it); ``quick`` is the ``linmeta
verify --quick`` setting. ``python -m experiments.bilevel_all`` runs M1-M6 in one process (M4-M6
share their runs).
"""
from __future__ import annotations

import sys

from linmeta.families.bilevel.claims import m5
from linmeta.engine.claim_support import experiment_cli, experiment_main


def main(setting: str = "full", out_dir="figures", seed: int = 0) -> list:
    """Run M5 at ``setting``, write its figure into ``out_dir``, print and return the
    verdict rows."""
    return experiment_main(m5, setting, out_dir, seed)


if __name__ == "__main__":
    sys.exit(experiment_cli(main, __doc__))
