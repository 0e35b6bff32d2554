"""Inversion: an image -> a generator's W+ latent, by encoder, by optimisation, or both.

Two entry points:

    inv = invert(G, image, mode='balanced')   # encoder init + short W+ optimisation (what the app uses)
    inv.ws                                     # torch [num_ws, w_dim]; G.synthesis(inv.ws[None], noise_mode='const')
    inv.image, inv.psnr, inv.distance          # that rendering (uint8 HxWx3), its PSNR (dB) and distance to the target

    res = project(G, target_uint8_hwc, num_steps=1000, w_plus=True)   # the official projector
    res.ws            # [num_ws, w_dim], feed G.synthesis(res.ws[None], noise_mode='const')
    res.image         # uint8 HxWx3: G's rendering of res.ws with the optimised noise maps

## invert(G, image, *, mode, encoder, progress, seed) -> Inversion

The encoder (`stylemix.networks.encoder.Encoder`, trained per generator on the generator's own
samples by `python -m training.encoder --model NAME`) gives a W+ latent in one forward pass; the
modes then optimise it, each with the settings in `MODES`:

    mode        steps  lr     lr ramp-down  latent noise   what it is for
    'fast'      0      -      -             -              encoder only (needs an encoder)
    'balanced'  40     0.03   last 30%      0              encoder init + short W+ optimisation
    'best'      300    0.1    last 50%      0              encoder init + long W+ optimisation

Optimisation: Adam (betas 0.9, 0.999) on the W+ latent only, learning rate `lr` with a cosine
ramp-down over the last `rampdown` fraction of the steps and no ramp-up (the encoder's init is
already close: a ramp-up only wastes steps), loss = the project's default distance
(`stylemix.perceptual`: LPIPS-VGG16 when its weights exist, else the offline distance) between
`G.synthesis(ws, noise_mode='const')` and the target; the best latent seen is kept. G's noise maps
are NOT optimised: `invert` renders with G's own stored noise (noise_mode='const'), exactly what
`mixing`/`api.mix` render later, so the reported image, distance and PSNR are what the user will
see after mixing. (`project` optimises noise maps too; its image needs those maps to reproduce.)
How the settings were chosen, and what they give next to the 1000-step projector: `MODES_NOTE`
(measured on a random-weight 64 px generator: balanced 26.1 dB in 2.0 s of CPU, best 33.5 dB in
12 s, project 34.6 dB in 50 s; to re-check on a trained G: `python -m training.encoder --model NAME
--compare-modes 4`).

Without an encoder (`encoder=False`, or `None` when `find_encoder(G)` finds none), 'balanced' and
'best' start from w_avg on every layer (`Inversion.encoder` is None) and 'fast' raises ValueError
naming the command that trains one. `encoder` may be an `Encoder`, a registry name or a file path.

Encoder files (`save_encoder` / `load_encoder`): safetensors; the weights (including the buffers
`w_avg` and `w_scale`: the generator's mean w and per-dimension std the encoder predicts offsets
from) plus the metadata key 'stylemix', a JSON header: format 'stylemix.encoder', format_version,
network 'Encoder', kwargs (rebuilds it), model_name (the generator it was trained for), generator
(name, file, sha256, img_resolution, num_ws, w_dim), img_resolution, num_ws, w_dim, training
(options), heldout (measure on fresh samples), weights_sha256. Written atomically. An encoder
whose img_resolution / num_ws / w_dim differ from G's is refused with ValueError; one trained
for other weights of the same architecture (w_avg far from G's) gives a warning.

`find_encoder(G)`: the registry entry f"{G.model_name}-encoder" (kind encoder), else
`pretrained.cache_dir()/encoders/{G.model_name}-encoder.safetensors`, else None.

w_avg / w_std (10000 mapped z's) are computed once per generator instance and cached (keyed by the
mapping network's parameter versions, so a G whose weights change gets fresh statistics); `project`
and `invert` share the cache.

## project(): the official projector

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
import json
import math
import os
import threading
import time
import warnings
import weakref
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["ProjectionResult", "project", "prepare_target", "w_stats",
           "Inversion", "invert", "MODES", "MODES_NOTE", "ENCODER_FORMAT", "ENCODER_SUFFIX",
           "save_encoder", "load_encoder", "find_encoder", "read_encoder_header", "check_encoder",
           "default_encoder_path", "psnr"]

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


# Per-generator cache of w statistics: G -> {key: (w_avg, w_std, w_std_per_dim)}. Weak keys: the
# entry goes with its generator. The key holds the mapping parameters' storage and version
# counters, so in-place updates (training, load_state_dict) invalidate it.
_W_STATS_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_W_STATS_LOCK = threading.Lock()


def _w_stats_key(G, w_avg_samples: int, dev) -> tuple:
    params = tuple((p.data_ptr(), p._version) for p in G.mapping.parameters())
    return (int(w_avg_samples), str(dev), params)


@torch.no_grad()
def _w_stats_full(G, w_avg_samples: int = 10000, *, batch: int = 2048) -> tuple[torch.Tensor, float, torch.Tensor]:
    """(w_avg [w_dim], w_std, per-dimension std [w_dim]), cached per G instance (see module doc)."""
    dev = _device(G)
    key = _w_stats_key(G, w_avg_samples, dev)
    try:
        cached = _W_STATS_CACHE.get(G, {}).get(key)
    except TypeError:  # not weak-referenceable: no cache
        cached = None
    if cached is not None:
        return cached[0].clone(), cached[1], cached[2].clone()
    z = torch.from_numpy(np.random.RandomState(W_STATS_SEED).randn(w_avg_samples, G.z_dim)).float()
    c = None
    if getattr(G, "c_dim", 0):
        c = torch.zeros([1, G.c_dim], device=dev)  # unconditional statistics for a conditional G
    ws = []
    for i in range(0, w_avg_samples, batch):
        zb = z[i:i + batch].to(dev)
        # skip_w_avg_update: a G in training mode must not move its tracked w_avg.
        ws.append(G.mapping(zb, None if c is None else c.expand(len(zb), -1),
                            skip_w_avg_update=True)[:, 0, :].float())
    w = torch.cat(ws)
    w_avg = w.mean(dim=0)
    w_std = float(((w - w_avg).square().sum() / w_avg_samples).sqrt())
    w_std_dim = (w - w_avg).square().mean(dim=0).sqrt()
    with _W_STATS_LOCK:
        try:
            # Keep entries for other sample counts of the same weights; drop stale weights.
            entries = {k: v for k, v in _W_STATS_CACHE.get(G, {}).items() if k[1:] == key[1:]}
            entries[key] = (w_avg.clone(), w_std, w_std_dim.clone())
            _W_STATS_CACHE[G] = entries
        except TypeError:
            pass
    return w_avg, w_std, w_std_dim


def w_stats(G, w_avg_samples: int = 10000, *, batch: int = 2048) -> tuple[torch.Tensor, float]:
    """(w_avg [w_dim], w_std) from `w_avg_samples` mapped z's, as the official projector (cached per G)."""
    w_avg, w_std, _ = _w_stats_full(G, int(w_avg_samples), batch=batch)
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
    w_avg, w_std = w_stats(G, int(w_avg_samples))  # cached per G (computed before the copy)
    G = copy.deepcopy(G).eval().requires_grad_(False)
    dev = _device(G)
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


# ------------------------------------------------------------------------------------------------
# Encoder files

ENCODER_FORMAT = "stylemix.encoder"
ENCODER_FORMAT_VERSION = 1
ENCODER_SUFFIX = "-encoder"          # registry name of a model's encoder: '<model>-encoder'
_ENCODER_HEADER_KEY = "stylemix"     # safetensors metadata key holding the JSON header
W_AVG_WARN = 0.5                     # warn when |w_avg(G) - encoder.w_avg| / w_std is larger


def default_encoder_path(model_name: str) -> Path:
    """cache_dir()/encoders/{model_name}-encoder.safetensors (where training.encoder writes by default)."""
    from . import pretrained

    return pretrained.cache_dir() / "encoders" / f"{model_name}{ENCODER_SUFFIX}.safetensors"


def _encoder_class():
    from .networks.encoder import Encoder

    return Encoder


def save_encoder(encoder, path, *, model_name: str, generator: dict | None = None, training: dict | None = None,
                 heldout: dict | None = None, half: bool = False) -> Path:
    """Write `encoder` (weights + JSON header, see module doc) to `path` atomically; returns the path.

    model_name: the generator it was trained for (G.model_name); generator: facts about that
    generator (file, sha256, ...); training: the options it was trained with; heldout: its measure
    on fresh samples. All JSON-serialisable. The folder is created when missing. half: store the
    weights (not the w_avg / w_scale buffers) as float16, half the file; they load back as float32."""
    from safetensors.torch import save as st_save

    from . import __version__
    from .checkpoints import _jsonable, _weights_digest
    from .fileio import atomic_write_bytes

    Encoder = _encoder_class()
    if not isinstance(encoder, Encoder):
        raise ValueError(f"save_encoder() saves a stylemix Encoder, got {type(encoder).__name__}")
    if not isinstance(model_name, str) or not model_name:
        raise ValueError(f"model_name must be a non-empty string, got {model_name!r}")
    sd = {k: v.detach().cpu().contiguous().clone() for k, v in encoder.state_dict().items()}
    if not all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point()):
        raise ValueError("the encoder's weights contain NaN or infinite values; not saving them")
    if half:
        sd = {k: (v.half() if v.is_floating_point() and k not in ("w_avg", "w_scale") else v) for k, v in sd.items()}
        if not all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point()):
            raise ValueError("the encoder's weights overflow float16; save them with half=False")
    header = {
        "format": ENCODER_FORMAT,
        "format_version": ENCODER_FORMAT_VERSION,
        "network": "Encoder",
        "module": "stylemix.networks.encoder",
        "kwargs": _jsonable(dict(encoder.init_kwargs), "encoder kwargs"),
        "model_name": model_name,
        "img_resolution": int(encoder.img_resolution),
        "num_ws": int(encoder.num_ws),
        "w_dim": int(encoder.w_dim),
        "generator": _jsonable(dict(generator or {}), "generator"),
        "training": _jsonable(dict(training or {}), "training"),
        "heldout": _jsonable(dict(heldout or {}), "heldout"),
        "weights_sha256": _weights_digest(sd),
        "stored_dtype": "float16" if half else "float32",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "stylemix_version": __version__,
        "torch_version": torch.__version__,
    }
    data = st_save(sd, metadata={_ENCODER_HEADER_KEY: json.dumps(header, sort_keys=True, allow_nan=False)})
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return path


def read_encoder_header(path) -> dict:
    """The JSON header of an encoder file (no weights read); ValueError when it is not one."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{str(path)!r} is not a readable safetensors file (truncated or corrupt?): "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    try:
        header = json.loads(meta.get(_ENCODER_HEADER_KEY, "null"))
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != ENCODER_FORMAT:
        found = header.get("format") if isinstance(header, dict) else None
        raise ValueError(f"{str(path)!r} is not a StyleMix encoder file (format {found!r}, expected "
                         f"{ENCODER_FORMAT!r})")
    version = header.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= ENCODER_FORMAT_VERSION:
        raise ValueError(f"{str(path)!r}: encoder format version {version!r} is not supported "
                         f"(this StyleMix reads up to {ENCODER_FORMAT_VERSION})")
    if header.get("network") != "Encoder" or not isinstance(header.get("kwargs"), dict):
        raise ValueError(f"{str(path)!r}: encoder header names no known network ({header.get('network')!r})")
    return header


_ENCODER_CACHE: dict = {}   # (path, size, mtime_ns, device) -> Encoder (eval, frozen)
_ENCODER_CACHE_LOCK = threading.Lock()


def load_encoder(name_or_path, *, device="cpu"):
    """An `Encoder` (eval mode, frozen) from a registry name or a file path; ValueError if unusable.

    A registered generator name also works when '<name>-encoder' is registered. The loaded
    network has `.name` (the registry name, else the path), `.path`, `.model_name` (the
    generator it was trained for) and `.header`. Loads are cached per file (path, size, mtime)."""
    from safetensors.torch import load_file

    from . import pretrained
    from .checkpoints import _weights_digest

    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ValueError(f"expected an encoder name or file path, got {type(name_or_path).__name__}")
    p = Path(name_or_path).expanduser()
    label = str(name_or_path)
    if not p.exists() and isinstance(name_or_path, str):
        name = name_or_path
        if not name.endswith(ENCODER_SUFFIX) and pretrained.is_registered(name + ENCODER_SUFFIX):
            name += ENCODER_SUFFIX
        if pretrained.is_registered(name):
            kind = pretrained.get_entry(name).kind
            if kind != "encoder":
                raise ValueError(f"model {name!r} is a {kind!r}, not an encoder (train one with "
                                 f"`python -m training.encoder --model {name}`)")
        label = name
        try:
            p = pretrained.resolve(name)
        except pretrained.FetchError as exc:
            raise ValueError(f"encoder {name!r} is not usable: {exc}") from None
    elif not p.is_file():
        raise ValueError(f"{str(p)!r} is not a file")
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns, str(device))
    with _ENCODER_CACHE_LOCK:
        cached = _ENCODER_CACHE.get(key)
    if cached is not None:
        return cached

    header = read_encoder_header(p)
    try:
        sd = load_file(str(p), device="cpu")
    except Exception as exc:
        raise ValueError(f"{str(p)!r}: cannot read the encoder's weights (truncated or corrupt?): "
                         f"{type(exc).__name__}") from None
    digest = _weights_digest(sd)
    if header.get("weights_sha256") != digest:
        raise ValueError(f"{str(p)!r}: weights do not match the sha256 in the header: the file was altered")
    Encoder = _encoder_class()
    try:
        net = Encoder(**header["kwargs"])
        net.load_state_dict(sd, strict=True)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{str(p)!r}: the weights do not rebuild an Encoder: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    for k in ("img_resolution", "num_ws", "w_dim"):
        if header.get(k) != getattr(net, k):
            raise ValueError(f"{str(p)!r}: header {k}={header.get(k)!r} disagrees with the network's {getattr(net, k)}")
    if not (torch.isfinite(net.w_avg).all() and torch.isfinite(net.w_scale).all()):
        raise ValueError(f"{str(p)!r}: the stored w_avg / w_scale contain NaN or infinite values")
    net = net.to(device).eval().requires_grad_(False)
    net.header = header
    net.name = label
    net.path = str(p)
    net.model_name = header.get("model_name")
    with _ENCODER_CACHE_LOCK:
        for k in [k for k in _ENCODER_CACHE if k[0] == key[0]]:
            del _ENCODER_CACHE[k]
        _ENCODER_CACHE[key] = net
    return net


def _model_label(G) -> str:
    name = getattr(G, "model_name", None)
    return name if isinstance(name, str) and name else "NAME"


def check_encoder(encoder, G) -> None:
    """ValueError when `encoder` cannot invert into G (img_resolution / num_ws / w_dim differ)."""
    Encoder = _encoder_class()
    if not isinstance(encoder, Encoder):
        raise ValueError(f"encoder must be a stylemix Encoder, a name or a path, got {type(encoder).__name__}")
    mine = (encoder.img_resolution, encoder.num_ws, encoder.w_dim)
    theirs = (G.img_resolution, G.num_ws, G.w_dim)
    if mine != theirs:
        what = getattr(encoder, "name", None) or "the encoder"
        raise ValueError(
            f"encoder {what} does not fit this generator: it makes img_resolution/num_ws/w_dim = "
            f"{mine[0]}/{mine[1]}/{mine[2]}, the generator {_model_label(G)!r} needs {theirs[0]}/{theirs[1]}/"
            f"{theirs[2]}; train one with `python -m training.encoder --model {_model_label(G)}`")


def find_encoder(G):
    """The encoder for G by name (see module doc), or None. ValueError when the one found does not fit G."""
    from . import pretrained

    name = getattr(G, "model_name", None)
    if not isinstance(name, str) or not name:
        return None
    enc = None
    reg = name + ENCODER_SUFFIX
    if pretrained.is_registered(reg) and pretrained.get_entry(reg).kind == "encoder":
        enc = load_encoder(reg)
    else:
        path = default_encoder_path(name)
        if path.is_file():
            enc = load_encoder(path)
    if enc is not None:
        check_encoder(enc, G)
    return enc


# ------------------------------------------------------------------------------------------------
# invert()

#: Per-mode settings: optimiser steps, Adam learning rate, fraction of the steps with a cosine
#: learning-rate ramp-down, latent noise (units of w_std) at step 0 and the fraction of the steps
#: over which it fades out (quadratically, as in `project`). See MODES_NOTE for how they were chosen.
MODES: dict[str, dict] = {
    "fast": dict(steps=0),
    "balanced": dict(steps=40, lr=0.03, rampdown=0.3, noise=0.0, noise_ramp=0.75),
    "best": dict(steps=300, lr=0.1, rampdown=0.5, noise=0.0, noise_ramp=0.75),
}

MODES_NOTE = """\
Chosen by measurement (2026-11-22) on a 64 px lite-config generator (num_ws 10, w_dim 512, channel
base 2048 / max 128, RANDOM weights: the trained synthfaces64 was not ready) with its encoder
trained by `python -m training.encoder` with the defaults (2500 steps; held-out ws MSE 0.93 x
w_avg's, re-synthesis PSNR 17.2 dB vs 8.5 dB for w_avg). Targets: uint8 renders of fresh samples
(noise_mode random). One torch thread on a shared, busy 2-core CPU; CPU seconds ~ the wall time
of an idle core. Sweep (4 targets, mean PSNR): at 40 steps lr 0.03 / 0.05 / 0.07 with the
ramp-down over the last 30% gave 26.0 / 25.6 / 25.2 dB (ramp-down over 50%: 25.1 dB at lr 0.05);
20 / 30 / 40 steps at lr 0.05 gave 22.6 / 24.5 / 25.7 dB (with a 600-step encoder); latent noise
0.02 w_std cost 2 dB at 30 steps (the encoder's init is already close: noise only undoes it);
starting from w_avg instead (40 steps, best of lr 0.03 / 0.05 / 0.1) gave 24.8 dB. 300 steps: lr 0.1 (ramp-down
50%) 32.7 dB, lr 0.05 (30%) 32.5 dB. Then, on 4 other targets (`python -m training.encoder
--model M --compare-modes 4`):

    mode       PSNR dB  distance  CPU s/img  PSNR vs projector  time vs projector
    fast        17.1     0.834      0.04          0.49               0.001
    balanced    26.1     0.157      2.0           0.75               0.04
    best        33.5     0.037     12.4           0.97               0.25
    project     34.6     0.030     49.7   (1000 W+ steps, official settings, noise maps optimised)

'balanced' meets the time budget (about 2 s per 64 px image) but on this random-weight generator
reaches 75% of the projector's PSNR, not 95% (that takes ~300 steps: 'best'). Re-check on the
trained generator with the command above; the step count is the knob (CPU ~0.05 s per step)."""


@dataclasses.dataclass
class Inversion:
    ws: torch.Tensor                 # [num_ws, w_dim] float32 on the CPU
    image: np.ndarray                # uint8 HxWx3: G.synthesis(ws[None], noise_mode='const')
    distance: float                  # perceptual distance of that rendering to the target
    psnr: float                      # dB, images in [0, 255]: the uint8 rendering vs the target
    seconds: float                   # wall-clock time of the whole call
    mode: str                        # 'fast', 'balanced' or 'best'
    steps: int                       # optimiser steps taken
    distance_kind: str               # perceptual.describe()
    encoder: str | None              # the encoder's name/path; None = started from w_avg
    history: list = dataclasses.field(default_factory=list)  # distance before each step
    init_distance: float = math.nan  # distance of the starting latent (encoder output or w_avg)


def psnr(image, target) -> float:
    """PSNR in dB (peak 255) between two images: uint8 HxWx3 arrays, or float [1,]3xHxW in [-1, 1]."""
    def to255(x):
        if isinstance(x, np.ndarray) and x.dtype == np.uint8:
            return torch.from_numpy(x.astype(np.float64))
        t = torch.as_tensor(x).detach().double().cpu()
        if t.ndim == 4:
            t = t[0]
        if t.ndim == 3 and t.shape[0] == 3:
            t = t.permute(1, 2, 0)
        return ((t.clamp(-1, 1) + 1) * 127.5)
    a, b = to255(image), to255(target)
    if a.shape != b.shape:
        raise ValueError(f"psnr: images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    mse = float((a - b).square().mean())
    return 10.0 * math.log10(255.0 ** 2 / max(mse, 1e-10))


def _check_generator(G) -> None:
    for attr in ("mapping", "synthesis", "num_ws", "w_dim", "z_dim", "img_resolution"):
        if not hasattr(G, attr):
            raise ValueError(f"G must be a StyleGAN2 Generator (missing {attr!r}), got {type(G).__name__}")


def _resolve_encoder(encoder, G):
    """-> (Encoder or None, label or None)."""
    if encoder is None:
        enc = find_encoder(G)
    elif encoder is False:
        enc = None
    elif isinstance(encoder, (str, os.PathLike)):
        enc = load_encoder(encoder)
    else:
        enc = encoder
    if enc is None:
        return None, None
    check_encoder(enc, G)
    label = getattr(enc, "name", None) or getattr(enc, "path", None) or "Encoder"
    return enc, str(label)


def invert(
    G,                                   # stylemix.networks.Generator (not modified)
    image,                               # uint8 HxWx3 numpy (aligned, any square size) or float [1,]3xHxW in [-1, 1]
    *,
    mode: str = "balanced",              # 'fast' | 'balanced' | 'best' (see MODES)
    encoder=None,                        # Encoder, name or path; None = find_encoder(G); False = none
    progress: Callable | None = None,    # progress(step, total, distance) after every optimiser step
    seed: int = 0,                       # latent noise (when a mode uses it)
) -> Inversion:
    """Invert `image` into G's W+ space: encoder, then (balanced/best) W+ optimisation. See module doc."""
    from . import perceptual
    from .mixing import to_uint8

    t0 = time.perf_counter()
    _check_generator(G)
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"mode must be one of {tuple(MODES)}, got {mode!r}")
    if progress is not None and not callable(progress):
        raise ValueError(f"progress must be a callable or None, got {type(progress).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    target = prepare_target(image, G.img_resolution)
    enc, enc_label = _resolve_encoder(encoder, G)
    settings = MODES[mode]
    steps = int(settings.get("steps", 0))
    if enc is None and steps == 0:
        name = _model_label(G)
        raise ValueError(f"mode {mode!r} needs an encoder for generator {name!r} and none was found; train "
                         f"one with `python -m training.encoder --model {name}` (it is written to "
                         f"{default_encoder_path(name)}), or use mode 'balanced' or 'best'")

    w_avg, w_std = w_stats(G)  # cached per G
    if enc is not None:
        dist_w = float((enc.w_avg.detach().cpu().float() - w_avg.cpu()).norm()) / max(w_std, 1e-8)
        if dist_w > W_AVG_WARN:
            warnings.warn(f"encoder {enc_label} was trained for other weights ({enc.model_name!r}): its w_avg is "
                          f"{dist_w:.2f} w_std from this generator's; retrain it with "
                          f"`python -m training.encoder --model {_model_label(G)}`", stacklevel=2)
    Gc = copy.deepcopy(G).eval().requires_grad_(False)  # G's own noise_const buffers come along
    dev = _device(Gc)
    target = target.to(dev)

    metric = perceptual.get_metric()
    with torch.no_grad():
        target_emb = [e.detach() for e in metric.embed(target)]
        if enc is not None:
            enc_dev = next(iter(enc.buffers())).device
            ws0 = enc(target.to(enc_dev)).to(dev, torch.float32)
        else:
            ws0 = w_avg.to(dev).reshape(1, 1, -1).expand(1, Gc.num_ws, Gc.w_dim)
        ws0 = ws0.reshape(1, Gc.num_ws, Gc.w_dim).clone()
    if not torch.isfinite(ws0).all():
        raise FloatingPointError(f"the encoder {enc_label} produced NaN or infinite ws")

    def dist_fn(img):
        return metric.compare(metric.embed(img), target_emb).sum()

    history: list[float] = []
    best_ws, best_img, best_d = None, None, math.inf
    if steps > 0:
        lr0 = float(settings["lr"])
        rampdown = float(settings.get("rampdown", 0.5))
        noise0 = float(settings.get("noise", 0.0))
        noise_ramp = float(settings.get("noise_ramp", 0.75))
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        w = ws0.clone().requires_grad_(True)
        opt = torch.optim.Adam([w], betas=(0.9, 0.999), lr=lr0)
        for step in range(steps):
            t = step / steps
            ramp = min(1.0, (1.0 - t) / rampdown) if rampdown > 0 else 1.0
            for group in opt.param_groups:
                group["lr"] = lr0 * (0.5 - 0.5 * math.cos(ramp * math.pi))
            noise_scale = w_std * noise0 * max(0.0, 1.0 - t / noise_ramp) ** 2
            ws = w
            if noise_scale > 0:
                ws = w + torch.randn(w.shape, generator=gen).to(dev) * noise_scale
            synth = Gc.synthesis(ws, noise_mode="const")
            dist = dist_fn(synth)
            d = float(dist.detach())
            if not math.isfinite(d):
                raise FloatingPointError(f"inversion diverged at step {step}: distance {d}")
            if noise_scale == 0 and d < best_d:  # the distance of w itself: keep the best seen
                best_d, best_ws, best_img = d, w.detach().clone(), synth.detach()
            opt.zero_grad(set_to_none=True)
            dist.backward()
            opt.step()
            history.append(d)
            if progress is not None:
                progress(step, steps, d)
        ws_final = w.detach()
    else:
        ws_final = ws0

    with torch.no_grad():
        img = Gc.synthesis(ws_final, noise_mode="const")
        final = float(dist_fn(img))
    if best_ws is not None and best_d < final:
        ws_final, img, final = best_ws, best_img, best_d
    image_u8 = to_uint8(img)[0]
    return Inversion(ws=ws_final[0].detach().to("cpu", torch.float32).clone(), image=image_u8,
                     distance=final, psnr=psnr(image_u8, target), seconds=time.perf_counter() - t0,
                     mode=mode, steps=steps, distance_kind=metric.describe(), encoder=enc_label,
                     history=history, init_distance=history[0] if history else final)
