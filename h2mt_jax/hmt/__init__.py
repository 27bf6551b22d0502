"""HMT: segment-recurrent memory over a pretrained backbone (DESIGN.md §4.1)."""

from h2mt_jax.hmt.cell import HMTState, init_params, run_segments, split_segments
from h2mt_jax.hmt.config import HMTConfig
from h2mt_jax.hmt.convert import load_hmt_pytorch
from h2mt_jax.hmt.model import HMT

__all__ = ["HMT", "HMTConfig", "HMTState", "init_params", "load_hmt_pytorch", "run_segments",
           "split_segments"]
