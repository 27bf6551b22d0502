"""Evaluation: LongBench v1 scoring (QA F1, ROUGE-L) for predictions against gold answers."""
