"""Claim R5: FedRep's late contraction max(|1 - eta lambda_min|, |1 - eta lambda_max|) in the
population (1 - eta lambda_min(Sigma) while eta (lambda_min + lambda_max) <= 2).

Thin script over :mod:`linmeta.claims.r5`: alternating minimisation (heads exactly, a step eta on
B, QR): the fitted late rate of the largest principal angle against the two-regime rate, at
eta = 0.5 and on either side of eta (lambda_min + lambda_max) = 2.

Run ``python -m experiments.rep_fedrep --setting full --out figures``: writes
``figures/rep_r5_fedrep.png`` and ``.pdf`` and prints the verdict rows (exit code 1 if a check
fails). ``--setting tiny`` takes seconds (the tests run it); ``quick`` is the ``linmeta verify
--quick`` setting.
"""
from __future__ import annotations

import sys

from linmeta.claims import r5
from linmeta.claims._support import experiment_cli, experiment_main


def main(setting: str = "full", out_dir="figures", seed: int = 0) -> list:
    """Run claim R5 at ``setting``, write its figure into ``out_dir``, print and return
    the verdict rows."""
    return experiment_main(r5, setting, out_dir, seed)


if __name__ == "__main__":
    sys.exit(experiment_cli(main, __doc__))
