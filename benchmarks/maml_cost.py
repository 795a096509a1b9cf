"""Benchmark: what one outer step of bilevel retraining costs, against d and the inner steps K.

For d in (10, 50, 100), K in (1, 10, 50, 100), T = 3 tasks, a rank-1 ``U V^T`` inner adapter
(the LoRA start) on population statistics, and each method (second-order MAML, first-order MAML,
Reptile), one compiled program runs n outer iterations of
:func:`linmeta.bilevel.methods.bilevel_step` (``fori_loop``, n traced; n is chosen so the timed run
takes about half a second). Reported per configuration:

- ``compile_s``: compilation time of that program;
- ``step_ms``: run time per outer iteration (the program run once more after a warm-up);
- ``temp_bytes``: XLA's temporary buffer size of that compiled program
  (``compiled.memory_analysis().temp_size_in_bytes``): the memory an outer step needs beyond its
  inputs and outputs. Second-order MAML keeps the inner loop's residuals for the reverse pass, so
  its memory grows with K; the first-order methods' does not;
- ``model_bytes``: the residuals second-order MAML keeps, ``8 K T (2 d^2 + 4 d r)`` bytes in
  float64 (per inner step and task: two d x d matrices, the task matrix M and its gradient G, and
  the factors before and after the step), beside the measurement (they agree within 2%).

No GPU is lent to this project's sessions: CPU numbers, float64, single process. The machine
these numbers come from is stated in the JSON (``platform``); timings on a shared machine are
inflated.

Usage::

    python benchmarks/maml_cost.py            # writes benchmarks/results/maml_cost.json
    python benchmarks/maml_cost.py --tiny     # a smoke test (d = 4, K in (1, 4), MAML)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

if __name__ == "__main__":  # run as a script from anywhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL = dict(dims=(10, 50, 100), Ks=(1, 10, 50, 100), methods=("maml", "fomaml", "reptile"),
            T=3, r=1, budget_s=0.5)
TINY = dict(dims=(4,), Ks=(1, 4), methods=("maml",), T=3, r=1, budget_s=0.01)


def _problem(d, T, r):
    import jax.numpy as jnp

    from linmeta.families.bilevel.claims._grid import (numpy_population, numpy_truths,
                                                       task_matrices, to_jax)
    from linmeta.families.bilevel.methods import Factors

    rng = np.random.default_rng(d)
    A, U, _ = numpy_truths(rng, 1, d, 1, T)
    stats = to_jax(numpy_population(task_matrices(A, U)[0]))
    start = Factors(jnp.asarray(0.1 * rng.standard_normal((d, r))), jnp.zeros((d, r)))
    return stats, start, np.linalg.norm(task_matrices(A, U)[0], ord=2, axis=(-2, -1)).max()


def measure(d, K, method, T=3, r=1, budget_s=0.5):
    """One row of the table (see the module docstring)."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    from linmeta.families.bilevel.methods import BilevelHyper, BilevelState, bilevel_step

    stats, start, lam = _problem(d, T, r)
    h = BilevelHyper(jnp.asarray(0.5 / lam), jnp.asarray(0.3), jnp.asarray(0.0),
                     jnp.asarray(K, jnp.int32), jnp.asarray(1.0))
    s0 = BilevelState(jnp.zeros((d, d)), start)

    def one(s):
        return bilevel_step(s, stats, stats, h, method=method, adapter="asymmetric", length=K)

    # one program: n outer iterations (n traced: calibration and timing share the compile)
    def many(s, n):
        return lax.fori_loop(0, n, lambda i, c: one(c), s)

    t0 = time.perf_counter()
    f = jax.jit(many).lower(s0, 1).compile()
    compile_s = time.perf_counter() - t0
    mem = f.memory_analysis()
    temp_bytes = int(getattr(mem, "temp_size_in_bytes", -1)) if mem is not None else -1
    calib = 4
    jax.block_until_ready(f(s0, calib))
    t0 = time.perf_counter()
    jax.block_until_ready(f(s0, calib))
    per = (time.perf_counter() - t0) / calib
    steps = int(max(calib, min(2000, budget_s / max(per, 1e-7))))
    jax.block_until_ready(f(s0, steps))
    t0 = time.perf_counter()
    jax.block_until_ready(f(s0, steps))
    step_ms = 1e3 * (time.perf_counter() - t0) / steps
    model = 8 * K * T * (2 * d * d + 4 * d * r) if method == "maml" else 0
    return dict(d=d, K=K, method=method, T=T, r=r, compile_s=compile_s, step_ms=step_ms,
                steps=steps, temp_bytes=temp_bytes, model_bytes=model)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="smoke test (seconds)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/"
                   "maml_cost.json; not written with --tiny unless given)")
    a = p.parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    cfg = TINY if a.tiny else FULL
    rows = []
    print(f"{'d':>4} {'K':>4} {'method':>8} {'compile s':>10} {'ms/step':>10} {'temp MB':>9} "
          f"{'model MB':>9}")
    for d in cfg["dims"]:
        for K in cfg["Ks"]:
            for m in cfg["methods"]:
                row = measure(d, K, m, cfg["T"], cfg["r"], cfg["budget_s"])
                rows.append(row)
                print(f"{d:>4} {K:>4} {m:>8} {row['compile_s']:>10.2f} {row['step_ms']:>10.3f} "
                      f"{row['temp_bytes'] / 1e6:>9.3f} {row['model_bytes'] / 1e6:>9.3f}",
                      flush=True)
    out = dict(platform=platform.platform(), processor=platform.processor(),
               cpus=os.cpu_count(), jax=jax.__version__, setting="tiny" if a.tiny else "full",
               command="python benchmarks/maml_cost.py" + (" --tiny" if a.tiny else ""),
               rows=rows)
    path = a.out or (None if a.tiny else os.path.join(ROOT, "benchmarks", "results",
                                                      "maml_cost.json"))
    if path:
        from linmeta.engine.results import atomic_write_bytes

        atomic_write_bytes(path, json.dumps(out, indent=1).encode())
    return out


if __name__ == "__main__":
    main()
