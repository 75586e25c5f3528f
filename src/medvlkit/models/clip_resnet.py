"""OpenAI's ResNet CLIPs (RN50, RN101, RN50x4/x16/x64; PubMedCLIP's RN50 / RN50x4) in plain torch.

The image tower is OpenAI's ``ModifiedResNet`` (``openai/CLIP`` ``clip/model.py``): a 3-convolution stem with an
average pool, anti-aliased strided bottlenecks (an ``AvgPool2d`` before the strided 1x1 convolution), and attention
pooling over the final feature map whose query is the mean token. The text tower is transformers' CLIP text model
(the same transformer as OpenAI's), so tokenisation, pooling at the end-of-text token and LoRA targets match the ViT
path. The architecture is inferred from the state dict's shapes, as OpenAI's ``build_model`` does.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from medvlkit.models.base import LearnedTemperature, ModelBase, PreprocessCfg, TextBatch, TokenizerRecipe, l2_normalize


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU, conv3x3-BN-ReLU, AvgPool(stride), conv1x1-BN (x4), plus an anti-aliased residual path."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False), nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                ("1", nn.BatchNorm2d(planes * self.expansion))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class AttentionPool2d(nn.Module):
    """One multi-head attention whose query is the mean of the feature map's tokens. (B, C, H, W) -> (B, D)."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spacial_dim ** 2 + 1, embed_dim) / embed_dim ** 0.5)
        self.k_proj, self.q_proj = nn.Linear(embed_dim, embed_dim), nn.Linear(embed_dim, embed_dim)
        self.v_proj, self.c_proj = nn.Linear(embed_dim, embed_dim), nn.Linear(embed_dim, output_dim)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """OpenAI's ``F.multi_head_attention_forward`` call, computed with the projections called as modules (so LoRA
        adapters on them act; the functional call reads their weights directly)."""
        x = x.flatten(start_dim=2).transpose(1, 2)  # (B, HW, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)  # (B, HW+1, C)
        x = x + self.positional_embedding[None].to(x.dtype)

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, H, N, C / H)
            return t.reshape(t.shape[0], t.shape[1], self.num_heads, -1).transpose(1, 2)

        y = F.scaled_dot_product_attention(heads(self.q_proj(x[:, :1])), heads(self.k_proj(x)), heads(self.v_proj(x)))
        return self.c_proj(y.transpose(1, 2).reshape(x.shape[0], -1))  # (B, D)


class ModifiedResNet(nn.Module):
    """OpenAI CLIP's image tower. (B, 3, S, S) -> (B, D)."""

    def __init__(self, layers: tuple[int, int, int, int], output_dim: int, heads: int, input_resolution: int,
                 width: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3, self.bn3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.attnpool = AttentionPool2d(input_resolution // 32, width * 32, heads, output_dim)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and the four stages. (B, 3, S, S) -> (B, 32 * width, S / 32, S / 32)."""
        x = x.to(self.conv1.weight.dtype)
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.avgpool(F.relu(self.bn3(self.conv3(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attnpool(self.trunk(x))


def infer_resnet_config(sd: dict[str, torch.Tensor]) -> dict:
    """The constructor arguments of :class:`ModifiedResNet` from an OpenAI-format state dict (as ``build_model``)."""
    layers = tuple(len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{b}.")}) for b in (1, 2, 3, 4))
    width = sd["visual.layer1.0.conv1.weight"].shape[0]
    grid = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
    return {"layers": layers, "width": width, "input_resolution": grid * 32, "heads": width * 32 // 64,
            "output_dim": sd["text_projection"].shape[1]}


class ModifiedResNetImage(ModelBase):
    """The image side of a model whose tower is a :class:`ModifiedResNet` at ``self.visual`` (OpenAI's ResNet CLIPs,
    PMC-CLIP): embeddings, the feature map for heatmaps, and backbone features."""

    visual: ModifiedResNet
    cpu_micro_batch = 4
    """Four images at a time on a CPU without gradients (:meth:`ModelBase.in_micro_batches`): an RN50-shaped tower
    (random weights, batch of 64 at 224 px, 2-core CPU; ``benchmarks/lite_engines.py --rn50``) ran at 7.0 img/s
    whole and 12.4 img/s in fours, with identical outputs (max difference 0.0)."""

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        feats = self.in_micro_batches(self.visual, pixels.to(self.device, self.dtype))
        return l2_normalize(feats) if normalize else feats

    def image_feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.in_micro_batches(self.visual.trunk, pixels.to(self.device, self.dtype))

    def embed_feature_map(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.visual.attnpool(fmap)

    def image_backbone_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The final feature map averaged over space (RN50: 2048-d), before attention pooling."""
        return self.image_feature_map(pixels).mean(dim=(2, 3))


class ResNetCLIP(LearnedTemperature, ModifiedResNetImage):
    """An OpenAI ResNet CLIP behind the medvlkit surface.

    Args:
        visual: the image tower; text: a transformers ``CLIPTextModelWithProjection``; tokenizer: CLIP BPE.
        logit_scale: the learned log temperature (OpenAI's ``logit_scale``).
    """

    default_lora_targets = ("q_proj", "v_proj", "c_proj", "fc1", "fc2")  # attention pool + text transformer

    def __init__(self, visual: ModifiedResNet, text, tokenizer, logit_scale: torch.Tensor,
                 preprocess_cfg: PreprocessCfg, name: str, weight_files: list[str] | None = None) -> None:
        super().__init__(preprocess_cfg, weight_files)
        self.visual, self.text, self.tokenizer, self.name = visual.eval(), text.eval(), tokenizer, name
        self.log_logit_scale = nn.Parameter(logit_scale.detach().clone().float().reshape(()))
        self.embed_dim = int(text.config.projection_dim)
        self.context_length = int(text.config.max_position_embeddings)

    def tower_modules(self) -> dict[str, list[nn.Module]]:
        return {"vision": [self.visual], "text": [self.text]}

    def token_recipe(self) -> TokenizerRecipe:
        return TokenizerRecipe(self.context_length)

    def text_word_embedding(self) -> torch.nn.Module:
        return self.text.get_input_embeddings()

    def encode_text(self, tokens: TextBatch, normalize: bool = True) -> torch.Tensor:
        feats = self.text(**{k: v.to(self.device) for k, v in tokens.items()}).text_embeds
        return l2_normalize(feats) if normalize else feats
