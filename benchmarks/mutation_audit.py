"""Mutation audit: does ``linmeta verify --quick`` fail when the library is wrong?

A verification toolkit is only as good as the wrong answers it rejects. This script applies
deliberate single-line bugs to the library, one at a time, each to a scratch copy of the repository
(the working tree is never touched), runs ``linmeta verify --quick`` on the copy
(``python -m linmeta verify --quick --json --no-figures``: the rows do not depend on the figures) and,
with ``--tests``, the test files that cover the mutated module, and reports which verify rows and
which tests catch each mutant. The goal: every mutant is caught by ``verify --quick``, or the table
says in one line why it is semantically harmless.

The mutations are a hand-written list (:data:`MUTATIONS`), not an automatic mutation tool: mutmut
and cosmic-ray generate hundreds of operator mutants and run the test suite for each, while one
``verify --quick`` costs about 1.5 minutes on 2 cores, so a list of bugs that mean something
(noise standard deviation used as a variance, an average over T + 1 tasks, a step T times too large,
a tolerance a million times too loose...) is what fits. Each entry names the file, the exact source
text it replaces (which must occur once) and its replacement.

Usage::

    nice python benchmarks/mutation_audit.py                 # every mutant, verify --quick
    nice python benchmarks/mutation_audit.py --tests         # and the covering test files (the
                                                             # 27 core mutants: 70 min, shared machine)
    python benchmarks/mutation_audit.py --tests --claims bilevel,representation --only ID,...
    python benchmarks/mutation_audit.py --only noise_std_as_variance,c1_tolerance_x1e6
    python benchmarks/mutation_audit.py --list               # the mutants, no runs
    python benchmarks/mutation_audit.py --smoke              # one mutant, verify --tiny --claims C1

Writes ``benchmarks/results/mutation_audit.md`` (the table: mutation, file:line, verify rows that
catch it, tests that catch it) and ``mutation_audit.json`` beside it (``--out`` changes the
folder; ``--only`` and ``--smoke`` runs write only with an explicit ``--out``). Exit code 0 when
every mutant is caught by verify or marked harmless, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results"

T_DATA = ["tests/test_data.py"]
T_THEORY = ["tests/test_theory.py"]
T_RETRAIN = ["tests/test_meta_lora.py", "tests/test_standard.py"]
T_FINETUNE = ["tests/test_finetune.py"]
T_METRICS = ["tests/test_metrics.py"]
T_LANDSCAPE = ["tests/test_landscape.py"]
T_CLAIMS_A = ["tests/test_claims_sr_and_recovery.py"]
T_BILEVEL = ["tests/test_maml.py"]
T_REP = ["tests/test_rep_core.py", "tests/test_rep_methods.py"]
T_DIFF = ["tests/test_difference_core.py"]

# id, file, original text (must occur exactly once in the file), replacement, what it breaks,
# covering test files, and (rarely) why the mutant is semantically harmless
MUTATIONS = [
    dict(id="noise_std_as_variance", file="linmeta/core/data.py",
         old="    Y = X @ jnp.swapaxes(M, -1, -2) + sig * E",
         new="    Y = X @ jnp.swapaxes(M, -1, -2) + sig ** 2 * E",
         what="draw_samples: the noise standard deviation used as a variance", tests=T_DATA),
    dict(id="population_noise_once", file="linmeta/core/data.py",
         old="    Syy = jnp.sum(M * M, axis=(-2, -1)) + d * sig ** 2",
         new="    Syy = jnp.sum(M * M, axis=(-2, -1)) + sig ** 2",
         what="population: S_yy carries sigma^2 instead of d sigma^2", tests=T_DATA),
    dict(id="syx_over_n_minus_1", file="linmeta/core/data.py",
         old="    Syx = jnp.swapaxes(Y, -1, -2) @ X / N",
         new="    Syx = jnp.swapaxes(Y, -1, -2) @ X / (N - 1)",
         what="task_statistics: S_yx divided by N - 1", tests=T_DATA),
    dict(id="population_sxx_doubled", file="linmeta/core/data.py",
         old="    eye = jnp.broadcast_to(jnp.eye(d, dtype=dt), M.shape)",
         new="    eye = jnp.broadcast_to(2 * jnp.eye(d, dtype=dt), M.shape)",
         what="population: S_xx = 2 I", tests=T_DATA),
    dict(id="orthogonal_case_bias", file="linmeta/core/theory.py",
         old="    pos, neg = s ** 4, s ** 4 / T ** 2",
         new="    pos, neg = s ** 4, s ** 4 / T",
         what="orthogonal_case_bias: negative eigenvalues s^2/sqrt(T) (E_SR(k) = k s^4)",
         tests=T_THEORY),
    dict(id="predicted_finetune_error_sigma", file="linmeta/core/theory.py",
         old="    return noise_std ** 2 * adapter_dof(d, rank, symmetric) / n",
         new="    return noise_std * adapter_dof(d, rank, symmetric) / n",
         what="predicted_finetune_error: sigma instead of sigma^2", tests=T_THEORY),
    dict(id="psd_bias_one_eigenvalue_too_many", file="linmeta/core/theory.py",
         old="    kept = (jnp.arange(d) < rank) & (lam > 0)",
         new="    kept = (jnp.arange(d) < rank + 1) & (lam > 0)",
         what="lora_bias(psd=True) keeps rank + 1 positive eigenvalues", tests=T_THEORY),
    dict(id="rbar_over_T_plus_1", file="linmeta/core/theory.py",
         old="    return jnp.mean(U_star @ _T(U_star), axis=0)",
         new="    return jnp.sum(U_star @ _T(U_star), axis=0) / (U_star.shape[0] + 1)",
         what="sr_bias_matrix: average over T + 1", tests=T_THEORY),
    dict(id="eckart_young_off_by_one", file="linmeta/core/theory.py",
         old="        return jnp.sum(s[..., rank:] ** 2, axis=-1)",
         new="        return jnp.sum(s[..., rank + 1:] ** 2, axis=-1)",
         what="lora_bias (U V^T): drops one singular value too many", tests=T_THEORY),
    dict(id="generic_rank_Tk", file="linmeta/core/theory.py",
         old="    return min((T + 1) * k, d)",
         new="    return min(T * k, d)",
         what="generic_sr_residual_rank: Tk instead of (T+1)k", tests=T_THEORY),
    dict(id="c1_constant_d_minus_1", file="linmeta/core/theory.py",
         old="    return jnp.sum((d + 1) * jnp.sum(D * D, axis=(-2, -1)) + d * d * noise_std ** 2) / T ** 2",
         new="    return jnp.sum((d - 1) * jnp.sum(D * D, axis=(-2, -1)) + d * d * noise_std ** 2) / T ** 2",
         what="sr_sample_error_constant: (d - 1) instead of (d + 1)", tests=T_THEORY),
    dict(id="alternating_base_step_times_T", file="linmeta/methods/meta_lora.py",
         old="    A = A - lr_base * jnp.mean(_task_grads(A, U, stats), axis=-3)",
         new="    A = A - lr_base * jnp.sum(_task_grads(A, U, stats), axis=-3)",
         what="alternating protocol: base step scaled by T", tests=T_RETRAIN),
    dict(id="symmetric_grad_half", file="linmeta/core/lora.py",
         old="    return (G + _T(G)) @ U",
         new="    return G @ U",
         what="symmetric adapter gradient G U instead of (G + G^T) U", tests=T_RETRAIN),
    dict(id="sr_gd_step_times_T", file="linmeta/methods/standard.py",
         old="    return A - lr * jnp.mean(task_loss_grad(A, stats), axis=-3)",
         new="    return A - lr * jnp.sum(task_loss_grad(A, stats), axis=-3)",
         what="SR gradient descent: step scaled by T", tests=T_RETRAIN),
    dict(id="pooled_ls_mean_syx", file="linmeta/methods/standard.py",
         old="    Syx = jnp.sum(stats.Syx, axis=-3)",
         new="    Syx = jnp.mean(stats.Syx, axis=-3)",
         what="pooled least squares: mean of S_yx over sum of S_xx", tests=T_RETRAIN),
    dict(id="optimal_base_sign", file="linmeta/methods/meta_lora.py",
         old="    C = jnp.sum(stats.Syx - symmetric_delta(U) @ stats.Sxx, axis=-3)",
         new="    C = jnp.sum(stats.Syx + symmetric_delta(U) @ stats.Sxx, axis=-3)",
         what="Meta-LoRA optimal base: + U U^T instead of -", tests=T_RETRAIN),
    dict(id="ols_without_inverse", file="linmeta/core/losses.py",
         old="    return stats.Syx @ jnp.linalg.pinv(stats.Sxx, hermitian=True)",
         new="    return stats.Syx",
         what="ols_solution: S_yx without S_xx^-1 (exact in the population only)",
         tests=T_DATA + T_RETRAIN),
    dict(id="task_loss_syy_doubled", file="linmeta/core/losses.py",
         old="+ 0.5 * stats.Syy",
         new="+ stats.Syy",
         what="task_loss: S_yy counted twice (a constant shift of every loss)", tests=T_DATA),
    dict(id="rrr_metric_sxx", file="linmeta/methods/finetune.py",
         old="    V = S_pinv @ jnp.swapaxes(WT[..., :rank, :], -1, -2)",
         new="    V = S @ jnp.swapaxes(WT[..., :rank, :], -1, -2)",
         what="reduced-rank fit: S_xx^(1/2) instead of its pseudo-inverse (exact at S_xx = I)",
         tests=T_FINETUNE),
    dict(id="finetune_grad_v_untransposed", file="linmeta/core/lora.py",
         old="    return G @ V, _T(G) @ U",
         new="    return G @ V, G @ U",
         what="fine-tuning gradient in V: G U instead of G^T U", tests=T_FINETUNE),
    dict(id="base_error_wrong_norm", file="linmeta/core/metrics.py",
         old="    return err / jnp.linalg.norm(A_star, axis=(-2, -1)) if relative else err",
         new="    return err / jnp.linalg.norm(A_hat, axis=(-2, -1)) if relative else err",
         what="base_error(relative=True) divides by ||A_hat|| instead of ||A*||", tests=T_METRICS),
    dict(id="numerical_rank_smallest", file="linmeta/core/metrics.py",
         old="    tol = jnp.maximum(atol, rtol * s[..., :1])",
         new="    tol = jnp.maximum(atol, rtol * s[..., -1:])",
         what="numerical_rank: threshold relative to the smallest singular value",
         tests=T_METRICS),
    dict(id="landscape_hessian_T_plus_1", file="linmeta/methods/landscape.py",
         old="    coef = jnp.eye(T, dtype=U.dtype) - 1.0 / T",
         new="    coef = jnp.eye(T, dtype=U.dtype) - 1.0 / (T + 1)",
         what="landscape: closed-form Hessian with 1/(T+1)", tests=T_LANDSCAPE),
    dict(id="landscape_gradient_half", file="linmeta/methods/landscape.py",
         old="        return (-2 * (E - jnp.mean(E, axis=0)) @ U).reshape(-1)",
         new="        return (-1 * (E - jnp.mean(E, axis=0)) @ U).reshape(-1)",
         what="landscape: closed-form gradient halved", tests=T_LANDSCAPE),
    dict(id="landscape_zero_modes", file="linmeta/methods/landscape.py",
         old="    return T * k * (k - 1) // 2 + (k * k if (boosts and T == 2) else 0)",
         new="    return T * k * (k - 1) // 2 + (k * (k + 1) if (boosts and T == 2) else 0)",
         what="known_zero_modes: k(k+1) boosts at T = 2", tests=T_LANDSCAPE),
    dict(id="c1_tolerance_x1e6", file="linmeta/families/paper/claims/c1.py",
         old="    tol_pop = Tolerance.rounding(10 * d, what=",
         new="    tol_pop = Tolerance.rounding(10 * d * 1e6, what=",
         what="C1: population tolerance a million times looser", tests=T_CLAIMS_A),
    dict(id="c7_slope_band_p_1e12", file="linmeta/families/paper/claims/c7.py",
         old="    tol_slope = Tolerance.seeds(slope_se, S, bias=d / Narr[0],",
         new="    tol_slope = Tolerance.seeds(slope_se, S, p=1e-12, bias=d / Narr[0],",
         what="C7: slope band at level 1e-12 (about 7 standard errors)", tests=T_CLAIMS_A),
    # the bilevel family (claims M1-M6)
    dict(id="maml_second_order_halved", file="linmeta/families/bilevel/methods.py",
         old="            gA = gA + w[\"maml\"] * corr_A",
         new="            gA = gA + 0.5 * w[\"maml\"] * corr_A",
         what="MAML: the second-order term of the base gradient halved", tests=T_BILEVEL),
    dict(id="reptile_displacement_sign", file="linmeta/families/bilevel/methods.py",
         old="        gA = gA - w[\"reptile\"] * jnp.mean(disp, axis=-3)",
         new="        gA = gA + w[\"reptile\"] * jnp.mean(disp, axis=-3)",
         what="Reptile: the base moves against the inner displacement", tests=T_BILEVEL),
    dict(id="full_rank_fomaml_step", file="linmeta/families/bilevel/theory.py",
         old="    return {\"maml\": outer_lr * c * c, \"fomaml\": outer_lr * c,",
         new="    return {\"maml\": outer_lr * c * c, \"fomaml\": outer_lr * c * c,",
         what="full-rank reduction: first-order MAML's SR step (1-alpha)^(2K) instead of ^K",
         tests=T_BILEVEL),
    dict(id="profiled_objective_no_skew", file="linmeta/families/bilevel/theory.py",
         old="    per_task = jnp.sum(K * K, axis=(-2, -1)) + lora_bias(S, rank, psd=True)",
         new="    per_task = lora_bias(S, rank, psd=True)",
         what="exact inner solve (U U^T): the skew part of the residual dropped", tests=T_BILEVEL),
    # the representation family (claims R1-R7)
    dict(id="frozen_risk_m_minus_k", file="linmeta/families/representation/theory.py",
         old="    return f + (noise_std ** 2 + f) * k / (m - k - 1)",
         new="    return f + (noise_std ** 2 + f) * k / (m - k)",
         what="frozen target risk: k/(m-k) instead of k/(m-k-1)", tests=T_REP),
    dict(id="anil_rate_without_beta", file="linmeta/families/representation/theory.py",
         old="    return 1 - alpha * beta * lo",
         new="    return 1 - alpha * lo",
         what="ANIL late rate: 1 - alpha lambda_min (beta dropped)", tests=T_REP),
    dict(id="pooled_moment_factor", file="linmeta/families/representation/theory.py",
         old="    return (noise_std ** 2 + q) * jnp.eye(d, dtype=betas.dtype) + 2 * task_moment(betas)",
         new="    return (noise_std ** 2 + q) * jnp.eye(d, dtype=betas.dtype) + task_moment(betas)",
         what="moment identity: beta beta^T counted once", tests=T_REP),
    dict(id="adaptrep_penalty_half", file="linmeta/families/representation/theory.py",
         old="    return jnp.sqrt(lam * gamma) * jnp.linalg.norm(v, axis=-1)",
         new="    return jnp.sqrt(lam * gamma / 2) * jnp.linalg.norm(v, axis=-1)",
         what="AdaptRep penalty identity: sqrt(lambda gamma / 2)", tests=T_REP),
    # the difference family (claims D1-D5)
    dict(id="diff_lm_accepts_rises", file="linmeta/families/difference/methods.py",
         old="        ok = jnp.isfinite(f_new) & (f_new < f)",
         new="        ok = jnp.isfinite(f_new) & (f_new > f)",
         what="Levenberg-Marquardt takes only steps that raise the objective", tests=T_DIFF),
    dict(id="diff_true_space_U_twice", file="linmeta/families/difference/truth.py",
         old='        span = jnp.einsum("ai,bi->iab", U, V)',
         new='        span = jnp.einsum("ai,bi->iab", U, U)',
         what="difference_space: u_i u_i^T instead of u_i v_i^T", tests=T_DIFF),
    dict(id="diff_project_out_half", file="linmeta/families/difference/theory.py",
         old='    return X - jnp.einsum("...i,iab->...ab", jnp.einsum("iab,...ab->...i", E, X), E)',
         new='    return X - 0.5 * jnp.einsum("...i,iab->...ab", jnp.einsum("iab,...ab->...i", E, X), E)',
         what="project_out removes half of the projection (base modulo L*, D3 bias)",
         tests=T_DIFF),
    dict(id="diff_two_tasks_identify", file="linmeta/families/difference/theory.py",
         old="    directions = T >= 3 or (r == 1 and T >= 2)",
         new="    directions = T >= 2",
         what="identifiability: two tasks said to identify the directions", tests=T_DIFF),
    dict(id="diff_pca_needs_T_ge_r", file="linmeta/families/difference/theory.py",
         old="                pca_space=T - 1 >= r)",
         new="                pca_space=T >= r)",
         what="identifiability: the principal components said to need T >= r", tests=T_DIFF),
    dict(id="diff_coef_risk_n_minus_1", file="linmeta/families/difference/theory.py",
         old="    return noise_std ** 2 * r / (n - 2)",
         new="    return noise_std ** 2 * r / (n - 1)",
         what="coefficient-only risk sigma^2 r/(n - 1) instead of r/(n - 2)", tests=T_DIFF),
    dict(id="diff_full_risk_n_minus_d_plus_1", file="linmeta/families/difference/theory.py",
         old="    return noise_std ** 2 * d * d / (n - d - 1)",
         new="    return noise_std ** 2 * d * d / (n - d + 1)",
         what="full least-squares risk over n - d + 1", tests=T_DIFF),
    dict(id="diff_coef_fit_without_sxx", file="linmeta/families/difference/methods.py",
         old="    resid = stats.Syx - base @ stats.Sxx  # (T, d, d)",
         new="    resid = stats.Syx - base  # (T, d, d)",
         what="coefficient fit: S_yx - A instead of S_yx - A S_xx (exact in the population only)",
         tests=T_DIFF),
    dict(id="diff_base_from_first_task", file="linmeta/families/difference/methods.py",
         old="        mbar = jnp.mean(m, axis=0)",
         new="        mbar = m[0]",
         what="population elimination: the base from the first task, not the mean",
         tests=T_DIFF),
    dict(id="diff_paper_bias_d_not_d_plus_1", file="linmeta/families/difference/theory.py",
         old="    return (d * k * (d + 1) - 2 * k * jnp.sum(sym * sym)",
         new="    return (d * k * d - 2 * k * jnp.sum(sym * sym)",
         what="expected paper bias: d k d instead of d k (d + 1)", tests=T_DIFF),
    dict(id="diff_maml_one_step_short", file="linmeta/families/difference/methods.py",
         old="        return jnp.where(k < K, s - alpha * jnp.einsum(\"ai,tab,bi->ti\", U, G, V), s), None",
         new="        return jnp.where(k < K - 1, s - alpha * jnp.einsum(\"ai,tab,bi->ti\", U, G, V), s), None",
         what="coefficient MAML's inner loop runs K - 1 steps", tests=T_DIFF),
]


# ----------------------------------------------------------------------------- scratch copies
def _tracked_files(repo: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=repo,
                         check=True, capture_output=True).stdout.decode()
    return [f for f in out.split("\0") if f and (repo / f).is_file()]


def scratch_copy(repo: Path, dest: Path) -> Path:
    """Copy the working tree's tracked and untracked-but-not-ignored files into ``dest``."""
    for f in _tracked_files(repo):
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / f, target)
    return dest


def locate(repo: Path, m: dict) -> int:
    """Line number of the mutation's text in the working tree (it must occur exactly once)."""
    text = (repo / m["file"]).read_text()
    n = text.count(m["old"])
    if n != 1:
        raise SystemExit(f"mutation {m['id']}: the text occurs {n} times in {m['file']} "
                         "(must be exactly once); update MUTATIONS")
    return text[: text.index(m["old"])].count("\n") + 1


def apply(root: Path, m: dict) -> None:
    path = root / m["file"]
    text = path.read_text()
    assert text.count(m["old"]) == 1, m["id"]
    path.write_text(text.replace(m["old"], m["new"]))


# ----------------------------------------------------------------------------- runs
def _env(root: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                     else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


def _cpu_ticks(pid: int) -> int | None:
    """utime + stime of a process (Linux /proc), None when unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def _run_watched(cmd, root: Path, timeout: int, stall: int):
    """Run ``cmd``; kill it after ``timeout`` s, or after ``stall`` s without CPU progress (a
    deadlocked XLA program sleeps). Returns ``(returncode, stdout, stderr, error)``."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, cwd=root, env=_env(root), stdout=out, stderr=err, text=True)
        t0 = last_change = time.monotonic()
        ticks = None
        error = None
        try:
            while p.poll() is None:
                time.sleep(2)
                now = time.monotonic()
                t = _cpu_ticks(p.pid)
                if t != ticks:
                    ticks, last_change = t, now
                if now - t0 > timeout:
                    error = f"timed out after {timeout} s"
                elif t is not None and now - last_change > stall:
                    error = f"stalled (no CPU time for {stall} s)"
                if error:
                    p.kill()
                    break
        finally:
            if p.poll() is None:
                p.kill()
            p.wait()
        out.seek(0)
        err.seek(0)
        return p.returncode, out.read(), err.read(), error


def run_verify(root: Path, setting: str, claims: str | None, timeout: int,
               stall: int = 90) -> dict:
    """``python -m linmeta verify --<setting> --json --no-figures`` in the copy: failing rows."""
    cmd = [sys.executable, "-m", "linmeta", "verify", f"--{setting}", "--json", "--no-figures",
           "--out", str(root / "_verify_out")]
    if claims:
        cmd += ["--claims", claims]
    t0 = time.perf_counter()
    rc, stdout, stderr, error = _run_watched(cmd, root, timeout, stall)
    secs = round(time.perf_counter() - t0, 1)
    if error:
        return dict(rc=None, failing=[], error=error, seconds=secs)
    try:
        data = json.loads(stdout)
        failing = [f"{v['claim']}: {v['quantity']}" for v in data["verdicts"] if not v["passed"]]
    except (json.JSONDecodeError, KeyError):
        return dict(rc=rc, failing=[], seconds=secs,
                    error=f"no report (exit {rc}): {stderr.strip()[-300:]}")
    return dict(rc=rc, failing=failing, seconds=secs)


def run_tests(root: Path, files: list[str], timeout: int) -> dict:
    """``pytest -q`` on the covering test files in the copy: failing test ids."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", "--no-header",
           "-rf", *files]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=root, env=_env(root), capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(rc=None, failing=["(timed out)"], seconds=timeout)
    failed = [line.split(" ", 1)[1].split(" - ")[0] for line in p.stdout.splitlines()
              if line.startswith("FAILED ")]
    if p.returncode not in (0, 1) and not failed:
        failed = [f"(pytest exit {p.returncode})"]
    return dict(rc=p.returncode, failing=failed, seconds=round(time.perf_counter() - t0, 1))


def _claim_ids(claims: str | None) -> list[str]:
    sys.path.insert(0, str(REPO))
    from linmeta.engine.claims import CLAIM_IDS
    from linmeta.front.verify import _parse_claims

    return list(CLAIM_IDS) if not claims else _parse_claims(claims)


def verify_rows(root: Path, setting: str, claims: str | None, timeout: int,
                per_claim: bool) -> dict:
    """The failing rows of ``linmeta verify`` on the copy: one run for all claims, or (default)
    one run per claim, so that a run that hangs (jaxlib 0.10.2's batched-LAPACK thread-pool
    deadlock: the process sleeps with no CPU progress) costs one claim; a run that stalls, times
    out or crashes is repeated up to twice."""
    groups = [c for c in _claim_ids(claims)] if per_claim else [claims]
    out = dict(rc=0, failing=[], seconds=0.0)
    for g in groups:
        r = run_verify(root, setting, g, timeout)
        for _ in range(2):  # a run that hung or crashed: up to two more
            if not r.get("error"):
                break
            out.setdefault("retried", []).append(f"{g or 'all'}: {r['error']}")
            r = run_verify(root, setting, g, timeout)
        out["failing"] += r["failing"]
        out["seconds"] = round(out["seconds"] + r["seconds"], 1)
        if r.get("error"):
            msg = f"{g or 'all'}: {r['error']}"
            out["error"] = f"{out['error']}; {msg}" if out.get("error") else msg
        if r["rc"] not in (0, None):
            out["rc"] = r["rc"]
    return out


def audit_one(m: dict, *, setting: str, claims: str | None, tests: bool, timeout: int,
              per_claim: bool = True) -> dict:
    """Copy the repository, apply ``m`` (none for the baseline), run verify (and the tests)."""
    line = locate(REPO, m) if m["id"] != "baseline" else 0
    with tempfile.TemporaryDirectory(prefix=f"mutant-{m['id']}-") as tmp:
        root = scratch_copy(REPO, Path(tmp))
        if m["id"] != "baseline":
            apply(root, m)
        rec = dict(id=m["id"], what=m["what"], where=f"{m['file']}:{line}",
                   verify=verify_rows(root, setting, claims, timeout, per_claim))
        if tests and m.get("tests"):
            rec["tests"] = run_tests(root, m["tests"], timeout)
    # caught: verify reported failing rows (a run that crashed or hung reports none)
    rec["caught_by_verify"] = bool(rec["verify"]["failing"])
    rec["harmless"] = m.get("harmless", "")
    return rec


# ----------------------------------------------------------------------------- report
def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


def _cell(items, limit=4, width=90):
    items = [_md(i if len(i) <= width else i[: width - 3] + "...") for i in items]
    if not items:
        return "**none**"
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


def markdown(records, meta) -> str:
    caught = sum(r["caught_by_verify"] for r in records)
    lines = ["# Mutation audit", "",
             f"`python benchmarks/mutation_audit.py{meta['args']}` -- {meta['date']}; "
             f"each mutant: `python -m linmeta verify --{meta['setting']} --json --no-figures`"
             + (f" --claims {meta['claims']}" if meta["claims"] else "")
             + (" (one run per claim)" if meta.get("per_claim") else "")
             + (" and the covering test files (`pytest -x`)" if meta["tests"] else "")
             + f" on a scratch copy. Total {meta['seconds'] / 60:.1f} min.", "",
             f"**{caught}/{len(records)} mutants caught by `linmeta verify --{meta['setting']}`**"
             + (f"; {sum(bool(r.get('tests', {}).get('failing')) for r in records)}/"
                f"{len(records)} by the tests" if meta["tests"] else "") + ".", "",
             "| # | mutation | file:line | caught by verify rows | caught by tests |",
             "|---|---|---|---|---|"]
    for i, r in enumerate(records, 1):
        v = _cell(r["verify"]["failing"])
        if r["verify"].get("error"):
            v += f" (**no report** from {_md(r['verify']['error'])})"
        elif not r["caught_by_verify"] and r["harmless"]:
            v = f"harmless: {_md(r['harmless'])}"
        t = _cell(r["tests"]["failing"]) if "tests" in r else "(not run)"
        lines.append(f"| {i} | `{r['id']}`: {_md(r['what'])} | `{r['where']}` | {v} | {t} |")
    return "\n".join(lines) + "\n"


def _write(out: Path, records, meta):
    sys.path.insert(0, str(REPO))
    from linmeta.engine.results import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "mutation_audit.md", markdown(records, meta))
    atomic_write_text(out / "mutation_audit.json",
                      json.dumps(dict(meta=meta, records=records), indent=2) + "\n")


def _terminate(signum, frame):  # SIGTERM: unwind, so runs are killed and scratch copies removed
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--only", metavar="ID,ID", help="comma-separated mutation ids (see --list)")
    p.add_argument("--tests", action="store_true", help="also run the covering test files")
    p.add_argument("--setting", choices=("tiny", "quick"), default="quick")
    p.add_argument("--claims", default=None, help="verify --claims (default: all)")
    p.add_argument("--out", default=None,
                   help=f"folder for mutation_audit.md/.json (default {DEFAULT_OUT} for a full "
                        "run; --only and --smoke runs write only with --out)")
    p.add_argument("--timeout", type=int, default=600,
                   help="seconds per verify run (default 600; a run that times out, or stalls 90 s "
                        "without CPU progress, is repeated up to twice)")
    p.add_argument("--whole", action="store_true",
                   help="one verify run for all claims (default: one run per claim)")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    p.add_argument("--smoke", action="store_true",
                   help="one mutant (noise_std_as_variance) with verify --tiny --claims C1")
    a = p.parse_args(argv)
    if a.list:
        for m in MUTATIONS:
            print(f"{m['id']:36s} {m['file']}:{locate(REPO, m)}  {m['what']}")
        return 0
    chosen = MUTATIONS
    if a.smoke:
        chosen = [m for m in MUTATIONS if m["id"] == "noise_std_as_variance"]
        a.setting, a.claims = "tiny", "C1"
    elif a.only:
        ids = [s.strip() for s in a.only.split(",") if s.strip()]
        known = {m["id"] for m in MUTATIONS}
        bad = [i for i in ids if i not in known]
        if bad:
            p.error(f"--only: unknown mutation id(s) {', '.join(bad)}; see --list")
        chosen = [m for m in MUTATIONS if m["id"] in ids]
    t0 = time.perf_counter()
    base = audit_one(dict(id="baseline", file="linmeta/core/data.py", old="", what="no mutation"),
                     setting=a.setting, claims=a.claims, tests=False, timeout=a.timeout,
                     per_claim=not a.whole) if not a.smoke else None
    if base is not None and (base["verify"]["failing"] or base["verify"].get("error")):
        print(f"baseline (no mutation) fails: {base['verify']}", file=sys.stderr)
        return 2
    records = []
    for m in chosen:
        r = audit_one(m, setting=a.setting, claims=a.claims, tests=a.tests, timeout=a.timeout,
                      per_claim=not a.whole)
        records.append(r)
        verdict = "caught" if r["caught_by_verify"] else ("harmless" if r["harmless"]
                                                          else "NOT CAUGHT")
        tests = ""
        if "tests" in r:
            tests = f"; tests: {'caught' if r['tests']['failing'] else 'not caught'}"
        print(f"{m['id']:36s} verify {verdict} ({len(r['verify']['failing'])} rows, "
              f"{r['verify']['seconds']} s){tests}", flush=True)
    meta = dict(setting=a.setting, claims=a.claims, tests=a.tests, per_claim=not a.whole,
                args=" ".join([""] + (argv if argv is not None else sys.argv[1:])),
                date=time.strftime("%Y-%m-%d %H:%M"), seconds=round(time.perf_counter() - t0, 1),
                baseline_seconds=None if base is None else base["verify"]["seconds"])
    out = Path(a.out) if a.out else (DEFAULT_OUT if not (a.only or a.smoke) else None)
    if out is not None:
        _write(out, records, meta)
        print(f"wrote {out / 'mutation_audit.md'}")
    missed = [r["id"] for r in records if not r["caught_by_verify"] and not r["harmless"]]
    if missed:
        print(f"not caught by verify: {', '.join(missed)}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
