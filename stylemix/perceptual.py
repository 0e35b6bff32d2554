"""Image distances used by inversion: LPIPS-VGG16 when its weights exist, an offline fallback otherwise.

    d = distance(a, b)            # a, b: float NCHW in [-1, 1], same shape, >= 16 px -> [N], differentiable
    which()                       # 'lpips' or 'offline': what distance(a, b) runs here
    describe()                    # one line saying which distance runs, with the files it uses

`kind='lpips'` (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric", v0.1, VGG16 trunk) needs two files:

- torchvision's ImageNet VGG16 weights `vgg16-397923af.pth` (528 MiB). Looked up, in order: the
  `vgg16_path=` argument, `$STYLEMIX_VGG16`, the stylemix cache entry `vgg16-imagenet` (in the
  registry; `python -m stylemix fetch vgg16-imagenet` or `stylemix.pretrained.fetch('vgg16-imagenet')` downloads and checks it), torch hub's cache
  (`$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth`, checked by size). Nothing is downloaded
  implicitly. The network is this project's own `VGG16Features` whose layers are named like
  torchvision's (`features.N.weight`), so the file loads with `torch.load(weights_only=True)`.
- LPIPS's learned linear weights `lpips/weights/v0.1/vgg.pth` (7 KiB): the `lpips_path=` argument,
  `$STYLEMIX_LPIPS_WEIGHTS`, or the file inside the installed `lpips` package (found with
  `importlib.util.find_spec`, never imported: it needs torchvision). `pip install --no-deps lpips==0.1.4`.

LPIPS: inputs scaled by LPIPS's ScalingLayer (shift [-.030, -.088, -.188], scale [.458, .448, .450]),
inputs larger than 256 px area-downsampled to 256 (as the official StyleGAN2-ADA projector does),
VGG16 relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 activations, each unit-normalised over channels,
squared difference weighted per channel by the linear layer, spatially averaged, summed over layers.

`kind='offline'` (the normal case on machines without the VGG weights) is a documented weighted sum:

    d = 0.5 * L1 + 0.5 * L2 + 0.5 * (1 - SSIM_ms) + 1.0 * F

- L1, L2: mean absolute / squared pixel difference (images in [-1, 1]), averaged over three scales
  (1x, 1/2, 1/4; 2x2 average pooling).
- SSIM_ms: MS-SSIM-style structure term on images mapped to [0, 1]: Gaussian window (sigma 1.5,
  7 taps, reflect padding), C1 = 0.01^2, C2 = 0.03^2; the contrast-structure term at 1x and 1/2 and
  the full SSIM at 1/4, averaged (arithmetic mean rather than MS-SSIM's weighted product, which is
  undefined for negative terms and not smooth to optimise).
- F: feature distance on the shipped attribute classifier's trunk (`load_classifier('synthfaces64')`,
  inputs resized to its 64 px): the stem and every stage output, unit-normalised over channels like
  LPIPS, squared difference summed over channels, averaged spatially, averaged over the layers.

Both distances are symmetric, 0 for identical images and differentiable with respect to both inputs.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "distance", "which", "describe", "get_metric", "VGG16Features", "LPIPSMetric", "OfflineMetric",
    "find_vgg16", "find_lpips_weights", "KINDS",
    "VGG16_ENV", "LPIPS_ENV", "OFFLINE_WEIGHTS",
]

KINDS = ("auto", "lpips", "offline")
VGG16_ENV = "STYLEMIX_VGG16"             # path to vgg16-397923af.pth
LPIPS_ENV = "STYLEMIX_LPIPS_WEIGHTS"     # path to lpips/weights/v0.1/vgg.pth
MIN_RESOLUTION = 16

# ------------------------------------------------------------------------------------------------
# The VGG16 weights are the registry entry `vgg16-imagenet` (stylemix.pretrained).

VGG16_NAME = "vgg16-imagenet"
VGG16_FILE = "vgg16-397923af.pth"


# ------------------------------------------------------------------------------------------------
# Networks

_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
_LPIPS_TAPS = (3, 8, 15, 22, 29)               # features.N indices of relu1_2 .. relu5_3
_LPIPS_CHANNELS = (64, 128, 256, 512, 512)
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)        # LPIPS ScalingLayer (inputs in [-1, 1])
_LPIPS_SCALE = (0.458, 0.448, 0.450)
_LPIPS_MAX_RES = 256                           # larger inputs are area-downsampled to this


class VGG16Features(nn.Module):
    """VGG16's convolutional part, modules numbered like torchvision's `vgg16().features`."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for v in _VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(c_in, v, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
                c_in = v
        self.features = nn.Sequential(*layers)

    def taps(self, x: torch.Tensor, taps=_LPIPS_TAPS) -> list[torch.Tensor]:
        """Activations after the given features.N modules (default: LPIPS's five ReLUs)."""
        out = []
        last = max(taps)
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in taps:
                out.append(x)
            if i == last:
                break
        return out

    def load_torchvision(self, path) -> "VGG16Features":
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{str(path)!r} is not a VGG16 state dict")
        feats = {k: v for k, v in state.items() if k.startswith("features.")}
        if not feats:
            raise ValueError(f"{str(path)!r} has no 'features.*' keys (not torchvision's VGG16 layout)")
        try:
            self.load_state_dict(feats, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{str(path)!r} does not fit VGG16: {exc}") from None
        return self


def _unit_normalise(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """x / ||x|| over channels (LPIPS's normalize_tensor); the tiny term inside the sqrt keeps the
    gradient finite where every channel is 0 (ReLU outputs)."""
    return x / (torch.sqrt(x.square().sum(dim=1, keepdim=True) + 1e-20) + eps)


def _check_images(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 4 or x.shape[1] != 3:
        desc = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a float NCHW tensor with 3 channels in [-1, 1], got {desc}")
    if min(x.shape[2], x.shape[3]) < MIN_RESOLUTION:
        raise ValueError(f"{name} must be at least {MIN_RESOLUTION}x{MIN_RESOLUTION}, got "
                         f"{x.shape[2]}x{x.shape[3]}")


class _Metric:
    """embed(x) once per image, compare(ea, eb) -> [N]; distance = compare(embed(a), embed(b))."""
    kind = "?"

    def embed(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def compare(self, ea: list[torch.Tensor], eb: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        _check_images(a, "a")
        _check_images(b, "b")
        if a.shape != b.shape:
            raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        return self.compare(self.embed(a), self.embed(b))

    def describe(self) -> str:
        raise NotImplementedError


class LPIPSMetric(_Metric):
    kind = "lpips"

    def __init__(self, vgg16_path, lpips_path):
        self.vgg16_path, self.lpips_path = str(vgg16_path), str(lpips_path)
        self.vgg = VGG16Features().load_torchvision(vgg16_path).eval().requires_grad_(False)
        lin = torch.load(str(lpips_path), map_location="cpu", weights_only=True)
        weights = []
        for i, c in enumerate(_LPIPS_CHANNELS):
            w = lin.get(f"lin{i}.model.1.weight") if isinstance(lin, dict) else None
            if w is None or tuple(w.shape) != (1, c, 1, 1):
                raise ValueError(f"{self.lpips_path!r} is not LPIPS v0.1 VGG linear weights "
                                 f"(lin{i}.model.1.weight [1, {c}, 1, 1] missing or misshapen)")
            weights.append(w.detach().float().reshape(1, c, 1, 1))
        self.lin = weights
        self.shift = torch.tensor(_LPIPS_SHIFT).reshape(1, 3, 1, 1)
        self.scale = torch.tensor(_LPIPS_SCALE).reshape(1, 3, 1, 1)

    def embed(self, x):
        dev = x.device
        if self.shift.device != dev:
            self.vgg.to(dev)
            self.shift, self.scale = self.shift.to(dev), self.scale.to(dev)
            self.lin = [w.to(dev) for w in self.lin]
        x = x.float()
        if x.shape[2] > _LPIPS_MAX_RES:
            x = F.interpolate(x, size=(_LPIPS_MAX_RES, _LPIPS_MAX_RES), mode="area")
        x = (x - self.shift) / self.scale
        return [_unit_normalise(f) for f in self.vgg.taps(x)]

    def compare(self, ea, eb):
        total = 0
        for fa, fb, w in zip(ea, eb, self.lin):
            total = total + ((fa - fb).square() * w).sum(dim=1).mean(dim=(1, 2))
        return total

    def describe(self):
        return f"lpips: LPIPS v0.1 VGG16 (vgg16={self.vgg16_path}, lin={self.lpips_path})"


OFFLINE_WEIGHTS = {"l1": 0.5, "l2": 0.5, "ssim": 0.5, "features": 1.0}
_OFFLINE_SCALES = 3            # 1x, 1/2, 1/4
_SSIM_SIGMA, _SSIM_TAPS = 1.5, 7
_SSIM_C1, _SSIM_C2 = 0.01 ** 2, 0.03 ** 2


def _gauss_window(device, dtype) -> torch.Tensor:
    r = torch.arange(_SSIM_TAPS, device=device, dtype=dtype) - (_SSIM_TAPS - 1) / 2
    g = torch.exp(-r.square() / (2 * _SSIM_SIGMA ** 2))
    return g / g.sum()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    p = _SSIM_TAPS // 2
    x = F.pad(x, (p, p, p, p), mode="reflect" if min(x.shape[2:]) > p else "replicate")
    x = F.conv2d(x, g.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, g.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _ssim_terms(a: torch.Tensor, b: torch.Tensor, full: bool) -> torch.Tensor:
    """Mean SSIM (full) or contrast-structure term per image, a and b in [0, 1]. Symmetric in a, b."""
    g = _gauss_window(a.device, a.dtype)
    mu_a, mu_b = _blur(a, g), _blur(b, g)
    var_a = _blur(a * a, g) - mu_a * mu_a
    var_b = _blur(b * b, g) - mu_b * mu_b
    cov = _blur(a * b, g) - mu_a * mu_b
    cs = (2 * cov + _SSIM_C2) / (var_a + var_b + _SSIM_C2)
    if full:
        cs = cs * (2 * mu_a * mu_b + _SSIM_C1) / (mu_a * mu_a + mu_b * mu_b + _SSIM_C1)
    return cs.mean(dim=(1, 2, 3))


class OfflineMetric(_Metric):
    kind = "offline"

    def __init__(self, classifier="synthfaces64", weights=None):
        from .attributes import load_classifier
        self.weights = dict(OFFLINE_WEIGHTS if weights is None else weights)
        self.classifier_name = str(classifier)
        clf = load_classifier(classifier)
        self.net = clf.net
        self.resolution = clf.resolution

    def _trunk(self, x):
        net = self.net
        if next(net.parameters()).device != x.device:
            net.to(x.device)
        if x.shape[2] != self.resolution or x.shape[3] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear",
                              antialias=x.shape[2] > self.resolution, align_corners=False)
        h = net.stem(x)
        out = [h]
        for stage in net.stages:
            h = stage(h)
            out.append(h)
        return out

    def embed(self, x):
        x = x.float()
        pyr = [x]
        for _ in range(_OFFLINE_SCALES - 1):
            pyr.append(F.avg_pool2d(pyr[-1], 2))
        feats = [_unit_normalise(f) for f in self._trunk(x)] if self.weights.get("features", 0) else []
        return pyr + feats

    def terms(self, ea, eb) -> dict:
        """The unweighted terms, each [N]."""
        pa, pb = ea[:_OFFLINE_SCALES], eb[:_OFFLINE_SCALES]
        fa, fb = ea[_OFFLINE_SCALES:], eb[_OFFLINE_SCALES:]
        l1 = sum((x - y).abs().mean(dim=(1, 2, 3)) for x, y in zip(pa, pb)) / _OFFLINE_SCALES
        l2 = sum((x - y).square().mean(dim=(1, 2, 3)) for x, y in zip(pa, pb)) / _OFFLINE_SCALES
        ssim = sum(_ssim_terms((x + 1) / 2, (y + 1) / 2, full=(i == _OFFLINE_SCALES - 1))
                   for i, (x, y) in enumerate(zip(pa, pb))) / _OFFLINE_SCALES
        out = {"l1": l1, "l2": l2, "ssim": 1 - ssim}
        if fa:
            out["features"] = sum((x - y).square().sum(dim=1).mean(dim=(1, 2)) for x, y in zip(fa, fb)) / len(fa)
        return out

    def compare(self, ea, eb):
        t = self.terms(ea, eb)
        return sum(self.weights.get(k, 0) * v for k, v in t.items())

    def describe(self):
        w = ", ".join(f"{k} {v:g}" for k, v in self.weights.items())
        return (f"offline: multi-scale pixel L1/L2 + MS-SSIM-style structure + {self.classifier_name} "
                f"classifier-trunk features (weights: {w}); LPIPS-VGG16 weights not found")


# ------------------------------------------------------------------------------------------------
# Locating weights, choosing and caching the metric

def _given_file(path, env_var: str, what: str) -> Path | None:
    """The file named by the argument, else by $env_var; None when neither names one.
    A name that is not a file is an error, never a silent fallback."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ValueError(f"{what} weights not found at {str(p)!r}")
        return p
    env = os.environ.get(env_var)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise ValueError(f"${env_var} names {str(p)!r}, which is not a file")
        return p
    return None


def find_vgg16(vgg16_path=None) -> Path | None:
    """The VGG16 weights file to use, or None (see the module docstring for the search order)."""
    p = _given_file(vgg16_path, VGG16_ENV, "VGG16")
    if p is not None:
        return p
    from . import pretrained
    p = pretrained.cached_path(VGG16_NAME)
    if p.is_file():
        return pretrained.resolve(VGG16_NAME)  # checks size and sha256 (once per process)
    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")).expanduser()
    p = hub / "hub" / "checkpoints" / VGG16_FILE
    if p.is_file() and p.stat().st_size == pretrained.get_entry(VGG16_NAME).size:
        return p
    return None


def find_lpips_weights(lpips_path=None) -> Path | None:
    p = _given_file(lpips_path, LPIPS_ENV, "LPIPS")
    if p is not None:
        return p
    try:
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        return None
    p = Path(spec.origin).parent / "weights" / "v0.1" / "vgg.pth"
    return p if p.is_file() else None


_CACHE: dict[tuple, _Metric] = {}
_LOCK = threading.Lock()


def _resolve(kind, vgg16_path, lpips_path) -> tuple:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "offline":
        return ("offline",)
    vgg, lin = find_vgg16(vgg16_path), find_lpips_weights(lpips_path)
    if vgg is not None and lin is not None:
        return ("lpips", str(vgg), str(lin))
    if kind == "lpips":
        missing = []
        if vgg is None:
            missing.append(f"VGG16 weights ({VGG16_FILE}: set ${VGG16_ENV}, pass vgg16_path=, or run "
                           f"stylemix.pretrained.fetch({VGG16_NAME!r}))")
        if lin is None:
            missing.append(f"LPIPS linear weights (pip install --no-deps lpips==0.1.4, or set ${LPIPS_ENV})")
        raise ValueError("kind='lpips' needs " + " and ".join(missing))
    return ("offline",)


def get_metric(kind: str = "auto", *, vgg16_path=None, lpips_path=None) -> _Metric:
    """The (cached) metric object `distance()` uses: `.embed(x)`, `.compare(ea, eb)`, `.describe()`."""
    key = _resolve(kind, vgg16_path, lpips_path)
    with _LOCK:
        m = _CACHE.get(key)
        if m is None:
            m = LPIPSMetric(key[1], key[2]) if key[0] == "lpips" else OfflineMetric()
            _CACHE[key] = m
        return m


def distance(a: torch.Tensor, b: torch.Tensor, *, kind: str = "auto", vgg16_path=None,
             lpips_path=None) -> torch.Tensor:
    """Perceptual distance [N] between float NCHW images in [-1, 1] (same shape, >= 16 px).

    kind: 'auto' (LPIPS-VGG16 when both weight files are found, else offline), 'lpips', 'offline'.
    Differentiable with respect to both inputs; the networks' parameters are frozen."""
    return get_metric(kind, vgg16_path=vgg16_path, lpips_path=lpips_path)(a, b)


def which(kind: str = "auto", *, vgg16_path=None, lpips_path=None) -> str:
    """'lpips' or 'offline': which distance `distance(..., kind=kind)` runs (loads nothing big)."""
    return _resolve(kind, vgg16_path, lpips_path)[0]


def describe(kind: str = "auto", *, vgg16_path=None, lpips_path=None) -> str:
    """One line naming the distance that runs and the files it uses."""
    return get_metric(kind, vgg16_path=vgg16_path, lpips_path=lpips_path).describe()
