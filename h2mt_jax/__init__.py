"""h2mt_jax: HMT and H²MT long-context question answering in JAX/Flax.

Public API:
    load_lm(name_or_path, dtype="float32") -> LM
"""

from h2mt_jax.lm import LM, load_lm, random_lm

__version__ = "0.1.0"
__all__ = ["LM", "load_lm", "random_lm", "__version__"]
