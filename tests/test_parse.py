"""Document structure parsers (hierarchy.parse): real samples, tricky strings, bad input."""

from __future__ import annotations

import json
import re
import time
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from h2mt_jax.data.hotpotqa import hotpotqa_supporting_spans, parse_hotpotqa
from h2mt_jax.hierarchy.parse import (
    FORMATS,
    Section,
    clean_text,
    parse_document,
    parse_longbench_passages,
    parse_markdown,
    parse_narrativeqa,
    parse_plain,
    parse_wikitext,
    parse_qasper,
    split_sentences,
    validate_outline,
)

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
LONGBENCH = ("hotpotqa", "2wikimqa", "musique", "qasper", "narrativeqa", "multifieldqa_en")
PARSERS = {"plain": parse_plain, "markdown": parse_markdown, "qasper": parse_qasper,
           "wikitext": parse_wikitext,
           "longbench_passages": parse_longbench_passages, "narrativeqa": parse_narrativeqa,
           "auto": parse_document}


def data(*parts: str) -> Path:
    """A file under ../shared/data, or skip with the reason."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared data samples (../shared/data next to this "
                    "checkout) are needed for the real-data tests")
    return path


def contexts(name: str) -> list[str]:
    lines = data("longbench", f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["context"] for line in lines if line.strip()]


def assert_valid(outline: Section, text: str) -> None:
    """Spans increasing, non-overlapping, within the text, trimmed (pre-order)."""
    prev = 0
    for start, end in outline.all_spans():
        assert prev <= start < end <= len(text), (start, end, prev)
        assert not text[start].isspace() and not text[end - 1].isspace()
        prev = end
    validate_outline(outline, text)


def line_at(text: str, pos: int) -> str:
    """The stripped line of `text` that holds position `pos`."""
    end = text.find("\n", pos)
    return text[text.rfind("\n", 0, pos) + 1:len(text) if end < 0 else end].strip()


def uncovered(outline: Section, text: str) -> list[int]:
    """Positions of non-white-space characters in no span."""
    covered = bytearray(len(text))
    for s, e in outline.all_spans():
        covered[s:e] = b"\x01" * (e - s)
    return [i for i, c in enumerate(text) if not covered[i] and not c.isspace()]


# ----------------------------------------------------------------------------- real samples
@pytest.mark.parametrize("name", LONGBENCH)
@pytest.mark.parametrize("fmt", sorted(PARSERS))
def test_every_parser_gives_valid_spans_on_every_real_sample(name, fmt):
    for ctx in contexts(name):
        assert_valid(PARSERS[fmt](ctx), ctx)


@pytest.mark.parametrize("name", LONGBENCH)
def test_plain_paragraphs_and_sentences_cover_all_text(name):
    for ctx in contexts(name):
        outline = parse_plain(ctx)
        assert all(c.kind == "paragraph" and len(c.spans) == 1 for c in outline.children)
        assert uncovered(outline, ctx) == []
        sentences = Section(None, split_sentences(ctx))
        assert_valid(sentences, ctx)
        assert uncovered(sentences, ctx) == []


def test_wikitext_headings_nest_and_sentences():
    text = data("wikitext2", "wiki.test.raw").read_text(encoding="utf-8")
    outline = parse_document(text)
    assert_valid(outline, text)
    # every character outside the spans is on a heading line, which became a section title
    assert {line_at(text, p) for p in uncovered(outline, text)} == {
        line for line in (ln.strip() for ln in text.splitlines()) if re.fullmatch(r"(=( =)*) .+ \1", line)}
    articles = outline.children
    assert len(articles) == 62 and articles[0].title == "Robert Boulter"
    career = articles[0].children[0]
    assert career.title == "Career" and [c.title for c in career.children] == [
        "2000 – 2005", "2006 – present"]
    assert_valid(Section(None, split_sentences(text)), text)
    assert parse_document("== History ==\nSome text.\n=== Early ===\nMore.").children[0].children[
        0].title == "Early"  # MediaWiki's unspaced markers too


def test_heading_never_forms_a_leaf_alone(smollm2_tokenizer):
    from h2mt_jax.hierarchy.build import BuildConfig, build_spec

    text = data("wikitext2", "wiki.test.raw").read_text(encoding="utf-8")[:30000]
    spec = build_spec(text, parse_document(text), smollm2_tokenizer, BuildConfig(leaf_tokens=64))
    for s, e in spec.leaf_spans:
        assert not re.fullmatch(r"\s*(=( =)*) .+ \1\s*", text[s:e])  # no leaf is a heading
    plain = "Introduction\n\nThe tool cuts wood. It is fast.\n\nSafety Notes\n\nWear gloves always."
    outline = parse_plain(plain)
    assert [plain[s:e] for c in outline.children for s, e in c.spans] == [
        "Introduction\n\nThe tool cuts wood. It is fast.", "Safety Notes\n\nWear gloves always."]


@pytest.mark.parametrize("name", ["hotpotqa", "2wikimqa", "musique"])
def test_longbench_passages(name):
    for ctx in contexts(name):
        markers = re.findall(r"^Passage (\d+):", ctx, re.M)
        outline = parse_longbench_passages(ctx)
        assert_valid(outline, ctx)
        assert len(outline.children) == len(markers) > 0
        assert [c.kind for c in outline.children] == ["passage"] * len(markers)
        # all three datasets (musique included) put the passage title on the line after the marker
        titles = re.findall(r"^Passage \d+:\n(.*)$", ctx, re.M)
        assert [c.title for c in outline.children] == [t.strip() for t in titles]
        assert parse_document(ctx).children == outline.children  # "auto" detects the format
        for passage in outline.children:
            assert passage.spans or passage.children  # every passage has a body
        all_titles = {s.title for s in outline.walk()}
        for line in {line_at(ctx, p) for p in uncovered(outline, ctx)}:  # markers and titles only
            assert re.fullmatch(r"Passage \d+:", line) or line.strip("= ") in all_titles, line


def test_qasper_sections():
    nested = 0
    for ctx in contexts("qasper"):
        outline = parse_qasper(ctx)
        assert_valid(outline, ctx)
        titles = [s.title for s in outline.walk()][1:]
        assert outline.children[0].title == "Introduction"
        for line in ctx.split("\n"):  # every "A ::: B" heading becomes a nested section B
            if " ::: " in line:
                assert line.split(" ::: ")[-1].strip() in titles
        nested += any(c.children for c in outline.children)
        uncovered_lines = {line_at(ctx, p) for p in uncovered(outline, ctx)}  # headings only
        assert all(line.split(" ::: ")[-1] in titles for line in uncovered_lines)
        assert sum(len(s.spans) for s in outline.walk()) > 2 * len(titles) / 3
    assert nested >= 3


def test_narrativeqa_paragraphs_and_chapters():
    outlines = [(parse_narrativeqa(ctx), ctx) for ctx in contexts("narrativeqa")]
    kinds = []
    for outline, ctx in outlines:
        assert_valid(outline, ctx)
        kinds.append({c.kind for c in outline.children})
        for sec in outline.walk():  # hard-wrapped lines are merged: paragraphs span several lines
            if sec.kind in ("chapter", "scene"):
                assert sec.title and (sec.spans or sec.children)
    assert {"chapter"} in kinds and {"scene"} in kinds and {"paragraph"} in kinds
    by_titles = {tuple(c.title for c in o.children if c.kind == "chapter"): o for o, _ in outlines}
    assert any(t[:2] == ("CHAPTER I Floating Men", "CHAPTER II The Forest Gangs") and len(t) == 12
               for t in by_titles)  # "CHAPTER I", blank line, "Floating Men"
    assert any(t[:1] == ("I. The Dragon's House.",) and len(t) == 14 for t in by_titles)
    assert any(t[:3] == ("I", "II", "III") for t in by_titles)  # bare roman numerals
    multi_line = [ctx[s:e] for o, ctx in outlines for s, e in o.all_spans() if "\n" in ctx[s:e]]
    assert len(multi_line) > 100


def test_hotpotqa_records():
    path = data("hotpotqa", "hotpot_dev_distractor_first100.json")
    records = json.loads(path.read_text(encoding="utf-8"))
    records = records if isinstance(records, list) else list(records.values())
    assert len(records) == 100
    for rec in records:
        text, outline = parse_hotpotqa(rec)
        assert_valid(outline, text)
        titles, sentences = rec["context"]["title"], rec["context"]["sentences"]
        assert [c.title for c in outline.children] == titles
        for passage, sents in zip(outline.children, sentences):
            assert [text[s:e] for s, e in passage.spans] == [s.strip() for s in sents if s.strip()]
            assert text[:passage.spans[0][0]].endswith(passage.title + "\n")
        spans = hotpotqa_supporting_spans(rec, outline)
        assert spans == hotpotqa_supporting_spans(rec, text)
        facts = list(zip(rec["supporting_facts"]["title"], rec["supporting_facts"]["sent_id"]))
        assert len(spans) == len(facts)
        for (title, sid), (s, e) in zip(facts, spans):
            sentence = sentences[titles.index(title)][sid].strip()
            assert text[s:e] == sentence
            passage = outline.children[titles.index(title)]
            assert (s, e) in passage.spans
    with pytest.raises(ValueError):
        hotpotqa_supporting_spans(records[0], parse_hotpotqa(records[1])[0])


def test_hotpotqa_original_layout_and_empty_sentences():
    rec = {"context": [["A", ["First one.", " ", " Second one."]], ["B", ["Only."]]],
           "supporting_facts": [["A", 2], ["B", 0], ["B", 7], ["C", 0]]}
    text, outline = parse_hotpotqa(rec)
    assert text == "A\nFirst one. Second one.\n\nB\nOnly."
    assert [len(c.spans) for c in outline.children] == [2, 1]
    assert [text[s:e] for s, e in hotpotqa_supporting_spans(rec, text)] == ["Second one.", "Only."]
    with pytest.raises(ValueError, match="empty document"):
        parse_hotpotqa({"context": {"title": ["T"], "sentences": [[" "]]}})


# ----------------------------------------------------------------------------- markdown
MD = """Intro text before any heading.

# A
a body line one
a body line two

## A.1 ##
a1 body
### A.1.a
#### deep
## A.2
#hashtag is not a heading
####### seven hashes is not a heading
# B
### B.x
b text
```python
# not a heading

x = 1
```
## B.y
~~~
# still code
"""


def test_markdown_nesting():
    outline = parse_markdown(MD)
    assert_valid(outline, MD)
    assert [MD[s:e] for s, e in outline.spans] == ["Intro text before any heading."]

    def shape(sec):
        return [(c.title, shape(c)) for c in sec.children]

    assert shape(outline) == [
        ("A", [("A.1", [("A.1.a", [("deep", [])])]), ("A.2", [])]),
        ("B", [("B.x", []), ("B.y", [])])]
    a, b = outline.children
    assert [MD[s:e] for s, e in a.spans] == ["a body line one\na body line two"]
    a2 = a.children[1]
    assert MD[slice(*a2.spans[0])].startswith("#hashtag") and "seven" in MD[slice(*a2.spans[0])]
    bx_text = [MD[s:e] for s, e in b.children[0].spans]
    assert bx_text == ["b text", "```python\n# not a heading\n\nx = 1\n```"]
    assert [MD[s:e] for s, e in b.children[1].spans] == ["~~~\n# still code"]  # unclosed fence
    assert {s.kind for s in outline.walk()} == {"document", "section"}
    assert parse_document(MD).children == outline.children


def test_markdown_headings_only_and_no_headings():
    text = "# A\n## B\n\n#\n# C #\n"
    outline = parse_markdown(text)
    assert [(c.title, [g.title for g in c.children]) for c in outline.children] == \
        [("A", ["B"]), ("", []), ("C", [])]
    assert all(not s.spans for s in outline.walk())
    flat = parse_markdown("No heading here.\n\nSecond paragraph.")
    assert [c.kind for c in flat.children] == ["paragraph", "paragraph"]


# ----------------------------------------------------------------------------- sentences
TRICKY = [
    ("Mr. Smith met Dr. Jones. They talked.", ["Mr. Smith met Dr. Jones.", "They talked."]),
    ("Fruit, e.g. apples, i.e. food, etc. are fine. The U.S. Army agreed. Next.",
     ["Fruit, e.g. apples, i.e. food, etc. are fine.", "The U.S. Army agreed.", "Next."]),
    ("J. R. R. Tolkien wrote it. Pi is 3.14 today. Version 2.0 shipped.",
     ["J. R. R. Tolkien wrote it.", "Pi is 3.14 today.", "Version 2.0 shipped."]),
    ('"Is it over?" she asked. "Yes." He left! (It was late.) Then rain.',
     ['"Is it over?" she asked.', '"Yes."', "He left!", "(It was late.)", "Then rain."]),
    ("“Stop!” He ran. ‘Why?’ Nobody knew.", ["“Stop!”", "He ran.", "‘Why?’", "Nobody knew."]),
    ("Wait... what is that? I don't know… Maybe. He paused... Then left.",
     ["Wait... what is that?", "I don't know…", "Maybe.", "He paused...", "Then left."]),
    ("no punctuation at all here", ["no punctuation at all here"]),
    ("  padded sentence.   ", ["padded sentence."]),
    ("Café au lait. Über alles! Ça va? 東京は大きい。大阪も。",
     ["Café au lait.", "Über alles!", "Ça va?", "東京は大きい。", "大阪も。"]),
    ("Heading without stop\n\nNext block. Two.\n \nThree", ["Heading without stop", "Next block.",
                                                           "Two.", "Three"]),
    ("See No. 5 on p. 3. The answer was no. Then we left.",
     ["See No. 5 on p. 3.", "The answer was no.", "Then we left."]),
    ("Born in 1990. 2000 was good. Really?! Yes.",
     ["Born in 1990.", "2000 was good.", "Really?!", "Yes."]),
    ("", []),
    ("   \n\n  ", []),
]


@pytest.mark.parametrize("text,expected", TRICKY)
def test_split_sentences_tricky(text, expected):
    spans = split_sentences(text)
    assert [text[s:e] for s, e in spans] == expected
    assert_valid(Section(None, spans), text)


def test_split_sentences_range_and_runs():
    text = "Skip this. Take this one. And this."
    start = text.index("Take")
    assert [text[s:e] for s, e in split_sentences(text, start)] == ["Take this one.", "And this."]
    assert split_sentences(text, 0, 4) == [(0, 4)]
    for weird in ["?" * 5000 + " x", "." * 5000, "a. " * 3000, "!!!\n\n???", "…" * 100]:
        assert_valid(Section(None, split_sentences(weird)), weird)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("fmt", sorted(PARSERS))
@pytest.mark.parametrize("bad", ["", "   \n\t  \n", b"", b"  \n "])
def test_empty_documents_raise(fmt, bad):
    with pytest.raises(ValueError, match="^empty document$"):
        PARSERS[fmt](bad)


@pytest.mark.parametrize("fmt", sorted(PARSERS))
def test_one_sentence_is_one_paragraph(fmt):
    text = "Just one sentence here."
    outline = PARSERS[fmt](text)
    assert outline.spans == [] and len(outline.children) == 1
    assert outline.children[0].kind == "paragraph" and outline.children[0].spans == [(0, len(text))]


def test_invalid_utf8_bytes_are_replaced_with_a_warning():
    raw = "Héllo. ".encode() + b"w\xffrld \xc3(. Fine."
    with pytest.warns(UnicodeWarning, match="byte offset 9"):
        text = clean_text(raw)
    assert text == "Héllo. w\ufffdrld \ufffd(. Fine."
    with pytest.warns(UnicodeWarning, match="byte offset 9"):
        outline = parse_plain(raw)
    assert_valid(outline, text)
    assert text[slice(*outline.children[0].spans[0])] == text.strip()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # clean input: no warning, returned unchanged
        assert clean_text(text) is text
        assert clean_text("ok".encode()) == "ok"


def test_lone_surrogates_are_replaced():
    with pytest.warns(UnicodeWarning, match="character offset 3"):
        text = clean_text("abc\ud800 and \udfff. Pair: \ud83d\ude00.")
    assert text == "abc\ufffd and \ufffd. Pair: \U0001F600."
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a valid pair is joined without a warning
        assert clean_text("x\ud83d\ude00") == "x\U0001F600"
    with pytest.warns(UnicodeWarning):
        assert_valid(parse_markdown("# T\ud800\nbody"), "# T\ufffd\nbody")
    with pytest.raises(TypeError):
        clean_text(42)


def test_parse_document_dispatch():
    assert parse_document("Intro.\nPassage 1:\nT\nBody.").children[0].kind == "passage"
    assert parse_document("# Title\nBody.").children[0].title == "Title"
    assert parse_document("Body.\n\nMore.").children[1].kind == "paragraph"
    paper = "Introduction\n" + "The body. " * 30
    assert parse_document(paper, "qasper").children[0].title == "Introduction"
    with pytest.raises(ValueError) as err:
        parse_document("x", "latex")
    assert all(f in str(err.value) for f in FORMATS)


def test_plain_line_rules():
    long_lines = "\n".join(f"Line {i} " + "word " * 30 for i in range(3))  # > 100 chars
    assert len(parse_plain(long_lines).children) == 3  # one paragraph per long line
    wrapped = "short wrapped line one\nand its continuation.\n\nNext."
    assert len(parse_plain(wrapped).children) == 2
    no_blank = "\n".join((["A wrapped line of text that goes on and on and"] * 3
                          + ["ends here."]) * 20)
    outline = parse_plain(no_blank)
    assert len(outline.children) == 20 and uncovered(outline, no_blank) == []


# ----------------------------------------------------------------------------- properties
_TEXT_CHARS = "abcXYZ019.!?,#*-_()é漢 "
_line = st.builds(lambda a, b: a + b, st.sampled_from(list("aZ9é漢*-(\".")),
                  st.text(alphabet=_TEXT_CHARS, max_size=40))
_title = st.text(alphabet="abcXYZ09é漢.!? ", max_size=20).map(str.strip)
_indented_line = st.builds(lambda n, s: " " * n + s, st.integers(0, 4), _line)
_element = st.one_of(
    st.tuples(st.just("heading"), st.integers(1, 6), _title, st.integers(0, 3), st.booleans()),
    st.tuples(st.just("para"), st.lists(_indented_line, min_size=1, max_size=4)),
    st.tuples(st.just("fence"), st.sampled_from(["```", "~~~~"]),
              st.lists(st.one_of(_line, _title.map(lambda t: "# " + t), st.just("")), max_size=4)),
    st.tuples(st.just("blank"), st.sampled_from(["", "  ", "\t"])),
)


@st.composite
def markdown_docs(draw):
    """A markdown-ish document, the spans of its heading lines, and its headings (level, title)."""
    elements = draw(st.lists(_element, min_size=1, max_size=12))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    unclosed = draw(st.booleans())
    lines, heading_lines, headings = [], [], []
    for i, el in enumerate(elements):
        if el[0] == "heading":
            _, level, title, indent, closing = el
            heading_lines.append(len(lines))
            headings.append((level, title))
            lines.append(" " * indent + "#" * level + (" " + title if title else "")
                         + (" ##" if closing else ""))
        elif el[0] == "para":
            lines += el[1]
        elif el[0] == "fence":
            last = i == len(elements) - 1
            lines += [el[1]] + el[2] + ([] if last and unclosed else [el[1]])
        else:
            lines.append(el[1])
    text, spans, pos = "", [], 0
    for k, line in enumerate(lines):
        spans.append((len(text), len(text) + len(line)))
        text += line + newline
    return text, [spans[k] for k in heading_lines], headings


def _expected_tree(headings):
    root: list = []
    stack = [(0, root)]
    for level, title in headings:
        while stack[-1][0] >= level:
            stack.pop()
        node = (title, [])
        stack[-1][1].append(node)
        stack.append((level, node[1]))
    return root


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(markdown_docs())
def test_markdown_property(doc):
    text, heading_spans, headings = doc
    if not text.strip():
        with pytest.raises(ValueError):
            parse_markdown(text)
        return
    outline = parse_markdown(text)
    assert_valid(outline, text)
    on_heading = bytearray(len(text))
    for s, e in heading_spans:
        on_heading[s:e] = b"\x01" * (e - s)
    missing = uncovered(outline, text)
    assert all(on_heading[p] for p in missing)  # all but heading markup is covered ...
    assert not any(on_heading[s:e].count(1) for s, e in outline.all_spans())  # ... and it is not

    def shape(sec):
        return [(c.title, shape(c)) for c in sec.children]

    if headings:
        assert shape(outline) == _expected_tree(headings)
    else:
        assert all(c.kind == "paragraph" for c in outline.children)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.sampled_from(sorted(PARSERS)))
def test_any_text_gives_valid_spans(raw, fmt):
    if not raw.strip():
        with pytest.raises(ValueError, match="empty document"):
            PARSERS[fmt](raw)
        return
    text = clean_text(raw)
    assert_valid(PARSERS[fmt](raw), text)
    sentences = Section(None, split_sentences(text))
    assert_valid(sentences, text)
    assert uncovered(sentences, text) == []


# ----------------------------------------------------------------------------- scale
def _seconds(fn, *args, repeat: int = 3) -> float:
    """The fastest of `repeat` runs: a busy machine's preemptions only ever add time."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best


def test_parsing_time_grows_linearly():
    # 200 kB and 4x that: the time grows about 4x (a quadratic step would grow 16x); measured as a
    # ratio, not against the wall clock of a busy machine
    chapter = ("# Chapter {i}\n\nMr. Smith went to Washington on Jan. 5. He paid $3.50 for it... "
               "Then he left! Did he return? Nobody knows.\nA wrapped second line follows.\n\n")
    text = "".join(chapter.format(i=i) for i in range(7000))[:800_000]
    small = text[:200_000]
    outline = parse_document(small)
    assert_valid(outline, small)
    assert len(outline.children) > 1000 and len(split_sentences(small)) > 6000
    for fn in (parse_document, split_sentences):
        fn(small)  # warm
        assert _seconds(fn, text) < 8 * _seconds(fn, small) + 0.05, fn.__name__
    for make in (lambda n: "x" * n, lambda n: "a\n" * (n // 2),
                 lambda n: ("word " * 20 + "\n") * (n // 101)):
        for fmt in ("plain", "markdown", "narrativeqa", "longbench_passages"):
            parse_document(make(50_000), fmt)  # warm
            t_small = _seconds(parse_document, make(50_000), fmt)
            assert _seconds(parse_document, make(200_000), fmt) < 8 * t_small + 0.05, fmt
