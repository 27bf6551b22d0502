"""`LM`: a backbone with its tokenizer, the object the public API hands out.

    lm = h2mt_jax.load_lm("smollm2-135m-instruct")
    lm.generate(["What is the capital of France?"], max_new_tokens=16)
    lm.logits(np.array([[1, 2, 3]]))          # [1, 3, vocab] float32
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from h2mt_jax.backbone.config import BackboneConfig
from h2mt_jax.backbone.model import Llama
from h2mt_jax.shapes import bucket
from h2mt_jax.generation.generate import Generation, generate, pad_ids
from h2mt_jax.generation.kv_prompt import generate_with_segment
from h2mt_jax.generation.sampling import Sampling
from h2mt_jax.typing import Array, Float, Int

DTYPES = {"float32": jnp.float32, "fp32": jnp.float32, "bfloat16": jnp.bfloat16,
          "bf16": jnp.bfloat16}


def parse_dtype(dtype) -> jnp.dtype:
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not supported; use one of {sorted(DTYPES)}")
        return DTYPES[dtype]
    return jnp.dtype(dtype).type


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _all_logits(graphdef, params, ids: Int[Array, "b t"]) -> Float[Array, "b t v"]:
    model = nnx.merge(graphdef, params)
    hidden, _ = model(model.embed(ids))
    return model.logits(hidden)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _hidden(graphdef, params, embeds: Float[Array, "b t d"]) -> Float[Array, "b t d"]:
    model = nnx.merge(graphdef, params)
    return model(embeds)[0]


class LM:
    """A loaded backbone: `config`, `params` (an nnx.State pytree), `graphdef`, `tokenizer`."""

    def __init__(self, model: Llama, tokenizer=None, name: str = ""):
        self.graphdef, self.params = nnx.split(model)
        self.config: BackboneConfig = model.cfg
        self.tokenizer = tokenizer
        self.name = name
        self.revision: str | None = None  # the hub commit of the weights, when downloaded
        # prompt-prefix caching (`generation.prefix`): False runs every prompt whole
        self.reuse_prefixes = True
        self._prefixes = None

    def __repr__(self) -> str:
        c = self.config
        return (f"LM({self.name!r}, {c.model_type}, layers={c.num_layers}, d={c.hidden_size}, "
                f"heads={c.num_heads}/{c.num_kv_heads}, vocab={c.vocab_size}, dtype={self.dtype.__name__})")

    @property
    def model(self) -> Llama:
        """The NNX module (a fresh view over `params`)."""
        return nnx.merge(self.graphdef, self.params)

    @property
    def dtype(self):
        return jnp.dtype(self.params["embedding"].value.dtype).type

    def with_params(self, params) -> "LM":
        """The same architecture and tokenizer over other parameters."""
        return LM(nnx.merge(self.graphdef, params), self.tokenizer, self.name)

    def with_lora(self, lora, scale: float) -> "LM":
        """This backbone with LoRA adapters merged into its weights (`self` when there are none)."""
        if not lora:
            return self
        from h2mt_jax.backbone.lora import merge_lora

        return self.with_params(merge_lora(self.params, lora, scale))

    @property
    def prefix_cache(self):
        """The `generation.prefix.PrefixCache` of these weights (`None` when `reuse_prefixes` is
        off); emptied whenever `params` is replaced."""
        if not self.reuse_prefixes:
            return None
        from h2mt_jax.generation.prefix import PrefixCache

        if self._prefixes is None or self._prefixes.params is not self.params:
            self._prefixes = PrefixCache(self.params)
        return self._prefixes

    # -- ids ------------------------------------------------------------------------------------
    def check_ids(self, ids) -> np.ndarray:
        """Validates token ids (integer, inside the vocabulary, within the model's positions)."""
        arr = np.asarray(ids)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"token ids must be integers, got dtype {arr.dtype}")
        bad = np.argwhere((arr < 0) | (arr >= self.config.vocab_size))
        if bad.size:
            pos = tuple(int(i) for i in bad[0])
            raise ValueError(f"token id {int(arr[pos])} at position {pos} is outside the vocabulary "
                             f"[0, {self.config.vocab_size})")
        return arr.astype(np.int32)

    @property
    def pad_id(self) -> int:
        c = self.config
        if c.pad_token_id is not None:
            return int(c.pad_token_id)
        return int(c.eos_token_ids[0]) if c.eos_token_ids else 0

    @property
    def eos_ids(self) -> tuple[int, ...]:
        ids = set(self.config.eos_token_ids)
        tok = self.tokenizer
        if tok is not None and tok.eos_token_id is not None:
            ids.add(int(tok.eos_token_id))
        return tuple(sorted(ids))

    def logits(self, input_ids) -> jnp.ndarray:
        """Next-token logits at every position: int `[B, T]` -> float32 `[B, T, V]`."""
        ids = self.check_ids(input_ids)
        if ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, time], got shape {ids.shape}")
        b, t = ids.shape
        if t == 0:
            raise ValueError("input_ids is empty")
        if t > self.config.max_position_embeddings:
            raise ValueError(f"{t} tokens exceed the model's {self.config.max_position_embeddings} "
                             "positions")
        padded = pad_ids(list(ids), self.pad_id, min(bucket(t), max(t, self.config.max_position_embeddings)))
        return _all_logits(self.graphdef, self.params, jnp.asarray(padded))[:, :t]

    def hidden_states(self, embeds: Float[Array, "b t d"]) -> Float[Array, "b t d"]:
        """Final-norm hidden states for input embeddings (no padding is added)."""
        return _hidden(self.graphdef, self.params, jnp.asarray(embeds))

    # -- text -----------------------------------------------------------------------------------
    def encode(self, prompts: list[str], chat: bool = True) -> list[list[int]]:
        """Token ids per prompt; `chat` applies the tokenizer's chat template as a user turn."""
        if self.tokenizer is None:
            raise ValueError("this LM has no tokenizer; pass token ids instead")
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, not a single string")
        out = []
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise TypeError(f"prompt {i} is {type(p).__name__}, expected str")
            if not p.strip():
                raise ValueError(f"prompt {i} is empty")
            if chat:
                if not getattr(self.tokenizer, "chat_template", None):
                    raise ValueError("the tokenizer has no chat template; use chat=False")
                text = self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                out.append(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            else:
                out.append(self.tokenizer(p)["input_ids"])
        return out

    def generate_ids(self, ids: list[list[int]] | None = None, *, embeds=None, lengths=None,
                     max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
                     seed: int = 0, prefix: list[int] | None = None,
                     inject: tuple | None = None) -> Generation:
        """Generation from token ids or input embeddings, with timings (see `Generation`).

        `prefix` (one prompt): token ids the prompt starts with, before `ids` / `embeds`, shared
        with other prompts (a template's opening): their keys and values are computed once and
        kept (`prefix_cache`), so each prompt prefills only the rest. The output is that of the
        whole prompt; with `reuse_prefixes` off the whole prompt is run. `inject` (with
        `embeds`): (block, mask `[B, T]`, states `[B, T, d]`) aligned with `embeds`
        (`generation.generate.generate`)."""
        if ids is not None:
            ids = [list(self.check_ids(r)) for r in ids]
        if prefix is not None and len(prefix):
            prefix = list(self.check_ids(prefix))
            if self.prefix_cache is None:  # run the whole prompt
                if ids is not None:
                    ids = [prefix + r for r in ids]
                else:
                    emb = np.asarray(self.params["embedding"].value)[prefix]
                    embeds = np.concatenate([np.broadcast_to(emb, (len(embeds),) + emb.shape),
                                             np.asarray(embeds)], axis=1)
                    lengths = None if lengths is None else [len(prefix) + n for n in lengths]
                    if inject is not None:  # its rows follow the prefix now
                        layer, mask, states = inject
                        p = len(prefix)
                        inject = (layer, np.pad(np.asarray(mask, bool), ((0, 0), (p, 0))),
                                  np.pad(np.asarray(states, np.float32),
                                         ((0, 0), (p, 0), (0, 0))))
                prefix = None
        else:
            prefix = None
        return generate(self.graphdef, self.params, max_positions=self.config.max_position_embeddings,
                        eos_ids=self.eos_ids, pad_id=self.pad_id, max_new_tokens=max_new_tokens,
                        sampling=Sampling(temperature, top_p), seed=seed, ids=ids, embeds=embeds,
                        lengths=lengths, prefix=prefix, prefix_cache=self.prefix_cache,
                        inject=inject)

    def generate_with_segment(self, pre: list[int], seg_k: np.ndarray, seg_v: np.ndarray,
                              post: list[int], max_new_tokens: int = 64) -> Generation:
        """Greedy generation from `[pre ‖ cached segment ‖ post]`, the segment given as pre-RoPE
        keys and values `[layers, L, kv_heads, head_dim]` (`generation.kv_prompt`); `pre`'s
        keys and values are kept in `prefix_cache` when `reuse_prefixes` is on."""
        c = self.config
        want = (c.num_layers, c.num_kv_heads, c.head_dim)
        got = (seg_k.shape[0],) + tuple(seg_k.shape[2:])
        if got != want:
            raise ValueError(f"cached keys/values of shape (layers, kv_heads, head_dim) = {got} "
                             f"do not fit this backbone's {want} ({self.name!r})")
        return generate_with_segment(
            self.graphdef, self.params, pre=list(self.check_ids(pre)), seg_k=seg_k, seg_v=seg_v,
            post=list(self.check_ids(post)), max_positions=c.max_position_embeddings,
            eos_ids=self.eos_ids, pad_id=self.pad_id, max_new_tokens=max_new_tokens,
            prefix_cache=self.prefix_cache)

    def generate(self, prompts: list[str], max_new_tokens: int = 64, chat: bool = True,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> list[str]:
        """Completions for a batch of prompts (greedy unless `temperature > 0`)."""
        if not prompts:
            return []
        gen = self.generate_ids(self.encode(prompts, chat), max_new_tokens=max_new_tokens,
                                temperature=temperature, top_p=top_p, seed=seed)
        return [self.tokenizer.decode(t, skip_special_tokens=True) for t in gen.tokens]


# Names of tiny random backbones that borrow a real tokenizer (configs' `:tiny` variants).
TINY_RANDOM = {
    "tiny-random-smollm2": (dict(vocab_size=49152, hidden_size=64, intermediate_size=128,
                                 num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                                 max_position_embeddings=8192, eos_token_ids=(2,),
                                 pad_token_id=2, bos_token_id=1), "smollm2-135m-instruct"),
}


def random_lm(seed: int = 0, dtype="float32", **overrides) -> LM:
    """A randomly initialised backbone without tokenizer (tests, benchmarks on tiny configs).

    Defaults: a 2-layer, d=64 Llama with grouped-query attention; `overrides` sets any
    `BackboneConfig` field."""
    fields = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=4096,
                  eos_token_ids=(2,), pad_token_id=0)
    cfg = BackboneConfig(**{**fields, **overrides})
    return LM(Llama(cfg, dtype=parse_dtype(dtype), rngs=nnx.Rngs(seed)), None, name="random")


def load_lm(name_or_path: str | os.PathLike = "smollm2-135m-instruct", dtype="float32",
            tokenizer: bool = True, revision: str | None = None) -> LM:
    """Loads a backbone by registry name, local path (HF directory or .gguf) or hub id.

    `dtype` is "float32" or "bfloat16" (parameters and activations; softmax and norms run in
    float32). GGUF conversions and tokenizers are cached on disk (see `weights.cache`). Hub
    downloads are made at `revision` (default: the registry's pinned commit, else "main");
    `lm.revision` is the commit downloaded (None for local weights).
    """
    from h2mt_jax.weights import build_model, load_tokenizer, load_weights, resolve

    dtype = parse_dtype(dtype)
    if name_or_path in TINY_RANDOM:  # tiny random weights, the real tokenizer: quick CPU runs
        fields, tokenizer_of = TINY_RANDOM[name_or_path]
        lm = random_lm(seed=0, dtype=dtype, **fields)
        lm.tokenizer = load_tokenizer(resolve(tokenizer_of)) if tokenizer else None
        lm.name = name_or_path
        return lm
    source = resolve(name_or_path, revision=revision)
    cfg, flat = load_weights(source)
    model = build_model(cfg, flat, dtype)
    lm = LM(model, load_tokenizer(source) if tokenizer else None, name=source.name)
    lm.revision = source.revision
    return lm


def backbone_from_config(config) -> LM:
    """The backbone a config file names (`config.backbone`), in `config.dtype`, or bfloat16 when
    `config.train.bf16` is set: what train.py and evaluate.py both load."""
    dtype = "bfloat16" if config.get("train", {}).get("bf16", False) else config.get(
        "dtype", "float32")
    return load_lm(config.backbone, dtype=dtype)


def checkpoint_backbone(recorded: str, lm: LM | None, hidden_size: int, where: str,
                        allow_hub: bool = False) -> LM:
    """The backbone to load a checkpoint or index with, never chosen by its metadata alone.

    `recorded` is the backbone name the metadata at `where` names. With `lm` given, it must be
    that backbone (same name, or the same width when the names differ in form, such as a path and
    a registry name): a mismatch is an error naming both. Without `lm`, only a registry name or
    tiny variant that resolves offline is loaded; a path or hub id in metadata is never opened or
    fetched unless `allow_hub=True` (hub ids only)."""
    from h2mt_jax.weights.registry import KNOWN_MODELS, wheel_gguf

    if lm is not None:
        if lm.config.hidden_size != hidden_size:
            raise ValueError(f"{where} was made with backbone {recorded!r} (d={hidden_size}); the "
                             f"backbone passed is {lm.name!r} (d={lm.config.hidden_size})")
        return lm
    known = KNOWN_MODELS.get(str(recorded).lower())
    if recorded in TINY_RANDOM or (known is not None and wheel_gguf(known) is not None):
        return load_lm(recorded)
    is_hub_id = str(recorded).count("/") == 1 and not str(recorded).startswith((".", "/", "~"))
    if allow_hub and (is_hub_id or known is not None):
        return load_lm(recorded)
    raise ValueError(f"{where} names backbone {recorded!r}, which is not an offline registry "
                     "name: pass the backbone yourself (lm=h2mt_jax.load_lm(...)), or "
                     "allow_hub=True to fetch a hub id; a checkpoint's metadata never chooses "
                     "files to open")
