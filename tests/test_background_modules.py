"""The modules of ``conftest.BACKGROUND_MODULES`` in a second pytest process: started by
tests/conftest.py as soon as collection ends, when this test is selected with them (the full
suite), so that they run beside the main session on the second core; awaited here. Their own
summary line ends the session's output ("second stream ...")."""
import re

import pytest

from conftest import BACKGROUND_RUN


def test_modules_run_beside_the_session_pass(request):
    run = request.config.stash.get(BACKGROUND_RUN, None)
    if run is None:
        pytest.skip("none of conftest.BACKGROUND_MODULES is selected with this test (or the "
                    "session runs in float32): they run in the session itself")
    proc, log, ids = run
    proc.wait(timeout=1500)
    with open(log) as f:
        out = f.read()
    tail = out[-8000:]
    assert proc.returncode == 0, tail
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|skipped|failed|error)", out)}
    assert counts.get("failed", 0) == 0 and counts.get("error", 0) == 0, tail
    assert counts.get("passed", 0) + counts.get("skipped", 0) == len(ids), (len(ids), tail)
