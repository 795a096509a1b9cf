"""Representation family, the solvers: FrozenRep = PCA, the ANIL / first-order ANIL / one-step
MAML / average-loss identities along whole trajectories, AdaptRep's frozen limit, target
fine-tuning against NumPy least squares, divergence, validation, float32, one compile per shape,
and the protocol against the public functions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, strategies as st

import linmeta
from linmeta.core import metrics
from linmeta.families import representation as rep
from linmeta.families.representation import methods, protocol, theory
from helpers import count_compiles

D, K, T = 6, 2, 8
STEPS = 60  # every ANIL / MAML / average-loss call: one compiled kernel (traced flags)
ALT = 200  # every FrozenRep / FedRep / AdaptRep call: one compiled kernel
# the protocol test's program: XLA's cheap backend optimisation (compile time; the same numbers
# to the tolerances below)
CHEAP = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def _truth(seed, **kw):
    kw.setdefault("n_target", 3)
    return rep.sample_rep_truth(jax.random.key(seed), D, K, T, **kw)


def _dist(X, Y):
    return float(metrics.subspace_distance(X, Y))


# ----------------------------------------------------------------------------- FrozenRep = PCA
@given(st.integers(0, 10 ** 6), st.sampled_from(["balanced", "gaussian"]),
       st.sampled_from([0.0, 0.4]))
@example(78, "gaussian", 0.0)  # was 1.3e-10 away at 1.9/lam_1 (the top mode's overshoot, 0.9)
def test_frozen_rep_population_is_pca(seed, heads, delta):
    t = _truth(seed, heads=heads, delta_scale=delta)
    V, lam = theory.pca_subspace(t.betas, K)
    lr = 1.0 / float(lam[0])
    res = rep.frozen_rep(rep.population(t, 0.2), K, key=jax.random.key(seed + 1), steps=ALT,
                         lr=lr)
    # the slowest mode of the iteration: the eigengap |1 - lr (lam_k - lam_k+1)|, or the top
    # direction's overshoot |1 - lr lam_1| (0 at this step; 0.9 at lr = 1.9/lam_1)
    rate = max(abs(1 - lr * float(lam[K - 1] - lam[K])), abs(1 - lr * float(lam[0])))
    slack = rate ** (ALT // 2)  # the iteration error (R1: half the steps for the transient)
    assert _dist(res.representation, V) < 1e-10 + slack
    want = 0.5 * float(jnp.sum(lam[K:])) + 0.5 * 0.2 ** 2
    assert float(res.objective) == pytest.approx(want, rel=1e-9, abs=slack)
    np.testing.assert_allclose(res.heads, t.betas @ res.representation, atol=1e-9 + slack)


def _hand_built_truth():
    """B* = [e1, e2] in R^6; eight heads +-e1, +-e2 (twice): C = diag(1/2, 1/2, 0, ...)."""
    heads = jnp.asarray([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]] * 2)
    return rep.RepTruth(jnp.eye(D)[:, :K], heads)


def test_frozen_rep_hand_built_and_fedrep_is_the_same_iteration():
    t = _hand_built_truth()
    src = rep.population(t)
    B0 = jnp.ones((D, K)).at[0, 1].set(-1.0) / 3
    fr = rep.frozen_rep(src, K, B0=B0, steps=ALT)
    assert _dist(fr.representation, t.B_star) < 1e-12
    np.testing.assert_allclose(fr.objective, 0.0, atol=1e-15)  # noiseless, exactly shared
    fe = rep.fedrep(src, K, eta=0.8, B0=B0, steps=ALT)
    fr2 = rep.frozen_rep(src, K, B0=B0, steps=ALT, lr=0.8)
    np.testing.assert_allclose(fe.representation, fr2.representation, atol=1e-15)
    Bh = methods.orthonormalise(B0)  # the kernel equals the plain alternating step by hand
    for _ in range(ALT):
        Bh = methods.alternating_step(Bh, src, 0.8)
    np.testing.assert_allclose(fe.representation, Bh, atol=1e-14)


def _balanced_truth(lams, seed=0):
    """B* Haar (D x K), heads +-sqrt(K lambda_i) e_i (twice): Sigma_hat = diag(lams) exactly."""
    heads = []
    for i, lam in enumerate(lams):
        e = np.zeros(K)
        e[i] = np.sqrt(K * lam)
        heads += [e, -e]
    B = rep.orthonormal_columns(jax.random.key(seed), D, K)
    return rep.RepTruth(B, jnp.asarray(np.asarray(heads * (T // (2 * K)))))


def _late(res, B_star):
    from linmeta.families.representation.claims._rates import late_rate
    d = jax.vmap(lambda B: metrics.subspace_distance(B, B_star))(res.history.value.representation)
    return late_rate(np.asarray(d))[0]


@pytest.mark.parametrize("eta", [1.5, 1.8])
def test_fedrep_late_rate_on_both_sides_of_the_regime_boundary(eta):
    # Sigma_hat = diag(1, 0.2): the boundary eta (lambda_min + lambda_max) = 2 is eta = 5/3.
    # 1.5: rate 1 - 1.5 * 0.2 = 0.7; 1.8: rate 1.8 - 1 = 0.8 (1 - eta lambda_min gives 0.64)
    t = _balanced_truth([1.0, 0.2])
    B0 = rep.orthonormal_columns(jax.random.key(5), D, K)
    res = rep.fedrep(rep.population(t), K, eta=eta, B0=B0, steps=ALT)
    want = max(abs(1 - eta * 0.2), abs(1 - eta * 1.0))
    assert float(theory.fedrep_late_rate(eta, np.diag([1.0, 0.2]))) == pytest.approx(want)
    assert _late(res, t.B_star) == pytest.approx(want, abs=1e-3)
    with pytest.raises(ValueError, match="eta lambda_max"):   # B* does not attract
        theory.fedrep_late_rate(2.0, np.diag([1.0, 0.2]))


def test_frozen_rep_late_rate_with_a_large_eigengap():
    # R1's step 1.9 / lambda_1 on C with eigenvalues (1, 0.9, 0, ..): the gap's mode has the factor
    # 1 - 1.9 * 0.9 = -0.71, the widest pair's 1 - 1.9 * (1 - 0) = -0.9: the rate is 0.9
    t = _balanced_truth([1.0, 0.9])
    B0 = rep.orthonormal_columns(jax.random.key(6), D, K)
    res = rep.frozen_rep(rep.population(t), K, B0=B0, steps=ALT, lr=1.9)
    lam = np.r_[1.0, 0.9, np.zeros(D - K)]
    assert float(theory.alternating_late_rate(1.9, lam, K)) == pytest.approx(0.9)
    assert _late(res, t.B_star) == pytest.approx(0.9, abs=1e-3)
    with pytest.raises(ValueError, match="unique"):             # lambda_k = lambda_(k+1)
        theory.alternating_late_rate(1.0, np.r_[1.0, 0.5, 0.5, 0.0], 2)


# ----------------------------------------------------------------------------- ANIL family
@given(st.integers(0, 10 ** 6))
def test_anil_maml_average_loss_identities_along_trajectories(seed):
    t = _truth(seed)  # balanced heads: symmetric, mean zero
    tg = rep.RepTruth(t.B_star, rep.gaussian_heads(jax.random.key(seed + 7), T, jnp.eye(K)))
    src, srcg = rep.population(t), rep.population(tg)
    A0 = 0.5 * rep.orthonormal_columns(jax.random.key(seed + 1), D, K)
    kw = dict(alpha=1.0, beta=0.2, B0=A0, steps=STEPS)
    an = rep.anil(src, K, **kw)
    # w0 learned, symmetric heads: MAML's step from every ANIL iterate at w0 = 0 is ANIL's step
    # and leaves w0 at 0 (run freely, rounding in w0 may grow where w0 = 0 is unstable)
    Ban = an.history.value.representation
    Bn, wn = jax.vmap(lambda B: methods.maml_step(B, jnp.zeros((K,)), src, 1.0, 0.2))(Ban[:-1])
    np.testing.assert_allclose(Bn, Ban[1:], atol=1e-13)
    assert float(jnp.max(jnp.abs(wn))) < 1e-14
    # Gaussian heads: a smaller outer step (stability needs alpha beta lambda_max(Sigma_hat) < 1/2)
    kw = dict(kw, beta=0.05)
    an_g = rep.anil(srcg, K, **kw)
    ma_fixed = rep.maml(srcg, K, learn_head_init=False, **kw)  # any heads, w0 fixed at 0
    np.testing.assert_allclose(ma_fixed.history.value.representation,
                               an_g.history.value.representation, atol=1e-13)
    ma_g = rep.maml(srcg, K, **kw)  # not symmetric: w0 moves, the trajectory differs
    assert float(jnp.max(jnp.abs(ma_g.history.value.representation
                                 - an_g.history.value.representation))) > 1e-6
    # ANIL makes progress; average loss (mean-zero heads) keeps the column space exactly
    d_an = [_dist(B, t.B_star) for B in an.history.value.representation[::20]]
    assert d_an[-1] < 0.5 * d_an[0]
    av = rep.average_loss(src, K, lr=0.2, B0=A0, steps=STEPS)
    d_av = np.array([_dist(B, t.B_star) for B in av.history.value.representation[::10]])
    np.testing.assert_allclose(d_av, d_av[0], atol=1e-12)
    assert float(av.objective) < float(av.history.value.objective[0])  # it does train


def test_first_order_anil_one_step_equals_anil_in_the_wrong_subspace_hand_built():
    t = _hand_built_truth()
    src = rep.population(t)
    B = jnp.zeros((D, K)).at[0, 0].set(0.6).at[2, 0].set(0.4).at[1, 1].set(0.5).at[3, 1].set(0.2)
    w0 = jnp.zeros((K,))
    a = methods.anil_step(B, src, 1.0, 0.5, w0)
    f = methods.anil_step(B, src, 1.0, 0.5, w0, first_order=True)
    # by hand: B^T C B = diag(0.18, 0.125); the wrong-subspace rows (2, 3) scale by
    # 1 - 0.5 * diag(0.18, 0.125) = (0.91, 0.9375)
    np.testing.assert_allclose(a[2:], f[2:], atol=1e-15)
    np.testing.assert_allclose(a[2, 0], 0.4 * 0.91, rtol=1e-14)
    np.testing.assert_allclose(a[3, 1], 0.2 * 0.9375, rtol=1e-14)
    assert abs(float(a[0, 0] - f[0, 0])) > 1e-3  # they differ in col(B*)


def test_anil_and_first_order_anil_between_their_stability_bounds():
    # alpha beta lambda_max = 0.7: first-order ANIL's scale part converges (bound 1), ANIL's does not
    # (bound 1/2; its mode (lambda_max, lambda_max) has the factor 1 - 4 * 0.7 = -1.8)
    t = _balanced_truth([1.0, 0.3])
    src = rep.population(t)
    kw = dict(alpha=1.0, beta=0.7, key=jax.random.key(2), steps=STEPS)
    gram = {}
    for fo in (False, True):
        B = rep.anil(src, K, first_order=fo, **kw).history.value.representation[-10:]
        gram[fo] = float(jnp.max(jnp.linalg.norm(jnp.swapaxes(B, -1, -2) @ B - jnp.eye(K), 2,
                                                 axis=(-2, -1))))
    assert gram[True] < 1e-8 and gram[False] > 1e-2
    Sigma = np.diag([1.0, 0.3])
    assert float(theory.anil_late_rate(1.0, 0.7, Sigma, first_order=True)) == pytest.approx(0.79)
    with pytest.raises(ValueError, match="lambda_max"):
        theory.anil_late_rate(1.0, 0.7, Sigma)


@pytest.mark.parametrize("first_order", [False, True])
def test_anil_scale_update_is_one_step_near_the_fixed_point(first_order):
    # from S = Q (I + eps H) / sqrt(alpha) on B*: the library's step against the linearisation
    # D+ = D - c alpha beta (D Sigma + Sigma D), c = 2 (ANIL) or 1 (first order): error O(eps^2)
    t = _balanced_truth([1.0, 0.3])
    rng = np.random.default_rng(0)
    Q = np.linalg.qr(rng.standard_normal((K, K)))[0]
    H = rng.standard_normal((K, K))
    alpha, beta, eps = 0.8, 0.1, 1e-5
    S = Q @ (np.eye(K) + eps * (H + H.T)) / np.sqrt(alpha)
    Bs = np.asarray(t.B_star)
    B1, _ = jax.jit(methods.meta_step)(jnp.asarray(Bs @ S), jnp.zeros(K), rep.population(t),
                                       alpha, beta, 0.0, 0.0, float(first_order))
    S1 = Bs.T @ np.asarray(B1)
    D0, D1 = alpha * S @ S.T - np.eye(K), alpha * S1 @ S1.T - np.eye(K)
    want = np.asarray(theory.anil_scale_update(D0, alpha, beta, np.diag([1.0, 0.3]), first_order))
    other = np.asarray(theory.anil_scale_update(D0, alpha, beta, np.diag([1.0, 0.3]),
                                                not first_order))
    assert np.linalg.norm(D1 - want) < 1e-3 * np.linalg.norm(D0)
    assert np.linalg.norm(D1 - other) > 1e-2 * np.linalg.norm(D0)   # the factor 2 matters


# ----------------------------------------------------------------------------- AdaptRep
def test_adaptrep_frozen_limit_and_inner_stationarity():
    t = _truth(3, heads="gaussian", delta_scale=0.4)
    src = rep.population(t)
    B0 = rep.orthonormal_columns(jax.random.key(4), D, K)
    inf = rep.adapt_rep(src, K, lam=float("inf"), gamma=0.0, B0=B0, steps=ALT, inner_steps=1,
                        lr=0.3)
    fr = rep.frozen_rep(src, K, B0=B0, steps=ALT, lr=0.3)
    np.testing.assert_allclose(inf.representation, fr.representation, atol=1e-14)
    np.testing.assert_allclose(inf.perturbations, 0.0)
    # the inner problem at a fixed B: the alternating solution is stationary
    lam, gamma = 0.5, 0.05
    Dl, w = methods.adaptrep_inner(B0, src, lam, gamma, 300)
    gD, gw = jax.grad(lambda Dl, w: methods.adaptrep_objective(B0, Dl, w, src, lam, gamma),
                      argnums=(0, 1))(Dl, w)
    assert float(jnp.max(jnp.abs(gD))) < 1e-10 and float(jnp.max(jnp.abs(gw))) < 1e-10
    # lambda -> infinity: lambda (F_frozen - F_adapt) -> the closed-form limit
    lam = 1e6
    Dl, w = methods.adaptrep_inner(B0, src, lam, gamma, 50)
    gap = lam * (methods.frozen_objective(B0, src, gamma)
                 - methods.adaptrep_objective(B0, Dl, w, src, lam, gamma))
    assert float(gap) == pytest.approx(float(theory.adaptrep_gap_limit(B0, t.betas, gamma)),
                                       rel=1e-4)


@jax.jit
def _shift_costs(betas, lam, gamma):
    """AdaptRep's inner minimum at B = [e1 e2] for each single-task parameter in ``betas``
    (n, D) and the fitted heads (one program)."""
    B = jnp.eye(D)[:, :K]

    def one(beta):
        st_ = rep.population_from_betas(beta[None], 0.0)
        Dd, wd = methods.adaptrep_inner(B, st_, lam, gamma, 2000)
        return methods.adaptrep_objective(B, Dd, wd, st_, lam, gamma), wd[0]

    return jax.vmap(one)(betas)


def test_adaptrep_shift_cost_is_quadratic_in_the_shift():
    # one task beta = B w* + delta u, u orthogonal to col(B): AdaptRep's inner minimum rises by
    # lam delta^2 / (2 (||w||^2 + lam)) to leading order (w: the fitted head): quadratic in delta
    lam, gamma = 0.1, 0.01
    u = np.eye(D)[K]
    betas, keys = [], []
    for w_norm in (2.0, 0.5):
        for delta in (0.0, 0.01, 0.02):
            betas.append(np.r_[w_norm * np.asarray([0.6, 0.8]), np.zeros(D - K)] + delta * u)
            keys.append((w_norm, delta))
    f, w = (np.asarray(x) for x in _shift_costs(jnp.asarray(np.stack(betas)), lam, gamma))
    f, w = dict(zip(keys, f)), dict(zip(keys, w))
    cost = {}
    for w_norm in (2.0, 0.5):
        for delta in (0.01, 0.02):
            cost[w_norm, delta] = f[w_norm, delta] - f[w_norm, 0.0]
            want = float(theory.adaptrep_shift_cost(delta * u, w[w_norm, 0.0], lam))
            assert cost[w_norm, delta] == pytest.approx(want, rel=2e-3)
        assert cost[w_norm, 0.02] / cost[w_norm, 0.01] == pytest.approx(4.0, rel=5e-3)
    assert cost[0.5, 0.01] > 5 * cost[2.0, 0.01]   # cheap on a task with a large head


# ----------------------------------------------------------------------------- targets, moments
def test_target_fits_against_numpy_least_squares():
    t = _truth(5, n_target=2)
    smp = rep.draw_samples(jax.random.key(6), t, 15, 0.3, tasks="target")
    st_ = linmeta.task_statistics(smp)
    B = t.B_star + 0.1 * jax.random.normal(jax.random.key(7), (D, K))
    head = rep.finetune_target(B, st_, "head")
    scratch = rep.finetune_target(B, st_, "scratch")
    X, Y = np.asarray(smp.X), np.asarray(smp.Y[..., 0])
    for j in range(2):
        a = np.linalg.lstsq(X[j] @ np.asarray(B), Y[j], rcond=None)[0]
        np.testing.assert_allclose(head.predictor[j], np.asarray(B) @ a, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(scratch.predictor[j], np.linalg.lstsq(X[j], Y[j],
                                                                          rcond=None)[0],
                                   rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(head.excess_risk,
                               np.sum((np.asarray(head.predictor) - np.asarray(t.target_betas))
                                      ** 2, 1), rtol=1e-12)
    hr = rep.finetune_target(B, st_, "head_and_representation", lam=1e8, gamma=0.0, steps=30)
    np.testing.assert_allclose(hr.predictor, head.predictor, atol=1e-6)  # lam -> inf: head only


def test_method_of_moments_matrix_and_subspace():
    t = _truth(8)
    smp = rep.draw_samples(jax.random.key(9), t, 50, 0.5)
    M = rep.moment_matrix(smp)
    X, Y = np.asarray(smp.X).reshape(-1, D), np.asarray(smp.Y).reshape(-1)
    np.testing.assert_allclose(M, (X * Y[:, None] ** 2).T @ X / X.shape[0], rtol=1e-12)
    res = rep.method_of_moments(smp, K)
    V = np.linalg.eigh(np.asarray(M))[1][:, ::-1][:, :K]
    assert _dist(res.representation, V) < 1e-10
    with pytest.raises(ValueError, match="raw samples"):
        rep.method_of_moments(linmeta.task_statistics(smp), K)


# ----------------------------------------------------------------------------- errors
def test_divergence_names_the_step_size_and_iteration():
    t = _truth(1)
    src = rep.population(t)
    with pytest.raises(linmeta.DivergenceError, match=r"ANIL retraining diverged at iteration "
                                                      r"\d+.*beta=50"):
        rep.anil(src, K, alpha=1.0, beta=50.0, key=jax.random.key(0), steps=STEPS)
    with pytest.raises(linmeta.DivergenceError, match="average-loss training.*lr"):
        rep.average_loss(src, K, lr=80.0, key=jax.random.key(0), steps=STEPS)


def test_bad_method_arguments_are_rejected():
    src = rep.population(_truth(1))
    cases = [
        (lambda: rep.frozen_rep(src, D + 1, key=jax.random.key(0)), "k must be"),
        (lambda: rep.frozen_rep(src, K), "key is required"),
        (lambda: rep.frozen_rep(src, K, key=jax.random.key(0), lr=-1.0), "lr must be"),
        (lambda: rep.adapt_rep(src, K, lam=0.0, gamma=0.1, key=jax.random.key(0)), "lam must"),
        (lambda: rep.adapt_rep(src, K, lam=1.0, gamma=-0.1, key=jax.random.key(0)), "gamma"),
        (lambda: rep.anil(src, K, alpha=0.0, beta=0.1, key=jax.random.key(0)), "alpha"),
        (lambda: rep.anil(src, K, alpha=1.0, beta=0.1, B0=jnp.ones((D, K + 1))), "B0"),
        (lambda: rep.fedrep(src._replace(Sxx=src.Sxx.at[0, 0, 0].set(jnp.nan)), K, eta=0.1,
                            key=jax.random.key(0)), "source.Sxx"),
        (lambda: rep.finetune_target(jnp.ones((D, K)), src, "all"), "method"),
        (lambda: rep.finetune_target(jnp.ones((D + 1, K)), src, "head"), "B must"),
        (lambda: protocol.check_shape(protocol.Shape(D, K, T, None, 0, 4)), "m must"),
        (lambda: protocol.check_shape(protocol.Shape(D, D + 1, T, None, 5, 4)), "k must"),
        (lambda: protocol.check_hyper(protocol.default_hyper(alpha=0.0)), "hyper.alpha"),
        (lambda: protocol.check_hyper(protocol.default_hyper(noise_std=float("nan"))),
         "hyper.noise_std"),
    ]
    for fn, match in cases:
        with pytest.raises(ValueError, match=match) as e:
            fn()
        assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- float32
def test_float32_runs_with_dtype_tolerances():
    t = rep.sample_rep_truth(jax.random.key(2), D, K, T, n_target=2, dtype=jnp.float32)
    src = rep.population(t)
    assert src.Sxx.dtype == jnp.float32
    fr = rep.frozen_rep(src, K, key=jax.random.key(0), steps=ALT)
    assert fr.representation.dtype == jnp.float32
    assert _dist(fr.representation, t.B_star) < 1e-4  # float32: ~sqrt(eps) on a sine
    an = rep.anil(src, K, alpha=1.0, beta=0.4, key=jax.random.key(0), steps=STEPS)
    assert an.representation.dtype == jnp.float32 and _dist(an.representation, t.B_star) < 1e-3
    ad = rep.adapt_rep(src, K, lam=1.0, gamma=0.01, key=jax.random.key(0), steps=ALT,
                       inner_steps=1)
    assert ad.representation.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(ad.objective)))
    tgt = rep.sample_tasks(jax.random.key(3), t, 20, 0.1, tasks="target")
    f = rep.finetune_target(fr.representation, tgt, "head")
    assert f.predictor.dtype == jnp.float32
    want = theory.frozen_target_risk(t.B_star, t.target_betas[0], 0.1, 20)
    assert 0 < float(f.excess_risk[0]) < 20 * float(want)


# ----------------------------------------------------------------------------- compiles, protocol
def test_traced_hyperparameters_compile_once():
    src = rep.population(_truth(11))
    rep.anil(src, K, alpha=1.0, beta=0.2, key=jax.random.key(0), steps=STEPS)
    with count_compiles() as n:
        rep.anil(src, K, alpha=0.7, beta=0.1, key=jax.random.key(1), steps=STEPS)
        rep.maml(src, K, alpha=0.5, beta=0.3, key=jax.random.key(1), steps=STEPS)
        rep.average_loss(src, K, lr=0.1, key=jax.random.key(1), steps=STEPS)
    assert n() == 0, "ANIL, MAML and average loss share one compiled kernel"


def test_protocol_equals_the_public_functions_and_compiles_once_per_shape():
    t = _truth(12, n_target=4)
    shape = protocol.Shape(D, K, T, None, 20, 4, frozen_steps=ALT, fedrep_steps=ALT - 20,
                           anil_steps=STEPS, adapt_steps=ALT, n_starts=2, target_steps=10,
                           record_every=20)
    run = jax.jit(jax.vmap(protocol.run_protocol, in_axes=(None, None, 0, None)),
                  static_argnames="shape", compiler_options=CHEAP)
    hypers = jax.tree.map(lambda *x: jnp.stack(x), protocol.default_hyper(),
                          protocol.default_hyper(alpha=0.7, eta=0.3, lam=1.0))
    keys = protocol.run_keys(0)
    hypers2 = jax.tree.map(lambda x: 1.1 * x, hypers)  # (an eager kernel: outside the count)
    with count_compiles() as n:
        out = run(t, keys, hypers, shape)
        out2 = run(t, keys, hypers2, shape)
    assert n() == 1, "a sweep over traced hyperparameters compiles once per shape"
    assert bool(jnp.all(jnp.isfinite(out2.frozen_objective)))
    kinit, _ = jax.random.split(keys.init)
    B0 = rep.orthonormal_columns(kinit, D, K)
    src = rep.population(t, 0.5)
    fr = rep.frozen_rep(src, K, B0=B0, steps=ALT, lr=0.5)
    fe = rep.fedrep(src, K, eta=0.3, B0=B0, steps=ALT)  # the protocol's lane stops 20 earlier
    fe_early = [float(metrics.subspace_distance(B, t.B_star))
                for B in fe.history.value.representation[ALT - 20:ALT - 19]]
    an = rep.anil(src, K, alpha=0.7, beta=0.2, B0=0.5 / np.sqrt(0.7) * B0, steps=STEPS)
    assert float(out.frozen_sin_max[0]) == pytest.approx(_dist(fr.representation, t.B_star),
                                                         abs=1e-12)
    assert float(out.fedrep_sin_max[1]) == pytest.approx(fe_early[0], abs=1e-12)
    assert float(out.anil_sin_max[1]) == pytest.approx(_dist(an.representation, t.B_star),
                                                       rel=1e-9, abs=1e-14)
    assert not bool(jnp.any(out.adapt_diverged))
