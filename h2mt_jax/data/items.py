"""Question-answering items for H²MT training and evaluation, from every supported source.

An item is one question over one document. Sources (`config.data.source`):
- `synthetic`: generated manuals (deterministic from the seed; gold = the fact sentences);
- `hotpotqa`: HotpotQA distractor records (local JSON; gold = supporting-fact sentences);
- `longbench`: a LongBench jsonl file (gold = the sentences that contain an answer string, when
  any does: "found" gold, as DESIGN.md §4.2.6 allows).
Train and evaluation items never share a document.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

from h2mt_jax.data.records import DataError


@dataclasses.dataclass
class QAItem:
    doc_id: str
    context: str
    question: str
    answers: list[str]
    dataset: str
    fmt: str = "auto"
    gold_spans: list[tuple[int, int]] | None = None
    outline: object = None  # a parsed outline when the source has structure (HotpotQA)
    qid: str = ""


FMT_BY_DATASET = {"hotpotqa": "longbench_passages", "2wikimqa": "longbench_passages",
                  "musique": "longbench_passages", "qasper": "qasper",
                  "narrativeqa": "narrativeqa", "synthetic": "markdown"}


def found_gold_spans(context: str, answers: list[str]) -> list[tuple[int, int]] | None:
    """Spans of the answer strings in the context (case-insensitive), or None."""
    spans = []
    for a in answers:
        a = a.strip()
        if len(a) < 2:
            continue
        for m in re.finditer(re.escape(a), context, flags=re.IGNORECASE):
            spans.append((m.start(), m.end()))
    return sorted(set(spans)) or None


def _split_docs(items: list[QAItem], held_out: float, seed: int) -> tuple[list, list]:
    docs = sorted({i.doc_id for i in items})
    rng = np.random.default_rng(seed)
    rng.shuffle(docs)
    n_eval = max(1, int(round(len(docs) * held_out))) if len(docs) > 1 else 0
    eval_docs = set(docs[:n_eval])
    return ([i for i in items if i.doc_id not in eval_docs],
            [i for i in items if i.doc_id in eval_docs])


def synthetic_items(seed: int, n_docs: int, offset: int = 0, **manual_kw) -> list[QAItem]:
    from h2mt_jax.data.synthetic import generate_manual, manual_seed

    items = []
    for i in range(offset, offset + n_docs):
        man = generate_manual(manual_seed(seed, i), **manual_kw)
        for q in man.questions:
            items.append(QAItem(man.doc_id, man.text, q.question, list(q.answers), "synthetic",
                                "markdown", [tuple(s) for s in q.gold_spans], qid=q.qid))
    return items


HUB_HINT = ("pass a local file with --config.data.path=FILE, or leave data.path empty to load "
            "{what} from the Hugging Face hub (online)")


def hub_names(data) -> tuple[str | None, str]:
    """(train, evaluation) hub names for `config.data` without a local file.

    HotpotQA: the distractor `train` and `validation` splits (not one file split by `held_out`);
    LongBench: the test records of `data.dataset` (default hotpotqa), split by `held_out`;
    WikiText: `data.dataset` as "config:split" (default wikitext-2-raw-v1:test)."""
    if data.source == "hotpotqa":
        return "train", "validation"
    if data.source == "longbench":
        return None, data.dataset or "hotpotqa"
    if data.source == "wikitext":
        return None, data.dataset or "wikitext-2-raw-v1:test"
    raise ValueError(f"data.source={data.source!r} has no hub dataset; pass data.path")


def _records(data, name: str, limit: int | None) -> list[QAItem]:
    """Items of one local file or hub name of `data.source`."""
    if data.source == "hotpotqa":
        from h2mt_jax.data.hotpotqa import load_hotpotqa, parse_hotpotqa

        items = []
        for r in load_hotpotqa(name, limit=limit, on_error=data.on_error):
            _, outline = parse_hotpotqa(r.meta["record"])
            items.append(QAItem(r.id, r.context, r.question, r.answers, "hotpotqa", "auto",
                                r.gold_spans, outline, qid=r.id))
        return items
    if data.source == "longbench":
        from h2mt_jax.data.longbench import load_longbench

        return [QAItem(r.id, r.context, r.question, r.answers, r.dataset,
                       FMT_BY_DATASET.get(r.dataset, "auto"),
                       found_gold_spans(r.context, r.answers), qid=r.id)
                for r in load_longbench(name, data.dataset or None, on_error=data.on_error,
                                        limit=limit)]
    raise ValueError(f"unknown data.source {data.source!r}: synthetic, hotpotqa, longbench")


class _Data(dict):
    """A dict read like a config section (`.source`, `.on_error`)."""

    __getattr__ = dict.__getitem__


def load_items(data, seed: int, split: bool = True) -> tuple[list[QAItem], list[QAItem]]:
    """(train items, evaluation items) for `config.data`; with `split=False` every item of a
    file is returned as evaluation item (synthetic data is always generated as two sets).

    Synthetic: manuals `data.train_offset ..` for training and `data.eval_offset ..` (default:
    right after them) held out, never overlapping; `data.train_single` sets the single-hop
    questions asked of each training manual (at most one per fact; held-out manuals keep the
    generator's 6, and the first 6 and the two-hop questions are the same for every value), and
    `data.train_two_hop` the two-hop ones (at most one per bridge pair; held-out manuals keep 3,
    and the first 3 are the same for every value);
    `data.hotpotqa_records` > 0 adds the first
    records of `data.hotpotqa_path` (a HotpotQA file; "": the hub's train split) to training.

    A local file (`data.path`) is split by document (`held_out`); without one the data come from
    the hub (`hub_names`), with HotpotQA's own train/validation splits."""
    source = data.source
    if source == "synthetic":
        kw = dict(chapters=data.chapters)
        first = int(data.get("train_offset", 0))
        held = int(data.get("eval_offset", -1))
        held = first + data.train_docs if held < 0 else held
        if held < first + data.train_docs and held + data.eval_docs > first:
            raise DataError(f"synthetic manuals {held}..{held + data.eval_docs - 1} (evaluation) "
                            f"overlap {first}..{first + data.train_docs - 1} (training)")
        single = int(data.get("train_single", 6))
        if single < 1:
            raise DataError(f"data.train_single={single}: a training manual needs at least one "
                            "single-hop question")
        two_hop = int(data.get("train_two_hop", 3))
        if two_hop < 0:
            raise DataError(f"data.train_two_hop={two_hop}: the two-hop questions per training "
                            "manual cannot be negative")
        train = synthetic_items(seed, data.train_docs, first, n_single=single, n_two_hop=two_hop,
                                **kw)
        if data.get("hotpotqa_records", 0):  # plus the first N records of a HotpotQA file
            hot = dict(data.to_dict() if hasattr(data, "to_dict") else data, source="hotpotqa")
            path = data.get("hotpotqa_path", "") or "train"
            train += _records(_Data(hot), path, int(data.hotpotqa_records))
        return train, synthetic_items(seed, data.eval_docs, held, **kw)
    limit = data.limit or None
    if data.path:
        if not os.path.exists(os.path.expanduser(data.path)):
            raise DataError(f"{data.path}: no such file; " + HUB_HINT.format(what=source))
        items = _records(data, data.path, limit)
        return _split_docs(items, data.held_out, seed) if split else ([], items)
    train_name, eval_name = hub_names(data)
    items = _records(data, eval_name, limit)
    if train_name is None:
        return _split_docs(items, data.held_out, seed) if split else ([], items)
    return (_records(data, train_name, limit) if split else []), items
