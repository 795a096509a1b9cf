"""The bilevel family (claims M1-M6, docs/bilevel.md) in one process.

The measured claims M4, M5 and M6 read one grid of runs of :mod:`linmeta.bilevel`'s protocol,
computed once per process; running them together (this script) computes it once.

Run ``nice -n 10 python -m experiments.bilevel_all --setting full --out figures``: writes every
family figure (``figures/bilevel_*.png`` and ``.pdf``), prints the verdict rows and writes
``figures/bilevel_<setting>.json`` (rows and seconds per claim). Exit code 1 if a check fails.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from linmeta.engine import claim_support as _support
from linmeta.engine.claims import claim_module, family_claims
from linmeta.engine.results import atomic_write_bytes


def main(setting: str = "full", out_dir="figures", seed: int = 0) -> list:
    """Run every bilevel claim at ``setting``, write the figures and a JSON summary into
    ``out_dir``, print and return all verdict rows."""
    import jax

    jax.config.update("jax_enable_x64", True)
    _support.single_thread_blas()
    rows, summary = [], {}
    for cid in family_claims("bilevel"):
        t0 = time.perf_counter()
        mod = claim_module(cid)
        result = mod.run(setting=setting, seed=seed)
        paths = mod.plot(result, out_dir)
        print(_support.format_verdicts(result, paths), flush=True)
        rows += list(result.verdicts)
        summary[cid] = dict(seconds=time.perf_counter() - t0,
                            rows=[v.as_dict() for v in result.verdicts],
                            figures=[Path(p).name for p in paths])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / f"bilevel_{setting}.json",
                       json.dumps(dict(setting=setting, seed=seed, claims=summary), indent=1,
                                  default=str).encode())
    return rows


if __name__ == "__main__":
    sys.exit(_support.experiment_cli(main, __doc__))
