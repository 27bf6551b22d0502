"""Memory pretraining (task `memory_lm`): teach SmolLM2-135M-Instruct's memories to carry a leaf's
text. Reconstruction and continuation through `m` = 16 write tokens per 128-token leaf (8x), read
as input embeddings ("memory") and as per-layer keys/values ("memory_kv"); trains the write
tokens, the read projection, the encoder's LoRA (`h2mt.enc_lora_rank`) and the reader's LoRA.

    python train.py --config=configs/memory_pretrain.py       # the shipped checkpoint's stage 1
    python train.py --config=configs/memory_pretrain.py:tiny  # two steps on a tiny random model

Data: WikiText-2 (shared file, last articles held out), synthetic manuals of seed 1 (the QA
configs train and evaluate on seed 0's), the first 70 shared HotpotQA records. Never LongBench,
never HotpotQA's last 30 shared records.
"""

from configs.common import ConfigError, base_config, shared_file, tiny


def get_config(arg: str | None = None):
    c = base_config()
    c.task = "memory_lm"
    c.workdir = "runs/memory_pretrain"
    c.data.source = "pretrain"
    c.data.sources = "wikitext,synthetic,hotpotqa"
    c.data.wikitext_path = shared_file("wikitext2", "wiki.test.raw")
    c.data.eval_articles = 4
    c.data.pretrain_manuals = 40
    c.data.pretrain_seed = 1
    c.data.hotpotqa_path = shared_file("hotpotqa", "hotpot_dev_distractor_first100.json")
    c.data.hotpotqa_records = 70
    c.h2mt.mem_tokens = 16
    c.h2mt.enc_lora_rank = 8
    c.train.trainable = "memory+lora"
    c.train.read_modes = "memory,memory_kv"
    c.train.steps = 300
    c.train.batch_size = 4
    c.train.lr = 1e-3
    c.train.warmup = 30
    c.train.weight_decay = 0.0
    c.train.checkpoint_every = 25
    c.eval.max_examples = 64
    if arg == "tiny":
        tiny(c)
        c.workdir = "runs/memory_pretrain-tiny"
        c.h2mt.mem_tokens = 4
        c.h2mt.enc_lora_rank = 2
        c.train.lora_rank = 2
        c.data.pretrain_manuals = 1
        c.data.hotpotqa_records = 2
        c.data.eval_articles = 1
        c.eval.max_examples = 8
    elif arg:
        raise ConfigError(f"unknown variant {arg!r} of configs/memory_pretrain.py (known: tiny)")
    return c
