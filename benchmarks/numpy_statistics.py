"""The strongest simple baseline: the paper's protocol as a plain NumPy loop over sufficient statistics.

One configuration at a time, written the way a careful NumPy user would: reduce the raw samples
once to per-task statistics (THEORY.md section 3)

    S_xx,t = X_t^T X_t / N,   S_yx,t = Y_t^T X_t / N          (O(T N d^2), once)

and then run every step on them, O(d^3) per step whatever N:

- Meta-LoRA, the paper's alternating protocol (THEORY.md section 4): per outer iteration
  ``inner_steps`` adapter steps ``U_t <- U_t - lr_adapter (G_t + G_t^T) U_t`` with
  ``G_t = (A + U_t U_t^T) S_xx,t - S_yx,t``, then one base step ``A <- A - lr_base mean_t G_t``;
- standard retraining: ``A <- A - sr_lr mean_t (A S_xx,t - S_yx,t)``;
- fine-tuning of both bases on the unseen task's n samples with ``M = base + U V^T``:
  ``G = M S_xx - S_yx``, ``(U, V) <- (U - ft_lr G V, V - ft_lr G^T U)``;
- the paper's test loss ``n tr((M - M*) S_xx (M - M*)^T)`` (= ``sum_i ||(M - M*) x_i||^2``).

It shares no code with linmeta (only NumPy) and runs on the same raw samples and initial factors as
linmeta's run of the same configuration, so its final losses must equal linmeta's to rounding.
"""
from __future__ import annotations

import time

import numpy as np

__all__ = ["statistics", "protocol"]


def statistics(X, Y):
    """Per-task ``(S_xx, S_yx)`` of raw samples ``X``, ``Y`` of shape (T, N, d) (rows = samples)."""
    N = X.shape[1]
    Xt = X.transpose(0, 2, 1)
    return Xt @ X / N, Y.transpose(0, 2, 1) @ X / N


def _test_loss(M, M_star, Sxx, n):
    D = M - M_star
    return n * float(np.sum((D @ Sxx) * D))


def protocol(X, Y, Xf, Yf, U0, Uf, Vf, M_new, cfg) -> dict:
    """Run one configuration ``cfg`` (a validated linmeta sweep configuration: step counts and
    learning rates) on raw retraining samples ``X``, ``Y`` (T, N, d), fine-tuning samples ``Xf``,
    ``Yf`` (1, n, d), Meta-LoRA's initial adapters ``U0`` (T, d, k), the fine-tuning factors
    ``Uf``, ``Vf`` (1, d, r) and the unseen task ``M_new`` (1, d, d). Returns the final paper
    test losses after fine-tuning and the seconds of each stage (statistics included)."""
    t0 = time.perf_counter()
    Sxx, Syx = statistics(X, Y)
    Sfx, Sfy = statistics(Xf, Yf)
    Sfx, Sfy, M_new = Sfx[0], Sfy[0], M_new[0]
    n = Xf.shape[1]
    d = X.shape[2]
    t_stats = time.perf_counter() - t0

    lr_u, lr_a, inner = cfg["lr_adapter"], cfg["lr_base"], cfg["inner_steps"]
    A = np.zeros((d, d))
    U = np.array(U0, dtype=float)
    for _ in range(cfg["outer_steps"]):
        for _ in range(inner):
            G = (A + U @ U.transpose(0, 2, 1)) @ Sxx - Syx
            U = U - lr_u * ((G + G.transpose(0, 2, 1)) @ U)
        G = (A + U @ U.transpose(0, 2, 1)) @ Sxx - Syx
        A = A - lr_a * G.mean(axis=0)
    A_ml = A
    t_ml = time.perf_counter() - t0 - t_stats

    A = np.zeros((d, d))
    for _ in range(cfg["sr_steps"]):
        A = A - cfg["sr_lr"] * (A @ Sxx - Syx).mean(axis=0)
    A_sr = A
    t_sr = time.perf_counter() - t0 - t_stats - t_ml

    finals = {}
    lr = cfg["ft_lr"]
    for name, base in (("ml", A_ml), ("sr", A_sr)):
        U, V = np.array(Uf[0], dtype=float), np.array(Vf[0], dtype=float)
        for _ in range(cfg["ft_steps"]):
            G = (base + U @ V.T) @ Sfx - Sfy
            U, V = U - lr * (G @ V), V - lr * (G.T @ U)
        finals[f"{name}_ft_test_loss"] = _test_loss(base + U @ V.T, M_new, Sfx, n)
    total = time.perf_counter() - t0
    return {**finals, "seconds": total, "seconds_statistics": t_stats, "seconds_ml": t_ml,
            "seconds_sr": t_sr, "seconds_ft": total - t_stats - t_ml - t_sr}
