"""The inversion encoder: an image -> W+ latent `ws` of one generator, in a single forward pass.

`Encoder` maps an RGB batch ``x`` (float NCHW in [-1, 1] at ``img_resolution``, the generators'
convention) to ``ws [N, num_ws, w_dim]``. It predicts *offsets from the generator's w_avg* in
per-dimension units: ``ws = w_avg + w_scale * offsets(x)``, where ``w_avg`` and ``w_scale`` (the
per-dimension standard deviation of the generator's w) are buffers saved with the weights, so a
file is self-contained. The last layer starts at zero: an untrained encoder returns ``w_avg`` on
every layer, the usual starting point of an optimisation projector, and training can only move
away from it where that helps.

Architecture (defaults, 64 px, num_ws 10, w_dim 512):

- ``stem``: 3x3 conv, ``channels(R)`` channels at the input resolution R;
- one `EncoderBlock` per halving, R -> R/2 -> ... -> 4 px: a residual block (3x3 conv stride 2,
  3x3 conv; shortcut 2x2 average pool + 1x1 conv), GroupNorm + leaky ReLU (per-image statistics:
  no train/eval difference, and photos are not normalised with generator-sample batch statistics);
  channels at resolution r = min(channel_base // r, channel_max);
- ``head``: the 4x4 map flattened (position matters for a face), a fully connected layer to
  ``feature_dim``, leaky ReLU, and a fully connected layer to ``num_ws * w_dim`` offsets.

With channel_base 1024 / channel_max 256 / feature_dim 512 that is 16, 32, 64, 128, 256 channels at
64, 32, 16, 8, 4 px: 5.9 M parameters (2.6 M in the last layer, 2.1 M in ``fc``), ~65 M
multiply-adds per 64 px image, ~11 ms per image on one CPU thread; a 24 MB file in float32 (12 MB
stored as float16). Training it on one thread costs ~0.5 s of CPU per step of 32 samples
(`training.encoder`). The constructor's keyword arguments are kept in ``init_kwargs``, so a file
rebuilds its network with ``Encoder(**kwargs)`` (see `stylemix.inversion.save_encoder`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["EncoderBlock", "Encoder"]


def _groups(channels: int) -> int:
    """GroupNorm groups: 8 channels per group where possible."""
    g = max(1, channels // 8)
    while channels % g:
        g -= 1
    return g


class EncoderBlock(nn.Module):
    """Residual downsampling block: [N, in, r, r] -> [N, out, r/2, r/2]."""

    def __init__(self,
                 in_channels: int,   # input channels
                 out_channels: int,  # output channels
                 ):
        super().__init__()
        self.conv0 = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.norm0 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.conv1 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.norm1 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.skip = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.skip(F.avg_pool2d(x, 2))
        x = F.leaky_relu(self.norm0(self.conv0(x)), 0.2)
        x = self.norm1(self.conv1(x))
        return F.leaky_relu(x + s, 0.2)


class Encoder(nn.Module):
    """image [N, img_channels, R, R] in [-1, 1] -> ws [N, num_ws, w_dim] (see module doc)."""

    def __init__(self,
                 img_resolution: int,           # input resolution R (power of two >= 8), = G.img_resolution
                 num_ws: int,                   # rows of ws, = G.num_ws
                 w_dim: int,                    # w dimensionality, = G.w_dim
                 img_channels: int = 3,         # RGB
                 channel_base: int = 1024,      # channels at resolution r = channel_base // r ...
                 channel_max: int = 256,        # ... at most this many
                 feature_dim: int = 512,        # width of the head's hidden layer
                 ):
        super().__init__()
        for name, v, lo in (("img_resolution", img_resolution, 8), ("num_ws", num_ws, 1), ("w_dim", w_dim, 1),
                            ("img_channels", img_channels, 1), ("channel_base", channel_base, 1),
                            ("channel_max", channel_max, 1), ("feature_dim", feature_dim, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if img_resolution & (img_resolution - 1):
            raise ValueError(f"img_resolution must be a power of two >= 8, got {img_resolution}")
        self.init_kwargs = dict(img_resolution=img_resolution, num_ws=num_ws, w_dim=w_dim,
                                img_channels=img_channels, channel_base=channel_base,
                                channel_max=channel_max, feature_dim=feature_dim)
        self.img_resolution = img_resolution
        self.num_ws = num_ws
        self.w_dim = w_dim
        self.img_channels = img_channels

        def ch(res: int) -> int:
            return max(1, min(channel_base // res, channel_max))

        self.stem = nn.Conv2d(img_channels, ch(img_resolution), 3, padding=1)
        blocks = []
        res = img_resolution
        while res > 4:
            blocks.append(EncoderBlock(ch(res), ch(res // 2)))
            res //= 2
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(ch(4) * 4 * 4, feature_dim)
        self.out = nn.Linear(feature_dim, num_ws * w_dim)
        nn.init.zeros_(self.out.weight)  # starts at w_avg (see module doc)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("w_avg", torch.zeros([w_dim]))
        self.register_buffer("w_scale", torch.ones([w_dim]))

    @torch.no_grad()
    def set_w_stats(self, w_avg: torch.Tensor, w_scale: torch.Tensor) -> None:
        """Store the generator's w_avg [w_dim] and per-dimension std [w_dim] (> 0)."""
        w_avg = torch.as_tensor(w_avg, dtype=torch.float32).reshape(-1)
        w_scale = torch.as_tensor(w_scale, dtype=torch.float32).reshape(-1)
        assert w_avg.shape == (self.w_dim,) and w_scale.shape == (self.w_dim,), (w_avg.shape, w_scale.shape)
        if not (torch.isfinite(w_avg).all() and torch.isfinite(w_scale).all() and (w_scale > 0).all()):
            raise ValueError("w statistics must be finite with a positive scale")
        self.w_avg.copy_(w_avg)
        self.w_scale.copy_(w_scale)

    def offsets(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised offsets [N, num_ws, w_dim]: (ws - w_avg) / w_scale."""
        assert x.ndim == 4 and x.shape[1:] == (self.img_channels, self.img_resolution, self.img_resolution), x.shape
        h = F.leaky_relu(self.stem(x), 0.2)
        h = self.blocks(h)
        h = F.leaky_relu(self.fc(h.flatten(1)), 0.2)
        return self.out(h).reshape(-1, self.num_ws, self.w_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ws [N, num_ws, w_dim]."""
        return self.w_avg + self.w_scale * self.offsets(x)

    def extra_repr(self) -> str:
        return f"img_resolution={self.img_resolution}, num_ws={self.num_ws}, w_dim={self.w_dim}"

