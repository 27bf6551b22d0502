"""F1 against `m` (memory tokens per leaf), and against QA training steps: one QA fine-tuning run
per `m` from one checkpoint, scored with oracle routing on the demo's held-out manuals after each
of the `--steps` counts.

Every point starts from `--checkpoint` (default: the shipped `smollm2-135m-h2mt`, trained with
m = 16) with its write tokens, pooling queries and aggregator write tokens resized to `m`
(`memory.resize_write_tokens`: the first `m` rows, repeated when `m` is larger), then trains
`--steps` steps of `configs/memory_qa.py` (both readings, answer CE + distillation `--distill`)
on training manuals (seed 0, documents 100 .. 100 + `--train-docs`: never reported on) and is
scored by `bench/answer_quality.py --routes oracle` on manuals 16..19 (36 questions). `text` is
the same trained decoder reading the same leaves' raw text, so `f1 / text_f1` is the fraction the
memory issue targets (memory_kv >= 0.8, memory >= 0.6).

With one step count, each point is its own `train.py` run (cosine schedule). With several
(`--steps 100,200,400`), one run per `m` goes through them in order at a constant learning rate
(after warmup), each count resuming the previous one's checkpoint, and its model is copied to
`model_s<steps>` and scored: the learning curve of one run. Resumable: an existing model is
scored, not retrained; an existing score is kept. Writes JSON to stdout and `--out`, and PNGs
beside it (F1 against m; F1 against steps).

    python bench/mem_tokens_curve.py --m 4,8,16 [--steps 24] [--distill kl]
    python bench/mem_tokens_curve.py --m 16 --distill tokens   # the distill=tokens point
    python bench/mem_tokens_curve.py --m 16 --steps 100,200,300,400 --train-docs 40 \
        --out bench/results/mem_steps_curve.json              # F1 against training steps
    python bench/mem_tokens_curve.py --m 16 --steps 0,100,200 --train-docs 40 \
        --read-modes memory,memory_kv,text --out bench/results/mem_steps_curve.json
                                                # the same with text batches mixed in
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODES = "memory,memory_kv"  # configs/memory_qa.py's train.read_modes
LR = 1e-3  # configs/memory_qa.py's train.lr
# a point's settings when its row leaves them out (rows keep only what differs from these)
POINT_DEFAULTS = {"schedule": "cosine", "read_modes": DEFAULT_MODES, "train_single": 6,
                  "train_two_hop": 3, "lr": LR, "hotpotqa_records": 0}


def _run(cmd: list[str], log: str) -> None:
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        rc = subprocess.call(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if rc:
        raise SystemExit(f"{cmd[1]} failed with exit status {rc}; see {log}")


def _run_suffix(args) -> str:
    """The run directory and plot name tag: "" with the defaults; else "_memory+memory_kv+text"
    (read modes), then "_q40" (40 single-hop questions per training manual), "_h20" (20
    two-hop ones), "_lr0.003" and "_hp70" (the first 70 HotpotQA records added)."""
    out = "" if args.read_modes == DEFAULT_MODES else "_" + args.read_modes.replace(",", "+")
    out += "" if args.train_single == 6 else f"_q{args.train_single}"
    out += "" if args.train_two_hop == 3 else f"_h{args.train_two_hop}"
    out += "" if args.lr == LR else f"_lr{args.lr:g}"
    return out + (f"_hp{args.hotpotqa_records}" if args.hotpotqa_records else "")


def _at_m(checkpoint: str, m: int, directory: str) -> str:
    """`checkpoint` itself when it makes `m` memories per leaf, else a copy saved in
    `directory` with `m` (`H2MT.with_mem_tokens`: resized write tokens, or `m` pooled runs)."""
    import h2mt_jax
    from h2mt_jax.hierarchy.h2mt import FORMAT, H2MT, resolve_checkpoint
    from h2mt_jax.io import read_meta

    meta = read_meta(os.path.join(resolve_checkpoint(checkpoint), "h2mt.json"), FORMAT,
                     "an H2MT checkpoint")
    if meta["config"]["mem_tokens"] == m:
        return checkpoint
    if not os.path.isfile(os.path.join(directory, "h2mt.json")):
        lm = h2mt_jax.load_lm("smollm2-135m-instruct")
        H2MT.load(checkpoint, lm).with_mem_tokens(m).save(directory)
    return directory


def point(m: int, steps: int, args, curve: bool = False) -> dict:
    """Trains (unless done) and scores one point; returns its row. `curve`: the run is shared by
    every step count of this `m` (constant learning rate; resumed from the last count's
    checkpoint)."""
    tag = _run_suffix(args)
    if curve:
        work = os.path.join(args.runs, f"m{m}_{args.distill}_d{args.train_docs}_constant{tag}")
        model, score_path = (os.path.join(work, f"model_s{steps}"),
                             os.path.join(work, f"answer_quality_s{steps}.json"))
    else:
        work = os.path.join(args.runs, f"m{m}_{args.distill}_s{steps}{tag}")
        model, score_path = os.path.join(work, "model"), os.path.join(work, "answer_quality.json")
    os.makedirs(work, exist_ok=True)
    if os.path.isfile(score_path):
        with open(score_path) as f:
            row = json.load(f)
        row.pop("predictions", None)
        return row
    log = os.path.join(work, "log.txt")
    t0 = time.perf_counter()
    if curve and steps == 0:  # the starting checkpoint itself, with m memories per leaf
        model = _at_m(args.checkpoint, m, model)
    elif not os.path.isfile(os.path.join(model, "h2mt.json")):
        cmd = [sys.executable, "train.py", "--config=configs/memory_qa.py",
               f"--config.checkpoint={args.checkpoint}", f"--config.train.mem_tokens={m}",
               f"--config.train.steps={steps}", f"--config.train.warmup={args.warmup}",
               f"--config.train.distill={args.distill}",
               f"--config.train.read_modes={args.read_modes}",
               f"--config.train.route_weight={args.route_weight}",
               f"--config.data.train_docs={args.train_docs}",
               f"--config.data.hotpotqa_records={args.hotpotqa_records}",
               f"--config.data.train_single={args.train_single}",
               f"--config.data.train_two_hop={args.train_two_hop}",
               f"--config.train.lr={args.lr}",
               "--config.eval.after_training=False", f"--config.workdir={work}"]
        if curve:
            cmd.append("--config.train.decay=constant")
        _run(cmd, log)
        if curve:
            shutil.rmtree(model, ignore_errors=True)
            shutil.copytree(os.path.join(work, "model"), model)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "bench/answer_quality.py", "--checkpoint", model,
         "--routes", "oracle", "--modes", "memory,memory_kv,text", "--ttft-tokens", "0",
         "--k", "2", "--eval-docs", str(args.eval_docs), "--predictions"],
        cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        with open(log, "a") as f:
            f.write(out.stderr)
        raise SystemExit(f"answer_quality failed for m={m}, steps={steps}; see {log}")
    res = json.loads(out.stdout)
    row = {"m": m, "distill": args.distill, "steps": steps, "train_s": train_s,
           "score_s": time.perf_counter() - t1,
           "f1": {k.split("/")[1]: v["f1"] for k, v in res["quality"].items()},
           "f1_vs_text": res["oracle_f1_vs_text"], "questions": res["questions"],
           "f1_by_hops": {k.split("/")[1]: v["f1_by_hops"] for k, v in res["quality"].items()}}
    if curve:
        row.update(schedule="constant", train_docs=args.train_docs)
    if args.read_modes != DEFAULT_MODES:
        row["read_modes"] = args.read_modes
    if args.train_single != 6:
        row["train_single"] = args.train_single
    if args.train_two_hop != 3:
        row["train_two_hop"] = args.train_two_hop
    if args.lr != LR:
        row["lr"] = args.lr
    if args.hotpotqa_records:
        row["hotpotqa_records"] = args.hotpotqa_records
    with open(score_path, "w") as f:  # the answers beside the row, for reading (not in --out)
        json.dump(dict(row, predictions=res.get("predictions", {})), f, indent=1)
    return row


def plot(rows: list[dict], path: str, x: str = "m") -> None:
    """F1 (oracle) of each reading against `x` ("m" or "steps")."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r[x])
    xs = [r[x] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for mode, style in (("memory", "o-"), ("memory_kv", "s-"), ("text", "k--")):
        ax.plot(xs, [r["f1"][mode] for r in rows], style, label=mode)
    if x == "m":
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(v) for v in xs])
        ax.set_xlabel("memory tokens per leaf (m)")
    else:
        dense = (f", <= {rows[0]['train_single']} single-hop questions each"
                 if "train_single" in rows[0] else "")
        ax.set_xlabel(f"QA training steps (m = {rows[0]['m']}, "
                      f"{rows[0].get('train_docs', '?')} training manuals{dense})", fontsize=8)
    ax.set_ylabel("F1, oracle routing")
    ax.set_title(f"held-out manuals, {rows[0]['questions']} questions", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", default="4,8,16", help="comma-separated memory token counts")
    ap.add_argument("--checkpoint", default="smollm2-135m-h2mt")
    ap.add_argument("--steps", default="24", help="QA training steps; several (100,200,...): "
                    "the learning curve of one constant-rate run per m")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--distill", default="kl", choices=("none", "kl", "tokens"))
    ap.add_argument("--train-docs", type=int, default=8)
    ap.add_argument("--hotpotqa-records", type=int, default=0)
    ap.add_argument("--train-single", type=int, default=6,
                    help="single-hop questions per training manual (data.train_single; about 40 "
                         "is one per fact)")
    ap.add_argument("--train-two-hop", type=int, default=3,
                    help="two-hop questions per training manual (data.train_two_hop; about 15 "
                         "is one per bridge pair)")
    ap.add_argument("--lr", type=float, default=LR, help="train.lr of the QA runs")
    ap.add_argument("--eval-docs", type=int, default=4)
    ap.add_argument("--route-weight", type=float, default=1.0,
                    help="λ of the routing loss (0: train the answer alone)")
    ap.add_argument("--read-modes", default=DEFAULT_MODES,
                    help="train.read_modes of the QA runs; adding text keeps the decoder reading "
                         "text (memory,memory_kv,text)")
    ap.add_argument("--runs", default=os.path.join(ROOT, "runs", "mem_curve"))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "mem_tokens_curve.json"))
    args = ap.parse_args()
    ms = sorted({int(x) for x in args.m.split(",") if x.strip()})
    if not ms or min(ms) < 1:
        raise SystemExit("--m needs positive integers")
    steps = sorted({int(x) for x in str(args.steps).split(",") if x.strip()})
    if not steps or min(steps) < 0 or (len(steps) == 1 and steps[0] == 0):
        raise SystemExit("--steps needs positive integers (0 only beside others)")
    curve = len(steps) > 1
    rows = [point(m, n, args, curve) for m in ms for n in steps]
    prev = {}
    key = lambda r: (r["m"], r["distill"], r["steps"],  # noqa: E731
                     *(r.get(k, v) for k, v in POINT_DEFAULTS.items()))
    if os.path.isfile(args.out):  # keep the other points of earlier runs (other m or distill)
        with open(args.out) as f:
            prev = {key(r): r for r in json.load(f)["points"]}
    prev.update({key(r): r for r in rows})
    result = {"bench": "mem_tokens_curve", "checkpoint": args.checkpoint,
              "train_docs": args.train_docs, "hotpotqa_records": args.hotpotqa_records,
              "points": sorted(prev.values(), key=lambda r: (
                  r.get("read_modes", DEFAULT_MODES), r["distill"], r["steps"], r["m"]))}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    base = os.path.splitext(args.out)[0]
    if curve:
        for m in ms:
            plot([r for r in rows if r["m"] == m],
                 f"{base}_m{m}_{args.distill}{_run_suffix(args)}.png", x="steps")
    else:
        same = [r for r in result["points"] if (r["distill"], r["steps"], r.get(
            "schedule", "cosine"), r.get("read_modes", DEFAULT_MODES)) == (
                args.distill, steps[0], "cosine", args.read_modes)]
        if len(same) > 1:
            plot(same, f"{base}_{args.distill}.png")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
