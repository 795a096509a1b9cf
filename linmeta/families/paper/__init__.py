"""The paper's family: Meta-LoRA against standard retraining (docs/theory.md; claims C1-C8).

Block, Srinivasan, Collins, Mokhtari, Shakkottai, *Provable Meta-Learning with Low-Rank
Adaptations* (arXiv 2410.22264). The methods it compares are the methods layer's
(:func:`linmeta.meta_lora`, :func:`linmeta.standard_retraining`, :func:`linmeta.finetune`); this
package holds what is the paper's own:

- :mod:`.methods`: the protocol's stages as fused updates (alternating Meta-LoRA, SR gradient
  descent, fine-tuning of both bases);
- :mod:`.theory`: the protocol's closed forms (the SR bias after rank-r fine-tuning, traced and on
  the host), on top of the core's :mod:`linmeta.core.theory`;
- :mod:`.protocol`: one run of the paper's synthetic protocol, registered as the sweep protocols
  ``"paper"`` (as described) and ``"paper_code"`` (as the official code runs it);
- :mod:`.records`: what a run's record says: divergence in words a user can act on, the closed
  forms beside the results, the printed summary;
- :mod:`.shallow`: the paper's shallow-network experiment;
- :mod:`.claims`: C1-C8 as verdict rows.
"""
from linmeta.engine.families import Family, register
from . import methods, protocol, records, theory

FAMILY = register(Family(
    name="paper",
    title="Meta-LoRA vs standard retraining (the paper's claims, and the landscape census)",
    doc="docs/theory.md",
    claims={f"C{i}": f"linmeta.families.paper.claims.c{i}" for i in range(1, 9)},
    protocols=("paper", "paper_code"),
    # rough seconds at quick on 2 cores (a scheduling hint: verify starts the longest first)
    quick_seconds=dict(C1=16, C2=21, C3=35, C4=12, C5=6, C6=18, C7=19, C8=10),
), replace=True)

__all__ = ["FAMILY", "methods", "records", "protocol", "theory"]
