"""An example family for linmeta: ridge-shrunk standard retraining.

One method (:mod:`.methods`), its closed form (:mod:`.theory`), one sweep protocol
(:mod:`.protocol`, registered as ``"shrink"``) and one claim (:mod:`.claims.x1`, claim X1), with
the same rooms as linmeta's own families. Importing the package registers the family; the entry
point in ``pyproject.toml`` lets linmeta import it. docs/extending.md in linmeta walks through it.
"""
from linmeta.engine.families import Family, register

from . import methods, protocol, theory

FAMILY = register(Family(
    name="shrink",
    title="ridge-shrunk standard retraining (an example plugin family)",
    doc="https://example.org/linmeta-shrink/theory.md",   # where the family's theory document lives
    claims={"X1": "linmeta_shrink.claims.x1"},
    protocols=("shrink",),
), replace=True)

__all__ = ["FAMILY", "methods", "protocol", "theory"]
