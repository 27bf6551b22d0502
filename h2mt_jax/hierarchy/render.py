"""Pictures of a route: the tree with every node's routing score and the chosen path.

    python -m h2mt_jax.hierarchy.render --index idx/ --question "Who services the pump?" \
        --out route.html          # or route.png

`--index` is a directory written by `H2MT.save_index` (the tree, its memories and, under
`model/`, the H²MT parameters that built it). HTML shows a collapsible outline with score bars,
the kept nodes of each beam step in bold and the selected leaves numbered by rank, each with its
text and character span; PNG draws the tree by depth with nodes coloured by score.
"""

from __future__ import annotations

import argparse
import html

import numpy as np


def _label(index, n: int, width: int = 90) -> str:
    spec = index.spec
    if n < spec.n_leaves:
        s, e = spec.leaf_spans[n]
        text = " ".join(index.text[s:e].split())
        return text if len(text) <= width else text[:width - 1] + "…"
    return spec.titles[n] or f"node {n} ({len(spec.leaves_under(n))} leaves)"


def _normalise(scores: np.ndarray) -> np.ndarray:
    finite = scores[np.isfinite(scores)]
    if finite.size == 0:
        return np.zeros_like(scores)
    lo, hi = float(finite.min()), float(finite.max())
    return np.clip((scores - lo) / (hi - lo if hi > lo else 1.0), 0, 1)


def render_html(index, answer, question: str) -> str:
    """A self-contained HTML page of the route."""
    spec = index.spec
    norm = _normalise(answer.node_scores)
    kept = {n for step in answer.visited for n in step}
    rank = {leaf: i + 1 for i, leaf in enumerate(answer.leaves)}

    def node(n: int, depth: int) -> str:
        sc = answer.node_scores[n]
        bar = (f'<span class="bar" style="width:{int(80 * norm[n])}px;'
               f'background:hsl({int(120 * norm[n])},70%,45%)"></span>')
        cls = "sel" if n in rank else ("kept" if n in kept else "")
        tag = f'<b class="rank">#{rank[n]}</b> ' if n in rank else ""
        span = (f' <span class="span">[{spec.leaf_spans[n][0]}:{spec.leaf_spans[n][1]}]</span>'
                if n < spec.n_leaves else "")
        head = (f'{bar}<span class="score">{sc:+.3f}</span> {tag}'
                f'<span class="{cls}">{html.escape(_label(index, n))}</span>{span}')
        if n < spec.n_leaves:
            return f"<li>{head}</li>"
        opened = " open" if (n in kept or depth < 1) else ""
        kids = "".join(node(c, depth + 1) for c in spec.children[n])
        return f"<li><details{opened}><summary>{head}</summary><ul>{kids}</ul></details></li>"

    selected = "".join(
        f"<li><b>#{i + 1}</b> leaf {leaf} [{spec.leaf_spans[leaf][0]}:{spec.leaf_spans[leaf][1]}]"
        f" score {s:+.3f}<br><q>{html.escape(index.text[slice(*spec.leaf_spans[leaf])])}</q></li>"
        for i, (leaf, s) in enumerate(zip(answer.leaves, answer.scores)))
    t = answer.timings
    timing = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in t.items() if k.endswith("_s"))
    return f"""<!doctype html><meta charset="utf-8"><title>H²MT route</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em;max-width:70em}}
ul{{list-style:none;padding-left:1.2em}} .bar{{display:inline-block;height:.7em;margin-right:.4em}}
.score{{font-family:monospace;color:#555;margin-right:.4em}} .kept{{font-weight:bold}}
.sel{{font-weight:bold;background:#ffef9f}} .rank{{color:#b00}} .span{{color:#888;font-size:80%}}
q{{display:block;color:#333;margin:.3em 0 .8em}}</style>
<h1>Route</h1><p><b>Question:</b> {html.escape(question)}<br><b>Answer:</b>
{html.escape(answer.text)}<br><small>{html.escape(timing)}</small></p>
<h2>Selected leaves</h2><ol style="list-style:none;padding:0">{selected}</ol>
<h2>Tree ({spec.n_leaves} leaves, {spec.n_nodes} nodes)</h2>
<ul>{node(spec.root, 0)}</ul>"""


def render_png(index, answer, question: str, path: str) -> None:
    """Draws the tree top-down (root at the top, leaves in document order at the bottom) into a
    PNG file; text (the question, answer and leaf labels) is drawn literally, `$` included."""
    import matplotlib.pyplot as plt

    fig = route_figure(index, answer, question)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def route_figure(index, answer, question: str):
    """The matplotlib figure of `render_png` (the caller closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = index.spec
    depth = spec.depths()
    x = np.zeros(spec.n_nodes)
    x[:spec.n_leaves] = np.arange(spec.n_leaves)
    for n in range(spec.n_leaves, spec.n_nodes):
        x[n] = np.mean([x[c] for c in spec.children[n]])
    norm = _normalise(answer.node_scores)
    kept = {n for step in answer.visited for n in step} | set(answer.leaves)
    width = min(60, 4 + 0.12 * spec.n_leaves)
    fig, ax = plt.subplots(figsize=(width, 2 + 1.2 * max(depth) + 0.25 * len(answer.leaves)))
    parent = spec.parents()
    for n in range(spec.n_nodes):
        p = parent[n]
        if p >= 0:
            on = n in kept and (p in kept or p == spec.root)
            ax.plot([x[p], x[n]], [-depth[p], -depth[n]], color="crimson" if on else "#bbb",
                    lw=2.5 if on else 0.6, zorder=1)
    cmap = plt.get_cmap("viridis")
    ax.scatter(x, [-d for d in depth], c=[cmap(v) for v in norm], s=40,
               edgecolors=["crimson" if n in kept else "none" for n in range(spec.n_nodes)],
               linewidths=1.5, zorder=2)
    bottom = -max(depth)
    # The selected leaves' labels sit in rows of their own below the tree, in document order,
    # each joined to its leaf by a thin line: adjacent leaves never overlap.
    for row, leaf in enumerate(sorted(answer.leaves, key=lambda n: x[n])):
        y = bottom - 0.7 - 0.35 * row
        rank = answer.leaves.index(leaf) + 1
        ax.plot([x[leaf], x[leaf]], [-depth[leaf] - 0.15, y + 0.08], color="crimson", lw=0.5,
                ls=":", zorder=1)
        ax.text(x[leaf], y, f"#{rank} {_label(index, leaf, 40)}", fontsize=7, color="crimson",
                ha="left", va="center", parse_math=False)
    # Inner nodes on the kept path: labels alternate above and below their node per depth.
    inner = sorted((n for n in kept if n >= spec.n_leaves), key=lambda n: (depth[n], x[n]))
    for j, n in enumerate(inner):
        ax.annotate(_label(index, n, 28), (x[n], -depth[n]), xytext=(6, 5 if j % 2 else -11),
                    textcoords="offset points", fontsize=7, color="#333", parse_math=False)
    ax.set_ylim(bottom - 1.0 - 0.35 * len(answer.leaves), 0.5)
    ax.set_title(f"Q: {question}\nA: {answer.text}", fontsize=10, loc="left", parse_math=False)
    ax.set_axis_off()
    sm = plt.cm.ScalarMappable(cmap=cmap)
    fig.colorbar(sm, ax=ax, fraction=0.02, label="routing score (normalised)")
    return fig


def main(argv=None):
    ap = argparse.ArgumentParser(description="Render an H²MT route for a question.")
    ap.add_argument("--index", required=True, help="directory written by H2MT.save_index")
    ap.add_argument("--question", required=True)
    ap.add_argument("--out", required=True, help="output .html or .png")
    ap.add_argument("--dataset", default="synthetic", help="prompt template for the answer")
    ap.add_argument("--k", type=int, default=None)
    ap.add_argument("--route", default=None, choices=["beam", "flat"])
    ap.add_argument("--backbone", default=None,
                    help="the backbone the index was built with (registry name, .gguf, HF dir); "
                         "default: the index's recorded name, when it is an offline registry name")
    args = ap.parse_args(argv)
    import h2mt_jax
    from h2mt_jax.hierarchy.h2mt import H2MT

    lm = h2mt_jax.load_lm(args.backbone) if args.backbone else None
    h2mt, index = H2MT.load_index(args.index, lm=lm)
    ans = h2mt.answer(index, args.question, dataset=args.dataset, k=args.k, route=args.route)
    if args.out.endswith(".png"):
        render_png(index, ans, args.question, args.out)
    else:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(render_html(index, ans, args.question))
    print(f"{args.out}: answer {ans.text!r}, leaves {ans.leaves}, "
          f"TTFT {ans.timings['ttft_s'] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
