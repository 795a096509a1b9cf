"""Bilevel retraining (linmeta.maml and linmeta.bilevel.methods): reductions to standard retraining
(M1), the exact inner solve (M2), the outer gradients (M3), divergence, validation, compilation,
float32. Each relation: a property test over random problems and an exact hand-built case."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import linmeta
from linmeta.families.bilevel import methods as maml_mod
from linmeta.families.bilevel import theory as bl_theory
from linmeta.families.bilevel.methods import (BilevelHyper, BilevelState, Factors, adapt,
                                              bilevel_excess, bilevel_objective,
                                              exact_bilevel_objective, inner_optimum,
                                              outer_gradients, split_support_query)
from linmeta.families.bilevel.claims import m3
from linmeta.families.bilevel.claims._grid import (numpy_population, numpy_split, numpy_truths,
                                                   task_matrices, to_jax)

from helpers import count_compiles, rel

# every linmeta.maml call below uses d=4, T=3 and these static settings, so that the tests share
# one compiled program per (method, adapter, dtype)
STEPS, LENGTH = 20, 6
COMMON = dict(outer_steps=STEPS, max_inner_steps=LENGTH)


def _problem(seed, d=4, k=1, T=3, finite=False, dtype=jnp.float64):
    """A Gaussian problem drawn with NumPy (no random-number kernel to compile): ``(M* (T,d,d)
    NumPy, population statistics)`` or, ``finite``, ``(M*, (support, query))`` of 6 + 6 samples."""
    rng = np.random.default_rng(seed)
    A, U, _ = numpy_truths(rng, 1, d, k, T)
    M = task_matrices(A, U)[0]
    if finite:
        return M, tuple(to_jax(x, dtype) for x in numpy_split(rng, M, 12, 0.1))
    return M, to_jax(numpy_population(M, 0.1), dtype)


def _lora(seed, d=4, r=1):
    """An explicit LoRA start (U ~ N(0, 0.01), V = 0) as keyword arguments of linmeta.maml."""
    U = 0.1 * np.random.default_rng(seed).standard_normal((d, r))
    return dict(U0=U, V0=np.zeros((d, r)))


def _hyper(alpha, K, beta=0.3, start_lr=0.0, train_v=1.0, dt=jnp.float64):
    return BilevelHyper(jnp.asarray(alpha, dt), jnp.asarray(beta, dt), jnp.asarray(start_lr, dt),
                        jnp.asarray(K, jnp.int32), jnp.asarray(train_v, dt))


# ----------------------------------------------------------------------------- M1: K = 0 is SR
@settings(max_examples=4)
@given(st.integers(0, 10 ** 6), st.booleans())
def test_k0_maml_and_fomaml_are_sr_gradient_descent(seed, finite):
    _, stats = _problem(seed, finite=finite)
    sup, qry = stats if finite else (stats, stats)
    sr = linmeta.standard_retraining(qry, method="gd", steps=STEPS, lr=0.4, record_every=1)
    for method in ("maml", "fomaml"):
        res = linmeta.maml(sup, 1, query=qry, method=method, inner_steps=0, outer_lr=0.4,
                           **_lora(seed), **COMMON)
        assert rel(res.base, sr.base) < 1e-12
        assert rel(res.history.value, sr.history.value) < 1e-12   # every step


def test_k0_hand_built():
    # population, d = 4, T = 3: SR gradient descent from 0 is A_j = (1 - (1-b)^j) mean_t M*_t
    A = np.diag([1.0, -1.0, 0.5, 0.0])
    U = np.zeros((3, 4, 1))
    U[0, 0, 0], U[1, 1, 0], U[2, :2, 0] = 1.0, 2.0, [1.0, 1.0]
    M = A + U @ np.swapaxes(U, 1, 2)
    res = linmeta.maml(to_jax(numpy_population(M)), 1, inner_steps=0, outer_lr=0.25, **_lora(0),
                       **COMMON)
    Mbar = M.mean(axis=0)
    np.testing.assert_allclose(res.base, (1 - 0.75 ** STEPS) * Mbar, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("adapter", ["symmetric", "asymmetric"])
def test_start_that_cannot_move_equals_k0(adapter):
    _, pop = _problem(3)
    kw = dict(adapter=adapter, start="zero", outer_lr=0.3, inner_lr=0.1, **COMMON)
    r0 = linmeta.maml(pop, 1, inner_steps=0, **kw)
    r6 = linmeta.maml(pop, 1, inner_steps=LENGTH, **kw)
    np.testing.assert_array_equal(r0.base, r6.base)
    assert float(jnp.max(jnp.abs(r6.adapters.adapted.U))) == 0.0


def test_k0_with_a_learned_start_is_not_sr():
    # the learned start's gradient (G V, G^T U) moves V off 0 at the first outer step: from the
    # second step on Delta(theta_start) != 0 and the run leaves SR's (K = 0 equals SR only with a
    # fixed start)
    _, (sup, qry) = _problem(11, finite=True)
    sr = linmeta.standard_retraining(qry, method="gd", steps=STEPS, lr=0.4, record_every=1)
    fixed = linmeta.maml(sup, 1, query=qry, inner_steps=0, outer_lr=0.4, **_lora(11), **COMMON)
    learned = linmeta.maml(sup, 1, query=qry, inner_steps=0, outer_lr=0.4, learn_start=True,
                           start_lr=0.05, **_lora(11), **COMMON)
    assert rel(fixed.base, sr.base) < 1e-12
    assert rel(learned.history.value[:1], sr.history.value[:1]) < 1e-12  # at the start
    assert rel(learned.base, sr.base) > 1e-6      # (the first base step is SR's: claim M1's row)


@pytest.mark.parametrize("method, alpha, step", [
    ("maml", 1.0, 0.0),            # alpha = 1: the inner loop fits every task, F_K = 0: still
    ("reptile", 1.0, 0.5),         # ... but Reptile moves with the full step beta
    ("fomaml", 1.5, -0.0625),      # 1 < alpha < 2, K odd: beta (1 - alpha)^K < 0, ascent
])
def test_plain_bilevel_where_the_step_vanishes_is_full_or_negative(method, alpha, step):
    M, pop = _problem(4)
    res = linmeta.maml(pop, 4, method=method, adapter="full", start="zero", inner_steps=3,
                       inner_lr=alpha, outer_lr=0.5, record_every=1, **COMMON)
    assert float(bl_theory.full_rank_sr_step(method, 0.5, alpha, 3)) == pytest.approx(step)
    Mbar = M.mean(axis=0)                                   # SR's minimiser A* + Rbar
    # SR gradient descent from 0 with step s: A_N = (1 - (1 - s)^N) Mbar
    np.testing.assert_allclose(res.base, (1 - (1 - step) ** STEPS) * Mbar, rtol=1e-12,
                               atol=1e-14)
    dist = np.linalg.norm(np.asarray(res.base) - Mbar) / np.linalg.norm(Mbar)
    assert dist == pytest.approx(abs(1 - step) ** STEPS, rel=1e-12)   # > 1: repelled (step < 0)


@settings(max_examples=3)
@given(st.integers(0, 10 ** 6), st.sampled_from([0.05, 0.2]), st.sampled_from([1, 3]))
def test_plain_maml_is_sr_with_a_rescaled_step(seed, alpha, K):
    # the public entry point, step for step (the other methods: the step-level test above and
    # claim M1's rows)
    _, pop = _problem(seed)
    res = linmeta.maml(pop, 4, method="maml", adapter="full", start="zero", inner_steps=K,
                       inner_lr=alpha,
                       outer_lr=0.5, record_every=1, **COMMON)
    lr = bl_theory.full_rank_sr_step("maml", 0.5, alpha, K)
    sr = linmeta.standard_retraining(pop, method="gd", steps=STEPS, lr=lr, record_every=1)
    assert rel(res.base, sr.base) < 1e-12


def test_plain_maml_hand_built_keeps_sr_bias():
    # three equal tasks, A* = 0, M* = diag(2, 0, 0, 0): F_K(A) = (1-a)^2K 1/2 ||A - M*||^2, so
    # each MAML step is an SR step of size b (1-a)^(2K) = 1/16 (a = 1/2, K = 2, b = 1)
    U = np.zeros((3, 4, 1))
    U[:, 0, 0] = np.sqrt(2.0)
    M = U @ np.swapaxes(U, 1, 2)
    res = linmeta.maml(to_jax(numpy_population(M)), 4, adapter="full", inner_steps=2,
                       inner_lr=0.5, outer_lr=1.0, **COMMON)
    want = np.zeros((4, 4))
    want[0, 0] = 2.0 * (1 - (1 - 1 / 16) ** STEPS)
    np.testing.assert_allclose(res.base, want, atol=1e-15)


# ----------------------------------------------------------------------------- M2: exact inner
@jax.jit
def _profiles(M, A):
    """Exact inner solves and closed forms (rank 2) at the base A (not symmetric)."""
    pop = m3.population_stats(M)
    exact = jnp.stack([exact_bilevel_objective(A, pop, pop, 2, a)
                       for a in ("symmetric", "asymmetric")])
    closed = jnp.stack([bl_theory.profiled_objective(A, M, 2, a)
                        for a in ("symmetric", "asymmetric")])
    U = inner_optimum(A, pop, 2, "symmetric").U
    ml = linmeta.retrain.meta_lora_excess(A, U, pop)
    scale = jnp.mean(0.5 * jnp.sum((M - A) ** 2, axis=(-2, -1)))
    return exact, closed, ml, scale


def _profiles_for(seed, dtype=jnp.float64):
    rng = np.random.default_rng(seed)
    A, U, _ = numpy_truths(rng, 1, 5, 2, 3)
    return _profiles(*to_jax((task_matrices(A, U)[0], rng.standard_normal((5, 5))), dtype))


@settings(max_examples=6)
@given(st.integers(0, 10 ** 6))
def test_exact_inner_solve_is_the_profiled_objective(seed):
    exact, closed, ml, scale = (np.asarray(x) for x in _profiles_for(seed))
    assert np.max(np.abs(exact - closed)) < 1e-10 * scale
    assert closed[1] <= closed[0] + 1e-12 * scale         # U V^T is never worse than U U^T
    assert abs(ml - closed[0]) < 1e-10 * scale            # Meta-LoRA's objective at the optimum


@jax.jit
def _hand_profiles(M, A):
    pop = m3.population_stats(M)
    return [(exact_bilevel_objective(A, pop, pop, 1, a),
             bl_theory.profiled_objective(A, M, 1, a)) for a in ("symmetric", "asymmetric")]


def test_exact_inner_solve_hand_built():
    # A = 0, one task M* = diag(1, -3): the PSD rank-1 optimum keeps 1 (error 9), Eckart-Young
    # keeps -3 (error 1)
    M = np.diag([1.0, -3.0])[None]
    (se, sc), (ae, ac) = _hand_profiles(jnp.asarray(M), jnp.zeros((2, 2)))
    assert float(se) == pytest.approx(4.5) and float(sc) == pytest.approx(4.5)
    assert float(ae) == pytest.approx(0.5) and float(ac) == pytest.approx(0.5)
    # an independent solver on Meta-LoRA's objective: BFGS over U with A fixed
    from linmeta.families.bilevel.claims.m2 import minimise_over_adapters
    assert minimise_over_adapters(np.zeros((2, 2)), M, 1, seed=0) == pytest.approx(4.5, rel=1e-9)


def test_asymmetric_profile_strictly_smaller_iff_no_best_rank_r_approximation_is_psd():
    # a skew part alone does not decide: R = 5 e1 e1^T + 0.1 (e3 e4^T - e4 e3^T), r = 1: the best
    # rank-1 approximation 5 e1 e1^T is PSD, both profiles are 1/2 ||skew||^2 = 0.01
    from linmeta.families.bilevel.claims.m2 import best_rank_r_is_psd, profiles
    e = np.eye(5)
    R = 5 * np.outer(e[0], e[0]) + 0.1 * (np.outer(e[2], e[3]) - np.outer(e[3], e[2]))
    got = [float(bl_theory.profiled_objective(jnp.zeros((5, 5)), jnp.asarray(R[None]), 1, a))
           for a in ("symmetric", "asymmetric")]
    assert got == pytest.approx([0.01, 0.01], rel=1e-12)
    assert best_rank_r_is_psd(R, 1)
    # random residuals (NumPy closed forms, checked against the library's above): strictly
    # smaller exactly where the (unique) best rank-r approximation is not PSD
    rng = np.random.default_rng(0)
    seen = set()
    for i in range(16):
        G = rng.standard_normal((4, 4))
        R = [G, G @ G.T, G @ G.T + 0.3 * (G - G.T), -G @ G.T][i % 4]
        r = 1 + i % 2
        sym, asym = profiles(R, r)
        lib = [float(bl_theory.profiled_objective(jnp.zeros((4, 4)), jnp.asarray(R[None]), r, a))
               for a in ("symmetric", "asymmetric")]
        assert lib == pytest.approx([sym, asym], rel=1e-10, abs=1e-12)
        strictly = sym - asym > 1e-10 * (1 + sym)
        assert strictly == (not best_rank_r_is_psd(R, r))
        seen.add(strictly)
    assert seen == {True, False}
    with pytest.raises(ValueError, match="not unique"):
        best_rank_r_is_psd(np.eye(3), 1)


@jax.jit
def _unrolled_profiles(truth, z):
    """2000 inner steps (alpha = 0.2 / max_t ||M*_t - A||_2) at A* and at SR's base, both
    adapters, beside the closed form."""
    pop = linmeta.population(truth)
    out = []
    for A in (truth.A_star, jnp.mean(truth.M_star, axis=0)):
        alpha = 0.2 / jnp.max(jnp.linalg.norm(truth.M_star - A, ord=2, axis=(-2, -1)))
        h = _hyper(alpha, 2000)
        scale = jnp.mean(0.5 * jnp.sum((truth.M_star - A) ** 2, axis=(-2, -1)))
        for adapter, start in (("symmetric", Factors(z)), ("asymmetric", Factors(z, 0 * z))):
            got = bilevel_excess(A, start, pop, pop, h, adapter=adapter, length=2000)
            want = bl_theory.profiled_objective(A, truth.M_star, 1, adapter)
            out.append(jnp.abs(got - want) / scale)
    return jnp.stack(out)


def test_many_inner_steps_reach_the_exact_inner_solution():
    rng = np.random.default_rng(11)
    A, U, Un = numpy_truths(rng, 1, 5, 1, 3)
    truth = linmeta.Truth(A[0], U[0], Un[0])
    z = 0.1 * rng.standard_normal((5, 1))
    assert float(jnp.max(_unrolled_profiles(truth, jnp.asarray(z)))) < 1e-10


# ----------------------------------------------------------------------------- M3: gradients
@jax.jit
def _gradient_check(sup, qry, A, U, V, dA, dU, dV):
    """MAML's outer gradient (K = 3) against jax.grad of the library objective, jax.grad of the
    plain loop, and central differences along (dA, dU, dV) with steps h = 1e-4 and h/2 combined by
    Richardson extrapolation (the h^2 truncation term cancels: error O(h^4) + rounding
    O(eps / h), about 1e-12 relative; a plain central difference leaves O(h^2) terms that
    exceeded 1e-6 on some problems)."""
    K = 3
    h = _hyper(0.05, K, dt=A.dtype)
    g = outer_gradients(BilevelState(A, Factors(U, V)), sup, qry, h, method="maml",
                        adapter="asymmetric", length=K)

    def F(A, U, V):
        return bilevel_objective(A, Factors(U, V), sup, qry, h, adapter="asymmetric", length=K)

    def P(A, U, V):
        return m3.plain_loop_objective(A, U, V, sup.Sxx, sup.Syx, qry.Sxx, qry.Syx, 0.05, K)

    def central(hs):
        return (F(A + hs * dA, U + hs * dU, V + hs * dV)
                - F(A - hs * dA, U - hs * dU, V - hs * dV)) / (2 * hs)

    num = (4 * central(0.5e-4) - central(1e-4)) / 3
    ana = jnp.sum(g.base * dA) + jnp.sum(g.start.U * dU) + jnp.sum(g.start.V * dV)
    return ((g.base, g.start.U, g.start.V), jax.grad(F, argnums=(0, 1, 2))(A, U, V),
            jax.grad(P, argnums=(0, 1, 2))(A, U, V), num, ana)


def _gradient_inputs(seed, dtype=jnp.float64):
    """A random finite problem (d=4, T=2, 6 + 6 samples), base, rank-2 start and directions."""
    rng = np.random.default_rng(seed)
    A, U, _ = numpy_truths(rng, 1, 4, 1, 2)
    sup, qry = numpy_split(rng, task_matrices(A, U)[0], 12, 0.1)
    arrays = (0.5 * rng.standard_normal((4, 4)), 0.3 * rng.standard_normal((4, 2)),
              0.3 * rng.standard_normal((4, 2)), rng.standard_normal((4, 4)),
              rng.standard_normal((4, 2)), rng.standard_normal((4, 2)))
    return (to_jax(sup, dtype), to_jax(qry, dtype)) + tuple(to_jax(arrays, dtype))


@settings(max_examples=4)
@given(st.integers(0, 10 ** 6))
def test_maml_gradient_matches_autodiff_plain_loop_and_finite_differences(seed):
    lib, auto, plain, num, ana = _gradient_check(*_gradient_inputs(seed))
    for want in (auto, plain):
        for a, b in zip(lib, want):
            assert rel(a, b) < 1e-12
    assert abs(float(num - ana)) < 1e-8 * abs(float(ana))   # measured: <= 7e-11 over 41 seeds


@functools.partial(jax.jit, static_argnames=("dtype",))
def _all_outer_gradients(A, U, V, M, alpha, K, train_v, dtype=jnp.float64):
    """The three methods' outer gradients, named and as traced one-hot weights (population of
    the task matrices M, inner scan length 3); every array cast to ``dtype``."""
    A, U, V, M = (x.astype(dtype) for x in (A, U, V, M))
    stats = m3.population_stats(M)
    state = BilevelState(A, Factors(U, V))
    h = _hyper(alpha, K, train_v=train_v, dt=dtype)
    named = [outer_gradients(state, stats, stats, h, method=m, adapter="asymmetric", length=3)
             for m in ("maml", "fomaml", "reptile")]
    traced = [outer_gradients(state, stats, stats, h, method=jnp.eye(3, dtype=dtype)[i],
                              adapter="asymmetric", length=3) for i in range(3)]
    return named, traced


def _hand_built(dtype=jnp.float64):
    """The hand-built K = 1 case of claim M3, u padded to 3 columns (zero columns stay zero)."""
    A, M, u = m3.hand_built_problem(3)
    U = np.zeros((3, 3))
    U[:, :1] = u
    named, _ = _all_outer_gradients(A, U, np.zeros((3, 3)), M, 0.1, 1, 1.0, dtype)
    return named, m3.hand_built_formulas(A, M, u, 0.1), (A, M, u)


def test_outer_updates_hand_built_k1():
    named, want, (A, M, u) = _hand_built()
    for method, g in zip(("maml", "fomaml", "reptile"), named):
        got = (g.base, g.start.U[:, :1], g.start.V[:, :1])
        for a, b in zip(got, want[method]):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    # and by hand for one entry: u = (1, -2, 0.5), first order g_A = mean (I - aP)(A - M*)
    Im = np.eye(3) - 0.1 * np.outer(u[:, 0], u[:, 0])
    assert float(want["fomaml"][0][0, 0]) == pytest.approx(
        np.mean([(Im @ (A - M[t]))[0, 0] for t in range(2)]), rel=1e-14)


@pytest.mark.parametrize("alpha, K", [(0.1, 1), (0.3, 3)])
def test_plain_maml_step_is_a_rescaled_sr_step_for_every_method(alpha, K):
    # full-rank inner loop (U = W from 0, V = I fixed): g_A = c (A - mean_t M*_t)
    rng = np.random.default_rng(K)
    A, M = rng.standard_normal((3, 3)), rng.standard_normal((2, 3, 3))
    named, _ = _all_outer_gradients(A, np.zeros((3, 3)), np.eye(3), M, alpha, K, 0.0)
    for method, g in zip(("maml", "fomaml", "reptile"), named):
        c = bl_theory.full_rank_sr_step(method, 1.0, alpha, K)
        np.testing.assert_allclose(g.base, c * (A - M.mean(0)), rtol=1e-12, atol=1e-15)


def test_traced_method_weights_equal_the_named_methods():
    rng = np.random.default_rng(0)
    U = np.zeros((3, 3))
    U[:, 0] = 0.3 * rng.standard_normal(3)
    named, traced = _all_outer_gradients(np.zeros((3, 3)), U, np.zeros((3, 3)),
                                         rng.standard_normal((2, 3, 3)), 0.1, 3, 1.0)
    for a, b in zip(named, traced):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_allclose(x, y, rtol=1e-13, atol=1e-15)


@jax.jit
def _adapt_lengths(A, z, stats):
    start = Factors(z, jnp.zeros_like(z))
    return (adapt(A, start, stats, 0.1, 4, adapter="asymmetric", length=4),
            adapt(A, start, stats, 0.1, 4, adapter="asymmetric", length=9))


def test_masked_inner_steps_are_an_exact_identity():
    M, pop = _problem(5)
    a, b = _adapt_lengths(jnp.zeros((4, 4)), jnp.asarray(_lora(1)["U0"]) + 0.3, pop)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_support_query_split_and_samples_source():
    rng = np.random.default_rng(6)
    M = task_matrices(*numpy_truths(rng, 1, 4, 1, 3)[:2])[0]
    X = rng.standard_normal((3, 20, 4))
    smp = linmeta.Samples(X, X @ np.swapaxes(M, 1, 2) + 0.1 * rng.standard_normal(X.shape), M,
                          np.full(3, 0.1))
    sup, qry = split_support_query(smp, 8)
    want = linmeta.task_statistics(linmeta.Samples(smp.X[:, 8:], smp.Y[:, 8:], smp.M_star,
                                                   smp.noise_std))
    for a, b in zip(qry, want):
        np.testing.assert_array_equal(a, b)
    assert float(sup.n_samples[0]) == 8 and float(qry.n_samples[0]) == 12
    a = linmeta.maml(smp, 1, support=8, key=jax.random.key(2), inner_steps=2, **COMMON)
    b = linmeta.maml(sup, 1, query=qry, key=jax.random.key(2), inner_steps=2, **COMMON)
    np.testing.assert_array_equal(a.base, b.base)
    # a learned start moves (same compiled program: the start's step is traced)
    c = linmeta.maml(sup, 1, query=qry, key=jax.random.key(2), inner_steps=2, learn_start=True,
                     start_lr=0.1, **COMMON)
    assert float(jnp.max(jnp.abs(c.adapters.start.V))) > 0     # V started at 0
    np.testing.assert_array_equal(b.adapters.start.V, 0.0)


def test_divergence_names_the_step_size_and_iteration():
    _, pop = _problem(7)
    with pytest.raises(linmeta.DivergenceError) as e:
        linmeta.maml(pop, 1, inner_steps=LENGTH, inner_lr=2.0, **_lora(0), **COMMON)
    msg = str(e.value)
    assert "inner loop" in msg and "inner_lr=2" in msg and "iteration" in msg
    with pytest.raises(linmeta.DivergenceError) as e:
        linmeta.maml(pop, 1, inner_steps=0, outer_lr=5.0, **_lora(0), **COMMON)
    assert "outer_lr=5" in str(e.value) and "outer loop" in str(e.value)


@pytest.mark.parametrize("kwargs, word", [
    (dict(inner_steps=-1), "inner_steps"), (dict(inner_lr=-0.1), "inner_lr"),
    (dict(inner_lr=float("nan")), "inner_lr"), (dict(outer_lr=0.0), "outer_lr"),
    (dict(outer_lr=float("inf")), "outer_lr"), (dict(rank=0), "rank"), (dict(rank=5), "rank"),
    (dict(method="sgd"), "method"), (dict(adapter="lora"), "adapter"),
    (dict(adapter="full", rank=1), "rank"), (dict(adapter="symmetric", start="lora"), "start"),
    (dict(U0=np.zeros((3, 1)), V0=np.zeros((4, 1))), "U0"), (dict(key=None), "key"),
    (dict(learn_start="yes"), "learn_start"), (dict(outer_steps=-2), "outer_steps"),
    (dict(max_inner_steps=1, inner_steps=3), "max_inner_steps"), (dict(support=3), "support"),
])
def test_bad_arguments_name_themselves(kwargs, word):
    _, pop = _problem(8)
    kw = dict(rank=1, key=jax.random.key(0), outer_steps=3)
    kw.update(kwargs)
    with pytest.raises(ValueError) as e:
        linmeta.maml(pop, **kw)
    msg = str(e.value)
    assert word in msg and "\n" not in msg


@pytest.mark.parametrize("support", [0, 10, 25])
def test_support_larger_than_n_is_rejected(support):
    X = np.random.default_rng(0).standard_normal((3, 10, 4))
    smp = linmeta.Samples(X, X, np.zeros((3, 4, 4)), np.zeros(3))
    with pytest.raises(ValueError, match="support must be an integer in \\[1, N-1=9\\]"):
        linmeta.maml(smp, 1, support=support, key=jax.random.key(0))


def test_hyperparameters_are_traced_one_compile():
    kernel = maml_mod._kernel()
    _, pop = _problem(10)
    kw = dict(**_lora(0), **COMMON)
    linmeta.maml(pop, 1, inner_steps=6, **kw)
    before = kernel._cache_size()
    with count_compiles() as n:
        for alpha, beta, K in ((0.01, 0.1, 0), (0.02, 0.2, 3), (0.05, 0.05, 6)):
            linmeta.maml(pop, 1, inner_steps=K, inner_lr=alpha, outer_lr=beta, **kw)
    assert kernel._cache_size() == before
    assert n() == 0


def test_float32():
    M, pop = _problem(12, dtype=jnp.float32)
    res = linmeta.maml(pop, 1, inner_steps=0, **_lora(0), **COMMON)
    assert res.base.dtype == jnp.float32 and res.adapters.adapted.U.dtype == jnp.float32
    Mbar = M.mean(axis=0)                                             # M1 (K = 0: SR), 1e-5
    assert rel(res.base, (1 - 0.7 ** STEPS) * Mbar) < 1e-5
    exact, closed, ml, scale = _profiles_for(4, jnp.float32)          # M2, 1e-5
    assert exact.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(exact - closed))) < 1e-5 * float(scale)
    named, want, _ = _hand_built(jnp.float32)                        # M3, 1e-5
    for method, g in zip(("maml", "fomaml", "reptile"), named):
        assert g.base.dtype == jnp.float32
        for a, b in zip((g.base, g.start.U[:, :1], g.start.V[:, :1]), want[method]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_full_rank_step_closed_form():
    assert float(bl_theory.full_rank_sr_step("maml", 1.0, 0.5, 2)) == pytest.approx(1 / 16)
    assert float(bl_theory.full_rank_sr_step("fomaml", 1.0, 0.5, 2)) == pytest.approx(1 / 4)
    assert float(bl_theory.full_rank_sr_step("reptile", 1.0, 0.5, 2)) == pytest.approx(0.75)
    assert float(bl_theory.full_rank_sr_step("reptile", 1.0, 0.5, 0)) == 0.0


# ----------------------------------------------------------------------------- what a user hits
def test_a_diverging_outer_loop_names_outer_lr_not_inner_lr():
    """A huge outer step moves the base so far that the next inner loop blows up too: the error
    names the cause (outer_lr), not the inner loop that blew up second."""
    truth = linmeta.sample_truth(jax.random.key(0), 8, 2, 4)
    src = linmeta.population(truth)
    with pytest.raises(linmeta.DivergenceError, match="outer loop.*outer_lr=1e\\+06"):
        linmeta.maml(src, 2, key=jax.random.key(1), outer_lr=1e6, outer_steps=5)
    with pytest.raises(linmeta.DivergenceError, match="inner loop.*inner_lr=5"):
        linmeta.maml(src, 2, key=jax.random.key(1), inner_lr=5.0, outer_steps=5)


def test_inner_lr_auto_is_scaled_to_the_tasks_and_finite_samples_without_query_warn():
    truth = linmeta.sample_truth(jax.random.key(3), 6, 1, 3)
    src = linmeta.population(truth)
    lam = maml_mod.inner_step_scale(src)
    M = np.asarray(truth.A_star)[None] + np.einsum("tik,tjk->tij", np.asarray(truth.U_star),
                                                   np.asarray(truth.U_star))
    assert lam == pytest.approx(max(np.linalg.norm(m, 2) for m in M), rel=1e-10)
    scaled = 10.0   # a problem 10 times larger: the fixed default 0.05 would be 10 times too big
    big = linmeta.population(linmeta.Truth(scaled * truth.A_star, np.sqrt(scaled) * truth.U_star))
    res = linmeta.maml(big, 1, key=jax.random.key(1), inner_lr="auto", outer_steps=20,
                       inner_steps=5)
    assert np.all(np.isfinite(np.asarray(res.base)))
    with pytest.raises(ValueError, match="inner_lr must be a number >= 0 or 'auto'"):
        linmeta.maml(src, 1, key=jax.random.key(1), inner_lr="fast")
    sampled = linmeta.sample_tasks(jax.random.key(2), truth, 50, 0.1)
    with pytest.warns(UserWarning, match="support set is also the query set"):
        linmeta.maml(sampled, 1, key=jax.random.key(1), outer_steps=2, inner_steps=2)


def test_unseen_task_risk_is_the_squared_distance_to_each_unseen_task():
    truth = linmeta.sample_truth(jax.random.key(4), 5, 1, 3, n_unseen=2)
    U = np.asarray(truth.U_new)
    risk = np.asarray(linmeta.metrics.unseen_task_risk(truth.A_star, truth))
    assert risk == pytest.approx([np.sum((u @ u.T) ** 2) for u in U], rel=1e-12)
    assert float(linmeta.metrics.unseen_task_risk(truth.M_new[1], truth, task=1)) == 0.0
    with pytest.raises(ValueError, match="task must be an integer in \\[0, 1\\]"):
        linmeta.metrics.unseen_task_risk(truth.A_star, truth, task=2)
