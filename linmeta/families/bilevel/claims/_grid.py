"""Shared pieces of the bilevel claims M1-M6 (docs/bilevel.md).

- :func:`trajectories`: many bilevel runs (configurations, problems) as one compiled program over
  the library's own outer step (:func:`linmeta.families.bilevel.methods.bilevel_step`, method chosen by
  traced weights), recording the base after every outer iteration: what the step-for-step relations of
  M1 compare.
- :func:`grid`: the measured claims M4-M6 run on one batch of configurations of the family's
  protocol (:func:`linmeta.families.bilevel.run_batch`): one compiled program per shape, the batch computed
  once per (setting, seed) and shared by the three claims (:func:`grid_cached`).
- :func:`references`: Meta-LoRA and SR per problem, the reference lines.
- :func:`rel_diff`: ``max |a - b| / max |b|``.
- :func:`rng_for`, :func:`numpy_truths`, :func:`numpy_population`, :func:`numpy_split`: problems
  drawn with NumPy's generator and reduced to statistics on the host, so that a claim's compiled
  program holds only the computation it checks (the random-number kernels and eager array
  operations of JAX each cost a compilation; the quick settings are compile-bound).
"""
from __future__ import annotations

import functools
import itertools
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from linmeta.core.data import TaskStats
from linmeta.core.problem import Truth, sample_truth
from linmeta.families import bilevel
from linmeta.methods import run_steps
from linmeta.families.bilevel.methods import METHODS, BilevelState, bilevel_step
from linmeta.engine.claim_support import fit_meta_lora_and_sr

__all__ = ["trajectories", "rel_diff", "truths_for", "Run", "configs", "grid", "grid_cached",
           "references", "select", "median", "METHOD_LABEL", "METHOD_COLOR", "rng_for",
           "numpy_truths", "numpy_population", "numpy_split", "task_matrices", "to_jax"]

METHOD_LABEL = {"maml": "MAML", "fomaml": "first-order MAML", "reptile": "Reptile"}
METHOD_COLOR = {"maml": "tab:blue", "fomaml": "tab:orange", "reptile": "tab:green"}


def rel_diff(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


@functools.partial(jax.jit, static_argnames=("adapter", "length", "steps"))
def trajectories(support, query, A0, starts, hypers, weights, *, adapter, length, steps):
    """Bases ``(B, steps + 1, d, d)`` along ``steps`` outer iterations for B configurations:
    statistics, starts, :class:`~linmeta.families.bilevel.methods.BilevelHyper` and method weights all carry
    a leading batch axis."""
    def one(sup, qry, start, hyper, w):
        def step(s):
            return bilevel_step(s, sup, qry, hyper, method=w, adapter=adapter, length=length)

        return run_steps(step, BilevelState(A0, start), steps, 1, lambda s: s.base)[1].value

    return jax.vmap(one)(support, query, starts, hypers, weights)


def rng_for(seed: int, claim: str) -> np.random.Generator:
    """NumPy generator of a claim run: seeded by ``(seed, crc32(claim))``."""
    return np.random.default_rng([int(seed), zlib.crc32(claim.encode())])


def numpy_truths(rng, S: int, d: int, k: int, T: int, m: int = 1):
    """S Gaussian truths as NumPy arrays ``(A* (S,d,d) symmetrised, U* (S,T,d,k), U_new
    (S,m,d,k))``: the distribution of :func:`linmeta.sample_truth`."""
    A = rng.standard_normal((S, d, d))
    return (A + np.swapaxes(A, -1, -2)) / 2, rng.standard_normal((S, T, d, k)), \
        rng.standard_normal((S, m, d, k))


def task_matrices(A, U):
    """``M*_t = A* + U*_t U*_t^T`` (NumPy, leading axes kept)."""
    return A[..., None, :, :] + U @ np.swapaxes(U, -1, -2)


def numpy_population(M, noise_std: float = 0.0) -> tuple:
    """Population statistics of task matrices ``M`` (..., T, d, d) as a tuple of NumPy arrays in
    :class:`~linmeta.TaskStats` order."""
    d = M.shape[-1]
    eye = np.broadcast_to(np.eye(d), M.shape).copy()
    lead = M.shape[:-2]
    return (eye, M.copy(), np.sum(M * M, axis=(-2, -1)) + d * noise_std ** 2,
            np.full(lead, np.inf), M.copy(), np.full(lead, float(noise_std)))


def numpy_split(rng, M, N: int, noise_std: float) -> tuple:
    """Support and query statistics (first N // 2 samples and the rest) of N fresh samples per
    task, ``x ~ N(0, I)``, ``y = M x + eps``; tuples of NumPy arrays in TaskStats order."""
    lead, d = M.shape[:-2], M.shape[-1]
    X = rng.standard_normal(lead + (N, d))
    Y = X @ np.swapaxes(M, -1, -2) + noise_std * rng.standard_normal(lead + (N, d))

    def stats(X, Y):
        n = X.shape[-2]
        Xt = np.swapaxes(X, -1, -2)
        return (Xt @ X / n, np.swapaxes(Y, -1, -2) @ X / n, np.sum(Y * Y, axis=(-2, -1)) / n,
                np.full(lead, float(n)), M.copy(), np.full(lead, float(noise_std)))

    h = N // 2
    return stats(X[..., :h, :], Y[..., :h, :]), stats(X[..., h:, :], Y[..., h:, :])


def to_jax(tree, dtype=None):
    """NumPy leaves to JAX arrays of the working float dtype (tuples of 6 become TaskStats)."""
    dt = jnp.asarray(0.0).dtype if dtype is None else dtype

    def conv(x):
        x = np.asarray(x)
        return jnp.asarray(x.astype(dt) if np.issubdtype(x.dtype, np.floating) else x)

    out = jax.tree.map(conv, tree)
    return TaskStats(*out) if isinstance(tree, tuple) and len(tree) == 6 else out


def truths_for(key, n: int, d: int, k: int, T: int, m: int = 1):
    """``n`` Gaussian truths (:func:`linmeta.sample_truth`) stacked on a leading axis."""
    keys = jax.random.split(key, n)
    arrays = jax.vmap(lambda kk: tuple(sample_truth(kk, d, k, T, n_unseen=m)))(keys)
    return Truth(*arrays)


# ----------------------------------------------------------------------------- measured grid
class Run(dict):
    """One configuration of the grid: its parameters plus the outcome arrays over seeds."""


PARTS = ("K", "rank", "alpha")   # "T" (configurations of the sweep over T) on request


def configs(cfg: dict, parts=PARTS) -> list[dict]:
    """The configurations the measured claims need (deduplicated): ``"K"`` (M4: every method
    against K, LoRA rank-k and full-rank inner loops), ``"rank"`` (M5: inner rank, full-rank
    inner, learned start at ``K_ablation``), ``"alpha"`` (M6: against the inner step). The inner
    step is ``a / lambda`` with ``a`` the dimensionless ``cfg["a"]`` (or one of ``cfg["as_"]``)
    and ``lambda = max_t ||M*_t||_2`` of the run's truth (see :func:`grid`)."""
    out = []
    methods, k = cfg["methods"], cfg["k"]
    base = dict(a=cfg["a"], outer_lr=cfg["beta"], inner_rank=k, inner_full=False, start_lr=0.0)
    if "K" in parts:
        for method, K in itertools.product(methods, cfg["Ks"]):
            out.append(dict(base, method=method, inner_steps=K))
            out.append(dict(base, method=method, inner_steps=K, inner_full=True))
    if "rank" in parts:
        for method, r in itertools.product(methods, cfg["ranks"]):
            out.append(dict(base, method=method, inner_steps=cfg["K_ablation"], inner_rank=r))
        for method in methods:
            out.append(dict(base, method=method, inner_steps=cfg["K_ablation"],
                            inner_full=True))
            out.append(dict(base, method=method, inner_steps=cfg["K_ablation"],
                            start_lr=cfg["start_lr"]))
            out.append(dict(base, method=method, inner_steps=0))
    if "T" in parts:      # the sweep over T (M4, full setting): matched and full-rank inner
        for method in methods:
            out.append(dict(base, method=method, inner_steps=cfg["K_ablation"]))
            out.append(dict(base, method=method, inner_steps=cfg["K_ablation"],
                            inner_full=True))
    if "alpha" in parts:
        for method, a in itertools.product(methods, cfg["as_"]):
            out.append(dict(base, method=method, inner_steps=cfg["K_alpha"], a=a))
            if cfg.get("alpha_full", True):
                out.append(dict(base, method=method, inner_steps=cfg["K_alpha"], a=a,
                                inner_full=True))
    seen, uniq = set(), []
    for c in out:
        if c["inner_full"]:
            c["inner_rank"] = cfg["d"]
        key = tuple(sorted(c.items()))
        if key not in seen:
            seen.add(key)
            uniq.append(c)
    return uniq


def _group(c, cfg) -> tuple:
    """(factor width, inner scan length) of the program that runs configuration ``c``: with
    ``cfg["split_width"]`` rank-k runs use k columns, the others d (else all d); with
    ``cfg["split_length"]`` each K has its own scan length (else the grid's largest K)."""
    w = cfg["d"] if (c["inner_full"] or c["inner_rank"] > cfg["k"]) else cfg["k"]
    return (w if cfg.get("split_width") else cfg["d"],
            c["inner_steps"] if cfg.get("split_length") else None)


def grid(cfg: dict, rng: np.random.Generator, T: int, parts=PARTS):
    """Run :func:`configs` on ``cfg["seeds"]`` Gaussian truths with T tasks (population) with
    the family's protocol (:func:`linmeta.families.bilevel.run_batch`), one batch per program group
    (:func:`_group`; at the quick setting a single program), in chunks of ``cfg["chunk"]``.
    Returns ``(runs, lambdas, truths)``: :class:`Run` per configuration (arrays over seeds), the
    per-seed ``lambda = max_t ||M*_t||_2`` and the truths (NumPy)."""
    d, k, S, m = cfg["d"], cfg["k"], cfg["seeds"], cfg["m"]
    A, U, Un = numpy_truths(rng, S, d, k, T, m)
    lam = np.max(np.linalg.norm(task_matrices(A, U), ord=2, axis=(-2, -1)), axis=-1)   # (S,)
    cfgs = configs(cfg, parts)
    longest = max(c["inner_steps"] for c in cfgs)
    groups: dict = {}
    for i, c in enumerate(cfgs):
        groups.setdefault(_group(c, cfg), []).append(i)
    out = {}
    for (w, length), members in groups.items():
        shape = bilevel.make_shape(d, k, T, m=m, ft_rank=cfg["ft_rank"], width=w,
                                   inner_length=longest if length is None else length,
                                   outer_steps=cfg["outer_steps"],
                                   record_every=cfg["record_every"])
        jobs = [(i, s) for i in members for s in range(S)]
        chunk = min(cfg.get("chunk") or len(jobs), len(jobs))   # pad only a last chunk
        n_chunks = -(-len(jobs) // chunk)
        jobs_p = jobs + [jobs[-1]] * (n_chunks * chunk - len(jobs))
        res = []
        for c0 in range(0, len(jobs_p), chunk):
            part = jobs_p[c0:c0 + chunk]
            hyp = [_hyper(shape, cfgs[i], lam[s]) for i, s in part]
            h = to_jax(tuple(np.stack([np.asarray(x) for x in col]) for col in zip(*hyp)))
            sel = np.asarray([s for _, s in part])
            tr = Truth(*to_jax((A[sel], U[sel], Un[sel])))
            o = bilevel.run_batch(tr, jnp.asarray(sel), bilevel.Hyper(*h), shape)
            res.append({f: np.asarray(getattr(o, f)) for f in bilevel.Outcome._fields})
        for f in bilevel.Outcome._fields:
            vals = np.concatenate([r_[f] for r_ in res])[:len(jobs)]
            for j, (i, s) in enumerate(jobs):
                out.setdefault(i, {}).setdefault(f, [None] * S)[s] = vals[j]
    runs = [Run(c, **{f: np.asarray(v) for f, v in out[i].items()}) for i, c in enumerate(cfgs)]
    return runs, lam, (A, U, Un)


def _hyper(shape, c, lam):
    """:class:`linmeta.families.bilevel.Hyper` values of configuration ``c`` for a truth with ``lam``
    (NumPy, in field order; the int fields as int32)."""
    return (np.asarray(0.0), np.asarray(METHODS.index(c["method"]), np.int32),
            np.asarray(c["inner_steps"], np.int32), np.asarray(c["a"] / lam),
            np.asarray(c["outer_lr"]), np.asarray(c["start_lr"]),
            np.asarray(c["inner_rank"], np.int32), np.asarray(float(c["inner_full"])),
            np.asarray(0.1))


def references(truths, k: int, ft_rank: int, *, newton: bool, rng=None, n_starts: int = 4):
    """Per truth: Meta-LoRA and SR base errors and rank-``ft_rank`` fine-tuning biases on the
    unseen tasks (population), and the bases ``A*`` (``a_star``) and ``A* + Rbar``
    (``sr_base``). ``newton``: Meta-LoRA by :func:`linmeta.meta_lora` (Newton); else its
    population minimiser for T >= 3, ``A*`` (claim C3,
    :func:`linmeta.core.theory.meta_lora_population_base`). SR: ``A* + Rbar``
    (:func:`linmeta.core.theory.sr_population`)."""
    A, U, Un = truths
    S = A.shape[0]
    # theory.sr_population (C1), A* + Rbar, on the host
    sr = A + np.mean(U @ np.swapaxes(U, -1, -2), axis=1)
    if newton:

        M = task_matrices(A, U)
        stats = to_jax(numpy_population(M))
        keys = jax.random.split(jax.random.key(int(rng.integers(2 ** 31))), S)
        ml, _, _ = fit_meta_lora_and_sr(stats, keys, k, n_starts, S)
    else:
        ml = A.copy()
    M_new = task_matrices(A, Un)                                      # (S, m, d, d)

    def bias(B):
        R = M_new - B[:, None]
        s = np.linalg.svd(R, compute_uv=False)
        return np.mean(np.sum(s[..., ft_rank:] ** 2, axis=-1), axis=-1)

    return dict(ml_base_error=np.linalg.norm(ml - A, axis=(-2, -1)),
                sr_base_error=np.linalg.norm(sr - A, axis=(-2, -1)),
                ml_ft_bias=bias(ml), sr_ft_bias=bias(sr),
                a_norm=np.linalg.norm(A, axis=(-2, -1)), a_star=A, sr_base=sr)


_CACHE: dict[Any, Any] = {}


def grid_cached(cfg: dict, seed: int, T: int, parts=PARTS, newton: bool = False):
    """:func:`grid` and :func:`references`, computed once per (configuration, seed, T, parts)
    in this process: the claims M4, M5 and M6 share them."""
    ck = (repr(sorted(cfg.items())), seed, T, tuple(parts), newton, str(jnp.asarray(0.0).dtype))
    if ck not in _CACHE:
        rng = rng_for(seed, f"M4-grid-T{T}")
        runs, lam, truths = grid(cfg, rng, T, parts)
        refs = references(truths, cfg["k"], cfg["ft_rank"], newton=newton, rng=rng)
        _CACHE[ck] = (runs, lam, refs)
    return _CACHE[ck]


def select(runs, **where) -> list[Run]:
    """Runs whose parameters match ``where``."""
    return [r for r in runs if all(r.get(k) == v for k, v in where.items())]


def median(x) -> float:
    """Median over seeds, NaN-safe (a diverged seed counts as +inf)."""
    x = np.asarray(x, float)
    x = np.where(np.isnan(x), np.inf, x)
    return float(np.median(x))


# the measured claims' shared settings (M4, M5, M6 read the same grid)
GRID = {
    "tiny": dict(d=4, k=1, ft_rank=1, m=2, seeds=2, methods=METHODS, a=1.0, beta=0.5,
                 Ks=(0, 6, 16), ranks=(2,), K_ablation=16, as_=(0.25, 2.5), K_alpha=6,
                 start_lr=0.05, alpha_full=False, outer_steps=40, record_every=20, chunk=None,
                 split_width=False),
    "quick": dict(d=5, k=1, ft_rank=1, m=2, seeds=2, methods=METHODS, a=1.0, beta=0.5,
                  Ks=(0, 8, 24), ranks=(2,), K_ablation=24, as_=(0.25, 1.0, 2.5), K_alpha=8,
                  start_lr=0.05, alpha_full=False, outer_steps=80, record_every=20, chunk=None,
                  split_width=False),
    "full": dict(d=10, k=1, ft_rank=1, m=4, seeds=6, methods=METHODS, a=0.5, beta=0.3,
                 Ks=(0, 5, 10, 25, 50, 100, 200), ranks=(1, 2, 3, 5, 10), K_ablation=100,
                 as_=(0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 10.0, 20.0, 30.0, 45.0),
                 K_alpha=50, alpha_full=True,
                 start_lr=0.05, outer_steps=500, record_every=25, chunk=64, split_width=True,
                 split_length=True),
}


def positive(x, floor=1e-30):
    """Values for log axes: NaN/inf (diverged) become NaN (gaps), tiny values the floor."""
    x = np.asarray(x, float)
    return np.where(np.isfinite(x), np.maximum(x, floor), np.nan)
