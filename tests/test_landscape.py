"""Tests of linmeta.landscape: derivatives against independent computations, the zero-mode count,
the classifier on hand-built points, and the critical-point finder."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import linmeta
from linmeta.methods import landscape as L
from tests.helpers import count_compiles


def _np_G(U, R):
    """G(U) in plain NumPy: 1/2 sum_t ||E_t - Ebar||^2."""
    E = R - np.einsum("tik,tjk->tij", U, U)
    D = E - E.mean(0)
    return 0.5 * np.sum(D * D)


def _np_hessian_fd(U, R, h=1e-4):
    """Central second differences of the NumPy G (G is a quartic: error O(h^2))."""
    x0 = U.reshape(-1)
    n = x0.size
    f = lambda x: _np_G(x.reshape(U.shape), R)  # noqa: E731
    H = np.zeros((n, n))
    for i in range(n):
        for j in range(i, n):
            ei, ej = np.zeros(n), np.zeros(n)
            ei[i], ej[j] = h, h
            v = (f(x0 + ei + ej) - f(x0 + ei - ej) - f(x0 - ei + ej) + f(x0 - ei - ej)) / (4 * h * h)
            H[i, j] = H[j, i] = v
    return H


def _truth(seed, d, k, T):
    return linmeta.sample_truth(jax.random.key(seed), d, k, T)


@pytest.mark.parametrize("T", [2, 3])
def test_hessian_matches_finite_differences_and_autodiff(T):
    d, k = 4, 2
    truth = _truth(0, d, k, T)
    R = np.asarray(truth.R_star)
    U = np.asarray(jax.random.normal(jax.random.key(1), (T, d, k)))
    H = np.asarray(L.hessian(U, R))
    H_fd = _np_hessian_fd(U, R)
    assert np.max(np.abs(H - H_fd)) < 1e-5 * np.max(np.abs(H_fd))
    # the TaskStats path (automatic differentiation of T * reduced_objective) agrees in the population
    H_stats = np.asarray(L.hessian(U, linmeta.population(truth)))
    np.testing.assert_allclose(H_stats, H, atol=1e-10 * np.max(np.abs(H)))
    # gradient: -2 D_t U_t
    E = R - np.einsum("tik,tjk->tij", U, U)
    g_np = -2 * (E - E.mean(0)) @ U
    np.testing.assert_allclose(np.asarray(L.gradient(U, R)), g_np, atol=1e-12 * np.max(np.abs(g_np)))
    assert abs(float(L.objective(U, R)) - _np_G(U, R)) < 1e-12 * _np_G(U, R)


def test_zero_is_a_strict_saddle_with_the_analytic_hessian():
    d, k, T = 6, 2, 3
    R = np.asarray(_truth(2, d, k, T).R_star)
    U = np.zeros((T, d, k))
    Dstar = R - R.mean(0)
    H_exact = np.zeros((T * d * k,) * 2)
    for t in range(T):
        sl = slice(t * d * k, (t + 1) * d * k)
        H_exact[sl, sl] = -2 * np.kron(Dstar[t], np.eye(k))  # flattening (t, i, a) row-major
    H = np.asarray(L.hessian(U, R))
    np.testing.assert_allclose(H, H_exact, atol=1e-12 * np.max(np.abs(H_exact)))
    info = L.analyse_point(U, R)
    assert int(info.label) == L.STRICT_SADDLE
    assert float(info.grad_norm) == 0.0
    assert int(info.n_orbit) == 0  # the orbit of 0 is a point: nothing to discount
    lam_max = max(np.linalg.eigvalsh(D)[-1] for D in Dstar)
    assert abs(float(info.min_eig) + 2 * lam_max) < 1e-10 * lam_max


@pytest.mark.parametrize("T,boosts", [(2, True), (3, False), (2, False)])
def test_global_minimum_and_zero_mode_count(T, boosts):
    d, k = 6, 2
    truth = _truth(3, d, k, T)
    R = truth.R_star
    Q = jnp.linalg.qr(jax.random.normal(jax.random.key(4), (T, k, k)))[0]
    U = truth.U_star @ Q
    info = L.analyse_point(U, R, boosts=boosts)
    assert int(info.label) == L.GLOBAL_MIN
    assert float(info.objective) < 1e-24 * float(info.scale) ** 2
    expected = L.known_zero_modes(T, k, boosts)
    assert int(info.n_orbit) == expected
    if boosts or T >= 3:
        # the symmetries are all the flat directions at a generic global minimum (3k <= d, T >= 3)
        assert int(info.n_flat) == 0
        w = np.linalg.eigvalsh(np.asarray(L.hessian(U, R)))  # independent count on the full H
        c = float(info.scale)
        assert int(np.sum(np.abs(w) <= 1e-8 * c)) == expected
        assert np.min(w) > -1e-8 * c
    else:
        # at T = 2 without discounting the k^2 boosts they show up as flat directions
        assert int(info.n_flat) == k * k


def test_hyperbolic_family_is_flat_and_tangent_to_the_boosts():
    d = 4
    e = np.eye(d)
    U_star = np.stack([e[:, :1], e[:, 1:2]])  # U*_1 = e1, U*_2 = e2 (k = 1)
    R = np.einsum("tik,tjk->tij", U_star, U_star)
    th = np.linspace(-1.5, 1.5, 7)
    for t in th:
        u1 = np.cosh(t) * e[:, 0] + np.sinh(t) * e[:, 1]
        u2 = np.sinh(t) * e[:, 0] + np.cosh(t) * e[:, 1]
        U = np.stack([u1[:, None], u2[:, None]])
        assert abs(float(L.objective(U, R))) < 1e-12
        # d/dth (u1, u2) = (u2, u1) is the boost generator (U_2 B^T, U_1 B) with B = 1
        Z = np.asarray(L.orbit_tangent(U, boosts=True))
        np.testing.assert_allclose(Z[:, 0], np.concatenate([u2, u1]), atol=1e-14)


def test_classifier_branches():
    d, k, T = 2, 1, 2
    R = _truth(5, d, k, T).R_star
    U0 = jnp.zeros((T, d, k))
    info = L.analyse_point(U0, R)
    assert int(info.label) == L.STRICT_SADDLE
    # a Hessian tolerance above |min eig| turns the same point into a (reported) spurious minimum
    loose = L.Tolerances(1e-12, 1e-6, 2 * abs(float(info.min_eig)) / float(info.scale), 1e-7)
    assert int(L.analyse_point(U0, R, tol=loose).label) == L.SPURIOUS_MIN
    # near a global minimum, a loose gradient tolerance must not certify a spurious minimum
    truth = _truth(5, d, k, T)
    near = truth.U_star + 1e-4 * jax.random.normal(jax.random.key(7), (T, d, k))
    loose_g = L.Tolerances(1e-12, 1.0, 1e-6, 1e-7)
    info_near = L.analyse_point(near, R, tol=loose_g)
    assert float(info_near.objective) > 1e-12 * float(info_near.scale) ** 2
    assert int(info_near.label) == L.NOT_CONVERGED
    far = jax.random.normal(jax.random.key(6), (T, d, k))
    assert int(L.analyse_point(far, R).label) == L.NOT_CONVERGED
    assert L.census(np.array([0, 2, 2, 3])) == {"global minimum": 1, "spurious local minimum": 0,
                                              "strict saddle": 2, "not converged": 1}


def test_finder_reaches_saddle_and_global_minimum_and_agrees_with_independent_hessians():
    # d = Tk: every D*_t is invertible, so 0 is a nondegenerate saddle and small starts fall into it.
    d, k, T = 3, 1, 3
    truth = _truth(7, d, k, T)
    R = truth.R_star
    small = 1e-3 * jax.random.normal(jax.random.key(8), (3, T, d, k))
    near_opt = truth.U_star[None] + 1e-2 * jax.random.normal(jax.random.key(9), (3, T, d, k))
    rand = L.random_starts(jax.random.key(11), 6, T, d, k)
    cp = L.find_critical_points(R, jnp.concatenate([small, near_opt, rand]), max_iter=100)
    labels = np.asarray(cp.info.label)
    c = float(L.objective_scale(R))
    assert list(labels[:3]) == [L.STRICT_SADDLE] * 3
    assert np.max(np.abs(np.asarray(cp.U[:3]))) < 1e-5 * c ** 0.5  # the saddle at U = 0
    assert list(labels[3:6]) == [L.GLOBAL_MIN] * 3
    Rn = np.asarray(R)
    for U, lab, gn in zip(np.asarray(cp.U), labels, np.asarray(cp.info.grad_norm)):
        if lab == L.NOT_CONVERGED:
            continue
        assert gn <= 1e-6 * c ** 1.5
        w = np.linalg.eigvalsh(_np_hessian_fd(U, Rn, h=1e-3))  # independent of the library
        if lab == L.STRICT_SADDLE:
            assert w[0] < -1e-4 * c
        if lab == L.GLOBAL_MIN:
            assert _np_G(U, Rn) < 1e-12 * c ** 2
    R2, starts2 = R + 0.5, jnp.concatenate([rand, near_opt, small])
    with count_compiles() as n:
        L.find_critical_points(R2, starts2, max_iter=100)
    assert n() == 0


def test_float32_and_validation():
    d, k, T = 4, 1, 3
    truth = linmeta.sample_truth(jax.random.key(12), d, k, T, dtype=jnp.float32)
    info = L.analyse_point(truth.U_star, truth.R_star)
    assert info.objective.dtype == jnp.float32
    assert int(info.label) == L.GLOBAL_MIN
    with pytest.raises(ValueError, match="U must have shape"):
        L.analyse_point(jnp.zeros((T, d + 1, k)), truth.R_star)
    with pytest.raises(ValueError, match="boosts"):
        L.analyse_point(truth.U_star, truth.R_star, boosts=True)
    with pytest.raises(ValueError, match="max_iter"):
        L.find_critical_points(truth.R_star, truth.U_star[None], max_iter=0)
    with pytest.raises(ValueError, match="scales"):
        L.random_starts(jax.random.key(0), 2, T, d, k, scales=())


# ----------------------------------------------------------------------------- census classes
def test_escaped_and_census_counts_on_hand_built_runs():
    G, SP, SA, NC = L.GLOBAL_MIN, L.SPURIOUS_MIN, L.STRICT_SADDLE, L.NOT_CONVERGED
    label = np.array([G, SP, SP, SA, NC, NC, NC, G, NC])
    n_flat = np.array([0, 0, 2, 0, 0, 0, 0, 0, 0])
    size_mid = np.array([1, 1, 1, 1, 10, 10, 3, 1, 1.0])
    size = np.array([1, 1, 1, 1, 30, 11, 5, np.inf, 2.0])
    diverged = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1], bool)
    # run 4: not converged, >= 10 and >= 1.25 x its size half-way; run 5: grew only 1.1x;
    # run 6: grew but stayed below 10; run 7: non-finite; run 8: diverged
    want = np.array([0, 0, 0, 0, 1, 0, 0, 1, 1], bool)
    esc = L.escaped(label, size_mid, size, diverged)
    np.testing.assert_array_equal(esc, want)
    np.testing.assert_array_equal(np.asarray(L.escaped(jnp.asarray(label), jnp.asarray(size_mid),
                                                       jnp.asarray(size), jnp.asarray(diverged))),
                                  want)
    assert not L.escaped(NC, 10.0, 10.0 * L.ESCAPE_GROWTH * 0.99)  # growth just below the factor
    counts = L.census_counts(label, n_flat, esc)
    assert counts == {"runs": 9, "global": 1, "strict spurious": 1, "degenerate spurious": 1,
                      "saddle": 1, "not converged": 2, "escaped to infinity": 3}
    assert tuple(counts) == L.CENSUS_KEYS
    with pytest.raises(ValueError, match="same size"):
        L.census_counts(label, n_flat[:-1], esc)


@settings(max_examples=25)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.booleans()), min_size=0,
                max_size=40))
def test_census_counts_partition_the_runs(runs):
    label = np.array([r[0] for r in runs], int)
    n_flat = np.array([r[1] for r in runs], int)
    esc = np.array([r[2] for r in runs], bool)
    counts = L.census_counts(label, n_flat, esc)
    assert sum(v for n, v in counts.items() if n != "runs") == counts["runs"] == len(runs)
    expect = dict(runs=len(runs), glob=0, strict=0, degen=0, saddle=0, nc=0, esc=0)
    for lab, nf, e in runs:   # one run at a time, independently of the vectorised code
        key = ("esc" if e else "glob" if lab == L.GLOBAL_MIN else
               ("strict" if nf == 0 else "degen") if lab == L.SPURIOUS_MIN else
               "saddle" if lab == L.STRICT_SADDLE else "nc")
        expect[key] += 1
    assert list(counts.values()) == list(expect.values())


def test_finder_records_its_size_half_way():
    """size_mid of a run of 2m iterations is the end size of the same run stopped after m."""
    d, k, T = 3, 1, 3
    truth = _truth(7, d, k, T)
    R = truth.R_star
    U0 = L.random_starts(jax.random.key(13), 12, T, d, k, scales=(0.5, 1.0, 2.0))
    full = L.find_critical_points(R, U0, max_iter=100)
    half = L.find_critical_points(R, U0, max_iter=50)
    np.testing.assert_allclose(np.asarray(full.size_mid), np.asarray(half.info.size), rtol=1e-9)
    stopped = np.asarray(full.iterations) <= 50   # stopped before half-way: its own end point
    np.testing.assert_allclose(np.asarray(full.size_mid)[stopped],
                               np.asarray(full.info.size)[stopped], rtol=1e-12)


# ----------------------------------------------------------------------------- census record (C8)
def _fake_cell(labels_by_method, d, k, T, truths, starts, base_error=0.0):
    """run_cell's output with prescribed labels (no solver), hand-built checks that hold."""
    from linmeta.families.paper.claims import c8

    n = truths * starts
    Us = np.random.default_rng(d * 10 + k).normal(size=(truths, T, d, k))
    R = Us @ np.swapaxes(Us, -1, -2)
    D = R - R.mean(axis=1, keepdims=True)
    lam = np.linalg.eigvalsh(D)[..., -1].max(axis=1)
    runs = {}
    for m in c8.METHODS:
        lab = np.resize(np.asarray(labels_by_method[m]), n)
        runs[m] = dict(label=lab, n_flat=np.where(np.arange(n) % 2 == 0, 0, 1),
                       objective=np.where(lab == L.GLOBAL_MIN, 0.0, 1e-3), grad_norm=np.zeros(n),
                       min_eig=np.full(n, 0.1), size=np.ones(n), size_mid=np.ones(n),
                       escaped=np.zeros(n, bool), base_error=np.full(n, base_error),
                       U=np.zeros((n, T, d, k)), truth_index=np.repeat(np.arange(truths), starts),
                       start_index=np.tile(np.arange(starts), truths),
                       scale=np.tile(c8.start_scales(starts), truths))
    checks = dict(R=R, zero_label=np.full(truths, L.STRICT_SADDLE), zero_grad=np.zeros(truths),
                  zero_min_eig=-2 * lam, zero_n_orbit=np.zeros(truths, int),
                  zero_hess_norm=np.ones(truths), opt_label=np.full(truths, L.GLOBAL_MIN),
                  opt_objective=np.zeros(truths),
                  opt_n_orbit=np.full(truths, L.known_zero_modes(T, k)),
                  opt_n_flat=np.zeros(truths, int), opt_Hz=np.zeros(truths))
    return dict(runs=runs, checks=checks, seconds={m: 0.0 for m in c8.METHODS})


def test_census_record_schema_aggregation_and_resume(tmp_path, monkeypatch):
    import json

    from linmeta.families.paper.claims import c8

    G, SP, SA, NC = L.GLOBAL_MIN, L.SPURIOUS_MIN, L.STRICT_SADDLE, L.NOT_CONVERGED
    labels = {"newton": [G, G, SP, SA], "alternating": [G, NC, NC, SP],
              "critical points": [SA, SA, SA, G]}
    calls = []

    def fake(key, d, k, T, *, truths, starts, **kw):
        calls.append((d, k, T))
        if fake.fail_at == (d, k, T):
            raise KeyboardInterrupt
        return _fake_cell(labels, d, k, T, truths, starts)

    monkeypatch.setattr(c8, "run_cell", fake)
    cfg = dict(c8.SETTINGS["tiny"], d=(2, 3), k=(1, 2), T=(3, 4), truths=2, starts=4)
    cells = c8.grid_cells(cfg["d"], cfg["k"], cfg["T"])
    assert cells == [(2, 1, 3), (2, 1, 4), (2, 2, 3), (2, 2, 4), (3, 1, 3), (3, 1, 4),
                     (3, 2, 3), (3, 2, 4)]
    path = tmp_path / "c8_census.json"
    fake.fail_at = cells[3]
    with pytest.raises(KeyboardInterrupt):       # interrupted after three cells
        c8.census("tiny", 0, cfg=cfg, checkpoint=path)
    part = json.loads(path.read_text())
    assert part["complete"] is False and len(part["cells"]) == 3
    calls.clear()
    fake.fail_at = None
    record, raw = c8.census("tiny", 0, cfg=cfg, checkpoint=path)
    assert calls == cells[3:]                    # resumed: only the missing cells ran
    assert set(raw) == set(cells[3:])
    on_disk = json.loads(path.read_text())
    assert on_disk["complete"] is True and on_disk["schema"] == c8.SCHEMA
    assert [(c["d"], c["k"], c["T"]) for c in on_disk["cells"]] == cells
    for c in on_disk["cells"]:
        assert c["region"] == ("3k <= d" if 3 * c["k"] <= c["d"] else "3k > d")
        for m in c8.METHODS:
            r = c["methods"][m]
            lab = np.resize(labels[m], 8)
            n_flat = np.arange(8) % 2
            assert r["runs"] == 8
            assert r["global"] == int(np.sum(lab == G)) == r["global, A_hat = A*"]
            assert r["strict spurious"] == int(np.sum((lab == SP) & (n_flat == 0)))
            assert r["degenerate spurious"] == int(np.sum((lab == SP) & (n_flat == 1)))
            assert r["saddle"] == int(np.sum(lab == SA))
            assert r["not converged"] == int(np.sum(lab == NC))
            assert r["escaped to infinity"] == 0
            assert len(r["spurious"]) == int(np.sum(lab == SP))
            assert sum(s["runs"] for s in r["by scale"].values()) == 8
        assert c["checks"]["zero_ok"] and c["checks"]["opt_ok"]
    for m in c8.METHODS:
        for n in L.CENSUS_KEYS:
            assert on_disk["totals"][m][n] == sum(c["methods"][m][n] for c in on_disk["cells"])
    # a complete checkpoint with the same header: nothing runs; another config: everything runs
    calls.clear()
    again, _ = c8.census("tiny", 0, cfg=cfg, checkpoint=path)
    assert calls == [] and again["cells"] == on_disk["cells"]
    c8.census("tiny", 0, cfg=dict(cfg, starts=8), checkpoint=path)
    assert calls == cells
    # verdict rows: the checks pass; a non-identifying global minimum where 3k <= d fails C3's row
    rows = c8.verdicts(record)
    assert all(v.passed for v in rows) and sum(v.kind == "check" for v in rows) == 3
    bad = json.loads(json.dumps(on_disk))
    bad["cells"][4]["methods"]["newton"]["global, A_hat != A*"] = 1   # cell (3, 1, 3)
    failed = [v for v in c8.verdicts(bad) if not v.passed]
    assert len(failed) == 1 and "3k <= d" in failed[0].quantity
    with pytest.raises(ValueError, match="setting"):
        c8.run("huge")


def test_committed_full_census_is_complete_and_consistent():
    """figures/c8_census.json (the full run): every cell of the grid, classes partition the runs,
    totals add up, and its verdict rows pass."""
    import json
    import os

    from linmeta.families.paper.claims import c8

    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "figures", "c8_census.json")
    rec = json.loads(open(path).read())
    cfg = c8.SETTINGS["full"]
    assert rec["schema"] == c8.SCHEMA and rec["complete"] is True and rec["setting"] == "full"
    assert [(c["d"], c["k"], c["T"]) for c in rec["cells"]] == c8.grid_cells(cfg["d"], cfg["k"],
                                                                              cfg["T"])
    for c in rec["cells"]:
        for m in c8.METHODS:
            r = c["methods"][m]
            assert r["runs"] == cfg["truths"] * cfg["starts"]
            assert sum(r[n] for n in L.CENSUS_KEYS[1:]) == r["runs"]
            assert r["global, A_hat = A*"] + r["global, A_hat != A*"] + r["global, undecided"] \
                == r["global"]
            assert len(r["spurious"]) == r["strict spurious"] + r["degenerate spurious"]
    assert rec["totals"] == c8.totals(rec)
    assert all(v.passed for v in c8.verdicts(rec))
