"""GPT-style decoder: the reference model for language-model pipelines.

A vpipe model file: `build_model` and `make_batch`, and no `loss_fn`, because logits
[B, T, vocab_size] against next tokens [B, T] is exactly vpipe's default cross-entropy over the
last dimension. Every forward is free of Python branches on tensor values, so `torch.fx` traces
the whole model with no leaf annotations, one short run of nodes per block.
"""

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vpipe.models.attention import SelfAttention, check_heads

NOISE = 0.1  # share of tokens make_batch replaces at random: the task is learnable, not trivial
EPOCH_SAMPLES = 1024  # what vpipe-train --epochs counts (the data is made from the step index)


@dataclass(frozen=True)
class GPTConfig:
    """Model size. Frozen so the module default cannot be changed by accident; use replace()."""

    vocab_size: int = 512  # distinct token ids, and so the width of the output logits
    seq_len: int = 64  # longest sequence: the number of rows in the learned position table
    d_model: int = 64  # width of the residual stream, the activation passed between stages
    n_heads: int = 4  # attention heads; each one works on d_model // n_heads channels
    n_layers: int = 4  # transformer blocks: the units a pipeline planner spreads over stages
    dropout: float = 0.0  # 0.0 keeps runs deterministic, so a pipeline can be checked exactly

    def __post_init__(self) -> None:
        check_heads(self.d_model, self.n_heads)


CONFIG = GPTConfig()


class MLP(nn.Module):
    """Position-wise feed-forward: widen 4x, GELU, project back to the residual width."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, 4 * config.d_model)
        self.gelu = nn.GELU()
        self.proj = nn.Linear(4 * config.d_model, config.d_model)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.proj(self.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LN transformer block: normalise before each sublayer, add its output to the stream."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = SelfAttention(config.d_model, config.n_heads, config.dropout, causal=True)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Token ids [B, T] -> next-token logits [B, T, vocab_size]."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.seq_len, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.Sequential(*(Block(config) for _ in range(config.n_layers)))
        self.ln_f = nn.LayerNorm(config.d_model)
        # Untied on purpose. GPT-2 shares one matrix between tok_emb and head, but in a pipeline
        # those sit on the first and the last stage: a naive stage split would copy the tensor
        # into both, and the copies would silently drift apart. Untied, every parameter has
        # exactly one owner stage.
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)

    def forward(self, idx: Tensor) -> Tensor:
        # T > seq_len fails inside pos_emb with an index error; a Python check here would need
        # the concrete length, which fx does not have while tracing.
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        return self.head(self.ln_f(self.blocks(x)))


def build_model(config: GPTConfig = CONFIG) -> nn.Module:
    """The model vpipe profiles, splits into stages and trains."""
    return GPT(config)


def make_batch(batch_size: int, step: int, config: GPTConfig = CONFIG) -> tuple[Tensor, Tensor]:
    """Token ids [B, T] and the next token at every position [B, T], both int64.

    Each row counts from a random start in a random stride of 1..8, modulo vocab_size, with a
    NOISE share of tokens replaced at random. The next token follows from the last two, so the
    loss can fall well below log(vocab_size); the noise keeps it above zero. A generator seeded
    from `step` makes every step reproducible without touching the global RNG.
    """
    g = torch.Generator().manual_seed(step)
    start = torch.randint(config.vocab_size, (batch_size, 1), generator=g)
    stride = torch.randint(1, 9, (batch_size, 1), generator=g)
    seq = (start + stride * torch.arange(config.seq_len + 1)) % config.vocab_size
    noise = torch.randint(config.vocab_size, seq.shape, generator=g)
    seq = torch.where(torch.rand(seq.shape, generator=g) < NOISE, noise, seq)
    return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()
