"""Closed form of ridge-shrunk standard retraining (imports no solver).

Population (S_xx = I, S_yx = M*_t): ``min_A (1/T) sum_t 1/2 ||A - M*_t||_F^2 + lam/2 ||A||_F^2`` has
the unique minimiser ``A_lam = Mbar / (1 + lam)``, ``Mbar = (1/T) sum_t M*_t = A* + Rbar``
(set the gradient ``A - Mbar + lam A`` to zero). Gradient descent with step ``lr`` contracts the
error by ``|1 - lr (1 + lam)|`` per step.
"""
import jax.numpy as jnp


def shrunk_population_minimiser(task_matrices, lam):
    """``mean_t M*_t / (1 + lam)`` for task matrices (T, d, d) and ``lam >= 0``."""
    return jnp.mean(task_matrices, axis=0) / (1.0 + lam)


def contraction_rate(lr, lam):
    """Per-step error factor of gradient descent on the shrunk objective at the population."""
    return jnp.abs(1.0 - lr * (1.0 + lam))
