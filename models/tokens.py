"""Synthetic token sequences with structure a small language model can learn, made in code.

Row r of step s counts up from a random start by a random stride (mod the vocabulary), so each
next token follows from the two before it: losses fall within a few hundred steps, and no data
set is downloaded. Ids below `reserved` are never drawn (padding, [MASK], start tokens).
"""

import torch


def counting_rows(batch_size: int, seq_len: int, vocab: int, step: int, reserved: int = 2):
    """[batch_size, seq_len] int64 ids in [reserved, vocab), the same for the same step."""
    g = torch.Generator().manual_seed(step)
    span = vocab - reserved
    start = torch.randint(0, span, (batch_size, 1), generator=g)
    stride = torch.randint(1, 4, (batch_size, 1), generator=g)
    return reserved + (start + stride * torch.arange(seq_len)) % span


def next_token_batch(
    batch_size: int, step: int, seq_len: int, vocab: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A causal language model's batch, as Hugging Face models take it: `input_ids` as a
    keyword argument, the ids shifted by one as the target (the default cross-entropy over the
    output's `logits`)."""
    ids = counting_rows(batch_size, seq_len + 1, vocab, step)
    return {"input_ids": ids[:, :-1]}, ids[:, 1:]
