"""The bilevel (MAML-family) retraining family: MAML, first-order MAML and Reptile with low-rank
inner loops (docs/bilevel.md; claims M1-M6).

Retraining simulates the fine-tuning that follows. Each task t adapts the shared base A by K
gradient steps of size alpha on a rank-r adapter ``Delta(theta)`` (``U V^T``, ``U U^T`` or the
full-rank ``W``) on its support statistics, the base held fixed,

    theta_0 = theta_start,   theta_{j+1} = theta_j - alpha grad_theta L^S_t(A + Delta(theta_j)),

and the base is trained (step beta) for what the adapted model does on the query statistics:

    F_K(A, theta_start) = (1/T) sum_t L^Q_t(A + Delta(theta_K^t)).                        (B1)

MAML follows ``dF_K/dA`` through the unrolled inner loop, first-order MAML drops the Jacobian of
``theta_K``, Reptile moves A toward the adapted task matrices. Exact relations (tested; verify rows
M1-M3): K = 0 is standard retraining by gradient descent; the exact inner solve with support =
query is Meta-LoRA's objective with the adapters minimised out; plain (full-rank) MAML is standard
retraining with a rescaled step. M4-M6 are measurements (recovery of ``A*`` against K, alpha, r,
T; the priming ablation; divergence and stalls).

Modules: :mod:`.methods` (the inner and outer steps and :func:`maml`, the public entry point also
reachable as ``linmeta.maml``), :mod:`.protocol` (one configuration: truth -> support/query
statistics -> bilevel retraining -> fine-tuning on unseen tasks -> metrics, as one jit/vmap-able
function; registered with the sweep engine as the protocol ``"bilevel"``, so ``linmeta sweep``
reaches it with ``protocol = "bilevel"``) and :mod:`.theory` (closed forms from the ground truth
alone; it imports no solver).

Example::

    import jax, linmeta
    jax.config.update("jax_enable_x64", True)
    truth = linmeta.sample_truth(jax.random.key(0), d=10, k=1, T=3)
    src = linmeta.population(truth)
    res = linmeta.maml(src, 1, key=jax.random.key(1), method="fomaml", inner_steps=5)
    print(linmeta.metrics.base_error(res.base, truth.A_star, relative=True))
"""
from linmeta.engine import protocols as _protocols
from linmeta.engine.families import Family, register as _register_family
from . import methods, protocol, theory
from .methods import (ADAPTERS, METHODS, STARTS, BilevelAdapters, BilevelHyper, BilevelState,
                      Factors, adapt, adapt_with_trace, adapter_delta, bilevel_excess,
                      bilevel_objective, bilevel_step, exact_bilevel_objective, inner_optimum,
                      inner_step_scale,
                      maml, method_weights, outer_gradients, split_support_query)
from .protocol import (STALL_FRACTION, Hyper, Outcome, Shape, make_hyper, make_shape,
                       retrain_statistics, run_batch, run_protocol, stack_hypers)
from .theory import full_rank_sr_step, profiled_objective

_protocols.register(protocol.SWEEP_PROTOCOL, replace=True)

FAMILY = _register_family(Family(
    name="bilevel",
    title=("MAML, first-order MAML and Reptile with LoRA inner loops: the priming ablation, a "
           "meta-learned adapter start"),
    doc="docs/bilevel.md",
    claims={f"M{i}": f"linmeta.families.bilevel.claims.m{i}" for i in range(1, 7)},
    protocols=("bilevel",),
    quick_seconds=dict(M1=2, M2=6, M3=5, M4=4, M5=3, M6=1),   # a scheduling hint
), replace=True)

__all__ = ["maml", "ADAPTERS", "METHODS", "STARTS", "Factors", "BilevelState", "BilevelHyper",
           "BilevelAdapters", "adapter_delta", "adapt", "adapt_with_trace", "bilevel_objective",
           "bilevel_excess", "method_weights", "outer_gradients", "bilevel_step",
           "inner_optimum", "inner_step_scale", "exact_bilevel_objective", "split_support_query", "Shape", "Hyper",
           "Outcome", "make_shape", "make_hyper", "stack_hypers", "retrain_statistics",
           "run_protocol", "run_batch", "STALL_FRACTION", "profiled_objective",
           "full_rank_sr_step", "methods", "protocol", "theory", "FAMILY"]
