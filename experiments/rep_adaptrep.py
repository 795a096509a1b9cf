"""Claim R6: AdaptRep's penalty identity and its lambda -> infinity limit (FrozenRep).

Thin script over :mod:`linmeta.claims.r6`: min over Delta w = v of lambda/2||Delta||^2 +
gamma/2||w||^2 against sqrt(lambda gamma)||v|| (numerical minimisation), and AdaptRep approaching
FrozenRep as lambda grows.

Run ``python -m experiments.rep_adaptrep --setting full --out figures``: writes
``figures/rep_r6_adaptrep.png`` and ``.pdf`` and prints the verdict rows (exit code 1 if a check
fails). ``--setting tiny`` takes seconds (the tests run it); ``quick`` is the ``linmeta verify
--quick`` setting.
"""
from __future__ import annotations

import sys

from linmeta.families.representation.claims import r6
from linmeta.engine.claim_support import experiment_cli, experiment_main


def main(setting: str = "full", out_dir="figures", seed: int = 0) -> list:
    """Run claim R6 at ``setting``, write its figure into ``out_dir``, print and return
    the verdict rows."""
    return experiment_main(r6, setting, out_dir, seed)


if __name__ == "__main__":
    sys.exit(experiment_cli(main, __doc__))
