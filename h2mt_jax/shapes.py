"""Shape buckets: every padded size in the library comes from here, so that inputs of nearby
sizes share one compiled program (`jax.jit` compiles once per distinct shape)."""

from __future__ import annotations

# sequence lengths (prompts, questions, chunks)
TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 1536, 2048, 3072, 4096, 6144, 8192)
# prompt lengths at answer time (what a prefill runs): also the steps halfway between powers of
# two, so that padding adds at most half a bucket below 1024 tokens (prefill time grows with the
# padded length; each bucket compiles once per process)
PROMPT_BUCKETS = (16, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096,
                  6144, 8192)
# tree sizes: leaf slots, internal-node slots and level widths; tree heights
LEAF_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
HEIGHT_BUCKETS = (2, 3, 4, 6, 8, 12, 16, 24, 32)


def bucket(n: int, buckets: tuple[int, ...] = TOKEN_BUCKETS) -> int:
    """The smallest bucket >= n; past the last bucket, the next multiple of it."""
    for b in buckets:
        if n <= b:
            return b
    top = buckets[-1]
    return -(-n // top) * top
