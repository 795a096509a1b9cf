"""Run claims, or whole families, at a setting: their figures and verdict rows.

One entry for every claim (the same code ``linmeta verify`` runs, without its report)::

    python -m experiments.claims C3 --setting full --out figures        # one claim
    python -m experiments.claims C2 C6 --setting quick                   # several
    python -m experiments.claims bilevel --setting full --out figures    # a family (M1-M6 share one grid)

Writes each claim's figures (PNG and PDF) and a summary (rows, seconds, figures;
``<family>_<setting>.json`` for a whole family, else ``claims_<ids>_<setting>.json``) into ``--out`` (default ``results/claims``), prints the verdict rows; exit code 1 if a
check fails, 2 for bad input. ``--setting tiny`` takes seconds (the tests run it). Experiments
that do more than one claim's rows have their own scripts beside this one.
"""
from __future__ import annotations

import sys

from linmeta.engine.claim_support import claims_cli, claims_parser, run_claims

build_parser = claims_parser  # the command line (python -m experiments.claims --help)


def main(claims, setting: str = "full", out_dir="results/claims", seed: int = 0) -> list:
    """Run ``claims`` (ids or family names) at ``setting``; returns the verdict rows."""
    return run_claims(claims, setting=setting, out_dir=out_dir, seed=seed)


if __name__ == "__main__":
    sys.exit(claims_cli())
