"""The joint fit's memory plan (:func:`linmeta.families.difference.methods.joint_fit_memory`,
what ``joint_fit`` refuses by) against XLA's own memory analysis of the compiled fit
(arguments + outputs + temporaries): an upper bound, at most 4 times XLA's count, in the
population and at finite samples (where the d^2 x d^2 normal equations and their forward-mode
tangents dominate)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from linmeta.core.data import matrix_tasks
from linmeta.engine.claim_support import compiled_bytes
from linmeta.families.difference import methods


def _xla_bytes(stats, rank, n_starts, population):
    lowered = methods._joint_kernel.lower(stats, jax.random.PRNGKey(0), rank=rank,
                                          n_starts=n_starts, max_iter=2,
                                          population=population, core=False)
    return compiled_bytes(lowered.compile())


@pytest.mark.parametrize("d, T, rank, n_starts, population",
                         [(8, 3, 2, 2, True), (5, 4, 2, 2, False)])
def test_joint_fit_memory_bounds_xla(d, T, rank, n_starts, population):
    rng = np.random.default_rng(d)
    M = jnp.asarray(rng.normal(size=(T, d, d)))
    stats = (matrix_tasks(M) if population else
             matrix_tasks(M, N=3 * d, key=jax.random.PRNGKey(1), noise_std=0.1))
    plan = methods.joint_fit_memory(d, T, rank, n_starts, population)
    xla = _xla_bytes(stats, rank, n_starts, population)
    assert xla <= plan <= 4 * xla, (plan, xla, plan / xla)
