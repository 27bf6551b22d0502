"""Shape-annotated array types used across the package (documentation; not checked at run time).

Axis names: b batch, t time (tokens), s cache slots, d hidden size, v vocabulary, h heads,
k key/value heads, g query heads per key/value head, dh head dimension, n nodes, c children.
"""

from jax import Array
from jaxtyping import Bool, Float, Int, PyTree

__all__ = ["Array", "Bool", "Float", "Int", "PyTree"]
