"""LongBench v1 metrics: hand-computed QA F1 cases, LongBench's quirks, and ROUGE-L parity with the
`rouge` package that LongBench calls."""

from __future__ import annotations

import random

import pytest

from h2mt_jax.eval.metrics import (DATASET_METRIC, dataset_score, normalize_answer, qa_f1_score,
                                   rouge_l_score, score_example)

EXACT_ROUGE = 2.0 * (1.0 / (2.0 + 1e-8))  # F = 2PR/(P+R+1e-8) at P = R = 1


@pytest.mark.parametrize("text, expected", [
    ("Paris.", "paris"),
    ("The Beatles", "beatles"),
    ("The theater, an anthem; a banana", "theater anthem banana"),
    ("U.S.A.", "usa"),
    ("self-driving", "selfdriving"),  # punctuation is deleted, not turned into a space
    ("don't", "dont"),
    ("don\u2019t", "don\u2019t"),  # curly apostrophe is not in string.punctuation
    ("\u201cParis\u201d", "\u201cparis\u201d"),
    ("CAF\u00c9  au\tlait\n", "caf\u00e9 au lait"),
    ("the\u2014end", "\u2014end"),  # em dash is a word boundary, so "the" still goes
    ("東京タワー。", "東京タワー。"),
    ("a an the", ""),
    ("   ", ""),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize("prediction, gold, expected", [
    ("Paris.", "paris", 1.0),
    ("The Beatles", "Beatles", 1.0),
    ("the cat sat on the mat", "a cat on a mat", 6 / 7),  # P 3/4, R 3/3
    ("paris paris paris", "Paris", 0.5),  # multiset: one match, P 1/3, R 1
    ("Paris", "paris paris", 2 / 3),  # P 1, R 1/2
    ("paris london paris", "paris paris rome", 2 / 3),  # overlap {paris: 2}, P = R = 2/3
    ("theater", "the ater", 0.0),
    ("self driving", "self-driving", 0.0),
    ("Caf\u00e9", "cafe", 0.0),
    ("CAF\u00c9", "caf\u00e9", 1.0),
    ("\u201cParis\u201d", "Paris", 0.0),
    ("東京 タワー", "東京", 2 / 3),
    ("東京。", "東京", 0.0),
    ("", "Paris", 0.0),
    (" \n\t ", "Paris", 0.0),
    ("the", "The", 0.0),  # a gold answer of only articles can never be matched
])
def test_qa_f1_score(prediction, gold, expected):
    score = qa_f1_score(prediction, gold)
    assert isinstance(score, float)
    assert score == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("prediction, gold, expected", [
    ("The cat sat on the mat.", "The cat sat on the mat.", EXACT_ROUGE),
    ("Paris", "paris", 0.0),  # the rouge package does not lower-case
    ("", "Paris", 0.0),  # no hypothesis sentence: the package raises, LongBench returns 0
    ("...", "Paris", 0.0),
    ("Paris", "", 0.0),
    (" ", "  ", EXACT_ROUGE),  # a blank sentence is the single token ""
    ("the the the cat", "the cat", EXACT_ROUGE),  # distinct words only
    ("a b c d", "a b", 2.0 * (0.5 / (1.5 + 1e-8))),  # P 2/4, R 2/2
])
def test_rouge_l_hand_values(prediction, gold, expected):
    assert rouge_l_score(prediction, gold) == pytest.approx(expected, abs=1e-12)


def test_rouge_l_long_sentence_has_a_score():
    # The rouge package hits RecursionError here (LongBench then scores 0); we score the copy.
    text = " ".join(f"w{i}" for i in range(1500))
    assert rouge_l_score(text, text) == pytest.approx(EXACT_ROUGE, abs=1e-12)


def _rouge_pairs() -> list[tuple[str, str]]:
    pairs = [
        ("The cat sat on the mat. It was happy.", "A cat sat on a mat. The cat was happy!"),
        ("police killed the gunman", "the gunman was shot down by police"),
        ("w1 w2 w6 w7 w8. w1 w3 w8 w9 w5", "w1 w2 w3 w4 w5"),
        ("Hello. . world", "Hello world."),
        ("  leading and trailing  .  ", "leading trailing"),
        ("Caf\u00e9 au lait. \u6771\u4eac\u30bf\u30ef\u30fc\u3002", "caf\u00e9 au lait \u6771\u4eac"),
        ("a\u00a0b\u3000c. d\ne", "a b c d e"),
        ("x y x y x y", "y x y x"),
        ("The summary discusses funding. Funding rose. It rose in 2020.",
         "Funding rose in 2020. The report discusses funding and staffing."),
    ]
    rng = random.Random(0)
    vocab = ["a", "b", "c", "d", "the", "The", "x", ".", "..", " ", "\n", "\u00e9"]
    for _ in range(400):
        pairs.append(tuple(" ".join(rng.choices(vocab, k=rng.randint(0, 25))) for _ in range(2)))
    return pairs


def test_rouge_l_matches_rouge_package():
    rouge = pytest.importorskip("rouge")

    def longbench_rouge(prediction: str, gold: str) -> float:
        try:
            return rouge.Rouge().get_scores([prediction], [gold], avg=True)["rouge-l"]["f"]
        except Exception:
            return 0.0

    for prediction, gold in _rouge_pairs():
        assert rouge_l_score(prediction, gold) == longbench_rouge(prediction, gold), (prediction, gold)


def test_dataset_metric_table():
    qa = ["narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique", "synthetic"]
    assert all(DATASET_METRIC[name] is qa_f1_score for name in qa)
    assert all(DATASET_METRIC[name] is rouge_l_score
               for name in ["gov_report", "qmsum", "multi_news", "samsum"])


def test_score_example_takes_max_over_gold_answers():
    assert score_example("hotpotqa", "Paris", ["London", "Paris, France", "Rome"]) == \
        pytest.approx(2 / 3)
    assert score_example("hotpotqa", "Berlin", ["London", "Rome"]) == 0.0


def test_score_example_first_line_only_for_longbench_few_shot_sets():
    # samsum keeps only the first line after leading newlines; hotpotqa scores the whole text
    assert score_example("samsum", "\n\nAnn likes tea.\nBob likes coffee.", ["Ann likes tea."]) == \
        pytest.approx(EXACT_ROUGE)
    assert score_example("hotpotqa", "Paris\nLondon", ["London"]) == pytest.approx(2 / 3)


def test_score_example_errors_name_the_dataset():
    with pytest.raises(ValueError, match="lcc"):
        score_example("lcc", "x", ["x"])
    with pytest.raises(ValueError, match="qasper"):
        score_example("qasper", "x", [])


def test_dataset_score():
    preds = ["Paris", "the cat sat on the mat", ""]
    golds = [["paris"], ["a cat on a mat"], ["anything"]]
    assert dataset_score("synthetic", preds, golds) == pytest.approx(100 * (1 + 6 / 7 + 0) / 3)
    with pytest.raises(ValueError, match="synthetic"):
        dataset_score("synthetic", preds, golds[:2])


def test_leaf_recall_counts_gold_among_the_first_k():
    from h2mt_jax.eval.metrics import leaf_recall

    assert leaf_recall({3}, [3, 1, 2], 2) == 1.0
    assert leaf_recall({3, 7}, [3, 1, 7], 2) == 0.5  # 7 is third
    assert leaf_recall({1, 2, 3}, [1, 2, 9], 2) == 2 / 3  # the fraction of all gold leaves
    assert leaf_recall(set(), [1], 2) != leaf_recall(set(), [1], 2)  # NaN without gold
    # never smaller at a larger k (the old "at most k can fit" denominator broke this)
    ranked, gold = [5, 1, 9, 2, 7, 3], {1, 2, 3}
    assert [leaf_recall(gold, ranked, k) for k in (1, 2, 4, 6)] == [0.0, 1 / 3, 2 / 3, 1.0]
