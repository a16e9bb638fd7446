"""Small ResNet for square images: the reference convolutional model with skip connections.

A vpipe model file: `build_model` and `make_batch`, and no `loss_fn`, because class logits
[B, num_classes] against labels [B] is exactly vpipe's default cross-entropy. The shortcut of
each block is chosen when the model is built, never in forward, so `torch.fx` traces it with no
leaf annotations. The stem is the CIFAR one (a 3x3 conv, no max-pool), sized for small images.
"""

from dataclasses import dataclass

from torch import Tensor, nn

from vpipe.models.images import template_images

NOISE = 1.0  # std of the per-pixel noise make_batch adds to each class's fixed template


@dataclass(frozen=True)
class ResNetConfig:
    """Model size. Frozen so the module default cannot be changed by accident; use replace()."""

    widths: tuple[int, ...] = (16, 32, 64)  # channels per stage; each later stage halves H and W
    blocks_per_stage: tuple[int, ...] = (1, 1, 1)  # BasicBlocks per stage; ResNet-18 is (2,2,2,2)
    image_size: int = 32  # height and width of the images make_batch draws
    in_channels: int = 3  # colour channels of the input images
    num_classes: int = 10  # labels the classifier chooses between

    def __post_init__(self) -> None:
        if not self.widths or len(self.widths) != len(self.blocks_per_stage):
            raise ValueError(
                f"widths={self.widths} and blocks_per_stage={self.blocks_per_stage} must be "
                "non-empty and of equal length: one entry per stage"
            )


CONFIG = ResNetConfig()


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn, add the shortcut, relu: the residual unit of ResNet-18/34."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        # Identity where shapes match; otherwise a strided 1x1 conv so the add lines up.
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet(nn.Module):
    """Images [B, C, H, W] -> class logits [B, num_classes]; any H, W, thanks to global pooling."""

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        c = config.widths[0]
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()
        )
        blocks = []
        stages = zip(config.widths, config.blocks_per_stage, strict=True)
        for i, (width, n) in enumerate(stages):
            for j in range(n):
                blocks.append(BasicBlock(c, width, stride=2 if i > 0 and j == 0 else 1))
                c = width
        self.blocks = nn.Sequential(*blocks)  # flat, so each block is one unit for the planner
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, config.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))


def build_model(config: ResNetConfig = CONFIG) -> nn.Module:
    """The model vpipe profiles, splits into stages and trains."""
    return ResNet(config)


def make_batch(batch_size: int, step: int, config: ResNetConfig = CONFIG) -> tuple[Tensor, Tensor]:
    """Images [B, in_channels, image_size, image_size] and a class label [B]: class templates
    plus noise (see vpipe.models.images)."""
    return template_images(
        batch_size, step, config.num_classes, config.in_channels, config.image_size, NOISE
    )
