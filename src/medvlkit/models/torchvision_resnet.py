"""torchvision's ResNets (18, 34, 50, 101, 152) in plain torch with torchvision's parameter names, so the released
weights of BioViL, MedCLIP and GLoRIA load strictly without torchvision (which cannot be installed next to the CPU
torch wheel medvlkit uses)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DEPTHS = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False), 50: ((3, 4, 6, 3), True),
          101: ((3, 4, 23, 3), True), 152: ((3, 8, 36, 3), True)}


class BasicBlock(nn.Module):
    """torchvision's ResNet-18/34 block: two 3x3 convolutions."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False), nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """torchvision's ResNet-50+ block (stride on the 3x3 convolution, "ResNet v1.5")."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchvisionResNet(nn.Module):
    """``torchvision.models.resnet{depth}`` (``fc`` kept so its state dict loads strictly; callers replace or ignore
    it). ``forward``: (B, 3, H, W) -> the layer4 map (B, C, h, w); ``stages`` returns every stage's map."""

    def __init__(self, depth: int = 50) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"ResNet depth {depth}; valid: {sorted(DEPTHS)}")
        blocks, bottleneck = DEPTHS[depth]
        block = Bottleneck if bottleneck else BasicBlock
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes, stages = 64, []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            layers = [block(inplanes, planes, 1 if i == 0 else 2)]
            inplanes = planes * block.expansion
            layers += [block(inplanes, planes) for _ in range(1, n)]
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = inplanes
        self.fc: nn.Module = nn.Linear(inplanes, 1000)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The maps after layer1..layer4."""
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        out = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)[-1]


def resnet_depth(sd: dict[str, torch.Tensor], prefix: str) -> int:
    """The torchvision ResNet depth of a state dict's ``prefix``-ed keys (blocks per stage, bottleneck or not)."""
    counts = tuple(len({k[len(prefix):].split(".")[1] for k in sd if k.startswith(f"{prefix}layer{i}.")})
                   for i in range(1, 5))
    bottleneck = any(k.startswith(f"{prefix}layer1.0.conv3.") for k in sd)
    for depth, spec in DEPTHS.items():
        if spec == (counts, bottleneck):
            return depth
    raise ValueError(f"not a torchvision ResNet: blocks per stage {counts}, bottleneck {bottleneck}")
