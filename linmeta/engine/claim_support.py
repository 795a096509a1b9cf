"""Small shared pieces of the claim modules C1, C2, C3, C5, C7: fits, tolerances, figure output.

- :func:`loglog_slope`: least-squares slope and intercept of ``log y`` against ``log x`` with the
  standard error of the slope from the residuals (the usual OLS formula).
- :func:`per_seed_slopes`: that fit for every seed (row) of a (seeds, points) array; the mean of the
  per-seed slopes and its standard error over seeds are what the verdict rows compare with a rate.
- :func:`float_tol`: a tolerance scaled by the machine epsilon of the working dtype.
- :func:`save_figure`: writes a matplotlib figure as PNG and PDF, each atomically.
- :func:`experiment_parser`, :func:`experiment_args`, :func:`experiment_cli`: the command line of
  every experiment script (``experiments/*.py``), checked as ``linmeta``'s is (a seed in
  [0, 2^31 - 1], a writable ``--out``: otherwise one line on standard error and exit code 2).
- :func:`fit_meta_lora_and_sr`: the library's Meta-LoRA (Newton) and SR on a batch of task
  statistics in fixed-size vmapped chunks, so that C3 and C7 share one compilation.
- :func:`single_thread_blas`: one OpenBLAS thread for the verification processes (many small
  LAPACK calls; threads only contend).
- :func:`lbfgs_best_of_starts`, :func:`optimality_measures`: the optimality rows of exact solvers
  (first-order condition at the solver's point; SciPy's L-BFGS from several starts on the same
  objective must find nothing lower).

matplotlib is imported only inside :func:`pyplot` (Agg backend), so numeric code never pulls it in.
"""
from __future__ import annotations

import argparse
import ctypes
import glob
import io
import json
import math
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from linmeta.core.files import atomic_write_bytes as _atomic_write, check_writable_dir
from linmeta.methods import meta_lora, standard_retraining
from . import claims, compile_cache
from .verdict import Tolerance, Verdict, audited, fmt

__all__ = ["DomainCase", "domain_row", "loglog_slope", "per_seed_slopes", "float_tol", "working_dtype", "save_figure",
           "pyplot", "band", "spread", "settings_value", "key_for", "format_verdicts", "figure_dpi",
           "experiment_cli", "fit_meta_lora_and_sr", "single_thread_blas", "resolve_claims",
           "run_claims", "claims_cli", "figure_name", "plot_claim", "claims_parser",
           "experiment_parser", "experiment_args", "check_experiment_args"]


def working_dtype():
    """The default float dtype (float64 when x64 is on)."""
    return jnp.asarray(0.0).dtype


def float_tol(float64: float, float32: float) -> float:
    """``float64`` when x64 is on, else ``float32`` (tolerances are dtype dependent)."""
    return float64 if working_dtype() == jnp.float64 else float32


def loglog_slope(x, y):
    """``(slope, intercept, stderr)`` of the least-squares line ``log y = a + slope log x``."""
    lx = np.log(np.asarray(x, float))
    ly = np.log(np.asarray(y, float))
    if lx.size < 2:
        return float("nan"), float("nan"), float("nan")
    A = np.stack([lx, np.ones_like(lx)], axis=1)
    coef, *_ = np.linalg.lstsq(A, ly, rcond=None)
    resid = ly - A @ coef
    dof = lx.size - 2
    if dof > 0:
        s2 = float(resid @ resid) / dof
        se = math.sqrt(s2 / float(np.sum((lx - lx.mean()) ** 2)))
    else:
        se = float("nan")
    return float(coef[0]), float(coef[1]), se


def per_seed_slopes(x, Y):
    """Slopes of :func:`loglog_slope` for each row of ``Y`` (seeds, points):
    returns ``(slopes (seeds,), mean, standard error of the mean over seeds)``."""
    Y = np.asarray(Y, float)
    slopes = np.array([loglog_slope(x, row)[0] for row in Y])
    se = float(np.std(slopes, ddof=1) / math.sqrt(len(slopes))) if len(slopes) > 1 else float("nan")
    return slopes, float(np.mean(slopes)), se


def spread(values) -> float:
    """max - min of finite values (0 for one value, NaN for none)."""
    v = np.asarray(values, float).ravel()
    v = v[np.isfinite(v)]
    return float(v.max() - v.min()) if v.size else float("nan")


def settings_value(table: dict, setting: str):
    """``table[setting]`` with a ValueError naming the allowed settings."""
    if setting not in table:
        raise ValueError(f"setting must be one of {', '.join(table)}; got {setting!r}")
    return table[setting]


def key_for(seed: int, claim: str):
    """The root PRNG key of a claim run: ``fold_in(key(seed), claim number)`` for ``C1``..``C8``,
    ``fold_in(key(seed), crc32(id) >> 1)`` for the other families' ids."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    cid = str(claim).upper()
    # C1..C8 fold in their number (unchanged streams); other ids a stable 31-bit hash of the id
    num = int(cid[1:]) if cid[:1] == "C" and cid[1:].isdigit() else zlib.crc32(cid.encode()) >> 1
    return jax.random.fold_in(jax.random.key(int(seed)), num)


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend (imported here, on first need:
    numeric code never pulls matplotlib in)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_dpi(setting: str) -> int:
    """PNG resolution: 150 dpi, 60 for the tiny setting (a test run, not a figure to read)."""
    return 60 if setting == "tiny" else 150


def save_figure(fig, out_dir, stem: str, dpi: int = 150) -> list[Path]:
    """Write ``fig`` to ``out_dir/stem.png`` (``dpi``) and ``.pdf`` atomically; closes it."""
    plt = pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=dpi, bbox_inches="tight",
                    metadata={"CreationDate": None} if ext == "pdf" else None)  # same bytes every run
        path = out / f"{stem}.{ext}"
        _atomic_write(path, buf.getvalue())
        paths.append(path)
    plt.close(fig)
    return paths


def band(ax, x, Y, color, label, marker="o"):
    """Mean over rows of ``Y`` as a line with markers and a min-max band (log axes need Y > 0)."""
    Y = np.asarray(Y, float)
    ax.fill_between(x, Y.min(axis=0), Y.max(axis=0), color=color, alpha=0.2, lw=0)
    ax.plot(x, Y.mean(axis=0), marker=marker, color=color, label=label, ms=4)


def format_verdicts(result, paths=()) -> str:
    """The verdict rows of one claim as text lines (for the experiment scripts)."""
    lines = []
    for v in result.verdicts:
        mark = "pass" if v.passed else "FAIL"
        lines.append(f"[{mark}] {v.claim} {v.kind:8s} {v.quantity}\n"
                     f"        predicted {fmt(v.predicted)}  measured {fmt(v.measured)}  "
                     f"spread {fmt(v.spread)}  tolerance: {v.tolerance}"
                     + (f"\n        {v.note}" if v.note else ""))
    for p in paths:
        lines.append(f"figure: {p}")
    lines.append(f"{result.claim}: {result.seconds:.1f} s")
    return "\n".join(lines)


def figure_name(path, setting: str) -> str:
    """A figure's file name for ``setting``: the claim's own name for the full setting (the
    documented runs, the committed figures), ``<stem>_<setting><ext>`` otherwise, so that a quick
    or tiny run never overwrites a full-setting figure and the name says what it shows."""
    p = Path(path)
    return p.name if setting == "full" else f"{p.stem}_{setting}{p.suffix}"


def plot_claim(module, result, out_dir, setting: str) -> list[Path]:
    """``module.plot(result, ...)`` (or ``module(result, ...)`` for a plot function) into
    ``out_dir`` with the names of :func:`figure_name`: drawn in a temporary folder beside
    ``out_dir``, then moved into place (atomic renames)."""
    plot = module if callable(module) else module.plot
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".figures-") as tmp:
        drawn = [Path(p) for p in plot(result, tmp)]
        paths = []
        for p in drawn:
            dest = out / figure_name(p, setting)
            os.replace(p, dest)
            paths.append(dest)
    return paths


def resolve_claims(words) -> list[str]:
    """Claim ids from claim ids and family names (a string, comma-separated, or a list), in
    registry order; ``ValueError`` naming what is allowed."""
    if isinstance(words, str):
        words = [w for w in words.replace(",", " ").split() if w]
    ids = claims.claim_ids()
    fams = claims.family_names()
    out: list[str] = []
    for w in words:
        if w.lower() in fams:
            out += [c for c in claims.family_claims(w.lower()) if c not in out]
        elif w.upper() in ids:
            if w.upper() not in out:
                out.append(w.upper())
        else:
            raise ValueError(f"claims must be claim ids ({', '.join(ids)}) or families "
                             f"({', '.join(fams)}); got {w!r}")
    if not out:
        raise ValueError("claims: name at least one claim id or family")
    return out


def run_claims(words, setting: str = "full", out_dir="results/claims", seed: int = 0,
               log=print) -> list:
    """Run claims (ids or family names, :func:`resolve_claims`) at ``setting`` in one process:
    float64 on, each claim's rows audited (:func:`linmeta.engine.verdict.audited`), its figures
    written into ``out_dir``, its rows printed through ``log``; a JSON summary (rows, seconds and
    figures per claim) is written as ``<family>_<setting>.json`` or ``claims_<ids>_<setting>.json``. Returns every
    verdict row. Claims of one family that share a computation (the bilevel grid) compute it
    once in one process."""
    ids = resolve_claims(words)
    if setting not in claims.SETTINGS:
        raise ValueError(f"setting must be one of {', '.join(claims.SETTINGS)}; got {setting!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    out = Path(check_writable_dir(out_dir))
    jax.config.update("jax_enable_x64", True)
    single_thread_blas()
    rows, summary = [], {}
    for cid in ids:
        t0 = time.perf_counter()
        module = claims.claim_module(cid)
        result = module.run(setting=setting, seed=seed)
        result.verdicts = audited(result.verdicts, float64=working_dtype() == jnp.float64)
        paths = plot_claim(module, result, out, setting)
        log(format_verdicts(result, paths))
        rows += list(result.verdicts)
        summary[cid] = dict(seconds=time.perf_counter() - t0,
                            rows=[v.as_dict() for v in result.verdicts],
                            figures=[Path(p).name for p in paths])
    words = [words] if isinstance(words, str) else list(words)
    family = [w.lower() for w in words if w.lower() in claims.family_names()]
    if len(words) == 1 and family:   # a whole family: <family>_<setting>.json
        stem = family[0]
    else:
        stem = "claims_" + ("_".join(ids) if len(ids) <= 3 else f"{ids[0]}-{ids[-1]}")
    _atomic_write(out / f"{stem}_{setting}.json",
                  json.dumps(dict(setting=setting, seed=seed, claims=summary), indent=1,
                             default=str).encode())
    return rows


SEED_MAX = 2 ** 31 - 1
#: The argument names an experiment's command line checks as seeds (integers in [0, SEED_MAX]).
SEED_ARGUMENTS = ("seed", "truth_seed")


class _ExperimentParser(argparse.ArgumentParser):
    """argparse with the command line's one-line usage errors (exit code 2)."""

    def error(self, message):
        message = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def experiment_parser(doc: str, *, prog: str | None = None,
                      default_out: str = "results/experiments",
                      settings=("tiny", "quick", "full"), seed: bool = True,
                      setting: bool = True) -> argparse.ArgumentParser:
    """The shared arguments of an experiment script: ``--setting`` (default full), ``--out``
    (default ``default_out``), ``--seed`` (unless ``seed=False``) and ``--no-compile-cache``.
    A script adds its own arguments to the parser; :func:`experiment_args` parses and checks."""
    p = _ExperimentParser(prog=prog, description=(doc or "").strip().split("\n\n")[0],
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    if setting:
        p.add_argument("--setting", choices=tuple(settings), default="full")
    p.add_argument("--out", default=default_out,
                   help=f"output folder (default: {default_out}; the committed figures are in "
                        "figures/)")
    if seed:
        p.add_argument("--seed", type=int, default=0, help="root random seed (default: 0)")
    compile_cache.add_argument(p)
    return p


def check_experiment_args(args) -> None:
    """The command line's rules for an experiment's parsed arguments: every seed argument
    (:data:`SEED_ARGUMENTS`) an integer in [0, 2^31 - 1] and ``--out`` a writable folder
    (:func:`linmeta.core.files.check_writable_dir`). ``ValueError`` / ``OSError`` naming the
    argument."""
    for name in SEED_ARGUMENTS:
        value = getattr(args, name, None)
        if value is not None and not 0 <= value <= SEED_MAX:
            raise ValueError(f"--{name.replace('_', '-')} must be an integer in [0, {SEED_MAX}], "
                             f"got {value}")
    if getattr(args, "out", None) is not None:
        check_writable_dir(args.out)


def experiment_args(parser: argparse.ArgumentParser, argv=None, check=None) -> argparse.Namespace:
    """Parse ``argv`` with ``parser`` (:func:`experiment_parser`), check the arguments
    (``check(args)`` if given, then :func:`check_experiment_args`: a bad one is one line on
    standard error and exit code 2, like the command line) and switch on the compilation cache;
    returns the arguments."""
    a = parser.parse_args(argv)
    try:
        if check is not None:
            check(a)
        check_experiment_args(a)
    except (ValueError, OSError) as e:
        text = e.strerror if isinstance(e, OSError) and e.strerror and not e.filename else str(e)
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(text).split())}\n")
    compile_cache.enable_from_args(a)
    return a


def claims_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m experiments.claims``."""
    p = experiment_parser(
        "Run claims (ids such as C3, or whole families such as bilevel) at a setting, write "
        "their figures and print their verdict rows.", prog="python -m experiments.claims",
        default_out="results/claims", settings=claims.SETTINGS)
    p.add_argument("claims", nargs="+", help="claim ids or family names, e.g. C3 C6 or bilevel")
    return p


def claims_cli(argv=None) -> int:
    """``python -m experiments.claims CLAIMS... [--setting S] [--out DIR] [--seed N]``: exit 0
    when every check passes, 1 when one fails, 2 for bad input (one line on standard error)."""
    a = experiment_args(claims_parser(), argv, check=lambda a: resolve_claims(a.claims))
    rows = run_claims(a.claims, setting=a.setting, out_dir=a.out, seed=a.seed)
    return 0 if all(v.passed for v in rows) else 1


def experiment_cli(main, doc: str, argv=None, default_out: str = "results/experiments",
                   parser: argparse.ArgumentParser | None = None):
    """Arguments of an experiment script (``parser``, default :func:`experiment_parser`:
    ``--setting {tiny,quick,full}``, default full; ``--out``, default ``default_out``; ``--seed``
    >= 0), validated the way the command line validates (:func:`experiment_args`: one line on
    standard error, exit 2), then ``main(setting, out_dir, seed)``."""
    parser = parser if parser is not None else experiment_parser(doc, default_out=default_out)
    a = experiment_args(parser, argv)
    rows = main(setting=a.setting, out_dir=a.out, seed=a.seed)
    return 0 if all(v.passed for v in rows) else 1


def _fit_chunk_impl(stats, keys, rank, n_starts):
    def fit(src, key):
        ml = meta_lora(src, rank, key=key, n_starts=n_starts)
        sr = standard_retraining(src)
        return ml.base, ml.objective, sr.base

    return jax.vmap(fit)(stats, keys)


_FIT_CHUNK = None


def fit_meta_lora_and_sr(stats, keys, rank: int, n_starts: int, chunk: int):
    """Meta-LoRA (Newton, ``n_starts`` starts) and SR on a batch of task statistics.

    ``stats``: :class:`~linmeta.TaskStats` with a leading batch axis B; ``keys``: (B,) PRNG keys
    for the adapter initialisation. The batch runs in vmapped chunks of ``chunk`` sources (the last
    one padded by repetition), so claims that use the same (T, d, rank, n_starts, chunk) share one
    compilation. Returns NumPy arrays ``(ml_base (B,d,d), ml_objective (B,), sr_base (B,d,d))``.
    """
    global _FIT_CHUNK
    if _FIT_CHUNK is None:
        _FIT_CHUNK = jax.jit(_fit_chunk_impl, static_argnames=("rank", "n_starts"))
    B = keys.shape[0]
    n_chunks = -(-B // chunk)
    idx = np.minimum(np.arange(n_chunks * chunk), B - 1)
    outs = []
    for c in range(n_chunks):
        sel = jnp.asarray(idx[c * chunk:(c + 1) * chunk])
        part = jax.tree.map(lambda x: x[sel], stats)
        outs.append(_FIT_CHUNK(part, keys[sel], rank=rank, n_starts=n_starts))
    ml_base, ml_obj, sr_base = (np.concatenate([np.asarray(o[i]) for o in outs])[:B]
                                for i in range(3))
    return ml_base, ml_obj, sr_base


def single_thread_blas() -> bool:
    """Ask the OpenBLAS that NumPy, SciPy (and through SciPy, jaxlib's CPU LAPACK kernels) use for
    one thread, unless ``OPENBLAS_NUM_THREADS`` is set. The verification runs make many small
    eigendecompositions; on a busy machine OpenBLAS's worker threads wait for each other and a
    150 x 150 ``eigh`` takes ~10-100 ms instead of ~1.5 ms. Best effort: returns whether a library
    accepted the call."""
    if os.environ.get("OPENBLAS_NUM_THREADS"):
        return False
    done = False
    for pkg in ("numpy", "scipy"):
        try:
            mod = __import__(pkg)
        except ImportError:  # pragma: no cover
            continue
        pattern = os.path.join(os.path.dirname(mod.__file__), "..", pkg + ".libs",
                               "libscipy_openblas*.so*")
        for lib in glob.glob(pattern):
            try:
                handle = ctypes.CDLL(lib)
            except OSError:  # pragma: no cover
                continue
            for sym in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads"):
                fn = getattr(handle, sym, None)
                if fn is not None:
                    fn(ctypes.c_int(1))
                    done = True
                    break
    return done


__all__ += ["lbfgs_best_of_starts", "optimality_measures"]


def lbfgs_best_of_starts(value_and_grad, starts, *, maxiter: int = 1000, gtol: float = 1e-10,
                         ftol: float = 1e-13):
    """Smallest value SciPy's L-BFGS-B reaches from each row of ``starts`` on ``value_and_grad``
    (a function ``x -> (f, grad f)`` of a float64 NumPy vector): the generic optimiser of the
    optimality rows, which compare an exact solver's value with what it finds (it must find
    nothing lower). Knows nothing of the solver; returns ``(best value, best x)``. It stops at a
    relative decrease of ``ftol`` per iteration: stopping early can only make it miss a lower
    value, never report one that is not there."""
    from scipy.optimize import minimize  # deferred: SciPy only for the rows that use it

    def fun(x):
        f, g = value_and_grad(x)
        return float(f), np.asarray(g, dtype=float).ravel()

    best, best_x = math.inf, None
    for x0 in np.atleast_2d(np.asarray(starts, dtype=float)):
        r = minimize(fun, x0, jac=True, method="L-BFGS-B",
                     options=dict(maxiter=maxiter, gtol=gtol, ftol=ftol, maxcor=30))
        if float(r.fun) < best:
            best, best_x = float(r.fun), np.asarray(r.x)
    return best, best_x


def optimality_measures(value_and_grad, x_hat, x_ref, starts, **lbfgs):
    """How optimal the solver's point ``x_hat`` is for the objective behind ``value_and_grad``
    (``x -> (f, grad f)``, NumPy vectors): ``(foc, gain)`` with ``foc = ||grad f(x_hat)|| /
    ||grad f(x_ref)||`` (first-order condition, relative to a reference point such as the start
    or 0) and ``gain = (f(x_hat) - best) / (f(x_ref) - f(x_hat))``, ``best`` the smallest value
    L-BFGS reaches from ``starts`` (:func:`lbfgs_best_of_starts`): ``gain > 0`` means the generic
    optimiser found a lower value than the exact solver."""
    f_hat, g_hat = value_and_grad(np.asarray(x_hat, dtype=float))
    f_ref, g_ref = value_and_grad(np.asarray(x_ref, dtype=float))
    best, _ = lbfgs_best_of_starts(value_and_grad, starts, **lbfgs)
    foc = float(np.linalg.norm(np.asarray(g_hat)) / np.linalg.norm(np.asarray(g_ref)))
    return foc, (float(f_hat) - best) / (float(f_ref) - float(f_hat))


# ----------------------------------------------------------------------------- stated domains
class DomainCase:
    """One call of a closed form at the edge of the domain its docstring states.

    ``call``: a function of no arguments making the call. ``refuses``: None when the call lies
    inside the domain (it must return, with finite values), else the texts the ``ValueError`` must
    contain (the argument's name first, then e.g. the bound). ``label``: the case in words."""

    __slots__ = ("call", "refuses", "label")

    def __init__(self, label: str, call, refuses=None):
        self.label, self.call = label, call
        self.refuses = None if refuses is None else tuple(refuses)

    def outcome(self) -> str:
        """"" when the call behaves as its domain says, else what went wrong (in words)."""
        try:
            out = self.call()
        except ValueError as e:
            if self.refuses is None:
                return f"refused inside its domain ({e})"
            missing = [t for t in self.refuses if t not in str(e)]
            return f"message lacks {missing!r}: {e}" if missing else ""
        except Exception as e:  # noqa: BLE001 - any other failure is a wrong answer here
            return f"{type(e).__name__}: {e}"
        if self.refuses is not None:
            return f"accepted outside its domain (expected a ValueError naming {self.refuses[0]})"
        leaves = jax.tree_util.tree_leaves(out)
        bad = [x for x in leaves if isinstance(x, (int, float, np.ndarray, jax.Array))
               and not bool(np.all(np.isfinite(np.asarray(x, dtype=float))))]
        return "a value is not finite" if bad else ""


def domain_row(claim: str, what: str, cases) -> Verdict:
    """A verify row: every :class:`DomainCase` behaves as the stated domains say (inside: a
    finite value; just outside: a ``ValueError`` naming the argument). Predicted: the number of
    cases; measured: how many behave (exact). The note names the cases that did not."""
    cases = list(cases)
    wrong = [(c.label, c.outcome()) for c in cases]
    wrong = [(lab, why) for lab, why in wrong if why]
    note = ("; ".join(f"{lab}: {why}"[:160] for lab, why in wrong) if wrong else
            f"{sum(c.refuses is None for c in cases)} inside, "
            f"{sum(c.refuses is not None for c in cases)} just outside")
    return Verdict(claim, f"stated domains: {what}", len(cases), len(cases) - len(wrong), 0.0,
                   Tolerance.exact(), not wrong, "check", note)


__all__ += ["history_problems"]


def history_problems(step, value, *, total: int | None = None, every: int | None = None,
                     trace: bool = False, final=None, start=None, rel: float = 1e-12) -> list:
    """What is wrong with a solver's :class:`~linmeta.methods._common.History` (empty: nothing).

    Properties, not a recomputation: ``step`` starts at 0, rises strictly and has one entry per
    recorded ``value`` (leading axis; ``value`` may be a pytree); with ``total`` and ``every``
    (a gradient method's ``steps`` and ``record_every``) it ends at ``total`` and its gaps are
    ``every`` except the last, which is at most ``every``. ``trace=True`` (a second-order solver's
    objective per iteration, NaN after its stop): the finite entries are a prefix that does not
    rise, its last entry is ``final`` (the reported objective) and its first ``start`` (the
    objective at the start), both to ``rel`` relative to ``max(|start|, |final|)``."""
    step = np.asarray(step)
    leaves = [np.asarray(v) for v in jax.tree.leaves(value)]
    out = []
    if step.ndim != 1 or step.size == 0:
        return [f"step has shape {step.shape}, not (n_rec,) with n_rec >= 1"]
    if any(v.shape[:1] != step.shape for v in leaves):
        out.append(f"{step.size} steps but values of {[v.shape[:1] for v in leaves]} records")
    if step[0] != 0 or np.any(np.diff(step) <= 0):
        out.append(f"steps do not start at 0 and rise strictly: {step[:3]}...{step[-3:]}")
    if total is not None and step[-1] != total:
        out.append(f"last step {step[-1]} != {total}")
    if every is not None and step.size > 1:
        gaps = np.diff(step)
        if np.any(gaps[:-1] != every) or not 0 < gaps[-1] <= every:
            out.append(f"gaps {sorted(set(gaps.tolist()))} are not {every} (the last <= {every})")
    if trace and leaves:
        v = leaves[0]
        fin = np.isfinite(v)
        n = int(np.sum(fin))
        if n == 0 or not np.all(fin[:n]):
            out.append("finite values are not a prefix of the trace")
        else:
            head = v[:n]
            scale = max(abs(float(head[0])), abs(float(head[-1])), np.finfo(float).tiny)
            if np.any(np.diff(head) > rel * scale):
                out.append(f"the trace rises by {np.max(np.diff(head)) / scale:.1e} (relative)")
            if final is not None and abs(float(head[-1]) - float(final)) > rel * scale:
                out.append(f"last trace value {head[-1]:.6g} != reported objective "
                           f"{float(final):.6g}")
            if start is not None and abs(float(head[0]) - float(start)) > rel * scale:
                out.append(f"first trace value {head[0]:.6g} != objective at the start "
                           f"{float(start):.6g}")
    return out


__all__ += ["compiled_bytes"]


def compiled_bytes(compiled, arguments: bool = True) -> int:
    """XLA's own count of the memory a compiled program holds (``memory_analysis()``):
    arguments + outputs + temporaries, an output that aliases an argument counted once;
    ``arguments=False``: outputs + temporaries only (what it holds beyond its inputs)."""
    m = compiled.memory_analysis()
    if not arguments:
        return int(m.temp_size_in_bytes + m.output_size_in_bytes)
    return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
               - m.alias_size_in_bytes)
