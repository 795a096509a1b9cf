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

from linmeta.core import theory
from linmeta.engine.claim_support import lbfgs_best_of_starts, optimality_measures
from linmeta.families.representation.tasks import (moment_matrix, nested_moment_matrices,
                                                   samples_from_betas)


def test_nested_moment_matrices_equal_moment_matrix_of_each_prefix():
    smp = samples_from_betas(jax.random.PRNGKey(3), jax.random.normal(jax.random.PRNGKey(4),
                                                                      (6, 3)), 8, 0.5)
    ns, Ts = (2, 5, 8), (1, 4, 6)
    grid = nested_moment_matrices(smp, ns, Ts)
    assert grid.shape == (3, 3, 3, 3)
    X, Y = np.asarray(smp.X), np.asarray(smp.Y)
    for i, n in enumerate(ns):
        for j, T in enumerate(Ts):  # (1/(nT)) sum y^2 x x^T over the prefix, in NumPy
            Xw = (X[:T, :n] * Y[:T, :n]).reshape(-1, X.shape[-1])
            np.testing.assert_allclose(grid[i, j], Xw.T @ Xw / (n * T), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(grid[-1, -1], moment_matrix(smp), rtol=1e-12, atol=1e-13)


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


# survivors of the cosmic-ray run on linmeta/core/theory.py (benchmarks/results/
# mutation_tool_closed-forms.md): argument checks that verify, which passes valid input only,
# cannot see
def test_lora_bias_accepts_large_square_residuals():
    """``!=`` on the shape, not ``is not`` (equal ints above 256 are distinct objects)."""
    res = np.diag(np.arange(300, dtype=float))
    assert float(theory.lora_bias(res, 299)) == 0.0


@pytest.mark.parametrize("call, message", [
    (lambda: theory.predicted_finetune_error(0, 1, 10, 0.1), "d must be"),
    (lambda: theory.alternating_jacobian(np.eye(2), np.ones((3, 2, 1)), lr_adapter=0.0),
     "lr_adapter must be"),
    (lambda: theory.alternating_jacobian(np.eye(2), np.ones((3, 2, 1)), lr_adapter=-0.5),
     "lr_adapter must be"),
    (lambda: theory.alternating_jacobian(np.eye(2), np.ones((3, 2, 1)), lr_base=-0.5),
     "lr_base must be"),
])
def test_theory_refuses_bad_arguments_by_name(call, message):
    with pytest.raises(ValueError) as e:
        call()
    assert str(e.value).startswith(message)
