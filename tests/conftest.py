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

Two cores: the main session, the claims' tiny runs in a background chain (``helpers``), and a
second pytest process for the modules of :data:`BACKGROUND_MODULES` (awaited by
tests/test_background_modules.py), so that neither core waits.
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


# ----------------------------------------------------------------------------- second stream
# Modules that need nothing from the background chain run in a second pytest process beside the
# main one when the test that awaits them is selected (the full suite): the main process and the
# chain alone left one core idle for minutes. Run directly (``pytest tests/test_cli.py``), they run
# in the session itself.
BACKGROUND_RUN = pytest.StashKey()
BACKGROUND_IDS = pytest.StashKey()
BACKGROUND_TEST = "tests/test_background_modules.py::test_modules_run_beside_the_session_pass"
BACKGROUND_MODULES = ("tests/test_cli.py", "tests/test_cli_messages.py",
                      "tests/test_compile_cache.py", "tests/test_docs_examples.py",
                      "tests/test_heatmaps.py", "tests/test_multiprocess.py",
                      "tests/test_mutation_audit.py", "tests/test_plots.py",
                      "tests/test_plugins.py", "tests/test_rep_protocol.py",
                      "tests/test_shallow.py", "tests/test_verify.py")


def _selects(items, nodeid):
    return [it for it in items if it.nodeid.endswith(nodeid.split("/", 1)[1])]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    """After the selection (``-k``, ``-m``): when the test that awaits them is selected (float64
    sessions), the selected tests of :data:`BACKGROUND_MODULES` leave this session for a second
    pytest process (started in ``pytest_collection_finish``). Run order: the modules that read
    the background chain's tiny runs after every other module (in the chain's order), and the two
    tests that await subprocesses last (``helpers.chain_modules_last``), so that the main process
    keeps its core busy while the background runs compute."""
    import helpers

    if X64 and _selects(items, BACKGROUND_TEST):
        moved = [it for it in items if it.nodeid.split("::")[0] in BACKGROUND_MODULES]
        if moved:
            config.stash[BACKGROUND_IDS] = [it.nodeid for it in moved]
            items[:] = [it for it in items if it.nodeid.split("::")[0] not in BACKGROUND_MODULES]
    last = {it.nodeid for it in _selects(items, FLOAT32_TEST) + _selects(items, BACKGROUND_TEST)}
    items[:] = helpers.chain_modules_last(items, last_ids=last)


def pytest_collection_finish(session):
    """Start the claims' tiny runs of the selected modules in one background chain
    (``helpers.tiny_claim_runs``), and the float32 run of the core tests when its test is selected
    (float64 sessions)."""
    import helpers

    import subprocess
    import sys
    import tempfile

    helpers.start_tiny_runs(session)
    ids = session.config.stash.get(BACKGROUND_IDS, None)
    if ids:
        # output to a file: a pipe nobody reads until the end could fill and block the child
        log = tempfile.NamedTemporaryFile("w", prefix="linmeta_second_stream_", suffix=".log",
                                          delete=False)
        proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                 *ids], cwd=REPO, env=dict(os.environ), stdout=log,
                                stderr=subprocess.STDOUT, text=True)
        log.close()
        session.config.stash[BACKGROUND_RUN] = (proc, log.name, ids)
    if not X64 or not _selects(session.items, FLOAT32_TEST):
        return

    files = core_files()
    env = dict(os.environ, JAX_ENABLE_X64="0", JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS",
                                                                            "cpu"))
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-m", "core", "-p",
                             "no:cacheprovider", *files], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    session.config.stash[FLOAT32_RUN] = (proc, files)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The second stream's own summary line (its tests are not in this session's count)."""
    run = config.stash.get(BACKGROUND_RUN, None)
    if run is None or run[0].poll() is None:
        return
    with open(run[1]) as f:
        lines = [ln.strip() for ln in f if ln.strip()]
    last = lines[-1] if lines else "no output"
    modules = sorted({i.split("::")[0] for i in run[2]})
    terminalreporter.write_line(f"second stream ({len(run[2])} tests of {len(modules)} module"
                                f"{'' if len(modules) == 1 else 's'}, "
                                f"{BACKGROUND_TEST.split('::')[0]}): {last}")


def pytest_unconfigure(config):
    import helpers

    helpers.stop_tiny_runs()
    run = config.stash.get(BACKGROUND_RUN, None)
    if run is not None:
        if run[0].poll() is None:  # the awaiting test was interrupted
            run[0].kill()
            run[0].wait()
        os.unlink(run[1])
    run = config.stash.get(FLOAT32_RUN, None)
    if run is not None and run[0].poll() is None:  # the test was deselected or interrupted
        run[0].kill()
        run[0].communicate()
