"""Relation M3: the outer updates are the ones their formulas say (docs/bilevel.md#m3).

1. **Second-order MAML.** The library's outer gradient
   (:func:`linmeta.families.bilevel.methods.outer_gradients`: the query gradient at the adapted point plus
   the Jacobian term, one reverse pass through the inner ``lax.scan``) equals ``jax.grad`` of the same
   objective written as a plain Python loop over tasks and inner steps (no scan, no library code:
   ``G = M S_xx - S_yx``, ``U <- U - alpha G V``, ``V <- V - alpha G^T U``), and a central finite
   difference (steps h and h/2, Richardson-extrapolated) of the library's unrolled objective
   :func:`linmeta.families.bilevel.methods.bilevel_objective` along random directions, for the base and for
   the adapter start, on random problems with finite support and query sets. 2. **Hand-built case** (T
   = 2, K = 1, LoRA start ``U = u``, ``V = 0``, population; the library runs it in the same batch
   as the random problems): one inner step gives ``V_1 = alpha R_t^T u`` with ``R_t = M*_t - A``,
   so ``M_1 - M*_t = (I - alpha P)(A - M*_t)`` with ``P = u u^T``. Hence

       MAML:        g_A = (1/T) sum_t (I - alpha P)^2 (A - M*_t)
       first order: g_A = (1/T) sum_t (I - alpha P) (A - M*_t)          (one factor dropped)
       Reptile:     g_A = -(1/T) sum_t alpha P (M*_t - A)                (the displacement)

   and for the start, first order ``(g_U, g_V) = (1/T) sum_t (G_1 V_1, G_1^T u)`` with
   ``G_1 = (I - alpha P)(A - M*_t)``, Reptile ``(0, -(1/T) sum_t V_1)``.
3. **Dispatch by name.** ``outer_gradients`` with the method given as a name (``"maml"``,
   ``"fomaml"``, ``"reptile"``: what :func:`linmeta.families.bilevel.methods.maml` passes; the rows
   above use one-hot weights): ``"maml"`` against ``jax.grad`` of the plain loop on the random
   problems, each name against its hand-built formula.
4. **The inner loop with its defaults.** :func:`linmeta.families.bilevel.methods.adapt` called
   without ``train_v`` (default: V trained too) against the plain loop's adapted factors
   ``(U_K, V_K)`` of every task.
5. **The public entry point.** :func:`linmeta.families.bilevel.methods.maml` on raw samples with its
   defaults (support = the first N // 2 samples, default method ``"maml"``, ``learn_start=False``)
   and ``adapter="full"`` (default start W = 0), ``inner_lr="auto"``, against the same run written
   in NumPy from the definitions (support/query split, ``alpha = 0.5 / max_t ||B_t||_2`` by
   ``lstsq`` and the spectral norm; the plain inner loop is linear in A, ``M_K = A P_t + c_t`` with
   ``P_t = (I - alpha S_xx,t)^K``, so MAML's gradient is ``mean_t G^Q_t P_t``; losses as sample
   means): the base, the recorded objective at every outer step, the adapted W_K, and the start
   (must stay 0). Tolerance rounding, ``100 outer_steps (K + 1) eps cond(S_xx)``.
6. **Stated domain** of :func:`linmeta.families.bilevel.methods.split_support_query` (raw samples,
   N >= 2, ``1 <= support <= N - 1``; both edges inside, just outside refused naming the
   argument).

Tolerances (float64; float32 in brackets): 1e-12 (1e-5) relative for the plain-loop gradient,
the hand-built formulas, the by-name gradients and the inner loop (the same arithmetic in another
order); 1e-6 (1e-2) for the central difference with steps h = 1e-4 x scale and h/2 combined by
Richardson extrapolation (truncation ~h^4, rounding ~eps/h).
"""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from linmeta.core.data import Samples, TaskStats, task_statistics
from linmeta.families.bilevel.methods import (METHODS, BilevelHyper, BilevelState, Factors, adapt,
                                              bilevel_objective, maml, outer_gradients,
                                              split_support_query)

from linmeta.engine.claims import ClaimResult, Verdict
from ._grid import (numpy_population, numpy_split, numpy_truths, rel_diff, rng_for, task_matrices,
                    to_jax)
from linmeta.engine.claim_support import (DomainCase, domain_row, figure_dpi, float_tol, pyplot,
                                          save_figure, settings_value, spread)
from linmeta.engine.verdict import Tolerance

CLAIM = "M3"
HAND_ALPHA = 0.1
SETTINGS = {
    "tiny": dict(d=3, k=1, T=2, r=1, K=3, N=10, seeds=2, directions=2, alpha=0.05),
    "quick": dict(d=4, k=1, T=2, r=2, K=2, N=12, seeds=3, directions=2, alpha=0.05),
    "full": dict(d=6, k=2, T=2, r=2, K=20, N=40, seeds=8, directions=8, alpha=0.015),
}


def plain_loop_adapt(A, U0, V0, Sxx_s, Syx_s, alpha, K: int):
    """The inner loop written out: a Python loop over tasks and K inner steps (asymmetric adapter,
    both factors trained), ``G = (A + U V^T) S_xx - S_yx``, ``U <- U - alpha G V``,
    ``V <- V - alpha G^T U``. Returns ``[(U_K, V_K)]`` per task."""
    out = []
    for t in range(Sxx_s.shape[0]):
        U, V = U0, V0
        for _ in range(K):
            G = (A + U @ V.T) @ Sxx_s[t] - Syx_s[t]
            U, V = U - alpha * G @ V, V - alpha * G.T @ U
        out.append((U, V))
    return out


def plain_loop_objective(A, U0, V0, Sxx_s, Syx_s, Sxx_q, Syx_q, alpha, K: int):
    """``F_K`` written out: :func:`plain_loop_adapt`, then the query loss
    ``1/2 tr(M S_xx M^T) - tr(M^T S_yx)`` (constant dropped) averaged over tasks."""
    total = 0.0
    for t, (U, V) in enumerate(plain_loop_adapt(A, U0, V0, Sxx_s, Syx_s, alpha, K)):
        M = A + U @ V.T
        total = total + 0.5 * jnp.trace(M @ Sxx_q[t] @ M.T) - jnp.sum(M * Syx_q[t])
    return total / len(Sxx_s)


def hand_built_problem(d: int):
    """The hand-built K = 1 case: ``T = 2`` tasks in the top-left 3 x 3 block of a d x d problem
    (zeros elsewhere, which the updates keep at zero), LoRA start ``u = (1, -2, 0.5, 0, ...)``,
    ``V = 0``. Returns ``(A, M_star (2, d, d), u (d, 1))`` as NumPy arrays."""
    A = np.zeros((d, d))
    A[:3, :3] = [[1.0, 0.5, 0.0], [0.5, -1.0, 0.25], [0.0, 0.25, 2.0]]
    M = np.zeros((2, d, d))
    M[0, :3, :3] = [[2.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    M[1, :3, :3] = [[0.0, 1.0, 0.0], [1.0, 3.0, -1.0], [0.0, -1.0, 1.0]]
    u = np.zeros((d, 1))
    u[:3, 0] = [1.0, -2.0, 0.5]
    return A, M, u


def hand_built_formulas(A, M, u, alpha=HAND_ALPHA):
    """The closed forms of the module docstring (NumPy): ``{method: (g_A, g_U, g_V)}``
    (``"maml"``: ``g_A`` only)."""
    d = A.shape[0]
    P = u @ u.T
    Im = np.eye(d) - alpha * P
    D = A[None] - M                                   # A - M*_t
    V1 = alpha * np.swapaxes(-D, -1, -2) @ u          # alpha R_t^T u
    G1 = Im[None] @ D                                 # (I - alpha P)(A - M*_t)
    return {
        "maml": (np.mean(Im[None] @ Im[None] @ D, axis=0),),
        "fomaml": (np.mean(G1, axis=0), np.mean(G1 @ V1, axis=0),
                   np.mean(np.swapaxes(G1, -1, -2) @ u, axis=0)),
        "reptile": (-np.mean(alpha * P[None] @ (-D), axis=0), np.zeros((d, 1)),
                    -np.mean(V1, axis=0)),
    }


def population_stats(M):
    """Population :class:`~linmeta.TaskStats` of task matrices ``M`` (T, d, d), noise 0."""
    T, d = M.shape[0], M.shape[-1]
    dt = M.dtype
    return TaskStats(jnp.broadcast_to(jnp.eye(d, dtype=dt), M.shape), M,
                             jnp.sum(M * M, axis=(-2, -1)), jnp.full((T,), jnp.inf, dt), M,
                             jnp.zeros((T,), dt))


@functools.partial(jax.jit, static_argnames=("K",))
def _measure(sup, qry, A0, U0, V0, Ks, alphas, DA, DU, DV, *, K):
    """A batch of problems (statistics, base, start, K, alpha; the last one the hand-built case):
    the library's outer gradients for the three methods (chosen by one-hot weights, and by name),
    ``jax.grad`` of the plain loop, central differences of the unrolled objective along the
    directions (DA, DU, DV), and the library's inner loop with its defaults beside the plain
    loop's."""
    dt = A0.dtype
    onehot = jnp.eye(3, dtype=dt)

    def one(sp, qr, A, U, V, Kp, alpha, DA, DU, DV):
        h = BilevelHyper(alpha, jnp.asarray(1.0, dt), jnp.asarray(1.0, dt), Kp,
                         jnp.asarray(1.0, dt))
        state = BilevelState(A, Factors(U, V))
        lib = jax.vmap(lambda w: outer_gradients(state, sp, qr, h, method=w,
                                                 adapter="asymmetric", length=K))(onehot)
        named = [outer_gradients(state, sp, qr, h, method=m, adapter="asymmetric", length=K)
                 for m in METHODS]
        named = jax.tree.map(lambda *x: jnp.stack(x), *named)
        adapted = adapt(A, Factors(U, V), sp, alpha, Kp, adapter="asymmetric", length=K)
        pl = plain_loop_adapt(A, U, V, sp.Sxx, sp.Syx, alpha, K)
        plain_theta = (jnp.stack([u for u, _ in pl]), jnp.stack([v for _, v in pl]))

        def F(A, U, V):
            return bilevel_objective(A, Factors(U, V), sp, qr, h, adapter="asymmetric", length=K)

        def P(A, U, V):
            return plain_loop_objective(A, U, V, sp.Sxx, sp.Syx, qr.Sxx, qr.Syx, alpha, K)

        gp = jax.grad(P, argnums=(0, 1, 2))(A, U, V)
        hs = 1e-4 * jnp.maximum(jnp.max(jnp.abs(A)), 1.0)
        g = jax.tree.map(lambda x: x[0], lib)  # maml
        steps = jnp.asarray([1.0, -1.0, 0.5, -0.5], dt) * hs
        f = jax.vmap(lambda s_: jax.vmap(lambda a, b, c: F(A + s_ * a, U + s_ * b,
                                                           V + s_ * c))(DA, DU, DV))(steps)
        d_h = (f[0] - f[1]) / (2 * hs)            # central differences with h and h/2
        d_h2 = (f[2] - f[3]) / hs
        num = (4 * d_h2 - d_h) / 3                # Richardson: the h^2 term cancels
        ana = jax.vmap(lambda a, b, c: jnp.sum(g.base * a) + jnp.sum(g.start.U * b)
                       + jnp.sum(g.start.V * c))(DA, DU, DV)
        return ((lib.base, lib.start.U, lib.start.V), gp, num, ana,
                (named.base, named.start.U, named.start.V), (adapted.U, adapted.V), plain_theta)

    return jax.vmap(one)(sup, qry, A0, U0, V0, Ks, alphas, DA, DU, DV)


def run(setting: str = "quick", seed: int = 0) -> ClaimResult:
    """Measure M3 at ``setting`` (module docstring)."""
    cfg = settings_value(SETTINGS, setting)
    t0 = time.perf_counter()
    d, k, T, r, K, N, S = (cfg[x] for x in ("d", "k", "T", "r", "K", "N", "seeds"))
    rng = rng_for(seed, CLAIM)
    A, U, _ = numpy_truths(rng, S, d, k, T)
    sup, qry = numpy_split(rng, task_matrices(A, U), N, 0.1)
    hA, hM, hu = hand_built_problem(d)
    hpop = numpy_population(hM)
    cat = lambda a, b: np.concatenate([a, b[None]])  # noqa: E731
    sup = tuple(cat(a, b) for a, b in zip(sup, hpop))
    qry = tuple(cat(a, b) for a, b in zip(qry, hpop))
    A0 = cat(0.5 * rng.standard_normal((S, d, d)), hA)
    hU = np.zeros((d, r))
    hU[:, :1] = hu
    U0 = cat(0.3 * rng.standard_normal((S, d, r)), hU)
    V0 = cat(0.3 * rng.standard_normal((S, d, r)), np.zeros((d, r)))
    n_dir = cfg["directions"]
    dirs = [rng.standard_normal((S + 1, n_dir, d, c)) for c in (d, r, r)]
    lib, gp, num, ana, named, adapted, plain_theta = _measure(
        to_jax(sup), to_jax(qry), *to_jax((A0, U0, V0)), jnp.asarray([K] * S + [1], jnp.int32),
        *to_jax((np.asarray([cfg["alpha"]] * S + [HAND_ALPHA]), *dirs)), K=K)
    lib = [np.asarray(x) for x in lib]       # (S + 1, 3 methods, ...)
    gp = [np.asarray(x) for x in gp]         # (S + 1, ...)
    tol, tol_fd = float_tol(1e-12, 1e-5), float_tol(1e-6, 1e-2)
    note = (f"d={d}, k={k}, T={T}, inner rank {r}, K={K}, alpha={cfg['alpha']}, finite "
            f"support/query ({N // 2}+{N - N // 2} samples), {S} seeds, "
            f"{cfg['directions']} directions each")
    plain = np.array([max(rel_diff(lib[i][s, 0], gp[i][s]) for i in range(3)) for s in range(S)])
    num, ana = np.asarray(num)[:S], np.asarray(ana)[:S]
    fd = np.abs(num - ana) / np.maximum(np.abs(ana), 1e-300)
    rows = [
        Verdict(CLAIM, "MAML outer gradient (base and start) vs jax.grad of the same loop as "
                "plain Python: max rel. difference", 0.0, float(plain.max()), spread(plain),
                f"< {tol:g} (rounding)", bool(plain.max() < tol), "check", note),
        Verdict(CLAIM, "MAML directional derivative (base and start) vs central finite difference "
                "of the unrolled objective (h = 1e-4 scale and h/2, Richardson): max rel. "
                "difference", 0.0, float(fd.max()), spread(fd),
                f"< {tol_fd:g} (h^4 truncation + eps/h rounding)",
                bool(fd.max() < tol_fd), "check", note),
    ]
    want = hand_built_formulas(hA, hM, hu)
    hand = {}
    for j, m in enumerate(("maml", "fomaml", "reptile")):
        got = (lib[0][S, j], lib[1][S, j][:, :1], lib[2][S, j][:, :1])
        hand[m] = max(rel_diff(a, b) if np.max(np.abs(b)) > 0 else float(np.max(np.abs(a)))
                      for a, b in zip(got, want[m]))
    for m, what in (("maml", "g_A = mean (I - aP)^2 (A - M*_t)"),
                    ("fomaml", "g_A = mean (I - aP)(A - M*_t), start (G_1 V_1, G_1^T u)"),
                    ("reptile", "g_A = -mean aP(M*_t - A), start (0, -mean V_1)")):
        rows.append(Verdict(CLAIM, f"hand-built K=1 LoRA start ({m}): {what}", 0.0, hand[m], 0.0,
                            f"< {tol:g}", bool(hand[m] < tol), "check",
                            f"T=2, u=(1,-2,0.5), alpha={HAND_ALPHA}, population"))
    # the same updates with the method given by name (the form linmeta.maml passes)
    named = [np.asarray(x) for x in named]   # (S + 1, 3 methods, ...)
    by_name = [max(rel_diff(named[i][s, 0], gp[i][s]) for i in range(3)) for s in range(S)]
    for j, m in enumerate(METHODS):
        got = (named[0][S, j], named[1][S, j][:, :1], named[2][S, j][:, :1])
        by_name.append(max(rel_diff(a, b) if np.max(np.abs(b)) > 0 else float(np.max(np.abs(a)))
                           for a, b in zip(got, want[m])))
    by_name = np.asarray(by_name)
    rows.append(Verdict(
        CLAIM, "outer_gradients with the method given by name ('maml', 'fomaml', 'reptile', as "
        "linmeta.maml passes it): 'maml' vs jax.grad of the plain loop (random problems), each "
        "name vs its hand-built formula: max rel. difference", 0.0, float(by_name.max()),
        spread(by_name), f"< {tol:g} (rounding)", bool(by_name.max() < tol), "check",
        note + "; " + ", ".join(f"{m}: {v:.1e}" for m, v in zip(METHODS, by_name[S:]))))
    ad = [np.asarray(x)[:S] for x in adapted]
    pt = [np.asarray(x)[:S] for x in plain_theta]
    inner = np.array([max(rel_diff(ad[i][s], pt[i][s]) for i in range(2)) for s in range(S)])
    rows.append(Verdict(
        CLAIM, "adapt (the inner loop) with its defaults (train_v: V trained too) vs the plain "
        "Python loop's adapted factors (U_K, V_K) of every task: max rel. difference", 0.0,
        float(inner.max()), spread(inner), f"< {tol:g} (rounding)", bool(inner.max() < tol),
        "check", note))
    rows.append(public_maml_vs_numpy(rng_for(seed + 1, CLAIM)))
    rows.append(split_domain(rng_for(seed + 2, CLAIM)))
    data = dict(setting=setting, seed=seed, d=d, k=k, T=T, K=K, plain=plain, fd=fd, num=num,
                ana=ana, hand=hand, tol=tol, tol_fd=tol_fd)
    return ClaimResult(CLAIM, rows, data, time.perf_counter() - t0)


def _numpy_plain_maml(X, Y, K: int, outer_steps: int, beta: float):
    """Plain (full-rank inner) second-order MAML on raw samples, in NumPy from the definitions:
    support = the first N // 2 samples of each task, query = the rest; inner step
    ``alpha = 0.5 / max_t ||B_t||_2`` (``B_t`` the support least-squares solution, NumPy's
    ``lstsq`` and spectral norm); the inner loop from W = 0 is linear in the base,
    ``M_K = A P_t + c_t`` with ``P_t = (I - alpha S_xx,t)^K``, so MAML's outer gradient is
    ``mean_t (M_K S^Q_xx - S^Q_yx) P_t``. Returns the final base, the adapted ``W_K`` per task,
    the query excess ``mean_t [L^Q_t(M_K) - min L^Q_t]`` (losses as sample means of
    ``1/2 ||y - M x||^2``) after every outer step, and alpha."""
    T, N, d = X.shape
    h = N // 2
    Xs, Ys, Xq, Yq = X[:, :h], Y[:, :h], X[:, h:], Y[:, h:]
    S, C = np.swapaxes(Xs, 1, 2) @ Xs / h, np.swapaxes(Ys, 1, 2) @ Xs / h
    Sq, Cq = np.swapaxes(Xq, 1, 2) @ Xq / (N - h), np.swapaxes(Yq, 1, 2) @ Xq / (N - h)
    lstsq = lambda X_, Y_: np.stack([np.linalg.lstsq(a, b, rcond=None)[0].T  # noqa: E731
                                     for a, b in zip(X_, Y_)])
    Bs, Bq = lstsq(Xs, Ys), lstsq(Xq, Yq)
    alpha = 0.5 / max(np.linalg.norm(B, ord=2) for B in Bs)
    P = np.stack([np.linalg.matrix_power(np.eye(d) - alpha * St, K) for St in S])

    def loss(M):
        R = Yq - Xq @ np.swapaxes(M, 1, 2)
        return 0.5 * np.mean(np.sum(R * R, axis=-1), axis=-1)

    def inner(A):
        M = np.repeat(A[None], T, axis=0)
        for _ in range(K):
            M = M - alpha * (M @ S - C)
        return M

    A = np.zeros((d, d))
    excess = [float(np.mean(loss(inner(A)) - loss(Bq)))]
    for _ in range(outer_steps):
        M = inner(A)
        A = A - beta * np.mean((M @ Sq - Cq) @ P, axis=0)
        excess.append(float(np.mean(loss(inner(A)) - loss(Bq))))
    return A, inner(A) - A, np.asarray(excess), alpha, float(np.max(np.linalg.cond(S)))


def public_maml_vs_numpy(rng, *, T: int = 2, d: int = 3, N: int = 10, K: int = 2,
                         outer_steps: int = 4, beta: float = 0.3) -> Verdict:
    """The public entry point with its defaults: :func:`linmeta.families.bilevel.methods.maml` on
    raw samples (split by default into N // 2 support and the rest query), ``adapter="full"`` (its
    default start W = 0), default method (second-order MAML), ``inner_lr="auto"``, the start not
    learned (default), against :func:`_numpy_plain_maml`: the base, the recorded objective at
    every outer step, the adapted W_K of every task, and the start (must stay W = 0)."""
    M = rng.standard_normal((T, d, d))
    X = rng.standard_normal((T, N, d))
    Y = X @ np.swapaxes(M, 1, 2) + 0.1 * rng.standard_normal((T, N, d))
    samples = Samples(*to_jax((X, Y, M, np.full(T, 0.1))))
    res = maml(samples, d, adapter="full", inner_steps=K, inner_lr="auto",
               outer_steps=outer_steps, outer_lr=beta)
    A, W, excess, alpha, cond = _numpy_plain_maml(X, Y, K, outer_steps, beta)
    diffs = dict(base=rel_diff(res.base, A), objective=rel_diff(res.history.value, excess),
                 reported=rel_diff(res.objective, excess[-1]),
                 adapted=rel_diff(res.adapters.adapted.U, W),
                 start=float(np.max(np.abs(np.asarray(res.adapters.start.U)))))
    worst = max(diffs.values())
    tol = Tolerance.rounding(100 * outer_steps * (K + 1), cond, what="outer_steps x (K + 1) "
                             "updates, each solving with the support S_xx")
    return Verdict(
        CLAIM, "public linmeta.maml on raw samples with its defaults (split N // 2, default "
        "method, start W = 0 not learned) and adapter='full', inner_lr='auto', vs the same run in "
        "NumPy (alpha = 0.5 / max_t ||B_t||_2; MAML gradient mean_t G^Q_t (I - alpha S_t)^K): "
        "max rel. difference of base, objective at every step, adapted W_K; |start|", 0.0, worst,
        float("nan"), tol, tol.below(worst), "check",
        f"T={T}, d={d}, N={N}, K={K}, {outer_steps} outer steps, beta={beta}, alpha={alpha:.4g}; "
        + ", ".join(f"{k_}: {v:.1e}" for k_, v in diffs.items()))


def split_domain(rng) -> Verdict:
    """The stated domain of :func:`linmeta.families.bilevel.methods.split_support_query`: raw
    :class:`~linmeta.Samples` with N >= 2 per task and ``1 <= support <= N - 1`` (both edges
    inside; just outside refused, naming the argument and its range)."""
    X, Y = rng.standard_normal((2, 3, 2)), rng.standard_normal((2, 3, 2))
    M = np.zeros((2, 2, 2))

    def s(n):
        return Samples(*to_jax((X[:, :n], Y[:, :n], M, np.full(2, 0.1))))

    f = split_support_query
    cases = [
        DomainCase("N = 2, support = 1", lambda: f(s(2), 1)),
        DomainCase("N = 3, support = N - 1", lambda: f(s(3), 2)),
        DomainCase("N = 3, support = 0", lambda: f(s(3), 0), ("support", "[1, N-1=2]", "got 0")),
        DomainCase("N = 3, support = N", lambda: f(s(3), 3), ("support", "[1, N-1=2]", "got 3")),
        DomainCase("N = 1, support = 1", lambda: f(s(1), 1), ("N >= 2", "N=1")),
        DomainCase("statistics instead of samples", lambda: f(task_statistics(s(3)), 1),
                   ("samples", "Samples", "TaskStats")),
    ]
    return domain_row(CLAIM, "split_support_query (Samples, N >= 2, 1 <= support <= N - 1)",
                      cases)


def plot(result: ClaimResult, out_dir) -> list:
    """``bilevel_m3_gradients.{png,pdf}``: finite differences against the MAML gradient, and the
    relative differences of every comparison."""
    plt = pyplot()
    D = result.data
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
    a, n = D["ana"].ravel(), D["num"].ravel()
    ax0.plot(a, n, "o", ms=4)
    lim = [min(a.min(), n.min()), max(a.max(), n.max())]
    ax0.plot(lim, lim, "k--", lw=1)
    ax0.set_xlabel("MAML directional derivative (library)")
    ax0.set_ylabel("central finite difference")
    ax0.set_title("second-order MAML gradient vs finite differences")
    groups = [("plain loop", D["plain"]), ("finite diff.", D["fd"])] + \
        [(f"hand {m}", np.array([v])) for m, v in D["hand"].items()]
    for i, (lab, v) in enumerate(groups):
        ax1.semilogy(np.full(np.size(v), i), np.maximum(np.ravel(v), 1e-18), "o", ms=4)
    ax1.axhline(D["tol"], color="k", ls="--", lw=1, label=f"{D['tol']:g}")
    ax1.axhline(D["tol_fd"], color="grey", ls=":", lw=1, label=f"{D['tol_fd']:g} (finite diff.)")
    ax1.set_xticks(range(len(groups)))
    ax1.set_xticklabels([g[0] for g in groups], fontsize=7, rotation=20)
    ax1.set_ylim(1e-18, 1)
    ax1.set_ylabel("relative difference")
    ax1.legend(fontsize=8)
    fig.suptitle(f"M3  outer gradients   d={D['d']}, k={D['k']}, T={D['T']}, K={D['K']} "
                 f"({D['setting']})", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_dir, "bilevel_m3_gradients", dpi=figure_dpi(D["setting"]))
