"""Configurations for the command line: loading TOML/JSON files, merging flags, validating.

A *run configuration* is a flat dict of the keys of :data:`linmeta.engine.sweep.DEFAULTS` (sizes d, k, T,
N, n, the noise level, seeds, the solver and its step counts and learning rates). Precedence, lowest
first: the defaults, a config file, command-line flags. Validation and the filling of defaults are
done by :func:`linmeta.engine.sweep.validate_config`, so the command line, a sweep and the Python API
accept exactly the same values.

A *sweep spec* (``linmeta sweep CONFIG``) is a TOML or JSON file with the top-level keys::

    seeds = 5                      # int (seeds 0..4) or a list of seeds
    chunk_size = 64                # optional: configurations per compiled call
    truth = "my_truth.npz"         # optional: a user ground truth (path relative to the file)
    name = "T sweep"               # optional: free text
    [fixed]                        # values shared by every configuration
    N = 5000
    [grid]                         # the Cartesian product of these lists
    T = [2, 3, 5]

Every error is a ``ValueError`` with one line naming the file, the key and the allowed values.
"""
from __future__ import annotations

import json
import math
import os
import tomllib
from typing import Any

from linmeta.core.files import file_sha256
from . import protocols

__all__ = ["PARAMETERS", "SPEC_KEYS", "load_file", "load_run_config", "load_sweep_spec",
           "merge", "parse_count_or_inf", "config_for_truth", "resolve_path"]

# Help text of every configuration key (the values and defaults come from linmeta.sweep.DEFAULTS).
PARAMETERS: dict[str, tuple[str, str]] = {
    "protocol": ("choice", "the protocol: 'paper' (clean), 'paper_code' (the official code's SR "
                 "baseline and fine-tuning starts), or a family's ('bilevel', 'representation'; "
                 "their keys go in --set KEY=VALUE or --config)"),
    # key: (kind, help)
    "d": ("int", "input = output dimension d (>= 1)"),
    "k": ("int", "rank k of each task shift U*_t U*_t^T (1 <= k <= d)"),
    "T": ("int", "number of retraining tasks T (>= 1)"),
    "N": ("count", "samples per retraining task N (>= 1; 0 or 'inf' = population)"),
    "n": ("count", "samples of the unseen fine-tuning task n (>= 1; 0 or 'inf' = population)"),
    "noise_std": ("float", "noise standard deviation (>= 0; the paper's code uses 0.01)"),
    "seed": ("int", "run seed: data draws and initialisations (>= 0)"),
    "truth_seed": ("int", "seed of the sampled ground truth A*, U*, U_new (>= 0; ignored with "
                          "--truth)"),
    "ml_solver": ("choice", "Meta-LoRA solver: 'alternating' (the paper's protocol) or "
                            "'newton' (saddle-free Newton on the reduced objective)"),
    "outer_steps": ("int", "Meta-LoRA outer iterations (alternating solver)"),
    "inner_steps": ("int", "adapter steps per outer iteration (alternating solver)"),
    "lr_adapter": ("float", "Meta-LoRA adapter learning rate (> 0)"),
    "lr_base": ("float", "Meta-LoRA base learning rate (> 0)"),
    "sr_steps": ("int", "standard-retraining gradient steps"),
    "sr_lr": ("float", "standard-retraining learning rate (> 0)"),
    "ft_steps": ("int", "fine-tuning gradient steps on the unseen task"),
    "ft_lr": ("float", "fine-tuning learning rate (> 0)"),
    "ft_rank": ("int", "fine-tuning adapter rank (0 = k, or 3k when T = 2)"),
    "init_scale": ("float", "std of the random initial adapter factors (> 0)"),
    "record_every": ("int", "trajectory stride in steps (>= 1)"),
    "sampler": ("choice", "how finite-sample data are drawn: 'raw' Gaussian samples (streamed) "
                          "or 'wishart' statistics drawn directly (exact in distribution, needs "
                          "N, n >= d)"),
}

SPEC_KEYS = ("grid", "fixed", "seeds", "chunk_size", "truth", "name", "description")


def resolve_path(path: str, relative_to: str | None) -> str:
    """``path`` made absolute against the folder of the file ``relative_to`` (if relative)."""
    path = os.path.expanduser(str(path))
    if relative_to is not None and not os.path.isabs(path):
        path = os.path.join(os.path.dirname(os.path.abspath(relative_to)), path)
    return os.path.abspath(path)


def load_file(path) -> dict[str, Any]:
    """Read a ``.toml`` or ``.json`` file into a dict; ValueError (one line) on any problem."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".toml", ".json"):
        raise ValueError(f"config file {path!r} must end in .toml or .json, "
                         f"got {ext or 'no suffix'!r}")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ValueError(f"config file {path!r} does not exist") from None
    except OSError as e:
        raise ValueError(f"config file {path!r} cannot be read ({e.strerror})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8")) if ext == ".toml" else json.loads(raw)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"config file {path!r} is not valid {ext[1:].upper()}: {msg}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path!r} must hold a table/object of keys, "
                         f"got {type(data).__name__}")
    return data


def parse_count_or_inf(text: str, key: str = "N"):
    """Parse ``N`` or ``n``: a non-negative integer or ``inf`` (population)."""
    s = str(text).strip().lower()
    if s in ("inf", "infinity", "population"):
        return "inf"
    try:
        return int(s)
    except ValueError:
        try:
            v = float(s)
        except ValueError:
            v = math.nan
        if math.isinf(v) and v > 0:
            return "inf"
        if math.isfinite(v) and v.is_integer():
            return int(v)
        raise ValueError(f"{key} must be an integer >= 1 or 'inf' (population), got {text!r}")


def _check_keys(where: str, cfg: dict, allowed, protocol: str | None = None) -> None:
    """``ValueError`` for a key of ``cfg`` not in ``allowed`` (the keys of ``protocol``, when
    given: the message then says that the keys depend on the protocol)."""
    unknown = [k for k in cfg if k not in allowed]
    if unknown and protocol is not None:
        raise protocols.unknown_key_error(unknown[0], protocol, allowed, where)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; allowed keys: "
                         f"{', '.join(allowed)}")


def merge(*layers: dict | None) -> dict:
    """Later layers override earlier ones; ``None`` values (unset flags) are skipped."""
    out: dict = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if value is not None:
                out[key] = value
    return out


def _protocol_name(*layers: dict) -> str:
    """The protocol a file names (key ``protocol`` in any layer, default ``"paper"``)."""
    return next((layer["protocol"] for layer in layers
                 if isinstance(layer, dict) and isinstance(layer.get("protocol"), str)),
                protocols.DEFAULT)


def _protocol_keys(*layers: dict) -> list:
    """Keys allowed in a file: those of the protocol it names (:func:`_protocol_name`), so a
    family's file is checked against its own keys."""
    try:
        proto = protocols.get(_protocol_name(*layers))
    except ValueError:
        return ["protocol"]  # the unknown name is reported by validation, naming the choices
    return ["protocol", *proto.defaults]


def load_run_config(path, *, check_truth: bool = True) -> tuple[dict, str | None]:
    """A run config file: flat keys of DEFAULTS plus an optional ``truth`` path.

    A file written by ``linmeta run`` (a record with a ``"config"`` table) is accepted too, so
    ``linmeta run --config results/run-x/record.json`` repeats a run; with ``check_truth`` its
    truth file must still have the recorded sha256. Returns (config, truth path).
    """
    data = load_file(path)
    if isinstance(data.get("config"), dict):  # a run record
        truth = data["truth"] if isinstance(data.get("truth"), dict) else {}
        truth_path = truth.get("path")
        if check_truth and truth_path is not None and truth.get("sha256") \
                and os.path.exists(truth_path):

            if file_sha256(truth_path) != truth["sha256"]:
                raise ValueError(f"truth file {truth_path!r} has changed since the run recorded "
                                 f"in {os.fspath(path)!r} (sha256 differs); pass --truth to use "
                                 "the new file anyway")
        data = dict(data["config"])
    else:
        data = dict(data)
        truth_path = data.pop("truth", None)
        if truth_path is not None:
            if not isinstance(truth_path, str):
                raise ValueError(f"config file {os.fspath(path)!r}: truth must be a path string, "
                                 f"got {truth_path!r}")
            truth_path = resolve_path(truth_path, os.fspath(path))
    _check_keys(f"config file {os.fspath(path)!r}", data, _protocol_keys(data),
                _protocol_name(data))
    return data, truth_path


def load_sweep_spec(path) -> tuple[dict, str | None]:
    """A sweep spec file (see the module docstring). Returns (spec, truth path or None).

    The returned spec has ``grid``, ``fixed`` and ``seeds`` (and ``chunk_size``/``name``/
    ``description`` when given); its keys are checked against the named protocol's keys here
    (the paper's by default), its values by :func:`linmeta.engine.sweep.validate_config` when the grid
    is expanded.
    """
    where = f"sweep spec {os.fspath(path)!r}"
    data = load_file(path)
    _check_keys(where, data, SPEC_KEYS)
    grid = data.get("grid", {})
    fixed = data.get("fixed", {})
    if not isinstance(grid, dict) or not isinstance(fixed, dict):
        raise ValueError(f"{where}: 'grid' and 'fixed' must be tables of config keys")
    allowed = _protocol_keys(fixed, grid)
    _check_keys(f"{where} [grid]", grid, allowed, _protocol_name(fixed, grid))
    _check_keys(f"{where} [fixed]", fixed, allowed, _protocol_name(fixed, grid))
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}: grid.{key} must be a non-empty list of values, "
                             f"got {values!r}")
    both = sorted(set(grid) & set(fixed))
    if both:
        raise ValueError(f"{where}: key {both[0]!r} is both in [grid] and [fixed]; keep one")
    if "seeds" in data and ("seed" in grid or "seed" in fixed):
        raise ValueError(f"{where}: give the seeds either as the top-level 'seeds' (an int n for "
                         "seeds 0..n-1, or a list) or as the grid/fixed key 'seed', not both")
    seeds = data.get("seeds", None if ("seed" in grid or "seed" in fixed) else 1)
    def is_int(x):
        return isinstance(x, int) and not isinstance(x, bool)

    if seeds is not None and not (
            (is_int(seeds) and seeds >= 1)
            or (isinstance(seeds, list) and seeds and all(is_int(s) and s >= 0 for s in seeds)
                and len(set(seeds)) == len(seeds))):
        raise ValueError(f"{where}: seeds must be an integer >= 1 or a non-empty list of distinct "
                         f"integers >= 0, got {seeds!r}")
    spec: dict[str, Any] = {"grid": grid, "fixed": fixed}
    if seeds is not None:
        spec["seeds"] = seeds
    if "chunk_size" in data:
        cs = data["chunk_size"]
        if isinstance(cs, bool) or not isinstance(cs, int) or cs < 1:
            raise ValueError(f"{where}: chunk_size must be an integer >= 1, got {cs!r}")
        spec["chunk_size"] = cs
    for key in ("name", "description"):
        if key in data:
            spec[key] = str(data[key])
    truth_path = data.get("truth")
    if truth_path is not None:
        if not isinstance(truth_path, str):
            raise ValueError(f"{where}: truth must be a path string, got {truth_path!r}")
        truth_path = resolve_path(truth_path, os.fspath(path))
    return spec, truth_path


def config_for_truth(cfg: dict, truth) -> dict:
    """Set d, k, T from a user truth; ValueError when the config asks for other sizes."""
    out = dict(cfg)
    for key, value in (("d", truth.d), ("k", truth.k), ("T", truth.T)):
        given = cfg.get(key)
        if given is not None and given != value:
            raise ValueError(f"{key}={given} does not match the truth file ({key}={value}); "
                             f"leave {key} out or set it to {value}")
        out[key] = int(value)
    if truth.n_unseen < 1:
        raise ValueError("the truth file has no unseen task (U_new with m >= 1 is needed to "
                         "fine-tune); add an array U_new of shape (m, d, k)")
    return out
