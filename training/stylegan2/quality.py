"""The `synthfaces64` quality bar: a generator against held-out synthfaces renders.

    python -m training.stylegan2.quality --model run/network-snapshot-000400.safetensors \\
        --render-options '{"res": 64}' --n 5000
    python -m training.stylegan2.quality --model net.safetensors --data synthfaces64.zip --n 5000
    python -m training.stylegan2.quality --model net.safetensors --data synthfaces64.zip --seeds 0-3

`synthfaces_quality(G, ...)` draws `num_samples` images from G (truncation 1; noise_mode 'random'
by default, G's own default and what the official metrics sample with, the noise drawn from torch's
generator seeded with `seed`, or 'const', the fixed noise maps; z from numpy RandomState(seed)),
and measures them with the shipped attribute classifier
(`stylemix.attributes.load_classifier('synthfaces64')`):

- fd: Frechet distance of the classifier's 128-d features against `num_samples` held-out renders
  of the training distribution (`render_batch(n, res, seed=reference, **fixed)`);
- floor: the same distance between two independent render sets of that size (seeds `reference`
  and `reference + 1`); ratio = fd / floor;
- rates: each attribute's rate (probability >= 0.5) on the samples and on the reference renders,
  and their gap;
- passed: ratio <= 5 and every |gap| <= 0.05 (has_beard, shaved, glasses, smile). The bar is
  defined at 5,000 samples (`at_bar_size` says whether this evaluation used it); FD is biased
  by the sample size, so the floor is always measured at the same size as the samples.
- diagnosis (`--diagnose [K]`): fd split into its mean term |mu_r - mu_g|^2 and covariance term,
  the samples' total variance over the renders', and per principal axis of the reference
  features (first K, default 8) the samples' variance and mean shift along it, the floor set's
  variance there, and the render parameters the axis follows: a generator that is less varied
  than its data (a covariance term well above the floor's) shows which traits it narrows; the
  covariance term is split again into what each axis contributes on its own and what comes from
  axes that move together in the samples (with the most correlated pairs among the first K).

Render options are a JSON object: {"res": 64} for the natural distribution, plus attribute pins
accepted by render_batch ({"res": 64, "has_beard": true, "shaved": false}). The reference and
floor statistics are cached as ReferenceStats .npz files (plus a JSON side file with the rates)
under $STYLEMIX_CACHE/quality/, keyed by render options, n, seed and classifier name.
Render seeds 7100-7109 are reserved for the classifier's data and refused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
import time
import zipfile
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from training.evaluation.metrics import (ClassifierFeatures, ReferenceStats, _psd_eigh, attribute_rates,
                                         frechet_distance_from_stats, to_jsonable)

__all__ = ["synthfaces_quality", "reference_stats", "floor_distance", "check_render_options",
           "render_options_from_dataset", "format_table", "diagnose", "format_diagnosis", "parse_seeds",
           "summarize_seeds",
           "load_quality_generator", "main", "QUALITY_ATTRS",
           "BAR_FD_RATIO", "BAR_RATE_GAP", "BAR_NUM_SAMPLES", "RESERVED_SEEDS", "DEFAULT_REFERENCE_SEED"]

QUALITY_ATTRS = ("has_beard", "shaved", "glasses", "smile")
BAR_FD_RATIO = 5.0            # fd <= 5 x floor
BAR_RATE_GAP = 0.05           # |rate - reference rate| <= 5 points, per attribute
BAR_NUM_SAMPLES = 5000        # the size the bar is defined at
RESERVED_SEEDS = range(7100, 7110)  # the classifier's training/validation renders
DEFAULT_REFERENCE_SEED = 9000  # held-out renders: seeds 9000 (reference) and 9001 (floor)
CLASSIFIER_NAME = "synthfaces64"
CACHE_VERSION = 1
FIXED_KEYS = ("beard", "hair", "glasses", "smile", "has_beard", "shaved")
_CHUNK = 500                  # renders / samples measured at a time (bounds memory)


# ------------------------------------------------------------------------------------------------
# Render options

def check_render_options(render_options) -> dict:
    """{'res': R, **fixed} validated and normalised (ValueError naming the bad value)."""
    if isinstance(render_options, str):
        try:
            render_options = json.loads(render_options)
        except ValueError as exc:
            raise ValueError(f"render options {render_options!r} are not JSON ({exc})") from None
    if not isinstance(render_options, Mapping):
        raise ValueError(f"render options must be a JSON object like {{\"res\": 64}}, got {render_options!r}")
    ro = dict(render_options)
    if "res" not in ro:
        raise ValueError(f"render options {ro} lack 'res' (the resolution of the training data)")
    res = ro["res"]
    if isinstance(res, bool) or not isinstance(res, int) or res < 8:
        raise ValueError(f"render options: 'res' must be an integer >= 8, got {res!r}")
    unknown = sorted(set(ro) - {"res", *FIXED_KEYS})
    if unknown:
        raise ValueError(f"render options: unknown key(s) {unknown}; allowed: 'res', {', '.join(FIXED_KEYS)}")
    fixed = {k: ro[k] for k in FIXED_KEYS if k in ro}
    from training.data.synthfaces import params_for

    params_for(0, 0, **fixed)  # raises ValueError for a bad pin
    return {"res": int(res), **fixed}


def render_options_from_dataset(path) -> dict | None:
    """What a synthfaces dataset zip records about its distribution:
    {'render_options': {...}, 'train_seeds': [...]}, or None when the zip is not a synthfaces
    zip or its distribution is not one render_batch call can reproduce (a --split pool)."""
    from training.data.synthfaces import SPLIT_FIXED

    path = Path(path).expanduser()
    if not (path.is_file() and zipfile.is_zipfile(path)):
        return None
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        if "dataset.json" not in names or "params.jsonl" not in names:
            return None
        try:
            meta = json.loads(zf.read("dataset.json"))
        except ValueError:
            return None
        if not isinstance(meta, dict) or meta.get("generator") != "training.data.synthfaces":
            return None
        res = meta.get("resolution")
        text = zf.read("params.jsonl").decode("utf-8")
    splits = set(re.findall(r'"split":\s*"([^"]*)"', text))
    seeds = sorted({int(s) for s in re.findall(r'"seed":\s*\[\s*(-?\d+)', text)})
    if not isinstance(res, int) or not splits:
        return None
    if splits == {"all"}:
        ro = {"res": res}
    elif len(splits) == 1 and next(iter(splits)) in SPLIT_FIXED:
        ro = {"res": res, **SPLIT_FIXED[next(iter(splits))]}
    else:
        return None
    return {"render_options": ro, "train_seeds": seeds}


def _check_seed(seed, what: str, exclude: Sequence[int] = ()) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"{what} must be an integer seed, got {seed!r}")
    seed = int(seed)
    if seed in RESERVED_SEEDS:
        raise ValueError(f"{what} {seed}: render seeds {RESERVED_SEEDS.start}-{RESERVED_SEEDS.stop - 1} are "
                         f"reserved for the classifier's data")
    if seed in set(int(s) for s in exclude):
        raise ValueError(f"{what} {seed} is a seed of the training data; held-out renders need another seed")
    return seed


# ------------------------------------------------------------------------------------------------
# Reference statistics (rendered, measured, cached)

def _params(n: int, render_options: Mapping, seed: int, start: int = 0) -> list[dict]:
    """Render parameters of faces start..start+n-1 of `seed` under the options' attribute pins."""
    from training.data.synthfaces import params_for

    fixed = {k: v for k, v in render_options.items() if k != "res"}
    return [params_for(seed, i, **fixed) for i in range(start, start + n)]


def _render(n: int, render_options: dict, seed: int, start: int = 0) -> np.ndarray:
    """Renders start..start+n-1 of `seed` (uint8 [n, R, R, 3]). Module-level so tests can count calls."""
    from training.data.synthfaces import render_many

    return render_many(_params(n, render_options, seed, start), render_options["res"])


def _cache_dir() -> Path:
    from stylemix.pretrained import cache_dir

    return cache_dir() / "quality"


def _cache_key(render_options: dict, n: int, seed: int, net_name: str) -> str:
    blob = json.dumps({"v": CACHE_VERSION, "render_options": render_options, "n": int(n), "seed": int(seed),
                       "feature_net": net_name}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


def _measure(batches, classifier, net: ClassifierFeatures) -> tuple[np.ndarray, dict]:
    feats, probs = [], {}
    for x in batches:
        feats.append(net.features(x))
        for k, v in classifier.predict(x).items():
            probs.setdefault(k, []).append(np.asarray(v, dtype=np.float64).reshape(-1))
    return np.concatenate(feats), {k: np.concatenate(v) for k, v in probs.items()}


def reference_stats(n: int, render_options, *, seed: int, classifier, use_cache: bool = True,
                    log: Callable[[str], None] | None = None) -> tuple[ReferenceStats, dict]:
    """(ReferenceStats of n renders of `seed`, {'rates': {...}, 'label_rates': {...}, 'cached': bool,
    'path': str}), read from or written to the cache."""
    ro = check_render_options(render_options)
    n = int(n)
    if n < 2:
        raise ValueError(f"need at least 2 renders, got n={n}")
    seed = _check_seed(seed, "render seed")
    net = ClassifierFeatures(classifier)
    key = _cache_key(ro, n, seed, net.name)
    path = _cache_dir() / f"synthfaces-ref-{key}.npz"
    side = path.with_suffix(".json")
    if use_cache and path.is_file() and side.is_file():
        try:
            stats = ReferenceStats.load(path)
            info = json.loads(side.read_text())
            if stats.feature_net == net.name and stats.num_items == n and isinstance(info.get("rates"), dict):
                return stats, dict(info, cached=True, path=str(path))
        except ValueError:
            pass  # unreadable: recompute and overwrite
    if log is not None:
        log(f"rendering {n} reference faces (seed {seed}, {ro}) ...")
    t0 = time.time()
    feats, probs = _measure((_render(min(_CHUNK, n - s), ro, seed, s) for s in range(0, n, _CHUNK)),
                            classifier, net)
    stats = ReferenceStats.from_features(feats, net.name, keep_features=False)
    info = {"render_options": ro, "n": n, "seed": seed, "feature_net": net.name,
            "rates": attribute_rates(probs), "sec": round(time.time() - t0, 2)}
    if use_cache:
        from stylemix.fileio import atomic_write_text

        stats.save(path)
        atomic_write_text(side, json.dumps(to_jsonable(info), indent=1) + "\n")
    return stats, dict(info, cached=False, path=str(path) if use_cache else None)


def _fd(a: ReferenceStats, b: ReferenceStats) -> float:
    a.check_net(b.feature_net)
    return float(frechet_distance_from_stats(a.mu, a.sigma, b.mu, b.sigma))


def floor_distance(n: int, render_options, *, seeds: tuple[int, int] = (DEFAULT_REFERENCE_SEED,
                                                                       DEFAULT_REFERENCE_SEED + 1),
                   classifier, use_cache: bool = True, log=None) -> float:
    """FD between the classifier features of two render sets of size n (seeds[0], seeds[1]):
    the distance that sampling noise alone gives. Identical seeds give 0 (up to rounding)."""
    a, _ = reference_stats(n, render_options, seed=seeds[0], classifier=classifier, use_cache=use_cache, log=log)
    b, _ = reference_stats(n, render_options, seed=seeds[1], classifier=classifier, use_cache=use_cache, log=log)
    return _fd(a, b)


# ------------------------------------------------------------------------------------------------
# Samples from G

def _generate(G, n: int, *, seed: int, batch: int, noise_mode: str = "const"):
    """Yields uint8 NHWC chunks of G's samples: z ~ RandomState(seed), truncation 1, `noise_mode`
    ('random': torch's global generator, seeded with `seed` here and restored afterwards)."""
    import torch

    if getattr(G, "c_dim", 0):
        raise ValueError(f"conditional generators (c_dim={G.c_dim}) are not supported by the synthfaces quality "
                         f"check; it compares unconditional samples with the natural distribution")
    device = next(G.parameters()).device
    z_all = np.random.RandomState(seed).randn(n, G.z_dim).astype(np.float32)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield from _chunks(G, z_all, device, batch, noise_mode)


def _chunks(G, z_all, device, batch: int, noise_mode: str):
    import torch

    n = len(z_all)
    for s in range(0, n, _CHUNK):
        out = []
        for b in range(s, min(s + _CHUNK, n), batch):
            z = torch.from_numpy(z_all[b:min(b + batch, s + _CHUNK, n)]).to(device)
            with torch.no_grad():
                img = G(z, None, truncation_psi=1, noise_mode=noise_mode)
            out.append((img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8).cpu().numpy())
        yield np.concatenate(out)


def synthfaces_quality(G, *, num_samples: int = BAR_NUM_SAMPLES, reference: int = DEFAULT_REFERENCE_SEED,
                       render_options=None, seed: int = 0, batch: int = 16, classifier=None,
                       exclude_seeds: Sequence[int] = (), use_cache: bool = True,
                       log: Callable[[str], None] | None = None, noise_mode: str = "random",
                       diagnose_components: int = 0) -> dict:
    """The synthfaces64 quality bar for generator G, as a JSON-able dict.

    num_samples: samples from G, and the size of each render set; reference: render seed of the
    held-out reference set (the floor's second set uses reference + 1); render_options: the
    training distribution ({'res': R, **pins}; default {'res': G.img_resolution}); seed: seed of
    G's z; batch: images per G forward pass; classifier: default load_classifier('synthfaces64');
    exclude_seeds: the training data's render seeds (refused as reference seeds); noise_mode:
    'random' (G's default and the official metrics': fresh noise maps per sample) or 'const';
    diagnose_components: if > 0, the report's 'diagnosis' says where the distance comes from along
    that many principal axes of the reference features (see `diagnose`).
    """
    n = int(num_samples)
    if noise_mode not in ("const", "random"):
        raise ValueError(f"noise_mode must be 'const' or 'random', got {noise_mode!r}")
    if n < 2:
        raise ValueError(f"num_samples must be >= 2, got {num_samples}")
    if int(batch) < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if isinstance(diagnose_components, bool) or int(diagnose_components) < 0:
        raise ValueError(f"diagnose_components must be an int >= 0, got {diagnose_components!r}")
    ro = check_render_options(render_options if render_options is not None else {"res": int(G.img_resolution)})
    if ro["res"] != int(G.img_resolution):
        raise ValueError(f"G makes {G.img_resolution}x{G.img_resolution} images but the render options say "
                         f"res {ro['res']}; compare at the training resolution")
    ref_seed = _check_seed(reference, "reference", exclude_seeds)
    floor_seed = _check_seed(ref_seed + 1, "floor seed (reference + 1)", exclude_seeds)
    if classifier is None:
        from stylemix.attributes import load_classifier

        classifier = load_classifier(CLASSIFIER_NAME)
    net = ClassifierFeatures(classifier)
    t0 = time.time()
    ref, ref_info = reference_stats(n, ro, seed=ref_seed, classifier=classifier, use_cache=use_cache, log=log)
    other, other_info = reference_stats(n, ro, seed=floor_seed, classifier=classifier, use_cache=use_cache, log=log)
    floor = _fd(ref, other)
    t1 = time.time()
    was_training = G.training
    G.eval()
    try:
        feats, probs = _measure(_generate(G, n, seed=int(seed), batch=int(batch), noise_mode=noise_mode),
                                classifier, net)
    finally:
        G.train(was_training)
    fake = ReferenceStats.from_features(feats, net.name, keep_features=False)
    fd = _fd(ref, fake)
    rates = attribute_rates(probs)
    ref_rates = ref_info["rates"]
    attrs = [a for a in QUALITY_ATTRS if a in rates and a in ref_rates]
    missing = [a for a in QUALITY_ATTRS if a not in attrs]
    if missing:
        raise ValueError(f"the classifier does not predict {missing}")
    gaps = {a: rates[a] - ref_rates[a] for a in attrs}
    ratio = fd / floor if floor > 0 else (math.inf if fd > 0 else 1.0)
    ok_fd = ratio <= BAR_FD_RATIO
    ok_rates = {a: abs(g) <= BAR_RATE_GAP for a, g in gaps.items()}
    report = {
        "metric": "synthfaces",
        "num_samples": n,
        "feature_net": net.name,
        "fd": fd, "floor": floor, "ratio": ratio if math.isfinite(ratio) else None,
        "rates": {a: rates[a] for a in attrs},
        "reference_rates": {a: ref_rates[a] for a in attrs},
        "rate_gaps": gaps,
        "bar": {"fd_ratio_max": BAR_FD_RATIO, "rate_gap_max": BAR_RATE_GAP, "num_samples": BAR_NUM_SAMPLES},
        "checks": {"fd_ratio": ok_fd, **{f"rate_{a}": ok for a, ok in ok_rates.items()}},
        "passed": bool(ok_fd and all(ok_rates.values())),
        "at_bar_size": n == BAR_NUM_SAMPLES,
        "render_options": ro,
        "reference_seed": ref_seed, "floor_seed": floor_seed, "seed": int(seed),
        "truncation_psi": 1.0, "noise_mode": noise_mode,
        "reference_cached": bool(ref_info["cached"] and other_info["cached"]),
        "sec": {"reference": round(t1 - t0, 2), "samples": round(time.time() - t1, 2)},
    }
    if int(diagnose_components) > 0:
        t2 = time.time()
        report["diagnosis"] = diagnose(ref, other, fake, classifier=classifier, render_options=ro,
                                       reference_seed=ref_seed, components=int(diagnose_components),
                                       params_n=max(3, min(1000, n)))
        report["sec"]["diagnosis"] = round(time.time() - t2, 2)
    return to_jsonable(report)


# ------------------------------------------------------------------------------------------------
# Diagnosis: where the distance comes from

def _flat_params(p: Mapping, prefix: str = "") -> dict:
    """Numeric view of one face's render parameters: numbers and booleans as they are, list entries
    one by one ('identity.skin[0]'), strings as 0/1 indicators ('attributes.hair=long')."""
    out = {}
    for k, v in p.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat_params(v, name + "."))
        elif isinstance(v, (bool, int, float, np.integer, np.floating)):
            out[name] = float(v)
        elif isinstance(v, str):
            out[f"{name}={v}"] = 1.0
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                if isinstance(x, (bool, int, float, np.integer, np.floating)):
                    out[f"{name}[{i}]"] = float(x)
    return out


def _split(a: ReferenceStats, b: ReferenceStats) -> dict:
    fd = _fd(a, b)
    mean = float(((a.mu - b.mu) ** 2).sum())
    return {"fd": fd, "mean_term": mean, "covariance_term": fd - mean}


def _along_axes(w: np.ndarray, var: np.ndarray) -> float:
    """The covariance term against a reference with eigenvalues w if the other set's covariance,
    rotated into the reference's eigenvectors, kept only its diagonal `var`."""
    return float(((np.sqrt(np.maximum(w, 0)) - np.sqrt(np.maximum(var, 0))) ** 2).sum())


def _correlation(c: np.ndarray) -> np.ndarray:
    """A covariance matrix as correlations (0 where a variance is 0)."""
    d = np.sqrt(np.maximum(np.diag(c), 0))
    dd = np.outer(d, d)
    return np.where(dd > 0, c / np.where(dd > 0, dd, 1.0), 0.0)


def _correlated_axes(c_fake: np.ndarray, c_other: np.ndarray, top: int) -> list:
    """The `top` most correlated pairs (i, j, r_fake, r_other) of two covariances in the same axes."""
    cf, co = _correlation(c_fake), _correlation(c_other)
    i, j = np.triu_indices(len(cf), 1)
    order = np.argsort(-np.abs(cf[i, j]), kind="stable")[:max(0, top)]
    return [[int(i[k]), int(j[k]), float(cf[i[k], j[k]]), float(co[i[k], j[k]])] for k in order]


def diagnose(ref: ReferenceStats, other: ReferenceStats, fake: ReferenceStats, *, classifier,
             render_options: Mapping, reference_seed: int, components: int = 8, params_n: int = 1000,
             top_params: int = 2, top_pairs: int = 5) -> dict:
    """Where a generator's distance to the reference comes from, as a JSON-able dict.

    fd = |mu_r - mu_g|^2 (mean_term) + the covariance term, for the samples and for the floor's
    second render set; variance_ratio = tr(cov samples) / tr(cov reference); and, along each of the
    reference features' first `components` principal axes: the reference variance, the samples'
    variance over it (variance_ratio; < 1: less varied than the renders), the samples' mean shift in
    reference standard deviations, the floor set's variance ratio (what sampling noise alone gives),
    and the render parameters the axis follows most (|Pearson r| over the first `params_n` faces
    of the reference seed, whose parameters are known).

    The covariance term is split in two: along_axes, what it would be if the samples' covariance
    kept only its diagonal in the reference's principal axes (each axis too narrow or too wide on
    its own: sum over all axes of (sd_reference - sd_samples)^2), and between_axes, the rest (the
    samples' axes are mixed: factors that vary independently in the renders move together). The
    second part is >= 0, as dropping the off-diagonal entries never lowers the fidelity term.
    correlated_axes: the `top_pairs` pairs among the first `components` axes whose correlation in
    the samples is largest (in the reference it is 0 by construction), with the floor set's.
    """
    components = int(components)
    if components < 1:
        raise ValueError(f"components must be >= 1, got {components}")
    if int(params_n) < 3:
        raise ValueError(f"params_n must be >= 3, got {params_n}")
    from training.data.synthfaces import render_many

    w_all, v_all = _psd_eigh(ref.sigma)
    order = np.argsort(w_all)[::-1]
    w_all, v_all = w_all[order], v_all[:, order]
    k = min(components, len(w_all))
    w, v = w_all[:k], v_all[:, :k]
    safe = np.where(w > 0, w, np.inf)
    # each set's covariance in the reference's principal axes, largest first
    c_fake, c_floor = (v_all.T @ s.sigma @ v_all for s in (fake, other))
    ratio_fake, ratio_floor = np.diag(c_fake)[:k] / safe, np.diag(c_floor)[:k] / safe
    shift_fake = ((fake.mu - ref.mu) @ v) / np.sqrt(safe)
    samples, floor = _split(ref, fake), _split(ref, other)
    for part, c in ((samples, c_fake), (floor, c_floor)):
        part["along_axes"] = _along_axes(w_all, np.diag(c))
        part["between_axes"] = part["covariance_term"] - part["along_axes"]
    pairs = _correlated_axes(c_fake[:k, :k], c_floor[:k, :k], top=int(top_pairs))

    params = _params(int(params_n), render_options, int(reference_seed))
    net = ClassifierFeatures(classifier)
    feats = np.concatenate([net.features(render_many(params[s:s + _CHUNK], int(render_options["res"])))
                            for s in range(0, len(params), _CHUNK)])
    proj = (feats - ref.mu) @ v
    flat = [_flat_params(p) for p in params]
    names = sorted(set().union(*flat))
    X = np.array([[f.get(k, 0.0) for k in names] for f in flat])
    Xc, Pc = X - X.mean(0), proj - proj.mean(0)
    denom = np.sqrt((Xc ** 2).sum(0))[:, None] * np.sqrt((Pc ** 2).sum(0))[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.where(denom > 0, (Xc.T @ Pc) / np.where(denom > 0, denom, 1.0), 0.0)  # [params, components]
    comps = []
    for j in range(len(w)):
        top = np.argsort(-np.abs(corr[:, j]), kind="stable")[:int(top_params)]
        comps.append({"component": j, "reference_variance": float(w[j]),
                      "variance_ratio": float(ratio_fake[j]), "mean_shift_sd": float(shift_fake[j]),
                      "floor_variance_ratio": float(ratio_floor[j]),
                      "follows": [[names[i], float(corr[i, j])] for i in top]})
    return {
        "samples": samples, "floor": floor, "correlated_axes": pairs,
        "variance_ratio": float(np.trace(fake.sigma) / np.trace(ref.sigma)),
        "floor_variance_ratio": float(np.trace(other.sigma) / np.trace(ref.sigma)),
        "components": comps, "params_n": int(params_n),
    }


def format_diagnosis(d: Mapping) -> str:
    s, f = d["samples"], d["floor"]
    lines = [f"  diagnosis: fd {s['fd']:.4f} = mean term {s['mean_term']:.4f} + covariance term "
             f"{s['covariance_term']:.4f} (floor {f['fd']:.4f} = {f['mean_term']:.4f} + {f['covariance_term']:.4f})",
             f"  covariance term: along the reference axes {s['along_axes']:.4f} + between them "
             f"{s['between_axes']:.4f} (floor {f['along_axes']:.4f} + {f['between_axes']:.4f})",
             f"  total variance, samples / renders: {d['variance_ratio']:.3f} (floor set: {d['floor_variance_ratio']:.3f})",
             f"  {'axis':<5}{'ref var':>8}{'ratio':>7}{'floor':>7}{'shift':>7}   follows (r over {d['params_n']} renders)"]
    for c in d["components"]:
        follows = ", ".join(f"{n} {r:+.2f}" for n, r in c["follows"])
        lines.append(f"  {c['component']:<5}{c['reference_variance']:>8.3f}{c['variance_ratio']:>7.2f}"
                     f"{c['floor_variance_ratio']:>7.2f}{c['mean_shift_sd']:>+7.2f}   {follows}")
    if d.get("correlated_axes"):
        lines.append("  most correlated axes in the samples (0 in the reference; floor set in brackets): " +
                     ", ".join(f"{i}-{j} {r:+.2f} ({rf:+.2f})" for i, j, r, rf in d["correlated_axes"]))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# CLI

def format_table(r: Mapping) -> str:
    def f(x, fmt=".4f"):
        return "-" if x is None else format(x, fmt)

    lines = [f"synthfaces quality, {r['num_samples']} samples vs {r['num_samples']} renders "
             f"{json.dumps(r['render_options'])} ({r['feature_net']}; noise {r.get('noise_mode', 'const')})",
             f"  {'fd':<12}{f(r['fd'])}",
             f"  {'floor':<12}{f(r['floor'])}",
             f"  {'ratio':<12}{f(r['ratio'], '.2f'):<10}(bar <= {r['bar']['fd_ratio_max']:g})  "
             f"{'ok' if r['checks']['fd_ratio'] else 'FAIL'}",
             f"  {'attribute':<12}{'samples':>8}{'renders':>9}{'gap':>8}   (bar |gap| <= {r['bar']['rate_gap_max']:g})"]
    for a, g in r["rate_gaps"].items():
        lines.append(f"  {a:<12}{r['rates'][a]:>8.3f}{r['reference_rates'][a]:>9.3f}{g:>+8.3f}   "
                     f"{'ok' if r['checks'][f'rate_{a}'] else 'FAIL'}")
    verdict = "PASS" if r["passed"] else "FAIL"
    if not r["at_bar_size"]:
        verdict += f" (indicative: the bar is defined at {r['bar']['num_samples']} samples)"
    lines.append(f"  {verdict}")
    if r.get("diagnosis"):
        lines.append(format_diagnosis(r["diagnosis"]))
    return "\n".join(lines)


def load_quality_generator(model, *, net: str = "G_ema", device="cpu"):
    """Generator `net` ('G_ema' or 'G') of `model`: anything stylemix.checkpoints loads, or one of this
    trainer's training-state files (which hold G, G_ema and D). G, the training weights, is the
    network the optimiser moves; comparing it with G_ema shows how much the moving average does."""
    import torch

    from training.stylegan2 import snapshot as snap_io

    if net not in ("G_ema", "G"):
        raise ValueError(f"net must be 'G_ema' or 'G', got {net!r}")
    path = Path(str(model)).expanduser()
    if path.is_file() and snap_io.is_training_state(path):
        state = snap_io.load_training_state(path)
        return snap_io.network_from_state(state, net).to(torch.device(device))
    from stylemix.checkpoints import load_generator, load_networks

    if net == "G_ema":
        return load_generator(model, device=device)
    G = load_networks(model, device=device).get("G")
    if not isinstance(G, torch.nn.Module):
        raise ValueError(f"{model}: holds no training generator G (StyleMix snapshots and shipped files hold "
                         f"G_ema only; give the run's training-state-KIMG.pt, or an official pickle)")
    return G


def parse_seeds(text: str) -> list[int]:
    """'0-3' -> [0, 1, 2, 3]; '0,5,7' -> [0, 5, 7]; ranges and lists mix ('0-2,9')."""
    seeds: list[int] = []
    for part in str(text).split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise ValueError(f"--seeds {text!r}: give seeds >= 0 as a list and/or ranges, e.g. 0-3 or 0,5,7")
        a, b = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if b < a:
            raise ValueError(f"--seeds {text!r}: range {a}-{b} runs backwards")
        seeds.extend(range(a, b + 1))
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r}: a seed is given twice")
    if len(seeds) > 1000:
        raise ValueError(f"--seeds {text!r}: {len(seeds)} seeds is too many (at most 1000)")
    return seeds


def summarize_seeds(reports: Sequence[Mapping]) -> dict:
    """One summary of several seeds' reports of the same generator: ratio mean and worst, each
    attribute's largest |gap|, and whether every seed passed."""
    if not reports:
        raise ValueError("no reports to summarize")
    ratios = [r["ratio"] for r in reports]
    finite = [x for x in ratios if x is not None]
    gaps = {a: max((r["rate_gaps"][a] for r in reports), key=abs) for a in reports[0]["rate_gaps"]}
    return to_jsonable({
        "metric": "synthfaces", "seeds": [r["seed"] for r in reports],
        "num_samples": reports[0]["num_samples"],
        "ratio_mean": (sum(finite) / len(finite)) if len(finite) == len(ratios) else None,
        "ratio_max": max(finite) if len(finite) == len(ratios) else None,
        "worst_rate_gaps": gaps,
        "passed_seeds": [r["seed"] for r in reports if r["passed"]],
        "passed_all": all(r["passed"] for r in reports),
        "at_bar_size": all(r["at_bar_size"] for r in reports),
        "reports": list(reports),
    })


def _gaps_text(gaps: Mapping) -> str:
    return " ".join(f"{a} {100 * g:+.2f}" for a, g in gaps.items())


def _ratio_text(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def format_line(r: Mapping) -> str:
    return (f"  seed {r['seed']:<5} ratio {_ratio_text(r['ratio']):<7} fd {r['fd']:.4f}  "
            f"{_gaps_text(r['rate_gaps'])}  {'PASS' if r['passed'] else 'FAIL'}")


def format_summary(s: Mapping) -> str:
    return (f"  {len(s['seeds'])} seeds: ratio mean {_ratio_text(s['ratio_mean'])}, worst "
            f"{_ratio_text(s['ratio_max'])}; largest gaps {_gaps_text(s['worst_rate_gaps'])}; "
            f"passed at {len(s['passed_seeds'])} of {len(s['seeds'])}"
            f"{'' if s['at_bar_size'] else ' (not at the bar size)'}: {'PASS' if s['passed_all'] else 'FAIL'}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.stylegan2.quality",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True,
                    help="generator: checkpoint path or registered name, or a run's training-state-KIMG.pt")
    ap.add_argument("--net", choices=("G_ema", "G"), default="G_ema",
                    help="which generator of the checkpoint: G_ema (the moving average: what snapshots and "
                         "shipped files hold; default) or G (the training weights: an official pickle or a "
                         "training state)")
    ap.add_argument("--render-options", dest="render_options",
                    help='training distribution as JSON, e.g. \'{"res": 64}\' (or give --data)')
    ap.add_argument("--data", help="a synthfaces dataset zip to read the render options (and training seeds) from")
    ap.add_argument("--n", type=int, default=BAR_NUM_SAMPLES, help=f"samples and renders (default {BAR_NUM_SAMPLES})")
    ap.add_argument("--seed", type=int, default=None, help="seed of G's z (default 0)")
    ap.add_argument("--seeds", help="several seeds of G's z, e.g. 0-3 or 0,5,7: one report per seed (the "
                                    "reference and floor stay the same) and a summary: passed at every seed?")
    ap.add_argument("--reference", type=int, default=DEFAULT_REFERENCE_SEED,
                    help=f"render seed of the reference set; the floor uses it + 1 (default {DEFAULT_REFERENCE_SEED})")
    ap.add_argument("--batch", type=int, default=16, help="images per G forward pass (default 16)")
    ap.add_argument("--threads", type=int, help="CPU threads")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    ap.add_argument("--noise-mode", choices=("const", "random"), default="random",
                    help="G's noise inputs: random (default: G's own default, as the official metrics "
                         "sample) or const (the fixed noise maps)")
    ap.add_argument("--diagnose", type=int, nargs="?", const=8, default=0, metavar="K",
                    help="also say where the distance comes from: mean and covariance terms, and the "
                         "samples' variance along the reference features' first K principal axes "
                         "(default 8), with the render parameters each axis follows, and the pairs of "
                         "those axes that the samples mix most")
    ap.add_argument("--out", help="also write the JSON report to this file")
    args = ap.parse_args(argv)
    try:
        import torch

        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"--threads must be >= 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        exclude: list = []
        if args.render_options is not None:
            ro = check_render_options(args.render_options)
        elif args.data is not None:
            found = render_options_from_dataset(args.data)
            if found is None:
                raise ValueError(f"--data {args.data}: not a synthfaces zip whose distribution is recorded; "
                                 f"give --render-options")
            ro, exclude = found["render_options"], found["train_seeds"]
        else:
            raise ValueError("give --render-options JSON (or --data SYNTHFACES_ZIP)")
        if args.data is not None and args.render_options is not None:
            found = render_options_from_dataset(args.data)
            exclude = found["train_seeds"] if found else []
        if args.seeds is not None:
            if args.seed is not None:
                raise ValueError("give --seed or --seeds, not both")
            if args.diagnose:
                raise ValueError("--diagnose takes one seed (--seed), not --seeds")
            seeds = parse_seeds(args.seeds)
        G = load_quality_generator(args.model, net=args.net, device=args.device)
        kw = dict(num_samples=args.n, reference=args.reference, render_options=ro, batch=args.batch,
                  exclude_seeds=exclude, noise_mode=args.noise_mode,
                  log=lambda m: print(m, file=sys.stderr, flush=True))
        if args.seeds is not None:
            reports = []
            for sd in seeds:
                reports.append(dict(synthfaces_quality(G, seed=sd, **kw), model=str(args.model), net=args.net))
                print(format_line(reports[-1]), flush=True)
            r = summarize_seeds(reports)
        else:
            r = synthfaces_quality(G, seed=0 if args.seed is None else args.seed,
                                   diagnose_components=args.diagnose, **kw)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line
        msg = " ".join(str(exc).split()) or type(exc).__name__
        prefix = "" if isinstance(exc, (ValueError, FileNotFoundError)) else f"{type(exc).__name__}: "
        print(f"error: {prefix}{msg}", file=sys.stderr)
        return 1
    r = dict(r, model=str(args.model), net=args.net)
    print(format_summary(r) if args.seeds is not None else format_table(r))
    if args.out:
        from training.evaluation.metrics import save_report

        save_report(args.out, r)
    print(json.dumps(r, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
