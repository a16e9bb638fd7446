"""Multi-layer perceptron: the smallest reference model, for quick end-to-end checks.

A vpipe model file: `build_model` and `make_batch`, and no `loss_fn`, because class logits
[B, num_classes] against labels [B] is exactly vpipe's default cross-entropy. A straight chain
of layers, so `torch.fx` traces it with no leaf annotations.
"""

from dataclasses import dataclass

import torch
from torch import Tensor, nn

NOISE = 1.0  # std of the noise make_batch adds to each class's fixed centre
CENTRE_SEED = 12345  # seeds the class centres, so every step shows the same classes


@dataclass(frozen=True)
class MLPConfig:
    """Model size. Frozen so the module default cannot be changed by accident; use replace()."""

    in_features: int = 64  # length of each input vector
    hidden: tuple[int, ...] = (128, 128, 64)  # width of each hidden layer; its length is the depth
    num_classes: int = 10  # labels the classifier chooses between
    dropout: float = 0.0  # 0.0 keeps runs deterministic, so a pipeline can be checked exactly


CONFIG = MLPConfig()


class MLP(nn.Module):
    """Vectors [B, in_features] -> class logits [B, num_classes]: Linear-ReLU per hidden layer."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = config.in_features
        for h in config.hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(config.dropout)]
            width = h
        layers.append(nn.Linear(width, config.num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def build_model(config: MLPConfig = CONFIG) -> nn.Module:
    """The model vpipe profiles, splits into stages and trains."""
    return MLP(config)


def make_batch(batch_size: int, step: int, config: MLPConfig = CONFIG) -> tuple[Tensor, Tensor]:
    """Vectors [B, in_features] (float32) and a class label [B] (int64).

    Each class has a fixed random centre; a sample is its class's centre plus Gaussian noise of
    std NOISE. A generator seeded from `step` makes every step reproducible without touching
    the global RNG.
    """
    shape = (config.num_classes, config.in_features)
    centres = torch.randn(shape, generator=torch.Generator().manual_seed(CENTRE_SEED))
    g = torch.Generator().manual_seed(step)
    label = torch.randint(config.num_classes, (batch_size,), generator=g)
    noise = torch.randn((batch_size, config.in_features), generator=g)
    return centres[label] + NOISE * noise, label
