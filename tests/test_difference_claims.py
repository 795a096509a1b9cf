"""Difference family, claims D1-D5: registration with their document anchors, and each claim's
tiny setting (in one background subprocess, ``helpers.tiny_claim_runs``) with its figure."""
import os

import pytest

from linmeta.engine.claims import CLAIMS, claim_doc, family_claims
from linmeta.families import difference

from helpers import tiny_claim_runs

EXPERIMENTS = {f"D{i}": None for i in range(1, 6)}   # the generic experiments/claims.py
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
tiny_runs = tiny_claim_runs(EXPERIMENTS, "difference")
STEMS = {"D1": "difference_d1_identifiability", "D2": "difference_d2_rate",
         "D3": "difference_d3_misspecified", "D4": "difference_d4_maml",
         "D5": "difference_d5_structure"}


def test_difference_claims_are_registered_with_their_doc_anchors():
    assert family_claims("difference") == tuple(EXPERIMENTS)
    assert {c: CLAIMS[c][1] for c in EXPERIMENTS} == difference.FAMILY.claims
    assert CLAIMS["D1"] == ("difference", "linmeta.families.difference.claims.d1")
    assert claim_doc("D3") == "docs/difference.md#d3" == f"{difference.FAMILY.doc}#d3"
    doc = open(os.path.join(REPO, difference.FAMILY.doc)).read()
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
    assert (out / f"{STEMS[cid]}_tiny.png").stat().st_size > 1000   # a tiny figure says so
