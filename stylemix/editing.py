"""Attribute directions in W and applying them to latents.

    from stylemix.editing import compute_directions, edit, find_directions, load_directions
    dirs = compute_directions(G, load_classifier('synthfaces64'), n=20000)   # {(attr, method): Direction}
    ws2 = edit(ws, dirs['has_beard', 'interfacegan'], 2.0, layers=['coarse', 'middle'])

How directions are found (`compute_directions`): n latents z ~ N(0, I) (numpy, seeded) are mapped
to w with `G.mapping` (psi `truncation_psi`, w_avg never updated), rendered with
`G.synthesis(..., noise_mode='const')` and the renders (float NCHW, clamped to [-1, 1]) are labelled
by `classifier.predict(images)` (any object with that method returning {attribute: probabilities
[N]}); an attribute is positive where its probability is >= 0.5. Then, per attribute
(`directions_from_labels`, usable on its own with labels from anywhere):

- 'mean_diff': mean w of the positives minus mean w of the negatives (seed 002's attribute vector,
  taken in W instead of Z);
- 'interfacegan': the normal of the decision boundary of an L2-regularised logistic regression on
  w (features standardised per dimension for the fit, L-BFGS in float64; the normal is mapped back
  to raw W coordinates, i.e. the gradient of the logit w.r.t. w);
- 'conditional': InterFaceGAN's conditional manipulation: the attribute's 'interfacegan' normal
  with the 'interfacegan' normals of every other attribute of the same computation projected out
  (projected onto the orthogonal complement of their span), so that moving along it leaves the
  other attributes' linear logits unchanged (adding a beard should not grow hair back). With a
  single attribute it equals 'interfacegan'. Its held-out accuracy thresholds the projection
  half-way between the projected class means (the normal fitted on the training split, the other
  attributes' normals on all samples: they are conditions, not fits of this label).

Every vector is stored unit-norm and oriented towards the attribute; `scale` is the standard
deviation of w . vector over the samples, so `edit(..., strength=1.0)` moves a latent by one
standard deviation of the population along the direction. `accuracy` is a held-out linear-probe
accuracy: the same procedure fitted on a stratified 80% of the samples and tested on the other
20% (mean_diff: threshold half-way between the projected class means; interfacegan: the fitted
logit's sign); the stored vector is then fitted on all n samples. `balanced_accuracy` is the mean
of the per-class recalls (the plain accuracy of a rare attribute is high even for a useless
direction).

File format (`save_directions`): safetensors, one float32 [w_dim] tensor per direction named
'<attribute>/<method>', metadata (JSON strings): ``format`` = ``stylemix.directions``,
``format_version``, ``directions`` (a list of {attribute, method, key, scale, accuracy,
balanced_accuracy, n, positives, effects}) and ``meta`` (free-form: model name, n, seed, classifier,
...). Written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import warnings
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import torch

from .fileio import atomic_write_bytes
from .mixing import layer_rows

__all__ = ["Direction", "DirectionSet", "METHODS", "DEFAULT_ATTRIBUTES", "FORMAT", "DIRECTIONS_SUFFIX",
           "compute_directions", "directions_from_labels", "measure_effects", "edit",
           "save_directions", "load_directions", "find_directions", "default_path"]

FORMAT = "stylemix.directions"
FORMAT_VERSION = 1
METHODS = ("mean_diff", "interfacegan", "conditional")
DEFAULT_ATTRIBUTES = ("has_beard", "shaved", "glasses", "smile")
DIRECTIONS_SUFFIX = "-directions"  # registry name of a model's directions: '<model>-directions'
THRESHOLD = 0.5                    # probability at and above which a sample counts as positive

# Stream numbers of np.random.default_rng([seed, stream]): the samples the directions are fitted
# on, the fresh samples `measure_effects` uses, and the held-out split.
_STREAM_FIT, _STREAM_EFFECTS, _STREAM_SPLIT = 0, 1, 2


# ------------------------------------------------------------------------------------------------
# Direction


@dataclasses.dataclass(eq=False)
class Direction:
    """One attribute direction in W."""

    attribute: str                        # classifier label, e.g. 'has_beard'
    method: str                           # 'mean_diff', 'interfacegan' (or any name of your own)
    vector: np.ndarray                    # float32 [w_dim], unit norm (normalised on construction)
    scale: float                          # std of w . vector over the samples: strength 1 = one std
    accuracy: float | None = None         # held-out accuracy of the linear probe (see module doc)
    n: int = 0                            # samples the vector was fitted on
    positives: int | None = None          # how many of them were labelled positive
    balanced_accuracy: float | None = None  # held-out mean of the two per-class recalls
    effects: dict | None = None           # {'+2': {label: mean change of probability}, '-2': {...}}

    def __post_init__(self):
        if not isinstance(self.attribute, str) or not self.attribute or "/" in self.attribute:
            raise ValueError(f"bad attribute name {self.attribute!r} (a non-empty string without '/')")
        if not isinstance(self.method, str) or not self.method or "/" in self.method:
            raise ValueError(f"bad method name {self.method!r} (a non-empty string without '/')")
        if isinstance(self.vector, torch.Tensor):
            self.vector = self.vector.detach().cpu().numpy()
        v = np.asarray(self.vector, dtype=np.float64)
        if v.ndim != 1 or v.size == 0:
            raise ValueError(f"direction {self.key_str}: vector must be 1-D [w_dim], got shape {v.shape}")
        norm = float(np.linalg.norm(v))
        if not math.isfinite(norm) or norm == 0.0:
            raise ValueError(f"direction {self.key_str}: vector must be finite and non-zero (norm {norm})")
        self.vector = (v / norm).astype(np.float32)
        try:
            self.scale = float(self.scale)
        except (TypeError, ValueError):
            raise ValueError(f"direction {self.key_str}: scale must be a number, got {self.scale!r}") from None
        if not math.isfinite(self.scale) or self.scale <= 0:
            raise ValueError(f"direction {self.key_str}: scale must be finite and > 0, got {self.scale}")

    @property
    def key(self) -> tuple[str, str]:
        return (self.attribute, self.method)

    @property
    def key_str(self) -> str:
        return f"{self.attribute}/{self.method}"

    @property
    def w_dim(self) -> int:
        return int(self.vector.shape[0])

    def __repr__(self) -> str:
        acc = "None" if self.accuracy is None else f"{self.accuracy:.3f}"
        return (f"Direction({self.attribute!r}, {self.method!r}, w_dim={self.w_dim}, scale={self.scale:.4g}, "
                f"accuracy={acc}, n={self.n}, positives={self.positives})")


class DirectionSet(dict):
    """dict {(attribute, method): Direction} with `.meta` (what they were computed from) and
    `.path` (the file they were loaded from, or None)."""

    def __init__(self, items=(), *, meta: dict | None = None, path: str | None = None):
        super().__init__(items)
        self.meta = dict(meta or {})
        self.path = path

    def copy(self) -> "DirectionSet":
        """A shallow copy that keeps `.meta` and `.path` (dict.copy would return a plain dict)."""
        return DirectionSet(self, meta=self.meta, path=self.path)

    @property
    def attributes(self) -> list[str]:
        """The attribute names, in first-seen order."""
        return list(dict.fromkeys(a for a, _ in self))

    @property
    def w_dim(self) -> int | None:
        dims = {d.w_dim for d in self.values()}
        return dims.pop() if len(dims) == 1 else None


# ------------------------------------------------------------------------------------------------
# Editing


def _strength(strength) -> float:
    if isinstance(strength, torch.Tensor) and strength.numel() == 1:
        strength = strength.item()
    elif isinstance(strength, np.ndarray) and strength.size == 1:
        strength = strength.item()
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real):
        raise ValueError(f"strength must be a number, got {strength!r}")
    strength = float(strength)
    if not math.isfinite(strength):
        raise ValueError(f"strength must be finite, got {strength}")
    return strength


def _vector_and_scale(direction) -> tuple[np.ndarray, float, str]:
    if isinstance(direction, Direction):
        return direction.vector, direction.scale, direction.key_str
    if isinstance(direction, (np.ndarray, torch.Tensor)):
        v = direction.detach().cpu().numpy() if isinstance(direction, torch.Tensor) else direction
        if v.ndim != 1 or not np.issubdtype(v.dtype, np.floating):
            raise ValueError(f"a raw direction must be a float vector [w_dim], got shape {v.shape} dtype {v.dtype}")
        return v, 1.0, "vector"
    raise ValueError(f"direction must be a Direction (or a float vector [w_dim]), got {type(direction).__name__}")


def edit(ws, direction, strength, *, layers=None):
    """ws moved along `direction`: rows `layers` get `+= strength * direction.scale * direction.vector`.

    ws: numpy array or torch tensor, [num_ws, w_dim] or [N, num_ws, w_dim], floating point; the
        result has the same type, dtype, device and shape. The input is never modified; torch
        inputs keep autograd.
    direction: a Direction (a raw float vector [w_dim] is used as is, with scale 1).
    strength: in standard deviations of the population along the direction (see module doc).
    layers: None (all rows), an int, a group name ('coarse', 'middle', 'fine': see
        stylemix.mixing.layer_groups) or an iterable of both, as in stylemix.mixing.mix.
    """
    vec, scale, what = _vector_and_scale(direction)
    strength = _strength(strength)
    is_torch = isinstance(ws, torch.Tensor)
    if not is_torch and not isinstance(ws, np.ndarray):
        raise ValueError(f"ws must be a numpy array or a torch tensor, got {type(ws).__name__}")
    if ws.ndim not in (2, 3):
        raise ValueError(f"ws must have shape [N, num_ws, w_dim] or [num_ws, w_dim], got {tuple(ws.shape)}")
    floating = ws.is_floating_point() if is_torch else np.issubdtype(ws.dtype, np.floating)
    if not floating:
        raise ValueError(f"ws must be floating point, got dtype {ws.dtype}")
    num_ws, w_dim = int(ws.shape[-2]), int(ws.shape[-1])
    if w_dim != vec.shape[0]:
        raise ValueError(f"direction {what} has w_dim {vec.shape[0]} but ws {tuple(ws.shape)} have w_dim {w_dim} "
                         f"(directions computed for another model?)")
    if layers is None:
        rows = list(range(num_ws))
    else:
        rows = layer_rows(layers, num_ws)
    delta = np.zeros((num_ws, w_dim), dtype=np.float64)
    delta[rows] = (strength * scale) * vec.astype(np.float64)
    if is_torch:
        return ws + torch.as_tensor(delta, dtype=ws.dtype, device=ws.device)
    return ws + delta.astype(ws.dtype, copy=False)


# ------------------------------------------------------------------------------------------------
# Sampling and labelling


def _check_int(value, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_generator(G) -> None:
    for attr in ("mapping", "synthesis", "z_dim", "w_dim", "num_ws"):
        if not hasattr(G, attr):
            raise ValueError(f"G must be a StyleGAN2 Generator (mapping, synthesis, z_dim, w_dim, num_ws); "
                             f"{type(G).__name__} has no {attr!r}")
    if getattr(G, "c_dim", 0):
        raise ValueError(f"conditional generators (c_dim={G.c_dim}) are not supported: directions need "
                         f"unconditional samples")


def _device_of(G) -> torch.device:
    try:
        return next(G.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def _sample_w(G, n: int, *, seed: int, stream: int, truncation_psi: float, batch: int) -> np.ndarray:
    """n latents z ~ N(0, I) from np.random.default_rng([seed, stream]) -> w float32 [n, w_dim]."""
    z = np.random.default_rng([seed, stream]).standard_normal((n, G.z_dim), dtype=np.float32)
    device = _device_of(G)
    out = np.empty((n, G.w_dim), dtype=np.float32)
    with torch.no_grad():
        for k in range(0, n, batch):
            zb = torch.from_numpy(z[k:k + batch]).to(device)
            ws = G.mapping(zb, None, truncation_psi=truncation_psi, update_emas=False)
            out[k:k + batch] = ws[:, 0].float().cpu().numpy()
    return out


def _label(classifier, G, ws: torch.Tensor, names: Iterable[str] | None) -> dict[str, np.ndarray]:
    """Render ws [B, num_ws, w_dim] (noise const) and return the classifier's probabilities."""
    with torch.no_grad():
        images = G.synthesis(ws, noise_mode="const").clamp(-1, 1)
    probs = classifier.predict(images)
    if not isinstance(probs, Mapping):
        raise ValueError(f"classifier.predict must return a dict {{attribute: probabilities}}, "
                         f"got {type(probs).__name__}")
    out = {}
    for name in (probs if names is None else names):
        if name not in probs:
            raise ValueError(f"the classifier has no attribute {name!r} (it predicts: {', '.join(probs)})")
        p = np.asarray(probs[name], dtype=np.float64).reshape(-1)
        if p.shape[0] != ws.shape[0]:
            raise ValueError(f"classifier.predict returned {p.shape[0]} values of {name!r} for {ws.shape[0]} images")
        out[name] = p
    return out


def _check_attributes(attributes, classifier) -> tuple[str, ...]:
    if isinstance(attributes, str):
        attributes = (attributes,)
    attributes = tuple(attributes)
    if not attributes or not all(isinstance(a, str) and a and "/" not in a for a in attributes):
        raise ValueError(f"attributes must be a non-empty sequence of names, got {attributes!r}")
    if len(set(attributes)) != len(attributes):
        raise ValueError(f"attributes listed twice: {attributes!r}")
    known = getattr(classifier, "label_names", None)
    if known is not None:
        missing = [a for a in attributes if a not in known]
        if missing:
            raise ValueError(f"the classifier has no attribute {missing[0]!r} (it predicts: {', '.join(known)})")
    return attributes


def _check_methods(methods) -> tuple[str, ...]:
    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(methods)
    bad = [m for m in methods if m not in METHODS]
    if not methods or bad or len(set(methods)) != len(methods):
        raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {methods!r}")
    return methods


def _classifier_name(classifier) -> str:
    name = getattr(classifier, "name", None)
    path = getattr(classifier, "path", None)
    return str(name or path or type(classifier).__name__)


# ------------------------------------------------------------------------------------------------
# Fitting


def _split(labels: np.ndarray, *, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split -> (train indices, held-out indices); each class gives >= 1 sample to each side."""
    rng = np.random.default_rng([seed, _STREAM_SPLIT])
    train, test = [], []
    for cls in (False, True):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        k = min(max(1, int(round(holdout * len(idx)))), len(idx) - 1)
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _mean_diff(w: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """(unit vector, threshold on w . vector half-way between the projected class means)."""
    v = w[y].mean(0, dtype=np.float64) - w[~y].mean(0, dtype=np.float64)
    norm = float(np.linalg.norm(v))
    if not norm > 0:
        raise ValueError("the positive and negative samples have the same mean w: no mean_diff direction")
    v /= norm
    proj = w.astype(np.float64) @ v
    return v, 0.5 * (proj[y].mean() + proj[~y].mean())


def _logistic(w: np.ndarray, y: np.ndarray, *, l2: float, max_iter: int) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression on standardised w (L-BFGS, float64).

    Returns (normal, intercept) in raw W coordinates: logit(w) = w . normal + intercept, the normal
    not normalised."""
    x = torch.from_numpy(np.asarray(w, dtype=np.float64))
    t = torch.from_numpy(y.astype(np.float64))
    mu = x.mean(0)
    sd = x.std(0)
    flat = sd <= 1e-6 * float(sd.max())  # (nearly) constant dimensions carry no information
    sd = torch.where(flat, torch.ones_like(sd), sd)
    xs = (x - mu) / sd
    xs[:, flat] = 0
    beta = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    rate = float(t.mean())
    bias = torch.tensor(math.log(rate / (1 - rate)), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([beta, bias], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-10, tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xs @ beta + bias, t)
        loss = loss + 0.5 * l2 * beta.dot(beta)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    b = beta.detach()
    normal = torch.where(flat, torch.zeros_like(b), b / sd)
    intercept = float(bias.detach()) - float((mu * normal).sum())
    return normal.numpy(), intercept


def _fit(method: str, w: np.ndarray, y: np.ndarray, *, l2: float, max_iter: int):
    """-> (unit vector, decision function w -> bool)."""
    if method == "mean_diff":
        v, thr = _mean_diff(w, y)
        return v, (lambda x: x.astype(np.float64) @ v >= thr)
    normal, intercept = _logistic(w, y, l2=l2, max_iter=max_iter)
    norm = float(np.linalg.norm(normal))
    if not norm > 0 or not math.isfinite(norm):
        raise ValueError("the logistic regression found no boundary (all weights zero): are the labels "
                         "independent of w?")
    return normal / norm, (lambda x: x.astype(np.float64) @ normal + intercept >= 0)


def _direction(attribute: str, method: str, vector: np.ndarray, w64: np.ndarray, pred: np.ndarray,
               truth: np.ndarray, n: int, pos: int) -> "Direction":
    """A Direction from its unit vector, the samples (for `scale`) and the held-out predictions."""
    scale = float(np.std(w64 @ vector))
    if not scale > 0:
        raise ValueError(f"{attribute!r}/{method}: the samples do not vary along the direction")
    accuracy = float((pred == truth).mean())
    balanced = float(0.5 * (pred[truth].mean() + (~pred[~truth]).mean()))
    return Direction(attribute=attribute, method=method, vector=vector, scale=scale,
                     accuracy=accuracy, balanced_accuracy=balanced, n=n, positives=pos)


def _condition(vector: np.ndarray, others: list, attribute: str) -> np.ndarray:
    """`vector` with its components along the span of `others` removed, unit norm."""
    v = np.asarray(vector, dtype=np.float64)
    if others:
        basis = np.stack(others).T.astype(np.float64)
        u, sv, _ = np.linalg.svd(basis, full_matrices=False)
        u = u[:, sv > 1e-8 * sv.max()]
        v = v - u @ (u.T @ v)
    norm = float(np.linalg.norm(v))
    if not norm > 1e-6:
        raise ValueError(f"{attribute!r}/conditional: its normal lies in the span of the other attributes' "
                         f"normals, nothing is left to move along")
    return v / norm


def directions_from_labels(w, labels: Mapping[str, np.ndarray], *, methods=METHODS, seed: int = 0,
                           min_count: int = 20, skip_rare: bool = False, holdout: float = 0.2,
                           l2: float = 1e-3, max_iter: int = 300, meta: dict | None = None) -> DirectionSet:
    """Directions from latents and their labels: {(attribute, method): Direction}.

    w: [n, w_dim] (numpy or torch; one w per sample). labels: {attribute: bool [n]} (probabilities
    are thresholded at 0.5). An attribute with fewer than `min_count` positives or negatives raises
    ValueError naming the counts, or, with `skip_rare`, is left out with a warning (the counts go
    into `.meta['skipped']`). `holdout`: share of each class held out for `accuracy`; `l2`: the
    logistic regression's penalty (0.5 * l2 * |beta|^2 on standardised features, added to the
    mean log-loss); `max_iter`: its L-BFGS iterations. 'conditional' is taken against the other
    attributes kept here (listed in `.meta['conditional_on']`); it fits their 'interfacegan'
    normals even when that method is not asked for.
    """
    if isinstance(w, torch.Tensor):
        w = w.detach().cpu().numpy()
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2 or w.shape[0] < 2 or w.shape[1] < 1:
        raise ValueError(f"w must have shape [n, w_dim] with n >= 2, got {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError("w contains NaN or infinite values")
    methods = _check_methods(methods)
    min_count = _check_int(min_count, "min_count", minimum=2)
    if isinstance(holdout, bool) or not isinstance(holdout, numbers.Real) or not 0 < holdout < 1:
        raise ValueError(f"holdout must be a share in (0, 1), got {holdout!r}")
    if isinstance(l2, bool) or not isinstance(l2, numbers.Real) or not 0 <= l2 < math.inf:
        raise ValueError(f"l2 must be a number >= 0, got {l2!r}")
    n = w.shape[0]
    out = DirectionSet(meta=meta)
    skipped = {}
    kept = {}  # attribute -> (labels, positives, train, test)
    for attribute, lab in labels.items():
        lab = np.asarray(lab).reshape(-1)
        if lab.shape[0] != n:
            raise ValueError(f"{attribute!r}: {lab.shape[0]} labels for {n} latents")
        y = lab.astype(bool) if lab.dtype == bool else lab.astype(np.float64) >= THRESHOLD
        pos = int(y.sum())
        neg = n - pos
        if min(pos, neg) < min_count:
            msg = (f"attribute {attribute!r} has {pos} positive and {neg} negative samples of {n}; need at "
                   f"least {min_count} of each (sample more, or the generator rarely makes this attribute)")
            if not skip_rare:
                raise ValueError(msg)
            warnings.warn(msg + ": skipped", stacklevel=2)
            skipped[attribute] = {"positives": pos, "negatives": neg, "n": n}
            continue
        kept[attribute] = (y, pos, *_split(y, holdout=holdout, seed=seed))
    w64 = w.astype(np.float64)
    found = {}    # (attribute, method) -> Direction
    normals = {}  # attribute -> (interfacegan unit normal on all samples, on the training split)
    for attribute, (y, pos, train, test) in kept.items():
        fit_methods = [m for m in methods if m != "conditional"]
        if "conditional" in methods and "interfacegan" not in fit_methods:
            fit_methods.append("interfacegan")  # the conditional direction is built from the normals
        for method in fit_methods:
            train_vector, decide = _fit(method, w[train], y[train], l2=l2, max_iter=max_iter)
            pred = decide(w[test])
            truth = y[test]
            vector, _ = _fit(method, w, y, l2=l2, max_iter=max_iter)
            if method == "interfacegan":
                normals[attribute] = (vector, train_vector)
            if method in methods:
                found[attribute, method] = _direction(attribute, method, vector, w64, pred, truth, n, pos)
    if "conditional" in methods:
        for attribute, (y, pos, train, test) in kept.items():
            others = [normals[o][0] for o in kept if o != attribute]
            full, on_train = (_condition(v, others, attribute) for v in normals[attribute])
            proj = w64 @ on_train
            thr = 0.5 * (proj[train][y[train]].mean() + proj[train][~y[train]].mean())
            found[attribute, "conditional"] = _direction(attribute, "conditional", full, w64, proj[test] >= thr,
                                                         y[test], n, pos)
        out.meta["conditional_on"] = {a: [o for o in kept if o != a] for a in kept}
    for attribute in kept:
        for method in methods:
            out[attribute, method] = found[attribute, method]
    if skipped:
        out.meta["skipped"] = skipped
    return out


def compute_directions(G, classifier, *, n: int = 20000, attributes=DEFAULT_ATTRIBUTES, methods=METHODS,
                       seed: int = 0, batch: int = 16, truncation_psi: float = 1.0,
                       progress: Callable[[int, int], None] | None = None, min_count: int = 20,
                       skip_rare: bool = False, holdout: float = 0.2, l2: float = 1e-3) -> DirectionSet:
    """Attribute directions of generator G labelled by `classifier` (see the module doc).

    G: a StyleGAN2 Generator (unconditional). classifier: an object with `.predict(images) ->
    {attribute: probabilities [N]}` taking float NCHW tensors in [-1, 1] (e.g.
    stylemix.attributes.load_classifier(...)). n latents from np.random.default_rng([seed, 0]),
    rendered `batch` at a time; progress(done, n) after each batch. min_count, skip_rare, holdout,
    l2: see `directions_from_labels`. Returns a DirectionSet whose .meta records model, n, seed,
    classifier, truncation_psi, methods, the share of positives per attribute and what was skipped.
    """
    _check_generator(G)
    n = _check_int(n, "n", minimum=2)
    batch = _check_int(batch, "batch", minimum=1)
    seed = _check_int(seed, "seed", minimum=0)
    attributes = _check_attributes(attributes, classifier)
    methods = _check_methods(methods)
    if isinstance(truncation_psi, bool) or not isinstance(truncation_psi, numbers.Real) \
            or not math.isfinite(truncation_psi):
        raise ValueError(f"truncation_psi must be a number, got {truncation_psi!r}")
    if not hasattr(classifier, "predict"):
        raise ValueError(f"classifier must have a .predict(images) method, got {type(classifier).__name__}")

    w = _sample_w(G, n, seed=seed, stream=_STREAM_FIT, truncation_psi=float(truncation_psi), batch=batch)
    device = _device_of(G)
    probs = {a: np.empty(n, dtype=np.float64) for a in attributes}
    for k in range(0, n, batch):
        wb = torch.from_numpy(w[k:k + batch]).to(device)
        p = _label(classifier, G, wb[:, None].expand(-1, G.num_ws, -1), attributes)
        for a in attributes:
            probs[a][k:k + batch] = p[a]
        if progress is not None:
            progress(min(k + batch, n), n)
    labels = {a: probs[a] >= THRESHOLD for a in attributes}
    meta = {
        "model": getattr(G, "model_name", None),
        "w_dim": int(G.w_dim),
        "num_ws": int(G.num_ws),
        "n": n,
        "seed": seed,
        "classifier": _classifier_name(classifier),
        "threshold": THRESHOLD,
        "truncation_psi": float(truncation_psi),
        "methods": list(methods),
        "attributes": list(attributes),
        "positive_rate": {a: round(float(labels[a].mean()), 6) for a in attributes},
        "mean_probability": {a: round(float(probs[a].mean()), 6) for a in attributes},
        "holdout": holdout,
        "l2": l2,
    }
    return directions_from_labels(w, labels, methods=methods, seed=seed, min_count=min_count,
                                  skip_rare=skip_rare, holdout=holdout, l2=l2, meta=meta)


def _strength_key(s: float) -> str:
    return f"{s:+g}"


def measure_effects(G, classifier, directions: Mapping, *, n: int = 500, strengths=(2.0, -2.0), seed: int = 0,
                    batch: int = 16, layers=None, truncation_psi: float = 1.0,
                    progress: Callable[[int, int], None] | None = None) -> tuple[dict, dict]:
    """What each direction does to the classifier: the entanglement readout.

    On n fresh samples (np.random.default_rng([seed, 1]), not the ones directions are fitted on
    with the same seed) renders each latent as is and edited by each direction at each strength
    (all rows, or `layers`), and averages the change of every probability the classifier returns.
    Returns (base, effects): base = {label: mean probability of the unedited samples}; effects =
    {(attribute, method): {'+2': {label: mean change}, '-2': {...}}}. progress(done, total) counts
    renders.
    """
    _check_generator(G)
    n = _check_int(n, "n", minimum=1)
    batch = _check_int(batch, "batch", minimum=1)
    seed = _check_int(seed, "seed", minimum=0)
    strengths = [_strength(s) for s in strengths]
    dirs = list(directions.items())
    for key, d in dirs:
        if not isinstance(d, Direction):
            raise ValueError(f"directions must map keys to Direction objects, got {type(d).__name__} at {key!r}")
        if d.w_dim != G.w_dim:
            raise ValueError(f"direction {d.key_str} has w_dim {d.w_dim}, the generator {G.w_dim}")
    w = _sample_w(G, n, seed=seed, stream=_STREAM_EFFECTS, truncation_psi=float(truncation_psi), batch=batch)
    device = _device_of(G)
    total = n * (1 + len(dirs) * len(strengths))
    done = 0
    base_sum: dict[str, float] = {}
    sums = {key: {s: {} for s in strengths} for key, _ in dirs}
    for k in range(0, n, batch):
        wb = torch.from_numpy(w[k:k + batch]).to(device)
        ws = wb[:, None].expand(-1, G.num_ws, -1)
        base = _label(classifier, G, ws, None)
        for name, p in base.items():
            base_sum[name] = base_sum.get(name, 0.0) + float(p.sum())
        done += len(wb)
        for key, d in dirs:
            for s in strengths:
                p = _label(classifier, G, edit(ws, d, s, layers=layers), base.keys())
                acc = sums[key][s]
                for name in base:
                    acc[name] = acc.get(name, 0.0) + float((p[name] - base[name]).sum())
                done += len(wb)
                if progress is not None:
                    progress(done, total)
        if progress is not None and not dirs:
            progress(done, total)
    base_mean = {name: v / n for name, v in base_sum.items()}
    effects = {key: {_strength_key(s): {name: v / n for name, v in sums[key][s].items()} for s in strengths}
               for key, _ in dirs}
    return base_mean, effects


# ------------------------------------------------------------------------------------------------
# Files


def _jsonable(value, what: str):
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be JSON-serialisable: {exc}") from None


def save_directions(path, directions: Mapping, *, meta: dict | None) -> Path:
    """Write `directions` ({key: Direction}) and `meta` (JSON-serialisable dict: model name, n,
    seed, classifier, ...; None = the DirectionSet's own .meta) to a safetensors file, atomically."""
    from safetensors.torch import save

    if meta is None:
        meta = getattr(directions, "meta", {})
    if not isinstance(meta, dict):
        raise ValueError(f"meta must be a dict, got {type(meta).__name__}")
    if not directions:
        raise ValueError("no directions to save")
    tensors, records, dims = {}, [], set()
    for key, d in directions.items():
        if not isinstance(d, Direction):
            raise ValueError(f"directions must map keys to Direction objects, got {type(d).__name__} at {key!r}")
        if isinstance(key, tuple) and key != d.key:
            raise ValueError(f"direction {d.key_str} stored under the key {key!r}")
        if d.key_str in tensors:
            raise ValueError(f"direction {d.key_str} listed twice")
        dims.add(d.w_dim)
        tensors[d.key_str] = torch.from_numpy(np.ascontiguousarray(d.vector, dtype=np.float32))
        records.append({"attribute": d.attribute, "method": d.method, "key": d.key_str, "scale": d.scale,
                        "accuracy": d.accuracy, "balanced_accuracy": d.balanced_accuracy, "n": int(d.n),
                        "positives": d.positives, "effects": d.effects})
    if len(dims) != 1:
        raise ValueError(f"directions of different w_dim in one file: {sorted(dims)}")
    header = {
        "format": FORMAT,
        "format_version": json.dumps(FORMAT_VERSION),
        "directions": json.dumps(_jsonable(records, "direction records")),
        "meta": json.dumps(_jsonable(meta, "meta")),
    }
    return atomic_write_bytes(Path(path), save(tensors, metadata=header))


def _bad(path, why: str) -> ValueError:
    return ValueError(f"{str(path)!r} is not a usable directions file: {why}")


def load_directions(name_or_path) -> DirectionSet:
    """Directions from a registered name (stylemix.pretrained, e.g. 'synthfaces64-directions') or a
    file path -> DirectionSet {(attribute, method): Direction} with .meta and .path. ValueError
    when the file is missing, fails its registry checksum or is not a readable directions file."""
    from safetensors import safe_open

    from . import pretrained

    try:
        path = pretrained.resolve(name_or_path)
    except pretrained.FetchError as exc:  # a registered file that is missing or fails its checksum
        raise ValueError(str(exc)) from exc
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            keys = set(f.keys())
            if raw.get("format") != FORMAT:
                raise _bad(path, f"metadata format={raw.get('format')!r}, expected {FORMAT!r}")
            try:
                version = json.loads(raw.get("format_version", "null"))
                records = json.loads(raw.get("directions", "null"))
                meta = json.loads(raw.get("meta", "{}"))
            except ValueError as exc:
                raise _bad(path, f"metadata is not valid JSON ({exc})") from None
            if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
                raise _bad(path, f"format version {version!r} (this StyleMix reads up to {FORMAT_VERSION})")
            if not isinstance(records, list) or not records or not isinstance(meta, dict):
                raise _bad(path, "metadata 'directions' must be a non-empty list and 'meta' an object")
            out = DirectionSet(meta=meta, path=str(path))
            for rec in records:
                if not isinstance(rec, dict) or rec.get("key") not in keys:
                    raise _bad(path, f"record {rec!r} names no tensor in the file")
                vec = f.get_tensor(rec["key"])
                if vec.ndim != 1 or not vec.is_floating_point():
                    raise _bad(path, f"tensor {rec['key']!r} has shape {tuple(vec.shape)} dtype {vec.dtype}, "
                                     f"expected a float vector")
                norm = float(vec.double().norm())
                if not abs(norm - 1.0) < 1e-3:
                    raise _bad(path, f"tensor {rec['key']!r} is not unit-norm (norm {norm})")
                try:
                    d = Direction(attribute=rec["attribute"], method=rec["method"], vector=vec.float().numpy(),
                                  scale=rec["scale"], accuracy=rec.get("accuracy"),
                                  balanced_accuracy=rec.get("balanced_accuracy"), n=int(rec.get("n", 0)),
                                  positives=rec.get("positives"), effects=rec.get("effects"))
                except (KeyError, TypeError, ValueError) as exc:
                    raise _bad(path, f"record {rec.get('key')!r}: {exc}") from None
                if d.key in out:
                    raise _bad(path, f"direction {d.key_str} listed twice")
                out[d.key] = d
    except ValueError:
        raise
    except Exception as exc:  # safetensors raises its own error types for truncated/corrupt files
        raise _bad(path, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if out.w_dim is None:
        raise _bad(path, "its directions differ in w_dim")
    return out


def default_path(model_name: str) -> Path:
    """cache_dir()/directions/<model_name>-directions.safetensors (where training.directions writes)."""
    from . import pretrained

    return pretrained.cache_dir() / "directions" / f"{model_name}{DIRECTIONS_SUFFIX}.safetensors"


def find_directions(G) -> DirectionSet | None:
    """G's directions: the registered f'{G.model_name}-directions', else
    cache_dir()/directions/{G.model_name}-directions.safetensors, else None (also when G has no
    model_name). ValueError when the file found is unusable or its w_dim is not G's."""
    from . import pretrained

    name = getattr(G, "model_name", None)
    if not isinstance(name, str) or not name:
        return None
    registered = name + DIRECTIONS_SUFFIX
    if pretrained.is_registered(registered):
        dirs = load_directions(registered)
    else:
        path = default_path(name)
        if not path.is_file():
            return None
        dirs = load_directions(path)
    if dirs.w_dim != G.w_dim:
        raise ValueError(f"directions {dirs.path!r} have w_dim {dirs.w_dim}, but {name!r} has w_dim {G.w_dim}")
    return dirs
