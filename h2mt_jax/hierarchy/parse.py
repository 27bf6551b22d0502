"""Document structure parsers: source text -> `Section` outline (docs/algorithms.md, hierarchy).

Contract: outlines never copy text. Every `Section.spans` entry is a character span ``[start,
end)`` into ONE source string, the *cleaned* text, so callers first do ``text = clean_text(raw)``
(str or bytes) and then ``outline = parse_document(text)`` (or a specific parser). Parsers also
accept raw input and clean it the same way, but only a caller holding the cleaned string can show
or check routes. Cleaning decodes bytes as UTF-8 and replaces invalid sequences by U+FFFD with a
`UnicodeWarning` naming the byte offset of the first; lone surrogates in a str are replaced the
same way (valid pairs are joined); clean str input is returned unchanged. An empty or
white-space-only document raises ``ValueError("empty document")``.

Outline invariants (`validate_outline`): spans are non-empty, without surrounding white space,
inside the text, strictly increasing and non-overlapping in pre-order (a section's own spans
come before its children's). Text goes to the innermost enclosing section; heading and title
lines are in no span (their text is the `title`); headings without body keep empty spans. When
a parser finds no structure it returns what `parse_plain` does: a root whose children are
"paragraph" sections of one span each (so one sentence gives a root with one paragraph child).

Paragraphs: blocks of lines separated by blank lines. A block with a non-final line longer than
100 characters has one paragraph per line (LongBench, QASPER, Wikipedia); otherwise it is
hard-wrapped text and one paragraph, except that a block of more than 40 lines (wrapped text
without blank lines) is also cut after lines that end a sentence well short of the wrap width.
"""

from __future__ import annotations

import re

from h2mt_jax.data.outline import Section, Span, clean_text, validate_outline

__all__ = ["FORMATS", "Section", "Span", "clean_text", "parse_document", "parse_longbench_passages",
           "parse_markdown", "parse_narrativeqa", "parse_plain", "parse_qasper", "parse_wikitext",
           "split_sentences", "validate_outline"]

WRAP_WIDTH = 100  # a block with a longer non-final line holds one paragraph per line
LONG_BLOCK_LINES = 40  # longer wrapped blocks are also cut at short sentence-final lines
FORMATS = ("auto", "plain", "markdown", "wikitext", "longbench_passages", "qasper", "narrativeqa")


def _prepare(text: str | bytes) -> str:
    text = clean_text(text)
    if not text.strip():
        raise ValueError("empty document")
    return text


# ----------------------------------------------------------------------------- blocks and lines
_NON_SPACE = re.compile(r"\S")
_NEWLINE = re.compile("\n")
_BLANK_RUN = re.compile(r"\n(?:[^\S\n]*\n)+")  # one or more blank lines
_LONG_LINE_AFTER_NL = re.compile(r"\n[^\n]{%d,}\n" % (WRAP_WIDTH + 1))
_SENTENCE_END_LINE = re.compile(r"[.!?…\"'”’)][^\S\n]*\n")


def _trim(text: str, start: int, end: int) -> Span | None:
    """The span without surrounding white space, or None when it is all white space."""
    m = _NON_SPACE.search(text, start, end)
    if m is None:
        return None
    while text[end - 1].isspace():
        end -= 1
    return m.start(), end


def _lines(text: str, start: int = 0, end: int | None = None) -> list[Span]:
    """Line spans (without the newline) of ``text[start:end]``."""
    end = len(text) if end is None else end
    newlines = [m.start() for m in _NEWLINE.finditer(text, start, end)]
    lines = list(zip([start] + [p + 1 for p in newlines], newlines + [end]))
    return lines[:-1] if lines[-1][0] == end and len(lines) > 1 else lines


def _blocks(text: str, start: int, end: int, blank_run: re.Pattern = _BLANK_RUN) -> list[Span]:
    """Trimmed spans of the runs of non-blank lines of ``text[start:end]``."""
    cuts = [start] + [p for m in blank_run.finditer(text, start, end) for p in m.span()] + [end]
    return [b for s, e in zip(cuts[::2], cuts[1::2]) if (b := _trim(text, s, e))]


def _first_line(text: str, block: Span) -> tuple[str, int]:
    """The first line of a block (stripped) and where the rest of the block starts."""
    nl = text.find("\n", *block)
    nl = block[1] if nl < 0 else nl
    return text[block[0]:nl].strip(), nl


def _block_paragraphs(text: str, block: Span | None) -> list[Span]:
    """Paragraph spans of one trimmed block (rules in the module docstring)."""
    if block is None:
        return []
    s, e = block
    first_nl = text.find("\n", s, e)
    if first_nl < 0:
        return [block]
    if first_nl - s > WRAP_WIDTH or _LONG_LINE_AFTER_NL.search(text, first_nl, e):
        return [p for line in _lines(text, s, e) if (p := _trim(text, *line))]
    if text.count("\n", s, e) < LONG_BLOCK_LINES:
        return [block]
    short = 0.75 * max(map(len, text[s:e].split("\n")))
    out, cur = [], s
    for m in _SENTENCE_END_LINE.finditer(text, s, e):
        if m.start() - max(text.rfind("\n", s, m.start()), s - 1) < short:  # a short line
            out.append(_trim(text, cur, m.end()))
            cur = m.end()
    return out + [p for p in [_trim(text, cur, e)] if p]


def _paragraphs(text: str, start: int, end: int) -> list[Span]:
    return [p for b in _blocks(text, start, end) for p in _block_paragraphs(text, b)]


def _flat(paragraphs: list[Span]) -> Section:
    """The structure-less outline: a root with one "paragraph" child per paragraph."""
    return Section(None, [], [Section(None, [p], [], "paragraph") for p in paragraphs], "document")


def _nest(items: list[tuple], title: str | None = None) -> Section:
    """The outline of a sequence of ("h", level, title, kind) headings (deeper levels nest) and
    ("p", span) text blocks; `_flat` when there is no heading."""
    if not any(it[0] == "h" for it in items):
        return _flat([it[1] for it in items])
    root = Section(title, [], [], "document")
    stack: list[tuple[int, Section]] = [(0, root)]
    for it in items:
        if it[0] == "h":
            while stack[-1][0] >= it[1]:
                stack.pop()
            stack[-1][1].children.append(sec := Section(it[2], [], [], it[3]))
            stack.append((it[1], sec))
        else:
            stack[-1][1].spans.append(it[1])
    return root


def _heading_like(line: str, max_words: int = 12) -> bool:
    """A short line that does not end like a sentence or a lead-in, nor starts in lower case."""
    return (0 < len(line) <= WRAP_WIDTH and line[-1] not in ".,;:!?" and not line[0].islower()
            and len(line.split()) <= max_words)


# ----------------------------------------------------------------------------- sentences
_TERMINATOR = re.compile(r"(?<![.!?…])[.!?…]++[\"'”’»)\]]*+(?=\s)|(?<![。！？])[。！？]++[」』”’)）]*+")
_CLOSERS = "\"'”’»)]」』）"
_OPENERS = "\"'“‘«([{"
_SKIP_OPENERS = re.compile(r"[\s\"'“‘«(\[{]*")
_DOTTED = re.compile(r"[A-Za-z](?:\.[A-Za-z])+")  # e.g, i.e, U.S, a.m (before the final ".")
_ABBREVIATIONS = frozenset(
    "mr mrs ms mx dr prof sr jr st mt vs etc cf viz al approx inc ltd co corp gen col lt sgt capt "
    "rev hon dept est ave blvd rd".split())
_NUMBER_ABBREVIATIONS = frozenset("no nos vol vols pp p fig figs ch sec art eq".split())  # + digit


def _is_boundary(text: str, m: re.Match, block_start: int, block_end: int) -> bool:
    """Whether the terminator run `m` ends a sentence."""
    core = m.group().rstrip(_CLOSERS)
    if core[-1] in "。！？":
        return True
    j = _SKIP_OPENERS.match(text, m.end(), block_end).end()
    nxt = text[j] if j < block_end else ""
    if nxt.islower():  # "e.g. foo", '"Why?" she asked': a lower-case continuation
        return False
    if "..." in core or "…" in core:  # an ellipsis ends a sentence only before a capital
        return nxt == "" or nxt.isupper()
    if core != ".":
        return True
    words = text[max(block_start, m.start() - 40):m.start()].split()
    token = words[-1].lstrip(_OPENERS) if words and not text[m.start() - 1].isspace() else ""
    low = token.lower()
    if low in _ABBREVIATIONS or _DOTTED.fullmatch(token) or (low in _NUMBER_ABBREVIATIONS
                                                             and nxt.isdigit()):
        return False
    return not (len(token) == 1 and token.isupper() and token != "I")  # "J. R. R. Tolkien"


def split_sentences(text: str, start: int = 0, end: int | None = None) -> list[Span]:
    """Sentence spans in ``text[start:end]``, without surrounding white space (linear time).

    Splits at blank lines, after . ! ? … runs (and their closing quotes/brackets) followed by
    white space, and after CJK 。！？. No split before a lower-case word, after an abbreviation
    (Mr., Dr., e.g., i.e., etc., U.S., "No." before a digit), a single capital initial (not
    "I"), or an ellipsis not followed by a capital. Decimals (3.14) never split: no white space.
    """
    end = len(text) if end is None else min(end, len(text))
    out: list[Span] = []
    for block_start, block_end in _blocks(text, max(0, start), end):
        cur = block_start
        for m in _TERMINATOR.finditer(text, block_start, block_end):
            if _is_boundary(text, m, block_start, block_end):
                out.append(_trim(text, cur, m.end()))
                cur = m.end()
        out += [p for p in [_trim(text, cur, block_end)] if p]
    return out


# ----------------------------------------------------------------------------- plain, markdown
def _join_headings(text: str, paragraphs: list[Span]) -> list[Span]:
    """A heading never stands alone: a one-line, heading-like paragraph joins the paragraph that
    follows it (one span from the heading to that paragraph's end)."""
    out: list[Span] = []
    pending: int | None = None  # start of the headings waiting for their text
    for s, e in paragraphs:
        line = text[s:e]
        if "\n" not in line and _heading_like(line.strip()) and len(line.split()) <= 12:
            pending = s if pending is None else pending
            continue
        out.append((s if pending is None else pending, e))
        pending = None
    if pending is not None:  # headings at the very end: keep them, as their own text
        out.append((pending, paragraphs[-1][1]))
    return out


def parse_plain(text: str | bytes) -> Section:
    """Paragraphs (module docstring rules) as "paragraph" children of the root; a heading-like
    line alone in its paragraph joins the next paragraph (`_join_headings`)."""
    text = _prepare(text)
    return _flat(_join_headings(text, _paragraphs(text, 0, len(text))))


# " = Title = ", " = = Section = = " (WikiText's spaced markers) or "== Section ==" (MediaWiki)
_WIKITEXT_HEADING = re.compile(r"[^\S\n]*(=(?: ?=)*)[^\S\n]+(\S.*?)[^\S\n]+\1[^\S\n]*")


def parse_wikitext(text: str | bytes) -> Section:
    """WikiText / MediaWiki text: heading lines ``= T =``, ``= = S = =`` (or ``== S ==``) nest by
    their number of "=" (articles, sections, sub-sections); the lines between are paragraphs."""
    text = _prepare(text)
    items: list[tuple] = []
    body = 0
    for s, e in _lines(text):
        m = _WIKITEXT_HEADING.fullmatch(text[s:e])
        if m:
            items.extend(("p", p) for p in _paragraphs(text, body, s))
            items.append(("h", m.group(1).count("="), m.group(2), "section"))
            body = e
    items.extend(("p", p) for p in _paragraphs(text, body, len(text)))
    return _nest(items)


_ATX = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*))?")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")


def parse_markdown(text: str | bytes) -> Section:
    """ATX headings (# .. ######) nest by level (a ### under a # is fine); text before the first
    heading is the root's. Fenced code blocks (``` or ~~~, closed by a fence of the same character
    at least as long or by the end of the text) are single text blocks, not scanned for headings.
    Setext headings are not recognized. Without any heading the result is `parse_plain`'s."""
    text = _prepare(text)
    items: list[tuple] = []
    body = fence = None  # start of the pending text (or fenced block), open fence marker

    def flush(end: int) -> None:
        if body is not None:
            items.extend(("p", p) for p in _paragraphs(text, body, end))

    for s, e in _lines(text):
        line = text[s:e].rstrip()
        if fence is not None:
            if re.fullmatch(" {0,3}" + re.escape(fence[0]) + "{%d,}" % len(fence), line):
                items.append(("p", _trim(text, body, e)))
                body = fence = None
        elif (m := _FENCE.match(line)) or (h := _ATX.fullmatch(line)):
            flush(s)
            body, fence = (s, m.group(1)) if m else (None, None)
            if not m:
                title = re.sub(r"(?:^|[ \t]+)#+$", "", (h.group(2) or "").strip()).strip()
                items.append(("h", len(h.group(1)), title, "section"))
        elif body is None:
            body = s
    if fence is not None:  # an unclosed fence runs to the end
        items.append(("p", _trim(text, body, len(text))))
    else:
        flush(len(text))
    return _nest(items)


# ----------------------------------------------------------------------------- LongBench passages
_PASSAGE = re.compile(r"^Passage \d+:[ \t\r]*$", re.M)
_WIKI_HEADING = re.compile(r"(=+)\s*([^=].*?)\s*\1")


def _passage(text: str, start: int, end: int) -> Section:
    """One "Passage N:" block: title line, body lines, Wikipedia sub-sections after blank lines."""
    sec = Section(None, [], [], "passage")
    blocks = _blocks(text, start, end)
    if blocks:
        title, rest = _first_line(text, blocks[0])
        if rest < blocks[0][1] or len(blocks) > 1:  # more lines follow: the first is the title
            sec.title = title
            blocks[0] = _trim(text, rest, blocks[0][1])
    lead_in = False  # the previous block ends with ":" (e.g. "may refer to:"): no heading next
    for i, block in enumerate(blocks):
        first, rest = _first_line(text, block) if block else ("", 0)
        wiki = _WIKI_HEADING.fullmatch(first) if len(first) <= 2 * WRAP_WIDTH else None
        if i > 0 and not lead_in and (wiki or _heading_like(first)):
            sub = _block_paragraphs(text, _trim(text, rest, block[1]))
            sec.children.append(Section(wiki.group(2) if wiki else first, sub, [], "section"))
        else:
            (sec.children[-1] if sec.children else sec).spans.extend(_block_paragraphs(text, block))
        lead_in = block is not None and text[block[1] - 1] == ":"
    return sec


def parse_longbench_passages(text: str | bytes) -> Section:
    """LongBench hotpotqa / 2wikimqa / musique contexts: "Passage N:" line, title line, text.

    Each passage is a "passage" child: title = its first line when more lines follow, body lines
    = its paragraphs, and blocks after a blank line that start with a short heading-like line
    (Wikipedia sub-headings) are its "section" children. Text before the first marker is the
    root's. No marker: `parse_plain`.
    """
    text = _prepare(text)
    marks = list(_PASSAGE.finditer(text))
    if not marks:
        return parse_plain(text)
    root = Section(None, _paragraphs(text, 0, marks[0].start()), [], "document")
    ends = [m.start() for m in marks[1:]] + [len(text)]
    root.children = [_passage(text, m.end(), end) for m, end in zip(marks, ends)]
    return root


# ----------------------------------------------------------------------------- QASPER
def parse_qasper(text: str | bytes) -> Section:
    """LongBench qasper contexts: one paragraph per line, section headings on their own lines.

    A heading is a line "A ::: B ::: C" (the path of a nested section; missing ancestors are
    added as empty sections) or a short heading-like line of at most 10 words. A line followed by
    a lower-case line is no heading, nor are the short lines of a list after a line ending in ":"
    (unless of at most 4 words before a long paragraph). A first line followed by an "Abstract"
    line is the paper's title. No heading found: `parse_plain`.
    """
    text = _prepare(text)
    lines = [span for line in _lines(text) if (span := _trim(text, *line))]
    strs = [text[s:e] for s, e in lines]
    title = None
    if len(strs) > 1 and strs[1].lower().rstrip(":") == "abstract" and _heading_like(strs[0], 30):
        title, lines, strs = strs[0], lines[1:], strs[1:]
    items: list[tuple] = []
    path: list[str] = []
    in_list = False
    for i, (line, s) in enumerate(zip(lines, strs)):
        parts = [p.strip() for p in s.split(":::")] if " ::: " in s and len(s) <= 300 else None
        nxt = strs[i + 1] if i + 1 < len(strs) else ""
        if (parts is None and _heading_like(s, 10) and not nxt[:1].islower()
                and (not in_list or len(nxt) > WRAP_WIDTH and len(s.split()) <= 4)):
            parts = [s]
        if parts:
            k = 0
            while k < min(len(path), len(parts) - 1) and path[k] == parts[k]:
                k += 1
            path = path[:k]
            for part in parts[k:]:
                path.append(part)
                items.append(("h", len(path), part, "section"))
            in_list = False
        else:
            items.append(("p", line))
            in_list = s.endswith(":") or (in_list and len(s) < 2 * WRAP_WIDTH)
    return _nest(items, title) if any(it[0] == "h" for it in items) else parse_plain(text)


# ----------------------------------------------------------------------------- NarrativeQA
_TAG = re.compile(r"</?[A-Za-z][^<>\n]{0,200}>")
_TAGGED_BLANK_RUN = re.compile(r"\n(?:[^\S\n]*(?:</?[A-Za-z][^<>\n]{0,200}>[^\S\n]*)*\n)+")
_NUM = (r"(?:[IVXLCDM]+|\d+|(?i:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|"
        r"the\s+\w+|first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth))\b")
_ROMAN = r"(?=[IVXLC])C{0,3}(?:XC|XL|L?X{0,3})(?:IX|IV|V?I{0,3})"
_MARKERS = [  # (level, kind, may take a title line, pattern over a tag-stripped stripped line)
    (1, "part", True, re.compile(rf"(?:BOOK|Book|PART|Part|VOLUME|Volume)\s+{_NUM}.{{0,70}}")),
    (2, "chapter", True, re.compile(rf"(?:CHAPTER|Chapter|STAVE|Stave)\s+{_NUM}.{{0,70}}")),
    (2, "act", True, re.compile(rf"(?:ACT|Act)\s+{_NUM}.{{0,70}}")),
    (2, "chapter", False, re.compile(rf"{_ROMAN}(?:\.(?:\s+\S.{{0,70}})?)?")),
    (3, "scene", True, re.compile(rf"(?:SCENE|Scene)\s+{_NUM}.{{0,70}}")),
    (3, "scene", False, re.compile(r"(?:INT|EXT|INT\./EXT|EXT\./INT|I/E)[.\s][^a-z]{0,100}")),
]


def _marker(text: str, block: Span) -> tuple[int, str, str, bool] | None:
    """(level, kind, title, may take a title block next) when the block is a chapter marker."""
    if block[1] - block[0] > 200 or text.count("\n", *block) > 1:
        return None
    lines = [_TAG.sub("", line).strip() for line in text[slice(*block)].split("\n")]
    for level, kind, titled, pattern in _MARKERS:
        if pattern.fullmatch(lines[0]) and (len(lines) == 1 or titled and len(lines[1]) <= 80):
            return level, kind, " ".join(lines), titled and len(lines) == 1
    return None


def parse_narrativeqa(text: str | bytes) -> Section:
    """Stories and scripts: paragraphs at blank lines (lines of only HTML tags, as the scripts'
    "</b>", count as blank), hard-wrapped lines merged; chapter markers as levels.

    Markers are blocks of their own: BOOK/PART/VOLUME n (level 1); CHAPTER/STAVE/ACT n or a bare
    roman numeral, optionally "IV. Title" (level 2); SCENE n or a screenplay slug line INT./EXT.
    (level 3). A keyword marker takes a short title from its second line or the next block.
    Markers count when the text has at least two; text before the first is the root's.
    """
    text = _prepare(text)
    blocks = _blocks(text, 0, len(text), _TAGGED_BLANK_RUN)
    items: list[tuple] = []
    wants_title = False  # the last item is a lone "CHAPTER n": a short next block is its title
    for block in blocks:
        line = _TAG.sub("", _first_line(text, block)[0]).strip()
        if mark := _marker(text, block):
            items.append(("h", mark[0], mark[2], mark[1]))
        elif wants_title and "\n" not in text[slice(*block)] and _heading_like(line, 10):
            items[-1] = ("h", items[-1][1], f"{items[-1][2]} {line}", items[-1][3])
        else:
            items.extend(("p", p) for p in _block_paragraphs(text, block))
        wants_title = bool(mark and mark[3])
    if sum(it[0] == "h" for it in items) < 2:
        return _flat([p for b in blocks for p in _block_paragraphs(text, b)])
    return _nest(items)


# ----------------------------------------------------------------------------- dispatch
def parse_document(text: str | bytes, fmt: str = "auto") -> Section:
    """Dispatches on `fmt` (one of `FORMATS`); "auto" picks longbench_passages when a line
    "Passage 1:" exists, markdown when an ATX heading line exists, wikitext when a line is a
    WikiText heading (`= = Section = =`), else plain."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown document format {fmt!r}; expected one of {', '.join(FORMATS)}")
    text = _prepare(text)
    if fmt == "auto" and re.search(r"^Passage 1:[ \t\r]*$", text, re.M):
        fmt = "longbench_passages"
    elif fmt == "auto" and re.search(r"^ {0,3}#{1,6}(?:[ \t]|$)", text, re.M):
        fmt = "markdown"
    elif fmt == "auto":
        fmt = "wikitext" if any(_WIKITEXT_HEADING.fullmatch(text[s:e])
                                for s, e in _lines(text)) else "plain"
    return {"plain": parse_plain, "markdown": parse_markdown, "qasper": parse_qasper,
            "wikitext": parse_wikitext,
            "longbench_passages": parse_longbench_passages,
            "narrativeqa": parse_narrativeqa}[fmt](text)
