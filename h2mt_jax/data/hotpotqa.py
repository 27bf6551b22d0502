"""HotpotQA (distractor) loader (DESIGN.md §5): local JSON always, the hub only when online.

`load_hotpotqa` takes a local JSON file holding a list of records in the Hugging Face layout
(``id``, ``question``, ``answer``, ``type``, ``level``, ``supporting_facts{title, sent_id}``,
``context{title, sentences}``; the original release's ``_id`` and list-of-pairs layout work too)
or a ``.jsonl`` file of such records, or a split name ("train", "validation", alias "dev"; a
slice such as "validation[:100]" is passed on) loaded with
``datasets.load_dataset("hotpotqa/hotpot_qa", "distractor", split=...)`` only when online.

`context` and `gold_spans` come from the layout functions below: the text is what
`parse_hotpotqa(record)` returns ("Title\\nsent sent\\n\\nTitle\\n..."), `gold_spans` the supporting
sentences' spans in `supporting_facts` order (facts naming a missing sentence are dropped, as
the parser does). The raw record stays in ``meta["record"]`` so callers can re-parse the outline.
`length` is the context's word count (LongBench's measure); a record without ``id`` gets
``"{stem}-{index}"`` (1-based), as in the shared 100-record sample, which has no ``id`` field.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from h2mt_jax.data.records import (DataError, IssueLog, MalformedRecord, QARecord, check_limit,
                                   check_on_error, convert_jsonl, decode, iter_hub_rows,
                                   load_hub_dataset, looks_like_path, read_bytes)
from h2mt_jax.data.outline import Section, Span, clean_text, outline_from_passages

HUB_REPO, HUB_CONFIG = "hotpotqa/hotpot_qa", "distractor"
_SPLIT = re.compile(r"(train|validation|dev)(\[[^\]]*\])?")


# ----------------------------------------------------------------------------- layout
def _hotpotqa_layout(record: dict) -> tuple[str, list[str], list[list], list[tuple[str, int]]]:
    """Text "Title\\nsent sent ...\\n\\nTitle\\n...", its titles, per-sentence spans (None: empty
    sentence) and supporting (title, sent_id) facts of a Hugging Face or original-layout record."""
    ctx, sf = record["context"], record.get("supporting_facts") or {}
    pairs = zip(ctx["title"], ctx["sentences"]) if isinstance(ctx, dict) else ctx
    facts = zip(sf.get("title", []), sf.get("sent_id", [])) if isinstance(sf, dict) else sf
    parts, pos, titles, layout = [], 0, [], []
    for title, sents in pairs:
        titles.append(" ".join(clean_text(str(title)).split()))
        parts.append(("\n\n" if parts else "") + titles[-1] + "\n")
        pos += len(parts[-1])
        spans: list[Span | None] = []
        for sent in sents:
            sent = clean_text(sent).strip()
            if sent and any(spans):
                parts.append(" ")
                pos += 1
            parts.append(sent)
            spans.append((pos, pos + len(sent)) if sent else None)
            pos += len(sent)
        layout.append(spans)
    return "".join(parts), titles, layout, [(str(t), int(i)) for t, i in facts]


def parse_hotpotqa(record: dict) -> tuple[str, Section]:
    """A HotpotQA record -> (source text, outline): a "passage" per title, a span per sentence."""
    text, titles, layout, _ = _hotpotqa_layout(record)
    return text, outline_from_passages(titles, layout)


def hotpotqa_supporting_spans(record: dict, outline_or_text: Section | str) -> list[Span]:
    """Spans of the record's supporting-fact sentences, in `supporting_facts` order.

    `outline_or_text` is either part of what `parse_hotpotqa(record)` returned; it is checked
    against the record (ValueError on a mismatch). Facts naming an unknown title, an empty
    sentence or an out-of-range sentence index (a few exist in HotpotQA) are skipped.
    """
    text, titles, layout, facts = _hotpotqa_layout(record)
    if isinstance(outline_or_text, Section):
        if [c.title for c in outline_or_text.children] != titles:
            raise ValueError("outline does not belong to this record")
    elif outline_or_text != text:
        raise ValueError("text does not belong to this record")
    out = []
    for title, sent_id in facts:
        title = " ".join(clean_text(title).split())
        for k, t in enumerate(titles):
            if t == title and 0 <= sent_id < len(layout[k]) and layout[k][sent_id]:
                out.append(layout[k][sent_id])
                break
    return out


# ----------------------------------------------------------------------------- records
def hotpotqa_record(obj: dict, *, default_id: str, require_answers: bool = True,
                    meta: dict | None = None) -> QARecord:
    """A `QARecord` from one HotpotQA record; `MalformedRecord` names the first problem."""
    for key in ("question", "context"):
        if key not in obj:
            raise MalformedRecord(f"missing {key!r}")
    if not isinstance(obj["context"], (dict, list)):
        raise MalformedRecord("'context' must be {title, sentences} or [title, sentences] pairs, "
                              f"got {type(obj['context']).__name__}")
    if not isinstance(obj["question"], str):
        raise MalformedRecord(f"'question' must be a string, got {type(obj['question']).__name__}")
    answer = obj.get("answer")
    if answer is not None and not isinstance(answer, str):
        raise MalformedRecord(f"'answer' must be a string, got {type(answer).__name__}")
    if require_answers and not (answer or "").strip():
        raise MalformedRecord("no answers")
    try:
        text, _ = parse_hotpotqa(obj)
        spans = hotpotqa_supporting_spans(obj, text)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise MalformedRecord(f"bad context or supporting_facts ({type(err).__name__}: {err})")
    rid = obj.get("id", obj.get("_id"))
    return QARecord(id=default_id if rid is None else str(rid), question=obj["question"],
                    context=text, answers=[answer] if answer else [], dataset="hotpotqa",
                    length=len(text.split()), all_classes=None, gold_spans=spans,
                    meta={**(meta or {}), "type": obj.get("type"), "level": obj.get("level"),
                          "record": obj})


def load_hotpotqa(path_or_split: str | os.PathLike, *, limit: int | None = None,
                  on_error: str = "skip", require_answers: bool = True) -> list[QARecord]:
    """HotpotQA distractor records from a local JSON/jsonl file or a hub split (online only).

    on_error: "skip" (one warning per file) or "stop" (DataError naming the record or line).
    A file that is not valid JSON, or not a list, always raises DataError with the line.
    """
    check_on_error(on_error)
    check_limit(limit)
    path = Path(os.path.expanduser(path_or_split))
    name = str(path_or_split)
    if path.is_file() or looks_like_path(name) or isinstance(path_or_split, os.PathLike):
        if path.suffix == ".jsonl":
            log = IssueLog(str(path), on_error, "line")
            return convert_jsonl(path, log, lambda obj, n: hotpotqa_record(
                obj, default_id=f"{path.stem}-{n}", require_answers=require_answers,
                meta={"source": str(path), "line": n}), limit)
        log = IssueLog(str(path), on_error, "record")
        try:
            data = json.loads(decode(read_bytes(path, "HotpotQA JSON file"), log))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: bad JSON ({err.msg} at column {err.colno})")
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of records, got a "
                            f"{type(data).__name__}")
        out: list[QARecord] = []
        for n, obj in enumerate(data, 1):
            if limit is not None and len(out) >= limit:
                break
            if not isinstance(obj, dict):
                log.bad(n, f"not a JSON object (got {type(obj).__name__})")
                continue
            try:
                out.append(hotpotqa_record(obj, default_id=f"{path.stem}-{n}",
                                           require_answers=require_answers,
                                           meta={"source": str(path), "index": n}))
            except MalformedRecord as err:
                log.bad(n, str(err))
        log.warn(len(data))
        return out
    if not (m := _SPLIT.fullmatch(name)):
        raise DataError(f"{name}: no such file, and not a HotpotQA split (train, validation)")
    split = ("validation" if m.group(1) == "dev" else m.group(1)) + (m.group(2) or "")
    rows = load_hub_dataset(HUB_REPO, HUB_CONFIG, split=split, what=f"HotpotQA {split!r}",
                            local_hint="a JSON list of HotpotQA distractor records "
                                       "(Hugging Face layout)")
    source = f"{HUB_REPO}:{HUB_CONFIG}:{split}"
    log = IssueLog(source, on_error, "record")
    return iter_hub_rows(rows, log, lambda row, n: hotpotqa_record(
        dict(row), default_id=f"{split}-{n}", require_answers=require_answers,
        meta={"source": source, "index": n}), limit)
