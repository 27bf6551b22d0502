"""Fields shared by every config file; each file overrides what its task needs.

Every field can be set from the command line: `--config.train.lr=3e-4`.
"""

import os

import ml_collections

from h2mt_jax.errors import ConfigError

SHARED_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")


def shared_file(*parts: str) -> str:
    """A sample file of ../shared/data when this checkout sits next to it, else "" (which makes
    the task load its data from the Hugging Face hub: `h2mt_jax.train.data.hub_names`)."""
    path = os.path.normpath(os.path.join(SHARED_DATA, *parts))
    return path if os.path.isfile(path) else ""


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "h2mt_qa"  # h2mt_qa | hmt_lm
    c.backbone = "smollm2-135m-instruct"  # registry name, local dir/.gguf, or hub id
    c.dtype = "float32"
    c.seed = 0
    c.workdir = "runs/default"
    c.resume = True  # continue from the newest good checkpoint in workdir
    c.checkpoint = ""  # start from (train) or evaluate (evaluate.py) this H2MT/HMT checkpoint
    c.method = "h2mt"  # evaluate.py: one or a comma list of methods
    c.output = ""  # evaluate.py: OUT.json (default: <workdir>/eval.json)

    c.data = ml_collections.ConfigDict()
    c.data.source = "synthetic"  # synthetic | hotpotqa | longbench | wikitext
    c.data.path = ""  # local file (LongBench .jsonl, HotpotQA .json, raw text); "": the hub
    c.data.dataset = ""  # LongBench dataset name (template, length, metric); default: records'
    c.data.prompt_dir = ""  # directory with LongBench's dataset2prompt.json / dataset2maxlen.json
    c.data.train_docs = 40  # synthetic: manuals for training
    c.data.eval_docs = 6  # synthetic: held-out manuals
    c.data.chapters = 4  # synthetic: chapters per manual (about 400 tokens each)
    c.data.train_single = 6  # synthetic: single-hop questions per training manual (at most one
    # per fact, about 40; held-out manuals keep 6): more questions from the same documents
    c.data.train_two_hop = 3  # synthetic: two-hop questions per training manual (at most one per
    # bridge pair, about 20; held-out manuals keep 3)
    c.data.held_out = 0.2  # one local file: fraction of documents held out for evaluation
    c.data.limit = 0  # read at most this many records (0: all)
    c.data.on_error = "skip"  # malformed records: skip (warn with file:line) or stop
    c.data.eval_tokens = 8192  # hmt_lm: held-out tokens at the end of the text

    c.h2mt = ml_collections.ConfigDict()
    c.h2mt.leaf_tokens = 128  # tokens per leaf (sentence boundaries)
    c.h2mt.fanout = 8  # B
    c.h2mt.title_tokens = 16  # section title (heading path) tokens per leaf
    c.h2mt.title_position = "prefix"  # prefix | suffix: the path before or after the leaf text
    c.h2mt.mem_tokens = 1  # m
    c.h2mt.mem_pool = "write"  # write | mean: m write tokens, or m averaged runs of the leaf
    c.h2mt.mem_layer = -1  # memories from the final states (-1) or the residual after L blocks
    c.h2mt.recall_dim = 256  # d_h of the routing projections
    c.h2mt.leaf_mode = "independent"  # independent | hmt
    c.h2mt.aggregator = "backbone"  # backbone | attention | mean
    c.h2mt.route = "beam"  # beam | flat | oracle
    c.h2mt.k = 4  # beam width = selected leaves
    c.h2mt.ancestors = False  # also feed the ancestors' memories to the answer prompt
    c.h2mt.leaf_batch = 32  # leaves per encoding call
    c.h2mt.answer_from = "memory"  # memory | memory_kv | leaf_kv | text (what the answer reads)
    c.h2mt.kv_store = "none"  # none | bfloat16 | int8 | float32: keep leaf KV caches in indexes
    c.h2mt.kv_prefix = "chat"  # chat | none: what a leaf's stored KV cache was computed after
    c.h2mt.store_slots = True  # with kv_store: memory answers read stored slots, not prefill them
    # routing: the defaults are H2MTConfig's, the best measured on unseen documents
    c.h2mt.route_score = "fused"  # memory | bm25 | dense | bm25_sent | dense_sent | fused
    c.h2mt.fuse = "weighted"  # weighted (min-max normalised sum) | rrf
    c.h2mt.w_bm25 = 0.0  # fused weights
    c.h2mt.w_dense = 0.0
    c.h2mt.w_bm25_sent = 1.0  # per-sentence BM25 / MiniLM: a leaf scores its best sentence
    c.h2mt.w_dense_sent = 1.0
    c.h2mt.w_memory = 0.0
    c.h2mt.bm25_inner = "max"  # max | subtree: an inner node's BM25
    c.h2mt.hops = 2  # 1 | 2: a second hop for bridge questions (hierarchy/hops.py)
    c.h2mt.hop_query = "bridge"  # leaf | sentence | bridge: what the second hop routes with
    c.h2mt.hop_gate = 0.0  # the second hop fires from this hop_gate_score (0: always)
    c.h2mt.hop_gate_score = "margin"  # margin (BM25 margin of the best leaf) | learned (a
    # checkpoint's fitted gate: bench/fit_fusion.py --save-into)
    c.h2mt.hop_merge = "second"  # second | sum: the answer's other leaves (hierarchy/h2mt.py route)
    c.h2mt.distinct_sections = True  # the answer's other leaves from sections not yet read first
    c.h2mt.enc_lora_rank = 0  # LoRA rank of the memory encoder (leaf and parent passes); 0: none

    c.hmt = ml_collections.ConfigDict()
    c.hmt.segment_length = 256
    c.hmt.num_sensory = 32
    c.hmt.recall_dim = 512
    c.hmt.recall_context = 100
    c.hmt.sum_fraction = 0.5
    c.hmt.stage = 2
    c.hmt_checkpoint = ""  # evaluate.py: an HMT checkpoint for method "hmt" (e.g. a wikitext run)

    c.train = ml_collections.ConfigDict()
    c.train.steps = 300
    c.train.batch_size = 4
    c.train.lr = 3e-3
    c.train.warmup = 20
    c.train.decay = "cosine"  # cosine | constant
    c.train.weight_decay = 0.0
    c.train.clip = 1.0
    c.train.route_weight = 1.0  # λ of the routing loss
    c.train.trainable = "memory"  # memory | memory+lora | all
    c.train.lora_rank = 8
    c.train.lora_alpha = 16.0
    c.train.encode = "cached"  # cached (node memories fixed per document) | full (the answer's
    # leaves re-encoded with gradients into the write tokens and encoder adapters)
    c.train.read_modes = ""  # memory,memory_kv: how the answer reads memories in training
    # (batches take turns); "": h2mt.answer_from when it is a memory mode, else memory.
    # h2mt_qa also takes "text": batches answered from the gold leaves' raw text, which keep
    # the decoder adapters reading text while memory batches adapt them to memories
    c.train.distill = "none"  # none | kl | tokens: distillation from the text-reading teacher
    c.train.mem_tokens = 0  # from a checkpoint (h2mt_qa, memory_lm): > 0 makes m memories per
    # leaf (memory.resize_write_tokens; mean pooling: m runs); for F1 against m,
    # bench/mem_tokens_curve.py
    c.train.mem_pool = ""  # from a checkpoint: "write" | "mean" replaces its h2mt.mem_pool
    c.train.mem_layer = ""  # from a checkpoint: a block count ("-1": final) replaces its mem_layer
    c.train.distill_weight = 1.0  # β
    c.train.distill_topk = 32  # kl: the teacher's top-K tokens per position
    c.train.bf16 = False  # run the backbone in bfloat16
    c.train.bptt_depth = 4  # hmt_lm: segments per training window
    c.train.remat = "dots"  # hmt_lm: none | dots | full: what a segment recomputes in backward
    # (dots: matrix products saved, the rest recomputed; fastest measured, bench/results/hmt_train.json)
    c.train.logit_chunk = 0  # hmt_lm: tokens per LM-head chunk in the loss (0: all at once)
    c.train.checkpoint_every = 100
    c.train.max_to_keep = 3
    c.train.prefetch = 4  # batches the data pipeline reads ahead (each holds its trees' memories)
    c.train.stop_after = 0  # stop (and checkpoint) after this many steps of this run: 0 = never

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = 1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    c.mesh.distributed = False  # jax.distributed.initialize() (multi-host TPU pods)

    c.eval = ml_collections.ConfigDict()
    c.eval.before_training = False  # also evaluate the untrained parameters
    c.eval.after_training = True  # evaluate the trained parameters (False: train and export only)
    c.eval.max_examples = 0  # 0: all
    c.eval.max_new_tokens = 0  # 0: the dataset's LongBench generation length
    c.eval.k = 4  # leaves / chunks retrieved by retrieval-style methods
    c.eval.warmup = True  # one unrecorded answer per method first (compilation not timed)
    c.eval.warmup_each = False  # an unrecorded answer before every example instead (same shapes):
    # each document's tree and prompt shapes compiled before its timed answer (warm TTFT)
    c.eval.tree_text = False  # train.py: also answer from the routed leaves' text (tree_text_f1)
    c.eval.answer_modes = "memory"  # train.py: the H²MT answer modes evaluated (memory,
    # memory_kv, leaf_kv: `<mode>_f1`; the KV modes build indexes with KV caches)
    c.eval.baseline_adapters = False  # evaluate.py: also run the text baselines (full, rag_*,
    # compress) with the checkpoint's decoder adapters, as "<method>+adapters"
    c.eval.prefix_cache = True  # every method prefills its template's opening (chat preamble and
    # the text before the context) once and keeps it (generation/prefix.py); False: run prompts whole
    return c


def tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks everything for a quick CPU run: a tiny random backbone with SmolLM2's tokenizer."""
    c.backbone = "tiny-random-smollm2"
    c.data.train_docs, c.data.eval_docs, c.data.chapters, c.data.limit = 2, 1, 2, 6
    c.data.eval_tokens = 512
    c.h2mt.leaf_tokens, c.h2mt.fanout, c.h2mt.recall_dim, c.h2mt.k = 48, 4, 16, 2
    c.hmt.segment_length, c.hmt.num_sensory, c.hmt.recall_dim, c.hmt.recall_context = 40, 4, 16, 8
    c.train.steps, c.train.batch_size, c.train.warmup, c.train.bptt_depth = 2, 2, 1, 2
    c.train.checkpoint_every = 1
    c.eval.max_examples = 2
    return c


def longbench_dataset(dataset: str, arg: str | None) -> ml_collections.ConfigDict:
    """H²MT on one LongBench QA dataset (its jsonl in ../shared/data/longbench by default; gold =
    sentences containing an answer), memory parameters plus LoRA; variant `tiny`."""
    c = base_config()
    c.workdir = f"runs/{dataset}"
    c.data.source = "longbench"
    c.data.dataset = dataset
    c.data.path = shared_file("longbench", f"{dataset}.jsonl")
    c.data.held_out = 0.3
    c.h2mt.k = 4
    c.train.trainable = "memory+lora"
    if arg == "tiny":
        tiny(c)
        c.workdir = f"runs/{dataset}-tiny"
    elif arg:
        raise ConfigError(f"unknown variant {arg!r} of configs/{dataset}.py (known: tiny)")
    return c
