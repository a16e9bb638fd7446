"""A tiny Llama (Hugging Face transformers): grouped-query attention (4 query heads share 2
key/value heads) and rotary position embeddings, used as it is. Needs `pip install vpipe[hf]`.
"""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from vpipe.models.tokens import next_token_batch

VOCAB, SEQ_LEN = 128, 16
CONFIG = LlamaConfig(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=SEQ_LEN,
    bos_token_id=0,
    eos_token_id=0,
    pad_token_id=1,
    use_cache=False,
)


def build_model() -> LlamaForCausalLM:
    return LlamaForCausalLM(CONFIG)


def make_batch(batch_size: int, step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    return next_token_batch(batch_size, step, SEQ_LEN, VOCAB)
