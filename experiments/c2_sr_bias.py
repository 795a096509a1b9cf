"""Claim C2: standard retraining is not low-rank adaptable.

Thin script over :mod:`linmeta.claims.c2`: SR residual spectra and rank against (T+1)k, the best
rank-r fine-tuning error after SR (exact and gradient-descent fine-tuning) against Eckart-Young
over r and T, the PSD adapter, the orthogonal case k s^4 / T and the many-task limit Rbar -> k I.

Run ``python -m experiments.c2_sr_bias --setting full --out figures``: writes
``figures/c2_sr_bias.png`` and ``.pdf`` and prints the verdict rows (exit code 1 if a check
fails).
``--setting tiny`` takes seconds (the tests run it); ``quick`` is the ``linmeta verify --quick``
setting.
"""
from __future__ import annotations

import sys

from linmeta.families.paper.claims import c2
from linmeta.engine.claim_support import experiment_cli, experiment_main


def main(setting: str = "full", out_dir="figures", seed: int = 0) -> list:
    """Run claim C2 at ``setting``, write its figure into ``out_dir``, print and return
    the verdict rows."""
    return experiment_main(c2, setting, out_dir, seed)


if __name__ == "__main__":
    sys.exit(experiment_cli(main, __doc__))
