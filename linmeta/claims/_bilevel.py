"""Shared pieces of the bilevel claims M1-M6 (docs/bilevel.md).

- :func:`trajectories`: many bilevel runs (configurations, problems) as one compiled program over
  the library's own outer step (:func:`linmeta.retrain.maml.bilevel_step`, method chosen by traced
  weights), recording the base after every outer iteration: what the step-for-step relations of
  M1 compare.
- :func:`grid`: the measured claims M4-M6 run on one batch of configurations of the family's
  protocol (:func:`linmeta.bilevel.run_batch`): one compiled program per shape, the batch computed
  once per (setting, seed) and shared by the three claims (:func:`grid_cached`).
- :func:`references`: Meta-LoRA (Newton) and SR per problem, the reference lines.
- :func:`rel_diff`: ``max |a - b| / max |b|``.
"""
from __future__ import annotations

import functools
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import linmeta
from linmeta import bilevel, metrics, paper, theory
from linmeta.retrain import run_steps
from linmeta.retrain.maml import BilevelState, bilevel_step

__all__ = ["trajectories", "rel_diff", "truths_for", "Run", "grid", "grid_cached", "references",
           "METHOD_LABEL", "METHOD_COLOR"]

METHOD_LABEL = {"maml": "MAML", "fomaml": "first-order MAML", "reptile": "Reptile"}
METHOD_COLOR = {"maml": "tab:blue", "fomaml": "tab:orange", "reptile": "tab:green"}


def rel_diff(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


@functools.partial(jax.jit, static_argnames=("adapter", "length", "steps"))
def trajectories(support, query, A0, starts, hypers, weights, *, adapter, length, steps):
    """Bases ``(B, steps + 1, d, d)`` along ``steps`` outer iterations for B configurations:
    statistics, starts, :class:`~linmeta.retrain.maml.BilevelHyper` and method weights all carry a
    leading batch axis."""
    def one(sup, qry, start, hyper, w):
        def step(s):
            return bilevel_step(s, sup, qry, hyper, method=w, adapter=adapter, length=length)

        return run_steps(step, BilevelState(A0, start), steps, 1, lambda s: s.base)[1].value

    return jax.vmap(one)(support, query, starts, hypers, weights)


def truths_for(key, n: int, d: int, k: int, T: int, m: int = 1):
    """``n`` Gaussian truths (:func:`linmeta.sample_truth`) stacked on a leading axis."""
    keys = jax.random.split(key, n)
    arrays = jax.vmap(lambda kk: tuple(linmeta.sample_truth(kk, d, k, T, n_unseen=m)))(keys)
    return linmeta.Truth(*arrays)


# ----------------------------------------------------------------------------- measured grid
class Run(dict):
    """One configuration of the grid: its parameters (a dict) plus the outcome arrays over seeds."""


def _configs(cfg) -> list[dict]:
    """Every configuration M4-M6 need at this setting (deduplicated)."""
    out = []
    methods = cfg["methods"]
    base = dict(inner_lr=cfg["alpha"], outer_lr=cfg["beta"], inner_rank=cfg["k"])
    for method, K in itertools.product(methods, cfg["Ks"]):                   # M4: against K
        out.append(dict(base, method=method, inner_steps=K))
        out.append(dict(base, method=method, inner_steps=K, inner_full=True))
    for method, r in itertools.product(methods, cfg["ranks"]):                # M5: against r
        out.append(dict(base, method=method, inner_steps=cfg["K_ablation"], inner_rank=r))
    for method in methods:                                                    # M5: learned start
        out.append(dict(base, method=method, inner_steps=cfg["K_ablation"],
                        start_lr=cfg["beta"]))
    for method, a in itertools.product(methods, cfg["alphas"]):               # M6: against alpha
        out.append(dict(base, method=method, inner_steps=cfg["K_alpha"], inner_lr=a))
        out.append(dict(base, method=method, inner_steps=cfg["K_alpha"], inner_lr=a,
                        inner_full=True))
    seen, uniq = set(), []
    for c in out:
        c = dict(c)
        if c.get("inner_full"):
            c["inner_rank"] = cfg["d"]
        c.setdefault("inner_full", False)
        c.setdefault("start_lr", 0.0)
        key = tuple(sorted(c.items()))
        if key not in seen:
            seen.add(key)
            uniq.append(c)
    return uniq


def grid(cfg: dict, key, T: int) -> tuple[list[Run], dict]:
    """Run every configuration of :func:`_configs` on ``cfg["seeds"]`` Gaussian truths with T
    tasks (population), in chunks of one compiled program. Returns the runs and the per-seed
    references (:func:`references`)."""
    d, k, S = cfg["d"], cfg["k"], cfg["seeds"]
    shape = bilevel.make_shape(d, k, T, m=cfg["m"], inner_length=max(cfg["Ks"] + (
        cfg["K_ablation"], cfg["K_alpha"])), outer_steps=cfg["outer_steps"],
        record_every=cfg["record_every"], width=d)
    k_truth, k_ref = jax.random.split(key)
    truths = truths_for(k_truth, S, d, k, T, cfg["m"])
    configs = _configs(cfg)
    hypers = [bilevel.make_hyper(shape, **c) for c in configs]
    B = len(configs) * S
    chunk = cfg.get("chunk") or B
    n_chunks = -(-B // chunk)
    idx = np.minimum(np.arange(n_chunks * chunk), B - 1)
    cfg_of = idx // S
    seed_of = idx % S
    outs = []
    for c in range(n_chunks):
        sl = slice(c * chunk, (c + 1) * chunk)
        h = bilevel.stack_hypers([hypers[i] for i in cfg_of[sl]])
        tr = jax.tree.map(lambda x: x[jnp.asarray(seed_of[sl])], tuple(truths))
        outs.append(bilevel.run_batch(linmeta.Truth(*tr), seed_of[sl], h, shape))
    out = {f: np.concatenate([np.asarray(getattr(o, f)) for o in outs])[:B]
           for f in bilevel.Outcome._fields}
    runs = []
    for i, c in enumerate(configs):
        sel = slice(i * S, (i + 1) * S)
        runs.append(Run(c, **{f: v[sel] for f, v in out.items()}))
    refs = references(truths, k_ref, k, cfg["ft_rank"], cfg.get("ml_starts", 4))
    return runs, refs


def references(truths, key, k: int, ft_rank: int, n_starts: int) -> dict:
    """Per truth (leading axis): Meta-LoRA (``linmeta.meta_lora``, Newton) and SR (exact) base
    errors and rank-``ft_rank`` fine-tuning biases on the unseen tasks (population)."""
    from ._support import fit_meta_lora_and_sr

    S = truths.A_star.shape[0]
    stats = jax.vmap(lambda *a: linmeta.population(linmeta.Truth(*a)))(*truths)
    ml_base, ml_obj, sr_base = fit_meta_lora_and_sr(stats, jax.random.split(key, S), k,
                                                    n_starts, S)
    A_star, M_new = np.asarray(truths.A_star), np.asarray(truths.M_new)

    def ft(bases):
        return np.asarray(jnp.mean(theory.lora_bias(jnp.asarray(M_new - bases[:, None]), ft_rank),
                                   axis=-1))

    return dict(ml_base_error=np.asarray(metrics.base_error(ml_base, A_star)),
                sr_base_error=np.asarray(metrics.base_error(sr_base, A_star)),
                ml_ft_bias=ft(ml_base), sr_ft_bias=ft(sr_base), ml_objective=ml_obj,
                a_norm=np.linalg.norm(A_star, axis=(-2, -1)))


_CACHE: dict[Any, Any] = {}


def grid_cached(cfg: dict, key_seed: int, T: int):
    """:func:`grid` computed once per (configuration dict, seed, T) in this process (the claims
    M4, M5 and M6 share it)."""
    ck = (repr(sorted(cfg.items())), key_seed, T, str(jnp.asarray(0.0).dtype))
    if ck not in _CACHE:
        from ._support import key_for

        _CACHE[ck] = grid(cfg, jax.random.fold_in(key_for(key_seed, "M4"), T), T)
    return _CACHE[ck]


def select(runs, **where) -> list[Run]:
    """Runs whose parameters match ``where``."""
    return [r for r in runs if all(r.get(k) == v for k, v in where.items())]
