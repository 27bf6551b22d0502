"""Dataset loaders (DESIGN.md §5): real samples, malformed input, offline hub names, WikiText."""

from __future__ import annotations

import http.server
import json
import socket
import sys
import threading
import time
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

from h2mt_jax.data import records
from h2mt_jax.data.hotpotqa import load_hotpotqa
from h2mt_jax.data.longbench import LONGBENCH_QA, load_longbench
from h2mt_jax.data.records import DataError, DataWarning, QARecord, hub_available
from h2mt_jax.data.wikitext import load_wikitext, split_tokens
from h2mt_jax.data.hotpotqa import parse_hotpotqa

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def shared(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared data samples are not next to this checkout")
    return path


def good(i: int, **extra) -> dict:
    return {"input": f"question {i}?", "context": f"Passage {i}.", "answers": [f"answer {i}"],
            "length": 2, "dataset": "toy", "language": "en", "all_classes": None,
            "_id": f"id-{i}", **extra}


@pytest.fixture
def malformed(tmp_path) -> Path:
    """Good records on lines 1, 3, 7, 9 and 10; line 9 holds invalid UTF-8 inside a string."""
    lines = [json.dumps(good(1)).encode(),
             b'{"input": "broken", "context": ',  # 2: bad JSON
             json.dumps(good(3)).encode(),
             b'["not", "an", "object"]',  # 4
             json.dumps({k: v for k, v in good(5).items() if k != "answers"}).encode(),  # 5
             json.dumps(good(6, answers="a string")).encode(),  # 6
             json.dumps(good(7)).encode(),
             b"",  # 8: blank, ignored
             json.dumps(good(9)).encode().replace(b"Passage 9", b"Passage \xff\xfe 9"),
             json.dumps(good(10)).encode()]
    path = tmp_path / "toy.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


# ----------------------------------------------------------------------------- real samples
@pytest.mark.parametrize("name,count", [("hotpotqa", 13), ("qasper", 9), ("narrativeqa", 6),
                                        ("2wikimqa", 13), ("musique", 7), ("multifieldqa_en", 7)])
def test_longbench_samples_load(name, count):
    path = shared("longbench", f"{name}.jsonl")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the real files are clean
        recs = load_longbench(str(path), on_error="stop")
    assert name in LONGBENCH_QA
    assert len(recs) == count == sum(1 for line in open(path) if line.strip())
    raw = [json.loads(line) for line in open(path)]
    assert [r.id for r in recs] == [o["_id"] for o in raw]  # file order
    for r, o in zip(recs, raw):
        assert isinstance(r, QARecord) and r.dataset == name and r.gold_spans is None
        assert (r.question, r.context, r.answers, r.length) == (o["input"], o["context"],
                                                                o["answers"], o["length"])
        assert r.answers and r.context
    assert recs[2].meta["line"] == 3 and recs[0].meta["source"] == str(path)
    assert len(load_longbench(path, limit=2)) == 2
    assert [r.id for r in load_longbench(path.parent, name)] == [r.id for r in recs]
    assert {r.dataset for r in load_longbench(path, dataset="mine")} == {"mine"}


def test_hotpotqa_sample_loads_with_gold_spans():
    path = shared("hotpotqa", "hotpot_dev_distractor_first100.json")
    raw = json.loads(path.read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        recs = load_hotpotqa(str(path), on_error="stop")
    assert len(recs) == len(raw) == 100
    assert len({r.id for r in recs}) == 100
    for r, o in zip(recs, raw):
        assert r.question == o["question"] and r.answers == [o["answer"]]
        assert r.dataset == "hotpotqa" and r.meta["record"] == o
        assert parse_hotpotqa(r.meta["record"])[0] == r.context
        facts = list(zip(o["supporting_facts"]["title"], o["supporting_facts"]["sent_id"]))
        assert len(r.gold_spans) == len(facts)
        sents = dict(zip(o["context"]["title"], o["context"]["sentences"]))
        for (title, sid), (s, e) in zip(facts, r.gold_spans):
            assert r.context[s:e] == sents[title][sid].strip()
            assert sents[title][sid].strip() in r.context[s:e]
    assert len(load_hotpotqa(path, limit=5)) == 5


# ----------------------------------------------------------------------------- malformed input
def test_skip_keeps_good_lines_and_warns_once(malformed):
    with pytest.warns(DataWarning) as caught:
        recs = load_longbench(malformed)
    assert [r.id for r in recs] == ["id-1", "id-3", "id-7", "id-9", "id-10"]
    assert "\ufffd" in recs[3].context
    assert len(caught) == 1
    msg = str(caught[0].message)
    assert str(malformed) in msg and "skipped 4 of 9" in msg
    for part in ("line 2: bad JSON", "line 4: not a JSON object", "line 5: no answers",
                 "line 6: 'answers' must be a list", "invalid UTF-8", "lines 9"):
        assert part in msg, part


def test_stop_raises_with_file_and_line(malformed):
    with pytest.raises(DataError, match=rf"{malformed}:2: bad JSON"):
        load_longbench(malformed, on_error="stop")
    lines = malformed.read_bytes().split(b"\n")
    del lines[1:4]  # now: good, no answers (line 2), ...
    malformed.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match=rf"{malformed}:2: no answers"):
        load_longbench(malformed, on_error="stop")
    del lines[1]
    malformed.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match=rf"{malformed}:2: 'answers' must be a list"):
        load_longbench(malformed, on_error="stop")


def test_require_answers_false_and_bad_types(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text("\n".join(json.dumps(o) for o in [
        {"input": "q", "context": "c"},  # no answers, no id
        {"input": 3, "context": "c", "answers": ["a"]},
        {"context": "c", "answers": ["a"]},
        good(4, length="long")]))
    with pytest.warns(DataWarning, match="skipped 3 of 4"):
        recs = load_longbench(path, require_answers=False)
    assert [(r.id, r.answers, r.dataset, r.length) for r in recs] == [("x-1", [], "x", None)]
    with pytest.raises(DataError, match=r"x.jsonl:2: 'input' must be a string"):
        load_longbench(path, require_answers=False, on_error="stop")
    with pytest.raises(DataError, match=r"x.jsonl:1: no answers"):
        load_longbench(path, on_error="stop")
    with pytest.raises(ValueError, match="on_error"):
        load_longbench(path, on_error="ignore")


def test_hotpotqa_malformed_records(tmp_path):
    path = tmp_path / "h.json"
    rec = {"question": "q?", "answer": "a", "context": {"title": ["T"], "sentences": [["S1. ",
                                                                                      "S2."]]},
           "supporting_facts": {"title": ["T"], "sent_id": [1]}}
    path.write_text(json.dumps([rec, 5, {**rec, "answer": ""}, {"question": "q"}, rec]))
    with pytest.warns(DataWarning, match=r"skipped 3 of 5 .*record 2: not a JSON object"):
        recs = load_hotpotqa(path)
    assert [r.id for r in recs] == ["h-1", "h-5"]
    assert recs[0].context == "T\nS1. S2." and recs[0].gold_spans == [(6, 9)]
    with pytest.raises(DataError, match=r"h.json: record 2: not a JSON object \(got int\)"):
        load_hotpotqa(path, on_error="stop")
    path.write_text('[\n{"question": \n')
    with pytest.raises(DataError, match=r"h.json:3: bad JSON"):
        load_hotpotqa(path)


# ----------------------------------------------------------------------------- paths and hub
@pytest.mark.parametrize("load", [load_longbench, load_hotpotqa, load_wikitext])
def test_unknown_path_raises_with_path(load, tmp_path):
    missing = tmp_path / "nowhere" / "data.jsonl"
    with pytest.raises(DataError, match=str(missing)):
        load(str(missing))
    with pytest.raises(DataError, match="not-a-dataset"):
        load("not-a-dataset")


def test_hub_name_offline_raises_quickly(monkeypatch):
    # Offline, a hub name is refused without any network request (counted, not timed)
    import urllib.request

    requests = []
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: requests.append(a) or 1 / 0)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for call in (lambda: load_longbench("qasper"), lambda: load_hotpotqa("validation"),
                 lambda: load_wikitext("wikitext-2-raw-v1:test")):
        with pytest.raises(DataError, match="local path"):
            call()
    assert hub_available() is False
    assert requests == []


class _Head(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):  # noqa: N802 - http.server's naming
        self.send_response(200 if self.path == "/" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_hub_probe_does_not_hang(monkeypatch):
    import urllib.request

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    # A request that stalls and ignores its own timeout (a stalled DNS lookup): the probe gives
    # up while the request is still stalled (an event, not a wall-clock bound)
    release, entered = threading.Event(), threading.Event()
    urlopen = urllib.request.urlopen

    def stalled(*a, **k):
        entered.set()
        release.wait(60)
        raise OSError("released")

    monkeypatch.setattr(urllib.request, "urlopen", stalled)
    answers = []
    caller = threading.Thread(target=lambda: answers.append(hub_available(timeout=0.2)))
    caller.start()
    caller.join(30)  # a probe without its own limit would still be waiting here
    assert entered.is_set() and answers == [False] and not release.is_set()
    release.set()
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with socket.socket() as stall:  # listens but never answers: the request stalls
        stall.bind(("127.0.0.1", 0))
        stall.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{stall.getsockname()[1]}")
        assert hub_available(timeout=0.5) is False
    server = http.server.HTTPServer(("127.0.0.1", 0), _Head)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        assert hub_available() is True
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}/missing")
        assert hub_available() is False  # an error status (e.g. a proxy's 404) is no hub
        monkeypatch.setenv("HF_DATASETS_OFFLINE", "true")
        assert hub_available() is False
    finally:
        server.shutdown()
        server.server_close()
    monkeypatch.delenv("HF_ENDPOINT")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    with socket.socket() as closed:  # a port nobody listens on: refused at once
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed.getsockname()[1]}")
    t0 = time.perf_counter()
    assert hub_available(timeout=60) is False
    assert time.perf_counter() - t0 < 30  # refused at once, not after the probe's limit


def test_hub_needs_datasets_package(monkeypatch):
    monkeypatch.setattr(records, "hub_available", lambda: True)
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails
    with pytest.raises(DataError, match="pip install datasets"):
        load_hotpotqa("validation")


def _fake_longbench_zip(tmp_path, members: dict[str, str]) -> str:
    import zipfile

    path = tmp_path / "hub" / "data.zip"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w") as z:
        for name, text in members.items():
            z.writestr(name, text)
    return str(path)


def test_hub_rows_convert_like_files(monkeypatch, tmp_path):
    calls = []

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        if args[0] == "Salesforce/wikitext":
            return [{"text": ""}, {"text": " = A = \n"}, {"text": ""}, {"text": " b c \n"}]
        raise ConnectionError("no route")

    lines = [good(1, dataset="qasper"), {"input": "q", "context": "c"}, good(3)]
    zip_path = _fake_longbench_zip(tmp_path, {"data/qasper.jsonl": "\n".join(
        json.dumps(x) for x in lines) + "\n"})
    downloads = []

    def hf_hub_download(repo_id, filename, repo_type=None):
        downloads.append((repo_id, filename, repo_type))
        return zip_path

    monkeypatch.setattr(records, "hub_available", lambda: True)
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    with pytest.warns(DataWarning, match="line 2: no answers"):
        recs = load_longbench("qasper")
    assert [(r.id, r.dataset) for r in recs] == [("id-1", "qasper"), ("id-3", "toy")]
    assert downloads == [("THUDM/LongBench", "data.zip", "dataset")]
    with pytest.raises(DataError, match="no musique.jsonl"):
        load_longbench("musique")
    assert load_wikitext("wikitext-2-raw-v1:test") == " = A = \n b c \n"
    assert calls[-1] == (("Salesforce/wikitext", "wikitext-2-raw-v1"), {"split": "test"})
    with pytest.raises(DataError, match="ConnectionError: no route.*local path"):
        load_hotpotqa("dev[:10]")
    assert calls[-1] == (("hotpotqa/hotpot_qa", "distractor"), {"split": "validation[:10]"})


def test_task_configs_without_a_local_file_load_the_hub(monkeypatch, tmp_path):
    # A user without ../shared/data: each task config asks the hub for the right repository,
    # config and split, and the rows become the same items as the local files give.
    import configs.hotpotqa
    import configs.qasper
    from h2mt_jax.data.items import load_items

    hotpot = json.loads(shared("hotpotqa", "hotpot_dev_distractor_first100.json").read_text())
    qasper = shared("longbench", "qasper.jsonl").read_text()
    calls = []

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs["split"]))
        return hotpot[:4] if kwargs["split"] == "train" else hotpot[4:7]

    zip_path = _fake_longbench_zip(tmp_path, {"data/qasper.jsonl": qasper})
    monkeypatch.setattr(records, "hub_available", lambda: True)
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: zip_path)
    c = configs.hotpotqa.get_config()
    c.data.path = ""
    train, held = load_items(c.data, seed=0)
    assert calls == [(("hotpotqa/hotpot_qa", "distractor"), "validation"),
                     (("hotpotqa/hotpot_qa", "distractor"), "train")]
    local = tmp_path / "hotpot.json"
    local.write_text(json.dumps(hotpot[:7]))
    c.data.path, c.data.held_out = str(local), 0.0
    _, every = load_items(c.data, seed=0, split=False)
    by_question = {it.question: it for it in every}  # the sample has no ids; the hub has
    assert len(train) == 4 and len(held) == 3
    for it in train + held:
        ref = by_question[it.question]
        assert (it.context, it.question, it.answers, it.gold_spans) == (
            ref.context, ref.question, ref.answers, ref.gold_spans)
    q = configs.qasper.get_config()
    from_file = load_items(q.data, seed=0)
    q.data.path = ""
    from_hub = load_items(q.data, seed=0)
    assert [[(i.qid, i.context, i.answers) for i in part] for part in from_hub] == [
        [(i.qid, i.context, i.answers) for i in part] for part in from_file]


def test_missing_local_file_names_both_ways(tmp_path):
    import configs.hotpotqa
    from h2mt_jax.data.items import load_items

    c = configs.hotpotqa.get_config()
    c.data.path = str(tmp_path / "absent.json")
    with pytest.raises(DataError, match=r"absent.json: no such file.*data.path=FILE.*hub"):
        load_items(c.data, seed=0)


# ----------------------------------------------------------------------------- WikiText
def test_wikitext_sample_and_split_tokens():
    path = shared("wikitext2", "wiki.test.raw")
    text = load_wikitext(str(path))
    assert "\r" not in text and text.startswith(" = Robert Boulter = \n Robert Boulter is")
    assert text.count("\n") == path.read_bytes().count(b"\n")
    ids = np.arange(10)
    train, held = split_tokens(ids, 3)
    assert train.tolist() == list(range(7)) and held.tolist() == [7, 8, 9]
    assert split_tokens([1, 2, 3], 0) == ([1, 2, 3], [])
    for bad in (10, 11):
        with pytest.raises(ValueError, match="too short"):
            split_tokens(ids, bad)
    with pytest.raises(ValueError):
        split_tokens(ids, -1)


def test_wikitext_local_quirks(tmp_path):
    path = tmp_path / "w.raw"
    path.write_bytes(b" = T = \r\n caf\xe9 \r\n")
    with pytest.warns(DataWarning, match="invalid UTF-8"):
        assert load_wikitext(path) == " = T = \n caf\ufffd \n"
    path.write_bytes(b" \n\n")
    with pytest.raises(DataError, match="no text"):
        load_wikitext(path)


# ----------------------------------------------------------------------------- synthetic items
def test_dense_training_questions_keep_documents_and_held_out_questions():
    # data.train_single asks more single-hop questions of each training manual: one per fact at
    # most, the default questions among them, every answer a fact of its manual; the held-out
    # manuals and their questions do not change, and bad values are refused.
    import configs.memory_qa
    from h2mt_jax.data.items import load_items
    from h2mt_jax.data.synthetic import generate_manual

    c = configs.memory_qa.get_config()
    c.data.train_docs, c.data.eval_docs, c.data.hotpotqa_records = 2, 1, 0
    train, held = load_items(c.data, seed=0)
    c.data.train_single = 1000
    dense, held_dense = load_items(c.data, seed=0)
    key = lambda items: [(i.doc_id, i.question, tuple(i.answers), tuple(i.gold_spans))  # noqa
                         for i in items]
    assert key(held_dense) == key(held)
    assert {i.context for i in dense} == {i.context for i in train}
    assert set(key(train)) < set(key(dense))
    for doc in sorted({i.doc_id for i in dense}):
        man = generate_manual(int(doc.split("-")[1]), chapters=c.data.chapters)  # synthetic-SEED
        ours = [i for i in dense if i.doc_id == doc]
        single = [i for i in ours if len(i.gold_spans) == 1]
        assert len(single) == len(man.facts) > 6
        assert {(i.answers[0], i.gold_spans[0]) for i in single} == {
            (f.value, f.span) for f in man.facts}
        assert len({i.qid for i in ours}) == len(ours)
    c.data.train_single = 0
    with pytest.raises(DataError, match="train_single=0"):
        load_items(c.data, seed=0)


def test_dense_two_hop_training_questions_keep_documents_and_held_out_questions():
    # data.train_two_hop asks more two-hop questions of each training manual (the default 3 first,
    # every one a distinct bridge pair of its manual); held-out manuals and the documents do not
    # change, 0 asks none, and negative values are refused.
    import configs.memory_qa
    from h2mt_jax.data.items import load_items

    c = configs.memory_qa.get_config()
    c.data.train_docs, c.data.eval_docs, c.data.hotpotqa_records = 2, 1, 0
    train, held = load_items(c.data, seed=0)
    c.data.train_two_hop = 1000
    dense, held_dense = load_items(c.data, seed=0)
    key = lambda items: [(i.doc_id, i.question, tuple(i.answers), tuple(i.gold_spans))  # noqa
                         for i in items]
    two = lambda items: [x for x in key(items) if len(x[3]) == 2]  # noqa: E731
    assert key(held_dense) == key(held)
    assert {i.context for i in dense} == {i.context for i in train}
    assert [x for x in key(dense) if len(x[3]) == 1] == [x for x in key(train) if len(x[3]) == 1]
    for doc in sorted({i.doc_id for i in dense}):
        ours, default = ([x for x in two(items) if x[0] == doc] for items in (dense, train))
        assert len(default) == 3 < len(ours) and ours[:3] == default
        assert len(set(x[3] for x in ours)) == len(ours)  # one question per bridge pair
    c.data.train_two_hop = 0
    none, _ = load_items(c.data, seed=0)
    assert not two(none)
    c.data.train_two_hop = -1
    with pytest.raises(DataError, match="train_two_hop=-1"):
        load_items(c.data, seed=0)
