"""Claim C6: the adaptation rate of rank-k fine-tuning after Meta-LoRA.

Thin script over :mod:`linmeta.claims.c6`: fine-tuning excess error against n, k and d (log-log)
for the exact reduced-rank estimator and gradient descent from the Meta-LoRA base A*, least squares
(full fine-tuning) and SR + rank-k LoRA, with fitted slopes and the constant against
sigma^2 k(2d - k) / n.

Run ``python -m experiments.c6_adaptation_rate --setting full --out figures``: writes
``figures/c6_adaptation_rate.png`` and ``.pdf`` and prints the verdict rows (exit code 1 if a check fails).
``--setting tiny`` takes seconds (the tests run it); ``quick`` is the ``linmeta verify --quick``
setting. The full run's time is in the claim module's docstring.
"""
from __future__ import annotations

import sys

from linmeta.families.paper.claims import c6
from linmeta.engine.claim_support import experiment_cli, experiment_main


def main(setting: str = "full", out_dir="figures", seed: int = 0) -> list:
    """Run claim C6 at ``setting``, write its figure into ``out_dir``, print and return
    the verdict rows."""
    return experiment_main(c6, setting, out_dir, seed)


if __name__ == "__main__":
    sys.exit(experiment_cli(main, __doc__))
