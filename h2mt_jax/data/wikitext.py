"""WikiText loader for perplexity (DESIGN.md §5): a local raw file always, the hub when online.

`load_wikitext` takes a local raw text file (such as ``wiki.test.raw``) or a name
"config:split" ("wikitext-2-raw-v1:test"; the split defaults to "test") loaded with
``datasets.load_dataset("Salesforce/wikitext", config, split=split)`` only when online. Hub rows are lines
that keep their "\\n" (blank lines are empty rows), so they are joined with "" and give the raw
file's text without its blank lines, which is the layout of the shared sample
(``../shared/data/wikitext2/wiki.test.raw``: 2891 lines, none blank). Local files keep their text
except that line ends are normalised to "\\n" (the shared sample has "\\r\\n"); invalid UTF-8 is
replaced by U+FFFD with a `DataWarning`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, TypeVar

from h2mt_jax.data.records import DataError, IssueLog, decode, load_hub_dataset, read_bytes

WIKITEXT_CONFIGS = ("wikitext-2-raw-v1", "wikitext-2-v1", "wikitext-103-raw-v1", "wikitext-103-v1")
WIKITEXT_SPLITS = ("train", "validation", "test")
T = TypeVar("T", bound=Sequence)


def load_wikitext(path_or_name: str | os.PathLike) -> str:
    """The text of a local raw WikiText file, or of a hub "config:split" (online only)."""
    path = Path(os.path.expanduser(path_or_name))
    name = str(path_or_name)
    config, _, split = name.partition(":")
    if path.exists() or config not in WIKITEXT_CONFIGS:
        if not path.exists():
            raise DataError(f"{path}: no such WikiText raw file (hub names are config:split "
                            f"with config one of {', '.join(WIKITEXT_CONFIGS)})")
        log = IssueLog(str(path), "stop")
        text = decode(read_bytes(path, "WikiText raw file"), log)
        log.warn(stacklevel=3)
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if not text.strip():
            raise DataError(f"{path}: no text")
        return text
    split = split or "test"
    if split not in WIKITEXT_SPLITS:
        raise DataError(f"{name}: unknown WikiText split {split!r} (one of "
                        f"{', '.join(WIKITEXT_SPLITS)})")
    rows = load_hub_dataset("Salesforce/wikitext", config, split=split, what=f"WikiText {name!r}",
                            local_hint=f"the raw file, e.g. wiki.{split}.raw of {config}")
    return "".join(row["text"] for row in rows)


def split_tokens(ids: T, held_out: int) -> tuple[T, T]:
    """(train, held_out): the last `held_out` tokens are held out, the rest is for training.

    Works on lists, numpy and jax arrays (slices). ValueError unless ``0 <= held_out`` and at
    least one token is left for training.
    """
    if isinstance(held_out, bool) or not isinstance(held_out, int) or held_out < 0:
        raise ValueError(f"held_out must be a non-negative int, got {held_out!r}")
    if len(ids) <= held_out:
        raise ValueError(f"only {len(ids)} tokens: too short to hold out {held_out} and keep "
                         "at least one for training")
    cut = len(ids) - held_out
    return ids[:cut], ids[cut:]
