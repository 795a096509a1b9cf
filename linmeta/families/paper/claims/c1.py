"""Claim C1: the standard-retraining (SR) minimiser is ``A* + Rbar``; empirical SR converges to it.

Population (docs/theory.md, C1): ``min_A (1/T) sum_t 1/2 ||A - M*_t||_F^2`` is solved by the mean
``A_SR = (1/T) sum_t M*_t = A* + Rbar``, ``Rbar = (1/T) sum_t U*_t U*_t^T``
(:func:`linmeta.core.theory.sr_population`). Checked against pooled least squares and against the
paper's SR gradient descent (3000 steps, lr 0.03). In the population the gradient step is exactly
``A - Abar <- (1 - lr)(A - Abar)``, so the excess objective follows
``F_n = F_inf + (F_0 - F_inf)(1 - lr)^(2n)``: the recorded trajectory is checked against it (a
step of the wrong size fails), and the end point against ``(1 - lr)^3000 ~ 1e-40`` plus rounding.

Finite N (N samples per task, ``x ~ N(0, I)``, noise standard deviation ``sigma``): pooled least
squares is ``A_SR(N) = A_pop + Z S^{-1} / (T N)`` with ``Z = sum_{t,i} (D_t x_ti + eps_ti) x_ti^T``,
``D_t = M*_t - A_pop = R*_t - Rbar`` (``sum_t D_t = 0``) and ``S = mean_t S_xx,t -> I``. For
Gaussian x, ``E[x^T B x ||x||^2] = (d + 2) tr B``, so

    N E||A_SR(N) - (A* + Rbar)||_F^2 -> C = sum_t [(d + 1) ||D_t||_F^2 + d^2 sigma^2] / T^2

(:func:`linmeta.core.theory.sr_sample_error_constant`; relative correction O(d / (T N)) from
``S^{-1}``): the error falls as ``N^{-1/2}`` with a known constant.

The data themselves: the residuals ``y - M*_t x`` of the samples :func:`linmeta.draw_samples`
drew have mean square ``noise_std^2`` (their sum of squares over ``sigma^2`` is chi-square with
``S T N d`` degrees of freedom), and the population statistics give ``2 L_t(M*_t) / d = sigma^2``.

Rows and tolerances (each a :class:`~linmeta.engine.verdict.Tolerance`): the population identity
(rounding, 10 d eps), the gradient-descent end point (contraction plus its rounding floor) and
trajectory (rounding, amplified by the cancellation ``(1 - lr)^(-2n)``), the per-seed log-log slope
against -1/2 and ``N ||error||^2 / C`` against 1 (Student-t band over seeds plus the
O(d / (T N)) correction), the sampler's noise (chi-square band, p = 1e-6) and the population
noise level (rounding times the cancellation ``||M*||^2 / (d sigma^2)``).

The update rules every gradient method is built from (:func:`step_functions_check`): the methods
layer's steps (:func:`linmeta.methods.sr_gradient_step`, :func:`linmeta.methods.joint_gd_step`,
:func:`linmeta.methods.alternating_step`, :func:`linmeta.methods.finetune.finetune_gd_step`)
against steps along ``jax.grad`` of the objectives they descend, and the paper protocol's fused
stages (:mod:`linmeta.families.paper.methods`: ``sr_retraining``, ``meta_lora_alternating``,
``finetune_both``) against those steps repeated (rounding).
"""
from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from linmeta.core.data import Samples, draw_samples, population, sample_tasks, task_statistics
from linmeta.core.problem import Truth, sample_truth
from linmeta.families.paper import methods as paper_methods
from linmeta.methods import (alternating_step, joint_gd_step, sr_gradient_step,
                             standard_retraining)
from linmeta.methods.finetune import finetune_gd_step
from linmeta.methods.meta_lora import meta_lora_objective
from linmeta.core import losses, metrics, theory

from linmeta.engine.claims import ClaimResult, Verdict
from linmeta.engine.claim_support import (band, figure_dpi, key_for, optimality_measures,
                                          per_seed_slopes, pyplot, save_figure, settings_value,
                                          spread)
from linmeta.engine.verdict import Tolerance
from ._program import in_one_program

CLAIM = "C1"
NOISE_STD = 0.1  # standard deviation of the noise (the spec's sigma; not the paper code's sigma^2)
GD_STEPS, GD_LR = 3000, 0.03  # the paper's SR gradient descent
GD_RECORD, GD_CHECK_STEPS = 50, 100  # trajectory recorded every 50 steps, checked up to step 100

SETTINGS = {
    "tiny": dict(d=6, k=1, T=3, seeds=4, Ns=(100, 1000, 10000)),
    "quick": dict(d=10, k=1, T=3, seeds=16, Ns=(100, 300, 1000, 3000, 10000, 30000)),
    "full": dict(d=10, k=1, T=3, seeds=32, Ns=(100, 300, 1000, 3000, 10000, 30000, 100000)),
}


def _one_seed(key, *, d, k, T, Ns, noise_std):
    """Everything C1 measures for one random truth and one data draw (jit-able)."""
    k_truth, k_data = jax.random.split(key)
    truth = sample_truth(k_truth, d, k, T)
    target = theory.sr_population(truth.A_star, truth.U_star)
    pop = population(truth, noise_std)
    a_exact = standard_retraining(pop).base
    gd = standard_retraining(pop, method="gd", steps=GD_STEPS, lr=GD_LR,
                                     record_every=GD_RECORD)
    samples = draw_samples(k_data, truth, max(Ns), noise_std)
    errs = []
    for N in Ns:  # nested prefixes of one draw: a learning curve per seed, one compile
        stats = task_statistics(Samples(samples.X[:, :N], samples.Y[:, :N],
                                                        samples.M_star, samples.noise_std))
        errs.append(metrics.base_error(standard_retraining(stats).base, target))
    # the noise the sampler drew: residuals y - M*_t x of every sample (sum of squares)
    resid = samples.Y - samples.X @ jnp.swapaxes(truth.M_star, -1, -2)
    M2 = jnp.sum(truth.M_star ** 2, axis=(-2, -1))
    return dict(pop_exact=metrics.base_error(a_exact, target, relative=True),
                pop_gd=metrics.base_error(gd.base, target, relative=True),
                gd_hist=gd.history.value, err=jnp.stack(errs),
                const=theory.sr_sample_error_constant(truth.U_star, noise_std),
                resid_ss=jnp.sum(resid * resid),
                # population: 2 L_t(M*_t) / d = sigma^2 (closed form of the population loss)
                pop_noise=2 * losses.task_loss(truth.M_star, pop) / d,
                pop_noise_cond=jnp.max(M2) / (d * noise_std ** 2))


def run(setting: str = "quick", seed: int = 0) -> ClaimResult:
    """Measure C1 for ``setting`` (tiny/quick/full); see the module docstring."""
    cfg = settings_value(SETTINGS, setting)
    t0 = time.perf_counter()
    d, k, T, S, Ns = cfg["d"], cfg["k"], cfg["T"], cfg["seeds"], tuple(cfg["Ns"])
    one = functools.partial(_one_seed, d=d, k=k, T=T, Ns=Ns, noise_std=NOISE_STD)
    keys = jax.random.split(key_for(seed, CLAIM), S)
    out = jax.jit(lambda ks: jax.lax.map(one, ks))(keys)
    out = {name: np.asarray(v) for name, v in out.items()}
    Narr = np.asarray(Ns, float)

    # pooled least squares in the population: Sxx = I (condition 1); a few rounding steps per entry
    tol_pop = Tolerance.rounding(10 * d, what="pooled least squares, condition of sum_t S_xx = 1")
    note = f"d={d}, k={k}, T={T}, {S} seeds, {jnp.asarray(0.0).dtype}"
    rho = 1 - GD_LR
    floor = 10 * d * float(jnp.finfo(jnp.asarray(0.0).dtype).eps) / GD_LR
    tol_gd = Tolerance.contraction(rho, GD_STEPS, floor=floor,
                                   floor_why="rounding settles at 10 d eps / lr")
    rows = [
        Verdict(CLAIM, "population SR (pooled least squares): ||A_SR-(A*+Rbar)||_F/||A*+Rbar||_F",
                0.0, float(out["pop_exact"].mean()), spread(out["pop_exact"]), tol_pop,
                tol_pop.below(out["pop_exact"]), "check",
                note + f"; every seed; max {out['pop_exact'].max():.2e}"),
        Verdict(CLAIM, f"population SR gradient descent ({GD_STEPS} steps, lr {GD_LR}): rel. error",
                rho ** GD_STEPS, float(out["pop_gd"].mean()), spread(out["pop_gd"]), tol_gd,
                tol_gd.below(out["pop_gd"]), "check",
                note + f"; every seed; max {out['pop_gd'].max():.2e}"),
    ]
    # the whole trajectory: in the population the SR gradient step is A - Abar <- (1 - lr)(A - Abar)
    # exactly, so the excess objective F_n = F_inf + (F_0 - F_inf)(1 - lr)^(2n)
    h = out["gd_hist"]                                              # (S, n_rec)
    n_chk = np.arange(1, GD_CHECK_STEPS // GD_RECORD + 1)           # records at 50, 100 steps
    steps = n_chk * GD_RECORD
    f0, finf = h[:, :1], h[:, -1:]
    ratio = (h[:, n_chk] - finf) / ((f0 - finf) * rho ** (2 * steps))
    cond = float(np.max(np.maximum(1.0, finf / (f0 - finf)))) * rho ** (-2 * GD_CHECK_STEPS)
    tol_traj = Tolerance.rounding(10 * GD_CHECK_STEPS, cond,
                                  what="cancellation (F_n - F_inf) / ((F_0 - F_inf)(1-lr)^2n)")
    rows.append(Verdict(
        CLAIM, f"population SR gradient descent trajectory: (F_n - F_inf) / ((F_0 - F_inf)"
        f"(1-lr)^(2n)) at n = {', '.join(str(int(s)) for s in steps)}", 1.0, float(ratio.mean()),
        spread(ratio), tol_traj, tol_traj.admits(ratio - 1), "check",
        note + f"; max |ratio - 1| {np.max(np.abs(ratio - 1)):.1e}; F = excess objective"))

    slopes, slope_mean, slope_se = per_seed_slopes(Narr, out["err"])
    tol_slope = Tolerance.seeds(slope_se, S, bias=d / (T * Narr[0]),
                                bias_why="d/(T N_min): O(d/(T N)) correction from S^-1")
    rows.append(Verdict(
        CLAIM, f"log-log slope of ||A_SR(N)-(A*+Rbar)||_F in N (N={Ns[0]}..{Ns[-1]})", -0.5,
        slope_mean, spread(slopes), tol_slope, tol_slope.admits(slope_mean + 0.5), "check",
        note + f", sigma={NOISE_STD}, nested samples per seed"))
    # per seed, N ||error||^2 / C averaged over the N grid (nested draws: correlated, still useful)
    ratio = np.mean(Narr * out["err"] ** 2, axis=1) / out["const"]
    ratio_se = float(np.std(ratio, ddof=1) / math.sqrt(S)) if S > 1 else float("nan")
    tol_ratio = Tolerance.seeds(ratio_se, S, bias=d / (T * Narr[0]),
                                bias_why="d/(T N_min): O(d/(T N)) correction from S^-1")
    rows.append(Verdict(
        CLAIM, "N ||A_SR(N)-(A*+Rbar)||_F^2 / C (mean over the N grid), "
        "C=sum_t[(d+1)||R*_t-Rbar||^2+d^2 sigma^2]/T^2 (theory.sr_sample_error_constant)", 1.0,
        float(ratio.mean()), spread(ratio), tol_ratio, tol_ratio.admits(ratio.mean() - 1),
        "check", note + f", sigma={NOISE_STD}"))
    # noise of the sampler: sum of squared residuals / sigma^2 ~ chi^2(S T N d)
    dof = S * T * max(Ns) * d
    noise_ratio = float(np.sum(out["resid_ss"])) / (dof * NOISE_STD ** 2)
    tol_noise = Tolerance.chi2(dof)
    rows.append(Verdict(
        CLAIM, "noise of linmeta.draw_samples: mean squared residual y - M*_t x / noise_std^2",
        1.0, noise_ratio, float("nan"), tol_noise, tol_noise.contains_ratio(noise_ratio),
        "check", note + f", noise_std={NOISE_STD}, {dof} residual entries pooled over seeds; "
        f"ratio {noise_ratio:.5f}"))
    pop_ratio = out["pop_noise"] / NOISE_STD ** 2
    tol_pn = Tolerance.rounding(10 * d, float(np.max(out["pop_noise_cond"])),
                                what="cancellation of ||M*||^2 in the loss")
    rows.append(Verdict(
        CLAIM, "population statistics: 2 L_t(M*_t) / d = noise_std^2 (ratio, every task)", 1.0,
        float(pop_ratio.mean()), spread(pop_ratio), tol_pn, tol_pn.admits(pop_ratio - 1),
        "check", note + f"; max |ratio-1| {np.max(np.abs(pop_ratio - 1)):.1e}"))
    rows.append(pooled_least_squares_optimality(jax.random.fold_in(key_for(seed, CLAIM), 1),
                                                d=d, k=k, T=T))
    rows.append(sample_error_constant_monte_carlo(seed=seed))
    rows.append(losses_check())
    rows.append(step_functions_check(jax.random.fold_in(key_for(seed, CLAIM), 2)))
    data = dict(setting=setting, seed=seed, d=d, k=k, T=T, noise_std=NOISE_STD, Ns=Narr,
                err=out["err"], const=out["const"], pop_exact=out["pop_exact"],
                pop_gd=out["pop_gd"], slope=slope_mean, tol_pop=tol_pop.value)
    return ClaimResult(CLAIM, rows, data, time.perf_counter() - t0)


def pooled_least_squares_optimality(key, *, d, k, T, N=None, starts=3) -> Verdict:
    """The exact SR solver (:func:`linmeta.methods.standard_retraining`, pooled least squares) at
    finite N (``S_xx,t != I``: the weighting matters) against the objective it claims to minimise,
    ``F(A) = (1/T) sum_t L_t(A)`` (:func:`linmeta.core.losses.task_loss`): the gradient of F there
    (automatic differentiation) relative to the gradient at 0, and SciPy's L-BFGS from ``starts``
    random starts on F, which must find nothing lower (relative to ``F(0) - F(A_SR)``)."""
    N = 2 * d if N is None else N
    value_and_grad = jax.value_and_grad(lambda x, stats: losses.mean_loss(x.reshape(d, d), stats))

    @jax.jit
    def instance(key):  # one compiled program: the problem, the solver, the starts
        k_truth, k_data, k_start = jax.random.split(key, 3)
        stats = sample_tasks(k_data, sample_truth(k_truth, d, k, T), N, NOISE_STD)
        A_hat = standard_retraining(stats).base.reshape(-1)
        x0 = jax.random.normal(k_start, (starts, d * d), A_hat.dtype) * jnp.std(A_hat)
        return stats, A_hat, x0, jnp.linalg.cond(jnp.mean(stats.Sxx, axis=0))

    stats, A_hat, x0, cond = jax.tree.map(np.asarray, instance(key))
    vg = jax.jit(value_and_grad)
    foc, gain = optimality_measures(lambda x: vg(jnp.asarray(x), stats), A_hat, np.zeros(d * d),
                                    x0)
    cond = float(cond)
    tol_foc = Tolerance.rounding(100 * d, cond, what="gradient of F at A_SR / at 0, cond of "
                                 "mean S_xx")
    tol_gain = Tolerance.stated(1e-9, "accuracy of L-BFGS (gtol 1e-10, ftol 1e-13) "
                                "relative to F(0) - F(A_SR)")
    return Verdict(
        CLAIM, f"pooled least squares is the SR optimum at finite N={N}: ||grad F(A_SR)||/||grad "
        f"F(0)||; L-BFGS ({starts} starts) finds nothing lower", 0.0, foc, float("nan"), tol_foc,
        tol_foc.below(foc) and gain < tol_gain.value, "check",
        f"d={d}, k={k}, T={T}, cond(mean S_xx) {cond:.1f}; L-BFGS best - F(A_SR) = "
        f"{-gain:.1e} x (F(0) - F(A_SR)) (must be > -{tol_gain.value:g})")


def plot(result: ClaimResult, out_dir) -> list:
    """``c1_sr_minimiser.{png,pdf}``: population errors per seed; finite-N error against N."""
    plt = pyplot()
    D = result.data
    Ns, err = D["Ns"], D["err"]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw=dict(width_ratios=[1, 1.6]))
    seeds = np.arange(len(D["pop_exact"]))
    floor = 1e-17
    ax0.semilogy(seeds, np.maximum(D["pop_exact"], floor), "o", label="pooled least squares")
    ax0.semilogy(seeds, np.maximum(D["pop_gd"], floor), "s", mfc="none",
                 label=f"gradient descent ({GD_STEPS} steps)")
    ax0.axhline(D["tol_pop"], color="k", ls="--", lw=1, label=f"tolerance {D['tol_pop']:g}")
    ax0.set_xlabel("seed (random truth)")
    ax0.set_ylabel(r"$\|A_{SR} - (A^* + \bar R)\|_F \,/\, \|A^* + \bar R\|_F$")
    ax0.set_title("population SR = $A^* + \\bar R$")
    ax0.set_ylim(floor / 2, 1)
    ax0.legend(fontsize=8, loc="upper right")

    band(ax1, Ns, err, "tab:red", f"measured (mean, min-max over {err.shape[0]} seeds)")
    pred = np.sqrt(np.mean(D["const"]) / Ns)
    ax1.plot(Ns, pred, "k--", lw=1.2, label=r"theory $\sqrt{C/N}$ (slope $-1/2$)")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("samples per task N")
    ax1.set_ylabel(r"$\|A_{SR}(N) - (A^* + \bar R)\|_F$")
    ax1.set_title(f"empirical SR converges (fitted slope {D['slope']:.3f})")
    ax1.legend(fontsize=8)
    ax1.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"C1  standard retraining minimiser   d={D['d']}, k={D['k']}, T={D['T']}, "
                 f"noise std {D['noise_std']}  ({D['setting']})", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_dir, "c1_sr_minimiser", dpi=figure_dpi(result.data["setting"]))


def sample_error_constant_monte_carlo(*, d=5, k=2, T=3, scale=0.3, noise_std=0.15,
                                      draws=10000, seed=0) -> Verdict:
    """:func:`linmeta.core.theory.sr_sample_error_constant` against a Monte Carlo of the
    linearised SR error. With ``S_t = X_t X_t^T / N`` and ``D_t = R*_t - Rbar`` (summing to 0 over
    t), ``A_SR(N) - (A* + Rbar) = [(1/T) sum_t (D_t (S_t - I) + E_t X_t^T / N)] S^{-1}``, whose
    first-order term is a mean of N i.i.d. zero-mean terms ``z = (1/T) sum_t (D_t (x_t x_t^T - I)
    + e_t x_t^T)`` (x_t ~ N(0, I), e_t ~ N(0, sigma^2 I), one sample per task), so the constant
    is ``C = E ||z||_F^2`` exactly; ``draws`` independent z (NumPy), mean of ``||z||^2 / C``
    against 1 within a Student-t band (p = 0.01) of its standard error. d != T so that swapping
    them changes C; factors ``U*_t`` with entries N(0, scale^2), scale = 0.3 and sigma = 0.15 make
    the two terms of C about equal and C below 1 (a rounding of C to an integer shows)."""
    rng = np.random.default_rng(seed)
    U = scale * rng.standard_normal((T, d, k))
    R = U @ U.transpose(0, 2, 1)
    D = R - R.mean(axis=0)
    x = rng.standard_normal((draws, T, d))
    e = noise_std * rng.standard_normal((draws, T, d))
    Dx = np.einsum("tab,ntb->nta", D, x)
    z = (np.einsum("nta,ntb->nab", Dx + e, x) - D.sum(axis=0)) / T
    C = float(jax.jit(theory.sr_sample_error_constant)(U, noise_std))   # one program, cached
    ratio = np.sum(z * z, axis=(-2, -1)) / C
    se = float(np.std(ratio, ddof=1) / math.sqrt(draws))
    tol = Tolerance.seeds(se, draws)
    return Verdict(
        CLAIM, f"Monte Carlo ({draws} draws) of the linearised SR error E||z||^2 / "
        "sr_sample_error_constant", 1.0, float(ratio.mean()), spread(ratio), tol,
        tol.admits(ratio.mean() - 1), "check",
        f"d={d}, k={k}, T={T}, U* entries N(0, {scale}^2), sigma={noise_std}; C = "
        f"{C:.3g}; standard error {se:.1e}")


def _losses_of(Ms, stats):
    """The values of :mod:`linmeta.core.losses` that :func:`losses_check` compares."""
    B = losses.ols_solution(stats)
    return [losses.task_loss(Ms, stats), losses.task_loss(Ms[0], stats),
            losses.task_loss_grad(Ms, stats), losses.task_loss(B, stats),
            losses.excess_loss(Ms, stats), losses.excess_loss(Ms, stats, B),
            losses.mean_loss(Ms, stats), losses.excess_risk(Ms, stats),
            losses.paper_test_loss(Ms, stats), B]


def step_functions_check(key, *, d: int = 4, k: int = 1, T: int = 3, N: int = 12,
                         steps: int = 4, inner: int = 3) -> Verdict:
    """The gradient steps against ``jax.grad`` and the fused protocol stages against the steps.

    On one finite-sample problem (``S_xx,t != I``): ``sr_gradient_step`` is
    ``A - lr grad_A F_SR``, ``joint_gd_step`` is ``(A, U) - (lr_b grad_A F, lr_a grad_U F)``,
    ``alternating_step`` is ``inner`` steps ``U_t - lr_a grad_{U_t} L_t`` then
    ``A - lr_b grad_A F`` at the new U, ``finetune_gd_step`` is ``(U_t, V_t) - lr grad L_t``
    (F: :func:`linmeta.methods.meta_lora.meta_lora_objective`, L_t: the task losses, their
    gradients by ``jax.grad``); then ``steps`` iterations of the fused stages of
    :mod:`linmeta.families.paper.methods` against the steps repeated. Largest difference
    relative to the size of the iterate. One compiled program."""
    pairs = _step_pairs(key, d=d, k=k, T=T, N=N, steps=steps, inner=inner)
    dev = {}
    for name, (got, want) in pairs.items():
        got, want = np.asarray(got), np.asarray(want)
        dev[name] = (float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-300))
                     if got.shape == want.shape else float("inf"))
    worst = max(dev, key=dev.get)
    tol = Tolerance.rounding(100 * d * steps * inner, what="steps of d x d products, relative to "
                             "the iterate")
    return Verdict(
        CLAIM, "gradient steps (sr_gradient_step, joint_gd_step, alternating_step, "
        "finetune_gd_step) vs steps along jax.grad; the paper protocol's fused stages "
        "(sr_retraining, meta_lora_alternating, finetune_both) vs the steps repeated: max rel. "
        "difference", 0.0, dev[worst], float("nan"), tol, tol.below(dev[worst]), "check",
        f"d={d}, k={k}, T={T}, N={N} (finite sample), {steps} steps of {inner} inner steps; "
        f"largest: {worst} {dev[worst]:.1e}")


@functools.partial(jax.jit, static_argnames=("d", "k", "T", "N", "steps", "inner"))
def _step_pairs(key, *, d, k, T, N, steps, inner):
    """(library value, reference) pairs of :func:`step_functions_check`."""
    k_t, k_s, k_u, k_v, k_b = jax.random.split(key, 5)
    stats = sample_tasks(k_s, sample_truth(k_t, d, k, T), N, 0.1)
    dt = stats.Sxx.dtype
    A = 0.1 * jax.random.normal(k_b, (d, d), dt)
    U = 0.1 * jax.random.normal(k_u, (T, d, k), dt)
    V = 0.1 * jax.random.normal(k_v, (T, d, k), dt)
    lr_a, lr_b, lr = 0.003, 0.03, 0.005

    def F(A, U):
        return meta_lora_objective(A, U, stats)

    def task_losses(A, U, V):
        return jnp.sum(losses.task_loss(A + U @ jnp.swapaxes(V, -1, -2), stats))

    out = {}
    g_sr = jax.grad(lambda A: jnp.mean(losses.task_loss(A, stats)))(A)
    out["sr_gradient_step"] = (sr_gradient_step(A, stats, lr_b), A - lr_b * g_sr)
    gA, gU = jax.grad(F, argnums=(0, 1))(A, U)
    A1, U1 = joint_gd_step(A, U, stats, lr_a, lr_b)
    out["joint_gd_step A"] = (A1, A - lr_b * gA)
    out["joint_gd_step U"] = (U1, U - lr_a * gU)
    U_ref = U
    for _ in range(inner):  # per task: grad of L_t in U_t is T times grad_U F's slice
        U_ref = U_ref - lr_a * T * jax.grad(F, argnums=1)(A, U_ref)
    A_ref = A - lr_b * jax.grad(F, argnums=0)(A, U_ref)
    A2, U2 = alternating_step(A, U, stats, lr_a, lr_b, inner)
    out["alternating_step A"] = (A2, A_ref)
    out["alternating_step U"] = (U2, U_ref)
    gU_f, gV_f = jax.grad(task_losses, argnums=(1, 2))(A, U, V)
    U3, V3 = finetune_gd_step(U, V, A, stats, lr)
    out["finetune_gd_step U"] = (U3, U - lr * gU_f)
    out["finetune_gd_step V"] = (V3, V - lr * gV_f)

    a = jnp.zeros((d, d), dt)
    for _ in range(steps):
        a = sr_gradient_step(a, stats, lr_b)
    out["sr_retraining"] = (paper_methods.sr_retraining(stats, lr_b, steps=steps,
                                                        record_every=steps)[0], a)
    a, u = jnp.zeros((d, d), dt), U
    for _ in range(steps):
        a, u = alternating_step(a, u, stats, lr_a, lr_b, inner)
    A_alt, U_alt, _ = paper_methods.meta_lora_alternating(stats, U, lr_a, lr_b,
                                                          outer_steps=steps, inner_steps=inner,
                                                          record_every=steps)
    out["meta_lora_alternating A"] = (A_alt, a)
    out["meta_lora_alternating U"] = (U_alt, u)
    u, v = U, V
    for _ in range(steps):
        u, v = finetune_gd_step(u, v, A, stats, lr)
    (U_fb, V_fb), _ = paper_methods.finetune_both(A[None, None], stats, U[None], V[None], lr,
                                                  steps=steps, record_every=steps)
    out["finetune_both U"] = (U_fb[0], u)
    out["finetune_both V"] = (V_fb[0], v)
    return out


def losses_check(d: int = 3, T: int = 2) -> Verdict:
    """The task losses of :mod:`linmeta.core.losses` on statistics of raw samples against NumPy
    computations on the samples themselves: ``L_t(M) = 1/(2N) sum_i ||y_i - M x_i||^2``
    (``task_loss``; per-task and shared M), its gradient ``-(1/N) sum_i (y_i - M x_i) x_i^T``,
    the minimum-norm least-squares fit (``ols_solution``; ``np.linalg.lstsq``, also at N < d where
    ``S_xx`` is singular), ``L_t(M) - L_t(B_t)`` (``excess_loss``, with and without B), the task
    mean (``mean_loss``, also on a batch (2, T) of statistics), ``(1/N) sum_i ||(M - M*) x_i||^2``
    (``excess_risk``) and ``paper_test_loss`` (N times it; ``||M - M*||_F^2`` in the population).
    Deviations relative to the largest loss term (``S_yy``-sized)."""
    rng = np.random.default_rng(1)
    Mst = rng.standard_normal((T, d, d))
    Ms = rng.standard_normal((T, d, d))
    data, stats_list = [], []
    for N in (2 * d, d - 1):
        X = rng.standard_normal((T, N, d))
        Y = X @ Mst.transpose(0, 2, 1) + 0.3 * rng.standard_normal((T, N, d))
        data.append((N, X, Y))
        stats_list.append(task_statistics(Samples(X, Y, Mst, np.full((T,), 0.3))))
    both = jax.tree.map(lambda a, b: jnp.stack([a, b]), *stats_list)   # shape (2, T, ...)
    pop = population(Truth(Mst[0], rng.standard_normal((T, d, 1))))
    per, mean_both, plain, pop_loss = in_one_program([
        (lambda M, sts: [_losses_of(M, st) for st in sts], (Ms, stats_list)),
        (losses.mean_loss, (Ms, both)),
        (lambda M, sts: [losses.task_loss(M, st) for st in sts], (Ms, stats_list)),
        (losses.paper_test_loss, (Ms, pop))])
    devs = []
    scale = max(float(np.max(np.sum(Y ** 2, axis=(-2, -1)) / N)) for N, _, Y in data)
    for (N, X, Y), got in zip(data, per):
        loss = lambda M: np.array([np.sum((Y[t] - X[t] @ M[t].T) ** 2) / (2 * N)  # noqa: E731
                                   for t in range(T)])
        B = np.stack([np.linalg.lstsq(X[t], Y[t], rcond=None)[0].T for t in range(T)])
        grad = np.stack([-(Y[t] - X[t] @ Ms[t].T).T @ X[t] / N for t in range(T)])
        risk = np.array([np.sum((X[t] @ (Ms[t] - Mst[t]).T) ** 2) / N for t in range(T)])
        want = [loss(Ms), loss(np.stack([Ms[0]] * T)), grad, loss(B), loss(Ms) - loss(B),
                loss(Ms) - loss(B), np.mean(loss(Ms)), risk, N * risk, B]
        pairs = list(zip(got, want))[:9 if N < d else 10]   # the minimiser itself when unique
        devs += [np.max(np.abs(g - w)) / scale if np.shape(g) == np.shape(w) else np.inf
                 for g, w in pairs]
    want = np.stack([p.mean() for p in plain])
    devs.append(np.max(np.abs(mean_both - want)) / scale if mean_both.shape == want.shape
                else np.inf)
    want = np.sum((Ms - np.asarray(pop.M_star)) ** 2, axis=(-2, -1))
    devs.append(np.max(np.abs(pop_loss - want)) / np.max(want) if pop_loss.shape == want.shape
                else np.inf)
    dev = np.asarray(devs, float)
    tol = Tolerance.rounding(100 * d, what="sums over N samples of d x d products, relative to "
                             "S_yy")
    return Verdict(
        CLAIM, "core.losses (task_loss, grad, ols_solution also at N < d, excess_loss, mean_loss "
        "also on a (2, T) batch, excess_risk, paper_test_loss also in the population) vs NumPy on "
        "the raw samples: max |diff| / max S_yy", 0.0, float(np.max(dev)), float("nan"), tol,
        tol.below(dev), "check", f"d={d}, T={T}, N in (2d, d-1)")
