"""LongBench v1 metrics for English QA and summarisation, with no third-party dependency.

`qa_f1_score` and `normalize_answer` follow LongBench/metrics.py. `rouge_l_score` reproduces
LongBench's `rouge_score`, i.e. the "rouge-l" F of the PyPI package `rouge` 1.0.1 (pltrdy), which is
not textbook ROUGE-L: it is case-sensitive, splits sentences only on ".", counts *distinct* words, and
scores the set of distinct words in the union of one particular LCS per (reference, hypothesis)
sentence pair. Dataset scores are 100 x the mean over examples of the max over gold answers.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Callable, Sequence

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_FIRST_LINE_DATASETS = frozenset({"trec", "triviaqa", "samsum", "lsht"})


def normalize_answer(s: str) -> str:
    """Lower-cases, drops ASCII punctuation (string.punctuation only), the whole words a/an/the,
    and collapses white space: LongBench's English normalisation, applied in that order."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def qa_f1_score(prediction: str, ground_truth: str) -> float:
    """Token F1 of the normalised strings with multiset overlap; 0.0 when nothing overlaps."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(ground_truth).split()
    overlap = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _rouge_sentences(text: str) -> list[list[str]]:
    """Sentences as the `rouge` package sees them: pieces between "." that are non-empty, split on
    white space; a piece of only white space becomes the single empty-string token."""
    return [piece.split() or [""] for piece in text.split(".") if piece]


def _lcs_words(ref: Sequence[str], hyp: Sequence[str]) -> set[str]:
    """Words of one longest common subsequence of `ref` and `hyp`, chosen by backtracking from the
    end: take a match, else step back in `ref` only if that keeps a strictly longer LCS, else in
    `hyp`. The choice matters because only the distinct words are kept."""
    table = [[0] * (len(hyp) + 1) for _ in range(len(ref) + 1)]
    for i, r in enumerate(ref, 1):
        row, prev = table[i], table[i - 1]
        for j, h in enumerate(hyp, 1):
            row[j] = prev[j - 1] + 1 if r == h else max(prev[j], row[j - 1])
    words, i, j = set(), len(ref), len(hyp)
    while i and j:
        if ref[i - 1] == hyp[j - 1]:
            words.add(ref[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return words


def rouge_l_score(prediction: str, ground_truth: str) -> float:
    """LongBench's `rouge_score`: `Rouge().get_scores([prediction], [ground_truth], avg=True)
    ["rouge-l"]["f"]` of `rouge` 1.0.1, and 0.0 where that raises (no sentence on either side,
    e.g. "" or "...").

    n and m are the numbers of distinct hypothesis and reference tokens, LCS_u the number of distinct
    words in the union over all sentence pairs of their LCS; P = LCS_u/n, R = LCS_u/m and
    F = 2PR / (P + R + 1e-8), so an exact match scores 0.999999995, not 1. One known divergence: the
    package backtracks recursively and raises RecursionError (so LongBench scores 0.0) on sentence
    pairs needing ~1000 backtracking steps, e.g. a 1,000-word copy with no "."; this scores those.
    """
    hyp, ref = _rouge_sentences(prediction), _rouge_sentences(ground_truth)
    if not hyp or not ref:
        return 0.0
    union: set[str] = set()
    for ref_sentence in ref:
        for hyp_sentence in hyp:
            union |= _lcs_words(ref_sentence, hyp_sentence)
    p = len(union) / len({w for s in hyp for w in s})
    r = len(union) / len({w for s in ref for w in s})
    return 2.0 * ((p * r) / (p + r + 1e-8))


DATASET_METRIC: dict[str, Callable[[str, str], float]] = {
    **dict.fromkeys(["narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique",
                     "synthetic"], qa_f1_score),
    **dict.fromkeys(["gov_report", "qmsum", "multi_news", "samsum"], rouge_l_score),
}


def score_example(dataset: str, prediction: str, answers: Sequence[str],
                  all_classes: Sequence[str] | None = None, *, strict: bool = True) -> float:
    """Max over the gold `answers` of the dataset's metric, in [0, 1] (LongBench's per-example score).

    For trec/triviaqa/samsum/lsht the prediction is first cut to its first line after dropping
    leading newlines. `all_classes` is accepted for LongBench's signature; no metric here uses it.
    An unknown dataset is a ValueError, or scored with `qa_f1_score` when `strict` is False.
    """
    if dataset not in DATASET_METRIC and strict:
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(DATASET_METRIC)}")
    if not answers:
        raise ValueError(f"dataset {dataset!r}: an example has no gold answers")
    if dataset in _FIRST_LINE_DATASETS:
        prediction = prediction.lstrip("\n").split("\n")[0]
    metric = DATASET_METRIC.get(dataset, qa_f1_score)
    return max(0.0, *(metric(prediction, answer) for answer in answers))


def dataset_score(dataset: str, predictions: Sequence[str], answers_list: Sequence[Sequence[str]],
                  all_classes: Sequence[str] | None = None) -> float:
    """100 x the mean of `score_example` over the examples (LongBench's `scorer`, without its
    rounding to two decimals). Raises ValueError on no examples or mismatched lengths."""
    if len(predictions) != len(answers_list):
        raise ValueError(f"dataset {dataset!r}: {len(predictions)} predictions but "
                         f"{len(answers_list)} answer lists")
    if not predictions:
        raise ValueError(f"dataset {dataset!r}: no predictions to score")
    total = sum(score_example(dataset, p, a, all_classes) for p, a in zip(predictions, answers_list))
    return 100 * total / len(predictions)


def leaf_recall(gold: set[int], ranked: Sequence[int], k: int) -> float:
    """Routing recall@k: the fraction of the gold leaves found among the first `k` of `ranked`
    (never smaller for a larger `k`). NaN when there is no gold leaf."""
    if not gold:
        return float("nan")
    return len(set(gold) & set(list(ranked)[:k])) / len(gold)
