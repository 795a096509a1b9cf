"""The core tests (marker ``core``) again in float32: ``JAX_ENABLE_X64=0 python -m pytest -m core``
in a subprocess, started by tests/conftest.py as soon as collection ends (so it runs while the
rest of the suite does) and awaited here. Tolerances per dtype: tests/helpers.py (``tol``, ``eps``).
"""
import pytest

from conftest import FLOAT32_RUN, X64


@pytest.mark.skipif(not X64, reason="this session already runs in float32")
def test_core_tests_pass_in_float32(request):
    run = request.config.stash.get(FLOAT32_RUN, None)
    assert run is not None, "conftest did not start the float32 run"
    proc, files = run
    out, err = proc.communicate(timeout=900)
    tail = (out[-4000:] + err[-3000:]).strip()
    assert proc.returncode == 0, tail
    assert " passed" in out and " failed" not in out, tail
    assert "tests/test_core_dtypes.py" in files and "tests/test_problem.py" in files
