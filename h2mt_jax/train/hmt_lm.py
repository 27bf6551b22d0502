"""Task `hmt_lm`: HMT memory pretraining with the language-modelling objective (WikiText).

The loss is `h2mt_jax.hmt.loss.window_loss` on windows of `train.bptt_depth` segments; the
trainer (`h2mt_jax.train.trainer.train_and_evaluate`) runs it like every other task.
"""

from __future__ import annotations

import dataclasses
import os
import time

import grain
import jax.numpy as jnp
import numpy as np

from h2mt_jax.data.items import HUB_HINT, hub_names
from h2mt_jax.data.records import DataError
from h2mt_jax.errors import ConfigError
from h2mt_jax.hmt import HMT, HMTConfig
from h2mt_jax.hmt.loss import window_loss, window_segments
from h2mt_jax.lm import backbone_from_config
from h2mt_jax.train.trainable import init_trainable, lora_scale


class HMTLMTask:
    """HMT language-model training on a text file (the HMT objective; `config.hmt.stage`).

    `config.checkpoint` starts from a saved HMT: its memory parameters, segment sizes and
    adapters, with the stage of `config.hmt.stage` (a stage-1 run continued as stage 2 is the
    reference's two-stage schedule). `tokens`: token ids to train and evaluate on instead of the
    text of `config.data` (tests, benchmarks); the last `min(data.eval_tokens, len/5)` of them
    are held out for evaluation."""

    name = "hmt_lm"

    def __init__(self, config, lm=None, progress: bool = True, tokens=None):
        self.config, self.progress = config, progress
        self.lm = lm or backbone_from_config(config)
        self.hcfg = HMTConfig.from_config(config.hmt)
        if config.checkpoint:
            self.hmt = self._from_checkpoint(config)
        else:
            self.hmt = HMT.create(self.lm, self.hcfg, seed=config.seed)
        self.hcfg = self.hmt.config
        if tokens is None:
            tokens = self._read_text(config.data)
        ids = np.asarray(tokens, np.int32)
        held = min(config.data.eval_tokens, len(ids) // 5)
        self.train_ids, self.eval_ids = ids[:len(ids) - held], ids[len(ids) - held:]

    def _from_checkpoint(self, config) -> HMT:
        """The checkpoint's HMT with the config's stage. Continuing a stage-1 checkpoint as
        stage 2 re-initialises the recall parameters when they are all zero (a stage-1 reference
        checkpoint converted by `load_hmt_pytorch` has none; with W_q = W_k = 0 their gradients
        vanish and recall would stay a uniform average). Adapters need `train.trainable =
        memory+lora` with the checkpoint's rank and scale (they are trained on, not dropped)."""
        hmt = HMT.load(config.checkpoint, self.lm)
        t = config.train
        if hmt.config.stage == 1 and self.hcfg.stage == 2 and all(
                not np.any(np.asarray(hmt.params[k])) for k in ("w_q", "w_k")):
            fresh = HMT.create(self.lm, hmt.config, seed=config.seed).params
            hmt.params = {**hmt.params, **{k: fresh[k] for k in ("summary", "w_q", "w_k")}}
        hmt.config = dataclasses.replace(hmt.config, stage=self.hcfg.stage)
        if hmt.lora is not None:
            rank = int(np.shape(next(iter(hmt.lora.values()))["a"])[-1])
            if t.trainable != "memory+lora":
                raise ConfigError(f"{config.checkpoint} carries LoRA adapters: continue it with "
                                  f"train.trainable=memory+lora (got {t.trainable!r})")
            if rank != t.lora_rank or abs(hmt.lora_scale - lora_scale(t)) > 1e-6:
                raise ConfigError(
                    f"{config.checkpoint} has LoRA rank {rank}, scale {hmt.lora_scale:g}; the "
                    f"config asks for rank {t.lora_rank}, scale {lora_scale(t):g} "
                    f"(train.lora_rank, train.lora_alpha)")
        return hmt

    def _read_text(self, data) -> np.ndarray:
        from h2mt_jax.data.wikitext import load_wikitext

        if data.path and not os.path.exists(os.path.expanduser(data.path)):
            raise DataError(f"{data.path}: no such file; " + HUB_HINT.format(what="WikiText"))
        text = load_wikitext(data.path or hub_names(data)[1])
        return np.asarray(self.lm.tokenizer(text)["input_ids"], np.int32)

    def dataset(self) -> grain.MapDataset:
        t = self.config.train
        l = self.hcfg.tokens_per_segment
        window = t.bptt_depth * l + 1
        if len(self.train_ids) < window:
            raise ValueError(f"the training text has {len(self.train_ids)} tokens, fewer than one "
                             f"window of {window} (bptt_depth x tokens per segment + 1)")
        starts = np.arange(0, len(self.train_ids) - window + 1, l)
        ids = self.train_ids

        def make(s):
            seg, tgt, lens = window_segments(ids[None, s:s + window], l)
            return {"ids": seg[:, 0], "targets": tgt[:, 0], "lengths": lens}

        return (grain.MapDataset.source(starts).shuffle(seed=self.config.seed).repeat(None)
                .map(make).batch(t.batch_size, drop_remainder=True))

    def init(self, key) -> dict:
        return init_trainable({"hmt": self.hmt.params}, self.lm, self.config.train, key,
                              lora=self.hmt.lora)

    def frozen(self):
        return {} if self.config.train.trainable == "all" else self.lm.params

    def loss(self, trainable, frozen, batch):
        t = self.config.train
        tr = {"hmt": trainable["hmt"], "lora": trainable.get("lora")}
        if "backbone" in trainable:
            frozen = trainable["backbone"]
        ids = jnp.swapaxes(batch["ids"], 0, 1)  # [D, B, L]
        tgt = jnp.swapaxes(batch["targets"], 0, 1)
        loss = window_loss(tr, self.lm.graphdef, frozen, ids, tgt, batch["lengths"][0],
                           cfg=self.hcfg, lora_scale=lora_scale(t), loss_segments=1,
                           remat=t.get("remat", False), logit_chunk=t.get("logit_chunk", 0))
        return loss, {"ppl": jnp.exp(loss)}

    def model(self, trainable) -> HMT:
        lm = self.lm
        if "backbone" in trainable:
            lm = self.lm.with_params(trainable["backbone"])
        return HMT(lm, self.hcfg, trainable["hmt"], trainable.get("lora"),
                   lora_scale(self.config.train))

    def export(self, trainable, directory) -> None:
        self.model(trainable).save(directory)

    def evaluate(self, trainable, items=None, route=None) -> dict:
        start = time.perf_counter()
        res = self.model(trainable).perplexity(self.eval_ids[None])
        return {"ppl": res["ppl"], "tokens": res["tokens"], "seconds": time.perf_counter() - start}
