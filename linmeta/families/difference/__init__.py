"""The difference family: meta-learning the difference between the general and the adapted
models (TARP/TAMS, Hou, Salazar and Polovets, TACL 2022) in a linear model that can be checked
(docs/difference.md; claims D1-D5).

Task t: ``y = M*_t x + eps``, ``M*_t = A* + U* diag(s*_t) V*^T``: the tasks differ from a shared
base along r shared rank-one directions ``u*_i v*_i^T``, each task with its own r coefficients.
Retraining learns ``(A, U, V)`` and per-task coefficients; fine-tuning an unseen task learns only
its r coefficients. Data flows as in the rest of linmeta: truth (:mod:`.truth`) -> task statistics
(:func:`linmeta.core.data.matrix_tasks`) -> retraining (:mod:`.methods`: the joint fit, coefficient
MAML, the SVD baseline, the structure learner; standard retraining and Meta-LoRA from the core)
-> fine-tuning (coefficients, rank-r LoRA, full) beside the closed forms of :mod:`.theory`
(which imports no solver). :mod:`.protocol` registers the sweep protocol ``"difference"``.

Example::

    import jax
    from linmeta.core.data import matrix_tasks
    from linmeta.families.difference import truth, methods
    jax.config.update("jax_enable_x64", True)
    tr = truth.sample_difference_truth(jax.random.key(0), d=6, r=2, T=3)
    fit = methods.joint_fit(matrix_tasks(truth.task_matrices(tr)), 2, key=jax.random.key(1))
    print(methods.subspace_gap(fit.basis, truth.difference_space(tr.U_star, tr.V_star)))  # ~1e-12
"""
from linmeta.engine.families import Family, register
from . import methods, protocol, theory, truth
from .methods import (DifferenceFit, StructureFit, coefficient_fit, coefficient_maml,
                      difference_svd, finetune_coefficients, joint_fit, structure_learner)
from .truth import (DifferenceTruth, difference_space, difference_truth, sample_difference_truth,
                    task_matrices, unseen_matrices)

FAMILY = register(Family(
    name="difference",
    title="Meta-learning the difference: shared low-rank directions, per-task coefficients",
    doc="docs/difference.md",
    claims={f"D{i}": f"linmeta.families.difference.claims.d{i}" for i in range(1, 6)},
    protocols=("difference",),
    quick_seconds=dict(D1=7, D2=5, D3=9, D4=6, D5=7),   # a scheduling hint
), replace=True)

__all__ = ["FAMILY", "DifferenceTruth", "sample_difference_truth",
           "difference_truth", "task_matrices", "unseen_matrices", "difference_space",
           "DifferenceFit", "StructureFit", "joint_fit", "difference_svd", "coefficient_maml",
           "structure_learner", "coefficient_fit", "finetune_coefficients", "methods", "protocol",
           "theory", "truth"]
