"""Claim C3: Meta-LoRA recovers A* for T >= 3; where identifiability ends.

Thin script over :mod:`linmeta.claims.c3`: recovery error against T and k (population and finite N)
and the phase diagram over (d, k, T) of random starts that end at a zero-loss minimiser with A_hat
!= A* (against the line 3k = d); SR's relative base error against ||Rbar||/||A*||; the paper's
alternating protocol against its linearisation (theory.alternating_jacobian).

Run ``python -m experiments.c3_recovery --setting full --out figures``: writes
``figures/c3_recovery.png`` and ``.pdf`` and prints the verdict rows (exit code 1 if a check
fails).
``--setting tiny`` takes seconds (the tests run it); ``quick`` is the ``linmeta verify --quick``
setting.
"""
from __future__ import annotations

import sys

from linmeta.families.paper.claims import c3
from linmeta.engine.claim_support import experiment_cli, experiment_main


def main(setting: str = "full", out_dir="figures", seed: int = 0) -> list:
    """Run claim C3 at ``setting``, write its figure into ``out_dir``, print and return
    the verdict rows."""
    return experiment_main(c3, setting, out_dir, seed)


if __name__ == "__main__":
    sys.exit(experiment_cli(main, __doc__))
