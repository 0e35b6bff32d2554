"""Training configurations of StyleGAN2-ADA (`--cfg`), resolved into network and optimiser kwargs.

The GPU configurations carry the hyper-parameters of the official StyleGAN2-ADA training script
(Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data", table 3 and the
released `train.py`):

    cfg        ref_gpus  kimg   mb  mbstd  fmaps  lrate   gamma  ema  ramp  map
    auto       = gpus   25000  (*)  (*)    (*)    (*)     (*)   (*)  0.05   2
    stylegan2      8    25000   32    4     1     0.002   10     10   -      8
    paper256       8    25000   64    8     0.5   0.0025  1      20   -      8
    paper512       8    25000   64    8     1     0.0025  0.5    20   -      8
    paper1024      8    25000   32    4     1     0.002   2      10   -      8

`auto` derives the starred values from the resolution `res` and the number of GPUs:
    mb    = max(min(gpus * min(4096 // res, 32), 64), gpus)
    mbstd = min(mb // gpus, 4)
    fmaps = 1 if res >= 512 else 0.5
    lrate = 0.002 if res >= 1024 else 0.0025
    gamma = 0.0002 * res**2 / mb
    ema   = mb * 10 / 32                     (kimg)

Every GPU config uses z_dim = w_dim = 512, channel_base = fmaps * 32768, channel_max = 512, fp16 in
the 4 highest resolutions (CUDA only; our networks compute in fp32 elsewhere), conv_clamp 256, and
per GPU `batch_gpu = mb // ref_gpus` images per forward pass (gradients accumulated over rounds).

`lite` is ours: StyleGAN2 sized for a CPU (see LITE_NOTES below for the measurements behind it). It
keeps the architecture, losses and regularisation of `auto` (the same formulas for gamma and ema,
ramp-up 0.05, 2 mapping layers) and only narrows the networks.
"""

from __future__ import annotations

import copy
import math

__all__ = ["cfg_specs", "CFG_NAMES", "resolve_spec", "network_kwargs", "LITE_NOTES"]

# Official fields: ref_gpus, kimg, mb (global batch), mbstd (minibatch-stddev group), fmaps (width
# relative to channel_base 32768), lrate, gamma (R1 weight), ema (half-life, kimg), ramp (EMA
# ramp-up, None = off), map (mapping layers). -1 = derived by the `auto` formulas.
# Ours (lite only): cbase/cmax (absolute widths), zdim/wdim, batch_gpu (images per forward pass).
cfg_specs: dict[str, dict] = {
    "auto": dict(ref_gpus=-1, kimg=25000, mb=-1, mbstd=-1, fmaps=-1, lrate=-1, gamma=-1, ema=-1, ramp=0.05, map=2),
    "stylegan2": dict(ref_gpus=8, kimg=25000, mb=32, mbstd=4, fmaps=1, lrate=0.002, gamma=10, ema=10, ramp=None, map=8),
    "paper256": dict(ref_gpus=8, kimg=25000, mb=64, mbstd=8, fmaps=0.5, lrate=0.0025, gamma=1, ema=20, ramp=None, map=8),
    "paper512": dict(ref_gpus=8, kimg=25000, mb=64, mbstd=8, fmaps=1, lrate=0.0025, gamma=0.5, ema=20, ramp=None, map=8),
    "paper1024": dict(ref_gpus=8, kimg=25000, mb=32, mbstd=4, fmaps=1, lrate=0.002, gamma=2, ema=10, ramp=None, map=8),
    # CPU-sized. mb/gamma/ema follow the auto formulas; 16 images per forward pass (see LITE_NOTES).
    "lite": dict(ref_gpus=-1, kimg=1000, mb=-1, mbstd=4, fmaps=None, lrate=0.0025, gamma=-1, ema=-1, ramp=0.05,
                 map=2, cbase=2048, cmax=128, zdim=512, wdim=512, batch_gpu=16),
}
CFG_NAMES = tuple(cfg_specs)

LITE_NOTES = """\
lite = channel_base 2048, channel_max 128 (128 channels from 4x4 to 16x16, 64 at 32x32, 32 at 64x64),
2 mapping layers, z_dim = w_dim = 512, batch 32 (the auto formula) in 2 forward passes of 16 images;
kimg 1000 by default. G 2.13M, D 1.18M parameters at 64x64.

Measured with `python -m training.stylegan2.bench_lite --threads 1` (full training steps: Gmain +
Greg/4 + Dmain + Dreg/16 + G_ema, 64x64, torch 2.13 fp32, one thread, the 2-core machine shared with
other jobs, so throughput is given per CPU-second of the process = speed on one idle core):

    channel_base/max, w_dim, images per pass     img per CPU-second   relative
    2048/128, 512, 4                               7.5                 1.00
    2048/128, 512, 8                               8.7                 1.16
    2048/128, 512, 16   <- lite                    9.9                 1.32
    2048/128, 512, 32                              9.7                 1.29
    2048/128, 256, 4                               7.5                 1.01
    4096/128, 512, 4                               4.1                 0.55
    4096/256, 512, 4                               2.9                 0.39
    2048/128, 512, 16, augment p = 0.3            10.4                 (augmentation ~free)

w_dim 256 buys nothing (the convolutions dominate); 4096/256 costs 2.6x for 4x the parameters.
At ~10 img/s on one core, 1000 kimg take ~28 hours."""


def _pow2(res) -> bool:
    return isinstance(res, int) and res >= 4 and (res & (res - 1)) == 0


def resolve_spec(cfg: str, *, resolution: int, gpus: int) -> dict:
    """The cfg's spec with every -1 replaced by the `auto` formulas for this resolution and GPU count."""
    if cfg not in cfg_specs:
        raise ValueError(f"unknown --cfg {cfg!r}; choose from {', '.join(CFG_NAMES)}")
    if not _pow2(resolution):
        raise ValueError(f"dataset resolution must be a power of two >= 4, got {resolution!r}")
    if not (isinstance(gpus, int) and gpus >= 1):
        raise ValueError(f"number of processes must be >= 1, got {gpus!r}")
    spec = copy.deepcopy(cfg_specs[cfg])
    res = resolution
    if spec["ref_gpus"] == -1:
        spec["ref_gpus"] = gpus
    if spec["mb"] == -1:
        spec["mb"] = max(min(gpus * min(4096 // res, 32), 64), gpus)
    if spec["mbstd"] == -1:
        spec["mbstd"] = min(spec["mb"] // gpus, 4)
    if spec["fmaps"] == -1:
        spec["fmaps"] = 1 if res >= 512 else 0.5
    if spec["lrate"] == -1:
        spec["lrate"] = 0.002 if res >= 1024 else 0.0025
    if spec["gamma"] == -1:
        spec["gamma"] = 0.0002 * (res ** 2) / spec["mb"]
    if spec["ema"] == -1:
        spec["ema"] = spec["mb"] * 10 / 32
    spec.setdefault("cbase", None)
    spec.setdefault("cmax", None)
    spec.setdefault("zdim", 512)
    spec.setdefault("wdim", 512)
    spec.setdefault("batch_gpu", None)
    if spec["cbase"] is None:
        spec["cbase"] = int(spec["fmaps"] * 32768)
    if spec["cmax"] is None:
        spec["cmax"] = 512
    if spec["batch_gpu"] is None:
        spec["batch_gpu"] = max(spec["mb"] // spec["ref_gpus"], 1)
    return spec


def network_kwargs(spec: dict, *, resolution: int, img_channels: int, c_dim: int, freezed: int = 0,
                   cpu_sized: bool = False) -> tuple[dict, dict]:
    """(G_kwargs, D_kwargs) for stylemix.networks.stylegan2.Generator / Discriminator."""
    num_fp16_res = 0 if cpu_sized else 4
    G_kwargs = dict(
        z_dim=int(spec["zdim"]), c_dim=int(c_dim), w_dim=int(spec["wdim"]), img_resolution=int(resolution),
        img_channels=int(img_channels),
        mapping_kwargs=dict(num_layers=int(spec["map"])),
        synthesis_kwargs=dict(channel_base=int(spec["cbase"]), channel_max=int(spec["cmax"]),
                              num_fp16_res=num_fp16_res, conv_clamp=256),
    )
    D_kwargs = dict(
        c_dim=int(c_dim), img_resolution=int(resolution), img_channels=int(img_channels),
        architecture="resnet", channel_base=int(spec["cbase"]), channel_max=int(spec["cmax"]),
        num_fp16_res=num_fp16_res, conv_clamp=256,
        block_kwargs=dict(freeze_layers=int(freezed)),
        mapping_kwargs={},
        epilogue_kwargs=dict(mbstd_group_size=int(spec["mbstd"])),
    )
    return G_kwargs, D_kwargs


def check_channels(spec: dict, resolution: int) -> None:
    """Every resolution gets at least one channel (and the widths are sane)."""
    cbase, cmax = spec["cbase"], spec["cmax"]
    if not (isinstance(cbase, int) and cbase >= 1 and isinstance(cmax, int) and cmax >= 1):
        raise ValueError(f"channel_base and channel_max must be positive integers, got {cbase!r}, {cmax!r}")
    if cbase // resolution < 1:
        raise ValueError(f"channel_base {cbase} gives no channels at {resolution}x{resolution} "
                         f"(need channel_base >= {resolution})")
    if math.isnan(float(spec["lrate"])) or spec["lrate"] <= 0:
        raise ValueError(f"learning rate must be > 0, got {spec['lrate']!r}")
