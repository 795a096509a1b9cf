"""Difference family (docs/difference.md): truth, methods and closed forms. Per claim an exact
test on a hand-built case and a property test over random problems; float32 with looser
tolerances; bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from linmeta.core.data import matrix_tasks
from linmeta.families.difference import methods, theory, truth as tr
from linmeta.core.losses import ols_solution
from linmeta.methods.standard import pooled_least_squares

from helpers import count_compiles

E = np.eye(3)


def _hand_truth():
    """d = 3, r = 2, directions e1 e1^T and e2 e2^T, base with every entry nonzero."""
    A = np.arange(1.0, 10.0).reshape(3, 3) / 3
    return A, E[:, :2], E[:, :2]


# ----------------------------------------------------------------------------- truth, data
def test_truth_and_task_statistics_from_matrices():
    A, U, V = _hand_truth()
    t = tr.difference_truth(A, U, V, [[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], [[3.0, -1.0]])
    M = np.asarray(tr.task_matrices(t))
    np.testing.assert_allclose(M[2], A + np.diag([1.0, 1.0, 0.0]))
    np.testing.assert_allclose(np.asarray(tr.unseen_matrices(t))[0], A + np.diag([3, -1, 0.0]))
    pop = matrix_tasks(M, 0.5)
    np.testing.assert_allclose(pop.Syx, M)
    np.testing.assert_allclose(pop.Syy, np.sum(M * M, axis=(1, 2)) + 3 * 0.25)
    smp = matrix_tasks(M, 0.0, N=50, key=jax.random.key(0))
    np.testing.assert_allclose(ols_solution(smp), M, atol=1e-10)  # noiseless: exact
    core = tr.sample_difference_truth(jax.random.key(1), 4, 2, 3, core=True)
    assert core.S_star.shape == (3, 2, 2) and tr.is_core(core)
    assert tr.difference_space(core.U_star, core.V_star, core=True).shape == (4, 4, 4)


@pytest.mark.parametrize("call, word", [
    (lambda: tr.difference_truth(np.ones((3, 2)), E[:, :1], E[:, :1], [[1.0]]), "A_star"),
    (lambda: tr.difference_truth(np.eye(3), E[:, :2], E[:, :1], [[1.0, 1.0]]), "V_star"),
    (lambda: tr.difference_truth(np.eye(3), E[:, :2], E[:, :2], [[1.0]]), "S_star"),
    (lambda: tr.sample_difference_truth(jax.random.key(0), 3, 4, 2), "r"),
    (lambda: matrix_tasks(np.ones((2, 3, 3)), 0.1, N=5), "key"),
    (lambda: methods.joint_fit(matrix_tasks(np.ones((2, 3, 3))), 4, key=jax.random.key(0)),
     "rank"),
    (lambda: methods.difference_svd(matrix_tasks(np.ones((2, 3, 3))), 1, kind="x"), "kind"),
])
def test_bad_input_names_the_argument(call, word):
    with pytest.raises(ValueError, match=word):
        call()


# ----------------------------------------------------------------------------- D1
def test_d1_hand_built_two_tasks_have_another_zero_loss_space_three_do_not():
    """T = 2: diag(1, 1, 0) = 1/2 (e1+e2)(e1+e2)^T + 1/2 (e1-e2)(e1-e2)^T, so a second space of
    rank-one directions fits both tasks exactly; a third task A* + e1 e1^T rules it out."""
    A, U, V = _hand_truth()
    S = np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    M = np.asarray(tr.task_matrices(tr.difference_truth(A, U, V, S)))
    W = np.stack([E[0] + E[1], E[0] - E[1]], axis=1)
    ols2, ols3 = M[:2], M
    f2 = methods.profile_objective(jnp.asarray(W), jnp.asarray(W), matrix_tasks(M[:2]),
                                   jnp.asarray(ols2), True)
    f3 = methods.profile_objective(jnp.asarray(W), jnp.asarray(W), matrix_tasks(M),
                                   jnp.asarray(ols3), True)
    assert float(f2) < 1e-28 and float(f3) > 0.01
    L_alt = methods.rank_one_basis(jnp.asarray(W), jnp.asarray(W))
    L_true = tr.difference_space(jnp.asarray(U), jnp.asarray(V))
    assert float(methods.subspace_gap(L_alt, L_true)) > 0.5
    # the truth fits three tasks; its base (orthogonal to L*) is A* minus its diagonal (1,1),(2,2)
    Bt = methods.rank_one_basis(jnp.asarray(U), jnp.asarray(V))
    base, s = methods.inner_solution(Bt, matrix_tasks(M), True)
    want = A.copy()
    want[0, 0] = want[1, 1] = 0.0
    np.testing.assert_allclose(base, want, atol=1e-14)
    np.testing.assert_allclose(np.asarray(s) - np.asarray(s)[0], S - S[0], atol=1e-14)
    assert theory.identifiability(3, 2, 2)["space"] is False
    assert theory.identifiability(3, 2, 3)["space"] is True
    assert theory.identifiability(3, 1, 2)["space"] is True
    assert theory.identifiability(3, 2, 3)["pca_space"] is True
    assert theory.identifiability(5, 3, 3)["pca_space"] is False


@settings(max_examples=3)
@given(seed=st.integers(0, 2 ** 16))
def test_d1_property_three_tasks_recover_the_space_pca_needs_r_plus_one(seed):
    t = tr.sample_difference_truth(jax.random.key(seed), 4, 3, 3)
    src = matrix_tasks(tr.task_matrices(t))
    fit = methods.joint_fit(src, 3, key=jax.random.key(seed + 1), n_starts=6, max_iter=150)
    L = tr.difference_space(t.U_star, t.V_star)
    assert float(fit.objective) < 1e-18 * float(jnp.mean(src.Syy))
    assert float(methods.subspace_gap(fit.basis, L)) < 1e-6
    assert float(theory.base_gap(fit.base, t.A_star, L)) < 1e-6 * float(jnp.linalg.norm(t.A_star))
    pca = methods.difference_svd(src, 3)
    assert float(methods.subspace_gap(pca.basis, L)) > 1e-3   # T - 1 = 2 < r = 3


def test_d1_finite_samples_and_float32():
    """Noiseless finite samples: the finite-sample elimination recovers the space as the
    population one does; float32 input recovers it to float32 accuracy."""
    t = tr.sample_difference_truth(jax.random.key(3), 4, 2, 3)
    M = tr.task_matrices(t)
    L = tr.difference_space(t.U_star, t.V_star)
    smp = matrix_tasks(M, 0.0, N=20, key=jax.random.key(4))
    fit = methods.joint_fit(smp, 2, key=jax.random.key(5), n_starts=3, max_iter=60)
    assert float(methods.subspace_gap(fit.basis, L)) < 1e-6
    fit32 = methods.joint_fit(matrix_tasks(M.astype(jnp.float32)), 2, key=jax.random.key(5),
                              n_starts=3, max_iter=60)
    assert fit32.base.dtype == jnp.float32
    assert float(methods.subspace_gap(fit32.basis, L.astype(jnp.float32))) < 1e-2


# ----------------------------------------------------------------------------- D2
def test_d2_hand_built_constants_and_exact_coefficient_fit():
    assert float(theory.second_order_constant(jnp.asarray(E[:, :2]), jnp.asarray(E[:, :2]))) \
        == pytest.approx(4.0)
    assert theory.coefficient_risk_orthonormal(2, 10, 0.5) == pytest.approx(0.25 * 2 / 8)
    assert theory.full_risk(3, 10, 1.0) == pytest.approx(9 / 6)
    assert theory.lora_risk(4, 1, 10, 1.0) == pytest.approx(7 / 10)
    # noiseless data: the r coefficients are found exactly from a single sample
    A, U, V = _hand_truth()
    t = tr.difference_truth(A, U, V, [[1.0, 2.0]], [[3.0, -1.0]])
    Mn = tr.unseen_matrices(t)
    st1 = matrix_tasks(Mn, 0.0, N=1, key=jax.random.key(0))
    Bt = tr.difference_space(t.U_star, t.V_star)
    np.testing.assert_allclose(methods.finetune_coefficients(t.A_star, Bt, st1), Mn, atol=1e-12)


@given(seed=st.integers(0, 2 ** 16))
def test_d2_property_fit_depends_on_the_span_only(seed):
    """Coefficient-only fine-tuning is invariant to an invertible recombination of the basis."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    t = tr.sample_difference_truth(k1, 4, 2, 2, n_unseen=1)
    st_ = matrix_tasks(tr.unseen_matrices(t), 0.3, N=7, key=k2)
    B = methods.rank_one_basis(t.U_star, t.V_star)
    G = jnp.array([[1.0, 2.0], [-0.5, 1.5]])
    B2 = jnp.einsum("ij,jab->iab", G, B)
    np.testing.assert_allclose(methods.finetune_coefficients(t.A_star, B, st_),
                               methods.finetune_coefficients(t.A_star, B2, st_), atol=1e-11)


# ----------------------------------------------------------------------------- D3
def test_d3_hand_built_expected_bias():
    """d = 2, k = 1, L = span{e1 e1^T}, Rbar = 0: bias = 2 (u1 u2)^2 + u2^4, mean 2 + 3 = 5."""
    B = jnp.asarray(np.outer([1.0, 0], [1.0, 0]))[None]
    assert float(theory.expected_paper_bias(B, jnp.zeros((2, 2)), 1)) == pytest.approx(5.0)
    M = jnp.asarray([[1.0, 2.0], [3.0, 4.0]])
    assert float(theory.projection_bias(B, jnp.zeros((2, 2)), M)) == pytest.approx(4 + 9 + 16)


@given(seed=st.integers(0, 2 ** 16))
def test_d3_property_expected_bias_by_monte_carlo(seed):
    rng = np.random.default_rng(seed)
    d, k, q = 3, 2, 2
    B = jnp.asarray(rng.standard_normal((q, d, d)))
    R_bar = rng.standard_normal((d, d))
    R_bar = jnp.asarray(R_bar @ R_bar.T / d)
    Us = rng.standard_normal((40000, d, k))
    R = jnp.asarray(Us @ Us.transpose(0, 2, 1))
    b = np.asarray(theory.projection_bias(B, R_bar, R))
    want = float(theory.expected_paper_bias(B, R_bar, k))
    assert abs(b.mean() - want) < 5 * b.std() / np.sqrt(b.size)


# ----------------------------------------------------------------------------- D4, D5
def test_d4_inner_loop_closed_form():
    """K inner steps from 0 on the population quadratic: s_K = (I - (I - alpha G)^K) s_opt."""
    t = tr.sample_difference_truth(jax.random.key(2), 3, 2, 3)
    src = matrix_tasks(tr.task_matrices(t))
    A = t.A_star + 0.1
    U, V = t.U_star * 1.3, t.V_star
    s = methods._inner_coefficients(A, U, V, src, 0.4, 3, 5)
    B = jnp.einsum("ai,bi->iab", U, V)
    G = np.asarray(jnp.einsum("iab,jab->ij", B, B))
    s_opt = np.linalg.solve(G, np.asarray(jnp.einsum("iab,tab->it", B, src.Syx - A)))
    want = (np.eye(2) - np.linalg.matrix_power(np.eye(2) - 0.4 * G, 3)) @ s_opt
    np.testing.assert_allclose(s, want.T, atol=1e-12)


def test_d5_copies_count_once_and_a_large_penalty_prunes_everything():
    U = jnp.asarray(np.stack([E[0], E[0], E[1]], axis=1))
    V = jnp.asarray(np.stack([E[1], -E[1], E[2]], axis=1))
    assert int(methods.distinct_directions(U, V, jnp.array([True, True, True]))) == 2
    assert int(methods.distinct_directions(U, V, jnp.array([False, True, False]))) == 1
    t = tr.sample_difference_truth(jax.random.key(0), 3, 1, 4)
    fit = methods.structure_learner(matrix_tasks(tr.task_matrices(t)), 3, lam=1e6,
                                    key=jax.random.key(1), steps=20)
    assert int(fit.kept) == 0 and float(jnp.max(fit.group_norms)) == 0.0


def test_joint_fit_refuses_a_problem_past_the_memory_budget(monkeypatch):
    from linmeta.families.difference import methods as m

    monkeypatch.setattr(m, "memory_budget", lambda: 10 ** 6)
    src = matrix_tasks(np.ones((2, 8, 8)), 0.0, N=20, key=jax.random.key(0))
    with pytest.raises(ValueError, match="GiB budget"):
        m.joint_fit(src, 2, key=jax.random.key(1))
    assert m.joint_fit_memory(8, 2, 2, 8, True) < m.joint_fit_memory(8, 2, 2, 8, False)


def test_structure_learner_penalty_is_traced_one_program():
    t = tr.sample_difference_truth(jax.random.key(3), 4, 2, 5, n_unseen=0)
    st_ = matrix_tasks(tr.task_matrices(t))
    methods.structure_learner(st_, 3, lam=0.1, key=jax.random.key(0), steps=5)
    before = methods._structure_kernel._cache_size()
    with count_compiles() as n:
        for lam in (0.0, 0.3, 2.0):
            methods.structure_learner(st_, 3, lam=lam, key=jax.random.key(1), steps=5)
    assert methods._structure_kernel._cache_size() == before
    assert n() == 0


def test_coefficient_maml_starts_are_independent_draws():
    # one first-order step of rate 1e-12 leaves every start where it began: the base is the
    # pooled least-squares fit, and U and V are independent Gaussian draws (unit-norm columns)
    t = tr.sample_difference_truth(jax.random.key(4), 5, 2, 6, n_unseen=0)
    st_ = matrix_tasks(tr.task_matrices(t))
    fit = methods.coefficient_maml(st_, 2, key=jax.random.key(2), first_order=True, steps=1,
                                   lr=1e-12, n_starts=1)
    np.testing.assert_allclose(fit.base, pooled_least_squares(st_), atol=1e-9)
    cos = np.abs(np.sum(np.asarray(fit.U) * np.asarray(fit.V), axis=0))
    assert np.all(cos < 0.99), cos
