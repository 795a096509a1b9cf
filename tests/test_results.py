"""The results store: atomic writes, JSON/CSV round trips, provenance, resumable sweep folders."""
import json
import math
import os

import numpy as np
import pytest

from linmeta.engine import results as res


def _no_temp_files(folder):
    return [f for f in os.listdir(folder) if f.endswith(".tmp")] == []


def test_atomic_writes_round_trip(tmp_path):
    res.atomic_write_text(tmp_path / "a.txt", "hello\n")
    assert (tmp_path / "a.txt").read_text() == "hello\n"
    res.atomic_write_json(tmp_path / "a.json", {"x": np.float64(1.5), "y": np.arange(3),
                                                "z": (np.int32(4), True)})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1.5, "y": [0, 1, 2],
                                                             "z": [4, True]}
    arrays = {"a": np.linspace(0, 1, 7), "b": np.eye(3, dtype=np.float32)}
    res.atomic_write_npz(tmp_path / "a.npz", arrays)
    back = res.load_trajectories(tmp_path / "a.npz")
    assert set(back) == {"a", "b"}
    np.testing.assert_array_equal(back["a"], arrays["a"])
    assert back["b"].dtype == np.float32
    assert _no_temp_files(tmp_path)


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "table.csv"
    res.atomic_write_text(target, "old complete content\n")

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        res.atomic_write_csv(target, [{"a": 1}], ["a"])
    monkeypatch.undo()
    assert target.read_text() == "old complete content\n"
    assert _no_temp_files(tmp_path)


def test_to_jsonable_non_finite_floats_are_strict_json():
    out = res.to_jsonable({"nan": float("nan"), "inf": np.inf, "ninf": -np.inf,
                           "arr": np.array([1.0, np.nan]), "none": None})
    assert out == {"nan": "nan", "inf": "inf", "ninf": "-inf", "arr": [1.0, "nan"], "none": None}
    json.dumps(out, allow_nan=False)  # strict JSON


def test_csv_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"id": f"c{i}", "x": float(v), "n": int(i), "flag": bool(i % 2), "solver": "newton",
             "N": "inf" if i == 0 else 100}
            for i, v in enumerate(rng.standard_normal(20) * 10.0 ** rng.integers(-30, 30, 20))]
    cols = ["id", "x", "n", "flag", "solver", "N"]
    res.atomic_write_csv(tmp_path / "t.csv", rows, cols)
    back = res.read_csv(tmp_path / "t.csv")
    rows[0]["N"] = math.inf  # the strings inf/nan are read back as floats
    assert back == rows  # floats written with repr round-trip bit for bit
    assert all(isinstance(r["id"], str) for r in back)


def test_environment_names_versions_dtype_device():
    import jax

    import linmeta

    env = res.environment()
    assert env["linmeta"] == linmeta.__version__
    assert env["jax"] == jax.__version__
    assert env["numpy"] == np.__version__
    assert env["dtype"] == "float64"  # the suite runs with x64
    assert env["device"].startswith(jax.devices()[0].platform)
    assert env["device_count"] == len(jax.devices())


def test_check_writable_dir(tmp_path):
    made = res.check_writable_dir(tmp_path / "new" / "deeper")
    assert os.path.isdir(made) and os.listdir(made) == []
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="not writable"):
        res.check_writable_dir(blocker / "sub")


def _store(folder, spec=None, ids=("a", "b", "c", "d"), chunk_size=2):
    return res.SweepStore(folder, spec or {"grid": {"T": [2, 3]}, "fixed": {}, "seeds": 2},
                          list(ids), truth_info={"source": "sampled"}, chunk_size=chunk_size,
                          env={"dtype": "float64"})


def _rows(ids, value=1.0):
    return [{"id": i, "T": 3, "loss": value + k} for k, i in enumerate(ids)]


def test_sweep_store_resume_keeps_finished_rows_in_grid_order(tmp_path):
    s = _store(tmp_path)
    assert s.open() == 0
    # finish the second chunk first: the table is still in planned order
    s.add_chunk(_rows(["c", "d"], 10.0), [{"x": np.arange(3)}] * 2, 0.5, ["id", "T", "loss"])
    s.add_chunk(_rows(["a", "b"]), [{"x": np.arange(2)}] * 2, 0.25, ["id", "T", "loss"])
    s.close()
    table = res.read_csv(tmp_path / res.RESULTS_CSV)
    assert [r["id"] for r in table] == ["a", "b", "c", "d"]
    man = json.loads((tmp_path / res.MANIFEST).read_text())
    assert man["status"] == "finished" and man["finished_ids"] == ["a", "b", "c", "d"]
    assert [c["ids"] for c in man["chunks"]] == [["c", "d"], ["a", "b"]]
    assert man["spec"]["grid"] == {"T": [2, 3]} and man["environment"] == {"dtype": "float64"}
    assert man["started"] and man["finished"]

    again = _store(tmp_path, chunk_size=99)
    assert again.open() == 4
    assert again.chunk_size == 2  # a resumed sweep keeps its chunks
    assert all(again.finished(i) for i in "abcd")


def test_sweep_store_row_without_trajectories_counts_as_unfinished(tmp_path):
    s = _store(tmp_path)
    s.open()
    s.add_chunk(_rows(["a", "b"]), [{"x": np.arange(2)}] * 2, 0.1, ["id", "T", "loss"])
    os.remove(s.traj_path("b"))  # e.g. deleted by hand
    # a stale temp file from a killed write is ignored
    (tmp_path / res.TRAJ_DIR / ".c.npz.123.tmp").write_bytes(b"partial")
    again = _store(tmp_path)
    assert again.open() == 1
    assert again.finished("a") and not again.finished("b")


def test_sweep_store_refuses_a_different_sweep(tmp_path):
    _store(tmp_path).open()
    other = _store(tmp_path, spec={"grid": {"T": [2, 5]}, "fixed": {}, "seeds": 2})
    with pytest.raises(ValueError, match="different sweep"):
        other.open()


def test_load_sweep(tmp_path):
    s = _store(tmp_path)
    s.open()
    man, rows = res.load_sweep(tmp_path)
    assert rows == [] and man["planned"] == 4
    s.add_chunk(_rows(["a"], math.pi), [{}], 0.1, ["id", "T", "loss"])
    man, rows = res.load_sweep(tmp_path)
    assert rows == [{"id": "a", "T": 3, "loss": math.pi}]


# ----------------------------------------------------------------------------- ids stay strings
DIGIT_IDS = ["123456789012", "012345678901", "12e345678901", "1234567890e1", "a1b2c3d4e5f6"]


def test_read_csv_keeps_ids_as_strings(tmp_path):
    """A config id is a hex digest: one of digits only, or digits and one 'e', must not become a
    number (leading zeros lost, the trajectory file name wrong, a resume that never matches)."""
    res.atomic_write_csv(tmp_path / "t.csv", [{"id": i, "x": 1.5} for i in DIGIT_IDS], ["id", "x"])
    back = res.read_csv(tmp_path / "t.csv")
    assert [r["id"] for r in back] == DIGIT_IDS and all(r["x"] == 1.5 for r in back)


def test_all_digit_ids_resume_and_the_manifest_does_not_grow(tmp_path):
    """The issue's case: this configuration's id is all digits; its finished row is recognised."""
    from linmeta.engine import sweep

    cfg = dict(d=10, k=1, T=3, N=5000, n=100, noise_std=0.01, ft_steps=10000, seed=22)
    assert sweep.config_id(cfg).isdigit()  # the guard: the case this test is about
    ids = [sweep.config_id(cfg), "012345678901", "12e345678901", "abcdef012345"]
    s = _store(tmp_path, ids=ids)
    s.open()
    s.add_chunk(_rows(ids), [{"x": np.arange(2)}] * 4, 0.1, ["id", "T", "loss"])
    s.close()
    for _ in range(2):
        again = _store(tmp_path, ids=ids)
        assert again.open() == 4 and all(again.finished(i) for i in ids)
        again.close()
    man = json.loads((tmp_path / res.MANIFEST).read_text())
    assert len(man["chunks"]) == 1 and man["finished_ids"] == ids


# ----------------------------------------------------------------------------- file modes
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_files_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        res.atomic_write_text(tmp_path / "a.txt", "x")
        res.atomic_write_json(tmp_path / "a.json", {"x": 1})
        res.atomic_write_npz(tmp_path / "a.npz", {"x": np.arange(3)})
        res.atomic_write_csv(tmp_path / "a.csv", [{"a": 1}], ["a"])
        res.atomic_write_text(tmp_path / "a.txt", "replaced")  # a replaced file too
    finally:
        os.umask(old)
    for name in ("a.txt", "a.json", "a.npz", "a.csv"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == mode, name
    assert _no_temp_files(tmp_path)
