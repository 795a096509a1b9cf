"""A sweep across two processes (jax.distributed) gives the single-process results, bit for bit.

Two fresh Python processes on this machine form one JAX cluster: ``jax.distributed.initialize``
with a loopback coordinator (127.0.0.1, a free port), ``num_processes=2``, one CPU device each,
cross-process collectives by gloo (JAX's CPU default, set explicitly). Both run the same
:func:`linmeta.sweep.run_sweep` over the global devices: each process fills only its own shards of
the inputs (``jax.make_array_from_callback``), one SPMD program runs over both, and the results are
gathered on every process (``process_allgather``). Three configurations on two devices also take
the padding path. Every number and trajectory must equal this process's single-process run.

Robustness: both children are killed after :data:`TIMEOUT` seconds (a process whose peer died
would otherwise wait for the coordinator); a failure shows both processes' output. A port taken
between choosing and binding it is retried once with a new one.
"""
import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from linmeta.engine import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 150
SHAPE = dict(d=4, k=1, T=3, N=37, n=11, outer_steps=6, inner_steps=3, sr_steps=7, ft_steps=9,
             record_every=4)  # the shape of tests/test_sweep.py
CONFIGS = [dict(SHAPE, seed=s) for s in range(3)]

CHILD = r"""
import json, sys
process_id, port, configs = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
import jax
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                           process_id=process_id, initialization_timeout=90,
                           heartbeat_timeout_seconds=30, shutdown_timeout_seconds=60)
import numpy as np
from linmeta import sweep
assert jax.process_count() == 2 and len(jax.devices()) == 2 and len(jax.local_devices()) == 1
res = sweep.run_sweep(configs, devices=jax.devices())
out = [{"scalars": {k: r[k] for k in sweep.RESULT_KEYS},
        "trajectories": {k: np.asarray(v).tolist() for k, v in r["trajectories"].items()}}
       for r in res]
print("RESULT " + json.dumps({"process": jax.process_index(), "results": out}), flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_env() -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if not f.startswith("--xla_force_host_platform_device_count"))
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def _start_cluster(configs) -> list[subprocess.Popen]:
    port = _free_port()
    return [subprocess.Popen([sys.executable, "-c", CHILD, str(i), str(port), json.dumps(configs)],
                             env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for i in range(2)]


def _wait_cluster(procs) -> list[tuple[int, str, str]]:
    """Wait for the two processes (at most TIMEOUT s in all), return (rc, stdout, stderr)."""
    deadline = time.monotonic() + TIMEOUT
    outs = []
    try:
        for p in procs:
            try:
                out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                out, err = p.communicate()
                err += f"\n[killed after {TIMEOUT} s]"
            outs.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return outs


def _report(outs) -> str:
    return "\n".join(f"--- process {i}: exit {rc}\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}"
                     for i, (rc, out, err) in enumerate(outs))


def test_two_processes_equal_one():
    procs = _start_cluster(CONFIGS)
    try:  # the single-process reference, while the two processes start
        single = sweep.run_sweep(CONFIGS, devices=jax.local_devices()[:1])
    finally:
        outs = _wait_cluster(procs)
    if any(rc != 0 for rc, _, _ in outs) and any("already in use" in err for _, _, err in outs):
        outs = _wait_cluster(_start_cluster(CONFIGS))  # port taken meanwhile: once more, new port
    assert all(rc == 0 for rc, _, _ in outs), _report(outs)
    got = []
    for rc, out, err in outs:
        line = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        assert line, _report(outs)
        got.append(json.loads(line[-1][7:]))
    assert sorted(g["process"] for g in got) == [0, 1]
    for g in got:  # every process holds all results (gathered)
        assert len(g["results"]) == len(CONFIGS)
        for mine, theirs in zip(single, g["results"]):
            for key in sweep.RESULT_KEYS:
                assert theirs["scalars"][key] == mine[key], (key, theirs["scalars"][key],
                                                             mine[key])
            for key, value in mine["trajectories"].items():
                np.testing.assert_array_equal(np.asarray(theirs["trajectories"][key]),
                                              np.asarray(value), err_msg=key)
