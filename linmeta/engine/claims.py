"""Claims: each family's claim modules turn a claim into verdict rows; this module finds them.

Claims belong to families (:mod:`linmeta.engine.families`): each registered :class:`Family` maps
its claim ids to the modules that implement them (``paper``: C1-C8, the Meta-LoRA paper;
``bilevel``: M1-M6; ``representation``: R1-R7; ``difference``: D-rows; installed plugins add
theirs). :func:`all_claims` is the registry of every claim id, in the order ``linmeta verify``
runs and reports them; it is read from the registered families, so adding a family edits nothing
here.

Contract of a claim module:

- ``run(setting: str = "quick", seed: int = 0) -> ClaimResult``: computes the measurements for
  ``setting`` in ``SETTINGS`` (``"tiny"``: seconds, used by the tests; ``"quick"``: a share of
  ``linmeta verify --quick``; ``"full"``: the documented full run) and returns the verdict
  rows (:class:`linmeta.engine.verdict.Verdict`) plus the arrays its figure needs.
- ``plot(result: ClaimResult, out_dir) -> list[pathlib.Path]``: writes the figure(s) as PNG and
  PDF; imports matplotlib inside the function so numeric code never pulls it in.
"""
from __future__ import annotations

import dataclasses
import importlib

from . import families
from .verdict import Verdict, fmt

SETTINGS = ("tiny", "quick", "full")


def all_claims() -> dict[str, tuple[str, str]]:
    """claim id -> (family name, module), over the registered families in their order."""
    return {cid: (fam.name, module) for fam in families.all_families()
            for cid, module in fam.claims.items()}


def claim_ids() -> tuple[str, ...]:
    """Every registered claim id, in the order ``linmeta verify`` runs them."""
    return tuple(all_claims())


def longest_first(claim_ids) -> list[str]:
    """``claim_ids`` ordered by their families' ``quick_seconds`` hints, longest first (claims
    without a hint last, in their order): the order in which parallel workers take them."""
    hint = {cid: float(fam.quick_seconds.get(cid, -1.0)) for fam in families.all_families()
            for cid in fam.claims}
    return sorted(claim_ids, key=lambda c: -hint.get(c, -1.0))   # stable: ties keep their order


def family_names() -> tuple[str, ...]:
    """Names of the registered families."""
    return families.names()


def family_claims(family: str) -> tuple[str, ...]:
    """Claim ids of ``family`` (a registered family), in registry order."""
    if family not in families.names():
        raise ValueError(f"family must be one of {', '.join(families.names())}; got {family!r}")
    return tuple(families.get(family).claims)


@dataclasses.dataclass
class ClaimResult:
    """Verdict rows of one claim and the data behind its figure (a dict of arrays / numbers)."""

    claim: str
    verdicts: list
    data: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0


def _check_claim(claim_id: str) -> tuple[str, str]:
    claims = all_claims()
    if claim_id not in claims:
        raise ValueError(f"claim must be one of {', '.join(claims)}; got {claim_id!r}")
    return claims[claim_id]


def claim_doc(claim_id: str) -> str:
    """Link to the section of the family's theory document that states ``claim_id``
    (repository-relative, or the plugin's URL)."""
    family, _ = _check_claim(claim_id)
    return f"{families.get(family).doc}#{claim_id.lower()}"


def claim_module(claim_id: str):
    """The module implementing ``claim_id`` (imported on first need)."""
    return importlib.import_module(_check_claim(claim_id)[1])


def __getattr__(name):
    """Read-only views of the registry under their former constant names: ``CLAIMS`` (claim id ->
    (family, module)), ``CLAIM_IDS``, ``FAMILIES`` (family names), ``FAMILY_DOCS``."""
    if name == "CLAIMS":
        return all_claims()
    if name == "CLAIM_IDS":
        return claim_ids()
    if name == "FAMILIES":
        return family_names()
    if name == "FAMILY_DOCS":
        return {f.name: f.doc for f in families.all_families()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Verdict", "ClaimResult", "SETTINGS", "all_claims", "claim_ids", "family_names",
           "family_claims", "claim_doc", "claim_module", "fmt"]
