"""Rank-and-task heatmaps (experiments/heatmaps.py): tiny setting, measured beside theory."""
import numpy as np
import pytest

from experiments import heatmaps


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("fig")
    return heatmaps.main("tiny", out), out


def test_tiny_writes_both_figures(tiny):
    result, out = tiny
    for stem in ("heatmap_base_error", "heatmap_finetune_error"):
        for ext in ("png", "pdf"):
            assert (out / f"{stem}.{ext}").stat().st_size > 1000
    assert sorted(result["figures"]) == sorted(str(out / f"{s}.{e}") for s in
                                               ("heatmap_base_error", "heatmap_finetune_error")
                                               for e in ("png", "pdf"))


def test_sr_population_equals_theory(tiny):
    """Pooled least squares (core solver) against A* + Rbar and the Eckart-Young tail (theory)."""
    g = tiny[0]["grids"]
    pop, sr = heatmaps.SOURCES.index("population"), heatmaps.METHODS.index("sr")
    for q in ("base", "ft"):
        meas, pred = g[f"{q}_measured"][pop, sr], g[f"{q}_predicted"][pop, sr]
        assert np.all(np.isfinite(pred)) and np.all(pred > 0)
        np.testing.assert_allclose(meas, pred, rtol=0, atol=1e-8)


def test_meta_lora_population_recovers_where_claimed(tiny):
    result = tiny[0]
    cfg, g, claimed = result["config"], result["grids"], result["claimed"]
    pop, ml = heatmaps.SOURCES.index("population"), heatmaps.METHODS.index("meta_lora")
    want = np.array([[heatmaps.claimed(cfg["d"], k, T) for T in cfg["Ts"]] for k in cfg["ks"]])
    np.testing.assert_array_equal(claimed, want)
    assert claimed.any() and not claimed.all()  # the tiny grid has both kinds of cell
    for q in ("base", "ft"):
        # measured against the predicted grid wherever the theory predicts (worst seed, C3's
        # recovery threshold), and every cell measured
        meas, pred = g[f"{q}_measured_max"][pop, ml], g[f"{q}_predicted"][pop, ml]
        has = np.isfinite(pred)
        np.testing.assert_array_equal(has, claimed)
        np.testing.assert_allclose(meas[has], pred[has], rtol=0, atol=1e-6)
        assert np.all(np.isfinite(meas))


def test_finite_n_meta_lora_base_beats_sr_where_claimed(tiny):
    result = tiny[0]
    g, claimed = result["grids"], result["claimed"]
    fin = heatmaps.SOURCES.index("finite N")
    ml, sr = heatmaps.METHODS.index("meta_lora"), heatmaps.METHODS.index("sr")
    meas = g["base_measured"][fin]
    # SR keeps its population bias ||Rbar|| / ||A*|| (order 1); Meta-LoRA only the noise floor
    assert np.all(meas[ml][claimed] < 0.1 * meas[sr][claimed])
    assert np.all(np.isfinite(meas)) and np.all(meas > 0)


def test_unknown_setting_is_rejected():
    with pytest.raises(ValueError, match="setting"):
        heatmaps.run("huge")
