"""StyleGAN2 (ADA variant) generator and discriminator.

Architecture, state_dict key names, shapes, defaults and constructor keyword arguments follow NVIDIA's
StyleGAN2-ADA PyTorch release, so that its weights load with `load_state_dict(strict=True)` and the
`init_kwargs` recorded in its pickles rebuild these classes directly. The numerics follow the same
definitions (equalized learning rate, modulated/demodulated convolution, noise injection, [1,3,3,1]
FIR resampling, skip/resnet architectures, minibatch standard deviation, projection conditioning).

CPU notes: fp16 blocks (`num_fp16_res`) compute in fp16 only on CUDA; everywhere else in fp32.
When `fused_modconv` is left to None, CUDA follows the official choice (fused when not training);
the CPU takes the fused path only for one sample without autograd, and the per-activation path
otherwise (same function, faster there: see `_pick_fused_modconv`). The 1x1 ToRGB runs as a batched
matmul on CPU.

Building blocks, smallest first:
FullyConnectedLayer, Conv2dLayer, MappingNetwork, SynthesisLayer, ToRGBLayer, SynthesisBlock,
SynthesisNetwork, Generator, DiscriminatorBlock, MinibatchStdLayer, DiscriminatorEpilogue, Discriminator.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from stylemix.ops import activation_funcs, bias_act, downsample2d, setup_filter, upsample2d
from stylemix.ops.conv2d_resample import conv2d_resample

__all__ = [
    "normalize_2nd_moment", "modulated_conv2d",
    "FullyConnectedLayer", "Conv2dLayer", "MappingNetwork", "SynthesisLayer", "ToRGBLayer",
    "SynthesisBlock", "SynthesisNetwork", "Generator", "DiscriminatorBlock", "MinibatchStdLayer",
    "DiscriminatorEpilogue", "Discriminator",
]

NOISE_MODES = ("random", "const", "none")
ARCHITECTURES = ("orig", "skip", "resnet")

# ----------------------------------------------------------------------------------------------------
# Helpers.


def _check_resolution(img_resolution) -> int:
    """A power of two >= 4 (4 is the constant input / discriminator epilogue resolution)."""
    if isinstance(img_resolution, bool) or not isinstance(img_resolution, (int, np.integer)) \
            or img_resolution < 4 or (int(img_resolution) & (int(img_resolution) - 1)) != 0:
        raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution!r}")
    return int(img_resolution)


def _check_architecture(architecture) -> str:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    return architecture


def _compute_dtype(use_fp16: bool, force_fp32: bool, device: torch.device) -> torch.dtype:
    """fp16 only where it pays off (CUDA); on CPU fp16 convolutions are ~100x slower than fp32."""
    if use_fp16 and not force_fp32 and device.type == "cuda":
        return torch.float16
    return torch.float32


def _filter_buffer(taps) -> torch.Tensor:
    """The resample filter as a buffer on the current default device (so that building under
    `with torch.device('meta'):` works, e.g. to load a checkpoint without random initialisation)."""
    return setup_filter(taps, device=torch.get_default_device())


_CPU_UNFUSED_MIN_CHANNELS = 64  # thinner synthesis blocks keep the fused path on CPU: see _pick_fused_modconv


def _pick_fused_modconv(*, training: bool, dtype: torch.dtype, ws: torch.Tensor, x: torch.Tensor | None,
                        params, channels: int) -> bool:
    """Which modulated-convolution path to take when the caller leaves it open.

    CUDA: as official (fused, i.e. per-sample weights in one grouped conv, when not training).
    CPU, measured on 2 cores: for a single sample without autograd, fused. With autograd, the
    per-activation path skips the weight-gradient convolution that the fused path needs to reach
    the styles (a layer's fwd+bwd 1.1-1.5x faster from 64 to 512 channels), but adds passes over the
    activations, which cost more than that convolution in thin layers (< _CPU_UNFUSED_MIN_CHANNELS,
    e.g. the 32-channel 1024 px block of config-f), so those stay fused. For batches, one ordinary
    conv beats a grouped conv with one group per sample. Both paths compute the same function (to
    float rounding).
    """
    if training:
        return False
    if ws.device.type != "cpu":
        return dtype == torch.float32 or ws.shape[0] == 1
    if ws.shape[0] != 1:
        return False
    if channels < _CPU_UNFUSED_MIN_CHANNELS:
        return True
    wants_grad = torch.is_grad_enabled() and (ws.requires_grad or (x is not None and x.requires_grad)
                                              or any(p.requires_grad for p in params))
    return not wants_grad


def _memory_format(dtype: torch.dtype, channels_last: bool) -> torch.memory_format:
    if channels_last and dtype == torch.float16:
        return torch.channels_last
    return torch.contiguous_format


def normalize_2nd_moment(x: torch.Tensor, *, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale `x` so that its mean square along `dim` is 1."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, *,
                     noise: torch.Tensor | None = None, up: int = 1, down: int = 1, padding=0,
                     resample_filter: torch.Tensor | None = None, demodulate: bool = True,
                     flip_weight: bool = True, fused_modconv: bool = True) -> torch.Tensor:
    """StyleGAN2 weight modulation (and demodulation) followed by `conv2d_resample`.

    x:       [N, I, H, W] input
    weight:  [O, I, kh, kw] shared weight (already float32; gains applied by the caller as needed)
    styles:  [N, I] per-sample scales of the input channels
    noise:   None or a tensor broadcastable to the output, added after (de)modulation
    fused_modconv: True = one grouped conv with per-sample weights (faster for inference),
                   False = scale activations before and after a shared-weight conv (training).
    """
    batch_size = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    assert weight.shape == (out_channels, in_channels, kh, kw), weight.shape
    assert x.shape[1] == in_channels, (x.shape, weight.shape)
    assert styles.shape == (batch_size, in_channels), (styles.shape, x.shape)

    # Keep fp16 activations in range: pre-scale weight and styles (demodulation undoes the scale).
    if x.dtype == torch.float16 and demodulate:
        weight = weight * (1 / math.sqrt(in_channels * kh * kw)
                           / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)

    dcoefs = None
    if demodulate:
        # 1 / ||weight_o * styles||, without materialising the per-sample weights:
        # sum_ik (w_oik s_i)^2 = sum_i s_i^2 * sum_k w_oik^2.
        wsq = torch.linalg.vector_norm(weight, dim=(2, 3)).square()  # [O, I]
        dcoefs = (styles.square() @ wsq.t() + 1e-8).rsqrt()  # [N, O]

    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(batch_size, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), resample_filter, up=up, down=down, padding=padding,
                            flip_weight=flip_weight)
        if demodulate and noise is not None:
            x = torch.addcmul(noise.to(x.dtype), x, dcoefs.to(x.dtype).reshape(batch_size, -1, 1, 1))
        elif demodulate:
            x = x * dcoefs.to(x.dtype).reshape(batch_size, -1, 1, 1)
        elif noise is not None:
            x = x.add_(noise.to(x.dtype))
        return x

    # Per-sample weights in one pass over `weight`: w[n, o, i] = weight[o, i] * styles[n, i] * dcoefs[n, o].
    scale = styles.unsqueeze(1)  # [N, 1, I]
    if demodulate:
        scale = scale * dcoefs.unsqueeze(2)  # [N, O, I]
    if up > 1 and batch_size == 1:
        # The transposed conv wants the weight as [I, O, kh, kw]: write it in that layout directly
        # (conv2d_resample's transpose is then a free view instead of a copy).
        scale_t = scale.expand(batch_size, out_channels, in_channels).transpose(1, 2).contiguous()
        w = (scale_t[..., None, None] * weight.transpose(0, 1).unsqueeze(0)).contiguous().transpose(1, 2)
    else:
        w = weight.unsqueeze(0) * scale[..., None, None]  # [N, O, I, kh, kw]

    if kh == 1 and kw == 1 and up == 1 and down == 1 and padding == 0 and x.device.type == "cpu":
        # 1x1 (ToRGB): a batched matmul, one op for any batch size, no grouped conv.
        n, _, h, w_ = x.shape
        x = torch.bmm(w.reshape(batch_size, out_channels, in_channels).to(x.dtype),
                      x.reshape(n, in_channels, h * w_))
        x = x.reshape(batch_size, out_channels, h, w_)
        if noise is not None:
            x = x.add_(noise.to(x.dtype))
        return x
    # Per-sample weights as groups of one big conv (batch 1: just a conv).
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_channels, kh, kw)
    x = conv2d_resample(x, w.to(x.dtype), resample_filter, up=up, down=down, padding=padding,
                        groups=batch_size, flip_weight=flip_weight)
    x = x.reshape(batch_size, -1, *x.shape[2:])
    if noise is not None:
        x = x.add_(noise.to(x.dtype))
    return x


# ----------------------------------------------------------------------------------------------------
# Building blocks.


class FullyConnectedLayer(nn.Module):
    """Dense layer with equalized learning rate (weights stored as N(0, 1/lr_multiplier^2))."""

    def __init__(self,
                 in_features,            # number of input features
                 out_features,           # number of output features
                 bias=True,              # add a bias after the matmul?
                 activation="linear",    # activation name from stylemix.ops.activation_funcs
                 lr_multiplier=1,        # learning-rate multiplier (mapping network: 0.01)
                 bias_init=0,            # initial value of the bias
                 ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        if activation not in activation_funcs:
            raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(activation_funcs)}")
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class Conv2dLayer(nn.Module):
    """Convolution with equalized learning rate, optional FIR up/down-sampling, bias, activation, clamp."""

    def __init__(self,
                 in_channels,                    # number of input channels
                 out_channels,                   # number of output channels
                 kernel_size,                    # width and height of the kernel
                 bias=True,                      # add a bias?
                 activation="linear",            # activation name from stylemix.ops.activation_funcs
                 up=1,                           # upsampling factor
                 down=1,                         # downsampling factor
                 resample_filter=[1, 3, 3, 1],   # low-pass filter used for resampling
                 conv_clamp=None,                # clamp the output to +-X (scaled by gain); None = off
                 channels_last=False,            # channels_last memory format (fp16 on CUDA only)
                 trainable=True,                 # False: weight and bias are buffers (frozen layers)
                 ):
        super().__init__()
        if activation not in activation_funcs:
            raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(activation_funcs)}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.channels_last = channels_last
        self.register_buffer("resample_filter", _filter_buffer(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.act_gain = activation_funcs[activation].def_gain

        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size])
        bias = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = nn.Parameter(weight)
            self.bias = nn.Parameter(bias) if bias is not None else None
        else:
            self.register_buffer("weight", weight)
            if bias is not None:
                self.register_buffer("bias", bias)
            else:
                self.bias = None

    def forward(self, x: torch.Tensor, gain: float = 1) -> torch.Tensor:
        w = self.weight * self.weight_gain
        b = self.bias.to(x.dtype) if self.bias is not None else None
        x = conv2d_resample(x, w.to(x.dtype), self.resample_filter, up=self.up, down=self.down,
                            padding=self.padding, flip_weight=(self.up == 1))
        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, b, act=self.activation, gain=act_gain, clamp=act_clamp)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"activation={self.activation}, up={self.up}, down={self.down}")


class MappingNetwork(nn.Module):
    """z (+ embedded c) -> w, broadcast to `num_ws` copies; tracks the running mean `w_avg`."""

    def __init__(self,
                 z_dim,                  # input latent (z) dimensionality, 0 = no latent
                 c_dim,                  # conditioning label (c) dimensionality, 0 = no label
                 w_dim,                  # intermediate latent (w) dimensionality
                 num_ws,                 # number of w copies to output, None = return [N, w_dim]
                 num_layers=8,           # number of mapping layers
                 embed_features=None,    # label embedding size, None = same as w_dim
                 layer_features=None,    # hidden layer width, None = same as w_dim
                 activation="lrelu",     # activation of the hidden layers
                 lr_multiplier=0.01,     # learning-rate multiplier of the mapping layers
                 w_avg_beta=0.995,       # decay of the running average of w, None = do not track
                 ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers!r}")
        if z_dim < 0 or c_dim < 0 or z_dim + c_dim == 0:
            raise ValueError(f"need z_dim > 0 or c_dim > 0, got z_dim={z_dim!r}, c_dim={c_dim!r}")
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta

        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features_list = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]

        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features_list[idx], features_list[idx + 1], activation=activation,
                                        lr_multiplier=lr_multiplier)
            setattr(self, f"fc{idx}", layer)
        # Like the official network: w_avg exists only when ws are broadcast and the average tracked.
        self.track_w_avg = num_ws is not None and w_avg_beta is not None
        if self.track_w_avg:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: torch.Tensor | None, c: torch.Tensor | None, *, truncation_psi: float = 1,
                truncation_cutoff: int | None = None, skip_w_avg_update: bool = False,
                update_emas: bool | None = None) -> torch.Tensor:
        """Returns ws [N, num_ws, w_dim] (or w [N, w_dim] when num_ws is None).

        truncation_psi:    1 = no truncation; psi < 1 pulls w towards w_avg
        truncation_cutoff: truncate only the first `truncation_cutoff` ws (None = all)
        skip_w_avg_update: do not update w_avg even in training mode (StyleGAN2-ADA's name)
        update_emas:       the later official name (StyleGAN3 repo): True = update w_avg (in any
                           mode), False = do not; None = StyleGAN2-ADA behaviour (update in
                           training mode unless skip_w_avg_update)
        """
        if update_emas is None:
            update_w_avg = self.training and not skip_w_avg_update
        else:
            update_w_avg = bool(update_emas) and not skip_w_avg_update
        x = None
        if self.z_dim > 0:
            if not isinstance(z, torch.Tensor) or z.ndim != 2 or z.shape[1] != self.z_dim:
                raise ValueError(f"z must have shape [N, {self.z_dim}], got "
                                 f"{tuple(z.shape) if isinstance(z, torch.Tensor) else z!r}")
            x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            if not isinstance(c, torch.Tensor) or c.ndim != 2 or c.shape[1] != self.c_dim:
                raise ValueError(f"c must have shape [N, {self.c_dim}], got "
                                 f"{tuple(c.shape) if isinstance(c, torch.Tensor) else c!r}")
            if x is not None and c.shape[0] != x.shape[0]:
                raise ValueError(f"z and c batch sizes differ: {tuple(z.shape)} vs {tuple(c.shape)}")
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1) if x is not None else y

        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)

        if self.track_w_avg and update_w_avg:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])

        if truncation_psi != 1:
            if not self.track_w_avg:
                raise ValueError(f"truncation_psi={truncation_psi!r} needs w_avg, which this mapping "
                                 f"network does not track (num_ws=None or w_avg_beta=None)")
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                if not (isinstance(truncation_cutoff, (int, np.integer)) and truncation_cutoff >= 0):
                    raise ValueError(f"truncation_cutoff must be None or an int >= 0, got {truncation_cutoff!r}")
                x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally 2x upsampling), noise injection, bias, lrelu."""

    def __init__(self,
                 in_channels,                    # number of input channels
                 out_channels,                   # number of output channels
                 w_dim,                          # intermediate latent (w) dimensionality
                 resolution,                     # output resolution
                 kernel_size=3,                  # convolution kernel size
                 up=1,                           # upsampling factor (1 or 2)
                 use_noise=True,                 # enable noise injection?
                 activation="lrelu",             # activation name from stylemix.ops.activation_funcs
                 resample_filter=[1, 3, 3, 1],   # low-pass filter used for upsampling
                 conv_clamp=None,                # clamp the output to +-X (scaled by gain); None = off
                 channels_last=False,            # channels_last memory format (fp16 on CUDA only)
                 ):
        super().__init__()
        if activation not in activation_funcs:
            raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(activation_funcs)}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.channels_last = channels_last
        self.register_buffer("resample_filter", _filter_buffer(resample_filter))
        self.padding = kernel_size // 2
        self.act_gain = activation_funcs[activation].def_gain

        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, *, noise_mode: str = "random",
                fused_modconv: bool = True, gain: float = 1) -> torch.Tensor:
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        in_resolution = self.resolution // self.up
        assert x.shape[1:] == (self.in_channels, in_resolution, in_resolution), x.shape
        styles = self.affine(w)

        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device) \
                * self.noise_strength
        if self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength

        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=(self.up == 1),
                             fused_modconv=fused_modconv)
        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=act_gain, clamp=act_clamp)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"resolution={self.resolution}, up={self.up}, activation={self.activation}")


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv to image channels (no demodulation), bias, optional clamp."""

    def __init__(self,
                 in_channels,            # number of input channels
                 out_channels,           # number of image channels
                 w_dim,                  # intermediate latent (w) dimensionality
                 kernel_size=1,          # convolution kernel size
                 conv_clamp=None,        # clamp the output to +-X; None = off
                 channels_last=False,    # channels_last memory format (fp16 on CUDA only)
                 ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.conv_clamp = conv_clamp
        self.channels_last = channels_last
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x: torch.Tensor, w: torch.Tensor, *, fused_modconv: bool = True) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv)
        return bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}"


class SynthesisBlock(nn.Module):
    """One resolution of the synthesis network: [const | conv0 (up 2x)], conv1, [torgb], [skip]."""

    def __init__(self,
                 in_channels,                    # input channels, 0 = first block (learned constant)
                 out_channels,                   # output channels
                 w_dim,                          # intermediate latent (w) dimensionality
                 resolution,                     # resolution of this block
                 img_channels,                   # number of output image channels
                 is_last,                        # is this the last block?
                 architecture="skip",            # 'orig', 'skip' or 'resnet'
                 resample_filter=[1, 3, 3, 1],   # low-pass filter used for upsampling
                 conv_clamp=None,                # clamp conv outputs to +-X; None = off
                 use_fp16=False,                 # compute this block in fp16 (CUDA only)
                 fp16_channels_last=False,       # channels_last memory format with fp16
                 **layer_kwargs,                 # further arguments of SynthesisLayer
                 ):
        super().__init__()
        self.in_channels = in_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = _check_architecture(architecture)
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer("resample_filter", _filter_buffer(resample_filter))
        self.num_conv = 0
        self.num_torgb = 0

        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp,
                                        channels_last=self.channels_last, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    conv_clamp=conv_clamp, channels_last=self.channels_last, **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp,
                                    channels_last=self.channels_last)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                    resample_filter=resample_filter, channels_last=self.channels_last)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor, *,
                force_fp32: bool = False, fused_modconv: bool | None = None, noise_mode: str = "random"):
        assert ws.ndim == 3 and ws.shape[1:] == (self.num_conv + self.num_torgb, self.w_dim), ws.shape
        w_iter = iter(ws.unbind(dim=1))
        dtype = _compute_dtype(self.use_fp16, force_fp32, ws.device)
        memory_format = _memory_format(dtype, self.channels_last)
        torgb_fused = fused_modconv
        if fused_modconv is None:
            fused_modconv = _pick_fused_modconv(training=self.training, dtype=dtype, ws=ws, x=x,
                                                params=(self.conv1.weight,), channels=self.conv1.out_channels)
            # On CPU the 1x1 ToRGB takes the fused path (a batched matmul) in every case: cheaper than
            # scaling the full-resolution activations, with or without autograd.
            torgb_fused = fused_modconv or ws.device.type == "cpu"

        if self.in_channels == 0:
            x = self.const.to(dtype=dtype).unsqueeze(0).expand([ws.shape[0], -1, -1, -1])
            x = x.contiguous(memory_format=memory_format)
        else:
            assert x is not None and x.shape[1:] == (self.in_channels, self.resolution // 2,
                                                     self.resolution // 2), x.shape
            x = x.to(dtype=dtype, memory_format=memory_format)

        if self.in_channels == 0:
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, noise_mode=noise_mode)
        elif self.architecture == "resnet":
            y = self.skip(x, gain=np.sqrt(0.5))
            x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, noise_mode=noise_mode)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, noise_mode=noise_mode,
                           gain=np.sqrt(0.5))
            x = y.add_(x)
        else:
            x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, noise_mode=noise_mode)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, noise_mode=noise_mode)

        if img is not None:
            assert img.shape[1:] == (self.img_channels, self.resolution // 2, self.resolution // 2), img.shape
            img = upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_iter), fused_modconv=torgb_fused)
            y = y.to(dtype=torch.float32, memory_format=torch.contiguous_format)
            img = img.add_(y) if img is not None else y

        assert x.dtype == dtype, (x.dtype, dtype)
        assert img is None or img.dtype == torch.float32, img.dtype
        return x, img

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, architecture={self.architecture}, use_fp16={self.use_fp16}"


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, img_channels, img_resolution, img_resolution]."""

    def __init__(self,
                 w_dim,                  # intermediate latent (w) dimensionality
                 img_resolution,         # output resolution (power of two >= 4)
                 img_channels,           # number of output channels
                 channel_base=32768,     # overall width: channels at resolution r = channel_base / r
                 channel_max=512,        # maximum number of channels in any layer
                 num_fp16_res=0,         # use fp16 (CUDA only) for the N highest resolutions
                 **block_kwargs,         # further arguments of SynthesisBlock (architecture, conv_clamp, ...)
                 ):
        super().__init__()
        self.w_dim = w_dim
        self.img_resolution = _check_resolution(img_resolution)
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(2, self.img_resolution_log2 + 1)]
        channels_dict = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        if min(channels_dict.values()) < 1:
            raise ValueError(f"channel_base={channel_base} gives no channels at {img_resolution} px")
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)

        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = channels_dict[res // 2] if res > 4 else 0
            out_channels = channels_dict[res]
            use_fp16 = res >= fp16_resolution
            is_last = res == self.img_resolution
            block = SynthesisBlock(in_channels, out_channels, w_dim=w_dim, resolution=res,
                                   img_channels=img_channels, is_last=is_last, use_fp16=use_fp16,
                                   **block_kwargs)
            self.num_ws += block.num_conv
            if is_last:
                self.num_ws += block.num_torgb
            setattr(self, f"b{res}", block)

    def forward(self, ws: torch.Tensor, *, noise_mode: str = "random", force_fp32: bool = False,
                fused_modconv: bool | None = None) -> torch.Tensor:
        """Returns images in about [-1, 1] (not clamped).

        noise_mode:    'random' (fresh noise each call, the official default), 'const' (the stored
                       noise_const buffers: reproducible) or 'none'
        force_fp32:    compute fp16 blocks in fp32 (they already are, except on CUDA)
        fused_modconv: None = fused when not training, else force either modulated-conv path
        """
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if not isinstance(ws, torch.Tensor) or ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"ws must have shape [N, {self.num_ws}, {self.w_dim}], got "
                             f"{tuple(ws.shape) if isinstance(ws, torch.Tensor) else ws!r}")
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            w_idx += block.num_conv
            x, img = block(x, img, block_ws, force_fp32=force_fp32, fused_modconv=fused_modconv,
                           noise_mode=noise_mode)
        return img

    def extra_repr(self) -> str:
        return (f"w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}, "
                f"img_channels={self.img_channels}")


class Generator(nn.Module):
    """Mapping network + synthesis network: (z, c) -> image."""

    def __init__(self,
                 z_dim,                  # input latent (z) dimensionality
                 c_dim,                  # conditioning label (c) dimensionality, 0 = unconditional
                 w_dim,                  # intermediate latent (w) dimensionality
                 img_resolution,         # output resolution (power of two >= 4)
                 img_channels,           # number of output color channels
                 mapping_kwargs={},      # arguments of MappingNetwork
                 synthesis_kwargs={},    # arguments of SynthesisNetwork
                 **more_synthesis_kwargs,  # also SynthesisNetwork's: the StyleGAN3 repo's StyleGAN2 G
                                           # records them flat (channel_base=..., ...), not nested
                 ):
        super().__init__()
        synthesis_kwargs = dict(synthesis_kwargs, **more_synthesis_kwargs)
        # The constructor arguments, as official pickles record them (lets checkpoints rebuild G).
        self.init_kwargs = copy.deepcopy(dict(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution,
                                              img_channels=img_channels, mapping_kwargs=dict(mapping_kwargs),
                                              synthesis_kwargs=synthesis_kwargs))
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = _check_resolution(img_resolution)
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **mapping_kwargs)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None, *, truncation_psi: float = 1,
                truncation_cutoff: int | None = None, skip_w_avg_update: bool = False,
                update_emas: bool | None = None, **synthesis_kwargs) -> torch.Tensor:
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          skip_w_avg_update=skip_w_avg_update, update_emas=update_emas)
        return self.synthesis(ws, **synthesis_kwargs)


class DiscriminatorBlock(nn.Module):
    """One resolution of the discriminator: [fromrgb], conv0, conv1 (down 2x), [skip]."""

    def __init__(self,
                 in_channels,                    # input channels, 0 = first block (image input)
                 tmp_channels,                   # channels of the intermediate layers
                 out_channels,                   # output channels
                 resolution,                     # resolution of this block
                 img_channels,                   # number of input image channels
                 first_layer_idx,                # index of the first layer (for freeze_layers)
                 architecture="resnet",          # 'orig', 'skip' or 'resnet'
                 activation="lrelu",             # activation name from stylemix.ops.activation_funcs
                 resample_filter=[1, 3, 3, 1],   # low-pass filter used for downsampling
                 conv_clamp=None,                # clamp conv outputs to +-X; None = off
                 use_fp16=False,                 # compute this block in fp16 (CUDA only)
                 fp16_channels_last=False,       # channels_last memory format with fp16
                 freeze_layers=0,                # layers with index < freeze_layers are frozen
                 ):
        assert in_channels in (0, tmp_channels), (in_channels, tmp_channels)
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.first_layer_idx = first_layer_idx
        self.architecture = _check_architecture(architecture)
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer("resample_filter", _filter_buffer(resample_filter))

        self.num_layers = 0

        def trainable() -> bool:
            layer_idx = self.first_layer_idx + self.num_layers
            self.num_layers += 1
            return layer_idx >= freeze_layers

        common = dict(activation=activation, conv_clamp=conv_clamp, channels_last=self.channels_last)
        if in_channels == 0 or architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1, trainable=trainable(), **common)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3, trainable=trainable(), **common)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, kernel_size=3, down=2, trainable=trainable(),
                                 resample_filter=resample_filter, **common)
        if architecture == "resnet":
            self.skip = Conv2dLayer(tmp_channels, out_channels, kernel_size=1, bias=False, down=2,
                                    trainable=trainable(), resample_filter=resample_filter,
                                    channels_last=self.channels_last)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, *, force_fp32: bool = False):
        device = (x if x is not None else img).device
        dtype = _compute_dtype(self.use_fp16, force_fp32, device)
        memory_format = _memory_format(dtype, self.channels_last)

        if x is not None:
            assert x.shape[1:] == (self.in_channels, self.resolution, self.resolution), x.shape
            x = x.to(dtype=dtype, memory_format=memory_format)

        if self.in_channels == 0 or self.architecture == "skip":
            assert img.shape[1:] == (self.img_channels, self.resolution, self.resolution), img.shape
            img = img.to(dtype=dtype, memory_format=memory_format)
            y = self.fromrgb(img)
            x = x + y if x is not None else y
            img = downsample2d(img, self.resample_filter) if self.architecture == "skip" else None

        if self.architecture == "resnet":
            y = self.skip(x, gain=np.sqrt(0.5))
            x = self.conv0(x)
            x = self.conv1(x, gain=np.sqrt(0.5))
            x = y.add_(x)
        else:
            x = self.conv0(x)
            x = self.conv1(x)

        assert x.dtype == dtype, (x.dtype, dtype)
        return x, img

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, architecture={self.architecture}, use_fp16={self.use_fp16}"


class MinibatchStdLayer(nn.Module):
    """Append the standard deviation across groups of samples as extra feature maps."""

    def __init__(self,
                 group_size,             # samples per group (min with the batch size); None = whole batch
                 num_channels=1,         # number of stddev feature maps (features split in this many parts)
                 ):
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        G = min(self.group_size, N) if self.group_size is not None else N
        F = self.num_channels
        if N % G != 0:
            raise ValueError(f"batch size {N} is not divisible by the minibatch-stddev group size {G}")
        c = C // F
        y = x.reshape(G, -1, F, c, H, W)        # [G, n, F, c, H, W], sample i*n+j is in group j
        y = y - y.mean(dim=0)                   # deviation from the group mean
        y = y.square().mean(dim=0)              # variance over the group
        y = (y + 1e-8).sqrt()                   # stddev
        y = y.mean(dim=[2, 3, 4])               # [n, F]: average over channels and pixels
        y = y.reshape(-1, F, 1, 1).repeat(G, 1, H, W)  # [N, F, H, W]
        return torch.cat([x, y], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


class DiscriminatorEpilogue(nn.Module):
    """4x4 head: [fromrgb], minibatch stddev, conv, fc, out, and projection onto cmap when conditional."""

    def __init__(self,
                 in_channels,                # number of input channels
                 cmap_dim,                   # dimensionality of the mapped label, 0 = unconditional
                 resolution,                 # resolution of this block (4)
                 img_channels,               # number of input image channels
                 architecture="resnet",      # 'orig', 'skip' or 'resnet'
                 mbstd_group_size=4,         # group size of the minibatch stddev layer, None = whole batch
                 mbstd_num_channels=1,       # number of stddev features, 0 = no minibatch stddev
                 activation="lrelu",         # activation name from stylemix.ops.activation_funcs
                 conv_clamp=None,            # clamp conv outputs to +-X; None = off
                 ):
        super().__init__()
        self.in_channels = in_channels
        self.cmap_dim = cmap_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.architecture = _check_architecture(architecture)

        if architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, in_channels, kernel_size=1, activation=activation)
        self.mbstd = MinibatchStdLayer(group_size=mbstd_group_size, num_channels=mbstd_num_channels) \
            if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, kernel_size=3,
                                activation=activation, conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution ** 2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x: torch.Tensor, img: torch.Tensor | None, cmap: torch.Tensor | None, *,
                force_fp32: bool = False) -> torch.Tensor:
        assert x.shape[1:] == (self.in_channels, self.resolution, self.resolution), x.shape
        x = x.to(dtype=torch.float32, memory_format=torch.contiguous_format)
        if self.architecture == "skip":
            assert img.shape[1:] == (self.img_channels, self.resolution, self.resolution), img.shape
            x = x + self.fromrgb(img.to(torch.float32))

        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        x = self.out(x)

        if self.cmap_dim > 0:
            assert cmap is not None and cmap.shape == (x.shape[0], self.cmap_dim), getattr(cmap, "shape", None)
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / np.sqrt(self.cmap_dim))
        assert x.dtype == torch.float32
        return x

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, architecture={self.architecture}, cmap_dim={self.cmap_dim}"


class Discriminator(nn.Module):
    """image [N, C, H, W] (+ label c) -> logits [N, 1]."""

    def __init__(self,
                 c_dim,                  # conditioning label (c) dimensionality, 0 = unconditional
                 img_resolution,         # input resolution (power of two >= 4)
                 img_channels,           # number of input color channels
                 architecture="resnet",  # 'orig', 'skip' or 'resnet'
                 channel_base=32768,     # overall width: channels at resolution r = channel_base / r
                 channel_max=512,        # maximum number of channels in any layer
                 num_fp16_res=0,         # use fp16 (CUDA only) for the N highest resolutions
                 conv_clamp=None,        # clamp conv outputs to +-X; None = off
                 cmap_dim=None,          # dimensionality of the mapped label, None = channels at 4x4
                 block_kwargs={},        # arguments of DiscriminatorBlock
                 mapping_kwargs={},      # arguments of MappingNetwork (label mapping)
                 epilogue_kwargs={},     # arguments of DiscriminatorEpilogue
                 ):
        super().__init__()
        self.init_kwargs = copy.deepcopy(dict(
            c_dim=c_dim, img_resolution=img_resolution, img_channels=img_channels, architecture=architecture,
            channel_base=channel_base, channel_max=channel_max, num_fp16_res=num_fp16_res, conv_clamp=conv_clamp,
            cmap_dim=cmap_dim, block_kwargs=dict(block_kwargs), mapping_kwargs=dict(mapping_kwargs),
            epilogue_kwargs=dict(epilogue_kwargs)))
        self.c_dim = c_dim
        self.img_resolution = _check_resolution(img_resolution)
        if self.img_resolution < 8:
            raise ValueError(f"the discriminator needs img_resolution >= 8, got {img_resolution!r}")
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = img_channels
        _check_architecture(architecture)
        self.block_resolutions = [2 ** i for i in range(self.img_resolution_log2, 2, -1)]
        channels_dict = {res: min(channel_base // res, channel_max) for res in self.block_resolutions + [4]}
        if min(channels_dict.values()) < 1:
            raise ValueError(f"channel_base={channel_base} gives no channels at {img_resolution} px")
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)

        if cmap_dim is None:
            cmap_dim = channels_dict[4]
        if c_dim == 0:
            cmap_dim = 0
        self.cmap_dim = cmap_dim

        common_kwargs = dict(img_channels=img_channels, architecture=architecture, conv_clamp=conv_clamp)
        cur_layer_idx = 0
        for res in self.block_resolutions:
            in_channels = channels_dict[res] if res < img_resolution else 0
            tmp_channels = channels_dict[res]
            out_channels = channels_dict[res // 2]
            use_fp16 = res >= fp16_resolution
            block = DiscriminatorBlock(in_channels, tmp_channels, out_channels, resolution=res,
                                       first_layer_idx=cur_layer_idx, use_fp16=use_fp16,
                                       **block_kwargs, **common_kwargs)
            setattr(self, f"b{res}", block)
            cur_layer_idx += block.num_layers
        if c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None,
                                          **mapping_kwargs)
        self.b4 = DiscriminatorEpilogue(channels_dict[4], cmap_dim=cmap_dim, resolution=4, **epilogue_kwargs,
                                        **common_kwargs)

    def forward(self, img: torch.Tensor, c: torch.Tensor | None = None, *, force_fp32: bool = False,
                update_emas: bool = False) -> torch.Tensor:
        """Returns logits [N, 1]. `c` [N, c_dim] is required when c_dim > 0 (ignored otherwise).

        update_emas: accepted for the later official signature; D keeps no running averages.
        """
        del update_emas
        expected = (self.img_channels, self.img_resolution, self.img_resolution)
        if not isinstance(img, torch.Tensor) or img.ndim != 4 or img.shape[1:] != expected:
            raise ValueError(f"img must have shape [N, {', '.join(map(str, expected))}], got "
                             f"{tuple(img.shape) if isinstance(img, torch.Tensor) else img!r}")
        if self.c_dim > 0 and (not isinstance(c, torch.Tensor) or c.shape != (img.shape[0], self.c_dim)):
            raise ValueError(f"c must have shape [{img.shape[0]}, {self.c_dim}], got "
                             f"{tuple(c.shape) if isinstance(c, torch.Tensor) else c!r}")
        x = None
        for res in self.block_resolutions:
            x, img = getattr(self, f"b{res}")(x, img, force_fp32=force_fp32)
        cmap = self.mapping(None, c) if self.c_dim > 0 else None
        return self.b4(x, img, cmap, force_fp32=force_fp32)

    def extra_repr(self) -> str:
        return f"c_dim={self.c_dim}, img_resolution={self.img_resolution}, img_channels={self.img_channels}"
