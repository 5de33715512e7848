"""Model configuration: one dataclass, presets by name.

``gpt1`` is the paper's model. ``tiny`` and ``mini`` are the same architecture at sizes a CPU
trains in seconds or minutes. ``arch="gpt2"`` applies the GPT-2 changes: LayerNorm at each
block's input, a final LayerNorm, and residual projections initialised scaled by 1/sqrt(2 x layers).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .checks import check_number
from .errors import Gpt1Error

ARCHS = ("gpt1", "gpt2")
ATTENTION = ("dense", "alternating")
# Largest size a model dimension may have (torch indexes tensors with 64-bit integers, but no
# real model comes near 2^31 in one dimension; a bigger number is a corrupt file or a typo).
MAX_SIZE = 2**31 - 1


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _passes(value, **bounds) -> bool:
    """Whether :func:`check_number` accepts ``value`` (a finite number within ``bounds``)."""
    try:
        check_number(value, "value", **bounds)
    except Gpt1Error:
        return False
    return value is not None


@dataclass(frozen=True)
class ModelConfig:
    """Shape and regularisation of a decoder-only Transformer."""

    vocab_size: int
    n_ctx: int = 512
    n_layer: int = 12
    n_head: int = 12
    d_model: int = 768
    d_ff: int = 3072
    dropout: float = 0.1  # on embeddings and on each residual branch
    attn_dropout: float = 0.1  # on the attention weights
    arch: str = "gpt1"
    layer_norm_eps: float = 1e-5
    # GPT-3 interleaves dense layers with locally banded ones (each query sees the last `window` keys).
    attention: str = "dense"
    window: int = 256

    def __post_init__(self):
        # Settings come from checkpoint JSON too: every number is checked before anything is allocated.
        if self.arch not in ARCHS:
            raise Gpt1Error(f"unknown architecture {self.arch!r}; choose one of {', '.join(ARCHS)}")
        if self.attention not in ATTENTION:
            raise Gpt1Error(f"unknown attention {self.attention!r}; choose one of {', '.join(ATTENTION)}")
        for name in ("vocab_size", "n_ctx", "n_layer", "n_head", "d_model", "d_ff", "window"):
            value = getattr(self, name)
            if not _is_int(value) or not _passes(value, minimum=1, maximum=MAX_SIZE):
                raise Gpt1Error(f"model setting {name} must be a positive integer (at most {MAX_SIZE}), got {value!r}")
        if self.d_model % self.n_head:
            raise Gpt1Error(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        for name in ("dropout", "attn_dropout"):
            value = getattr(self, name)
            if not _passes(value, minimum=0.0, below=1.0):
                raise Gpt1Error(f"{name} must be in [0, 1), got {value!r}")
        if not _passes(self.layer_norm_eps, above=0.0, below=1.0):
            raise Gpt1Error(f"layer_norm_eps must be a small positive number, got {self.layer_norm_eps!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def layer_window(self, layer: int) -> int | None:
        """The attention band of ``layer``: every second layer is banded under ``alternating``."""
        return self.window if self.attention == "alternating" and layer % 2 == 1 else None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise Gpt1Error(f"unknown model settings {sorted(unknown)}: the checkpoint is from a newer or other tool")
        try:
            return cls(**data)
        except TypeError as exc:
            raise Gpt1Error(f"incomplete model settings: {exc}") from None

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Preset:
    """A model size: its architecture and shape, and the pre-training defaults that suit it."""

    arch: str
    shape: dict  # ModelConfig's n_ctx, n_layer, n_head, d_model, d_ff; the vocabulary comes from the tokenizer
    batch_size: int
    lr: float
    steps: int


# gpt1 follows the paper (64 x 512 tokens, lr 2.5e-4); the small presets use larger rates so a CPU
# sees progress in minutes.
PRESETS: dict[str, Preset] = {
    "tiny": Preset("gpt1", dict(n_ctx=64, n_layer=2, n_head=2, d_model=64, d_ff=256), batch_size=16, lr=2e-3, steps=200),
    "mini": Preset("gpt1", dict(n_ctx=128, n_layer=4, n_head=4, d_model=128, d_ff=512), batch_size=16, lr=1e-3,
                   steps=1000),
    "small": Preset("gpt1", dict(n_ctx=256, n_layer=6, n_head=8, d_model=384, d_ff=1536), batch_size=32, lr=6e-4,
                    steps=5000),
    "gpt1": Preset("gpt1", dict(n_ctx=512, n_layer=12, n_head=12, d_model=768, d_ff=3072), batch_size=64, lr=2.5e-4,
                   steps=100_000),
    # The GPT-3 size table (Brown et al., 2020): GPT-2's architecture, context 2048, MLP 4 x d_model.
    # Its batches are 0.5M-1M tokens (256-512 sequences of 2048); use --grad-accum to reach them.
    "gpt3-small": Preset("gpt2", dict(n_ctx=2048, n_layer=12, n_head=12, d_model=768, d_ff=3072), batch_size=256,
                         lr=6.0e-4, steps=100_000),
    "gpt3-medium": Preset("gpt2", dict(n_ctx=2048, n_layer=24, n_head=16, d_model=1024, d_ff=4096), batch_size=256,
                          lr=3.0e-4, steps=100_000),
    "gpt3-large": Preset("gpt2", dict(n_ctx=2048, n_layer=24, n_head=16, d_model=1536, d_ff=6144), batch_size=256,
                         lr=2.5e-4, steps=100_000),
    # The paper lists XL with 24 heads of 128, which does not multiply to 2048: we keep d_head 128.
    "gpt3-xl": Preset("gpt2", dict(n_ctx=2048, n_layer=24, n_head=16, d_model=2048, d_ff=8192), batch_size=512,
                      lr=2.0e-4, steps=100_000),
}


def preset(name: str, vocab_size: int, **overrides) -> ModelConfig:
    """The model config of preset ``name`` for a tokenizer of ``vocab_size`` tokens; an override
    of None keeps the preset's value."""
    if name not in PRESETS:
        raise Gpt1Error(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    record = PRESETS[name]
    settings = {"arch": record.arch, **record.shape, **{k: v for k, v in overrides.items() if v is not None}}
    return ModelConfig(vocab_size=vocab_size, **settings)


def count_parameters(config: ModelConfig) -> int:
    """Parameters of a model with this config (tied output: the embedding is counted once)."""
    d, f, layers = config.d_model, config.d_ff, config.n_layer
    embeddings = config.vocab_size * d + config.n_ctx * d
    attention = d * 3 * d + 3 * d + d * d + d
    mlp = d * f + f + f * d + d
    norms = 2 * 2 * d
    final = 2 * d if config.arch == "gpt2" else 0
    return embeddings + layers * (attention + mlp + norms) + final
