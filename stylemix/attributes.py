"""Attribute classifier: probabilities per attribute, Fréchet features and an identity embedding.

    from stylemix.attributes import load_classifier
    clf = load_classifier("synthfaces64")          # a registered name (pretrained/MANIFEST.json) or a path
    p = clf.predict(images)                         # {'has_beard': [N], 'shaved': [N], ...} in [0, 1]
    f = clf.features(images)                        # [N, D] for Fréchet distances between image sets
    e = clf.identity(images)                        # [N, K] identity embedding (standardised units)
    lg = clf.logits(x)                              # differentiable: float NCHW tensor -> [N, A] logits

Images are either uint8 numpy arrays NHWC (or one HWC image) with values 0..255, or float NCHW
(torch tensor or numpy array) in [-1, 1], the generators' convention. Square images of any size
are resized to the classifier's resolution with antialiased bilinear interpolation (the same
function the classifier was trained with for its higher-resolution renders); anything else raises
ValueError naming the bad shape or dtype. `predict`, `features`, `identity` and `outputs` run in
batches (`batch_size`) under no_grad in eval mode and return numpy arrays; `logits` and `forward`
keep the autograd graph to the input (the network's own parameters never require grad), for
attribute-guided editing.

File format (safetensors; everything needed to rebuild the network is in the header metadata,
values JSON strings): ``format`` = ``stylemix.attribute_classifier``, ``format_version``,
``class`` (only ``AttributeNet`` is accepted: nothing is imported by name), ``kwargs``,
``label_names``, ``resolution``, ``normalisation``, ``identity_names``, ``identity_mean``,
``identity_std`` (the identity head predicts ``(param - mean) / std``), and free-form ``training``
and ``evaluation`` records. `save_classifier` writes it atomically (temporary file + rename).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from .fileio import atomic_write_bytes
from .networks.attributes import AttributeNet

__all__ = ["AttributeClassifier", "load_classifier", "save_classifier", "to_input", "FORMAT",
           "NORMALISATION"]

FORMAT = "stylemix.attribute_classifier"
FORMAT_VERSION = 1
NORMALISATION = ("RGB, float NCHW, x = uint8 / 127.5 - 1 (range [-1, 1]); other square sizes resized "
                 "with torch.nn.functional.interpolate(mode='bilinear', antialias=True, align_corners=False)")
_CLASSES = {"AttributeNet": AttributeNet}


# ------------------------------------------------------------------------------------------------
# Input conversion

CLASSIFIER_SUFFIX = "-classifier"  # registry name of a model's classifier: '<model>-classifier'

def _describe(images) -> str:
    shape = tuple(getattr(images, "shape", ()))
    dtype = getattr(images, "dtype", None)
    return f"{type(images).__name__} shape={shape} dtype={dtype}"


def to_input(images, resolution: int, *, device=None, clamp: bool = False) -> torch.Tensor:
    """Images -> float32 NCHW tensor in [-1, 1] at `resolution` x `resolution`.

    uint8 numpy NHWC/HWC (0..255), or float NCHW torch tensors / numpy arrays in [-1, 1]. A float
    tensor keeps its autograd graph (resizing is differentiable); `clamp` clips to [-1, 1]."""
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        x = images
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"uint8 images must be NHWC (or HWC) with 3 channels, got {_describe(images)}")
        t = torch.from_numpy(np.require(x, requirements=["C", "W"])).to(device=device)  # copies read-only arrays
        t = t.permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1.0
    elif isinstance(images, (np.ndarray, torch.Tensor)):
        if isinstance(images, np.ndarray):
            if not np.issubdtype(images.dtype, np.floating):
                raise ValueError(f"images must be uint8 NHWC or float NCHW in [-1, 1], got {_describe(images)}")
            t = torch.from_numpy(np.ascontiguousarray(images))
        else:
            if not images.is_floating_point():
                raise ValueError(f"tensor images must be float NCHW in [-1, 1], got {_describe(images)}")
            t = images
        if t.ndim != 4 or t.shape[1] != 3:
            raise ValueError(f"float images must be NCHW with 3 channels, got {_describe(images)}")
        t = t.to(device=device, dtype=torch.float32)
        if t.numel():
            with torch.no_grad():
                lo, hi = float(t.min()), float(t.max())
            if not (np.isfinite(lo) and np.isfinite(hi)):
                raise ValueError("float images contain NaN or infinite values")
            if lo < -3.0 or hi > 3.0:
                raise ValueError(f"float images must be in [-1, 1], got values in [{lo:.3g}, {hi:.3g}] "
                                 f"(uint8 images: pass a numpy uint8 NHWC array)")
    else:
        raise ValueError(f"images must be a numpy uint8 NHWC array or a float NCHW tensor/array, "
                         f"got {_describe(images)}")
    h, w = t.shape[2], t.shape[3]
    if h != w:
        raise ValueError(f"images must be square, got {h}x{w} ({_describe(images)})")
    if h < 4 and t.shape[0]:
        raise ValueError(f"images must be at least 4x4, got {h}x{w}")
    if clamp:
        t = t.clamp(-1.0, 1.0)
    if h != resolution and t.shape[0]:
        t = F.interpolate(t, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    elif h != resolution:
        t = t.new_zeros((0, 3, resolution, resolution))
    return t


# ------------------------------------------------------------------------------------------------
# The classifier object

class AttributeClassifier:
    """A loaded attribute classifier (eval mode, parameters frozen)."""

    def __init__(self, net: AttributeNet, meta: dict, *, device="cpu", path: str | None = None,
                 name: str | None = None):
        self.name = name or (Path(path).stem if path else "attributes")  # e.g. 'synthfaces64'
        self.net = net.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.meta = meta
        self.path = path
        self.label_names: list[str] = list(meta["label_names"])
        self.resolution: int = int(meta["resolution"])
        self.identity_names: list[str] = list(meta.get("identity_names", []))
        self.identity_mean = np.asarray(meta.get("identity_mean", []), np.float32)
        self.identity_std = np.asarray(meta.get("identity_std", []), np.float32)
        self.feature_dim: int = int(net.init_kwargs["channels"][-1])  # features(layer='pool')
        self.fc_dim: int = int(net.feature_dim)  # features(layer='fc')
        assert len(self.label_names) == net.num_attributes, (self.label_names, net.num_attributes)
        assert net.img_resolution == self.resolution, (net.img_resolution, self.resolution)

    def __repr__(self) -> str:
        return (f"AttributeClassifier(resolution={self.resolution}, labels={self.label_names}, "
                f"features={self.feature_dim}/{self.fc_dim}, identity={len(self.identity_names)}, path={self.path!r})")

    # --- differentiable path
    def forward(self, x: torch.Tensor) -> dict:
        """{'logits', 'identity', 'features' (fc), 'pooled'} tensors, keeping the graph to `x`
        (float NCHW [-1, 1])."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"forward/logits want a float NCHW torch tensor, got {_describe(x)}")
        return self.net(to_input(x, self.resolution, device=self.device))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Attribute logits [N, A] (label_names order), differentiable w.r.t. `x`."""
        return self.forward(x)["logits"]

    # --- batched numpy path
    @torch.no_grad()
    def outputs(self, images, *, batch_size: int = 64) -> dict:
        """One pass: {'probs': [N, A], 'features': [N, D] (pooled trunk), 'features_fc': [N, fc_dim]
        (the fully connected layer the heads read), 'identity': [N, K]}, float32 numpy."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 3:
            images = images[None]
        if not isinstance(images, (np.ndarray, torch.Tensor)):
            raise ValueError(f"images must be a numpy uint8 NHWC array or a float NCHW tensor/array, "
                             f"got {_describe(images)}")
        n = images.shape[0] if images.ndim == 4 else -1
        if n < 0:
            to_input(images, self.resolution)  # raises the right ValueError
        to_input(images[:1], self.resolution)  # validate dtype/shape once, even for N = 0
        out = {"probs": [], "features": [], "features_fc": [], "identity": []}
        for k in range(0, n, batch_size):
            x = to_input(images[k:k + batch_size], self.resolution, device=self.device, clamp=True)
            o = self.net(x)
            out["probs"].append(torch.sigmoid(o["logits"]).float().cpu().numpy())
            out["features"].append(o["pooled"].float().cpu().numpy())
            out["features_fc"].append(o["features"].float().cpu().numpy())
            out["identity"].append(o["identity"].float().cpu().numpy())
        dims = {"probs": self.net.num_attributes, "features": self.feature_dim, "features_fc": self.fc_dim,
                "identity": self.net.identity_dim}
        return {k: (np.concatenate(v) if v else np.zeros((0, dims[k]), np.float32)) for k, v in out.items()}

    def predict(self, images, *, batch_size: int = 64) -> dict:
        """{label name: probability [N] float32}."""
        p = self.outputs(images, batch_size=batch_size)["probs"]
        return {name: p[:, i].copy() for i, name in enumerate(self.label_names)}

    def features(self, images, *, batch_size: int = 64, layer: str = "pool") -> np.ndarray:
        """Global feature vectors float32 for Fréchet distances: layer='pool' (default) the trunk's
        average-pooled last feature map [N, feature_dim] (full-rank covariance on synthfaces),
        layer='fc' the ReLU layer the heads read [N, fc_dim] (some of its units are never active,
        so its covariance is singular: regularise it)."""
        if layer not in ("pool", "fc"):
            raise ValueError(f"layer must be 'pool' or 'fc', got {layer!r}")
        return self.outputs(images, batch_size=batch_size)["features" if layer == "pool" else "features_fc"]

    def identity(self, images, *, batch_size: int = 64) -> np.ndarray:
        """Identity embeddings [N, K] float32: predicted standardised identity parameters
        (identity_names order; param = identity_mean + identity_std * embedding)."""
        return self.outputs(images, batch_size=batch_size)["identity"]


# ------------------------------------------------------------------------------------------------
# Files

def _meta_from_file(path: Path) -> dict:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{str(path)!r} is not a readable safetensors file: {exc}") from None
    if raw.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not an attribute classifier (metadata format={raw.get('format')!r}, "
                         f"expected {FORMAT!r})")
    meta = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except ValueError:
            meta[k] = v
    return meta


def load_classifier(name="synthfaces64", *, device="cpu") -> AttributeClassifier:
    """Load a classifier from a registered model name (see stylemix.pretrained; bundled ones are
    checked against their sha256) or from a path to a classifier .safetensors file."""
    from safetensors.torch import load_file

    from . import pretrained

    if not isinstance(name, (str, os.PathLike)):
        raise ValueError(f"expected a model name or a file path, got {type(name).__name__}")
    p = Path(name).expanduser()
    label = p.stem
    if not p.is_file() and isinstance(name, str):
        # A model's classifier is registered as '<model>-classifier' (the generator keeps '<model>').
        if not name.endswith(CLASSIFIER_SUFFIX) and pretrained.is_registered(name + CLASSIFIER_SUFFIX):
            name += CLASSIFIER_SUFFIX
        if pretrained.is_registered(name):
            kind = pretrained.get_entry(name).kind
            if kind != "classifier":
                raise ValueError(f"model {name!r} is a {kind!r}, not a classifier")
        label = name.removesuffix(CLASSIFIER_SUFFIX)
    path = pretrained.resolve(name)
    meta = _meta_from_file(path)
    cls = _CLASSES.get(str(meta.get("class", "")).rsplit(".", 1)[-1])
    if cls is None:
        raise ValueError(f"{str(path)!r}: unknown network class {meta.get('class')!r}")
    kwargs = meta.get("kwargs")
    if not isinstance(kwargs, dict):
        raise ValueError(f"{str(path)!r}: metadata 'kwargs' must be a JSON object")
    net = cls(**kwargs)
    state = load_file(str(path))
    net.load_state_dict(state, strict=True)
    return AttributeClassifier(net, meta, device=device, path=str(path), name=label)


def save_classifier(path, net: AttributeNet, *, label_names: Sequence[str], identity_names: Sequence[str] = (),
                    identity_mean: Sequence[float] = (), identity_std: Sequence[float] = (),
                    training: dict | None = None, evaluation: dict | None = None) -> Path:
    """Write `net` and the metadata that rebuilds it to `path` (temporary file, then rename)."""

    if len(label_names) != net.num_attributes:
        raise ValueError(f"{len(label_names)} label names for {net.num_attributes} attribute outputs")
    if identity_names and not (len(identity_names) == len(identity_mean) == len(identity_std) == net.identity_dim):
        raise ValueError("identity_names/mean/std must all have identity_dim entries")
    path = Path(path)
    meta = {
        "format": FORMAT,
        "format_version": json.dumps(FORMAT_VERSION),
        "class": f"{type(net).__module__}.{type(net).__name__}",
        "kwargs": json.dumps(net.init_kwargs),
        "label_names": json.dumps(list(label_names)),
        "resolution": json.dumps(int(net.img_resolution)),
        "normalisation": NORMALISATION,
        "identity_names": json.dumps(list(identity_names)),
        "identity_mean": json.dumps([round(float(v), 6) for v in identity_mean]),
        "identity_std": json.dumps([round(float(v), 6) for v in identity_std]),
        "training": json.dumps(training or {}),
        "evaluation": json.dumps(evaluation or {}),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    from safetensors.torch import save

    return atomic_write_bytes(path, save(state, metadata=meta))
