"""Claims C4 (T = 2), C6 (adaptation rate), C8 (landscape census): each experiment's tiny setting,
its tolerances against their derivations, and exact hand-built checks.

The tiny runs happen once, in a subprocess started with the first test of this module
(:func:`helpers.tiny_claim_runs`); the hand-built tests run while it compiles and the tiny tests
come last.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import linmeta
from linmeta.methods import landscape
from linmeta.families.paper.claims import c4, c6

from helpers import check_row_tolerances, tiny_claim_runs

EXPERIMENTS = {"C4": None, "C6": None, "C8": "c8_landscape_census"}

tiny_runs = tiny_claim_runs(EXPERIMENTS, "two_tasks_rate_census")


def test_hyperbolic_family_exact():
    """G = 0 and the base A(U) = A* + mean_t(R*_t - U_t U_t^T) in plain NumPy vs the closed form."""
    d = 4
    A = np.asarray(linmeta.sample_truth(jax.random.key(0), d, 1, 2).A_star)
    theta = np.linspace(-2.5, 2.5, 11)
    U, truth = c4.hyperbolic_family(jnp.asarray(A), jnp.asarray(theta))
    U = np.asarray(U)
    R = np.asarray(truth.R_star)
    assert np.allclose(R[0], np.diag([1.0, 0, 0, 0])) and np.allclose(R[1], np.diag([0, 1.0, 0, 0]))
    for i, th in enumerate(theta):
        X = U[i] @ np.swapaxes(U[i], -1, -2)
        np.testing.assert_allclose(X[0] - X[1], R[0] - R[1], atol=1e-12 * np.cosh(th) ** 2)
        assert float(landscape.objective(U[i], R)) < 1e-12
        A_hat = A + np.mean(R - X, axis=0)
        dist = np.linalg.norm(A_hat - A)
        assert abs(dist - c4.hyperbolic_distance(th)) <= 1e-12 * max(1.0, dist)
        if abs(th) > 0.1:
            assert np.linalg.matrix_rank(A_hat - A, tol=1e-8 * dist) == 2


def test_boost_path_stays_in_the_indefinite_orthogonal_group():
    d, k = 6, 2
    truth = linmeta.sample_truth(jax.random.key(1), d, k, 2)
    B = jax.random.normal(jax.random.key(2), (k, k))
    theta = jnp.linspace(-1.0, 1.0, 5)
    U = np.asarray(c4.boost_path(truth.U_star, B, theta))
    W = np.concatenate([np.asarray(truth.U_star[0]), np.asarray(truth.U_star[1])], axis=1)
    eta = np.diag([1.0] * k + [-1.0] * k)
    target = W @ eta @ W.T
    for i in range(len(theta)):
        Wi = np.concatenate([U[i, 0], U[i, 1]], axis=1)
        np.testing.assert_allclose(Wi @ eta @ Wi.T, target, atol=1e-10 * np.abs(target).max())
    # a boost that is not orthogonal moves the base: ||A_hat - A*|| > 0 away from theta = 0
    X = U @ np.swapaxes(U, -1, -2)
    R = np.asarray(truth.R_star)
    shift = np.linalg.norm(np.mean(R - X, axis=1), axis=(-2, -1))
    assert shift[0] > 1e-3 and shift[2] < 1e-10 and shift[-1] > 1e-3


def test_masked_gradient_descent_keeps_zero_columns():
    """Zero columns of U and V get zero gradients (G V, G^T U): a rank-k adapter padded to k_max.
    (C6's masked exact estimator is checked against finetune(method="exact") by a row of its run.)"""
    d, k, k_max = 5, 1, 3
    truth = linmeta.sample_truth(jax.random.key(5), d, k, 3)
    stats = linmeta.sample_tasks(jax.random.key(6), truth, 30, 0.1, tasks="unseen")
    U0 = 0.1 * jax.random.normal(jax.random.key(7), (1, d, k_max))
    V0 = 0.1 * jax.random.normal(jax.random.key(8), (1, d, k_max))
    mask = (jnp.arange(k_max) < k).astype(U0.dtype)
    padded = linmeta.finetune(truth.A_star, stats, k_max, U0=U0 * mask, V0=V0 * mask, steps=20)
    plain = linmeta.finetune(truth.A_star, stats, k, U0=U0[..., :k], V0=V0[..., :k], steps=20)
    assert float(jnp.abs(padded.U[..., k:]).max()) == 0.0
    np.testing.assert_allclose(padded.task_matrix, plain.task_matrix, atol=1e-12)


def test_settings_are_validated():
    for mod in (c4, c6):
        with pytest.raises(ValueError, match="setting"):
            mod.run("huge")


@pytest.mark.parametrize("cid", sorted(EXPERIMENTS))
def test_tiny_run_passes_and_writes_figures(tiny_runs, cid):
    out, data = tiny_runs
    rows = data["rows"][cid]
    assert rows, f"{cid} returned no verdict rows"
    for r in rows:
        assert r["claim"] == cid
        assert r["kind"] in ("check", "measured")
        assert r["passed"], r
    if cid != "C8":  # C8 is a census: measured rows only
        assert any(r["kind"] == "check" for r in rows)
    stem = {"C4": "c4_two_tasks", "C6": "c6_adaptation_rate", "C8": "c8_landscape_census"}[cid]
    for ext in ("png", "pdf"):
        path = out / f"{stem}_tiny.{ext}"   # a tiny run never takes a full figure's name
        assert path.exists() and path.stat().st_size > 1000, path


@pytest.mark.parametrize("cid", ["C4", "C6"])
def test_tolerances_are_no_looser_than_their_derivation(tiny_runs, cid):
    """Each check row's tolerance recomputed from its inputs (independently of the library) and
    held to its rule's limits (see helpers.check_row_tolerances)."""
    rows = tiny_runs[1]["rows"][cid]
    assert check_row_tolerances(rows) == sum(r["kind"] == "check" for r in rows)


def test_c6_constants_and_c4_derivatives_are_checks(tiny_runs):
    """C6's constant against sigma^2 dof / n (theory.predicted_finetune_error) is a check with a
    band from the seeds, at (d0, k0) and at every (d, k) of the sweeps; C4 checks the landscape's
    closed-form derivatives."""
    rows = tiny_runs[1]["rows"]["C6"]
    hit = [r for r in rows if "predicted_finetune_error" in r["quantity"]
           or "at every (d, k)" in r["quantity"]]
    assert len(hit) >= 3 and all(r["kind"] == "check" for r in hit)
    assert all(r["tolerance_rule"] == "seeds" for r in hit)
    c4_rows = tiny_runs[1]["rows"]["C4"]
    assert any("landscape.gradient" in r["quantity"] and r["kind"] == "check" for r in c4_rows)
