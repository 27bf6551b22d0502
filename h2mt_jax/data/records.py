"""Shared pieces of the dataset loaders (DESIGN.md §5): the record type, errors, hub access.

Every loader works offline from a local file; a hub name or split loads through `datasets` only
when `hub_available()` and otherwise raises `DataError` asking for a local path. `datasets` is
imported lazily, so the library runs without it.

Malformed input (`on_error`): a loader reports each bad line or record to an `IssueLog`, which
raises `DataError("{path}:{line}: {reason}")` at the first one under "stop" and, under "skip",
keeps every good one and emits ONE `DataWarning` per file that counts the skipped entries and
names the first few with their reasons. Invalid UTF-8 is decoded with U+FFFD replacements and
reported in that same warning, under either mode: it is never a failure.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.request
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

ON_ERROR = ("skip", "stop")
HUB_TIMEOUT_S = 3.0
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_SHOWN = 5  # entries named in a summary warning
SKIPPED = object()  # an entry already reported as malformed


@dataclass
class QARecord:
    """One question over one document.

    gold_spans: ``[start, end)`` character spans in `context` of the gold evidence when known
    (HotpotQA supporting sentences), else None. length: the source's length field (LongBench:
    words of the context), None when absent. meta: everything else (source file, line, raw
    record, language, ...).
    """

    id: str
    question: str
    context: str
    answers: list[str]
    dataset: str
    length: int | None
    all_classes: list[str] | None
    gold_spans: list[tuple[int, int]] | None = None
    meta: dict = field(default_factory=dict)


class DataError(ValueError):
    """A data file or hub dataset that cannot be loaded; names the path and 1-based line."""


class DataWarning(UserWarning):
    """Skipped malformed entries or repaired text in a data file (one warning per file)."""


class MalformedRecord(ValueError):
    """Raised by record converters; the loader turns it into an `IssueLog` entry."""


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")


def check_limit(limit: int | None) -> None:
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")


class IssueLog:
    """Problems of one source (a file or a hub split): raise or collect, then one warning.

    `where` is a 1-based line (unit "line": ``path:7``) or record number (unit "record":
    ``path: record 7``).
    """

    def __init__(self, source: str, on_error: str, unit: str = "line") -> None:
        check_on_error(on_error)
        self.source, self.on_error, self.unit = source, on_error, unit
        self.skipped: list[tuple[int, str]] = []
        self.replaced: list[int] = []

    def at(self, where: int | None) -> str:
        if where is None:
            return self.source
        return f"{self.source}:{where}" if self.unit == "line" else f"{self.source}: record {where}"

    def bad(self, where: int, reason: str) -> None:
        """A malformed entry: raises under "stop", is recorded (and skipped) under "skip"."""
        if self.on_error == "stop":
            raise DataError(f"{self.at(where)}: {reason}")
        self.skipped.append((where, reason))

    def bad_utf8(self, where: int | None) -> None:
        self.replaced.append(0 if where is None else where)

    def warn(self, total: int | None = None, stacklevel: int = 3) -> None:
        """Emits the one summary warning of this source, if anything went wrong."""
        parts = []
        if self.skipped:
            of = f" of {total}" if total is not None else ""
            named = "; ".join(f"{self.unit} {w}: {r}" for w, r in self.skipped[:_SHOWN])
            more = f"; and {len(self.skipped) - _SHOWN} more" if len(self.skipped) > _SHOWN else ""
            parts.append(f"skipped {len(self.skipped)}{of} malformed {self.unit}s ({named}{more})")
        if self.replaced:
            where = ", ".join(map(str, self.replaced[:_SHOWN])) if any(self.replaced) else ""
            where = f" on {self.unit}s {where}" if where else ""
            parts.append(f"invalid UTF-8 replaced by U+FFFD{where}")
        if parts:
            warnings.warn(f"{self.source}: " + "; ".join(parts), DataWarning,
                          stacklevel=stacklevel)


def decode(data: bytes, log: IssueLog, where: int | None = None) -> str:
    """UTF-8 text of `data`; invalid sequences become U+FFFD and are noted in `log`."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        log.bad_utf8(where)
        return data.decode("utf-8", errors="replace")


def read_bytes(path: os.PathLike | str, what: str = "file") -> bytes:
    """The bytes of a local file, or DataError naming the path."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a {what}") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err}") from err


def looks_like_path(name: str) -> bool:
    """Whether `name` is meant as a file path (a separator, a leading . or ~, or a suffix)."""
    return (os.sep in name or "/" in name or name.startswith((".", "~"))
            or name.endswith((".json", ".jsonl", ".raw", ".txt", ".gz")))


def convert_jsonl(path: os.PathLike | str, log: IssueLog,
                  convert: Callable[[dict, int], Any], limit: int | None) -> list:
    """`convert(obj, line)` of each JSON-object line of a local jsonl file, in file order.

    Blank lines are ignored; a leading BOM is dropped. Bad JSON, a non-object line or a
    `MalformedRecord` from `convert` goes to `log`; stops once `limit` records are converted.
    """
    def objects():
        for n, raw in enumerate(read_bytes(path, "jsonl file").split(b"\n"), 1):
            if not raw.strip():
                continue
            text = decode(raw, log, n)
            text = text.removeprefix("\ufeff") if n == 1 else text
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as err:
                log.bad(n, f"bad JSON ({err.msg} at column {err.colno})")
                obj = SKIPPED
            except RecursionError:  # e.g. 100k nested brackets: malformed, not a crash
                log.bad(n, "bad JSON (nested too deeply)")
                obj = SKIPPED
            if obj is not SKIPPED and not isinstance(obj, dict):
                log.bad(n, f"not a JSON object (got {type(obj).__name__})")
                obj = SKIPPED
            yield n, obj

    return convert_all(objects(), log, convert, limit)


def convert_all(numbered: Iterable[tuple[int, Any]], log: IssueLog,
                convert: Callable[[Any, int], Any], limit: int | None) -> list:
    """`convert(obj, n)` of each `(n, obj)` until `limit` records are converted; a
    `MalformedRecord` goes to `log`, which warns once at the end (counting what was read).
    `SKIPPED` entries (already reported to `log`) are counted, not converted."""
    out: list = []
    seen = 0
    for n, obj in numbered:
        if limit is not None and len(out) >= limit:
            break
        seen += 1
        if obj is SKIPPED:
            continue
        try:
            out.append(convert(obj, n))
        except MalformedRecord as err:
            log.bad(n, str(err))
    log.warn(seen, stacklevel=4)
    return out


# ----------------------------------------------------------------------------- hub access
def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def hub_available(timeout: float = HUB_TIMEOUT_S) -> bool:
    """Whether the Hugging Face hub can be used now.

    False when HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set (to anything but 0/false/no/off);
    otherwise a HEAD request to ``$HF_ENDPOINT`` (default https://huggingface.co) must succeed
    (status below 400 after redirects; an error status counts as unreachable, since intercepting
    proxies answer 404 for hosts they cannot reach). The probe runs in a daemon thread joined for
    `timeout` seconds, so a stalled DNS lookup or connection cannot hang the caller past it.
    """
    if any(_env_true(v) for v in _OFFLINE_VARS):
        return False
    url = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    result: list[bool] = []

    def probe() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"),
                                        timeout=timeout) as response:
                result.append(response.status < 400)
        except Exception:  # noqa: BLE001 - HTTPError, URLError, timeouts, SSL errors
            result.append(False)

    thread = threading.Thread(target=probe, name="h2mt-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def load_hub_dataset(*args: Any, what: str, local_hint: str, **kwargs: Any) -> Any:
    """``datasets.load_dataset(*args, **kwargs)`` when the hub is available, else DataError.

    `what` names the dataset in messages; `local_hint` says which local file to pass instead.
    Offline, a missing `datasets` package and any failure of the load raise DataError (the
    original exception chained).
    """
    if not hub_available():
        raise DataError(f"cannot load {what} from the Hugging Face hub: offline (HF_HUB_OFFLINE "
                        f"set or huggingface.co unreachable); pass a local path instead: "
                        f"{local_hint}")
    try:
        import datasets
    except ImportError as err:
        raise DataError(f"pip install datasets to load {what} from the hub, or pass a local "
                        f"path: {local_hint}") from err
    try:
        return datasets.load_dataset(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - connection errors, missing configs, scripts
        raise DataError(f"could not load {what} from the hub ({type(err).__name__}: {err}); "
                        f"pass a local path instead: {local_hint}") from err


def download_hub_file(repo_id: str, filename: str, *, what: str, local_hint: str,
                      repo_type: str = "dataset") -> str:
    """The local path of one file of a hub repository (``huggingface_hub.hf_hub_download``).

    For hub datasets whose loading script `datasets` (4 and later) no longer runs, such as
    LongBench's ``data.zip``. Offline, and on any failure, DataError with `local_hint`."""
    if not hub_available():
        raise DataError(f"cannot download {what} from the Hugging Face hub: offline (HF_HUB_OFFLINE "
                        f"set or huggingface.co unreachable); pass a local path instead: "
                        f"{local_hint}")
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id, filename, repo_type=repo_type)
    except Exception as err:  # noqa: BLE001 - connection errors, missing files, gated repos
        raise DataError(f"could not download {what} ({repo_id}/{filename}) from the hub "
                        f"({type(err).__name__}: {err}); pass a local path instead: "
                        f"{local_hint}") from err


def iter_hub_rows(rows: Any, log: IssueLog, convert: Callable[[Any, int], Any],
                  limit: int | None) -> list:
    """Converts hub rows (1-based record numbers) with the same error policy as files."""
    return convert_all(enumerate(rows, 1), log, convert, limit)
