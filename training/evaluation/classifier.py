"""Train the attribute classifier on synthfaces renders and ship it with its held-out accuracy.

    python -m training.evaluation.classifier --res 64 --out pretrained/synthfaces64_classifier.safetensors \\
        --n-train 40000 --steps 6000 --seed 7100

What it does:

1. Renders the training faces (cached as .npy under ``--cache``, keyed by every setting that
   changes the pixels): face ``i`` is ``params_for(seed, i, stream=0, has_beard=b, shaved=s,
   nuisance=...)`` with ``b``, ``s`` drawn 50/50 from ``default_rng([seed, 1, i])`` (so all four
   beard x head combinations are equally common, the rare "both" included), glasses and smile at
   their natural rates. A share ``--widen`` of the faces gets nuisance (pose, scale, shift,
   light, exposure, white balance, pixel noise) drawn from ranges wider than synthfaces' own; a
   share ``--frac-hires`` is rendered at 2x the resolution and downsampled with the classifier's
   own resize (`stylemix.attributes.to_input`), as larger generator outputs will be.
2. Trains `stylemix.networks.attributes.AttributeNet` with augmentation (x-flip, small
   rotation/scale/shift, colour jitter, blur, down-up resampling, low-frequency colour blotches,
   pixel noise): BCE on the six labels of ``synthfaces.LABEL_NAMES`` + ``--id-weight`` x MSE on the
   standardised identity parameters. AdamW, linear warm-up then cosine decay.
3. Evaluates on fresh renders from other seeds (never seen in training), balanced over
   has_beard x shaved:
   - ``heldout``:  ``--n-eval`` faces, seed ``--eval-seed``, natural nuisance, rendered at ``--res``;
   - ``heldout_2x``: ``--n-eval // 2`` of the same faces rendered at 2x and resized by the classifier;
   - ``extreme_nuisance``: ``--n-eval`` faces, seed ``--nuisance-seed``, every numeric nuisance
     parameter pinned at one end of synthfaces' sampling range (rotation +-0.15, scale 0.9/1.1,
     shift +-0.06, light azimuth +-1, elevation 0.1/0.8, intensity 0.8/1.1, ambient 0.25/0.45,
     exposure 0.85/1.15, white balance 0.92/1.08 per channel, pixel noise 0.03), via
     ``sample_params(..., nuisance={...})``;
   - ``strong_nuisance``: the extreme faces, further degraded after rendering (Gaussian blur
     sigma 0.5-1.0, brightness +-8%, contrast x0.8-1.2, Gaussian noise 3-8/255, shift up to 2 px),
     deterministically from ``default_rng([nuisance_seed, 2, i])`` (`degrade`).
   Accuracy per label at threshold 0.5, plus the identity check: the mean embedding distance of
   one face to itself with other attributes (``with_attributes``) over the mean distance between
   different faces (``identity_pair_ratio``, lower is better).
4. Writes the weights (safetensors, metadata header: class, kwargs, label names, resolution,
   normalisation, identity names/means/stds, training and evaluation records) atomically, and
   adds/replaces its entry in ``pretrained/MANIFEST.json`` (sha256, size, accuracies, command,
   time, hardware, seeds) atomically, unless ``--no-manifest``.

Seeds reserved for the classifier (synthfaces seeds, any stream): 7100-7109. 7100 trains it,
7101 is its held-out set, 7102 its strong-nuisance set, 7103 its unit test
(tests/test_attributes.py). Evaluation code that scores generators with this classifier must not
render faces from these seeds (``RESERVED_SEEDS``).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from stylemix.fileio import atomic_write_text
from stylemix.attributes import load_classifier, save_classifier, to_input
from stylemix.networks.attributes import AttributeNet
from training.data import synthfaces as sf

__all__ = ["RESERVED_SEEDS", "identity_names", "identity_vector", "make_params", "degrade",
           "render_set", "augment", "evaluate", "update_manifest", "main"]

RESERVED_SEEDS = {"train": 7100, "heldout": 7101, "nuisance": 7102, "test": 7103}
RESERVED_RANGE = (7100, 7109)  # inclusive; keep other renders out of it
CACHE_VERSION = 1

# synthfaces' sampling ranges (sample_params) for the numeric nuisance entries, and the wider
# ranges a share of the training faces is drawn from.
NUISANCE_RANGES = {
    "light_azimuth": (-1.0, 1.0), "light_elevation": (0.1, 0.8), "light_intensity": (0.8, 1.1),
    "ambient": (0.25, 0.45), "rotation": (-0.15, 0.15), "scale": (0.9, 1.1), "exposure": (0.85, 1.15),
}
WIDE_RANGES = {
    "light_azimuth": (-1.2, 1.2), "light_elevation": (0.05, 0.9), "light_intensity": (0.7, 1.2),
    "ambient": (0.2, 0.5), "rotation": (-0.24, 0.24), "scale": (0.84, 1.16), "exposure": (0.75, 1.25),
    "shift": (-0.1, 0.1), "white_balance": (0.86, 1.14), "noise": (0.0, 0.05),
}


# ------------------------------------------------------------------------------------------------
# Faces

def identity_names() -> list:
    """Names of the continuous identity values (colours split into _r/_g/_b)."""
    ref = sf.params_for(0, 0)["identity"]
    out = []
    for k, v in ref.items():
        out += [f"{k}_{c}" for c in "rgb"] if isinstance(v, list) else [k]
    return out


def identity_vector(params: dict) -> list:
    out = []
    for v in params["identity"].values():
        out += [float(x) for x in v] if isinstance(v, list) else [float(v)]
    return out


def _extreme_nuisance(r: np.random.Generator) -> dict:
    def pick(lo, hi):
        return float(lo if r.random() < 0.5 else hi)
    nu = {k: pick(*v) for k, v in NUISANCE_RANGES.items()}
    nu["shift"] = [pick(-0.06, 0.06), pick(-0.06, 0.06)]
    nu["white_balance"] = [pick(0.92, 1.08) for _ in range(3)]
    nu["noise"] = 0.03
    return nu


def _wide_nuisance(r: np.random.Generator) -> dict:
    nu = {k: float(r.uniform(*WIDE_RANGES[k])) for k in NUISANCE_RANGES}
    nu["shift"] = [float(r.uniform(*WIDE_RANGES["shift"])) for _ in range(2)]
    nu["white_balance"] = [float(r.uniform(*WIDE_RANGES["white_balance"])) for _ in range(3)]
    nu["noise"] = float(r.uniform(*WIDE_RANGES["noise"]))
    return nu


def make_params(seed: int, n: int, *, mode: str = "natural", widen: float = 0.0) -> list:
    """Face parameters balanced over has_beard x shaved. mode: 'natural' (synthfaces' nuisance,
    of which a share `widen` is redrawn from WIDE_RANGES) or 'extreme' (NUISANCE_RANGES' ends)."""
    if mode not in ("natural", "extreme"):
        raise ValueError(f"mode must be 'natural' or 'extreme', got {mode!r}")
    out = []
    for i in range(n):
        r = np.random.default_rng([seed, 1, i])
        pins = {"has_beard": bool(r.random() < 0.5), "shaved": bool(r.random() < 0.5)}
        w = r.random()
        if mode == "extreme":
            pins["nuisance"] = _extreme_nuisance(r)
        elif w < widen:
            pins["nuisance"] = _wide_nuisance(r)
        out.append(sf.params_for(seed, i, stream=0, **pins))
    return out


def _render_job(job):
    plist, res = job
    return sf.render_many(plist, res)


def _pool_init():
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[k] = "1"
    torch.set_num_threads(1)


def downsample_uint8(images: np.ndarray, res: int, *, batch: int = 256) -> np.ndarray:
    """uint8 NHWC -> uint8 NHWC at res, through the classifier's own resize (to_input)."""
    out = np.empty((len(images), res, res, 3), np.uint8)
    for k in range(0, len(images), batch):
        with torch.no_grad():
            t = to_input(images[k:k + batch], res)
        out[k:k + batch] = ((t.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def render_set(params: list, res: int, *, hires: np.ndarray | None = None, workers: int = 1,
               progress: bool = True, desc: str = "render") -> np.ndarray:
    """Render params at `res` (faces where `hires` is True: at 2*res, then downsampled)."""
    from tqdm import tqdm

    n = len(params)
    hires = np.zeros(n, bool) if hires is None else np.asarray(hires, bool)
    out = np.empty((n, res, res, 3), np.uint8)
    chunk = 128
    jobs, where = [], []
    for flag, r in ((False, res), (True, 2 * res)):
        idx = np.flatnonzero(hires == flag)
        for k in range(0, len(idx), chunk // (4 if flag else 1)):
            sel = idx[k:k + chunk // (4 if flag else 1)]
            jobs.append(([params[i] for i in sel], r))
            where.append(sel)
    pool = None
    if workers > 1:
        import multiprocessing as mp
        pool = mp.get_context("spawn").Pool(workers, initializer=_pool_init)
    bar = tqdm(total=n, desc=desc, unit="img", disable=not progress, dynamic_ncols=True, mininterval=2.0)
    try:
        results = pool.imap(_render_job, jobs) if pool is not None else map(_render_job, jobs)
        for sel, imgs in zip(where, results):
            out[sel] = imgs if imgs.shape[1] == res else downsample_uint8(imgs, res)
            bar.update(len(sel))
        if pool is not None:
            pool.close()
            pool.join()
            pool = None
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    return out


CACHE_HITS: list = []  # cache folders read instead of rendering, in this process


def _cached(cache: Path | None, key: dict, build):
    """build() -> dict of arrays, stored as .npy files in cache/<hash of key>/."""
    if cache is None:
        return build()
    h = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    d = cache / h
    if (d / "done").exists():
        CACHE_HITS.append(str(d))
        return {p.stem: np.load(p) for p in d.glob("*.npy")}
    arrays = build()
    tmp = cache / f".{h}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    for k, v in arrays.items():
        np.save(tmp / f"{k}.npy", v)
    (tmp / "key.json").write_text(json.dumps(key, indent=1))
    (tmp / "done").write_text("")
    if d.exists():
        import shutil
        shutil.rmtree(d)
    os.replace(tmp, d)
    return arrays


def _synthfaces_hash() -> str:
    return hashlib.sha1(Path(sf.__file__).read_bytes()).hexdigest()[:12]


def training_set(seed: int, n: int, res: int, *, widen: float, frac_hires: float, workers: int,
                 cache: Path | None, progress: bool = True) -> dict:
    key = {"v": CACHE_VERSION, "set": "train", "seed": seed, "n": n, "res": res, "widen": widen,
           "frac_hires": frac_hires, "synthfaces": _synthfaces_hash()}

    def build():
        params = make_params(seed, n, mode="natural", widen=widen)
        hires = np.random.default_rng([seed, 3]).random(n) < frac_hires
        images = render_set(params, res, hires=hires, workers=workers, progress=progress, desc="train renders")
        return {"images": images, "labels": np.asarray([sf.labels_of(p) for p in params], np.float32),
                "identity": np.asarray([identity_vector(p) for p in params], np.float32)}
    return _cached(cache, key, build)


def degrade(images: np.ndarray, seed: int) -> np.ndarray:
    """Strong post-render nuisance, deterministic per image i from default_rng([seed, 2, i]):
    Gaussian blur sigma 0.5-1.0, brightness +-8%, contrast x0.8-1.2, Gaussian noise 3-8/255,
    integer shift up to 2 px (edge pixels repeated)."""
    out = np.empty_like(images)
    for i, im in enumerate(images):
        r = np.random.default_rng([seed, 2, i])
        x = torch.from_numpy(im.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
        sigma = r.uniform(0.5, 1.0)
        t = torch.arange(-3, 4, dtype=torch.float32)
        g = torch.exp(-t ** 2 / (2 * sigma ** 2))
        g = g / g.sum()
        x = F.pad(x, (3, 3, 3, 3), mode="replicate")
        x = F.conv2d(x, g.view(1, 1, 1, 7).repeat(3, 1, 1, 1), groups=3)
        x = F.conv2d(x, g.view(1, 1, 7, 1).repeat(3, 1, 1, 1), groups=3)
        m = x.mean()
        x = (x - m) * r.uniform(0.8, 1.2) + m + r.uniform(-0.08, 0.08)
        x = x + torch.from_numpy(r.standard_normal(x.shape).astype(np.float32)) * r.uniform(3, 8) / 255
        dy, dx = (int(v) for v in r.integers(-2, 3, size=2))
        h = x.shape[-1]
        x = F.pad(x, (2, 2, 2, 2), mode="replicate")[..., 2 + dy:2 + dy + h, 2 + dx:2 + dx + h]
        out[i] = (x[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return out


def eval_sets(res: int, n: int, *, eval_seed: int, nuisance_seed: int, workers: int,
              cache: Path | None, progress: bool = True) -> dict:
    """{name: {'images', 'labels'}} for heldout, heldout_2x, extreme_nuisance, strong_nuisance;
    plus 'pairs': the heldout faces' first n_pairs re-rendered with flipped beard/head."""
    key = {"v": CACHE_VERSION, "set": "eval", "res": res, "n": n, "eval_seed": eval_seed,
           "nuisance_seed": nuisance_seed, "synthfaces": _synthfaces_hash()}

    def build():
        held = make_params(eval_seed, n, mode="natural")
        ext = make_params(nuisance_seed, n, mode="extreme")
        n2 = n // 2
        n_pairs = min(n, 500)
        pairs = [sf.with_attributes(p, has_beard=not p["attributes"]["has_beard"],
                                    shaved=not p["attributes"]["shaved"]) for p in held[:n_pairs]]
        im_held = render_set(held, res, workers=workers, progress=progress, desc="heldout renders")
        im_2x = render_set(held[:n2], res, hires=np.ones(n2, bool), workers=workers, progress=progress,
                           desc="heldout 2x renders")
        im_ext = render_set(ext, res, workers=workers, progress=progress, desc="extreme renders")
        im_pairs = render_set(pairs, res, workers=workers, progress=progress, desc="pair renders")
        lab = lambda ps: np.asarray([sf.labels_of(p) for p in ps], np.float32)  # noqa: E731
        return {"heldout_images": im_held, "heldout_labels": lab(held),
                "heldout_2x_images": im_2x, "heldout_2x_labels": lab(held[:n2]),
                "extreme_nuisance_images": im_ext, "extreme_nuisance_labels": lab(ext),
                "strong_nuisance_images": degrade(im_ext, nuisance_seed), "strong_nuisance_labels": lab(ext),
                "pairs_images": im_pairs}
    a = _cached(cache, key, build)
    sets = {name: {"images": a[f"{name}_images"], "labels": a[f"{name}_labels"]}
            for name in ("heldout", "heldout_2x", "extreme_nuisance", "strong_nuisance")}
    sets["pairs"] = {"a": a["heldout_images"][:len(a["pairs_images"])], "b": a["pairs_images"]}
    return sets


# ------------------------------------------------------------------------------------------------
# Augmentation (torch, per batch, float NCHW in [-1, 1])

def _gauss_kernel(sigma: torch.Tensor, taps: int = 7) -> torch.Tensor:
    t = torch.arange(taps, dtype=torch.float32) - taps // 2
    g = torch.exp(-t[None] ** 2 / (2 * sigma[:, None] ** 2))
    return g / g.sum(1, keepdim=True)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    g = _gauss_kernel(sigma)  # [n, 7]
    k = g.repeat_interleave(c, 0)  # [n*c, 7]
    y = F.pad(x.reshape(1, n * c, h, w), (3, 3, 3, 3), mode="replicate")
    y = F.conv2d(y, k.view(n * c, 1, 1, 7), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, 7, 1), groups=n * c)
    return y.view(n, c, h, w)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """x-flip, rotation/scale/shift, colour jitter, blur, down-up resampling, colour blotches, noise."""
    n, _, h, _ = x.shape
    dev = x.device

    def u(lo, hi, *shape):
        return torch.rand(*(shape or (n,)), generator=g, device=dev) * (hi - lo) + lo

    def p(prob):
        return torch.rand(n, generator=g, device=dev) < prob

    flip = p(0.5)
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    # geometry: rotation +-8 deg, scale 0.92-1.08, shift +-4 px (one bilinear resampling)
    m = p(0.7).float()
    ang = u(-0.14, 0.14) * m
    sc = 1 + u(-0.08, 0.08) * m
    tx, ty = u(-4, 4) * m * 2 / h, u(-4, 4) * m * 2 / h
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = torch.where(m.bool()[:, None, None, None],
                    F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False), x)
    # colour: brightness, contrast, saturation, per-channel gain
    cm = p(0.8).float()[:, None, None, None]
    y = (x + 1) / 2
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = (y - mean) * (1 + (u(0.7, 1.35) - 1)[:, None, None, None] * cm) + mean
    y = y + u(-0.12, 0.12)[:, None, None, None] * cm
    grey = y.mean(1, keepdim=True)
    y = grey + (y - grey) * (1 + (u(0.5, 1.5) - 1)[:, None, None, None] * cm)
    y = y * (1 + (u(0.88, 1.12, n, 3) - 1)[:, :, None, None] * cm)
    x = y * 2 - 1
    # blur
    b = p(0.35)
    if b.any():
        x[b] = _blur(x[b], u(0.3, 1.3)[b])
    # down-up resampling (low-resolution or upsampled generator output)
    du = p(0.15)
    if du.any():
        r = int(h * float(torch.empty(1).uniform_(0.5, 0.8, generator=g)))
        lo = F.interpolate(x[du], size=(r, r), mode="bilinear", antialias=True, align_corners=False)
        x[du] = F.interpolate(lo, size=(h, h), mode="bilinear", align_corners=False)
    # low-frequency colour blotches
    bl = p(0.2).float()[:, None, None, None]
    blot = F.interpolate(torch.randn(n, 3, 4, 4, generator=g, device=dev), size=(h, h), mode="bicubic",
                         align_corners=False)
    x = x + blot * u(0.0, 0.08)[:, None, None, None] * bl
    # pixel noise
    nm = p(0.5).float()[:, None, None, None]
    x = x + torch.randn(x.shape, generator=g, device=dev) * u(0.0, 0.08)[:, None, None, None] * nm
    return x.clamp(-1, 1)


# ------------------------------------------------------------------------------------------------
# Evaluation

@torch.no_grad()
def _probs(net: AttributeNet, images: np.ndarray, res: int, batch: int = 250) -> tuple:
    net.eval()
    P, E = [], []
    for k in range(0, len(images), batch):
        o = net(to_input(images[k:k + batch], res, clamp=True))
        P.append(torch.sigmoid(o["logits"]).numpy())
        E.append(o["identity"].numpy())
    return np.concatenate(P), np.concatenate(E)


def evaluate(net: AttributeNet, sets: dict, res: int, label_names) -> dict:
    """Accuracy per label on each set, and the identity pair ratio."""
    out = {}
    for name in ("heldout", "heldout_2x", "extreme_nuisance", "strong_nuisance"):
        s = sets[name]
        P, _ = _probs(net, s["images"], res)
        acc = ((P > 0.5) == (s["labels"] > 0.5)).mean(0)
        out[name] = {"n": int(len(P)), **{ln: round(float(a), 5) for ln, a in zip(label_names, acc)}}
    _, ea = _probs(net, sets["pairs"]["a"], res)
    _, eb = _probs(net, sets["pairs"]["b"], res)
    same = np.linalg.norm(ea - eb, axis=1).mean()
    diff = np.linalg.norm(ea - np.roll(eb, 1, axis=0), axis=1).mean()
    out["identity_pair_ratio"] = round(float(same / diff), 4)
    return out


# ------------------------------------------------------------------------------------------------
# Manifest

def manifest_relpath(out) -> str:
    """`out`'s path relative to pretrained/ (POSIX), for a `--manifest NAME` record; ValueError when
    the file would not be inside pretrained/."""
    from stylemix import pretrained

    try:
        return Path(out).resolve().relative_to(pretrained.PRETRAINED_DIR.resolve()).as_posix()
    except ValueError:
        raise ValueError(f"--manifest needs --out inside {pretrained.PRETRAINED_DIR}, got {str(out)!r}") from None


def update_manifest(manifest: Path, entry: dict) -> None:
    """Add `entry` to manifest['models'], replacing one of the same name; atomic rewrite."""
    manifest = Path(manifest)
    data = {"models": []}
    if manifest.exists():
        data = json.loads(manifest.read_text(encoding="utf-8"))
        if isinstance(data, list):
            data = {"models": data}
        data.setdefault("models", [])
    data["models"] = [m for m in data["models"] if m.get("name") != entry["name"]] + [entry]
    atomic_write_text(manifest, json.dumps(data, indent=2) + "\n")


def _hardware() -> str:
    from training.machine import hardware

    return hardware(torch.get_num_threads())


# ------------------------------------------------------------------------------------------------
# Training

def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


def train(args) -> int:
    from tqdm import tqdm

    t_start = time.time()
    torch.set_num_threads(args.threads)
    res = args.res
    seeds = {"train": args.seed, "heldout": args.eval_seed, "nuisance": args.nuisance_seed}
    if len(set(seeds.values())) != 3:
        raise ValueError(f"--seed, --eval-seed and --nuisance-seed must differ, got {seeds}")
    out = Path(args.out)
    if not out.parent.is_dir():
        raise ValueError(f"output folder {str(out.parent)!r} does not exist")
    cache = Path(args.cache) if args.cache else None
    progress = not args.quiet

    data = training_set(args.seed, args.n_train, res, widen=args.widen, frac_hires=args.frac_hires,
                        workers=args.workers, cache=cache, progress=progress)
    sets = eval_sets(res, args.n_eval, eval_seed=args.eval_seed, nuisance_seed=args.nuisance_seed,
                     workers=args.workers, cache=cache, progress=progress)
    t_data = time.time() - t_start
    label_names = list(sf.LABEL_NAMES)
    id_names = identity_names()
    images = torch.from_numpy(data["images"])  # uint8 NHWC
    labels = torch.from_numpy(data["labels"])
    ident = data["identity"]
    id_mean, id_std = ident.mean(0), ident.std(0) + 1e-6
    ident_z = torch.from_numpy((ident - id_mean) / id_std)
    n = len(images)

    torch.manual_seed(args.seed)
    net = AttributeNet(img_resolution=res, num_attributes=len(label_names), identity_dim=len(id_names),
                       channels=tuple(args.channels), blocks=tuple(args.blocks), feature_dim=args.feature_dim,
                       stem_stride=args.stem_stride)
    decay = [p for name, p in net.named_parameters() if p.ndim > 1]
    no_decay = [p for name, p in net.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    g = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(n, generator=g)
    pos = 0
    ema = None
    bar = tqdm(range(args.steps), desc="train", disable=not progress, dynamic_ncols=True, mininterval=5.0)
    t_train = time.time()
    net.train()
    for step in bar:
        if pos + args.batch > n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos:pos + args.batch]
        pos += args.batch
        x = images[idx].permute(0, 3, 1, 2).float() / 127.5 - 1
        x = augment(x, g)
        o = net(x)
        l_attr = F.binary_cross_entropy_with_logits(o["logits"], labels[idx])
        l_id = F.mse_loss(o["identity"], ident_z[idx])
        loss = l_attr + args.id_weight * l_id
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, args.steps, args.lr, args.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            acc = ((o["logits"][:, :2] > 0) == (labels[idx, :2] > 0.5)).float().mean(0)
            cur = torch.stack([l_attr, l_id, acc[0], acc[1]])
            ema = cur if ema is None else 0.98 * ema + 0.02 * cur
        if step % 50 == 0 or step == args.steps - 1:
            bar.set_postfix(bce=f"{ema[0]:.4f}", id=f"{ema[1]:.3f}", beard=f"{ema[2]:.3f}", shaved=f"{ema[3]:.3f}")
        if args.eval_every and step and step % args.eval_every == 0:
            r = evaluate(net, sets, res, label_names)
            net.train()
            bar.write(f"step {step}: " + json.dumps({k: ({kk: vv for kk, vv in v.items() if kk in ('has_beard', 'shaved')}
                                                         if isinstance(v, dict) else v) for k, v in r.items()}))
    bar.close()
    t_train = time.time() - t_train
    net.eval()
    results = evaluate(net, sets, res, label_names)
    elapsed = time.time() - t_start
    command = "python -m training.evaluation.classifier " + " ".join(shlex.quote(a) for a in args.argv)
    training = {
        "command": command, "seeds": {**seeds, "reserved_range": list(RESERVED_RANGE),
                                      "test": RESERVED_SEEDS["test"]},
        "n_train": args.n_train, "steps": args.steps, "batch": args.batch, "lr": args.lr,
        "widen": args.widen, "frac_hires": args.frac_hires, "id_weight": args.id_weight,
        "train_time_s": round(t_train, 1), "data_time_s": round(t_data, 1), "total_time_s": round(elapsed, 1),
        "renders_from_cache": bool(CACHE_HITS),
        "hardware": _hardware(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "synthfaces_sha1": _synthfaces_hash(),
    }
    save_classifier(out, net, label_names=label_names, identity_names=id_names, identity_mean=id_mean.tolist(),
                    identity_std=id_std.tolist(), training=training, evaluation=results)
    # check the file round-trips through the public loader before advertising it
    clf = load_classifier(out)
    p = clf.predict(sets["heldout"]["images"][:200])
    acc = float(((p["has_beard"] > 0.5) == (sets["heldout"]["labels"][:200, 0] > 0.5)).mean())
    assert abs(acc - results["heldout"]["has_beard"]) < 0.05 or len(p["has_beard"]) < 50, acc
    print(json.dumps(results, indent=1))
    size = out.stat().st_size
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"wrote {out} ({size} bytes, sha256 {sha}) in {elapsed / 60:.1f} min")
    if not args.no_manifest:  # the manifest next to the weights (pretrained/ for shipped models)
        manifest = out.parent / "MANIFEST.json"
        entry = {
            "name": args.name, "path": os.path.relpath(out, manifest.parent), "sha256": sha, "size": size,
            "resolution": res, "kind": "classifier",
            "licence": "same as the StyleMix repository; trained only on procedural synthfaces renders",
            "description": f"attribute classifier {res}x{res} ({', '.join(label_names)}) + identity embedding "
                           f"+ {net.init_kwargs['channels'][-1]}-d Fréchet features (pooled trunk), trained on synthfaces",
            "source_page": "training/evaluation/classifier.py",
            "made_by": command,
            "label_names": label_names,
            "accuracy": {k: v for k, v in results.items() if isinstance(v, dict)},
            "identity_pair_ratio": results["identity_pair_ratio"],
            "evaluation_sets": {
                "heldout": f"{args.n_eval} fresh renders, seed {args.eval_seed}, balanced has_beard x shaved, "
                           f"natural nuisance, rendered at {res}",
                "heldout_2x": f"first {args.n_eval // 2} heldout faces rendered at {2 * res}, resized by the classifier",
                "extreme_nuisance": f"{args.n_eval} renders, seed {args.nuisance_seed}, numeric nuisance pinned at "
                                    f"the ends of synthfaces' sampling ranges",
                "strong_nuisance": "extreme_nuisance + post-render blur, brightness/contrast, noise, shift (degrade())",
            },
            "command": command, "training_time_s": round(t_train, 1), "total_time_s": round(elapsed, 1),
            "data_time_s": round(t_data, 1), "renders_from_cache": bool(CACHE_HITS),
            "hardware": training["hardware"], "seeds": training["seeds"], "date": training["date"],
        }
        update_manifest(manifest, entry)
        print(f"updated {manifest}")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m training.evaluation.classifier",
                                 description="Train the synthfaces attribute classifier and ship it.")
    ap.add_argument("--res", type=int, default=64, help="input resolution (default 64)")
    ap.add_argument("--out", required=True, help="output .safetensors path")
    ap.add_argument("--name", default=None, help="manifest name (default synthfaces<res>-classifier)")
    ap.add_argument("--n-train", type=int, default=40000, help="training faces rendered (default 40000)")
    ap.add_argument("--steps", type=int, default=6000, help="optimiser steps (default 6000)")
    ap.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    ap.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    ap.add_argument("--warmup", type=int, default=200, help="warm-up steps (default 200)")
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--id-weight", type=float, default=0.5, help="weight of the identity MSE (default 0.5)")
    ap.add_argument("--seed", type=int, default=RESERVED_SEEDS["train"], help="training faces' seed (default 7100)")
    ap.add_argument("--eval-seed", type=int, default=RESERVED_SEEDS["heldout"], help="held-out seed (default 7101)")
    ap.add_argument("--nuisance-seed", type=int, default=RESERVED_SEEDS["nuisance"],
                    help="strong-nuisance seed (default 7102)")
    ap.add_argument("--n-eval", type=int, default=2000, help="faces per evaluation set (default 2000)")
    ap.add_argument("--widen", type=float, default=0.5, help="share of training faces with wider nuisance")
    ap.add_argument("--frac-hires", type=float, default=0.15, help="share rendered at 2x and downsampled")
    ap.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128],
                    help="stem channels, then one per stage (default 16 32 64 128)")
    ap.add_argument("--blocks", type=int, nargs="+", default=[1, 1, 1], help="ResBlocks per stage (default 1 1 1)")
    ap.add_argument("--stem-stride", type=int, default=2, help="stride of the stem conv (default 2)")
    ap.add_argument("--feature-dim", type=int, default=256, help="feature vector size (default 256)")
    ap.add_argument("--workers", type=int, default=2, help="render processes (default 2)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--cache", default="cache/classifier", help="render cache folder ('' for none)")
    ap.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (0: only at the end)")
    ap.add_argument("--no-manifest", action="store_true", help="do not touch pretrained/MANIFEST.json")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    args.argv = argv
    args.name = args.name or f"synthfaces{args.res}-classifier"
    try:
        if args.cache:
            Path(args.cache).mkdir(parents=True, exist_ok=True)
        return train(args)
    except KeyboardInterrupt:
        print("interrupted: nothing written", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
