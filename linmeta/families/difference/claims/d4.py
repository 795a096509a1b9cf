"""Claim D4: coefficient MAML against the joint fit, as the inner loop lengthens
(docs/difference.md#d4).

TARP's training in the linear model: outer parameters ``(A, U, V)``, inner loop K gradient steps on
each task's coefficients (:func:`~linmeta.families.difference.methods.maml_fit`, K traced so that
one compiled program serves every K). What theory says: K steps give
``s_K = (I - (I - alpha G)^K) s_opt``; a zero-loss meta-fit is a zero-loss joint fit, so for
T >= 3 it has ``L = L*`` (D1); such meta-fits exist at every K >= 1 when the true directions are
Frobenius-orthogonal (``G*`` diagonal, e.g. orthonormal ``U*, V*``: the outer loop scales the
directions to ``alpha G = I``), and only in the limit K -> infinity otherwise.

Rows: check: on orthonormal truths, the second-order meta-fit reaches zero loss with
``sin angle(L, L*)`` below the recovery threshold at every K (1e-6; 1e-2 in float32); measured:
on Gaussian truths, ``sin angle(L, L*)`` and the meta-objective against K (second order), and, in
the full setting, first-order MAML (Adam on the gradient at the adapted coefficients). On the
public :func:`~linmeta.families.difference.methods.coefficient_maml` (sampled statistics of
random tasks, d = 3): check: called with its defaults it equals the call with the documented
``inner_steps=1, alpha=0.5`` spelled out (exact); check: the objective it reports against the
mean excess loss recomputed with NumPy at the model it returns (rounding).
"""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from linmeta.engine.claims import ClaimResult, Verdict
from linmeta.engine.claim_support import (figure_dpi, float_tol, key_for, pyplot, save_figure,
                                     settings_value, working_dtype)
from linmeta.engine.verdict import Tolerance
from linmeta.core.data import TaskStats, matrix_tasks
from linmeta.families.difference import methods
from linmeta.families.difference.truth import (difference_space, sample_difference_truth,
                                               task_matrices)

CLAIM = "D4"
ALPHA = 0.5

SETTINGS = {
    "tiny": dict(d=3, r=2, T=3, Ks=(1, 4), truths=1, starts=2, max_iter=60, first_order=False,
                 steps=500),
    "quick": dict(d=4, r=2, T=4, Ks=(1, 2, 4, 8), truths=2, starts=3, max_iter=80,
                  first_order=False, steps=2000),
    "full": dict(d=5, r=2, T=4, Ks=(1, 2, 4, 8, 16, 32), truths=4, starts=8, max_iter=150,
                 first_order=True, steps=4000),
}


@functools.partial(jax.jit, static_argnames=("r", "K_max", "first_order", "starts", "max_iter",
                                             "steps"))
def _grid(stats, keys, Ks, B_star, *, r, K_max, first_order, starts, max_iter, steps):
    """(truths, Ks) meta-fits: sine of the largest angle to L* and the meta-objective relative
    to the tasks' mean squared norm."""
    def one(st, key, K, Bs):
        f = methods.maml_fit(st, key, jnp.asarray(ALPHA, st.Sxx.dtype), K,
                             jnp.asarray(0.01, st.Sxx.dtype), rank=r, K_max=K_max,
                             first_order=first_order, n_starts=starts, max_iter=max_iter,
                             steps=steps)
        size = jnp.mean(jnp.sum(st.Syx * st.Syx, axis=(-2, -1)))
        return methods.subspace_gap(f.basis, Bs), f.objective / size

    over_K = jax.vmap(one, in_axes=(None, None, 0, None))
    return jax.vmap(over_K, in_axes=(0, 0, None, 0))(stats, keys, Ks, B_star)


def run(setting: str = "quick", seed: int = 0) -> ClaimResult:
    """Measure D4 at ``setting`` (module docstring)."""
    cfg = settings_value(SETTINGS, setting)
    t0 = time.perf_counter()
    d, r, T, Ks, S = cfg["d"], cfg["r"], cfg["T"], tuple(cfg["Ks"]), cfg["truths"]
    root = key_for(seed, CLAIM)
    recovery = float_tol(1e-6, 1e-2)
    out = {}
    orders = (False, True) if cfg["first_order"] else (False,)
    for kind in ("orthonormal", "gaussian"):
        truths = [sample_difference_truth(jax.random.fold_in(root, 10 * i + (kind == "gaussian")),
                                          d, r, T, n_unseen=0, directions=kind,
                                          dtype=working_dtype()) for i in range(S)]
        stats = jax.tree.map(lambda *x: jnp.stack(x),
                             *[matrix_tasks(task_matrices(t)) for t in truths])
        Bs = jnp.stack([difference_space(t.U_star, t.V_star) for t in truths])
        keys = jnp.stack([jax.random.fold_in(root, 100 + i) for i in range(S)])
        for fo in orders:
            gap, obj = _grid(stats, keys, jnp.asarray(Ks), Bs, r=r, K_max=max(Ks),
                             first_order=fo, starts=cfg["starts"], max_iter=cfg["max_iter"],
                             steps=cfg["steps"])
            out[kind, fo] = (np.asarray(gap), np.asarray(obj))
    note = (f"d={d}, r={r}, T={T}, population, alpha={ALPHA}, K in {Ks}, {S} truths per kind, "
            f"{cfg['starts']} starts, {working_dtype()}")
    g_o, o_o = out["orthonormal", False]
    rows = [Verdict(CLAIM, "orthonormal U*, V*, second-order coefficient MAML: max over K of sin "
                    "angle(L, L*)", 0.0, float(g_o.max()), float(np.ptp(g_o)),
                    Tolerance.stated(recovery, "recovery threshold (float64 1e-6, float32 1e-2)"),
                    bool(g_o.max() < recovery), "check",
                    note + f"; max relative meta-objective {o_o.max():.2g}")]
    for (kind, fo), (g, o) in out.items():
        if kind == "orthonormal" and not fo:
            continue
        med = np.median(g, axis=0)
        rows.append(Verdict(CLAIM, f"{kind} U*, V*, {'first' if fo else 'second'}-order "
                            f"coefficient MAML: median sin angle(L, L*) at K={Ks[-1]}",
                            "measured", float(med[-1]), float(np.ptp(g[:, -1])),
                            "no prediction at finite K (0 as K -> infinity)",
                            bool(np.all(np.isfinite(g))), "measured",
                            note + "; median by K: " + ", ".join(
                                f"K={k}: {m:.2g}" for k, m in zip(Ks, med))
                            + "; median relative meta-objective by K: " + ", ".join(
                                f"{m:.2g}" for m in np.median(o, axis=0))))
    rows += maml_defaults_and_objective(np.random.default_rng(np.random.SeedSequence([seed, 0xD4])))
    data = dict(setting=setting, d=d, r=r, T=T, Ks=np.asarray(Ks, float),
                runs={f"{k}|{'FO' if fo else 'SO'}": dict(gap=v[0], obj=v[1])
                      for (k, fo), v in out.items()}, recovery=recovery)
    return ClaimResult(CLAIM, rows, data, time.perf_counter() - t0)


def maml_defaults_and_objective(rng, d: int = 3, r: int = 1, T: int = 3, n: int = 12) -> list:
    """The public :func:`~linmeta.families.difference.methods.coefficient_maml` on sampled
    statistics of T random tasks (no difference model fits them: the meta-objective is far from
    0), 2 starts, 10 Levenberg-Marquardt iterations. Two rows: called with its defaults, it equals
    the call that spells out the documented ``inner_steps=1, alpha=0.5`` (the same compiled
    program: bitwise, exact); and the ``objective`` it reports against the mean excess loss
    ``(1/T) sum_t tr((M_t - O_t) S_xx,t (M_t - O_t)^T) / 2`` recomputed with NumPy at the model
    it returns (``M_t = base + sum_i coefficients_ti basis_i``, ``O_t = S_yx,t S_xx,t^{-1}``)."""
    X = rng.standard_normal((T, n, d))
    Y = X @ np.swapaxes(rng.standard_normal((T, d, d)), -1, -2) + 0.5 * rng.standard_normal((T, n, d))
    dt = working_dtype()
    st = TaskStats(jnp.asarray(np.swapaxes(X, -1, -2) @ X / n, dt),
                   jnp.asarray(np.swapaxes(Y, -1, -2) @ X / n, dt),
                   jnp.asarray(np.sum(Y * Y, axis=(-2, -1)) / n, dt), jnp.full((T,), n * 1.0, dt),
                   jnp.full((T, d, d), jnp.nan, dt), jnp.full((T,), 0.5, dt))
    key = jax.random.PRNGKey(int(rng.integers(2 ** 31)))
    kw = dict(n_starts=2, max_iter=10)
    default = methods.coefficient_maml(st, r, key=key, **kw)
    spelled = methods.coefficient_maml(st, r, key=key, inner_steps=1, alpha=0.5, **kw)
    diff = max(float(np.max(np.abs(np.asarray(a, float) - np.asarray(b, float))))
               for a, b in zip(default[:4], spelled[:4]))
    S, Syx = np.asarray(st.Sxx, float), np.asarray(st.Syx, float)
    O = np.swapaxes(np.linalg.solve(S, np.swapaxes(Syx, -1, -2)), -1, -2)
    M = np.asarray(spelled.base, float) + np.einsum("ti,iab->tab",
                                                    np.asarray(spelled.coefficients, float),
                                                    np.asarray(spelled.basis, float))
    E = M - O
    ref = float(np.mean(0.5 * np.einsum("tab,tbc,tac->t", E, S, E)))
    got = float(spelled.objective)
    rel = abs(got - ref) / ref if ref > 0 else float("inf")
    rel = rel if np.isfinite(rel) else float("inf")
    size = float(np.mean(0.5 * np.einsum("tab,tbc,tac->t", O, S, O)))
    tol = Tolerance.rounding(100 * d * d, max(1.0, size / ref),
                             what="sums of squares of d x d residuals",
                             why="cond: the tasks' size over the objective (the residuals are "
                                 "differences of matrices of the tasks' size)")
    note = f"d={d}, r={r}, T={T}, n={n} samples per task, 2 starts, 10 iterations, {dt}"
    return [Verdict(CLAIM, "coefficient_maml with its defaults vs with inner_steps=1, alpha=0.5 "
                    "spelled out: max |difference| of base, basis, coefficients, objective", 0.0,
                    diff, 0.0, Tolerance.exact("the same program on the same inputs"),
                    diff == 0.0, "check", note),
            Verdict(CLAIM, "coefficient_maml: reported objective vs the mean excess loss "
                    "recomputed (NumPy) at the returned base + coefficients x basis: rel. "
                    "difference", 0.0, rel, 0.0, tol, tol.below(rel), "check",
                    note + f"; objective {ref:.3g}")]


def plot(result: ClaimResult, out_dir) -> list:
    """``difference_d4_maml.{png,pdf}``: distance of coefficient MAML's space to L* against K."""
    plt = pyplot()
    D = result.data
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colors = {"orthonormal|SO": "tab:blue", "gaussian|SO": "tab:orange",
              "orthonormal|FO": "tab:green", "gaussian|FO": "tab:red"}
    for name, v in D["runs"].items():
        g = np.maximum(np.asarray(v["gap"]), 1e-17)
        for i, row in enumerate(g):
            ax.semilogy(D["Ks"], row, "o-", color=colors[name], ms=3, lw=0.8, alpha=0.8,
                        label=name.replace("|", ", ") if i == 0 else None)
    ax.axhline(D["recovery"], color="k", ls="--", lw=1, label="recovery threshold")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("inner steps K")
    ax.set_ylabel("sin angle(L, L*)")
    ax.set_title(f"D4  coefficient MAML vs K, d={D['d']}, r={D['r']}, T={D['T']} "
                 f"({D['setting']})", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out_dir, "difference_d4_maml", dpi=figure_dpi(D["setting"]))
