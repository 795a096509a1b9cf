"""The paper's protocol in linmeta against the plain NumPy loops of linmeta.reference (same raw
samples, same initialisation), and the two data samplers of linmeta.paper."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import linmeta
from linmeta.families.paper import protocol as paper
from linmeta.engine import protocols, sweep
from linmeta.methods import reference

# The tiny shape of tests/test_sweep.py (compiled programs are shared within a session).
SHAPE = dict(d=4, k=1, T=3, N=37, n=11, outer_steps=6, inner_steps=3, sr_steps=7, ft_steps=9,
             record_every=4)


def _rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _excess(M, X, Y):
    """(1/T) sum_t [L_t(M_t) - min L_t] on raw samples (least squares by lstsq)."""
    T = X.shape[0]
    best = np.stack([np.linalg.lstsq(X[t], Y[t], rcond=None)[0].T for t in range(T)])
    return float(np.mean(reference.raw_loss(M, X, Y) - reference.raw_loss(best, X, Y)))


def _official_sr(X, Y, U, steps, lr):
    """The official code's SR baseline on raw samples (``linear/learners.py``: a MetaLearner on
    the pooled data whose T untrained adapters enter the gradient
    ``sum_t ((A + U_t U_t^T) X - Y) X^T / (N T)``), written here from its formula."""
    T, N, d = X.shape
    Xp, Yp = X.reshape(T * N, d), Y.reshape(T * N, d)
    A = np.zeros((d, d))
    for _ in range(steps):
        grad = sum((Xp @ (A + U[t] @ U[t].T).T - Yp).T @ Xp for t in range(T)) / (N * T)
        A = A - lr * grad
    return A


@pytest.mark.parametrize("protocol", ["paper", "paper_code"])
def test_protocol_reproduces_numpy_reference_loops(protocol):
    cfg = sweep.validate_config(dict(SHAPE, seed=1, noise_std=0.05, protocol=protocol))
    results = sweep.run_batch([cfg, dict(cfg, seed=0)])
    starts = []
    for c, res in zip((cfg, dict(cfg, seed=0)), results):
        truth = sweep.truth_for(c)
        keys = paper.code_keys(c["seed"], c["truth_seed"])
        shape = paper.Shape(**{**{f: c.get(f) for f in paper.Shape._fields}, "m": 1})
        U0, Uf, Vf = map(np.asarray, paper.initial_factors(keys, shape, c["init_scale"],
                                                           jnp.float64))
        X, Y = map(np.asarray, paper.raw_samples(keys.retrain, truth.M_star, c["N"],
                                                 c["noise_std"]))
        Xf, Yf = map(np.asarray, paper.raw_samples(keys.finetune, truth.M_new, c["n"],
                                                   c["noise_std"]))
        A_star, M_new = np.asarray(truth.A_star), np.asarray(truth.M_new)
        A_ml, U_ml, hist = reference.alternating_protocol(
            X, Y, U0, outer_steps=c["outer_steps"], inner_steps=c["inner_steps"],
            lr_adapter=c["lr_adapter"], lr_base=c["lr_base"], record=True)
        if protocol == "paper":
            A_sr = reference.standard_gd(X, Y, steps=c["sr_steps"], lr=c["sr_lr"])
        else:
            U_sr = np.asarray(paper.sr_adapters(keys, shape, c["init_scale"], jnp.float64))
            A_sr = _official_sr(X, Y, U_sr, c["sr_steps"], c["sr_lr"])
        tol = 1e-8
        assert _rel(res["ml_base_error"], np.linalg.norm(A_ml - A_star)) < tol
        assert _rel(res["sr_base_error"], np.linalg.norm(A_sr - A_star)) < tol
        assert _rel(res["ml_objective"], _excess(A_ml + U_ml @ U_ml.transpose(0, 2, 1), X, Y)) < tol
        assert _rel(res["sr_objective"], _excess(A_sr, X, Y)) < tol
        # recorded Meta-LoRA objective at outer steps 4 and 6 (history[i] is after step i + 1)
        for j, step in enumerate(res["trajectories"]["outer_steps"][1:], start=1):
            A, U = hist[step - 1]
            assert _rel(res["trajectories"]["ml_objective"][j],
                        _excess(A + U @ U.transpose(0, 2, 1), X, Y)) < tol
        idx = res["trajectories"]["ft_steps"]
        # paper: both from the run's (Uf, Vf); paper_code: Meta-LoRA from the truth's fixed start
        fixed = map(np.asarray, paper.fixed_start(keys.start, 1, c["d"], c["ft_rank"],
                                                   c["init_scale"], jnp.float64))
        ml_start = (Uf, Vf) if protocol == "paper" else tuple(fixed)
        starts.append(ml_start)
        for base, name, (U0f, V0f) in ((A_ml, "ml", ml_start), (A_sr, "sr", (Uf, Vf))):
            U, V, test_loss = reference.finetune_gd(Xf, Yf, base, U0f, V0f, M_new,
                                                    steps=c["ft_steps"], lr=c["ft_lr"])
            assert _rel(res["trajectories"][f"{name}_ft_test_loss"], test_loss[idx, 0]) < tol
            M = base + U[0] @ V[0].T
            assert _rel(res[f"{name}_ft_excess_risk"], np.sum((M - M_new[0]) ** 2)) < tol
    # the fixed start is one draw for every run of a truth; the clean start is drawn per run
    assert (np.array_equal(starts[0][0], starts[1][0])) == (protocol == "paper_code")


def test_streamed_statistics_equal_materialised_samples():
    truth = linmeta.sample_truth(jax.random.key(3), 5, 2, 2)
    key = jax.random.key(9)
    stats_fn = jax.jit(paper.raw_statistics, static_argnums=(2, 4))
    samples_fn = jax.jit(paper.raw_samples, static_argnums=(2, 4))
    for N, block in ((37, 16), (32, 16)):  # ragged last block, exact blocks
        stats = stats_fn(key, truth.M_star, N, 0.3, block)
        X, Y = samples_fn(key, truth.M_star, N, 0.3, block)
        assert X.shape == (2, N, 5)
        ref = linmeta.task_statistics(linmeta.Samples(X, Y, truth.M_star, jnp.full(2, 0.3)))
        for field in ("Sxx", "Syx", "Syy", "n_samples"):
            np.testing.assert_allclose(getattr(stats, field), getattr(ref, field), rtol=1e-12)
    # samples are x ~ N(0, I), y = M x + 0.3 eps: residuals have the noise level (370 values:
    # standard error of the standard deviation about 0.3 / sqrt(740) = 0.011)
    resid = np.asarray(Y - X @ jnp.swapaxes(truth.M_star, -1, -2))
    assert abs(resid.std() - 0.3) < 0.06 and abs(float(np.asarray(X).std()) - 1) < 0.2


def test_psd_pinv_matches_lapack_pinv():
    rng = np.random.default_rng(0)
    pinv = jax.jit(paper.psd_pinv)
    for d, N in ((6, 40), (6, 7), (12, 13), (10, 5000)):  # N = d + 1: condition number ~1e3
        X = rng.normal(size=(3, N, d))
        S = np.swapaxes(X, 1, 2) @ X / N
        want = np.linalg.pinv(S, hermitian=True)
        np.testing.assert_allclose(pinv(jnp.asarray(S)), want, rtol=0,
                                   atol=1e-10 * np.abs(want).max())
    np.testing.assert_allclose(pinv(jnp.broadcast_to(jnp.eye(6), (3, 6, 6))), np.eye(6)[None]
                               .repeat(3, 0), atol=1e-15)


@pytest.mark.parametrize("N", [3, 6, 9, None])  # N < d, N = d (interpolation), N > d, population
def test_excess_objective_matches_core(N):
    truth = linmeta.sample_truth(jax.random.key(2), 6, 1, 3)
    if N is None:
        stats = linmeta.population(truth, 0.1)
    else:
        stats = jax.jit(paper.raw_statistics, static_argnums=2)(jax.random.key(5), truth.M_star,
                                                               N, 0.1)
    M = truth.M_star + 0.1 * jax.random.normal(jax.random.key(1), truth.M_star.shape)
    want = jnp.mean(linmeta.losses.excess_loss(M, stats))
    got = paper.excess_objective(M, stats, paper.ols_solution(stats, N))
    assert abs(float(got) - float(want)) < 1e-10 * float(want)


def _flat(stats):
    iu = np.triu_indices(stats.Sxx.shape[-1])
    Sxx = np.asarray(stats.Sxx)[..., iu[0], iu[1]]
    return np.concatenate([Sxx.reshape(Sxx.shape[0], -1),
                           np.asarray(stats.Syx).reshape(Sxx.shape[0], -1),
                           np.asarray(stats.Syy).reshape(Sxx.shape[0], -1)], axis=1)


def test_wishart_statistics_match_raw_sample_moments():
    d, N, s, R = 3, 5, 0.5, 6000
    M = jnp.asarray(np.random.default_rng(1).normal(size=(1, d, d)))
    keys = jax.random.split(jax.random.key(0), R)
    wish = _flat(jax.jit(jax.vmap(lambda k: paper.wishart_statistics(k, M, N, s)))(keys))
    raw = _flat(jax.jit(jax.vmap(lambda k: paper.raw_statistics(k, M, N, s)))(keys))
    # exact first moments: E Sxx = I, E Syx = M, E Syy = ||M||^2 + d s^2
    iu = np.triu_indices(d)
    exact = np.concatenate([np.eye(d)[iu], np.asarray(M).ravel(),
                            [float(jnp.sum(M * M)) + d * s ** 2]])
    for draws in (wish, raw):
        z = (draws.mean(0) - exact) / (draws.std(0) / np.sqrt(R))
        assert np.max(np.abs(z)) < 5
    # exact variances of Sxx entries: 2/N on the diagonal, 1/N off it
    var_exact = np.where(iu[0] == iu[1], 2.0 / N, 1.0 / N)
    n_sxx = len(iu[0])
    np.testing.assert_allclose(wish[:, :n_sxx].var(0), var_exact, rtol=0.15)
    # all second moments agree between the two samplers (two-sample z-scores)
    for a in range(wish.shape[1]):
        pw = wish * wish[:, a:a + 1]
        pr = raw * raw[:, a:a + 1]
        z = (pw.mean(0) - pr.mean(0)) / np.sqrt(pw.var(0) / R + pr.var(0) / R)
        assert np.max(np.abs(z)) < 5, (a, z)


def test_wishart_needs_n_at_least_d():
    with pytest.raises(ValueError, match="N >= d"):
        paper.wishart_statistics(jax.random.key(0), jnp.zeros((1, 4, 4)), 3, 0.1)


def test_resolve_ft_rank():
    assert paper.resolve_ft_rank(0, 1, 3, 10) == 1
    assert paper.resolve_ft_rank(0, 2, 2, 10) == 6
    assert paper.resolve_ft_rank(0, 4, 2, 10) == 10
    assert paper.resolve_ft_rank(5, 1, 2, 10) == 5


def test_paper_linear_figure_tiny(tmp_path):
    from experiments import paper_linear
    out = paper_linear.main(setting="tiny", out_dir=str(tmp_path), which=("T",))
    assert (tmp_path / "paper_vary_T.png").exists() and (tmp_path / "paper_vary_T.pdf").exists()
    panel = out["panels"]["T"]
    assert [row["value"] for row in panel["rows"]] == [2, 3]
    for row in panel["rows"]:
        assert np.isfinite(row["ml_final_mean"]) and np.isfinite(row["sr_final_mean"])


# ------------------------------------------------------------------------------ paper_code

_sr_steps = jax.jit(paper.sr_retraining, static_argnames=("steps", "record_every"))


def test_paper_code_sr_fixed_point_hand_built():
    """Population statistics (S_t = I, Y_t = M_t): one step of size 1/T from A = 0 lands on the
    fixed point exactly, mean_t M_t - mean_t U_t U_t^T; the clean step of size 1 on mean_t M_t."""
    M = jnp.asarray(np.arange(2 * 9, dtype=float).reshape(2, 3, 3) / 7.0)
    U = jnp.asarray([[[1.0], [2.0], [0.0]], [[0.0], [1.0], [-1.0]]])
    stats = linmeta.TaskStats(jnp.broadcast_to(jnp.eye(3), (2, 3, 3)), M, jnp.zeros(2),
                              jnp.full(2, jnp.inf), M, jnp.zeros(2))
    Ubar = np.mean(np.asarray(U) @ np.asarray(U).transpose(0, 2, 1), axis=0)
    A, _ = _sr_steps(stats, 0.5, steps=2, record_every=2, adapters=U)  # stays there
    np.testing.assert_allclose(A, np.mean(M, 0) - Ubar, rtol=0, atol=1e-15)
    A, _ = _sr_steps(stats, 1.0, steps=2, record_every=2)
    np.testing.assert_allclose(A, np.mean(M, 0), rtol=0, atol=1e-15)


def test_paper_code_sr_converges_to_pooled_least_squares_minus_mean_adapter():
    """On raw samples: paper_code SR -> (pooled least squares) - mean_t U_t U_t^T to 1e-10, the
    clean SR -> pooled least squares (claim C1), and the two limits differ by ||Ubar||."""
    draw = jax.jit(paper.raw_samples, static_argnums=2)
    for seed in (0, 1):
        cfg = sweep.validate_config(dict(d=4, k=1, T=3, N=37, seed=seed, protocol="paper_code"))
        truth = sweep.truth_for(cfg)
        keys = paper.code_keys(seed, 0)
        X, Y = draw(keys.retrain, truth.M_star, 37, 0.05)
        stats = linmeta.stats_from_arrays(X, Y, truth.M_star)
        U = paper.sr_adapters(keys, paper.paper_shape(cfg), 0.1, jnp.float64)
        Xp, Yp = np.asarray(X).reshape(-1, 4), np.asarray(Y).reshape(-1, 4)
        pooled = np.linalg.lstsq(Xp, Yp, rcond=None)[0].T
        Ubar = np.mean(np.asarray(U) @ np.asarray(U).transpose(0, 2, 1), axis=0)
        A_code, _ = _sr_steps(stats, 0.1, steps=2000, record_every=2000, adapters=U)
        A_clean, _ = _sr_steps(stats, 0.1, steps=2000, record_every=2000)
        scale = np.max(np.abs(pooled))
        assert np.max(np.abs(np.asarray(A_code) - (pooled - Ubar))) < 1e-10 * scale
        assert np.max(np.abs(np.asarray(A_clean) - pooled)) < 1e-10 * scale
        assert np.max(np.abs(np.asarray(A_clean) - (pooled - Ubar))) > 1e-4 * scale


def test_fixed_start_is_nested_and_shared_across_runs():
    key = paper.code_keys(0, 5).start
    assert jnp.array_equal(jax.random.key_data(key),
                           jax.random.key_data(paper.code_keys(9, 5).start))  # truth only
    assert not jnp.array_equal(jax.random.key_data(key),
                               jax.random.key_data(paper.code_keys(0, 6).start))

    @jax.jit
    def starts(key):
        return (paper.fixed_start(key, 2, 50, 8, 0.1, jnp.float64),
                paper.fixed_start(key, 1, 6, 3, 0.1, jnp.float64, rank=2))

    (U_s, V_s), (U, V) = starts(key)
    assert jnp.array_equal(U[..., :2], U_s[:1, :6, :2]) and not jnp.any(U[..., 2])
    assert jnp.array_equal(V[..., :2], V_s[:1, :6, :2]) and not jnp.any(V[..., 2])
    # i.i.d. N(0, 0.1^2) entries: 2 x 50 x 8 draws, standard error of the std 0.1/sqrt(1600)
    both = np.concatenate([np.ravel(U_s), np.ravel(V_s)])
    assert abs(both.std() - 0.1) < 0.01 and abs(both.mean()) < 0.01


def test_raw_statistics_pair_equals_two_streams():
    """Both data streams in one pass (one random-number kernel): the statistics of two
    raw_statistics calls, including ragged blocks and a stream shorter than one block."""
    truth = linmeta.sample_truth(jax.random.key(3), 5, 2, 3)
    ka, kb = jax.random.key(1), jax.random.key(2)
    Na, Nb, block = 37, 11, 16  # a ragged last block; a stream shorter than one block

    @jax.jit
    def both(ka, kb):
        return (paper.raw_statistics_pair(ka, truth.M_star, Na, kb, truth.M_new, Nb, 0.3, block),
                (paper.raw_statistics(ka, truth.M_star, Na, 0.3, block),
                 paper.raw_statistics(kb, truth.M_new, Nb, 0.3, block)))

    got, want = both(ka, kb)
    for g, w in zip(got, want):
        for field in ("Sxx", "Syx", "Syy", "n_samples", "M_star", "noise_std"):
            np.testing.assert_allclose(getattr(g, field), getattr(w, field), rtol=1e-13,
                                       err_msg=field)


def test_normal_is_jax_random_normal_bit_for_bit():
    """linmeta.paper.normal (the hash unrolled) draws exactly jax.random.normal's numbers."""
    keys = jax.random.split(jax.random.key(11), 3)
    cases = ((jnp.float64, (5, 2, 3)), (jnp.float32, (7,)))

    def draws(normal):
        return [jax.vmap(lambda k: normal(k, shape, dt))(keys) for dt, shape in cases]

    got = jax.jit(lambda: draws(paper.normal))()
    want = jax.jit(lambda: draws(jax.random.normal))()
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and jnp.array_equal(g, w), g.dtype


def test_paper_t_spread_tiny(tmp_path):
    from experiments import paper_t_spread
    out = paper_t_spread.main(setting="tiny", out_dir=str(tmp_path))
    for name in ("paper_t_spread.json", "paper_t_spread.png"):
        assert (tmp_path / name).exists()
    a = out["A"]
    # the recomputed fine-tuning from each run's own start is the sweep's number
    np.testing.assert_allclose(out["B"]["gd_fine_tuning_own_start_recomputed"]["mean"],
                               a["paper"]["2"]["ml"]["mean"], rtol=1e-10)
    assert set(a) >= {"paper", "paper_code"} and np.isfinite(out["B"]["exact_fine_tuning_optimum"]
                                                             ["mean"])
