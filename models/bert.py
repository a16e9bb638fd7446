"""BERT-style encoder that classifies whole sequences: the reference bidirectional transformer.

A vpipe model file: `build_model` and `make_batch`, and no `loss_fn`, because class logits
[B, num_classes] against labels [B] is exactly vpipe's default cross-entropy. Every forward is
free of Python branches on tensor values, so `torch.fx` traces it with no leaf annotations.
"""

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vpipe.models.attention import SelfAttention, check_heads

CLS = 0  # token id make_batch puts first in every row; its final state is what gets classified
NOISE = 0.2  # share of tokens make_batch draws from the whole vocabulary instead of the class's


@dataclass(frozen=True)
class BERTConfig:
    """Model size. Frozen so the module default cannot be changed by accident; use replace()."""

    vocab_size: int = 512  # distinct token ids, id CLS included
    seq_len: int = 32  # tokens per sequence, the leading CLS included
    d_model: int = 64  # width of the residual stream, the activation passed between stages
    n_heads: int = 4  # attention heads; each one works on d_model // n_heads channels
    n_layers: int = 2  # encoder blocks: the units a pipeline planner spreads over stages
    num_classes: int = 4  # labels the classifier chooses between
    dropout: float = 0.0  # 0.0 keeps runs deterministic, so a pipeline can be checked exactly

    def __post_init__(self) -> None:
        check_heads(self.d_model, self.n_heads)
        if self.vocab_size <= self.num_classes:
            raise ValueError(
                f"vocab_size={self.vocab_size} must exceed num_classes={self.num_classes}: "
                "make_batch gives each class its own band of non-CLS tokens"
            )


CONFIG = BERTConfig()


class EncoderBlock(nn.Module):
    """Post-LN block as in the original BERT: add each sublayer's output, then normalise."""

    def __init__(self, config: BERTConfig) -> None:
        super().__init__()
        d = config.d_model
        self.attn = SelfAttention(d, config.n_heads, config.dropout, causal=False)
        self.drop = nn.Dropout(config.dropout)
        self.ln1 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(
            nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d), nn.Dropout(config.dropout)
        )
        self.ln2 = nn.LayerNorm(d)

    def forward(self, x: Tensor) -> Tensor:
        x = self.ln1(x + self.drop(self.attn(x)))
        return self.ln2(x + self.mlp(x))


class BERT(nn.Module):
    """Token ids [B, T] with CLS first -> class logits [B, num_classes]."""

    def __init__(self, config: BERTConfig) -> None:
        super().__init__()
        d = config.d_model
        self.tok_emb = nn.Embedding(config.vocab_size, d)
        self.pos_emb = nn.Embedding(config.seq_len, d)
        self.ln_emb = nn.LayerNorm(d)  # post-LN blocks expect a normalised input
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.Sequential(*(EncoderBlock(config) for _ in range(config.n_layers)))
        self.pooler = nn.Sequential(nn.Linear(d, d), nn.Tanh())  # BERT's pooler, on CLS only
        self.classifier = nn.Linear(d, config.num_classes)

    def forward(self, idx: Tensor) -> Tensor:
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.drop(self.ln_emb(self.tok_emb(idx) + self.pos_emb(pos)))
        return self.classifier(self.pooler(self.blocks(x)[:, 0]))


def build_model(config: BERTConfig = CONFIG) -> nn.Module:
    """The model vpipe profiles, splits into stages and trains."""
    return BERT(config)


def make_batch(batch_size: int, step: int, config: BERTConfig = CONFIG) -> tuple[Tensor, Tensor]:
    """Token ids [B, T] (CLS first) and a class label [B], both int64.

    The non-CLS ids are split into num_classes equal bands; a row of class c draws its tokens
    from band c, except a NOISE share drawn from the whole vocabulary. The label is readable
    from the bag of tokens, so attention into CLS can learn it. A generator seeded from `step`
    makes every step reproducible without touching the global RNG.
    """
    g = torch.Generator().manual_seed(step)
    label = torch.randint(config.num_classes, (batch_size,), generator=g)
    band = (config.vocab_size - 1) // config.num_classes  # ids per class; CLS=0 sits below all
    shape = (batch_size, config.seq_len - 1)
    tokens = 1 + label[:, None] * band + torch.randint(band, shape, generator=g)
    noise = torch.randint(1, config.vocab_size, shape, generator=g)
    tokens = torch.where(torch.rand(shape, generator=g) < NOISE, noise, tokens)
    cls = torch.full((batch_size, 1), CLS, dtype=torch.int64)
    return torch.cat([cls, tokens], dim=1), label
