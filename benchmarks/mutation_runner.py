"""Run a cosmic-ray session's mutants fast: forked workers, the mutated module from memory, only the
claims that execute the mutated line, stopping at the first failing row.

cosmic-ray's own ``exec`` writes each mutant into the file, starts the test command (a fresh Python
that imports JAX and linmeta, about 1.3 s) and runs all of it. The decision it records is binary:
killed (some verify row failed, or verify crashed) or survived. This runner reaches the same
decision with less work, and writes it into the same session database (so ``cosmic-ray``'s own
reports read it):

- **Only the claims that can see the mutant.** A claim's verify run is deterministic (fixed seeds),
  so a claim that never executes the mutated statement gives the same rows as on the unmutated
  code, and those all pass. :func:`claim_coverage` records, per claim, which lines of the mutated
  modules its ``--SETTING`` run executes (coverage.py, each claim in its own fresh process: import
  time included, so module-level lines belong to every claim). A mutant is run against the claims
  that execute the statement it changes (the innermost statement containing its position, a
  decorated definition from its first decorator); a mutant whose statement no claim executes is
  recorded as survived without a run ("not executed by any claim").
- **Stop at the first failing row.** Claims run cheapest first, except that a claim which killed
  earlier mutants of the same function goes first; one failing row (or a raising claim) decides
  "killed".
- **No start-up per mutant.** The parent imports JAX, NumPy and SciPy once (no backend started, one
  thread), then forks one worker per mutant; the worker installs an import hook that serves the
  mutated source for that one module and imports linmeta, so every other module is the file on
  disk and the working tree is never touched: workers run side by side.
- **Same conditions as ``linmeta verify``**: float64, the compile flag and JAX's persistent
  compilation cache of the command line (linmeta's own store of compiled programs is off: its key
  is the package's files on disk, which a mutant served from memory does not change), OpenBLAS on one thread, :func:`linmeta.front.verify.
  run_claim` (the function verify calls per claim, with its tolerance audit).
- A worker that passes its time limit is killed (recorded "killed: timeout"); its address space is
  capped (``RLIMIT_AS``) so a mutant that allocates without bound fails instead of swapping.

Confirm it against cosmic-ray's own ``exec`` with ``python -m benchmarks.mutation_tool confirm``: a
sample of mutants (survivors and kills) again through ``cosmic-ray apply`` on a scratch copy and the
plain ``linmeta verify`` command, every claim; the decisions must agree.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # before NumPy: see linmeta/__init__.py

import ast
import difflib
import importlib.abc
import importlib.util
import json
import resource
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FAST_FLAG = "--xla_backend_optimization_level=0"   # linmeta.front.verify's flag for tiny/quick
MARK = "LINMETA-VERIFY:"


def prepare_parent() -> None:
    """What every worker shares, done once before forking: one BLAS thread, the compile flag,
    the heavy imports (no JAX backend is started, so forking is safe)."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in flags:
        flags = os.environ["XLA_FLAGS"] = (flags + " " + FAST_FLAG).strip()
    if "xla_cpu_multi_thread_eigen" not in flags:   # as linmeta.front.verify: one Eigen thread
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()
    import jax  # noqa: F401  (imported for the children)
    import jax.numpy  # noqa: F401
    import numpy  # noqa: F401
    import scipy.linalg  # noqa: F401
    import scipy.optimize  # noqa: F401
    import scipy.stats  # noqa: F401
    from jax._src import xla_bridge
    assert not xla_bridge.backends_are_initialized(), "the JAX backend started before forking"


# ----------------------------------------------------------------------------- in a worker
class _MutatedSource(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``source`` as the module ``name`` (file ``path``), every other import as usual."""

    def __init__(self, name: str, path: Path, source: str):
        self.name, self.path, self.source = name, str(path), source

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        return importlib.util.spec_from_file_location(fullname, self.path, loader=self)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__file__ = self.path
        exec(compile(self.source, self.path, "exec"), module.__dict__)


def module_name(path: str) -> str:
    p = Path(path).with_suffix("")
    return ".".join(p.parts[:-1] + (() if p.name == "__init__" else (p.name,)))


def _worker_setup(mutated: tuple[str, str] | None, mem_bytes: int | None) -> None:
    if mem_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
    if mutated is not None:
        path, source = mutated
        sys.meta_path.insert(0, _MutatedSource(module_name(path), REPO / path, source))
    import jax
    from linmeta.engine import compile_cache, program_cache
    compile_cache.enable()
    jax.config.update("jax_enable_x64", True)
    # linmeta's store of compiled programs is keyed by the package's files ON DISK, which a mutant
    # served from memory does not change: it would hand back the unmutated program. Off here (JAX's
    # own cache, keyed by the lowered program, stays on).
    program_cache.folder = lambda: None


def _run_claims(claims, setting: str, seed: int, stop_at_first: bool) -> dict:
    from linmeta.front.verify import run_claim

    failing, ran, t0 = [], [], time.perf_counter()
    for cid in claims:
        res, _ = run_claim(cid, setting, seed, None, figures=False)
        ran.append(cid)
        bad = [f"{cid}: {v.quantity}" for v in res.verdicts if not v.passed]
        failing += bad
        if bad and stop_at_first:
            break
    return dict(failing=failing, ran=ran, seconds=round(time.perf_counter() - t0, 2))


def _coverage_of_claim(claim: str, setting: str, seed: int, files: list[str]) -> dict:
    import coverage

    cov = coverage.Coverage(data_file=None, include=[str(REPO / f) for f in files],
                            branch=False)
    cov.start()
    try:
        _worker_setup(None, None)
        out = _run_claims([claim], setting, seed, stop_at_first=False)
    finally:
        cov.stop()
    data = cov.get_data()
    out["lines"] = {f: sorted(data.lines(str(REPO / f)) or []) for f in files}
    return out


# ----------------------------------------------------------------------------- the pool
def _file_name(job: str) -> str:
    """A file name for a job (mutant keys hold slashes)."""
    import hashlib

    return hashlib.sha1(job.encode()).hexdigest()[:20]


def _fork(job: str, fn, args, out_dir: Path, timeout: float) -> tuple[int, str, Path, float]:
    out = out_dir / f"{_file_name(job)}.json"
    out.unlink(missing_ok=True)
    pid = os.fork()
    if pid == 0:   # the worker
        code = 0
        try:
            os.setpgid(0, 0)
            result = fn(*args)
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(result))
            os.replace(tmp, out)
        except BaseException as e:   # noqa: BLE001 - reported to the parent as a crash
            try:
                out.write_text(json.dumps(dict(crash=f"{type(e).__name__}: {e}"[:400])))
            except BaseException:   # noqa: BLE001
                pass
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid, job, out, time.monotonic() + timeout


def pool(tasks, workers: int, out_dir: Path, on_done, before=None) -> None:
    """Run ``tasks`` (``(job, fn, args, timeout)``) in up to ``workers`` forked processes; calls
    ``on_done(job, result_dict_or_None, timed_out)`` in the parent as each one ends, and
    ``before(job, args) -> args`` (optional) just before a task starts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = list(tasks)
    running: dict[int, tuple[str, Path, float]] = {}
    while tasks or running:
        while tasks and len(running) < workers:
            job, fn, args, timeout = tasks.pop(0)
            if before is not None:
                args = before(job, args)
            pid, job, out, deadline = _fork(job, fn, args, out_dir, timeout)
            running[pid] = (job, out, deadline)
        time.sleep(0.02)
        for pid in list(running):
            job, out, deadline = running[pid]
            done, _ = os.waitpid(pid, os.WNOHANG)
            timed_out = False
            if not done and time.monotonic() > deadline:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                os.waitpid(pid, 0)
                timed_out = True
            elif not done:
                continue
            del running[pid]
            result = json.loads(out.read_text()) if out.exists() else None
            out.unlink(missing_ok=True)
            on_done(job, result, timed_out)


# ----------------------------------------------------------------------------- coverage
def claim_coverage(files: list[str], setting: str, seed: int, workers: int,
                   cache: Path, only=None) -> dict:
    """``{claim: {"lines": {file: [line, ...]}, "seconds": s, "failing": [...]}}`` for every
    registered claim at ``setting`` (stored in ``cache``; recomputed when a listed file, or the
    claim set, changed)."""
    import hashlib

    stamp = hashlib.sha256()
    for f in sorted(set(files)):
        stamp.update(f.encode() + (REPO / f).read_bytes())
    for f in sorted((REPO / "linmeta").rglob("*.py")):
        stamp.update(f.read_bytes())
    claims = _claim_ids(only)
    key = f"{setting}-{seed}-{stamp.hexdigest()[:16]}" + (f"-{'.'.join(claims)}" if only else "")
    if cache.exists():
        stored = json.loads(cache.read_text())
        if stored.get("key") == key:
            return stored["claims"]
    prepare_parent()
    got: dict = {}

    def done(job, result, timed_out):
        if result is None or "crash" in result or timed_out:
            raise SystemExit(f"coverage of {job} failed: {result}")
        if result["failing"]:
            raise SystemExit(f"{job} fails on the unmutated code: {result['failing']}")
        got[job] = result
        print(f"coverage {job}: {result['seconds']} s", flush=True)

    pool([(c, _coverage_of_claim, (c, setting, seed, files), 1800.0) for c in claims],
         workers, cache.parent / "jobs", done)
    cache.write_text(json.dumps(dict(key=key, claims={c: got[c] for c in claims})))
    return {c: got[c] for c in claims}


def _claim_ids(only=None) -> list[str]:
    """Every registered claim (or those ``only`` names: ids or family names), read in a throw-away
    process (the parent must not import linmeta: each worker imports it afresh, with its
    mutant)."""
    import subprocess

    code = ("import sys; from linmeta.engine.claim_support import resolve_claims; "
            "from linmeta.engine.claims import claim_ids; "
            "print(' '.join(resolve_claims(sys.argv[1:]) if sys.argv[1:] else claim_ids()))")
    out = subprocess.run([sys.executable, "-c", code, *(only or [])], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    return out.split()


# ----------------------------------------------------------------------------- mapping mutants
def statement_lines(source: str) -> dict[int, set[int]]:
    """For every line of ``source``: the line numbers coverage may report for the innermost
    statement containing it (its first line; for a decorated definition also its first decorator's
    line). A compound statement owns only its header (up to its first body statement)."""
    tree = ast.parse(source)
    best: dict[int, tuple[int, set[int]]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.stmt):
            continue
        decos = getattr(node, "decorator_list", None) or []
        start = min([node.lineno] + [d.lineno for d in decos])
        stop = node.end_lineno
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
            stop = body[0].lineno - 1
        for ln in range(start, max(stop, start) + 1):
            if ln not in best or start >= best[ln][0]:
                best[ln] = (start, {start, node.lineno})
    return {ln: lines for ln, (_, lines) in best.items()}


def enclosing_function(source: str) -> dict[int, str]:
    """For every line inside a function: the function's qualified name (innermost)."""
    out: dict[int, str] = {}

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                for ln in range(child.lineno, child.end_lineno + 1):
                    out[ln] = name
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return out


def claims_for(mutation_lines: range, file: str, stmt_of: dict, coverage: dict,
               order: list[str]) -> list[str]:
    """The claims (in ``order``) whose run executes a statement the mutant changes."""
    targets = set(mutation_lines)
    for ln in mutation_lines:
        targets |= stmt_of.get(ln, set())
    return [c for c in order if targets & set(coverage[c]["lines"].get(file, ()))]


# ----------------------------------------------------------------------------- a session
def _mutant_job(path: str, source: str, claims: list[str], setting: str, seed: int,
                mem_bytes: int) -> dict:
    _worker_setup((path, source), mem_bytes)
    return _run_claims(claims, setting, seed, stop_at_first=True)


def run_session(session: Path, *, setting: str, seed: int, workers: int, files: list[str],
                cache: Path, mem_gib: float, timeout_factor: float, min_timeout: float,
                limit: int | None = None, warm: bool = True) -> dict:
    """Run every pending mutant of a cosmic-ray ``session`` (as made by ``cosmic-ray init``) and
    record each result in it. Returns counts by outcome."""
    import cosmic_ray.plugins
    from cosmic_ray.mutating import mutate_code
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult

    cov = claim_coverage(files, setting, seed, workers, cache)
    order = sorted(cov, key=lambda c: cov[c]["seconds"])
    sources = {f: (REPO / f).read_text() for f in files}
    stmt_of = {f: statement_lines(s) for f, s in sources.items()}
    func_of = {f: enclosing_function(s) for f, s in sources.items()}
    killers: dict[tuple, dict[str, int]] = {}   # (file, function) -> {claim: kills}
    where: dict[str, tuple] = {}
    counts: dict[str, int] = {}
    tasks, meta, warm_tasks = [], {}, []
    with use_db(str(session), WorkDB.Mode.open) as db:
        pending = list(db.pending_work_items)
    rank = {f: i for i, f in enumerate(files)}   # module by module, in the order given
    pending.sort(key=lambda it: (rank.get(str(it.mutations[0].module_path), len(rank)),
                                 it.mutations[0].start_pos, it.job_id))
    if limit is not None:
        pending = pending[:limit]
    results = []
    for item in pending:
        m = item.mutations[0]
        f = str(m.module_path)
        op = cosmic_ray.plugins.get_operator(m.operator_name)(**(m.operator_args or {}))
        mutated = mutate_code(sources[f], op, m.occurrence)
        if mutated is None:
            results.append((item.job_id, WorkResult(worker_outcome=WorkerOutcome.NO_TEST)))
            continue
        diff = "".join(difflib.unified_diff(sources[f].splitlines(True),
                                            mutated.splitlines(True), f"a/{f}", f"b/{f}"))
        lines = range(m.start_pos[0], m.end_pos[0] + 1)
        claims = claims_for(lines, f, stmt_of[f], cov, order)
        if not claims:
            results.append((item.job_id, WorkResult(
                worker_outcome=WorkerOutcome.NORMAL, test_outcome=TestOutcome.SURVIVED,
                output=f"{MARK} not executed by any claim at --{setting}", diff=diff)))
            continue
        budget = max(min_timeout, timeout_factor * sum(cov[c]["seconds"] + 1.0 for c in claims))
        meta[item.job_id] = (diff, claims)
        where[item.job_id] = (f, func_of[f].get(m.start_pos[0], ""))
        tasks.append((item.job_id, _mutant_job,
                      (f, mutated, claims, setting, seed, int(mem_gib * 2 ** 30)), budget))
        fn_name = func_of[f].get(m.start_pos[0], "")
        if warm and fn_name and func_of[f].get(m.end_pos[0], "") == fn_name:
            warm_tasks.append((item.job_id, f, mutated, fn_name, claims, budget))

    def record(db, job_id, res):
        db.set_result(job_id, res)
        key = ("survived" if res.test_outcome == TestOutcome.SURVIVED else
               "killed" if res.test_outcome == TestOutcome.KILLED else str(res.worker_outcome))
        counts[key] = counts.get(key, 0) + 1

    t0 = time.perf_counter()
    with use_db(str(session), WorkDB.Mode.open) as db:
        for job_id, res in results:
            record(db, job_id, res)
        if not tasks:
            return counts
        prepare_parent()
        n_total = len(tasks)

        def done(job, result, timed_out):
            diff, claims = meta[job]
            if timed_out:
                out, killed = f"{MARK} timeout (claims {' '.join(claims)})", True
            elif result is None or "crash" in result:
                why = (result or {}).get("crash", "the worker ended without a result")
                out, killed = f"{MARK} no report: {why}", True
            else:
                lines = [f"{MARK} {len(result['failing'])} failing rows; ran "
                         f"{' '.join(result['ran'])} of {' '.join(claims)} in "
                         f"{result['seconds']} s" + (" (warm worker)" if result.get("warm")
                                                     else "")]
                lines += [f"{MARK} FAIL {r}" for r in result["failing"]]
                out, killed = "\n".join(lines), bool(result["failing"])
                if killed and result["ran"]:   # this claim first for the next mutants of
                    # the same function (none ran: the mutant failed before the first claim)
                    k = killers.setdefault(where[job], {})
                    k[result["ran"][-1]] = k.get(result["ran"][-1], 0) + 1
            record(db, job, WorkResult(
                worker_outcome=WorkerOutcome.NORMAL,
                test_outcome=TestOutcome.KILLED if killed else TestOutcome.SURVIVED,
                output=out, diff=diff))
            n = sum(counts.values())
            if n % 25 == 0:
                print(f"{session.parent.name}: {n} recorded ({counts}); "
                      f"{(time.perf_counter() - t0) / 60:.1f} min", flush=True)

        def killer_first(job, args):
            k = killers.get(where[job], {})
            path, source, claims, *rest = args
            claims = sorted(claims, key=lambda c: -k.get(c, 0))   # stable: cheapest first else
            meta[job] = (meta[job][0], claims)
            return (path, source, claims, *rest)

        if warm_tasks:
            order_claims = [c for c in order if any(c in t[4] for t in warm_tasks)]
            back = warm_pool(
                warm_tasks, workers, session.parent / "jobs-warm",
                lambda job, result, timed_out: done(job, result, timed_out),
                files=files, claims=order_claims, setting=setting, seed=seed, mem_gib=mem_gib,
                log=str(session.parent / "warm-workers.log"))
            left = {t[0] for t in back}
            print(f"warm workers: {len(warm_tasks) - len(left)} mutants; {len(left)} handed "
                  "back to fresh processes", flush=True)
            tasks = [t for t in tasks if t[0] in left or t[0] not in {w[0] for w in warm_tasks}]
        pool(tasks, workers, session.parent / "jobs", done, before=killer_first)
    return counts


# ----------------------------------------------------------------------------- survivors again
def apply_diff(source: str, diff: str) -> str | None:
    """The mutant of ``diff`` (cosmic-ray's one-hunk unified diff, made on an earlier version of
    the file) applied to ``source`` as it is now: the hunk's old text (context and removed lines)
    must occur exactly once. None when it does not (the code around the mutant changed)."""
    before, after, in_hunk = [], [], False
    for ln in diff.splitlines(True):
        if ln.startswith("@@"):
            in_hunk = True
            continue
        if not in_hunk or ln.startswith(("---", "+++")):
            continue
        tag, text = ln[:1], ln[1:]
        if tag in (" ", "-"):
            before.append(text)
        if tag in (" ", "+"):
            after.append(text)
    old, new = "".join(before), "".join(after)
    if not old or source.count(old) != 1:
        return None
    return source.replace(old, new)


def _tests_job(path: str, source: str, tests: list[str], log: str) -> dict:
    """pytest on ``tests`` with the mutant in place (stops at the first failure)."""
    if source is not None:
        sys.meta_path.insert(0, _MutatedSource(module_name(path), REPO / path, source))
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    import pytest

    rc = pytest.main(["-q", "-x", "-p", "no:cacheprovider", "-rf", "-W", "ignore", *tests])
    sys.stdout.flush()
    failed = [ln.split(" ", 1)[1].split(" - ")[0].strip()
              for ln in Path(log).read_text().splitlines() if ln.startswith("FAILED ")]
    return dict(rc=int(rc), failed=failed)


def recheck(survivors: list[dict], *, setting: str, seed: int, workers: int, files: list[str],
            cache: Path, mem_gib: float, tests: dict | None = None, only=None,
            save: Path | None = None, warm: bool = True) -> dict:
    """Each survivor (records with ``key``, ``module``, ``diff``) on the tree as it is now (this
    module's repository root): the claims that now execute the mutated statement at ``setting``,
    stopping at the first failing row; with ``tests`` (``{module: [test files]}``) and no failing
    row, those tests too. Returns ``{key: {"verify": rows, "ran": claims, "tests": ids,
    "setting": setting}}``; ``"stale"`` when the mutant no longer applies. ``warm=False``: every
    mutant in a fresh forked worker (the warm workers' code swap missed a mutant inside a jitted
    function that the fresh worker kills: use it for a final recheck)."""
    cov = claim_coverage(files, setting, seed, workers, cache, only)
    order = sorted(cov, key=lambda c: cov[c]["seconds"])
    out: dict = {}
    tasks, pend_tests, warm_tasks = [], {}, []
    for r in survivors:
        f = r["module"]
        source = (REPO / f).read_text()
        mutated = apply_diff(source, r["diff"])
        if mutated is None:
            out[r["key"]] = dict(stale=True, verify=[], ran=[], tests=[], setting=setting)
            continue
        stmt_of = statement_lines(source)
        changed = [i + 1 for i, (a, b) in enumerate(zip(source.splitlines(),
                                                        mutated.splitlines())) if a != b]
        lines = range(min(changed), max(changed) + 1) if changed else range(0)
        claims = claims_for(lines, f, stmt_of, cov, order)
        pend_tests[r["key"]] = (f, mutated)
        if not claims:
            out[r["key"]] = dict(verify=[], ran=[], tests=[], setting=setting)
            continue
        budget = max(60.0, 4.0 * sum(cov[c]["seconds"] + 1.0 for c in claims))
        tasks.append((r["key"], _mutant_job,
                      (f, mutated, claims, setting, seed, int(mem_gib * 2 ** 30)), budget))
        fn_of = enclosing_function(source)
        if warm and fn_of.get(lines.start, "") and \
                fn_of.get(lines.stop - 1, "") == fn_of[lines.start]:
            warm_tasks.append((r["key"], f, mutated, fn_of[lines.start], claims, budget))
    prepare_parent()

    def done(key, result, timed_out):
        if timed_out:
            rows = ["timeout"]
        elif result is None or "crash" in result:
            rows = [f"no report: {(result or {}).get('crash', 'the worker ended')}"]
        else:
            rows = result["failing"]
        out[key] = dict(verify=rows, ran=(result or {}).get("ran", []), tests=[],
                        setting=setting)
        print(f"recheck {key}: {len(rows)} failing rows", flush=True)
        if save is not None:   # as it goes: a recheck stopped half-way keeps what it decided
            tmp = Path(str(save) + ".tmp")
            tmp.write_text(json.dumps({k: v for k, v in out.items() if v.get("verify")},
                                      indent=1) + "\n")
            os.replace(tmp, save)

    jobs = Path(cache).parent / "jobs-recheck"
    if warm_tasks:
        back = warm_pool(warm_tasks, workers, jobs, done, files=files,
                         claims=[c for c in order if any(c in t[4] for t in warm_tasks)],
                         setting=setting, seed=seed, mem_gib=mem_gib,
                         log=str(Path(cache).parent / "warm-workers-recheck.log"))
        redo = {t[0] for t in back} | {t[0] for t in tasks if t[0] not in
                                       {w[0] for w in warm_tasks}}
        tasks = [t for t in tasks if t[0] in redo]
    pool(tasks, workers, jobs, done)
    if tests:
        tt = []
        for key, (f, mutated) in pend_tests.items():
            if out[key]["verify"] or not tests.get(f):
                continue
            log = str(jobs / f"{_file_name(key)}.log")
            tt.append((key, _tests_job, (f, mutated, tests[f], log), 900.0))

        def tdone(key, result, timed_out):
            if timed_out or result is None or "crash" in result:
                out[key]["tests"] = [f"(pytest did not finish: {result})"]
            else:
                out[key]["tests"] = result["failed"] or (
                    [f"(pytest exit {result['rc']})"] if result["rc"] not in (0, 5) else [])
            print(f"tests {key}: {out[key]['tests'][:1]}", flush=True)

        pool(tt, workers, jobs, tdone)
    return out


# ----------------------------------------------------------------------------- warm workers
# A fresh process spends most of a --tiny claim on tracing and loading compiled programs (D1:
# 10 s fresh, 0.2 s in a process that has run it once). A warm worker runs every claim once, then
# takes mutants one after the other: it executes the mutated module's source in a scratch
# namespace and swaps the mutated function's code object into the live function (every
# reference, `from x import f` included, sees it), runs the claims, and swaps it back. This is
# exact only when no cache holds the function's old behaviour, so a mutant goes to a warm worker
# only when (1) its change lies inside one function's body or signature (not a decorator, not
# module level), (2) during the warm-up run that function was never entered while JAX was staging
# a program it keeps (jit, scan, while_loop, cond: a kept program that inlined it would keep the
# old code; eager vmap and grad keep nothing), and (3) the new code has the same
# free variables. Python-level caches (functools.lru_cache) are cleared around every mutant.
# Everything else runs in a fresh forked worker as above.
def _all_functions(mod) -> dict[str, object]:
    """``{qualname: python function}`` of the module's own top-level functions and methods."""
    out = {}
    for name, obj in vars(mod).items():
        objs = [(name, obj)]
        if isinstance(obj, type) and obj.__module__ == mod.__name__:
            objs += [(f"{name}.{k}", v) for k, v in vars(obj).items()]
        for qual, o in objs:
            if isinstance(o, (staticmethod, classmethod)):
                o = o.__func__
            while hasattr(o, "__wrapped__"):
                o = o.__wrapped__
            if hasattr(o, "__code__") and getattr(o, "__module__", None) == mod.__name__:
                out[qual] = o
    return out


def _clear_python_caches() -> None:
    for name, mod in list(sys.modules.items()):
        if not name.startswith("linmeta") or mod is None:
            continue
        for obj in list(vars(mod).values()):
            if callable(getattr(obj, "cache_clear", None)):
                obj.cache_clear()


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def warm_worker(jobs_dir: str, files: list[str], claims: list[str], setting: str, seed: int,
                mem_gib: float) -> None:
    """The warm worker's main loop (``python -m benchmarks.mutation_runner worker ...``): reads one
    job per line on stdin (JSON: job, path, source, function, claims, timeout), writes
    ``<jobs_dir>/<job>.json``."""
    import builtins
    import importlib

    prepare_parent()
    _worker_setup(None, int(mem_gib * 2 ** 30))
    from jax._src import core as jcore

    funcs, codes = {}, {}
    for f in files:
        mod = importlib.import_module(module_name(f))
        funcs[f] = _all_functions(mod)
        for qual, fn in funcs[f].items():
            codes[fn.__code__] = (f, qual)
    traced: set = set()

    uncached = {"EvalTrace", "BatchTrace", "JVPTrace", "LinearizeTrace"}   # eager transforms

    def staged() -> bool:
        """Whether the current call is being staged into a program JAX keeps (jit, scan, ...);
        eager vmap and grad trace anew at every call and keep nothing."""
        t = jcore.trace_ctx.trace
        while t is not None:
            if type(t).__name__ not in uncached:
                return True
            t = getattr(t, "parent_trace", None)
        return False

    def profile(frame, event, arg):
        if event == "call" and frame.f_code in codes and not jcore.trace_state_clean() \
                and staged():
            traced.add(codes[frame.f_code])

    sys.setprofile(profile)
    try:
        base = _run_claims(claims, setting, seed, stop_at_first=False)
    finally:
        sys.setprofile(None)
    out = Path(jobs_dir)
    (out / f"ready-{os.getpid()}.json").write_text(json.dumps(dict(
        failing=base["failing"], seconds=base["seconds"], traced=sorted(map(list, traced)))))
    signal.signal(signal.SIGALRM, _alarm)
    for line in sys.stdin:
        job = json.loads(line)
        f, parts = job["path"], job["function"].split(".")
        while parts and ".".join(parts) not in funcs[f]:   # the top-level function or method
            parts.pop()
        qual = ".".join(parts)
        res: dict
        old = funcs[f].get(qual)
        if old is None or (f, qual) in traced:
            res = dict(fallback="traced" if old is not None else "not a function")
        else:
            mod = sys.modules[module_name(f)]
            ns = dict(__name__=mod.__name__, __package__=mod.__package__, __file__=mod.__file__,
                      __builtins__=builtins)
            try:
                exec(compile(job["source"], mod.__file__, "exec"), ns)
                new_fn = ns.get(qual.split(".")[0])
                for part in qual.split(".")[1:]:
                    new_fn = vars(new_fn).get(part)
                if isinstance(new_fn, (staticmethod, classmethod)):
                    new_fn = new_fn.__func__
                while hasattr(new_fn, "__wrapped__"):
                    new_fn = new_fn.__wrapped__
                ok = hasattr(new_fn, "__code__") and \
                    new_fn.__code__.co_freevars == old.__code__.co_freevars
            except Exception as e:   # noqa: BLE001 - the mutated module does not even load
                res, ok = dict(failing=[f"(module) {type(e).__name__}: {e}"[:300]], ran=[],
                               seconds=0.0), None
            if ok is False:
                res = dict(fallback="code not swappable")
            elif ok:
                saved = (old.__code__, old.__defaults__, old.__kwdefaults__)
                old.__code__ = new_fn.__code__
                old.__defaults__, old.__kwdefaults__ = new_fn.__defaults__, new_fn.__kwdefaults__
                _clear_python_caches()
                signal.alarm(max(1, int(job["timeout"])))
                try:
                    res = _run_claims(job["claims"], setting, seed, stop_at_first=True)
                    res["warm"] = True
                except _Timeout:
                    res = dict(failing=["timeout"], ran=[], seconds=float(job["timeout"]))
                finally:
                    signal.alarm(0)
                    old.__code__, old.__defaults__, old.__kwdefaults__ = saved
                    _clear_python_caches()
        tmp = out / f"{_file_name(job['job'])}.tmp"
        tmp.write_text(json.dumps(res))
        os.replace(tmp, out / f"{_file_name(job['job'])}.json")


RECYCLE = 300   # mutants per warm worker before a fresh one takes over


WARM_START_TRIES = 3        # a warm worker's start is tried this often
WARM_START_SECONDS = 360.0  # a warm-up past this is taken for hung (a quick warm-up: ~1-2 min)


def warm_pool(tasks, workers: int, out_dir: Path, on_done, *, files, claims, setting, seed,
              mem_gib, log) -> list:
    """Run ``tasks`` (``(job, path, source, function, claims, timeout)``) on ``workers`` warm
    workers; ``on_done(job, result, timed_out)`` for each. Returns the tasks a worker handed back
    (``fallback``: to be run in a fresh process)."""
    import subprocess

    out_dir.mkdir(parents=True, exist_ok=True)
    tasks, back = list(tasks), []
    procs: dict = {}   # proc -> (job, deadline) or None when idle
    served: dict = {}  # proc -> mutants run (a worker is replaced after RECYCLE: memory)

    def spawn():
        cmd = [sys.executable, "-m", "benchmarks.mutation_runner", "worker", str(out_dir),
               setting, str(seed), str(mem_gib), ",".join(claims), *files]
        for attempt in range(WARM_START_TRIES):
            p = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                 stderr=open(log, "a"), text=True, start_new_session=True)
            ready = out_dir / f"ready-{p.pid}.json"
            t0 = time.monotonic()
            while not ready.exists() and p.poll() is None and \
                    time.monotonic() - t0 < WARM_START_SECONDS:
                time.sleep(0.2)
            if ready.exists():
                break
            # died, or hung in the warm-up (XLA's CPU runtime can deadlock): kill, start again
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
            print(f"warm worker {p.pid} did not start (try {attempt + 1} of "
                  f"{WARM_START_TRIES})", flush=True)
        else:
            raise SystemExit(f"no warm worker started in {WARM_START_TRIES} tries (see {log})")
        info = json.loads(ready.read_text())
        if info["failing"]:
            raise SystemExit(f"claims fail on the unmutated code: {info['failing']}")
        print(f"warm worker {p.pid} ready: warm-up {info['seconds']} s, "
              f"{len(info['traced'])} functions traced", flush=True)
        procs[p] = None

    for _ in range(min(workers, len(tasks))):
        spawn()
    while tasks or any(v is not None for v in procs.values()):
        for p, cur in list(procs.items()):
            if cur is None and served.get(p, 0) >= RECYCLE and tasks:
                p.stdin.close()
                p.wait()
                del procs[p]
                spawn()
                continue
            if cur is None:
                if tasks:
                    served[p] = served.get(p, 0) + 1
                    t = tasks.pop(0)
                    job, path, source, func, cl, timeout = t
                    p.stdin.write(json.dumps(dict(job=job, path=path, source=source,
                                                  function=func, claims=cl,
                                                  timeout=timeout)) + "\n")
                    p.stdin.flush()
                    procs[p] = (t, time.monotonic() + timeout + 30)
                continue
            t, deadline = cur
            res_file = out_dir / f"{_file_name(t[0])}.json"
            if res_file.exists():
                result = json.loads(res_file.read_text())
                res_file.unlink()
                procs[p] = None
                if "fallback" in result:
                    back.append(t)
                else:
                    on_done(t[0], result, False)
            elif p.poll() is not None or time.monotonic() > deadline:
                # stuck in compiled code, or died (memory): a fresh worker takes over
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
                del procs[p]
                on_done(t[0], None, time.monotonic() > deadline)
                if tasks:
                    spawn()
        time.sleep(0.01)
    for p in procs:
        p.stdin.close()
        p.wait()
    return back


if __name__ == "__main__":   # a warm worker: worker JOBS SETTING SEED MEM CLAIMS FILE...
    if sys.argv[1:2] == ["worker"]:
        _, _, jobs, setting, seed, mem, cl, *fs = sys.argv
        warm_worker(jobs, fs, cl.split(","), setting, int(seed), float(mem))
