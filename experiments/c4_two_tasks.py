"""Claim C4: with T = 2 Meta-LoRA is not identifiable, but benign.

Thin script over :mod:`linmeta.claims.c4`: the hyperbolic family of global minima (G = 0 for every
theta; ||A_hat - A*|| against its closed form), a generic O(k,k) boost path, Meta-LoRA (Newton) at
T = 2 with rank(A_hat - A*) <= 2k, rank-3k vs rank-k fine-tuning (Eckart-Young bias, exact and
gradient descent), and a census of critical points of G (Levenberg-Marquardt on ||grad G||^2) with
the smallest Hessian eigenvalue at every non-global one (the strict-saddle claim is measured, not
assumed).

Run ``python -m experiments.c4_two_tasks --setting full --out figures``: writes
``figures/c4_two_tasks.png`` and ``.pdf`` and prints the verdict rows (exit code 1 if a check fails).
``--setting tiny`` takes seconds (the tests run it); ``quick`` is the ``linmeta verify --quick``
setting. The full run's time is in the claim module's docstring.
"""
from __future__ import annotations

import sys

from linmeta.families.paper.claims import c4
from linmeta.engine.claim_support import experiment_cli, experiment_main


def main(setting: str = "full", out_dir="figures", seed: int = 0) -> list:
    """Run claim C4 at ``setting``, write its figure into ``out_dir``, print and return
    the verdict rows."""
    return experiment_main(c4, setting, out_dir, seed)


if __name__ == "__main__":
    sys.exit(experiment_cli(main, __doc__))
