"""Multi-head self-attention, shared by the GPT (causal) and the BERT (bidirectional) models."""

import torch.nn.functional as F
from torch import Tensor, nn


def check_heads(d_model: int, n_heads: int) -> None:
    """Raise unless the heads split the width evenly: each head needs whole channels."""
    if d_model % n_heads != 0:
        raise ValueError(
            f"d_model={d_model} is not divisible by n_heads={n_heads}; "
            "each head needs a whole number of channels"
        )


class SelfAttention(nn.Module):
    """Multi-head attention; with `causal`, each position sees only itself and earlier ones."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, causal: bool) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.causal = causal
        self.qkv = nn.Linear(d_model, 3 * d_model)  # q, k and v in one matmul
        self.proj = nn.Linear(d_model, d_model)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        # [B, T, 3C] -> 3 x [B, heads, T, C / heads]. The -1 lets torch infer the head width,
        # so no concrete size is read in Python and fx records the reshape as one op.
        q, k, v = self.qkv(x).unflatten(-1, (3, self.n_heads, -1)).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0  # a plain float: fixed when fx traces
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=self.causal)
        return self.resid_drop(self.proj(y.transpose(1, 2).flatten(2)))
