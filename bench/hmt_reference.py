"""HMT in PyTorch, restated from the reference's documented behaviour, for side-by-side benches.

The public reference (OswaldHe/HMT-pytorch, `modeling_rmt/language_modeling.py` and
`long_mem_cross_attn.py`) cannot run on a CPU: its cells call `.cuda()` unconditionally and the
recall projections are fixed to bfloat16; its module also imports `accelerate`, `evaluate` and
`sklearn`. `reference_importable()` says whether it can be used here; when it cannot, the benches
use this restatement, which follows the reference's training forward pass step by step:

- per segment of `L` tokens: `[memory ‖ E(sensory) ‖ E(x) ‖ memory]` through the HF model with
  `output_hidden_states`, logits for every position (the HF head computes them all), the new memory
  is the last position's final hidden state;
- stage 2 from the second segment on: the summary pass `[p ‖ E(x[:Lq]) ‖ p]`, then
  `softmax((q W_q)(M W_k)ᵀ / sqrt(d_h)) · M` over the last `N` memories (no value projection);
- the loss is the cross-entropy over the last `loss_segments` segments' tokens, back-propagated
  through every segment of the window (the reference's `manage_gradients` never detaches).

Parameters are taken from an `h2mt_jax.hmt.HMT` (`TorchHMT.from_hmt`) so both start from the same
weights; `tests/test_hmt_convert.py` checks that the logits agree.
"""

from __future__ import annotations

import importlib.util
import math
import os

import numpy as np
import torch


def reference_importable(path: str | None = None) -> tuple[bool, str]:
    """(usable, why): whether the public reference code can train on this machine."""
    if not torch.cuda.is_available():
        return False, ("the reference (OswaldHe/HMT-pytorch) moves every segment to CUDA "
                       "(`.cuda()` in its memory cell and recall) and no CUDA device is present")
    if path is None or not os.path.isdir(os.path.join(path, "modeling_rmt")):
        return False, "the reference's source tree (modeling_rmt/) is not on this machine"
    for mod in ("accelerate", "evaluate", "sklearn"):
        if importlib.util.find_spec(mod) is None:
            return False, f"the reference imports {mod!r}, which is not installed"
    return True, "importable"


class TorchHMT(torch.nn.Module):
    """The HMT memory parameters around a transformers causal LM (all of them trainable)."""

    def __init__(self, model, memory: np.ndarray, summary: np.ndarray, w_q: np.ndarray,
                 w_k: np.ndarray, *, segment_length: int, num_sensory: int, recall_context: int,
                 sum_fraction: float = 0.5, stage: int = 2):
        super().__init__()
        self.model = model
        t = lambda a: torch.nn.Parameter(torch.tensor(np.asarray(a, np.float32)))  # noqa: E731
        self.memory, self.summary = t(memory), t(summary)  # [1, d]
        self.w_q, self.w_k = t(w_q), t(w_k)  # [d, d_h]
        self.ks, self.n, self.stage = num_sensory, recall_context, stage
        self.length = segment_length - 2 - num_sensory
        self.lq = int(round(self.length * sum_fraction))

    @classmethod
    def from_hmt(cls, model, hmt) -> "TorchHMT":
        """The same memory parameters and HMT config as `hmt` (an `h2mt_jax.hmt.HMT`)."""
        c, p = hmt.config, hmt.params
        return cls(model, p["memory"], p["summary"], p["w_q"], p["w_k"],
                   segment_length=c.segment_length, num_sensory=c.num_sensory,
                   recall_context=c.recall_context, sum_fraction=c.sum_fraction, stage=c.stage)

    def _cell(self, seg, memory, prepend=None):
        """One pass: (logits of the segment's tokens, new memory [b, 1, d])."""
        emb = self.model.get_input_embeddings()
        x = emb(seg)
        if prepend is not None:
            x = torch.cat([emb(prepend), x], 1)
        out = self.model(inputs_embeds=torch.cat([memory, x, memory], 1),
                         output_hidden_states=True)
        skip = 1 + (0 if prepend is None else prepend.shape[1])
        return out.logits[:, skip:-1], out.hidden_states[-1][:, -1:]

    def _recall(self, seg, memory_seq):
        b = seg.shape[0]
        _, q = self._cell(seg[:, :self.lq], self.summary[None].expand(b, 1, -1))
        scores = (q @ self.w_q) @ (memory_seq @ self.w_k).transpose(1, 2)
        weights = torch.softmax(scores / math.sqrt(self.w_q.shape[1]), -1)
        return weights @ memory_seq

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """`[B, T]` ids -> `[B, T, V]` logits, segment by segment."""
        b = ids.shape[0]
        m0 = self.memory[None].expand(b, 1, -1)
        memory_seq, prepend, last, outs = None, None, None, []
        for start in range(0, ids.shape[1], self.length):
            seg = ids[:, start:start + self.length]
            if memory_seq is None:
                memory = m0
            elif self.stage == 2:
                memory = self._recall(seg, memory_seq)
            else:
                memory = last
            logits, last = self._cell(seg, memory, prepend)
            prepend = seg[:, -self.ks:] if self.ks else None
            outs.append(logits)
            memory_seq = last if memory_seq is None else torch.cat([memory_seq, last], 1)[:, -self.n:]
        return torch.cat(outs, 1)

    def window_loss(self, window: torch.Tensor, loss_segments: int = 1) -> torch.Tensor:
        """Mean next-token loss on the last `loss_segments` segments of `[B, D*L + 1]` windows."""
        ids, targets = window[:, :-1], window[:, 1:]
        logits = self.logits(ids)
        n = loss_segments * self.length
        return torch.nn.functional.cross_entropy(
            logits[:, -n:].reshape(-1, logits.shape[-1]), targets[:, -n:].reshape(-1))


def torch_schedule(lr: float, warmup: int, steps: int, decay: str = "cosine"):
    """The trainer's learning-rate schedule (`h2mt_jax.train.trainer.make_optimizer`) as a
    `LambdaLR` factor: linear warmup from 0, then cosine to `0.1 lr` (or constant)."""
    steps = max(int(steps), 2)
    warmup = max(1, min(int(warmup), steps - 1))

    def factor(i: int) -> float:
        if i < warmup:
            return i / warmup
        if decay != "cosine":
            return 1.0
        frac = min(i - warmup, steps - warmup) / (steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    return factor


def torch_optimizer(params, lr: float, warmup: int, steps: int, weight_decay: float,
                    decay: str = "cosine"):
    """AdamW with the trainer's schedule: (optimizer, scheduler)."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, eps=1e-8)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, torch_schedule(lr, warmup, steps, decay))


def transformers_model(name: str):
    """The transformers PyTorch model (fp32) with the same weights as our backbone `name`: a
    registry name (its GGUF), a checkpoint directory or a .gguf file."""
    import transformers

    from h2mt_jax.weights import resolve

    transformers.logging.set_verbosity_error()
    src = resolve(name)
    if src.kind == "gguf":
        return transformers.AutoModelForCausalLM.from_pretrained(
            os.path.dirname(src.path), gguf_file=os.path.basename(src.path), dtype=torch.float32)
    return transformers.AutoModelForCausalLM.from_pretrained(src.path, dtype=torch.float32)


def save_random_llama(directory: str, seed: int = 0, **sizes) -> str:
    """Saves a small random transformers Llama (safetensors + config.json) that both frameworks
    load (`h2mt_jax.load_lm(directory)`, `AutoModelForCausalLM.from_pretrained(directory)`)."""
    import transformers

    torch.manual_seed(seed)
    cfg = dict(vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
               tie_word_embeddings=True, rms_norm_eps=1e-5)
    cfg.update(sizes)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg))
    model.save_pretrained(directory, safe_serialization=True)
    return directory
