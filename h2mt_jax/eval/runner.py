"""The evaluation run behind evaluate.py: methods × examples -> predictions, summary, table, plot.

Every finished example is appended to `<output>.partial.jsonl` at once, so an interrupted run
resumes where it stopped (done (method, id) pairs are skipped). At the end `<output>` gets
`{"summary": ..., "examples": [...]}`, with a Markdown table (`.md`) and a PNG plot of quality
against time to first token (`.png`) beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import warnings

import numpy as np
from tqdm.auto import tqdm

from h2mt_jax.data.items import load_items
from h2mt_jax.errors import ConfigError
from h2mt_jax.eval.example import EvalSettings, evaluate_example, warm_up
from h2mt_jax.io import atomic_write, dumps, write_json
from h2mt_jax.lm import backbone_from_config

QUALITY_KEY = "f1"


def eval_items(config):
    """The items to evaluate: a whole LongBench/HotpotQA file (or the hub's evaluation split),
    or the held-out synthetic docs."""
    items = load_items(config.data, config.seed, split=False)[1]
    if config.eval.get("max_examples", 0):
        items = items[:config.eval.max_examples]
    return items


def _load_models(config, lm, methods):
    """(h2mt, hmt): from checkpoints when given, else fresh parameters."""
    from h2mt_jax.hierarchy.config import H2MTConfig, explicit_overrides
    from h2mt_jax.hierarchy.h2mt import H2MT
    from h2mt_jax.hmt import HMT, HMTConfig

    h2mt = hmt = None
    if (any(m.startswith("h2mt") or m == "tree_text" for m in methods)
            or config.eval.get("baseline_adapters", False)):
        from h2mt_jax.hierarchy.h2mt import resolve_checkpoint

        ckpt = resolve_checkpoint(config.checkpoint) if config.checkpoint else ""
        over = explicit_overrides(config.h2mt)  # set on purpose: over the checkpoint's
        if ckpt and os.path.isfile(os.path.join(ckpt, "h2mt.json")):
            h2mt = H2MT.load(ckpt, lm).with_config(**over)
        elif ckpt and os.path.isfile(os.path.join(ckpt, "model", "h2mt.json")):
            h2mt = H2MT.load(os.path.join(ckpt, "model"), lm).with_config(**over)
        elif ckpt:
            raise FileNotFoundError(f"config.checkpoint={ckpt!r} holds no H2MT checkpoint "
                                    "(h2mt.json)")
        else:
            h2mt = H2MT.create(lm, H2MTConfig.from_config(config.h2mt), seed=config.seed)
    if "hmt" in methods:
        ckpt = config.get("hmt_checkpoint", "")
        if ckpt:
            sub = ckpt if os.path.isfile(os.path.join(ckpt, "hmt.json")) else os.path.join(
                ckpt, "model")
            hmt = HMT.load(sub, lm)
        else:
            hmt = HMT.create(lm, HMTConfig.from_config(config.hmt))
    return h2mt, hmt


ADAPTED = "+adapters"  # suffix of a text baseline run with the checkpoint's decoder adapters
TEXT_BASELINES = ("full", "rag_bm25", "rag_dense", "compress")


def settings_hash(config) -> str:
    """What a finished row depends on besides its method and item: the backbone, checkpoints,
    model and evaluation settings and the data. Rows of another run are never reused."""
    keys = {"backbone": config.backbone, "dtype": config.dtype, "seed": config.seed,
            "checkpoint": config.checkpoint, "hmt_checkpoint": config.get("hmt_checkpoint", ""),
            "h2mt": config.h2mt.to_dict(), "hmt": config.hmt.to_dict(),
            "eval": {k: v for k, v in config.eval.to_dict().items()
                     if k not in ("max_examples", "warmup", "warmup_each")},  # no row changes
            "data": {k: v for k, v in config.data.to_dict().items()
                     if k not in ("limit", "on_error")}}
    return hashlib.sha1(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _done(partial: str, settings: str) -> dict:
    """Finished rows of an interrupted run with the same settings; other lines (cut by the
    interruption, foreign, or of other settings) are skipped and counted in one warning."""
    done, skipped = {}, 0
    if os.path.isfile(partial):
        with open(partial, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    row = json.loads(line)
                    key = (row["method"], row["id"])
                    ok = row.get("settings") == settings
                except (json.JSONDecodeError, RecursionError, KeyError, TypeError):
                    ok = False
                if ok:
                    done[key] = row
                elif line.strip():
                    skipped += 1
    if skipped:
        warnings.warn(f"{partial}: {skipped} line(s) not reused (cut, foreign, or from a run "
                      "with other settings); those examples run again", stacklevel=3)
    return done


def summarize(rows: list[dict]) -> dict:
    """Per method: quality, TTFT median / p90, peak memory, generation and build time, recall."""
    out = {}
    for m in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == m]
        ok = [r for r in rs if "error" not in r]
        ttft = sorted(r["ttft_s"] for r in ok) or [float("nan")]
        s = {"n": len(rs), "errors": len(rs) - len(ok),
             "f1": 100 * float(np.mean([r["f1"] for r in ok])) if ok else float("nan"),
             "rouge_l": 100 * float(np.mean([r["rouge_l"] for r in ok])) if ok else float("nan"),
             "ttft_median_s": statistics.median(ttft),
             "ttft_p90_s": float(np.percentile(ttft, 90)),
             "peak_mem_mb": max((r.get("peak_mem_mb", 0.0) for r in ok), default=0.0),
             "generation_s": float(sum(r["total_s"] for r in ok)),
             "build_s": float(sum({r["doc_id"]: r.get("build_s", 0.0) for r in ok}.values()))}
        for k in ("recall@2", "recall@4"):
            vals = [r[k] for r in ok if r.get(k) is not None]
            if vals:
                s["routing_" + k] = float(np.mean(vals))
        shared = {r["index_shared_with"] for r in rs if r.get("index_shared_with")}
        if shared:  # build_s is that method's build, counted once in the run's wall time
            s["index_shared_with"] = ", ".join(sorted(shared))
        out[m] = s
    return out


def markdown_table(summary: dict) -> str:
    cols = ["n", "f1", "rouge_l", "ttft_median_s", "ttft_p90_s", "peak_mem_mb", "generation_s",
            "build_s", "routing_recall@2", "routing_recall@4"]
    lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for m, s in summary.items():
        cells = []
        for c in cols:
            v = s.get(c)
            cells.append("–" if v is None else (f"{v:d}" if isinstance(v, int) else f"{v:.3g}"))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    shared = [f"{m} reads the indexes built for {s['index_shared_with']} (build_s is that build, "
              "done once)" for m, s in summary.items() if s.get("index_shared_with")]
    return "\n".join(lines + ([""] + shared if shared else []))


def plot(summary: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m, s in summary.items():
        ax.scatter(s["ttft_median_s"], s["f1"], s=60)
        ax.annotate(m, (s["ttft_median_s"], s["f1"]), xytext=(5, 5), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("time to first token, median (s, log scale)")
    ax.set_ylabel("F1 (LongBench qa_f1 × 100)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def run_evaluation(config, lm=None, progress: bool = True) -> dict:
    """Evaluates every method of `config.method` on the configured data; returns the output."""
    from h2mt_jax.eval.methods import H2MT_METHODS, KV_METHODS, METHODS, make_method

    methods = [m.strip() for m in config.method.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"unknown method {m!r}; known: {', '.join(METHODS)}")
    output = config.output or os.path.join(config.workdir, "eval.json")
    partial = output + ".partial.jsonl"
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    items = eval_items(config)
    if not items:
        raise ValueError("no evaluation items: check config.data")
    lm = lm or backbone_from_config(config)
    h2mt, hmt = _load_models(config, lm, methods)
    reuse = bool(config.eval.get("prefix_cache", True))
    for backbone in [lm] + ([h2mt.answer_lm] if h2mt is not None else []):
        backbone.reuse_prefixes = reuse
    settings = EvalSettings.from_config(config)
    settings_key = settings_hash(config)
    done = _done(partial, settings_key)
    rows = list(done.values())
    k = config.eval.get("k", 4)
    indexes: dict = {}  # doc_id -> (index, build_s), shared by the H²MT methods
    index_owner = next((m for m in methods if m in H2MT_METHODS), None)
    kv_store = None  # the H²MT methods share their builds: with KV caches when one needs them
    if h2mt is not None and any(m in KV_METHODS for m in methods):
        kv_store = h2mt.config.kv_store if h2mt.config.kv_store != "none" else "bfloat16"
    runs = [(name, name, lm) for name in methods]
    if config.eval.get("baseline_adapters", False):  # text baselines again, read by the
        # H²MT checkpoint's answer backbone (its decoder adapters): like with like
        if h2mt is None or not h2mt.lora:
            raise ConfigError("eval.baseline_adapters needs an H2MT checkpoint with decoder "
                              "adapters (config.checkpoint)")
        runs += [(name + ADAPTED, name, h2mt.answer_lm) for name in methods
                 if name in TEXT_BASELINES]
    labelled = []
    for label, name, method_lm in runs:
        method = make_method(name, method_lm, h2mt=h2mt, hmt=hmt, k=k, index_cache=indexes,
                             kv_store=kv_store)
        method.name = label
        labelled.append((label, name, method))
    each = config.eval.get("warmup_each", False)
    first_seen = {}
    for i, it in enumerate(items):
        first_seen.setdefault(it.doc_id, i)
    by_doc = sorted(items, key=lambda it: first_seen[it.doc_id])  # stable: a document's together
    todo = [(label, name, method, it) for it in by_doc for label, name, method in labelled
            if (label, it.qid or it.doc_id) not in done]
    if todo and config.eval.get("warmup", True) and not each:
        for label, _, method in labelled:  # each method once, on its first example
            first = next((it for lb, _, _, it in todo if lb == label), None)
            if first is not None:
                warm_up(method, first, settings)
    last = {it.doc_id: i for i, (_, _, _, it) in enumerate(todo)}
    # document by document, every method on it, then its offline state is dropped: an H²MT
    # index with leaf KV is 23 KB per token (2 GB for a narrativeqa book)
    for i, (label, name, method, it) in enumerate(tqdm(todo, desc="evaluating",
                                                          disable=not progress)):
        if each:  # every item's shapes compiled before its timed answer: the same number
            warm_up(method, it, settings)  # of new tokens, which sizes the compiled cache
        row = evaluate_example(method, it, settings)
        row["settings"] = settings_key
        if name in H2MT_METHODS and name != index_owner:
            row["index_shared_with"] = index_owner
        with open(partial, "a") as f:
            f.write(dumps(row, indent=None) + "\n")
        rows.append(row)
        if last[it.doc_id] == i:
            for _, _, m in labelled:
                m.release(it.doc_id)
    summary = summarize(rows)
    result = {"summary": summary if len(methods) > 1 else {**summary[methods[0]],
                                                            "method": methods[0]},
              "by_method": summary, "examples": rows}
    write_json(output, result)
    base = os.path.splitext(output)[0]
    table = markdown_table(summary)
    atomic_write(base + ".md", table + "\n")
    plot(summary, base + ".png", f"{config.data.source}: {len(items)} questions")
    if os.path.isfile(partial):
        os.remove(partial)
    return {"summary": summary, "table": table, "output": output}
