"""Fused bias + activation + gain + clamp.

`bias_act(x, b, *, dim=1, act='linear', alpha=None, gain=None, clamp=None, impl=None)` computes
`clamp(act(x + b) * gain)`. `_bias_act_ref` is the plain PyTorch definition; compiled paths
(C++ CPU, CUDA) produce the same values and gradients (first and second order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from . import _build


@dataclass(frozen=True)
class ActSpec:
    func: Callable[[torch.Tensor, float], torch.Tensor]  # reference activation f(x, alpha)
    def_alpha: float  # default alpha (only lrelu uses it)
    def_gain: float  # default gain applied after the activation
    cuda_idx: int  # index shared with the compiled kernels
    ref: str  # 'x': derivative from the input, 'y': from the output
    has_2nd_grad: bool  # whether the second derivative is non-zero somewhere


activation_funcs: dict[str, ActSpec] = {
    "linear": ActSpec(lambda x, a: x, 0.0, 1.0, 1, "", False),
    "relu": ActSpec(lambda x, a: F.relu(x), 0.0, math.sqrt(2), 2, "y", False),
    "lrelu": ActSpec(lambda x, a: F.leaky_relu(x, a), 0.2, math.sqrt(2), 3, "y", False),
    "tanh": ActSpec(lambda x, a: torch.tanh(x), 0.0, 1.0, 4, "y", True),
    "sigmoid": ActSpec(lambda x, a: torch.sigmoid(x), 0.0, 1.0, 5, "y", True),
    "elu": ActSpec(lambda x, a: F.elu(x), 0.0, 1.0, 6, "y", True),
    "selu": ActSpec(lambda x, a: F.selu(x), 0.0, 1.0, 7, "y", True),
    "softplus": ActSpec(lambda x, a: F.softplus(x), 0.0, 1.0, 8, "y", True),
    "swish": ActSpec(lambda x, a: torch.sigmoid(x) * x, 0.0, math.sqrt(2), 9, "x", True),
}


def _resolve(act: str, alpha: float | None, gain: float | None, clamp: float | None):
    if act not in activation_funcs:
        raise ValueError(f"unknown activation {act!r}; expected one of {sorted(activation_funcs)}")
    spec = activation_funcs[act]
    alpha = float(alpha if alpha is not None else spec.def_alpha)
    gain = float(gain if gain is not None else spec.def_gain)
    clamp = float(clamp if clamp is not None else -1)
    return spec, alpha, gain, clamp


def _bias_act_ref(x: torch.Tensor, b: torch.Tensor | None = None, *, dim: int = 1, act: str = "linear",
                  alpha: float | None = None, gain: float | None = None,
                  clamp: float | None = None) -> torch.Tensor:
    """Reference implementation built from ordinary PyTorch ops."""
    assert isinstance(x, torch.Tensor)
    spec, alpha, gain, clamp = _resolve(act, alpha, gain, clamp)
    if b is not None:
        assert isinstance(b, torch.Tensor) and b.ndim == 1
        assert 0 <= dim < x.ndim
        assert b.shape[0] == x.shape[dim], (b.shape, x.shape, dim)
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x = spec.func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


# Default path on the CPU (impl=None), measured with benchmarks/bench_ops.py (interleaved repeats,
# median) on this project's 2-core CPU, torch 2.13, fp32, at the bias_act calls of a 256x256
# config-f generator at batch 4 (lrelu, gain sqrt(2), clamp 256 on 512 ch x 4..64 px, 256 x 128 px,
# 128 x 256 px; linear toRGB; the mapping layers), forward + backward:
#   2 threads: reference 5113 ms, compiled 1489 ms (3.4x; 3.2x-3.7x over four runs on a busy machine);
#   1 thread:  reference 2342 ms, compiled  677 ms (3.5x; 3.0x in another run).
# The compiled kernel makes one pass over memory where the reference makes four (add, act, mul,
# clamp) and allocates one output instead of four; only the [4, 512] mapping layers are a tie.
# So the compiled path is the default on the CPU.
_CPU_DEFAULT = "compiled"


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, *, dim: int = 1, act: str = "linear",
             alpha: float | None = None, gain: float | None = None, clamp: float | None = None,
             impl: str | None = None) -> torch.Tensor:
    """Add bias `b` along dimension `dim`, apply `act`, multiply by `gain`, clamp to [-clamp, clamp].

    impl: None picks the compiled path when it is built and faster on this device (STYLEMIX_OPS=ref|
    compiled overrides the default), 'ref' forces the PyTorch reference, 'compiled' forces the
    compiled path (falls back to 'ref' with one warning per process if it cannot be built). The
    compiled path covers float32/float64 (and float16 on CUDA) with `b` of x's dtype; other inputs
    use the reference. It gives first and second derivatives; third-order terms through the
    second derivative of the activation are not tracked (as in the official op).
    """
    assert isinstance(x, torch.Tensor)
    spec, alpha_f, gain_f, clamp_f = _resolve(act, alpha, gain, clamp)
    ops = _build.select_ops(impl, x.device, cpu_default=_CPU_DEFAULT)
    if ops is not None and _compiled_supports(x, b, dim):
        cfg = _Cfg(ops, dim, spec.cuda_idx, alpha_f, gain_f, clamp_f,
                   need_x=(act != "linear" or clamp_f >= 0), has_2nd=spec.has_2nd_grad)
        return _BiasActFn.apply(x, b, cfg)
    return _bias_act_ref(x, b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)


# ---- compiled path ----------------------------------------------------------------------------

_COMPILED_DTYPES = {"cpu": (torch.float32, torch.float64), "cuda": (torch.float16, torch.float32, torch.float64)}


def _compiled_supports(x: torch.Tensor, b: torch.Tensor | None, dim: int) -> bool:
    if x.dtype not in _COMPILED_DTYPES.get(x.device.type, ()):
        return False
    if b is not None:
        assert isinstance(b, torch.Tensor) and b.ndim == 1
        assert 0 <= dim < x.ndim
        assert b.shape[0] == x.shape[dim], (b.shape, x.shape, dim)
        if b.dtype != x.dtype or b.device != x.device:
            return False  # the reference promotes / complains exactly like x + b would
    return True


@dataclass(frozen=True)
class _Cfg:
    ops: object  # torch.ops namespace of the compiled library
    dim: int
    act: int  # ActSpec.cuda_idx
    alpha: float
    gain: float
    clamp: float  # < 0: no clamp
    need_x: bool  # whether the derivative reads x (false only for linear without clamp)
    has_2nd: bool  # whether f'' is non-zero somewhere

    def sum_except_dim(self, t: torch.Tensor) -> torch.Tensor:
        return t.sum([i for i in range(t.ndim) if i != self.dim])

    def call(self, x, b, g1, g2, mode: int, like: torch.Tensor) -> torch.Tensor:
        empty = like.new_empty([0])
        return self.ops.bias_act(empty if x is None else x, b, empty if g1 is None else g1,
                                 empty if g2 is None else g2, mode, self.dim, self.act, self.alpha, self.gain,
                                 self.clamp)


class _BiasActFn(torch.autograd.Function):
    """y = clamp(act(x + b) * gain); backward through _BiasActGradFn (so it is differentiable)."""

    @staticmethod
    def forward(ctx, x, b, cfg: _Cfg):
        y = cfg.call(x, b, None, None, 0, x)
        ctx.cfg = cfg
        ctx.save_for_backward(x if cfg.need_x else None, b)
        return y

    @staticmethod
    def backward(ctx, dy):
        cfg: _Cfg = ctx.cfg
        x, b = ctx.saved_tensors
        dx = db = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            if torch.is_grad_enabled():  # create_graph=True: dx must be differentiable
                # linear without clamp: dx = dy * gain does not depend on x or b (as in the reference)
                dx = _BiasActGradFn.apply(dy, x, b if cfg.need_x else None, cfg)
            else:  # plain backward: skip the autograd node
                dx = cfg.call(x, b, dy, None, 1, dy)
        if ctx.needs_input_grad[1]:
            db = cfg.sum_except_dim(dx)
        return dx, db, None


class _BiasActGradFn(torch.autograd.Function):
    """dx = dy * gain * act'(x + b) (zero where clamped), itself differentiable w.r.t. dy, x and b."""

    @staticmethod
    def forward(ctx, dy, x, b, cfg: _Cfg):
        dx = cfg.call(x, b, dy, None, 1, dy)
        ctx.cfg = cfg
        ctx.save_for_backward(dy if cfg.has_2nd else None, x, b)
        return dx

    @staticmethod
    def backward(ctx, d_dx):
        cfg: _Cfg = ctx.cfg
        dy, x, b = ctx.saved_tensors
        d_dy = d_x = d_b = None
        if ctx.needs_input_grad[0]:  # dx is linear in dy
            if torch.is_grad_enabled():
                d_dy = _BiasActGradFn.apply(d_dx, x, b, cfg)
            else:
                d_dy = cfg.call(x, b, d_dx, None, 1, d_dx)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            if cfg.has_2nd:
                d_x = cfg.call(x, b, d_dx, dy, 2, d_dx)  # d_dx * dy * gain * act''(x + b)
                d_b = cfg.sum_except_dim(d_x) if ctx.needs_input_grad[2] else None
            elif cfg.act != activation_funcs["linear"].cuda_idx:
                # relu / lrelu: act'' = 0. The reference's graph reaches x and b here (through its
                # activation's backward) and yields zeros, so give zeros too, not None.
                d_x = x.new_zeros(()).expand_as(x)
                d_b = b.new_zeros(b.shape) if ctx.needs_input_grad[2] and b is not None else None
            # linear (with clamp): the reference's clamp mask is not differentiable: None, like it
        return d_dy, d_x, d_b, None
