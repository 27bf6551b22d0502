"""Task `memory_lm`: memory pretraining on plain text cut into leaves (the loss is
`h2mt_jax.hierarchy.memory_loss`; `configs/memory_pretrain.py` runs it).

Documents are cut into leaves exactly as `H2MT.build` cuts them (`build_spec`: sections,
sentence boundaries, heading-path titles). Every leaf gives a reconstruction example and every
pair of consecutive leaves a continuation example; each is read as "memory" and as "memory_kv"
(`train.read_modes`). Batches hold one (mode, objective) each, so a step runs one reader pass.

Data (`config.data.sources`, a comma list), all kept apart from what the project evaluates on:
- `wikitext`: the articles of `data.wikitext_path` (the shared WikiText-2 file), except the last
  `data.eval_articles`, which are the held-out pretraining set;
- `synthetic`: `data.pretrain_manuals` manuals of dataset seed `data.pretrain_seed` (the QA
  configs draw their training and held-out manuals from seed `config.seed`, 0);
- `hotpotqa`: the contexts of the first `data.hotpotqa_records` records of `data.hotpotqa_path`
  (70 of the shared file: its last 30 records are for evaluation only).
LongBench files are never read here.
"""

from __future__ import annotations

import re
import time

import grain
import jax
import numpy as np
from tqdm.auto import tqdm

from h2mt_jax.errors import ConfigError
from h2mt_jax.hierarchy import parse
from h2mt_jax.hierarchy.build import build_spec
from h2mt_jax.hierarchy.config import H2MTConfig
from h2mt_jax.hierarchy.h2mt import H2MT
from h2mt_jax.hierarchy.memory_loss import READ_MODES, pretrain_loss
from h2mt_jax.lm import backbone_from_config
from h2mt_jax.train.trainable import H2MTTrainable, lora_scale, memory_overrides

SOURCES = ("wikitext", "synthetic", "hotpotqa")
PRE = "Text:"
CUES = ("\nRepeat the text word for word:\n", "\nContinue the text:\n")  # by objective
ARTICLE = re.compile(r"^ = [^=].* = $", re.MULTILINE)


def wikitext_articles(text: str) -> list[str]:
    """A WikiText file's articles (each starts at a top-level `` = Title = `` line)."""
    starts = [m.start() for m in ARTICLE.finditer(text)] or [0]
    return [text[a:b].strip() for a, b in zip(starts, starts[1:] + [len(text)]) if text[a:b].strip()]


def pretrain_documents(data) -> tuple[list[tuple], list[tuple]]:
    """(training, held-out) documents as (doc_id, text, outline) from `data.sources`."""
    sources = [s.strip() for s in str(data.sources).split(",") if s.strip()]
    bad = [s for s in sources if s not in SOURCES]
    if bad or not sources:
        raise ConfigError(f"data.sources must name some of {', '.join(SOURCES)}, got "
                          f"{data.sources!r}")
    train, held = [], []
    if "wikitext" in sources:
        from h2mt_jax.data.wikitext import load_wikitext

        arts = wikitext_articles(load_wikitext(data.wikitext_path or "wikitext-2-raw-v1:train"))
        n_eval = min(int(data.eval_articles), len(arts) - 1)
        for i, a in enumerate(arts):
            doc = (f"wikitext-{i}", a, parse.parse_document(a, "wikitext"))
            (held if i >= len(arts) - n_eval else train).append(doc)
    if "synthetic" in sources:
        from h2mt_jax.data.synthetic import generate_manual, manual_seed

        for i in range(int(data.pretrain_manuals)):
            man = generate_manual(manual_seed(int(data.pretrain_seed), i), chapters=data.chapters)
            train.append((f"pretrain-{man.doc_id}", man.text,
                          parse.parse_document(man.text, "markdown")))
    if "hotpotqa" in sources:
        from h2mt_jax.data.hotpotqa import load_hotpotqa, parse_hotpotqa

        for r in load_hotpotqa(data.hotpotqa_path or "train", limit=int(data.hotpotqa_records),
                               on_error=data.on_error):
            text, outline = parse_hotpotqa(r.meta["record"])
            train.append((f"hotpotqa-{r.id}", text, outline))
    return train, held


class MemoryLMTask(H2MTTrainable):
    """Memory pretraining: reconstruction and continuation through `m` memories per leaf."""

    name = "memory_lm"

    def __init__(self, config, lm=None, progress: bool = True, documents=None):
        self.config, self.progress = config, progress
        self.lm = lm or backbone_from_config(config)
        if config.checkpoint:
            self.h2mt = memory_overrides(H2MT.load(config.checkpoint, self.lm), config.train)
        else:
            self.h2mt = H2MT.create(self.lm, H2MTConfig.from_config(config.h2mt),
                                    seed=config.seed)
        self.cfg = self.h2mt.config
        modes = [m.strip() for m in str(config.train.get("read_modes", "")
                                         or "memory,memory_kv").split(",") if m.strip()]
        if not modes or any(m not in READ_MODES for m in modes):
            raise ConfigError(f"train.read_modes must name some of {', '.join(READ_MODES)}, got "
                              f"{config.train.get('read_modes')!r}")
        self.modes = modes
        self.train_docs, self.eval_docs = documents or pretrain_documents(config.data)
        if not self.train_docs:
            raise ValueError("memory_lm: no training documents (check data.sources)")

    # -- data ------------------------------------------------------------------------------------
    def leaves(self, docs) -> list[list[list[int]]]:
        """Each document's leaf token ids, in document order (as `H2MT.build` cuts them)."""
        emb = self.h2mt.embedding
        out = []
        for _, text, outline in tqdm(docs, desc="cutting leaves", disable=not self.progress):
            spec = build_spec(text, outline, self.lm.tokenizer, self.cfg.build, emb)
            out.append([list(t) for t in spec.leaf_tokens if len(t)])
        return out

    def examples(self, docs, seed: int) -> list[dict]:
        """Batches (lists of `train.batch_size` example dicts of one mode and objective)."""
        tok = self.lm.tokenizer
        eos = self.lm.eos_ids[0] if self.lm.eos_ids else tok.eos_token_id
        t_len = self.cfg.build.leaf_len
        pre = tok(PRE, add_special_tokens=False)["input_ids"]
        cues = [tok(c, add_special_tokens=False)["input_ids"] for c in CUES]
        s_len = max(len(c) for c in cues) + t_len + 1
        pairs = {0: [], 1: []}
        for leaves in self.leaves(docs):
            for i, leaf in enumerate(leaves):
                pairs[0].append((leaf, leaf))
                if i + 1 < len(leaves):
                    pairs[1].append((leaf, leaves[i + 1]))
        rng = np.random.default_rng(seed)
        b = int(self.config.train.batch_size)
        batches = []
        for objective, items in pairs.items():
            order = rng.permutation(len(items))
            for mi, mode in enumerate(self.modes):
                mode_id = READ_MODES.index(mode)
                part = order[mi::len(self.modes)]  # each pair read one way
                for s in range(0, len(part) - b + 1, b):
                    rows = [self._row(items[j], pre, cues[objective], eos, t_len, s_len,
                                      mode_id, objective) for j in part[s:s + b]]
                    batches.append({k: np.stack([r[k] for r in rows]) for k in rows[0]})
        rng.shuffle(batches)
        return batches

    @staticmethod
    def _row(pair, pre, cue, eos, t_len, s_len, mode, objective) -> dict:
        leaf, target = pair
        leaf, target = leaf[:t_len], target[:t_len]
        t = np.zeros(t_len, np.int32)
        t[:len(leaf)] = leaf
        seq = list(cue) + list(target) + [eos]
        post = np.zeros(s_len, np.int32)
        post[:len(seq)] = seq
        labels = np.full(s_len, -1, np.int32)
        labels[len(cue) - 1:len(seq) - 1] = seq[len(cue):]
        return {"leaf": t, "leaf_len": np.int32(len(leaf)), "pre": np.asarray(pre, np.int32),
                "post": post, "labels": labels, "mode": np.int32(mode),
                "objective": np.int32(objective)}

    def dataset(self) -> grain.MapDataset:
        batches = self.examples(self.train_docs, self.config.seed)
        if not batches:
            raise ValueError(f"memory_lm: fewer leaves than one batch of "
                             f"{self.config.train.batch_size}")
        return grain.MapDataset.source(batches).shuffle(seed=self.config.seed).repeat(None)

    # -- model ------------------------------------------------------------------------------------
    def loss(self, trainable, frozen, batch):
        return pretrain_loss(trainable, frozen, self.lm.graphdef, batch,
                             lora_scale=lora_scale(self.config.train), pool=self.cfg.mem_pool,
                             layer=self.cfg.mem_layer)

    def evaluate(self, trainable, items=None) -> dict:
        """Mean NLL per target token of the held-out leaves for every (reading, objective):
        `memory_recon_nll`, `memory_kv_cont_nll`, ... (at most `eval.max_examples` examples)."""
        start = time.perf_counter()
        docs = self.eval_docs or self.train_docs[-2:]
        batches = self.examples(docs, self.config.seed + 1)
        limit = int(self.config.eval.get("max_examples", 0) or 0)
        if limit:
            batches = batches[:max(1, limit // int(self.config.train.batch_size))]
        loss = jax.jit(lambda tr, b: self.loss(tr, self.lm.params, b)[0])
        sums: dict[str, list[float]] = {}
        for b in tqdm(batches, desc="evaluating memory_lm", disable=not self.progress):
            name = f"{READ_MODES[int(b['mode'][0])]}_{('recon', 'cont')[int(b['objective'][0])]}"
            sums.setdefault(name, []).append(float(loss(trainable, b)))
        out = {f"{k}_nll": float(np.mean(v)) for k, v in sums.items()}
        out.update(batches=len(batches), seconds=time.perf_counter() - start)
        return out
