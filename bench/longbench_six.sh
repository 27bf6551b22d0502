#!/usr/bin/env bash
# The six shared LongBench files with an H²MT checkpoint: the H²MT readings, tree_text and
# rag_bm25 (plain and with the checkpoint's decoder adapters), the first 3 records of each
# file, every answer warmed up first (TTFT without compilation). One JSON / MD / PNG per file.
#
#     bash bench/longbench_six.sh OUT_DIR [CHECKPOINT] [PYTHON] [METHODS]
#
# METHODS (comma-separated) runs fewer methods than the full table's.
# Data: ../shared/data/longbench (never trained on). About an hour on 2 CPU cores.
set -euo pipefail
OUT=${1:?usage: bench/longbench_six.sh OUT_DIR [CHECKPOINT] [PYTHON] [METHODS]}
CK=${2:-smollm2-135m-h2mt}
PY=${3:-.venv/bin/python}
METHODS=${4:-rag_bm25,h2mt,h2mt_memory_kv,h2mt_leaf_kv,tree_text}
cd "$(dirname "$0")/.."
DATA=../shared/data/longbench
[ -d "$DATA" ] || { echo "no LongBench data at $DATA" >&2; exit 2; }
mkdir -p "$OUT"
for f in 2wikimqa multifieldqa_en hotpotqa musique narrativeqa qasper; do
    [ -f "$OUT/$f.json" ] && { echo "$f: done ($OUT/$f.json)"; continue; }
    $PY evaluate.py --config=configs/longbench.py --config.data.path=$DATA/$f.jsonl \
        --config.checkpoint="$CK" --config.eval.max_examples=3 \
        --config.method="$METHODS" \
        --config.eval.baseline_adapters=true --config.eval.warmup_each=true \
        --config.output="$OUT/$f.json"
done
