"""An imbalanced model: a wide embedding and a wide output head around thin blocks.

Parameters and compute sit in different places, as in language models with large vocabularies:
the embedding holds most parameters but costs almost nothing to run, the head holds few but
costs as much as all the blocks together. Splits that balance node counts (uniform) or
parameters (DeepSpeed's `parameters`) both load one stage with far more time than the others;
benchmarks/split_quality.py measures by how much against vpipe's profile-driven split.

A vpipe model file: `build_model` and `make_batch`; the default cross-entropy over the last
dimension is the loss (each token is tagged with one of `classes` labels).
"""

from dataclasses import dataclass

import torch
from torch import Tensor, nn

EPOCH_SAMPLES = 1024  # what vpipe-train --epochs counts (the data is made from the step index)


@dataclass(frozen=True)
class WideHeadConfig:
    vocab_size: int = 32768  # embedding rows: most of the parameters, almost none of the time
    classes: int = 4096  # head width: few parameters next to the embedding, much of the time
    seq_len: int = 32  # tokens per sample
    d_model: int = 64  # the thin width of the blocks and of what passes between stages
    n_blocks: int = 8  # residual MLP blocks, d_model -> 4 d_model -> d_model


CONFIG = WideHeadConfig()


class Block(nn.Module):
    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, 4 * d_model)
        self.act = nn.GELU()
        self.down = nn.Linear(4 * d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.down(self.act(self.up(x)))


class WideHead(nn.Module):
    """Token ids [B, T] -> label logits [B, T, classes]."""

    def __init__(self, config: WideHeadConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.Sequential(*(Block(config.d_model) for _ in range(config.n_blocks)))
        self.norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.classes)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.norm(self.blocks(self.embed(tokens))))


def build_model(config: WideHeadConfig = CONFIG) -> nn.Module:
    """The model vpipe profiles, splits into stages and trains."""
    return WideHead(config)


def make_batch(
    batch_size: int, step: int, config: WideHeadConfig = CONFIG
) -> tuple[Tensor, Tensor]:
    """Token ids [B, T] (int64) and each token's label [B, T]: the token id modulo `classes`,
    a learnable mapping. Seeded from `step`, so every step is reproducible."""
    g = torch.Generator().manual_seed(step)
    tokens = torch.randint(config.vocab_size, (batch_size, config.seq_len), generator=g)
    return tokens, tokens % config.classes
