"""2D convolution with optional FIR up/down-sampling, built on `upfirdn2d`.

`conv2d_resample(x, w, f, *, up=1, down=1, padding=0, groups=1, flip_weight=True, flip_filter=False)`
computes, for NCHW `x` and OIHW `w`:

1. upsample `x` by `up` (zero insertion), zero-pad once by `padding` plus the padding the filters
   need, FIR-filter with `f` (gain `up**2`; skipped when `up == 1`),
2. convolve with `w` without further padding (correlation when `flip_weight`, true convolution
   otherwise),
3. FIR-filter with `f` and keep every `down`-th pixel (skipped when `down == 1`).

`padding` is thus the padding of the upsampled input: with `padding = kernel_size // 2` the output is
`H * up // down` pixels high.

The result equals that definition; the order of operations is chosen per case so that the big
convolution runs on as few pixels as possible:

- `up > 1`: one strided transposed convolution, then the filter on the (already upsampled) output;
- `down > 1`: the filter first, then a strided convolution (only the kept pixels are computed);
- 1x1 kernels: the convolution runs at the lower resolution, the filter at whichever side is cheaper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .upfirdn2d import upfirdn2d

__all__ = ["conv2d_resample", "cpu_conv_dtype", "set_cpu_conv_dtype", "get_cpu_conv_dtype", "bf16_supported"]

# Optional lower-precision convolutions on CPU (see set_cpu_conv_dtype). None = the input's dtype.
_CPU_CONV_DTYPE: torch.dtype | None = None


def bf16_supported() -> bool:
    """True when this CPU has native bfloat16 dot products (oneDNN's check: AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def get_cpu_conv_dtype() -> torch.dtype | None:
    return _CPU_CONV_DTYPE


def set_cpu_conv_dtype(dtype: torch.dtype | None) -> torch.dtype | None:
    """Run float32 convolutions on CPU in `dtype` (torch.bfloat16 or None = off); returns the old value.

    Only the convolution itself changes precision: its float32 inputs are rounded to bfloat16, oneDNN
    accumulates in float32, and the result is returned as float32, so every other op (bias_act,
    upfirdn2d, demodulation, losses, optimiser) stays float32 - the CPU counterpart of mixed precision.
    On a CPU with AVX512-BF16 this roughly halves the convolution time; elsewhere it is slower, so
    callers should check `bf16_supported()` first. Process-wide (a plain module setting).
    """
    global _CPU_CONV_DTYPE
    if dtype not in (None, torch.bfloat16, torch.float32):
        raise ValueError(f"CPU convolution dtype must be torch.bfloat16, torch.float32 or None, got {dtype!r}")
    old, _CPU_CONV_DTYPE = _CPU_CONV_DTYPE, (None if dtype == torch.float32 else dtype)
    return old


class cpu_conv_dtype:
    """Context manager form of set_cpu_conv_dtype: `with cpu_conv_dtype(torch.bfloat16): ...`."""

    def __init__(self, dtype: torch.dtype | None):
        self.dtype = dtype

    def __enter__(self):
        self._old = set_cpu_conv_dtype(self.dtype)
        return self

    def __exit__(self, *exc):
        set_cpu_conv_dtype(self._old)
        return False


def _padding4(padding) -> list[int]:
    """int, [x, y] or [x0, x1, y0, y1] -> [x0, x1, y0, y1]."""
    if isinstance(padding, int):
        return [padding] * 4
    padding = [int(p) for p in padding]
    if len(padding) == 2:
        return [padding[0], padding[0], padding[1], padding[1]]
    if len(padding) != 4:
        raise ValueError(f"padding must be an int, [x, y] or [x0, x1, y0, y1], got {padding!r}")
    return padding


def _filter_wh(f: torch.Tensor | None) -> tuple[int, int]:
    if f is None:
        return 1, 1
    return int(f.shape[-1]), int(f.shape[0])


def _conv(x: torch.Tensor, w: torch.Tensor, *, stride: int = 1, padding=0, groups: int = 1,
          transpose: bool = False, flip_weight: bool = True) -> torch.Tensor:
    """F.conv2d / F.conv_transpose2d; `flip_weight=False` turns the correlation into a convolution."""
    if not flip_weight:
        w = w.flip([2, 3])
    low = _CPU_CONV_DTYPE
    if low is not None and x.dtype == torch.float32 and x.device.type == "cpu":
        return _conv(x.to(low), w.to(low), stride=stride, padding=padding, groups=groups,
                     transpose=transpose).float()
    if transpose:
        return F.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None = None, *, up: int = 1,
                    down: int = 1, padding=0, groups: int = 1, flip_weight: bool = True,
                    flip_filter: bool = False) -> torch.Tensor:
    """Convolve `x` with `w`, upsampling before and/or downsampling after with the FIR filter `f`.

    x:           input, [N, in_channels, H, W]
    w:           weight, [out_channels, in_channels // groups, kh, kw]
    f:           FIR filter from `setup_filter` ([fh, fw] or separable [fw]); None means no filtering
    up, down:    integer up/down-sampling factors (>= 1)
    padding:     padding of the *upsampled* input: int, [x, y] or [x0, x1, y0, y1]
    groups:      number of convolution groups
    flip_weight: False = true convolution with `w`, True = correlation (what F.conv2d does)
    flip_filter: False = true convolution with `f`, True = correlation
    """
    assert isinstance(x, torch.Tensor) and x.ndim == 4, getattr(x, "shape", x)
    assert isinstance(w, torch.Tensor) and w.ndim == 4 and w.dtype == x.dtype, (w.shape, w.dtype, x.dtype)
    assert f is None or (isinstance(f, torch.Tensor) and f.ndim in (1, 2) and f.dtype == torch.float32)
    if not (isinstance(up, int) and up >= 1 and isinstance(down, int) and down >= 1):
        raise ValueError(f"up and down must be integers >= 1, got up={up!r}, down={down!r}")
    out_channels, in_per_group, kh, kw = w.shape
    assert x.shape[1] == in_per_group * groups, (x.shape, w.shape, groups)
    fw, fh = _filter_wh(f)
    px0, px1, py0, py1 = _padding4(padding)

    # Fold the padding that up/down-sampling with `f` needs into the user padding.
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2

    # 1x1 kernel, downsampling: filter+decimate, then the (cheap) pointwise conv at low resolution.
    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv(x, w, groups=groups, flip_weight=flip_weight)

    # 1x1 kernel, upsampling: pointwise conv at low resolution, then upsample.
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = _conv(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up ** 2, flip_filter=flip_filter)

    # Downsampling only: filter at full resolution, strided conv computes only the kept pixels.
    if down > 1 and up == 1:
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv(x, w, stride=down, groups=groups, flip_weight=flip_weight)

    # Upsampling (optionally followed by downsampling): the zero insertion and the conv become one
    # strided transposed conv, which skips the inserted zeros; the filter then runs on its output.
    if up > 1:
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
            w = w.reshape(groups * in_per_group, out_channels // groups, kh, kw)
        # A transposed conv is a true convolution of the zero-inserted input; the padding it
        # cannot express (negative = crop) is left to upfirdn2d.
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        x = _conv(x, w, stride=up, padding=[pyt, pxt], groups=groups, transpose=True,
                  flip_weight=not flip_weight)
        x = upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up ** 2,
                      flip_filter=flip_filter)
        if down > 1:
            x = upfirdn2d(x, f, down=down, flip_filter=flip_filter)  # its padding is folded in above
        return x

    # No resampling: a plain conv when the padding is symmetric and non-negative.
    if up == 1 and down == 1 and px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)

    # General case (asymmetric / negative padding).
    x = upfirdn2d(x, f if up > 1 else None, up=up, padding=[px0, px1, py0, py1], gain=up ** 2,
                  flip_filter=flip_filter)
    x = _conv(x, w, groups=groups, flip_weight=flip_weight)
    if down > 1:
        x = upfirdn2d(x, f, down=down, flip_filter=flip_filter)
    return x

