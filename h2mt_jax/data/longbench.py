"""LongBench v1 loader (DESIGN.md §5): local jsonl always, the hub only when online.

A LongBench v1 record is one JSON object per line with keys ``input`` (the question), ``context``,
``answers`` (list of strings), ``length`` (words), ``dataset``, ``language``, ``all_classes``
(classification tasks) and ``_id``. NarrativeQA and QASPER are used through LongBench (its
``narrativeqa`` and ``qasper`` subsets), not through their own releases: pass
``"narrativeqa.jsonl"`` or the name ``"narrativeqa"``.

`load_longbench` takes a local ``.jsonl`` path (or a directory holding ``{dataset}.jsonl``), or a
LongBench subset name such as "hotpotqa", whose jsonl is taken from the ``data.zip`` of the hub
repository THUDM/LongBench (`hub_jsonl`) only when `hub_available()`.
Records keep the file's order; missing ``language`` / ``all_classes`` / ``length`` keys are
fine (the shared samples have none of the first two), a missing ``_id`` becomes
``"{stem}-{line}"``. Malformed lines follow `on_error` (see `h2mt_jax.data.records`).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from h2mt_jax.data.records import (DataError, IssueLog, MalformedRecord, QARecord, check_limit,
                                   check_on_error, convert_jsonl, download_hub_file,
                                   looks_like_path)

LONGBENCH_QA = ("narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique")
LONGBENCH_DATASETS = LONGBENCH_QA + (
    "multifieldqa_zh", "dureader", "gov_report", "qmsum", "multi_news", "vcsum", "trec",
    "triviaqa", "samsum", "lsht", "passage_count", "passage_retrieval_en", "passage_retrieval_zh",
    "lcc", "repobench-p", "qasper_e", "multifieldqa_en_e", "hotpotqa_e", "2wikimqa_e",
    "gov_report_e", "multi_news_e", "trec_e", "triviaqa_e", "samsum_e", "passage_count_e",
    "passage_retrieval_en_e", "lcc_e", "repobench-p_e")
HUB_REPO = "THUDM/LongBench"
_KNOWN_KEYS = {"input", "context", "answers", "length", "dataset", "all_classes", "_id"}


def _type(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _str_list(value: object, key: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MalformedRecord(f"{key!r} must be a list of strings, got {_type(value)}"
                              + (f" {value[:40]!r}" if isinstance(value, str) else ""))
    return value


def longbench_record(obj: dict, *, default_id: str, default_dataset: str,
                     dataset: str | None = None, require_answers: bool = True,
                     meta: dict | None = None) -> QARecord:
    """A `QARecord` from one LongBench object; `MalformedRecord` names the first problem.

    The label is `dataset`, else the object's ``dataset`` field, else `default_dataset`; `meta`
    (where the record came from) is extended with the object's unknown keys (``language``, ...).
    """
    for key in ("input", "context"):
        if key not in obj:
            raise MalformedRecord(f"missing {key!r}")
        if not isinstance(obj[key], str):
            raise MalformedRecord(f"{key!r} must be a string, got {_type(obj[key])}")
    answers = _str_list(obj.get("answers"), "answers") or []
    if require_answers and not any(a.strip() for a in answers):
        raise MalformedRecord("no answers")
    length = obj.get("length")
    if length is not None and (isinstance(length, bool) or not isinstance(length, int)):
        raise MalformedRecord(f"'length' must be an integer, got {_type(length)}")
    rid = obj.get("_id")
    if rid is not None and not isinstance(rid, (str, int)):
        raise MalformedRecord(f"'_id' must be a string, got {_type(rid)}")
    label = obj.get("dataset")
    label = dataset or (label if isinstance(label, str) and label else default_dataset)
    meta = {**(meta or {}), **{k: v for k, v in obj.items() if k not in _KNOWN_KEYS}}
    return QARecord(id=default_id if rid is None else str(rid), question=obj["input"],
                    context=obj["context"], answers=answers, dataset=label, length=length,
                    all_classes=_str_list(obj.get("all_classes"), "all_classes"), meta=meta)


def load_longbench(path_or_name: str | os.PathLike, dataset: str | None = None, *,
                   on_error: str = "skip", require_answers: bool = True,
                   limit: int | None = None) -> list[QARecord]:
    """LongBench records from a local jsonl (or directory + `dataset`) or a hub subset name.

    dataset: the records' `dataset` label (default: each record's ``dataset`` field, else the
    file stem or subset name); with a directory it also picks ``{dataset}.jsonl``.
    on_error: "skip" (one warning per file) or "stop" (DataError "path:line: reason").
    require_answers: a record without answers is malformed ("no answers") unless False.
    limit: stop after this many records. Offline, a subset name raises DataError.
    """
    check_on_error(on_error)
    check_limit(limit)
    path = Path(os.path.expanduser(path_or_name))
    if path.is_dir():
        if not dataset:
            raise DataError(f"{path}: is a directory; pass dataset= to pick {{dataset}}.jsonl")
        path = path / f"{dataset}.jsonl"
    name = str(path_or_name)
    if path.is_file() or looks_like_path(name) or isinstance(path_or_name, os.PathLike):
        if not path.is_file():
            raise DataError(f"{path}: no such LongBench jsonl file")
        log = IssueLog(str(path), on_error, "line")
        return convert_jsonl(path, log, lambda obj, n: longbench_record(
            obj, default_id=f"{path.stem}-{n}", default_dataset=path.stem, dataset=dataset,
            require_answers=require_answers, meta={"source": str(path), "line": n}), limit)
    if name not in LONGBENCH_DATASETS:
        raise DataError(f"{name}: no such file, and not a LongBench dataset name (one of "
                        f"{', '.join(LONGBENCH_DATASETS)})")
    return load_longbench(hub_jsonl(name), dataset, on_error=on_error, limit=limit,
                          require_answers=require_answers)


def hub_jsonl(name: str) -> Path:
    """LongBench's `{name}.jsonl`, extracted once from the hub repository's ``data.zip``.

    THUDM/LongBench is a loading-script dataset, which `datasets` 4 and later no longer run, so
    the data file is fetched with ``huggingface_hub`` and the member read with `zipfile`. The
    extracted file lives next to the downloaded zip (the hub cache) and is reused."""
    zip_path = download_hub_file(HUB_REPO, "data.zip", what=f"LongBench {name!r}",
                                 local_hint=f"a LongBench jsonl such as data/{name}.jsonl from "
                                            "LongBench's data.zip")
    out = Path(zip_path).parent / "extracted" / f"{name}.jsonl"
    if not out.is_file():
        out.parent.mkdir(exist_ok=True)
        try:
            with zipfile.ZipFile(zip_path) as z:
                member = next((m for m in z.namelist() if m.endswith(f"/{name}.jsonl")
                               or m == f"{name}.jsonl"), None)
                if member is None:
                    raise DataError(f"{zip_path}: LongBench's data.zip has no {name}.jsonl")
                tmp = out.with_suffix(f".tmp-{os.getpid()}")
                tmp.write_bytes(z.read(member))
                os.replace(tmp, out)
        except zipfile.BadZipFile as err:
            raise DataError(f"{zip_path}: not a zip file ({err})") from err
    return out
