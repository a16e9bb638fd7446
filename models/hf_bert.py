"""A small BERT masked language model (Hugging Face transformers), as the VPipe quick start
trains BERT: random weights from a config, synthetic data, no download.

The MLM decoder shares the word embedding's weight (BERT's tie). 15% of the tokens are replaced
by [MASK]; the target holds the original id there and -100 (ignored by the default
cross-entropy, as Hugging Face's labels mark it) everywhere else. Needs `pip install vpipe[hf]`.
"""

import torch
from transformers import BertConfig, BertForMaskedLM

from vpipe.models.tokens import counting_rows

VOCAB, SEQ_LEN, MASK, PAD = 256, 32, 1, 0
MASKED = 0.15
CONFIG = BertConfig(
    vocab_size=VOCAB,
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=256,
    max_position_embeddings=SEQ_LEN,
    hidden_dropout_prob=0.0,  # no dropout: runs can be checked against one process exactly
    attention_probs_dropout_prob=0.0,
    pad_token_id=PAD,
)
EPOCH_SAMPLES = 8192


def build_model() -> BertForMaskedLM:
    return BertForMaskedLM(CONFIG)


def make_batch(batch_size: int, step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    ids = counting_rows(batch_size, SEQ_LEN, VOCAB, step)
    g = torch.Generator().manual_seed(10_000 + step)
    masked = torch.rand(ids.shape, generator=g) < MASKED
    masked[:, 0] = True  # at least one masked token per row
    labels = torch.where(masked, ids, torch.full_like(ids, -100))
    inputs = {
        "input_ids": torch.where(masked, torch.full_like(ids, MASK), ids),
        "attention_mask": torch.ones_like(ids),
    }
    return inputs, labels
