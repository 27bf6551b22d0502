"""`HMT`: a backbone LM plus the HMT memory parameters, with jitted inference entry points.

    hmt = HMT.create(h2mt_jax.load_lm("smollm2-135m-instruct"), HMTConfig(segment_length=256))
    hmt.logits(ids)                 # [B, T, V]: logits for every real token
    hmt.memories(ids)               # [B, n_segments, d]
    hmt.perplexity(ids)             # streams any length through fixed-size chunks of segments
    hmt.save("ckpt/"); HMT.load("ckpt/")
"""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from h2mt_jax.backbone.lora import merge_lora
from h2mt_jax.hmt.cell import (HMTParams, HMTState, init_params, recall, run_segments,
                               split_segments, summary_pass)
from h2mt_jax.hmt.checkpoint import check_backbone, load_hmt_state, save_hmt
from h2mt_jax.hmt.config import HMTConfig
from h2mt_jax.hmt.loss import token_nll
from h2mt_jax.lm import LM, checkpoint_backbone

STREAM_CHUNK = 16  # segments per compiled streaming call


def _model(graphdef, bparams, lora, lora_scale):
    return nnx.merge(graphdef, merge_lora(bparams, lora, lora_scale))


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg", "lora_scale"))
def _segment_logits(graphdef, bparams, hparams, lora, ids, lengths, *, cfg, lora_scale):
    model = _model(graphdef, bparams, lora, lora_scale)
    _, logits = run_segments(model, hparams, cfg, ids, lengths, lambda h, st, e: model.logits(h))
    return logits  # [s, b, l, v]


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg", "lora_scale"))
def _segment_memories(graphdef, bparams, hparams, lora, ids, lengths, *, cfg, lora_scale):
    model = _model(graphdef, bparams, lora, lora_scale)
    _, mems = run_segments(model, hparams, cfg, ids, lengths, lambda h, st, e: st.memory)
    return mems  # [s, b, d]


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg", "lora_scale"))
def _stream_chunk(graphdef, bparams, hparams, lora, state, ids, lengths, targets, *, cfg,
                  lora_scale):
    """NLL sums over a chunk of segments; `state=None` starts the document."""
    model = _model(graphdef, bparams, lora, lora_scale)
    state, (nll, count) = run_segments(
        model, hparams, cfg, ids, lengths, lambda h, st, tgt: token_nll(model.logits(h), tgt),
        targets, state=state)
    return state, jnp.sum(nll), jnp.sum(count)


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg", "lora_scale"))
def _stream_state(graphdef, bparams, hparams, lora, state, ids, lengths, *, cfg, lora_scale):
    """Reads a chunk of segments and returns only the state (no logits)."""
    model = _model(graphdef, bparams, lora, lora_scale)
    state, _ = run_segments(model, hparams, cfg, ids, lengths, lambda h, st, e: (), state=state)
    return state


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg", "lora_scale"))
def _prompt_memory(graphdef, bparams, hparams, lora, state, ids, n, *, cfg, lora_scale):
    """The memory token for a final segment (the prompt): recall (stage 2) or the last memory."""
    if cfg.stage == 1:
        return state.memory
    model = _model(graphdef, bparams, lora, lora_scale)
    q = summary_pass(model, hparams, cfg, model.embed(ids), n)
    return recall(hparams, cfg, q, state.cache, state.count)


class HMT:
    """HMT over a backbone: `lm`, `config`, memory `params`, optional backbone `lora` adapters."""

    def __init__(self, lm: LM, config: HMTConfig, params: HMTParams, lora=None,
                 lora_scale: float = 1.0):
        self.lm, self.config, self.params = lm, config, params
        self.lora, self.lora_scale = lora, float(lora_scale)
        d = lm.config.hidden_size
        expect = {"memory": (1, d), "summary": (1, d), "w_q": (d, config.recall_dim),
                  "w_k": (d, config.recall_dim)}
        got = {k: tuple(np.shape(v)) for k, v in params.items()}
        if got != expect:
            raise ValueError(f"HMT parameters {got} do not match the backbone and config: "
                             f"expected {expect}")

    @classmethod
    def create(cls, lm: LM, config: HMTConfig = HMTConfig(), seed: int = 0) -> "HMT":
        """Fresh memory parameters for `lm` (the reference's initialisation)."""
        std = float(jnp.std(lm.params["embedding"].value))
        return cls(lm, config, init_params(lm.config.hidden_size, std, config,
                                           jax.random.PRNGKey(seed)))

    def _args(self):
        return dict(graphdef=self.lm.graphdef, bparams=self.lm.params, hparams=self.params,
                    lora=self.lora)

    def _segments(self, input_ids, num_segments=None):
        ids = self.lm.check_ids(input_ids)
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"input_ids must be a non-empty [batch, time] array, got {ids.shape}")
        return split_segments(ids, self.config.tokens_per_segment, num_segments)

    def logits(self, input_ids) -> jnp.ndarray:
        """Logits for every real token: int `[B, T]` -> float32 `[B, T, V]` (position t predicts
        token t+1). A sequence shorter than one segment is one partial segment."""
        seg, _, lengths = self._segments(input_ids)
        out = _segment_logits(**self._args(), ids=jnp.asarray(seg), lengths=jnp.asarray(lengths),
                              cfg=self.config, lora_scale=self.lora_scale)
        s, b, l, v = out.shape
        t = np.shape(input_ids)[1]
        return out.transpose(1, 0, 2, 3).reshape(b, s * l, v)[:, :t]

    def memories(self, input_ids) -> jnp.ndarray:
        """The memory embedding of every segment: `[B, n_segments, d]`."""
        seg, _, lengths = self._segments(input_ids)
        out = _segment_memories(**self._args(), ids=jnp.asarray(seg),
                                lengths=jnp.asarray(lengths), cfg=self.config,
                                lora_scale=self.lora_scale)
        return out.transpose(1, 0, 2)

    def perplexity(self, input_ids, chunk: int = STREAM_CHUNK, progress: bool = False
                   ) -> dict:
        """exp(mean next-token loss) over a document of any length, streamed `chunk` segments
        per compiled call: memory stays constant in the length, one program serves all lengths.
        Returns {"ppl", "nll", "tokens", "seconds"}."""
        from tqdm.auto import tqdm

        ids = self.lm.check_ids(input_ids)
        if ids.ndim == 1:
            ids = ids[None]
        t = ids.shape[1]
        if t < 2:
            raise ValueError("perplexity needs at least 2 tokens")
        l = self.config.tokens_per_segment
        n_seg = -(-t // l)
        # The first call reads segment 0 (peeled) plus `chunk` more; later calls `chunk` each.
        n_chunks = max(1, math.ceil((n_seg - 1) / chunk))
        seg, tgt, lengths = split_segments(ids, l, 1 + n_chunks * chunk)
        bounds = [(0, 1 + chunk)] + [(1 + i * chunk, 1 + (i + 1) * chunk)
                                     for i in range(1, n_chunks)]
        state, nll, count = None, 0.0, 0
        start = time.perf_counter()
        for a, b in tqdm(bounds, desc="HMT perplexity", unit="chunk", disable=not progress):
            state, s, c = _stream_chunk(**self._args(), state=state, ids=jnp.asarray(seg[a:b]),
                                        lengths=jnp.asarray(lengths[a:b]),
                                        targets=jnp.asarray(tgt[a:b]), cfg=self.config,
                                        lora_scale=self.lora_scale)
            nll += float(s)
            count += int(c)
        mean = nll / max(count, 1)
        return {"ppl": math.exp(mean), "nll": mean, "tokens": count,
                "seconds": time.perf_counter() - start}

    def read(self, input_ids, chunk: int = STREAM_CHUNK) -> HMTState:
        """Streams a document `[T]` or `[1, T]` through the memory; returns the final state."""
        ids = self.lm.check_ids(input_ids)
        ids = ids[None] if ids.ndim == 1 else ids
        l = self.config.tokens_per_segment
        n_seg = -(-ids.shape[1] // l)
        n_chunks = max(1, math.ceil((n_seg - 1) / chunk))
        seg, _, lengths = split_segments(ids, l, 1 + n_chunks * chunk)
        state = None
        bounds = [(0, 1 + chunk)] + [(1 + i * chunk, 1 + (i + 1) * chunk)
                                     for i in range(1, n_chunks)]
        for a, b in bounds:
            if a > 0 and lengths[a] == 0:
                break
            state = _stream_state(**self._args(), state=state, ids=jnp.asarray(seg[a:b]),
                                  lengths=jnp.asarray(lengths[a:b]), cfg=self.config,
                                  lora_scale=self.lora_scale)
        return state

    def generate(self, document_ids, prompt_ids: list[int], max_new_tokens: int = 32,
                 state: HMTState | None = None):
        """Reads the document (or starts from a cached `state`), then generates from the prompt
        with its memory token in front (the reference's generation: memory prepended only).
        Returns (Generation, {"read_s": seconds spent reading the document})."""
        start = time.perf_counter()
        if state is None:
            state = self.read(document_ids)
            jax.block_until_ready(state)
        read_s = time.perf_counter() - start
        lq = self.config.query_tokens
        q = np.zeros((1, lq), np.int32)
        q[0, :min(lq, len(prompt_ids))] = prompt_ids[:lq]
        mem = _prompt_memory(**self._args(), state=state, ids=jnp.asarray(q),
                             n=jnp.int32(min(lq, len(prompt_ids))), cfg=self.config,
                             lora_scale=self.lora_scale)
        lm = self.merged_lm
        emb = lm.model.embed(jnp.asarray([prompt_ids], jnp.int32))
        embeds = jnp.concatenate([mem[:, None].astype(emb.dtype), emb], axis=1)
        gen = lm.generate_ids(embeds=embeds, max_new_tokens=max_new_tokens)
        return gen, {"read_s": read_s}

    @property
    def merged_lm(self) -> LM:
        """The backbone with the LoRA adapters merged in (the backbone itself without them)."""
        if not self.lora:
            return self.lm
        if getattr(self, "_merged", None) is None:
            self._merged = self.lm.with_lora(self.lora, self.lora_scale)
        return self._merged

    # -- checkpoints ---------------------------------------------------------------------------
    def save(self, directory) -> None:
        """Writes `hmt.safetensors` + `hmt.json` to `directory` (the backbone by name)."""
        save_hmt(self, directory)

    @classmethod
    def load(cls, directory, lm: LM | None = None, allow_hub: bool = False) -> "HMT":
        """An HMT saved by `save`. The backbone: `lm` (its hidden size must match the
        checkpoint's), else the saved name when it is an offline registry name
        (`lm.checkpoint_backbone`: metadata never opens paths or fetches)."""
        config, tree, meta = load_hmt_state(directory)
        if lm is None:
            lm = checkpoint_backbone(meta["backbone"], None, meta["backbone_hidden_size"],
                                     directory, allow_hub)
        check_backbone(meta, lm.config.hidden_size)
        tree = jax.tree.map(jnp.asarray, tree)
        return cls(lm, config, tree["params"], tree.get("lora"), meta.get("lora_scale", 1.0))
