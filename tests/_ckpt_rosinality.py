"""A functional forward pass of a rosinality/stylegan2-pytorch generator, written from that
project's layer definitions (EqualLinear with lr_mul and fused leaky ReLU, ModulatedConv2d with
scale 1/sqrt(in*k*k) inside the modulation, transposed-conv upsampling followed by Blur, ToRGB with
a [1,3,1,1] bias and Upsample of the skip image), working directly on its state-dict layout.
Used to check the conversion to the official layout numerically, independently of it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _upfirdn(x: torch.Tensor, kernel: torch.Tensor, *, up: int = 1, pad=(0, 0)) -> torch.Tensor:
    """Zero-insertion upsampling, padding, then true convolution with `kernel` (rosinality's native op)."""
    n, c, h, w = x.shape
    if up > 1:
        y = x.new_zeros(n, c, h * up, w * up)
        y[:, :, ::up, ::up] = x
        x = y
    p0, p1 = pad
    x = F.pad(x, [p0, p1, p0, p1])
    k = torch.flip(kernel, [0, 1]).to(x.dtype)[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, k, groups=c)


def _fused_lrelu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    shape = [1, -1] + [1] * (x.ndim - 2)
    return F.leaky_relu(x + bias.view(shape), 0.2) * math.sqrt(2)


def mapping(sd: dict, z: torch.Tensor, *, lr_mul: float = 0.01) -> torch.Tensor:
    x = z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + 1e-8)  # PixelNorm
    i = 1
    while f"style.{i}.weight" in sd:
        w, b = sd[f"style.{i}.weight"], sd[f"style.{i}.bias"]
        scale = (1 / math.sqrt(w.shape[1])) * lr_mul
        x = _fused_lrelu(F.linear(x, w * scale), b * lr_mul)
        i += 1
    return x


def _modconv(sd: dict, prefix: str, x: torch.Tensor, style: torch.Tensor, *, demodulate: bool,
             upsample: bool) -> torch.Tensor:
    weight = sd[f"{prefix}.conv.weight"]  # [1, out, in, k, k]
    _, out_c, in_c, k, _ = weight.shape
    n, _, h, w = x.shape
    mw, mb = sd[f"{prefix}.conv.modulation.weight"], sd[f"{prefix}.conv.modulation.bias"]
    s = F.linear(style, mw * (1 / math.sqrt(mw.shape[1]))) + mb  # EqualLinear, bias_init=1, lr_mul=1
    wgt = (1 / math.sqrt(in_c * k * k)) * weight * s.view(n, 1, in_c, 1, 1)
    if demodulate:
        demod = torch.rsqrt(wgt.pow(2).sum([2, 3, 4]) + 1e-8)
        wgt = wgt * demod.view(n, out_c, 1, 1, 1)
    if upsample:
        xin = x.reshape(1, n * in_c, h, w)
        wgt = wgt.view(n, out_c, in_c, k, k).transpose(1, 2).reshape(n * in_c, out_c, k, k)
        out = F.conv_transpose2d(xin, wgt, padding=0, stride=2, groups=n)
        out = out.view(n, out_c, out.shape[2], out.shape[3])
        # Blur(kernel, pad=(pad0, pad1), upsample_factor=2): p = (4 - 2) - (k - 1)
        p = (4 - 2) - (k - 1)
        return _upfirdn(out, sd[f"{prefix}.conv.blur.kernel"], pad=((p + 1) // 2 + 1, p // 2 + 1))
    out = F.conv2d(x.reshape(1, n * in_c, h, w), wgt.reshape(n * out_c, in_c, k, k), padding=k // 2, groups=n)
    return out.view(n, out_c, h, w)


def synthesis(sd: dict, latent: torch.Tensor) -> torch.Tensor:
    """latent [N, n_latent, style_dim] -> image, with the stored noises (randomize_noise=False)."""
    n = latent.shape[0]
    n_rgb = 0
    while f"to_rgbs.{n_rgb}.conv.weight" in sd:
        n_rgb += 1

    def styled(prefix, x, style, noise_idx, upsample):
        out = _modconv(sd, prefix, x, style, demodulate=True, upsample=upsample)
        out = out + sd[f"{prefix}.noise.weight"] * sd[f"noises.noise_{noise_idx}"]
        return _fused_lrelu(out, sd[f"{prefix}.activate.bias"])

    def to_rgb(prefix, x, style, skip):
        out = _modconv(sd, prefix, x, style, demodulate=False, upsample=False) + sd[f"{prefix}.bias"]
        if skip is not None:
            out = out + _upfirdn(skip, sd[f"{prefix}.upsample.kernel"], up=2, pad=(2, 1))
        return out

    out = sd["input.input"].repeat(n, 1, 1, 1)
    out = styled("conv1", out, latent[:, 0], 0, False)
    skip = to_rgb("to_rgb1", out, latent[:, 1], None)
    i = 1
    for j in range(n_rgb):
        out = styled(f"convs.{2 * j}", out, latent[:, i], 2 * j + 1, True)
        out = styled(f"convs.{2 * j + 1}", out, latent[:, i + 1], 2 * j + 2, False)
        skip = to_rgb(f"to_rgbs.{j}", out, latent[:, i + 2], skip)
        i += 2
    return skip


def discriminator(sd: dict, img: torch.Tensor, *, stddev_group: int = 4) -> torch.Tensor:
    """rosinality Discriminator: ConvLayer fromRGB, ResBlocks (Blur before strided convs),
    minibatch stddev, final ConvLayer, two EqualLinear (the first with fused leaky ReLU)."""

    def conv_layer(prefix, x, k, down, activate):
        i = 0
        if down:
            p = (4 - 2) + (k - 1)
            x = _upfirdn(x, sd[f"{prefix}.0.kernel"], pad=((p + 1) // 2, p // 2))
            i = 1
        w = sd[f"{prefix}.{i}.weight"]
        x = F.conv2d(x, w * (1 / math.sqrt(w[0].numel())), stride=2 if down else 1, padding=0 if down else k // 2)
        if activate:
            x = _fused_lrelu(x, sd[f"{prefix}.{i + 1}.bias"])
        return x

    out = conv_layer("convs.0", img, 1, False, True)
    i = 1
    while f"convs.{i}.conv1.0.weight" in sd:
        a = conv_layer(f"convs.{i}.conv1", out, 3, False, True)
        a = conv_layer(f"convs.{i}.conv2", a, 3, True, True)
        skip = conv_layer(f"convs.{i}.skip", out, 1, True, False)
        out = (a + skip) / math.sqrt(2)
        i += 1
    batch, channel, height, width = out.shape
    group = min(batch, stddev_group)
    std = out.view(group, -1, 1, channel, height, width)
    std = torch.sqrt(std.var(0, unbiased=False) + 1e-8)
    std = std.mean([2, 3, 4], keepdim=True).squeeze(2).repeat(group, 1, height, width)
    out = conv_layer("final_conv", torch.cat([out, std], 1), 3, False, True).view(batch, -1)
    w0, b0 = sd["final_linear.0.weight"], sd["final_linear.0.bias"]
    out = _fused_lrelu(F.linear(out, w0 * (1 / math.sqrt(w0.shape[1]))), b0)
    w1, b1 = sd["final_linear.1.weight"], sd["final_linear.1.bias"]
    return F.linear(out, w1 * (1 / math.sqrt(w1.shape[1])), b1)
