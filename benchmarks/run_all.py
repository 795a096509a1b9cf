"""Run every benchmark of linmeta, print their tables, write one JSON file.

    python benchmarks/run_all.py                       # full: ~15-30 min on 2 CPU cores
    python benchmarks/run_all.py --numpy-fraction 0.1  # NumPy side on a tenth of the steps
    python benchmarks/run_all.py --tiny                # a smoke test
    python benchmarks/run_all.py --no-compile-cache    # without the persistent compilation cache

Writes ``benchmarks/results/all.json`` (``--out``) with the results of
:mod:`benchmarks.paper_protocol` (linmeta against the plain NumPy loop on the paper's T sweep) and
:mod:`benchmarks.scaling` (batch size, dimension, devices, memory, and population recovery
against d and T with its figure ``benchmarks/results/recovery_scaling.png``), besides each
script's own JSON file. CPU numbers only: no GPU is lent to this project's sessions.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

if __name__ == "__main__":  # run as a script from anywhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import paper_protocol, scaling  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny sizes (a smoke test)")
    p.add_argument("--numpy-fraction", type=float, default=1.0,
                   help="fraction of the steps the NumPy side of paper_protocol runs")
    p.add_argument("--numpy-runs", type=int, default=1, help="NumPy runs measured per T")
    p.add_argument("--out", default=None,
                   help="JSON output (default benchmarks/results/all.json; tiny: none)")
    from linmeta.engine import compile_cache
    compile_cache.add_argument(p)
    a = p.parse_args(argv)
    compile_cache.enable_from_args(a)  # before anything compiles
    t0 = time.perf_counter()
    results_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    common = (["--tiny"] if a.tiny else []) + (["--no-compile-cache"] if a.no_compile_cache
                                               else [])
    pp_args = common + ["--numpy-fraction", str(a.numpy_fraction), "--numpy-runs",
                        str(a.numpy_runs)]
    sc_args = list(common)
    if not a.tiny:
        pp_args += ["--out", os.path.join(results_dir, "paper_protocol.json")]
        sc_args += ["--out", os.path.join(results_dir, "scaling.json")]
    print("=" * 30 + " paper protocol " + "=" * 30, flush=True)
    pp = paper_protocol.main(pp_args)
    print("=" * 30 + " scaling " + "=" * 37, flush=True)
    sc = scaling.main(sc_args)
    summary = {"paper_protocol": pp, "scaling": sc, "seconds": time.perf_counter() - t0}
    out = a.out or (None if a.tiny else os.path.join(results_dir, "all.json"))
    if out:
        from linmeta.engine.results import atomic_write_json
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        atomic_write_json(out, summary)
        print(f"wrote {out}")
    print(f"all benchmarks: {summary['seconds']:.0f} s")
    return summary


if __name__ == "__main__":
    main()
