"""What the command line tells a user (issue 20): help that reads the claims and the protocols'
keys from their registries (item 9), and an --out that names a file said to be a file, for every
command and experiment script that takes --out (item 12). Nothing here computes."""
import json

import pytest

from linmeta.engine import claims, protocols
from linmeta.engine.claim_support import experiment_args, experiment_parser
from linmeta.front.cli import main


def _help(capsys, *argv) -> str:
    assert main(list(argv) + ["--help"]) == 0
    return capsys.readouterr().out


def _error(capsys, *argv) -> str:
    """A bad command: exit code 2 and exactly one line on standard error; returns it."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _ranges() -> list[str]:
    out = []
    for family in claims.family_names():
        ids = claims.family_claims(family)
        out.append(ids[0] if len(ids) == 1 else f"{ids[0]}-{ids[-1]}")
    return out


# ----------------------------------------------------------------------------- item 9
def test_main_and_verify_help_name_every_registered_claim_and_no_stale_time(capsys):
    main_help = _help(capsys)
    verify_help = _help(capsys, "verify")
    ranges = _ranges()
    assert len(ranges) >= 3                               # paper, bilevel, representation
    for text in (main_help, verify_help):
        assert ", ".join(ranges) in text                  # e.g. C1-C8, M1-M6, R1-R7
        assert "two minutes" not in text
        assert "(C1-C8)" not in text
    assert "families: " + ", ".join(claims.family_names()) in " ".join(verify_help.split())


def test_sweep_help_lists_the_keys_of_every_protocol(capsys):
    text = _help(capsys, "sweep")
    flat = " ".join(text.split())
    assert "depend on the protocol" in flat and 'protocol = "bilevel"' in flat
    for name in protocols.names():
        proto = protocols.get(name)
        assert repr(name) in text
        # every key of the protocol is listed under its own line
        block = flat[flat.index(repr(name)):]
        assert all(key in block for key in proto.defaults), name


def test_unknown_key_error_names_the_protocol_and_its_keys(capsys, tmp_path):
    spec = tmp_path / "bilevel.toml"
    spec.write_text('[fixed]\nprotocol = "bilevel"\nft_steps = 3\n[grid]\nT = [2]\n')
    line = _error(capsys, "sweep", spec, "--out", tmp_path / "out")
    assert "'ft_steps'" in line and "protocol 'bilevel'" in line
    assert "depend on the protocol" in line and "inner_lr" in line and "lr_adapter" not in line
    spec.write_text('[fixed]\nlr = 3\n[grid]\nT = [2]\n')
    line = _error(capsys, "sweep", spec, "--out", tmp_path / "out")
    assert "protocol 'paper'" in line and "depend on the protocol" in line
    assert 'protocol = "' in line and "lr_adapter" in line
    line = _error(capsys, "run", "--protocol", "representation", "--set", "inner_lr=1",
                  "--no-write")
    assert "protocol 'representation'" in line and "adapt_lr" in line
    with pytest.raises(ValueError, match="depend on the protocol"):
        protocols.validate({"protocol": "paper_code", "method": "maml"})


# ----------------------------------------------------------------------------- item 12
@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("# not a folder\n")
    return path


def _fake_sweep(folder):
    (folder / "trajectories").mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"spec": {"grid": {"T": [2]}}}))
    (folder / "results.csv").write_text("id,protocol,T,ml_base_error\nabc,paper,2,1.0\n")
    return folder


@pytest.mark.parametrize("command", ["run", "sweep", "verify", "plot"])
def test_out_naming_a_file_says_it_is_a_file(capsys, tmp_path, a_file, command):
    spec = tmp_path / "spec.toml"
    spec.write_text("[grid]\nT = [2]\n")
    argv = {"run": ["run", "--d", "3", "--outer-steps", "2"],
            "sweep": ["sweep", spec],
            "verify": ["verify", "--tiny", "--claims", "C1"],
            "plot": ["plot", _fake_sweep(tmp_path / "sweep")]}[command]
    line = _error(capsys, *argv, "--out", a_file)
    assert "README.md" in line and "is a file, not a folder" in line
    assert "Errno" not in line and not any(a_file.parent.glob(".write-test-*"))


def test_experiment_out_naming_a_file_says_it_is_a_file(capsys, a_file):
    with pytest.raises(SystemExit) as exit_:
        experiment_args(experiment_parser("An experiment.", prog="exp"), ["--out", str(a_file)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a file, not a folder" in err and "Errno" not in err
