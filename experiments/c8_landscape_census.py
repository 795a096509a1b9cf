"""Claim C8: a census of where Meta-LoRA optimisers end over the (d, k, T) grid of the C3 map.

Thin script over :mod:`linmeta.families.paper.claims.c8`: for every cell, Gaussian truths and random starts at
scales 0.1, 0.5, 1, 2, run by saddle-free Newton, the paper's alternating protocol (end points
polished) and a critical-point finder; every end point classified with Hessian evidence (global
minimum, strict or degenerate spurious minimum, saddle, not converged, escaped to infinity), and
every global minimum checked for A_hat = A*.

Run ``python -m experiments.c8_landscape_census --setting full --out figures``: writes
``figures/c8_census.json`` (after every cell, atomically; an interrupted run started again with
the same arguments resumes from it) and ``figures/c8_census_map.png`` / ``.pdf``, and prints the
verdict rows (exit code 1 if a check fails). ``--setting tiny`` takes seconds (the tests run it)
and ``quick`` is the ``linmeta verify --quick`` setting; both write
``c8_landscape_census.png`` / ``.pdf`` only. The full run's time is in the claim module's docstring.
"""
from __future__ import annotations

import sys
from pathlib import Path

import jax

from linmeta.families.paper.claims import c8
from linmeta.engine.claim_support import (experiment_cli, experiment_parser, format_verdicts,
                                          plot_claim, single_thread_blas)


def main(setting: str = "full", out_dir="results/experiments", seed: int = 0) -> list:
    """Run claim C8 at ``setting`` (the full census resumable through ``out_dir/c8_census.json``),
    write its figure (and, for the full setting, the census JSON) into ``out_dir``, print and
    return the verdict rows."""
    jax.config.update("jax_enable_x64", True)
    single_thread_blas()
    checkpoint = None
    if setting == "full":
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        checkpoint = Path(out_dir) / "c8_census.json"
    result = c8.run(setting=setting, seed=seed, checkpoint=checkpoint,
                    log=lambda line: print(line, flush=True))
    paths = plot_claim(c8, result, out_dir, setting)
    print(format_verdicts(result, paths), flush=True)
    return list(result.verdicts)


def build_parser():
    """The command line (:func:`linmeta.engine.claim_support.experiment_parser`)."""
    return experiment_parser(__doc__, prog="python -m experiments.c8_landscape_census")


if __name__ == "__main__":
    sys.exit(experiment_cli(main, __doc__, parser=build_parser()))
