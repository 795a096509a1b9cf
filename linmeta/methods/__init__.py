"""The methods (second layer), on the core's task statistics: standard retraining
(:mod:`.standard`), Meta-LoRA and its solvers (:mod:`.meta_lora`, :mod:`._matrix_free`), LoRA
fine-tuning (:mod:`.finetune`) and the landscape tools (:mod:`.landscape`: critical points,
Hessians). Families build on them; they import only the core."""
from ._common import History, RetrainResult, record_steps, run_steps
from .meta_lora import (NewtonInfo, alternating_step, default_solver, joint_gd_step, meta_lora,
                        meta_lora_excess, meta_lora_objective, memory_budget, optimal_base,
                        population_basis, population_reduced_objective, reduced_objective,
                        solver_memory)
from .standard import pooled_least_squares, sr_gradient_step, standard_retraining

__all__ = ["History", "RetrainResult", "record_steps", "run_steps", "NewtonInfo",
           "alternating_step", "default_solver", "joint_gd_step", "memory_budget", "meta_lora",
           "meta_lora_excess", "meta_lora_objective", "optimal_base", "population_basis",
           "population_reduced_objective", "reduced_objective", "solver_memory",
           "pooled_least_squares", "sr_gradient_step", "standard_retraining"]
