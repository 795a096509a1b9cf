"""Meta-LoRA retraining: claims C3 (recovery, T >= 3), C4 (T = 2), C5 (T = 1); solvers against
independent computations (NumPy loop over raw samples, jax.grad of the raw-sample loss)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import linmeta
from linmeta.core import metrics, theory
from linmeta import methods as retrain
from linmeta.methods import reference
import importlib

ml_mod = importlib.import_module("linmeta.retrain.meta_lora")
mf_mod = importlib.import_module("linmeta.retrain._matrix_free")

from helpers import count_compiles


@settings(max_examples=6)
@given(st.sampled_from([(6, 1, 3), (6, 2, 3), (7, 2, 4), (9, 3, 3)]), st.integers(0, 10 ** 6))
def test_population_recovery_T_at_least_3(shape, seed):
    d, k, T = shape
    truth = linmeta.sample_truth(jax.random.key(seed), d, k, T)
    res = linmeta.meta_lora(linmeta.population(truth), k, key=jax.random.key(seed + 1), n_starts=4)
    assert float(res.objective) < 1e-20
    assert float(metrics.base_error(res.base, truth.A_star, relative=True)) < 1e-6
    assert float(jnp.max(metrics.adapter_error(res.adapters, truth.U_star, relative=True))) < 1e-6
    # U_t = U*_t Q_t with Q_t orthogonal: Procrustes distance ~ 0
    assert float(jnp.max(metrics.procrustes_distance(res.adapters, truth.U_star))) < 1e-6


@settings(max_examples=4)
@given(st.sampled_from([(6, 1), (8, 2)]), st.integers(0, 10 ** 6))
def test_two_tasks_zero_loss_low_rank_error(shape, seed):
    d, k = shape
    truth = linmeta.sample_truth(jax.random.key(seed), d, k, 2, n_unseen=1)
    res = linmeta.meta_lora(linmeta.population(truth), k, key=jax.random.key(seed + 1), n_starts=4)
    assert float(res.objective) < 1e-20
    D = res.base - truth.A_star
    rank = int(metrics.numerical_rank(D, rtol=1e-8))
    assert 0 < rank <= 2 * k
    residual = truth.M_new[0] - res.base
    assert float(theory.lora_bias(residual, 3 * k)) < 1e-10
    assert float(theory.lora_bias(residual, k)) > 1e-6


def test_hyperbolic_family_is_a_set_of_global_minima():
    # k = 1, U*_1 = e1, U*_2 = e2; u1 = cosh e1 + sinh e2, u2 = sinh e1 + cosh e2
    d = 4
    e = np.eye(d)
    R = np.stack([np.outer(e[0], e[0]), np.outer(e[1], e[1])])
    for th in (-1.0, 0.0, 0.3, 1.5):
        u1 = np.cosh(th) * e[0] + np.sinh(th) * e[1]
        u2 = np.sinh(th) * e[0] + np.cosh(th) * e[1]
        U = jnp.asarray(np.stack([u1, u2])[:, :, None])
        G = retrain.population_reduced_objective(U, jnp.asarray(R))
        assert float(G) < 1e-24
        truth = linmeta.Truth(np.zeros((d, d)), np.stack([e[0], e[1]])[:, :, None])
        A = retrain.optimal_base(U, linmeta.population(truth))
        assert int(metrics.numerical_rank(A, rtol=1e-10)) <= 2
        assert (float(jnp.linalg.norm(A)) > 0.1) == (th != 0.0)


def test_single_task_does_not_recover():
    truth = linmeta.sample_truth(jax.random.key(3), 6, 1, 1)
    pop = linmeta.population(truth)
    res = linmeta.meta_lora(pop, 1, key=jax.random.key(4), n_starts=4)
    assert float(res.objective) < 1e-20  # everything is a global minimiser
    assert float(metrics.base_error(res.base, truth.A_star, relative=True)) > 1e-3
    np.testing.assert_allclose(res.base, truth.M_star[0] - res.adapters[0] @ res.adapters[0].T,
                               atol=1e-12)
    sr = linmeta.standard_retraining(pop)  # SR = A* + R*_1 is one of the minimisers
    assert float(sr.objective) < 1e-24


def test_reduced_objective_is_G_over_T_and_base_is_optimal():
    truth = linmeta.sample_truth(jax.random.key(5), 5, 2, 3)
    pop = linmeta.population(truth, noise_std=0.4)
    U = jax.random.normal(jax.random.key(6), (3, 5, 2))
    G = retrain.population_reduced_objective(U, truth.R_star)
    # independent NumPy form of G
    E = np.asarray(truth.R_star) - np.einsum("tik,tjk->tij", np.asarray(U), np.asarray(U))
    G_np = 0.5 * np.sum((E - E.mean(0)) ** 2)
    np.testing.assert_allclose(G, G_np, rtol=1e-12)
    np.testing.assert_allclose(retrain.reduced_objective(U, pop), G / 3, rtol=1e-10)
    A = retrain.optimal_base(U, pop)
    gA = jax.grad(retrain.meta_lora_objective)(A, U, pop)
    np.testing.assert_allclose(gA, 0.0, atol=1e-12)
    np.testing.assert_allclose(A, truth.A_star + jnp.mean(-E, axis=0) * -1, atol=1e-12)


@given(st.sampled_from([(4, 1, 2), (5, 2, 3)]), st.integers(0, 10 ** 6))
def test_gradients_match_autodiff_of_raw_sample_loss(shape, seed):
    d, k, T = shape
    truth = linmeta.sample_truth(jax.random.key(seed), d, k, T)
    smp = linmeta.draw_samples(jax.random.key(seed + 1), truth, 12, 0.2)
    stats = linmeta.task_statistics(smp)
    A = jax.random.normal(jax.random.key(seed + 2), (d, d))
    U = jax.random.normal(jax.random.key(seed + 3), (T, d, k))

    def raw(A, U):  # (1/T) sum_t 1/(2N) sum_i ||y - (A + U_t U_t^T) x||^2, on raw samples
        M = A + U @ jnp.swapaxes(U, 1, 2)
        R = jnp.einsum("tij,tnj->tni", M, smp.X) - smp.Y
        return jnp.mean(0.5 * jnp.sum(R * R, axis=(1, 2)) / smp.X.shape[1])

    gA, gU = jax.grad(raw, argnums=(0, 1))(A, U)
    np.testing.assert_allclose(retrain.meta_lora_objective(A, U, stats), raw(A, U), rtol=1e-10)
    sA, sU = jax.grad(retrain.meta_lora_objective, argnums=(0, 1))(A, U, stats)
    np.testing.assert_allclose(sA, gA, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(sU, gU, rtol=1e-9, atol=1e-11)
    # the hand-written update of joint_gd_step is a gradient step
    A1, U1 = retrain.joint_gd_step(A, U, stats, 0.1, 0.2)
    np.testing.assert_allclose(A1, A - 0.2 * gA, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(U1, U - 0.1 * gU, rtol=1e-9, atol=1e-11)


def test_alternating_protocol_matches_numpy_loop_step_for_step():
    d, k, T, N = 6, 2, 3, 60
    truth = linmeta.sample_truth(jax.random.key(7), d, k, T)
    smp = linmeta.draw_samples(jax.random.key(8), truth, N, 0.1)
    stats = linmeta.task_statistics(smp)
    U0 = 0.1 * jax.random.normal(jax.random.key(9), (T, d, k))
    steps = 40
    res = linmeta.meta_lora(stats, k, method="alternating", U0=U0, outer_steps=steps)
    A, U, hist = reference.alternating_protocol(np.asarray(smp.X), np.asarray(smp.Y),
                                                np.asarray(U0), outer_steps=steps, record=True)
    scale_A, scale_U = np.abs(A).max(), np.abs(U).max()
    assert np.abs(np.asarray(res.base) - A).max() / scale_A < 1e-8
    assert np.abs(np.asarray(res.adapters) - U).max() / scale_U < 1e-8
    # every outer iteration: the recorded objective equals the NumPy iterate's objective
    X, Y = np.asarray(smp.X), np.asarray(smp.Y)
    B = np.asarray(linmeta.losses.ols_solution(stats))
    Sxx = np.asarray(stats.Sxx)

    def excess(A, U):
        D = A + U @ U.transpose(0, 2, 1) - B
        return np.mean(0.5 * np.einsum("tij,tjk,tik->t", D, Sxx, D))

    ref_hist = np.array([excess(np.zeros((d, d)), np.asarray(U0))] + [excess(a, u) for a, u in hist])
    np.testing.assert_allclose(res.history.value, ref_hist, rtol=1e-8)


def test_finite_sample_error_is_linear_in_sigma_and_falls_as_N_to_the_minus_half():
    """Meta-LoRA's finite-N error (C7): to first order it is linear in the noise of the least-squares
    matrices, so on the same inputs and noise draw it doubles with sigma (up to O(sigma)); and
    N E||A_hat - A*||^2 is the same at N = 200 and 20000 (ratio 1 within a 99.9% band from the
    draws plus the O(d/N) correction at the smaller N)."""
    from scipy import stats

    d, k, T = 6, 1, 3
    truth = linmeta.sample_truth(jax.random.key(10), d, k, T)

    def err(key, N, sigma):
        st_ = linmeta.sample_tasks(key, truth, N, sigma)   # same key: same x and noise draw
        res = linmeta.meta_lora(st_, 1, key=jax.random.key(11), n_starts=4)
        return metrics.base_error(res.base, truth.A_star)

    e1, e2 = (float(err(jax.random.key(3), 2000, s)) for s in (0.01, 0.02))
    assert e2 / e1 == pytest.approx(2.0, abs=0.02)
    S = 24
    m = []
    for N in (200, 20000):
        e = jax.jit(jax.vmap(lambda kk: err(kk, N, 0.1)))(jax.random.split(jax.random.key(N), S))
        m.append(N * np.asarray(e) ** 2)
    a, b = m
    ratio = a.mean() / b.mean()
    se = ratio * np.sqrt(a.var(ddof=1) / (S * a.mean() ** 2) + b.var(ddof=1) / (S * b.mean() ** 2))
    tol = stats.t.ppf(1 - 0.0005, S - 1) * se + 2 * d / 200
    assert abs(ratio - 1) <= tol, (ratio, tol)


def test_newton_compiles_once_per_shape():
    kernel = ml_mod._newton_kernel
    t1 = linmeta.sample_truth(jax.random.key(12), 5, 1, 3)
    t2 = linmeta.sample_truth(jax.random.key(13), 5, 1, 3)
    p1, p2 = linmeta.population(t1), linmeta.population(t2, 0.3)
    k1, k2 = jax.random.key(1), jax.random.key(2)
    linmeta.meta_lora(p1, 1, key=k1, n_starts=3)  # warm up this shape
    before = kernel._cache_size()
    with count_compiles() as n:
        linmeta.meta_lora(p2, 1, key=k2, n_starts=3, ftol=1e-20)
        linmeta.meta_lora(p1, 1, key=k2, n_starts=3, gtol=1e-10)
    assert kernel._cache_size() == before
    assert n() == 0


def test_alternating_learning_rates_are_traced():
    kernel = ml_mod._gd_kernel
    t = linmeta.sample_truth(jax.random.key(14), 4, 1, 3)
    p = linmeta.population(t)
    linmeta.meta_lora(p, 1, key=jax.random.key(0), method="alternating", outer_steps=5)
    before = kernel._cache_size()
    for lr in (0.001, 0.002, 0.004):
        linmeta.meta_lora(p, 1, key=jax.random.key(0), method="alternating", outer_steps=5,
                          lr_adapter=lr, lr_base=10 * lr)
    assert kernel._cache_size() == before


def test_float32_pipeline():
    truth = linmeta.sample_truth(jax.random.key(15), 6, 1, 3, dtype=jnp.float32)
    pop = linmeta.population(truth)
    res = linmeta.meta_lora(pop, 1, key=jax.random.key(16), n_starts=4)
    assert res.base.dtype == jnp.float32 and res.adapters.dtype == jnp.float32
    assert float(metrics.base_error(res.base, truth.A_star, relative=True)) < 1e-4
    sr = linmeta.standard_retraining(pop)
    assert sr.base.dtype == jnp.float32
    want = theory.sr_population(truth.A_star, truth.U_star)
    np.testing.assert_allclose(sr.base, want, atol=1e-5)
    res64 = linmeta.meta_lora(linmeta.population(linmeta.sample_truth(jax.random.key(15), 6, 1, 3)),
                              1, key=jax.random.key(16), n_starts=1)
    assert res64.base.dtype == jnp.float64


@pytest.mark.parametrize("kwargs, word", [
    (dict(rank=0), "rank"), (dict(rank=7), "rank"), (dict(rank=1, method="sgd"), "method"),
    (dict(rank=1, U0=np.zeros((2, 6, 1))), "U0"), (dict(rank=1, n_starts=0), "n_starts"),
    (dict(rank=1, method="alternating", lr_adapter=-1.0), "lr_adapter"),
    (dict(rank=1, method="alternating", outer_steps=-3), "outer_steps"),
    (dict(rank=1, init_scale=0.0), "init_scale"),
])
def test_bad_input(kwargs, word):
    pop = linmeta.population(linmeta.sample_truth(jax.random.key(0), 6, 1, 3))
    rank = kwargs.pop("rank")
    with pytest.raises(ValueError, match=word):
        linmeta.meta_lora(pop, rank, key=jax.random.key(0), **kwargs)
    with pytest.raises(ValueError, match="key"):
        linmeta.meta_lora(pop, 1)
    with pytest.raises(ValueError, match="source"):
        linmeta.meta_lora(np.eye(3), 1, key=jax.random.key(0))


def test_gradient_methods_descend_towards_recovery():
    truth = linmeta.sample_truth(jax.random.key(17), 5, 1, 3)
    pop = linmeta.population(truth)
    key = jax.random.key(18)
    red = linmeta.meta_lora(pop, 1, key=key, method="reduced_gd", steps=3000, lr_adapter=0.01,
                            record_every=1000)
    joint = linmeta.meta_lora(pop, 1, key=key, method="joint_gd", steps=3000, lr_adapter=0.05,
                              lr_base=0.05, record_every=1000)
    for res in (red, joint):
        v = np.asarray(res.history.value)
        assert np.all(np.diff(v) < 0) and v[-1] < 1e-3 * v[0]
    # reduced_gd keeps the base at its optimum A(U)
    np.testing.assert_allclose(red.base, retrain.optimal_base(red.adapters, pop), atol=1e-12)


def test_public_functions_work_inside_jit_with_captured_arrays():
    truth = linmeta.sample_truth(jax.random.key(19), 5, 1, 3)
    src = linmeta.population(truth)  # concrete, captured by the closure below

    @jax.jit
    def fit(key):
        return linmeta.meta_lora(src, 1, key=key, n_starts=4).base

    np.testing.assert_allclose(fit(jax.random.key(0)), truth.A_star, atol=1e-10)


# ---------------------------------------------------- the matrix-free solver (L-BFGS) and the switch

LB = (8, 2, 3)  # (d, k, T) of the small L-BFGS tests (3k <= d): one shape, shared compiled programs


def test_population_form_is_the_reduced_objective():
    # exact: the structured population objective (no pseudo-inverse) equals the general one
    d, k, T = LB
    truth = linmeta.sample_truth(jax.random.key(30), d, k, T)
    pop = linmeta.population(truth, noise_std=0.3)
    U = jax.random.normal(jax.random.key(31), (T, d, k))
    C = mf_mod.centred_task_matrices(pop.Syx)
    np.testing.assert_allclose(retrain.population_reduced_objective(U, C) / T,
                               retrain.reduced_objective(U, pop), rtol=1e-12)
    # its written-out gradient against autodiff of the general form, also for S_yx that are not
    # symmetric after centring (statistics with S_xx = I that no Truth produced)
    for Syx in (pop.Syx, jax.random.normal(jax.random.key(32), pop.Syx.shape)):
        src = pop._replace(Syx=Syx)
        f, g = jax.value_and_grad(mf_mod.population_excess)(U, mf_mod.centred_task_matrices(Syx))
        np.testing.assert_allclose(f, retrain.reduced_objective(U, src), rtol=1e-12)
        np.testing.assert_allclose(g, jax.grad(retrain.reduced_objective)(U, src), rtol=1e-10,
                                   atol=1e-12)
    assert ml_mod._is_population(pop)
    assert not ml_mod._is_population(pop._replace(Sxx=pop.Sxx.at[1, 0, 0].set(1.5)))


@settings(max_examples=2)
@given(st.integers(0, 10 ** 6))
def test_lbfgs_agrees_with_newton_at_the_population(seed):
    d, k, T = LB
    truth = linmeta.sample_truth(jax.random.key(seed), d, k, T)
    pop = linmeta.population(truth)
    key = jax.random.key(seed + 1)
    lb = linmeta.meta_lora(pop, k, key=key, method="lbfgs", n_starts=4)
    nt = linmeta.meta_lora(pop, k, key=key, method="newton", n_starts=4)
    assert float(metrics.base_error(lb.base, nt.base, relative=True)) < 1e-10
    assert float(metrics.base_error(lb.base, truth.A_star, relative=True)) < 1e-10
    assert float(jnp.max(metrics.adapter_error(lb.adapters, truth.U_star, relative=True))) < 1e-8
    np.testing.assert_allclose(lb.base, retrain.optimal_base(lb.adapters, pop), atol=1e-12)
    v = np.asarray(lb.history.value)
    v = v[np.isfinite(v)]  # the best value so far: never rises (beyond rounding)
    assert lb.history.step.shape == (5001,) and np.all(np.diff(v) <= 1e-14 * v[:-1])


def test_lbfgs_at_finite_N_agrees_with_newton_and_the_general_form():
    d, k, T = LB
    truth = linmeta.sample_truth(jax.random.key(33), d, k, T)
    rng = np.random.default_rng(34)  # N = 60 samples per task, y = M*_t x + 0.1 eps
    X = rng.standard_normal((T, 60, d))
    Y = X @ np.swapaxes(np.asarray(truth.M_star), 1, 2) + 0.1 * rng.standard_normal((T, 60, d))
    smp = linmeta.stats_from_arrays(X, Y, truth.M_star)
    assert not ml_mod._is_population(smp)
    key = jax.random.key(35)
    lb = linmeta.meta_lora(smp, k, key=key, method="lbfgs", n_starts=4)
    nt = linmeta.meta_lora(smp, k, key=key, method="newton", n_starts=4)
    assert float(metrics.base_error(lb.base, nt.base, relative=True)) < 1e-10
    np.testing.assert_allclose(lb.objective, nt.objective, rtol=1e-10)
    # population statistics through the general (pseudo-inverse) form: the same minimiser
    pop = linmeta.population(truth)
    U0 = 0.1 * jax.random.normal(jax.random.key(36), (4, T, d, k))
    tol = [jnp.asarray(x) for x in (1e-26, 1e-14, 1e-28)]
    general = ml_mod._lbfgs_kernel(pop, U0, *tol, max_iter=5000, population=False,
                                   start_batch=4)[0]
    structured = ml_mod._lbfgs_kernel(pop, U0, *tol, max_iter=5000, population=True,
                                      start_batch=4)[0]
    assert float(metrics.base_error(general.base, structured.base, relative=True)) < 1e-10


def test_default_method_recovers_at_a_mid_size():
    d, k, T = 64, 4, 3  # T d r = 768 unknowns: above the Newton switch
    assert retrain.default_solver(T, d, k) == "lbfgs"
    truth = linmeta.sample_truth(jax.random.key(37), d, k, T)
    res = linmeta.meta_lora(linmeta.population(truth), k, key=jax.random.key(38))
    assert res.history.step.shape == (5001,)  # the L-BFGS history (Newton's has 201)
    assert float(metrics.base_error(res.base, truth.A_star, relative=True)) < 1e-10
    assert float(res.objective) < 1e-20


def test_lbfgs_compiles_once_per_shape():
    d, k, T = LB
    pops = [linmeta.population(linmeta.sample_truth(jax.random.key(s), d, k, T)) for s in (40, 41)]
    linmeta.meta_lora(pops[0], k, key=jax.random.key(0), method="lbfgs", n_starts=4)
    with count_compiles() as n:  # tolerances are traced
        linmeta.meta_lora(pops[1], k, key=jax.random.key(1), method="lbfgs", n_starts=4,
                          ftol=1e-24, gtol=1e-12, rtol=1e-27)
        linmeta.meta_lora(pops[0], k, key=jax.random.key(2), method="lbfgs", n_starts=4)
    assert n() == 0


def test_lbfgs_float32_with_starts_in_batches(monkeypatch):
    d, k, T = LB
    # a memory budget for two starts at a time: the four starts run in two batches
    shared = retrain.solver_memory("lbfgs", T, d, k, 0, itemsize=4)
    per = retrain.solver_memory("lbfgs", T, d, k, 1, itemsize=4) - shared
    monkeypatch.setattr(ml_mod, "memory_budget", lambda: shared + 2 * per + 1)
    assert ml_mod.lbfgs_start_batch(T, d, k, 4, itemsize=4) == 2
    truth = linmeta.sample_truth(jax.random.key(42), d, k, T, dtype=jnp.float32)
    res = linmeta.meta_lora(linmeta.population(truth), k, key=jax.random.key(43),
                            method="lbfgs", n_starts=4)
    assert res.base.dtype == jnp.float32 and res.adapters.dtype == jnp.float32
    assert res.start_objectives.shape == (4,)
    # float32: the objective stops near rtol = 1e-10 of its scale (rounding floor ~ eps^2)
    assert float(metrics.base_error(res.base, truth.A_star, relative=True)) < 1e-3


def test_switch_rule_and_refusals(monkeypatch):
    assert retrain.default_solver(3, 8, 2) == "newton"
    assert retrain.default_solver(3, 86, 1) == "lbfgs"  # 258 unknowns > 256
    assert retrain.default_solver(8, 256, 4) == "lbfgs"
    # Newton past its size limit: refused before any work, naming the solver that fits
    eye = np.broadcast_to(np.eye(700), (3, 700, 700))  # 3 * 700 * 1 = 2100 unknowns
    big = linmeta.TaskStats(eye, eye, np.full(3, 700.0), np.full(3, np.inf), eye, np.zeros(3))
    with pytest.raises(ValueError, match=r"method='newton'.*2100.*use method='lbfgs'"):
        linmeta.meta_lora(big, 1, key=jax.random.key(0), method="newton")
    small = linmeta.population(linmeta.sample_truth(jax.random.key(0), *LB))
    with pytest.raises(ValueError, match="rtol"):
        linmeta.meta_lora(small, 2, key=jax.random.key(0), method="lbfgs", rtol=-1.0)
    with pytest.raises(ValueError, match="max_iter"):
        linmeta.meta_lora(small, 2, key=jax.random.key(0), method="lbfgs", max_iter=0)
    # past the memory budget: Newton refused (use lbfgs); auto picks lbfgs; lbfgs refused only
    # when one start does not fit
    newton_need = retrain.solver_memory("newton", 3, 8, 2, 8)
    monkeypatch.setattr(ml_mod, "memory_budget", lambda: newton_need - 1)
    with pytest.raises(ValueError, match=r"GiB|MiB.*use method='lbfgs'"):
        linmeta.meta_lora(small, 2, key=jax.random.key(0), method="newton")
    assert retrain.default_solver(3, 8, 2) == "lbfgs"
    monkeypatch.setattr(ml_mod, "memory_budget", lambda: 1000)
    with pytest.raises(ValueError, match="method='lbfgs'.*no Meta-LoRA solver fits"):
        linmeta.meta_lora(small, 2, key=jax.random.key(0))


CMP = (64, 4, 3)  # (d, k, T) of the mid-size test: the span of the centred task matrices has
# m = T k = 12 <= d / 2; 8 starts as there, so that the compressed solver compiles once


@pytest.mark.parametrize("dtype, tol", [(jnp.float64, 1e-10), (jnp.float32, 2e-3)])
def test_compressed_population_solve_is_the_full_space_solve(dtype, tol):
    d, k, T = CMP
    truth = linmeta.sample_truth(jax.random.key(50), d, k, T, dtype=dtype)
    pop = linmeta.population(truth)
    U0 = jax.vmap(lambda kk: linmeta.lora.init_factor(kk, (T, d, k), 0.1, dtype))(
        jax.random.split(jax.random.key(51), 8))
    args = (1e-26, 1e-14, mf_mod.default_rtol(dtype))
    run = ml_mod.lbfgs_run(pop, U0, *args, max_iter=5000)
    assert run.span_dim == T * k and run.result.base.dtype == dtype
    full = ml_mod._lbfgs_kernel(pop, U0, *[jnp.asarray(a, dtype) for a in args], max_iter=5000,
                                population=True, start_batch=8)[0]
    for res in (run.result, full):
        assert float(metrics.base_error(res.base, truth.A_star, relative=True)) < tol
    assert float(metrics.base_error(run.result.base, full.base, relative=True)) < tol
    # the reported objective is the full-space objective at the lifted adapters
    C = mf_mod.centred_task_matrices(pop.Syx)
    f_full = float(mf_mod.population_excess(run.result.adapters, C))
    scale = float(mf_mod.population_excess(jnp.zeros_like(run.result.adapters), C))
    assert abs(float(run.result.objective) - f_full) <= 10 * float(jnp.finfo(dtype).eps) * scale
    np.testing.assert_allclose(run.result.base, retrain.optimal_base(run.result.adapters, pop),
                               atol=tol * float(jnp.max(jnp.abs(truth.A_star))))


def test_compression_only_where_exact():
    d, k, T = CMP
    truth = linmeta.sample_truth(jax.random.key(52), d, k, T)
    pop = linmeta.population(truth)
    Q, K, rest = ml_mod.population_basis(pop, k)
    assert Q.shape == (d, T * k) and float(jnp.max(rest)) < 1e-20 * float(jnp.sum(pop.Syx ** 2))
    np.testing.assert_allclose(Q.T @ Q, np.eye(T * k), atol=1e-12)
    # a full-rank part in every task: the centred matrices span all of R^d; no compression,
    # the full-space path runs and still finds the minimiser
    noise = 1e-3 * jax.random.normal(jax.random.key(53), (T, d, d))
    rough = pop._replace(Syx=pop.Syx + noise + jnp.swapaxes(noise, 1, 2))
    assert ml_mod.population_basis(rough, k) is None
    U0 = 0.1 * jax.random.normal(jax.random.key(54), (8, T, d, k))  # the shapes of the test above
    run = ml_mod.lbfgs_run(rough, U0, 1e-26, 1e-14, 1e-28, max_iter=5000)
    assert run.span_dim == d and np.isfinite(float(run.result.objective))
    # rank deficient beyond rounding but not exactly low-rank: a tiny full-rank part is refused
    tiny = pop._replace(Syx=pop.Syx + 1e-9 * (noise + jnp.swapaxes(noise, 1, 2)))
    assert ml_mod.population_basis(tiny, k) is None


def test_large_population_refused_before_it_starts(monkeypatch):
    d, k, T = CMP
    pop = linmeta.population(linmeta.sample_truth(jax.random.key(55), d, k, T))
    need = mf_mod.compression_memory(T, d, mf_mod.sketch_width(T, d, k))
    monkeypatch.setattr(ml_mod, "memory_budget", lambda: need - 1)
    with pytest.raises(ValueError, match=r"needs ~[\d.]+ MiB to compress.*over the memory budget"):
        linmeta.meta_lora(pop, k, key=jax.random.key(0))
    # finite N in low-rank form (forced at d = 8): refused past the budget, naming n_starts
    d, k, T = LB
    smp = linmeta.sample_tasks(jax.random.key(61), linmeta.sample_truth(jax.random.key(62), d, k,
                                                                        T), 60, 0.1)
    monkeypatch.setattr(ml_mod, "memory_budget",
                        lambda: ml_mod.finite_memory(T, d, k, 4) - 1)
    with pytest.raises(ValueError, match=r"finite N needs ~.* for 4 starts.*n_starts"):
        ml_mod.lbfgs_run(smp, jnp.zeros((4, T, d, k)), 1e-26, 1e-14, 1e-28, max_iter=10,
                         finite_lowrank=True)


def test_finite_N_low_rank_form_is_the_reduced_objective():
    # the O(T^2 r d^2) form used above DENSE_MAX_D, forced at d = 8: value, gradient and base
    # equal the pseudo-inverse form's; L-BFGS on it reaches the same minimiser
    d, k, T = LB
    truth = linmeta.sample_truth(jax.random.key(56), d, k, T)
    smp = linmeta.sample_tasks(jax.random.key(57), truth, 60, 0.1)
    parts = mf_mod.finite_parts(smp.Sxx, smp.Syx)
    assert bool(parts[-1])
    U = 0.5 * jax.random.normal(jax.random.key(58), (T, d, k))
    f = float(retrain.reduced_objective(U, smp))
    assert abs(float(mf_mod.finite_excess(U, parts)) - f) <= 1e-13 * f
    g = jax.grad(retrain.reduced_objective)(U, smp)
    np.testing.assert_allclose(jax.grad(mf_mod.finite_excess)(U, parts), g,
                               atol=1e-12 * float(jnp.max(jnp.abs(g))))
    np.testing.assert_allclose(mf_mod.finite_base(U, parts), retrain.optimal_base(U, smp),
                               atol=1e-12)
    U0 = 0.1 * jax.random.normal(jax.random.key(59), (4, T, d, k))  # 4 starts: the full-space
    args = (1e-26, 1e-14, 1e-28)                                     # kernel of the test above
    low = ml_mod.lbfgs_run(smp, U0, *args, max_iter=5000, finite_lowrank=True).result
    full = ml_mod.lbfgs_run(smp, U0, *args, max_iter=5000, finite_lowrank=False).result
    # (the low-rank form's values round at ~eps f(0), not eps f: the minimiser to ~1e-10)
    assert float(metrics.base_error(low.base, full.base, relative=True)) < 1e-9
    np.testing.assert_allclose(low.objective, full.objective, rtol=1e-10)
    # N < d: S_xx singular, the pieces are refused (the pseudo-inverse form runs instead)
    few = linmeta.sample_tasks(jax.random.key(60), truth, 5, 0.1)
    assert not bool(mf_mod.finite_parts(few.Sxx, few.Syx)[-1])


def test_lbfgs_keeps_the_smallest_gradient_among_rounding_equal_values():
    # f = 1 + a quadratic: near its minimiser the values stop resolving (1 + delta^2 rounds to
    # 1 once delta^2 < eps), and among the iterates with equal values the one with the smallest
    # gradient is kept, not the first that reached the rounding floor
    mf = importlib.import_module("linmeta.methods._matrix_free")
    c = jnp.asarray(np.random.default_rng(0).normal(size=6))
    A = jnp.asarray(np.diag(np.geomspace(1, 100, 6)))

    def f(x):
        return 1.0 + (x - c) @ A @ (x - c)

    x, fx, it, _, gn, _ = jax.jit(lambda x0: mf.lbfgs_minimise(f, x0, 500, -1.0, 0.0))(
        jnp.zeros(6))
    assert float(fx) == 1.0 and int(it) < 500
    assert float(gn) <= 1e-10, float(gn)
