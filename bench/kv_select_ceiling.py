"""How far can an *untrained* memory of `s` key/value rows per leaf go? The ceiling of selecting
rows of a leaf's own exact KV cache (SnapKV/H2O-style eviction) instead of training write tokens.

For every held-out question (the demo's manuals, oracle leaves, the shipped answer backbone), each
gold leaf keeps `s` of its own stored rows per layer and key/value head, laid out as `memory_kv`
lays out write tokens, and the answer is generated from them:
- `stride`: `s` rows evenly spaced over the leaf;
- `probe`: the rows the prompt's closing tokens, with a question-agnostic question ("What is
  it?"), attend to most (attention summed over those queries and the grouped query heads, then
  max-pooled over 5 neighbouring tokens so that spans stay together) — computable offline;
- `question`: the same with the *real* question's closing tokens: needs the question, so it is
  not a memory an index could store; it bounds what any selection of `s` rows could do;
- `mean`: not a selection: the leaf cut into `s` runs of consecutive rows, each run replaced by
  the mean of its keys (before RoPE) and of its values (mean pooling, as in arXiv 2510.20797,
  but on the KV cache and untrained);
- `surprisal`: the rows of the tokens the answer backbone finds least predictable in the leaf
  (NLL of each token after the chat preamble and the leaf's earlier tokens, max-pooled over
  `--pool` neighbours; LLMLingua's self-information criterion, applied to KV rows): names and
  numbers rather than boilerplate; question-agnostic, so an index could store it.
`s` = the leaf's length keeps every row (`leaf_kv`). A leaf shorter than `s` keeps all its rows.

    python bench/kv_select_ceiling.py [--budgets 16,32,64] \
        [--out bench/results/kv_select_ceiling.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

STRATEGIES = ("stride", "probe", "question", "mean", "surprisal")
PROBE_QUESTION = "What is it?"


def window_attention_fn():
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from h2mt_jax.backbone.rope import apply_rope, inverse_frequencies, static_rope_tables

    @functools.partial(jax.jit, static_argnames=("graphdef",))
    def window_attention(graphdef, params, ids, n_pre, n_leaf, n_win):
        """Attention of the window queries (positions `n_pre + n_leaf ..` `+ n_win`) over every
        position of `ids` `[T]`, summed over window queries and grouped heads: `[L, kh, T]`."""
        model = nnx.merge(graphdef, params)
        cfg = model.cfg
        t = ids.shape[0]
        x = model.embed(ids[None]).astype(model.dtype)
        cos, sin = static_rope_tables(inverse_frequencies(cfg), 1, t)
        pos = jnp.arange(t)
        window = ((pos >= n_pre + n_leaf) & (pos < n_pre + n_leaf + n_win)).astype(jnp.float32)
        causal = pos[None, :] <= pos[:, None]
        h, kh, dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        out = []
        for layer in model.layers:
            qkv = layer.attn.qkv(layer.attn_norm(x))
            q = apply_rope(qkv[..., :cfg.q_dim].reshape(1, t, h, dh), cos, sin) * dh ** -0.5
            k = apply_rope(qkv[..., cfg.q_dim:cfg.q_dim + cfg.kv_dim].reshape(1, t, kh, dh),
                           cos, sin)
            s = jnp.einsum("tkgd,skd->kgts", q[0].reshape(t, kh, h // kh, dh), k[0])
            p = jax.nn.softmax(jnp.where(causal, s.astype(jnp.float32), -1e30), -1)
            out.append((p * window[None, None, :, None]).sum((1, 2)))
            x, _ = layer(x, cos, sin)
        return jnp.stack(out)

    return window_attention


def token_nll_fn():
    import jax
    import jax.numpy as jnp
    from flax import nnx

    @functools.partial(jax.jit, static_argnames=("graphdef",))
    def token_nll(graphdef, params, ids):
        """NLL of `ids[i + 1]` after `ids[:i + 1]`, for every i: `[T]`."""
        model = nnx.merge(graphdef, params)
        logp = jax.nn.log_softmax(model.logits(model(model.embed(ids[None]))[0])[0]
                                  .astype(jnp.float32), -1)
        nxt = jnp.concatenate([ids[1:], ids[:1]])
        return -jnp.take_along_axis(logp, nxt[:, None], -1)[:, 0]

    return token_nll


def max_pool(x, width: int):
    import numpy as np

    pad = width // 2
    xp = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], constant_values=-np.inf)
    return np.max(np.stack([xp[..., i:i + x.shape[-1]] for i in range(width)]), 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default="16,32,64", help="rows kept per leaf")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--train-docs", type=int, default=16, help="documents before the held-out ones")
    ap.add_argument("--eval-docs", type=int, default=4)
    ap.add_argument("--checkpoint", default="smollm2-135m-h2mt")
    ap.add_argument("--pool", type=int, default=5)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    budgets = [int(x) for x in args.budgets.split(",")]
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if not set(strategies) <= set(STRATEGIES) or min(budgets) < 1:
        raise SystemExit(f"--strategies must name some of {STRATEGIES}; budgets must be >= 1")

    import jax.numpy as jnp
    import numpy as np
    from tqdm.auto import tqdm

    import h2mt_jax
    from h2mt_jax.data import prompts
    from h2mt_jax.data.items import synthetic_items
    from h2mt_jax.eval.metrics import score_example
    from h2mt_jax.hierarchy.h2mt import H2MT

    lm = h2mt_jax.load_lm("smollm2-135m-instruct")
    h2mt = H2MT.load(args.checkpoint, lm)
    alm, tok = h2mt.answer_lm, lm.tokenizer
    items = synthetic_items(0, args.eval_docs, args.train_docs, chapters=4)
    template = prompts.SYNTHETIC_TEMPLATE
    new_tokens = prompts.load_max_new_tokens()["synthetic"]
    preamble = h2mt.kv_prefix
    indexes = {}
    for it in tqdm(items, desc="indexes", leave=False):
        if it.doc_id not in indexes:
            indexes[it.doc_id] = h2mt.build(it.context, fmt="markdown", kv_store="float32",
                                             doc_id=it.doc_id)
    window_attention = window_attention_fn()
    token_nll = token_nll_fn()
    _, probe_post = prompts.split_prompt(tok, template, PROBE_QUESTION)
    width = h2mt.config.build.leaf_len + len(preamble) + 64
    cached = {}

    def attention(index, leaf, window):
        key = (index.doc_id, leaf, tuple(window))
        if key not in cached:
            leaf_ids = list(index.spec.leaf_tokens[leaf])
            p, n = len(preamble), len(leaf_ids)
            ids = list(preamble) + leaf_ids + list(window)
            if len(ids) > width:
                raise SystemExit(f"window of {len(window)} tokens too long for the probe")
            arr = np.zeros(width, np.int32)
            arr[:len(ids)] = ids
            a = window_attention(alm.graphdef, alm.params, jnp.asarray(arr), p, n, len(window))
            cached[key] = np.asarray(a)[:, :, p:p + n]
        return cached[key]

    def select(index, leaf, s, strategy, window):
        k, v = index.kv.gather([leaf])  # [L, t, kh, dh]
        t = k.shape[1]
        if s >= t:
            return k, v
        if strategy == "stride":
            idx = np.linspace(0, t - 1, s).round().astype(int)
            return k[:, idx], v[:, idx]
        if strategy == "surprisal":
            key = (index.doc_id, leaf, "nll")
            if key not in cached:
                leaf_ids = list(index.spec.leaf_tokens[leaf])
                p, n = len(preamble), len(leaf_ids)
                if not p:
                    raise SystemExit("surprisal scores a leaf's first token after the chat "
                                     "preamble: use a checkpoint with kv_prefix='chat'")
                arr = np.zeros(width, np.int32)
                arr[:p + n] = list(preamble) + leaf_ids
                cached[key] = np.asarray(token_nll(alm.graphdef, alm.params,
                                                   jnp.asarray(arr)))[p - 1:p - 1 + n]
            score = max_pool(cached[key], args.pool)
            idx = np.sort(np.argsort(-score, kind="stable")[:s])
            return k[:, idx], v[:, idx]
        if strategy == "mean":
            runs = np.array_split(np.arange(t), s)
            pool = lambda x: np.stack([x[:, r].mean(1) for r in runs], 1)  # noqa: E731
            return pool(k), pool(v)
        score = max_pool(attention(index, leaf, window), args.pool)  # [L, kh, t]
        idx = np.sort(np.argsort(-score, axis=-1, kind="stable")[..., :s], -1)[..., None]
        def pick(x):  # [L, t, kh, dh] -> [L, s, kh, dh]: each (layer, head) its own rows
            return np.take_along_axis(x.transpose(0, 2, 1, 3), idx, 2).transpose(0, 2, 1, 3)

        return pick(k), pick(v)

    out = {"bench": "kv_select_ceiling", "args": vars(args), "questions": len(items),
           "leaf_tokens": h2mt.config.build.leaf_tokens, "f1": {}}
    runs = [("all", "stride")] + [(s, st) for s in budgets for st in strategies]
    for s, strategy in runs:
        t0, f1 = time.perf_counter(), []
        for it in tqdm(items, desc=f"{s}/{strategy}", leave=False):
            index = indexes[it.doc_id]
            gold = sorted(set(index.leaves_for_spans(it.gold_spans)))
            pre, post = prompts.split_prompt(tok, template, it.question)
            window = post if strategy == "question" else probe_post
            rows = [select(index, leaf, 10 ** 9 if s == "all" else s, strategy, window)
                    for leaf in gold]
            seg_k = np.concatenate([k for k, _ in rows], 1)
            seg_v = np.concatenate([v for _, v in rows], 1)
            gen = alm.generate_with_segment(pre, seg_k, seg_v, post, new_tokens)
            f1.append(score_example("synthetic", tok.decode(gen.tokens[0],
                                                            skip_special_tokens=True), it.answers))
        name = "leaf_kv (all rows)" if s == "all" else f"s{s}/{strategy}"
        out["f1"][name] = 100 * float(np.mean(f1))
        print(f"{name}: F1 {out['f1'][name]:.1f} ({time.perf_counter() - t0:.0f} s)",
              file=sys.stderr)
    full = out["f1"]["leaf_kv (all rows)"]
    out["f1_vs_leaf_kv"] = {k: (v / full if full else None) for k, v in out["f1"].items()}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
