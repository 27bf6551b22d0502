#!/usr/bin/env bash
# Reproduces the shipped checkpoint `smollm2-135m-h2mt` (64 mean-pooled memories per 128-token
# leaf, answers from their per-layer keys/values) with the project's own configs, stage by
# stage, as it was made on a 2-core CPU. Every stage starts from the previous stage's model.
# On an accelerator raise `train.batch_size` and the step counts where time allows.
#
#     bash bench/results/shipped_checkpoint/recipe.sh [PYTHON]
#
# Stages 1-2 are the first shipped checkpoint (README.md, this directory); 3-5 are stage 1
# continued with mean-pooled memories at m = 16, 32, 64 (../stage1_mean_pool/,
# ../qa_dense_m32/, ../qa_dense_m64/); 6-8 are QA at m = 64 (../qa_dense_m64/ and
# ../mem_ship_m64.json). Data: synthetic manuals of seed 1 (stage 1) and of seed 0, manuals
# 100..115 (QA), WikiText-2 and the first 70 shared HotpotQA records (stage 1) or the first 20
# (stages 2 and 8). Never LongBench, never the last 30 HotpotQA records, never a held-out
# manual (seed 0, 0..99).
set -euo pipefail
PY=${1:-.venv/bin/python}
cd "$(dirname "$0")/../../.."

# 1. memory pretraining, write tokens, m = 16 (planned 300 steps, stopped after 191; the
#    second command resumes the stopped run at its end to export and evaluate it)
$PY train.py --config=configs/memory_pretrain.py --config.train.stop_after=191
$PY train.py --config=configs/memory_pretrain.py --config.train.steps=191 \
    --config.eval.before_training=True
# 2. QA, 60 steps, both readings
$PY train.py --config=configs/memory_qa.py --config.checkpoint=runs/memory_pretrain/model \
    --config.eval.max_examples=9
# 3-5. stage 1 again with mean-pooled memories (`memory_kv` reading, decoder frozen):
#      m = 16 for 250 steps, then m = 32 and m = 64 for 150 steps each
prev=runs/memory_qa/model
for spec in 16:250:40 32:150:120 64:150:120; do
    IFS=: read -r m steps manuals <<< "$spec"
    $PY train.py --config=configs/memory_pretrain.py --config.workdir=runs/stage1_m$m \
        --config.checkpoint=$prev --config.data.sources=synthetic \
        --config.data.pretrain_manuals=$manuals --config.train.read_modes=memory_kv \
        --config.train.mem_tokens=$m --config.train.mem_pool=mean \
        --config.train.trainable=memory --config.train.decay=constant --config.train.lr=1e-3 \
        --config.train.warmup=5 --config.train.checkpoint_every=25 \
        --config.eval.after_training=False --config.train.steps=$steps
    prev=runs/stage1_m$m/model
done
# 6. QA at m = 64: one single-hop question per fact, three memory_kv batches per text batch,
#    KL distillation, constant lr, 450 steps (scored after 150, 300, 450)
$PY bench/mem_tokens_curve.py --m 64 --checkpoint $prev --steps 150,300,450 --train-docs 16 \
    --train-single 64 --route-weight 0 --read-modes memory_kv,memory_kv,memory_kv,text \
    --runs runs/mem_curve_m64 --out bench/results/mem_steps_curve_dense_m64.json
prev=runs/mem_curve_m64/m64_kl_d16_constant_memory_kv+memory_kv+memory_kv+text_q64/model_s450
# 7. 150 steps more with up to 16 two-hop questions per manual, cosine from lr 1e-3
$PY bench/mem_tokens_curve.py --m 64 --checkpoint $prev --steps 150 --train-docs 16 \
    --train-single 64 --train-two-hop 16 --route-weight 0 \
    --read-modes memory_kv,memory_kv,memory_kv,text --eval-docs 8 --runs runs/mem_twohop_m64 \
    --out bench/results/mem_twohop_m64.json
prev=runs/mem_twohop_m64/m64_kl_s150_memory_kv+memory_kv+memory_kv+text_q64_h16/model
# 8. 200 steps more with the first 20 HotpotQA records and memory-vector batches mixed in
$PY bench/mem_tokens_curve.py --m 64 --checkpoint $prev --steps 200 --train-docs 16 \
    --train-single 64 --train-two-hop 16 --hotpotqa-records 20 --route-weight 0 \
    --read-modes memory_kv,memory,memory_kv,memory_kv,text --eval-docs 8 \
    --runs runs/mem_ship_m64 --out bench/results/mem_ship_m64.json
prev=runs/mem_ship_m64/m64_kl_s200_memory_kv+memory+memory_kv+memory_kv+text_q64_h16_hp20/model
# 10. memories from the residual stream after block 12, injected there by the memory reading
#     (fresh read and inject maps), then 100 QA steps with memory-vector batches
$PY - "$prev" <<'EOF'
import sys

from h2mt_jax.hierarchy.h2mt import H2MT

H2MT.load(sys.argv[1]).with_mem_layer(12).save("runs/inject_L12")
EOF
$PY bench/mem_tokens_curve.py --m 64 --checkpoint runs/inject_L12 --steps 100 --train-docs 16 \
    --train-single 64 --train-two-hop 16 --hotpotqa-records 20 --route-weight 0 \
    --read-modes memory,memory_kv,memory,memory_kv,text --eval-docs 8 \
    --runs runs/inject_qa --out bench/results/memory_inject_L12/qa/mem_tokens_curve.json
prev=runs/inject_qa/m64_kl_s100_memory+memory_kv+memory+memory_kv+text_q64_h16_hp20/model
# install it, answering from the memories' keys/values by default (an index keeps the KV
# caches that reading needs: kv_store), its adapters stored in bfloat16 (12.4 MB; the same
# answers as float32 on the 72 held-out questions of bench/results/memory_slot_cache)
$PY - "$prev" <<'EOF'
import sys

import h2mt_jax
from h2mt_jax.hierarchy.h2mt import H2MT

lm = h2mt_jax.load_lm("smollm2-135m-instruct")
H2MT.load(sys.argv[1], lm).with_config(answer_from="memory_kv", kv_store="bfloat16").save(
    "h2mt_jax/checkpoints/smollm2-135m-h2mt", adapters_dtype="bfloat16")
EOF
