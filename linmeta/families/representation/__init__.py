"""The shared-representation family: scalar outputs, heads and a representation
(docs/representation.md; claims R1-R7).

Data flows as in the base-matrix model: ground truth (:mod:`.truth`: ``B*``, heads, perturbations,
task diversity ``Sigma_w``) -> task statistics (:mod:`.tasks`: the core's :class:`linmeta.TaskStats`
with p = 1, population or samples) -> training a representation (:mod:`.methods`: FrozenRep, FedRep,
AdaptRep, ANIL, first-order ANIL, one-step MAML, average loss, method of moments) -> fine-tuning on
target tasks (:mod:`.target`: head only, head and representation, from scratch) -> subspace metrics
(:func:`linmeta.core.metrics.subspace_distance`, :func:`linmeta.core.metrics.sin_theta_frobenius_sq`) beside
the closed forms of :mod:`.theory` (which imports no solver). :mod:`.protocol` runs all of it for
one configuration as one jit/vmap-able function; :mod:`.registry` registers it as the protocol
``"representation"`` of :mod:`linmeta.engine.protocols` when this package is imported, so that
:mod:`linmeta.engine.sweep` and ``linmeta sweep`` (``fixed.protocol = "representation"``) run it by name.

Example::

    import jax, linmeta
    from linmeta import representation as rep
    jax.config.update("jax_enable_x64", True)
    truth = rep.sample_rep_truth(jax.random.key(0), d=10, k=2, T=8)
    src = rep.population(truth)
    fr = rep.frozen_rep(src, 2, key=jax.random.key(1))
    print(linmeta.metrics.subspace_distance(fr.representation, truth.B_star))   # ~1e-15
"""
from linmeta.engine.families import Family, register as _register_family
from . import methods, protocol, registry, target, tasks, theory, truth
from .methods import (RepRecord, RepResult, adapt_rep, anil, average_loss, fedrep, frozen_rep,
                      maml, method_of_moments)
from .target import TargetFit, finetune_target
from .tasks import (draw_samples, moment_matrix, population, population_from_betas, sample_tasks,
                    samples_from_betas)
from .truth import RepTruth, balanced_heads, gaussian_heads, orthonormal_columns, sample_rep_truth

__all__ = ["RepTruth", "sample_rep_truth", "balanced_heads", "gaussian_heads",
           "orthonormal_columns", "population", "population_from_betas", "draw_samples",
           "samples_from_betas", "sample_tasks", "moment_matrix", "RepRecord", "RepResult",
           "frozen_rep", "fedrep", "adapt_rep", "anil", "maml", "average_loss",
           "method_of_moments", "TargetFit", "finetune_target", "methods", "protocol", "target",
           "tasks", "theory", "truth", "registry", "FAMILY"]

registry.register()

FAMILY = _register_family(Family(
    name="representation",
    title=("shared linear representations: frozen (FrozenRep) vs fine-tuning-based (AdaptRep, ANIL, "
           "FedRep) training, the method of moments, the separation"),
    doc="docs/representation.md",
    claims={f"R{i}": f"linmeta.families.representation.claims.r{i}" for i in range(1, 8)},
    protocols=("representation",),
    quick_seconds=dict(R1=10, R2=4, R3=7, R4=7, R5=1, R6=4, R7=5),   # a scheduling hint
), replace=True)
