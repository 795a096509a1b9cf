"""The ``linmeta`` command line: ``run``, ``sweep``, ``verify``, ``plot``, ``theory``.

Each command parses its arguments, calls one library function and prints what it returns:

- ``run``: :func:`linmeta.engine.runs.run`, one configuration (flags and/or ``--config FILE``), Meta-LoRA
  against standard retraining (SR), then fine-tuning on the unseen task; prints a summary
  (``--json`` for scripts) and writes the run record (:mod:`linmeta.engine.results` layout).
- ``sweep``: :func:`linmeta.engine.runs.sweep_to_folder`, a grid from a spec file (:mod:`linmeta.engine.config`),
  one compiled program per chunk of configurations of one shape (:mod:`linmeta.engine.sweep`), a progress
  bar on stderr, results written as it goes; started again on the same folder it skips finished
  work.
- ``verify``: the claim checks of every registered family (its theory document: docs/theory.md,
  docs/bilevel.md, docs/representation.md, docs/difference.md, and a plugin's)
  (:mod:`linmeta.front.verify`).
- ``plot``: :func:`linmeta.front.plotting.plot_results`, figures from a stored run or sweep folder,
  without recomputing.
- ``theory``: :func:`linmeta.front.report.theory`, the closed forms of :mod:`linmeta.core.theory` for one
  problem (claims C1, C2, C4, C6).

Exit codes: 0 done; 1 ``verify`` found a failing check; 2 bad input (sizes out of range, a broken
truth file, an unknown solver, a run that diverged, an unwritable folder), with one line on stderr
naming the problem and the allowed values; 3 ``sweep`` finished but some configurations diverged
(they are in the table, flagged); 130 interrupted.
Float64 is on by default (``--float32`` to run in single precision).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

from linmeta.core.version import __version__
from linmeta.engine import claims, compile_cache, families, protocols, runs
from linmeta.engine.config import PARAMETERS, load_run_config, merge, parse_count_or_inf
from linmeta.engine.results import MANIFEST, RESULTS_CSV, TRAJ_DIR, load_sweep, to_jsonable
from linmeta.engine.runs import format_value
from linmeta.engine import sweep
from linmeta.front import plotting
from linmeta.front.report import theory as theory_report

__all__ = ["main", "build_parser"]

PROG = "linmeta"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit code 2) instead of the usage block."""

    def error(self, message):
        message = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


_FMT = argparse.RawDescriptionHelpFormatter


# ----------------------------------------------------------------------------- helpers
def _defaults() -> dict:
    return dict(sweep.DEFAULTS)


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _arg_type(kind: str, key: str):

    if kind == "count":
        def parse(text):
            try:
                return parse_count_or_inf(text, key)
            except ValueError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        parse.__name__ = key
        return parse
    if kind == "int":
        return int
    if kind == "float":
        return float
    return str


def _add_config_flags(parser, keys=None, *, with_defaults: dict,
                      title="configuration (flags override --config; defaults shown)"):
    """One flag per configuration key (``--noise-std`` for ``noise_std``); unset flags stay None."""

    group = parser.add_argument_group(title)
    keys = list(with_defaults) if keys is None else keys
    for key in keys:
        kind, text = PARAMETERS.get(key, ("str", key))
        meta = {"int": "INT", "count": "INT|inf", "float": "X", "choice": "NAME"}.get(kind, "V")
        group.add_argument(_flag(key), dest=key, type=_arg_type(kind, key), default=None,
                           metavar=meta, help=f"{text} (default: {with_defaults.get(key)})")


@contextlib.contextmanager
def _precision(float32: bool):
    """Float64 unless ``--float32``; the previous setting is restored afterwards (main() is
    callable in-process)."""
    import jax

    old = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", not float32)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", old)


def _wrap_keys(defaults) -> str:
    import textwrap

    return "\n    ".join(textwrap.wrap(", ".join(defaults), 92))


def _protocol_keys_text() -> str:
    """The configuration keys of every registered protocol (protocols with the same keys share
    a line), for ``linmeta sweep --help``."""

    by_keys: dict[tuple, list[str]] = {}
    for name in protocols.names():
        by_keys.setdefault(tuple(protocols.get(name).defaults), []).append(name)
    return "\n".join(f"  protocol = {' or '.join(map(repr, names))}:\n    {_wrap_keys(keys)}"
                     for keys, names in by_keys.items())


def _claims_text() -> str:
    """The registered claims, by family (e.g. ``C1-C8, M1-M6, R1-R7``), read from the registry."""

    parts = []
    for family in claims.family_names():
        ids = claims.family_claims(family)
        if ids:
            parts.append(ids[0] if len(ids) == 1 else f"{ids[0]}-{ids[-1]}")
    return ", ".join(parts)


def _family_docs_text() -> str:
    """The registered families' theory documents, e.g. ``docs/theory.md, docs/bilevel.md``."""
    return ", ".join(dict.fromkeys(f.doc for f in families.all_families()))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _fmt(x, digits=4) -> str:

    return format_value(x, digits)


# ----------------------------------------------------------------------------- run
_RUN_EPILOG = """\
examples:
  linmeta run                                   # defaults: d=10 k=1 T=3 N=5000 n=100, 1000 ft steps
  linmeta run --ft-steps 10000                  # the paper's protocol (10000 fine-tuning steps)
  linmeta run --T 5 --k 2 --outer-steps 500 --ft-steps 500 --out results/run-T5
  linmeta run --config run.toml --seed 3 --json # flags override the file
  linmeta run --truth my_truth.npz --N inf      # your own A*, U* (and U_new) from an .npz

A config file (TOML or JSON) holds the same keys as the flags, with underscores:
  # run.toml
  d = 10
  k = 1
  T = 3
  noise_std = 0.01
  truth = "my_truth.npz"   # optional, relative to the file

Writes OUT/record.json (config, seed, truth, results, theory, divergence flags, versions of
linmeta/JAX/NumPy, dtype, device, timings) and OUT/trajectories.npz. The record can be passed back
as --config to repeat a run. The run id names the configuration, the dtype (-float32) and a truth
file's contents (-truth<sha256 prefix>): a folder holding the same run is reused (its record is
printed, nothing is recomputed; --overwrite recomputes), one holding another run is refused.
A run that diverges (NaN/inf, or a loss that grew 1000-fold) writes nothing and exits with 2,
naming the stage, the iteration and the setting to change.
"""


def _cmd_run(args) -> int:

    file_cfg, truth_path = ({}, None) if args.config is None else load_run_config(
        args.config, check_truth=args.truth is None)
    user = merge(file_cfg, {k: getattr(args, k, None) for k in _defaults()},
                 dict(args.set or ()))
    plan = runs.plan(user, truth=args.truth if args.truth is not None else truth_path)
    out = None if args.no_write else (args.out or os.path.join("results", f"run-{plan.id}"))
    record = runs.run(plan, out=out, overwrite=args.overwrite,
                      command=["linmeta"] + list(args.argv or []))
    if args.json:
        print(json.dumps(to_jsonable({k: v for k, v in record.items()
                                      if k not in ("trajectories", "reused")}), indent=2))
    else:
        _print_run_summary(record)
    return 0


def _print_run_summary(record: dict) -> None:
    """The run's summary: the lines its protocol writes for it
    (:func:`linmeta.engine.runs.summary_lines`), then where it is stored and how long it took."""

    for line in runs.summary_lines(record):
        print(line)
    _print_run_end(record)


def _print_run_end(record: dict) -> None:
    """The last lines of a run summary: divergence, where it is stored, time, files."""
    div = record.get("divergence") or {}
    if div.get("stages"):
        print(f"  diverged: {div.get('message')}")
    files = record.get("files") or {}
    if record.get("reused"):
        print(f"  stored in {files.get('record')} (created {record.get('created')}); not "
              "recomputed: pass --overwrite to run it again")
        return
    t = record["timings"]
    print(f"  time: {t['total_seconds']:.2f} s total, {t['run_batch_seconds']:.2f} s in run_batch "
          f"(compile included)")
    if files:
        print(f"  wrote {files['record']} and {files['trajectories']}")


def _key_value(text: str):
    """``KEY=VALUE`` of ``--set``: the value as TOML reads it (int, float, bool, "string"), else
    the bare text."""
    import tomllib

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE, got {text!r}")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return key.strip(), parsed


# ----------------------------------------------------------------------------- sweep
_SWEEP_EPILOG = """\
example spec: examples/t_sweep.toml in the source tree (TOML; JSON with the same structure works
too), the paper's T sweep with 5 seeds:
  name = "T sweep (paper protocol)"
  seeds = 5                 # seeds 0..4 (or a list, e.g. [0, 7, 9])
  # chunk_size = 16         # optional: configurations per compiled call
  # truth = "my_truth.npz"  # optional: your own ground truth (path relative to the spec)
  [fixed]
  d = 10
  N = 5000
  n = 100
  noise_std = 0.01
  ft_steps = 10000
  [grid]
  T = [2, 3, 5]

examples:
  linmeta sweep examples/t_sweep.toml --out results/t_sweep
  linmeta sweep examples/t_sweep.toml --out results/t_sweep   # again: skips finished work
  linmeta plot results/t_sweep

Writes OUT/results.csv (one row per configuration x seed, in grid order), OUT/trajectories/<id>.npz
and OUT/manifest.json (spec, versions, device, dtype, times, finished ids, per-chunk timings), each
file atomically after every chunk. Interrupt it at any time and run the same command again.

Exit code: 0 when every configuration converged; 3 when the sweep finished but some configurations
diverged (NaN/inf, or a recorded loss that grew 1000-fold): they are kept in the table with their
ml_diverged, sr_diverged, ft_diverged columns set, and a summary on stderr names them; 2 for bad
input; 130 when interrupted (what is written stays; run the command again to resume).

The keys allowed in [fixed] and [grid] depend on the protocol: the key protocol (default
"paper") chooses it, and protocol = "bilevel" (or "representation", ...) changes every other key.
The keys of each registered protocol (defaults and meaning of the paper's: 'linmeta run --help'):
{keys}
"""


def _cmd_sweep(args) -> int:

    out = os.path.abspath(args.out)
    try:
        summary = runs.sweep_to_folder(args.spec, out, truth=args.truth,
                                       chunk_size=args.chunk_size,
                                       progress=not args.no_progress,
                                       on_chunk=lambda store: _SWEEP_HOOK and _SWEEP_HOOK(store))
    except KeyboardInterrupt:
        if not os.path.exists(os.path.join(out, MANIFEST)):
            print(f"{PROG} sweep: interrupted before anything was saved", file=sys.stderr)
            return 130
        manifest, rows = load_sweep(out)
        print(f"{PROG} sweep: interrupted; {len(rows)} of {manifest.get('planned')} "
              f"configurations are saved in {out}; run the same command again to resume",
              file=sys.stderr)
        return 130
    n, reused = summary["planned"], summary["reused"]
    if not args.quiet:
        print(f"sweep finished: {n} configurations ({n - reused} computed now, {reused} from an "
              f"earlier run) in {out}")
        print(f"  table {os.path.join(out, RESULTS_CSV)}; trajectories "
              f"{os.path.join(out, TRAJ_DIR)}/<id>.npz; manifest {os.path.join(out, MANIFEST)}")
    diverged = summary["diverged"]
    if diverged:
        by_stage = {}
        for d in diverged:
            for words in d["words"]:
                by_stage[words] = by_stage.get(words, 0) + 1
        stages = ", ".join(f"{s} {c}" for s, c in by_stage.items())
        ids = ", ".join(d["id"] for d in diverged[:5]) + (", ..." if len(diverged) > 5 else "")
        print(f"{PROG} sweep: {len(diverged)} of {n} configurations diverged ({stages}; NaN/inf "
              f"or a recorded loss that grew {runs.BLOWUP_FACTOR:g}-fold); they are in the table "
              f"with their *_diverged columns set (ids {ids}); try smaller learning rates "
              f"(exit code 3)", file=sys.stderr)
        return 3
    return 0


# Test hook: called with the SweepStore after each stored chunk (tests raise from it to simulate a
# kill halfway). Not part of the public interface.
_SWEEP_HOOK = None


# ----------------------------------------------------------------------------- theory
_THEORY_EPILOG = """\
examples:
  linmeta theory                                 # d=10 k=1 T=3, truth sampled with truth_seed 0
  linmeta theory --d 20 --k 2 --T 5 --rank 2 --n 1000
  linmeta theory --truth my_truth.npz --json

Prints, from the ground truth alone (no training):
  C1  SR minimiser A_SR = A* + Rbar: its error ||Rbar||_F
  C2  SR residual U_new U_new^T - Rbar on each unseen task: spectrum, rank vs (T+1)k, and the
      best rank-r adapter error (asymmetric U V^T: Eckart-Young; PSD U U^T) for r = 1..rank
  C3/C4/C5  what Meta-LoRA's base should be for this T
  C6  adapter degrees of freedom r(2d - r) and the predicted fine-tuning error sigma^2 dof / n
The truth is the one 'linmeta run' uses for the same --truth-seed (or --truth file).
"""


def _cmd_theory(args) -> int:

    user = merge({k: getattr(args, k, None) for k in ("d", "k", "T", "n", "noise_std",
                                                      "truth_seed")})
    report = theory_report(user, truth=args.truth, rank=args.rank)
    if args.json:
        print(json.dumps(to_jsonable(report), indent=2))
    else:
        _print_theory(report)
    return 0


def _print_theory(rep: dict) -> None:
    d, k, T, r = rep["d"], rep["k"], rep["T"], rep["rank"]
    t = rep["truth"]
    src = (f"truth file {t['path']}" if t["source"] == "file"
           else f"sampled truth (truth_seed={t['truth_seed']})")
    print(f"linmeta theory: d={d} k={k} T={T}, {rep['n_unseen']} unseen task(s), {src}, "
          f"{rep['dtype']}")
    print(f"C1  SR minimiser error ||A_SR - A*||_F = ||Rbar||_F = {_fmt(rep['sr_base_error'])} "
          f"(relative {_fmt(rep['sr_base_rel_error'])})")
    import numpy as np

    eps = float(np.finfo(np.dtype(rep["dtype"])).eps)
    for j, u in enumerate(rep["unseen"], 1):
        tol = d * eps * max(abs(x) for x in u["eigenvalues"])
        eig = ", ".join("0" if abs(x) <= tol else _fmt(x, 3) for x in u["eigenvalues"])
        print(f"C2  SR residual on unseen task {j}: rank {u['rank']} (generic (T+1)k = "
              f"{(T + 1) * k}, capped at d: {rep['generic_residual_rank']}), "
              f"{u['n_positive']} positive / {u['n_negative']} negative eigenvalues")
        print(f"      eigenvalues: [{eig}]")
    print("    best rank-r adapter error on the SR base (mean over unseen tasks):")
    print(f"      {'r':>3s}  {'U V^T (Eckart-Young)':>22s}  {'U U^T (PSD)':>14s}")
    for i, rr in enumerate(rep["ranks"]):
        ea = sum(u["bias_asymmetric"][i] for u in rep["unseen"]) / len(rep["unseen"])
        ep = sum(u["bias_psd"][i] for u in rep["unseen"]) / len(rep["unseen"])
        mark = "  <- --rank" if rr == r else ""
        print(f"      {rr:>3d}  {_fmt(ea):>22s}  {_fmt(ep):>14s}{mark}")
    print(f"C3-5 {rep['meta_lora_note']}")
    print(f"C6  rank-{r} adapter: dof r(2d-r) = {rep['dof']}; predicted fine-tuning error "
          f"sigma^2 dof/n = {_fmt(rep['predicted_ft_error'])} (n={rep['n']}, "
          f"sigma={rep['noise_std']}); full fine-tuning dof d^2 = {rep['full_ft_dof']}: "
          f"{_fmt(rep['predicted_full_ft_error'])}")


# ----------------------------------------------------------------------------- plot
_PLOT_EPILOG = """\
examples:
  linmeta plot results/t_sweep                  # a sweep folder (manifest.json, results.csv)
  linmeta plot results/bilevel_K                # any protocol: the figures it declares
  linmeta plot results/run-1a2b3c4d --out figs  # a run folder (record.json)

Reads only stored files (no computation). What is drawn comes from the protocol of the results
(its plots: result columns and trajectories, labels, theory levels). A sweep gives
  <curves>.{png,pdf}:       each of the protocol's trajectory figures (the paper's
                            finetune_curves: test loss against fine-tuning step, Meta-LoRA vs
                            SR; bilevel: retrain_curves, base_error_curves; representation:
                            distance_curves, objective_curves), one panel per grid point, mean
                            line with a min-max band over seeds;
  final_vs_<key>.{png,pdf}: the protocol's final values against each swept key, one row of
                            panels per value of the other swept keys (and of the fine-tuning rank,
                            never pooled), dashed: closed forms.
A run gives one figure with every trajectory panel of its protocol (the paper's: finetune_curves).
A protocol with nothing to plot is one error line (exit code 2).
"""


def _cmd_plot(args) -> int:

    paths = plotting.plot_results(args.results_dir, out_dir=args.out, formats=tuple(args.format))
    if args.json:
        print(json.dumps([str(p) for p in paths]))
    else:
        for p in paths:
            print(p)
    return 0


# ----------------------------------------------------------------------------- verify
_VERIFY_EPILOG = """\
examples:
  linmeta verify --quick                    # every registered claim ({claims})
  linmeta verify --full                     # the documented full checks
  linmeta verify --quick --claims bilevel   # one family's claims
  linmeta verify --tiny --claims C1,C3 --no-figures --json
Prints one row per claim, writes OUT/REPORT.md, OUT/verdicts.json and the figures (--out: see its
default above), and exits with 1 if a claim fails. Runs in float64.
{partial}
"""


def _verify_module():
    import importlib

    try:
        return importlib.import_module("linmeta.front.verify")
    except ModuleNotFoundError as e:
        if e.name == "linmeta.front.verify":  # not there yet; an import error inside it is a real bug
            return None
        raise


def _partial_report_rule() -> str:
    """The rule of partial verify runs (:data:`linmeta.front.verify.PARTIAL_RULE`), wrapped."""
    import textwrap

    verify = _verify_module()
    rule = getattr(verify, "PARTIAL_RULE", "")   # a stand-in module (tests) may have none
    return "\n".join(textwrap.wrap(rule, 96))


def _cmd_verify(args) -> int:
    verify = _verify_module()
    if verify is None:
        raise ValueError("linmeta verify is not available in this installation "
                         "(module linmeta.verify is missing)")
    return int(verify.run_from_args(args) or 0)


# ----------------------------------------------------------------------------- parser
_MAIN_EPILOG = """\
examples:
  linmeta theory --d 10 --k 1 --T 3
  linmeta run --outer-steps 500 --ft-steps 500
  linmeta sweep examples/t_sweep.toml --out results/t_sweep && linmeta plot results/t_sweep
  linmeta verify --quick
Run 'linmeta COMMAND --help' for the options of each command.
Exit codes: 0 done; 1 verify found a failing check; 2 bad input or a diverged run (one line on
stderr); 3 a sweep finished with diverged configurations (flagged in its table); 130 interrupted.
"""


def build_parser(command: str | None = "verify") -> argparse.ArgumentParser:
    """The argument parser. The verify options come from :mod:`linmeta.front.verify`, imported only when
    ``command`` is ``"verify"`` (so the other commands start without importing the claim checks)."""
    defaults = _defaults()
    parser = _Parser(prog=PROG, formatter_class=_FMT, allow_abbrev=False,
                     description="linmeta: meta-learning with low-rank adaptations on linear "
                                 "models, verified (Meta-LoRA vs standard retraining).",
                     epilog=_MAIN_EPILOG)
    parser.add_argument("--version", action="version", version=f"linmeta {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    def precision(p):
        p.add_argument("--float32", action="store_true",
                       help="compute in float32 (default: float64)")

    # run
    p = sub.add_parser("run", help="one configuration: Meta-LoRA vs SR, then fine-tuning",
                       description="Run one configuration: retrain with Meta-LoRA and with "
                                   "standard retraining (SR), fine-tune both bases on the unseen "
                                   "task, compare with the theory.",
                       epilog=_RUN_EPILOG, formatter_class=_FMT, allow_abbrev=False)
    p.add_argument("--config", metavar="FILE", help="TOML or JSON config file (or a record.json)")
    p.add_argument("--truth", metavar="FILE.npz",
                   help="ground truth: arrays A_star (d,d), U_star (T,d,k), U_new (m,d,k); sets d, "
                        "k, T")
    p.add_argument("--out", metavar="DIR",
                   help="output folder (default: results/run-<run id>; the id names the "
                        "configuration, the dtype and the truth)")
    p.add_argument("--no-write", action="store_true", help="print only, write no files")
    p.add_argument("--overwrite", action="store_true",
                   help="recompute and replace the run stored in --out (default: a folder holding "
                        "the same run is reused, one holding another run is refused)")
    p.add_argument("--json", action="store_true", help="print the run record as JSON")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", type=_key_value,
                   help="a configuration key of any protocol, e.g. --set outer_steps=200 "
                        "(repeatable; overrides --config and the flags)")
    precision(p)
    _add_config_flags(p, with_defaults=defaults)
    p.set_defaults(func=_cmd_run)

    # sweep
    p = sub.add_parser("sweep", help="a grid of configurations from a spec file (resumable)",
                       description="Run a grid of configurations from a TOML/JSON spec; shape "
                                   "groups run as compiled, vmapped chunks; results are written "
                                   "after every chunk and an interrupted sweep resumes.",
                       epilog=_SWEEP_EPILOG.format(keys=_protocol_keys_text()),
                       formatter_class=_FMT, allow_abbrev=False)
    p.add_argument("spec", metavar="SPEC", help="sweep spec file (.toml or .json)")
    p.add_argument("--out", metavar="DIR", required=True, help="output folder (created)")
    p.add_argument("--truth", metavar="FILE.npz", help="ground truth file (overrides the spec's)")
    p.add_argument("--chunk-size", type=int, metavar="INT",
                   help="configurations per compiled call (default: the spec's chunk_size, else "
                        "linmeta.sweep.default_chunk_size, a memory budget); a resumed sweep keeps "
                        "the size it started with")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--strict", action="store_true",  # kept for old scripts: exit 3 is the rule
                   help=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true", help="no summary on stdout")
    precision(p)
    p.set_defaults(func=_cmd_sweep)

    # verify
    claims_text = _claims_text()
    p = sub.add_parser("verify", help=f"check every claim of the theory ({claims_text})",
                       description="Run the claim checks of every registered family ("
                                   f"{_family_docs_text()}) and print one row per claim; exit "
                                   "code 1 if a claim fails.",
                       epilog=_VERIFY_EPILOG.format(claims=claims_text,
                                                    partial=_partial_report_rule()),
                       formatter_class=_FMT, allow_abbrev=False)
    verify = _verify_module() if command == "verify" else None
    if verify is not None:
        verify.add_arguments(p)  # float64 only: its tolerances are float64 ones (no --float32)
    p.set_defaults(func=_cmd_verify, float32=False)

    # plot
    p = sub.add_parser("plot", help="figures from a stored run or sweep folder",
                       description="Make figures from stored results (no recomputation).",
                       epilog=_PLOT_EPILOG, formatter_class=_FMT, allow_abbrev=False)
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="a folder written by run or sweep")
    p.add_argument("--out", metavar="DIR", help="figure folder (default: RESULTS_DIR/figures)")
    p.add_argument("--format", nargs="+", default=["png", "pdf"], choices=["png", "pdf", "svg"],
                   help="file formats (default: png pdf)")
    p.add_argument("--json", action="store_true", help="print the written paths as a JSON list")
    p.set_defaults(func=_cmd_plot, float32=False)

    # theory
    p = sub.add_parser("theory", help="closed-form predictions for a problem (no training)",
                       description="Closed-form predictions of the theory for one ground truth: "
                                   "SR minimiser error, SR residual spectrum and rank, rank-r "
                                   "bias, adapter dof and predicted fine-tuning error.",
                       epilog=_THEORY_EPILOG, formatter_class=_FMT, allow_abbrev=False)
    p.add_argument("--truth", metavar="FILE.npz", help="ground truth file (sets d, k, T)")
    p.add_argument("--rank", type=int, metavar="INT",
                   help="adapter rank r (default: k, or 3k when T = 2)")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    precision(p)
    _add_config_flags(p, ["d", "k", "T", "n", "noise_std", "truth_seed"], with_defaults=defaults,
                      title="problem (defaults shown; d, k, T come from --truth when given)")
    p.add_argument("--seed", dest="truth_seed", type=int, metavar="INT",
                   help="same as --truth-seed")
    p.set_defaults(func=_cmd_theory)

    for command_parser in sub.choices.values():  # every command: --no-compile-cache
        compile_cache.add_argument(command_parser)
    return parser


def _before_command(args) -> None:
    """Process-wide set-up shared by every command, after parsing and before the command runs:
    the persistent compilation cache (:mod:`linmeta.engine.compile_cache`; off with
    ``--no-compile-cache`` or ``LINMETA_NO_CACHE=1``)."""

    compile_cache.enable_from_args(args)


def main(argv=None) -> int:
    """Entry point of the ``linmeta`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(next((a for a in argv if not a.startswith("-")), None))
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help / --version (0) or a one-line usage error (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    if args.command is None:
        parser.print_help()
        return 2
    args.argv = argv
    where = f"{PROG} {args.command}"
    try:
        _before_command(args)
        with _precision(getattr(args, "float32", False)):
            return int(args.func(args) or 0)
    except ValueError as e:
        print(f"{where}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `linmeta theory | head`: stop quietly, like other tools
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except OSError as e:
        text = e.strerror if e.strerror and not e.filename else str(e)
        print(f"{where}: error: {_one_line(text)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
