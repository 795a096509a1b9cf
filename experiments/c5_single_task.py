"""Claim C5: with T = 1 every A* + R*_1 - U U^T is a global minimiser.

Thin script over :mod:`linmeta.claims.c5`: random members of the family, Meta-LoRA (Newton and the
paper's alternating protocol) and SR all reach zero loss far from A*.

Run ``python -m experiments.c5_single_task --setting full --out figures``: writes
``figures/c5_single_task.png`` and ``.pdf`` and prints the verdict rows (exit code 1 if a check
fails).
``--setting tiny`` takes seconds (the tests run it); ``quick`` is the ``linmeta verify --quick``
setting.
"""
from __future__ import annotations

import sys

from linmeta.families.paper.claims import c5
from linmeta.engine.claim_support import experiment_cli, experiment_main


def main(setting: str = "full", out_dir="figures", seed: int = 0) -> list:
    """Run claim C5 at ``setting``, write its figure into ``out_dir``, print and return
    the verdict rows."""
    return experiment_main(c5, setting, out_dir, seed)


if __name__ == "__main__":
    sys.exit(experiment_cli(main, __doc__))
