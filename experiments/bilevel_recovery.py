"""Measurement M4: base error and rank-k fine-tuning error of MAML, first-order MAML and Reptile
against the inner steps K (T = 3; T = 2 and a sweep over T at the full setting), beside Meta-LoRA
and SR.

Thin script over :mod:`linmeta.claims.m4` (docs/bilevel.md#m4).

Run ``nice -n 10 python -m experiments.bilevel_recovery --setting full --out figures``: writes
``figures/bilevel_vs_K_T3``, ``bilevel_vs_K_T2`` and ``bilevel_vs_T`` (``.png`` and ``.pdf``) and
prints the verdict rows. ``--setting tiny`` takes seconds (the tests run it); ``quick`` is the
``linmeta verify --quick`` setting. ``python -m experiments.bilevel_all`` runs M1-M6 in one process
(M4-M6 share their runs).
"""
from __future__ import annotations

import sys

from linmeta.families.bilevel.claims import m4
from linmeta.engine.claim_support import experiment_cli, experiment_main


def main(setting: str = "full", out_dir="figures", seed: int = 0) -> list:
    """Run M4 at ``setting``, write its figure into ``out_dir``, print and return the
    verdict rows."""
    return experiment_main(m4, setting, out_dir, seed)


if __name__ == "__main__":
    sys.exit(experiment_cli(main, __doc__))
