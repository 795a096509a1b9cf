"""Mutation testing with cosmic-ray, ``linmeta verify`` as the test command.

Beside the hand-written audit (:mod:`benchmarks.mutation_audit`: bugs that mean something), this
runs a real mutation tool: cosmic-ray generates every operator mutant of a module (``+`` -> ``-``,
``<`` -> ``<=``, a constant changed, a ``break`` -> ``continue``, ...), applies each in turn and
runs the test command; a mutant is killed when the command exits non-zero. The test command is
``python -m benchmarks.mutation_tool check --setting S --claims FAMILY``: ``linmeta verify`` with
``--json``, which prints the failing rows and exits 1 when a row fails, and exits 3 when verify
did not produce a report (a crash or an import error: killed too, but not by a row; the report
counts those apart).

Configurations (``benchmarks/cosmic-ray/*.toml``, one per target, each a cosmic-ray config plus a
``[linmeta-mutation]`` table): ``closed-forms-<family>`` mutate the closed-form modules in full
(core theory, losses, adapters, metrics with the paper family; each family's theory with its own
verify), ``solvers-<family>`` the solver modules, of which ``sample`` mutants are drawn at random
(seed in the table). Mutation runs take long: one ``verify`` of the family per mutant (``--quick``
about 1.5 minutes for the paper family on 2 shared cores, ``--tiny`` about 1 minute), and the
closed-form modules have about 3,100 mutants (core theory 897, losses 207, lora 137, metrics 355,
paper theory 157, bilevel theory 253, representation theory 1,105) besides the 400 sampled solver
mutants: days on 2 cores. Not part of CI.

Usage::

    pip install cosmic-ray                 # the tool (not a dependency of linmeta)
    python -m benchmarks.mutation_tool run all      # every configuration (days on 2 cores)
    python -m benchmarks.mutation_tool run benchmarks/cosmic-ray/closed-forms-paper.toml
    python -m benchmarks.mutation_tool run benchmarks/cosmic-ray/solvers-paper.toml
    python -m benchmarks.mutation_tool run CONFIG --sample 30 --setting tiny --seed 1  # a sample
    python -m benchmarks.mutation_tool report SESSION.sqlite     # the table of a (partial) run
    python -m benchmarks.mutation_tool recheck SESSION.sqlite --claims paper --tests tests/x.py
                                           # the survivors again, on the tree as it is now

``run`` copies the working tree (tracked and untracked-but-not-ignored files) to a scratch folder,
runs ``cosmic-ray init``, marks all but the sampled mutants as skipped, runs ``cosmic-ray exec``
there (the working tree is never touched; an interrupted run resumes with the same ``--work``
folder), and writes ``benchmarks/results/mutation_tool_<name>.md`` and ``.json``: per module the
mutants run, killed by a verify row, killed by a crash or timeout, survived, and every survivor
with its diff (to be killed by a new row or test, or stated equivalent in
``benchmarks/results/mutation_tool_equivalent.toml``).
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
EQUIVALENT = RESULTS / "mutation_tool_equivalent.toml"
MARK = "LINMETA-VERIFY:"


# ----------------------------------------------------------------------------- the test command
def check(setting: str, claims: str, timeout: float) -> int:
    """``linmeta verify`` as a mutation test: prints the failing rows; exit 0 when every row
    passes, 1 when some row fails, 3 when verify produced no report (crash, import error)."""
    out = Path(os.environ.get("LINMETA_MUTATION_OUT", "_mutation_verify"))
    cmd = [sys.executable, "-m", "linmeta", "verify", f"--{setting}", "--claims", claims,
           "--json", "--no-figures", "--out", str(out)]
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
    test = (f"{python} -m benchmarks.mutation_tool check --setting {setting} "
            f"--claims {cfg['linmeta-mutation']['claims']} --timeout {timeout:g}")
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


def run(config: Path, *, setting: str, sample: int | None, seed: int, work: Path | None,
        timeout: float, python: str, modules=None) -> Path:
    cfg = load(config)
    lm = cfg["linmeta-mutation"]
    name = config.stem
    sample = lm.get("sample") if sample is None else sample
    work = Path(work) if work else Path(os.environ.get("TMPDIR", "/tmp")) / f"linmeta-cr-{name}"
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
    subprocess.run([_tool("cosmic-ray"), "exec", "cosmic-ray.toml", "session.sqlite"], cwd=work,
                   env=env, check=True)
    meta = dict(config=str(config.relative_to(REPO)) if config.is_relative_to(REPO) else
                str(config), setting=setting, sample=sample, seed=seed,
                seconds=round(time.perf_counter() - t0, 1), date=time.strftime("%Y-%m-%d %H:%M"),
                command=" ".join(["python -m benchmarks.mutation_tool run",
                                  str(config.relative_to(REPO)) if config.is_relative_to(REPO)
                                  else str(config)] +
                                 [f"--module {m}" for m in modules or ()] +
                                 ([f"--setting {setting}"] if setting != "quick" else []) +
                                 ([f"--sample {sample} --seed {seed}"] if sample else [])))
    return write_report(session, name, meta)


# ----------------------------------------------------------------------------- survivors again
def recheck(session: Path, *, setting: str, claims: str, tests: list[str], python: str,
            timeout: float) -> dict:
    """Every survivor of ``session`` again, on a fresh scratch copy of the working tree as it is
    now (new rows, new tests): ``cosmic-ray apply`` the mutant, run the verify check and, with
    ``tests``, ``pytest`` on those files. Returns ``{key: {"verify": rows, "tests": ids}}`` and
    stores it beside the session (``recheck.json``), where :func:`write_report` finds it."""
    out = {}
    for r in records(session):
        if r["outcome"] != "survived":
            continue
        work = session.parent / "recheck"
        if work.exists():
            shutil.rmtree(work)
        work.mkdir()
        scratch_copy(REPO, work)
        env = dict(os.environ, PYTHONPATH=str(work), PYTHONDONTWRITEBYTECODE="1",
                   LINMETA_MUTATION_OUT=str(work / "_mutation_verify"))
        subprocess.run([_tool("cosmic-ray"), "apply", r["module"], r["operator"],
                        str(r["occurrence"])], cwd=work, env=env, check=True)
        p = subprocess.run([python, "-m", "benchmarks.mutation_tool", "check", "--setting",
                            setting, "--claims", claims, "--timeout", f"{timeout:g}"], cwd=work,
                           env=env, capture_output=True, text=True)
        rows = [ln.split("FAIL ", 1)[1] for ln in p.stdout.splitlines()
                if ln.startswith(f"{MARK} FAIL ")]
        failed = []
        if tests:
            t = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf",
                                *tests], cwd=work, env=env, capture_output=True, text=True)
            failed = [ln.split(" ", 1)[1].split(" - ")[0] for ln in t.stdout.splitlines()
                      if ln.startswith("FAILED ")] or ([f"(pytest exit {t.returncode})"]
                                                        if t.returncode not in (0, 5) else [])
        out[r["key"]] = dict(verify=rows, verify_rc=p.returncode, tests=failed, setting=setting)
        print(f"{r['key']}: verify {len(rows)} failing rows (exit {p.returncode}), tests "
              f"{len(failed)} failing", flush=True)
    shutil.rmtree(session.parent / "recheck", ignore_errors=True)
    (session.parent / "recheck.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


# ----------------------------------------------------------------------------- the report
def _equivalent() -> dict:
    if not EQUIVALENT.exists():
        return {}
    with open(EQUIVALENT, "rb") as f:
        return tomllib.load(f).get("mutant", {})


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
            else:
                how = "killed by crash or timeout"
            out.append(dict(job=item.job_id, module=str(m.module_path), line=m.start_pos[0],
                            operator=m.operator_name, occurrence=m.occurrence, outcome=how,
                            rows=failing, diff=result.diff or "", key=_key(m)))
    return out


def write_report(session: Path, name: str, meta: dict) -> Path:
    recs = records(session)
    eq = _equivalent()
    again = session.parent / "recheck.json"
    again = json.loads(again.read_text()) if again.exists() else {}
    for r in recs:
        r["equivalent"] = eq.get(r["key"], "") if r["outcome"] == "survived" else ""
        if r["outcome"] == "survived" and r["key"] in again:
            r["recheck"] = again[r["key"]]
    lines = [f"# Mutation run `{name}` (cosmic-ray, test command `linmeta verify "
             f"--{meta['setting']}`)", "",
             f"`{meta['command']}` -- {meta['date']}, {meta['seconds'] / 60:.1f} min.", "",
             "Killed by a check row: some verify row failed. Killed by a crash: a claim raised "
             "(its row reads `run raised`: verify fails, red), verify gave no report, or it timed "
             "out. The last column counts both against the non-equivalent mutants.", "",
             "| module | mutants | killed by a check row | killed by a crash or timeout | "
             "survived | "
             "equivalent | verify kills of the non-equivalent |", "|---|---|---|---|---|---|---|"]
    for mod in sorted({r["module"] for r in recs}):
        rs = [r for r in recs if r["module"] == mod]
        n = len(rs)
        kv = sum(r["outcome"] == "killed by verify" for r in rs)
        kc = sum(r["outcome"] == "killed by crash or timeout" for r in rs)
        sv = sum(r["outcome"] == "survived" for r in rs)
        eqn = sum(bool(r["equivalent"]) for r in rs)
        denom = n - eqn
        share = f"{kv + kc}/{denom} ({100 * (kv + kc) / denom:.0f}%)" if denom else "-"
        lines.append(f"| `{mod}` | {n} | {kv} | {kc} | {sv} | {eqn} | {share} |")
    again = [r.get("recheck") for r in recs if r["outcome"] == "survived" and r.get("recheck")]
    if again:
        kv = sum(bool(x["verify"]) for x in again)
        kt = sum(bool(x["tests"]) and not x["verify"] for x in again)
        left = sum(r["outcome"] == "survived" and not r["equivalent"] and not (
            r.get("recheck") and (r["recheck"]["verify"] or r["recheck"]["tests"])) for r in recs)
        lines += ["", f"Survivors run again on the tree as it is now: {kv} killed by a verify row, "
                      f"{kt} more by a test only, {left} neither (and not stated equivalent)."]
    lines += ["", "## Survivors", "",
              "Each survivor run again on the working tree as it is now (`python -m "
              "benchmarks.mutation_tool recheck`): the verify rows and tests that now fail, or why "
              "it is equivalent.", ""]
    for r in recs:
        if r["outcome"] == "survived":
            why = f"equivalent: {r['equivalent']}" if r["equivalent"] else "**not explained**"
            again = r.get("recheck")
            if again and (again["verify"] or again["tests"]):
                why = "now killed by " + "; ".join(
                    [f"verify --{again['setting']} row `{v}`" for v in again["verify"]] +
                    [f"test `{t}`" for t in again["tests"]])
            lines += [f"- `{r['module']}:{r['line']}` {r['operator']} #{r['occurrence']}: {why}",
                      "", "```diff", r["diff"].strip(), "```", ""]
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
    c.add_argument("--claims", required=True)
    c.add_argument("--timeout", type=float, default=900.0)
    r = sub.add_parser("run", help="a mutation run of one configuration, or of every one ('all')")
    r.add_argument("config", help="a config file, or 'all': every benchmarks/cosmic-ray/*.toml")
    r.add_argument("--setting", choices=("tiny", "quick"), default="quick")
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
    k = sub.add_parser("recheck", help="run the survivors of a session again (verify, tests)")
    k.add_argument("session", type=Path)
    k.add_argument("--claims", required=True)
    k.add_argument("--setting", choices=("tiny", "quick"), default="quick")
    k.add_argument("--tests", nargs="*", default=[], help="test files to run on each survivor")
    k.add_argument("--python", default=sys.executable)
    k.add_argument("--timeout", type=float, default=900.0)
    s = sub.add_parser("report", help="rewrite the report of a (partial) session")
    s.add_argument("session", type=Path)
    s.add_argument("--name", default=None)
    a = p.parse_args(argv)
    if a.cmd == "check":
        return check(a.setting, a.claims, a.timeout)
    if a.cmd == "run":
        configs = sorted(CONFIGS.glob("*.toml")) if a.config == "all" else [Path(a.config)]
        if a.config == "all" and (a.work or a.module):
            p.error("--work and --module name one configuration, not 'all'")
        for config in configs:
            run(config.resolve(), setting=a.setting, sample=a.sample, seed=a.seed, work=a.work,
                timeout=a.timeout, python=a.python, modules=a.module)
        return 0
    if a.cmd == "recheck":
        recheck(a.session, setting=a.setting, claims=a.claims, tests=a.tests, python=a.python,
                timeout=a.timeout)
        return 0
    name = a.name or a.session.parent.name
    previous = RESULTS / f"mutation_tool_{name}.json"   # the run's own description, if written
    meta = (json.loads(previous.read_text())["meta"] if previous.exists() else
            dict(setting="?", command=f"report {a.session}", seconds=0.0))
    write_report(a.session, name, dict(meta, date=time.strftime("%Y-%m-%d %H:%M")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
