"""The model `vpipe-probe` splits: two layers so small that their compute is next to nothing.

What a pipeline stage costs beyond its layers' work (its messages, its waits, the runtime's own
steps) is then nearly all there is to time: `vpipe.run.probe` runs it as one stage and as two
and charges the difference to the messages the cut adds.

A vpipe model file: `build_model` and `make_batch`, with the default cross-entropy loss.
"""

import torch
from torch import Tensor, nn

FEATURES = 4  # input width, and the hidden width: the one tensor the cut carries
CLASSES = 2


def build_model() -> nn.Module:
    return nn.Sequential(nn.Linear(FEATURES, FEATURES), nn.Linear(FEATURES, CLASSES))


def make_batch(batch_size: int, step: int) -> tuple[Tensor, Tensor]:
    """Zeros and label 0: the probe times the pipeline, not what it learns."""
    return torch.zeros(batch_size, FEATURES), torch.zeros(batch_size, dtype=torch.long)
