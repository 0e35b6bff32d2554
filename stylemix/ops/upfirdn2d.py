"""Upsample, FIR filter, downsample (upfirdn) for NCHW tensors, and the helpers built on it.

`upfirdn2d(x, f, *, up=1, down=1, padding=0, flip_filter=False, gain=1, impl=None)`:
1. upsample by inserting `up-1` zeros after each pixel,
2. pad (or crop, for negative values) by `padding` = [x0, x1, y0, y1],
3. convolve with the 2D FIR filter `f` (true convolution unless `flip_filter`),
4. keep every `down`-th pixel.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import _build


def _parse_scaling(scaling) -> tuple[int, int]:
    if isinstance(scaling, int):
        scaling = [scaling, scaling]
    sx, sy = (int(s) for s in scaling)
    if sx < 1 or sy < 1:
        raise ValueError(f"up/down factors must be >= 1, got {scaling!r}")
    return sx, sy


def _parse_padding(padding) -> tuple[int, int, int, int]:
    if isinstance(padding, int):
        padding = [padding, padding]
    padding = [int(p) for p in padding]
    if len(padding) == 2:
        px, py = padding
        padding = [px, px, py, py]
    if len(padding) != 4:
        raise ValueError(f"padding must be an int, [x, y] or [x0, x1, y0, y1], got {padding!r}")
    return tuple(padding)  # type: ignore[return-value]


def _filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    if f is None:
        return 1, 1
    assert isinstance(f, torch.Tensor) and f.ndim in (1, 2)
    fw = f.shape[-1]
    fh = f.shape[0]
    assert fw >= 1 and fh >= 1
    return fw, fh


def _parse_args(x: torch.Tensor, f: torch.Tensor | None, up, down, padding):
    """The filter (all-pass [1, 1] when None) and the parsed up, down and padding of one call."""
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    assert isinstance(f, torch.Tensor) and f.ndim in (1, 2) and f.dtype == torch.float32
    return f, _parse_scaling(up), _parse_scaling(down), _parse_padding(padding)


def setup_filter(f, *, device=torch.device("cpu"), normalize: bool = True, flip_filter: bool = False,
                 gain: float = 1, separable: bool | None = None) -> torch.Tensor:
    """Turn a list / array of taps into a float32 filter tensor.

    A 1D list [1, 3, 3, 1] becomes the separable filter; `separable=False` expands it into its 2D
    outer product. `normalize` makes the taps sum to 1; `gain` scales the overall response
    (a 2D filter by `gain`, a separable one by sqrt(gain) per pass).
    """
    if f is None:
        f = 1
    f = torch.as_tensor(f, dtype=torch.float32)
    assert f.ndim in (0, 1, 2)
    assert f.numel() > 0
    if f.ndim == 0:
        f = f[np.newaxis]
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = f.ger(f)
    assert f.ndim == (1 if separable else 2)
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


def _upfirdn2d_ref(x: torch.Tensor, f: torch.Tensor | None, *, up=1, down=1, padding=0,
                   flip_filter: bool = False, gain: float = 1) -> torch.Tensor:
    """Reference implementation with ordinary PyTorch ops (pad, grouped conv2d, strided slice)."""
    assert isinstance(x, torch.Tensor) and x.ndim == 4, x.shape
    f, (upx, upy), (downx, downy), (px0, px1, py0, py1) = _parse_args(x, f, up, down, padding)
    n, c, h, w = x.shape

    # 1. Zero insertion.
    if upx > 1 or upy > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
        x = x.reshape(n, c, h * upy, w * upx)

    # 2. Pad with zeros where positive, crop where negative.
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]

    # 3. Convolution (conv2d correlates, so flip for a true convolution).
    f = f * (gain ** (f.ndim / 2))
    f = f.to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        weight = f[None, None].repeat(c, 1, 1, 1)
        x = F.conv2d(x, weight, groups=c)
    else:
        weight = f[None, None].repeat(c, 1, 1)
        x = F.conv2d(x, weight.unsqueeze(2), groups=c)
        x = F.conv2d(x, weight.unsqueeze(3), groups=c)

    # 4. Decimation.
    if downx > 1 or downy > 1:
        x = x[:, :, ::downy, ::downx]
    return x


# Default path on the CPU (impl=None), measured with benchmarks/bench_ops.py (interleaved repeats,
# median) on this project's 2-core CPU, torch 2.13, fp32, at the upfirdn2d calls of a 256x256
# config-f G and D at batch 4 (the 4x4 [1,3,3,1] filter after each transposed conv, 512 ch at
# 8..64 px, 256 at 128, 128 at 256; the RGB skip upsampling, up=2; D's filter before each stride-2
# conv and its skip downsampling), forward + backward:
#   2 threads: reference 9067 ms, compiled 2722 ms (3.3x; 3.3x-4.8x over four runs on a busy machine);
#   1 thread:  reference 8799 ms, compiled 2592 ms (3.4x; 2.9x in another run).
# The grouped-conv reference is competitive only on the smallest maps (8 px: within ~15% either
# way); the compiled kernels win everywhere else, most on the strided / zero-inserted cases it
# never multiplies. So the compiled path is the default on the CPU as well.
_CPU_DEFAULT = "compiled"


def upfirdn2d(x: torch.Tensor, f: torch.Tensor | None, *, up=1, down=1, padding=0,
              flip_filter: bool = False, gain: float = 1, impl: str | None = None) -> torch.Tensor:
    """Upsample, pad, FIR-filter and downsample `x` [N, C, H, W] with filter `f` ([fh, fw] or [fw]).

    impl: None (the faster path on this device; STYLEMIX_OPS=ref|compiled overrides it), 'ref' or
    'compiled' (falls back to 'ref' with one warning per process when it cannot be built). The
    compiled path covers float32/float64 (and float16 on CUDA); it gives no gradient w.r.t. `f`,
    so a filter that requires grad uses the reference.
    """
    ops = _build.select_ops(impl, x.device, cpu_default=_CPU_DEFAULT)
    if ops is not None and _compiled_supports(x, f):
        return _upfirdn2d_compiled(ops, x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)
    return _upfirdn2d_ref(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)


# ---- compiled path ----------------------------------------------------------------------------

_COMPILED_DTYPES = {"cpu": (torch.float32, torch.float64), "cuda": (torch.float16, torch.float32, torch.float64)}


def _compiled_supports(x: torch.Tensor, f: torch.Tensor | None) -> bool:
    if not (isinstance(x, torch.Tensor) and x.ndim == 4 and x.dtype in _COMPILED_DTYPES.get(x.device.type, ())):
        return False
    if f is not None and f.requires_grad and torch.is_grad_enabled():
        return False
    return True


def _upfirdn2d_compiled(ops, x: torch.Tensor, f: torch.Tensor | None, *, up, down, padding, flip_filter,
                        gain) -> torch.Tensor:
    f, (upx, upy), (downx, downy), (px0, px1, py0, py1) = _parse_args(x, f, up, down, padding)

    # The same filter as the reference: gain folded in (in float32), then in the compute dtype,
    # flipped into a correlation kernel unless flip_filter.
    f = f.detach() * (gain ** (f.ndim / 2))
    f = f.to(device=x.device, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    g = f if flip_filter else f.flip(list(range(f.ndim)))
    if g.ndim == 1:  # separable: a horizontal then a vertical pass
        x = _Upfirdn2dFn.apply(x, g[None, :], (ops, upx, 1, downx, 1, px0, px1, 0, 0))
        return _Upfirdn2dFn.apply(x, g[:, None], (ops, 1, upy, 1, downy, 0, 0, py0, py1))
    return _Upfirdn2dFn.apply(x, g, (ops, upx, upy, downx, downy, px0, px1, py0, py1))


class _Upfirdn2dFn(torch.autograd.Function):
    """Correlation with `g` of the upsampled, padded x, decimated. Its adjoint is the same op with
    up and down swapped, the filter flipped and the padding mirrored, so every derivative order
    goes through the compiled kernel."""

    @staticmethod
    def forward(ctx, x, g, params):
        ops, upx, upy, downx, downy, px0, px1, py0, py1 = params
        fh, fw = g.shape
        if x.shape[2] * upy + py0 + py1 < fh or x.shape[3] * upx + px0 + px1 < fw:
            raise ValueError(f"upfirdn2d: padding {[px0, px1, py0, py1]} leaves the input {list(x.shape[2:])} "
                             f"(up {[upx, upy]}) smaller than the filter {[fh, fw]}")
        y = ops.upfirdn2d(x, g, upx, upy, downx, downy, px0, px1, py0, py1)
        ctx.save_for_backward(g)
        ctx.params = params
        ctx.in_hw = x.shape[2:]
        return y

    @staticmethod
    def backward(ctx, dy):
        (g,) = ctx.saved_tensors
        ops, upx, upy, downx, downy, px0, px1, py0, py1 = ctx.params
        if not ctx.needs_input_grad[0]:
            return None, None, None
        fh, fw = g.shape
        ih, iw = ctx.in_hw
        oh, ow = dy.shape[2:]
        qx0 = fw - px0 - 1
        qx1 = iw * upx - ow * downx + px0 - upx + 1
        qy0 = fh - py0 - 1
        qy1 = ih * upy - oh * downy + py0 - upy + 1
        params_t = (ops, downx, downy, upx, upy, qx0, qx1, qy0, qy1)
        if torch.is_grad_enabled():  # create_graph=True: dx must be differentiable
            dx = _Upfirdn2dFn.apply(dy, g.flip([0, 1]), params_t)
        else:
            dx = ops.upfirdn2d(dy, g.flip([0, 1]), *params_t[1:])
        assert dx.shape[2:] == (ih, iw), (dx.shape, ih, iw)
        return dx, None, None


def filter2d(x: torch.Tensor, f: torch.Tensor | None, *, padding=0, flip_filter: bool = False,
             gain: float = 1, impl: str | None = None) -> torch.Tensor:
    """Filter with `f`, padding so that the output has the input's size (plus `padding`)."""
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _filter_size(f)
    p = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(x: torch.Tensor, f: torch.Tensor | None, *, up=2, padding=0, flip_filter: bool = False,
               gain: float = 1, impl: str | None = None) -> torch.Tensor:
    """Upsample by `up` with filter `f` (zero insertion then filtering); gain compensates the zeros."""
    upx, upy = _parse_scaling(up)
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _filter_size(f)
    p = [px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2, py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=(upx, upy), padding=p, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)


def downsample2d(x: torch.Tensor, f: torch.Tensor | None, *, down=2, padding=0, flip_filter: bool = False,
                 gain: float = 1, impl: str | None = None) -> torch.Tensor:
    """Filter with `f` then keep every `down`-th pixel."""
    downx, downy = _parse_scaling(down)
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _filter_size(f)
    p = [px0 + (fw - downx + 1) // 2, px1 + (fw - downx) // 2, py0 + (fh - downy + 1) // 2, py1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=(downx, downy), padding=p, flip_filter=flip_filter, gain=gain, impl=impl)
