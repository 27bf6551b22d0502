"""F1 against `m` across learning-curve runs: one point per `m` (at `--steps`) from the JSON files
of `bench/mem_tokens_curve.py` runs that used different stage-1 checkpoints per `m` (each run
is one `m`, so that script's own F1-against-m plot does not see them together).

Keeps only points with the same recipe as the first file's point at `--steps` (`RECIPE`: read
modes, single-hop and two-hop questions per manual, distillation, schedule, lr, training
manuals); a file without such a point is an error.
Writes JSON (the points and their source files) to stdout and `--out`, and a PNG beside it.

    python bench/m_curve.py bench/results/mem_steps_curve_dense_m16.json \
        bench/results/mem_steps_curve_dense_m32.json bench/results/mem_steps_curve_dense_m64.json \
        --steps 450 --out bench/results/mem_m_curve_dense.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mem_tokens_curve import POINT_DEFAULTS, plot  # noqa: E402

RECIPE = ("read_modes", "train_single", "train_two_hop", "distill", "schedule", "lr",
          "train_docs")


def recipe(row: dict) -> tuple:
    """The training settings two points must share to sit on one F1-against-m curve."""
    return tuple(row.get(k, POINT_DEFAULTS.get(k)) for k in RECIPE)


def collect(paths: list[str], steps: int) -> list[dict]:
    """One point per file: its point at `steps` with the first file's recipe."""
    rows, want = [], None
    for path in paths:
        with open(path) as f:
            points = [p for p in json.load(f)["points"] if p["steps"] == steps]
        if want is not None:
            points = [p for p in points if recipe(p) == want]
        if not points:
            same = "" if want is None else f" with the recipe {dict(zip(RECIPE, want))}"
            raise SystemExit(f"{path}: no point at {steps} steps{same}")
        if len(points) > 1:
            raise SystemExit(f"{path}: {len(points)} points at {steps} steps; "
                             "keep one recipe per file")
        want = recipe(points[0])
        rows.append(dict(points[0], source=os.path.relpath(path)))
    ms = [r["m"] for r in rows]
    if len(set(ms)) != len(ms):
        raise SystemExit(f"two files give the same m: {ms}")
    return sorted(rows, key=lambda r: r["m"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="+", help="mem_tokens_curve.py JSON files, one m each")
    ap.add_argument("--steps", type=int, required=True, help="QA steps of the compared points")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rows = collect(args.inputs, args.steps)
    result = {"bench": "m_curve", "steps": args.steps, "recipe": dict(zip(RECIPE, recipe(rows[0]))),
              "points": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    plot(rows, os.path.splitext(args.out)[0] + ".png", x="m")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
