"""Reference architectures: ``mnist_cnn``, ``resnet20`` (CIFAR, option-A shortcuts) and ``test_cnn``.

Every activation is its own ``nn.ReLU`` module, registered in forward order, so a quantizer can find
"the ReLU that follows this layer" from the module graph alone. ``model.explain_layer`` names the
last conv layer (Grad-CAM's target).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sgq_bench._base import Dataset


class MnistCNN(nn.Sequential):
    """The PyTorch MNIST example network (docs/design.md, "Models and recipes"); logits out."""

    explain_layer = "conv2"

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> None:
        side = (image_size - 4) // 2
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.drop1 = nn.Dropout(0.25)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64 * side * side, 128)
        self.relu3 = nn.ReLU()
        self.drop2 = nn.Dropout(0.5)
        self.fc2 = nn.Linear(128, num_classes)


class TestCNN(nn.Sequential):
    """A tiny CNN for unit tests: float first/last layers around two quantizable ones."""

    explain_layer = "conv2"

    def __init__(self, in_channels: int = 1, num_classes: int = 4, image_size: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(4)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * (image_size // 4) ** 2, 32)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(32, num_classes)


class _ShortcutA(nn.Module):
    """Option-A shortcut: stride-2 subsampling and zero-padded channels (no parameters)."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = _ShortcutA((cout - cin) // 2) if stride != 1 or cin != cout else nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR ResNet-20 (He et al. 2016): 3 stages of 3 blocks, 16/32/64 channels, ~0.27 M params."""

    explain_layer = "layer3"

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU()
        blocks, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            stage = [BasicBlock(cin, cout, stride)] + [BasicBlock(cout, cout, 1) for _ in range(2)]
            blocks.append(nn.Sequential(*stage))
            cin = cout
        self.layer1, self.layer2, self.layer3 = blocks
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def mnist_cnn(dataset: Dataset) -> nn.Module:
    """PyTorch-example MNIST CNN: 2 conv + 2 linear, dropout, no BatchNorm (1.2 M params)."""
    return MnistCNN(dataset.in_channels, dataset.num_classes, dataset.image_size)


def resnet20(dataset: Dataset) -> nn.Module:
    """CIFAR ResNet-20 with option-A shortcuts (0.27 M params)."""
    return ResNet20(dataset.in_channels, dataset.num_classes, dataset.image_size)


def test_cnn(dataset: Dataset) -> nn.Module:
    """Tiny 2 conv + 2 linear CNN for unit tests (seconds on CPU)."""
    return TestCNN(dataset.in_channels, dataset.num_classes, dataset.image_size)


test_cnn.__test__ = False  # not a pytest test
