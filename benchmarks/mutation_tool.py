"""Mutation testing with cosmic-ray, ``linmeta verify`` as the test.

Beside the hand-written audit (:mod:`benchmarks.mutation_audit`: bugs that mean something), this
runs a real mutation tool: cosmic-ray generates every operator mutant of a module (``+`` -> ``-``,
``<`` -> ``<=``, a constant changed, ``or`` -> ``and``, ...), and each mutant is run against
``linmeta verify``; it is killed when a verify row fails or a claim raises (verify red).

Configurations (``benchmarks/cosmic-ray/*.toml``, each a cosmic-ray config plus a
``[linmeta-mutation]`` table): ``closed-forms`` mutates every closed-form module in full (the
core's theory, losses, adapters and metrics, each family's theory: about 4,500 mutants),
``solvers`` a random sample of the solver modules (retraining, fine-tuning, each family's
methods). Mutants that a verify row should see but no claim checks are explained per mutant in
``benchmarks/cosmic-ray/equivalent/*.toml`` (equivalent: no result can change) or killed by a
test of the suite.

Running every mutant through the whole verify command (cosmic-ray's own ``exec``, ``--plain``) is
about 25 s a mutant, days for all of them on 2 cores. :mod:`benchmarks.mutation_runner` reaches
the same decisions in about 3-5 s a mutant: forked workers with the mutant served from memory,
only the claims that execute the mutated statement, the first failing row decides; ``confirm``
checks a random sample of its decisions against ``cosmic-ray apply`` and the plain command.

Usage::

    pip install cosmic-ray coverage        # the tools (not dependencies of linmeta)
    python -m benchmarks.mutation_tool run all       # every configuration
    python -m benchmarks.mutation_tool run benchmarks/cosmic-ray/closed-forms.toml [--workers 2]
    python -m benchmarks.mutation_tool run CONFIG --module linmeta/core/theory.py   # one module
    python -m benchmarks.mutation_tool recheck SESSION --setting quick --tests
                                           # the survivors again, on the tree as it is now
    python -m benchmarks.mutation_tool survivors SESSION [--module M] [--open]
    python -m benchmarks.mutation_tool confirm SESSION -n 20   # the runner vs plain cosmic-ray
    python -m benchmarks.mutation_tool report SESSION          # the tables of a (partial) run

``run`` copies the working tree (tracked and untracked-but-not-ignored files) to a scratch folder
(``$TMPDIR/linmeta-cr/<config>``; the working tree is never touched; an interrupted run resumes),
runs ``cosmic-ray init`` there, keeps the sample, runs the mutants at ``--tiny`` and writes
``benchmarks/results/mutation_tool_<config>.md`` and ``.json``: per module the mutants, killed by
verify in the run, killed by verify on a recheck (at ``--quick``, with the rows added since),
killed by a test only, equivalent (with the reason), not killed; and every survivor with its diff.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "benchmarks" / "cosmic-ray"
RESULTS = REPO / "benchmarks" / "results"
EQUIVALENT = CONFIGS / "equivalent"   # one TOML per module: [mutant] key = "why"
MARK = "LINMETA-VERIFY:"


# ----------------------------------------------------------------------------- the test command
def check(setting: str, claims: str, timeout: float) -> int:
    """``linmeta verify`` as a mutation test: prints the failing rows; exit 0 when every row
    passes, 1 when some row fails, 3 when verify produced no report (crash, import error)."""
    out = Path(os.environ.get("LINMETA_MUTATION_OUT", "_mutation_verify"))
    cmd = [sys.executable, "-m", "linmeta", "verify", f"--{setting}", "--json", "--no-figures",
           "--out", str(out)] + (["--claims", claims] if claims else [])
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"{MARK} timeout after {timeout:g} s", flush=True)
        return 3
    try:
        rows = json.loads(p.stdout)["verdicts"]
    except (json.JSONDecodeError, KeyError, TypeError):
        tail = " | ".join(p.stderr.strip().splitlines()[-3:])
        print(f"{MARK} no report (exit {p.returncode}): {tail}", flush=True)
        return 3
    failing = [f"{v['claim']}: {v['quantity']}" for v in rows if not v["passed"]]
    print(f"{MARK} {len(failing)} failing rows of {len(rows)}", flush=True)
    for f in failing:
        print(f"{MARK} FAIL {f}", flush=True)
    return 1 if failing else 0


# ----------------------------------------------------------------------------- a run
def load(config: Path) -> dict:
    with open(config, "rb") as f:
        return tomllib.load(f)


def _files(repo: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=repo,
                         check=True, capture_output=True).stdout.decode()
    return [f for f in out.split("\0") if f and (repo / f).is_file()]


def scratch_copy(repo: Path, dest: Path) -> None:
    for f in _files(repo):
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / f, dest / f)


def _tool(name: str) -> str:
    """A cosmic-ray executable: beside this Python, on PATH, or $COSMIC_RAY_BIN/<name>."""
    for folder in (os.environ.get("COSMIC_RAY_BIN"), str(Path(sys.executable).parent)):
        if folder and (Path(folder) / name).exists():
            return str(Path(folder) / name)
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: pip install cosmic-ray (or set COSMIC_RAY_BIN to "
                         "the folder of its executables)")
    return found


def write_config(config: Path, path: Path, setting: str, timeout: float, python: str,
                 modules=None) -> None:
    """The committed cosmic-ray ``config`` with its test command at ``setting``, run by ``python``
    (the environment that has linmeta's dependencies); ``modules``: a subset of its modules."""
    cfg = load(config)
    test = f"{python} -m benchmarks.mutation_tool check --setting {setting} --timeout {timeout:g}"
    text = config.read_text()
    old = cfg["cosmic-ray"]["test-command"]
    text = text.replace(json.dumps(old), json.dumps(test))
    text = text.replace(f"timeout = {cfg['cosmic-ray']['timeout']}", f"timeout = {timeout + 60:g}")
    if modules:
        have = cfg["cosmic-ray"]["module-path"]
        bad = [m for m in modules if m not in have]
        if bad:
            raise SystemExit(f"--module {', '.join(bad)}: not in {config.name} ({', '.join(have)})")
        text = text.replace("module-path = [" + ", ".join(json.dumps(m) for m in have) + "]",
                            "module-path = [" + ", ".join(json.dumps(m) for m in modules) + "]")
    path.write_text(text)
    assert load(path)["cosmic-ray"]["test-command"] == test
    assert not modules or load(path)["cosmic-ray"]["module-path"] == list(modules)


def sample_pending(db_path: Path, n: int, seed: int) -> tuple[int, int]:
    """Mark all but ``n`` random pending mutants as skipped; returns (total, kept)."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with use_db(str(db_path), WorkDB.Mode.open) as db:
        pending = sorted(item.job_id for item in db.pending_work_items)
        keep = set(random.Random(seed).sample(pending, min(n, len(pending))))
        drop = [j for j in pending if j not in keep]
        if drop:
            db.set_multiple_results(drop, WorkResult(output="not sampled",
                                                     worker_outcome=WorkerOutcome.SKIPPED))
    return len(pending), len(keep)


def all_modules() -> list[str]:
    """Every module of every configuration (the coverage map covers them all)."""
    out = []
    for c in sorted(CONFIGS.glob("*.toml")):
        out += [m for m in load(c)["cosmic-ray"]["module-path"] if m not in out]
    return out


def run(config: Path, *, setting: str, sample: int | None, seed: int, work: Path | None,
        timeout: float, python: str, modules=None, workers: int = 2,
        plain: bool = False) -> Path:
    """One configuration: a scratch copy of the working tree, ``cosmic-ray init``, the sample,
    then the mutants through :mod:`benchmarks.mutation_runner` (default) or, with ``plain``,
    through ``cosmic-ray exec`` and the whole verify per mutant."""
    cfg = load(config)
    lm = cfg["linmeta-mutation"]
    name = config.stem
    sample = lm.get("sample") if sample is None else sample
    root = Path(os.environ.get("TMPDIR", "/tmp")) / "linmeta-cr"
    work = Path(work) if work else root / name
    session = work / "session.sqlite"
    env = dict(os.environ, PYTHONPATH=str(work), PYTHONDONTWRITEBYTECODE="1",
               LINMETA_MUTATION_OUT=str(work / "_mutation_verify"))
    if not session.exists():
        work.mkdir(parents=True, exist_ok=True)
        scratch_copy(REPO, work)
        write_config(config, work / "cosmic-ray.toml", setting, timeout, python, modules)
        subprocess.run([_tool("cosmic-ray"), "init", "cosmic-ray.toml", "session.sqlite"],
                       cwd=work, env=env, check=True)
        if sample:
            total, kept = sample_pending(session, int(sample), seed)
            print(f"{name}: {kept} of {total} mutants sampled (seed {seed})", flush=True)
    t0 = time.perf_counter()
    if plain:
        subprocess.run([_tool("cosmic-ray"), "exec", "cosmic-ray.toml", "session.sqlite"],
                       cwd=work, env=env, check=True)
    else:
        subprocess.run([python, "-m", "benchmarks.mutation_tool", "exec-fast", "session.sqlite",
                        "--setting", setting, "--workers", str(workers),
                        "--coverage", str(work / f"coverage-{setting}.json"),
                        *[a for m in all_modules() for a in ("--file", m)]],
                       cwd=work, env=env, check=True)
    rel = str(config.relative_to(REPO)) if config.is_relative_to(REPO) else str(config)
    meta = dict(config=rel, setting=setting, sample=sample, seed=seed, plain=plain,
                seconds=round(time.perf_counter() - t0, 1), date=time.strftime("%Y-%m-%d %H:%M"),
                command=" ".join(["python -m benchmarks.mutation_tool run", rel] +
                                 [f"--module {m}" for m in modules or ()] +
                                 ([f"--setting {setting}"] if setting != "tiny" else []) +
                                 (["--plain"] if plain else []) +
                                 ([f"--sample {sample} --seed {seed}"] if sample else [])))
    return write_report(session, name, meta)


# ----------------------------------------------------------------------------- survivors again
# Test files that exercise each mutated module (the "killed by a test" column).
TESTS = {
    "linmeta/core/theory.py": ["tests/test_theory.py", "tests/test_verify_power.py"],
    "linmeta/core/losses.py": ["tests/test_theory.py", "tests/test_data.py"],
    "linmeta/core/lora.py": ["tests/test_theory.py", "tests/test_finetune.py"],
    "linmeta/core/metrics.py": ["tests/test_metrics.py", "tests/test_maml.py"],
    "linmeta/families/paper/theory.py": ["tests/test_paper.py", "tests/test_theory.py"],
    "linmeta/families/bilevel/theory.py": ["tests/test_bilevel.py"],
    "linmeta/families/representation/theory.py": ["tests/test_rep_core.py",
                                                   "tests/test_mutants_representation.py",
                                                   "tests/test_rep_methods.py"],
    "linmeta/families/difference/theory.py": ["tests/test_difference_core.py"],
    # the solver sample's modules
    "linmeta/methods/meta_lora.py": ["tests/test_meta_lora.py"],
    "linmeta/methods/_matrix_free.py": ["tests/test_meta_lora.py"],
    "linmeta/methods/finetune.py": ["tests/test_finetune.py"],
    "linmeta/methods/landscape.py": ["tests/test_landscape.py"],
    "linmeta/families/difference/methods.py": ["tests/test_difference_core.py",
                                               "tests/test_difference_memory.py"],
}


def recheck(session: Path, *, setting: str, label: str, tests: bool, workers: int,
            python: str, only=None, claims=None, every: bool = False, keys=None,
            warm: bool = True) -> dict:
    """Every survivor of ``session`` (not stated equivalent) again, on a scratch copy of the
    working tree as it is now (new rows, new tests), through :func:`benchmarks.mutation_runner.
    recheck` at ``setting`` (and, with ``tests``, the module's test files of :data:`TESTS` for
    those no row kills). Stored beside the session as ``recheck-<label>.json``, where
    :func:`write_report` finds it."""
    eq = _equivalent()
    surv = [r for r in records(session) if r["outcome"] in ("survived", "timeout")
            and r["key"] not in eq and (only is None or r["module"] in only)
            and (keys is None or r["key"] in keys)]
    for old in ([] if every else sorted(session.parent.glob("recheck-*.json"))):
        # killed on an earlier recheck: not again (``every``: all survivors, this tree only); a
        # timeout decided nothing
        done = json.loads(old.read_text())
        surv = [r for r in surv if not ([v for v in done.get(r["key"], {}).get("verify", [])
                                         if v != "timeout"]
                                        or done.get(r["key"], {}).get("tests"))]
    root = session.parent.parent
    work = root / f"recheck-{label}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    scratch_copy(REPO, work)
    (work / "survivors.json").write_text(json.dumps(surv))
    env = dict(os.environ, PYTHONPATH=str(work), PYTHONDONTWRITEBYTECODE="1")
    out = session.parent / f"recheck-{label}.json"
    subprocess.run([python, "-m", "benchmarks.mutation_tool", "exec-recheck", "survivors.json",
                    "--setting", setting, "--workers", str(workers), "--out", str(out),
                    "--coverage", str(root / f"coverage-{label}-{setting}.json"),
                    *(["--tests"] if tests else []), *([] if warm else ["--no-warm"]),
                    *[a for c in claims or () for a in ("--claims", c)],
                    *[a for m in all_modules() for a in ("--file", m)]],
                   cwd=work, env=env, check=True)
    shutil.rmtree(work, ignore_errors=True)
    return json.loads(out.read_text())


def confirm(session: Path, *, n: int, seed: int, setting: str, python: str) -> dict:
    """The runner's decisions against cosmic-ray's own way, on ``n`` mutants drawn at random from
    the run (half of them survivors): ``cosmic-ray apply`` writes the mutant into a scratch copy
    of the tree the run was made on, then the plain test command (``check``: the whole ``linmeta
    verify`` at ``setting``, every claim) decides. Stored beside the session (``confirm.json``)."""
    recs = [r for r in records(session) if r["outcome"] != "error"]
    rng = random.Random(seed)
    surv = [r for r in recs if r["outcome"] == "survived"]
    kill = [r for r in recs if r["outcome"] != "survived"]
    pick = rng.sample(surv, min(len(surv), n // 2)) + rng.sample(kill, min(len(kill), n - n // 2))
    base = session.parent
    out = {}
    for r in pick:
        work = base.parent / "confirm"
        if work.exists():
            shutil.rmtree(work)
        shutil.copytree(base, work, ignore=shutil.ignore_patterns(   # the tree of the run
            "session.sqlite*", "jobs*", "recheck-*.json", "confirm.json", "_mutation_verify"))
        env = dict(os.environ, PYTHONPATH=str(work), PYTHONDONTWRITEBYTECODE="1",
                   LINMETA_MUTATION_OUT=str(work / "_mutation_verify"))
        subprocess.run([_tool("cosmic-ray"), "apply", r["module"], r["operator"],
                        str(r["occurrence"])], cwd=work, env=env, check=True,
                       capture_output=True)
        t0 = time.perf_counter()
        p = subprocess.run([python, "-m", "benchmarks.mutation_tool", "check", "--setting",
                            setting], cwd=work, env=env, capture_output=True, text=True)
        plain = "survived" if p.returncode == 0 else "killed"
        runner = "survived" if r["outcome"] == "survived" else "killed"
        out[r["key"]] = dict(runner=runner, plain=plain, agree=plain == runner,
                             seconds=round(time.perf_counter() - t0, 1))
        print(f"{r['key']}: runner {runner}, plain verify {plain}", flush=True)
    shutil.rmtree(base.parent / "confirm", ignore_errors=True)
    (base / "confirm.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


# ----------------------------------------------------------------------------- the report
def _equivalent() -> dict:
    """``{mutant key: reason}`` from every ``benchmarks/cosmic-ray/equivalent/*.toml``."""
    out = {}
    for path in sorted(EQUIVALENT.glob("*.toml")):
        with open(path, "rb") as f:
            out.update(tomllib.load(f).get("mutant", {}))
    return out


def _key(m) -> str:
    return f"{m.module_path}:{m.start_pos[0]}:{m.operator_name}:{m.occurrence}"


def records(session: Path) -> list[dict]:
    """One record per mutant that ran: where, which operator, the outcome (survived, killed by a
    verify row, killed by a crash or timeout: no report, or only "run raised" rows), the failing
    rows and the diff."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    out = []
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            m = item.mutations[0]
            text = result.output or ""
            failing = [ln.split("FAIL ", 1)[1] for ln in text.splitlines()
                       if ln.startswith(f"{MARK} FAIL ")]
            checks = [f for f in failing if not f.endswith(": run raised")]
            if result.test_outcome is None or result.worker_outcome != WorkerOutcome.NORMAL:
                how = "error"
            elif result.test_outcome == TestOutcome.SURVIVED:
                how = "survived"
            elif checks:
                how = "killed by verify"
            elif "SyntaxError" in text:
                how = "not valid Python"   # the operator made code that does not parse
            elif f"{MARK} timeout" in text:
                how = "timeout"            # undecided: a mutant's endless loop, or a hang
            else:
                how = "killed by crash or timeout"
            out.append(dict(job=item.job_id, module=str(m.module_path), line=m.start_pos[0],
                            operator=m.operator_name, occurrence=m.occurrence, outcome=how,
                            rows=failing, diff=result.diff or "", key=_key(m)))
    return out


def _rechecks(session: Path) -> list[tuple[str, dict]]:
    return [(f.stem.removeprefix("recheck-"), json.loads(f.read_text()))
            for f in sorted(session.parent.glob("recheck-*.json"), key=lambda f: f.stat().st_mtime)]


def classify(recs: list[dict], rechecks, eq: dict) -> None:
    """Adds ``final`` to every record: "verify" (a verify row failed or a claim raised, in the
    run or a recheck), "test" (no verify row, a test), "equivalent", or "open"."""
    for r in recs:
        r["final"], r["how"] = "open", ""
        if r["outcome"] in ("killed by verify", "killed by crash or timeout"):
            r["final"], r["how"] = "verify", r["outcome"]
            continue
        if r["outcome"] == "error":
            r["final"], r["how"] = "error", "the runner could not run it"
            continue
        if r["outcome"] == "not valid Python":
            r["final"], r["how"] = "invalid", "the mutant does not parse (SyntaxError)"
            continue
        for label, got in rechecks:
            g = got.get(r["key"])
            # a timeout alone decides nothing: unmutated code hung too (threaded OpenBLAS)
            if g and [v for v in g.get("verify", []) if v != "timeout"]:
                r["final"], r["how"] = "verify", (f"verify --{g['setting']} ({label}): "
                                                  + "; ".join(g["verify"][:2]))
                break
        else:
            for label, got in rechecks:
                g = got.get(r["key"])
                if g and g.get("tests"):
                    r["final"], r["how"] = "test", f"test ({label}): " + "; ".join(g["tests"][:2])
                    break
            else:
                if r["key"] in eq:
                    r["final"], r["how"] = "equivalent", eq[r["key"]]
                elif r["outcome"] == "timeout" or any(
                        got.get(r["key"], {}).get("verify") == ["timeout"] for _, got in rechecks):
                    r["how"] = "timed out (undecided), no row or test decided it"


def generated(session: Path) -> dict:
    """``{module: mutants cosmic-ray generated}`` (run or not)."""
    from cosmic_ray.work_db import WorkDB, use_db

    out: dict = {}
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item in db.work_items:
            m = str(item.mutations[0].module_path)
            out[m] = out.get(m, 0) + 1
    return out


def write_report(session: Path, name: str, meta: dict) -> Path:
    recs = records(session)
    made = generated(session)
    classify(recs, _rechecks(session), _equivalent())
    cmd = meta["command"]
    lines = [f"# Mutation run `{name}` (cosmic-ray mutants, `linmeta verify` as the test)", "",
             f"`{cmd}` -- {meta['date']}" + (f", {meta['seconds'] / 60:.1f} min." if
                                              meta.get("seconds") else ".") +
             (f" {meta['note']}" if meta.get("note") else ""), "",
             "Mutants made by cosmic-ray, run by `benchmarks/mutation_runner.py` against the "
             f"verify rows of every claim that executes the mutated statement at "
             f"`--{meta['setting']}` (a mutant no claim executes survives without a run). "
             "Survivors were run again on the tree as it is now (`python -m "
             "benchmarks.mutation_tool recheck`): at `--quick`, with the rows and tests added "
             "since. *Verify* counts a failing row or a raising claim (verify red); *test*: no "
             "verify row, a test of the suite; *equivalent*: cannot change any result (reason "
             "given per mutant); a *timeout* alone decides nothing (unmutated code hung too, in C2, before "
             "OpenBLAS was started single-threaded): such a mutant stays open unless a row or a test decides it.", "",
             "Mutants: run of generated (a module not run in full says so).",
             "",
             "| module | mutants | killed by verify in the run | killed by verify on recheck | "
             "killed by a test only | equivalent | not valid Python | not killed | verify kills "
             "of the non-equivalent valid ones |", "|---|---|---|---|---|---|---|---|---|"]
    tot = dict(n=0, run=0, re=0, test=0, eq=0, bad=0, open=0)
    for mod in sorted({r["module"] for r in recs}):
        rs = [r for r in recs if r["module"] == mod]
        run_k = sum(r["outcome"] in ("killed by verify", "killed by crash or timeout") for r in rs)
        ver = sum(r["final"] == "verify" for r in rs)
        tst = sum(r["final"] == "test" for r in rs)
        eqn = sum(r["final"] == "equivalent" for r in rs)
        bad = sum(r["final"] == "invalid" for r in rs)
        opn = sum(r["final"] in ("open", "error") for r in rs)
        denom = len(rs) - eqn - bad
        share = f"{ver}/{denom} ({100 * ver / denom:.1f}%)" if denom else "-"
        n_made = made.get(mod, len(rs))
        size = f"{len(rs)}" if n_made == len(rs) else f"{len(rs)} of {n_made} (not all run)"
        lines.append(f"| `{mod}` | {size} | {run_k} | {ver - run_k} | {tst} | {eqn} | {bad} | "
                     f"{opn} | {share} |")
        for k, v in (("n", len(rs)), ("run", run_k), ("re", ver - run_k), ("test", tst),
                     ("eq", eqn), ("bad", bad), ("open", opn)):
            tot[k] += v
    denom = tot["n"] - tot["eq"] - tot["bad"]
    if denom:
        lines.append(f"| all | {tot['n']} | {tot['run']} | {tot['re']} | {tot['test']} | "
                     f"{tot['eq']} | {tot['bad']} | {tot['open']} | "
                     f"{tot['run'] + tot['re']}/{denom} "
                     f"({100 * (tot['run'] + tot['re']) / denom:.1f}%) |")
    for title, keep in (("Not killed (no verify row, no test, not shown equivalent)",
                         ("open", "error")),
                        ("Killed by a test only", ("test",)),
                        ("Not valid Python (cosmic-ray made code that does not parse)",
                         ("invalid",)),
                        ("Equivalent", ("equivalent",)),
                        ("Killed by verify on recheck", ("recheck",))):
        sel = [r for r in recs if (r["final"] in keep if keep != ("recheck",) else
                                   r["final"] == "verify" and r["outcome"] == "survived")]
        if not sel:
            continue
        lines += ["", f"## {title} ({len(sel)})", ""]
        for r in sel:
            change = [ln for ln in r["diff"].splitlines()
                      if ln.startswith(("-", "+")) and not ln.startswith(("---", "+++"))]
            lines += [f"- `{r['key']}`: {r['how'] or r['outcome']}", "",
                      "  ```diff", *[f"  {ln}" for ln in change], "  ```"]
    md = RESULTS / f"mutation_tool_{name}.md"
    RESULTS.mkdir(parents=True, exist_ok=True)
    md.write_text("\n".join(lines) + "\n")
    (RESULTS / f"mutation_tool_{name}.json").write_text(
        json.dumps(dict(meta=meta, records=recs), indent=1) + "\n")
    print(f"wrote {md}")
    return md


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="the test command (verify as a mutation test)")
    c.add_argument("--setting", choices=("tiny", "quick", "full"), default="quick")
    c.add_argument("--claims", default=None, help="default: every claim")
    c.add_argument("--timeout", type=float, default=900.0)
    f = sub.add_parser("exec-fast", help="run a session's pending mutants (benchmarks."
                       "mutation_runner), from the repository root the session was made in")
    f.add_argument("session", type=Path)
    f.add_argument("--setting", choices=("tiny", "quick"), default="tiny")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--workers", type=int, default=2)
    f.add_argument("--file", action="append", required=True,
                   help="a module the coverage map covers (repeatable)")
    f.add_argument("--coverage", type=Path, required=True, help="the coverage map's cache file")
    f.add_argument("--mem-gib", type=float, default=6.0, help="address-space cap per worker")
    f.add_argument("--limit", type=int, default=None, help="at most this many mutants")
    f.add_argument("--no-warm", action="store_true", help="every mutant in a fresh process")
    r = sub.add_parser("run", help="a mutation run of one configuration, or of every one ('all')")
    r.add_argument("config", help="a config file, or 'all': every benchmarks/cosmic-ray/*.toml")
    r.add_argument("--setting", choices=("tiny", "quick"), default="tiny")
    r.add_argument("--workers", type=int, default=2, help="mutants run side by side")
    r.add_argument("--plain", action="store_true",
                   help="cosmic-ray's own exec: every mutant through the whole verify command")
    r.add_argument("--sample", type=int, default=None,
                   help="mutants drawn at random (default: the config's sample, else all)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--work", type=Path, default=None,
                   help="scratch folder (default $TMPDIR/linmeta-cr-<name>; reused to resume)")
    r.add_argument("--timeout", type=float, default=900.0, help="seconds per verify run")
    r.add_argument("--module", action="append", default=None,
                   help="only this module of the config (repeatable)")
    r.add_argument("--python", default=sys.executable,
                   help="the Python that runs verify (default: this one)")
    k = sub.add_parser("recheck", help="the survivors again, on the tree as it is now")
    k.add_argument("session", type=Path)
    k.add_argument("--setting", choices=("tiny", "quick"), default="quick")
    k.add_argument("--label", default=None, help="name of this recheck (default: the setting)")
    k.add_argument("--tests", action="store_true", help="also the module's test files")
    k.add_argument("--module", action="append", default=None, help="only this module")
    k.add_argument("--workers", type=int, default=2)
    k.add_argument("--claims", action="append", default=None,
                   help="only these claims (ids or family names; default every claim)")
    k.add_argument("--python", default=sys.executable)
    k.add_argument("--no-warm", action="store_true",
                   help="every mutant in a fresh forked worker (no warm workers' code swap)")
    k.add_argument("--key", action="append", default=None,
                   help="only this mutant (its key, as the report prints it; repeatable)")
    k.add_argument("--all", action="store_true", dest="every",
                   help="every survivor, also those an earlier recheck killed")
    e = sub.add_parser("exec-recheck", help="(internal) the recheck in its scratch copy")
    e.add_argument("survivors", type=Path)
    e.add_argument("--setting", default="quick")
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--coverage", type=Path, required=True)
    e.add_argument("--file", action="append", required=True)
    e.add_argument("--tests", action="store_true")
    e.add_argument("--no-warm", action="store_true")
    e.add_argument("--claims", action="append", default=None)
    q = sub.add_parser("confirm", help="the runner's decisions against cosmic-ray apply + the "
                       "plain verify command, on a random sample")
    q.add_argument("session", type=Path)
    q.add_argument("-n", type=int, default=20)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--setting", choices=("tiny", "quick"), default="tiny")
    q.add_argument("--python", default=sys.executable)
    v = sub.add_parser("survivors", help="print the survivors of a session (JSON lines): key, "
                       "diff, and how each recheck so far decided it")
    v.add_argument("session", type=Path)
    v.add_argument("--module", action="append", default=None)
    v.add_argument("--open", action="store_true", help="only those nothing kills or explains yet")
    s = sub.add_parser("report", help="rewrite the report of a (partial) session")
    s.add_argument("session", type=Path)
    s.add_argument("--name", default=None)
    s.add_argument("--command", default=None, help="the command that made the run (for the "
                   "report's first line; default: the one stored with an earlier report)")
    s.add_argument("--minutes", type=float, default=None, help="the run's wall time")
    s.add_argument("--setting", default=None)
    s.add_argument("--note", default=None, help="a sentence for the report's first line")
    a = p.parse_args(argv)
    if a.cmd == "check":
        return check(a.setting, a.claims, a.timeout)
    if a.cmd == "exec-fast":
        from benchmarks import mutation_runner   # deferred: a worker must import linmeta itself

        counts = mutation_runner.run_session(
            a.session.resolve(), setting=a.setting, seed=a.seed, workers=a.workers,
            files=a.file, cache=a.coverage, mem_gib=a.mem_gib, timeout_factor=4.0,
            min_timeout=60.0, limit=a.limit, warm=not a.no_warm)
        print(f"{a.session}: {counts}")
        return 0
    if a.cmd == "run":
        configs = sorted(CONFIGS.glob("*.toml")) if a.config == "all" else [Path(a.config)]
        if a.config == "all" and (a.work or a.module):
            p.error("--work and --module name one configuration, not 'all'")
        for config in configs:
            run(config.resolve(), setting=a.setting, sample=a.sample, seed=a.seed, work=a.work,
                timeout=a.timeout, python=a.python, modules=a.module, workers=a.workers,
                plain=a.plain)
        return 0
    if a.cmd == "recheck":
        recheck(a.session.resolve(), setting=a.setting, label=a.label or a.setting,
                tests=a.tests, workers=a.workers, python=a.python, only=a.module,
                claims=a.claims, every=a.every, keys=a.key, warm=not a.no_warm)
        return 0
    if a.cmd == "exec-recheck":
        from benchmarks import mutation_runner   # deferred: a worker must import linmeta itself

        got = mutation_runner.recheck(
            json.loads(a.survivors.read_text()), setting=a.setting, seed=0, workers=a.workers,
            files=a.file, cache=a.coverage, mem_gib=6.0, tests=TESTS if a.tests else None,
            only=a.claims, save=a.out, warm=not a.no_warm)
        a.out.write_text(json.dumps(got, indent=1) + "\n")
        return 0
    if a.cmd == "confirm":
        got = confirm(a.session.resolve(), n=a.n, seed=a.seed, setting=a.setting,
                      python=a.python)
        agree = sum(v["agree"] for v in got.values())
        print(f"{agree}/{len(got)} decisions agree")
        return 0 if agree == len(got) else 1
    if a.cmd == "survivors":
        recs = records(a.session)
        classify(recs, _rechecks(a.session), _equivalent())
        for r in recs:
            if r["outcome"] == "survived" and (a.module is None or r["module"] in a.module) and (
                    not a.open or r["final"] in ("open", "error")):
                print(json.dumps(dict(key=r["key"], final=r["final"], how=r["how"],
                                      diff=r["diff"])))
        return 0
    name = a.name or a.session.parent.name
    previous = RESULTS / f"mutation_tool_{name}.json"   # the run's own description, if written
    meta = (json.loads(previous.read_text())["meta"] if previous.exists() else
            dict(setting="?", command=f"report {a.session}", seconds=0.0))
    if a.command:
        meta["command"] = a.command
    if a.minutes is not None:
        meta["seconds"] = 60.0 * a.minutes
    if a.setting:
        meta["setting"] = a.setting
    if a.note:
        meta["note"] = a.note
    write_report(a.session, name, dict(meta, date=time.strftime("%Y-%m-%d %H:%M")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
