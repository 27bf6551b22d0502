"""Document outlines: the `Section` tree that parsers produce, the text they index, and the
generic outline of a document made of titled passages of sentences (HotpotQA's layout).

Contract: outlines never copy text. Every `Section.spans` entry is a character span ``[start,
end)`` into ONE source string, the *cleaned* text (`clean_text`). Lower than the parsers
(`h2mt_jax.hierarchy.parse`) so that dataset loaders can build outlines without importing the
hierarchy.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Iterator

Span = tuple[int, int]


@dataclass
class Section:
    """A node of a document outline.

    title: heading or passage title, None for untitled blocks. spans: ``[start, end)`` spans of
    this section's own text blocks (paragraphs, or sentences for HotpotQA) in the cleaned source
    text, in order, before the children in reading order. children: sub-sections in document
    order. kind: "document", "passage", "part", "chapter", "act", "scene", "section", "paragraph".
    """

    title: str | None
    spans: list[Span] = field(default_factory=list)
    children: list["Section"] = field(default_factory=list)
    kind: str = "section"

    def walk(self) -> Iterator["Section"]:
        """This section and its descendants in pre-order (document order)."""
        yield self
        for child in self.children:
            yield from child.walk()

    def all_spans(self) -> list[Span]:
        """Every span of the outline, in document order."""
        return [span for sec in self.walk() for span in sec.spans]


_SURROGATE = re.compile("[\ud800-\udfff]")
_LONE_SURROGATE = re.compile("[\ud800-\udbff](?![\udc00-\udfff])"
                             "|(?<![\ud800-\udbff])[\udc00-\udfff]")


def clean_text(text: str | bytes | bytearray) -> str:
    """The str that parsers' spans index into (module docstring); warns when it repairs input."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        data = bytes(text)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as err:
            warnings.warn(f"invalid UTF-8 at byte offset {err.start}: invalid sequences replaced "
                          "by U+FFFD", UnicodeWarning, stacklevel=2)
            return data.decode("utf-8", errors="replace")
    if not isinstance(text, str):
        raise TypeError(f"expected str or bytes, got {type(text).__name__}")
    if _SURROGATE.search(text) is None:
        return text
    if lone := _LONE_SURROGATE.search(text):
        warnings.warn(f"lone surrogate at character offset {lone.start()}: replaced by U+FFFD",
                      UnicodeWarning, stacklevel=2)
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def validate_outline(outline: Section, text: str) -> None:
    """Raises ValueError unless the outline's spans satisfy the module invariants for `text`."""
    prev = 0
    for start, end in outline.all_spans():
        if not prev <= start < end <= len(text):
            raise ValueError(f"span {(start, end)} is empty, overlapping, out of order or range")
        if text[start].isspace() or text[end - 1].isspace():
            raise ValueError(f"span {(start, end)} has surrounding white space")
        prev = end


def outline_from_passages(titles: list[str], sentence_spans: list[list[Span | None]]) -> Section:
    """The outline of a document of titled passages: a "passage" per title whose spans are its
    sentences (None entries, empty sentences, are skipped). ValueError("empty document") when no
    passage has a sentence."""
    if not any(s for spans in sentence_spans for s in spans):
        raise ValueError("empty document")
    passages = [Section(t, [s for s in spans if s], [], "passage")
                for t, spans in zip(titles, sentence_spans)]
    return Section(None, [], passages, "document")
