"""The families of claims, one subpackage each, all of the same shape (docs/extending.md):

- ``methods`` (the family's solvers, on the core's task statistics), ``theory`` (its closed forms;
  imports no solver, so comparing a solver with it is a check), ``protocol`` (its sweep
  protocol(s), registered with :mod:`linmeta.engine.protocols`), ``claims/`` (one module per claim,
  returning verdict rows), and its theory document in ``docs/``;
- ``__init__`` describes the family as one :class:`linmeta.engine.families.Family` value and
  registers it.

Built in: :mod:`.paper` (Meta-LoRA vs standard retraining, C1-C8), :mod:`.bilevel` (MAML-style
retraining with low-rank inner loops, M1-M6), :mod:`.representation` (shared linear
representations, R1-R7), :mod:`.difference` (learning the low-rank difference, D-rows). The engine
finds every subpackage here, and installed plugins through the entry-point group
``linmeta.families``. Families import the core, the methods and the engine, never each other.
"""
