"""HMT training parity: our trainer's step and the reference's training step learn the same.

Both start from the same weights (a small random Llama saved once and loaded by both frameworks,
or `--model DIR`, a transformers checkpoint; the same HMT memory parameters), read the same
WikiText-2 windows in the same order, with the same AdamW, learning-rate schedule, clipping,
BPTT depth and trainable set. Ours is the trainer's step (`h2mt_jax.train.trainer.make_step` over
task `hmt_lm`, jitted); the reference is its PyTorch restatement (`bench/hmt_reference.py`; the
public code needs CUDA). Prints JSON (both loss curves, the mean over the last 50 steps, their
relative gap, held-out loss after training) and writes a PNG of the two curves.

    python bench/hmt_train_parity.py [--steps 200] [--trainable all] \
        [--out bench/results/hmt_train_parity.json]
    python bench/hmt_train_parity.py --steps 4 --last 2      # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # h2mt_jax, configs and bench.hmt_reference

WIKITEXT = os.path.join(ROOT, "..", "shared", "data", "wikitext2", "wiki.test.raw")


def token_stream(max_chars: int) -> tuple[list[int], str]:
    """SmolLM2's tokenization of WikiText-2 (the shared sample), the tokenizer both models use."""
    import h2mt_jax

    if not os.path.isfile(WIKITEXT):
        sys.exit(f"{WIKITEXT} is absent: this run needs the shared WikiText-2 sample")
    tok = h2mt_jax.load_lm("tiny-random-smollm2").tokenizer
    text = open(WIKITEXT, encoding="utf-8").read()[:max_chars]
    return tok(text)["input_ids"], "wikitext2 wiki.test.raw"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--last", type=int, default=50, help="steps averaged at the end")
    ap.add_argument("--model", default=None, help="a transformers Llama directory (default: a "
                    "small random Llama with SmolLM2's vocabulary, saved once for both)")
    ap.add_argument("--trainable", default="all", choices=["all", "memory"])
    ap.add_argument("--segment-length", type=int, default=128)
    ap.add_argument("--num-sensory", type=int, default=16)
    ap.add_argument("--recall-dim", type=int, default=64)
    ap.add_argument("--bptt-depth", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="the JSON file (the PNG goes beside it)")
    ap.add_argument("--replot", default=None, metavar="JSON",
                    help="only redraw the PNG of an earlier run's JSON")
    args = ap.parse_args()
    if args.replot:
        with open(args.replot) as f:
            done = json.load(f)
        plot(done["loss_ours"], done["loss_reference"], os.path.splitext(args.replot)[0] + ".png",
             done["mean_last"]["steps"])
        return

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    import h2mt_jax
    from bench.hmt_reference import (TorchHMT, reference_importable, save_random_llama,
                                     torch_optimizer, transformers_model)
    from configs.wikitext import get_config
    from h2mt_jax.hmt.loss import window_segments
    from h2mt_jax.train import trainer
    from h2mt_jax.train.hmt_lm import HMTLMTask

    torch.manual_seed(args.seed)
    model_dir = args.model or save_random_llama(tempfile.mkdtemp(prefix="parity_"),
                                                seed=args.seed, vocab_size=49152)
    lm = h2mt_jax.load_lm(model_dir)
    ids, source = token_stream(1_500_000)
    ids = np.asarray(ids, np.int32) % lm.config.vocab_size

    c = get_config()
    c.backbone, c.seed, c.resume = model_dir, args.seed, False
    c.hmt.segment_length, c.hmt.num_sensory = args.segment_length, args.num_sensory
    c.hmt.recall_dim, c.hmt.stage = args.recall_dim, 2
    t = c.train
    t.steps, t.batch_size, t.bptt_depth = args.steps, args.batch_size, args.bptt_depth
    t.lr, t.warmup, t.weight_decay, t.trainable = args.lr, args.warmup, args.weight_decay, \
        args.trainable
    task = HMTLMTask(c, lm=lm, progress=False, tokens=ids)
    hcfg = task.hcfg
    l = hcfg.tokens_per_segment
    window = args.bptt_depth * l + 1

    # The same windows, in the same order, for both: training windows from the training part,
    # held-out windows from the held-out tail (HMTLMTask's split).
    rng = np.random.default_rng(args.seed)
    starts = np.arange(0, len(task.train_ids) - window + 1, l)
    order = rng.permutation(starts)
    need = args.steps * args.batch_size
    order = np.resize(order, need).reshape(args.steps, args.batch_size)
    held = [task.eval_ids[s:s + window] for s in
            range(0, len(task.eval_ids) - window + 1, l)][:args.eval_windows]

    # Ours: the trainer's jitted step over task hmt_lm.
    optimizer = trainer.make_optimizer(t)
    mesh = trainer.sharding.make_mesh(1, 1, 1)
    state, state_sh, frozen = trainer.init_state(task, optimizer, mesh,
                                                 jax.random.PRNGKey(args.seed))

    def batch_of(wins):
        seg, tgt, lens = window_segments(np.stack(wins), l)
        return {"ids": jnp.asarray(seg.transpose(1, 0, 2)),
                "targets": jnp.asarray(tgt.transpose(1, 0, 2)),
                "lengths": jnp.asarray(np.tile(lens, (len(wins), 1)))}

    step_fn = jax.jit(trainer.make_step(task, optimizer), donate_argnums=(0,))
    eval_fn = jax.jit(lambda tr, fr, b: task.loss(tr, fr, b)[0])

    # The reference: the same backbone weights from disk, the same memory parameters.
    th = TorchHMT.from_hmt(transformers_model(model_dir).train(), task.hmt)
    if args.trainable != "all":
        for p in th.model.parameters():
            p.requires_grad_(False)
    params = [p for p in th.parameters() if p.requires_grad]
    topt, sched = torch_optimizer(params, t.lr, t.warmup, t.steps, t.weight_decay)

    ours, ref, secs = [], [], {"ours": 0.0, "reference": 0.0}
    for step in range(args.steps):
        wins = [task.train_ids[s:s + window] for s in order[step]]
        t0 = time.perf_counter()
        state, metrics = step_fn(state, frozen, batch_of(wins))
        ours.append(float(metrics["loss"]))
        secs["ours"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        loss = th.window_loss(torch.as_tensor(np.stack(wins).astype(np.int64)))
        topt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, t.clip)
        topt.step()
        sched.step()
        ref.append(float(loss.detach()))
        secs["reference"] += time.perf_counter() - t0
        if step % 20 == 0 or step == args.steps - 1:
            print(f"step {step + 1}: ours {ours[-1]:.4f} reference {ref[-1]:.4f}", file=sys.stderr)

    with torch.no_grad():
        th.eval()
        ref_eval = float(np.mean([float(th.window_loss(torch.as_tensor(w[None].astype(np.int64))))
                                  for w in held]))
    ours_eval = float(np.mean([float(eval_fn(state["trainable"], frozen, batch_of([w])))
                               for w in held]))
    k = min(args.last, args.steps)
    mo, mr = float(np.mean(ours[-k:])), float(np.mean(ref[-k:]))
    gap = abs(mo - mr) / mr
    out = {"bench": "hmt_train_parity", "model": "small random Llama (saved once)"
           if args.model is None else args.model,
           "backbone": {"layers": lm.config.num_layers, "hidden": lm.config.hidden_size,
                        "vocab": lm.config.vocab_size},
           "reference": "PyTorch restatement (bench/hmt_reference.py)",
           "reference_why": reference_importable(os.environ.get("HMT_PYTORCH_DIR"))[1],
           "data": source, "hmt_config": hcfg.to_dict(),
           "train": {"steps": args.steps, "batch_size": args.batch_size,
                     "bptt_depth": args.bptt_depth, "lr": t.lr, "warmup": t.warmup,
                     "decay": t.decay, "weight_decay": t.weight_decay, "clip": t.clip,
                     "trainable": args.trainable, "optimizer": "AdamW (optax / torch.optim)"},
           "loss_ours": ours, "loss_reference": ref,
           "mean_last": {"steps": k, "ours": mo, "reference": mr, "relative_gap": gap},
           "first_loss": {"ours": ours[0], "reference": ref[0]},
           "held_out_loss": {"windows": len(held), "ours": ours_eval, "reference": ref_eval},
           "seconds": secs,
           "targets_met": {"last_steps_within_2_percent": gap <= 0.02}}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        plot(ours, ref, os.path.splitext(args.out)[0] + ".png", k)


def plot(ours, ref, path: str, last: int) -> None:
    """Both loss curves (10-step moving averages, the reference dashed over ours) and their
    per-step difference, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax, dx) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True,
                                 gridspec_kw={"height_ratios": [3, 1.3]})
    steps = np.arange(1, len(ours) + 1)
    w = min(10, len(ours))
    avg = lambda v: np.convolve(v, np.ones(w) / w, mode="valid")  # noqa: E731
    ax.plot(steps, ours, color="C0", alpha=0.25, lw=0.8)
    ax.plot(steps[w - 1:], avg(ours), color="C0", lw=3, label=f"ours (JAX), {w}-step mean")
    ax.plot(steps[w - 1:], avg(ref), color="C3", lw=1.5, ls="--",
            label=f"reference (PyTorch), {w}-step mean")
    for a in (ax, dx):
        a.axvspan(len(ours) - last + 0.5, len(ours) + 0.5, color="0.92", zorder=0)
    ax.set_ylabel("training loss (last segment)")
    ax.set_title(f"HMT training parity: same weights, data, optimizer (last {last} steps shaded)")
    ax.legend()
    dx.plot(steps, np.asarray(ours) - np.asarray(ref), color="k", lw=0.8)
    dx.set_ylabel("ours - reference")
    dx.set_xlabel("step")
    dx.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
