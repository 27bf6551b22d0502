"""The pipeline: configs, two-step tiny training, exact resume, preemption, corrupt checkpoints,
the 8-device sharded step, the evaluation contract and its bad inputs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings

import pytest

from conftest import ROOT, shared_data

CONFIGS = ["demo", "hotpotqa", "narrativeqa", "qasper", "longbench", "wikitext", "memory_pretrain",
           "memory_qa"]


def load_config(name: str, variant: str | None = None):
    sys.path.insert(0, str(ROOT))
    import importlib

    mod = importlib.import_module(f"configs.{name}")
    return mod.get_config(variant)


@pytest.mark.parametrize("name", CONFIGS)
def test_configs_load_and_tiny_trains_two_steps(name, tmp_path, smollm2):
    from h2mt_jax.train.trainer import train_and_evaluate

    full = load_config(name)
    assert full.task in ("h2mt_qa", "hmt_lm", "memory_lm") and full.train.steps > 2
    c = load_config(name, "tiny")
    if c.data.path and not os.path.exists(c.data.path):
        shared_data("longbench")  # skips with the reason when the shared data is absent
    if name == "demo":  # routed by the learned score itself, one hop, slots by score: then its
        # recall alone (recall_at_2_memory_score) must be the routing's recall
        c.h2mt.route_score, c.h2mt.hops, c.h2mt.distinct_sections = "memory", 1, False
    results = train_and_evaluate(c, str(tmp_path / name), progress=False)
    assert len(results["train_losses"]) == 2
    assert all(math.isfinite(v) for v in results["train_losses"])  # not NaN, not inf
    assert os.path.isdir(tmp_path / name / "model")
    lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines if '"train"' in x] == [1, 2]
    if name == "demo":  # the demo also answers from the routed text, the KV modes, splits recall
        after = results["after"]
        assert 0 <= after["tree_text_f1"] <= 100 and after["n"] == c.eval.max_examples
        assert 0 <= after["memory_kv_f1"] <= 100 and 0 <= after["leaf_kv_f1"] <= 100
        assert after["n_one_gold"] + after["n_multi_gold"] <= after["n"]
        assert c.eval.k == 2
        assert after["recall_at_2_memory_score"] == pytest.approx(after["recall_at_2"], nan_ok=True)
        for key in ("recall_at_2_one_gold", "recall_at_2_multi_gold", "recall_at_2_memory_score"):
            assert after[key] != after[key] or 0 <= after[key] <= 1  # NaN when none


def test_unknown_variant():  # unknown fields on the command line: tests/test_cli_io.py
    with pytest.raises(ValueError, match="unknown variant 'huge'"):
        load_config("demo", "huge")


def _tiny_run(tmp_path, steps, stop_after=0, workdir="run"):
    """Training alone (no evaluation: the demo test above covers it)."""
    from h2mt_jax.train.trainer import train_and_evaluate

    c = load_config("demo", "tiny")
    c.train.steps, c.train.stop_after, c.train.checkpoint_every = steps, stop_after, 2
    c.eval.before_training = c.eval.after_training = False
    results = train_and_evaluate(c, str(tmp_path / workdir), progress=False)
    assert "before" not in results and "after" not in results
    return results


def _losses(workdir):
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"]


def test_training_batches_are_read_only_a_few_ahead():
    # Given a data set of 200 batches that counts the batches it has built
    import threading
    import time

    import grain

    from h2mt_jax.train.trainer import batches

    built, lock = [0], threading.Lock()

    def build(i):
        with lock:
            built[0] += 1
        return i

    data = grain.MapDataset.range(200).map(build)
    # When the trainer's iterator hands out its first two batches and its reader gets time
    it = batches(data, prefetch=3)
    assert [next(it), next(it)] == [0, 1]
    time.sleep(0.5)
    # Then it has built at most the prefetch buffer beyond them, not the whole data set
    # (grain's default reads 500 ahead: 24 GB of QA batches at m = 64)
    assert 2 <= built[0] <= 2 + 3 + 1, built[0]
    assert next(it) == 2


@pytest.mark.parametrize("prefetch", [0, -1, 2.5, True])
def test_training_read_ahead_must_be_a_positive_whole_number(prefetch):
    # Given a data set and a read-ahead of no batches, fewer or a fraction
    import grain

    from h2mt_jax.train.trainer import batches

    data = grain.MapDataset.range(4)
    # When the trainer builds its iterator / Then it refuses, naming the setting
    with pytest.raises(ValueError, match="train.prefetch"):
        batches(data, prefetch=prefetch)


def test_resume_equals_uninterrupted_run(tmp_path, smollm2):
    # Given an uninterrupted 4-step run and a run stopped after 2 steps then resumed
    _tiny_run(tmp_path, 4, workdir="straight")
    stopped = _tiny_run(tmp_path, 4, stop_after=2, workdir="resumed")
    assert stopped["preempted_at"] == 2
    _tiny_run(tmp_path, 4, workdir="resumed")
    # Then both logged the same four losses (same batches, same optimizer state)
    straight, resumed = _losses(tmp_path / "straight"), _losses(tmp_path / "resumed")
    assert len(resumed) == 4
    assert straight == pytest.approx(resumed, rel=1e-6, abs=1e-7)


def test_corrupt_checkpoint_falls_back_to_previous(tmp_path, smollm2):
    _tiny_run(tmp_path, 4, workdir="run")
    ckpts = tmp_path / "run" / "checkpoints"
    steps = sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    assert steps[-1] == 4 and 2 in steps
    for f in (ckpts / "4" / "state").rglob("*"):  # damage every file of the newest one
        if f.is_file():
            f.write_bytes(b"\0garbage")
    from h2mt_jax.train.checkpoint import Checkpointer

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        import jax

        from h2mt_jax.train import trainer
        from h2mt_jax.train.tasks import make_task

        c = load_config("demo", "tiny")
        task = make_task(c, progress=False)
        opt = trainer.make_optimizer(c.train)
        mesh = trainer.sharding.make_mesh()
        state, sh, _ = trainer.init_state(task, opt, mesh, jax.random.PRNGKey(0))
        abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                state, sh)
        got = Checkpointer(str(ckpts)).restore_latest(abstract)
    assert got is not None and got[0] == 2
    assert any("step 4" in str(x.message) for x in w)


def test_sigterm_saves_and_exits(tmp_path, smollm2):
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(ROOT)!r})
from configs.demo import get_config
from h2mt_jax.train import trainer
c = get_config("tiny"); c.train.steps = 50; c.train.checkpoint_every = 1000
c.eval.before_training = c.eval.after_training = False
orig = trainer.MetricsLogger.write
def write(self, step, scalars, prefix="train"):
    orig(self, step, scalars, prefix)
    if step == 2: os.kill(os.getpid(), signal.SIGTERM)
trainer.MetricsLogger.write = write
r = trainer.train_and_evaluate(c, {str(tmp_path / 'run')!r}, progress=False)
print("RESULT", r.get("preempted_at"))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "RESULT 2" in out.stdout
    assert (tmp_path / "run" / "checkpoints" / "2").is_dir()


def test_sharded_step_equals_single_device(tmp_path):
    # Run in a fresh process: the 8 simulated devices must exist before JAX starts.
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "sharded_step_check.py")],
                         capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "MAX_DIFF" in out.stdout
    diff = float(out.stdout.split("MAX_DIFF")[1].split()[0])
    assert diff < 1e-5


def test_evaluate_contract_resume_and_outputs(tmp_path, smollm2):
    data = shared_data("longbench", "hotpotqa.jsonl")
    out = tmp_path / "eval" / "out.json"
    cmd = [sys.executable, "evaluate.py", "--config=configs/longbench.py:tiny",
           f"--config.data.path={data}", "--config.method=rag_bm25,h2mt",
           f"--config.output={out}", "--config.eval.max_examples=2"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert set(res) >= {"summary", "examples"}
    assert {e["method"] for e in res["examples"]} == {"rag_bm25", "h2mt"}
    assert set(res["summary"]) == {"rag_bm25", "h2mt"}
    for s in res["summary"].values():
        assert {"f1", "rouge_l", "ttft_median_s", "ttft_p90_s", "peak_mem_mb", "generation_s",
                "build_s"} <= set(s)
    assert (tmp_path / "eval" / "out.md").read_text().startswith("| method |")
    assert (tmp_path / "eval" / "out.png").stat().st_size > 1000
    # An interrupted run resumes: a partial file with one done example is not redone (in-process:
    # the command line ran above; this is the same run_evaluation with the same settings)
    from h2mt_jax.eval.runner import run_evaluation

    done = res["examples"][0]
    partial = str(out) + ".partial.jsonl"
    with open(partial, "w") as f:
        f.write(json.dumps({**done, "prediction": "KEPT"}) + "\n")
        f.write('{"method": "rag_bm25", "id": "cut-off-line')  # a line cut by the crash
    c = load_config("longbench", "tiny")
    c.data.path, c.method, c.output, c.eval.max_examples = str(data), "rag_bm25,h2mt", str(out), 2
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        run_evaluation(c, progress=False)
    assert any("1 line(s) not reused" in str(x.message) for x in w)  # the cut line
    again = json.loads(out.read_text())
    kept = [e for e in again["examples"] if e["id"] == done["id"] and e["method"] == done["method"]]
    assert len(kept) == 1 and kept[0]["prediction"] == "KEPT"
    assert len(again["examples"]) == len(res["examples"])


def test_evaluate_holds_one_document_at_a_time(tmp_path, smollm2, monkeypatch):
    # Given four documents (a LongBench record is one document and its question) and methods
    # that build offline state (a BM25 index; H²MT indexes with leaf KV caches, shared by two
    # H²MT methods)
    from h2mt_jax.eval.methods.base import MethodBase
    from h2mt_jax.eval.runner import run_evaluation
    from h2mt_jax.hierarchy.h2mt import H2MT

    rows = []
    for d in range(4):
        ctx = "".join(f"Passage {p + 1}:\nDocument {d} part {p}. Item {p} weighs {d + p} kg.\n"
                      for p in range(3))
        rows.append({"input": f"How much does item {d % 3} weigh?", "context": ctx,
                     "answers": [f"{d + d % 3}"], "dataset": "hotpotqa", "_id": f"d{d}"})
    data = tmp_path / "four.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    held, builds = [], []
    prepare, build = MethodBase.prepare, H2MT.build

    def spy_prepare(self, doc_id, *a, **kw):
        prepare(self, doc_id, *a, **kw)
        held.append((self.name, sorted(self._cache)))

    def spy_build(self, *a, **kw):
        builds.append(1)
        return build(self, *a, **kw)

    monkeypatch.setattr(MethodBase, "prepare", spy_prepare)
    monkeypatch.setattr(H2MT, "build", spy_build)
    c = load_config("longbench", "tiny")
    c.data.path, c.method, c.output = str(data), "rag_bm25,h2mt,h2mt_leaf_kv", str(
        tmp_path / "o.json")
    c.eval.max_examples = 0
    # When they are evaluated
    res = run_evaluation(c, progress=False)
    # Then every method answers every question once
    answered = json.loads((tmp_path / "o.json").read_text())["examples"]
    assert sorted((e["method"], e["id"]) for e in answered) == sorted(
        (m, r["_id"]) for m in ("rag_bm25", "h2mt", "h2mt_leaf_kv") for r in rows)
    assert set(res["summary"]) == {"rag_bm25", "h2mt", "h2mt_leaf_kv"}
    # and no method ever holds more than one document's state: each is dropped after the
    # document's last question, and each H²MT index is built once (warm-up included)
    assert held and max(len(docs) for _, docs in held) == 1
    assert len(builds) == 4


def test_evaluate_bad_inputs(tmp_path, smollm2):
    bad = tmp_path / "bad.jsonl"
    good = {"input": "Who?", "context": "Passage 1:\nA\nAnn wrote it.", "answers": ["Ann"],
            "dataset": "hotpotqa", "_id": "g1"}
    bad.write_text(json.dumps(good) + "\n{not json\n"
                   + json.dumps({**good, "_id": "g2", "answers": []}) + "\n"
                   + json.dumps({**good, "_id": "g3"}) + "\n")
    # in-process (the command line itself: test_evaluate_contract_resume_and_outputs, and its
    # one-line errors: tests/test_cli_io.py)
    from h2mt_jax.data.records import DataError, DataWarning
    from h2mt_jax.eval.runner import run_evaluation
    from h2mt_jax.hierarchy.config import H2MTConfig
    from h2mt_jax.hierarchy.h2mt import H2MT

    c = load_config("longbench", "tiny")
    c.data.path, c.output, c.method = str(bad), str(tmp_path / "o.json"), "rag_bm25"
    with pytest.warns(DataWarning, match="bad.jsonl.*line 2"):  # the malformed line is reported
        run_evaluation(c, progress=False)
    res = json.loads((tmp_path / "o.json").read_text())
    assert sorted(e["id"] for e in res["examples"]) == ["g1", "g3"]  # the rest is kept
    c.output = str(tmp_path / "o2.json")
    c.data.on_error = "stop"
    with pytest.raises(DataError, match="bad.jsonl:2"):
        run_evaluation(c, progress=False)
    # a checkpoint trained on another backbone is refused with both sizes named
    H2MT.create(smollm2, H2MTConfig()).save(tmp_path / "other")
    c.data.on_error, c.method, c.checkpoint = "skip", "h2mt", str(tmp_path / "other")
    with pytest.raises(ValueError, match="d=576.*d=64"):
        run_evaluation(c, progress=False)


def test_train_and_evaluate_agree_on_the_same_checkpoint_and_items(tmp_path, smollm2):
    # train.py's evaluation and evaluate.py run one path (eval.example.evaluate_example), HotpotQA
    # layout (per-item outline) included: the same checkpoint and items give the same numbers.
    from h2mt_jax.eval.runner import run_evaluation
    from h2mt_jax.train.trainer import train_and_evaluate

    source = shared_data("hotpotqa", "hotpot_dev_distractor_first100.json")
    records = json.loads(source.read_text())[:6]
    data = tmp_path / "hotpot6.json"
    data.write_text(json.dumps(records))
    c = load_config("hotpotqa", "tiny")
    c.data.path, c.data.held_out, c.eval.max_examples = str(data), 0.5, 0
    results = train_and_evaluate(c, str(tmp_path / "run"), progress=False)
    after = results["after"]
    assert after["n"] == 3 and after["recall_at_4"] >= after["recall_at_2"]
    held = tmp_path / "held.json"  # exactly the held-out records, for evaluate.py
    from h2mt_jax.data.hotpotqa import load_hotpotqa
    from h2mt_jax.data.items import load_items

    held_questions = {it.question for it in load_items(c.data, c.seed)[1]}
    held.write_text(json.dumps([r for r in records if r["question"] in held_questions]))
    e = load_config("hotpotqa", "tiny")
    e.data.path, e.method, e.checkpoint = str(held), "h2mt", str(tmp_path / "run")
    e.output, e.eval.max_examples = str(tmp_path / "eval.json"), 0
    summary = run_evaluation(e, progress=False)["summary"]["h2mt"]
    assert summary["n"] == after["n"] == len(load_hotpotqa(str(held)))
    assert summary["f1"] == pytest.approx(after["f1"], abs=1e-9)
    assert summary["routing_recall@2"] == pytest.approx(after["recall_at_2"], abs=1e-9)
    assert summary["routing_recall@4"] == pytest.approx(after["recall_at_4"], abs=1e-9)
    text = (tmp_path / "run" / "results.json").read_text()
    assert "NaN" not in text and json.loads(text)["after"]["n"] == 3  # strict JSON
    # a resumed run reads the training indexes from the workdir instead of rebuilding them
    cached = sorted(p.name for p in (tmp_path / "run" / "indexes").iterdir())
    assert "indexes.json" in cached and len(cached) == 1 + 3
    from h2mt_jax.hierarchy.h2mt import H2MT
    from h2mt_jax.train.h2mt_qa import H2MTQATask

    task = H2MTQATask(c, progress=False, workdir=str(tmp_path / "run"))
    task.h2mt.build = lambda *a, **k: pytest.fail("a cached training index was rebuilt")
    assert len(task.examples(task.train_items)) == 3
    assert isinstance(task.h2mt, H2MT)
