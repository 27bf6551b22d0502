"""The second hop of two-hop routing (`h2mt.hops = 2`): what it routes with, and when it fires;
and which leaves fill the answer's slots (`pick_leaves`).

A bridge question ("In which town does the designer of the Norpel X4 work?") names the first
leaf's topic but not the second leaf's: the second leaf names only the bridge entity ("Danina
Calzar works from the office in Jormouth"), which the question never mentions. The first hop
finds the leaf holding "The Norpel X4 was designed by Danina Calzar."; the second hop's query
must carry the bridge. `h2mt.hop_query` chooses how (`tests/test_route_scores.py`, measured by
`bench/routing_recall.py`):

- "leaf": the question followed by the first leaf's whole text. The leaf's other sentences
  dominate the query, so the second hop mostly finds the first leaf's neighbours.
- "sentence": the question followed by the first leaf's *bridge sentence*: its sentence that
  shares the most question content words, weighted by their inverse document frequency.
- "bridge": the content words on either side that the other lacks (compared by stem): the
  bridge sentence's new words (the bridge entity, the relation) and the question's unresolved ones
  ("town", "work"). What both share (the first hop's topic, "Norpel X4") is dropped, so the
  second hop does not rank the first leaf's neighbours for it again.

Not every question needs a second hop: a single-fact question loses its second-best leaf to the
second hop's pick. `h2mt.hop_gate` > 0 fires the second hop only when `h2mt.hop_gate_score` is
at least the gate: "margin" (`hop_margin`, the BM25 margin of the best leaf) or "learned"
(`gate_probability`, a logistic regression over the question's sentence vector fit on training
questions, `train/hop_gate.py`).
"""

from __future__ import annotations

import numpy as np

from h2mt_jax.data.terms import STOPWORDS, stem, terms, words
from h2mt_jax.hierarchy import parse
from h2mt_jax.hierarchy.config import HOP_QUERIES
from h2mt_jax.hierarchy.node_scores import bm25_model


def _content(words_: list[str]) -> dict[str, str]:
    """{stem: the first word with that stem} of the words that are not function words."""
    out: dict[str, str] = {}
    for w in words_:
        if w not in STOPWORDS:
            out.setdefault(stem(w), w)
    return out


def bridge_sentence(index, leaf: int, question: str) -> str:
    """The sentence of spec leaf `leaf` that best matches `question`: the most question content
    words it holds (function words left out, words compared by their stems; a topic word such
    as the product's name is frequent in its document, so counts come first), ties broken by
    their summed BM25 inverse document frequency over the index's leaves, then by order; the
    leaf's whole text when it has no sentence."""
    s, e = index.spec.leaf_spans[leaf]
    spans = parse.split_sentences(index.text, s, e)
    if not spans:
        return index.text[s:e]
    idf = bm25_model(index, "max").idf
    asked = _content(words(question))

    def overlap(span) -> tuple[int, float]:
        shared = asked.keys() & _content(words(index.text[span[0]:span[1]])).keys()
        return len(shared), sum(max(idf.get(term, 0.0), 0.0) for term in shared)

    best = max(spans, key=overlap)  # max keeps the first of equal scores
    return index.text[best[0]:best[1]]


def second_hop_query(index, leaf: int, question: str, how: str = "bridge") -> str:
    """The query of the second hop, given the first hop's best spec leaf (see the module
    docstring for `how`). Never empty: "bridge" falls back to the question when the sentence
    and the question share every term."""
    if how not in HOP_QUERIES:
        raise ValueError(f"hop_query must be one of {HOP_QUERIES}, got {how!r}")
    if how == "leaf":
        return question + "\n" + index.leaf_texts[leaf]
    sentence = bridge_sentence(index, leaf, question)
    if how == "sentence":
        return question + "\n" + sentence
    q, s = _content(words(question)), _content(words(sentence))
    rest = [w for t, w in q.items() if t not in s] + [w for t, w in s.items() if t not in q]
    return " ".join(rest) if rest else question


def check_gate(gate: dict, where: str = "hop_gate") -> dict:
    """A fitted hop gate `{"w": [d], "b": [1]}` as float32 arrays, or a ValueError naming the
    bad key."""
    if not isinstance(gate, dict) or set(gate) != {"w", "b"}:
        raise ValueError(f"{where}: a hop gate holds exactly w and b, got "
                         f"{sorted(gate) if isinstance(gate, dict) else type(gate).__name__}")
    w, b = np.asarray(gate["w"], np.float32), np.asarray(gate["b"], np.float32).reshape(-1)
    if w.ndim != 1 or b.shape != (1,) or not (np.isfinite(w).all() and np.isfinite(b).all()):
        raise ValueError(f"{where}: hop_gate/w must be [d] and hop_gate/b [1], finite; got "
                         f"{w.shape} and {np.shape(gate['b'])}")
    return {"w": w, "b": b}


def gate_probability(gate: dict, q: np.ndarray) -> float:
    """The fitted gate's probability that a question needs a second hop: `sigmoid(w·q + b)` of
    its sentence vector `q` `[d]` (the fit: `train/hop_gate.py`)."""
    w = gate["w"]
    if w.shape[0] != q.shape[-1]:
        raise ValueError(f"the hop gate reads {w.shape[0]}-d question vectors, the embedder makes "
                         f"{q.shape[-1]}-d ones: fit the gate with this embedder")
    z = float(np.dot(w, q) + gate["b"][0])
    return float(1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0))))


def hop_margin(index, question: str) -> float:
    """How far the question's best leaf stands out: `(s1 - s2) / s1` of the two best leaves'
    BM25 scores (0 when no leaf matches). A comparison question ("Which is older, A or B?")
    matches two leaves alike (small margin) and needs no second hop; a bridge question matches
    one leaf and leaves the second slot to a weak match (large margin). With
    `h2mt.hop_gate_score="margin"`, `h2mt.hop_gate` is the margin from which the second hop
    fires."""
    scores = np.sort(np.asarray(bm25_model(index, "max").get_scores(terms(question))))[::-1]
    if len(scores) < 2 or scores[0] <= 0:
        return 0.0
    return float((scores[0] - scores[1]) / scores[0])


def pick_leaves(keep: list[int], ranked, k: int, sections=None) -> list[int]:
    """The answer's `k` leaves: `keep` (taken as they are), then leaves of `ranked` (best first)
    not yet taken. With `sections` (each leaf's section, e.g. `spec.titles`; None for a leaf of
    no known section), leaves of a section already read wait until every other candidate has
    been taken (`h2mt.distinct_sections`): two leaves of one passage often repeat each other,
    while a two-passage question needs the other passage (HotpotQA, held out, two hops:
    recall@2 0.83 -> 0.92; synthetic manuals unchanged; `bench/results/routing_sections.json`)."""
    out = list(dict.fromkeys(int(i) for i in keep))[:k]
    ranked = [int(i) for i in ranked if int(i) not in out]
    if sections is not None:
        seen = {sections[i] for i in out if sections[i] is not None}
        later = []
        for i in ranked:
            if len(out) == k:
                break
            if sections[i] is not None and sections[i] in seen:
                later.append(i)
                continue
            out.append(i)
            if sections[i] is not None:
                seen.add(sections[i])
        ranked = later + [i for i in ranked if i not in out and i not in later]
    return (out + ranked)[:k]
