"""The H²MT question-answering loss (docs/algorithms.md, training): pure functions of padded
example arrays, for `jax.jit` / `jax.grad` / `jax.vmap`.

Loss = answer cross-entropy through the selected memories + `λ` × routing cross-entropy
(+ `β` × distillation).
- Routing: at every depth, a softmax over that depth's nodes against the uniform distribution
  over its gold nodes (gold leaves and their ancestors): the beam compares nodes depth by depth.
- Answer: the `k` best leaves by routing score, gold leaves forced in (teacher forcing), are
  read in document order as at inference, as "memory" (`k·m` vectors in the slots of
  `prefix ‖ memories ‖ suffix ‖ answer`) or "memory_kv" (their write tokens' keys and values
  after the prefix; `memory_loss.read_hidden`); a batch's `mode` picks the reading. The loss
  covers the answer tokens and the end-of-sequence token. A third reading, "text"
  (`QA_READ_MODES`), answers from the gold leaves' raw text (`text_ids`, `text_labels`: the
  template with that text, then the answer) through the same decoder adapters, with the
  routing loss and no distillation: batches of it keep the adapters reading text while the
  memory batches train them to read memories.
- Distillation (`distill`): the teacher is the same backbone (with the decoder adapters it
  started from) answering from the gold leaves' raw text; its top-`K` log-probabilities at the
  gold answer's positions (`t_ids`, `t_logp`, computed when the examples are built) give
  "kl": `β`·KL(teacher ‖ student) on the same pass as the gold answer; "tokens": the CE of
  the teacher's greedy answer (`t_seq`, `t_labels`), a second reader pass.
- `encode="cached"`: routing and the answer read node memories computed once per document with
  the starting parameters (no gradient into the encoder). `encode="full"`: the answer's `k`
  leaves are encoded again inside the loss (write tokens, encoder adapters: gradients reach the
  encoder for the leaves the answer reads, and only those), while routing keeps the cached
  memories, which are not refreshed during a run (a new run rebuilds them from its starting
  parameters); the aggregator gets no gradient from the answer.

An example is a dict: `tree` (the fields of a padded `Tree`), `memories [N, m, d]`, `gold [N]`
(gold leaves and their ancestors, padded ids), `q_ids [Tq]`, `q_len []`, `seq_ids [T]`,
`pre_ids [P]` (the first tokens of `seq_ids`), `mem_start []`, `labels [T]` (-1: no loss),
`mode []` (an index into the task's read modes; one value per batch), with a "text" reading
`text_ids [Tt]`, `text_labels [Tt]`, and with distillation `t_ids [T, K]`, `t_logp [T, K]` (per
position of `seq_ids`) or `t_seq_ids [T]`, `t_labels [T]`. `h2mt_jax.train.h2mt_qa` builds them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from h2mt_jax.backbone.lora import merge_lora
from h2mt_jax.hierarchy.config import H2MTConfig
from h2mt_jax.hierarchy.memory import encoder_params, memory_inject, read_memories
from h2mt_jax.hierarchy.memory_loss import encode_write, kv_read
from h2mt_jax.hierarchy.route import MASKED, query_embedding, score_nodes
from h2mt_jax.hierarchy.tree import Tree

ANSWER_SLOTS = 64  # labelled positions the vocabulary projection runs on (answer + end token)
GOLD_BONUS = 1e4  # added to gold leaves' scores when choosing the answer's leaves (teacher forcing)
QA_READ_MODES = ("memory", "memory_kv", "text")  # how the QA loss's answer reads the leaves


def route_loss(scores, tree: Tree, gold) -> jnp.ndarray:
    """Mean over depths with gold nodes of the cross-entropy against the gold nodes there."""
    total, count = 0.0, 0.0
    for d in range(1, tree.max_height + 2):
        at = (tree.depth == d) & tree.node_mask
        gold_here = gold & at
        n_gold = gold_here.sum()
        logp = jax.nn.log_softmax(jnp.where(at, scores, MASKED))
        ce = -jnp.sum(jnp.where(gold_here, logp, 0.0)) / jnp.maximum(n_gold, 1)
        has = (n_gold > 0).astype(jnp.float32)
        total, count = total + ce * has, count + has
    return total / jnp.maximum(count, 1.0)


def _answer_hidden(reader, params, mode: str, seq_ids, pre_ids, mem_start, n_mem: int, mem,
                   keys, values, layer: int = -1):
    """Reader hidden states over `seq_ids` (`[T]`, memory slots at `mem_start`; `pre_ids`: its
    first tokens, `[P]` with `P >= mem_start`) with the chosen leaves' memories read as `mode`
    (`layer`: `H2MTConfig.mem_layer`, see `memory.memory_prompt`); `[T, d]`, aligned with
    `seq_ids`."""
    if mode == "memory":
        emb = reader.embed(seq_ids[None])[0]
        flat = mem.reshape(-1, mem.shape[-1])  # [k*m, d]
        chosen = read_memories(params, flat)
        emb = jax.lax.dynamic_update_slice(emb, chosen.astype(emb.dtype), (mem_start, 0))
        inject = memory_inject(params, layer, flat[None], mem_start, seq_ids.shape[0])
        return reader(emb[None], inject=inject)[0][0]
    # memory_kv: prefix, then the k*m write tokens' keys/values, then the rest of the sequence
    t = seq_ids.shape[0]
    rest = jax.lax.dynamic_slice(jnp.pad(seq_ids, (0, t)), (mem_start + n_mem,), (t,))
    post = reader.embed(rest[None])
    # [layers, k, m, kh, dh] -> one segment [layers, 1, k*m, kh, dh], leaves in order
    k = keys.reshape(keys.shape[0], 1, -1, *keys.shape[-2:])
    v = values.reshape(values.shape[0], 1, -1, *values.shape[-2:])
    start = jnp.reshape(mem_start, (1,)).astype(jnp.int32)
    h = kv_read(reader, pre_ids[None], start, k, v, post)[0]  # [t, d] for `rest`
    # back to `seq_ids` positions: rest[j] sits at mem_start + n_mem + j
    idx = jnp.arange(t) - mem_start - n_mem
    return jnp.where((idx >= 0)[:, None], h[jnp.clip(idx, 0, t - 1)], 0.0)


def example_loss(trainable: dict, backbone_params, graphdef, ex: dict, *, cfg: H2MTConfig,
                 route_weight: float, lora_scale: float, encode: str, mode: str = "memory",
                 distill: str = "none", distill_weight: float = 1.0):
    """(loss, metrics) for one padded example, its memories read as `mode`."""
    params = trainable["h2mt"]
    tree = Tree(**ex["tree"])
    base = trainable.get("backbone", backbone_params)
    answer_model = nnx.merge(graphdef, merge_lora(base, trainable.get("lora"), lora_scale))
    mem = jax.lax.stop_gradient(ex["memories"])
    s = query_embedding(answer_model, params, ex["q_ids"][None], ex["q_len"][None])[0]
    scores = score_nodes(params, s, mem, tree.node_mask)
    route = route_loss(scores, tree, ex["gold"])
    leaf_slots = tree.num_leaf_slots
    leaf_ok = tree.node_mask[:leaf_slots] & (tree.leaf_lengths > 0)
    gold_leaf = ex["gold"][:leaf_slots]
    leaf_scores = jnp.where(leaf_ok, scores[:leaf_slots], -jnp.inf)
    _, sel = jax.lax.top_k(leaf_scores + GOLD_BONUS * gold_leaf, cfg.k)
    sel = jnp.sort(sel)  # document order, as at inference
    keys = values = None
    if mode == "text":
        chosen = None
    elif encode == "full" or mode == "memory_kv":
        encoder = nnx.merge(graphdef, encoder_params(base, params))
        chosen, keys, values = jax.checkpoint(
            lambda t, n: encode_write(encoder, params, t, n, cfg.mem_pool, cfg.mem_layer))(
            tree.leaf_tokens[sel], tree.leaf_lengths[sel])
        if encode != "full":
            chosen, keys, values = jax.lax.stop_gradient((chosen, keys, values))
    else:
        chosen = mem[sel]
    n_mem = cfg.k * cfg.mem_tokens

    def nll(seq, labels):
        """(mean NLL of the labels, log-probs `[A, V]` and labels `[A]` at the labelled
        positions): the vocabulary projection runs on at most `ANSWER_SLOTS` positions."""
        if mode == "text":
            hidden = answer_model(answer_model.embed(seq[None]))[0][0]
        else:
            hidden = _answer_hidden(answer_model, params, mode, seq, ex["pre_ids"],
                                    ex["mem_start"], n_mem, chosen, keys, values, cfg.mem_layer)
        a = min(ANSWER_SLOTS, labels.shape[0])
        (pos,) = jnp.nonzero(labels >= 0, size=a, fill_value=0)
        lab = jnp.where(jnp.arange(a) < jnp.sum(labels >= 0), labels[pos], -1)
        logp = jax.nn.log_softmax(answer_model.logits(hidden[pos]), axis=-1)
        picked = jnp.take_along_axis(logp, jnp.maximum(lab, 0)[:, None], axis=-1)[:, 0]
        count = jnp.sum(lab >= 0)
        total = -jnp.sum(jnp.where(lab >= 0, picked, 0.0))
        return total / jnp.maximum(count, 1), (logp, lab, pos)

    if mode == "text":
        answer, _ = nll(ex["text_ids"], ex["text_labels"])
    else:
        answer, (logp, lab, pos) = nll(ex["seq_ids"], ex["labels"])
    loss = answer + route_weight * route
    metrics = {"answer_loss": answer, "route_loss": route}
    if distill != "none" and mode == "text":  # the teacher's targets sit on the memory sequence
        metrics["distill_loss"] = jnp.zeros(())
    elif distill == "kl":
        student = jnp.take_along_axis(logp, ex["t_ids"][pos], axis=-1)  # [A, K]
        t_logp = ex["t_logp"][pos]
        valid = lab >= 0
        kl = jnp.sum(jnp.exp(t_logp) * (t_logp - student), axis=-1)
        kl = jnp.sum(jnp.where(valid, kl, 0.0)) / jnp.maximum(valid.sum(), 1)
        loss, metrics["distill_loss"] = loss + distill_weight * kl, kl
    elif distill == "tokens":
        teacher, _ = nll(ex["t_seq_ids"], ex["t_labels"])
        loss, metrics["distill_loss"] = loss + distill_weight * teacher, teacher
    top2 = jax.lax.top_k(leaf_scores, 2)[1]
    hits = jnp.sum(gold_leaf[top2].astype(jnp.float32))
    gold_n = jnp.maximum(jnp.sum(gold_leaf), 1)
    metrics["recall_at_2"] = hits / gold_n
    return loss, metrics


def batch_loss(trainable, backbone_params, graphdef, batch, modes=("memory",), **kw):
    """Mean loss over a batch (`vmap` of `example_loss`) and mean metrics, with `read_mode`
    (the reading's index in `QA_READ_MODES`, so mixed runs' curves split by reading). With
    several read `modes`, the batch's `mode[0]` (an index into them) picks one
    (`jax.lax.switch`)."""
    def run(mode):
        def go():
            losses, metrics = jax.vmap(lambda ex: example_loss(
                trainable, backbone_params, graphdef, ex, mode=mode, **kw))(batch)
            metrics = jax.tree.map(jnp.mean, metrics)
            metrics["read_mode"] = jnp.float32(QA_READ_MODES.index(mode))
            return jnp.mean(losses), metrics
        return go

    if len(modes) == 1:
        return run(modes[0])()
    return jax.lax.switch(jnp.clip(batch["mode"][0], 0, len(modes) - 1), [run(m) for m in modes])
