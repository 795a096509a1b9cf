"""Test configuration: float64 unless ``JAX_ENABLE_X64=0``, two simulated CPU devices, hypothesis
profiles.

Set before JAX starts: ``--xla_force_host_platform_device_count=2`` gives the sharding tests two
devices on a CPU-only machine; ``--xla_backend_optimization_level=0`` halves the compile time of
the (compile-bound) tests. Hypothesis: no deadline (compilation would trip it), derandomised
under CI (``CI=true``) so a red run is reproducible.

Precision: float64 by default (verification); ``JAX_ENABLE_X64=0 python -m pytest -m core`` runs
the core tests in float32, with the tolerances of ``tests/helpers.py`` (``tol``). The suite does
that itself: tests/test_float32.py runs the core tests in float32 in a subprocess started at
collection time (so it overlaps the rest of the suite).
"""
import os

# XLA's cheap backend optimisation level: the tests are compile-bound (programs that linmeta
# compiles with explicit options, the sweep's, keep theirs); one Eigen thread in XLA's CPU runtime
# (multi-threaded, a run occasionally never returned: linmeta.front.verify._single_thread_eigen)
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2 "
                                   "--xla_backend_optimization_level=0 "
                                   "--xla_cpu_multi_thread_eigen=false")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# the suite counts compilations: no persistent compilation cache in the test processes (the
# cache's own tests set up their children explicitly)
os.environ.setdefault("LINMETA_NO_CACHE", "1")

import jax  # noqa: E402

X64 = os.environ.get("JAX_ENABLE_X64", "1").strip().lower() not in ("0", "false", "no", "off")
jax.config.update("jax_enable_x64", X64)

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("dev", deadline=None, max_examples=8,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", deadline=None, max_examples=8, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))


# ----------------------------------------------------------------------------- float32 run
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOAT32_RUN = pytest.StashKey()
FLOAT32_TEST = "tests/test_float32.py::test_core_tests_pass_in_float32"


def core_files() -> list:
    """Test files marked core (a module-level ``pytestmark`` naming ``pytest.mark.core``)."""
    import glob

    files = []
    for path in sorted(glob.glob(os.path.join(REPO, "tests", "test_*.py"))):
        with open(path) as f:
            if any(line.startswith("pytestmark") and "mark.core" in line for line in f):
                files.append(os.path.relpath(path, REPO))
    return files


def pytest_collection_modifyitems(session, config, items):
    """Run order: the modules that read the background chain's tiny runs after every other module
    (in the chain's order), and the float32 test, which waits for its subprocess, last
    (``helpers.chain_modules_last``): the main process keeps its core busy while the background
    runs compute."""
    import helpers

    items[:] = helpers.chain_modules_last(
        items, last_ids={it.nodeid for it in items
                         if it.nodeid.endswith(FLOAT32_TEST.split("/", 1)[1])})


def pytest_collection_finish(session):
    """Start the claims' tiny runs of the selected modules in one background chain
    (``helpers.tiny_claim_runs``), and the float32 run of the core tests when its test is selected
    (float64 sessions)."""
    import helpers

    helpers.start_tiny_runs(session)
    if not X64 or not any(item.nodeid.endswith(FLOAT32_TEST.split("/", 1)[1])
                          for item in session.items):
        return
    import subprocess
    import sys

    files = core_files()
    env = dict(os.environ, JAX_ENABLE_X64="0", JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS",
                                                                            "cpu"))
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-m", "core", "-p",
                             "no:cacheprovider", *files], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    session.config.stash[FLOAT32_RUN] = (proc, files)


def pytest_unconfigure(config):
    import helpers

    helpers.stop_tiny_runs()
    run = config.stash.get(FLOAT32_RUN, None)
    if run is not None and run[0].poll() is None:  # the test was deselected or interrupted
        run[0].kill()
        run[0].communicate()
