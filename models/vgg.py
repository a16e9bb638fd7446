"""VGG-style plain CNN: the reference convolutional model without skip connections.

A vpipe model file: `build_model` and `make_batch`, and no `loss_fn`, because class logits
[B, num_classes] against labels [B] is exactly vpipe's default cross-entropy. A straight chain
of layers with no branches at all, so `torch.fx` traces it with no leaf annotations, and every
cut between two layers is a valid stage boundary carrying a single tensor.
"""

from dataclasses import dataclass

from torch import Tensor, nn

from vpipe.models.images import template_images

NOISE = 1.0  # std of the per-pixel noise make_batch adds to each class's fixed template


@dataclass(frozen=True)
class VGGConfig:
    """Model size. Frozen so the module default cannot be changed by accident; use replace()."""

    widths: tuple[int, ...] = (16, 32, 64)  # channels per stage; a 2x2 max-pool ends each stage
    convs_per_stage: tuple[int, ...] = (1, 1, 2)  # 3x3 conv-relu layers; VGG-11 is (1,1,2,2,2)
    hidden: int = 128  # width of the two hidden classifier layers (4096 in the original)
    image_size: int = 32  # height and width of the images; must survive every 2x2 pool whole
    in_channels: int = 3  # colour channels of the input images
    num_classes: int = 10  # labels the classifier chooses between
    dropout: float = 0.0  # 0.0 keeps runs deterministic, so a pipeline can be checked exactly

    def __post_init__(self) -> None:
        if not self.widths or len(self.widths) != len(self.convs_per_stage):
            raise ValueError(
                f"widths={self.widths} and convs_per_stage={self.convs_per_stage} must be "
                "non-empty and of equal length: one entry per stage"
            )
        if self.image_size % 2 ** len(self.widths) != 0:
            raise ValueError(
                f"image_size={self.image_size} is not divisible by 2**{len(self.widths)}: "
                "each of the stages halves it with a 2x2 max-pool"
            )


CONFIG = VGGConfig()


class VGG(nn.Module):
    """Images [B, C, H, W] -> class logits [B, num_classes]; H and W fixed by image_size."""

    def __init__(self, config: VGGConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = config.in_channels
        for width, n in zip(config.widths, config.convs_per_stage, strict=True):
            for _ in range(n):
                layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU()]
                c = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        side = config.image_size // 2 ** len(config.widths)  # the classifier's input is fixed
        h, p = config.hidden, config.dropout
        self.classifier = nn.Sequential(
            nn.Flatten(),
            *(nn.Linear(c * side * side, h), nn.ReLU(), nn.Dropout(p)),
            *(nn.Linear(h, h), nn.ReLU(), nn.Dropout(p)),
            nn.Linear(h, config.num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def build_model(config: VGGConfig = CONFIG) -> nn.Module:
    """The model vpipe profiles, splits into stages and trains."""
    return VGG(config)


def make_batch(batch_size: int, step: int, config: VGGConfig = CONFIG) -> tuple[Tensor, Tensor]:
    """Images [B, in_channels, image_size, image_size] and a class label [B]: class templates
    plus noise (see vpipe.models.images)."""
    return template_images(
        batch_size, step, config.num_classes, config.in_channels, config.image_size, NOISE
    )
