"""Benchmark: how linmeta scales: sweeps (batch size, dimension, devices, memory) and recovery.

Five measurements, each printed as a table and written to JSON:

1. **Batch**: configurations per second against the number of configurations (seeds) batched in
   one compiled program, 1 to 4096, for the paper's configuration (d=10, k=1, T=3, N=5000, n=100)
   with a tenth of its steps (300 outer iterations of 10+1 steps, 300 SR steps, 1000 fine-tuning
   steps). Compile time is reported apart from run time.
2. **Dimension**: d from 10 to 1024 on population statistics (N = n = inf: the per-step cost is the
   same O(d^3) at any N), fewer steps at large d, with the cost model (flops per configuration,
   :func:`flops_per_config`) beside the measured time, and the achieved FLOP/s as a fraction of this
   machine's measured dense matmul FLOP/s (a 2048 x 2048 product, same dtype).
3. **Devices**: the same sweep on 2 simulated CPU devices against 1
   (``XLA_FLAGS=--xla_force_host_platform_device_count=2``, in a subprocess), run time only, and the
   largest difference between the two results.
4. **Memory**: peak resident memory (``VmHWM``) of a subprocess that runs a 10,000-
   configuration sweep of the paper's configuration (N=5000 raw samples per task) with the paper's
   number of recorded points per trajectory (a tenth of the steps, recorded every step).

5. **Recovery**: population recovery by the default ``linmeta.meta_lora(population(truth), k,
   key=...)`` (method ``"auto"``: Newton up to T d k = 256 unknowns, matrix-free L-BFGS above),
   each point in a fresh process without compilation cache: the cold time of the call (tracing
   and compilation included; imports and the truth excluded), the warm time (a second call, new
   starts), the process's peak resident memory (``VmHWM``), the relative base error, the solver's
   iterations and evaluations, and the matmul flops of the L-BFGS evaluations
   (``4 T d^2 k`` each: ``U U^T`` and ``(D + D^T) U`` per start) per second as a fraction of the
   dense matmul rate. Against d (up to 1024) at fixed (k, T) = (4, 4), against T (up to 64) at
   (d, k) = (128, 4), 4 starts each; the headline point (d, k, T) = (256, 4, 8) and the large
   points (1024, 4, 4), (2048, 8, 4), (4096, 16, 8) with the default 8 starts, printed as one
   table (time, peak memory, relative base error, iterations). At the population these L-BFGS
   rows run in the span of the centred task matrices (``span_dim`` = m <= T k,
   :mod:`linmeta.retrain._matrix_free`), and the flops count ``4 T m^2 k`` an evaluation.
   A figure: ``benchmarks/results/recovery_scaling.png``.

Accelerators: every section but "devices" and "memory" (CPU processes) runs on the default JAX
device, a GPU when one is present (float64 where the card supports it; the JSON's
``machine.gpu`` and each recovery row's ``device`` name it). The committed results are CPU
numbers: no GPU was present when they were measured. float64 unless
``--float32``.

Usage::

    python benchmarks/scaling.py            # all five; writes benchmarks/results/scaling.json
    python benchmarks/scaling.py --only batch dim
    python benchmarks/scaling.py --only recovery   # writes benchmarks/results/recovery.json
    python benchmarks/scaling.py --tiny     # a smoke test (in-process devices/memory parts)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

if __name__ == "__main__":  # run as a script from anywhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_TENTH = dict(d=10, k=1, T=3, N=5000, n=100, noise_std=0.01, outer_steps=300, inner_steps=10,
                   sr_steps=300, ft_steps=1000, record_every=10)
TINY_CFG = dict(d=4, k=1, T=3, N=37, n=11, outer_steps=6, inner_steps=3, sr_steps=7, ft_steps=9,
                record_every=4)

FULL = {
    "recovery_headline": (256, 4, 8),
    "recovery_d": tuple((d, 4, 4) for d in (32, 64, 128, 256, 512, 1024)),
    "recovery_T": tuple((128, 4, T) for T in (3, 4, 8, 16, 32, 64)),
    "recovery_starts": 4,
    "recovery_large": ((1024, 4, 4), (2048, 8, 4), (4096, 16, 8)),
    "batches": (1, 4, 16, 64, 256, 1024, 4096),
    # d: (configurations, outer steps); sr_steps = outer, ft_steps = 3 * outer
    "dims": ((10, 256, 300), (32, 64, 100), (100, 16, 20), (316, 2, 4), (1024, 1, 2)),
    "device_batch": 512,
    "memory_configs": 10000,
}
# tiny: the shapes and batch sizes of the test suite's sweeps (tests/test_sweep.py), in-process
TINY = {"batches": (1, 2), "dims": ((4, 2, 6),), "device_batch": 8, "memory_configs": 8,
        "recovery_headline": (64, 4, 3), "recovery_d": ((64, 4, 3),),
        "recovery_T": ((64, 4, 3),), "recovery_starts": None, "recovery_large": ()}
# (tiny: the shape and starts of tests/test_meta_lora.py's mid-size recovery: one compiled solver)


def flops_per_config(cfg: dict, m: int = 1) -> float:
    """Cost model: floating-point operations of one configuration of the protocol.

    Per Meta-LoRA adapter step ``T (2 d^2 k + 2 d^3 + 2 d^2 k)`` (U U^T, (A + U U^T) S_xx,
    (G + G^T) U), per base step ``T (2 d^2 k + 2 d^3)``, per SR step ``2 T d^3``, per fine-tuning
    step of the two bases ``2 m (2 d^2 r + 2 d^3 + 4 d^2 r)``; data: ``6 T N d^2 + 6 m n d^2``
    (Y = X M^T, X^T X, Y^T X) for raw samples; the Newton-Schulz pseudo-inverse
    ``64 * 4 T d^3`` when N > d. Strided records and elementwise work are not counted."""
    d, k, T, r = cfg["d"], cfg["k"], cfg["T"], cfg["ft_rank"]
    ml = cfg["outer_steps"] * (cfg["inner_steps"] * T * (4 * d * d * k + 2 * d ** 3)
                               + T * (2 * d * d * k + 2 * d ** 3))
    sr = cfg["sr_steps"] * 2 * T * d ** 3
    ft = cfg["ft_steps"] * 2 * m * (6 * d * d * r + 2 * d ** 3)
    data = 0.0
    if cfg["N"] != "inf":
        data += 6 * T * cfg["N"] * d * d
        if cfg["N"] > d:
            data += 64 * 4 * T * d ** 3
    if cfg["n"] != "inf":
        data += 6 * m * cfg["n"] * d * d
    return float(ml + sr + ft + data)


def matmul_flops(dtype, n: int = 2048, repeats: int = 5) -> dict:
    """Measured FLOP/s of one dense n x n matrix product (best of ``repeats``), and of the
    batched (3, d, d) products at d = 1024 that the protocol does."""
    import jax
    import jax.numpy as jnp
    out = {}
    for name, shape in (("square", (n, n)), ("batched_3x1024", (3, 1024, 1024))):
        a = jnp.ones(shape, dtype) * 0.5
        f = jax.jit(lambda x, y: x @ y)
        f(a, a).block_until_ready()
        best = min(_timed(lambda: f(a, a).block_until_ready()) for _ in range(repeats))
        flops = 2 * np.prod(shape[:-2], dtype=float) * shape[-1] ** 3 if len(shape) > 2 \
            else 2 * float(n) ** 3
        out[name] = {"shape": list(shape), "seconds": best, "flops_per_s": flops / best}
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _batch_run(base: dict, B: int, devices=None, repeat: bool = True):
    from linmeta.engine import sweep
    cfgs = [sweep.validate_config(dict(base, seed=s)) for s in range(B)]
    res = sweep.run_batch(cfgs, devices=devices)
    compile_s = res[0]["seconds"]["compile"]
    run_s = res[0]["seconds"]["run"]
    if repeat:  # a second call of the compiled program: the steady-state run time
        res = sweep.run_batch(cfgs, devices=devices)
        run_s = min(run_s, res[0]["seconds"]["run"])
    return cfgs, res, compile_s, run_s


def bench_batch(batches, base: dict) -> list[dict]:
    rows = []
    for B in batches:
        cfgs, res, comp, run = _batch_run(base, B)
        fl = flops_per_config(cfgs[0]) * B
        rows.append({"batch": B, "compile_s": comp, "run_s": run, "configs_per_s": B / run,
                     "flops": fl, "gflops_per_s": fl / run / 1e9})
        print(f"  batch {B:>5}: compile {comp:6.1f} s, run {run:8.3f} s, "
              f"{B / run:9.1f} configs/s, {fl / run / 1e9:7.2f} GFLOP/s", flush=True)
    return rows


def bench_dim(dims, peak: float) -> list[dict]:
    rows = []
    for d, B, outer in dims:
        base = dict(d=d, k=1, T=3, N="inf", n="inf", noise_std=0.01, outer_steps=outer,
                    inner_steps=10, sr_steps=outer, ft_steps=3 * outer,
                    record_every=max(1, outer))
        cfgs, res, comp, run = _batch_run(base, B)
        fl = flops_per_config(cfgs[0]) * B
        rows.append({"d": d, "batch": B, "outer_steps": outer, "compile_s": comp, "run_s": run,
                     "configs_per_s": B / run, "flops_model": fl, "seconds_per_config": run / B,
                     "gflops_per_s": fl / run / 1e9, "fraction_of_matmul_peak": fl / run / peak})
        print(f"  d {d:>5} x {B:>4} configs, {outer} outer steps: compile {comp:6.1f} s, run "
              f"{run:8.3f} s, model {fl / 1e9:9.2f} GFLOP, {fl / run / 1e9:7.2f} GFLOP/s "
              f"= {fl / run / peak:6.1%} of matmul peak", flush=True)
    return rows


_DEVICE_CHILD = r"""
import json, sys, jax
jax.config.update("jax_enable_x64", sys.argv[3] == "64")
import numpy as np
sys.path.insert(0, sys.argv[4])
from benchmarks.scaling import _batch_run
base = json.loads(sys.argv[1]); B = int(sys.argv[2])
devs = jax.devices()
out = {"devices": [str(d) for d in devs]}
res = {}
for n in (1, len(devs)):
    cfgs, r, comp, run = _batch_run(base, B, devices=devs[:n])
    out[str(n)] = {"compile_s": comp, "run_s": run}
    res[n] = np.array([[x[k] for k in ("ml_ft_test_loss", "sr_ft_test_loss", "ml_objective")]
                       for x in r])
out["max_rel_diff"] = float(np.max(np.abs(res[1] - res[len(devs)]) / np.abs(res[1])))
print("RESULT " + json.dumps(out))
"""


def _child_env(devices: int) -> dict:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _devices_in_process(base: dict, B: int) -> dict:
    import jax
    devs = jax.devices()
    out = {"devices": [str(d) for d in devs], "in_process": True}
    res = {}
    for n in (1, 2):
        cfgs, r, comp, run = _batch_run(base, B, devices=devs[:n])
        out[str(n)] = {"compile_s": comp, "run_s": run}
        res[n] = np.array([[x[k] for k in ("ml_ft_test_loss", "sr_ft_test_loss", "ml_objective")]
                           for x in r])
    out["max_rel_diff"] = float(np.max(np.abs(res[1] - res[2]) / np.abs(res[1])))
    return out


def bench_devices(base: dict, B: int, x64: bool, in_process: bool = False) -> dict:
    """Run time of a B-configuration batch on 1 and on 2 CPU devices. In a subprocess with two
    simulated devices, or (``in_process``, the tiny smoke test) in this process when it already
    has two devices."""
    import jax
    if in_process and len(jax.devices()) >= 2:
        out = _devices_in_process(base, B)
        out["batch"] = B
        out["speedup"] = out["1"]["run_s"] / out["2"]["run_s"]
        print(f"  {B} configs (in process): 1 device {out['1']['run_s']:.3f} s, 2 devices "
              f"{out['2']['run_s']:.3f} s, largest relative difference {out['max_rel_diff']:.1e}",
              flush=True)
        return out
    proc = subprocess.run([sys.executable, "-c", _DEVICE_CHILD, json.dumps(base), str(B),
                           "64" if x64 else "32", ROOT], env=_child_env(2),
                          capture_output=True, text=True, timeout=1800)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
        raise RuntimeError(f"device benchmark failed:\n{proc.stdout}\n{proc.stderr}")
    out = json.loads(line[-1][7:])
    out["batch"] = B
    out["speedup"] = out["1"]["run_s"] / out["2"]["run_s"]
    print(f"  {B} configs: 1 device {out['1']['run_s']:.2f} s, 2 devices "
          f"{out['2']['run_s']:.2f} s: speed-up {out['speedup']:.2f}x (largest relative "
          f"difference of the results {out['max_rel_diff']:.1e})", flush=True)
    return out


# the children's own peak memory: VmHWM, this process's peak resident set (ru_maxrss would also
# carry the parent's peak, which Linux hands down through fork and exec)
_PEAK_KIB = r"""
import json, resource, sys, time

def peak_kib():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
"""

_MEMORY_CHILD = _PEAK_KIB + r"""
import jax
jax.config.update("jax_enable_x64", sys.argv[3] == "64")
sys.path.insert(0, sys.argv[4])
from linmeta import sweep
base = json.loads(sys.argv[1]); n = int(sys.argv[2])
rss0 = peak_kib()
cfgs = [sweep.validate_config(dict(base, seed=s)) for s in range(n)]
t0 = time.perf_counter()
res = sweep.run_sweep(cfgs)
secs = time.perf_counter() - t0
traj = sum(a.nbytes for r in res for a in r["trajectories"].values())
print("RESULT " + json.dumps({"configs": n, "seconds": secs, "chunk": res[0]["seconds"]["batch"],
      "rss_after_import_kib": rss0, "peak_rss_kib": peak_kib(),
      "trajectory_bytes": traj,
      "finite": all(r["ml_ft_test_loss"] == r["ml_ft_test_loss"] for r in res)}))
"""


def bench_memory(base: dict, n: int, x64: bool, in_process: bool = False) -> dict:
    """Peak RSS of an n-configuration sweep, in a fresh subprocess (``in_process``: here, for
    the tiny smoke test; then the peak includes whatever this process did before)."""
    if in_process:
        from linmeta.engine import sweep
        cfgs = [sweep.validate_config(dict(base, seed=s)) for s in range(n)]
        t0 = time.perf_counter()
        res = sweep.run_sweep(cfgs)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = {"configs": n, "seconds": time.perf_counter() - t0, "in_process": True,
               "peak_rss_kib": peak, "peak_rss_gib": peak / 2 ** 20,
               "finite": all(np.isfinite(r["ml_ft_test_loss"]) for r in res)}
        print(f"  {n} configurations (in process): peak RSS so far {out['peak_rss_gib']:.2f} GiB",
              flush=True)
        return out
    proc = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, json.dumps(base), str(n),
                           "64" if x64 else "32", ROOT], env=_child_env(1),
                          capture_output=True, text=True, timeout=3600)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
        raise RuntimeError(f"memory benchmark failed:\n{proc.stdout}\n{proc.stderr}")
    out = json.loads(line[-1][7:])
    out["peak_rss_gib"] = out["peak_rss_kib"] / 2 ** 20
    print(f"  {n} configurations: peak RSS {out['peak_rss_gib']:.2f} GiB (after import "
          f"{out['rss_after_import_kib'] / 2 ** 20:.2f} GiB; trajectories kept "
          f"{out['trajectory_bytes'] / 2 ** 20:.0f} MiB), {out['seconds']:.1f} s, chunks of "
          f"{out['chunk']}", flush=True)
    return out


_RECOVERY_CHILD = _PEAK_KIB + r"""
import jax
jax.config.update("jax_enable_x64", sys.argv[5] == "64")
sys.path.insert(0, sys.argv[6])
from benchmarks.scaling import recovery_point
d, k, T = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
starts = None if sys.argv[4] == "default" else int(sys.argv[4])
rss0 = peak_kib()
out = recovery_point(d, k, T, starts)
out.update(rss_after_import_kib=rss0, peak_rss_kib=peak_kib())
print("RESULT " + json.dumps(out))
"""


def recovery_point(d: int, k: int, T: int, n_starts=None, seed: int = 0) -> dict:
    """Population recovery by the default ``linmeta.meta_lora``: cold and warm seconds of the call,
    relative base error, the solver the switch chose, iterations, evaluations and matmul flops."""
    import importlib

    import jax
    import jax.numpy as jnp
    import linmeta
    from linmeta.core import metrics
    from linmeta import methods as retrain
    ml_mod = importlib.import_module("linmeta.retrain.meta_lora")
    truth = linmeta.sample_truth(jax.random.key(seed), d, k, T)
    pop = linmeta.population(truth)
    jax.block_until_ready(pop)
    dt = pop.Sxx.dtype
    kw = {} if n_starts is None else {"n_starts": n_starts}
    starts = 8 if n_starts is None else n_starts
    t0 = time.perf_counter()
    res = jax.block_until_ready(linmeta.meta_lora(pop, k, key=jax.random.key(seed + 1), **kw))
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    res2 = jax.block_until_ready(linmeta.meta_lora(pop, k, key=jax.random.key(seed + 2), **kw))
    warm = time.perf_counter() - t0
    method = retrain.default_solver(T, d, k, starts, dt.itemsize)
    out = {"d": d, "k": k, "T": T, "n_starts": starts, "unknowns": T * d * k, "method": method,
           "dtype": str(dt), "cold_s": cold, "warm_s": warm,
           "rel_base_error": float(metrics.base_error(res.base, truth.A_star, relative=True)),
           "rel_base_error_warm": float(metrics.base_error(res2.base, truth.A_star,
                                                           relative=True)),
           "objective": float(res.objective),
           "memory_estimate_bytes": retrain.solver_memory(method, T, d, k, starts, dt.itemsize)}
    v = jnp.asarray(res2.history.value)
    out["iterations_best_start"] = int(jnp.sum(jnp.isfinite(v))) - 1
    dev = jax.devices()[0]
    out["device"] = {"platform": dev.platform, "kind": getattr(dev, "device_kind", str(dev))}
    if method == "lbfgs":  # the warm call's counts: the same solver on the same starts
        U0 = jax.vmap(lambda kk: linmeta.lora.init_factor(kk, (T, d, k), 0.1, dt))(
            jax.random.split(jax.random.key(seed + 2), starts))
        run = ml_mod.lbfgs_run(pop, U0, 1e-26, 1e-14, ml_mod.default_rtol(dt),
                               max_iter=ml_mod._DEFAULT_MAX_ITER["lbfgs"])
        info = run.info
        m = run.span_dim  # the dimension the solver ran in (d: the full space)
        evals = int(jnp.sum(info.evaluations))
        flops = evals * 4.0 * T * m * m * k
        out.update(iterations_max=int(jnp.max(info.iterations)),
                   iterations_per_start=[int(x) for x in info.iterations], evaluations=evals,
                   span_dim=m, matmul_flops=flops, matmul_flops_per_s_warm=flops / warm)
    else:
        out["iterations_max"] = out["iterations_best_start"]
    return out


def _recovery_subprocess(d, k, T, starts, x64: bool) -> dict:
    env = _child_env(1)
    if _accelerator() is not None:  # the recovery rows run on the accelerator when there is one
        if "JAX_PLATFORMS" in os.environ:
            env["JAX_PLATFORMS"] = os.environ["JAX_PLATFORMS"]
        else:
            env.pop("JAX_PLATFORMS", None)
    env["LINMETA_NO_CACHE"] = "1"   # cold: compiled in the process
    env.pop("LINMETA_CACHE_DIR", None)
    proc = subprocess.run([sys.executable, "-c", _RECOVERY_CHILD, str(d), str(k), str(T),
                           "default" if starts is None else str(starts), "64" if x64 else "32",
                           ROOT], env=env, capture_output=True, text=True, timeout=3600)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
        raise RuntimeError(f"recovery benchmark failed:\n{proc.stdout}\n{proc.stderr}")
    out = json.loads(line[-1][7:])
    out["peak_rss_gib"] = out["peak_rss_kib"] / 2 ** 20
    return out


def _accelerator():
    """The default device's kind when it is not a CPU (e.g. ``"NVIDIA H100 80GB HBM3"``), else
    None."""
    import jax
    dev = jax.devices()[0]
    return None if dev.platform == "cpu" else getattr(dev, "device_kind", dev.platform)


def _print_recovery(r: dict, peak: float) -> None:
    frac = (f", {r['matmul_flops_per_s_warm'] / peak:6.2%} of matmul peak"
            if "matmul_flops_per_s_warm" in r else "")
    mem = (f", peak RSS {r['peak_rss_gib']:.2f} GiB" if "peak_rss_gib" in r else "")
    print(f"  d={r['d']:>5} k={r['k']} T={r['T']:>3} ({r['unknowns']:>6} unknowns, "
          f"{r['method']}, {r['n_starts']} starts): cold {r['cold_s']:7.2f} s, warm "
          f"{r['warm_s']:7.2f} s{mem}, rel. base error {r['rel_base_error']:.1e}, "
          f"{r['iterations_max']} iterations{frac}", flush=True)


def bench_recovery(plan: dict, x64: bool, peak: float, in_process: bool = False) -> dict:
    """The recovery section (module docstring, item 5)."""
    def point(d, k, T, starts):
        if in_process:
            r = recovery_point(d, k, T, starts)
            r["in_process"] = True
        else:
            r = _recovery_subprocess(d, k, T, starts, x64)
        if "matmul_flops_per_s_warm" in r:
            r["fraction_of_matmul_peak"] = r["matmul_flops_per_s_warm"] / peak
        _print_recovery(r, peak)
        return r

    d0, k0, T0 = plan["recovery_headline"]
    print(f"recovery at the population, default method and starts, (d, k, T) = "
          f"({d0}, {k0}, {T0}):", flush=True)
    head = point(d0, k0, T0, None)
    ns = plan["recovery_starts"]  # None: the default
    print(f"recovery against d ({ns or 'default'} starts):", flush=True)
    by_d = [point(d, k, T, ns) for d, k, T in plan["recovery_d"]]
    print(f"recovery against T ({ns or 'default'} starts):", flush=True)
    by_T = [point(d, k, T, ns) for d, k, T in plan["recovery_T"]]
    print("recovery at large d (default method and starts):", flush=True)
    large = [point(d, k, T, None) for d, k, T in plan["recovery_large"]]
    print("table (population, default linmeta.meta_lora, 8 starts):", flush=True)
    print("| d, k, T | time (cold / warm) | peak memory | relative base error | iterations |",
          flush=True)
    for r in [head] + large:
        mem = f"{r['peak_rss_gib']:.2f} GiB" if "peak_rss_gib" in r else "(in process)"
        print(f"| {r['d']}, {r['k']}, {r['T']} | {r['cold_s']:.1f} s / {r['warm_s']:.1f} s | "
              f"{mem} | {r['rel_base_error']:.1e} | {r['iterations_max']} |", flush=True)
    return {"headline": head, "by_d": by_d, "by_T": by_T, "large": large,
            "note": "cold: the first call in a fresh process without compilation cache "
                    "(tracing + compilation + run); warm: a second call with new starts; "
                    "peak RSS: VmHWM of that process (imports and JAX included)"}


def plot_recovery(rec: dict, path: str) -> str:
    """Two panels (against d, against T): cold and warm seconds (left axis) and peak memory
    (right axis), log scales."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from linmeta.engine.results import atomic_write_bytes

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    fig.subplots_adjust(wspace=0.5)
    for ax, rows, key, fixed in ((axes[0], rec["by_d"], "d", ("k", "T")),
                                 (axes[1], rec["by_T"], "T", ("d", "k"))):
        title = f"against {key} (" + ", ".join(f"{f}={rows[0][f]}" for f in fixed) + ")"
        x = [r[key] for r in rows]
        lines = ax.loglog(x, [r["cold_s"] for r in rows], "o-", color="tab:blue",
                          label="cold (compile included)")
        lines += ax.loglog(x, [r["warm_s"] for r in rows], "s--", color="tab:blue",
                           label="warm")
        ax.set_xticks(x)
        ax.set_xticklabels([str(v) for v in x])
        ax.minorticks_off()
        ax.set_xlabel(key)
        ax.set_ylabel("seconds")
        ax.set_title(f"population recovery {title}", fontsize=10)
        if all("peak_rss_gib" in r for r in rows):
            ax2 = ax.twinx()
            lines += ax2.plot(x, [r["peak_rss_gib"] for r in rows], "^-", color="tab:red",
                              label="peak RSS (GiB)")
            ax2.set_ylim(0, 1.15 * max(r["peak_rss_gib"] for r in rows))
            ax2.set_ylabel("peak resident memory (GiB)", color="tab:red")
        ax.legend(lines, [ln.get_label() for ln in lines], loc="upper left", fontsize=8)
        for r in rows:
            ax.annotate(f"{r['rel_base_error']:.0e}", (r[key], r["warm_s"]), fontsize=6,
                        textcoords="offset points", xytext=(2, -9))
    fig.suptitle("linmeta.meta_lora default method, relative base error annotated "
                 "(CPU, 2 cores)", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


SECTIONS = ("batch", "dim", "devices", "memory", "recovery")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny sizes (a smoke test)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--float32", action="store_true", help="float32 instead of float64")
    p.add_argument("--out", default=None, help="JSON output (default "
                   "benchmarks/results/scaling.json; tiny: no file unless given)")
    p.add_argument("--figure", default=None, help="recovery figure (default "
                   "benchmarks/results/recovery_scaling.png; tiny: none unless given)")
    from linmeta.engine import compile_cache
    compile_cache.add_argument(p)
    a = p.parse_args(argv)
    compile_cache.enable_from_args(a)  # before anything compiles

    import jax
    x64 = not a.float32
    jax.config.update("jax_enable_x64", x64)
    import jax.numpy as jnp
    import linmeta
    from linmeta.engine.results import atomic_write_json

    plan = TINY if a.tiny else FULL
    base = TINY_CFG if a.tiny else PAPER_TENTH
    dtype = jnp.float64 if x64 else jnp.float32
    summary = {"benchmark": "scaling", "tiny": a.tiny, "dtype": str(np.dtype(dtype)),
               "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                           "devices": [str(d) for d in jax.devices()], "gpu": _accelerator(),
                           "jax": jax.__version__, "linmeta": linmeta.__version__},
               "note": ("CPU only: no accelerator was present." if _accelerator() is None else
                        f"recovery rows on {_accelerator()} ({'float64' if x64 else 'float32'}); "
                        "the batch, dimension, devices and memory sections on the CPU.")}
    print(f"linmeta scaling on {os.cpu_count()} CPU cores ({jax.devices()[0].platform}), "
          f"{summary['dtype']}; accelerator: {_accelerator() or 'none (CPU numbers only)'}",
          flush=True)
    if any(sec in a.only for sec in ("dim", "batch", "recovery")):
        peak = matmul_flops(dtype, n=256 if a.tiny else 2048, repeats=2 if a.tiny else 5)
        summary["matmul"] = peak
        print(f"dense matmul: {peak['square']['flops_per_s'] / 1e9:.1f} GFLOP/s "
              f"({peak['square']['shape'][0]}^2), batched 3 x 1024^2: "
              f"{peak['batched_3x1024']['flops_per_s'] / 1e9:.1f} GFLOP/s", flush=True)
    if "batch" in a.only:
        print(f"configurations per second vs batch size ({_describe(base)}):", flush=True)
        summary["batch"] = {"config": base, "rows": bench_batch(plan["batches"], base)}
    if "dim" in a.only:
        print("dimension d (population statistics, T=3, k=1; sr = outer, ft = 3 outer steps):",
              flush=True)
        summary["dim"] = {"rows": bench_dim(plan["dims"],
                                            summary["matmul"]["square"]["flops_per_s"])}
    if "devices" in a.only:
        print("sharded sweep, 2 simulated CPU devices vs 1 (subprocess):", flush=True)
        summary["devices"] = bench_devices(base, plan["device_batch"], x64, in_process=a.tiny)
    if "memory" in a.only:
        mem_base = dict(base, outer_steps=base["outer_steps"], record_every=1)
        print(f"peak memory of a {plan['memory_configs']}-configuration sweep "
              f"({_describe(mem_base)}):", flush=True)
        summary["memory"] = bench_memory(mem_base if not a.tiny else base,
                                         plan["memory_configs"], x64, in_process=a.tiny)
    if "recovery" in a.only:
        summary["recovery"] = bench_recovery(plan, x64,
                                             summary["matmul"]["square"]["flops_per_s"],
                                             in_process=a.tiny)
        fig = a.figure or (None if a.tiny else os.path.join(ROOT, "benchmarks", "results",
                                                            "recovery_scaling.png"))
        if fig:
            summary["recovery"]["figure"] = plot_recovery(summary["recovery"], fig)
            print(f"wrote {fig}")
    summary["load_average"] = list(os.getloadavg())
    default = "recovery.json" if list(a.only) == ["recovery"] else "scaling.json"
    out = a.out or (None if a.tiny else os.path.join(ROOT, "benchmarks", "results", default))
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        atomic_write_json(out, summary)
        print(f"wrote {out}")
    return summary


def _describe(cfg: dict) -> str:
    return ", ".join(f"{k}={cfg[k]}" for k in ("d", "k", "T", "N", "n", "outer_steps",
                                               "inner_steps", "sr_steps", "ft_steps",
                                               "record_every") if k in cfg)


if __name__ == "__main__":
    main()
