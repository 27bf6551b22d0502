"""H²MT hyper-parameters (DESIGN.md §4.2); every open design choice is a field."""

from __future__ import annotations

import dataclasses

from h2mt_jax.hierarchy.build import BuildConfig
from h2mt_jax.hmt.config import HMTConfig

LEAF_MODES = ("independent", "hmt")
AGGREGATORS = ("backbone", "attention", "mean")
MEM_POOLS = ("write", "mean")  # how a leaf's memories are made (memory.leaf_pass)
ROUTES = ("beam", "flat", "oracle")
ANSWER_MODES = ("memory", "memory_kv", "leaf_kv", "text")
KV_STORES = ("none", "bfloat16", "int8", "float32")
KV_PREFIXES = ("chat", "none")
ROUTE_SCORES = ("memory", "bm25", "dense", "bm25_sent", "dense_sent", "fused")
TEXT_SCORES = ("bm25", "dense", "bm25_sent", "dense_sent")  # computed on the host, per node
FUSIONS = ("weighted", "rrf")
BM25_INNER = ("max", "subtree")
HOP_QUERIES = ("leaf", "sentence", "bridge")  # see hierarchy/hops.py
HOP_MERGES = ("second", "sum")
HOP_GATES = ("margin", "learned")  # what hop_gate thresholds (see hierarchy/hops.py)


# Fields that change how a trained H2MT routes and answers, not the shapes of its parameters:
# a config may set them over a checkpoint's (`explicit_overrides`).
INFERENCE_FIELDS = ("route", "k", "ancestors", "leaf_batch", "answer_from", "kv_store",
                    "kv_prefix", "store_slots", "route_score", "fuse", "w_bm25", "w_dense",
                    "w_bm25_sent", "w_dense_sent", "w_memory", "bm25_inner", "hops", "hop_query",
                    "hop_gate", "hop_gate_score", "hop_merge", "distinct_sections")


def explicit_overrides(section) -> dict:
    """The `INFERENCE_FIELDS` of a config's `h2mt` section that differ from `H2MTConfig`'s
    defaults: what a config file or the command line set on purpose, applied over a loaded
    checkpoint's config (the other fields stay the checkpoint's)."""
    default = H2MTConfig()
    out = {}
    for f in INFERENCE_FIELDS:
        v = section.get(f) if section is not None else None
        if v is not None and v != getattr(default, f):
            out[f] = v
    return out


@dataclasses.dataclass(frozen=True)
class H2MTConfig:
    """mem_tokens: `m`, memory tokens per node. recall_dim: `d_h` of the routing projections.
    leaf_mode: "independent" (all leaves in one batched call) or "hmt" (leaves in document
    order through the HMT cell). aggregator: how a parent is computed from its children.
    route: "beam" (top-k per depth), "flat" (rank all leaves), "oracle" (gold leaves).
    k: beam width and number of selected leaves. ancestors: also feed the selected leaves'
    ancestors' memories to the answer prompt, coarse to fine. leaf_batch: leaves per call when
    encoding (bounds memory on very long documents). answer_from: what the answer prompt reads
    from the selected leaves: "memory" (memory vectors as input embeddings), "memory_kv" (the
    write tokens' per-layer keys/values), "leaf_kv" (each leaf's full KV cache, stored in the
    index: exact), "text" (the leaves' raw text). kv_store: "none", or the dtype ("bfloat16",
    "int8") in which `build` keeps every leaf's KV cache (what memory_kv and leaf_kv read).
    kv_prefix: what a leaf's own stored keys/values were computed after: "chat" (the chat
    preamble every answer prompt starts with, `prompts.chat_preamble`: the leaf attends to the
    prompt's attention sink as in a text prompt, not to its own first token) or "none" (the
    leaf alone). The write tokens' keys/values always come from the leaf alone (the encoder's
    pass). store_slots: with kv_store, also keep each leaf's memory slots' keys/values as the
    answer backbone reads them (`memory.memory_slot_kv`, m more rows per leaf), so that a
    `memory` answer prefills only the question; without them it prefills the slots too.
    route_score: the node score the router ranks by: "memory" (the learned bilinear score),
    "bm25", "dense" (all-MiniLM-L6-v2 cosine), "bm25_sent" / "dense_sent" (the same per
    sentence, a leaf scoring its best sentence) or "fused" (`fuse` = "weighted" min-max
    normalised sum, or "rrf" reciprocal-rank fusion, with weights `w_bm25`, `w_dense`,
    `w_bm25_sent`, `w_dense_sent`, `w_memory`; see `hierarchy.node_scores`); bm25_inner: an inner node's BM25 is the "max" over its children or its
    "subtree" text's (see `hierarchy.node_scores`). hops: 2 routes a second time for bridge
    questions (`H2MT.route`), with the query `hop_query` builds from the question and the first
    hop's best leaf: "leaf" (its whole text), "sentence" (its sentence that best matches the
    question) or "bridge" (the terms that sentence and the question do not share; see
    `hierarchy.hops`); hop_gate: the second hop fires only when `hop_gate_score` is at least
    this (0: always): "margin", the best leaf's BM25 margin over the next (`hops.hop_margin`),
    or "learned", the probability that the question needs two hops by the H2MT's fitted gate
    (`H2MT.hop_gate`, `train/hop_gate.py`); hop_merge: which leaves fill
    the answer's slots after the first hop's best: the second hop's ("second") or both hops'
    by their summed scores ("sum"). distinct_sections: the answer's slots after the best leaf
    go first to leaves of sections (heading paths) not yet read (`hops.pick_leaves`).
    mem_pool: how a leaf's `m` memories are made (`memory.leaf_pass`): "write" (`m` learned
    write tokens after the leaf) or "mean" (the leaf's tokens in `m` runs, each averaged).
    mem_layer: the encoder states a memory is taken from (`memory.memory_states`): -1 the
    final-norm hidden states, L >= 0 the residual stream after the first L blocks scaled to
    unit RMS (0: the input embeddings). Either way the memory is one vector per slot, read by
    the answer pass as an input embedding through `read`; the `memory_kv` reading (every
    layer's keys and values of the same slots) does not depend on it.
    enc_lora_rank: rank of the encoder's LoRA adapters (`params["enc_lora"]`, merged into the
    backbone for the leaf and parent passes only; 0: the memory passes run the frozen backbone);
    the answer pass's (decoder) adapters are `H2MT.lora`."""

    build: BuildConfig = BuildConfig()
    mem_tokens: int = 1
    mem_pool: str = "write"
    mem_layer: int = -1
    recall_dim: int = 256
    leaf_mode: str = "independent"
    aggregator: str = "backbone"
    route: str = "beam"
    k: int = 4
    ancestors: bool = False
    leaf_batch: int = 32
    answer_from: str = "memory"
    kv_store: str = "none"
    kv_prefix: str = "chat"
    store_slots: bool = True
    # the default routing is the best measured on documents never trained on (per-sentence BM25
    # and MiniLM, min-max normalised and summed, a second hop with the bridge:
    # bench/results/routing_sentence.json); it needs no training. "memory" is the learned score.
    route_score: str = "fused"
    fuse: str = "weighted"
    w_bm25: float = 0.0
    w_dense: float = 0.0
    w_bm25_sent: float = 1.0
    w_dense_sent: float = 1.0
    w_memory: float = 0.0
    bm25_inner: str = "max"
    hops: int = 2
    hop_query: str = "bridge"
    hop_gate: float = 0.0
    hop_gate_score: str = "margin"
    hop_merge: str = "second"
    distinct_sections: bool = True
    enc_lora_rank: int = 0
    hmt: HMTConfig | None = None  # the HMT cell for leaf_mode="hmt"

    def __post_init__(self):
        for name, value, allowed in (("leaf_mode", self.leaf_mode, LEAF_MODES),
                                     ("mem_pool", self.mem_pool, MEM_POOLS),
                                     ("aggregator", self.aggregator, AGGREGATORS),
                                     ("route", self.route, ROUTES),
                                     ("answer_from", self.answer_from, ANSWER_MODES),
                                     ("kv_store", self.kv_store, KV_STORES),
                                     ("kv_prefix", self.kv_prefix, KV_PREFIXES),
                                     ("route_score", self.route_score, ROUTE_SCORES),
                                     ("fuse", self.fuse, FUSIONS),
                                     ("bm25_inner", self.bm25_inner, BM25_INNER),
                                     ("hop_query", self.hop_query, HOP_QUERIES),
                                     ("hop_merge", self.hop_merge, HOP_MERGES),
                                     ("hop_gate_score", self.hop_gate_score, HOP_GATES)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if not isinstance(self.mem_layer, int) or isinstance(self.mem_layer, bool) or \
                self.mem_layer < -1:
            raise ValueError(f"mem_layer must be -1 (final hidden states) or a block count >= 0, "
                             f"got {self.mem_layer!r}")
        if not isinstance(self.store_slots, bool):
            raise ValueError(f"store_slots must be true or false, got {self.store_slots!r}")
        if self.enc_lora_rank < 0:
            raise ValueError(f"enc_lora_rank must be >= 0, got {self.enc_lora_rank}")
        if self.mem_tokens > self.build.leaf_tokens:
            raise ValueError(f"mem_tokens={self.mem_tokens} exceeds the leaf length "
                             f"{self.build.leaf_tokens}: memories would be longer than the text they "
                             "compress")
        if self.mem_tokens < 1 or self.k < 1 or self.recall_dim < 1 or self.leaf_batch < 1:
            raise ValueError("mem_tokens, k, recall_dim and leaf_batch must be >= 1")
        if self.hops not in (1, 2):
            raise ValueError(f"hops must be 1 or 2, got {self.hops!r}")
        if not 0.0 <= self.hop_gate <= 1.0:
            raise ValueError(f"hop_gate is a margin or probability in [0, 1], got "
                             f"{self.hop_gate!r}")
        if min(self.w_bm25, self.w_dense, self.w_bm25_sent, self.w_dense_sent,
               self.w_memory) < 0:
            raise ValueError("w_bm25, w_dense, w_bm25_sent, w_dense_sent and w_memory must be >= 0")
        self.score_weights()  # a fused score needs a positive weight
        if self.leaf_mode == "hmt":
            if self.kv_store != "none":
                raise ValueError("kv_store needs leaf_mode='independent': the hmt cell's passes "
                                 "mix leaves, so no per-leaf KV cache exists")
            if self.mem_tokens != 1:
                raise ValueError("leaf_mode='hmt' produces one memory per leaf: use mem_tokens=1")
            if self.mem_layer != -1:
                raise ValueError("leaf_mode='hmt' memories are the cell's: use mem_layer=-1")
            if self.hmt is None:
                leaf = self.build.leaf_len
                object.__setattr__(self, "hmt", HMTConfig(
                    segment_length=leaf + 2 + 16, num_sensory=16, recall_dim=self.recall_dim))
            if self.hmt.tokens_per_segment < self.build.leaf_len:
                raise ValueError(f"the HMT segment holds {self.hmt.tokens_per_segment} tokens, "
                                 f"fewer than a leaf's {self.build.leaf_len}")

    def score_weights(self) -> tuple[tuple[str, float], ...]:
        """The score kinds the router combines, with their weights (static, hashable)."""
        if self.route_score != "fused":
            return ((self.route_score, 1.0),)
        kinds = (("bm25", self.w_bm25), ("dense", self.w_dense), ("bm25_sent", self.w_bm25_sent),
                 ("dense_sent", self.w_dense_sent), ("memory", self.w_memory))
        kinds = tuple((k, float(w)) for k, w in kinds if w > 0)
        if not kinds:
            raise ValueError("route_score='fused' needs a positive weight")
        return kinds

    def replace(self, **kw) -> "H2MTConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, c) -> "H2MTConfig":
        """From a config file's `h2mt` section (ml_collections ConfigDict or dict; see
        configs/common.py); fields it lacks keep this class's defaults."""
        get = c.get
        build_fields = {f.name for f in dataclasses.fields(BuildConfig)}
        build = BuildConfig(**{k: get(k) for k in build_fields if get(k) is not None})
        own = {f.name for f in dataclasses.fields(cls)} - {"build", "hmt"}
        return cls(build=build, **{k: get(k) for k in own if get(k) is not None})

    @classmethod
    def from_dict(cls, d: dict) -> "H2MTConfig":
        d = dict(d)
        d["build"] = BuildConfig(**d.get("build", {}))
        if d.get("hmt") is not None:
            d["hmt"] = HMTConfig(**d["hmt"])
        return cls(**d)
