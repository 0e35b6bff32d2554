"""Adaptive discriminator augmentation (ADA) for StyleGAN2-ADA training.

`AugmentPipe` applies the augmentations of Karras et al. 2020 ("Training Generative Adversarial
Networks with Limited Data") to a batch of images [N, C, H, W] in [-1, 1]. Every transformation
is drawn independently per sample and applied with probability `multiplier * p`, where `p` (a
buffer, saved in the state dict) is the overall augmentation strength. The order is fixed:

1. geometric: xflip, rotate90, xint (integer translation), scale, rotate, aniso, xfrac
   (fractional translation). All of them are folded into one 3x3 matrix per sample and applied in
   one resampling pass: the image is upsampled 2x with a near-orthogonal low-pass filter, sampled
   bilinearly through the matrix with mirror extension outside the image, and filtered back down
   2x. At the identity the pass reproduces the input (rms error ~0.2% of white noise's std).
2. colour: brightness, contrast, lumaflip, hue, saturation, folded into one 4x4 matrix per sample
   (3 channels; a 1-channel image is treated as grey RGB and averaged back).
3. imgfilter: random gains on four frequency bands (octaves) with the expected power kept.
4. noise: additive Gaussian noise with a per-sample random strength.
5. cutout: a square of the image set to zero.

With `p == 0` the input is returned as is. Everything is differentiable w.r.t. the images (the
generator is trained through the pipe) and draws its randomness from torch's default generator.

`AdaptiveP` is the ADA heuristic that tunes `p` from the sign of the discriminator's output on
real images. `augpipe_specs` holds the presets of the official training script ('bgc', ...).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from stylemix.ops import upsample2d, upfirdn2d

__all__ = ["AugmentPipe", "AdaptiveP", "augpipe_specs", "all_reduce_sum"]

# ----------------------------------------------------------------------------
# Presets (names and contents as in the official training script's --augpipe).

_BLIT = dict(xflip=1, rotate90=1, xint=1)
_GEOM = dict(scale=1, rotate=1, aniso=1, xfrac=1)
_COLOR = dict(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)

augpipe_specs: dict[str, dict[str, float]] = {
    "blit": dict(_BLIT),
    "geom": dict(_GEOM),
    "color": dict(_COLOR),
    "filter": dict(imgfilter=1),
    "noise": dict(noise=1),
    "cutout": dict(cutout=1),
    "bg": dict(**_BLIT, **_GEOM),
    "bgc": dict(**_BLIT, **_GEOM, **_COLOR),
    "bgcf": dict(**_BLIT, **_GEOM, **_COLOR, imgfilter=1),
    "bgcfn": dict(**_BLIT, **_GEOM, **_COLOR, imgfilter=1, noise=1),
    "bgcfnc": dict(**_BLIT, **_GEOM, **_COLOR, imgfilter=1, noise=1, cutout=1),
}

# ----------------------------------------------------------------------------
# Filters.

# Half of a symmetric 16-tap low-pass filter for 2x resampling (taps 8..15; taps 0..7 mirror them).
# Designed here by least squares (L-BFGS) on three terms: (a) h*h vanishes at every even offset
# except the centre, so upsampling then downsampling with it is the identity to ~7e-4 (a linear-
# phase filter cannot be exactly orthogonal); (b) the response is <~0.02 beyond 0.7 of the 2x
# Nyquist frequency, i.e. little aliasing when the resampled image is decimated; (c) unit DC gain.
# Passband response >= 0.999 up to 0.6 of the original Nyquist frequency.
_GEOM_FILTER_HALF = [
    0.4779024996434377, 0.10551918909181342, -0.09471053679350047, -0.01497056605957198,
    0.03467880759081046, -0.002140115863484731, -0.009013173451777266, 0.0025849305303837565,
]


def _geom_filter() -> np.ndarray:
    half = np.asarray(_GEOM_FILTER_HALF, dtype=np.float64)
    f = np.concatenate([half[::-1], half])
    return f / f.sum()


def _lowpass(numtaps: int, cutoff: float, beta: float) -> np.ndarray:
    """Kaiser-windowed sinc, odd length, zero phase, DC gain 1; `cutoff` as a fraction of Nyquist."""
    assert numtaps % 2 == 1 and 0 < cutoff < 1
    n = np.arange(numtaps) - (numtaps - 1) / 2
    f = cutoff * np.sinc(cutoff * n) * np.kaiser(numtaps, beta)
    return f / f.sum()


def _filter_bank(numtaps: int = 31, beta: float = 4.0) -> np.ndarray:
    """Four 1D band filters [4, numtaps] (octaves: <1/8, 1/8..1/4, 1/4..1/2, >1/2 of Nyquist) that sum to a delta."""
    delta = np.zeros(numtaps)
    delta[numtaps // 2] = 1
    lows = [_lowpass(numtaps, c, beta) for c in (1 / 8, 1 / 4, 1 / 2)] + [delta]
    bands = [lows[0]] + [lows[i] - lows[i - 1] for i in range(1, 4)]
    bank = np.stack(bands)
    assert np.allclose(bank.sum(0), delta)
    return bank


# Relative power of the four bands in a typical natural image, used to keep the expected image
# power when the bands get random gains (the lowest band carries most of it).
_BAND_POWER = np.asarray([10, 1, 1, 1], dtype=np.float64) / 13

# ----------------------------------------------------------------------------
# Per-sample matrices. Geometric ones act on homogeneous pixel coordinates (x right, y down,
# origin at the image centre); colour ones on homogeneous RGB.


def _eye(n: int, batch: int, device) -> torch.Tensor:
    return torch.eye(n, device=device).unsqueeze(0).repeat(batch, 1, 1)


def _translate2d(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    m = _eye(3, tx.shape[0], tx.device)
    m[:, 0, 2] = tx
    m[:, 1, 2] = ty
    return m


def _scale2d(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    m = _eye(3, sx.shape[0], sx.device)
    m[:, 0, 0] = sx
    m[:, 1, 1] = sy
    return m


def _rotate2d(theta: torch.Tensor) -> torch.Tensor:
    m = _eye(3, theta.shape[0], theta.device)
    c, s = torch.cos(theta), torch.sin(theta)
    m[:, 0, 0] = c
    m[:, 0, 1] = -s
    m[:, 1, 0] = s
    m[:, 1, 1] = c
    return m


def _embed3(lin: torch.Tensor) -> torch.Tensor:
    """[N, 3, 3] linear colour map -> [N, 4, 4] homogeneous."""
    m = _eye(4, lin.shape[0], lin.device)
    m[:, :3, :3] = lin
    return m


def _translate3d(t: torch.Tensor) -> torch.Tensor:
    m = _eye(4, t.shape[0], t.device)
    m[:, :3, 3] = t[:, None]
    return m


# ----------------------------------------------------------------------------
# Bilinear grid sampling with mirror extension that supports double backward w.r.t. the images.
# R1 differentiates D's gradient w.r.t. the (augmented) reals, so the resampling pass must be twice
# differentiable w.r.t. its input. PyTorch's grid_sampler_2d_backward has no derivative on CUDA
# ("derivative for aten::grid_sampler_2d_backward is not implemented"; CPU reaches a composite
# fallback instead). Sampling is linear in the image, so the derivative of its backward w.r.t.
# the incoming gradient is the sampling itself, and w.r.t. the image it is zero. The grid is
# never differentiated here (the matrices are random draws, not learned).

_GRID_SAMPLE_ARGS = (0, 2, False)  # interpolation bilinear, padding reflection, align_corners False


class _GridSample(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, grid)
        return torch.grid_sampler(x, grid, *_GRID_SAMPLE_ARGS)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, grid = ctx.saved_tensors
        dx = _GridSampleBackward.apply(dy, x, grid) if ctx.needs_input_grad[0] else None
        return dx, None


class _GridSampleBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dy: torch.Tensor, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(grid)
        dx, _ = torch.ops.aten.grid_sampler_2d_backward(dy, x, grid, *_GRID_SAMPLE_ARGS, [True, False])
        return dx

    @staticmethod
    def backward(ctx, ddx: torch.Tensor):
        (grid,) = ctx.saved_tensors
        ddy = _GridSample.apply(ddx, grid) if ctx.needs_input_grad[0] else None
        return ddy, None, None


def grid_sample_reflect(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """F.grid_sample(x, grid, mode='bilinear', padding_mode='reflection', align_corners=False), twice
    differentiable w.r.t. x on every device; no gradient flows to `grid`."""
    assert x.ndim == 4 and grid.ndim == 4 and grid.shape[-1] == 2, (x.shape, grid.shape)
    return _GridSample.apply(x, grid.detach())


def _pad_symmetric(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Mirror-pad the last two dims by `pad`, repeating the edge pixel (half-sample symmetric), any `pad`."""
    def index(size: int) -> torch.Tensor:
        i = torch.arange(-pad, size + pad, device=x.device)
        i = torch.remainder(i, 2 * size)
        return torch.where(i >= size, 2 * size - 1 - i, i)

    h, w = x.shape[-2:]
    x = x.index_select(-1, index(w))
    return x.index_select(-2, index(h))


class AugmentPipe(torch.nn.Module):
    """ADA augmentations; constructor arguments are the official names and defaults.

    The multipliers (xflip, ..., cutout) scale `p`: a transformation is applied to a sample with
    probability `multiplier * p`. Rebuild an official run's pipe with
    `AugmentPipe.from_spec(training_options['augment_kwargs'])` or a preset with `from_spec('bgc')`.
    """

    def __init__(self, *,
                 xflip=0, rotate90=0, xint=0, xint_max=0.125,  # pixel blitting; xint_max: fraction of the image size
                 scale=0, rotate=0, aniso=0, xfrac=0,  # general geometric
                 scale_std=0.2, rotate_max=1, aniso_std=0.2, xfrac_std=0.125,  # log2 stds; rotate_max in half turns
                 brightness=0, contrast=0, lumaflip=0, hue=0, saturation=0,  # colour
                 brightness_std=0.2, contrast_std=0.5, hue_max=1, saturation_std=1,  # contrast/saturation: log2 stds
                 imgfilter=0, imgfilter_bands=(1, 1, 1, 1), imgfilter_std=1,  # band gains 2^N(0, std)
                 noise=0, cutout=0, noise_std=0.1, cutout_size=0.5,  # noise: std of the noise strength
                 ):
        super().__init__()
        self.register_buffer("p", torch.zeros([]))  # overall augmentation probability, tuned by ADA

        mults = dict(xflip=xflip, rotate90=rotate90, xint=xint, scale=scale, rotate=rotate, aniso=aniso,
                     xfrac=xfrac, brightness=brightness, contrast=contrast, lumaflip=lumaflip, hue=hue,
                     saturation=saturation, imgfilter=imgfilter, noise=noise, cutout=cutout)
        strengths = dict(xint_max=xint_max, scale_std=scale_std, rotate_max=rotate_max, aniso_std=aniso_std,
                         xfrac_std=xfrac_std, brightness_std=brightness_std, contrast_std=contrast_std,
                         hue_max=hue_max, saturation_std=saturation_std, imgfilter_std=imgfilter_std,
                         noise_std=noise_std, cutout_size=cutout_size)
        for name, value in {**mults, **strengths}.items():
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"AugmentPipe: {name} must be a number, got {value!r}") from None
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"AugmentPipe: {name} must be finite and >= 0, got {value!r}")
            setattr(self, name, value)
        bands = [float(b) for b in imgfilter_bands]
        if len(bands) != 4 or any(not math.isfinite(b) or b < 0 for b in bands):
            raise ValueError(f"AugmentPipe: imgfilter_bands must be 4 numbers >= 0, got {imgfilter_bands!r}")
        self.imgfilter_bands = bands

        # Filters are derived from code, so they are not part of the state dict.
        self.register_buffer("Hz_geom", torch.tensor(_geom_filter(), dtype=torch.float32), persistent=False)
        self.register_buffer("Hz_fbank", torch.tensor(_filter_bank(), dtype=torch.float32), persistent=False)

    # Names of the transformations, by stage.
    geom_names = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac")
    color_names = ("brightness", "contrast", "lumaflip", "hue", "saturation")

    @classmethod
    def from_spec(cls, spec: str | dict, **overrides) -> "AugmentPipe":
        """Build from a preset name in `augpipe_specs` or an official `augment_kwargs` dict."""
        if isinstance(spec, str):
            if spec not in augpipe_specs:
                raise ValueError(f"unknown augpipe {spec!r}; choose from {sorted(augpipe_specs)}")
            kwargs = dict(augpipe_specs[spec])
        elif isinstance(spec, dict):
            kwargs = dict(spec)
            class_name = kwargs.pop("class_name", None)
            if class_name is not None and not str(class_name).endswith("AugmentPipe"):
                raise ValueError(f"augment_kwargs describe {class_name!r}, not an AugmentPipe")
        else:
            raise ValueError(f"augpipe spec must be a preset name or a dict, got {type(spec).__name__}")
        kwargs.update(overrides)
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise ValueError(f"bad augment_kwargs {sorted(kwargs)}: {e}") from None

    def extra_repr(self) -> str:
        on = [f"{n}={getattr(self, n):g}" for n in self.geom_names + self.color_names + ("imgfilter", "noise", "cutout")
              if getattr(self, n) > 0]
        return ", ".join(on) or "no transformations"

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Official AugmentPipe state dicts also carry their filters; ours are rebuilt from code.
        for name in ("Hz_geom", "Hz_fbank"):
            state_dict.pop(prefix + name, None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------

    def forward(self, images: torch.Tensor, *, debug_percentile: float | None = None) -> torch.Tensor:
        """Augment `images` [N, C, H, W]; returns a tensor of the same shape and dtype.

        `debug_percentile` in [0, 1] (for visualisation): apply every enabled transformation to every
        sample, regardless of `p`, with each random value at that percentile of its distribution.
        """
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise ValueError(f"images must be a [N, C, H, W] tensor, got "
                             f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
        if not images.is_floating_point():
            raise ValueError(f"images must be floating point, got {images.dtype}")
        if debug_percentile is not None:
            debug_percentile = float(debug_percentile)
            if not 0 <= debug_percentile <= 1:
                raise ValueError(f"debug_percentile must be in [0, 1], got {debug_percentile!r}")
        elif float(self.p) == 0:
            return images
        batch_size, num_channels, height, width = images.shape
        if num_channels not in (1, 3) and any(getattr(self, n) > 0 for n in self.color_names):
            raise ValueError(f"colour augmentations need 1 or 3 channels, got {num_channels}")
        if images.shape[0] == 0:
            return images
        rng = _Draws(batch_size, images.device, self.p, debug_percentile)

        # 1. Geometric: build G_inv, mapping output pixel coordinates to input ones. Transformations
        #    are applied in the order listed, so their inverses are multiplied on the right.
        N, dev = batch_size, images.device
        G_inv = _eye(3, N, dev)
        if self.xflip > 0:
            i = torch.floor(rng.uniform([N]) * 2)
            i = rng.gate(self.xflip, i, 0)
            G_inv = G_inv @ _scale2d(1 - 2 * i, torch.ones_like(i))
        if self.rotate90 > 0:
            i = torch.floor(rng.uniform([N]) * 4)
            i = rng.gate(self.rotate90, i, 0)
            G_inv = G_inv @ _rotate2d(-math.pi / 2 * i)
        if self.xint > 0:
            t = (rng.uniform([N, 2]) * 2 - 1) * self.xint_max
            t = rng.gate(self.xint, t, 0)
            G_inv = G_inv @ _translate2d(-torch.round(t[:, 0] * width), -torch.round(t[:, 1] * height))
        if self.scale > 0:
            s = torch.exp2(rng.normal([N]) * self.scale_std)
            s = rng.gate(self.scale, s, 1)
            G_inv = G_inv @ _scale2d(1 / s, 1 / s)
        # Rotation is done twice (before and after the anisotropic scaling), each with a probability
        # chosen so that the chance of any rotation is rotate * p.
        p_rot = None
        if self.rotate > 0:
            p_rot = 1 - torch.sqrt(torch.clamp(1 - self.rotate * rng.p, min=0))
            theta = (rng.uniform([N]) * 2 - 1) * math.pi * self.rotate_max
            theta = rng.gate_prob(p_rot, theta, 0)
            G_inv = G_inv @ _rotate2d(-theta)
        if self.aniso > 0:
            s = torch.exp2(rng.normal([N]) * self.aniso_std)
            s = rng.gate(self.aniso, s, 1)
            G_inv = G_inv @ _scale2d(1 / s, s)
        if p_rot is not None:
            theta = (rng.uniform([N]) * 2 - 1) * math.pi * self.rotate_max
            theta = rng.gate_prob(p_rot, theta, 0)
            G_inv = G_inv @ _rotate2d(-theta)
        if self.xfrac > 0:
            t = rng.normal([N, 2]) * self.xfrac_std
            t = rng.gate(self.xfrac, t, 0)
            G_inv = G_inv @ _translate2d(-t[:, 0] * width, -t[:, 1] * height)
        if any(getattr(self, n) > 0 for n in self.geom_names):
            images = self._resample(images, G_inv)

        # 2. Colour: one homogeneous 4x4 matrix per sample, composed left to right in the order listed.
        C = _eye(4, N, dev)
        v = torch.full([3], 1 / math.sqrt(3), device=dev)  # luma axis (equal weights)
        vvT = torch.outer(v, v)
        I3 = torch.eye(3, device=dev)
        if self.brightness > 0:
            b = rng.normal([N]) * self.brightness_std
            b = rng.gate(self.brightness, b, 0)
            C = _translate3d(b) @ C
        if self.contrast > 0:
            c = torch.exp2(rng.normal([N]) * self.contrast_std)
            c = rng.gate(self.contrast, c, 1)
            C = _embed3(c[:, None, None] * I3) @ C
        if self.lumaflip > 0:
            i = torch.floor(rng.uniform([N]) * 2)
            i = rng.gate(self.lumaflip, i, 0)
            C = _embed3(I3 - 2 * i[:, None, None] * vvT) @ C  # Householder reflection of the luma component
        if self.hue > 0 and num_channels > 1:
            theta = (rng.uniform([N]) * 2 - 1) * math.pi * self.hue_max
            theta = rng.gate(self.hue, theta, 0)
            cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
            cross = torch.tensor([[0, -1, 1], [1, 0, -1], [-1, 1, 0]], dtype=torch.float32, device=dev) * v[0]
            C = _embed3(cos * I3 + sin * cross + (1 - cos) * vvT) @ C  # Rodrigues: rotation about the luma axis
        if self.saturation > 0 and num_channels > 1:
            s = torch.exp2(rng.normal([N]) * self.saturation_std)
            s = rng.gate(self.saturation, s, 1)
            C = _embed3(vvT + s[:, None, None] * (I3 - vvT)) @ C  # scale the chroma, keep the luma
        if any(getattr(self, n) > 0 for n in self.color_names):
            C = C.to(images.dtype)
            x = images.reshape(N, num_channels, height * width)
            if num_channels == 3:
                x = C[:, :3, :3] @ x + C[:, :3, 3:]
            else:  # grey: apply to (g, g, g) and average the result
                C = C[:, :3, :].mean(dim=1, keepdim=True)
                x = x * C[:, :, :3].sum(dim=2, keepdim=True) + C[:, :, 3:]
            images = x.reshape(N, num_channels, height, width)

        # 3. Image-space filtering: random gain per frequency band, expected power preserved.
        if self.imgfilter > 0:
            num_bands = self.Hz_fbank.shape[0]
            g = torch.ones([N, num_bands], device=dev)
            for i, strength in enumerate(self.imgfilter_bands):
                if strength > 0:
                    t = torch.exp2(rng.normal([N]) * self.imgfilter_std)
                    g[:, i] = rng.gate(self.imgfilter * strength, t, 1)
            power = torch.as_tensor(_BAND_POWER, dtype=torch.float32, device=dev)
            g = g / torch.sqrt((g.square() * power).sum(dim=1, keepdim=True))
            f = (g @ self.Hz_fbank.to(device=dev, dtype=torch.float32)).to(images.dtype)  # [N, taps], symmetric
            images = self._filter_per_sample(images, f)

        # 4. Additive noise with a per-sample strength.
        if self.noise > 0:
            sigma = rng.normal([N]).abs() * self.noise_std
            sigma = rng.gate(self.noise, sigma, 0)
            images = images + torch.randn_like(images) * sigma[:, None, None, None].to(images.dtype)

        # 5. Cutout: zero a square (cutout_size of the image side) at a random centre.
        if self.cutout > 0:
            size = torch.full([N], self.cutout_size, device=dev)
            size = rng.gate(self.cutout, size, 0)
            center = rng.uniform([N, 2])
            cx = (torch.arange(width, device=dev) + 0.5) / width
            cy = (torch.arange(height, device=dev) + 0.5) / height
            out_x = (cx[None, :] - center[:, 0:1]).abs() >= size[:, None] / 2  # [N, W]
            out_y = (cy[None, :] - center[:, 1:2]).abs() >= size[:, None] / 2  # [N, H]
            keep = out_x[:, None, None, :] | out_y[:, None, :, None]
            images = images * keep.to(images.dtype)

        return images

    # ------------------------------------------------------------------

    def _resample(self, images: torch.Tensor, G_inv: torch.Tensor) -> torch.Tensor:
        """Apply the per-sample inverse matrices [N, 3, 3] in one pass (2x oversampled, mirror extension)."""
        N, C, H, W = images.shape
        f = self.Hz_geom.to(device=images.device, dtype=torch.float32)  # upfirdn2d wants float32 taps
        taps = f.shape[0]
        assert taps % 2 == 0, taps

        # Upsample 2x. Mirror padding first so the result is mirror-symmetric about the image
        # border; grid_sample's 'reflection' mode then extends it the same way to any distance.
        m = taps // 4 + 1
        x = upsample2d(_pad_symmetric(images, m), f)
        x = x[:, :, 2 * m: 2 * m + 2 * H, 2 * m: 2 * m + 2 * W]

        # Sampling grid: output pixel centres at 2x resolution, with `q` extra samples per side so
        # the decimation filter below sees real content instead of zeros at the border.
        q = taps // 2
        dev, dt = images.device, torch.float32
        u = (torch.arange(-q, 2 * W + q, device=dev, dtype=dt) + 0.5) / 2 - W / 2  # centred pixel units
        v = (torch.arange(-q, 2 * H + q, device=dev, dtype=dt) + 0.5) / 2 - H / 2
        G = G_inv.to(dt)
        gx = G[:, 0, 0, None, None] * u[None, None, :] + G[:, 0, 1, None, None] * v[None, :, None] + G[:, 0, 2, None, None]
        gy = G[:, 1, 0, None, None] * u[None, None, :] + G[:, 1, 1, None, None] * v[None, :, None] + G[:, 1, 2, None, None]
        grid = torch.stack([gx / (W / 2), gy / (H / 2)], dim=-1).to(images.dtype)  # grid_sample's [-1, 1]
        y = grid_sample_reflect(x, grid)

        # Low-pass and decimate 2x, dropping the extra samples (negative padding crops).
        p0, p1 = (taps - 1) // 2 - q, (taps - 2) // 2 - q
        y = upfirdn2d(y, f, down=2, padding=[p0, p1, p0, p1])
        assert y.shape == images.shape, (y.shape, images.shape)
        return y

    @staticmethod
    def _filter_per_sample(images: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """Separable filtering of each sample with its own symmetric 1D filter f [N, taps], mirror padding."""
        N, C, H, W = images.shape
        taps = f.shape[1]
        x = _pad_symmetric(images, taps // 2).reshape(1, N * C, H + taps - 1, W + taps - 1)
        w = f.repeat_interleave(C, dim=0)  # [N*C, taps]
        x = F.conv2d(x, w[:, None, None, :], groups=N * C)
        x = F.conv2d(x, w[:, None, :, None], groups=N * C)
        return x.reshape(N, C, H, W)


class _Draws:
    """Random values for one forward call, or fixed percentiles in debug mode."""

    def __init__(self, batch_size: int, device, p: torch.Tensor, debug_percentile: float | None):
        self.device = device
        self.p = p.to(device=device, dtype=torch.float32)
        self.debug = debug_percentile
        self.batch_size = batch_size

    def uniform(self, shape) -> torch.Tensor:
        if self.debug is not None:
            return torch.full(shape, min(self.debug, 1 - 1e-6), device=self.device)
        return torch.rand(shape, device=self.device)

    def normal(self, shape) -> torch.Tensor:
        if self.debug is not None:
            q = min(max(self.debug, 1e-6), 1 - 1e-6)
            return torch.full(shape, math.sqrt(2) * torch.erfinv(torch.tensor(2 * q - 1)).item(), device=self.device)
        return torch.randn(shape, device=self.device)

    def gate_prob(self, prob: torch.Tensor, value: torch.Tensor, identity: float) -> torch.Tensor:
        """Per sample: `value` with probability `prob`, else `identity` (always `value` in debug mode)."""
        if self.debug is not None:
            return value
        mask = torch.rand([self.batch_size], device=self.device) < prob
        mask = mask.reshape([self.batch_size] + [1] * (value.ndim - 1))
        return torch.where(mask, value, torch.full_like(value, identity))

    def gate(self, multiplier: float, value: torch.Tensor, identity: float) -> torch.Tensor:
        return self.gate_prob(multiplier * self.p, value, identity)


# ----------------------------------------------------------------------------


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """`reduce_fn` for `AdaptiveP` under torch.distributed: sums `t` over ranks (identity when not distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t


class AdaptiveP:
    """The ADA heuristic: tune the augmentation probability p from D's outputs on real images.

    Each minibatch, feed D's logits on real images to `accumulate()` and then call `step()`. Every
    `ada_interval` minibatches, r_t = E[sign(D(real))] over the interval and
    p += sign(r_t - ada_target) * (batch_size * ada_interval) / (ada_kimg * 1000), clamped to
    [0, max_p]; with `augment_pipe` given, its `p` buffer is updated. `batch_size` is the global
    batch (all ranks); `reduce_fn` sums a [2] tensor (sign sum, count) over ranks in place or by
    return value, e.g. `all_reduce_sum`. Every rank must call `step()` in lockstep then.
    """

    def __init__(self, augment_pipe: AugmentPipe | None = None, *,
                 batch_size: int,  # images per minibatch over all ranks
                 ada_target: float = 0.6,  # target value of E[sign(D(real))]
                 ada_interval: int = 4,  # minibatches between adjustments
                 ada_kimg: float = 500,  # thousands of images for p to go from 0 to 1
                 p: float | None = None,  # initial p; default: the pipe's p, else 0
                 max_p: float = 1.0,  # upper clamp for p
                 reduce_fn: Callable[[torch.Tensor], torch.Tensor | None] | None = None,
                 ):
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if int(ada_interval) != ada_interval or ada_interval < 1:
            raise ValueError(f"ada_interval must be a positive integer, got {ada_interval!r}")
        if not ada_kimg > 0:
            raise ValueError(f"ada_kimg must be > 0, got {ada_kimg!r}")
        if not -1 <= ada_target <= 1:
            raise ValueError(f"ada_target must be in [-1, 1], got {ada_target!r}")
        if not max_p >= 0:
            raise ValueError(f"max_p must be >= 0, got {max_p!r}")
        self.augment_pipe = augment_pipe
        self.batch_size = int(batch_size)
        self.ada_target = float(ada_target)
        self.ada_interval = int(ada_interval)
        self.ada_kimg = float(ada_kimg)
        self.max_p = float(max_p)
        self.reduce_fn = reduce_fn
        if p is None:
            p = float(augment_pipe.p) if augment_pipe is not None else 0.0
        if not 0 <= p <= max_p:
            raise ValueError(f"p must be in [0, {max_p}], got {p!r}")
        self.p = float(p)
        self.rt: float | None = None  # last measured E[sign(D(real))]
        self.num_batches = 0  # minibatches since the last adjustment
        self._stats: torch.Tensor | None = None  # [sign sum, count], on the logits' device
        self._write_p()

    @property
    def step_size(self) -> float:
        """|change of p| per adjustment."""
        return self.batch_size * self.ada_interval / (self.ada_kimg * 1000)

    def accumulate(self, real_logits: torch.Tensor) -> None:
        """Add D's outputs on a batch of real images (any shape) to this interval's statistics."""
        x = real_logits.detach().float()
        s = torch.stack([x.sign().sum(), torch.tensor(float(x.numel()), device=x.device)])
        self._stats = s if self._stats is None else self._stats + s.to(self._stats.device)

    def step(self) -> float | None:
        """Count one minibatch; every `ada_interval` of them adjust p. Returns the change applied, if any."""
        self.num_batches += 1
        if self.num_batches < self.ada_interval:
            return None
        self.num_batches = 0
        stats = self._stats
        if stats is None:
            device = self.augment_pipe.p.device if self.augment_pipe is not None else torch.device("cpu")
            stats = torch.zeros([2], device=device)
        self._stats = None
        if self.reduce_fn is not None:
            reduced = self.reduce_fn(stats)
            stats = stats if reduced is None else reduced
        sign_sum, count = (float(v) for v in stats.cpu())
        if count == 0:
            return None
        self.rt = sign_sum / count
        adjust = float(np.sign(self.rt - self.ada_target)) * self.step_size
        old = self.p
        self.p = min(max(self.p + adjust, 0.0), self.max_p)
        self._write_p()
        return self.p - old

    def _write_p(self) -> None:
        if self.augment_pipe is not None:
            with torch.no_grad():
                self.augment_pipe.p.fill_(self.p)

    def state_dict(self) -> dict:
        stats = None if self._stats is None else [float(v) for v in self._stats.cpu()]
        return dict(p=self.p, rt=self.rt, num_batches=self.num_batches, stats=stats,
                    batch_size=self.batch_size, ada_target=self.ada_target, ada_interval=self.ada_interval,
                    ada_kimg=self.ada_kimg, max_p=self.max_p)

    def load_state_dict(self, state: dict) -> None:
        """Restore p and the partial interval; settings in `state` are informative, the constructor's win."""
        for key in ("p", "num_batches"):
            if key not in state:
                raise ValueError(f"AdaptiveP state lacks {key!r}")
        p = float(state["p"])
        if not 0 <= p <= self.max_p:
            raise ValueError(f"AdaptiveP state has p={p!r} outside [0, {self.max_p}]")
        self.p = p
        self.rt = None if state.get("rt") is None else float(state["rt"])
        self.num_batches = int(state["num_batches"]) % self.ada_interval
        stats = state.get("stats")
        device = self.augment_pipe.p.device if self.augment_pipe is not None else torch.device("cpu")
        self._stats = None if stats is None else torch.tensor(stats, dtype=torch.float32, device=device)
        self._write_p()
