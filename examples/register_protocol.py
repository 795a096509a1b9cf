"""Register a protocol and sweep it: a toy gradient descent on 1/2 ||A - A*||_F^2.

A protocol is a function of one configuration, ``run(truth, keys, hyper, shape) -> NamedTuple of
arrays``; linmeta.sweep vmaps, compiles (once per shape group), shards and chunks it, and flags
divergence from the stages' recorded losses. Run: ``python examples/register_protocol.py``.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from linmeta.engine import protocols, sweep
from linmeta import sample_truth


class Hyper(NamedTuple):   # traced: a grid over these costs no compile
    lr: jax.Array


class Shape(NamedTuple):   # static: sets shapes and loop lengths (one program per value)
    d: int
    k: int
    T: int
    steps: int


class Record(NamedTuple):
    final_loss: jax.Array  # a scalar: a column of the results
    loss: jax.Array        # an array: a trajectory


def run_protocol(truth, keys, hyper, shape):
    def step(A, _):
        A = A - hyper.lr * (A - truth.A_star)
        return A, 0.5 * jnp.sum((A - truth.A_star) ** 2)

    start = 0.5 * jnp.sum(truth.A_star ** 2)
    _, loss = jax.lax.scan(step, jnp.zeros((shape.d, shape.d), truth.A_star.dtype), None,
                           length=shape.steps)
    return Record(loss[-1], jnp.concatenate([start[None], loss]))


protocols.register(protocols.Protocol(
    name="toy", run=run_protocol, hyper=Hyper, shape=Shape,
    defaults=dict(d=4, k=1, T=3, steps=50, lr=0.1, seed=0, truth_seed=0),
    truth=lambda cfg, dtype: sample_truth(jax.random.key(cfg["truth_seed"]), cfg["d"], cfg["k"],
                                          cfg["T"], dtype=dtype),
    truth_keys=("truth_seed", "d", "k", "T"),
    stages=(protocols.Stage("fit", "toy gradient descent", fields=("loss",),
                            step_sizes=("lr",)),),
    checks={"lr": protocols.Check("float", 0, open_lo=True), "k": protocols.Check("int", 1, "d")},
), replace=True)

if __name__ == "__main__":
    jax.config.update("jax_enable_x64", True)
    cfgs = sweep.expand_grid({"grid": {"lr": [0.05, 0.5, 2.5]},
                              "fixed": {"protocol": "toy"}, "seeds": 2})
    for cfg, res in zip(cfgs, sweep.run_sweep(cfgs)):
        print(f"lr={cfg['lr']:<5} seed={cfg['seed']}: final loss {res['final_loss']:.3g}, "
              f"diverged: {res['fit_diverged']}")
        message = protocols.divergence_message(cfg, res)
        if message:
            print("   ", message)
