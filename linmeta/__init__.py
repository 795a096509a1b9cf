"""linmeta: verify the theory of meta-learning with low-rank adaptations on linear models.

The package has five layers, each importing only from the layers below it (checked by a test with
import-linter; ``pyproject.toml``, ``[tool.importlinter]``):

- :mod:`linmeta.core`: truth, task statistics, losses, adapters, metrics, the base model's closed
  forms, validation, divergence, file writing;
- :mod:`linmeta.methods`: standard retraining, Meta-LoRA solvers, fine-tuning, landscape tools;
- :mod:`linmeta.engine`: families as plugins, the protocol registry, sweeps, runs and records,
  configs, compile caches, the claim registry and verdict rows;
- :mod:`linmeta.families`: ``paper`` (C1-C8, docs/theory.md), ``bilevel`` (M1-M6,
  docs/bilevel.md), ``representation`` (R1-R7, docs/representation.md), ``difference``
  (docs/difference.md), and installed plugins (docs/extending.md);
- :mod:`linmeta.front`: ``linmeta verify``, the theory report, plots, the command line.

Data flows one way: ground truth -> task statistics (population or finite samples) -> retraining
-> fine-tuning -> metrics, beside the closed forms. This module re-exports the names users type.

Example::

    import jax, linmeta
    jax.config.update("jax_enable_x64", True)
    truth = linmeta.sample_truth(jax.random.key(0), d=10, k=1, T=3)
    src = linmeta.population(truth)
    sr = linmeta.standard_retraining(src)                       # A* + Rbar
    ml = linmeta.meta_lora(src, 1, key=jax.random.key(1))       # recovers A*
    print(linmeta.metrics.base_error(ml.base, truth.A_star, relative=True))
"""
import importlib
import importlib.abc
import importlib.util
import os
import sys

# OpenBLAS (NumPy's and SciPy's, and through SciPy the LAPACK kernels of jaxlib's CPU backend) on
# one thread: the many small eigendecompositions gain nothing from its worker threads on 2 cores.
# (It was first set against a stall of `linmeta verify --quick` in C2; the stall recurred with one
# thread, less often: it is in XLA's CPU runtime, and verify's --jobs watchdog reruns such a claim,
# linmeta.front.verify.) Set before NumPy loads (a user's own OPENBLAS_NUM_THREADS wins; no effect
# when NumPy was imported first).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from .core import data, divergence, lora, losses, metrics, problem, theory
from .core.data import (Samples, TaskStats, draw_samples, population, sample_tasks,
                        stats_from_arrays, stats_from_chunks, task_statistics)
from .core.divergence import DivergenceError
from .core.problem import Truth, load_truth, orthogonal_truth, sample_truth, save_truth
from .core.version import __version__
from . import methods as retrain
from .methods import RetrainResult, landscape, meta_lora, standard_retraining
from .methods.finetune import FinetuneResult, finetune, reduced_rank_fit
from .engine import compile_cache, families as _families, protocols, runs, sweep
from .families import bilevel, representation
from .families.bilevel import maml
from .front import report

# Module paths of earlier versions, kept working (``import linmeta.theory``, ``from linmeta.paper
# import ...``): each old name is the module at its place in the layers. Not ``linmeta.finetune``:
# that name is the public function (importing a module under it would replace the function); the
# module is ``linmeta.methods.finetune``.
_MOVED = {
    "linmeta.theory": "linmeta.core.theory", "linmeta.data": "linmeta.core.data",
    "linmeta.problem": "linmeta.core.problem", "linmeta.losses": "linmeta.core.losses",
    "linmeta.lora": "linmeta.core.lora", "linmeta.metrics": "linmeta.core.metrics",
    "linmeta.divergence": "linmeta.core.divergence", "linmeta._validate": "linmeta.core._validate",
    "linmeta.retrain": "linmeta.methods", "linmeta.retrain.meta_lora": "linmeta.methods.meta_lora",
    "linmeta.retrain.standard": "linmeta.methods.standard",
    "linmeta.retrain._common": "linmeta.methods._common",
    "linmeta.retrain._matrix_free": "linmeta.methods._matrix_free",
    "linmeta.landscape": "linmeta.methods.landscape",
    "linmeta.protocols": "linmeta.engine.protocols", "linmeta.sweep": "linmeta.engine.sweep",
    "linmeta.runs": "linmeta.engine.runs", "linmeta.results": "linmeta.engine.results",
    "linmeta.config": "linmeta.engine.config", "linmeta.compile_cache": "linmeta.engine.compile_cache",
    "linmeta.program_cache": "linmeta.engine.program_cache", "linmeta.claims": "linmeta.engine.claims",
    "linmeta.paper": "linmeta.families.paper.protocol", "linmeta.shallow": "linmeta.families.paper.shallow",
    "linmeta.bilevel": "linmeta.families.bilevel",
    "linmeta.bilevel.methods": "linmeta.families.bilevel.methods",
    "linmeta.bilevel.protocol": "linmeta.families.bilevel.protocol",
    "linmeta.bilevel.theory": "linmeta.families.bilevel.theory",
    "linmeta.representation": "linmeta.families.representation",
    **{f"linmeta.representation.{m}": f"linmeta.families.representation.{m}"
       for m in ("methods", "protocol", "registry", "target", "tasks", "theory", "truth")},
    "linmeta.reference": "linmeta.methods.reference", "linmeta.vision": "linmeta.families.paper.vision",
    "linmeta.verify": "linmeta.front.verify", "linmeta.report": "linmeta.front.report",
    "linmeta.plotting": "linmeta.front.plotting", "linmeta.cli": "linmeta.front.cli",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module path as the module it became (the same module object)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in _MOVED:
            new = importlib.util.find_spec(_MOVED[fullname])
            return importlib.util.spec_from_loader(fullname, self,
                                                   origin=new.origin if new else None)
        return None

    def create_module(self, spec):
        return importlib.import_module(_MOVED[spec.name])

    def exec_module(self, module):
        pass

    def get_code(self, fullname):
        """The new module's code, so that ``python -m <old path>`` runs it as a script."""
        spec = importlib.util.find_spec(_MOVED[fullname])
        return spec.loader.get_code(spec.name)


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.insert(0, _MovedModules())

__all__ = ["Truth", "sample_truth", "orthogonal_truth", "load_truth", "save_truth",
           "TaskStats", "Samples", "population", "sample_tasks", "draw_samples",
           "task_statistics", "stats_from_arrays", "stats_from_chunks", "standard_retraining",
           "meta_lora", "maml",
           "RetrainResult", "finetune", "FinetuneResult", "reduced_rank_fit", "DivergenceError",
           "bilevel", "compile_cache", "data", "divergence", "landscape", "lora", "losses",
           "metrics", "problem", "protocols", "report", "representation", "retrain", "runs",
           "sweep", "theory", "__version__"]
