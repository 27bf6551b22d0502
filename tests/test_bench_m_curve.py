"""`bench/m_curve.py`: one F1-against-m curve from learning-curve runs of one recipe."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "bench"))
import m_curve  # noqa: E402


def _write(tmp_path, name, points):
    path = tmp_path / name
    path.write_text(json.dumps({"bench": "mem_tokens_curve", "points": points}))
    return str(path)


def _point(m, steps, f1, **kw):
    return dict({"m": m, "steps": steps, "distill": "kl", "schedule": "constant",
                 "read_modes": "memory_kv,text", "train_single": 64, "train_docs": 16,
                 "questions": 36, "f1": {"memory": 1.0, "memory_kv": f1, "text": 90.0}}, **kw)


def test_collect_takes_each_files_point_at_the_steps_sorted_by_m(tmp_path):
    a = _write(tmp_path, "a.json", [_point(32, 150, 30.0), _point(32, 450, 55.0)])
    b = _write(tmp_path, "b.json", [_point(16, 450, 39.0), _point(16, 450, 10.0, lr=3e-4)])
    rows = m_curve.collect([a, b], 450)
    assert [(r["m"], r["f1"]["memory_kv"]) for r in rows] == [(16, 39.0), (32, 55.0)]
    assert rows[0]["source"].endswith("b.json")


def test_collect_refuses_another_recipe_a_missing_step_and_a_repeated_m(tmp_path):
    a = _write(tmp_path, "a.json", [_point(32, 450, 55.0)])
    other = _write(tmp_path, "o.json", [_point(64, 450, 70.0, train_single=6)])
    with pytest.raises(SystemExit, match="with the recipe"):
        m_curve.collect([a, other], 450)
    with pytest.raises(SystemExit, match="no point at 300 steps"):
        m_curve.collect([a], 300)
    with pytest.raises(SystemExit, match="same m"):
        m_curve.collect([a, _write(tmp_path, "c.json", [_point(32, 450, 50.0)])], 450)
