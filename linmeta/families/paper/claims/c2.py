"""Claim C2: standard retraining is not low-rank adaptable.

After SR the unseen task's residual is ``Res = M*_new - A_SR = U_new U_new^T - Rbar``
(:func:`linmeta.core.theory.sr_residual`). Generically (Gaussian U*, ``(T+1)k <= d``) it has rank
``(T+1)k``: k positive and Tk negative eigenvalues
(:func:`linmeta.core.theory.generic_sr_residual_rank`). The best rank-r adapter ``U V^T`` leaves the
Eckart-Young error ``E_SR(r) = sum_{i>r} sigma_i^2(Res)`` (:func:`linmeta.core.theory.lora_bias`),
whatever n: a bias more fine-tuning data never removes. A PSD adapter ``U U^T`` keeps every
negative eigenvalue: its error is at least ``sum_{lambda<0} lambda^2``.

Measured here, for Gaussian truths over seeds and a range of T:

- the spectrum and numerical rank of ``M*_new - A_SR`` with ``A_SR`` from
  :func:`linmeta.standard_retraining` (counts of eigenvalues above / below ``d eps ||Res||``);
- ``E_SR(r)`` for every r: population fine-tuning (:func:`linmeta.finetune`, ``method="exact"``,
  reduced-rank regression) against :func:`linmeta.core.theory.lora_bias`; gradient-descent fine-tuning
  from n samples with rank k, whose population error ``||M_ft - M*_new||_F^2`` can only exceed
  ``E_SR(k)`` (Eckart-Young is a lower bound) and approaches it as n grows;
- the PSD bias ``lora_bias(psd=True)`` against an independent solver (BFGS on
  ``||Res - W W^T||_F^2`` from random starts, SciPy, float64);
- the worked orthogonal case (:func:`linmeta.orthogonal_truth`): spectrum ``s^2`` (k times),
  ``-s^2/T`` (Tk times), ``E_SR(k) = k s^4 / T`` (:func:`linmeta.core.theory.orthogonal_case_bias`
  against exact fine-tuning) and, at every rank r = 0..d, ``lora_bias`` of the residual for both
  adapters against the closed forms (for k >= 2 the PSD error at r < k depends on how many positive
  eigenvalues are kept, so keeping one too many fails);
- the many-task limit: ``Rbar -> k I`` with ``E||Rbar - k I||_F^2 = k d (d+1) / T`` exactly
  (entries of ``U U^T`` have variance k off the diagonal and 2k on it), the residual becomes full
  rank, and since the distance to the rank-k matrices is 1-Lipschitz in the Frobenius norm,
  ``|sqrt(E_SR(k; T)) - sqrt(E_inf)| <= ||Rbar - k I||_F`` with
  ``E_inf = lora_bias(U_new U_new^T - k I, k)`` (about ``k^2 (d - k)``: the rank-k bias grows to
  the full-rank regime where only full fine-tuning, rate ``sigma^2 d^2 / n``, helps).

Tolerances (:class:`~linmeta.engine.verdict.Tolerance`): spectral identities to rounding
(``10 d eps`` relative to ``||Res||_F^2``), rank counts exactly, the PSD bias against BFGS to the
independent solver's accuracy (stated), ``||Rbar - kI||^2`` against its expectation
(:func:`linmeta.core.theory.rbar_mean_square_deviation`) within a Student-t band over seeds. Measured (no
closed form): gradient-descent fine-tuning's excess over ``E_SR(k)`` at finite n and steps, and how
fast ``E_SR(k; T)`` approaches ``E_inf``.
"""
from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from linmeta.core.data import population, sample_tasks
from linmeta.core.problem import orthogonal_truth, sample_truth
from linmeta.methods import standard_retraining
from linmeta.methods.finetune import finetune
from linmeta.core import metrics, theory
from linmeta.families.paper.theory import sr_bias_host, theory_sr_bias

from linmeta.engine.claims import ClaimResult, Verdict
from linmeta.engine.claim_support import (DomainCase, band, domain_row, figure_dpi, key_for,
                                          pyplot, save_figure, settings_value, spread)
from linmeta.engine.verdict import Tolerance
from ._program import in_one_program

CLAIM = "C2"
NOISE_STD = 0.1  # fine-tuning noise standard deviation
FT_LR = 0.005    # the paper's fine-tuning step

SETTINGS = {
    "tiny": dict(d=6, k=1, Ts=(1, 2, 3, 5), many_Ts=(20, 200), seeds=3, ranks=(1, 2, 4),
                 n=2000, ft_steps=3000, ortho=((2, 2, 1.5),), psd_seeds=1),
    "quick": dict(d=10, k=1, Ts=(1, 2, 3, 5, 9), many_Ts=(30, 100, 300, 1000), seeds=6,
                  ranks=(1, 2, 4, 7), n=5000, ft_steps=4000, ortho=((1, 3, 1.0), (3, 2, 1.2)),
                  psd_seeds=1),
    "full": dict(d=20, k=2, Ts=(1, 2, 3, 5, 7, 9), many_Ts=(20, 50, 100, 300, 1000, 3000, 10000),
                 seeds=24, ranks=tuple(range(1, 21)), n=20000, ft_steps=10000,
                 ortho=((1, 3, 1.0), (2, 3, 1.5), (1, 10, 0.7), (3, 5, 1.2), (4, 4, 2.0)),
                 psd_seeds=6),
}


def _tile_stats(stats, m):
    """The single unseen task's statistics repeated m times (one per SR base)."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (m,) + x.shape[1:]), stats)


def _gaussian_seed(key, *, d, k, Ts, ranks, n, noise_std, ft_steps):
    """Residual spectra, rank-r biases and the many-task quantities for one random truth."""
    k_truth, k_data, k_ft = jax.random.split(key, 3)
    big = sample_truth(k_truth, d, k, max(Ts))
    M_new = big.M_new[0]
    # Rbar for every T at once: running means of U*_t U*_t^T over the tasks of one draw
    idx = jnp.asarray(Ts) - 1
    rbar = (jnp.cumsum(big.R_star, axis=0) / jnp.arange(1, max(Ts) + 1)[:, None, None])[idx]
    bases = big.A_star + rbar                     # A_SR = A* + Rbar (C1)
    residual = M_new - bases                      # (nT, d, d)
    m = len(Ts)
    pop_new = _tile_stats(population(big, tasks="unseen"), m)
    exact = jnp.stack([finetune(bases, pop_new, r, method="exact").test_loss
                       for r in ranks], axis=1)  # (nT, n_ranks)
    pred = jnp.stack([theory.lora_bias(residual, r) for r in ranks], axis=1)
    pred_psd = jnp.stack([theory.lora_bias(residual, r, psd=True) for r in range(1, d + 1)],
                         axis=1)                  # every r = 1..d (the PSD check picks some)
    smp_new = _tile_stats(sample_tasks(k_data, big, n, noise_std, tasks="unseen"), m)
    ft = finetune(bases, smp_new, k, key=k_ft, method="gd", steps=ft_steps, lr=FT_LR,
                          record_every=ft_steps)
    gd = jnp.sum((ft.task_matrix - M_new) ** 2, axis=(-2, -1))
    limit_res = big.U_new[0] @ big.U_new[0].T - k * jnp.eye(d, dtype=M_new.dtype)
    # theory.sr_residual against M*_new minus the SR solver's base (pooled least squares)
    solved = M_new - standard_retraining(population(big)).base
    sr_res_dev = jnp.linalg.norm(theory.sr_residual(big.U_star, big.U_new[0]) - solved) / \
        jnp.linalg.norm(solved)
    return dict(eig=theory.residual_spectrum(residual), rank=metrics.numerical_rank(residual),
                exact=exact, pred=pred, pred_psd=pred_psd, gd=gd,
                rbar_dev=jnp.linalg.norm(rbar - k * jnp.eye(d), axis=(-2, -1)),
                limit=theory.lora_bias(limit_res, k), residual=residual, sr_res_dev=sr_res_dev,
                res_norm=jnp.linalg.norm(residual, axis=(-2, -1)))


def _orthogonal_case(key, *, d, k, T, s):
    """SR residual for mutually orthogonal factors: the exact rank-k fine-tuning error, the
    spectrum's deviation from {s^2, 0, -s^2/T}, and the residual itself."""
    truth = orthogonal_truth(key, d, k, T, s=s)
    base = standard_retraining(population(truth)).base
    pop_new = population(truth, tasks="unseen")
    bias = finetune(base, pop_new, k, method="exact").test_loss[0]
    resid = truth.M_new[0] - base
    eig = theory.residual_spectrum(resid)
    want = jnp.concatenate([jnp.full((k,), s ** 2), jnp.zeros((d - (T + 1) * k,)),
                            jnp.full((T * k,), -s ** 2 / T)]).astype(eig.dtype)
    res_dev = jnp.linalg.norm(theory.sr_residual(truth.U_star, truth.U_new[0]) - resid) / \
        jnp.linalg.norm(resid)
    return bias, jnp.max(jnp.abs(eig - want)) / s ** 2, resid, res_dev


def orthogonal_rank_errors(resid):
    """``theory.lora_bias`` of an orthogonal case's residual at every rank 0..d, for ``U V^T`` and
    for the PSD ``U U^T`` (eagerly, outside the compiled program: 2 (d + 1) small calls)."""
    d = resid.shape[-1]
    ey = np.array([float(theory.lora_bias(resid, r)) for r in range(d + 1)])
    psd = np.array([float(theory.lora_bias(resid, r, psd=True)) for r in range(d + 1)])
    return ey, psd


def psd_bias_bfgs(residual, rank, n_starts=2, seed=0):
    """Independent PSD rank-``rank`` fit: min over W (d x rank) of ``||Res - W W^T||_F^2`` by SciPy
    BFGS (analytic gradient ``-4 (Res - W W^T) W``) from ``n_starts`` random starts; the smallest
    value found."""
    from scipy.optimize import minimize

    R = np.asarray(residual, float)
    R = (R + R.T) / 2
    d = R.shape[0]
    rng = np.random.default_rng(seed)
    scale = math.sqrt(max(np.linalg.norm(R), 1e-300) / d)

    def f(w):
        W = w.reshape(d, rank)
        E = R - W @ W.T
        return float(np.sum(E * E)), (-4 * E @ W).ravel()

    best = np.inf
    for _ in range(n_starts):
        w0 = scale * rng.standard_normal(d * rank)
        # BFGS (NumPy) rather than L-BFGS-B: the latter's BLAS threading makes each iteration of
        # this tiny problem cost milliseconds on a busy machine
        r = minimize(f, w0, jac=True, method="BFGS", options=dict(maxiter=3000, gtol=1e-10))
        best = min(best, float(r.fun))
    return best


def asym_bias_bfgs(residual, rank, n_starts=2, seed=0):
    """Independent rank-``rank`` fit: min over U, V (d x rank) of ``||Res - U V^T||_F^2`` by SciPy
    BFGS (gradients ``-2 E V``, ``-2 E^T U``) from ``n_starts`` random starts; the smallest value."""
    from scipy.optimize import minimize

    R = np.asarray(residual, float)
    d = R.shape[0]
    rng = np.random.default_rng(seed)
    scale = math.sqrt(max(np.linalg.norm(R), 1e-300) / d)

    def f(x):
        U, V = x[:d * rank].reshape(d, rank), x[d * rank:].reshape(d, rank)
        E = R - U @ V.T
        return float(np.sum(E * E)), np.concatenate([(-2 * E @ V).ravel(), (-2 * E.T @ U).ravel()])

    best = np.inf
    for _ in range(n_starts):
        r = minimize(f, scale * rng.standard_normal(2 * d * rank), jac=True, method="BFGS",
                     options=dict(maxiter=3000, gtol=1e-10))
        best = min(best, float(r.fun))
    return best


def paper_bias_closed_forms(key, *, d, k, T, ranks, n_unseen=3, pad=2) -> Verdict:
    """The paper family's closed forms of the mean SR bias (:mod:`linmeta.families.paper.theory`:
    ``theory_sr_bias`` with a static rank, with a NumPy-integer rank, with a traced rank and
    ``n_tasks`` on a padded truth, with a static rank and ``n_tasks`` on it, and ``sr_bias_host``)
    against the mean over ``n_unseen`` unseen tasks of the exact population fine-tuning error after
    the SR solver's base (:func:`linmeta.methods.finetune.finetune`, ``method="exact"``), at every
    rank of ``ranks``. The ``pad`` tasks appended beyond ``n_tasks = T`` are random (not zero), so
    counting any of them changes ``Rbar``."""
    truth = sample_truth(key, d, k, T, n_unseen=n_unseen)
    extra = sample_truth(jax.random.fold_in(key, 1), d, k, pad, n_unseen=0).U_star
    padded = truth._replace(U_star=jnp.concatenate([truth.U_star, extra]))

    @jax.jit
    def measured(truth):
        base = standard_retraining(population(truth)).base
        pop_new = population(truth, tasks="unseen")
        return jnp.stack([jnp.mean(finetune(base, pop_new, r, method="exact").test_loss)
                          for r in ranks])

    want = np.asarray(measured(truth))
    traced = jax.jit(lambda tr, r, n: theory_sr_bias(tr, r, n))
    got = np.array([[float(theory_sr_bias(truth, r)),
                     float(theory_sr_bias(truth, np.int64(r))),
                     float(traced(padded, jnp.asarray(r), jnp.asarray(T))),
                     float(theory_sr_bias(padded, r, T)),
                     sr_bias_host(padded.U_star, truth.U_new, T, r)] for r in ranks])
    scale = float(np.mean(np.sum(np.asarray(theory.sr_residual(truth.U_star, truth.U_new)) ** 2,
                                 axis=(-2, -1))))
    dev = np.abs(got - want[:, None]) / scale
    tol = Tolerance.rounding(10 * d, what="SVD of d x d, relative to mean ||Res||^2")
    return Verdict(
        CLAIM, "paper theory: theory_sr_bias (static, NumPy and traced rank; n_tasks < T on a "
        "padded truth) and sr_bias_host vs mean exact fine-tuning error after SR, max "
        "|diff|/||Res||^2", 0.0,
        float(np.max(dev)), float("nan"), tol, tol.below(dev), "check",
        f"d={d}, k={k}, T={T} (+{pad} random tasks beyond n_tasks), {n_unseen} unseen tasks, "
        f"r in {ranks}")


def rbar_deviation_monte_carlo(key, *, d, k, T, draws=4000) -> Verdict:
    """:func:`linmeta.theory.rbar_mean_square_deviation` against a Monte Carlo of ``draws``
    independent Gaussian truths (``U*_t`` i.i.d. N(0, 1), d x k): the mean of
    ``||Rbar - kI||_F^2`` over the draws divided by ``k d (d + 1) / T``, within a Student-t band
    (p = 0.01) of its standard error (relative about ``sqrt(2 / d^2) / sqrt(draws)``: a 1% check,
    where the per-seed row above, with a few seeds, is a loose one)."""
    @jax.jit
    def dev(key):
        U = jax.random.normal(key, (draws, T, d, k))
        rbar = jnp.mean(U @ jnp.swapaxes(U, -1, -2), axis=1)
        return jnp.sum((rbar - k * jnp.eye(d, dtype=U.dtype)) ** 2, axis=(-2, -1))

    x = np.asarray(dev(key)) / theory.rbar_mean_square_deviation(d, k, T)
    se = float(np.std(x, ddof=1) / math.sqrt(draws))
    tol = Tolerance.seeds(se, draws)
    return Verdict(
        CLAIM, f"Monte Carlo ({draws} draws) of ||Rbar - kI||_F^2 / rbar_mean_square_deviation "
        f"(k d (d+1) / T), T={T}", 1.0, float(x.mean()), spread(x), tol,
        tol.admits(x.mean() - 1), "check", f"d={d}, k={k}; standard error {se:.1e}")


def run(setting: str = "quick", seed: int = 0) -> ClaimResult:
    """Measure C2 for ``setting`` (tiny/quick/full); see the module docstring."""
    cfg = settings_value(SETTINGS, setting)
    t0 = time.perf_counter()
    d, k, S = cfg["d"], cfg["k"], cfg["seeds"]
    Ts = tuple(cfg["Ts"]) + tuple(cfg["many_Ts"])
    n_few = len(cfg["Ts"])
    ranks = tuple(sorted(set(cfg["ranks"]) | {k}))
    key = key_for(seed, CLAIM)
    k_gauss, k_orth = jax.random.split(key)
    one = functools.partial(_gaussian_seed, d=d, k=k, Ts=Ts, ranks=ranks, n=cfg["n"],
                            noise_std=NOISE_STD, ft_steps=cfg["ft_steps"])
    ortho = cfg["ortho"]

    @jax.jit
    def compute(keys, o_keys):
        o = [_orthogonal_case(kk, d=d, k=k_, T=T_, s=s_) for kk, (k_, T_, s_) in zip(o_keys, ortho)]
        return jax.vmap(one)(keys), [jnp.stack([x[i] for x in o]) for i in range(4)]

    g, o_out = compute(jax.random.split(k_gauss, S), jax.random.split(k_orth, len(ortho)))
    o_bias, o_eig, o_res, o_res_dev = (np.asarray(x) for x in o_out)
    o_ey, o_psd = (np.stack(x) for x in zip(*(orthogonal_rank_errors(r) for r in o_res)))
    g = {name: np.asarray(v) for name, v in g.items()}
    Tarr = np.asarray(Ts)
    # spectral computations on d x d matrices: 10 d rounding steps, relative to ||Res||^2
    tol_spec = Tolerance.rounding(10 * d, what="SVD / eigenvalues of d x d, relative to ||Res||^2")
    note = f"Gaussian truth d={d}, k={k}, {S} seeds, {jnp.asarray(0.0).dtype}"
    rows = []

    # --- spectrum and rank for (T+1)k <= d (generic regime) and beyond
    eig = g["eig"]                                        # (S, nT, d), decreasing
    thr = d * np.finfo(eig.dtype).eps * np.max(np.abs(eig), axis=-1, keepdims=True) * 10
    n_pos = np.sum(eig > thr, axis=-1)
    n_neg = np.sum(eig < -thr, axis=-1)
    gen = np.array([(T + 1) * k <= d for T in Ts])
    want_rank = np.array([theory.generic_sr_residual_rank(d, k, T) for T in Ts])
    match = (n_pos[:, gen] == k) & (n_neg[:, gen] == Tarr[gen] * k) & \
        (g["rank"][:, gen] == want_rank[gen])
    rows.append(Verdict(
        CLAIM, "SR residual M*_new-A_SR: (rank, #pos, #neg) = ((T+1)k, k, Tk) for T in "
        f"{tuple(int(t) for t in Tarr[gen])} (cases matching)", int(match.size),
        int(match.sum()), float("nan"),
        Tolerance.exact("all cases; eigenvalue threshold 10 d eps max|lambda|"),
        bool(match.all()), "check", note))
    full = ~gen
    if np.any(full):
        ok_full = np.all(g["rank"][:, full] == d) and np.all(n_neg[:, full] >= d - k) and \
            np.all(n_pos[:, full] <= k) and np.all(g["rank"][:, full] == want_rank[full])
        rows.append(Verdict(
            CLAIM, f"many tasks (T in {tuple(int(t) for t in Tarr[full])}, Tk >= d): residual "
            "full rank d = generic_sr_residual_rank, #pos <= k, #neg >= d-k", d, float(np.mean(g["rank"][:, full])),
            spread(g["rank"][:, full]), Tolerance.exact(), bool(ok_full), "check",
            note + f"; #pos seen {sorted(set(n_pos[:, full].ravel().tolist()))}"))

    # --- theory.sr_residual against M*_new - A_SR from the SR solver (Gaussian and orthogonal)
    res_dev = np.concatenate([g["sr_res_dev"].ravel(), o_res_dev.ravel()])
    rows.append(Verdict(
        CLAIM, "theory.sr_residual(U*, U_new) vs M*_new - A_SR (standard_retraining, pooled least "
        "squares): max ||diff||_F/||M*_new - A_SR||_F", 0.0, float(np.max(res_dev)),
        float("nan"), tol_spec, tol_spec.below(res_dev), "check",
        note + f" at T={max(Ts)}, and the {len(ortho)} orthogonal case(s)"))

    # --- Eckart-Young bias over r and T: exact population fine-tuning vs theory.lora_bias
    scale = g["res_norm"][..., None] ** 2
    dev = np.abs(g["exact"] - g["pred"]) / scale
    rows.append(Verdict(
        CLAIM, f"best rank-r fine-tuning error after SR = E_SR(r), r in {ranks}, all T "
        "(finetune exact vs Eckart-Young), max |diff|/||Res||^2", 0.0, float(np.max(dev)),
        float("nan"), tol_spec, tol_spec.below(dev), "check", note))
    ik = ranks.index(k)
    bias_k = g["pred"][:, :, ik]
    # gradient-descent fine-tuning from n samples, rank k: never below E_SR(k) (Eckart-Young is a
    # lower bound for any rank-k adapter, whatever n), and close to it once GD has converged
    excess = (g["gd"] - bias_k) / bias_k                   # (S, nT)
    rows.append(Verdict(
        CLAIM, f"GD fine-tuning (rank k={k}, n={cfg['n']}, {cfg['ft_steps']} steps): "
        "min over T, seeds of ||M_ft-M*_new||^2 / E_SR(k) - 1 (no rank-k adapter beats E_SR)",
        ">= 0", float(np.min(excess)), float("nan"), tol_spec,
        tol_spec.below(-excess), "check", note + f", noise std {NOISE_STD}; passes when "
        "every value > -tolerance"))
    rows.append(Verdict(
        CLAIM, f"GD fine-tuning (rank k, n={cfg['n']}): ||M_ft-M*_new||^2 / E_SR(k) - 1, "
        "median over T and seeds", 0.0, float(np.median(excess)), spread(excess),
        "measured (finite n and slow GD directions when singular values are close)",
        bool(np.all(np.isfinite(excess))), "measured",
        note + f"; max {np.max(excess):.2e}, sigma^2 dof/(n E_SR) <= "
        f"{NOISE_STD ** 2 * theory.adapter_dof(d, k) / cfg['n'] / np.min(bias_k):.1e}"))

    # --- PSD adapter: theory vs L-BFGS, and it keeps every negative eigenvalue
    psd_rows = []
    for s_i in range(min(cfg["psd_seeds"], S)):
        for t_i, T in enumerate(Ts[:n_few]):
            res = g["residual"][s_i, t_i]
            for r in sorted({k, k + 1, min(d, (T + 1) * k)}):
                psd_rows.append((g["pred_psd"][s_i, t_i, r - 1],
                                 psd_bias_bfgs(res, r, seed=s_i * 1000 + t_i),
                                 g["res_norm"][s_i, t_i] ** 2))
    psd_rows = np.asarray(psd_rows)
    psd_dev = np.abs(psd_rows[:, 0] - psd_rows[:, 1]) / psd_rows[:, 2]
    psd_tol = Tolerance.stated(1e-6, "accuracy of the independent BFGS solver (gtol 1e-10, 2 "
                               "starts); a wrong closed form is off by a squared eigenvalue")
    rows.append(Verdict(
        CLAIM, "PSD adapter bias lora_bias(psd=True) vs BFGS on ||Res-WW^T||^2 "
        "(max |diff|/||Res||^2)", 0.0, float(np.max(psd_dev)), float("nan"), psd_tol,
        psd_tol.below(psd_dev), "check",
        f"{len(psd_rows)} (seed, T, r) cases, r in {{k, k+1, (T+1)k}}"))
    # the U V^T bias against the same kind of independent solver (no SVD involved)
    ey_rows, ey_ranks = [], sorted({k, k + 1} & set(ranks))
    for t_i in sorted({0, n_few - 1}):
        res = g["residual"][0, t_i]
        for r in ey_ranks:
            ey_rows.append((g["pred"][0, t_i, ranks.index(r)], asym_bias_bfgs(res, r, seed=t_i),
                            g["res_norm"][0, t_i] ** 2))
    ey_rows = np.asarray(ey_rows)
    ey_dev = np.abs(ey_rows[:, 0] - ey_rows[:, 1]) / ey_rows[:, 2]
    rows.append(Verdict(
        CLAIM, "U V^T adapter bias lora_bias vs BFGS on ||Res-UV^T||^2 (max |diff|/||Res||^2)",
        0.0, float(np.max(ey_dev)), float("nan"), psd_tol, psd_tol.below(ey_dev), "check",
        f"{len(ey_rows)} (T, r) cases, seed 0, T in {{{Ts[0]}, {Ts[n_few - 1]}}}, r in "
        f"{tuple(ey_ranks)}"))
    rows.append(core_theory_domain())
    rows.append(small_spectrum_biases())
    rows.append(numerical_rank_check())
    rows.append(generic_rank_check())
    rows.append(paper_bias_closed_forms(jax.random.fold_in(key, 7), d=d, k=k, T=max(cfg["Ts"]),
                                        ranks=(k, k + 1)))
    neg_sq = np.sum(np.where(g["eig"] < 0, g["eig"], 0.0) ** 2, axis=-1)  # (S, nT)
    keep = np.min(g["pred_psd"] / neg_sq[..., None])  # over r = 1..d
    rows.append(Verdict(
        CLAIM, "PSD rank-r bias / sum of squared negative eigenvalues (min over r, T, seeds)",
        ">= 1", float(keep), float("nan"), tol_spec, tol_spec.below(1 - keep), "check",
        note + "; equality for r >= #positive eigenvalues; passes when 1 - min < tolerance"))

    # --- orthogonal worked case
    o_pred = np.array([theory.orthogonal_case_bias(kk, s, T) for kk, T, s in ortho])
    o_dev = np.abs(o_bias - o_pred) / o_pred
    rows.append(Verdict(
        CLAIM, "orthogonal case E_SR(k) = k s^4 / T (theory.orthogonal_case_bias vs exact "
        "fine-tuning), cases (k,T,s) " + ", ".join(f"({kk},{T},{s:g})" for kk, T, s in ortho),
        float(np.mean(o_pred)), float(np.mean(o_bias)), float("nan"), tol_spec,
        tol_spec.below(o_dev), "check",
        f"d={d}; predicted/measured: mean over cases; max rel. diff {np.max(o_dev):.1e}"))
    rows.append(Verdict(
        CLAIM, "orthogonal case spectrum {s^2 (k), 0, -s^2/T (Tk)}: max |diff| / s^2", 0.0,
        float(np.max(o_eig)), float("nan"), tol_spec, tol_spec.below(o_eig), "check", f"d={d}"))
    # every rank r = 0..d, both adapters: lora_bias of the measured residual against the closed
    # forms; for k >= 2 the PSD error at r < k depends on how many positive eigenvalues are kept
    rr = np.arange(d + 1)
    want_ey = np.array([[theory.orthogonal_case_bias(kk, s, T, rank=r) for r in rr]
                        for kk, T, s in ortho])
    want_psd = np.array([[theory.orthogonal_case_bias(kk, s, T, rank=r, psd=True) for r in rr]
                         for kk, T, s in ortho])
    scale = np.array([(kk + kk / T) * s ** 4 for kk, T, s in ortho])[:, None]  # ||Res||_F^2
    r_dev = np.maximum(np.abs(o_ey - want_ey), np.abs(o_psd - want_psd)) / scale
    rows.append(Verdict(
        CLAIM, "orthogonal case, every rank r=0..d: lora_bias (U V^T and PSD U U^T) = closed forms "
        "(k-r)^+ s^4 + k s^4/T ...; max |diff| / ||Res||^2", 0.0, float(np.max(r_dev)),
        float("nan"), tol_spec, tol_spec.below(r_dev), "check",
        f"d={d}; cases with k >= 2 separate keeping r or r+1 positive eigenvalues"))

    # --- many-task limit
    Tm = Tarr[n_few:]
    want_dev = np.array([theory.rbar_mean_square_deviation(d, k, int(T)) for T in Tm])
    ratio = g["rbar_dev"][:, n_few:] ** 2 / want_dev   # (S, nTm) -> 1 in expectation
    per_seed = ratio.mean(axis=1)
    se = float(np.std(per_seed, ddof=1) / math.sqrt(S)) if S > 1 else float("nan")
    tol_rbar = Tolerance.seeds(se, S)
    rows.append(Verdict(
        CLAIM, f"||Rbar - kI||_F^2 / E||Rbar - kI||_F^2 (theory: k d (d+1) / T), T in "
        f"{tuple(int(t) for t in Tm)}", 1.0, float(ratio.mean()), spread(per_seed), tol_rbar,
        tol_rbar.admits(ratio.mean() - 1), "check", note + "; SE over the per-seed means"))
    rows.append(rbar_deviation_monte_carlo(jax.random.fold_in(key, 11), d=d | 1, k=k,
                                           T=int(Tm[0])))   # odd d: d | 1 = d + 1 would not show
    lip = np.abs(np.sqrt(bias_k) - np.sqrt(g["limit"])[:, None]) - g["rbar_dev"]
    tol_lip = Tolerance.rounding(10 * d, max(1.0, float(np.max(g["res_norm"]))),
                                 what="absolute, times the scale max ||Res||_F")
    rows.append(Verdict(
        CLAIM, "|sqrt E_SR(k;T) - sqrt E_inf| <= ||Rbar - kI||_F (every T, seed); "
        "E_inf = lora_bias(U_new U_new^T - kI, k)", "<= 0", float(np.max(lip)), float("nan"),
        tol_lip, tol_lip.below(lip), "check", note + "; passes when max(lhs - rhs) < tolerance"))
    rows.append(Verdict(
        CLAIM, f"rank-k bias E_SR(k) at T={int(Tarr[-1])} / E_inf (many-task limit)", 1.0,
        float(np.mean(bias_k[:, -1] / g["limit"])), spread(bias_k[:, -1] / g["limit"]),
        "measured (approaches 1 as T grows)", bool(np.all(np.isfinite(bias_k))), "measured",
        note + f"; E_inf mean {np.mean(g['limit']):.3g}, k^2(d-k) = {k * k * (d - k)}"))

    data = dict(setting=setting, seed=seed, d=d, k=k, Ts=Tarr, n_few=n_few, ranks=np.asarray(ranks),
                eig=eig, rank=g["rank"], n_pos=n_pos, n_neg=n_neg, exact=g["exact"],
                pred=g["pred"], pred_psd=g["pred_psd"], gd=g["gd"], rbar_dev=g["rbar_dev"],
                limit=g["limit"], n=cfg["n"], noise_std=NOISE_STD, ortho=np.asarray(ortho),
                o_bias=o_bias, o_pred=o_pred, o_ey=o_ey, o_psd=o_psd)
    return ClaimResult(CLAIM, rows, data, time.perf_counter() - t0)


def plot(result: ClaimResult, out_dir) -> list:
    """``c2_sr_bias.{png,pdf}``: residual spectra, rank vs T, bias vs r, bias vs T, Rbar -> kI,
    orthogonal case."""
    plt = pyplot()
    D = result.data
    d, k, Ts, n_few = D["d"], D["k"], D["Ts"], D["n_few"]
    ranks = D["ranks"]
    cmap = plt.get_cmap("viridis")
    colors = [cmap(i / max(len(Ts) - 1, 1)) for i in range(len(Ts))]
    fig, axes = plt.subplots(2, 3, figsize=(16.5, 8.5))

    ax = axes[0, 0]
    idx = np.arange(1, d + 1)
    for i, T in enumerate(Ts):
        ax.plot(idx, D["eig"][0, i], "o-", ms=3, color=colors[i], label=f"T={T}")
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("eigenvalue index (decreasing)")
    ax.set_ylabel(r"eigenvalue of $M^*_{new} - A_{SR}$")
    ax.set_title("residual spectra (seed 0): k positive, Tk negative")
    ax.legend(fontsize=7, ncol=2)

    ax = axes[0, 1]
    ax.plot(Ts, np.minimum((Ts + 1) * k, d), "k--", lw=1, label=r"theory $\min((T+1)k, d)$")
    ax.plot(Ts, D["rank"].mean(axis=0), "o", color="tab:red", label="numerical rank (mean)")
    ax.plot(Ts, D["n_neg"].mean(axis=0), "v", color="tab:blue", mfc="none",
            label="# negative eigenvalues")
    ax.plot(Ts, D["n_pos"].mean(axis=0), "^", color="tab:green", mfc="none",
            label="# positive eigenvalues")
    ax.set_xscale("log")
    ax.set_xlabel("retraining tasks T")
    ax.set_ylabel("count")
    ax.set_title("rank of the SR residual")
    ax.legend(fontsize=7)

    ax = axes[0, 2]
    # theory curves for every r from the spectrum (Eckart-Young tail sums; PSD: negatives stay)
    eig = D["eig"]
    sv2 = np.sort(eig ** 2, axis=-1)[..., ::-1]
    r_all = np.arange(0, d + 1)
    ey = np.stack([sv2[..., r:].sum(-1) for r in r_all], axis=-1)          # (S, nT, d+1)
    pos = np.where(eig > 0, eig, 0.0) ** 2                                   # decreasing order
    neg = np.sum(np.where(eig < 0, eig, 0.0) ** 2, axis=-1)
    psd = np.stack([neg + pos[..., r:].sum(-1) for r in r_all], axis=-1)
    shown = [i for i in range(len(Ts)) if i < n_few or i == len(Ts) - 1]
    for i in shown:
        ax.plot(r_all, ey[:, i].mean(axis=0), "-", color=colors[i], label=f"T={Ts[i]}")
        ax.plot(ranks, D["exact"][:, i].mean(axis=0), "x", color=colors[i], ms=7, mew=1.5)
        ax.plot(r_all, psd[:, i].mean(axis=0), ":", color=colors[i], lw=1.2)
    ax.plot([], [], "k-", label="Eckart-Young theory")
    ax.plot([], [], "kx", label="measured (exact fine-tuning)")
    ax.plot([], [], "k:", label="PSD adapter $UU^T$ (theory)")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("adapter rank r")
    ax.set_ylabel(r"$E_{SR}(r) = \min_{rank \leq r} \|M^*_{new} - A_{SR} - \Delta\|_F^2$")
    ax.set_title("best rank-r fine-tuning error after SR (mean over seeds)")
    # beside the axes: inside, it covers the curves
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)

    ax = axes[1, 0]
    ik = int(np.where(ranks == k)[0][0])
    band(ax, Ts, D["pred"][:, :, ik], "tab:red", f"theory $E_{{SR}}(k={k})$ (mean, min-max)")
    ax.plot(Ts, D["gd"].mean(axis=0), "s", mfc="none", color="k",
            label=f"GD fine-tuning, n={D['n']} (mean)")
    ax.axhline(np.mean(D["limit"]), color="tab:purple", ls="--",
               label=r"many-task limit $E_\infty$ (mean)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("retraining tasks T")
    ax.set_ylabel(f"rank-{k} fine-tuning error after SR")
    ax.set_title("rank-k bias after SR never vanishes")
    frac = D["pred"][:, :, ik] / np.sum(D["eig"] ** 2, axis=-1)
    ax2 = ax.twinx()
    ax2.plot(Ts, frac.mean(axis=0), "^--", color="tab:green", ms=4)
    ax2.set_ylabel(r"share of $\|M^*_{new} - A_{SR}\|_F^2$ left by rank k", color="tab:green")
    ax2.set_ylim(0, 1)
    ax2.tick_params(axis="y", colors="tab:green")
    ax.plot([], [], "^--", color="tab:green", ms=4, label="share left (right axis)")
    ax.legend(fontsize=7)

    ax = axes[1, 1]
    band(ax, Ts, D["rbar_dev"], "tab:blue", r"$\|\bar R - kI\|_F$ (mean, min-max)")
    ax.plot(Ts, np.sqrt(k * d * (d + 1) / Ts), "k--", label=r"$\sqrt{k d (d+1) / T}$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("retraining tasks T")
    ax.set_ylabel(r"$\|\bar R - kI\|_F$")
    ax.set_title(r"many-task limit $\bar R \to kI$")
    ax.legend(fontsize=8)

    ax = axes[1, 2]
    # every rank: closed forms (lines) and lora_bias of the measured residual (markers)
    rr = np.arange(d + 1)
    ocol = plt.get_cmap("tab10")
    for i, ((kk, T, s), ey, ps) in enumerate(zip(D["ortho"], D["o_ey"], D["o_psd"])):
        kk, T = int(kk), int(T)
        c = ocol(i)
        ey_th = [theory.orthogonal_case_bias(kk, s, T, rank=r) for r in rr]
        ps_th = [theory.orthogonal_case_bias(kk, s, T, rank=r, psd=True) for r in rr]
        ax.plot(rr, ey_th, "-", color=c, lw=1.2, label=f"k={kk}, T={T}, s={s:g}: $UV^T$")
        ax.plot(rr, ps_th, ":", color=c, lw=1.5, label="   PSD $UU^T$")
        ax.plot(rr, ey, "o", color=c, ms=4, mfc="none")
        ax.plot(rr, ps, "x", color=c, ms=5)
        ax.plot([kk], [theory.orthogonal_case_bias(kk, s, T)], "s", color=c, ms=9, mfc="none")
    ax.plot([], [], "ko", mfc="none", ms=4, label="lora_bias of the SR residual")
    ax.plot([], [], "ks", mfc="none", ms=9, label=r"$E_{SR}(k) = k s^4/T$")
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("adapter rank r")
    ax.set_ylabel("best rank-r error (orthogonal truth)")
    ax.set_title("orthogonal worked case: closed forms at every rank")
    ax.legend(fontsize=6.5, loc="lower left")
    for a in axes.ravel():
        a.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"C2  SR is not low-rank adaptable   Gaussian truth d={d}, k={k}, "
                 f"{D['eig'].shape[0]} seeds ({D['setting']})", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, out_dir, "c2_sr_bias", dpi=figure_dpi(result.data["setting"]))


def _core_theory_cases(d: int = 3):
    """Calls of the closed forms of :mod:`linmeta.core.theory` at the edges of their stated domains
    (see :func:`core_theory_domain`)."""
    C = DomainCase
    A = np.eye(d)
    U2 = np.ones((2, d, 1))                  # T = 2 tasks, k = 1 (T, k and d all differ)
    big = 257 + d                            # sizes above CPython's small-int cache
    sq = "square"
    return [
        # first: int identity of equal sizes must not matter (JAX may reuse the int objects of
        # shapes it has seen, so these run before any other call with sizes d + 257, d + 258)
        C(f"sr_residual, d = {big}", lambda: theory.sr_residual(np.ones((1, big, 1)),
                                                              np.ones((big, 1)))),
        C(f"sr_population, d = {big}", lambda: theory.sr_population(np.eye(big),
                                                                  np.ones((1, big, 1)))),
        C(f"lora_bias, d = {big + 1}", lambda: theory.lora_bias(np.eye(big + 1), 1)),
        # sr_population (shape check of the pair A*, U*)
        C("sr_population, A* (d, d), U* (T, d, k)", lambda: theory.sr_population(A, U2)),
        C("sr_population, U* with d + 1 rows", lambda: theory.sr_population(A, np.ones((2, d + 1, 1))),
          ("U_star", f"d={d}")),
        C("sr_population, U* with d - 1 rows", lambda: theory.sr_population(A, np.ones((2, d - 1, 1))),
          ("U_star", f"d={d}")),
        C("sr_population, A* (d, d + 1)", lambda: theory.sr_population(np.ones((d, d + 1)), U2),
          ("U_star", f"d={d}", "A_star")),
        C("sr_population, A* (d, d - 1)", lambda: theory.sr_population(np.ones((d, d - 1)), U2),
          ("U_star", f"d={d}", "A_star")),
        C("sr_population, U* 2-D", lambda: theory.sr_population(A, np.ones((d, 1))), ("U_star",)),
        # sr_residual: U_new (d, k) or (m, d, k)
        C("sr_residual, U_new (d, k)", lambda: theory.sr_residual(U2, np.ones((d, 1)))),
        C("sr_residual, U_new (m, d, k)", lambda: theory.sr_residual(U2, np.ones((4, d, 1)))),
        C("sr_residual, U_new with d + 1 rows", lambda: theory.sr_residual(U2, np.ones((d + 1, 1))),
          ("U_new", f"d={d}")),
        C("sr_residual, U_new with d - 1 rows", lambda: theory.sr_residual(U2, np.ones((d - 1, 1))),
          ("U_new", f"d={d}")),
        C("sr_residual, U_new 1-D", lambda: theory.sr_residual(U2, np.ones((d,))), ("U_new",)),
        C("sr_residual, U_new 4-D", lambda: theory.sr_residual(U2, np.ones((1, 1, d, 1))),
          ("U_new",)),
        # lora_bias: square (..., d, d), 0 <= rank <= d
        C("lora_bias, rank 0", lambda: theory.lora_bias(A, 0)),
        C("lora_bias, batch (2, 3, d+1, d+1), rank d+1",
          lambda: theory.lora_bias(np.ones((2, 3, d + 1, d + 1)), d + 1)),
        C("lora_bias, batch (2, 3, d+1, d+1), rank d+1, PSD",
          lambda: theory.lora_bias(np.ones((2, 3, d + 1, d + 1)), d + 1, psd=True)),
        C("lora_bias, (d, d + 1)", lambda: theory.lora_bias(np.ones((d, d + 1)), 1),
          ("residual", sq)),
        C("lora_bias, (d + 1, d)", lambda: theory.lora_bias(np.ones((d + 1, d)), 1),
          ("residual", sq)),
        C("lora_bias, 1-D", lambda: theory.lora_bias(np.ones(d), 1), ("residual", sq)),
        C("lora_bias, rank -1", lambda: theory.lora_bias(A, -1), ("rank", f"[0, d={d}]")),
        C("lora_bias, rank d + 1", lambda: theory.lora_bias(A, d + 1), ("rank", f"[0, d={d}]")),
        # orthogonal_case_bias: k, T >= 1, s >= 0, rank >= 0
        C("orthogonal_case_bias, k = T = 1, s = 0, rank 0",
          lambda: theory.orthogonal_case_bias(1, 0.0, 1, rank=0)),
        C("orthogonal_case_bias, s = 0.5", lambda: theory.orthogonal_case_bias(2, 0.5, 3)),
        C("orthogonal_case_bias, k = 0", lambda: theory.orthogonal_case_bias(0, 1.0, 2),
          ("k", "[1, inf]")),
        C("orthogonal_case_bias, T = 0", lambda: theory.orthogonal_case_bias(1, 1.0, 0),
          ("T", "[1, inf]")),
        C("orthogonal_case_bias, s < 0", lambda: theory.orthogonal_case_bias(1, -0.5, 2),
          ("s", "[0.0, inf]")),
        C("orthogonal_case_bias, rank -1", lambda: theory.orthogonal_case_bias(1, 1.0, 2, rank=-1),
          ("rank", "[0, inf]")),
        # the other closed forms' integer and scalar arguments
        C("rbar_mean_square_deviation, d = k = T = 1",
          lambda: theory.rbar_mean_square_deviation(1, 1, 1)),
        C("rbar_mean_square_deviation, d = 0", lambda: theory.rbar_mean_square_deviation(0, 1, 1),
          ("d", "[1, inf]")),
        C("rbar_mean_square_deviation, k = 0", lambda: theory.rbar_mean_square_deviation(2, 0, 1),
          ("k", "[1, inf]")),
        C("rbar_mean_square_deviation, T = 0", lambda: theory.rbar_mean_square_deviation(2, 1, 0),
          ("T", "[1, inf]")),
        C("generic_sr_residual_rank, k = d", lambda: theory.generic_sr_residual_rank(d, d, 1)),
        C("generic_sr_residual_rank, k = d + 1",
          lambda: theory.generic_sr_residual_rank(d, d + 1, 1), ("k", f"d={d}")),
        C("generic_sr_residual_rank, d = k = T = 1", lambda: theory.generic_sr_residual_rank(1, 1, 1)),
        C("generic_sr_residual_rank, d = 0", lambda: theory.generic_sr_residual_rank(0, 1, 1),
          ("d", "[1, inf]")),
        C("generic_sr_residual_rank, k = 0", lambda: theory.generic_sr_residual_rank(d, 0, 1),
          ("k", f"[1, d={d}]")),
        C("generic_sr_residual_rank, T = 0", lambda: theory.generic_sr_residual_rank(d, 1, 0),
          ("T", "[1, inf]")),
        C("t2_adapter_rank, k = 1", lambda: theory.t2_adapter_rank(1)),
        C("t2_adapter_rank, k = 0", lambda: theory.t2_adapter_rank(0), ("k", "[1, inf]")),
        C("predicted_finetune_error, d = rank = 1, n = 1e-9",
          lambda: theory.predicted_finetune_error(1, 1, 1e-9, 0.1)),
        C("predicted_finetune_error, d = 0",
          lambda: theory.predicted_finetune_error(0, 1, 10, 0.1), ("d", "[1, inf]")),
        C("predicted_finetune_error, rank 0",
          lambda: theory.predicted_finetune_error(d, 0, 10, 0.1), ("rank", f"[1, d={d}]")),
        C("predicted_finetune_error, noise < 0",
          lambda: theory.predicted_finetune_error(d, 1, 10, -0.1), ("noise_std", "[0.0, inf]")),
        C("sr_sample_error_constant, U* 2-D",
          lambda: theory.sr_sample_error_constant(np.ones((d, 1)), 0.1), ("U_star",)),
        C("alternating_jacobian, lr_adapter 0",
          lambda: theory.alternating_jacobian(A, U2, lr_adapter=0.0),
          ("lr_adapter", "(0.0, inf]")),
        C("alternating_jacobian, U* with d + 1 rows",
          lambda: theory.alternating_jacobian(A, np.ones((2, d + 1, 1))), ("U_star", f"d={d}")),
        C("predicted_finetune_error, rank d, noise 0",
          lambda: theory.predicted_finetune_error(d, d, 1.0, 0.0)),
        C("predicted_finetune_error, rank d + 1",
          lambda: theory.predicted_finetune_error(d, d + 1, 10, 0.1), ("rank", f"d={d}")),
        C("predicted_finetune_error, n = 0",
          lambda: theory.predicted_finetune_error(d, 1, 0, 0.1), ("n", "(0.0, inf]")),
        C("sr_sample_error_constant, noise < 0",
          lambda: theory.sr_sample_error_constant(U2, -0.1), ("noise_std", "[0.0, inf]")),
        C("alternating_jacobian, inner_steps -1",
          lambda: theory.alternating_jacobian(A, U2, inner_steps=-1), ("inner_steps", "[0, inf]")),
        C("alternating_jacobian, lr_base 0",
          lambda: theory.alternating_jacobian(A, U2, lr_base=0.0), ("lr_base", "(0.0, inf]")),
    ]


def core_theory_domain() -> Verdict:
    """Stated domains of :mod:`linmeta.core.theory`'s closed forms: shapes (square residuals and
    batches of them, the pair ``A*`` (d, d), ``U*`` (T, d, k), ``U_new`` (d, k) or (m, d, k)), the
    integer bounds and the messages naming them; sizes above 256 so that identity of Python ints
    is not equality."""
    return domain_row(CLAIM, "core.theory (sr_population, sr_residual, lora_bias, "
                      "orthogonal_case_bias, other closed forms)", _core_theory_cases())


def _rotated(eigs, key):
    """A symmetric matrix with the given eigenvalues in a random orthonormal basis (NumPy)."""
    rng = np.random.default_rng(key)
    Q, _ = np.linalg.qr(rng.standard_normal((len(eigs), len(eigs))))
    return (Q * np.asarray(eigs, float)) @ Q.T


def small_spectrum_biases() -> Verdict:
    """``lora_bias`` (U V^T and PSD U U^T) on a 4-D batch (1, 2, 4, 4) of symmetric matrices whose
    eigenvalues lie in (-1, 1) (positive ones kept by the PSD fit that are below 1, one nearly 0)
    against the independent BFGS fits (:func:`asym_bias_bfgs`, :func:`psd_bias_bfgs`), ranks 1
    and 2."""
    mats = np.stack([_rotated((0.6, 0.3, -0.2, -0.5), 1),
                     _rotated((0.9, 0.05, -0.02, -0.4), 2)])[None]   # (1, 2, 4, 4)
    got = in_one_program([(functools.partial(theory.lora_bias, rank=r, psd=p), (mats,))
                          for r in (1, 2) for p in (False, True)])
    want = []
    for r in (1, 2):
        want.append([asym_bias_bfgs(m, r, seed=i) for i, m in enumerate(mats[0])])
        want.append([psd_bias_bfgs(m, r, seed=i) for i, m in enumerate(mats[0])])
    got = np.concatenate([g.ravel() for g in got])
    want = np.concatenate([np.asarray(w) for w in want])
    scale = float(np.max(np.sum(mats ** 2, axis=(-2, -1))))
    dev = np.abs(got - want) / scale
    tol = Tolerance.stated(1e-6, "accuracy of the independent BFGS solver (gtol 1e-10, 2 "
                           "starts); a wrong closed form is off by a squared eigenvalue >= 4e-4")
    return Verdict(
        CLAIM, "lora_bias (U V^T, PSD) on a (1, 2, 4, 4) batch with eigenvalues in (-1, 1) vs "
        "BFGS, ranks 1, 2 (max |diff|/||Res||^2)", 0.0, float(np.max(dev)), float("nan"), tol,
        tol.below(dev), "check", f"{got.size} (matrix, rank, adapter) cases")


def numerical_rank_check() -> Verdict:
    """:func:`linmeta.core.metrics.numerical_rank` on matrices of known singular values (random
    orthonormal factors): ``diag(2, 1, 2e-3, 0, 0)`` with the default ``rtol = max(shape) eps``
    (rank 3), ``atol = 0.01`` (2), ``rtol = 0.6`` (1: relative to sigma_max = 2), on a stack
    (2, 3, 5, 5) (3 each); the zero matrix (0); a 2 x 50 matrix with singular values (1, 10 eps)
    and its transpose (1: the default rtol is 50 eps, from the larger side of the matrix); a stack
    of 64 matrices 5 x 5 with singular values (1, 20 eps) (2 each: the stack's size is not a
    side). Exact counts."""
    rng = np.random.default_rng(4)
    Q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    P, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    M = (Q * np.array([2.0, 1.0, 2e-3, 0.0, 0.0])) @ P.T
    u, _ = np.linalg.qr(rng.standard_normal((2, 2)))
    v, _ = np.linalg.qr(rng.standard_normal((50, 2)))
    dt = np.dtype(jnp.asarray(0.0).dtype)           # the working dtype and its eps
    W = ((u * np.array([1.0, 10 * np.finfo(dt).eps])) @ v.T).astype(dt)
    # a stack of 64 5 x 5 matrices with singular values (1, 20 eps): the default rtol is 5 eps
    V = np.broadcast_to((Q[:, :2] * np.array([1.0, 20 * np.finfo(dt).eps])) @ P[:, :2].T,
                        (64, 5, 5)).astype(dt)
    nr = metrics.numerical_rank
    got = in_one_program([(nr, (M,)), (lambda x: nr(x, atol=0.01), (M,)),
                          (lambda x: nr(x, rtol=0.6), (M,)),
                          (nr, (np.broadcast_to(M, (2, 3, 5, 5)),)), (nr, (np.zeros((4, 4)),)),
                          (nr, (W,)), (nr, (W.T,)), (nr, (V,))])
    want = [3, 2, 1, np.full((2, 3), 3), 0, 1, 1, np.full(64, 2)]
    cases = list(zip(got, want))
    ok = [np.shape(g) == np.shape(w) and bool(np.all(np.asarray(g) == w)) for g, w in cases]
    return Verdict(
        CLAIM, "numerical_rank on matrices of known singular values (default rtol, atol, rtol, "
        "stack (2, 3, 5, 5), zero matrix, 2 x 50 and 50 x 2 with sigma_2 = 10 eps, 64 x 5 x 5 with "
        "sigma_2 = 20 eps) (cases matching)",
        len(cases), int(sum(ok)), float("nan"), Tolerance.exact(), all(ok), "check",
        f"ranks {[np.asarray(g).ravel()[:1].tolist() for g, _ in cases]}")


def generic_rank_check(d: int = 8, k: int = 2, Ts=(1, 2, 5)) -> Verdict:
    """:func:`linmeta.core.theory.generic_sr_residual_rank` at k = 2 (the quick setting's truths
    have k = 1, where ``(T + 1) k`` cannot tell a product from a quotient or a power) against the
    numerical rank (NumPy ``matrix_rank``) of ``U_new U_new^T - Rbar`` for Gaussian factors, with
    ``(T + 1) k`` below, at and above d. Exact counts."""
    rng = np.random.default_rng(8)
    got, want = [], []
    for T in Ts:
        U = rng.standard_normal((T, d, k))
        Un = rng.standard_normal((d, k))
        res = Un @ Un.T - np.mean(U @ U.transpose(0, 2, 1), axis=0)
        got.append(int(np.linalg.matrix_rank(res)))
        want.append(theory.generic_sr_residual_rank(d, k, T))
    return Verdict(
        CLAIM, f"generic_sr_residual_rank(d={d}, k={k}, T) = numerical rank of U_new U_new^T - "
        f"Rbar, T in {tuple(Ts)} (cases matching)", len(Ts), int(np.sum(np.array(got) ==
                                                                       np.array(want))),
        float("nan"), Tolerance.exact("matrix_rank, NumPy default rtol"), got == want, "check",
        f"numerical ranks {got}")
