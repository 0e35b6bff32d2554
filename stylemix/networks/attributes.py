"""The attribute classifier network: a small residual CNN with three outputs.

`AttributeNet` maps an RGB image batch ``x`` (float NCHW in [-1, 1], the generators' convention,
at ``img_resolution``) through a convolutional trunk to one global feature vector per image
(``feature_dim``, default 256) and from it to

- attribute logits ``[N, num_attributes]`` (sigmoid -> probability of each attribute),
- an identity embedding ``[N, identity_dim]``: a regression onto the standardised continuous
  identity parameters of `training.data.synthfaces` (face shape, skin tone, eyes, brows, nose,
  mouth, ...), so two images of one person land close together whatever their attributes,
- the feature vectors: ``pooled`` (the trunk's average-pooled last map, ``channels[-1]``, the default
  for Fréchet distances) and ``features`` (the ReLU layer the heads read, ``feature_dim``).

The constructor's keyword arguments are stored in ``init_kwargs`` and written into the checkpoint
metadata, so a file rebuilds its network with ``AttributeNet(**kwargs)``.
Trunk at 64 px (defaults, the shipped ``synthfaces64`` classifier): a strided 3x3 stem conv
(64 -> 32 px, it still sees every pixel), three stages of one residual block each that halve the
resolution (32 -> 16 -> 8 -> 4), global average pooling and one fully connected layer (ReLU).
About 0.35 M parameters (1.4 MB in float32); ~11 M multiply-adds per 64 px image, so it trains
on two CPU cores in about 15 minutes. Wider/deeper trunks are a matter of kwargs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ConvBN", "ResBlock", "AttributeNet"]


class ConvBN(nn.Module):
    """3x3 (or kxk) convolution, batch norm, optional ReLU."""

    def __init__(self,
                 in_channels: int,      # input channels
                 out_channels: int,     # output channels
                 kernel_size: int = 3,  # square kernel
                 stride: int = 1,       # 2 halves the resolution
                 act: bool = True,      # ReLU after the norm
                 ):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.act else x


class ResBlock(nn.Module):
    """Two 3x3 ConvBN with an identity (or strided 1x1) shortcut."""

    def __init__(self,
                 in_channels: int,   # input channels
                 out_channels: int,  # output channels
                 stride: int = 1,    # 2 halves the resolution
                 ):
        super().__init__()
        self.conv1 = ConvBN(in_channels, out_channels, stride=stride)
        self.conv2 = ConvBN(out_channels, out_channels, act=False)
        self.skip = None
        if stride != 1 or in_channels != out_channels:
            self.skip = ConvBN(in_channels, out_channels, kernel_size=1, stride=stride, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x if self.skip is None else self.skip(x)
        return F.relu(self.conv2(self.conv1(x)) + s)


class AttributeNet(nn.Module):
    """Attribute logits, identity embedding and Fréchet features from one CNN trunk."""

    def __init__(self,
                 img_resolution: int = 64,                     # input resolution (square)
                 img_channels: int = 3,                        # RGB
                 num_attributes: int = 6,                      # attribute logits
                 identity_dim: int = 38,                       # identity regression outputs
                 channels: tuple = (16, 32, 64, 128),          # stem, then one per stage
                 blocks: tuple = (1, 1, 1),                    # ResBlocks per stage (first one strided)
                 feature_dim: int = 256,                       # global feature vector
                 stem_stride: int = 2,                         # 2: the stem conv halves the resolution
                 ):
        super().__init__()
        channels, blocks = tuple(int(c) for c in channels), tuple(int(b) for b in blocks)
        if len(channels) != len(blocks) + 1:
            raise ValueError(f"channels needs one entry more than blocks, got {channels} and {blocks}")
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride!r}")
        down = 2 ** len(blocks) * stem_stride
        if img_resolution % down != 0:
            raise ValueError(f"img_resolution {img_resolution} is not divisible by {down}")
        self.init_kwargs = dict(img_resolution=int(img_resolution), img_channels=int(img_channels),
                                num_attributes=int(num_attributes), identity_dim=int(identity_dim),
                                channels=list(channels), blocks=list(blocks), feature_dim=int(feature_dim),
                                stem_stride=int(stem_stride))
        self.img_resolution = int(img_resolution)
        self.img_channels = int(img_channels)
        self.num_attributes = int(num_attributes)
        self.identity_dim = int(identity_dim)
        self.feature_dim = int(feature_dim)

        self.stem = ConvBN(img_channels, channels[0], stride=stem_stride)
        stages = []
        for i, n in enumerate(blocks):
            layers = [ResBlock(channels[i], channels[i + 1], stride=2)]
            layers += [ResBlock(channels[i + 1], channels[i + 1]) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(channels[-1], feature_dim)
        self.attr_head = nn.Linear(feature_dim, num_attributes)
        self.identity_head = nn.Linear(feature_dim, identity_dim)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's globally averaged last feature map [N, channels[-1]]."""
        assert x.ndim == 4 and x.shape[1:] == (self.img_channels, self.img_resolution, self.img_resolution), x.shape
        return self.stages(self.stem(x)).mean(dim=(2, 3))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Global feature vector [N, feature_dim] (non-negative: after ReLU)."""
        return F.relu(self.fc(self.pooled(x)))

    def forward(self, x: torch.Tensor) -> dict:
        """{'logits': [N, num_attributes], 'identity': [N, identity_dim], 'features': [N, feature_dim],
        'pooled': [N, channels[-1]]}."""
        p = self.pooled(x)
        f = F.relu(self.fc(p))
        return {"logits": self.attr_head(f), "identity": self.identity_head(f), "features": f, "pooled": p}
