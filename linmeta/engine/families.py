"""Families as plugins: a family of claims is a value that registers itself.

A :class:`Family` names a line of work (the paper's Meta-LoRA claims, bilevel retraining, shared
representations, learning the low-rank difference, or a researcher's own): its title, its theory
document, its claims (claim id -> the module that turns the claim into verdict rows) and the sweep
protocols it registers with :mod:`linmeta.engine.protocols`. ``linmeta verify``, ``linmeta sweep``,
``linmeta run --protocol`` and the reports iterate over what is registered here; adding a family
edits no central file.

Where families come from (:func:`load`, called on first need):

- built in: every subpackage of ``linmeta.families`` (each registers its :class:`Family` and its
  protocols when imported);
- installed: every entry point of the group ``linmeta.families`` (:data:`ENTRY_POINT_GROUP`), e.g.
  in a plugin's ``pyproject.toml``::

      [project.entry-points."linmeta.families"]
      toy = "toy_family"            # a module that calls linmeta.engine.families.register(...)

  The entry point may name a module that registers its family when imported, a module with a
  ``FAMILY`` attribute, or a :class:`Family` value itself.

A plugin that fails to load (an import error, a name already taken, a malformed value) is reported
in one line naming the plugin, on standard error, and left out; the built-in families still run.
A built-in family that fails to load is a bug of linmeta and raises.

Claim modules follow one contract (see :mod:`linmeta.engine.claims`): ``run(setting, seed) ->
ClaimResult`` and ``plot(result, out_dir) -> list of paths``.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import pkgutil
import re
import sys
import threading
from typing import Mapping

__all__ = ["Family", "register", "get", "names", "load", "all_families", "load_errors",
           "ENTRY_POINT_GROUP", "BUILTIN_PACKAGE"]

ENTRY_POINT_GROUP = "linmeta.families"
BUILTIN_PACKAGE = "linmeta.families"
_CLAIM_ID = re.compile(r"^[A-Z][A-Za-z]*[0-9]+$")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class Family:
    """One family of claims.

    ``name``: lower-case identifier (``linmeta verify --claims NAME`` runs its claims).
    ``title``: what it covers, one line. ``doc``: its theory document, a path relative to the
    repository (``docs/NAME.md``); claim ``X`` is stated at the anchor ``#x`` there (or ``doc`` is
    an absolute URL for a plugin whose document lives elsewhere). ``claims``: claim id (a capital
    letter and a number, e.g. ``"C3"``) -> importable module implementing the claim contract, in
    the order ``linmeta verify`` runs them. ``protocols``: names of the sweep protocols the family
    registers. ``settings``: the settings its claims accept (``tiny`` for the tests, ``quick`` for
    ``linmeta verify --quick``, ``full`` for the documented runs). ``source``: where it came from
    (``"builtin"`` or ``"entry point <name>"``), filled in by the loader. ``quick_seconds``:
    optional claim id -> rough seconds of the claim at ``quick`` (compile included), a scheduling
    hint only: ``linmeta verify --jobs N`` starts the longest claims first (longest processing
    time first keeps N workers evenly loaded); the report keeps the claims' order.
    """

    name: str
    title: str
    doc: str
    claims: Mapping[str, str]
    protocols: tuple[str, ...] = ()
    settings: tuple[str, ...] = ("tiny", "quick", "full")
    source: str = "builtin"
    quick_seconds: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"family name must be a lower-case identifier, got {self.name!r}")
        if not isinstance(self.claims, Mapping):
            raise ValueError(f"family {self.name!r}: claims must map claim ids to module names")
        for cid, module in self.claims.items():
            if not isinstance(cid, str) or not _CLAIM_ID.match(cid):
                raise ValueError(f"family {self.name!r}: claim id must be a capital letter and a "
                                 f"number (e.g. 'C3'), got {cid!r}")
            if not isinstance(module, str) or not module:
                raise ValueError(f"family {self.name!r}: claim {cid} needs a module name")
        if not isinstance(self.quick_seconds, Mapping) or not all(
                cid in self.claims and isinstance(v, (int, float)) and not isinstance(v, bool)
                and v >= 0 for cid, v in self.quick_seconds.items()):
            raise ValueError(f"family {self.name!r}: quick_seconds must map some of its claim ids "
                             "to seconds >= 0")
        object.__setattr__(self, "quick_seconds", dict(self.quick_seconds))
        object.__setattr__(self, "claims", dict(self.claims))
        object.__setattr__(self, "protocols", tuple(self.protocols))
        object.__setattr__(self, "settings", tuple(self.settings))


_REGISTRY: dict[str, Family] = {}
_ERRORS: dict[str, str] = {}
_LOCK = threading.RLock()
_LOADED = False
_LOADING = False


def register(family: Family, *, replace: bool = False) -> Family:
    """Register ``family``. Its name and claim ids must be new (``replace=True`` redefines a
    family of the same name). Returns the family."""
    if not isinstance(family, Family):
        raise ValueError(f"family must be a linmeta.engine.families.Family, got "
                         f"{type(family).__name__}")
    load()   # the built-in families first, so that a clash with them is seen
    with _LOCK:
        if family.name in _REGISTRY and not replace:
            raise ValueError(f"family {family.name!r} is already registered; pass replace=True "
                             "to redefine it")
        taken = {cid: f.name for f in _REGISTRY.values() if f.name != family.name
                 for cid in f.claims}
        clash = [cid for cid in family.claims if cid in taken]
        if clash:
            raise ValueError(f"family {family.name!r}: claim {clash[0]} is already claimed by "
                             f"family {taken[clash[0]]!r}")
        _REGISTRY[family.name] = family
    return family


def _builtin_modules() -> list[str]:
    package = importlib.import_module(BUILTIN_PACKAGE)
    return [f"{BUILTIN_PACKAGE}.{info.name}" for info in pkgutil.iter_modules(package.__path__)
            if info.ispkg and not info.name.startswith("_")]


def _load_entry_point(ep) -> None:
    before = set(_REGISTRY)
    obj = ep.load()
    if isinstance(obj, Family):
        register(dataclasses.replace(obj, source=f"entry point {ep.name}"))
        return
    fam = getattr(obj, "FAMILY", None)
    if isinstance(fam, Family) and fam.name not in _REGISTRY:
        register(dataclasses.replace(fam, source=f"entry point {ep.name}"))
        return
    if set(_REGISTRY) == before and not isinstance(fam, Family):
        raise ValueError(f"{ep.value!r} registered no family (register a "
                         "linmeta.engine.families.Family, or give the module a FAMILY value)")
    for name in set(_REGISTRY) - before:
        _REGISTRY[name] = dataclasses.replace(_REGISTRY[name], source=f"entry point {ep.name}")


def load() -> None:
    """Import the built-in families and the installed plugins (once). A plugin that fails is
    reported in one line on standard error and skipped (:func:`load_errors`)."""
    global _LOADED, _LOADING
    if _LOADED or _LOADING:   # _LOADING: a family asked for the registry while being imported
        return
    with _LOCK:
        if _LOADED or _LOADING:
            return
        _LOADING = True
        try:
            _load_all()
        finally:
            _LOADING = False
        _LOADED = True


def _load_all() -> None:
    for module in _builtin_modules():
        importlib.import_module(module)
    try:
        eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception as e:  # a broken distribution's metadata must not stop linmeta
        eps = ()
        _ERRORS["<entry points>"] = f"{type(e).__name__}: {e}"
    for ep in sorted(eps, key=lambda e: e.name):
        try:
            _load_entry_point(ep)
        except Exception as e:  # noqa: BLE001  any failure of a plugin is reported, not raised
            message = f"{type(e).__name__}: {e}".splitlines()[0]
            _ERRORS[ep.name] = message
            print(f"linmeta: plugin family {ep.name!r} ({ep.value}) failed to load and is "
                  f"skipped: {message}", file=sys.stderr)


def load_errors() -> dict[str, str]:
    """Plugins that failed to load: entry point name -> the error, in one line."""
    load()
    return dict(_ERRORS)


def all_families() -> tuple[Family, ...]:
    """The registered families: the built-in ones (``paper`` first), then plugins by name."""
    load()
    order = ("paper", "bilevel", "representation", "difference")
    return tuple(sorted(_REGISTRY.values(),
                        key=lambda f: (f.source != "builtin",
                                       order.index(f.name) if f.name in order else len(order),
                                       f.name)))


def names() -> tuple[str, ...]:
    """Names of the registered families, in :func:`all_families` order."""
    return tuple(f.name for f in all_families())


def get(name: str) -> Family:
    """The registered family ``name``; ``ValueError`` naming the registered ones otherwise."""
    load()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"family must be one of {', '.join(names())}; got {name!r}") from None
