"""Monte Carlo fine-tuning of unseen tasks shared by D2, D3 and the figure script: nested-prefix
statistics of one draw per data set, and the population risks of coefficient-only, rank-r LoRA and
full least-squares fine-tuning (one compiled program per shape)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from linmeta.core.data import TaskStats
from linmeta.families.difference import methods
from linmeta.methods.finetune import reduced_rank_fit
from linmeta.core.losses import ols_solution

__all__ = ["prefix_stats", "finetune_risks"]


def prefix_stats(X, Y, M_star, ns):
    """Statistics of the first n rows of every draw, for every n in ``ns``: X (R, nmax, d),
    Y (R, nmax, p) -> :class:`TaskStats` with leading axes (len(ns), R)."""
    edges = (0,) + tuple(ns)
    bx = jnp.stack([jnp.einsum("rni,rnj->rij", X[:, a:b], X[:, a:b])
                    for a, b in zip(edges[:-1], edges[1:])])
    by = jnp.stack([jnp.einsum("rni,rnj->rij", Y[:, a:b], X[:, a:b])
                    for a, b in zip(edges[:-1], edges[1:])])
    m = jnp.asarray(ns, X.dtype)[:, None, None, None]
    L, R = len(ns), X.shape[0]
    return TaskStats(jnp.cumsum(bx, 0) / m, jnp.cumsum(by, 0) / m, jnp.zeros((L, R), X.dtype),
                     jnp.broadcast_to(m[:, :, 0, 0], (L, R)),
                     jnp.broadcast_to(M_star, (L, R) + M_star.shape), jnp.full((L, R), jnp.nan, X.dtype))


@functools.partial(jax.jit, static_argnames=("r", "ns", "draws"))
def finetune_risks(base, basis, M_new, key, noise_std, *, r, ns, draws):
    """Population risks ``||M_hat - M_new||_F^2`` (3, len(ns), draws) of coefficient-only, rank-r
    LoRA and full fine-tuning of ``M_new`` from ``base`` with the adaptation basis ``basis``, on
    ``draws`` data sets of each size n in ``ns`` (``x ~ N(0, I)``, noise ``noise_std``)."""
    d = base.shape[-1]
    kx, ke = jax.random.split(key)
    X = jax.random.normal(kx, (draws, max(ns), d), base.dtype)
    Y = X @ M_new.T + noise_std * jax.random.normal(ke, (draws, max(ns), d), base.dtype)
    st = prefix_stats(X, Y, M_new, ns)
    flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), st)
    coef = methods.finetune_coefficients(base, basis, flat)
    U, V = reduced_rank_fit(base, flat, r)
    lora = base + U @ jnp.swapaxes(V, -1, -2)
    full = ols_solution(flat)
    risk = jnp.stack([methods.population_risk(M, M_new) for M in (coef, lora, full)])
    return risk.reshape(3, len(ns), draws)
