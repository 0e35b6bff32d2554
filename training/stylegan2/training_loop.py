"""The StyleGAN2-ADA training loop: phases, lazy regularisation, G_ema, ADA, ticks, snapshots, ranks.

One *step* (minibatch) runs the phases in order, each on `batch_size` images split over the ranks
and, within a rank, over rounds of `batch_gpu` images whose gradients add up:

    Gmain  every step                          Dmain  every step
    Greg   every G_reg_interval (4) steps       Dreg   every D_reg_interval (16) steps

With lazy regularisation each network has one Adam optimiser for both of its phases, with
    mb_ratio = reg_interval / (reg_interval + 1),  lr *= mb_ratio,  betas = betas ** mb_ratio
and the regulariser's loss multiplied by its interval. Then G_ema follows G:
    ema_nimg = ema_kimg * 1000, min(ema_nimg, cur_nimg * ema_rampup) when ramping up,
    beta = 0.5 ** (batch_size / ema_nimg),  G_ema = lerp(G, G_ema, beta),  buffers copied,
and ADA adjusts p every 4 steps from E[sign(D(real))] over all ranks (AdaptiveP).

Several processes (torchrun): every rank builds the same networks (seeded by --seed), rank 0's
weights are broadcast, each rank reads its own share of a global shuffled order (InfiniteSampler)
and draws its own latents (torch/numpy seeded with seed * world_size + rank); after each phase the
gradients of all ranks are averaged with one all-reduce of the flattened gradients (NaN/inf
replaced by 0/+-1e5, as the official code does). Statistics and ADA's counts are summed over
ranks. Only rank 0 writes files. At each snapshot every rank's parameters are compared.

The loop is organised in ticks of `kimg_per_tick` thousand images (the first tick is one step): at
the end of each, a line goes to stats.jsonl and stdout; every `snap` ticks (and at the end) a
snapshot is written (see snapshot.py).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from stylemix.checkpoints import save_generator
from stylemix.networks.stylegan2 import Discriminator, Generator
from stylemix.ops.conv2d_resample import cpu_conv_dtype
from training.machine import device_description

from . import snapshot as snap_io
from .augment import AdaptiveP, AugmentPipe, all_reduce_sum
from .loss import StyleGAN2Loss
from .visual import grid_size, plot_stats, read_stats, save_image_grid

__all__ = ["TrainingSet", "open_training_set", "InfiniteSampler", "Trainer", "STAT_NAMES", "dist_info"]


# ------------------------------------------------------------------------------------------------
# Data


class TrainingSet(torch.utils.data.Dataset):
    """A dataset of (uint8 [C, H, W] image, float32 [label_dim] label) seen through one interface:
    `resolution`, `num_channels`, `label_dim`, `name`, `labels` (all labels, [N, label_dim]), and
    `xflip` (mirrored copies appended: len doubles, as the official --mirror does)."""

    def __init__(self, dataset, *, name: str, use_labels: bool = False, xflip: bool = False):
        self.base = dataset
        self.name = str(name)
        self.num_raw = len(dataset)
        if self.num_raw == 0:
            raise ValueError(f"dataset {self.name!r} holds no images")
        img0, label0 = dataset[0]
        shape = tuple(int(s) for s in np.asarray(img0).shape)
        if len(shape) != 3:
            raise ValueError(f"dataset {self.name!r}: images must be [C, H, W], got shape {shape}")
        c, h, w = shape
        if h != w:
            raise ValueError(f"dataset {self.name!r}: images must be square, got {h}x{w}")
        if h < 4 or (h & (h - 1)) != 0:
            raise ValueError(f"dataset {self.name!r}: resolution must be a power of two >= 4 "
                             f"(32, 64, 128, ...), got {h}x{w}")
        if c not in (1, 3):
            raise ValueError(f"dataset {self.name!r}: images must have 1 or 3 channels, got {c}")
        self.num_channels = c
        self.resolution = h
        self.image_shape = (c, h, w)
        self.use_labels = bool(use_labels)
        self.xflip = bool(xflip)
        if self.use_labels:
            labels = self._all_labels(dataset)
            if labels.ndim != 2 or labels.shape[1] == 0:
                raise ValueError(f"--cond needs labels, but dataset {self.name!r} has none")
            self.labels = labels.astype(np.float32)
        else:
            self.labels = np.zeros([self.num_raw, 0], dtype=np.float32)
        self.label_dim = int(self.labels.shape[1])

    @staticmethod
    def _all_labels(dataset) -> np.ndarray:
        for attr in ("labels", "_labels"):
            arr = getattr(dataset, attr, None)
            if arr is not None and not callable(arr):
                arr = np.asarray(arr, dtype=np.float32)
                return arr.reshape(len(dataset), -1)
        if hasattr(dataset, "get_label"):
            return np.stack([np.asarray(dataset.get_label(i), dtype=np.float32).reshape(-1)
                             for i in range(len(dataset))])
        return np.stack([np.asarray(dataset[i][1], dtype=np.float32).reshape(-1) for i in range(len(dataset))])

    def __len__(self) -> int:
        return self.num_raw * (2 if self.xflip else 1)

    def __getitem__(self, idx: int):
        raw = idx % self.num_raw
        img, _ = self.base[raw]
        img = np.asarray(img)
        if img.dtype != np.uint8:
            raise ValueError(f"dataset {self.name!r}: images must be uint8, got {img.dtype}")
        if tuple(img.shape) != self.image_shape:
            raise ValueError(f"dataset {self.name!r}: image {raw} has shape {tuple(img.shape)}, "
                             f"expected {self.image_shape}")
        if idx >= self.num_raw:
            img = img[:, :, ::-1]
        return np.ascontiguousarray(img), self.labels[raw].copy()

    def describe(self) -> dict:
        return dict(name=self.name, size=len(self), num_raw=self.num_raw, resolution=self.resolution,
                    num_channels=self.num_channels, label_dim=self.label_dim, use_labels=self.use_labels,
                    xflip=self.xflip)


def open_training_set(path, *, use_labels: bool = False, xflip: bool = False,
                      resolution: int | None = None) -> TrainingSet:
    """An image folder, dataset zip or CelebA folder (training.data.datasets.ImageDataset) as a
    TrainingSet; `resolution` resizes the images (default: the size of the first image)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"--data {str(path)!r}: no such file or directory")
    from training.data.datasets import ImageDataset

    ds = ImageDataset(str(p), resolution=resolution, use_labels=use_labels)
    name = getattr(ds, "name", None) or p.stem
    return TrainingSet(ds, name=name, use_labels=use_labels, xflip=xflip)


class InfiniteSampler(torch.utils.data.Sampler):
    """Endless shuffled order, identical on every rank (seeded), dealt round-robin: the image at
    global position i (epoch i // N, a fresh permutation per epoch) goes to rank i % world_size.
    Starting at global position `start` (= images already consumed) makes resuming exact."""

    def __init__(self, size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0, start: int = 0,
                 shuffle: bool = True):
        assert size > 0 and 0 <= rank < world_size and start >= 0
        self.size, self.rank, self.world_size, self.seed = size, rank, world_size, seed
        self.start, self.shuffle = start, shuffle

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.size)
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def __iter__(self):
        idx = self.start + self.rank
        epoch = -1
        order = None
        while True:
            e, i = divmod(idx, self.size)
            if e != epoch:
                epoch, order = e, self._order(e)
            yield int(order[i])
            idx += self.world_size


# ------------------------------------------------------------------------------------------------
# CPU allocator

# glibc's malloc serves big blocks with mmap and unmaps them on free (threshold 128 KiB, raised
# adaptively up to 32 MiB) and trims the heap's top. PyTorch allocates every activation afresh, so
# a training step kept faulting in fresh zeroed pages: 65k-94k minor page faults (~250-370 MB) per
# `--cfg lite` step at 64 px. Keeping freed memory in the heap (mmap threshold 32 MiB, glibc's
# maximum; no trimming) leaves ~0 faults per step and, measured with one thread as img per
# CPU-second of full steps (training.stylegan2.bench_lite's trainer, 16 steps, alternate processes
# on the shared 2-core machine): 10.78, 10.27 without -> 11.37, 11.52, 11.93, 11.68 with, about
# +10% (sys time 3.5 s -> 0.1 s per 16 steps); `benchmarks/bench_train.py --threads 1` vs
# `--no-speedups`, alternating processes: 11.98, 12.02 vs 11.34, 10.78. The cost: the process's
# memory is not handed back to the OS until it ends (its RSS stays at its peak), which a training
# process does not miss.
# Other ideas measured side by side and dropped (no gain within the noise, or slower):
# channels_last convolutions on CPU (fp32 conv fwd+bwd 1.3-2.5x slower than NCHW on this CPU);
# the fused (grouped-conv) modulated conv for the 4x4/8x8 synthesis blocks (-7.5%); the slow_conv2d
# (non-oneDNN) convolutions (slower on every layer); leaving out Greg's `gen_img[:, 0, 0, 0] * 0`
# term (Greg 0.7% faster: the double backward walks the forward graph anyway); G's forward in
# Dmain under no_grad (within noise). Not built: one D pass over reals + fakes (LITE_NOTES measured
# 32 images per pass no faster than 16). Merging Dmain and Dreg into one D(real) evaluation when both are due (the
# official Dboth) would change the maths: with lazy regularisation they are two Adam steps, the
# second on the weights the first produced.
TUNE_CPU_ALLOCATOR = os.environ.get("STYLEMIX_TUNE_MALLOC", "1").strip() not in ("0", "false", "no")


def tune_cpu_allocator() -> bool:
    """Keep freed memory in glibc's heap (see above). True when applied; a no-op returning False
    elsewhere (not glibc, or TUNE_CPU_ALLOCATOR off: STYLEMIX_TUNE_MALLOC=0)."""
    if not TUNE_CPU_ALLOCATOR or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))


# ------------------------------------------------------------------------------------------------
# Distributed helpers


def dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _broadcast_module(module: torch.nn.Module) -> None:
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


def _average_grads(module: torch.nn.Module, world_size: int) -> None:
    params = [p for p in module.parameters() if p.grad is not None]
    if not params:
        return
    flat = torch.cat([p.grad.flatten() for p in params])
    if world_size > 1:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= world_size
    torch.nan_to_num(flat, nan=0, posinf=1e5, neginf=-1e5, out=flat)
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad = g.reshape(p.shape)


def param_digest(module: torch.nn.Module) -> str:
    """sha256 of every parameter's bytes (buffers such as w_avg are per-rank and left out)."""
    h = hashlib.sha256()
    for name, p in module.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# Statistics

STAT_NAMES = (
    "Loss/G/loss", "Loss/G/reg", "Loss/pl_penalty", "Loss/D/loss", "Loss/D/reg", "Loss/r1_penalty",
    "Loss/scores/real", "Loss/scores/fake", "Loss/signs/real", "Loss/signs/fake",
)


class _Stats:
    """Sums and counts of reported values since the last tick, reduced over ranks on collect()."""

    def __init__(self, device):
        self.index = {n: i for i, n in enumerate(STAT_NAMES)}
        self.device = device
        self.acc = torch.zeros([len(STAT_NAMES), 2], dtype=torch.float64, device=device)

    def report(self, name: str, value: torch.Tensor) -> None:
        i = self.index.get(name)
        if i is None:
            return
        v = value.detach().flatten().to(torch.float64)
        self.acc[i, 0] += v.sum()
        self.acc[i, 1] += v.numel()

    def collect(self, world_size: int) -> dict:
        acc = self.acc.clone()
        if world_size > 1:
            dist.all_reduce(acc, op=dist.ReduceOp.SUM)
        self.acc.zero_()
        out = {}
        for name, i in self.index.items():
            s, n = float(acc[i, 0]), float(acc[i, 1])
            if n > 0:
                out[name] = s / n
        return out


# ------------------------------------------------------------------------------------------------
# Trainer

# Phases that keep float32 convolutions under --cpu-bf16. R1's gradient (a double backward through
# D) came out wrong with oneDNN's AMX bfloat16 kernels: cosine similarity 0.964 to the float32
# gradient on tests/test_train.py's tiny D (Intel Xeon with AMX, torch 2.13 / oneDNN 3.12), against
# 0.9995 with AMX switched off (ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16, which made the whole step 2.4x
# slower). Dmain, Gmain and Greg agree as well with and without AMX. Dreg runs every 16th step.
FLOAT32_PHASES = ("Dreg",)


def _param_groups(module: torch.nn.Module, lr: float, mapping_lr_mult=None) -> list[dict]:
    """Adam's parameter groups: one at `lr`, or with `mapping_lr_mult` (G's --map-lr) two, the mapping
    network's parameters last at `lr * mapping_lr_mult`, each group in the module's parameter order
    (frozen D layers are buffers: never optimised)."""
    named = list(module.named_parameters())
    if mapping_lr_mult is None:
        return [{"params": [p for _, p in named], "lr": lr}]
    return [{"params": [p for n, p in named if not n.startswith("mapping.")], "lr": lr},
            {"params": [p for n, p in named if n.startswith("mapping.")], "lr": lr * float(mapping_lr_mult)}]


def _regroup(saved: dict, module: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    """An optimiser state saved with one parameter grouping (one group, or the mapping network in a
    second one: `_param_groups`) rearranged for `opt`'s grouping: the per-parameter moments follow
    their parameters."""
    if len(saved["param_groups"]) not in (1, 2):
        raise ValueError(f"{len(saved['param_groups'])} parameter groups saved, {len(opt.param_groups)} now")
    name_of = {id(p): n for n, p in module.named_parameters()}
    saved_groups = _param_groups(module, 0.0, None if len(saved["param_groups"]) == 1 else 1.0)
    old_order = [name_of[id(p)] for g in saved_groups for p in g["params"]]
    new_index = {name_of[id(p)]: i for i, p in enumerate(p for g in opt.param_groups for p in g["params"])}
    state = {new_index[old_order[int(i)]]: st for i, st in saved["state"].items()}
    return dict(state=state, param_groups=copy.deepcopy(opt.state_dict()["param_groups"]))


class _Phase:
    def __init__(self, name: str, module: torch.nn.Module, opt: torch.optim.Optimizer, interval: int):
        self.name, self.module, self.opt, self.interval = name, module, opt, interval


def _ignore_stop_signals(_worker_id: int) -> None:
    # DataLoader workers share the terminal's process group (and `timeout`'s): a Ctrl-C or SIGTERM
    # meant for the trainer must not kill them before it has written its last snapshot. They still
    # exit when the trainer does.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class Trainer:
    """One training run (one process of it). `options` is the dict train.py writes to
    training_options.json; `resume` is None, {'kind': 'state', 'state': <training state>} (continue
    an interrupted run) or {'kind': 'networks', 'G'/'D'/'G_ema': state dicts or None, 'source'}
    (fine-tune from a checkpoint; shapes must match exactly)."""

    def __init__(self, options: dict, training_set: TrainingSet, *, run_dir=None, device="cpu",
                 resume: dict | None = None, progress: bool = False,
                 metrics_fn: Callable[[torch.nn.Module, float], dict] | None = None,
                 log: Callable[[str], None] | None = None):
        self.options = o = copy.deepcopy(options)
        self.training_set = training_set
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.device = torch.device(device)
        self.rank, self.world_size = dist_info()
        self.progress = progress and self.rank == 0
        self.metrics_fn = metrics_fn
        # Set (to a signal number) by request_stop, e.g. from a SIGINT/SIGTERM handler: run() then ends
        # the tick early, writes a snapshot and returns after the current step (several processes
        # agree on the step through one tiny all-reduce per step).
        self.stop_signal = None
        self._log = log or (lambda msg: print(msg, flush=True))
        if o["num_gpus"] != self.world_size:
            raise ValueError(f"options were resolved for {o['num_gpus']} process(es), running {self.world_size}")

        self.batch_size = int(o["batch_size"])
        self.batch_gpu = int(o["batch_gpu"])
        self.batch_per_rank = self.batch_size // self.world_size
        assert self.batch_size == self.batch_per_rank * self.world_size, (self.batch_size, self.world_size)
        assert self.batch_per_rank % self.batch_gpu == 0, (self.batch_per_rank, self.batch_gpu)
        self.rounds = self.batch_per_rank // self.batch_gpu
        assert training_set.resolution == o["G_kwargs"]["img_resolution"], training_set.resolution
        assert training_set.label_dim == o["G_kwargs"]["c_dim"], (training_set.label_dim, o["G_kwargs"]["c_dim"])

        self.cpu_allocator_tuned = tune_cpu_allocator() if self.device.type == "cpu" else False
        # torch.bfloat16 = the training steps' CPU convolutions run in bfloat16 (train.py --cpu-bf16); the
        # snapshots' sample grids and metrics stay float32. A runtime choice, not part of the run's options.
        self.cpu_conv_dtype: torch.dtype | None = None

        # Networks: the same initial weights on every rank.
        seed = int(o["random_seed"])
        torch.manual_seed(seed)
        self.G = Generator(**copy.deepcopy(o["G_kwargs"])).train().requires_grad_(False).to(self.device)
        self.G.init_kwargs = copy.deepcopy(o["G_kwargs"])
        self.D = Discriminator(**copy.deepcopy(o["D_kwargs"])).train().requires_grad_(False).to(self.device)
        self.D.init_kwargs = copy.deepcopy(o["D_kwargs"])
        self.G_ema = copy.deepcopy(self.G).eval()
        self.G_ema.init_kwargs = copy.deepcopy(o["G_kwargs"])

        # Augmentation.
        self.augment_pipe = None
        self.ada = None
        if o["aug"] != "noaug":
            self.augment_pipe = AugmentPipe(**o["augment_kwargs"]).train().requires_grad_(False).to(self.device)
            self.augment_pipe.p.fill_(float(o["augment_p"]))
            if o["aug"] == "ada":
                self.ada = AdaptiveP(self.augment_pipe, batch_size=self.batch_size, ada_target=o["ada_target"],
                                     ada_interval=o["ada_interval"], ada_kimg=o["ada_kimg"], p=float(o["augment_p"]),
                                     reduce_fn=all_reduce_sum if self.world_size > 1 else None)

        self.stats = _Stats(self.device)
        self.loss = StyleGAN2Loss(self.G, self.D, augment_pipe=self.augment_pipe, report=self.stats.report,
                                  real_logits_hook=self.ada.accumulate if self.ada is not None else None,
                                  **o["loss_kwargs"])

        # Optimisers and phases (lazy regularisation).
        self.phases: list[_Phase] = []
        self.opts: dict[str, torch.optim.Optimizer] = {}
        for name, module, opt_kwargs, reg_interval in (("G", self.G, o["G_opt_kwargs"], o["G_reg_interval"]),
                                                       ("D", self.D, o["D_opt_kwargs"], o["D_reg_interval"])):
            lr, betas, eps = float(opt_kwargs["lr"]), [float(b) for b in opt_kwargs["betas"]], float(opt_kwargs["eps"])
            map_lr = opt_kwargs.get("mapping_lr_mult") if name == "G" else None
            if reg_interval is None:
                opt = torch.optim.Adam(_param_groups(module, lr, map_lr), lr=lr, betas=tuple(betas), eps=eps)
                self.phases.append(_Phase(name + "both", module, opt, 1))
            else:
                mb_ratio = reg_interval / (reg_interval + 1)
                opt = torch.optim.Adam(_param_groups(module, lr * mb_ratio, map_lr), lr=lr * mb_ratio,
                                       betas=tuple(b ** mb_ratio for b in betas), eps=eps)
                self.phases.append(_Phase(name + "main", module, opt, 1))
                self.phases.append(_Phase(name + "reg", module, opt, int(reg_interval)))
            self.opts[name] = opt

        # Counters.
        self.cur_nimg = 0
        self.batch_idx = 0
        self.cur_tick = 0
        self.tick_start_nimg = 0
        self.total_sec = 0.0
        self.resumed_from: str | None = None

        # Per-rank randomness (latents, noise, augmentation, labels of generated images).
        self._seed_rank(seed * self.world_size + self.rank)

        if resume is not None:
            self._apply_resume(resume)
        if self.world_size > 1:
            for m in (self.G, self.D, self.G_ema) + ((self.augment_pipe,) if self.augment_pipe is not None else ()):
                _broadcast_module(m)

        # Fixed latents for the sample grids.
        gw, gh = grid_size(training_set.resolution, cpu=self.device.type != "cuda")
        self.grid = (gw, gh)
        g = torch.Generator().manual_seed(seed)
        self.grid_z = torch.randn([gw * gh, self.G.z_dim], generator=g)
        rs = np.random.RandomState(seed)
        self.grid_idx = rs.permutation(len(training_set))[:gw * gh] if len(training_set) >= gw * gh \
            else rs.randint(len(training_set), size=gw * gh)
        self.grid_c = torch.from_numpy(training_set.labels[self.grid_idx % training_set.num_raw])

        self._data_iter = None

    # -- setup helpers ---------------------------------------------------------------------------

    @staticmethod
    def _seed_rank(s: int) -> None:
        random.seed(s)
        np.random.seed(s % (2 ** 32))
        torch.manual_seed(s)

    def _apply_resume(self, resume: dict) -> None:
        if resume["kind"] == "state":
            self.load_state_dict(resume["state"], source=resume.get("source", "training state"))
            self.resumed_from = resume.get("source")
            return
        assert resume["kind"] == "networks", resume["kind"]
        source = resume.get("source", "checkpoint")
        g_src = resume.get("G") if resume.get("G") is not None else resume.get("G_ema")
        ema_src = resume.get("G_ema") if resume.get("G_ema") is not None else resume.get("G")
        for what, sd, net in (("G", g_src, self.G), ("G_ema", ema_src, self.G_ema), ("D", resume.get("D"), self.D)):
            if sd is None:
                continue
            snap_io.check_state_dict_match(sd, net, what=what, source=source)
        for what, sd, net in (("G", g_src, self.G), ("G_ema", ema_src, self.G_ema), ("D", resume.get("D"), self.D)):
            if sd is None:
                if self.rank == 0:
                    self._log(f"note: {source} has no {what}; {what} starts from random weights")
                continue
            net.load_state_dict({k: v.to(self.device) for k, v in sd.items()}, strict=True)
        # A trained G: the path-length mean starts at the measured lengths (see StyleGAN2Loss).
        self.loss.pl_mean_from_first = g_src is not None
        self.resumed_from = source

    # -- state -----------------------------------------------------------------------------------

    def counters(self) -> dict:
        return dict(cur_nimg=self.cur_nimg, batch_idx=self.batch_idx, cur_tick=self.cur_tick,
                    tick_start_nimg=self.tick_start_nimg, total_sec=self.total_sec)

    def state_dict(self, rng: list | None = None) -> dict:
        def cpu(sd):
            return {k: v.detach().cpu().clone() if torch.is_tensor(v) else v for k, v in sd.items()}

        def opt_cpu(sd):
            state = {k: {n: (t.detach().cpu().clone() if torch.is_tensor(t) else t) for n, t in s.items()}
                     for k, s in sd["state"].items()}
            return dict(state=state, param_groups=copy.deepcopy(sd["param_groups"]))

        return dict(
            format=snap_io.STATE_FORMAT, version=snap_io.STATE_VERSION,
            options=copy.deepcopy(self.options),
            G=cpu(self.G.state_dict()), D=cpu(self.D.state_dict()), G_ema=cpu(self.G_ema.state_dict()),
            G_opt=opt_cpu(self.opts["G"].state_dict()), D_opt=opt_cpu(self.opts["D"].state_dict()),
            augment_pipe=cpu(self.augment_pipe.state_dict()) if self.augment_pipe is not None else None,
            ada=self.ada.state_dict() if self.ada is not None else None,
            pl_mean=self.loss.pl_mean.detach().cpu().clone(), pl_mean_from_first=self.loss.pl_mean_from_first,
            counters=self.counters(), world_size=self.world_size,
            rng=rng if rng is not None else [snap_io.get_rng_state()],
        )

    def load_state_dict(self, state: dict, *, source: str = "training state") -> None:
        for what, net in (("G", self.G), ("D", self.D), ("G_ema", self.G_ema)):
            snap_io.check_state_dict_match(state[what], net, what=what, source=source)
        for what, net in (("G", self.G), ("D", self.D), ("G_ema", self.G_ema)):
            net.load_state_dict({k: v.to(self.device) for k, v in state[what].items()}, strict=True)
        for name in ("G", "D"):
            lrs = [g["lr"] for g in self.opts[name].param_groups]
            try:
                saved = state[f"{name}_opt"]
                if name == "G" and len(saved["param_groups"]) != len(self.opts[name].param_groups):
                    saved = _regroup(saved, self.G, self.opts[name])  # --map-lr switched on or off
                self.opts[name].load_state_dict(saved)
            except (ValueError, KeyError) as exc:
                raise ValueError(f"{source}: {name} optimiser state does not fit this run ({exc})") from None
            for g, lr in zip(self.opts[name].param_groups, lrs):  # the options' lr (--glr/--dlr may change it)
                g["lr"] = lr
        if self.augment_pipe is not None and state.get("augment_pipe") is not None:
            self.augment_pipe.load_state_dict({k: v.to(self.device) for k, v in state["augment_pipe"].items()})
        if self.ada is not None and state.get("ada") is not None:
            self.ada.load_state_dict(state["ada"])
        if state.get("pl_mean") is not None:
            self.loss.pl_mean.copy_(state["pl_mean"].to(self.device))
        # still pending after a snapshot taken before G's first PL step (e.g. during --warmup-d)
        self.loss.pl_mean_from_first = bool(state.get("pl_mean_from_first", False))
        c = state["counters"]
        self.cur_nimg, self.batch_idx, self.cur_tick = int(c["cur_nimg"]), int(c["batch_idx"]), int(c["cur_tick"])
        self.tick_start_nimg, self.total_sec = int(c["tick_start_nimg"]), float(c["total_sec"])
        rng = state.get("rng") or []
        if len(rng) == self.world_size:
            snap_io.set_rng_state(rng[self.rank])
        else:  # another number of processes: fresh, but deterministic, per-rank streams
            self._seed_rank((int(self.options["random_seed"]) * 1_000_003 + self.batch_idx) * self.world_size
                            + self.rank)

    # -- data ------------------------------------------------------------------------------------

    def _make_data_iter(self):
        workers = int(self.options.get("workers", 0))
        sampler = InfiniteSampler(len(self.training_set), rank=self.rank, world_size=self.world_size,
                                  seed=int(self.options["random_seed"]), start=self.cur_nimg)
        # Its own generator: creating the iterator must not draw from the global torch RNG (exact resume).
        gen = torch.Generator().manual_seed(int(self.options["random_seed"]) * self.world_size + self.rank)
        kwargs = dict(batch_size=self.batch_per_rank, sampler=sampler, num_workers=workers,
                      pin_memory=self.device.type == "cuda", generator=gen)
        if workers > 0:
            kwargs.update(prefetch_factor=2, persistent_workers=False, worker_init_fn=_ignore_stop_signals)
        return iter(torch.utils.data.DataLoader(self.training_set, **kwargs))

    def close(self) -> None:
        self._data_iter = None

    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """Ask run() to stop with a snapshot as soon as it can (safe to call from a signal handler)."""
        self.stop_signal = int(signum)

    def _agree_to_stop(self) -> bool:
        flag = torch.tensor([0.0 if self.stop_signal is None else 1.0], device=self.device)
        dist.all_reduce(flag)  # every rank stops at the same step, so the snapshot is consistent
        return bool(flag.item() > 0)

    # -- one step --------------------------------------------------------------------------------

    def train_step(self) -> None:
        """One minibatch: every due phase, then G_ema, counters and ADA."""
        if self._data_iter is None:
            self._data_iter = self._make_data_iter()
        real_img, real_c = next(self._data_iter)
        real_img = (real_img.to(self.device).to(torch.float32) / 127.5 - 1).split(self.batch_gpu)
        real_c = real_c.to(self.device).to(torch.float32).split(self.batch_gpu)
        n_ph = len(self.phases)
        all_gen_z = torch.randn([n_ph * self.batch_per_rank, self.G.z_dim], device=self.device)
        all_gen_z = [z.split(self.batch_gpu) for z in all_gen_z.split(self.batch_per_rank)]
        labels = self.training_set.labels
        idx = np.random.randint(labels.shape[0], size=n_ph * self.batch_per_rank)
        all_gen_c = torch.from_numpy(labels[idx]).to(self.device)
        all_gen_c = [c.split(self.batch_gpu) for c in all_gen_c.split(self.batch_per_rank)]

        lk = self.options["loss_kwargs"]
        d_only = self.cur_nimg < float(self.options.get("warmup_d_kimg") or 0) * 1000  # train.py --warmup-d
        for phase, gen_z, gen_c in zip(self.phases, all_gen_z, all_gen_c):
            if self.batch_idx % phase.interval != 0:
                continue
            if d_only and phase.module is self.G:
                continue
            if phase.name == "Greg" and float(lk.get("pl_weight", 0)) == 0:
                continue
            if phase.name == "Dreg" and float(lk.get("r1_gamma", 0)) == 0:
                continue
            phase.opt.zero_grad(set_to_none=True)
            phase.module.requires_grad_(True)
            with cpu_conv_dtype(None) if phase.name in FLOAT32_PHASES else contextlib.nullcontext():
                for r in range(self.rounds):
                    self.loss.accumulate_gradients(phase.name, real_img[r], real_c[r], gen_z[r], gen_c[r],
                                                   gain=phase.interval)
            phase.module.requires_grad_(False)
            _average_grads(phase.module, self.world_size)
            phase.opt.step()

        # G_ema.
        ema_nimg = float(self.options["ema_kimg"]) * 1000
        if self.options.get("ema_rampup") is not None:
            ema_nimg = min(ema_nimg, self.cur_nimg * float(self.options["ema_rampup"]))
        ema_beta = 0.5 ** (self.batch_size / max(ema_nimg, 1e-8))
        with torch.no_grad():
            if not d_only:  # G_ema's weights wait with G's during --warmup-d
                # one fused update for all tensors (a per-tensor loop is ~100 kernel launches a step)
                torch._foreach_lerp_(list(self.G_ema.parameters()), list(self.G.parameters()), 1.0 - ema_beta)
            for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
                b_ema.copy_(b)

        self.cur_nimg += self.batch_size
        self.batch_idx += 1
        if self.ada is not None:
            self.ada.step()

    # -- outputs ---------------------------------------------------------------------------------

    def augment_p(self) -> float:
        return float(self.augment_pipe.p) if self.augment_pipe is not None else 0.0

    @torch.no_grad()
    def render_grid(self) -> torch.Tensor:
        out = []
        for z, c in zip(self.grid_z.split(self.batch_gpu), self.grid_c.split(self.batch_gpu)):
            out.append(self.G_ema(z.to(self.device), c.to(self.device), noise_mode="const").cpu())
        return torch.cat(out)

    def _gather(self, obj) -> list:
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def check_rank_consistency(self) -> list[str]:
        """Digests of G, D, G_ema parameters and augment p on every rank (collective); raises if ranks differ."""
        mine = "/".join(param_digest(m)[:16] for m in (self.G, self.D, self.G_ema)) + f"/p={self.augment_p():.9g}"
        digests = self._gather(mine)
        if len(set(digests)) != 1:
            raise RuntimeError(f"processes diverged: parameter digests per rank {digests}")
        return digests

    def save_snapshot(self, *, commit: bool = True) -> dict:
        """Collective: every rank calls it; rank 0 writes fakes<tag>.png, the G_ema snapshot and the
        training state, then (commit=True) points latest.json at them."""
        rng = self._gather(snap_io.get_rng_state())
        info: dict[str, Any] = {}
        if self.world_size > 1:
            info["rank_digests"] = self.check_rank_consistency()
        if self.rank != 0 or self.run_dir is None:
            return info
        tag = snap_io.snapshot_tag(self.cur_nimg)
        save_image_grid(self.render_grid(), self.run_dir / f"fakes{tag}.png", grid=self.grid)
        net_name = f"network-snapshot-{tag}.safetensors"
        state_name = f"training-state-{tag}.pt"
        provenance = dict(trainer="training.stylegan2", run_dir=self.run_dir.name, cfg=self.options.get("cfg"),
                          dataset=self.options.get("data", {}).get("name"), kimg=self.cur_nimg / 1000,
                          step=self.batch_idx, augment_p=self.augment_p(), seed=self.options.get("random_seed"))
        if (total := snap_io.total_kimg(self.options, self.cur_nimg)) is not None:  # went on from a snapshot
            provenance["kimg_total"] = total
        G_ema = self.G_ema
        if self.device.type != "cpu":
            G_ema = copy.deepcopy(self.G_ema).cpu()
            G_ema.init_kwargs = self.G_ema.init_kwargs
        save_generator(G_ema, self.run_dir / net_name, provenance=provenance)
        snap_io.atomic_torch_save(self.state_dict(rng=rng), self.run_dir / state_name)
        info.update(snapshot=tag, network=net_name, state=state_name)
        if commit:
            self.commit_snapshot(info)
        return info

    def commit_snapshot(self, info: dict) -> None:
        """Point latest.json at a written snapshot, then drop training states beyond --keep-states."""
        if self.rank != 0 or self.run_dir is None or "state" not in info:
            return
        snap_io.write_latest(self.run_dir, network=info["network"], state=info["state"], cur_nimg=self.cur_nimg,
                             step=self.batch_idx, tick=self.cur_tick)
        keep = int(self.options.get("keep_states") or 0)
        if keep > 0:
            states = sorted(self.run_dir.glob("training-state-*.pt"),
                            key=lambda p: snap_io.parse_tag(p.name) or -1)
            for old in states[:-keep]:
                if old.name != info["state"]:
                    old.unlink(missing_ok=True)

    # -- logging ---------------------------------------------------------------------------------

    def _append_stats(self, record: dict) -> None:
        if self.rank != 0 or self.run_dir is None:
            return
        with open(self.run_dir / "stats.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _plot(self) -> None:
        if self.rank != 0 or self.run_dir is None:
            return
        plot_stats(read_stats(self.run_dir / "stats.jsonl"), self.run_dir / "stats.png",
                   title=f"{self.run_dir.name}: losses and augment p vs kimg")

    def _prepare_resumed_log(self) -> None:
        """After resuming an interrupted run: drop log lines past the snapshot (that progress is
        redone) and a partial last line, then note the resume."""
        path = self.run_dir / "stats.jsonl"
        if path.is_file():
            keep = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and int(rec.get("step", 0)) <= self.batch_idx:
                    keep.append(json.dumps(rec, sort_keys=True))
            snap_io.atomic_write_bytes(path, ("\n".join(keep) + "\n" if keep else "").encode("utf-8"))

    # -- the loop --------------------------------------------------------------------------------

    def run(self) -> dict:
        """Train until total_kimg; returns the last tick's record."""
        o = self.options
        total_nimg = int(round(float(o["total_kimg"]) * 1000))
        kimg_per_tick = float(o["kimg_per_tick"])
        snap = o.get("snap")
        is_resume = self.resumed_from is not None and self.batch_idx > 0
        if self.rank == 0 and self.run_dir is not None:
            snap_io.clean_temp_files(self.run_dir)
            if is_resume:
                self._prepare_resumed_log()
                self._append_stats(dict(event="resume", step=self.batch_idx, kimg=self.cur_nimg / 1000,
                                        batch=self.batch_size,
                                        device=device_description(self.device),
                                        next_tick=self.cur_tick, p=self.augment_p(), source=self.resumed_from,
                                        timestamp=time.time()))
                self._log(f"resumed {self.resumed_from} at step {self.batch_idx}, kimg {self.cur_nimg / 1000:g}, "
                          f"p {self.augment_p():.4f}")
            else:
                self._append_stats(dict(event="start", step=0, kimg=0.0, world_size=self.world_size,
                                        device=device_description(self.device),
                                        source=self.resumed_from, timestamp=time.time()))
                reals = np.stack([self.training_set[int(i)][0] for i in self.grid_idx])
                save_image_grid(reals, self.run_dir / "reals.png", grid=self.grid, drange=(0, 255))
                save_image_grid(self.render_grid(), self.run_dir / "fakes_init.png", grid=self.grid)

        if self.cur_nimg >= total_nimg:
            if self.rank == 0:
                self._log(f"nothing to do: the run is at kimg {self.cur_nimg / 1000:g}, --kimg is "
                          f"{total_nimg / 1000:g}")
            return {}

        pbar = None
        if self.progress:
            from tqdm import tqdm

            tty = sys.stderr.isatty()
            pbar = tqdm(total=total_nimg, initial=self.cur_nimg, unit="img", unit_scale=True, dynamic_ncols=True,
                        desc=self.run_dir.name if self.run_dir is not None else "train", file=sys.stderr,
                        mininterval=0.5 if tty else 60, smoothing=0.05)
        write = (lambda s: pbar.write(s, file=sys.stdout)) if pbar is not None else self._log
        tick_start_time = time.time()
        last = {}
        try:
            while True:
                with cpu_conv_dtype(self.cpu_conv_dtype):
                    self.train_step()
                if pbar is not None:
                    pbar.update(self.batch_size)
                done = self.cur_nimg >= total_nimg
                tick_end = (done or self.cur_tick == 0
                            or self.cur_nimg >= self.tick_start_nimg + kimg_per_tick * 1000)
                if self.world_size == 1:
                    stopping = self.stop_signal is not None
                else:
                    stopping = self._agree_to_stop()
                if not (tick_end or stopping):
                    continue
                done = done or stopping

                # End of a tick.
                tick_time = time.time() - tick_start_time
                self.total_sec += tick_time
                tick_nimg = self.cur_nimg - self.tick_start_nimg
                tick_no = self.cur_tick
                stats = self.stats.collect(self.world_size)
                self.cur_tick += 1
                self.tick_start_nimg = self.cur_nimg
                record = dict(tick=tick_no, step=self.batch_idx, kimg=self.cur_nimg / 1000,
                              sec=round(self.total_sec, 3), sec_per_tick=round(tick_time, 3),
                              img_per_sec=round(tick_nimg / max(tick_time, 1e-9), 3), p=self.augment_p(),
                              timestamp=time.time(), **stats)
                if self.ada is not None and self.ada.rt is not None:
                    record["ada_rt"] = self.ada.rt
                if self.cpu_conv_dtype is not None and self.device.type == "cpu":
                    record["cpu_conv_dtype"] = str(self.cpu_conv_dtype).replace("torch.", "")
                snapshot = bool(snap) and (done or tick_no % int(snap) == 0)
                if snapshot:
                    record.update(self.save_snapshot(commit=False))
                    if self.metrics_fn is not None and self.rank == 0 and not stopping:  # stop fast
                        record["metrics"] = self.metrics_fn(self.G_ema, self.cur_nimg / 1000)
                # The log line goes before latest.json: a crash in between re-runs (and re-logs) this tick.
                self._append_stats(record)
                if snapshot:
                    self.commit_snapshot(record)
                    self._plot()
                if self.rank == 0:
                    write(self._format_tick(record))
                    if pbar is not None:
                        pbar.set_postfix(p=f"{record['p']:.3f}", G=f"{stats.get('Loss/G/loss', float('nan')):.3f}",
                                         D=f"{stats.get('Loss/D/loss', float('nan')):.3f}")
                last = record
                tick_start_time = time.time()
                if stopping:
                    last = dict(record, stopped=signal.Signals(self.stop_signal or signal.SIGINT).name)
                    if self.rank == 0:
                        write(f"stopped by {last['stopped']} at kimg {self.cur_nimg / 1000:g} (step {self.batch_idx})"
                              + (f"; continue with --resume {self.run_dir}" if self.run_dir is not None else ""))
                if done:
                    break
        finally:
            if pbar is not None:
                pbar.close()
            self.close()
        return last

    @staticmethod
    def _format_tick(r: dict) -> str:
        def f(key, fmt):
            return format(r[key], fmt) if key in r else "-"

        s = (f"tick {r['tick']:<5d} kimg {r['kimg']:<9.3f} step {r['step']:<7d} sec/tick {r['sec_per_tick']:<8.1f} "
             f"img/s {r['img_per_sec']:<7.2f} p {r['p']:<6.3f} G {f('Loss/G/loss', '.3f')} D {f('Loss/D/loss', '.3f')} "
             f"R1 {f('Loss/r1_penalty', '.3g')} PL {f('Loss/pl_penalty', '.3g')}")
        if "snapshot" in r:
            s += f"  -> snapshot {r['snapshot']}"
        return s
