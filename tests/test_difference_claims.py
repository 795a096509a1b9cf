"""Difference family, claims D1-D5: registration with their document anchors, and each claim's
tiny setting (in one background subprocess, ``helpers.tiny_claim_runs``) with its figure."""
import os

import pytest

from linmeta.engine.claims import CLAIMS, claim_doc, family_claims
from linmeta.families import difference

from helpers import tiny_claim_runs

EXPERIMENTS = {f"D{i}": f"d{i}" for i in range(1, 6)}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BODY = """
import jax
jax.config.update("jax_enable_x64", True)
from linmeta.engine.claim_support import experiment_main
for cid, name in EXPERIMENTS.items():
    t0 = time.perf_counter()
    mod = importlib.import_module("linmeta.families.difference.claims." + name)
    rows[cid] = [v.as_dict() for v in experiment_main(mod, "tiny", out, 0)]
    secs[cid] = time.perf_counter() - t0
"""
tiny_runs = tiny_claim_runs(EXPERIMENTS, "difference", body=_BODY)
STEMS = {"D1": "difference_d1_identifiability", "D2": "difference_d2_rate",
         "D3": "difference_d3_misspecified", "D4": "difference_d4_maml",
         "D5": "difference_d5_structure"}


def test_difference_claims_are_registered_with_their_doc_anchors():
    assert family_claims("difference") == tuple(EXPERIMENTS)
    assert {c: CLAIMS[c][1] for c in EXPERIMENTS} == difference.CLAIMS
    assert claim_doc("D3") == "docs/difference.md#d3" == f"{difference.DOC}#d3"
    doc = open(os.path.join(REPO, difference.DOC)).read()
    for cid in EXPERIMENTS:
        assert f'<a id="{cid.lower()}"></a>' in doc


@pytest.mark.parametrize("cid", list(EXPERIMENTS))
def test_tiny_run(cid, tiny_runs):
    out, data = tiny_runs
    rows = data["rows"][cid]
    assert rows and all(r["claim"] == cid for r in rows)
    failing = [r for r in rows if not r["passed"]]
    assert not failing, failing
    assert {r["kind"] for r in rows} <= {"check", "measured"}
    if cid in ("D1", "D2", "D3", "D4"):
        assert any(r["kind"] == "check" for r in rows)
    assert (out / f"{STEMS[cid]}.png").stat().st_size > 1000
