"""A tiny GPT-2 (Hugging Face transformers) language model, used as it is: no wrapper.

Its `lm_head` shares the token embedding's weight (GPT-2's tie), so a pipeline holds a copy on
the last stage. `use_cache=False`: a cache object cannot travel between stages. Needs the
optional extra: `pip install vpipe[hf]`.
"""

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from vpipe.models.tokens import next_token_batch

VOCAB, SEQ_LEN = 128, 16
CONFIG = GPT2Config(
    vocab_size=VOCAB,
    n_positions=SEQ_LEN,
    n_embd=64,
    n_layer=4,
    n_head=4,
    resid_pdrop=0.0,  # no dropout: runs can be checked against one process exactly
    embd_pdrop=0.0,
    attn_pdrop=0.0,
    bos_token_id=0,
    eos_token_id=0,
    use_cache=False,
)


def build_model() -> GPT2LMHeadModel:
    return GPT2LMHeadModel(CONFIG)


def make_batch(batch_size: int, step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    return next_token_batch(batch_size, step, SEQ_LEN, VOCAB)
