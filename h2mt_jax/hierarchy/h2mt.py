"""`H2MT`: build a document's index offline, then route questions and answer from memory tokens.

    h2mt = H2MT.create(h2mt_jax.load_lm("smollm2-135m-instruct"), H2MTConfig())
    index = h2mt.build(text)                       # offline: tree + node memories
    ans = h2mt.answer(index, "Who built the pump?", dataset="hotpotqa")
    ans.text, ans.leaves, ans.timings              # route, scores, TTFT breakdown
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from h2mt_jax.backbone.lora import check_lora
from h2mt_jax.data import prompts
from h2mt_jax.shapes import bucket
from h2mt_jax.hierarchy import parse
from h2mt_jax.hierarchy.build import build_spec
from h2mt_jax.hierarchy.config import ANSWER_MODES, TEXT_SCORES, H2MTConfig
from h2mt_jax.hierarchy.hops import (check_gate, gate_probability, hop_margin, pick_leaves,
                                     second_hop_query)
from h2mt_jax.hierarchy.index import Index, append_leaves, remap_memories
from h2mt_jax.hierarchy.leaf_kv import LeafKV
from h2mt_jax.hierarchy.memory import (H2MTParams, init_params, leaf_memories, memory_prompt,
                                       memory_slot_kv, resize_write_tokens, sweep)
from h2mt_jax.hierarchy.node_scores import (bm25_scores, bm25_sentence_scores,
                                           dense_sentence_scores, fuse_scores, leaf_sentences,
                                           leaf_texts, node_vectors)
from h2mt_jax.hierarchy.route import (Route, beam_route, flat_route, node_scores,
                                      query_embedding, score_nodes)
from h2mt_jax.hierarchy.tree import Tree, pad_tree, padded_ids
from h2mt_jax.io import load_tree, read_meta, save_tree, write_meta
from h2mt_jax.lm import LM, checkpoint_backbone

FORMAT = "h2mt_jax.h2mt/1"
CHECKPOINTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "checkpoints")
SHIPPED = ("smollm2-135m-h2mt",)  # pretrained checkpoints in the package, loadable by name


def resolve_checkpoint(name_or_dir) -> str:
    """The directory of a shipped checkpoint (`SHIPPED`) by name; any other value is returned
    as given (a directory written by `H2MT.save`)."""
    name = str(name_or_dir)
    if name in SHIPPED and not os.path.isdir(name):
        path = os.path.join(CHECKPOINTS, name)
        if not os.path.isfile(os.path.join(path, "h2mt.json")):
            raise FileNotFoundError(f"the shipped checkpoint {name!r} is missing from {path}: "
                                    "reinstall h2mt_jax")
        return path
    return name


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _query(graphdef, bparams, params, ids, lengths):
    model = nnx.merge(graphdef, bparams)
    return query_embedding(model, params, ids, lengths)[0]


@functools.partial(jax.jit, static_argnames=("k", "kind", "weights", "fuse"))
def _route(params, tree: Tree, mem, s, extra: dict, k: int, kind: str,
           weights: tuple = (("memory", 1.0),), fuse: str = "weighted") -> Route:
    """Scores every node (the learned score alone, or fused with the per-node `extra` arrays
    `{kind: [N]}`, see `node_scores.fuse_scores`) and routes by `kind`."""
    if weights == (("memory", 1.0),):
        scores = score_nodes(params, s, mem, tree.node_mask)
    else:
        kinds = dict(extra)
        if s is not None:
            kinds["memory"] = node_scores(params, s, mem)
        scores = fuse_scores(kinds, dict(weights), tree.node_mask, fuse)
    return (beam_route if kind == "beam" else flat_route)(tree, scores, k)


@dataclasses.dataclass
class Answer:
    """An answer with its route: selected `leaves` (spec leaf ids, best first) and their
    `scores`, `visited` (spec node ids kept at each beam step), every node's score
    (`node_scores`, by spec id) and the `timings` in seconds: query (encoding), route, prefill,
    decode, ttft (question arrival to first token) and total."""

    text: str
    leaves: list[int]
    scores: list[float]
    visited: list[list[int]]
    node_scores: np.ndarray
    timings: dict
    prompt_tokens: int
    memory_tokens: int


class H2MT:
    """H²MT over a backbone `lm` with memory `params` (see `memory.init_params`)."""

    def __init__(self, lm: LM, config: H2MTConfig, params: H2MTParams, lora=None,
                 lora_scale: float = 1.0, hop_gate: dict | None = None):
        if config.mem_layer >= lm.config.num_layers:
            raise ValueError(f"mem_layer={config.mem_layer} but the backbone {lm.name!r} has "
                             f"{lm.config.num_layers} blocks (at most {lm.config.num_layers - 1}"
                             ": the answer pass reads the memories from that block on)")
        self.lm, self.config, self.params = lm, config, params
        self.lora, self.lora_scale = lora, float(lora_scale)
        self.hop_gate = hop_gate  # {"w": [d_embedder], "b": [1]}: train/hop_gate.py
        self._embedding = None
        self._answer_lm = None
        self._embedder = None
        self._qvec = (None, None)  # (question, its sentence vector): question_vector

    @property
    def tokenizer(self):
        if self.lm.tokenizer is None:
            raise ValueError("H2MT needs an LM with a tokenizer to build indexes and answer")
        return self.lm.tokenizer

    @property
    def answer_lm(self) -> LM:
        """The backbone that encodes questions and answers: with the decoder LoRA adapters merged
        when there are any (leaves and parents are encoded with the encoder adapters instead,
        `memory.encoder_params`)."""
        if self._answer_lm is None:
            self._answer_lm = self.lm.with_lora(self.lora, self.lora_scale)
        return self._answer_lm

    @classmethod
    def create(cls, lm: LM, config: H2MTConfig = H2MTConfig(), seed: int = 0) -> "H2MT":
        """Fresh parameters; the read projection is scaled so that a memory vector has the
        mean norm of a token embedding (measured on a probe sentence)."""
        std = float(jnp.std(lm.params["embedding"].value))
        h = cls(lm, config, init_params(lm.config.hidden_size, std, config,
                                        jax.random.PRNGKey(seed), lm.params))
        h.params = {**h.params, "read": h.params["read"] * h._read_scale()}
        if config.mem_layer >= 1:
            h.params["inject"] = h._inject_init()
        return h

    def _probe_ids(self) -> list[int]:
        tok = self.lm.tokenizer
        return (tok("The pump runs at a steady speed.", add_special_tokens=False)["input_ids"]
                if tok is not None else [1, 2, 3])

    def _read_scale(self) -> float:
        """The mean norm of a token embedding over that of a memory (of a probe sentence)."""
        emb = self.lm.params["embedding"].value
        mem = self._leaf_memories([self._probe_ids()])
        return float(jnp.mean(jnp.linalg.norm(emb, axis=-1))) / max(
            float(np.linalg.norm(mem, axis=-1).mean()), 1e-6)

    def _inject_init(self) -> jnp.ndarray:
        """`inject` `[d, d]` for `config.mem_layer` = L >= 1: the identity times the root mean
        square of the answer pass's residual stream after L blocks (probe sentence, its first
        token left out: it carries the attention sink's outsized states), so a unit-RMS memory
        enters at the scale of the text's own states there."""
        model = self.answer_lm.model
        ids = jnp.asarray([self._probe_ids()], jnp.int32)
        res = np.asarray(model(model.embed(ids), residual_at=self.config.mem_layer)[2],
                         np.float32)[0, 1:]
        rms = float(np.sqrt((res ** 2).mean(-1)).mean()) if len(res) else 1.0
        return jnp.eye(self.lm.config.hidden_size, dtype=jnp.float32) * rms

    def with_mem_layer(self, layer: int) -> "H2MT":
        """The same H2MT with memories taken from the encoder states `layer`
        (`H2MTConfig.mem_layer`), `read` reset to the identity scaled as by `create` (the
        trained read map was fitted to other states) and, for `layer` >= 1, a fresh `inject`
        (`_inject_init`). Indexes built before do not fit it."""
        if layer == self.config.mem_layer:
            return self
        h = self.with_config(mem_layer=layer)
        eye = jnp.eye(self.lm.config.hidden_size, dtype=jnp.float32)
        h.params = {k: v for k, v in h.params.items() if k != "inject"}
        h.params["read"] = eye * h._read_scale()
        if layer >= 1:
            h.params["inject"] = h._inject_init()
        return h

    @property
    def embedding(self) -> np.ndarray:
        """The backbone's input embeddings on the host (grouping similarity, prompt assembly)."""
        if self._embedding is None:
            self._embedding = np.asarray(self.lm.params["embedding"].value, np.float32)
        return self._embedding

    # -- offline -------------------------------------------------------------------------------
    def build(self, document, fmt: str = "auto", doc_id: str = "", progress: bool = False,
              outline: parse.Section | None = None, kv_store: str | None = None) -> Index:
        """Parses `document` (str or bytes; see `parse.parse_document` for `fmt`), builds the tree
        and computes every node's memory. With `outline`, `document` must be the clean text the
        outline's spans index. `kv_store` (default `config.kv_store`): "bfloat16" or "int8" also
        keeps every leaf's per-layer KV cache from the same leaf pass (for the `memory_kv` and
        `leaf_kv` answers), "none" does not."""
        t0 = time.perf_counter()
        if outline is None:
            text = parse.clean_text(document)
            outline = parse.parse_document(text, fmt)
        else:
            text = document
        t1 = time.perf_counter()
        cfg = self.config
        spec = build_spec(text, outline, self.tokenizer, cfg.build, self.embedding)
        tree = pad_tree(spec, cfg.build.fanout, cfg.build.leaf_len)
        t2 = time.perf_counter()
        mem = np.zeros((tree.num_nodes, cfg.mem_tokens, self.lm.config.hidden_size), np.float32)
        kv_store = kv_store or cfg.kv_store
        mem[:spec.n_leaves], kv = self._leaf_pass(spec.leaf_tokens, kv_store, progress)
        t3 = time.perf_counter()
        mem = np.asarray(sweep(self.lm.graphdef, self.lm.params, self.params, tree,
                               jnp.asarray(mem), tree.level_nodes, kind=cfg.aggregator,
                               layer=cfg.mem_layer))
        t4 = time.perf_counter()
        tokens = sum(len(t) for t in spec.leaf_tokens)
        index = Index(text, spec, tree, mem, cfg.build, doc_id, {
            "parse_s": t1 - t0, "tree_s": t2 - t1, "leaves_s": t3 - t2, "sweep_s": t4 - t3,
            "total_s": t4 - t0, "leaf_tokens": tokens, "leaves": spec.n_leaves,
            "nodes": spec.n_nodes, "tokens_per_s": tokens / (t4 - t0),
            "kv_bytes": 0 if kv is None else kv.nbytes}, kv)
        weights = dict(cfg.score_weights())
        if "dense" in weights or "dense_sent" in weights:  # offline, with the index
            t5 = time.perf_counter()
            if "dense" in weights:
                self.node_vectors(index)
            if "dense_sent" in weights:
                self.sentence_vectors(index)
            index.timings["dense_s"] = time.perf_counter() - t5
        return index

    def _leaf_pass(self, leaf_tokens, kv_store: str, progress: bool = False
                   ) -> tuple[np.ndarray, LeafKV | None]:
        """Leaf memories and, unless `kv_store` is "none", the same pass's KV caches and the
        `memory` reading's slot keys/values (`memory.memory_slot_kv`, with `store_slots`)."""
        if kv_store == "none":
            return self._leaf_memories(leaf_tokens, progress), None
        mem, kv = self._leaf_memories(leaf_tokens, progress, with_kv=True)
        slots = None
        if self.config.store_slots:
            alm = self.answer_lm
            slots = memory_slot_kv(alm.graphdef, alm.params, alm.config, self.params,
                                   self.config.mem_layer, self.kv_prefix, mem,
                                   batch=self.config.leaf_batch)
        return mem, LeafKV.from_pass(kv, kv_store, self.lm.name, len(self.kv_prefix), slots)

    def _leaf_memories(self, leaf_tokens, progress=False, with_kv: bool = False):
        n, t = len(leaf_tokens), self.config.build.leaf_len
        tokens = np.zeros((n, t), np.int32)
        lengths = np.zeros((n,), np.int32)
        for i, ids in enumerate(leaf_tokens):
            tokens[i, :len(ids)] = ids
            lengths[i] = len(ids)
        kv_params = None
        if with_kv and (self.lora or "enc_lora" in self.params):
            kv_params = self.answer_lm.params  # leaf_kv reads what the answer pass computes
        return leaf_memories(self.lm.graphdef, self.lm.params, self.params, self.config, tokens,
                             lengths, progress, with_kv=with_kv, kv_params=kv_params,
                             kv_prefix=self.kv_prefix if with_kv else [])

    @property
    def kv_prefix(self) -> list[int]:
        """The tokens a leaf's stored KV cache is computed after (`config.kv_prefix`)."""
        return prompts.chat_preamble(self.tokenizer) if self.config.kv_prefix == "chat" else []

    def append(self, index: Index, text: str, fmt: str = "plain") -> Index:
        """Extends the index with more text: only the new leaves and their ancestors (the right
        spine of the tree) are recomputed."""
        t0 = time.perf_counter()
        sep = "\n\n" if index.text and not index.text.endswith("\n\n") else ""
        offset = len(index.text) + len(sep)
        add = parse.clean_text(text)
        outline = parse.parse_document(add, fmt)
        sub = build_spec(add, outline, self.tokenizer, self.config.build, self.embedding)
        new_leaves = [(toks, (s + offset, e + offset))
                      for toks, (s, e) in zip(sub.leaf_tokens, sub.leaf_spans)]
        spec, old_of_new, dirty = append_leaves(index.spec, new_leaves, self.config.build.fanout)
        tree = pad_tree(spec, self.config.build.fanout, self.config.build.leaf_len,
                        min_leaves=index.tree.num_leaf_slots, min_height=index.tree.max_height)
        mem = remap_memories(index, spec, tree, old_of_new)
        pid = padded_ids(spec, tree)
        new_leaf_ids = [i for i in dirty if i < spec.n_leaves]  # the new leaves, in order
        kv_store = "none" if index.kv is None else index.kv.dtype
        mem[pid[new_leaf_ids]], kv = self._leaf_pass([spec.leaf_tokens[i] for i in new_leaf_ids],
                                                     kv_store)
        if kv is not None:
            kv = LeafKV.concat(index.kv, kv)
        heights = spec.heights()
        levels = np.full(tree.level_nodes.shape, -1, np.int32)
        fill = [0] * (levels.shape[0] + 1)
        for i in dirty:
            h = heights[i]
            if h >= 1:
                levels[h - 1, fill[h]] = pid[i]
                fill[h] += 1
        mem = np.asarray(sweep(self.lm.graphdef, self.lm.params, self.params, tree,
                               jnp.asarray(mem), jnp.asarray(levels), kind=self.config.aggregator,
                               layer=self.config.mem_layer))
        timings = dict(index.timings, append_s=time.perf_counter() - t0,
                       recomputed_nodes=len(dirty))
        grown = Index(index.text + sep + add, spec, tree, mem, index.build, index.doc_id, timings,
                      kv)
        if index.node_vectors is not None:  # old leaves keep their vectors; inner nodes re-mean
            old = index.spec.n_leaves
            new = self.embedder.embed(leaf_texts(grown)[old:])
            grown.node_vectors = node_vectors(spec, np.concatenate(
                [index.node_vectors[:old], new]))
        if index.sentence_vectors is not None:  # old leaves' sentences keep theirs
            texts, owner = leaf_sentences(grown)
            first = int(np.searchsorted(owner, index.spec.n_leaves))
            grown.sentence_vectors = np.concatenate(
                [index.sentence_vectors[:first], self.embedder.embed(texts[first:])])
        return grown

    # -- online --------------------------------------------------------------------------------
    def route(self, index: Index, question: str, k: int | None = None, route: str | None = None,
              gold_leaves: list[int] | None = None) -> tuple[Route | None, dict]:
        """Routes a question: (the `Route` or None for the oracle, timings).

        With `config.hops=2` a second hop routes with what the first hop's best leaf adds to
        the question (`config.hop_query`, `hierarchy.hops.second_hop_query`: for a bridge
        question, the bridge entity its second leaf names), and the answer reads the first
        hop's `ceil(k/2)` best leaves, then up to `k` other leaves: the second hop's best
        (`config.hop_merge="second"`), or the first and second hops' selected leaves ranked by
        the sum of both hops' scores (`"sum"`).
        `config.hop_gate` > 0 fires the second hop only when `hop_score` is at least the gate
        (the best leaf's BM25 margin, or the fitted gate's probability that the question needs
        two hops); `timings["hops"]` says whether it fired. With `config.distinct_sections`,
        the slots after the best leaf go to leaves of sections not yet read first
        (`hops.pick_leaves`), from the route's leaves then every other leaf by its score."""
        kind = route or self.config.route
        k = k or self.config.k
        if kind == "oracle":
            if gold_leaves is None:
                raise ValueError("route='oracle' needs gold_leaves")
            return None, {"query_s": 0.0, "route_s": 0.0}
        r, timings = self._route_once(index, question, k, kind)
        if index.spec.n_leaves <= k:
            return r, timings
        sections = index.spec.titles if self.config.distinct_sections else None
        first = self._ranked_leaves(index, r)
        if self.config.hops == 1 or (self.config.hop_gate > 0 and
                                     self.hop_score(index, question) < self.config.hop_gate):
            if self.config.hops == 2:
                timings = {**timings, "hops": 1}
            if sections is None:
                return r, timings
            return self._with_leaves(r, pick_leaves(first[:1], first, k, sections), [r]), timings
        expanded = second_hop_query(index, first[0], question, self.config.hop_query)
        r2, t2 = self._route_once(index, expanded, k, kind)
        keep = first[:(k + 1) // 2]
        second = self._ranked_leaves(index, r2)
        if self.config.hop_merge == "sum":  # both hops' candidates, by the sum of their scores
            s1, s2 = np.asarray(r.scores), np.asarray(r2.scores)
            pid = index.padded_ids
            n_beam = min(k, index.spec.n_leaves)
            pool = [i for i in dict.fromkeys(first[:n_beam] + second[:n_beam]) if i not in keep]
            pool = sorted(pool, key=lambda i: -(s1[pid[i]] + s2[pid[i]]))
            second = pool + [i for i in second if i not in pool]
        leaves = pick_leaves(keep, second, k, sections)
        return self._with_leaves(r, leaves, [r, r2]), {
            "query_s": timings["query_s"] + t2["query_s"],
            "route_s": timings["route_s"] + t2["route_s"], "hops": 2}

    @staticmethod
    def _ranked_leaves(index: Index, r: Route) -> list[int]:
        """Spec leaf ids: the route's selected leaves in its order, then every other leaf by
        its node score (the candidates `hops.pick_leaves` fills the answer's slots from)."""
        chosen = index.leaf_ids(np.asarray(r.leaves))
        scores = np.asarray(r.scores)[index.padded_ids[:index.spec.n_leaves]]
        rest = [int(i) for i in np.argsort(-scores, kind="stable") if int(i) not in chosen]
        return list(chosen) + rest

    @staticmethod
    def _with_leaves(r: Route, leaves: list[int], routes: list[Route]) -> Route:
        """`r` with its selected leaves replaced by `leaves` (spec ids), each scored by the first
        of `routes` that scores it (its selected leaves' scores, else its node score)."""
        score = {}
        for x in routes:
            score.update({int(i): float(v) for i, v in zip(x.leaves, x.leaf_scores)
                          if int(i) >= 0 and int(i) not in score})
        fallback = np.asarray(routes[-1].scores)
        padded = np.full(len(r.leaves), -1, np.int32)
        padded[:len(leaves)] = leaves  # leaves keep their ids in the padded layout
        return Route(leaves=padded, visited=np.asarray(r.visited),
                     leaf_scores=np.asarray([score.get(int(i), float(fallback[i])) if i >= 0
                                             else -np.inf for i in padded], np.float32),
                     scores=np.asarray(r.scores))

    def hop_score(self, index: Index, question: str) -> float:
        """What `config.hop_gate` thresholds (`config.hop_gate_score`): the BM25 margin of the
        question's best leaf (`hops.hop_margin`: a comparison question matches two leaves alike)
        or the fitted gate's probability that the question needs a second hop
        (`hops.gate_probability` of its sentence vector)."""
        if self.config.hop_gate_score == "margin":
            return hop_margin(index, question)
        if self.hop_gate is None:
            raise ValueError("hop_gate_score='learned' needs a fitted hop gate (H2MT.hop_gate; "
                             "bench/fit_fusion.py --save-into fits one into a checkpoint)")
        return gate_probability(self.hop_gate, self.question_vector(question))

    def question_vector(self, question: str) -> np.ndarray:
        """The question's sentence vector `[d]` (all-MiniLM-L6-v2), kept for the last question:
        the dense scores, both sentence kinds and the hop gate embed it once."""
        if self._qvec[0] != question:
            self._qvec = (question, self.embedder.embed([question])[0])
        return self._qvec[1]

    def summary_vector(self, ids: list[int]) -> jnp.ndarray:
        """The question's summary vector `s` `[d]` that the learned score reads
        (`route.query_embedding`, one pass of the answer backbone over the question's ids)."""
        q = np.zeros((1, bucket(len(ids))), np.int32)
        q[0, :len(ids)] = ids
        qlm = self.answer_lm
        s = _query(qlm.graphdef, qlm.params, self.params, jnp.asarray(q),
                   jnp.asarray([len(ids)], jnp.int32))
        return s.block_until_ready()

    def _route_once(self, index: Index, question: str, k: int, kind: str) -> tuple[Route, dict]:
        t0 = time.perf_counter()
        ids = self.tokenizer(question, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError("the question is empty")
        weights = self.config.score_weights()
        s = self.summary_vector(ids) if "memory" in dict(weights) else None
        extra = self._extra_scores(index, question, dict(weights))
        t1 = time.perf_counter()
        mem = None if s is None else jnp.asarray(index.memories)  # text scores: no copy of
        # the node memories to the device (19 MB at 32k tokens, most of the routing time)
        r = _route(self.params, index.tree, mem, s, extra,
                   k=min(k, index.spec.n_leaves), kind=kind, weights=weights,
                   fuse=self.config.fuse)
        r = jax.device_get(r)
        t2 = time.perf_counter()
        return r, {"query_s": t1 - t0, "route_s": t2 - t1}

    @property
    def embedder(self):
        """The sentence embedder of dense scores (all-MiniLM-L6-v2, loaded on first use)."""
        if self._embedder is None:
            from h2mt_jax.embedder import SentenceEmbedder

            self._embedder = SentenceEmbedder.load()
        return self._embedder

    def node_vectors(self, index: Index) -> np.ndarray:
        """The index's dense node vectors `[n_nodes, d]`, computed (and kept) when missing."""
        if index.node_vectors is None:
            index.node_vectors = node_vectors(index.spec, self.embedder.embed(leaf_texts(index)))
        return index.node_vectors

    def sentence_vectors(self, index: Index) -> np.ndarray:
        """The index's per-sentence unit vectors `[n_sentences, d]`
        (`node_scores.leaf_sentences`), computed (and kept) when missing."""
        if index.sentence_vectors is None:
            index.sentence_vectors = self.embedder.embed(leaf_sentences(index)[0])
        return index.sentence_vectors

    def _extra_scores(self, index: Index, question: str, weights: dict) -> dict:
        """Padded per-node lexical and dense scores `{kind: [N]}` for the kinds in `weights`
        (question-time work: part of the query time)."""
        score = {"bm25": lambda: bm25_scores(index, question, self.config.bm25_inner),
                 "dense": lambda: self.node_vectors(index) @ self.question_vector(question),
                 "bm25_sent": lambda: bm25_sentence_scores(index, question),
                 "dense_sent": lambda: dense_sentence_scores(
                     index, self.sentence_vectors(index), self.question_vector(question))}
        out = {}
        pid = index.padded_ids
        for kind in TEXT_SCORES:
            if kind in weights:
                x = np.zeros(index.tree.num_nodes, np.float32)
                x[pid] = score[kind]()
                out[kind] = jnp.asarray(x)
        return out

    def _selected_nodes(self, index: Index, leaves: list[int]) -> list[int]:
        """Spec ids fed to the answer prompt: ancestors (coarse to fine) then the leaves in
        document order."""
        leaves = sorted(set(leaves))
        if not self.config.ancestors:
            return leaves
        parent, depth = index.spec.parents(), index.spec.depths()
        anc = {a for leaf in leaves for a in index.spec.ancestors(leaf, parent)}
        return sorted(anc, key=lambda n: (depth[n], n)) + leaves

    def answer(self, index: Index, question: str, dataset: str = "synthetic",
               template: str | None = None, max_new_tokens: int | None = None,
               k: int | None = None, route: str | None = None,
               gold_leaves: list[int] | None = None, answer_from: str | None = None) -> Answer:
        """Routes the question and answers from the selected leaves, read as `answer_from`
        (default `config.answer_from`): "memory" (their memory vectors as input embeddings, with
        the ancestors' first when `config.ancestors`), "memory_kv" (their write tokens' stored
        keys/values), "leaf_kv" (their full stored KV caches: exact) or "text" (their raw text,
        the tree_text baseline). Every mode uses the same route and the same prompt template;
        for the memory and KV modes the prefill covers only the template and the question.
        The template's opening (`pre`) is read from the answer backbone's prefix cache
        (`LM.generate_ids(prefix=...)`), as by the text baselines of `evaluate.py`.
        The KV modes need an index built with `kv_store` (`index.modes`); they read leaves only
        (no ancestors). Such an index also stores the `memory` slots' keys and values
        (`memory.memory_slot_kv`): a `memory` answer of leaves only then prefills just the
        question, each leaf's slots read after the chat preamble and apart from the other
        leaves'; otherwise (no stored slots, or ancestors selected) it prefills the slots.
        Memories and the write tokens' keys/values are the encoder's (backbone plus
        `enc_lora`); a leaf's own keys/values are the answer backbone's (plus the decoder
        adapters), as in a text prompt."""
        mode = answer_from or self.config.answer_from
        if mode not in ANSWER_MODES:
            raise ValueError(f"answer_from must be one of {ANSWER_MODES}, got {mode!r}")
        if mode not in index.modes:
            raise ValueError(f"answer_from={mode!r} needs the leaves' KV caches, but this index "
                             "was built without them: build it with kv_store='bfloat16' or "
                             "'int8' (H2MTConfig(kv_store=...), --config.h2mt.kv_store)")
        slots = (mode == "memory" and index.kv is not None and index.kv.has_slots)
        if (mode in ("memory_kv", "leaf_kv") or slots) and index.kv.backbone != self.lm.name:
            raise ValueError(f"the index's KV caches were computed by backbone "
                             f"{index.kv.backbone!r}, this H2MT runs {self.lm.name!r}")
        start = time.perf_counter()
        template = template or prompts.template_for(dataset)
        if max_new_tokens is None:
            max_new_tokens = prompts.load_max_new_tokens().get(dataset,
                                                               prompts.DEFAULT_MAX_NEW_TOKENS)
        r, timings = self.route(index, question, k, route, gold_leaves)
        if r is None:
            leaves, scores, visited = list(gold_leaves), [0.0] * len(gold_leaves), []
            node_sc = np.zeros(index.spec.n_nodes, np.float32)
        else:
            leaves = index.leaf_ids(np.asarray(r.leaves))
            scores = [float(x) for x, i in zip(r.leaf_scores, r.leaves) if i >= 0]
            visited = [[index.spec_node(int(i)) for i in row if i >= 0] for row in r.visited]
            node_sc = np.asarray(r.scores)[index.padded_ids]
        tok = self.tokenizer
        alm = self.answer_lm
        t_asm = time.perf_counter()
        if mode == "text":
            ctx = "\n\n".join(index.text[slice(*index.spec.leaf_spans[i])] for i in sorted(leaves))
            ids = prompts.prompt_ids(tok, template, ctx, question)
            n = prompts.template_prefix(tok, template, question, ids)
            gen = alm.generate_ids([ids[n:]], prefix=ids[:n], max_new_tokens=max_new_tokens)
            n_mem, n_prompt = 0, len(ids)
        elif mode != "memory" or (slots and not self.config.ancestors):
            # stored keys/values in document order: only the template and question are run
            pre, post = prompts.split_prompt(tok, template, question)
            order = sorted(set(leaves))
            gather = {"leaf_kv": index.kv.gather, "memory_kv": index.kv.gather_write,
                      "memory": index.kv.gather_slots}[mode]
            seg_k, seg_v = gather(order)
            gen = alm.generate_with_segment(pre, seg_k, seg_v, post, max_new_tokens)
            n_mem, n_prompt = seg_k.shape[1], len(pre) + seg_k.shape[1] + len(post)
        else:
            pre, post = prompts.split_prompt(tok, template, question)
            nodes = self._selected_nodes(index, leaves)
            mem = index.node_memories(nodes).reshape(-1, index.memories.shape[-1])
            x, inject = memory_prompt(self.params, self.config.mem_layer,
                                      jnp.zeros((1, 0, mem.shape[-1])), jnp.asarray(mem)[None],
                                      jnp.asarray(self.embedding[post])[None])
            gen = alm.generate_ids(embeds=np.asarray(x), prefix=pre,  # after the cached pre
                                   max_new_tokens=max_new_tokens, inject=inject)
            n_mem, n_prompt = len(mem), len(pre) + x.shape[1]
        timings["assemble_s"] = time.perf_counter() - t_asm - gen.prefill_s - gen.decode_s
        timings.update(prefill_s=gen.prefill_s, decode_s=gen.decode_s)
        timings["ttft_s"] = (timings["query_s"] + timings["route_s"] + timings["assemble_s"]
                             + gen.prefill_s)
        timings["total_s"] = time.perf_counter() - start
        text = tok.decode(gen.tokens[0], skip_special_tokens=True).strip()
        return Answer(text, leaves, scores, visited, node_sc, timings, n_prompt, n_mem)

    def save_index(self, index: Index, directory) -> None:
        """Saves the index and, under `model/`, the parameters that built it."""
        index.save(directory)
        self.save(os.path.join(directory, "model"))

    @classmethod
    def load_index(cls, directory, lm: LM | None = None, allow_hub: bool = False
                   ) -> tuple["H2MT", Index]:
        """(H2MT, Index) from a directory written by `save_index` (the backbone: see `load`);
        the index's memories must fit the model (`m` vectors of the backbone's width)."""
        h2mt = cls.load(os.path.join(directory, "model"), lm, allow_hub)
        index = Index.load(directory)
        want = (h2mt.config.mem_tokens, h2mt.lm.config.hidden_size)
        if tuple(index.memories.shape[1:]) != want:
            raise ValueError(f"{directory}/memories.npy holds memories of shape (m, d) = "
                             f"{tuple(index.memories.shape[1:])}; the model makes {want}")
        return h2mt, index

    # -- checkpoints ---------------------------------------------------------------------------
    def save(self, directory, adapters_dtype: str = "float32") -> None:
        """Writes the memory parameters and adapters (`h2mt.safetensors`) and the config
        (`h2mt.json`, versioned), each atomically. `adapters_dtype="bfloat16"` stores the
        decoder and encoder adapters' factors in bfloat16 (half their bytes; `load` widens them
        back to float32): how the shipped checkpoint fits in 20 MB. Everything else is float32."""
        if adapters_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"adapters_dtype must be 'float32' or 'bfloat16', got "
                             f"{adapters_dtype!r}")
        cast = ((lambda t: t) if adapters_dtype == "float32" else  # noqa: E731
                (lambda t: jax.tree.map(lambda a: np.asarray(a, ml_dtypes.bfloat16), t)))
        params = dict(jax.device_get(self.params))
        if "enc_lora" in params:
            params["enc_lora"] = cast(params["enc_lora"])
        tensors = {"params": params,
                   **({"lora": cast(jax.device_get(self.lora))} if self.lora else {}),
                   **({"hop_gate": self.hop_gate} if self.hop_gate is not None else {})}
        save_tree(os.path.join(directory, "h2mt.safetensors"), tensors)
        write_meta(os.path.join(directory, "h2mt.json"), FORMAT, config=self.config.to_dict(),
                   backbone=self.lm.name, hidden_size=self.lm.config.hidden_size,
                   lora_scale=self.lora_scale, adapters_dtype=adapters_dtype)

    def with_config(self, **fields) -> "H2MT":
        """The same parameters under a config with some fields replaced (validated)."""
        if not fields:
            return self
        return H2MT(self.lm, self.config.replace(**fields), self.params, self.lora,
                    self.lora_scale, self.hop_gate)

    def with_mem_tokens(self, m: int) -> "H2MT":
        """The same H2MT with `m` memory tokens per node (`memory.resize_write_tokens`); the
        config is validated (`m` at most a leaf's tokens). Indexes built before do not fit it."""
        if m == self.config.mem_tokens:
            return self
        cfg = self.config.replace(mem_tokens=m)
        return H2MT(self.lm, cfg, resize_write_tokens(self.params, m), self.lora,
                    self.lora_scale, self.hop_gate)

    @classmethod
    def load(cls, directory, lm: LM | None = None, allow_hub: bool = False) -> "H2MT":
        """An H2MT saved by `save`, or a shipped one by name (`SHIPPED`, e.g.
        "smollm2-135m-h2mt"). The backbone: `lm`, else the saved name when it is an offline
        registry name (`lm.checkpoint_backbone`: metadata never opens paths or fetches)."""
        directory = resolve_checkpoint(directory)
        meta = read_meta(os.path.join(directory, "h2mt.json"), FORMAT, "an H2MT checkpoint")
        lm = checkpoint_backbone(meta["backbone"], lm, meta["hidden_size"],
                                 os.path.join(directory, "h2mt.json"), allow_hub)
        where = os.path.join(directory, "h2mt.safetensors")
        tree = jax.tree.map(jnp.asarray, load_tree(where))
        cfg = H2MTConfig.from_dict(meta["config"])
        params = tree["params"]
        check_lora(tree.get("lora"), lm.params, where)
        check_lora(params.get("enc_lora"), lm.params, where)
        want = (cfg.mem_tokens, lm.config.hidden_size)
        if tuple(params["leaf_write"].shape) != want:
            raise ValueError(f"{where}: params/leaf_write has shape "
                             f"{tuple(params['leaf_write'].shape)}, the config and backbone make "
                             f"{want}")
        if cfg.mem_layer >= 1 and tuple(np.shape(params.get("inject"))) != (want[1], want[1]):
            raise ValueError(f"{where}: the config reads memories at block mem_layer="
                             f"{cfg.mem_layer}, which needs params/inject of shape "
                             f"{(want[1], want[1])}; the file has "
                             f"{np.shape(params.get('inject')) if 'inject' in params else 'none'}")
        if cfg.enc_lora_rank and "enc_lora" not in params:
            raise ValueError(f"{where}: the config has enc_lora_rank={cfg.enc_lora_rank} but the "
                             "file holds no params/enc_lora")
        gate = tree.get("hop_gate")
        if gate is not None:
            gate = check_gate({k: np.asarray(v) for k, v in gate.items()}, where)
        elif cfg.hop_gate > 0 and cfg.hop_gate_score == "learned":
            raise ValueError(f"{where}: the config routes with a learned hop gate "
                             "(hop_gate_score='learned') but the file holds no hop_gate")
        return cls(lm, cfg, params, tree.get("lora"), meta.get("lora_scale", 1.0), gate)
