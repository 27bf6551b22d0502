cd /work/main
for m in 16 32; do
  .venv/bin/python -c "
from h2mt_jax.hierarchy.h2mt import H2MT
H2MT.load('smollm2-135m-h2mt').with_mem_tokens($m).save('runs/ship_L12_m$m')"
  .venv/bin/python bench/answer_quality.py --checkpoint runs/ship_L12_m$m --routes oracle --modes memory,memory_kv,text --ttft-tokens 0 --k 2 --eval-docs 8 --predictions > /work/exp/mcurve_m$m.json 2> /work/exp/mcurve_m$m.log
done
