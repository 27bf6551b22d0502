"""The command line's one-line errors and the file toolkit (h2mt_jax.cli, h2mt_jax.io)."""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from h2mt_jax import io


@pytest.mark.parametrize("args, expected", [
    (["train.py", "--config=configs/demo.py:tiny", "--config.eval.max_exampels=2"],
     "error: unknown config field 'max_exampels'; did you mean 'max_examples'?"),
    (["train.py", "--config=configs/demo.py:bogus"], "unknown variant 'bogus'"),
    (["train.py", "--config=configs/absent.py"], "cannot load the config file"),
    (["train.py", "--config=configs/demo.py:tiny", "--config.train.lr=abc"],
     "could not convert string to float"),
    (["evaluate.py", "--config=configs/longbench.py:tiny", "--config.method=full,nope"],
     "error: unknown method 'nope'; known: full"),
    (["evaluate.py", "--config=configs/longbench.py:tiny", "--config.data.path=/absent/x.jsonl"],
     "no such file; pass a local file with --config.data.path=FILE, or leave data.path empty"),
])
def test_bad_command_lines_print_one_line_and_exit_2(args, expected, tmp_path):
    out = subprocess.run([sys.executable, *args, f"--config.workdir={tmp_path}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], out.stderr[-3000:]
    assert "Traceback" not in out.stderr


def test_mesh_larger_than_the_machine_says_how_to_simulate_devices():
    from h2mt_jax.errors import ConfigError
    from h2mt_jax.train.sharding import make_mesh

    with pytest.raises(ConfigError, match="xla_force_host_platform_device_count=4"):
        make_mesh(data=4)


def test_atomic_writes_get_the_umask_mode_and_leave_nothing_on_failure(tmp_path):
    old = os.umask(0o022)
    try:
        io.atomic_write(tmp_path / "a.md", "text\n")
        io.write_json(tmp_path / "a.json", {"x": float("nan"), "y": [np.float32(1.5), math.inf]})
    finally:
        os.umask(old)
    for name in ("a.md", "a.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": None, "y": [1.5, None]}

    def boom(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        io.atomic_write(tmp_path / "a.md", boom)
    assert (tmp_path / "a.md").read_text() == "text\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.md"]


def test_meta_and_tree_roundtrip_and_format_errors(tmp_path):
    io.write_meta(tmp_path / "m.json", "thing/1", a=1)
    assert io.read_meta(tmp_path / "m.json", "thing/1", "a thing")["a"] == 1
    with pytest.raises(io.FormatError, match=r"m.json has format 'thing/1', expected 'thing/2'"):
        io.read_meta(tmp_path / "m.json", "thing/2", "a thing")
    with pytest.raises(FileNotFoundError, match="has no absent.json: not a thing"):
        io.read_meta(tmp_path / "absent.json", "thing/1", "a thing")
    (tmp_path / "bad.json").write_text("[1, 2")
    with pytest.raises(io.FormatError, match="bad.json: not valid JSON"):
        io.read_meta(tmp_path / "bad.json", "thing/1", "a thing")
    tree = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)},
            "ids": np.arange(4, dtype=np.int32)}
    io.save_tree(tmp_path / "t.safetensors", tree)
    back = io.load_tree(tmp_path / "t.safetensors")
    np.testing.assert_array_equal(back["params"]["w"], tree["params"]["w"])
    assert back["ids"].dtype == np.int32
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(io.FormatError, match="junk.safetensors: not a readable safetensors"):
        io.load_tree(tmp_path / "junk.safetensors")
