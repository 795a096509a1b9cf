"""The shallow-network experiment (linmeta.shallow, experiments/paper_shallow.py)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import count_compiles
from linmeta.families.paper import shallow


def _problem(key, d=4, k=1, T=3, N=7, n=5):
    truth = shallow.sample_truth(key, d, k, T)
    data = shallow.sample_data(jax.random.fold_in(key, 1), truth, N, n, 0.1)
    return truth, data


def _raw_prediction(W, c, x):
    """c^T sigmoid(W x) for one sample x (d,)."""
    return jnp.dot(c, 1.0 / (1.0 + jnp.exp(-jnp.dot(W, x))))


def _raw_meta_loss(A, c, Bs, Cs, X, Y):
    """sum_t (1/N) sum_i (c^T sigmoid((A + B_t C_t^T) x_i) - y_i)^2, one sample at a time
    (a Python loop over tasks, a fori_loop over samples)."""
    total = 0.0
    for t in range(X.shape[0]):
        W = A + Bs[t] @ Cs[t].T
        N = X.shape[1]

        def add(i, acc, W=W, t=t):
            return acc + (_raw_prediction(W, c, X[t, i]) - Y[t, i]) ** 2

        total = total + jax.lax.fori_loop(0, N, add, jnp.zeros((), X.dtype)) / N
    return total


_raw_grad = jax.jit(jax.grad(_raw_meta_loss, argnums=(0, 1, 2, 3)))
_raw_loss = jax.jit(_raw_meta_loss)


def test_meta_lora_gradient_matches_raw_sample_loss():
    truth, data = _problem(jax.random.key(0))
    key = jax.random.key(1)
    base = shallow.init_base(key, 4)
    B = 0.3 * jax.random.normal(jax.random.fold_in(key, 2), (3, 4, 1))
    C = 0.3 * jax.random.normal(jax.random.fold_in(key, 3), (3, 4, 1))
    params = shallow.MetaParams(base, shallow.LowRank(B, C))
    g = jax.jit(jax.grad(shallow.meta_lora_loss))(params, data.X, data.Y)
    g_raw = _raw_grad(base.A, base.c, B, C, data.X, data.Y)
    for got, want in zip((g.base.A, g.base.c, g.adapters.left, g.adapters.right), g_raw):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    # the value itself, and a central finite difference of the raw loss in one direction
    np.testing.assert_allclose(shallow.meta_lora_loss(params, data.X, data.Y),
                               _raw_loss(base.A, base.c, B, C, data.X, data.Y), rtol=1e-12)
    E = jax.random.normal(jax.random.fold_in(key, 4), (4, 4))
    h = 1e-5
    fd = (_raw_loss(base.A + h * E, base.c, B, C, data.X, data.Y)
          - _raw_loss(base.A - h * E, base.c, B, C, data.X, data.Y)) / (2 * h)
    np.testing.assert_allclose(jnp.sum(g.base.A * E), fd, rtol=1e-6)


def test_symmetric_sr_and_finetune_gradients_match_raw_sample_loss():
    truth, data = _problem(jax.random.key(2), T=2)
    key = jax.random.key(3)
    base = shallow.init_base(key, 4)
    U = 0.3 * jax.random.normal(jax.random.fold_in(key, 1), (2, 4, 2))
    g = jax.jit(jax.grad(shallow.meta_lora_loss))(
        shallow.MetaParams(base, shallow.LowRank(U)), data.X, data.Y)
    g_raw = _raw_grad(base.A, base.c, U, U, data.X, data.Y)
    np.testing.assert_allclose(g.base.A, g_raw[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g.adapters.left, g_raw[2] + g_raw[3], rtol=1e-10, atol=1e-12)
    # SR = no adapter
    zeros = jnp.zeros((2, 4, 1))
    g_sr = jax.jit(jax.grad(shallow.sr_loss))(base, data.X, data.Y)
    g_sr_raw = _raw_grad(base.A, base.c, zeros, zeros, data.X, data.Y)
    np.testing.assert_allclose(g_sr.A, g_sr_raw[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g_sr.c, g_sr_raw[1], rtol=1e-10, atol=1e-12)
    # fine-tuning: one task, base frozen, gradient only in the adapter
    ad = shallow.LowRank(*(0.3 * jax.random.normal(jax.random.fold_in(key, i), (4, 2))
                           for i in (5, 6)))
    g_ft = jax.jit(jax.grad(shallow.finetune_loss))(ad, base, data.X_new, data.Y_new)
    g_ft_raw = _raw_grad(base.A, base.c, ad.left[None], ad.right[None], data.X_new[None],
                         data.Y_new[None])
    np.testing.assert_allclose(g_ft.left, g_ft_raw[2][0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g_ft.right, g_ft_raw[3][0], rtol=1e-10, atol=1e-12)


def test_truth_is_a_zero_loss_stationary_point_of_the_noiseless_loss():
    truth, data = _problem(jax.random.key(4), d=5, k=2, T=3, N=30)
    params = shallow.MetaParams(shallow.Base(truth.A_star, truth.c_star),
                                shallow.LowRank(truth.U_star))
    assert float(shallow.meta_lora_loss(params, data.X, data.Y_clean)) < 1e-28
    g = jax.jit(jax.grad(shallow.meta_lora_loss))(params, data.X, data.Y_clean)
    assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(g)) < 1e-13
    ft = shallow.LowRank(truth.U_new)  # the unseen task's own shift fits its clean targets
    assert float(shallow.finetune_loss(ft, shallow.Base(truth.A_star, truth.c_star),
                                       data.X_new, data.Y_new_clean)) < 1e-28


def _torch_adamw(grad_fn, p, lr, wd, steps, b1=0.9, b2=0.999, eps=1e-8):
    """torch.optim.AdamW written out in NumPy (decoupled decay, bias correction)."""
    p = {k: np.array(v) for k, v in p.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t in range(1, steps + 1):
        g = {k: np.asarray(x) for k, x in grad_fn(p).items()}
        for name in p:
            p[name] = p[name] * (1 - lr * wd)
            m[name] = b1 * m[name] + (1 - b1) * g[name]
            v[name] = b2 * v[name] + (1 - b2) * g[name] ** 2
            mh = m[name] / (1 - b1 ** t)
            vh = v[name] / (1 - b2 ** t)
            p[name] = p[name] - lr * mh / (np.sqrt(vh) + eps)
    return p


def test_adamw_is_torch_adamw():
    truth, data = _problem(jax.random.key(5))
    base = shallow.init_base(jax.random.key(6), 4)
    lr, wd, steps = 1e-2, 0.01, 5
    got, hist = shallow.adamw_train(lambda b: shallow.sr_loss(b, data.X, data.Y), base, lr, wd,
                                    steps, 1, lambda b: shallow.sr_loss(b, data.X, data.Y))

    zeros = jnp.zeros((3, 4, 1))

    def grad_fn(p):
        g = _raw_grad(jnp.asarray(p["A"]), jnp.asarray(p["c"]), zeros, zeros, data.X, data.Y)
        return {"A": g[0], "c": g[1]}

    want = _torch_adamw(grad_fn, {"A": base.A, "c": base.c}, lr, wd, steps)
    np.testing.assert_allclose(got.A, want["A"], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(got.c, want["c"], rtol=1e-10, atol=1e-13)
    assert hist.value.shape == (steps + 1,)


def test_switched_off_adapters_are_standard_retraining_and_masked_rank_is_lower_rank():
    truth, data = _problem(jax.random.key(7))
    key = jax.random.key(8)
    base = shallow.init_base(key, 4)
    adapters = shallow.init_low_rank(jax.random.fold_in(key, 1), (3, 4, 1))
    sr_direct, _ = shallow.adamw_train(lambda b: shallow.sr_loss(b, data.X, data.Y), base,
                                       1e-2, 0.01, 20, 20, lambda b: jnp.zeros(()))
    padded, _ = shallow.adamw_train(
        lambda p: shallow.meta_lora_loss(p, data.X, data.Y, adapter_scale=0.0),
        shallow.MetaParams(base, adapters), 1e-2, 0.01, 20, 20, lambda p: jnp.zeros(()))
    np.testing.assert_allclose(padded.base.A, sr_direct.A, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(padded.base.c, sr_direct.c, rtol=1e-13, atol=1e-15)
    # rank 1 inside a rank-3 adapter with columns 2, 3 masked == a rank-1 adapter
    ad3 = shallow.init_low_rank(jax.random.fold_in(key, 2), (4, 3))
    mask = jnp.asarray([1.0, 0.0, 0.0])
    run = _short_adamw
    a3 = run(lambda a: shallow.finetune_loss(a, base, data.X_new, data.Y_new, column_mask=mask),
             ad3)
    a1 = run(lambda a: shallow.finetune_loss(a, base, data.X_new, data.Y_new),
             shallow.LowRank(ad3.left[:, :1], ad3.right[:, :1]))
    np.testing.assert_allclose(a3.left[:, :1], a1.left, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(a3.right[:, :1], a1.right, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(a3.left[:, 1:], 0.0)


def _short_adamw(loss, a0):
    return shallow.adamw_train(loss, a0, 1e-2, 0.01, 30, 30, lambda a: jnp.zeros(()))[0]


def test_bad_input_names_the_argument():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="retrain_adapter"):
        shallow.run_trials(key, retrain_adapter="full")
    with pytest.raises(ValueError, match="ranks"):
        shallow.run_trials(key, d=4, ranks=(5,))
    with pytest.raises(ValueError, match="lr"):
        shallow.run_trials(key, lr=0.0)
    with pytest.raises(ValueError, match="k"):
        shallow.sample_truth(key, 3, 4, 2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from experiments import paper_shallow

    out = tmp_path_factory.mktemp("fig")
    return paper_shallow.main("tiny", out), out


def test_tiny_experiment_writes_figures_and_rows(tiny):
    summary, out = tiny
    for sweep in ("T", "d"):
        for ext in ("png", "pdf"):
            assert (out / f"paper_shallow_vary_{sweep}_tiny.{ext}").stat().st_size > 1000
    rows = summary["rows"]
    cfg = summary["config"]
    Ts = cfg["Ts"]
    # T = 2 fine-tunes at ranks k and 3k (as in the paper), other T at rank k; both methods
    want = {(T, r, m) for T in Ts for r in ((1, 3) if T == 2 else (1,))
            for m in ("meta_lora", "sr")}
    assert {(r["T"], r["rank"], r["method"]) for r in rows} == want
    # the d sweep: every d at T = T_of_d_sweep, rank k
    assert {(r["d"], r["T"], r["rank"], r["method"]) for r in summary["rows_d"]} == {
        (d, cfg["T_of_d_sweep"], 1, m) for d in cfg["ds"] for m in ("meta_lora", "sr")}
    assert cfg["d"] in cfg["ds"] and cfg["T_of_d_sweep"] in Ts
    # the (d, T) cell both sweeps name is one run, reported identically in both
    shared = [[r for r in rs if r["d"] == cfg["d"] and r["T"] == cfg["T_of_d_sweep"]]
              for rs in (rows, summary["rows_d"])]
    assert shared[0] == shared[1] and len(shared[0]) == 2
    n_tr = cfg["n_trials"]
    for r in rows + summary["rows_d"]:
        assert math.isfinite(r["final_test_loss_median"]) and r["final_test_loss_median"] >= 0
        assert r["final_test_loss_q25"] <= r["final_test_loss_median"] <= r["final_test_loss_q75"]
        assert (r["final_test_loss_central_low"] <= r["final_test_loss_median"]
                <= r["final_test_loss_central_high"])
    # the central range of the tiny run's n_trials = 2 trials: the two values themselves
    e = summary["per_d"][cfg["ds"][0]]
    final = e["sr"]["test_loss"][:, 0, -1]
    r = [r for r in summary["rows_d"] if r["d"] == cfg["ds"][0] and r["method"] == "sr"][0]
    assert n_tr == 2 and (r["final_test_loss_central_low"], r["final_test_loss_central_high"]) \
        == (float(np.min(final)), float(np.max(final)))
    e = summary["per_T"][Ts[-1]]
    n_rec = len(e["finetune_step"])
    assert e["meta_lora"]["test_loss"].shape == (summary["config"]["n_trials"], 1, n_rec)
    # fine-tuning lowers its own training loss (median over trials) for both methods
    for name in ("meta_lora", "sr"):
        ft = np.median(e[name]["finetune_loss"][:, 0], axis=0)
        assert ft[-1] < ft[0]


def test_trials_compile_once_per_shape_and_hyperparameters_are_traced(tiny):
    summary, _ = tiny
    cfg = dict(summary["config"])
    Ts = cfg.pop("Ts")
    cfg.pop("ds"), cfg.pop("T_of_d_sweep")
    with count_compiles() as n:
        res = shallow.run_trials(jax.random.key(11), T=Ts[-1], **dict(cfg, lr=3e-3,
                                                                      weight_decay=0.0,
                                                                      noise_std=0.3))
        jax.block_until_ready(res)
    assert n() == 0
    assert res.meta_lora.test_loss.dtype == jnp.dtype(cfg["dtype"]) == jnp.float32


def test_central_range_is_the_papers_fourth_and_eighth_of_ten():
    from experiments.paper_shallow import central_range

    # shallow/make_plot.py: sorted(values)[3] and sorted(values)[-3] of 10 trials
    values = np.array([7.0, 0.5, 9.0, 3.0, 1.0, 8.0, 2.0, 6.0, 4.0, 5.0])  # 0.5, 1, 2, ..., 9
    lo, med, hi = central_range(values)
    assert (lo, med, hi) == (3.0, 4.5, 7.0)
    # along an axis, one range per column; 20 trials -> indices 6 and 15
    table = np.stack([values, -values], axis=1)
    lo, med, hi = central_range(table, axis=0)
    np.testing.assert_array_equal(lo, [3.0, -6.0])  # -9, -8, -7, [-6], ..., [-2], -1, -0.5
    np.testing.assert_array_equal(hi, [7.0, -2.0])
    lo, _, hi = central_range(np.arange(20.0))
    assert (lo, hi) == (6.0, 15.0)


def test_float32_stays_float32():
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.normal(size=(2, 6, 3)), jnp.float32)
    Y = jnp.asarray(rng.normal(size=(2, 6)), jnp.float32)
    base = shallow.Base(jnp.asarray(rng.normal(size=(3, 3)), jnp.float32),
                        jnp.asarray(rng.normal(size=3), jnp.float32))
    out, hist = shallow.adamw_train(lambda b: shallow.sr_loss(b, X, Y), base, jnp.float32(1e-3),
                                    jnp.float32(0.01), 2, 1, lambda b: shallow.sr_loss(b, X, Y))
    assert out.A.dtype == out.c.dtype == hist.value.dtype == jnp.float32
