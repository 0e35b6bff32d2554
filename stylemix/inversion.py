"""Projection of an image into a generator's latent space (W or W+) by optimisation.

    res = project(G, target_uint8_hwc, num_steps=300, w_plus=True)
    res.ws            # [num_ws, w_dim], feed G.synthesis(res.ws[None], noise_mode='const')
    res.image         # uint8 HxWx3: G's rendering of res.ws with the optimised noise maps

The algorithm is the official StyleGAN2-ADA projector's (Karras et al. 2020, projector.py):

- w_avg, w_std from `w_avg_samples` mapped z's (z from np.random.RandomState(123), as official);
- optimise w (one w broadcast to every layer) or, with `w_plus`, one w per layer, plus every
  synthesis layer's noise map, with Adam (betas 0.9, 0.999);
- learning rate: initial_learning_rate * ramp, ramp = min(1, t / lr_rampup_length) *
  (0.5 - 0.5 cos(pi * min(1, (1 - t) / lr_rampdown_length))), t = step / num_steps;
- latent noise added to w each step: w_std * initial_noise_factor * max(0, 1 - t / noise_ramp_length)^2;
- loss = distance(synth, target) + regularize_noise_weight * sum over noise maps and scales of
  mean(n * roll(n, 1, x))^2 + mean(n * roll(n, 1, y))^2, the map 2x2-average-pooled until <= 8 px;
- after each step every noise map is renormalised to zero mean and unit variance.

The distance is `stylemix.perceptual`'s (LPIPS-VGG16 when available, else the offline distance)
unless `distance=` gives another callable (a, b) -> [N]. G is not modified: the optimisation runs
on a frozen copy, and the optimised noise maps come back in `ProjectionResult.noise`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["ProjectionResult", "project", "prepare_target", "w_stats"]

W_STATS_SEED = 123  # official projector's z seed for w_avg / w_std


@dataclasses.dataclass
class ProjectionResult:
    ws: torch.Tensor                 # [num_ws, w_dim] final latent (without the latent noise)
    image: np.ndarray                # uint8 HxWx3 rendering of ws with the optimised noise maps
    distance: float                  # distance(image, target) of that rendering
    steps: int                       # optimiser steps taken (< num_steps after an early stop)
    seconds: float                   # wall-clock time of the whole call
    history: list                    # per-step distance (float) of the step's (noisy-w) rendering
    noise: dict = dataclasses.field(default_factory=dict)  # 'synthesis.<layer>.noise_const' -> [H, W]
    w_plus: bool = False
    stopped_early: bool = False
    distance_kind: str = ""          # perceptual.describe() or 'custom'


def prepare_target(target, resolution: int) -> torch.Tensor:
    """uint8 HxWx3 (or 1xHxWx3) numpy, or float CHW / 1xCHW in [-1, 1] (clamped) -> float [1, 3, R, R]."""
    from .attributes import to_input

    if isinstance(target, np.ndarray) and target.dtype != np.uint8:
        target = torch.from_numpy(np.ascontiguousarray(target))
    if isinstance(target, torch.Tensor):
        if not target.is_floating_point():
            raise ValueError(f"a tensor target must be float in [-1, 1], got dtype {target.dtype}")
        target = target.detach()
        if target.ndim == 3:
            target = target.unsqueeze(0)
        if target.numel() and torch.isfinite(target).all() and float(target.abs().max()) > 16:
            raise ValueError(f"float target must be in [-1, 1], got values up to {float(target.abs().max()):.3g} "
                             f"(uint8 images: pass a numpy uint8 HxWx3 array)")
        target = target.clamp(-1, 1)  # generator outputs overshoot [-1, 1] a little
    t = to_input(target, resolution)
    if t.shape[0] != 1:
        raise ValueError(f"project() takes one target image, got a batch of {t.shape[0]}")
    return t.detach().clamp(-1, 1)


@torch.no_grad()
def w_stats(G, w_avg_samples: int = 10000, *, batch: int = 2048) -> tuple[torch.Tensor, float]:
    """(w_avg [w_dim], w_std) from `w_avg_samples` mapped z's, as the official projector."""
    dev = _device(G)
    z = torch.from_numpy(np.random.RandomState(W_STATS_SEED).randn(w_avg_samples, G.z_dim)).float()
    c = None
    if getattr(G, "c_dim", 0):
        c = torch.zeros([1, G.c_dim], device=dev)  # unconditional statistics for a conditional G
    ws = []
    for i in range(0, w_avg_samples, batch):
        zb = z[i:i + batch].to(dev)
        ws.append(G.mapping(zb, None if c is None else c.expand(len(zb), -1))[:, 0, :].float())
    w = torch.cat(ws)
    w_avg = w.mean(dim=0)
    w_std = float(((w - w_avg).square().sum() / w_avg_samples).sqrt())
    return w_avg, w_std


def _device(G) -> torch.device:
    for p in G.parameters():
        return p.device
    return torch.device("cpu")


def _noise_reg(noises) -> torch.Tensor:
    reg = 0.0
    for v in noises:
        n = v[None, None]
        while True:
            reg = reg + (n * torch.roll(n, shifts=1, dims=3)).mean().square()
            reg = reg + (n * torch.roll(n, shifts=1, dims=2)).mean().square()
            if n.shape[2] <= 8:
                break
            n = F.avg_pool2d(n, kernel_size=2)
    return reg


def _check_args(G, num_steps, initial_learning_rate, initial_noise_factor, lr_rampdown_length,
                lr_rampup_length, noise_ramp_length, regularize_noise_weight, w_avg_samples, early_stop):
    for attr in ("mapping", "synthesis", "num_ws", "w_dim", "z_dim", "img_resolution"):
        if not hasattr(G, attr):
            raise ValueError(f"G must be a StyleGAN2 Generator (missing {attr!r}), got {type(G).__name__}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if isinstance(w_avg_samples, bool) or not isinstance(w_avg_samples, (int, np.integer)) or w_avg_samples < 2:
        raise ValueError(f"w_avg_samples must be an integer >= 2, got {w_avg_samples!r}")
    for name, v, lo_open in (("initial_learning_rate", initial_learning_rate, True),
                             ("initial_noise_factor", initial_noise_factor, False),
                             ("lr_rampdown_length", lr_rampdown_length, True),
                             ("lr_rampup_length", lr_rampup_length, False),
                             ("noise_ramp_length", noise_ramp_length, True),
                             ("regularize_noise_weight", regularize_noise_weight, False)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or v < 0 or (lo_open and v == 0):
            raise ValueError(f"{name} must be a finite number {'> 0' if lo_open else '>= 0'}, got {v!r}")
    if early_stop is not None:
        if not isinstance(early_stop, dict) or set(early_stop) - {"patience", "min_delta"} \
                or "patience" not in early_stop:
            raise ValueError(f"early_stop must be None or {{'patience': int, 'min_delta': float}}, got {early_stop!r}")
        p, d = early_stop["patience"], early_stop.get("min_delta", 0.0)
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 1:
            raise ValueError(f"early_stop['patience'] must be a positive integer, got {p!r}")
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) or d < 0:
            raise ValueError(f"early_stop['min_delta'] must be a finite number >= 0, got {d!r}")


def _initial_w(init, G, w_avg: torch.Tensor, w_plus: bool) -> torch.Tensor:
    """-> [1, 1 or num_ws, w_dim] float32."""
    L, C = G.num_ws, G.w_dim
    if isinstance(init, str):
        if init != "w_avg":
            raise ValueError(f"init must be 'w_avg' or a ws tensor, got {init!r}")
        w = w_avg.reshape(1, 1, C)
    elif isinstance(init, (torch.Tensor, np.ndarray)):
        w = torch.as_tensor(init).detach().to(w_avg.device, torch.float32)
        if w.shape == (C,) or w.shape == (1, C):
            w = w.reshape(1, 1, C)
        elif w.shape == (L, C) or w.shape == (1, L, C):
            w = w.reshape(1, L, C)
        else:
            raise ValueError(f"init ws must have shape [{L}, {C}], [1, {L}, {C}], [{C}] or [1, {C}], "
                             f"got {tuple(w.shape)}")
        if not torch.isfinite(w).all():
            raise ValueError("init ws contains NaN or infinite values")
    else:
        raise ValueError(f"init must be 'w_avg' or a ws tensor, got {type(init).__name__}")
    if w_plus:
        return w.expand(1, L, C).clone()
    return w.mean(dim=1, keepdim=True).clone()  # W: a per-layer init is averaged over layers


def project(
    G,                                   # stylemix.networks.Generator (not modified)
    target,                              # uint8 HxWx3 numpy, or float [1,]3xHxW tensor in [-1, 1]
    *,
    num_steps: int = 1000,               # optimiser steps
    w_plus: bool = False,                # False: one w for all layers (W); True: one per layer (W+)
    init="w_avg",                        # 'w_avg', or ws [num_ws, w_dim] / w [w_dim] to start from
    distance: Callable | None = None,    # (a, b) -> [N]; None = stylemix.perceptual.distance
    progress: Callable | None = None,    # progress(step, num_steps, distance) after every step
    initial_learning_rate: float = 0.1,
    initial_noise_factor: float = 0.05,  # latent noise, in units of w_std, at t = 0
    lr_rampdown_length: float = 0.25,    # fraction of the steps with cosine ramp-down
    lr_rampup_length: float = 0.05,      # fraction of the steps with linear ramp-up
    noise_ramp_length: float = 0.75,     # fraction of the steps over which the latent noise fades
    regularize_noise_weight: float = 1e5,
    w_avg_samples: int = 10000,          # mapped z's for w_avg / w_std
    early_stop: dict | None = None,      # {'patience': steps, 'min_delta': improvement} or None
    seed: int = 0,                       # noise-map init and latent noise
) -> ProjectionResult:
    """Optimise a latent (W or W+) and G's noise maps so that G renders `target`. See module doc."""
    from . import perceptual
    from .mixing import to_uint8

    t0 = time.perf_counter()
    _check_args(G, num_steps, initial_learning_rate, initial_noise_factor, lr_rampdown_length,
                lr_rampup_length, noise_ramp_length, regularize_noise_weight, w_avg_samples, early_stop)
    if distance is not None and not callable(distance):
        raise ValueError(f"distance must be a callable (a, b) -> [N] or None, got {type(distance).__name__}")
    if progress is not None and not callable(progress):
        raise ValueError(f"progress must be a callable or None, got {type(progress).__name__}")
    num_steps = int(num_steps)
    target_images = prepare_target(target, G.img_resolution).to(_device(G))

    # A frozen copy: G's parameters, buffers and mode stay as they were.
    G = copy.deepcopy(G).eval().requires_grad_(False)
    dev = _device(G)
    w_avg, w_std = w_stats(G, int(w_avg_samples))
    w_opt = _initial_w(init, G, w_avg, bool(w_plus)).requires_grad_(True)

    # Distance: embed the target once when we own the metric.
    if distance is None:
        metric = perceptual.get_metric()
        with torch.no_grad():
            target_emb = [e.detach() for e in metric.embed(target_images)]
        dist_fn = lambda img: metric.compare(metric.embed(img), target_emb)  # noqa: E731
        kind = metric.describe()
    else:
        dist_fn = lambda img: distance(img, target_images)  # noqa: E731
        kind = "custom"

    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    noise_bufs = {name: buf for name, buf in G.synthesis.named_buffers() if "noise_const" in name}
    for buf in noise_bufs.values():
        buf.copy_(torch.randn(buf.shape, generator=gen).to(buf))
        buf.requires_grad_(True)
    optimizer = torch.optim.Adam([w_opt] + list(noise_bufs.values()), betas=(0.9, 0.999),
                                 lr=initial_learning_rate)

    history: list[float] = []
    best, best_step = math.inf, 0
    stopped_early = False
    steps = 0
    for step in range(num_steps):
        t = step / num_steps
        w_noise_scale = w_std * initial_noise_factor * max(0.0, 1.0 - t / noise_ramp_length) ** 2
        lr_ramp = min(1.0, (1.0 - t) / lr_rampdown_length)
        lr_ramp = 0.5 - 0.5 * math.cos(lr_ramp * math.pi)
        lr_ramp = lr_ramp * (min(1.0, t / lr_rampup_length) if lr_rampup_length > 0 else 1.0)
        for group in optimizer.param_groups:
            group["lr"] = initial_learning_rate * lr_ramp

        w_noise = torch.randn(w_opt.shape, generator=gen).to(dev) * w_noise_scale
        ws = (w_opt + w_noise).repeat([1, G.num_ws // w_opt.shape[1], 1])  # as official (contiguous)
        synth = G.synthesis(ws, noise_mode="const")
        dist = dist_fn(synth).sum()
        loss = dist + _noise_reg(noise_bufs.values()) * regularize_noise_weight

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for buf in noise_bufs.values():
                buf -= buf.mean()
                buf *= buf.square().mean().rsqrt()

        d = float(dist.detach())
        if not math.isfinite(d):
            raise FloatingPointError(f"projection diverged at step {step}: distance {d}")
        history.append(d)
        steps = step + 1
        if progress is not None:
            progress(step, num_steps, d)
        if early_stop is not None:
            if d < best - float(early_stop.get("min_delta", 0.0)):
                best, best_step = d, step
            elif step - best_step >= int(early_stop["patience"]):
                stopped_early = steps < num_steps
                break

    with torch.no_grad():
        ws_final = w_opt.detach().expand(1, G.num_ws, G.w_dim).clone()
        img = G.synthesis(ws_final, noise_mode="const")
        final = float(dist_fn(img).sum())
    noise = {"synthesis." + k: v.detach().clone() for k, v in noise_bufs.items()}
    return ProjectionResult(ws=ws_final[0], image=to_uint8(img)[0], distance=final, steps=steps,
                            seconds=time.perf_counter() - t0, history=history, noise=noise,
                            w_plus=bool(w_plus), stopped_early=stopped_early, distance_kind=kind)
