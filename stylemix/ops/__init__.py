"""Low-level ops with a PyTorch reference path and compiled paths (C++ CPU, CUDA)."""

from .bias_act import bias_act, activation_funcs
from .upfirdn2d import setup_filter, upfirdn2d, filter2d, upsample2d, downsample2d

__all__ = ["bias_act", "activation_funcs", "setup_filter", "upfirdn2d", "filter2d", "upsample2d", "downsample2d"]
