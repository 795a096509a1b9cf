"""One module per claim; each turns the claim into verdict rows.

Claims are grouped in families (:data:`FAMILIES`): ``"paper"`` (C1-C8, the Meta-LoRA paper),
``"bilevel"`` (M-rows: MAML-style retraining with LoRA inner loops) and ``"representation"``
(R-rows: shared linear representations). :data:`CLAIMS` maps every claim id to its family and the
module that implements it; a family registers a claim by adding one entry there.

Contract of a claim module ``linmeta.claims.cN``:

- ``run(setting: str = "quick", seed: int = 0) -> ClaimResult``: computes the measurements for
  ``setting`` in ``SETTINGS`` (``"tiny"``: seconds, used by the tests; ``"quick"``: a share of the
  two-minute ``linmeta verify --quick``; ``"full"``: the documented full run) and returns the verdict
  rows plus the arrays its figure needs.
- ``plot(result: ClaimResult, out_dir) -> list[pathlib.Path]``: writes the figure(s) as PNG and
  PDF; imports matplotlib inside the function so numeric code never pulls it in.

Numeric work uses the public linmeta API; closed forms come from :mod:`linmeta.theory`.
"""
from __future__ import annotations

import dataclasses
import importlib

from ._verdict import Verdict, fmt

SETTINGS = ("tiny", "quick", "full")
FAMILIES = ("paper", "bilevel", "representation", "difference")
# the theory document of each family; claim ``X`` has the anchor ``#x`` (lower case) there
FAMILY_DOCS = {"paper": "docs/theory.md", "bilevel": "docs/bilevel.md",
               "representation": "docs/representation.md", "difference": "docs/difference.md"}

# claim id -> (family, module). Order = the order ``linmeta verify`` runs and reports them.
CLAIMS: dict[str, tuple[str, str]] = {
    **{f"C{i}": ("paper", f"linmeta.claims.c{i}") for i in range(1, 9)},
    **{f"M{i}": ("bilevel", f"linmeta.claims.m{i}") for i in range(1, 7)},
    **{f"R{i}": ("representation", f"linmeta.claims.r{i}") for i in range(1, 8)},
    # temporary registration of the difference family (issue 17) until families are plugins
    **{f"D{i}": ("difference", f"linmeta.families.difference.claims.d{i}") for i in range(1, 6)},
}
CLAIM_IDS = tuple(CLAIMS)


def family_claims(family: str) -> tuple[str, ...]:
    """Claim ids of ``family`` (one of :data:`FAMILIES`), in registry order."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}; got {family!r}")
    return tuple(cid for cid, (fam, _) in CLAIMS.items() if fam == family)


@dataclasses.dataclass
class ClaimResult:
    """Verdict rows of one claim and the data behind its figure (a dict of arrays / numbers)."""

    claim: str
    verdicts: list
    data: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0


def claim_doc(claim_id: str) -> str:
    """Repository-relative link to the section of the theory documents that states ``claim_id``."""
    if claim_id not in CLAIMS:
        raise ValueError(f"claim must be one of {', '.join(CLAIMS)}; got {claim_id!r}")
    return f"{FAMILY_DOCS[CLAIMS[claim_id][0]]}#{claim_id.lower()}"


def claim_module(claim_id: str):
    """The module implementing ``claim_id`` (a key of :data:`CLAIMS`)."""
    if claim_id not in CLAIMS:
        raise ValueError(f"claim must be one of {', '.join(CLAIMS)}; got {claim_id!r}")
    return importlib.import_module(CLAIMS[claim_id][1])


__all__ = ["Verdict", "ClaimResult", "SETTINGS", "FAMILIES", "CLAIMS", "CLAIM_IDS",
           "FAMILY_DOCS", "family_claims", "claim_doc", "claim_module", "fmt"]
