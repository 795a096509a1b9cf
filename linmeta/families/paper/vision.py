"""The paper's vision protocol on a small real dataset: Meta-LoRA, standard retraining, last-layer
meta-learning and Reptile on binary tasks built from handwritten digits, then low-rank (or last-layer)
fine-tuning on an unseen task.

Source: the paper's code, github.com/jacob-block/peft-ml, folder ``vision/`` (``run_cifar.py``,
``train_utils.py``, ``model.py``, ``MLP.py``), which runs the protocol on CIFAR-10. Here the images
are scikit-learn's digits (``sklearn.datasets.load_digits``: 1797 grey images of 8 x 8 pixels, ten
classes, shipped with the package, no download). This is the paper's protocol on a smaller dataset,
not a reproduction of its CIFAR-10 numbers.

**Tasks.** T = 4 binary retraining tasks made of the class pairs {0, 1}, {2, 3}, {4, 5}, {6, 7}, and
the unseen task {8, 9}; the label of an image of class c is ``c mod 2`` (as in ``run_cifar.py``).
Each class is split once (a fixed permutation, ``split_seed``) into ``n_train_per_class`` training
images and the rest for testing, so every task has ``2 n_train_per_class`` training images; the
retraining tasks use their training images, fine-tuning uses the unseen task's training images and
the reported accuracy is on the unseen task's test images. Pixels are divided by 16 and standardised
with the mean and standard deviation of all retraining images (one scalar each).

**Models.** Every linear layer is ``y = x W^T + b`` (``W`` of shape (out, in)); a rank-r adapter
on it is ``Delta W = up @ down`` with ``down`` (r, in) drawn from Uniform(-1/sqrt(in), 1/sqrt(in))
(PyTorch's default for ``nn.Linear(in, r)``) and ``up`` (out, r) zero, so an adapter at its start
leaves the model unchanged (``model.py``'s ``AdapterLinear``). Two models:

- ``"mixer"``: an MLP-Mixer (``MLP.py``): 8 x 8 image -> (8/p)^2 patches of p x p pixels -> linear
  embedding of width D -> ``depth`` blocks of [LayerNorm, token-mixing MLP (GELU, expansion 4),
  residual; LayerNorm, channel-mixing MLP (GELU, expansion 1/2), residual] -> LayerNorm -> mean over
  patches -> linear head to 2 logits. Every linear layer carries an adapter (6 per block-1 model).
  Departures: no dropout (the paper's 0.1), and the layers keep their biases (the paper's
  ``AdapterLinear`` drops them).
- ``"linear"``: a two-layer linear network ``logits = W2 W1 x`` (64 -> h -> 2, no biases), with
  adapters on both layers: the model closest to the linear theory (docs/theory.md). A single 2 x 64
  head would make a rank-1 adapter almost full fine-tuning.

**Retraining methods** (optimiser: Adam with L2 weight decay as in ``torch.optim.Adam``, i.e.
``g + wd p`` fed to Adam, learning rate on a cosine schedule to 0 over the run):

- ``"meta_lora"``: one rank-r adapter per task on every linear layer; a cycle takes one mini-batch
  of every task, sums the T task losses ``sum_t CE(f(W + Delta_t; X_t), y_t)`` (the accumulated
  gradients of the paper's code) and takes one optimiser step. The adapters are discarded after.
- ``"standard"``: one model on the pooled tasks, one optimiser step per pooled mini-batch.
- ``"last_layer_ml"``: a shared trunk and one head per task, batches cycling as for Meta-LoRA.
- ``"reptile"``: first-order Reptile (Nichol et al. 2018), serial over the tasks: from ``theta``, 20
  SGD steps on mini-batches of task t give ``phi``, then ``theta <- theta + eps (phi - theta)``, the
  textbook sign. The official vision code instead adds ``(phi - theta) / T`` to ``theta``'s
  *gradient* before an Adam step, which moves ``theta`` away from ``phi`` (its language code has
  the textbook sign). Reptile gets as many mini-batch gradients as Meta-LoRA.

**Fine-tuning** on the unseen task, base frozen: ``"lora"``, fresh rank-r adapters on every linear
layer (the only trained parameters; LayerNorms and biases stay frozen), or ``"last_layer"``, a fresh
head (PyTorch default initialisation) on the frozen trunk. Meta-LoRA's base is its shared weights;
last-layer meta-learning has T heads and no shared one, so its ``"lora"`` fine-tuning starts from
the mean of the T heads (a linmeta choice; the paper pairs that method only with last-layer
fine-tuning). Reported: test accuracy on the unseen task after the last fine-tuning epoch (the
paper's "last accuracy"); the paper also keeps the retraining epoch with the best accuracy on held-out
retraining images, which linmeta does not (the last retrained model is used).

Everything is a pure function of explicit pytrees and keys; epochs, cycles and inner steps are
``lax.scan`` loops; :func:`run_method` vmaps whole seeds (initialisation and batch order) and compiles
once per (model, method, shapes); the learning rates, weight decay and Reptile step sizes are traced.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from linmeta.core._validate import check_choice, check_int, check_scalar, float_dtype

__all__ = ["TASK_PAIRS", "UNSEEN_PAIR", "MODELS", "METHODS", "FINETUNES", "TaskData", "Dense",
           "LayerNorm", "Adapter", "ModelSpec", "Hyper", "Schedule", "load_digits_arrays",
           "build_tasks", "layer_shapes", "init_params", "init_adapters", "apply", "features",
           "n_lora_params", "n_head_params", "retrain", "finetune", "run_seed", "run_method"]

TASK_PAIRS = ((0, 1), (2, 3), (4, 5), (6, 7))
UNSEEN_PAIR = (8, 9)
MODELS = ("mixer", "linear")
METHODS = ("meta_lora", "standard", "last_layer_ml", "reptile")
FINETUNES = ("lora", "last_layer")
IMAGE_SIDE = 8
PIXEL_MAX = 16.0


# ----------------------------------------------------------------------------- data

class TaskData(NamedTuple):
    """Retraining tasks ``X`` (T, m, 64), ``y`` (T, m) in {0, 1}; unseen task training images
    ``X_new`` (m, 64), ``y_new`` (m,) and test images ``X_test`` (n_test, 64), ``y_test``."""

    X: jax.Array
    y: jax.Array
    X_new: jax.Array
    y_new: jax.Array
    X_test: jax.Array
    y_test: jax.Array


def load_digits_arrays():
    """scikit-learn's digits as ``(images (1797, 64) float64 in [0, 16], labels (1797,) int)``."""
    try:
        # deferred: scikit-learn is an optional extra, needed only for this dataset
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ModuleNotFoundError(
            "the vision experiment needs scikit-learn for its dataset: "
            "pip install -e '.[vision]'") from err
    digits = load_digits()
    return np.asarray(digits.data, np.float64), np.asarray(digits.target, np.int64)


def build_tasks(images, labels, *, n_train_per_class: int, split_seed: int = 0,
                pairs=TASK_PAIRS, unseen=UNSEEN_PAIR, dtype=None) -> TaskData:
    """The retraining tasks of ``pairs`` and the unseen task ``unseen``, labels ``class mod 2``.

    Each class is permuted once with ``split_seed``; its first ``n_train_per_class`` images train,
    the rest test. The classes of ``pairs`` and ``unseen`` must all be different."""
    images = np.asarray(images, np.float64)
    labels = np.asarray(labels)
    if images.ndim != 2 or images.shape[1] != IMAGE_SIDE ** 2 or labels.shape != images.shape[:1]:
        raise ValueError(f"images must be (n, {IMAGE_SIDE ** 2}) with one label each; got "
                         f"{images.shape} and {labels.shape}")
    classes = [c for pair in (*pairs, unseen) for c in pair]
    if len(set(classes)) != len(classes):
        raise ValueError(f"pairs and unseen must use every class once; got {pairs!r}, {unseen!r}")
    counts = {c: int(np.sum(labels == c)) for c in classes}
    smallest = min(counts.values())
    n_train = check_int("n_train_per_class", n_train_per_class, 1, smallest - 1,
                        hi_label="smallest class size - 1")
    split_seed = check_int("split_seed", split_seed, 0)
    rng = np.random.default_rng(split_seed)
    train, test = {}, {}
    for c in sorted(classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        train[c], test[c] = idx[:n_train], idx[n_train:]

    retrain_idx = np.concatenate([train[c] for pair in pairs for c in pair])
    pixels = images / PIXEL_MAX
    mean, std = pixels[retrain_idx].mean(), pixels[retrain_idx].std()
    pixels = (pixels - mean) / std

    def task(pair, split):
        idx = np.concatenate([split[c] for c in pair])
        return pixels[idx], labels[idx] % 2

    X, y = zip(*(task(p, train) for p in pairs))
    X_new, y_new = task(unseen, train)
    X_test, y_test = task(unseen, test)
    dt = float_dtype(dtype)
    return TaskData(jnp.asarray(np.stack(X), dt), jnp.asarray(np.stack(y), jnp.int32),
                    jnp.asarray(X_new, dt), jnp.asarray(y_new, jnp.int32),
                    jnp.asarray(X_test, dt), jnp.asarray(y_test, jnp.int32))


# ----------------------------------------------------------------------------- models

class Dense(NamedTuple):
    """A linear layer ``x W^T + b``: ``weight`` (out, in), ``bias`` (out,) or None."""

    weight: jax.Array
    bias: Optional[jax.Array] = None


class LayerNorm(NamedTuple):
    scale: jax.Array
    offset: jax.Array


class Adapter(NamedTuple):
    """Low-rank update ``Delta W = up @ down`` of a linear layer: ``down`` (..., r, in), ``up``
    (..., out, r); a leading task axis when there is one adapter per task."""

    down: jax.Array
    up: jax.Array


class ModelSpec(NamedTuple):
    """Static description of a model. ``kind`` "mixer": embedding width ``width``, patches of
    ``patch`` x ``patch`` pixels, ``depth`` blocks; "linear": hidden width ``width``."""

    kind: str = "mixer"
    width: int = 16
    patch: int = 2
    depth: int = 1
    token_expansion: int = 4
    channel_divisor: int = 2


def _check_spec(spec: ModelSpec) -> ModelSpec:
    check_choice("model kind", spec.kind, MODELS)
    check_int("width", spec.width, 1)
    if spec.kind == "mixer":
        check_choice("patch", spec.patch, (1, 2, 4, 8))
        check_int("depth", spec.depth, 1)
        check_int("token_expansion", spec.token_expansion, 1)
        check_int("channel_divisor", spec.channel_divisor, 1, spec.width, hi_label="width")
    return spec


def layer_shapes(spec: ModelSpec) -> dict:
    """``{name: (in, out)}`` of every linear layer, in order; the last is ``"head"``."""
    if spec.kind == "linear":
        return {"hidden": (IMAGE_SIDE ** 2, spec.width), "head": (spec.width, 2)}
    n = (IMAGE_SIDE // spec.patch) ** 2
    shapes = {"embed": (spec.patch ** 2, spec.width)}
    for b in range(spec.depth):
        shapes[f"token_in{b}"] = (n, n * spec.token_expansion)
        shapes[f"token_out{b}"] = (n * spec.token_expansion, n)
        shapes[f"channel_in{b}"] = (spec.width, spec.width // spec.channel_divisor)
        shapes[f"channel_out{b}"] = (spec.width // spec.channel_divisor, spec.width)
    shapes["head"] = (spec.width, 2)
    return shapes


def _norm_names(spec: ModelSpec):
    if spec.kind == "linear":
        return ()
    return tuple(f"{s}{b}" for b in range(spec.depth) for s in ("norm_token", "norm_channel")) \
        + ("norm_out",)


def _init_dense(key, n_in, n_out, bias, dt):
    """PyTorch's ``nn.Linear`` default: weight and bias ~ Uniform(-1/sqrt(in), 1/sqrt(in))."""
    kw, kb = jax.random.split(key)
    bound = 1.0 / math.sqrt(n_in)
    w = jax.random.uniform(kw, (n_out, n_in), dt, -bound, bound)
    b = jax.random.uniform(kb, (n_out,), dt, -bound, bound) if bias else None
    return Dense(w, b)


def init_params(key, spec: ModelSpec, dtype=None) -> dict:
    """Base weights: every linear layer at PyTorch's default (biases only in the Mixer), every
    LayerNorm at scale 1, offset 0."""
    return _init_params(key, _check_spec(spec), float_dtype(dtype))


@functools.partial(jax.jit, static_argnums=(1, 2))  # one program, not one dispatch per draw
def _init_params(key, spec, dt):
    shapes = layer_shapes(spec)
    keys = jax.random.split(key, len(shapes))
    params = {name: _init_dense(k, i, o, spec.kind == "mixer", dt)
              for k, (name, (i, o)) in zip(keys, shapes.items())}
    for name in _norm_names(spec):
        params[name] = LayerNorm(jnp.ones((spec.width,), dt), jnp.zeros((spec.width,), dt))
    return params


def init_adapters(key, spec: ModelSpec, rank: int, n_tasks: Optional[int] = None,
                  dtype=None) -> dict:
    """A rank-``rank`` adapter on every linear layer (``n_tasks`` of them, stacked, when given):
    ``down ~ Uniform(-1/sqrt(in), 1/sqrt(in))``, ``up = 0``."""
    spec = _check_spec(spec)
    lead = () if n_tasks is None else (check_int("n_tasks", n_tasks, 1),)
    return _init_adapters(key, spec, _check_rank(spec, rank), lead, float_dtype(dtype))


def _check_rank(spec, rank):
    return check_int("rank", rank, 1, min(min(s) for s in layer_shapes(spec).values()),
                     hi_label="smallest layer width")


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _init_adapters(key, spec, rank, lead, dt):
    shapes = layer_shapes(spec)
    keys = jax.random.split(key, len(shapes))
    out = {}
    for k, (name, (i, o)) in zip(keys, shapes.items()):
        bound = 1.0 / math.sqrt(i)
        out[name] = Adapter(jax.random.uniform(k, lead + (rank, i), dt, -bound, bound),
                            jnp.zeros(lead + (o, rank), dt))
    return out


def n_lora_params(spec: ModelSpec, rank: int) -> int:
    """Trainable parameters of LoRA fine-tuning: ``rank * sum(in + out)`` over the linear layers."""
    return rank * sum(i + o for i, o in layer_shapes(spec).values())


def n_head_params(spec: ModelSpec) -> int:
    """Trainable parameters of last-layer fine-tuning: the head's weight (and bias in the Mixer)."""
    i, o = layer_shapes(spec)["head"]
    return i * o + (o if spec.kind == "mixer" else 0)


def _dense(p: Dense, a: Optional[Adapter], x):
    y = x @ p.weight.T
    if a is not None:
        y = y + (x @ a.down.T) @ a.up.T
    return y if p.bias is None else y + p.bias


def _layer_norm(p: LayerNorm, x, eps=1e-5):
    mu = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean((x - mu) ** 2, axis=-1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + eps) * p.scale + p.offset


def features(spec: ModelSpec, params: dict, adapters: Optional[dict], X):
    """The trunk: everything before the head; X (B, 64) -> (B, width)."""
    ad = (lambda name: None) if adapters is None else adapters.get
    if spec.kind == "linear":
        return _dense(params["hidden"], ad("hidden"), X)
    p, g = spec.patch, IMAGE_SIDE // spec.patch
    # (B, 8, 8) -> (B, g*g patches, p*p pixels), patches in row-major order
    z = X.reshape(-1, g, p, g, p).transpose(0, 1, 3, 2, 4).reshape(-1, g * g, p * p)
    z = _dense(params["embed"], ad("embed"), z)  # (B, n, D)
    for b in range(spec.depth):
        y = jnp.swapaxes(_layer_norm(params[f"norm_token{b}"], z), 1, 2)  # (B, D, n)
        y = _dense(params[f"token_out{b}"], ad(f"token_out{b}"),
                   jax.nn.gelu(_dense(params[f"token_in{b}"], ad(f"token_in{b}"), y),
                               approximate=False))
        z = z + jnp.swapaxes(y, 1, 2)
        y = _layer_norm(params[f"norm_channel{b}"], z)
        y = _dense(params[f"channel_out{b}"], ad(f"channel_out{b}"),
                   jax.nn.gelu(_dense(params[f"channel_in{b}"], ad(f"channel_in{b}"), y),
                               approximate=False))
        z = z + y
    return jnp.mean(_layer_norm(params["norm_out"], z), axis=1)


def apply(spec: ModelSpec, params: dict, adapters: Optional[dict], X):
    """Logits (B, 2) of images X (B, 64); ``adapters`` (one per layer, no task axis) or None."""
    ad = None if adapters is None else adapters.get("head")
    return _dense(params["head"], ad, features(spec, params, adapters, X))


def _cross_entropy(logits, y):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def _accuracy(logits, y):
    return jnp.mean((jnp.argmax(logits, axis=-1) == y).astype(logits.dtype))


# ----------------------------------------------------------------------------- training

class Hyper(NamedTuple):
    """Traced hyperparameters: retraining and fine-tuning learning rates (Adam), L2 weight decay,
    Reptile's inner SGD learning rate and outer step ``eps``."""

    lr: jax.Array
    lr_ft: jax.Array
    weight_decay: jax.Array
    inner_lr: jax.Array
    reptile_step: jax.Array


class Schedule(NamedTuple):
    """Static loop sizes: mini-batch size, retraining and fine-tuning epochs, Reptile inner steps,
    adapter rank."""

    batch: int
    epochs: int
    epochs_ft: int
    inner_steps: int = 20
    rank: int = 1


def _adam(lr, weight_decay, total_steps):
    """``torch.optim.Adam(weight_decay=wd)`` (L2 added to the gradient) with a cosine schedule."""
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8),
                       optax.scale_by_learning_rate(
                           optax.cosine_decay_schedule(lr, max(total_steps, 1))))


def _epoch_batches(key, n_items, batch, n_tasks=None):
    """Index batches of one epoch: a permutation of ``n_items`` (one per task when ``n_tasks``)
    cut into ``n_items // batch`` batches, the remainder dropped: ((n_tasks,) n_batches, batch)."""
    if n_tasks is None:
        perm = jax.random.permutation(key, n_items)
    else:
        perm = jax.vmap(lambda k: jax.random.permutation(k, n_items))(
            jax.random.split(key, n_tasks))
    n_b = n_items // batch
    return perm[..., :n_b * batch].reshape(perm.shape[:-1] + (n_b, batch))


def _train_epochs(loss_fn, params, opt, key, epochs, batch_indices):
    """Adam over ``epochs`` epochs; ``batch_indices(key)`` -> (n_steps, ...) index batches of one
    epoch, ``loss_fn(params, idx)``. Returns ``(params, mean loss per epoch)``."""
    grad = jax.value_and_grad(loss_fn)

    def step(carry, idx):
        p, o = carry
        loss, g = grad(p, idx)
        updates, o = opt.update(g, o, p)
        return (optax.apply_updates(p, updates), o), loss

    def epoch(carry, k):
        carry, losses = jax.lax.scan(step, carry, batch_indices(k))
        return carry, jnp.mean(losses)

    (params, _), hist = jax.lax.scan(epoch, (params, opt.init(params)),
                                     jax.random.split(key, epochs))
    return params, hist


def _n_cycles(data: TaskData, batch):
    return data.X.shape[1] // batch


def retrain(method: str, spec: ModelSpec, hyper: Hyper, sched: Schedule, data: TaskData, key):
    """Retrain a base on the T tasks with ``method``; returns ``(params, losses)`` where ``params``
    is a full model (its head: the shared head, or for ``"last_layer_ml"`` the mean of the T heads)
    and ``losses`` the mean training loss per task of each epoch (for Reptile: the mean inner loss
    of each outer step). Pure and traceable."""
    dt = data.X.dtype
    T, m = data.y.shape
    k_init, k_ad, k_run = jax.random.split(key, 3)
    params = init_params(k_init, spec, dt)
    cycles = _n_cycles(data, sched.batch)
    tasks = jnp.arange(T)

    def task_batches(k):  # (cycles, T, batch): cycle c takes batch c of every task
        return jnp.swapaxes(_epoch_batches(k, m, sched.batch, T), 0, 1)

    if method == "meta_lora":
        adapters = init_adapters(k_ad, spec, sched.rank, T, dt)

        def loss(p, idx):
            base, ads = p
            per_task = jax.vmap(lambda a, t, i: _cross_entropy(
                apply(spec, base, a, data.X[t, i]), data.y[t, i]))(ads, tasks, idx)
            return jnp.sum(per_task)

        opt = _adam(hyper.lr, hyper.weight_decay, sched.epochs * cycles)
        (params, _), hist = _train_epochs(loss, (params, adapters), opt, k_run, sched.epochs,
                                          task_batches)
        return params, hist / T

    if method == "last_layer_ml":
        i, o = layer_shapes(spec)["head"]
        heads = jax.vmap(lambda k: _init_dense(k, i, o, spec.kind == "mixer", dt))(
            jax.random.split(k_ad, T))

        def loss(p, idx):
            trunk, hs = p
            per_task = jax.vmap(lambda h, t, i: _cross_entropy(
                _dense(h, None, features(spec, trunk, None, data.X[t, i])), data.y[t, i]))(
                hs, tasks, idx)
            return jnp.sum(per_task)

        opt = _adam(hyper.lr, hyper.weight_decay, sched.epochs * cycles)
        (params, heads), hist = _train_epochs(loss, (params, heads), opt, k_run, sched.epochs,
                                              task_batches)
        return dict(params, head=jax.tree.map(lambda h: jnp.mean(h, axis=0), heads)), hist / T

    if method == "standard":
        X, y = data.X.reshape(T * m, -1), data.y.reshape(T * m)

        def loss(p, idx):
            return _cross_entropy(apply(spec, p, None, X[idx]), y[idx])

        opt = _adam(hyper.lr, hyper.weight_decay, sched.epochs * ((T * m) // sched.batch))
        return _train_epochs(loss, params, opt, k_run, sched.epochs,
                             lambda k: _epoch_batches(k, T * m, sched.batch))

    if method == "reptile":
        # as many mini-batch gradients as Meta-LoRA: epochs * cycles * T = outer * inner_steps
        outer = max(1, (sched.epochs * cycles * T) // sched.inner_steps)

        def task_loss(p, t, idx):
            return _cross_entropy(apply(spec, p, None, data.X[t, idx]), data.y[t, idx])

        grad = jax.value_and_grad(task_loss)

        def outer_step(theta, inp):
            t, k = inp

            def inner(phi, kk):
                idx = jax.random.permutation(kk, m)[:sched.batch]
                val, g = grad(phi, t, idx)
                return jax.tree.map(lambda a, b: a - hyper.inner_lr * b, phi, g), val

            phi, vals = jax.lax.scan(inner, theta, jax.random.split(k, sched.inner_steps))
            theta = jax.tree.map(lambda a, b: a + hyper.reptile_step * (b - a), theta, phi)
            return theta, jnp.mean(vals)

        return jax.lax.scan(outer_step, params,
                            (jnp.arange(outer) % T, jax.random.split(k_run, outer)))

    raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")


def finetune(kind: str, spec: ModelSpec, params: dict, hyper: Hyper, sched: Schedule,
             data: TaskData, key):
    """Fine-tune on the unseen task with the base frozen: ``"lora"`` trains fresh rank-r adapters on
    every linear layer, ``"last_layer"`` a fresh head on the frozen trunk. Returns ``(test accuracy
    after the last epoch, test accuracy per epoch, training loss per epoch)``."""
    dt = data.X.dtype
    m = data.y_new.shape[0]
    steps = sched.epochs_ft * (m // sched.batch)
    opt = _adam(hyper.lr_ft, hyper.weight_decay, steps)

    def batches(k):
        return _epoch_batches(k, m, sched.batch)

    k_init, k_run = jax.random.split(key)
    if kind == "lora":
        def logits(a, X):
            return apply(spec, params, a, X)

        trained0 = init_adapters(k_init, spec, sched.rank, None, dt)
        X_train, X_test = data.X_new, data.X_test
    elif kind == "last_layer":
        i, o = layer_shapes(spec)["head"]

        def logits(h, F):
            return _dense(h, None, F)

        trained0 = _init_dense(k_init, i, o, spec.kind == "mixer", dt)
        # the trunk is frozen: its features are computed once
        X_train = features(spec, params, None, data.X_new)
        X_test = features(spec, params, None, data.X_test)
    else:
        raise ValueError(f"fine-tuning must be one of {', '.join(FINETUNES)}; got {kind!r}")

    def loss(a, idx):
        return _cross_entropy(logits(a, X_train[idx]), data.y_new[idx])

    grad = jax.value_and_grad(loss)

    def step(carry, idx):
        a, o = carry
        val, g = grad(a, idx)
        updates, o = opt.update(g, o, a)
        return (optax.apply_updates(a, updates), o), val

    def epoch(carry, k):
        carry, vals = jax.lax.scan(step, carry, batches(k))
        return carry, (jnp.mean(vals), _accuracy(logits(carry[0], X_test), data.y_test))

    (trained, _), (train_loss, test_acc) = jax.lax.scan(
        epoch, (trained0, opt.init(trained0)), jax.random.split(k_run, sched.epochs_ft))
    return test_acc[-1], test_acc, train_loss


def run_seed(method: str, spec: ModelSpec, hyper: Hyper, sched: Schedule, data: TaskData, key):
    """One seed: retrain with ``method``, then both fine-tunings. Returns a dict of arrays.
    (:func:`run_method` runs the same computation as two compiled programs, so that the
    fine-tuning programs are shared by the four retraining methods.)"""
    k_ret, k_ft = jax.random.split(key)
    params, retrain_loss = retrain(method, spec, hyper, sched, data, k_ret)
    return dict(_finetune_both(spec, params, hyper, sched, data, k_ft),
                retrain_loss=retrain_loss)


def _finetune_both(spec, params, hyper, sched, data, key):
    k_lora, k_head = jax.random.split(key)
    out = {"zero_shot_accuracy": _accuracy(apply(spec, params, None, data.X_test), data.y_test)}
    for kind, k in (("lora", k_lora), ("last_layer", k_head)):
        acc, acc_hist, ft_loss = finetune(kind, spec, params, hyper, sched, data, k)
        out[f"{kind}_accuracy"] = acc
        out[f"{kind}_accuracy_per_epoch"] = acc_hist
        out[f"{kind}_loss"] = ft_loss
    return out


@functools.partial(jax.jit, static_argnames=("method", "spec", "sched"))
def _retrain_kernel(keys, hyper, data, *, method, spec, sched):
    return jax.vmap(lambda k: retrain(method, spec, hyper, sched, data, k))(keys)


@functools.partial(jax.jit, static_argnames=("spec", "sched"))
def _finetune_kernel(keys, params, hyper, data, *, spec, sched):
    return jax.vmap(lambda k, p: _finetune_both(spec, p, hyper, sched, data, k))(keys, params)


def run_method(method: str, spec: ModelSpec, data: TaskData, keys, *, batch: int = 32,
               epochs: int = 100, epochs_ft: int = 100, inner_steps: int = 20, rank: int = 1,
               lr=1e-3, lr_ft=5e-3, weight_decay=1e-5, inner_lr=0.05,
               reptile_step=0.5) -> dict:
    """Every seed of ``keys`` (one key per seed) through :func:`run_seed`, vmapped over seeds:
    one compiled retraining program per (method, model, loop sizes, data shapes) and one
    fine-tuning program per (model, loop sizes, data shapes), shared by the methods; the step
    sizes are traced."""
    check_choice("method", method, METHODS)
    spec = _check_spec(ModelSpec(*spec))
    m = data.y_new.shape[0]
    batch = check_int("batch", batch, 1, min(m, data.X.shape[1]),
                      hi_label="training images per task")
    sched = Schedule(batch, check_int("epochs", epochs, 1), check_int("epochs_ft", epochs_ft, 1),
                     check_int("inner_steps", inner_steps, 1), _check_rank(spec, rank))
    for name, v in (("lr", lr), ("lr_ft", lr_ft), ("inner_lr", inner_lr)):
        check_scalar(name, v, 0.0, lo_open=True)
    check_scalar("weight_decay", weight_decay, 0.0)
    check_scalar("reptile_step", reptile_step, 0.0, 1.0, lo_open=True)
    dt = data.X.dtype
    hyper = Hyper(*(jnp.asarray(v, dt) for v in (lr, lr_ft, weight_decay, inner_lr,
                                                 reptile_step)))
    k_ret, k_ft = jax.vmap(jax.random.split, out_axes=1)(keys)
    params, retrain_loss = _retrain_kernel(k_ret, hyper, data, method=method, spec=spec,
                                           sched=sched)
    return dict(_finetune_kernel(k_ft, params, hyper, data, spec=spec, sched=sched),
                retrain_loss=retrain_loss)
