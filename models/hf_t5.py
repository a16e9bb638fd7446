"""A tiny T5 encoder-decoder (Hugging Face transformers) that learns to continue a sequence:
the encoder reads it, the decoder writes the next SEQ_LEN tokens. The encoder's and decoder's
token embeddings and the output head share one matrix (T5's ties). Needs `pip install vpipe[hf]`.
"""

import torch
from transformers import T5Config, T5ForConditionalGeneration

from vpipe.models.tokens import counting_rows

VOCAB, SEQ_LEN, START = 128, 12, 0
CONFIG = T5Config(
    vocab_size=VOCAB,
    d_model=64,
    d_kv=16,
    d_ff=128,
    num_layers=2,
    num_heads=4,
    dropout_rate=0.0,  # no dropout: runs can be checked against one process exactly
    # T5's _shift_right reads it; the config's wrapped __init__ takes fields its dataclass does
    # not declare, which mypy cannot see
    decoder_start_token_id=START,  # type: ignore[call-arg]
    pad_token_id=START,
    eos_token_id=1,
    use_cache=False,
)


def build_model() -> T5ForConditionalGeneration:
    return T5ForConditionalGeneration(CONFIG)


def make_batch(batch_size: int, step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    ids = counting_rows(batch_size, 2 * SEQ_LEN, VOCAB, step)
    source, target = ids[:, :SEQ_LEN], ids[:, SEQ_LEN:]
    start = torch.full((batch_size, 1), START)
    inputs = {"input_ids": source, "decoder_input_ids": torch.cat([start, target[:, :-1]], 1)}
    return inputs, target
