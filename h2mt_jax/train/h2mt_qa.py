"""Task `h2mt_qa`: H²MT question answering with routing supervision (the loss is
`h2mt_jax.hierarchy.loss`; the trainer is `h2mt_jax.train.trainer`).

Training examples come from each training document's index, built once with the starting
parameters and kept under `workdir/indexes/` so that a resumed run reads them instead of
rebuilding them. The evaluation is `h2mt_jax.eval.example.evaluate_example` over the `h2mt`
method (and `tree_text` with `eval.tree_text`), exactly what `evaluate.py` runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil

import grain
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from h2mt_jax.data import prompts
from h2mt_jax.data.items import QAItem, load_items
from h2mt_jax.eval.example import EvalSettings, evaluate_example, warm_up
from h2mt_jax.eval.metrics import leaf_recall
from h2mt_jax.eval.methods import make_method
from h2mt_jax.hierarchy.config import H2MTConfig, explicit_overrides
from h2mt_jax.hierarchy.h2mt import H2MT
from h2mt_jax.hierarchy.index import Index
from h2mt_jax.errors import ConfigError
from h2mt_jax.hierarchy.loss import QA_READ_MODES, batch_loss
from h2mt_jax.hierarchy.tree import Tree, pad_tree, padded_ids
from h2mt_jax.io import FormatError, read_meta, write_meta
from h2mt_jax.lm import backbone_from_config
from h2mt_jax.shapes import bucket
from h2mt_jax.train.trainable import H2MTTrainable, lora_scale, memory_overrides

INDEX_CACHE_FORMAT = "h2mt_jax.train_indexes/1"
ANSWER_METHODS = {"memory": "h2mt", "memory_kv": "h2mt_memory_kv", "leaf_kv": "h2mt_leaf_kv"}


def tree_arrays(tree: Tree) -> dict[str, np.ndarray]:
    """A padded `Tree`'s fields as host arrays (`Tree(**tree_arrays(t))` rebuilds it)."""
    return {f.name: np.asarray(getattr(tree, f.name)) for f in dataclasses.fields(tree)}


@dataclasses.dataclass
class Example:
    """One training question over a built index, before padding."""

    item: QAItem
    index: Index
    gold_nodes: list[int]  # spec ids: gold leaves and their ancestors
    q_ids: list[int]
    seq_ids: list[int]
    labels: np.ndarray
    mem_start: int
    teacher: dict | None = None  # distillation targets (`teacher_targets`), by seq position
    text_ids: list[int] | None = None  # read mode "text": the gold leaves' text prompt + answer
    text_labels: np.ndarray | None = None


DISTILL = ("none", "kl", "tokens")


def teacher_targets(lm, prompt: list[int], answer: list[int], start: int, seq_len: int,
                    kind: str, topk: int = 32, max_new_tokens: int = 32, template_ids=None
                    ) -> dict:
    """Distillation targets from the teacher's text pass: `lm` reads `prompt` (the template with
    the gold leaves' raw text), then

    - kind "kl": the gold `answer` ids (end token included) teacher-forced; its top-`topk`
      token ids and log-probabilities at each answer position, placed at the student's label
      positions `start - 1 ..` of a `seq_len` sequence (`t_ids`, `t_logp`, `[seq_len, topk]`);
    - kind "tokens": the teacher's greedy answer (`t_answer`: ids, end token included).
    """
    if kind == "kl":
        ids = np.asarray([prompt + answer], np.int32)
        width = bucket(ids.shape[1])
        padded = np.zeros((1, width), np.int32)
        padded[0, :ids.shape[1]] = ids[0]
        logits = np.asarray(lm.logits(padded))[0]
        pos = np.arange(len(prompt) - 1, len(prompt) + len(answer) - 1)
        lp = jax.nn.log_softmax(jnp.asarray(logits[pos]), axis=-1)
        top_lp, top_ids = jax.lax.top_k(lp, topk)
        t_ids = np.zeros((seq_len, topk), np.int32)
        t_logp = np.full((seq_len, topk), -1e9, np.float32)
        rows = np.arange(start - 1, start - 1 + len(answer))
        t_ids[rows], t_logp[rows] = np.asarray(top_ids), np.asarray(top_lp)
        return {"t_ids": t_ids, "t_logp": t_logp}
    if kind == "tokens":
        eos = lm.eos_ids[0] if lm.eos_ids else 0
        gen = lm.generate_ids([prompt], max_new_tokens=max_new_tokens)
        out = [int(t) for t in gen.tokens[0] if int(t) not in lm.eos_ids and int(t) != lm.pad_id]
        return {"t_answer": out + [eos]}
    raise ValueError(f"distill must be one of {DISTILL}, got {kind!r}")


def pad_sizes(examples: list[Example]) -> dict[str, int]:
    """The sizes every example is padded to (`pad_example`): the largest tree (leaf slots,
    internal nodes, height, level width) and the bucketed sequence lengths among `examples`."""
    trees = [e.index.tree for e in examples]
    with_text = all(e.text_ids is not None for e in examples)
    return {"leaves": max(t.num_leaf_slots for t in trees),
            "internal": max(t.num_nodes - t.num_leaf_slots for t in trees),
            "height": max(t.max_height for t in trees),
            "width": max(int(t.level_nodes.shape[1]) for t in trees),
            "q_len": bucket(max(len(e.q_ids) for e in examples)),
            "seq_len": bucket(max(len(e.seq_ids) for e in examples)),
            "pre_len": bucket(max(e.mem_start for e in examples)),
            "text_len": bucket(max(len(e.text_ids) for e in examples)) if with_text else 0}


def pad_examples(examples: list[Example], cfg: H2MTConfig) -> list[dict]:
    """Example dicts of `hierarchy.loss`, every tree re-padded (`pad_tree`'s minimums) to the
    largest sizes among them, so that one compiled step serves them all."""
    sizes = pad_sizes(examples)
    return [pad_example(e, sizes, cfg) for e in examples]


def pad_example(e: Example, sizes: dict[str, int], cfg: H2MTConfig) -> dict:
    """One example dict of `hierarchy.loss` at `sizes` (`pad_sizes`). Built when a batch is
    drawn (`H2MTQATask.dataset`): each row holds its own padded copy of all the document's node
    memories (`[nodes, m, d]` float32, megabytes at m = 64), so padding every question up front
    would hold one copy per question."""
    leaves, internal, height, width = (sizes[k] for k in ("leaves", "internal", "height",
                                                          "width"))
    q_len, seq_len, pre_len, text_len = (sizes[k] for k in ("q_len", "seq_len", "pre_len",
                                                            "text_len"))
    with_text = text_len > 0
    spec = e.index.spec
    tree = pad_tree(spec, cfg.build.fanout, cfg.build.leaf_len, min_leaves=leaves,
                    min_nodes=leaves + internal, min_height=height, min_width=width)
    ids = padded_ids(spec, tree)
    mem = np.zeros((tree.num_nodes,) + e.index.memories.shape[1:], np.float32)
    mem[ids] = e.index.node_memories(range(spec.n_nodes))
    gold = np.zeros(tree.num_nodes, bool)
    gold[ids[e.gold_nodes]] = True
    q = np.zeros(q_len, np.int32)
    q[:len(e.q_ids)] = e.q_ids
    seq = np.zeros(seq_len, np.int32)
    seq[:len(e.seq_ids)] = e.seq_ids
    labels = np.full(seq_len, -1, np.int32)
    labels[:len(e.labels)] = e.labels
    row = {"tree": tree_arrays(tree), "memories": mem, "gold": gold, "q_ids": q,
           "q_len": np.int32(len(e.q_ids)), "seq_ids": seq,
           "pre_ids": seq[:pre_len].copy(), "mem_start": np.int32(e.mem_start),
           "labels": labels, "mode": np.int32(0)}
    if with_text:
        row["text_ids"] = np.zeros(text_len, np.int32)
        row["text_labels"] = np.full(text_len, -1, np.int32)
        row["text_ids"][:len(e.text_ids)] = e.text_ids
        row["text_labels"][:len(e.text_labels)] = e.text_labels
    t = e.teacher or {}
    if "t_ids" in t:
        row["t_ids"] = np.zeros((seq_len, t["t_ids"].shape[1]), np.int32)
        row["t_logp"] = np.full((seq_len, t["t_ids"].shape[1]), -1e9, np.float32)
        n = min(seq_len, len(t["t_ids"]))
        row["t_ids"][:n], row["t_logp"][:n] = t["t_ids"][:n], t["t_logp"][:n]
    if "t_seq" in t:
        row["t_seq_ids"] = np.zeros(seq_len, np.int32)
        row["t_labels"] = np.full(seq_len, -1, np.int32)
        row["t_seq_ids"][:len(t["t_seq"])] = t["t_seq"]
        row["t_labels"][:len(t["t_labels"])] = t["t_labels"]
    return row


class H2MTQATask(H2MTTrainable):
    name = "h2mt_qa"

    def __init__(self, config, lm=None, progress: bool = True, workdir: str | None = None):
        self.config, self.progress = config, progress
        self.lm = lm or backbone_from_config(config)
        if config.checkpoint:  # the config's explicit routing/answer settings apply over it
            self.h2mt = memory_overrides(H2MT.load(config.checkpoint, self.lm).with_config(
                **explicit_overrides(config.h2mt)), config.train)
        else:
            self.h2mt = H2MT.create(self.lm, H2MTConfig.from_config(config.h2mt),
                                    seed=config.seed)
        self.cfg = self.h2mt.config
        self.train_items, self.eval_items = load_items(config.data, config.seed)
        if not self.train_items:
            raise ValueError("no training items: check config.data")
        self.settings = EvalSettings.from_config(config)
        self.index_dir = os.path.join(workdir, "indexes") if workdir else None
        self.skipped = 0
        t = config.train
        self.distill = t.get("distill", "none")
        if self.distill not in DISTILL:
            raise ConfigError(f"train.distill must be one of {', '.join(DISTILL)}, got "
                              f"{self.distill!r}")
        memory_modes = ("memory", "memory_kv")
        default = self.cfg.answer_from if self.cfg.answer_from in memory_modes else "memory"
        self.modes = tuple(m.strip() for m in str(t.get("read_modes", "") or default).split(",")
                           if m.strip())
        if not self.modes or any(m not in QA_READ_MODES for m in self.modes):
            raise ConfigError(f"train.read_modes must name some of {', '.join(QA_READ_MODES)}, "
                              f"got {t.get('read_modes')!r}")
        if set(self.modes) == {"text"}:
            raise ConfigError("train.read_modes='text' alone trains no memory: add memory "
                              "and/or memory_kv (text batches only keep the adapters reading text)")

    # -- data ------------------------------------------------------------------------------------
    def _index_cache(self) -> str | None:
        """`workdir/indexes`, emptied when it was built by other starting parameters."""
        if self.index_dir is None:
            return None
        c = self.config
        key = {"backbone": c.backbone, "dtype": c.dtype, "seed": c.seed,
               "checkpoint": c.checkpoint, "h2mt": self.cfg.to_dict()}
        meta_path = os.path.join(self.index_dir, "indexes.json")
        try:
            if read_meta(meta_path, INDEX_CACHE_FORMAT, "an index cache").get("key") == json.loads(
                    json.dumps(key)):
                return self.index_dir
        except (FileNotFoundError, FormatError):
            pass
        shutil.rmtree(self.index_dir, ignore_errors=True)
        write_meta(meta_path, INDEX_CACHE_FORMAT, key=key)
        return self.index_dir

    def _build(self, item: QAItem, cache: str | None) -> Index:
        path = None
        if cache is not None:
            name = hashlib.sha1(item.doc_id.encode()).hexdigest()[:20]
            path = os.path.join(cache, name)
            try:
                index = Index.load(path)
                if index.text == item.context and index.doc_id == item.doc_id:
                    return index
            except (FileNotFoundError, FormatError, ValueError, OSError):
                pass
        index = self.h2mt.build(item.context, fmt=item.fmt, outline=item.outline,
                                doc_id=item.doc_id, kv_store="none")  # the loss re-encodes
        if path is not None:
            index.save(path)
        return index

    def examples(self, items: list[QAItem]) -> list[Example]:
        """Training examples of the items that have gold leaves in a document of at least `k`
        leaves (the others are counted in `skipped`)."""
        tok = self.lm.tokenizer
        eos = self.lm.eos_ids[0] if self.lm.eos_ids else tok.eos_token_id
        k, m = self.cfg.k, self.cfg.mem_tokens
        cache = self._index_cache()
        indexes, out = {}, []
        for it in tqdm(items, desc="building training indexes", disable=not self.progress):
            if it.doc_id not in indexes:
                indexes[it.doc_id] = self._build(it, cache)
            index = indexes[it.doc_id]
            gold = index.leaves_for_spans(it.gold_spans or [])
            if index.spec.n_leaves < k or not gold:
                self.skipped += 1
                continue
            parent = index.spec.parents()
            nodes = sorted(set(gold) | {a for g in gold for a in index.spec.ancestors(g, parent)})
            pre, post = prompts.split_prompt(tok, self.settings.template(it.dataset), it.question)
            ans = tok(" " + it.answers[0].strip(), add_special_tokens=False)["input_ids"] + [eos]
            seq = pre + [0] * (k * m) + post + ans
            labels = np.full(len(seq), -1, np.int32)
            start = len(pre) + k * m + len(post)
            labels[start - 1:len(seq) - 1] = seq[start:]
            teacher = self._teacher_cached(cache, it, index, gold, ans, start, len(seq))
            if teacher is not None and "t_answer" in teacher:
                t_seq = pre + [0] * (k * m) + post + teacher.pop("t_answer")
                t_labels = np.full(len(t_seq), -1, np.int32)
                t_labels[start - 1:len(t_seq) - 1] = t_seq[start:]
                teacher.update(t_seq=t_seq, t_labels=t_labels)
            text_ids = text_labels = None
            if "text" in self.modes:  # the gold leaves' text, then the answer
                prompt = self._gold_prompt(it, index, gold)
                text_ids = prompt + ans
                text_labels = np.full(len(text_ids), -1, np.int32)
                text_labels[len(prompt) - 1:len(text_ids) - 1] = ans
            out.append(Example(it, index, nodes, tok(it.question, add_special_tokens=False)[
                "input_ids"], seq, labels, len(pre), teacher, text_ids, text_labels))
        if not out:
            raise ValueError(f"none of the {len(items)} training items has gold evidence and at "
                             f"least k={k} leaves")
        return out

    def _teacher_cached(self, cache: str | None, it: QAItem, index: Index, gold: list[int],
                        answer: list[int], start: int, seq_len: int) -> dict | None:
        """`_teacher`, kept as `.npz` files under the index cache (`workdir/indexes/teacher`,
        which the starting parameters key), so that a resumed run does not run the teacher
        again."""
        if self.distill == "none" or cache is None:
            return self._teacher(it, index, gold, answer, start, seq_len)
        t = self.config.train
        key = json.dumps([it.doc_id, it.question, answer, sorted(gold), start, seq_len,
                          self.distill, int(t.get("distill_topk", 32))])
        path = os.path.join(cache, "teacher", hashlib.sha1(key.encode()).hexdigest()[:24] + ".npz")
        try:
            with np.load(path, allow_pickle=False) as z:
                return {name: (z[name].tolist() if name == "t_answer" else z[name])
                        for name in z.files}
        except (FileNotFoundError, OSError, ValueError):
            pass
        out = self._teacher(it, index, gold, answer, start, seq_len)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp.npz"
        np.savez(tmp, **{name: np.asarray(v) for name, v in out.items()})
        os.replace(tmp, path)
        return out

    def _teacher(self, it: QAItem, index: Index, gold: list[int], answer: list[int],
                 start: int, seq_len: int) -> dict | None:
        """Distillation targets of one example: the starting answer backbone (decoder adapters
        included) reading the gold leaves' raw text (`teacher_targets`)."""
        if self.distill == "none":
            return None
        prompt = self._gold_prompt(it, index, gold)
        t = self.config.train
        return teacher_targets(self.h2mt.answer_lm, prompt, answer, start, seq_len,
                               self.distill, int(t.get("distill_topk", 32)),
                               max_new_tokens=max(len(answer) + 8, 16))

    def _gold_prompt(self, it: QAItem, index: Index, gold: list[int]) -> list[int]:
        """The task's prompt ids with the gold leaves' raw text (document order) as context."""
        ctx = "\n\n".join(index.text[slice(*index.spec.leaf_spans[i])] for i in sorted(gold))
        return prompts.prompt_ids(self.lm.tokenizer, self.settings.template(it.dataset), ctx,
                                  it.question)

    def dataset(self) -> grain.MapDataset:
        t = self.config.train
        examples = self.examples(self.train_items)
        sizes, cfg = pad_sizes(examples), self.cfg
        n_modes = len(self.modes)

        def with_mode(i, batch):  # batches take turns over the read modes
            return dict(batch, mode=np.full_like(batch["mode"], i % n_modes))

        return (grain.MapDataset.source(examples).shuffle(seed=self.config.seed).repeat(None)
                .map(lambda e: pad_example(e, sizes, cfg))  # padded when drawn: see pad_example
                .batch(t.batch_size, drop_remainder=True).map_with_index(with_mode))

    # -- model ------------------------------------------------------------------------------------
    def loss(self, trainable, frozen, batch):
        t = self.config.train
        return batch_loss(trainable, frozen, self.lm.graphdef, batch, modes=self.modes,
                          cfg=self.cfg, route_weight=t.route_weight, lora_scale=lora_scale(t),
                          encode=t.encode, distill=self.distill,
                          distill_weight=float(t.get("distill_weight", 1.0)))

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate(self, trainable, items=None) -> dict:
        """Answer F1 / ROUGE-L (x100) and routing recall on the held-out items, through the
        evaluation path of evaluate.py (`evaluate_example` over the `h2mt` method).

        Recall is also split by the number of gold leaves (`..._one_gold`: single-evidence
        questions; `..._multi_gold`: two or more, e.g. the synthetic two-hop questions, whose
        second hop shares no words with the question). With `config.eval.tree_text`, each
        question is also answered from the same route's leaf text (`tree_text_f1`), which shows
        what the routing alone is worth to the answers. `recall_at_2_memory_score` is the recall
        of the learned memory score alone (one hop), whatever `h2mt.route_score` says."""
        h2mt = self.model(trainable)
        items = self.eval_items if items is None else items
        if self.config.eval.get("max_examples", 0):
            items = items[:self.config.eval.max_examples]
        modes = [m.strip() for m in str(self.config.eval.get("answer_modes", "memory")
                                        ).split(",") if m.strip()]
        bad = [m for m in modes if m not in ANSWER_METHODS]
        if bad:
            raise ConfigError(f"eval.answer_modes: unknown {bad}; known: "
                              f"{', '.join(ANSWER_METHODS)}")
        names = ["h2mt"] + [ANSWER_METHODS[m] for m in modes if m != "memory"]
        names += ["tree_text"] if self.config.eval.get("tree_text", False) else []
        kv_store = "bfloat16" if any(m in ("memory_kv", "leaf_kv") for m in modes) else None
        shared: dict = {}
        rows: dict[str, list[dict]] = {}
        for name in names:
            method = make_method(name, h2mt.lm, h2mt=h2mt, k=self.config.eval.get("k", 4),
                                 index_cache=shared, kv_store=kv_store)
            if items and self.config.eval.get("warmup", True):
                warm_up(method, items[0], self.settings)
            rows[name] = [evaluate_example(method, it, self.settings)
                          for it in tqdm(items, desc=f"evaluating {name}",
                                         disable=not self.progress)]
        out = summarize_h2mt(rows)  # and what the learned score alone finds, beside the routing
        out["recall_at_2_memory_score"] = memory_score_recall(  # the config uses (e.g. fused)
            h2mt, items, {doc: cached[0] for doc, cached in shared.items()})
        return out


def memory_score_recall(h2mt: H2MT, items: list[QAItem], indexes: dict, k: int = 2) -> float:
    """Recall@k of the learned memory score alone (`route_score="memory"`, one hop) on the
    items' indexes `{doc_id: Index}`: the part of routing that training changes, reported next
    to the fused routing a checkpoint uses."""
    alone = h2mt.with_config(route_score="memory", hops=1)
    recalls = []
    for it in items:
        index = indexes.get(it.doc_id)
        gold = set(index.leaves_for_spans(it.gold_spans)) if index and it.gold_spans else set()
        if gold:
            r, _ = alone.route(index, it.question, k=k)
            recalls.append(leaf_recall(gold, index.leaf_ids(np.asarray(r.leaves)), k))
    return _mean(recalls)


def _mean(values) -> float:
    values = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def summarize_h2mt(rows: dict[str, list[dict]]) -> dict:
    """The training-time evaluation's numbers from `evaluate_example` rows per method."""
    ok = [r for r in rows["h2mt"] if "error" not in r]
    one = [r for r in ok if r.get("gold_leaves") == 1]
    multi = [r for r in ok if r.get("gold_leaves", 0) > 1]
    out = {"f1": 100 * _mean(r["f1"] for r in ok),
           "rouge_l": 100 * _mean(r["rouge_l"] for r in ok),
           "recall_at_2": _mean(r.get("recall@2") for r in ok),
           "recall_at_4": _mean(r.get("recall@4") for r in ok),
           "recall_at_2_one_gold": _mean(r["recall@2"] for r in one),
           "recall_at_2_multi_gold": _mean(r["recall@2"] for r in multi),
           "ttft_s": _mean(r["ttft_s"] for r in ok)}
    for mode, name in ANSWER_METHODS.items():
        if name in rows and name != "h2mt":
            out[f"{mode}_f1"] = 100 * _mean(r["f1"] for r in rows[name] if "error" not in r)
    if "tree_text" in rows:
        out["tree_text_f1"] = 100 * _mean(r["f1"] for r in rows["tree_text"] if "error" not in r)
    out.update(n=len(ok), n_one_gold=len(one), n_multi_gold=len(multi),
               errors=len(rows["h2mt"]) - len(ok))
    return out
