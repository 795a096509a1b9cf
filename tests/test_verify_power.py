"""The pieces behind the optimality and library rows of ``linmeta verify`` (issue: every closed form
against an independent computation, every exact solver checked for optimality):
:func:`linmeta.families.representation.tasks.nested_moment_matrices` against
:func:`~linmeta.families.representation.tasks.moment_matrix` of each prefix, and the generic
optimiser of :func:`linmeta.engine.claim_support.optimality_measures` on a hand-built quadratic
(zero at its minimiser, positive gain at any other point: the measure can fail)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from linmeta.engine.claim_support import lbfgs_best_of_starts, optimality_measures
from linmeta.families.representation.tasks import (moment_matrix, nested_moment_matrices,
                                                   samples_from_betas)


def test_nested_moment_matrices_equal_moment_matrix_of_each_prefix():
    smp = samples_from_betas(jax.random.PRNGKey(3), jax.random.normal(jax.random.PRNGKey(4),
                                                                      (6, 3)), 8, 0.5)
    ns, Ts = (2, 5, 8), (1, 4, 6)
    grid = nested_moment_matrices(smp, ns, Ts)
    assert grid.shape == (3, 3, 3, 3)
    for i, n in enumerate(ns):
        for j, T in enumerate(Ts):
            want = moment_matrix(smp._replace(X=smp.X[:T, :n], Y=smp.Y[:T, :n]))
            np.testing.assert_allclose(grid[i, j], want, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("ns, Ts, name", [((3, 2), (1,), "ns"), ((2,), (0,), "Ts"),
                                          ((9,), (1,), "ns"), ((2,), (7,), "Ts")])
def test_nested_moment_matrices_refuses_bad_prefixes(ns, Ts, name):
    smp = samples_from_betas(jax.random.PRNGKey(0), jnp.ones((6, 3)), 8, 0.1)
    with pytest.raises(ValueError, match=name):
        nested_moment_matrices(smp, ns, Ts)


def test_optimality_measures_on_a_quadratic():
    H = np.diag([1.0, 4.0, 9.0])
    b = np.array([1.0, -2.0, 0.5])
    vg = lambda x: (0.5 * x @ H @ x - b @ x, H @ x - b)  # noqa: E731
    x_star = np.linalg.solve(H, b)
    starts = np.random.default_rng(0).standard_normal((2, 3))
    best, x = lbfgs_best_of_starts(vg, starts)
    np.testing.assert_allclose(x, x_star, atol=1e-8)
    foc, gain = optimality_measures(vg, x_star, np.zeros(3), starts)
    assert foc < 1e-14 and abs(gain) < 1e-12
    foc, gain = optimality_measures(vg, x_star + [0.0, 0.1, 0.0], np.zeros(3), starts)
    assert foc > 0.1 and gain > 1e-3
