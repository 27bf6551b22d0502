"""Evaluates methods on LongBench-style QA; the logic lives in h2mt_jax.eval.runner.

    python evaluate.py --config=configs/longbench.py --config.data.path=FILE.jsonl \
        --config.method=full,rag_bm25,hmt,h2mt --config.output=OUT.json [--config.checkpoint=DIR]

Methods: full, rag_bm25, rag_dense, compress, hmt, h2mt, h2mt_flat, h2mt_oracle, h2mt_memory_kv,
h2mt_leaf_kv, tree_text.
Writes OUT.json ({"summary", "examples"}), OUT.md (table) and OUT.png (F1 against TTFT); an
interrupted run resumes from OUT.json.partial.jsonl.
"""

from absl import logging
from ml_collections import config_flags

from h2mt_jax.cli import run

_CONFIG = config_flags.DEFINE_config_file("config", "configs/longbench.py",
                                          "Evaluation configuration.")


def main(argv):
    del argv
    from h2mt_jax.eval.runner import run_evaluation

    logging.set_verbosity(logging.WARNING)
    out = run_evaluation(_CONFIG.value)
    print(out["table"])
    print(f"wrote {out['output']}")


if __name__ == "__main__":
    run(main)
