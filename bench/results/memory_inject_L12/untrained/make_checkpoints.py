import sys
from h2mt_jax.hierarchy.h2mt import H2MT
for L in sys.argv[1:]:
    H2MT.load("smollm2-135m-h2mt").with_mem_layer(int(L)).save(f"runs/inject_L{L}")
    print("saved", L)
