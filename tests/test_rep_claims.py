"""Representation family, claims R1-R7 and the bridge: each experiment's tiny setting (in one
background subprocess, ``helpers.tiny_claim_runs``, cheap XLA backend optimisation as in linmeta
verify), and exact hand-built checks of the claim helpers."""
import json
import math
import os

import numpy as np
import pytest

from linmeta.engine.claims import CLAIMS, claim_doc, family_claims
from linmeta.families.representation.claims import _rates as _rep_support, r7

from helpers import DEFAULT_BODY, tiny_claim_runs

EXPERIMENTS = {"R1": None, "R2": None, "R3": None, "R4": None, "R5": None, "R6": None,
               "R7": "rep_separation"}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BODY = DEFAULT_BODY + """
from experiments import bridge
t0 = time.perf_counter()
bridge.main("tiny", out, 0)
secs["bridge"] = time.perf_counter() - t0
"""
tiny_runs = tiny_claim_runs(EXPERIMENTS, "rep", body=_BODY)


# ----------------------------------------------------------------------------- registry
def test_representation_claims_are_registered_with_their_doc_anchors():
    assert family_claims("representation") == tuple(f"R{i}" for i in range(1, 8))
    assert all(CLAIMS[c][1] == f"linmeta.families.representation.claims.r{c[1]}" for c in EXPERIMENTS)
    assert claim_doc("R4") == "docs/representation.md#r4"
    doc = open(os.path.join(REPO, "docs", "representation.md")).read()
    for cid in EXPERIMENTS:
        assert f'<a id="{cid.lower()}"></a>' in doc


# ----------------------------------------------------------------------------- helpers, exact
def test_late_rate_of_an_exact_geometric_decay_and_its_window():
    v = 0.7 * 0.9 ** np.arange(400.0)
    rate, n = _rep_support.late_rate(v)
    assert rate == pytest.approx(0.9, abs=1e-12)
    assert n == int(np.sum((v >= 1e-10) & (v <= 1e-4)))
    assert math.isnan(_rep_support.late_rate(np.ones(5))[0])  # nothing in the window


def test_random_diversity_has_the_stated_spectrum():
    import jax

    S = np.asarray(_rep_support.random_diversity(jax.random.key(3), 3, lo=0.3, hi=1.0))
    np.testing.assert_allclose(np.linalg.eigvalsh(S), [0.3, 0.65, 1.0], atol=1e-14)


def test_separation_instance_and_the_separation_rule_hand_built():
    t = r7.separation_instance(6, 2, 4, eps=0.25, delta=0.5, n_perturbed=1, phi=math.pi / 2)
    np.testing.assert_allclose(np.asarray(t.head_moment), np.diag([1.0, 0.25]), atol=1e-13)
    shift = np.einsum("tdk,tk->td", np.asarray(t.Delta), np.asarray(t.heads))
    norms = np.sum(np.asarray(t.heads) ** 2, 1)
    row = int(np.argmax(np.abs(shift).sum(1)))
    assert norms[row] == pytest.approx(norms.max())  # on a task with the largest head
    np.testing.assert_allclose(shift[row], 0.5 * np.eye(6)[2], atol=1e-14)
    assert np.count_nonzero(np.abs(shift) > 1e-12) == 1
    np.testing.assert_allclose(np.asarray(t.target_betas[0]), np.eye(6)[1], atol=1e-15)
    with pytest.raises(ValueError, match="direction"):
        r7.separation_instance(6, 2, 4, eps=0.1, delta=1.0, direction="up", phi=0.0)
    # the screen and the verdict on hand-built numbers
    fz, ad, sc = np.array([[0.5, 0.5]]), np.array([[0.2, 0.05]]), np.array([np.inf, 0.1])
    assert r7.proxy_separation(fz, ad, sc)[0] == pytest.approx(2.0)
    risks = np.zeros((1, 2, 2, 7))
    risks[0, :, 0, 2] = [0.3, 0.05]  # AdaptRep, fine-tuned
    risks[0, :, 1, 2] = [0.01, 0.01]
    risks[0, :, 0, 6] = [0.2, 0.2]  # ridge worse than least squares at m = 2
    sep = r7.separation(fz, sc, risks)
    assert sep["sep"].tolist() == [[False, True]]
    assert sep["frozen_margin"][0, 1] == pytest.approx(5.0)


# ----------------------------------------------------------------------------- tiny runs
@pytest.mark.parametrize("cid", list(EXPERIMENTS))
def test_tiny_run(cid, tiny_runs):
    out, data = tiny_runs
    rows = data["rows"][cid]
    assert rows, cid
    assert all(r["claim"] == cid for r in rows)
    failing = [r for r in rows if not r["passed"]]
    assert not failing, failing
    assert {r["kind"] for r in rows} <= {"check", "measured"}
    names = " ".join(r["quantity"] for r in rows)
    assert any(w in names for w in ("FrozenRep", "AdaptRep", "ANIL", "FedRep", "moments",
                                    "separation")), names
    stem = {"R1": "rep_r1_frozen_pca", "R2": "rep_r2_frozen_floor", "R3": "rep_r3_anil",
            "R4": "rep_r4_moments", "R5": "rep_r5_fedrep", "R6": "rep_r6_adaptrep",
            "R7": "rep_r7_separation"}[cid]
    assert (out / f"{stem}_tiny.png").stat().st_size > 1000


def test_tiny_bridge_and_separation_json(tiny_runs):
    out, data = tiny_runs
    b = json.loads((out / "bridge_tiny.json").read_text())
    A, R = b["base_matrix"], b["representation"]
    # SR keeps its Eckart-Young floor at every n; Meta-LoRA falls below it
    assert all(v > 0.5 * A["sr_floor"] for v in A["sr_mean"])
    # the floor bounds every rank-k adapter on SR's base (Eckart-Young): Monte Carlo within 3 se
    assert all(v + 3 * se >= A["sr_floor"] for v, se in zip(A["sr_mean"], A["sr_se"]))
    assert A["ml_mean"][-1] < 0.01 * A["sr_floor"]
    assert min(R["frozen_closed_form"]) >= R["frozen_floor"]
    assert (out / "bridge_tiny.png").exists()
    # the bridge's numbers are a row of R7 (so they reach figures/REPORT.md): the same closed
    # forms at the bridge's quick/full sizes
    row = [r for r in data["rows"]["R7"] if r["quantity"].startswith("bridge")]
    assert len(row) == 1 and row[0]["passed"]
    base = r7.bridge_closed_forms(0, **{k: r7.BRIDGE[k] for k in ("d", "k", "T")})
    assert f"floor {base['sr_floor']:.4g}" in row[0]["note"]
    sep = json.loads((out / "rep_separation_tiny.json").read_text())
    assert sep["screened"] and sep["measured"]
