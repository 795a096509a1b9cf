"""The vision protocol on scikit-learn's digits (linmeta.vision, experiments/paper_vision.py).

The model and task tests use synthetic images and run without scikit-learn; the dataset and the
tiny experiment need it (``pip install -e '.[vision]'``) and are skipped without it."""
import functools
import json
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import tiny_claim_runs
from linmeta.families.paper import vision

MIXER = vision.ModelSpec("mixer", width=8, patch=2, token_expansion=2)
LINEAR = vision.ModelSpec("linear", width=5)


def _images(key, n=6):
    return jax.random.normal(key, (n, 64))


def _merged(spec, params, adapters):
    """The base with every adapter folded into its weight: W + up @ down."""
    out = dict(params)
    for name, a in adapters.items():
        out[name] = params[name]._replace(weight=params[name].weight + a.up @ a.down)
    return out


@functools.partial(jax.jit, static_argnums=0)
def _adapter_outputs(spec, key):
    """Base model, model with adapters at their start, model with random adapters, and the base
    with those adapters merged into its weights by hand; all on the same images."""
    params = vision.init_params(key, spec)
    X = _images(jax.random.fold_in(key, 1))
    ads0 = vision.init_adapters(jax.random.fold_in(key, 2), spec, rank=1)
    ads = {n: a._replace(up=0.3 * jax.random.normal(jax.random.fold_in(key, i), a.up.shape))
           for i, (n, a) in enumerate(ads0.items())}
    return (vision.apply(spec, params, None, X), vision.apply(spec, params, ads0, X),
            vision.apply(spec, params, ads, X),
            vision.apply(spec, _merged(spec, params, ads), None, X),
            jnp.max(jnp.stack([jnp.max(jnp.abs(a.up)) for a in ads0.values()])))


@pytest.mark.parametrize("spec", [MIXER, LINEAR], ids=["mixer", "linear"])
def test_adapter_at_its_start_is_the_base_and_otherwise_adds_up_down(spec):
    base, at_start, adapted, merged, up_max = _adapter_outputs(spec, jax.random.key(0))
    # LoRA's start: up = 0, so the adapted model is the base model exactly
    assert float(up_max) == 0.0
    np.testing.assert_array_equal(at_start, base)
    # a non-zero adapter acts as the weight W + up @ down (the base merged by hand, no adapter)
    np.testing.assert_allclose(adapted, merged, rtol=1e-12, atol=1e-12)
    assert float(jnp.max(jnp.abs(adapted - base))) > 1e-3
    # rank-r factors have the shapes (r, in) and (out, r); one per task when asked
    stacked = jax.eval_shape(lambda: vision.init_adapters(jax.random.key(0), spec, rank=2,
                                                          n_tasks=3))
    for name, (n_in, n_out) in vision.layer_shapes(spec).items():
        assert stacked[name].down.shape == (3, 2, n_in)
        assert stacked[name].up.shape == (3, n_out, 2)


def test_linear_network_is_the_product_of_its_two_layers():
    params = vision.init_params(jax.random.key(3), LINEAR)
    X = np.asarray(_images(jax.random.key(4)))
    W = np.asarray(params["head"].weight) @ np.asarray(params["hidden"].weight)  # (2, 64)
    np.testing.assert_allclose(jax.jit(vision.apply, static_argnums=0)(LINEAR, params, None, X),
                               X @ W.T, rtol=1e-12)
    assert params["hidden"].bias is None and params["head"].bias is None


def test_trainable_parameter_counts_match_the_formula():
    # Mixer, 8x8 images, patches 2x2 -> 16 patches of 4 pixels, width 16, token expansion 4,
    # channel width 16 / 2: layers (in, out) = (4,16) (16,64) (64,16) (16,8) (8,16) (16,2)
    spec = vision.ModelSpec("mixer", width=16, patch=2)
    assert vision.n_lora_params(spec, 1) == 20 + 80 + 80 + 24 + 24 + 18 == 246
    assert vision.n_lora_params(spec, 3) == 3 * 246
    assert vision.n_head_params(spec) == 16 * 2 + 2
    lin = vision.ModelSpec("linear", width=16)
    assert vision.n_lora_params(lin, 1) == (64 + 16) + (16 + 2) == 98
    assert vision.n_head_params(lin) == 32
    # the counts are the sizes of what fine-tuning trains
    for s in (spec, lin):
        ads = jax.eval_shape(lambda: vision.init_adapters(jax.random.key(0), s, rank=1))
        assert sum(x.size for x in jax.tree.leaves(ads)) == vision.n_lora_params(s, 1)
        head = jax.eval_shape(lambda: vision.init_params(jax.random.key(0), s))["head"]
        assert sum(x.size for x in jax.tree.leaves(head)) == vision.n_head_params(s)


def _synthetic(per_class=(9, 8, 10, 9, 8, 11, 9, 10, 12, 9)):
    """Images that carry their own id: pixel 0 = id, pixel 1 = 0, pixel 2 = 1 (recoverable after
    any affine rescaling as (p0 - p1) / (p2 - p1)); the other pixels random."""
    rng = np.random.default_rng(0)
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(per_class)])
    rng.shuffle(labels)
    images = rng.uniform(0, 16, size=(labels.size, 64))
    images[:, 0], images[:, 1], images[:, 2] = np.arange(labels.size), 0.0, 1.0
    return images, labels


def _ids(X):
    X = np.asarray(X)
    return np.rint((X[..., 0] - X[..., 1]) / (X[..., 2] - X[..., 1])).astype(int)


def test_tasks_are_the_class_pairs_with_labels_class_mod_2():
    images, labels = _synthetic()
    data = vision.build_tasks(images, labels, n_train_per_class=5)
    assert data.X.shape == (4, 10, 64) and data.y.shape == (4, 10)
    seen = []
    for t, pair in enumerate(vision.TASK_PAIRS):
        ids = _ids(data.X[t])
        assert set(labels[ids]) == set(pair)
        np.testing.assert_array_equal(np.asarray(data.y[t]), labels[ids] % 2)
        assert [int(np.sum(labels[ids] == c)) for c in pair] == [5, 5]
        seen.append(ids)
    train_new, test_new = _ids(data.X_new), _ids(data.X_test)
    assert set(labels[train_new]) == set(labels[test_new]) == {8, 9}
    np.testing.assert_array_equal(np.asarray(data.y_new), labels[train_new] % 2)
    np.testing.assert_array_equal(np.asarray(data.y_test), labels[test_new] % 2)
    # every image at most once; the unseen task's test images: all its images not trained on
    all_ids = np.concatenate(seen + [train_new, test_new])
    assert len(set(all_ids)) == all_ids.size
    assert test_new.size == 12 + 9 - 10
    # the class pairs are disjoint and leave out the unseen pair
    classes = [c for p in vision.TASK_PAIRS for c in p]
    assert len(set(classes)) == 8 and not set(classes) & set(vision.UNSEEN_PAIR)
    # pixels standardised with the retraining images' mean and standard deviation
    assert abs(float(jnp.mean(data.X))) < 1e-12 and abs(float(jnp.std(data.X)) - 1) < 1e-12


def test_bad_input_names_the_argument():
    images, labels = _synthetic()
    with pytest.raises(ValueError, match="n_train_per_class"):
        vision.build_tasks(images, labels, n_train_per_class=8)  # smallest class: 8 images
    with pytest.raises(ValueError, match="every class once"):
        vision.build_tasks(images, labels, n_train_per_class=2, pairs=((0, 1), (1, 2)))
    with pytest.raises(ValueError, match="images"):
        vision.build_tasks(images[:, :10], labels, n_train_per_class=2)
    with pytest.raises(ValueError, match="patch"):
        vision.init_params(jax.random.key(0), vision.ModelSpec("mixer", patch=3))
    with pytest.raises(ValueError, match="rank"):
        vision.init_adapters(jax.random.key(0), LINEAR, rank=3)  # head has 2 outputs
    data = vision.build_tasks(images, labels, n_train_per_class=4)
    keys = jax.random.split(jax.random.key(0), 2)
    with pytest.raises(ValueError, match="method"):
        vision.run_method("maml", LINEAR, data, keys)
    with pytest.raises(ValueError, match="batch"):
        vision.run_method("standard", LINEAR, data, keys, batch=100)
    with pytest.raises(ValueError, match="reptile_step"):
        vision.run_method("reptile", LINEAR, data, keys, batch=2, reptile_step=1.5)


def _separable(per_class=12, shift=0.4):
    """Random images whose mean depends on the label (class mod 2): every task is learnable."""
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(10), per_class)
    sign = np.where(labels % 2 == 0, 1.0, -1.0)[:, None]
    direction = rng.normal(size=64)
    return 8 + 3 * rng.normal(size=(labels.size, 64)) + shift * 3 * sign * direction, labels


def test_reptile_moves_towards_the_inner_solutions():
    """Reptile's outer step theta + eps (phi - theta) lowers the task losses; with the opposite
    sign (the official vision code's) theta moves away from every inner solution."""
    images, labels = _separable()
    data = vision.build_tasks(images, labels, n_train_per_class=10)
    sched = vision.Schedule(batch=5, epochs=6, epochs_ft=1, inner_steps=4)
    hyper = vision.Hyper(*(jnp.asarray(v) for v in (1e-3, 1e-3, 0.0, 0.05, 0.5)))
    _, hist = jax.jit(lambda k: vision.retrain("reptile", LINEAR, hyper, sched, data, k))(
        jax.random.key(0))
    # 6 epochs of 4 cycles (20 images per task, batches of 5) over 4 tasks = 96 mini-batch
    # gradients = 24 outer steps of 4 inner steps
    assert hist.shape == (24,) and float(hist[-1]) < 0.5 * float(hist[0])


def test_missing_scikit_learn_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails
    with pytest.raises(ModuleNotFoundError, match=r"pip install -e '\.\[vision\]'"):
        vision.load_digits_arrays()


# ----------------------------------------------------------------------------- real data

# the tiny experiment runs in the background chain of tests/helpers.py (a subprocess started when
# collection finishes, overlapping the other tests; it is compile-bound)
tiny_runs = tiny_claim_runs({}, "vision", name="tiny_runs", body="""
try:
    import sklearn  # noqa: F401
except ImportError:
    pass
else:
    t0 = time.perf_counter()
    importlib.import_module("experiments.paper_vision").main("tiny", out)
    secs["vision"] = time.perf_counter() - t0
""")


@pytest.fixture(scope="module")
def tiny(tiny_runs):
    pytest.importorskip("sklearn")
    out, _ = tiny_runs
    return json.loads((out / "paper_vision_tiny.json").read_text()), out


def test_tiny_experiment_writes_table_json_figure(tiny):
    from experiments import paper_vision

    result, out = tiny
    for ext in ("md", "json", "png", "pdf"):
        assert (out / f"paper_vision_tiny.{ext}").stat().st_size > 500
    rows = result["rows"]
    assert {(r["model"], r["method"], r["finetune"]) for r in rows} == {
        (m, meth, ft) for m in ("linear", "mixer") for meth in vision.METHODS
        for ft in vision.FINETUNES}
    models = paper_vision.SETTINGS["tiny"]["models"]
    for r in rows:
        acc = r["accuracy"]
        assert len(acc["per_seed"]) == result["n_seeds"]
        assert all(0.0 <= a <= 1.0 for a in acc["per_seed"])
        assert math.isclose(acc["mean"], float(np.mean(acc["per_seed"])))
        assert math.isclose(acc["se"], float(np.std(acc["per_seed"], ddof=1)
                                             / math.sqrt(result["n_seeds"])))
        spec = models[r["model"]]
        assert r["trainable_params"] == (vision.n_lora_params(spec, 1) if r["finetune"] == "lora"
                                         else vision.n_head_params(spec))
        assert math.isfinite(r["final_retrain_loss_mean"])
    assert result["dtype"] == "float32" and result["computed_in"] == ["float32"]
    table = (out / "paper_vision_tiny.md").read_text()
    assert table.count("| MLP-Mixer |") == 8 and table.count("| two-layer linear network |") == 8
    # the unseen task comes from the real dataset: classes 8 and 9 of load_digits
    assert result["data"]["unseen_train_images"] == 2 * 24
    assert result["data"]["unseen_test_images"] == 174 + 180 - 2 * 24


def test_command_line_refuses_bad_arguments(tmp_path, capsys):
    from experiments import paper_vision

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as exc:
        paper_vision.cli(["--setting", "tiny", "--out", str(blocker / "sub")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "error: output folder" in err and "is a file, not a folder" in err and "\n" not in err
    with pytest.raises(SystemExit) as exc:
        paper_vision.cli(["--setting", "tiny", "--seed", "-1"])
    assert exc.value.code == 2
    assert "--seed must be an integer in [0," in capsys.readouterr().err
    with pytest.raises(ValueError, match="seed"):
        paper_vision.run("tiny", seed=-3)
