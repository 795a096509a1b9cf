"""Claim C7: with finite N, Meta-LoRA's base error shrinks with N; SR's does not.

Thin script over :mod:`linmeta.claims.c7`: ||A_hat - A*||_F against N and against the noise level
with fitted slopes checked against -1/2 and 1, the noiseless case, the noise level of
linmeta.sample_tasks, and SR's error against ||Rbar||_F.

Run ``python -m experiments.c7_finite_samples --setting full --out figures``: writes
``figures/c7_finite_samples.png`` and ``.pdf`` and prints the verdict rows (exit code 1 if a check
fails).
``--setting tiny`` takes seconds (the tests run it); ``quick`` is the ``linmeta verify --quick``
setting.
"""
from __future__ import annotations

import sys

from linmeta.families.paper.claims import c7
from linmeta.engine.claim_support import experiment_cli, experiment_main


def main(setting: str = "full", out_dir="figures", seed: int = 0) -> list:
    """Run claim C7 at ``setting``, write its figure into ``out_dir``, print and return
    the verdict rows."""
    return experiment_main(c7, setting, out_dir, seed)


if __name__ == "__main__":
    sys.exit(experiment_cli(main, __doc__))
