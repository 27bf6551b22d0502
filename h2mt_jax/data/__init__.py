"""Datasets: LongBench/HotpotQA loaders and the embedded synthetic manuals (DESIGN.md §5)."""
