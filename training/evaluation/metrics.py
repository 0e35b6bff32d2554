"""Numbers that compare generated faces with real ones and with what was asked for.

Attribute metrics (from the attribute classifier's probabilities):

- ``attribute_rates(probs, threshold=0.5)`` -- per attribute, the share of images whose
  probability is >= threshold;
- ``both_rate(probs, attrs=('has_beard', 'shaved'))`` -- the share classified as having ALL of
  ``attrs`` at once (the project's target: a full beard AND a shaved head).

Distribution metrics (on features of a ``FeatureNetwork``, float64 throughout):

- ``frechet_distance(feats_a, feats_b)`` / ``frechet_distance_from_stats(mu_a, sigma_a, mu_b,
  sigma_b)`` -- the Frechet distance between Gaussians fitted to two feature sets (Heusel et al.
  2017): ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr sqrt(S_a S_b)``. The last trace is taken as
  ``sum sqrt(eig(sqrt(S_a) S_b sqrt(S_a)))``: that matrix is symmetric positive semi-definite and
  has the eigenvalues of ``S_a S_b``, so two symmetric eigendecompositions replace the general
  ``sqrtm`` (no complex parts, no scipy); eigenvalues below round-off are set to zero, so singular
  covariances (fewer samples than dimensions) are handled. It is FID when the features come
  from the standard Inception network (``INCEPTION_NAME``).
- ``kid(feats_a, feats_b)`` -- kernel inception distance (Binkowski et al. 2018): the unbiased
  MMD^2 estimate with the cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3``, averaged over
  random equal-size subsets, as in StyleGAN2-ADA's ``kid50k_full``.
- ``precision_recall(real_feats, fake_feats, k=3)`` -- improved precision and recall
  (Kynkaanniemi et al. 2019): precision = share of fake samples inside the real manifold (within
  the distance from some real sample to that sample's k-th nearest real neighbour), recall = the
  share of real samples inside the fake manifold.

Identity: ``identity_distance(emb_a, emb_b, metric='l2'|'cosine')`` between paired embeddings.

Feature networks (``FeatureNetwork``, each with a ``name`` that every report carries):

- ``InceptionFeatures.from_file(path)`` -- the TorchScript Inception-v3 that StyleGAN2-ADA's FID
  uses (``inception-2015-12-05.pt``, called as ``detector(uint8 NCHW, return_features=True)`` ->
  [N, 2048]; it resizes to 299x299 itself). Its weights cannot be downloaded on the machines this
  project is built on, so it is used only when the file is present.
- ``ClassifierFeatures(classifier)`` -- the project's attribute classifier's ``features()``, named
  '<classifier name>-classifier' (e.g. 'synthfaces64-classifier'; see classifier_net_name).
- ``load_feature_network(prefer='inception')`` returns the Inception network when its file is
  found (argument, ``$STYLEMIX_INCEPTION``, or the stylemix cache
  ``$STYLEMIX_CACHE/inception-2015-12-05/inception-2015-12-05.pt``), else the classifier one.

Distances computed with different networks are never mixed: ``ReferenceStats`` (saved reference
statistics) carry the name of the network that made them, and ``compare()`` / ``evaluate_images()``
refuse to combine stats from another network.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
import zipfile
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from stylemix.fileio import atomic_open, atomic_write_text

__all__ = [
    "INCEPTION_NAME", "INCEPTION_FILE", "INCEPTION_URL", "INCEPTION_SHA256", "INCEPTION_SIZE",
    "INCEPTION_ENV",
    "attribute_rates", "mean_probabilities", "both_rate",
    "feature_stats", "frechet_distance", "frechet_distance_from_stats",
    "kid", "precision_recall", "identity_distance",
    "FeatureNetwork", "InceptionFeatures", "ClassifierFeatures", "classifier_net_name", "find_inception",
    "load_feature_network",
    "ReferenceStats", "compare", "evaluate_images", "save_report", "to_jsonable",
]

# The standard FID network (StyleGAN2-ADA metrics; a TorchScript translation of TensorFlow's
# inception-2015-12-05.tgz). sha256 and size as pinned by other projects that verify it
# (see the report to the lead); used here only to tell the official file from another one.
INCEPTION_NAME = "inception-2015-12-05"
INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = ("https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
                 "inception-2015-12-05.pt")
INCEPTION_SHA256 = "f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4"
INCEPTION_SIZE = 95_607_719
INCEPTION_ENV = "STYLEMIX_INCEPTION"  # environment variable: path of the Inception file

DEFAULT_ATTRS = ("has_beard", "shaved")


# ------------------------------------------------------------------------------------------------
# Attribute metrics

def _prob_array(name: str, p) -> np.ndarray:
    a = _to_numpy(p).astype(np.float64, copy=False)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"probabilities for {name!r} must be a 1-D array [N], got shape {a.shape}")
    if not np.all(np.isfinite(a)) or (a.size and (a.min() < 0 or a.max() > 1)):
        raise ValueError(f"probabilities for {name!r} must be finite and in [0, 1]")
    return a


def _check_probs(probs: Mapping[str, object], names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    if not isinstance(probs, Mapping) or not probs:
        raise ValueError("probs must be a non-empty dict {attribute name: probabilities [N]}")
    names = list(probs) if names is None else list(names)
    missing = [n for n in names if n not in probs]
    if missing:
        raise ValueError(f"attribute(s) {missing} not in probs (has {sorted(probs)})")
    out = {n: _prob_array(n, probs[n]) for n in names}
    lengths = {n: len(a) for n, a in out.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"probability arrays differ in length: {lengths}")
    if next(iter(lengths.values())) == 0:
        raise ValueError("probability arrays are empty")
    return out


def _check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    return threshold


def attribute_rates(probs: Mapping[str, object], *, threshold: float = 0.5) -> dict[str, float]:
    """{attribute: share of images with probability >= threshold}, for every attribute in probs."""
    threshold = _check_threshold(threshold)
    arrays = _check_probs(probs)
    return {n: float(np.mean(a >= threshold)) for n, a in arrays.items()}


def mean_probabilities(probs: Mapping[str, object]) -> dict[str, float]:
    """{attribute: mean probability} (a threshold-free companion of attribute_rates)."""
    return {n: float(a.mean()) for n, a in _check_probs(probs).items()}


def both_rate(probs: Mapping[str, object], attrs: Sequence[str] = DEFAULT_ATTRS, *,
              threshold: float = 0.5) -> float:
    """Share of images classified as having every attribute in `attrs` (probability >= threshold)."""
    if isinstance(attrs, str) or not attrs:
        raise ValueError(f"attrs must be a non-empty sequence of attribute names, got {attrs!r}")
    threshold = _check_threshold(threshold)
    arrays = _check_probs(probs, attrs)
    hit = np.ones(len(next(iter(arrays.values()))), dtype=bool)
    for a in arrays.values():
        hit &= a >= threshold
    return float(hit.mean())


# ------------------------------------------------------------------------------------------------
# Frechet distance

def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _features(name: str, feats, *, min_items: int = 1) -> np.ndarray:
    f = _to_numpy(feats)
    if f.ndim != 2:
        raise ValueError(f"{name} must be a 2-D feature array [N, D], got shape {f.shape}")
    if f.shape[0] < min_items or f.shape[1] < 1:
        raise ValueError(f"{name} needs at least {min_items} item(s) with >= 1 feature, got shape {f.shape}")
    f = f.astype(np.float64, copy=False)
    if not np.all(np.isfinite(f)):
        raise ValueError(f"{name} holds non-finite values")
    return f


def feature_stats(feats, *, ddof: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], covariance [D, D]) of features [N, D], in float64.

    `ddof=1` gives the unbiased covariance (numpy.cov, TTUR/pytorch-fid); StyleGAN2-ADA divides
    by N (`ddof=0`). The difference is a factor N/(N-1): negligible at the usual 50k samples.
    """
    f = _features("feats", feats, min_items=max(2, ddof + 1))
    mu = f.mean(axis=0)
    x = f - mu
    sigma = (x.T @ x) / (f.shape[0] - ddof)
    return mu, (sigma + sigma.T) * 0.5


def _psd_eigh(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a symmetric PSD matrix; eigenvalues below round-off set to 0."""
    w, v = np.linalg.eigh((s + s.T) * 0.5)
    tol = max(float(np.abs(w).max(initial=0.0)), np.finfo(np.float64).tiny) * len(w) * np.finfo(np.float64).eps
    w = np.where(w > tol, w, 0.0)
    return w, v


def _check_stats(name: str, mu, sigma) -> tuple[np.ndarray, np.ndarray]:
    mu = _to_numpy(mu).astype(np.float64, copy=False)
    sigma = _to_numpy(sigma).astype(np.float64, copy=False)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{name}: expected mu [D] and sigma [D, D], got {mu.shape} and {sigma.shape}")
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
        raise ValueError(f"{name}: mu/sigma hold non-finite values")
    asym = np.abs(sigma - sigma.T).max(initial=0.0)
    if asym > 1e-6 * max(np.abs(sigma).max(initial=0.0), 1e-300):
        raise ValueError(f"{name}: sigma is not symmetric (max |S - S^T| = {asym:.3g})")
    return mu, (sigma + sigma.T) * 0.5


def frechet_distance_from_stats(mu_a, sigma_a, mu_b, sigma_b) -> float:
    """Frechet distance between N(mu_a, sigma_a) and N(mu_b, sigma_b) (float64, >= 0)."""
    mu_a, sigma_a = _check_stats("stats a", mu_a, sigma_a)
    mu_b, sigma_b = _check_stats("stats b", mu_b, sigma_b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"feature dimensions differ: {mu_a.shape[0]} vs {mu_b.shape[0]}")
    w, v = _psd_eigh(sigma_a)
    sqrt_a = (v * np.sqrt(w)) @ v.T                          # sqrt(S_a), symmetric PSD
    m = sqrt_a @ sigma_b @ sqrt_a                             # same eigenvalues as S_a S_b
    ev, _ = _psd_eigh(m)
    tr_covmean = float(np.sqrt(ev).sum())                     # tr sqrt(S_a S_b)
    diff = mu_a - mu_b
    fd = float(diff @ diff) + float(np.trace(sigma_a)) + float(np.trace(sigma_b)) - 2.0 * tr_covmean
    return max(fd, 0.0)  # >= 0 in exact arithmetic; clamp the round-off


def frechet_distance(feats_a, feats_b, *, ddof: int = 1) -> float:
    """Frechet distance between Gaussians fitted to features [N_a, D] and [N_b, D]."""
    fa = _features("feats_a", feats_a, min_items=2)
    fb = _features("feats_b", feats_b, min_items=2)
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(f"feature dimensions differ: {fa.shape[1]} vs {fb.shape[1]}")
    return frechet_distance_from_stats(*feature_stats(fa, ddof=ddof), *feature_stats(fb, ddof=ddof))


# ------------------------------------------------------------------------------------------------
# KID

def _cubic_kernel(x: np.ndarray, y: np.ndarray, d: int) -> np.ndarray:
    k = x @ y.T
    k /= d
    k += 1.0
    return k * k * k  # (x.y / d + 1)^3; faster than ** 3


def _kid_subset_values(fa: np.ndarray, fb: np.ndarray, *, num_subsets: int, max_subset_size: int,
                       seed: int) -> np.ndarray:
    d = fa.shape[1]
    m = min(fa.shape[0], fb.shape[0], int(max_subset_size))
    if m < 2:
        raise ValueError(f"KID needs subsets of >= 2 items; got sizes {fa.shape[0]}, {fb.shape[0]} "
                         f"and max_subset_size={max_subset_size}")
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets, dtype=np.float64)
    for i in range(num_subsets):
        x = fb[rng.choice(fb.shape[0], m, replace=False)]
        y = fa[rng.choice(fa.shape[0], m, replace=False)]
        kxx, kyy, kxy = _cubic_kernel(x, x, d), _cubic_kernel(y, y, d), _cubic_kernel(x, y, d)
        a = kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)
        values[i] = a / (m * (m - 1)) - 2.0 * kxy.sum() / (m * m)
    return values


def kid(feats_a, feats_b, *, num_subsets: int = 100, max_subset_size: int = 1000, seed: int = 0,
        return_std: bool = False):
    """Kernel inception distance: mean over `num_subsets` random subsets (size
    min(N_a, N_b, max_subset_size), drawn without replacement) of the unbiased MMD^2 with
    k(x, y) = (x.y / d + 1)^3. Can be slightly negative for samples of one distribution.
    `return_std=True` returns (mean, std over subsets)."""
    fa = _features("feats_a", feats_a, min_items=2)
    fb = _features("feats_b", feats_b, min_items=2)
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(f"feature dimensions differ: {fa.shape[1]} vs {fb.shape[1]}")
    if int(num_subsets) < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    values = _kid_subset_values(fa, fb, num_subsets=int(num_subsets), max_subset_size=max_subset_size,
                                seed=seed)
    if return_std:
        return float(values.mean()), float(values.std())
    return float(values.mean())


# ------------------------------------------------------------------------------------------------
# Precision / recall

def _sq_dists(a: np.ndarray, a_sq: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    d = a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0, out=d)


def _kth_radii_sq(manifold: np.ndarray, m_sq: np.ndarray, k: int, row_batch: int) -> np.ndarray:
    """Squared distance from each manifold point to its k-th nearest other manifold point."""
    out = np.empty(manifold.shape[0], dtype=np.float64)
    for s in range(0, manifold.shape[0], row_batch):
        d = _sq_dists(manifold[s:s + row_batch], m_sq[s:s + row_batch], manifold, m_sq)
        out[s:s + row_batch] = np.partition(d, k, axis=1)[:, k]  # index 0 is the point itself
    return out


def _inside(probes: np.ndarray, p_sq: np.ndarray, manifold: np.ndarray, m_sq: np.ndarray,
            radii_sq: np.ndarray, tol: float, row_batch: int) -> np.ndarray:
    hit = np.empty(probes.shape[0], dtype=bool)
    for s in range(0, probes.shape[0], row_batch):
        d = _sq_dists(probes[s:s + row_batch], p_sq[s:s + row_batch], manifold, m_sq)
        hit[s:s + row_batch] = (d <= radii_sq[None, :] + tol).any(axis=1)
    return hit


def precision_recall(real_feats, fake_feats, *, k: int = 3, row_batch: int = 512) -> dict:
    """Improved precision and recall with k-NN manifolds (Kynkaanniemi et al. 2019).

    precision = share of fake samples within the k-th-nearest-neighbour radius of at least one
    real sample; recall = share of real samples within that radius of at least one fake sample.
    Distances are Euclidean in float64, computed `row_batch` rows at a time (memory
    row_batch x N x 8 bytes). A point counts as inside when its squared distance is <= the radius
    squared plus a round-off tolerance of 1e-9 x the largest squared norm.
    Returns {'precision', 'recall', 'k'}.
    """
    fr = _features("real_feats", real_feats, min_items=1)
    ff = _features("fake_feats", fake_feats, min_items=1)
    if fr.shape[1] != ff.shape[1]:
        raise ValueError(f"feature dimensions differ: {fr.shape[1]} vs {ff.shape[1]}")
    k = int(k)
    if k < 1 or k >= min(fr.shape[0], ff.shape[0]):
        raise ValueError(f"k must be in [1, min(N_real, N_fake) - 1] = [1, {min(fr.shape[0], ff.shape[0]) - 1}], got {k}")
    row_batch = int(row_batch)
    if row_batch < 1:
        raise ValueError(f"row_batch must be >= 1, got {row_batch}")
    center = fr.mean(axis=0)  # distances do not move; centring cuts the cancellation in |a|^2+|b|^2-2ab
    fr = fr - center
    ff = ff - center
    r_sq = np.einsum("ij,ij->i", fr, fr)
    f_sq = np.einsum("ij,ij->i", ff, ff)
    tol = 1e-9 * max(float(r_sq.max()), float(f_sq.max()), 1e-300)
    results = {}
    for name, manifold, m_sq, probes, p_sq in (("precision", fr, r_sq, ff, f_sq),
                                               ("recall", ff, f_sq, fr, r_sq)):
        radii = _kth_radii_sq(manifold, m_sq, k, row_batch)
        results[name] = float(_inside(probes, p_sq, manifold, m_sq, radii, tol, row_batch).mean())
    results["k"] = k
    return results


# ------------------------------------------------------------------------------------------------
# Identity

IDENTITY_METRICS = ("cosine", "l2")


def identity_distance(emb_a, emb_b, *, metric: str = "l2") -> dict:
    """Distance between paired identity embeddings emb_a[i] <-> emb_b[i] ([N, K] each).

    metric='l2' (default): Euclidean |a - b| -- the project classifier's embeddings are
    standardised identity parameters, so this is in units of population standard deviations;
    metric='cosine': 1 - cos(a, b), in [0, 2] (0 = same direction; ignores length; undefined for
    zero vectors).
    Returns {'metric', 'mean', 'std', 'per_pair': float64 array [N]}.
    """
    if metric not in IDENTITY_METRICS:
        raise ValueError(f"metric must be one of {IDENTITY_METRICS}, got {metric!r}")
    a = _features("emb_a", emb_a)
    b = _features("emb_b", emb_b)
    if a.shape != b.shape:
        raise ValueError(f"paired embeddings must have the same shape, got {a.shape} and {b.shape}")
    if metric == "l2":
        d = np.sqrt(((a - b) ** 2).sum(axis=1))
    else:
        na = np.linalg.norm(a, axis=1)
        nb = np.linalg.norm(b, axis=1)
        zero = np.flatnonzero((na == 0) | (nb == 0))
        if zero.size:
            raise ValueError(f"cosine distance is undefined for zero embeddings (rows {zero[:10].tolist()})")
        cos = np.einsum("ij,ij->i", a, b) / (na * nb)
        d = 1.0 - np.clip(cos, -1.0, 1.0)
    return {"metric": metric, "mean": float(d.mean()), "std": float(d.std()), "per_pair": d}


# ------------------------------------------------------------------------------------------------
# Feature networks

def _images_uint8_nhwc(images) -> np.ndarray:
    """uint8 [N, H, W, C] numpy (C = 1 or 3); accepts numpy arrays, torch tensors, lists of HWC."""
    if isinstance(images, (list, tuple)):
        images = np.stack([_to_numpy(im) for im in images]) if images else np.zeros((0, 1, 1, 3), np.uint8)
    x = _to_numpy(images)
    if x.ndim == 3 and x.shape[-1] in (1, 3):
        raise ValueError(f"expected a batch of images [N, H, W, C], got one image of shape {x.shape}; add a batch axis")
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"expected uint8 images [N, H, W, C] with C = 1 or 3, got shape {x.shape}")
    if x.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (0..255), got dtype {x.dtype}; convert float images in [-1, 1] "
                         f"with (x * 127.5 + 128).clip(0, 255).astype(uint8)")
    if x.shape[0] == 0:
        raise ValueError("no images given")
    return x


def _rgb(x: np.ndarray) -> np.ndarray:
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def classifier_net_name(classifier) -> str:
    """'<base>-classifier', base = classifier.name, else the stem of classifier.path (the file it
    was loaded from), else the class name."""
    base = getattr(classifier, "name", None)
    if not base and getattr(classifier, "path", None):
        base = Path(str(classifier.path)).stem
    return f"{base or type(classifier).__name__.lower()}-classifier"


class FeatureNetwork:
    """Maps uint8 images [N, H, W, C] to features [N, D]. `name` identifies the feature space:
    distances are comparable only between feature sets from networks with the same name."""

    name: str = "feature-network"

    def features(self, images, *, batch_size: int | None = None) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, images, **kwargs) -> np.ndarray:
        return self.features(images, **kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class InceptionFeatures(FeatureNetwork):
    """A TorchScript detector called as ``module(images_uint8_NCHW, return_features=True)`` ->
    [N, D], like StyleGAN2-ADA's ``inception-2015-12-05.pt`` (2048 features before the softmax
    layer; it converts to float and resizes to 299x299 inside). Grey images are repeated to RGB."""

    def __init__(self, module, *, name: str, batch_size: int = 32):
        # `name` has no default: only from_file() may call a module the standard network (by sha256).
        if not callable(module):
            raise ValueError(f"module must be callable, got {type(module).__name__}")
        self.module = module
        self.name = str(name)
        self.batch_size = int(batch_size)

    @classmethod
    def from_file(cls, path, *, name: str | None = None, batch_size: int = 32) -> "InceptionFeatures":
        """Load a TorchScript detector on the CPU. The name is `name` if given; else INCEPTION_NAME
        when the file's sha256 is the standard file's, else the file's stem -- except that a file
        called like the standard one whose sha256 differs is named '<stem>-sha<8 hex>' (with a
        warning), so its numbers are never passed off as FID."""
        import torch

        path = Path(path).expanduser()
        if not path.is_file():
            raise ValueError(f"Inception weights not found: {str(path)!r} is not a file "
                             f"(the standard file is {INCEPTION_URL})")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # the standard file is TorchScript
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # torch raises RuntimeError/ValueError/zip errors for non-TorchScript
            raise ValueError(f"{str(path)!r} is not a TorchScript file ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}); the feature network must "
                             f"be a torch.jit module such as {INCEPTION_FILE}") from exc
        module.eval()
        if name is None:
            from stylemix.pretrained import sha256_file

            digest = sha256_file(path)  # ~0.3 s for the 95 MB file
            name = path.stem
            if digest == INCEPTION_SHA256:
                name = INCEPTION_NAME  # the standard file, whatever it is called here
            elif name == INCEPTION_NAME:
                warnings.warn(f"{path} is named like the standard FID network but its sha256 is {digest}, "
                              f"not {INCEPTION_SHA256}; its distances are reported under another name",
                              stacklevel=2)
                name = f"{INCEPTION_NAME}-sha{digest[:8]}"
        return cls(module, name=name, batch_size=batch_size)

    def features(self, images, *, batch_size: int | None = None) -> np.ndarray:
        import torch

        x = _images_uint8_nhwc(images)
        bs = int(batch_size or self.batch_size)
        out = []
        with torch.no_grad():
            for s in range(0, x.shape[0], bs):
                t = torch.from_numpy(np.ascontiguousarray(x[s:s + bs])).permute(0, 3, 1, 2)
                if t.shape[1] == 1:
                    t = t.repeat(1, 3, 1, 1)
                f = self.module(t.contiguous(), return_features=True)
                if not isinstance(f, torch.Tensor) or f.ndim != 2 or f.shape[0] != t.shape[0]:
                    raise ValueError(f"feature network {self.name!r} returned "
                                     f"{getattr(f, 'shape', type(f).__name__)} for {t.shape[0]} images; expected [N, D]")
                out.append(f.to(torch.float64).cpu().numpy())
        return np.concatenate(out, axis=0)


class ClassifierFeatures(FeatureNetwork):
    """The project's attribute classifier as a feature network: ``classifier.features(images)``.
    Named '<classifier.name>-classifier' (e.g. 'synthfaces64-classifier') unless `name` is given."""

    def __init__(self, classifier, *, name: str | None = None, batch_size: int = 256):
        if not callable(getattr(classifier, "features", None)):
            raise ValueError(f"classifier {type(classifier).__name__} has no features(images) method")
        self.classifier = classifier
        self.name = str(name) if name is not None else classifier_net_name(classifier)
        self.batch_size = int(batch_size)

    def features(self, images, *, batch_size: int | None = None) -> np.ndarray:
        x = _rgb(_images_uint8_nhwc(images))
        bs = int(batch_size or self.batch_size)
        out = []
        for s in range(0, x.shape[0], bs):
            f = _to_numpy(self.classifier.features(x[s:s + bs])).astype(np.float64)
            if f.ndim != 2 or f.shape[0] != min(bs, x.shape[0] - s):
                raise ValueError(f"classifier features returned shape {f.shape} for {min(bs, x.shape[0] - s)} images")
            out.append(f)
        return np.concatenate(out, axis=0)


def _cached_inception_path() -> Path:
    """Where stylemix.pretrained.fetch() puts the Inception file: $STYLEMIX_CACHE/<name>/<file>."""
    from stylemix import pretrained

    if pretrained.is_registered(INCEPTION_NAME):
        return pretrained.cached_path(INCEPTION_NAME)
    return pretrained.cache_dir() / INCEPTION_NAME / INCEPTION_FILE


def find_inception(inception_path=None) -> Path | None:
    """The Inception file to use, or None when there is none.

    Order: `inception_path`, then $STYLEMIX_INCEPTION, then the stylemix cache. A path given by
    the argument or the variable that is not a file is an error (ValueError), not a silent fallback.
    """
    for source, value in (("inception_path", inception_path), (INCEPTION_ENV, os.environ.get(INCEPTION_ENV))):
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        p = Path(value).expanduser()
        if not p.is_file():
            raise ValueError(f"{source} = {str(p)!r} is not a file")
        return p
    p = _cached_inception_path()
    return p if p.is_file() else None


FEATURE_PREFERENCES = ("inception", "classifier")


def load_feature_network(prefer: str = "inception", inception_path=None, *, classifier=None,
                         classifier_name: str = "synthfaces64") -> FeatureNetwork:
    """The feature network for FD/KID/precision-recall.

    prefer='inception': InceptionFeatures when its file is found (see find_inception), otherwise
    the classifier's features. prefer='classifier': always the classifier's features. The
    classifier is `classifier`, or stylemix.attributes.load_classifier(classifier_name).
    The result's `name` says which one it is; reports carry it.
    """
    if prefer not in FEATURE_PREFERENCES:
        raise ValueError(f"prefer must be one of {FEATURE_PREFERENCES}, got {prefer!r}")
    if prefer == "inception":
        path = find_inception(inception_path)
        if path is not None:
            return InceptionFeatures.from_file(path)
    if classifier is None:
        try:
            from stylemix.attributes import load_classifier
        except ImportError as exc:
            raise RuntimeError(f"no Inception weights and no attribute classifier available ({exc})") from exc
        classifier = load_classifier(classifier_name)
    return ClassifierFeatures(classifier)


# ------------------------------------------------------------------------------------------------
# Reference statistics tagged with their network

@dataclasses.dataclass
class ReferenceStats:
    """Feature statistics of one image set, tagged with the network that made them."""

    feature_net: str                 # FeatureNetwork.name
    mu: np.ndarray                   # [D] float64
    sigma: np.ndarray                # [D, D] float64 (ddof=1)
    num_items: int
    features: np.ndarray | None = None  # [N, D]; needed for KID and precision/recall

    @classmethod
    def from_features(cls, feats, feature_net: str, *, keep_features: bool = True) -> "ReferenceStats":
        f = _features("feats", feats, min_items=2)
        mu, sigma = feature_stats(f)
        return cls(str(feature_net), mu, sigma, int(f.shape[0]), f if keep_features else None)

    @classmethod
    def from_images(cls, images, net: FeatureNetwork, *, keep_features: bool = True) -> "ReferenceStats":
        return cls.from_features(net.features(images), net.name, keep_features=keep_features)

    def check_net(self, name: str) -> None:
        if self.feature_net != name:
            raise ValueError(f"these statistics were computed with feature network {self.feature_net!r}, "
                             f"not {name!r}; distances from different networks cannot be compared -- "
                             f"recompute them with {name!r}")

    def save(self, path) -> Path:
        """Write an .npz (no pickles) atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"feature_net": np.array(self.feature_net), "mu": self.mu, "sigma": self.sigma,
                  "num_items": np.array(self.num_items, dtype=np.int64)}
        if self.features is not None:
            arrays["features"] = self.features
        with atomic_open(path) as f:
            np.savez(f, **arrays)
        return path

    @classmethod
    def load(cls, path) -> "ReferenceStats":
        try:
            with np.load(Path(path), allow_pickle=False) as z:
                feats = z["features"] if "features" in z.files else None
                return cls(str(z["feature_net"]), z["mu"].astype(np.float64), z["sigma"].astype(np.float64),
                           int(z["num_items"]), None if feats is None else feats.astype(np.float64))
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{str(path)!r} is not a ReferenceStats file ({exc})") from exc


def _stats_for(x, net: FeatureNetwork, label: str) -> ReferenceStats:
    if isinstance(x, ReferenceStats):
        x.check_net(net.name)
        return x
    try:
        return ReferenceStats.from_images(x, net)
    except ValueError as exc:
        raise ValueError(f"{label}: {exc}") from exc


def compare(real, fake, net: FeatureNetwork, *, kid_subsets: int = 100, kid_subset_size: int = 1000,
            pr_k: int = 3, seed: int = 0, metrics: Sequence[str] = ("fd", "kid", "pr")) -> dict:
    """FD, KID and precision/recall between `real` and `fake` in the feature space of `net`.

    Each of real/fake is uint8 images [N, H, W, C] (features computed with `net`) or a
    ReferenceStats, which must have been made with a network of the same name (else ValueError).
    KID and precision/recall need the features (ReferenceStats.features); they are None without.
    """
    unknown = set(metrics) - {"fd", "kid", "pr"}
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from 'fd', 'kid', 'pr'")
    if not isinstance(net, FeatureNetwork):
        raise ValueError(f"net must be a FeatureNetwork, got {type(net).__name__}")
    r = _stats_for(real, net, "real")
    f = _stats_for(fake, net, "fake")
    if r.mu.shape != f.mu.shape:
        raise ValueError(f"feature dimensions differ: {r.mu.shape[0]} vs {f.mu.shape[0]}")
    out: dict = {"feature_net": net.name, "fd_is_fid": net.name == INCEPTION_NAME,
                 "num_real": r.num_items, "num_fake": f.num_items,
                 "fd": None, "kid": None, "kid_std": None, "precision": None, "recall": None, "notes": []}
    if "fd" in metrics:
        out["fd"] = frechet_distance_from_stats(r.mu, r.sigma, f.mu, f.sigma)
        if min(r.num_items, f.num_items) <= r.mu.shape[0]:
            out["notes"].append(f"fewer samples than feature dimensions ({min(r.num_items, f.num_items)} <= "
                                f"{r.mu.shape[0]}): singular covariance, FD is biased upward")
    have = r.features is not None and f.features is not None
    if "kid" in metrics:
        if have:
            out["kid"], out["kid_std"] = kid(r.features, f.features, num_subsets=kid_subsets,
                                             max_subset_size=kid_subset_size, seed=seed, return_std=True)
        else:
            out["notes"].append("kid skipped: reference statistics hold no features")
    if "pr" in metrics:
        if have and pr_k < min(r.num_items, f.num_items):
            out.update({k: v for k, v in precision_recall(r.features, f.features, k=pr_k).items() if k != "k"})
            out["pr_k"] = int(pr_k)
        else:
            out["notes"].append("precision/recall skipped: " + ("reference statistics hold no features" if not have
                                                                 else f"k={pr_k} needs more than {pr_k} samples per set"))
    return out


# ------------------------------------------------------------------------------------------------
# One call for a set of generated images, and its JSON

def _pick_network(feature_net, reference_stats, classifier) -> FeatureNetwork:
    if feature_net is not None:
        if not isinstance(feature_net, FeatureNetwork):
            raise ValueError(f"feature_net must be a FeatureNetwork, got {type(feature_net).__name__}")
        return feature_net
    if reference_stats is not None:
        cls_net = ClassifierFeatures(classifier)  # its name says which classifier (file) it is
        if reference_stats.feature_net == cls_net.name:
            return cls_net
        inception = find_inception()
        if inception is not None:
            net = InceptionFeatures.from_file(inception)
            if net.name == reference_stats.feature_net:
                return net
        raise ValueError(f"reference statistics were made with {reference_stats.feature_net!r}, which is "
                         f"neither the classifier ({cls_net.name!r}) nor an Inception file found here; "
                         f"pass feature_net= explicitly")
    return load_feature_network("inception", classifier=classifier)


def evaluate_images(images, *, reference_images=None, reference_stats: ReferenceStats | None = None,
                    classifier, feature_net: FeatureNetwork | None = None, pairs=None,
                    attrs: Sequence[str] = DEFAULT_ATTRS, threshold: float = 0.5,
                    kid_subsets: int = 100, kid_subset_size: int = 1000,
                    pr_k: int = 3, seed: int = 0) -> dict:
    """All metrics for one set of generated images (uint8 [N, H, W, C]), as a JSON-able dict.

    - attributes: rates, mean probabilities and both_rate(attrs) from classifier.predict(images);
    - distribution: FD, KID, precision/recall against reference_images (or reference_stats, which
      must come from the same feature network) -- omitted (None) when neither is given;
    - identity: when `pairs` (uint8 images aligned with `images`: the face each generated image
      should keep the identity of) is given, identity_distance of classifier.identity() embeddings,
      as {'l2': {...}, 'cosine': {...}} (cosine None if an embedding is zero).

    feature_net=None: the network that made reference_stats when it can be had here, else
    load_feature_network('inception', classifier=classifier). The report's 'feature_net' names it.
    """
    if reference_images is not None and reference_stats is not None:
        raise ValueError("give reference_images or reference_stats, not both")
    if reference_stats is not None and not isinstance(reference_stats, ReferenceStats):
        raise ValueError(f"reference_stats must be a ReferenceStats, got {type(reference_stats).__name__}")
    x = _rgb(_images_uint8_nhwc(images))
    probs = {k: _to_numpy(v) for k, v in dict(classifier.predict(x)).items()}
    report: dict = {
        "num_images": int(x.shape[0]),
        "resolution": [int(x.shape[1]), int(x.shape[2])],
        "attributes": {
            "threshold": float(threshold),
            "rates": attribute_rates(probs, threshold=threshold),
            "mean_probs": mean_probabilities(probs),
            "both_attrs": list(attrs),
            "both_rate": both_rate(probs, attrs, threshold=threshold),
        },
        "feature_net": None, "distribution": None, "identity": None,
    }
    if reference_images is not None or reference_stats is not None:
        net = _pick_network(feature_net, reference_stats, classifier)
        real = reference_stats if reference_stats is not None else reference_images
        dist = compare(real, x, net, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, pr_k=pr_k, seed=seed)
        report["feature_net"] = net.name
        report["distribution"] = dist
    if pairs is not None:
        p = _rgb(_images_uint8_nhwc(pairs))
        if p.shape[0] != x.shape[0]:
            raise ValueError(f"pairs must hold one image per generated image ({x.shape[0]}), got {p.shape[0]}")
        emb_x, emb_p = _to_numpy(classifier.identity(x)), _to_numpy(classifier.identity(p))
        report["identity"] = {"l2": identity_distance(emb_x, emb_p, metric="l2")}
        try:
            report["identity"]["cosine"] = identity_distance(emb_x, emb_p, metric="cosine")
        except ValueError:
            report["identity"]["cosine"] = None
    report["settings"] = {"kid_subsets": int(kid_subsets), "kid_subset_size": int(kid_subset_size),
                          "pr_k": int(pr_k), "seed": int(seed), "covariance_ddof": 1}
    return to_jsonable(report)


def to_jsonable(obj):
    """numpy scalars/arrays -> Python numbers/lists, Paths -> str, non-finite floats -> None."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if obj is None or isinstance(obj, str):
        return obj
    raise ValueError(f"cannot write {type(obj).__name__} to JSON")


def save_report(path, report: Mapping) -> Path:
    """Write `report` as JSON (UTF-8, indented) atomically: a temporary file then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(to_jsonable(report), indent=2, sort_keys=False, allow_nan=False) + "\n"
    return atomic_write_text(path, text)
