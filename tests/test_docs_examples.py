"""The examples of the README and docs/*.md cannot drift (issue 20).

- Python: every ```python block of :data:`SYBIL_DOCUMENTS` runs, in order, in one namespace per
  document, through sybil (a block that must not run is preceded by ``<!-- skip: next -->``; a
  hidden ``<!-- invisible-code-block: python ... -->`` sets up what an excerpt needs or checks it
  against the code it is taken from).
- Command lines: every ``linmeta ...``, ``python -m linmeta ...``, ``python -m linmeta.verify ...``
  and ``python -m experiments.X ...`` in README.md and docs/*.md (in code blocks and in inline code)
  is parsed by the real argument parser (``linmeta``'s :func:`linmeta.front.cli.build_parser`, the
  script's ``build_parser()``) without running; a ``run`` or ``sweep`` also has its configuration
  validated (keys and values of the protocol it names, no computation); every path a command names
  under a folder of the repository (``examples/``, ``benchmarks/``, ...) exists.
"""
import argparse
import importlib
import os
import re
import shlex
import sys
from pathlib import Path

import pytest
from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser

from linmeta.engine import compile_cache, config, families, protocols, sweep
from linmeta.front import cli, verify

REPO = Path(__file__).resolve().parents[1]
# the documents whose Python blocks run; docs/bilevel.md and docs/representation.md join when
# their rewrites land (add them here)
SYBIL_DOCUMENTS = ("README.md", "docs/extending.md", "docs/theory.md")
COMMAND_DOCUMENTS = ("README.md", *sorted(str(p.relative_to(REPO))
                                          for p in (REPO / "docs").glob("*.md")))
PLUGIN = REPO / "examples" / "plugin_family"
REPO_FOLDERS = ("examples", "benchmarks", "experiments", "docs", "tests", "linmeta", "figures")
# experiment scripts whose parser moves to the shared one on another branch of issue 20
PENDING_SCRIPTS: set = set()


# ----------------------------------------------------------------------------- Python blocks
def _setup(namespace):
    """Each document runs in a namespace of its own; the example plugin (docs/extending.md's
    excerpts come from it) is importable, and whatever it registers is removed afterwards."""
    families.load()   # the built-in families first: the snapshot below must hold them
    namespace["__saved__"] = (dict(families._REGISTRY), dict(protocols._REGISTRY),
                              set(sys.modules), list(sys.path))
    sys.path.insert(0, str(PLUGIN))


def _teardown(namespace):
    fams, protos, modules, path = namespace.pop("__saved__")
    families._REGISTRY.clear()
    families._REGISTRY.update(fams)
    protocols._REGISTRY.clear()
    protocols._REGISTRY.update(protos)
    for name in set(sys.modules) - modules:
        if name.split(".")[0] == "linmeta_shrink":
            del sys.modules[name]
    sys.path[:] = path


SYBIL = Sybil(parsers=[PythonCodeBlockParser(), SkipParser()], setup=_setup, teardown=_teardown)


@pytest.mark.parametrize("name", SYBIL_DOCUMENTS)
def test_python_examples_run(name):
    document = SYBIL.parse(REPO / name)
    examples = list(document)
    SYBIL.setup(document.namespace)
    try:
        for example in examples:
            example.evaluate()
    finally:
        SYBIL.teardown(document.namespace)


# ----------------------------------------------------------------------------- command lines
_FENCE = re.compile(r"^( *)```(\w*)[^\n]*\n(.*?)^\1```", re.S | re.M)
_SPAN = re.compile(r"`([^`\n]+(?:\n[^`\n]+)*)`")
_STARTS = ("linmeta ", "python -m linmeta", "python -m experiments.")


def _code_lines(text: str):
    """Lines of fenced shell blocks and of indented code blocks (4 spaces after a blank line)."""
    for match in _FENCE.finditer(text):
        if match.group(2) in ("bash", "sh", "shell", "console"):   # not output, not trees
            yield from match.group(3).splitlines()
    prose = _FENCE.sub("", text)
    for block in re.findall(r"(?:^|\n\n)((?:    [^\n]*\n?)+)", prose):
        yield from (line[4:] for line in block.splitlines())


def _spans(text: str):
    """Inline code spans of the prose (a span may continue on the next line)."""
    for span in _SPAN.findall(_FENCE.sub("", text)):
        yield " ".join(span.split())


def _commands(text: str):
    """Each command of the text and whether it is inline code (prose may name a command with
    placeholders, ``linmeta run --protocol NAME``, or name an option, ``linmeta run
    --protocol``): the words after environment settings and ``nice``, split at ``&&``, ``;``
    and ``|``, comments removed."""
    for inline, line in [*((False, x) for x in _code_lines(text)),
                         *((True, x) for x in _spans(text))]:
        line = line.strip()
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        command: list[str] = []
        for word in [*words, "&&"]:
            if word in ("&&", ";", "|", "||"):
                while command and (re.match(r"^[A-Z_][A-Z0-9_]*=", command[0]) or command[0] == "nice"):
                    command = command[3:] if command[0] == "nice" and len(command) > 2 and \
                        command[1] == "-n" else command[1:]
                text_ = " ".join(command)
                if text_.startswith(_STARTS) or text_ == "linmeta":
                    yield tuple(command), inline
                command = []
            else:
                command.append(word)


def _all_commands():
    found = {}
    for name in COMMAND_DOCUMENTS:
        for command, inline in _commands((REPO / name).read_text(encoding="utf-8")):
            where = found.setdefault(command, (name, inline))
            found[command] = (where[0], where[1] and inline)   # in a code block: complete
    return found


COMMANDS = _all_commands()


def _target(command):
    """(kind, name, arguments): ``("linmeta", None, argv)``, ``("verify", None, argv)`` or
    ``("experiment", module, argv)``."""
    if command[0] == "linmeta":
        return "linmeta", None, list(command[1:])
    module, argv = command[2], list(command[3:])
    if module == "linmeta":
        return "linmeta", None, argv
    if module == "linmeta.verify":
        return "verify", None, argv
    return "experiment", module.split(".", 1)[1], argv


_PLACEHOLDER = re.compile(r"^(--[a-z-]+=)?[A-Z][A-Z_|]*(=[A-Z_]+)?$")   # NAME, KEY=VALUE
_ELLIPSIS = re.compile(r"\.\.\.|<[a-z_]+>")                              # ..., <name>


def _parse(parser, argv, inline=False):
    """The parsed arguments (None for --help); inline code may end in an option named without
    its value (then None too)."""
    try:
        return parser.parse_args(argv)
    except SystemExit as e:
        if e.code in (0, None):
            return None  # --help, --version
        if inline and argv and argv[-1].startswith("--"):
            try:
                parser.parse_args([*argv, "1"])
                return None        # a mention of the option
            except SystemExit:
                pass
        raise AssertionError(f"the parser refuses {argv}") from None


def _check_paths(argv):
    for word in argv:
        for part in word.split("="):
            head = part.split("/")[0]
            if "/" in part and head in REPO_FOLDERS:
                assert (REPO / part).exists(), f"{part} does not exist"


def _validate_run(args):
    """The configuration ``linmeta run`` would build (as :func:`linmeta.front.cli._cmd_run`),
    validated without running."""
    file_cfg = {}
    if args.config is not None:
        file_cfg, _ = config.load_run_config(args.config, check_truth=False)
    user = config.merge(file_cfg, {k: getattr(args, k, None) for k in cli._defaults()},
                        dict(args.set or ()))
    if args.truth is not None:        # a user's file (a placeholder in the docs): sizes from it
        user = {k: v for k, v in user.items() if k not in ("d", "k", "T")}
    protocols.validate(user)


def _validate_sweep(args):
    spec, _ = config.load_sweep_spec(REPO / args.spec)
    sweep.expand_grid({k: spec[k] for k in ("grid", "fixed", "seeds") if k in spec})


@pytest.fixture(scope="module", autouse=True)
def example_plugin_installed():
    """docs/extending.md's commands run after ``pip install ./examples/plugin_family``: its family
    is registered here (and removed afterwards)."""
    namespace = {}
    _setup(namespace)
    importlib.import_module("linmeta_shrink")
    yield
    _teardown(namespace)


def test_the_documents_hold_commands():
    kinds = {_target(c)[0] for c in COMMANDS}
    assert kinds == {"linmeta", "verify", "experiment"}, kinds
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize("command", sorted(COMMANDS), ids=lambda c: " ".join(c)[:80])
def test_command_line_is_accepted(command):
    where, inline = COMMANDS[command]
    if inline and any(_ELLIPSIS.search(w) for w in command):
        return            # prose naming a form of command (`python -m experiments.<name>`)
    kind, module, argv = _target(command)
    _check_paths(argv)
    template = inline and any(_PLACEHOLDER.match(a) for a in argv)   # e.g. --protocol NAME
    if kind == "linmeta" and inline and len(argv) == 1:   # prose naming a command: `linmeta sweep`
        assert argv[0] in cli.build_parser(argv[0])._subparsers._group_actions[0].choices
        return
    if kind == "linmeta":
        words = [a for a in argv if not a.startswith("-")]
        args = _parse(cli.build_parser(words[0] if words else None), argv, inline)
        if template:
            return
        if args is not None and getattr(args, "command", None) == "run":
            _validate_run(args)
        if args is not None and getattr(args, "command", None) == "sweep":
            _validate_sweep(args)
        if args is not None and getattr(args, "command", None) == "verify":
            verify._parse_claims(args.claims)
        return
    if kind == "verify":
        parser = compile_cache.add_argument(verify.add_arguments(argparse.ArgumentParser()))
        args = _parse(parser, argv, inline)
        if args is not None and not template:
            verify._parse_claims(args.claims)
        return
    path = REPO / "experiments" / f"{module}.py"
    assert path.exists(), f"{where}: experiments/{module}.py does not exist ({' '.join(command)})"
    if module in PENDING_SCRIPTS:
        pytest.xfail(f"experiments/{module}.py: its parser is converted on another branch")
    script = importlib.import_module(f"experiments.{module}")
    _parse(script.build_parser(), argv, inline)


def test_the_command_finder_sees_broken_commands(tmp_path):
    """The finder is not blind: a made-up document's commands are found, in every form."""
    text = ("```bash\nJAX_ENABLE_X64=0 nice -n 5 linmeta sweep a.toml --out b && "
            "linmeta plot b   # comment\n```\n\nSee `python -m experiments.nope\n--setting full`."
            "\n\n    python -m linmeta.verify --quick\n")
    found = set(_commands(text))
    assert found == {(("linmeta", "sweep", "a.toml", "--out", "b"), False),
                     (("linmeta", "plot", "b"), False),
                     (("python", "-m", "experiments.nope", "--setting", "full"), True),
                     (("python", "-m", "linmeta.verify", "--quick"), False)}
    with pytest.raises(AssertionError, match="refuses"):
        _parse(cli.build_parser("run"), ["run", "--no-such-flag"])
    with pytest.raises(ValueError, match="protocol"):
        _validate_run(_parse(cli.build_parser("run"), ["run", "--protocol", "toy", "--set",
                                                       "lr=0.5"]))
