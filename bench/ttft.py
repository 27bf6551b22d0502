"""Time to first token, peak memory and total time of full / rag_bm25 / hmt / h2mt (and the
empty-context floor) on SmolLM2-135M, for documents of 2k to 32k tokens.

Documents are synthetic manuals (h2mt_jax.data.synthetic) cut to the target token count; one
question per document; 16 new tokens, greedy. Each method runs in its own process, lengths in
increasing order, every measurement after a warm-up call; TTFT is the median of 5 queries for
empty / rag_bm25 / h2mt, one query for full / hmt (compilation is not timed; hmt and
h2mt warm up on a prefix past 8k tokens). Memory:
`peak_mem_mb` is the working memory of the query (peak resident memory during the call minus
the resident memory before it, with the peak reset through /proc/self/clear_refs and freed heap
returned by malloc_trim first); `peak_rss_mb` is the process's absolute peak in that window.

- full: the whole document in the LongBench prompt; a prompt longer than the model's window
  (8192 positions) is cut in the middle as LongBench does, so `full` reads at most ~8k tokens.
- rag_bm25: 128-token chunks, BM25 top-4 (index built offline), raw text in the prompt.
- hmt: stage-2 HMT (segment 256, 32 sensory tokens) reads the document at question time and
  answers with the prompt as the last segment; `ttft_cached_s` (at the first length only: the
  state has a fixed size) is the same answer when the document's memories were read beforehand.
- h2mt: the tree and node memories are built offline (`build_s`, `build_tokens_per_s`, beside
  the plain backbone's forward throughput on the same tokens); TTFT = question encoding +
  routing + prefill of the prompt with k=4 memory tokens.
- h2mt_memory_kv, h2mt_leaf_kv, tree_text: the same route answered from the 4 leaves' stored
  write-token KV, their stored full KV caches (bfloat16, built with the index: `kv_bytes`), or
  their raw text (`answer_from` memory_kv / leaf_kv / text).
- empty: the same prompt with an empty context, the floor no method can beat.

Prints one JSON line per (method, length), then a summary with the targets.

    python bench/ttft.py [--lengths 2048,4096,8192,16384,32768] [--methods ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from h2mt_jax.eval.peak_memory import PeakMemory  # noqa: E402

H2MT_MODES = {"h2mt": "memory", "h2mt_memory_kv": "memory_kv", "h2mt_leaf_kv": "leaf_kv",
              "tree_text": "text"}
METHODS = ("empty", "full", "rag_bm25", "hmt") + tuple(H2MT_MODES)
NEW_TOKENS = 16
WARM_TOKENS = 8192
REPEATS = 5  # timed queries of the cheap methods (median reported)
CHEAP = ("empty", "rag_bm25") + tuple(H2MT_MODES)


def make_document(lm, n_tokens: int, seed: int = 0):
    """A synthetic manual cut at a line boundary to about `n_tokens` tokens, and a question
    whose gold facts lie inside the kept text."""
    from h2mt_jax.data.synthetic import generate_manual

    chapters = max(2, n_tokens // 380 + 2)
    man = generate_manual(seed, chapters=chapters)
    ids = lm.tokenizer(man.text, add_special_tokens=False, return_offsets_mapping=True)
    offs = ids["offset_mapping"]
    cut = offs[min(n_tokens, len(offs)) - 1][1]
    cut = man.text.rfind("\n", 0, cut) if "\n" in man.text[:cut] else cut
    text = man.text[:cut]
    qs = [q for q in man.questions if max(e for _, e in q.gold_spans) <= cut]
    q = next((q for q in qs if q.hops == 1), qs[0])
    return text, q


def run_method(method: str, lengths: list[int]) -> list[dict]:
    import jax
    import numpy as np

    import h2mt_jax
    from h2mt_jax.data import prompts
    from h2mt_jax.hierarchy.config import H2MTConfig
    from h2mt_jax.hierarchy.h2mt import H2MT
    from h2mt_jax.hmt import HMT, HMTConfig

    lm = h2mt_jax.load_lm("smollm2-135m-instruct")
    tok = lm.tokenizer
    template = prompts.SYNTHETIC_TEMPLATE
    window = lm.config.max_position_embeddings - NEW_TOKENS - 8
    hmt = HMT.create(lm, HMTConfig(segment_length=256, num_sensory=32)) if method == "hmt" else None
    mode = H2MT_MODES.get(method)
    kv_store = "bfloat16" if mode in ("memory_kv", "leaf_kv") else "none"
    h2mt = H2MT.create(lm, H2MTConfig(k=4, kv_store=kv_store)) if mode else None
    rows = []
    for n in lengths:
        text, q = make_document(lm, n)
        doc_tokens = len(tok(text, add_special_tokens=False)["input_ids"])
        extra = {}
        if method == "empty":
            def query():
                ids = prompts.prompt_ids(tok, template, "", q.question)
                gen = lm.generate_ids([ids], max_new_tokens=NEW_TOKENS)
                return gen.prefill_s, gen
        elif method == "full":
            def query():
                t0 = time.perf_counter()
                ids = prompts.prompt_ids(tok, template, text, q.question, max_tokens=window)
                gen = lm.generate_ids([ids], max_new_tokens=NEW_TOKENS)
                extra["prompt_tokens"] = len(ids)
                return time.perf_counter() - t0 - gen.decode_s, gen
        elif method == "rag_bm25":
            from bench.routing_recall import bm25_rank

            t0 = time.perf_counter()
            ids = tok(text, add_special_tokens=False)["input_ids"]
            chunks = [tok.decode(ids[i:i + 128]) for i in range(0, len(ids), 128)]
            from rank_bm25 import BM25Okapi  # noqa: F401  (index build is part of the offline step)
            extra["build_s"] = time.perf_counter() - t0

            def query():
                t0 = time.perf_counter()
                top = sorted(bm25_rank(chunks, q.question)[:4])
                ids = prompts.prompt_ids(tok, template, "\n\n".join(chunks[i] for i in top),
                                         q.question)
                gen = lm.generate_ids([ids], max_new_tokens=NEW_TOKENS)
                return time.perf_counter() - t0 - gen.decode_s, gen
        elif method == "hmt":
            doc_ids = np.asarray(tok(text, add_special_tokens=False)["input_ids"], np.int32)

            def query():
                t0 = time.perf_counter()
                p_ids = prompts.prompt_ids(tok, template, "", q.question)
                gen, t = hmt.generate(doc_ids, p_ids, max_new_tokens=NEW_TOKENS)
                return time.perf_counter() - t0 - gen.decode_s, gen

            p_ids = prompts.prompt_ids(tok, template, "", q.question)
            # Warm-up on a prefix: the scan's chunk programs do not depend on the length.
            hmt.generate(doc_ids[:WARM_TOKENS], p_ids, NEW_TOKENS)
            if n == lengths[0]:  # the cached state has a fixed size: measured once
                state = hmt.read(doc_ids)
                hmt.generate(None, p_ids, NEW_TOKENS, state=state)  # warm the cached path
                t0 = time.perf_counter()
                gen, _ = hmt.generate(None, p_ids, NEW_TOKENS, state=state)
                extra["ttft_cached_s"] = time.perf_counter() - t0 - gen.decode_s
        else:  # h2mt
            # Warm-up: compiles the leaf batches and this tree bucket's sweep (a prefix past 8k
            # tokens: the leaf programs do not depend on the length; a sweep compile for a new
            # bucket, if any, is then counted in build_s).
            h2mt.build(text if n <= WARM_TOKENS else text[:len(text) // 2], fmt="markdown")
            t0 = time.perf_counter()
            index = h2mt.build(text, fmt="markdown")
            extra["build_s"] = time.perf_counter() - t0
            extra["build_tokens_per_s"] = doc_tokens / extra["build_s"]
            extra["forward_tokens_per_s"] = forward_throughput(lm, text)
            extra["build_vs_forward"] = extra["build_tokens_per_s"] / extra["forward_tokens_per_s"]
            extra["gold_leaves"] = index.leaves_for_spans(q.gold_spans)
            extra["kv_bytes"] = 0 if index.kv is None else index.kv.nbytes

            def query():
                a = h2mt.answer(index, q.question, template=template, max_new_tokens=NEW_TOKENS,
                                answer_from=mode)
                extra["route"] = a.leaves
                extra["timings"] = {k: round(v, 4) for k, v in a.timings.items()}
                query.last = a
                return a.timings["ttft_s"], type("G", (), {"decode_s": a.timings["decode_s"],
                                                            "tokens": [[0]]})
        if method != "hmt":
            query()  # warm-up: compiles every program of this bucket
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            ttft, gen = query()
            jax.block_until_ready(jax.numpy.zeros(()))
            total = time.perf_counter() - t0
        # Queries of a second or two are repeated (median): single timings on a shared machine
        # vary by ±50%. Reading methods (full, hmt) take tens of seconds and run once.
        ttfts = [ttft] + [query()[0] for _ in range(REPEATS - 1 if method in CHEAP else 0)]
        row = {"method": method, "doc_tokens": doc_tokens, "target_tokens": n,
               "ttft_s": float(np.median(ttfts)), "ttft_all_s": ttfts,
               "peak_mem_mb": mem.working_mb, "peak_rss_mb": mem.peak_mb, "total_s": total,
               **extra}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def forward_throughput(lm, text: str, window: int = 2048, max_windows: int = 4) -> float:
    """Plain backbone forward (all-position hidden states) over the same tokens, 2k windows
    (the first `max_windows`: the per-token cost does not depend on the document length)."""
    import jax.numpy as jnp
    import numpy as np

    ids = np.asarray(lm.tokenizer(text, add_special_tokens=False)["input_ids"], np.int32)
    pad = (-len(ids)) % window
    x = np.concatenate([ids, np.zeros(pad, np.int32)]).reshape(-1, window)[:max_windows]
    n_tokens = min(len(ids), x.size)
    emb = lm.model.embed(jnp.asarray(x[:1]))
    lm.hidden_states(emb).block_until_ready()
    t0 = time.perf_counter()
    for row in x:
        lm.hidden_states(lm.model.embed(jnp.asarray(row[None]))).block_until_ready()
    return n_tokens / (time.perf_counter() - t0)


def summarize(rows: list[dict]) -> dict:
    by = {(r["method"], r["target_tokens"]): r for r in rows}

    def get(m, n, key="ttft_s"):
        r = by.get((m, n))
        return None if r is None else r.get(key)

    out = {}
    if get("h2mt", 8192) and get("full", 8192):
        out["h2mt_vs_full_ttft_at_8k"] = get("full", 8192) / get("h2mt", 8192)
    if get("h2mt", 8192) and get("empty", 8192):
        out["h2mt_vs_empty_ttft_at_8k"] = get("h2mt", 8192) / get("empty", 8192)
    if get("h2mt", 32768) and get("h2mt", 2048):
        out["h2mt_ttft_32k_vs_2k"] = get("h2mt", 32768) / get("h2mt", 2048)
    if get("h2mt", 16384, "peak_mem_mb") and get("full", 16384, "peak_mem_mb"):
        out["full_vs_h2mt_peak_mem_at_16k"] = (get("full", 16384, "peak_mem_mb")
                                               / get("h2mt", 16384, "peak_mem_mb"))
    for m in ("h2mt_memory_kv", "h2mt_leaf_kv", "tree_text"):
        if get(m, 8192) and get("empty", 8192):
            out[f"{m}_vs_empty_ttft_at_8k"] = get(m, 8192) / get("empty", 8192)
        if get(m, 32768) and get(m, 2048):
            out[f"{m}_ttft_32k_vs_2k"] = get(m, 32768) / get(m, 2048)
        if get(m, 8192) and get("rag_bm25", 8192):
            out[f"{m}_vs_rag_bm25_ttft_at_8k"] = get(m, 8192) / get("rag_bm25", 8192)
    kv = [r for r in rows if r["method"] == "h2mt_leaf_kv" and r.get("kv_bytes")]
    if kv:
        out["leaf_kv_bytes_per_1k_tokens"] = max(1000 * r["kv_bytes"] / r["doc_tokens"] for r in kv)
    builds = [r["build_vs_forward"] for r in rows if r["method"] == "h2mt"]
    if builds:
        out["h2mt_build_vs_forward_min"] = min(builds)
    targets = {
        "h2mt_ttft_8k_10x_lower_than_full": out.get("h2mt_vs_full_ttft_at_8k", 0) >= 10,
        "h2mt_ttft_8k_within_1_5x_of_empty": out.get("h2mt_vs_empty_ttft_at_8k", 99) <= 1.5,
        "h2mt_ttft_32k_within_1_5x_of_2k": out.get("h2mt_ttft_32k_vs_2k", 99) <= 1.5,
        "peak_mem_16k_4x_lower_than_full": out.get("full_vs_h2mt_peak_mem_at_16k", 0) >= 4,
        "build_throughput_ge_70pct_of_forward": out.get("h2mt_build_vs_forward_min", 0) >= 0.7,
        "leaf_kv_ttft_8k_within_2x_of_empty": out.get("h2mt_leaf_kv_vs_empty_ttft_at_8k", 99) <= 2,
        "leaf_kv_ttft_32k_within_1_5x_of_2k": out.get("h2mt_leaf_kv_ttft_32k_vs_2k", 99) <= 1.5}
    return {"summary": out, "targets_met": targets}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="2048,4096,8192,16384,32768")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    if args.child:
        run_method(args.child, lengths)
        return
    rows = []
    for m in args.methods.split(","):
        if m not in METHODS:
            sys.exit(f"unknown method {m!r}; choose from {METHODS}")
        proc = subprocess.run([sys.executable, __file__, "--child", m, "--lengths", args.lengths],
                              capture_output=True, text=True, cwd=ROOT)
        if proc.returncode:
            sys.stderr.write(proc.stderr[-3000:])
            sys.exit(f"method {m} failed")
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                rows.append(json.loads(line))
                print(line, flush=True)
    import jax

    device = {"device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform}
    print(json.dumps({"bench": "ttft", "model": "smollm2-135m-instruct", **device,
                      **summarize(rows)}, indent=1))


if __name__ == "__main__":
    main()
