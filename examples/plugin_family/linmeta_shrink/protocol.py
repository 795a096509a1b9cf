"""The sweep protocol ``"shrink"``: one configuration = ridge-shrunk retraining on the paper's
truth at the population, recorded against its closed form. ``lam`` and ``lr`` are traced (a grid
over them compiles once); ``d, k, T, steps`` set the shape."""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from linmeta.core.data import population
from linmeta.engine import protocols
from .methods import shrunk_retraining
from .theory import shrunk_population_minimiser


class Hyper(NamedTuple):
    lam: jax.Array
    lr: jax.Array


class Shape(NamedTuple):
    d: int
    k: int
    T: int
    steps: int


class Record(NamedTuple):
    error_to_closed_form: jax.Array   # ||A - Mbar/(1+lam)||_F at the last step
    objective: jax.Array              # trajectory


def run_protocol(truth, keys, hyper, shape):
    stats = population(truth)
    A, objective = shrunk_retraining(stats, hyper.lam, hyper.lr, shape.steps)
    target = shrunk_population_minimiser(truth.A_star + truth.U_star @ jnp.swapaxes(
        truth.U_star, -1, -2), hyper.lam)
    return Record(jnp.linalg.norm(A - target), objective)


PROTOCOL = protocols.register(protocols.Protocol(
    name="shrink", run=run_protocol, hyper=Hyper, shape=Shape,
    defaults=dict(d=6, k=1, T=3, steps=200, lam=0.5, lr=0.3, seed=0, truth_seed=0),
    truth=lambda cfg, dtype: protocols.truth_for(cfg),
    truth_keys=("truth_seed", "d", "k", "T"),
    stages=(protocols.Stage("fit", "ridge-shrunk retraining", fields=("objective",),
                            step_sizes=("lr",)),),
    checks={"lam": protocols.Check("float", 0), "lr": protocols.Check("float", 0, open_lo=True),
            "k": protocols.Check("int", 1, "d")},
    description="ridge-shrunk standard retraining at the population (example plugin family)",
), replace=True)
