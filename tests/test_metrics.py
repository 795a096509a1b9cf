"""Recovery metrics against SciPy / NumPy."""
import numpy as np
import scipy.linalg
from hypothesis import given, strategies as st

from linmeta.core import metrics


@given(st.integers(0, 10 ** 6), st.sampled_from([(5, 1), (6, 2), (7, 3)]))
def test_procrustes_against_scipy(seed, shape):
    d, k = shape
    rng = np.random.default_rng(seed)
    U, W = rng.normal(size=(d, k)), rng.normal(size=(d, k))
    R, _ = scipy.linalg.orthogonal_procrustes(U, W)  # argmin ||U R - W||
    np.testing.assert_allclose(metrics.procrustes_distance(U, W), np.linalg.norm(U @ R - W),
                               rtol=1e-9, atol=1e-9)
    Q, _ = np.linalg.qr(rng.normal(size=(k, k)))
    assert float(metrics.procrustes_distance(U @ Q, U)) < 1e-6
    assert float(metrics.adapter_error(U @ Q, U)) < 1e-12


@given(st.integers(0, 10 ** 6), st.sampled_from([(6, 2, 2), (7, 3, 2), (5, 1, 1)]))
def test_principal_angles_against_scipy(seed, shape):
    d, a, b = shape
    rng = np.random.default_rng(seed)
    X, Y = rng.normal(size=(d, a)), rng.normal(size=(d, b))
    want = np.sort(scipy.linalg.subspace_angles(X, Y))
    np.testing.assert_allclose(metrics.principal_angles(X, Y), want, atol=1e-10)
    # tiny angles are resolved (arccos alone would lose them)
    Z = X + 1e-9 * rng.normal(size=X.shape)
    assert 0 < float(np.max(metrics.principal_angles(X, Z))) < 1e-7
    np.testing.assert_allclose(metrics.subspace_distance(X, Y), np.sin(want.max()), atol=1e-10)


def test_numerical_rank_and_errors():
    rng = np.random.default_rng(0)
    M = rng.normal(size=(6, 2)) @ rng.normal(size=(2, 6))
    assert int(metrics.numerical_rank(M)) == 2 == np.linalg.matrix_rank(M)
    Q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    S = Q @ np.diag([3.0, 2.0, 1e-6, 1e-6, 0.0, 0.0]) @ Q.T
    assert int(metrics.numerical_rank(S, rtol=1e-8)) == 4
    assert int(metrics.numerical_rank(S, rtol=1e-4)) == 2
    assert int(metrics.numerical_rank(S, atol=2.5)) == 1
    A = rng.normal(size=(4, 4))
    np.testing.assert_allclose(metrics.base_error(A + 1.0, A), 4.0)
    np.testing.assert_allclose(metrics.base_error(2 * A, A, relative=True), 1.0)
