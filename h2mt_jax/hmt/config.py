"""HMT hyper-parameters, named after the reference implementation's arguments."""

from __future__ import annotations

import dataclasses

from h2mt_jax.errors import ConfigError

RECALL_SCALES = ("sqrt", "reference")


@dataclasses.dataclass(frozen=True)
class HMTConfig:
    """The HMT cell of DESIGN.md §4.1.

    segment_length: `S`, tokens per main pass: 1 memory + `num_sensory` + `L` tokens + 1 memory.
    num_sensory: `k_s`, tokens of the previous segment repeated in front of the current one.
    recall_dim: `d_h` of the recall projections W_q, W_k (reference: mem_recall_hidden_dim).
    recall_context: `N`, memories kept for recall (reference: mem_recall_context).
    sum_fraction: fraction of a segment's tokens read by the summary (query) pass.
    stage: 1 (the next segment reads the last memory) or 2 (it recalls over the last N).
    recall_scale: "sqrt" divides scores by sqrt(d_h) (the paper); "reference" reproduces the
        reference code, which divides by d_h when d >= 4096 and d_h >= 4096.
    """

    segment_length: int = 256
    num_sensory: int = 32
    recall_dim: int = 512
    recall_context: int = 100
    sum_fraction: float = 0.5
    stage: int = 2
    recall_scale: str = "sqrt"

    def __post_init__(self):
        if self.num_sensory < 0:
            raise ValueError(f"num_sensory must be >= 0, got {self.num_sensory}")
        if self.tokens_per_segment < 1:
            raise ValueError(
                f"segment_length={self.segment_length} leaves no room for tokens: it holds 2 memory "
                f"slots and {self.num_sensory} sensory tokens, so it must be at least "
                f"{self.num_sensory + 3}")
        if not 0.0 < self.sum_fraction <= 1.0:
            raise ValueError(f"sum_fraction must be in (0, 1], got {self.sum_fraction}")
        if self.query_tokens < 1:
            raise ValueError(f"sum_fraction={self.sum_fraction} of {self.tokens_per_segment} "
                             "tokens leaves the summary pass no token")
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        if self.recall_dim < 1 or self.recall_context < 1:
            raise ValueError("recall_dim and recall_context must be >= 1")
        if self.recall_scale not in RECALL_SCALES:
            raise ValueError(f"recall_scale must be one of {RECALL_SCALES}, got {self.recall_scale!r}")

    @property
    def tokens_per_segment(self) -> int:
        """`L = S - 2 - k_s`: document tokens read per segment."""
        return self.segment_length - 2 - self.num_sensory

    @property
    def query_tokens(self) -> int:
        """Tokens of a segment read by the summary pass (the reference's rounding)."""
        return int(round(self.tokens_per_segment * self.sum_fraction))

    def score_scale(self, hidden_size: int) -> float:
        if (self.recall_scale == "reference" and hidden_size >= 4096 and self.recall_dim >= 4096):
            return 1.0 / self.recall_dim
        return self.recall_dim ** -0.5

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, c) -> "HMTConfig":
        """From a config section with these field names, e.g. `config.hmt` of configs/common.py
        (an ml_collections ConfigDict or a dict); fields it lacks keep the defaults above.
        A field HMTConfig does not have is a ConfigError (a typo would otherwise be ignored),
        and so is an invalid value."""
        fields = {f.name for f in dataclasses.fields(cls)}
        given = dict(c.items())
        unknown = sorted(set(given) - fields)
        if unknown:
            raise ConfigError(f"unknown HMT config field(s) {', '.join(unknown)}; known: "
                              f"{', '.join(sorted(fields))}")
        try:
            return cls(**given)
        except ValueError as e:  # a bad value given on the command line: a one-line error
            raise ConfigError(str(e)) from e
