"""The persistent compilation cache (linmeta.compile_cache): a second process loads what the first
compiled; LINMETA_NO_CACHE=1 and --no-compile-cache turn it off; an unusable folder is a warning.

The two processes of the main test are fresh Python interpreters (the cache is per process and is
switched on before the first compilation); each runs one small jitted program and reports JAX's
own monitoring events (cache hits and misses). The ways to turn it off, and unusable folders,
leave JAX's configuration untouched, so they are checked in this process."""
import argparse
import json
import os
import stat
import subprocess
import sys

from linmeta.engine import compile_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, os, sys
os.umask(0o027)
from linmeta import compile_cache
tries = json.loads(sys.argv[1])  # folders to try in turn (None: the default)
paths = [compile_cache.enable(p) for p in tries]
again = compile_cache.enable(tries[-1])  # idempotent
import jax
import jax.numpy as jnp
from jax._src import monitoring
events = {"hits": 0, "misses": 0}
def listen(event, **kw):
    if event == "/jax/compilation_cache/cache_hits":
        events["hits"] += 1
    elif event == "/jax/compilation_cache/cache_misses":
        events["misses"] += 1
monitoring.register_event_listener(listen)

@jax.jit
def program(x):
    return jnp.linalg.norm(jnp.tanh(x @ x.T) + jnp.cumsum(x, axis=0))

program(jnp.ones((8, 8))).block_until_ready()
compile_cache.disable()
off = jax.config.jax_compilation_cache_dir is None and compile_cache.enabled_dir() is None
print("RESULT " + json.dumps({"paths": paths, "path": paths[-1], "again": again, "off": off,
                              **events}))
"""


def _child(env_extra: dict, tmp_path, tries=(None,)) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LINMETA_NO_CACHE", "LINMETA_CACHE_DIR", "JAX_COMPILATION_CACHE_DIR")}
    env.update(JAX_PLATFORMS="cpu", XDG_CACHE_HOME=str(tmp_path / "xdg"),
               PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""), **env_extra)
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(list(tries))], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, proc.stdout + proc.stderr
    return json.loads(line[-1][7:]), proc.stderr


def test_second_process_loads_what_the_first_compiled(tmp_path):
    # first process: the default folder $XDG_CACHE_HOME/linmeta; second: the same folder named
    # by LINMETA_CACHE_DIR
    folder = tmp_path / "xdg" / "linmeta"
    first, _ = _child({}, tmp_path)
    assert first["path"] == first["again"] == str(folder) and first["off"]
    assert first["misses"] >= 1 and first["hits"] == 0
    entries = os.listdir(folder)
    assert entries
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o750  # the child's umask 027
    second, _ = _child({"LINMETA_CACHE_DIR": str(folder)}, tmp_path)
    assert second["path"] == str(folder)
    assert second["hits"] >= 1 and second["misses"] == 0
    assert sorted(os.listdir(folder)) == sorted(entries)


def test_no_cache_env_turns_it_off(monkeypatch, tmp_path):
    # in this process: off means no folder and no change to JAX's configuration
    import jax
    folder = tmp_path / "cache"
    monkeypatch.setenv("LINMETA_CACHE_DIR", str(folder))
    monkeypatch.setenv("LINMETA_NO_CACHE", "1")
    before = jax.config.jax_compilation_cache_dir
    assert compile_cache.enable() is None and compile_cache.enable(str(folder)) is None
    assert jax.config.jax_compilation_cache_dir == before and compile_cache.enabled_dir() is None
    assert not folder.exists()


def test_unusable_folder_is_one_warning_line(tmp_path, capsys, monkeypatch):
    # in this process: an unusable folder changes nothing but prints one line per folder
    import jax
    monkeypatch.delenv("LINMETA_NO_CACHE", raising=False)  # the test session turns it off
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    bad = [str(blocker / "cache"), str(blocker)]
    if os.geteuid() != 0:  # root can write anywhere
        ro = tmp_path / "read_only"
        ro.mkdir()
        ro.chmod(0o500)
        bad.append(str(ro))
    before = jax.config.jax_compilation_cache_dir
    assert [compile_cache.enable(p) for p in bad + bad] == [None] * (2 * len(bad))
    assert jax.config.jax_compilation_cache_dir == before and compile_cache.enabled_dir() is None
    warnings = [ln for ln in capsys.readouterr().err.splitlines()
                if "compilation cache off" in ln]
    assert len(warnings) == len(bad)  # one line per folder, however often it is tried
    for path, line in zip(bad, warnings):
        assert path in line


def test_folder_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("LINMETA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache.cache_dir() == str(tmp_path / "linmeta")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert compile_cache.cache_dir() == os.path.expanduser(os.path.join("~", ".cache", "linmeta"))
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert compile_cache.cache_dir() == os.path.expanduser(os.path.join("~", ".cache", "linmeta"))
    monkeypatch.setenv("LINMETA_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert compile_cache.cache_dir() == str(tmp_path / "elsewhere")
    for value, off in (("1", True), ("yes", True), ("0", False), ("", False)):
        monkeypatch.setenv("LINMETA_NO_CACHE", value)
        assert compile_cache.disabled_by_env() is off


def test_flag_turns_it_off_without_touching_jax():
    import jax
    p = compile_cache.add_argument(argparse.ArgumentParser())
    before = jax.config.jax_compilation_cache_dir
    assert compile_cache.enable_from_args(p.parse_args(["--no-compile-cache"])) is None
    assert jax.config.jax_compilation_cache_dir == before
    assert compile_cache.enabled_dir() is None
    assert p.parse_args([]).no_compile_cache is False


def test_stored_programs_run_after_a_code_change(tmp_path):
    # A code change of linmeta gives new program-store keys while JAX's own cache still holds the
    # programs (same HLO). The program then stored must be one XLA compiled in that process: with
    # jax 0.10 a copy read from JAX's cache serializes without some of its functions, and the
    # next process failed with "Function ... not found". Simulated by deleting the store.
    import shutil

    from linmeta.engine import program_cache

    env = {k: v for k, v in os.environ.items()
           if k not in ("LINMETA_NO_CACHE", "LINMETA_CACHE_DIR", "JAX_COMPILATION_CACHE_DIR")}
    env.update(JAX_PLATFORMS="cpu", LINMETA_CACHE_DIR=str(tmp_path / "cache"),
               PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "linmeta", "run", "--no-write", "--json", "--d", "4",
           "--outer-steps", "5", "--inner-steps", "1", "--sr-steps", "5", "--ft-steps", "5",
           "--N", "20", "--n", "20"]
    losses = []
    for i, solver in enumerate(["alternating"] * 3 + ["newton"] * 2):
        if i == 1:
            shutil.rmtree(tmp_path / "cache" / program_cache.FOLDER_NAME)
        # the Newton program calls LAPACK (eigh): loaded into a fresh process before any LAPACK
        # call was lowered, it crashed (jaxlib's CPU LAPACK kernels uninitialised)
        proc = subprocess.run(cmd + ["--ml-solver", solver], env=env, capture_output=True,
                              text=True, timeout=180)
        assert proc.returncode == 0, (solver, proc.returncode, proc.stderr[-2000:])
        losses.append(json.loads(proc.stdout)["results"]["ml_ft_test_loss"])
    assert os.listdir(tmp_path / "cache" / program_cache.FOLDER_NAME)
    assert losses[0] == losses[1] == losses[2] and losses[3] == losses[4]
