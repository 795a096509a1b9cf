"""Divergence detection (linmeta.divergence) and the library's DivergenceError."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import linmeta
from linmeta.core.divergence import BLOWUP_FACTOR, DivergenceError, check_history, divergence_index
pytestmark = pytest.mark.core


def test_divergence_index_exact_cases():
    assert divergence_index(np.array([1.0, 0.5, 0.1])) == -1
    assert divergence_index(np.array([1.0, 0.5, np.nan, 3.0])) == 2
    assert divergence_index(np.array([1.0, 2.0, 1.5 * BLOWUP_FACTOR])) == 2
    assert divergence_index(np.array([1.0, BLOWUP_FACTOR])) == -1          # not above the factor
    assert divergence_index(np.array([2.0, 1.0, np.inf])) == 2
    # NaN padding (Newton traces) is not divergence, inf is
    assert divergence_index(np.array([1.0, 0.1, np.nan, np.nan]), nan_is_padding=True) == -1
    assert divergence_index(np.array([1.0, np.inf, np.nan]), nan_is_padding=True) == 1
    # several tasks per record: one blowing up is enough
    assert divergence_index(np.array([[1.0, 1.0], [0.5, 5e3], [0.1, 1e9]])) == 1
    # a loss starting at exactly zero: rounding noise is not a blow-up
    assert divergence_index(np.array([0.0, 1e-20, 3e-17])) == -1


def test_divergence_index_under_jit_matches_numpy():
    v = np.array([[3.0, 1.0], [2.0, 1.1], [1.0, 2e3], [np.nan, 1.0]])
    got = jax.jit(divergence_index)(jnp.asarray(v))
    assert int(got) == int(divergence_index(v)) == 2


def test_check_history_names_stage_step_and_iteration():
    with pytest.raises(DivergenceError) as e:
        check_history("standard retraining", np.arange(0, 50, 10),
                      np.array([1.0, 5.0, 4e3, 1e9, np.inf]), {"lr": 7.5})
    msg = str(e.value)
    assert "standard retraining" in msg and "lr=7.5" in msg and "iteration 20" in msg
    assert e.value.iteration == 20 and isinstance(e.value, ValueError)
    check_history("x", np.arange(3), np.array([1.0, 0.5, 0.2]), {"lr": 0.1})  # no error


def _truth():
    return linmeta.sample_truth(jax.random.key(0), 6, 1, 3)


@pytest.mark.parametrize("case", ["sr", "ml_base", "ml_adapter", "ft"])
def test_library_raises_on_a_diverging_step_size(case):
    truth = _truth()
    src = linmeta.population(truth)
    if case == "sr":
        call = lambda: linmeta.standard_retraining(src, method="gd", lr=1e6, steps=50)  # noqa: E731
        name = "lr"
    elif case == "ml_base":
        call = lambda: linmeta.meta_lora(src, 1, key=jax.random.key(1), method="alternating",  # noqa: E731
                                         lr_base=1e6, outer_steps=20)
        name = "lr_base"
    elif case == "ml_adapter":
        call = lambda: linmeta.meta_lora(src, 1, key=jax.random.key(1), method="joint_gd",  # noqa: E731
                                         lr_adapter=10.0, steps=200)
        name = "lr_adapter"
    else:
        base = linmeta.standard_retraining(src).base
        call = lambda: linmeta.finetune(base, linmeta.population(truth, tasks="unseen"), 1,  # noqa: E731
                                        key=jax.random.key(2), lr=1e6, steps=50)
        name = "lr"
    with pytest.raises(DivergenceError, match=name):
        call()


def test_stable_step_sizes_do_not_raise():
    truth = _truth()
    src = linmeta.population(truth)
    linmeta.standard_retraining(src, method="gd", steps=100)
    linmeta.meta_lora(src, 1, key=jax.random.key(1), method="alternating", outer_steps=50)
    base = linmeta.standard_retraining(src).base
    linmeta.finetune(base, linmeta.population(truth, tasks="unseen"), 1, key=jax.random.key(2),
                     steps=100)


def test_no_error_inside_a_callers_jit():
    src = linmeta.population(_truth())
    out = jax.jit(lambda s: linmeta.standard_retraining(s, method="gd", lr=1e6, steps=50).base)(src)
    assert not np.all(np.isfinite(np.asarray(out))) or np.max(np.abs(np.asarray(out))) > 1e10
