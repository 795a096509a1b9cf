"""linmeta: verify the theory of meta-learning with low-rank adaptations on linear models.

Data flows one way: ground truth (:mod:`linmeta.problem`) -> task statistics (:mod:`linmeta.data`,
population or finite samples) -> retraining (:mod:`linmeta.retrain`: standard or Meta-LoRA) ->
fine-tuning (:mod:`linmeta.finetune`) -> metrics (:mod:`linmeta.metrics`) beside the closed forms of
:mod:`linmeta.theory`. See docs/theory.md for the claims C1-C8. The shared-representation family
(scalar outputs, heads and a representation; claims R1-R7, docs/representation.md) is
:mod:`linmeta.representation`; the bilevel (MAML-family) retraining family (MAML, first-order MAML,
Reptile with low-rank inner loops; claims M1-M6, docs/bilevel.md) is :mod:`linmeta.bilevel`, its
entry point :func:`linmeta.maml`. One run is :mod:`linmeta.runs`, many :mod:`linmeta.sweep`, over
the protocols of :mod:`linmeta.protocols`.

Example::

    import jax, linmeta
    jax.config.update("jax_enable_x64", True)
    truth = linmeta.sample_truth(jax.random.key(0), d=10, k=1, T=3)
    src = linmeta.population(truth)
    sr = linmeta.standard_retraining(src)                       # A* + Rbar
    ml = linmeta.meta_lora(src, 1, key=jax.random.key(1))       # recovers A*
    print(linmeta.metrics.base_error(ml.base, truth.A_star, relative=True))
"""
from . import (bilevel, compile_cache, data, divergence, finetune as _finetune_mod, landscape, lora,
               losses, metrics, problem, protocols, report, representation, retrain, runs, sweep,
               theory)
from .bilevel import maml
from .divergence import DivergenceError
from .data import (Samples, TaskStats, draw_samples, population, sample_tasks, stats_from_arrays,
                   stats_from_chunks, task_statistics)
from .finetune import FinetuneResult, finetune, reduced_rank_fit
from .problem import Truth, load_truth, orthogonal_truth, sample_truth, save_truth
from .retrain import RetrainResult, meta_lora, standard_retraining

__version__ = "0.1.0"

__all__ = ["Truth", "sample_truth", "orthogonal_truth", "load_truth", "save_truth",
           "TaskStats", "Samples", "population", "sample_tasks", "draw_samples",
           "task_statistics", "stats_from_arrays", "stats_from_chunks", "standard_retraining",
           "meta_lora", "maml",
           "RetrainResult", "finetune", "FinetuneResult", "reduced_rank_fit", "DivergenceError",
           "bilevel", "compile_cache", "data", "divergence", "landscape", "lora", "losses",
           "metrics", "problem", "protocols", "report", "representation", "retrain", "runs",
           "sweep", "theory", "__version__"]
