"""The paper's shallow-network experiment (docs/theory.md#protocol): Meta-LoRA vs standard
retraining when the task model is a two-layer network, trained with AdamW (optax).

Source: the paper's code, github.com/jacob-block/peft-ml, folder ``shallow/`` (``run_vary_T.py``,
``utils.py``, ``make_plot.py``). This module follows that code; where it departs, it says so.

**Data model** (one trial; every trial redraws everything). ``A*`` (d x d), ``U*_t`` (d x k) for
t = 1..T+1 (task T+1 is the unseen one) and ``c*`` (d,) have i.i.d. N(0, 1) entries (``A*`` is *not*
symmetrised in the shallow code). Inputs ``x ~ N(0, I_d)``, scalar outputs

    y = c*^T sigmoid((A* + U*_t U*_t^T) x) + eps,     eps ~ N(0, sigma^2),  sigma = 0.1 (a std here).

N samples per retraining task (paper: 1000), n samples of the unseen task (paper: 100).

**Model.** ``f(W, c; x) = c^T sigmoid(W x)`` (no biases), loss = PyTorch ``MSELoss`` (mean of squared
errors, no 1/2). Both ``A`` and ``c`` are learned in retraining and frozen in fine-tuning.

- Standard retraining (SR): minimise ``sum_t MSE_t(A, c)``.
- Meta-LoRA: minimise ``sum_t MSE_t(A + Delta_t, c)`` jointly over ``(A, c, Delta_1..Delta_T)``;
  the adapters are discarded afterwards. ``retrain_adapter="asymmetric"`` (the paper's *code*):
  ``Delta_t = B_t C_t^T`` with ``B_t = 0`` and ``C_t`` PyTorch-default uniform at the start (LoRA's
  initialisation). ``retrain_adapter="symmetric"`` (the paper's *text* and docs/theory.md):
  ``Delta_t = U_t U_t^T`` with ``U_t ~ Uniform(-1/sqrt(d), 1/sqrt(d))`` (a zero start would never
  move).
- Fine-tuning on the unseen task: ``f(A_hat + B C^T, c_hat)`` with rank r (r = k, and r = 3k as well
  when T = 2, as in the paper), ``B = 0``, ``C`` uniform, minimising ``MSE`` over the n samples.
- Base initialisation: PyTorch's ``nn.Linear`` default, ``A, c ~ Uniform(-1/sqrt(d), 1/sqrt(d))``.
- Optimiser: full-batch AdamW with PyTorch's defaults (betas (0.9, 0.999), eps 1e-8, decoupled weight
  decay 0.01 on every trained parameter), lr 1e-3; paper: 40000 retraining and 15000 fine-tuning
  epochs, 10 trials, median reported. ``optax.adamw(lr, weight_decay=wd)`` is the same update as
  ``torch.optim.AdamW`` (``p <- p - lr (m_hat / (sqrt(v_hat) + eps) + wd p)``).
- Plotted "test task loss": ``MSE(f(x_i), c*^T sigmoid(M*_new x_i))`` over the n fine-tuning inputs
  against their noiseless targets, along the fine-tuning epochs.

Departures from the paper's code (documented choices): the Meta-LoRA and SR fine-tuning runs of a
trial start from the same adapter initialisation (a paired comparison; the paper draws two); the
loss is recorded every ``record_every`` steps (the paper records every epoch, before the step).

Everything here is a pure function of explicit pytrees and keys; the training loops are ``lax.scan``
(through :func:`linmeta.methods.run_steps`); :func:`run_trials` vmaps whole trials and compiles once
per shape group; the learning rate, weight decay and noise level are traced arrays.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from linmeta.core._validate import check_choice, check_int, check_scalar, float_dtype
from linmeta.methods._common import record_steps, run_steps

__all__ = ["ShallowTruth", "ShallowData", "Base", "LowRank", "MetaParams", "Hyper",
           "MethodResult", "ShallowResult", "sample_truth", "sample_data", "network",
           "low_rank_delta", "init_base", "init_low_rank", "task_mse", "sr_loss", "meta_lora_loss",
           "finetune_loss", "test_loss", "adamw_train", "run_trial", "run_trials"]

RETRAIN_ADAPTERS = ("asymmetric", "symmetric")


def _T(x):
    return jnp.swapaxes(x, -1, -2)


class ShallowTruth(NamedTuple):
    """``A_star`` (d, d), ``U_star`` (T, d, k) retraining factors, ``U_new`` (d, k) unseen task,
    ``c_star`` (d,) output weights."""

    A_star: jax.Array
    U_star: jax.Array
    U_new: jax.Array
    c_star: jax.Array

    @property
    def W_star(self):
        """(T, d, d) first-layer weights ``A* + U*_t U*_t^T`` of the retraining tasks."""
        return self.A_star + self.U_star @ _T(self.U_star)

    @property
    def W_new(self):
        """(d, d) first-layer weight of the unseen task."""
        return self.A_star + self.U_new @ self.U_new.T


class ShallowData(NamedTuple):
    """Retraining samples ``X`` (T, N, d), ``Y`` (T, N) (noisy), ``Y_clean`` (T, N); unseen-task
    samples ``X_new`` (n, d), ``Y_new`` (n,), ``Y_new_clean`` (n,)."""

    X: jax.Array
    Y: jax.Array
    Y_clean: jax.Array
    X_new: jax.Array
    Y_new: jax.Array
    Y_new_clean: jax.Array


class Base(NamedTuple):
    """Shared network weights: first layer ``A`` (d, d), output weights ``c`` (d,)."""

    A: jax.Array
    c: jax.Array


class LowRank(NamedTuple):
    """Adapter ``left @ right^T`` (asymmetric), or ``left @ left^T`` when ``right`` is None."""

    left: jax.Array
    right: Optional[jax.Array] = None


class MetaParams(NamedTuple):
    """Meta-LoRA retraining parameters: the base and one adapter per task (leading axis T)."""

    base: Base
    adapters: LowRank


class Hyper(NamedTuple):
    """Traced hyperparameters: AdamW learning rate and weight decay, noise standard deviation."""

    lr: jax.Array
    weight_decay: jax.Array
    noise_std: jax.Array


# ----------------------------------------------------------------------------- data and model

def sample_truth(key, d, k, T, *, dtype=None) -> ShallowTruth:
    """The shallow code's ground truth: ``A*``, ``U*_1..U*_{T+1}``, ``c*`` i.i.d. N(0, 1)."""
    d = check_int("d", d, 1)
    k = check_int("k", k, 1, d, hi_label="d")
    T = check_int("T", T, 1)
    return _sample_truth(key, d, k, T, float_dtype(dtype))


def _split_draw(z, shapes):
    """Cut one flat draw into arrays of ``shapes`` (one random call compiles much faster than many)."""
    out, i = [], 0
    for shp in shapes:
        out.append(z[i:i + math.prod(shp)].reshape(shp))
        i += math.prod(shp)
    return out


def _sizes(shapes):
    return sum(math.prod(shp) for shp in shapes)


def _sample_truth(key, d, k, T, dt):
    shapes = ((d, d), (T + 1, d, k), (d,))
    A, U, c = _split_draw(jax.random.normal(key, (_sizes(shapes),), dt), shapes)
    return ShallowTruth(A, U[:T], U[T], c)


def network(W, c, X):
    """``c^T sigmoid(W x)`` for every row x of X: W (..., d, d), c (d,), X (..., N, d) -> (..., N)."""
    return jax.nn.sigmoid(X @ _T(W)) @ c


def sample_data(key, truth: ShallowTruth, N, n, noise_std) -> ShallowData:
    """N samples per retraining task and n of the unseen task; noise ``N(0, noise_std^2)``."""
    N = check_int("N", N, 1)
    n = check_int("n", n, 1)
    check_scalar("noise_std", noise_std, 0.0)
    return _sample_data(key, truth, N, n, noise_std)


def _sample_data(key, truth, N, n, noise_std):
    dt = truth.A_star.dtype
    T, d = truth.U_star.shape[0], truth.A_star.shape[0]
    shapes = ((T, N, d), (T, N), (n, d), (n,))
    X, E, Xn, En = _split_draw(jax.random.normal(key, (_sizes(shapes),), dt), shapes)
    Yc = network(truth.W_star, truth.c_star, X)
    Ync = network(truth.W_new, truth.c_star, Xn)
    sig = jnp.asarray(noise_std, dt)
    return ShallowData(X, Yc + sig * E, Yc, Xn, Ync + sig * En, Ync)


def low_rank_delta(adapter: LowRank):
    """``left right^T`` (or ``left left^T``), shape (..., d, d)."""
    right = adapter.left if adapter.right is None else adapter.right
    return adapter.left @ _T(right)


def _uniform(key, shape, dt):
    bound = 1.0 / jnp.sqrt(jnp.asarray(shape[-2] if len(shape) > 1 else shape[-1], dt))
    return jax.random.uniform(key, shape, dt, -bound, bound)


def init_base(key, d, dtype=None) -> Base:
    """PyTorch ``nn.Linear`` default: ``A, c ~ Uniform(-1/sqrt(d), 1/sqrt(d))``."""
    dt = jnp.asarray(0.0).dtype if dtype is None else jnp.dtype(dtype)
    ka, kc = jax.random.split(key)
    bound = 1.0 / jnp.sqrt(jnp.asarray(d, dt))
    return Base(jax.random.uniform(ka, (d, d), dt, -bound, bound),
                jax.random.uniform(kc, (d,), dt, -bound, bound))


def init_low_rank(key, shape, *, symmetric: bool = False, dtype=None) -> LowRank:
    """Adapter factors of ``shape`` (..., d, r): LoRA start ``left = 0``, ``right ~ Uniform(-1/sqrt(d),
    1/sqrt(d))`` (PyTorch default of ``nn.Linear(d, r)``); symmetric: ``left ~ Uniform`` (same bound)."""
    dt = jnp.asarray(0.0).dtype if dtype is None else jnp.dtype(dtype)
    U = _uniform(key, tuple(shape), dt)
    return LowRank(U) if symmetric else LowRank(jnp.zeros(shape, dt), U)


# ----------------------------------------------------------------------------- losses

def task_mse(W, c, X, Y):
    """Mean over samples of ``(f(W, c; x) - y)^2`` per task: W (..., d, d), X (..., N, d), Y (..., N)."""
    R = network(W, c, X) - Y
    return jnp.mean(R * R, axis=-1)


def sr_loss(base: Base, X, Y):
    """Standard retraining: ``sum_t MSE_t(A, c)`` (the paper's code sums the task losses)."""
    return jnp.sum(task_mse(base.A, base.c, X, Y))


def meta_lora_loss(params: MetaParams, X, Y, adapter_scale=1.0):
    """Meta-LoRA: ``sum_t MSE_t(A + s Delta_t, c)`` with ``s = adapter_scale`` (1; 0 turns the
    adapters off and gives :func:`sr_loss`)."""
    W = params.base.A + adapter_scale * low_rank_delta(params.adapters)
    return jnp.sum(task_mse(W, params.base.c, X, Y))


def finetune_loss(adapter: LowRank, base: Base, X, Y, column_mask=None):
    """Fine-tuning on one task with the base frozen: ``MSE(A_hat + B C^T, c_hat)``; X (n, d), Y (n,).
    ``column_mask`` (r,) of 0/1 keeps only some adapter columns (a lower rank in a padded adapter)."""
    if column_mask is not None:
        adapter = adapter._replace(left=adapter.left * column_mask)
    return task_mse(base.A + low_rank_delta(adapter), base.c, X, Y)


def test_loss(adapter: LowRank, base: Base, data: ShallowData):
    """The paper's plotted test task loss: MSE against the noiseless targets of the n fine-tuning
    inputs."""
    return finetune_loss(adapter, base, data.X_new, data.Y_new_clean)


test_loss.__test__ = False  # not a pytest test


# ----------------------------------------------------------------------------- training

def adamw_train(loss_fn, params, lr, weight_decay, steps: int, record_every: int, record):
    """Full-batch AdamW (PyTorch defaults) on ``loss_fn(params)`` for ``steps`` steps in ``lax.scan``;
    ``record(params)`` is stored every ``record_every`` steps. Returns ``(params, History)``."""
    opt = optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay)
    grad = jax.grad(loss_fn)

    def step(state):
        p, o = state
        updates, o = opt.update(grad(p), o, p)
        return optax.apply_updates(p, updates), o

    (params, _), hist = run_steps(step, (params, opt.init(params)), steps, record_every,
                                  lambda s: record(s[0]))
    return params, hist


class MethodResult(NamedTuple):
    """Per trial (leading axis = trials): ``retrain_loss`` (trials, n_rec_retrain) = sum_t MSE_t
    against the noisy targets; ``base_error`` (trials, n_rec_retrain) = ``||A - A*||_F / ||A*||_F``
    (not invariant to permutations of hidden units: a diagnostic, as in the paper's code);
    ``finetune_loss`` and ``test_loss`` (trials, n_ranks, n_rec_finetune); the retrained ``base``."""

    retrain_loss: jax.Array
    base_error: jax.Array
    finetune_loss: jax.Array
    test_loss: jax.Array
    base: Base


class ShallowResult(NamedTuple):
    """Both methods of every trial; ``retrain_step`` and ``finetune_step`` are the recorded steps;
    ``ranks`` the fine-tuning ranks (axis 1 of the fine-tuning records)."""

    meta_lora: MethodResult
    sr: MethodResult
    retrain_step: jax.Array
    finetune_step: jax.Array
    ranks: tuple


def run_trial(key, hyper: Hyper, *, d: int, k: int, T: int, N: int, n: int, retrain_steps: int,
              finetune_steps: int, ranks: tuple, retrain_adapter: str = "asymmetric",
              record_every: int = 100, dtype=None):
    """One trial: draw truth and data, retrain with Meta-LoRA and with SR, fine-tune each base at
    every rank in ``ranks``. Pure and traceable (shapes static, ``hyper`` traced); returns
    ``(meta MethodResult, sr MethodResult)`` without the trial axis.

    One compiled loop serves both retraining methods: SR is the Meta-LoRA loop with the adapters
    switched off (``adapter_scale = 0``: zero gradient, so Adam never moves them), vmapped beside it.
    Likewise the fine-tuning ranks share one rank-``max(ranks)`` loop with the extra columns of the
    adapter masked out. Both identities are exact and tested against the direct runs.
    """
    dt = jnp.asarray(0.0).dtype if dtype is None else jnp.dtype(dtype)
    k_truth, k_data, k_init = jax.random.split(key, 3)
    truth = _sample_truth(k_truth, d, k, T, dt)
    data = _sample_data(k_data, truth, N, n, hyper.noise_std)
    a_norm = jnp.linalg.norm(truth.A_star)
    symmetric = retrain_adapter == "symmetric"
    r_max = max(ranks)

    # Every initial parameter is Uniform(-1/sqrt(d), 1/sqrt(d)) (PyTorch's default for a layer with
    # d inputs), drawn in one call: Meta-LoRA base and adapter factor, SR base, fine-tuning factor.
    shapes = ((d, d), (d,), (T, d, k), (d, d), (d,), (d, r_max))
    bound = 1.0 / jnp.sqrt(jnp.asarray(d, dt))
    A_m, c_m, F_m, A_s, c_s, F_ft = _split_draw(
        jax.random.uniform(k_init, (_sizes(shapes),), dt, -bound, bound), shapes)

    # --- retraining: [Meta-LoRA, SR] vmapped, SR = adapters switched off
    meta0 = MetaParams(Base(A_m, c_m), LowRank(F_m) if symmetric else
                       LowRank(jnp.zeros_like(F_m), F_m))
    sr0 = meta0._replace(base=Base(A_s, c_s))
    params0 = jax.tree.map(lambda a, b: jnp.stack([a, b]), meta0, sr0)
    scales = jnp.asarray([1.0, 0.0], dt)

    def retrain(p0, scale):
        def loss(p):
            return meta_lora_loss(p, data.X, data.Y, adapter_scale=scale)

        return adamw_train(loss, p0, hyper.lr, hyper.weight_decay, retrain_steps, record_every,
                           lambda p: (loss(p), jnp.linalg.norm(p.base.A - truth.A_star) / a_norm))

    params, ret_hist = jax.vmap(retrain)(params0, scales)
    ret_loss, base_err = ret_hist.value
    bases = params.base  # leading axis: [Meta-LoRA, SR]

    # --- fine-tuning: every (base, rank) pair vmapped; rank r = rank-max(ranks) adapter with the
    # columns beyond r masked out.
    masks = (jnp.arange(r_max)[None, :] < jnp.asarray(ranks)[:, None]).astype(dt)
    adapter0 = LowRank(jnp.zeros_like(F_ft), F_ft)  # same start for both bases (paired)

    def fine_tune(base, mask):
        def loss(a, X, Y):
            return finetune_loss(a, base, X, Y, column_mask=mask)

        return adamw_train(lambda a: loss(a, data.X_new, data.Y_new), adapter0, hyper.lr,
                           hyper.weight_decay, finetune_steps, record_every,
                           lambda a: (loss(a, data.X_new, data.Y_new),
                                      loss(a, data.X_new, data.Y_new_clean)))[1].value

    ft_loss, ft_test = jax.vmap(jax.vmap(fine_tune, (None, 0)), (0, None))(bases, masks)
    return tuple(MethodResult(ret_loss[i], base_err[i], ft_loss[i], ft_test[i],
                              jax.tree.map(lambda x: x[i], bases)) for i in range(2))


@functools.partial(jax.jit, static_argnames=("d", "k", "T", "N", "n", "retrain_steps",
                                             "finetune_steps", "ranks", "retrain_adapter",
                                             "record_every"))
def _trials_kernel(keys, hyper, *, d, k, T, N, n, retrain_steps, finetune_steps, ranks,
                   retrain_adapter, record_every):
    trial = functools.partial(run_trial, d=d, k=k, T=T, N=N, n=n, retrain_steps=retrain_steps,
                              finetune_steps=finetune_steps, ranks=ranks,
                              retrain_adapter=retrain_adapter, record_every=record_every,
                              dtype=hyper.lr.dtype)
    return jax.vmap(trial, in_axes=(0, None))(keys, hyper)


def run_trials(key, *, d: int = 10, k: int = 1, T: int = 3, N: int = 1000, n: int = 100,
               n_trials: int = 10, noise_std=0.1, lr=1e-3, weight_decay=0.01,
               retrain_steps: int = 40000, finetune_steps: int = 15000, ranks=None,
               retrain_adapter: str = "asymmetric", record_every: int = 100,
               dtype=None) -> ShallowResult:
    """Run ``n_trials`` independent trials of the shallow experiment, vmapped (one compile per
    shape group: d, k, T, N, n, steps, ranks, adapter kind).

    Defaults are the paper's (``shallow/run_vary_T.py``): d = 10, k = 1, N = 1000, n = 100,
    sigma = 0.1, lr 1e-3, 40000 / 15000 epochs, 10 trials. ``ranks`` defaults to ``(k,)``, and
    ``(k, 3k)`` when T = 2 (capped at d), as in the paper.
    """
    d = check_int("d", d, 1)
    k = check_int("k", k, 1, d, hi_label="d")
    T = check_int("T", T, 1)
    N = check_int("N", N, 1)
    n = check_int("n", n, 1)
    n_trials = check_int("n_trials", n_trials, 1)
    retrain_steps = check_int("retrain_steps", retrain_steps, 0)
    finetune_steps = check_int("finetune_steps", finetune_steps, 0)
    record_every = check_int("record_every", record_every, 1)
    check_scalar("noise_std", noise_std, 0.0)
    check_scalar("lr", lr, 0.0, lo_open=True)
    check_scalar("weight_decay", weight_decay, 0.0)
    check_choice("retrain_adapter", retrain_adapter, RETRAIN_ADAPTERS)
    if ranks is None:
        ranks = (k, min(3 * k, d)) if T == 2 else (k,)
    ranks = tuple(check_int("ranks[i]", r, 1, d, hi_label="d") for r in ranks)
    if not ranks:
        raise ValueError("ranks must name at least one fine-tuning rank in [1, d]")
    dt = float_dtype(dtype)
    hyper = Hyper(jnp.asarray(lr, dt), jnp.asarray(weight_decay, dt), jnp.asarray(noise_std, dt))
    keys = jax.random.split(key, n_trials)
    meta, sr = _trials_kernel(keys, hyper, d=d, k=k, T=T, N=N, n=n, retrain_steps=retrain_steps,
                              finetune_steps=finetune_steps, ranks=ranks,
                              retrain_adapter=retrain_adapter, record_every=record_every)
    return ShallowResult(meta, sr, jnp.asarray(record_steps(retrain_steps, record_every)),
                         jnp.asarray(record_steps(finetune_steps, record_every)), ranks)
