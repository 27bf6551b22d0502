"""Training tasks: what is trained, on which batches, with which loss, and how it is evaluated.

- `H2MTQATask`: question answering through routed memory tokens (synthetic, HotpotQA, LongBench).
- `HMTLMTask`: HMT memory pretraining with the language-modelling objective (WikiText).
Both give the trainer: initial trainable parameters, frozen backbone parameters, a grain
`MapDataset` of padded batches (deterministic, resumable), a pure loss, an evaluation and an
export of the trained model.
"""

from __future__ import annotations

import os
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

import h2mt_jax
from h2mt_jax.backbone.lora import init_lora
from h2mt_jax.data import prompts
from h2mt_jax.data.records import DataError
from h2mt_jax.eval.metrics import DATASET_METRIC, leaf_recall, qa_f1_score, rouge_l_score
from h2mt_jax.hierarchy.build import BuildConfig
from h2mt_jax.hierarchy.config import H2MTConfig
from h2mt_jax.hierarchy.h2mt import H2MT
from h2mt_jax.train import h2mt_task
from h2mt_jax.train.data import HUB_HINT, hub_names


def h2mt_config(c) -> H2MTConfig:
    return H2MTConfig(build=BuildConfig(leaf_tokens=c.leaf_tokens, fanout=c.fanout,
                                        title_tokens=c.title_tokens,
                                        title_position=c.get("title_position", "prefix")),
                      mem_tokens=c.mem_tokens, recall_dim=c.recall_dim, leaf_mode=c.leaf_mode,
                      aggregator=c.aggregator, route=c.route, k=c.k, ancestors=c.ancestors,
                      leaf_batch=c.leaf_batch)


def load_backbone(config):
    dtype = "bfloat16" if config.train.get("bf16", False) else config.dtype
    return h2mt_jax.load_lm(config.backbone, dtype=dtype)


def _lora_scale(t) -> float:
    return t.lora_alpha / max(t.lora_rank, 1)


def init_trainable(params_tree: dict, lm, t, key) -> dict:
    """The trainable pytree: {"h2mt"|"hmt": ..., "lora"?: ..., "backbone"?: ...}."""
    if t.trainable not in ("memory", "memory+lora", "all"):
        raise ValueError(f"train.trainable must be memory, memory+lora or all, got {t.trainable!r}")
    out = jax.tree.map(jnp.copy, dict(params_tree))  # copies: the train state is donated
    if t.trainable == "memory+lora":
        out["lora"] = init_lora(lm.params, t.lora_rank, key)
    if t.trainable == "all":  # a copy: the train state is donated to each step
        out["backbone"] = jax.tree.map(jnp.copy, lm.params)
    return out


class H2MTQATask:
    name = "h2mt_qa"

    def __init__(self, config, lm=None, progress: bool = True):
        from h2mt_jax.train.data import load_items

        self.config, self.progress = config, progress
        self.lm = lm or load_backbone(config)
        self.cfg = h2mt_config(config.h2mt)
        if config.checkpoint:
            self.h2mt = H2MT.load(config.checkpoint, self.lm)
            self.cfg = self.h2mt.config
        else:
            self.h2mt = H2MT.create(self.lm, self.cfg, seed=config.seed)
        self.train_items, self.eval_items = load_items(config.data, config.seed)
        if not self.train_items:
            raise ValueError("no training items: check config.data")
        self.templates = {}

    def template(self, dataset: str) -> str:
        if dataset not in self.templates:
            extra = [self.config.data.prompt_dir] if self.config.data.prompt_dir else []
            self.templates[dataset] = prompts.template_for(dataset, *extra)
        return self.templates[dataset]

    # -- data ------------------------------------------------------------------------------------
    def _examples(self, items) -> list[dict]:
        tok = self.lm.tokenizer
        eos = self.lm.eos_ids[0] if self.lm.eos_ids else tok.eos_token_id
        indexes, out, skipped = {}, [], 0
        for it in tqdm(items, desc="building training indexes", disable=not self.progress):
            if it.doc_id not in indexes:
                indexes[it.doc_id] = self.h2mt.build(it.context, fmt=it.fmt, outline=it.outline)
            idx = indexes[it.doc_id]
            gold = idx.leaves_for_spans(it.gold_spans or [])
            ex = h2mt_task.example_arrays(idx, it.question, it.answers[0], gold, tok,
                                          self.template(it.dataset), self.cfg, eos)
            if ex is None:
                skipped += 1
            else:
                out.append(ex)
        if not out:
            raise ValueError(f"none of the {len(items)} training items has gold evidence and at "
                             f"least k={self.cfg.k} leaves")
        self.skipped = skipped
        return out

    def dataset(self) -> grain.MapDataset:
        t = self.config.train
        raw = self._examples(self.train_items)
        self.shapes = h2mt_task.shapes_for(raw, self.cfg)
        examples = [h2mt_task.pad_example(e, self.shapes) for e in raw]
        return (grain.MapDataset.source(examples).shuffle(seed=self.config.seed).repeat(None)
                .batch(t.batch_size, drop_remainder=True))

    # -- model ------------------------------------------------------------------------------------
    def init(self, key) -> dict:
        tr = init_trainable({"h2mt": self.h2mt.params}, self.lm, self.config.train, key)
        if self.h2mt.lora is not None and "lora" in tr:
            tr["lora"] = jax.tree.map(jnp.copy, self.h2mt.lora)
        return tr

    def frozen(self):
        return {} if self.config.train.trainable == "all" else self.lm.params

    def loss(self, trainable, frozen, batch):
        t = self.config.train
        return h2mt_task.batch_loss(trainable, frozen, self.lm.graphdef, batch, cfg=self.cfg,
                                    route_weight=t.route_weight, lora_scale=_lora_scale(t),
                                    encode=t.encode)

    def model(self, trainable) -> H2MT:
        lm = self.lm
        if "backbone" in trainable:
            from flax import nnx

            lm = h2mt_jax.LM(nnx.merge(self.lm.graphdef, trainable["backbone"]),
                             self.lm.tokenizer, self.lm.name)
        return H2MT(lm, self.cfg, trainable["h2mt"], trainable.get("lora"),
                    _lora_scale(self.config.train))

    def export(self, trainable, directory) -> None:
        self.model(trainable).save(directory)

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate(self, trainable, items=None, route: str | None = None) -> dict:
        """Answer F1 / ROUGE-L and routing recall on the held-out items.

        Recall is also split by the number of gold leaves (`..._one_gold`: single-evidence
        questions; `..._multi_gold`: two or more, e.g. the synthetic two-hop questions, whose
        second hop shares no words with the question). With `config.eval.tree_text`, each
        question is also answered from the same route's leaf text (`tree_text_f1`), which shows
        what the routing alone is worth to the answers."""
        h2mt = self.model(trainable)
        items = self.eval_items if items is None else items
        if self.config.eval.get("max_examples", 0):
            items = items[:self.config.eval.max_examples]
        with_text = bool(self.config.eval.get("tree_text", False))
        indexes, rows = {}, []
        for it in tqdm(items, desc="evaluating", disable=not self.progress):
            if it.doc_id not in indexes:
                indexes[it.doc_id] = h2mt.build(it.context, fmt=it.fmt, outline=it.outline)
            idx = indexes[it.doc_id]
            kw = dict(dataset=it.dataset, template=self.template(it.dataset), route=route,
                      k=max(self.cfg.k, 4))
            a = h2mt.answer(idx, it.question, **kw)
            gold = set(idx.leaves_for_spans(it.gold_spans or []))
            metric = DATASET_METRIC.get(it.dataset, qa_f1_score)
            r2 = leaf_recall(gold, a.leaves, 2)
            row = {"f1": max(metric(a.text, g) for g in it.answers),
                   "rouge_l": max(rouge_l_score(a.text, g) for g in it.answers),
                   "recall_at_2": r2, "recall_at_4": leaf_recall(gold, a.leaves, 4),
                   "recall_at_2_one_gold": r2 if len(gold) == 1 else np.nan,
                   "recall_at_2_multi_gold": r2 if len(gold) > 1 else np.nan,
                   "ttft_s": a.timings["ttft_s"]}
            if with_text:
                t = h2mt.answer(idx, it.question, context="text", **kw)
                row["tree_text_f1"] = max(metric(t.text, g) for g in it.answers)
            rows.append(row)
        out = {}
        for key in (rows[0] if rows else {}):
            vals = [r[key] for r in rows]
            out[key] = float(np.nanmean(vals)) if not np.all(np.isnan(vals)) else float("nan")
        out["f1"], out["rouge_l"] = 100 * out.get("f1", 0.0), 100 * out.get("rouge_l", 0.0)
        if "tree_text_f1" in out:
            out["tree_text_f1"] *= 100
        out["n"] = len(rows)
        out["n_one_gold"] = sum(not np.isnan(r["recall_at_2_one_gold"]) for r in rows)
        out["n_multi_gold"] = sum(not np.isnan(r["recall_at_2_multi_gold"]) for r in rows)
        return out


class HMTLMTask:
    """HMT language-model training on a text file (the HMT objective, stage 2)."""

    name = "hmt_lm"

    def __init__(self, config, lm=None, progress: bool = True):
        from h2mt_jax.data.wikitext import load_wikitext
        from h2mt_jax.hmt import HMT, HMTConfig

        self.config, self.progress = config, progress
        self.lm = lm or load_backbone(config)
        h = config.hmt
        self.hcfg = HMTConfig(segment_length=h.segment_length, num_sensory=h.num_sensory,
                              recall_dim=h.recall_dim, recall_context=h.recall_context,
                              sum_fraction=h.sum_fraction, stage=h.stage)
        self.hmt = (HMT.load(config.checkpoint, self.lm) if config.checkpoint
                    else HMT.create(self.lm, self.hcfg, seed=config.seed))
        self.hcfg = self.hmt.config
        if config.data.path and not os.path.exists(os.path.expanduser(config.data.path)):
            raise DataError(f"{config.data.path}: no such file; "
                            + HUB_HINT.format(what="WikiText"))
        text = load_wikitext(config.data.path or hub_names(config.data)[1])
        ids = np.asarray(self.lm.tokenizer(text)["input_ids"], np.int32)
        held = min(config.data.eval_tokens, len(ids) // 5)
        self.train_ids, self.eval_ids = ids[:-held], ids[-held:]

    def dataset(self) -> grain.MapDataset:
        from h2mt_jax.hmt.train import window_segments

        t = self.config.train
        l = self.hcfg.tokens_per_segment
        window = t.bptt_depth * l + 1
        if len(self.train_ids) < window:
            raise ValueError(f"the training text has {len(self.train_ids)} tokens, fewer than one "
                             f"window of {window}")
        starts = np.arange(0, len(self.train_ids) - window + 1, l)
        ids = self.train_ids

        def make(s):
            seg, tgt, lens = window_segments(ids[None, s:s + window], l)
            return {"ids": seg[:, 0], "targets": tgt[:, 0], "lengths": lens}

        return (grain.MapDataset.source(starts).shuffle(seed=self.config.seed).repeat(None)
                .map(make).batch(t.batch_size, drop_remainder=True))

    def init(self, key) -> dict:
        return init_trainable({"hmt": self.hmt.params}, self.lm, self.config.train, key)

    def frozen(self):
        return {} if self.config.train.trainable == "all" else self.lm.params

    def loss(self, trainable, frozen, batch):
        from flax import nnx

        from h2mt_jax.hmt.train import window_loss

        t = self.config.train
        tr = {"hmt": trainable["hmt"], "lora": trainable.get("lora")}
        graphdef = self.lm.graphdef
        if "backbone" in trainable:
            frozen = trainable["backbone"]
        ids = jnp.swapaxes(batch["ids"], 0, 1)  # [D, B, L]
        tgt = jnp.swapaxes(batch["targets"], 0, 1)
        loss = window_loss(tr, graphdef, frozen, ids, tgt, batch["lengths"][0],
                           cfg=self.hcfg, lora_scale=_lora_scale(t), loss_segments=1,
                           remat=t.get("remat", False))
        del nnx
        return loss, {"ppl": jnp.exp(loss)}

    def model(self, trainable):
        from h2mt_jax.hmt import HMT

        return HMT(self.lm, self.hcfg, trainable["hmt"], trainable.get("lora"),
                   _lora_scale(self.config.train))

    def export(self, trainable, directory) -> None:
        self.model(trainable).save(directory)

    def evaluate(self, trainable, items=None, route=None) -> dict:
        start = time.perf_counter()
        res = self.model(trainable).perplexity(self.eval_ids[None])
        return {"ppl": res["ppl"], "tokens": res["tokens"], "seconds": time.perf_counter() - start}


TASKS = {"h2mt_qa": H2MTQATask, "hmt_lm": HMTLMTask}


def make_task(config, lm=None, progress: bool = True):
    if config.task not in TASKS:
        raise ValueError(f"unknown task {config.task!r}; known: {sorted(TASKS)}")
    return TASKS[config.task](config, lm=lm, progress=progress)
