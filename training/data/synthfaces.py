"""Procedural faces with exact attribute labels: the project's own ground truth.

A face is a plain JSON-serialisable dict of three parameter groups:

- ``identity``   -- who it is, all continuous: head and jaw shape, skin tone, eye size, spacing,
                    openness and colour, brows, nose, mouth and lips, ears, neck, cheek colour.
- ``attributes`` -- what the generators must control: ``beard`` (``none``/``stubble``/``full``),
                    ``hair`` (``shaved``/``short``/``long``), ``glasses`` and ``smile`` (bools), plus
                    their style (beard and hair colour, hairline, hair volume and length, glasses
                    frame and tint, ...), kept when an option is switched, and the derived
                    booleans ``has_beard`` (stubble or full) and ``shaved``.
- ``nuisance``   -- what must not matter: background colours and gradient, light direction,
                    intensity and ambient level, small rotation/scale/shift, gaze, clothing colour,
                    exposure, white balance and pixel noise.

``render(params, resolution)`` draws one face (uint8 HxWx3); ``render_many(params_list, res)``
draws many (grouped by beard/hair/glasses and vectorised over each group; a face's pixels do not
depend on the batch). Shapes are analytic implicit functions (an ellipsoidal head with a tapered
jaw and squarer skull, almond eyes, lips, rounded-box lenses, ...) turned into soft coverage
masks; skin, hair, beard and clothes are shaded in linear light from normal maps (ellipsoids plus
nose ridge, tip and wings) with wrap-around diffuse and a specular lobe, with occlusion in the eye
sockets, under the nose and lips and along the nasolabial folds; hair, brows and beards carry
strand textures, stubble and shaved scalps a speckled shadow. Large smooth layers are drawn at the
output resolution with one-pixel analytic edges; the fine layers (eyes, brows, lips, beard,
glasses, hair) on a 2x supersampled grid (up to 128 px; above it the pixels are small enough)
that is box-filtered down. Textures fade out where they would alias. ``landmarks(params, res)``
gives the pixel positions of eyes, nose, mouth, chin and head top.

``render_batch(n, resolution, seed=S, **fixed)`` draws face ``i`` from ``params_for(S, i)`` =
``sample_params(numpy.random.default_rng([S, i]))``, so a batch is a prefix-stable,
worker-count-independent function of the seed. ``fixed`` pins attribute options
(``beard='full'``, ``hair='shaved'``, ``glasses=False``, ``smile=True``) or derived booleans
(``has_beard=True``, ``shaved=False``: uniform among the matching options). The random draws do
not depend on ``fixed``: the same rng state gives the same identity and nuisance whatever is
pinned. ``with_attributes(params, has_beard=True, shaved=True)`` returns the same identity and
nuisance with another attribute set (paired rendering). Hair, brow and beard colours keep a
minimum luminance contrast to the skin so the attributes stay visible at 64 px.

Natural sampling distribution (independent): beard none/stubble/full = 0.60/0.15/0.25, hair
shaved/short/long = 0.12/0.58/0.30, glasses 0.25, smile 0.5. So has_beard = 0.40, shaved = 0.12
and the "both" combination (beard AND shaved head) = 0.048.

Label vector (``LABEL_NAMES``, 0/1 float32 in this order)::

    [has_beard, shaved, glasses, smile, beard_full, hair_long]

Dataset zips (CLI below) use the official StyleGAN2-ADA ``dataset_tool`` layout: uncompressed PNGs
``00000/img00000000.png`` (1000 per folder; PNG compression level ``--png-level``, default 1)
and ``dataset.json`` = ``{"labels": [[name, vector], ...], "label_names": LABEL_NAMES,
"resolution": R, "generator": ...}`` (the official loader ignores the extra keys), plus
``params.jsonl``: one line per image, ``{"filename", "index", "split", "seed", "labels",
"identity", "attributes", "nuisance"}`` (``seed`` is the ``default_rng`` key of the face).

CLI::

    python -m training.data.synthfaces --out faces.zip --n 10000 --res 64 --seed 0
    python -m training.data.synthfaces --out faces.zip --n 10000 --res 64 --seed 0 --split \\
        [--both-share 0.01] [--heldout 1000] [--workers 2]

Without ``--split``: one zip at ``--out``, every face from the natural distribution.
With ``--split`` (the seeds' scenario), ``--out faces.zip`` writes two zips next to it:

- ``faces-train.zip``: the training pool of ``--n`` faces, shuffled; ``params.jsonl``'s ``split``
  field says which set each belongs to: ``beard`` (has_beard, not shaved), ``shaved`` (shaved, no
  beard), ``neither`` and the rare ``both`` (beard AND shaved), whose share of the pool is
  ``--both-share`` (rounded to whole images); the other three sets share the rest equally. Select a
  set with ``ImageDataset(path, filters={'has_beard': True, 'shaved': False})``.
- ``faces-heldout-both.zip``: ``--heldout`` both faces (default max(1, n // 10)) for evaluation only, drawn
  from a separate seed stream (``default_rng([S, 1, i])``; the pool uses ``[S, 0, i]``), so no
  identity is shared with the pool.

Zips are written to a temporary file and renamed at the end: an error or Ctrl-C never leaves a
half-written zip at the target path.
"""

from __future__ import annotations

import argparse
import bisect
import colorsys
import copy
import functools
import io
import json
import math
import os
import sys
import zipfile
from typing import Sequence

import numpy as np

# ----------------------------------------------------------------------------------------------
# Options, labels, natural distribution.

BEARD_OPTIONS = ("none", "stubble", "full")
HAIR_OPTIONS = ("shaved", "short", "long")
LABEL_NAMES = ("has_beard", "shaved", "glasses", "smile", "beard_full", "hair_long")

NATURAL = {
    "beard": (0.60, 0.15, 0.25),  # none, stubble, full
    "hair": (0.12, 0.58, 0.30),  # shaved, short, long
    "glasses": 0.25,
    "smile": 0.50,
}

_OPTION_KEYS = ("beard", "hair", "glasses", "smile")
_DERIVED_KEYS = ("has_beard", "shaved")

# Palettes in sRGB [0, 1] with their sampling weights.
_SKIN = [[0.98, 0.86, 0.78], [0.95, 0.78, 0.66], [0.88, 0.67, 0.53], [0.77, 0.55, 0.41],
         [0.62, 0.43, 0.30], [0.46, 0.30, 0.20], [0.32, 0.21, 0.15]]
_HAIR = [[0.1, 0.085, 0.08], [0.19, 0.13, 0.09], [0.32, 0.21, 0.13], [0.50, 0.33, 0.19],
         [0.55, 0.22, 0.10], [0.78, 0.60, 0.36], [0.90, 0.80, 0.58], [0.58, 0.56, 0.54],
         [0.86, 0.85, 0.82]]
_HAIR_W = [0.22, 0.22, 0.16, 0.10, 0.06, 0.09, 0.05, 0.06, 0.04]
_BROW_W = [0.3, 0.3, 0.25, 0.1, 0.05, 0, 0, 0, 0]
_EYES = [[0.20, 0.11, 0.05], [0.36, 0.21, 0.09], [0.45, 0.36, 0.17], [0.28, 0.42, 0.25],
         [0.28, 0.46, 0.66], [0.45, 0.52, 0.58]]
_EYES_W = [0.35, 0.2, 0.12, 0.1, 0.15, 0.08]


def _cum(w):
    out, acc = [], 0.0
    for x in w:
        acc += x
        out.append(acc / sum(w))
    return out


_HAIR_C, _BROW_C, _EYES_C = _cum(_HAIR_W), _cum(_BROW_W), _cum(_EYES_W)


def _r5(x: float) -> float:
    return round(float(x), 5)


def _c01(c) -> list:
    return [round(min(1.0, max(0.0, float(x))), 5) for x in c]


class _Draws:
    """A fixed budget of uniform variates drawn in one rng call (fast, and the number of draws
    never depends on branches or on what is pinned)."""

    N = 128

    def __init__(self, rng: np.random.Generator):
        self.x = rng.random(self.N).tolist()
        self.i = 0

    def r(self) -> float:
        v = self.x[self.i]
        self.i += 1
        return v

    def u(self, lo: float, hi: float) -> float:
        return _r5(lo + (hi - lo) * self.r())

    def jit(self, s: float) -> float:
        return (self.r() - 0.5) * 2.0 * s

    def palette(self, pal, cum, jitter: float) -> list:
        """A continuous colour: an entry blended toward a neighbour, plus jitter."""
        a, b, t = self.r(), self.r(), self.r() * 0.5
        i = min(bisect.bisect_right(cum, a), len(pal) - 1)
        j = min(max(i + (1 if b < 0.5 else -1), 0), len(pal) - 1)
        return _c01([pal[i][k] * (1 - t) + pal[j][k] * t + self.jit(jitter) for k in range(3)])

    def muted(self, lo: float, hi: float, smax: float) -> list:
        h, s, v = self.r(), smax * self.r() ** 1.5, lo + (hi - lo) * self.r()
        return _c01(colorsys.hsv_to_rgb(h, s, v))


def _lum(c) -> float:
    return 0.3 * c[0] + 0.59 * c[1] + 0.11 * c[2]


def _contrast(color: list, skin: list, margin: float) -> list:
    """Darken (or, over very dark skin, lighten toward grey) a hair colour whose luminance is
    within `margin` of the skin's, so hair, brows and beards always stand out."""
    lc, ls = _lum(color), _lum(skin)
    if abs(lc - ls) >= margin or lc > ls + margin:
        return color
    target = ls - margin
    if target >= 0.05:
        f = target / max(lc, 1e-3)
        return _c01([x * f for x in color])
    target = ls + margin
    t = min(1.0, (target - lc) / max(0.8 - lc, 1e-3))
    return _c01([x + (0.8 - x) * t for x in color])


def _check_bool(name: str, value) -> bool:
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer)) and value in (0, 1)):
        return bool(value)
    raise ValueError(f"{name} must be a bool, got {value!r}")


def _resolve_options(fixed: dict, u: dict, base: dict | None = None) -> dict:
    """Pick beard/hair/glasses/smile from uniform variates `u`, honouring `fixed`.

    With `base` (with_attributes) an option not pinned keeps its value when it matches the
    derived constraint, else it takes the canonical one (full beard, no beard, shaved, short).
    """
    unknown = sorted(set(fixed) - set(_OPTION_KEYS) - set(_DERIVED_KEYS))
    if unknown:
        raise ValueError(f"unknown attribute(s) {unknown}; expected some of "
                         f"{list(_OPTION_KEYS) + list(_DERIVED_KEYS)}")
    out = {}
    for key, opts, derived, yes, canon_yes, canon_no in (
            ("beard", BEARD_OPTIONS, "has_beard", ("stubble", "full"), "full", "none"),
            ("hair", HAIR_OPTIONS, "shaved", ("shaved",), "shaved", "short")):
        allowed = list(opts)
        if derived in fixed:
            flag = _check_bool(derived, fixed[derived])
            allowed = [o for o in opts if (o in yes) == flag]
        if key in fixed:
            val = fixed[key]
            if val not in opts:
                raise ValueError(f"{key} must be one of {list(opts)}, got {val!r}")
            if val not in allowed:
                raise ValueError(f"{key}={val!r} contradicts {derived}={fixed[derived]!r}")
        elif base is not None:
            val = base[key] if base[key] in allowed else (canon_yes if canon_yes in allowed else canon_no)
        elif len(allowed) == len(opts):
            val = opts[min(bisect.bisect_right(_cum(NATURAL[key]), u[key]), len(opts) - 1)]
        else:
            val = allowed[min(int(u[key] * len(allowed)), len(allowed) - 1)]
        out[key] = val
    for k in ("glasses", "smile"):
        if k in fixed:
            out[k] = _check_bool(k, fixed[k])
        elif base is not None:
            out[k] = bool(base[k])
        else:
            out[k] = bool(u[k] < NATURAL[k])
    out["has_beard"] = out["beard"] != "none"
    out["shaved"] = out["hair"] == "shaved"
    return out


# ----------------------------------------------------------------------------------------------
# Sampling.

def sample_params(rng: np.random.Generator, **fixed) -> dict:
    """Sample one face's parameters (plain JSON types).

    `fixed` pins attribute options or derived booleans: beard=('none'|'stubble'|'full'),
    hair=('shaved'|'short'|'long'), glasses=bool, smile=bool, has_beard=bool, shaved=bool; and
    identity=dict / nuisance=dict override (some of) those groups' entries. The rng draws do not
    depend on `fixed`: one rng state gives one identity and nuisance whatever is pinned."""
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    fixed = dict(fixed)
    id_over = fixed.pop("identity", None)
    nu_over = fixed.pop("nuisance", None)
    d = _Draws(rng)
    U = d.u

    # --- identity
    tone = d.r() ** 1.15 * (len(_SKIN) - 1)
    i0 = int(tone)
    i1 = min(i0 + 1, len(_SKIN) - 1)
    f = tone - i0
    gain = 0.95 + 0.1 * d.r()
    skin = _c01([(_SKIN[i0][k] * (1 - f) + _SKIN[i1][k] * f) * gain + d.jit(0.025) for k in range(3)])
    lip = _c01([skin[0] * 0.84 + 0.05 + d.jit(0.03), skin[1] * 0.58 + d.jit(0.03), skin[2] * 0.6 + 0.02 + d.jit(0.03)])
    brow = _contrast(d.palette(_HAIR, _BROW_C, 0.02), skin, 0.15)
    identity = {
        "head_w": U(0.36, 0.43),  # half-width of the cranium
        "head_top": U(0.50, 0.57),  # head centre to top of skull
        "jaw_len": U(0.47, 0.56),  # head centre to chin
        "jaw_w": U(0.62, 0.86),  # width kept at the chin end of the jaw taper
        "chin_square": U(0.0, 0.6),
        "skin": skin,
        "lip": lip,
        "cheek": U(0.0, 0.35),  # cheek redness
        "eye_y": U(0.0, 0.05),  # eye line below the head centre
        "eye_sep": U(0.135, 0.165),  # eye centre to face midline
        "eye_w": U(0.052, 0.066),  # half-width of an eye
        "eye_open": U(0.32, 0.50),  # half-height / half-width
        "eye_tilt": U(-0.15, 0.2),
        "eye_color": d.palette(_EYES, _EYES_C, 0.03),
        "brow_y": U(0.065, 0.09),  # above the eye line
        "brow_len": U(0.06, 0.08),
        "brow_thick": U(0.011, 0.02),
        "brow_arch": U(0.0, 0.025),
        "brow_tilt": U(-0.02, 0.02),
        "brow_color": brow,
        "nose_len": U(0.17, 0.22),  # eye line to nose tip
        "nose_w": U(0.042, 0.06),
        "nose_height": U(0.6, 1.2),
        "mouth_gap": U(0.09, 0.12),  # nose tip to mouth line
        "mouth_w": U(0.085, 0.11),
        "lip_upper": U(0.010, 0.018),
        "lip_lower": U(0.015, 0.026),
        "smile_amount": U(0.6, 1.0),
        "ear_size": U(0.075, 0.095),
        "neck_w": U(0.15, 0.19),
    }
    # --- attributes: option variates (always drawn), then their style
    u = {"beard": d.r(), "hair": d.r(), "glasses": d.r(), "smile": d.r()}
    own_hair = d.palette(_HAIR, _HAIR_C, 0.03)
    hair_color = list(brow) if d.r() < 0.55 else own_hair
    own_beard = d.palette(_HAIR, _HAIR_C, 0.03)
    beard_color = list(hair_color) if d.r() < 0.7 else own_beard
    bdark = 0.8 + 0.2 * d.r()
    fr_base = _HAIR[min(int(d.r() * len(_HAIR)), len(_HAIR) - 1)]
    fr_gain = 0.3 + 0.8 * d.r()
    frame = _c01([fr_base[k] * fr_gain + d.jit(0.06) for k in range(3)])
    dark = d.r() < 0.15
    tint_dark = [0.1 + 0.4 * d.r() for _ in range(3)]
    tint_clear = [0.75 + 0.25 * d.r() for _ in range(3)]
    op_dark, op_clear = 0.6 + 0.25 * d.r(), 0.08 + 0.15 * d.r()
    style = {
        "beard_color": _contrast(_c01([c * bdark for c in beard_color]), skin, 0.15),
        "beard_length": U(0.03, 0.11),  # full beard below the chin
        "beard_cheek": U(0.0, 1.0),  # how high the cheek line sits
        "stubble_density": U(0.6, 0.9),
        "hair_color": _contrast(_c01(hair_color), skin, 0.12),
        "hairline": U(0.48, 0.66),  # forehead hairline, fraction of centre-to-top
        "hair_recess": U(0.0, 1.0),  # temple recession
        "hair_volume": U(0.035, 0.075),
        "hair_length": U(0.35, 0.8),  # long hair ends at this y
        "hair_part": U(-0.15, 0.15),
        "hair_wave": U(0.0, 1.0),
        "glasses_frame": frame,
        "glasses_tint": _c01(tint_dark if dark else tint_clear),
        "glasses_opacity": _r5(op_dark if dark else op_clear),
        "glasses_round": U(0.25, 1.0),
        "glasses_size": U(0.92, 1.12),
        "glasses_thick": U(0.006, 0.012),
    }
    # --- nuisance
    bg = d.muted(0.12, 0.92, 0.55)
    bg2 = _c01([c * (0.6 + 0.6 * d.r()) + d.jit(0.08) for c in bg])
    nuisance = {
        "bg_color": bg,
        "bg_color2": bg2,
        "bg_angle": U(0, 2 * math.pi),
        "light_azimuth": U(-1.0, 1.0),
        "light_elevation": U(0.1, 0.8),
        "light_intensity": U(0.8, 1.1),
        "ambient": U(0.25, 0.45),
        "rotation": U(-0.15, 0.15),
        "scale": U(0.9, 1.1),
        "shift": [U(-0.06, 0.06), U(-0.06, 0.06)],
        "gaze": [U(-1, 1), U(-1, 1)],
        "shirt_color": d.muted(0.08, 0.85, 0.7),
        "exposure": U(0.85, 1.15),
        "white_balance": _c01([0.92 + 0.16 * d.r() for _ in range(3)]),
        "noise": U(0.0, 0.03),
        "noise_offset": [U(0, 1), U(0, 1)],
    }
    assert d.i <= d.N, d.i
    if id_over is not None:
        identity = _override("identity", identity, id_over)
    if nu_over is not None:
        nuisance = _override("nuisance", nuisance, nu_over)
    options = _resolve_options(fixed, u)
    attributes = {"beard": options["beard"], "hair": options["hair"], "glasses": options["glasses"],
                  "smile": options["smile"], **style,
                  "has_beard": options["has_beard"], "shaved": options["shaved"]}
    return {"identity": identity, "attributes": attributes, "nuisance": nuisance}


def _override(group: str, base: dict, over: dict) -> dict:
    if not isinstance(over, dict):
        raise ValueError(f"{group} override must be a dict, got {type(over).__name__}")
    bad = sorted(set(over) - set(base))
    if bad:
        raise ValueError(f"unknown {group} key(s) {bad}")
    out = dict(base)
    for k, v in over.items():
        out[k] = _set_value(f"{group}.{k}", base[k], v)
    return out


def _set_value(name: str, old, new):
    if isinstance(old, list):
        try:
            vals = [float(x) for x in new]
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a list of {len(old)} numbers, got {new!r}") from None
        if len(vals) != len(old):
            raise ValueError(f"{name} must be a list of {len(old)} numbers, got {new!r}")
        return [_r5(x) for x in vals]
    if isinstance(new, bool) or not isinstance(new, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {new!r}")
    return _r5(new)


def with_attributes(params: dict, **attrs) -> dict:
    """The same identity and nuisance with another attribute set (a new dict).

    Accepts the options beard/hair/glasses/smile and the derived has_beard/shaved; an option not
    named keeps its value when it matches, else has_beard=True -> 'full', has_beard=False ->
    'none', shaved=True -> 'shaved', shaved=False -> 'short'. Style entries (hair_color=[r,g,b],
    beard_length=..., ...) may be given too."""
    _validate(params)
    out = copy.deepcopy(params)
    a = out["attributes"]
    opts = {k: v for k, v in attrs.items() if k in _OPTION_KEYS or k in _DERIVED_KEYS}
    style = {k: v for k, v in attrs.items() if k not in opts}
    bad = sorted(k for k in style if k not in a)
    if bad:
        raise ValueError(f"unknown attribute(s) {bad}; expected some of "
                         f"{list(_OPTION_KEYS) + list(_DERIVED_KEYS) + sorted(set(a) - set(_OPTION_KEYS) - set(_DERIVED_KEYS))}")
    for k, v in style.items():
        a[k] = _set_value(k, a[k], v)
    a.update(_resolve_options(opts, {}, base=a))
    return out


def labels_of(params: dict) -> list:
    """The label vector in LABEL_NAMES order (floats 0/1)."""
    a = params["attributes"]
    return [float(a["beard"] != "none"), float(a["hair"] == "shaved"), float(bool(a["glasses"])),
            float(bool(a["smile"])), float(a["beard"] == "full"), float(a["hair"] == "long")]


_KEYS = None


def _validate(params) -> None:
    global _KEYS
    if _KEYS is None:
        ref = sample_params(np.random.default_rng(0))
        _KEYS = {g: set(ref[g]) for g in ref}
    if not isinstance(params, dict) or set(params) < {"identity", "attributes", "nuisance"} \
            or not {"identity", "attributes", "nuisance"} <= set(params):
        raise ValueError("params must be a dict with 'identity', 'attributes' and 'nuisance' "
                         "(see sample_params)")
    for g, keys in _KEYS.items():
        if not isinstance(params[g], dict):
            raise ValueError(f"params[{g!r}] must be a dict")
        missing = keys - set(params[g])
        if missing:
            raise ValueError(f"params[{g!r}] lacks {sorted(missing)}")
    a = params["attributes"]
    if a["beard"] not in BEARD_OPTIONS:
        raise ValueError(f"beard must be one of {list(BEARD_OPTIONS)}, got {a['beard']!r}")
    if a["hair"] not in HAIR_OPTIONS:
        raise ValueError(f"hair must be one of {list(HAIR_OPTIONS)}, got {a['hair']!r}")
    for k in ("glasses", "smile"):
        _check_bool(k, a[k])


# ----------------------------------------------------------------------------------------------
# Rendering helpers. Canonical face coordinates: u right, v down; the image spans [-1, 1]/_ZOOM
# before the nuisance pose. Colours are linear (sRGB squared) until the final square root.
#
# Two levels: large smooth layers (background, shirt, back hair, neck, ears, skin, scalp) are
# drawn at the output resolution with analytic (one-pixel) edge anti-aliasing; the canvas is then
# replicated onto a grid `ss` times finer where the detailed layers (eyes, brows, lips, beard,
# glasses, hair) are drawn, and box-filtered back down (supersampled anti-aliasing).

_ZOOM = 1.15  # canonical face -> image framing
_GRIDS: dict = {}


def _grid(R: int):
    """Image coordinates in [-1, 1] of the pixel centres: x (1,R) and y (R,1), cached."""
    g = _GRIDS.get(R)
    if g is None:
        c = ((np.arange(R, dtype=np.float64) + 0.5) / R * 2 - 1).astype(np.float32)
        g = _GRIDS[R] = (c[None, :], c[:, None])
    return g


@functools.lru_cache(maxsize=16)
def _noise_tile(res: int) -> np.ndarray:
    """Gaussian pixel noise (3, 2res, 2res), fixed seed, cached per resolution."""
    return np.random.default_rng(1234).standard_normal((3, 2 * res, 2 * res), dtype=np.float32)


@functools.lru_cache(maxsize=4)
def _tile(kind: str) -> np.ndarray:
    """A periodic 256x256 noise tile (flattened, float32, about unit std), fixed seed:
    'fine' isotropic (stubble, pores), 'strand' smooth along y, sharp along x (hair)."""
    rng = np.random.default_rng({"fine": 11, "strand": 12}[kind])
    white = rng.standard_normal((256, 256))
    f = np.fft.fftfreq(256)
    sy, sx = {"fine": (0.35, 0.35), "strand": (6.0, 0.5)}[kind]
    g = np.exp(-2 * np.pi ** 2 * ((f[:, None] * sy) ** 2 + (f[None, :] * sx) ** 2))
    t = np.real(np.fft.ifft2(np.fft.fft2(white) * g))
    t /= t.std()
    return t.astype(np.float32).reshape(-1)


def _noise(kind: str, x, y):
    """Tile noise at (x, y) in tile cells (nearest cell; x, y > -4096)."""
    ix = (x + 4096.0).astype(np.int32)
    ix &= 255
    iy = (y + 4096.0).astype(np.int32)
    iy &= 255
    iy <<= 8
    iy |= ix
    return _tile(kind).take(iy)


def _up(a: np.ndarray, ss: int) -> np.ndarray:
    """Nearest-neighbour upsampling of the last two axes by ss (a new contiguous array)."""
    if ss == 1:
        return a
    *lead, h, w = a.shape
    t = np.empty((*lead, h, w, ss), np.float32)
    t[...] = a[..., None]
    out = np.empty((*lead, h, ss, w * ss), np.float32)
    out[...] = t.reshape(*lead, h, 1, w * ss)
    return out.reshape(*lead, h * ss, w * ss)


def _cov(d, inv_aa):
    """Soft coverage of the inside (d < 0) of a signed distance d, one pixel wide."""
    x = d * inv_aa
    np.subtract(0.5, x, out=x)
    return np.clip(x, 0.0, 1.0, out=x)


def _soft(d, width):
    """Coverage of d < 0 with a ramp of the given width (canonical units)."""
    x = d * (-1.0 / width)
    x += 0.5
    return np.clip(x, 0.0, 1.0, out=x)


def _ramp(x):
    """Smoothstep of x already scaled to [0, 1]."""
    t = np.clip(x, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _bump(x2):
    """Compact smooth bump of a squared radius: (1 - x2)^2 inside the unit disc, else 0."""
    b = np.clip(1.0 - x2, 0.0, 1.0)
    b *= b
    return b


def _paint(img, m, color, field=None, add=None):
    """Composite over, channel by channel: img <- img + m * (color * field + add - img).

    img (3,n,h,w) view; m (n,h,w) coverage; color (3,n,1,1) or scalar; field/add (n,h,w)."""
    scalar = np.ndim(color) == 0
    for c in range(3):
        ic = img[c]
        cc = color if scalar else color[c]
        if field is None:
            t = cc - ic
        else:
            t = field * cc
            if add is not None:
                t += add
            t -= ic
        t *= m
        ic += t


class _Win:
    """A rectangular window of the current canvas (the union over the faces of a group)."""

    def __init__(self, fr, sy: slice, sx: slice):
        self.sy, self.sx = sy, sx
        self.u = fr.u[:, sy, sx]
        self.v = fr.v[:, sy, sx]
        self.img = fr.img[:, :, sy, sx]

    def rel(self, inner: "_Win"):
        """Slices selecting `inner` within this window's arrays (inner must lie inside)."""
        assert inner.sy.start >= self.sy.start and inner.sy.stop <= self.sy.stop, (inner.sy, self.sy)
        assert inner.sx.start >= self.sx.start and inner.sx.stop <= self.sx.stop, (inner.sx, self.sx)
        return (slice(inner.sy.start - self.sy.start, inner.sy.stop - self.sy.start),
                slice(inner.sx.start - self.sx.start, inner.sx.stop - self.sx.start))


class _Frame:
    """One group of faces: per-face parameters as (n,1,1) arrays (colours (3,n,1,1), linear),
    and the current canvas level: img (3,n,R,R), canonical coordinates u, v (n,R,R), pixel size."""

    def __init__(self, plist: Sequence[dict], res: int, ss: int):
        n = self.n = len(plist)
        self.res, self.ss = res, ss
        for group in ("identity", "attributes", "nuisance"):
            gs = [p[group] for p in plist]
            for k, v0 in gs[0].items():
                if isinstance(v0, str):
                    continue
                if isinstance(v0, list) and len(v0) == 3:  # colour -> linear (3,n,1,1)
                    a = np.array([g[k] for g in gs], np.float32)
                    setattr(self, k, np.ascontiguousarray((a * a).T).reshape(3, n, 1, 1))
                elif isinstance(v0, list):
                    setattr(self, k, np.array([g[k] for g in gs], np.float32))
                else:
                    setattr(self, k, np.array([float(g[k]) for g in gs], np.float32).reshape(n, 1, 1))
        a0 = plist[0]["attributes"]
        self.beard, self.hair, self.has_glasses = a0["beard"], a0["hair"], bool(a0["glasses"])
        # pose: canonical = R(-rot) ((x, y) - shift) / (scale * zoom)
        rot = self.rotation[:, 0, 0].astype(np.float64)
        self._sc = self.scale[:, 0, 0].astype(np.float64) * _ZOOM
        self._ca, self._sa = np.cos(rot), np.sin(rot)
        self._sh = self.shift.astype(np.float64)
        self._ca_sc, self._sa_sc = self._ca * self._sc, self._sa * self._sc
        self._bounds = np.empty((4, n), np.float64)
        # light (unit vector toward the light, y down) and Blinn half vector with the view (0,0,1)
        az, el = self.light_azimuth, self.light_elevation
        self.lx, self.ly, self.lz = np.sin(az) * np.cos(el), -np.sin(el), np.cos(az) * np.cos(el)
        hn = np.sqrt(self.lx ** 2 + self.ly ** 2 + (self.lz + 1) ** 2)
        self.hx, self.hy, self.hz = self.lx / hn, self.ly / hn, (self.lz + 1) / hn
        self.kd = (1.0 - self.ambient) * self.light_intensity
        # layout (canonical y down): head centre, eye line, nose tip, mouth line, chin
        self.cy = np.full((n, 1, 1), -0.10, np.float32)
        self.ey = self.cy + self.eye_y
        self.nt = self.ey + self.nose_len
        self.my = self.nt + self.mouth_gap
        self.chin = self.cy + self.jaw_len
        self.smile_k = self.smile * self.smile_amount
        self.img = np.empty((3, n, res, res), np.float32)
        self.level(1)

    def level(self, k: int, region: _Win | None = None):
        """Switch to a canvas k x the output resolution covering `region` (a level-1 window;
        default everything), replicating what is drawn there. _finish() pastes it back."""
        if k == 1:
            self.k, self.R, self.oy, self.ox = 1, self.res, 0, 0
            self.img1 = self.img
            self.region = None
            self.u, self.v = self.coords(self.res)
        else:
            assert self.k == 1, "the supersampled level is entered once, from level 1"
            sy, sx = (region.sy, region.sx) if region is not None else (slice(0, self.res), slice(0, self.res))
            self.region = (sy, sx)
            self.img = _up(self.img1[:, :, sy, sx], k)
            self.k, self.R, self.oy, self.ox = k, self.res * k, sy.start * k, sx.start * k
            self.u, self.v = self.coords(self.R, self.oy, sy.stop * k, self.ox, sx.stop * k)
        self.px = (2.0 / self.R / self._sc).astype(np.float32).reshape(self.n, 1, 1)  # pixel, canonical
        self.inv_aa = (1.0 / self.px).astype(np.float32)

    def coords(self, R: int, y0: int = 0, y1: int | None = None, x0: int = 0, x1: int | None = None):
        X, Y = _grid(R)
        X, Y = X[:, x0:x1], Y[y0:y1]
        n = self.n
        ca = (self._ca / self._sc).astype(np.float32).reshape(n, 1, 1)
        sa = (self._sa / self._sc).astype(np.float32).reshape(n, 1, 1)
        x0 = X - self._sh[:, 0].astype(np.float32).reshape(n, 1, 1)
        y0 = Y - self._sh[:, 1].astype(np.float32).reshape(n, 1, 1)
        return ca * x0 + sa * y0, ca * y0 - sa * x0

    def win(self, u0, u1, v0, v1, within: _Win | None = None) -> _Win:
        """The window covering the canonical box [u0,u1]x[v0,v1] (per-face or scalar bounds) for
        every face of the group, optionally clipped to another window."""
        b = self._bounds
        b[0], b[1], b[2], b[3] = (a.reshape(-1) if isinstance(a, np.ndarray) else a for a in (u0, u1, v0, v1))
        # the corners' extremes separate: x = sc (ca u - sa v) + shift_x, y = sc (sa u + ca v) + shift_y
        cu = self._ca_sc * b[0:2]
        su = self._sa_sc * b[0:2]
        cv = self._ca_sc * b[2:4]
        sv = self._sa_sc * b[2:4]
        x_lo = (cu.min(0) - sv.max(0) + self._sh[:, 0]).min()
        x_hi = (cu.max(0) - sv.min(0) + self._sh[:, 0]).max()
        y_lo = (su.min(0) + cv.min(0) + self._sh[:, 1]).min()
        y_hi = (su.max(0) + cv.max(0) + self._sh[:, 1]).max()
        R = self.R
        # canvas-relative pixel bounds (the canvas may be a region starting at oy, ox)
        lo_y, lo_x = 0, 0
        hi_y, hi_x = self.img.shape[2], self.img.shape[3]
        if within is not None:
            lo_x, hi_x, lo_y, hi_y = within.sx.start, within.sx.stop, within.sy.start, within.sy.stop
        x0 = min(max(math.floor((x_lo + 1) / 2 * R) - 1 - self.ox, lo_x), hi_x)
        x1 = max(min(math.ceil((x_hi + 1) / 2 * R) + 1 - self.ox, hi_x), x0)
        y0 = min(max(math.floor((y_lo + 1) / 2 * R) - 1 - self.oy, lo_y), hi_y)
        y1 = max(min(math.ceil((y_hi + 1) / 2 * R) + 1 - self.oy, hi_y), y0)
        return _Win(self, slice(y0, y1), slice(x0, x1))

    def scaled(self, w: _Win) -> _Win:
        """The window of the current canvas covering exactly the pixels of a level-1 window."""
        k = self.k
        return _Win(self, slice(w.sy.start * k - self.oy, w.sy.stop * k - self.oy),
                    slice(w.sx.start * k - self.ox, w.sx.stop * k - self.ox))

    def cells(self, k: float):
        """Attenuation (n,1,1) of tile noise with k cells per canonical unit: 1 up to one cell
        per pixel, 0 from two cells per pixel (where the supersampling averages them anyway)."""
        return np.clip(2.0 - k * self.px, 0.0, 1.0)

    def band(self, k: float):
        """Attenuation (n,1,1) of a sinusoid of k radians per canonical unit: 1 well below the
        pixel Nyquist rate, 0 at it (a cheap prefilter against aliasing)."""
        return np.clip((math.pi - k * self.px) * (2.0 / math.pi), 0.0, 1.0)

    def diffuse(self, nx, ny, nz, wrap=0.3):
        """Wrap-around Lambert term in [0, 1] (a new array)."""
        d = nx * self.lx
        d += ny * self.ly
        d += nz * self.lz
        d += wrap
        d *= 1.0 / (1.0 + wrap)
        return np.clip(d, 0.0, 1.0, out=d)

    def lit(self, shade, scale=1.0):
        """Irradiance: (ambient + diffuse * shade) * scale (a new array)."""
        x = shade * (self.kd * scale)
        x += self.ambient * scale
        return x

    def specular(self, nx, ny, nz, squarings=3):
        s = nx * self.hx
        s += ny * self.hy
        s += nz * self.hz
        np.clip(s, 0.0, 1.0, out=s)
        for _ in range(squarings):
            s *= s
        return s


# ----------------------------------------------------------------------------------------------
# Level-1 layers, back to front.

def _background(fr: _Frame):
    X, Y = _grid(fr.R)
    a = fr.bg_angle
    t = np.cos(a) * X + np.sin(a) * Y
    t *= 0.5
    t += 0.5
    vig = 1.0 - 0.25 * (X * X + Y * Y)
    for c in range(3):
        c1, c2 = fr.bg_color[c], fr.bg_color2[c]
        b = fr.img[c]
        np.multiply(t, c2 - c1, out=b)
        b += c1
        b *= vig


def _shirt(fr: _Frame):
    """A shoulder ellipse minus a round neckline, cylinder shading with soft folds."""
    w = fr.win(-1.6, 1.6, fr.chin + 0.15, 2.0)
    u, v = w.u, w.v
    inv = fr.inv_aa
    ex = u * (1.0 / 0.98)
    ey = v - (fr.chin + 0.72)
    ey *= 1.0 / 0.5
    r2 = ex * ex + ey * ey
    m = _cov((np.sqrt(r2) - 1.0) * 0.5, inv)
    cx = u * (1.0 / (fr.neck_w * 1.45))
    cz = v - (fr.chin + 0.2)
    cz *= 1.0 / 0.13
    rc = np.sqrt(cx * cx + cz * cz)
    m *= 1.0 - _cov((rc - 1.0) * 0.13, inv)
    nz = np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))
    sh = fr.diffuse(ex * 0.9, ey * 0.6, nz)
    sh *= 0.88 + 0.12 * np.sin(u * 17.0 + 3.0 * np.sin(v * 6.0 + u * 4.0))
    sh *= 1.0 - 0.35 * np.clip(1.6 - rc, 0.0, 1.0)  # collar shadow
    _paint(w.img, m, fr.shirt_color, fr.lit(sh))


def _head(fr: _Frame):
    """Head geometry on a window covering the head with room for hair and beard volume."""
    vt = fr.cy - fr.head_top
    w = fr.win(-fr.head_w - 0.14, fr.head_w + 0.14, vt - fr.hair_volume * 1.3 - 0.03,
               fr.chin + (fr.beard_length + 0.03 if fr.beard == "full" else 0.02))
    u, v = w.u, w.v
    dv = v - fr.cy
    lower = (dv > 0).astype(np.float32)
    t = np.clip(dv * (1.0 / fr.jaw_len), 0.0, 1.0)
    aw = fr.head_w * (1.0 - (1.0 - fr.jaw_w) * t * t)
    nx = u / aw
    ny = dv * (1.0 / fr.head_top + lower * (1.0 / fr.jaw_len - 1.0 / fr.head_top))
    ny2 = ny * ny
    # squarer skull top and chin: y^2 (1 - s (1 - y^2))
    ny2 *= 1.0 - (0.3 + (fr.chin_square - 0.3) * lower) * np.clip(1.0 - ny2, 0.0, 1.0)
    q = nx * nx + ny2
    fr.hw = w
    fr.h_q, fr.h_nx, fr.h_ny = q, nx, ny
    fr.h_m = _cov((np.sqrt(q) - 1.0) * (fr.head_w * 0.85), fr.inv_aa)  # head coverage


def _strands(fr, s, v, k=150.0):
    """Hair strand brightness around 0.75 from a strand coordinate s: random strands (noise
    smooth along the strand) over a few broader clumps."""
    t = np.sin(s * (k * 0.3) + 2.2 * np.sin(s * (k * 0.11)))
    t *= 0.1 * fr.band(k * 0.45)
    t += 0.75
    a = fr.cells(k * 1.6)
    if a.any():  # at low resolution the strands average out: skip them
        n = _noise("strand", s * (k * 1.6), v * 128.0)
        n *= 0.2 * a
        t += n
    return t


def _curtain(fr, u, v, vol, spread):
    """Shared geometry of hanging long hair: strand coordinate, texture, outer half-width."""
    dv = v - fr.cy
    s = u + (fr.hair_wave * 0.03) * np.sin(v * 11.0) * np.sign(u)
    tex = _strands(fr, s, v, 110.0)
    dp = np.clip(dv, 0.0, None)
    outer = fr.head_w + vol * 0.6 + (spread * dp * dp) / (dp + 0.25) + (vol * 0.4) * np.clip(dv * 5.0, 0.0, 1.0)
    ends = fr.hair_length - 0.03 * np.abs(u) + 0.012 * np.sin(s * 23.0) + 0.006 * np.sin(s * 61.0)
    return dv, s, tex, outer, ends


def _long_hair_back(fr: _Frame):
    """Long hair behind the head and neck, falling onto the shoulders."""
    vol = fr.hair_volume
    w = fr.win(-fr.head_w - vol - 0.3, fr.head_w + vol + 0.3, fr.cy - fr.head_top - vol * 1.3 - 0.03,
               fr.hair_length + 0.06)
    u, v = w.u, w.v
    au = np.abs(u)
    dv, s, tex, outer, ends = _curtain(fr, u, v, vol, 0.24)
    ow, oh = fr.head_w + vol * 0.6, fr.head_top + vol * 1.3
    ex, ey = u * (1.0 / ow), (dv + vol * 0.3) * (1.0 / oh)
    d = np.minimum((np.sqrt(ex * ex + ey * ey) - 1.0) * ow,
                   np.maximum(np.maximum(au - outer, v - ends), -dv))
    d += 0.01 * (tex - 0.75)
    m = _cov(d, fr.inv_aa)
    sh = fr.diffuse(np.clip(u / outer, -1.0, 1.0) * 0.7, -0.2, 0.7)
    sh *= tex
    sh *= 0.3 + 0.7 * np.clip((au - fr.neck_w) * 5.0, 0.0, 1.0)  # shadow of the head and neck
    _paint(w.img, m, fr.hair_color, fr.lit(sh, 0.75))


def _neck(fr: _Frame):
    w = fr.win(-fr.neck_w * 1.6, fr.neck_w * 1.6, fr.cy + 0.15, fr.chin + 0.36)
    u, v = w.u, w.v
    inv = fr.inv_aa
    fl = np.clip(v - (fr.chin - 0.02), 0.0, None)
    nw = fr.neck_w * (1.0 + 2.0 * fl * fl)
    m = _cov(np.abs(u) - nw, inv)
    # not below the neckline: the shirt, drawn earlier, stays in front
    cx = u * (1.0 / (fr.neck_w * 1.45))
    cz = (v - (fr.chin + 0.2)) * (1.0 / 0.13)
    rc = np.sqrt(cx * cx + cz * cz)
    m *= np.maximum(_cov((rc - 1.0) * 0.13, inv), _cov(v - (fr.chin + 0.2), inv))
    x = np.clip(u / nw, -1.0, 1.0)
    sh = fr.diffuse(x, 0.3, np.sqrt(1.0 - x * x))
    sh *= 1.0 - 0.6 * np.clip(1.0 - (v - fr.chin + 0.04) * 6.0, 0.0, 1.0)  # under the jaw
    _paint(w.img, m, fr.skin, fr.lit(sh, 0.85))


def _ears(fr: _Frame):
    ecy = fr.ey + 0.06
    ew = 0.04
    w = fr.win(-fr.head_w - 0.07, fr.head_w + 0.07, ecy - fr.ear_size - 0.01, ecy + fr.ear_size + 0.01)
    u, v = w.u, w.v
    au = np.abs(u)
    t = np.clip((v - fr.cy) * (1.0 / fr.jaw_len), 0.0, 1.0)
    ecx = fr.head_w * (1.0 - (1.0 - fr.jaw_w) * t * t) - 0.005
    ex = (au - ecx) * (1.0 / ew)
    ey = (v - ecy) * (1.0 / fr.ear_size)
    r2 = ex * ex * (1.0 + 0.5 * np.clip(ey, 0.0, 1.0)) + ey * ey  # narrower lobe
    m = _cov((np.sqrt(r2) - 1.0) * ew, fr.inv_aa)
    ix = (au - ecx - 0.008) * (1.0 / (ew * 0.5))
    iy = (v - ecy + 0.008) * (1.0 / (fr.ear_size * 0.62))
    sh = fr.diffuse(np.sign(u) * 0.75, ey * 0.5, 0.55)
    sh *= 1.0 - 0.55 * _bump(ix * ix + iy * iy)
    sh *= 0.75 + 0.25 * np.clip(1.0 - np.abs(ex), 0.0, 1.0)
    _paint(w.img, m, fr.skin * np.array([1.0, 0.86, 0.84], np.float32).reshape(3, 1, 1, 1), fr.lit(sh, 0.9))


def _skin(fr: _Frame):
    """Head skin: ellipsoid normals plus a nose bump, occlusion of sockets and folds, redder
    cheeks, a specular lobe; for shaved heads a faint stubble shadow and a shinier scalp."""
    hw = fr.hw
    w = fr.win(-fr.head_w - 0.01, fr.head_w + 0.01, fr.cy - fr.head_top - 0.01, fr.chin + 0.01, within=hw)
    fr.sw = w
    ys, xs = hw.rel(w)
    q, m = fr.h_q[:, ys, xs], fr.h_m[:, ys, xs]
    nx = fr.h_nx[:, ys, xs] * 0.85
    ny = fr.h_ny[:, ys, xs] * 0.8
    nz = np.sqrt(np.clip(1.0 - q, 0.0, 1.0))
    wn = fr.win(-fr.nose_w * 1.4, fr.nose_w * 1.4, fr.ey - 0.02, fr.nt + 0.03, within=w)
    ys, xs = w.rel(wn)
    _nose_normals(fr, wn, nx[:, ys, xs], ny[:, ys, xs], nz[:, ys, xs])
    sh = fr.diffuse(nx, ny, nz)
    spec = fr.specular(nx, ny, nz)
    spec *= 0.2 * fr.light_intensity
    # occlusion: eye sockets and under the brows
    we = fr.win(-fr.eye_sep - fr.eye_w * 1.9, fr.eye_sep + fr.eye_w * 1.9, fr.ey - fr.brow_y - 0.03,
                fr.ey + fr.eye_w * 1.3, within=w)
    ys, xs = w.rel(we)
    ex = (np.abs(we.u) - fr.eye_sep) * (1.0 / (fr.eye_w * 1.8))
    ey = (we.v - fr.ey + 0.012) * (1.0 / (fr.eye_w * 1.3))
    sh[:, ys, xs] *= 1.0 - 0.4 * _bump(ex * ex + ey * ey)
    # mouth area: under the nose, nasolabial folds (deeper when smiling), under the lower lip
    wm = fr.win(-fr.mouth_w * 1.7, fr.mouth_w * 1.7, fr.nt - 0.02, fr.my + fr.lip_lower + 0.04, within=w)
    ys, xs = w.rel(wm)
    sub = sh[:, ys, xs]
    um, vm = wm.u, wm.v
    bx = um * (1.0 / (fr.nose_w * 1.1))
    by = (vm - fr.nt - 0.02) * (1.0 / 0.022)
    sub *= 1.0 - 0.4 * _bump(bx * bx + by * by) * np.clip(-fr.ly * 2.0, 0.3, 1.0)
    t = (vm - fr.nt + 0.01) * (1.0 / (fr.my - fr.nt + 0.03))
    uf = fr.nose_w * 1.2 + (fr.mouth_w * 1.08 - fr.nose_w * 1.2) * t + (0.015 + 0.025 * fr.smile_k) * t * (1.0 - t)
    fd = (np.abs(um) - uf) * (1.0 / (0.01 + 0.008 * fr.smile_k))
    fold = _bump(fd * fd) * (t > 0) * np.clip((1.1 - t) * 5.0, 0.0, 1.0)
    sub *= 1.0 - (0.1 + 0.22 * fr.smile_k) * fold
    mu = um * (1.0 / fr.mouth_w)
    dy = (vm - fr.my - fr.lip_lower - 0.014) * (1.0 / 0.016)
    sub *= 1.0 - 0.3 * _bump(mu * mu * 0.7 + dy * dy)
    # albedo: redder cheeks; subsurface reddening of shadows
    wc = fr.win(-fr.head_w, fr.head_w, fr.ey + 0.02, fr.my, within=w)
    ys, xs = w.rel(wc)
    cx = (np.abs(wc.u) - fr.eye_sep - 0.02) * (1.0 / 0.09)
    cyy = (wc.v - fr.ey - 0.11) * (1.0 / 0.07)
    blush = np.zeros_like(sh)
    blush[:, ys, xs] = _bump(cx * cx + cyy * cyy) * fr.cheek
    lit = fr.lit(sh)
    for c, tint in enumerate((0.08, -0.3, -0.25)):
        col = blush * (tint * fr.skin[c])
        col += fr.skin[c]
        col *= lit
        col += spec
        if c == 0:
            col += (fr.skin[0] * 0.06) * (1.0 - sh)
        ic = w.img[c]
        col -= ic
        col *= m
        ic += col
    fr.s_sh = sh
    if fr.hair == "shaved":
        _scalp(fr, w, m, lit, (nx, ny, nz))


def _nose_normals(fr, w, nx, ny, nz):
    """Perturb the head normal (views) with a nose ridge, tip and wings."""
    u, v = w.u, w.v
    k = fr.nose_height
    x = u * (1.0 / (fr.nose_w * 0.75))
    b = np.clip(1.0 - x * x, 0.0, 1.0)
    amp = np.clip((v - fr.ey + 0.005) * (1.0 / fr.nose_len), 0.0, 1.0)
    amp *= np.clip(1.0 - (v - fr.nt) * 40.0, 0.0, 1.0)
    amp *= k * 1.4
    nx += amp * x * b
    nz -= amp * 0.1 * b
    tx = u * (1.0 / (fr.nose_w * 0.7))
    ty = (v - fr.nt + 0.01) * (1.0 / 0.032)
    bt = np.clip(1.0 - tx * tx - ty * ty, 0.0, 1.0)
    bt *= k * 0.8
    nx += tx * bt
    ny += ty * bt
    ax = (np.abs(u) - fr.nose_w * 0.9) * (1.0 / 0.024)
    ay = (v - fr.nt + 0.002) * (1.0 / 0.02)
    ba = np.clip(1.0 - ax * ax - ay * ay, 0.0, 1.0)
    ba *= k * 0.8
    nx += ax * ba * np.sign(u)
    ny += ay * ba


def _hairline(fr, u, v):
    """Hairline height per column: the forehead line with temple recession, rounding down into
    the temples to the sideburns in front of the ears."""
    au = np.abs(u) * (1.0 / fr.head_w)
    hl = fr.cy - fr.head_top * fr.hairline - 0.04 * au * au
    rx = (au - 0.52) * (1.0 / 0.26)
    hl -= (fr.hair_recess * 0.045) * _bump(rx * rx)
    side = np.clip((au - 0.56) * (1.0 / 0.3), 0.0, 1.0)
    side = 1.0 - np.sqrt(1.0 - side * side)  # a round temple corner into the sideburn
    hl += (fr.ey - 0.01 - hl) * side
    return hl


def _stubble_texture(fr: _Frame, u, v, *, depth: float, base: float):
    """Multiplier for stubble coverage: base + depth * fine noise where the 180-per-unit stubble
    cells are resolved at this sampling, the plain `base` where they are not."""
    k = 180.0
    amp = fr.cells(k)
    if not amp.any():
        return base
    sp = _noise("fine", u * k, v * k)
    sp *= depth * amp
    sp += base
    return sp


def _scalp(fr: _Frame, w: _Win, m, lit, n):
    """Shaved head: a faint stubble shadow above the hairline and a shinier dome."""
    u, v = w.u, w.v
    hl = _hairline(fr, u, v)
    a = m * _soft(v - hl, 0.03)
    a *= _stubble_texture(fr, u, v, depth=0.06, base=0.3)
    col = fr.hair_color * 0.4 + fr.skin * 0.25
    _paint(w.img, a, col, lit * 0.6)
    sp2 = fr.specular(*n, squarings=2)
    sp2 *= 0.22 * fr.light_intensity
    sp2 *= _soft(v - (fr.cy - fr.head_top * 0.4), 0.1)
    sp2 *= m
    for c in range(3):
        w.img[c] += sp2


# ----------------------------------------------------------------------------------------------
# Fine layers (drawn on the supersampled canvas).

def _eyes(fr: _Frame):
    w = fr.win(-fr.eye_sep - fr.eye_w * 1.3, fr.eye_sep + fr.eye_w * 1.3, fr.ey - fr.eye_w * 0.9,
               fr.ey + fr.eye_w * 0.7, within=fr.sw2)
    u, v = w.u, w.v
    ys, xs = fr.sw2.rel(w)
    lit = fr.lit(fr.s_sh2[:, ys, xs])
    inv = fr.inv_aa
    sgn = np.sign(u)
    ue = np.abs(u) - fr.eye_sep  # outward from the eye centre
    du = ue * (1.0 / fr.eye_w)
    dv = v - fr.ey + fr.eye_tilt * ue * 0.3
    w1 = np.clip(1.0 - du * du, 0.0, 1.0)
    eh = fr.eye_w * fr.eye_open * (1.0 - 0.22 * fr.smile_k)
    vtop = -eh * w1 * (1.0 - 0.15 * du)
    vbot = eh * 0.7 * w1
    m = _cov(vtop - dv, inv) * _cov(dv - vbot, inv) * np.clip(w1 * 12.0, 0.0, 1.0)
    _paint(w.img, m, np.array([0.62, 0.57, 0.53], np.float32).reshape(3, 1, 1, 1), (0.5 + 0.5 * w1) * lit)
    ri = fr.eye_w * 0.5
    ix = (ue - fr.gaze[:, 0].reshape(-1, 1, 1) * fr.eye_w * 0.2 * sgn) * (1.0 / ri)
    iy = (dv - fr.gaze[:, 1].reshape(-1, 1, 1) * eh * 0.15) * (1.0 / ri)
    r = np.sqrt(ix * ix + iy * iy)
    mi = _cov((r - 1.0) * ri, inv) * m
    shade = np.clip((dv - vtop) * (1.0 / (eh * 0.9)), 0.35, 1.0)  # upper lid shadow
    shade *= 0.45 + 0.55 * np.clip((1.0 - r) * 3.0, 0.0, 1.0)  # limbal ring
    shade *= lit
    _paint(w.img, mi, fr.eye_color, shade)
    _paint(w.img, _cov((r - 0.42) * ri, inv) * m, np.float32(0.004))
    hx = ix + fr.lx * 0.4 - 0.2
    hy = iy - fr.ly * 0.3 + 0.3
    mh = _cov((np.sqrt(hx * hx + hy * hy) - 0.22) * ri, inv) * m
    mh *= 0.8
    _paint(w.img, mh, np.float32(0.85))
    # lash line (past the outer corner), lid crease, lower lid
    dark = fr.brow_color * 0.2
    th = fr.eye_w * 0.1
    lash = _cov(np.abs(dv - vtop + th * 0.5) - th, inv)
    lash *= np.clip((1.12 - np.abs(du + 0.04)) * 8.0, 0.0, 1.0)
    lash *= 0.9
    _paint(w.img, lash, dark, lit)
    crease = _cov(np.abs(dv - vtop + eh * 0.9 + 0.004) - fr.eye_w * 0.045, inv) * w1
    crease *= 0.3
    _paint(w.img, crease, dark, lit)
    lower = _cov(np.abs(dv - vbot - fr.eye_w * 0.04) - fr.eye_w * 0.04, inv) * w1
    lower *= 0.15
    _paint(w.img, lower, dark, lit)


def _brows(fr: _Frame):
    by = fr.ey - fr.brow_y
    w = fr.win(-fr.eye_sep - fr.brow_len - 0.02, fr.eye_sep + fr.brow_len + 0.02, by - 0.06, by + 0.035,
               within=fr.sw2)
    u, v = w.u, w.v
    ys, xs = fr.sw2.rel(w)
    bu = (np.abs(u) - fr.eye_sep - 0.005) * (1.0 / fr.brow_len)
    vb = by - fr.brow_arch * (1.0 - bu * bu) + fr.brow_tilt * bu
    th = fr.brow_thick * (0.8 - 0.35 * bu)
    d = np.maximum(np.abs(v - vb) - th, (np.abs(bu) - 1.0) * (fr.brow_len * 0.5))
    m = _soft(d, fr.px + 0.004)
    k = 380.0
    hairs = np.sin(u * k + v * (k * 0.6) * np.sign(u))
    hairs *= 0.25 * fr.band(k * 1.2)
    hairs += 0.68
    m *= hairs
    _paint(w.img, m, fr.brow_color, fr.lit(fr.s_sh2[:, ys, xs]))


def _nostrils(fr: _Frame):
    w = fr.win(-fr.nose_w * 1.2, fr.nose_w * 1.2, fr.nt - 0.01, fr.nt + 0.035, within=fr.sw2)
    u, v = w.u, w.v
    nx = (np.abs(u) - fr.nose_w * 0.45) * (1.0 / (fr.nose_w * 0.36))
    ny = (v - fr.nt - 0.014) * (1.0 / 0.009)
    m = _cov((np.sqrt(nx * nx + ny * ny) - 1.0) * 0.01, fr.inv_aa)
    m *= 0.8
    _paint(w.img, m, fr.skin * 0.04)


def _lips(fr, u, v, shrink=1.0):
    """Lip coverage, upper-lip weight, teeth coverage, mouth line, width profile, lower edge."""
    mw = fr.mouth_w * shrink
    mu = u * (1.0 / mw)
    w1 = np.clip(1.0 - mu * mu, 0.0, 1.0)
    sw = np.sqrt(w1)
    sk = fr.smile_k
    ml = fr.my - sk * 0.03 * mu * mu + sk * 0.008
    gap = sk * 0.02 * sw
    bow = np.clip(1.0 - (np.abs(mu) * 4.0 - 0.6) ** 2, 0.0, 1.0)
    vu = ml - gap * 0.5 - fr.lip_upper * sw * (1.0 + 0.35 * bow)
    vl = ml + gap * 0.5 + fr.lip_lower * sw * (1.0 - 0.2 * sk)
    inv = fr.inv_aa
    inside = np.clip(w1 * 10.0, 0.0, 1.0)
    lips = _cov(vu - v, inv) * _cov(v - vl, inv) * inside
    upper = _cov(v - ml, inv)
    teeth = _cov(np.abs(v - ml) - gap * 0.5, inv) * inside
    return lips, upper, teeth, ml, w1, vl


def _mouth(fr: _Frame):
    w = fr.win(-fr.mouth_w - 0.01, fr.mouth_w + 0.01, fr.my - 0.05, fr.my + fr.lip_lower + 0.02, within=fr.sw2)
    u, v = w.u, w.v
    ys, xs = fr.sw2.rel(w)
    lit = fr.lit(fr.s_sh2[:, ys, xs])
    lips, upper, teeth, ml, w1, vl = _lips(fr, u, v)
    hl = np.clip(1.0 - np.abs(v - (ml + vl) * 0.5) * (1.0 / 0.008), 0.0, 1.0) * (1.0 - upper) * w1
    tone = 0.7 + 0.3 * (1.0 - upper) + 0.3 * hl
    tone *= lit
    _paint(w.img, lips * 0.95, fr.lip, tone)
    if float(fr.smile_k.max()) > 0:
        gaps = 0.8 + 0.2 * np.clip(np.abs(np.sin(u * (math.pi / 0.022))) * 4.0, 0.0, 1.0)
        tt = np.clip(w1 * 2.5, 0.0, 1.0) * gaps * lit
        _paint(w.img, teeth, np.array([0.78, 0.74, 0.64], np.float32).reshape(3, 1, 1, 1), tt)
    line = _cov(np.abs(v - ml) - 0.0025, fr.inv_aa) * np.clip(w1 * 5.0, 0.0, 1.0) * (1.0 - teeth)
    line *= 0.7
    _paint(w.img, line, fr.lip * 0.12)


def _beard_top(fr, u):
    """Upper edge of the beard: moustache under the nose, bare cheeks dipping toward the mouth
    corners, up to the sideburns."""
    au = np.abs(u)
    vm = fr.nt + 0.03
    vlow = fr.my - 0.02 - 0.07 * fr.beard_cheek
    vside = fr.ey + 0.02
    top = vm + (vlow - vm) * _ramp((au - fr.mouth_w * 0.7) * (1.0 / (fr.mouth_w * 0.6)))
    s2 = np.clip((au - fr.mouth_w * 1.3) / (fr.head_w * 0.97 - fr.mouth_w * 1.3), 0.0, 1.0)
    top += (vside - vlow) * np.sqrt(s2)
    return top


def _beard(fr: _Frame):
    inv = fr.inv_aa
    if fr.beard == "full":
        bl = fr.beard_length
        w = fr.win(-fr.head_w - 0.04, fr.head_w + 0.04, fr.ey - 0.02, fr.chin + bl + 0.02, within=fr.hw2)
        u, v = w.u, w.v
        top = _beard_top(fr, u)
        lips, upper, teeth, ml, w1, vl = _lips(fr, u, v, shrink=0.9)
        dv = v - fr.cy
        t = np.clip(dv * (1.0 / (fr.jaw_len + bl)), 0.0, 1.0)
        aw = (fr.head_w - 0.015 + 0.06 * t) * (1.0 - (1.0 - fr.jaw_w) * 0.75 * t * t)  # sideburns in front of the ears
        nx = u / aw
        ny = dv * (1.0 / (fr.jaw_len + bl))
        q = nx * nx + ny * ny
        k = 200.0  # wavy strands hanging down, plus broad tufts
        curl = np.sin(u * 45.0 + 2.0 * np.sin(v * 30.0))
        curl *= 0.08
        curl += 0.8
        amp = fr.cells(k)
        if amp.any():
            c2 = _noise("strand", u * k + 2.0 * fr.hair_wave * np.sin(v * 60.0 + u * 20.0), v * 128.0)
            c2 *= 0.2 * amp
            curl += c2
        d = (np.sqrt(q) - 1.0) * 0.3
        d += 0.015 * (curl - 0.8)
        m = _cov(d, inv)
        m *= _soft(top - v + 0.015 * (curl - 0.8), 0.014 + fr.px)
        m *= 1.0 - lips
        nz = np.sqrt(np.clip(1.0 - q, 0.0, 1.0))
        sh = fr.diffuse(nx * 0.8, ny * 0.8, nz)
        spec = fr.specular(nx, ny, nz, squarings=2)
        sh *= curl
        spec *= curl
        spec *= curl
        spec *= 0.2 * fr.light_intensity
        # darker in the moustache shadow and near the lips
        my = (v - ml) * (1.0 / 0.05)
        mx = u * (1.0 / (fr.mouth_w * 1.4))
        sh *= 1.0 - 0.3 * _bump(my * my + mx * mx)
        _paint(w.img, m, fr.beard_color, fr.lit(sh, 0.9), spec)
    else:  # stubble: a textured shadow on the skin
        w = fr.win(-fr.head_w - 0.04, fr.head_w + 0.04, fr.ey - 0.02, fr.chin + 0.01, within=fr.sw2)
        u, v = w.u, w.v
        top = _beard_top(fr, u)
        lips = _lips(fr, u, v, shrink=1.08)[0]
        ys, xs = fr.hw2.rel(w)
        m = fr.h_m2[:, ys, xs] * _soft(top - v + 0.01, 0.04)
        m *= _stubble_texture(fr, u, v, depth=0.14, base=0.8)
        m *= 1.0 - lips
        m *= fr.stubble_density
        ys, xs = fr.sw2.rel(w)
        col = np.minimum(fr.beard_color * 0.3 + fr.skin * 0.2, fr.skin * 0.45)  # always a shadow
        _paint(w.img, m, col, fr.lit(fr.s_sh2[:, ys, xs], 0.6))


def _hair(fr: _Frame):
    """Short hair: a cap on the skull, thicker on top, strands radiating from the crown, a soft
    hairline; long hair adds the locks framing the face."""
    vol = fr.hair_volume
    w = fr.win(-fr.head_w - vol - 0.02, fr.head_w + vol + 0.02, fr.cy - fr.head_top - vol * 1.3 - 0.02,
               fr.ey + 0.01, within=fr.hw2)
    ys, xs = fr.hw2.rel(w)
    u, v = w.u, w.v
    inv = fr.inv_aa
    dv = v - fr.cy
    vc = fr.cy - fr.head_top * 1.6  # crown: strands radiate from it
    dvc = v - vc
    dvc = np.copysign(np.maximum(np.abs(dvc), 1e-4), dvc)  # a grid row exactly at the crown: no 0/0
    s = (u - fr.hair_part) / dvc
    s += (0.02 * fr.hair_wave) * np.sin(v * 25.0 + u * 9.0)
    tex = _strands(fr, s, v, 90.0)
    ow, oh = fr.head_w + vol * 0.6, fr.head_top + vol * 1.3
    nx, ny = u * (1.0 / ow), (dv + vol * 0.3) * (1.0 / oh)
    q = nx * nx + ny * ny
    d_out = (np.sqrt(q) - 1.0) * ow
    d_out += 0.014 * (tex - 0.75)
    m = _cov(d_out, inv)
    hl = _hairline(fr, u, v)
    hm = fr.h_m2[:, ys, xs]
    hl -= v
    hl += 0.012 * (tex - 0.75)
    m *= _soft(hl, -(0.008 + fr.px)) * hm + (1.0 - hm)  # inside the head: above the hairline
    if fr.hair == "long":  # the locks continue below
        m *= _cov(v - fr.ey - 0.01, inv)
    else:  # above the ears the outline tucks in toward the skull
        m *= _cov(v - fr.ey + 0.03 + 1.5 * np.clip(np.abs(u) - fr.head_w * 0.97, 0.0, None), inv)
    nz = np.sqrt(np.clip(1.0 - q, 0.0, 1.0))
    sh = fr.diffuse(nx, ny, nz)
    spec = fr.specular(nx, ny, nz, squarings=2)
    sh *= tex
    sh *= 0.55 + 0.45 * np.clip((1.0 - q) * 3.0, 0.0, 1.0)  # darker toward the rim
    spec *= tex
    spec *= tex
    spec *= 0.1 * fr.light_intensity
    _paint(w.img, m, fr.hair_color, fr.lit(sh, 0.85), spec)
    if fr.hair == "long":
        _locks(fr)


def _locks(fr: _Frame):
    vol = fr.hair_volume
    for sign in (-1.0, 1.0):  # two windows: the space between the locks is the face
        a, b = fr.neck_w + 0.02, fr.head_w + vol + 0.3
        w = fr.win(-b if sign < 0 else a, -a if sign < 0 else b, fr.cy - 0.2, fr.hair_length + 0.04)
        _lock(fr, w)


def _lock(fr: _Frame, w: _Win):
    vol = fr.hair_volume
    u, v = w.u, w.v
    au = np.abs(u)
    dv, s, tex, outer, ends = _curtain(fr, u, v, vol, 0.22)
    t = np.clip(dv * (1.0 / fr.jaw_len), 0.0, 1.0)
    aw = fr.head_w * (1.0 - (1.0 - fr.jaw_w) * t * t)
    lockw = 0.03 + 0.04 * fr.hair_wave
    inner = np.maximum(aw - lockw * np.clip((v - fr.ey + 0.06) * 8.0, 0.0, 1.0), fr.neck_w + 0.04)
    # up to the temples the outline follows the cap (the skull grown by the hair volume)
    ey_ = (dv + vol * 0.3) * (1.0 / (fr.head_top + vol * 1.3))
    cap = (fr.head_w + vol * 0.6) * np.sqrt(np.clip(1.0 - ey_ * ey_, 0.0, 1.0))
    outer = np.minimum(outer, np.where(dv < 0, cap, 9.0))
    d = np.maximum(inner - au, au - outer)
    d = np.maximum(d, v - ends)
    d = np.maximum(d, fr.cy - 0.18 - v)
    d += 0.01 * (tex - 0.75)
    m = _cov(d, fr.inv_aa)
    x = np.clip((au - inner) / (outer - inner + 1e-3), 0.0, 1.0)
    sh = fr.diffuse(np.sign(u) * (x * 0.8 - 0.2), 0.1, 0.8)
    sh *= tex
    sh *= 0.6 + 0.4 * np.clip(x * 3.0, 0.0, 1.0)
    _paint(w.img, m, fr.hair_color, fr.lit(sh, 0.85))


def _glasses(fr: _Frame):
    lw = fr.eye_w * 1.5 * fr.glasses_size
    lh = lw * 0.78
    gy = fr.ey + 0.006
    w = fr.win(-fr.head_w - 0.015, fr.head_w + 0.015, gy - lh - 0.03, gy + lh + 0.02)
    u, v = w.u, w.v
    inv = fr.inv_aa
    au = np.abs(u)
    px = au - fr.eye_sep
    py = v - gy
    rr = lh * fr.glasses_round
    qx = np.abs(px) - (lw - rr)
    qy = np.abs(py) - (lh - rr)
    mx = np.maximum(qx, 0.0)
    my = np.maximum(qy, 0.0)
    d = np.sqrt(mx * mx + my * my) + np.minimum(np.maximum(qx, qy), 0.0) - rr
    lens = _cov(d, inv)
    img = w.img
    a = lens * fr.glasses_opacity
    for c in range(3):
        img[c] *= 1.0 - a + a * fr.glasses_tint[c]
    refl = np.clip(1.0 - np.abs(px + py * 1.3 + lw * 0.35) * (1.0 / (lw * 0.16)), 0.0, 1.0)
    refl *= lens
    refl *= 0.12
    _paint(img, refl, np.float32(1.0))
    th = fr.glasses_thick
    frame = _cov(np.abs(d) - th, inv)
    bridge = _cov(np.maximum(np.abs(v - gy + lh * 0.35) - th * 0.8, au - fr.eye_sep + lw * 0.9), inv)
    arm = _cov(np.maximum(np.abs(v - gy + lh * 0.45 - (au - fr.eye_sep - lw) * 0.1) - th * 0.6,
                          np.maximum(fr.eye_sep + lw * 0.9 - au, au - fr.head_w)), inv)
    fm = np.maximum(np.maximum(frame, bridge), arm)
    sh = 0.55 + 0.45 * np.clip(1.0 - (py + lh) * (1.0 / (lh * 2)), 0.0, 1.0)
    _paint(img, fm, fr.glasses_frame, fr.lit(sh, 0.9))


def _finish(fr: _Frame) -> np.ndarray:
    img, res, ss, n = fr.img, fr.res, fr.k, fr.n
    out = fr.img1
    if ss > 1:  # box-filter the supersampled region back into the level-1 canvas
        sy, sx = fr.region
        dst = out[:, :, sy, sx]
        if ss == 2:
            np.add(img[:, :, 0::2, 0::2], img[:, :, 1::2, 0::2], out=dst)
            dst += img[:, :, 0::2, 1::2]
            dst += img[:, :, 1::2, 1::2]
            dst *= 0.25
        else:
            h, w = img.shape[2] // ss, img.shape[3] // ss
            dst[...] = img.reshape(3, n, h, ss, w, ss).mean(axis=(3, 5), dtype=np.float32)
    out *= fr.white_balance * fr.exposure
    np.clip(out, 0.0, None, out=out)
    np.sqrt(out, out=out)
    noise = _noise_tile(res)
    for i in range(n):
        a = float(fr.noise[i, 0, 0])
        if a > 0:
            oy, ox = (int(x * res) for x in fr.noise_offset[i])
            out[:, i] += noise[:, oy:oy + res, ox:ox + res] * a
    out *= 255.0
    out += 0.5
    np.clip(out, 0.0, 255.0, out=out)
    return out.astype(np.uint8).transpose(1, 2, 3, 0)


def _render_group(plist: Sequence[dict], res: int, ss: int) -> np.ndarray:
    """Render faces sharing beard/hair/glasses options: uint8 (n, res, res, 3)."""
    fr = _Frame(plist, res, ss)
    _background(fr)
    _shirt(fr)
    _head(fr)
    if fr.hair == "long":
        _long_hair_back(fr)
    _neck(fr)
    _ears(fr)
    _skin(fr)
    # the fine layers on the supersampled canvas
    hw, sw = fr.hw, fr.sw
    vol = fr.hair_volume
    bottom = fr.hair_length + 0.05 if fr.hair == "long" else fr.chin
    side = fr.head_w + vol + (0.3 if fr.hair == "long" else 0.03)
    region = fr.win(-side, side,
                    fr.cy - fr.head_top - vol * 1.3 - 0.03, bottom)
    region = _Win(fr, slice(min(region.sy.start, hw.sy.start), max(region.sy.stop, hw.sy.stop)),
                  slice(min(region.sx.start, hw.sx.start), max(region.sx.stop, hw.sx.stop)))
    fr.level(ss, region)
    fr.rw = fr.scaled(region)
    fr.hw2, fr.sw2 = fr.scaled(hw), fr.scaled(sw)
    fr.s_sh2 = _up(fr.s_sh, ss)
    fr.h_m2 = _up(fr.h_m, ss)
    _eyes(fr)
    _brows(fr)
    _nostrils(fr)
    _mouth(fr)
    if fr.beard != "none":
        _beard(fr)
    if fr.has_glasses:
        _glasses(fr)
    if fr.hair != "shaved":
        _hair(fr)
    return _finish(fr)


def _default_ss(res: int) -> int:
    return 2 if res <= 128 else 1


def render_many(params_list: Sequence[dict], resolution: int, *, supersample: int | None = None,
                batch_size: int = 8) -> np.ndarray:
    """Render several faces: uint8 (n, resolution, resolution, 3).

    Faces are grouped by their beard/hair/glasses options and drawn `batch_size` at a time; a
    face's pixels do not depend on the batch it is drawn in. `supersample` is the grid factor
    per axis for the fine layers (default 2 up to 128 px, 1 above)."""
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 8:
        raise ValueError(f"resolution must be an int >= 8, got {resolution!r}")
    res = int(resolution)
    ss = _default_ss(res) if supersample is None else supersample
    if isinstance(ss, bool) or not isinstance(ss, (int, np.integer)) or not 1 <= ss <= 8:
        raise ValueError(f"supersample must be an int in [1, 8], got {supersample!r}")
    for p in params_list:
        _validate(p)
    out = np.empty((len(params_list), res, res, 3), np.uint8)
    groups: dict = {}
    for i, p in enumerate(params_list):
        a = p["attributes"]
        groups.setdefault((a["beard"], a["hair"], bool(a["glasses"])), []).append(i)
    for idx in groups.values():
        # faces with similar placement share tighter windows
        idx.sort(key=lambda i: (round(params_list[i]["nuisance"]["shift"][1] * 12), params_list[i]["nuisance"]["shift"][0]))
        for k in range(0, len(idx), batch_size):
            chunk = idx[k:k + batch_size]
            out[chunk] = _render_group([params_list[i] for i in chunk], res, int(ss))
    return out


def render(params: dict, resolution: int, *, supersample: int | None = None) -> np.ndarray:
    """Render one face: uint8 (resolution, resolution, 3)."""
    return render_many([params], resolution, supersample=supersample)[0]


def landmarks(params: dict, resolution: int) -> dict:
    """Where the face is in an image of `resolution`: pixel coordinates (x, y), x right, y down,
    the image spanning [0, resolution]. Keys: eye_l, eye_r (left/right in the image), nose
    (tip), mouth (centre of the mouth line), chin, head_top (top of the skull)."""
    _validate(params)
    i, nu = params["identity"], params["nuisance"]
    cy = -0.10
    ey = cy + i["eye_y"]
    nt = ey + i["nose_len"]
    pts = {"eye_l": (-i["eye_sep"], ey), "eye_r": (i["eye_sep"], ey), "nose": (0.0, nt),
           "mouth": (0.0, nt + i["mouth_gap"]), "chin": (0.0, cy + i["jaw_len"]),
           "head_top": (0.0, cy - i["head_top"])}
    ca, sa, sc = math.cos(nu["rotation"]), math.sin(nu["rotation"]), nu["scale"] * _ZOOM
    out = {}
    for k, (u, v) in pts.items():
        x = sc * (ca * u - sa * v) + nu["shift"][0]
        y = sc * (sa * u + ca * v) + nu["shift"][1]
        out[k] = ((x + 1) / 2 * resolution, (y + 1) / 2 * resolution)
    return out


def params_for(seed: int, index: int, *, stream: int | None = None, **fixed) -> dict:
    """Face `index` of a seed: sample_params(default_rng([seed, index])), or with a stream
    default_rng([seed, stream, index])."""
    key = [int(seed), int(index)] if stream is None else [int(seed), int(stream), int(index)]
    return sample_params(np.random.default_rng(key), **fixed)


def render_batch(n: int, resolution: int, *, seed: int, batch_size: int = 8, **fixed):
    """n faces of a seed: (uint8 (n, res, res, 3), list of params); face i is params_for(seed, i)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    params = [params_for(seed, i, **fixed) for i in range(int(n))]
    return render_many(params, resolution, batch_size=batch_size), params


# ----------------------------------------------------------------------------------------------
# Dataset zips (the official StyleGAN2-ADA dataset_tool layout) and the CLI.

def _archive_name(idx: int) -> str:
    s = f"{idx:08d}"
    return f"{s[:5]}/img{s}.png"


def _encode_png(img: np.ndarray, level: int) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="png", compress_level=level, optimize=False)
    return buf.getvalue()


def _render_chunk(job) -> list:
    """Worker: render a chunk of params and encode PNGs (module-level so it pickles)."""
    plist, res, batch_size, level = job
    imgs = render_many(plist, res, batch_size=batch_size)
    return [_encode_png(im, level) for im in imgs]


def _pool_init():
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[k] = "1"


def _temp_path(path: str) -> str:
    d, b = os.path.split(os.path.abspath(path))
    return os.path.join(d, f".{b}.tmp-{os.getpid()}")


def _write_zip(tmp_path: str, items: Sequence[dict], res: int, *, workers: int = 1, batch_size: int = 8,
               chunk: int = 64, png_level: int = 1, desc: str = "", progress: bool = True, pool=None) -> None:
    """Render `items` ({'params', 'split', 'seed'}) into a dataset zip at tmp_path."""
    from tqdm import tqdm

    jobs = [([it["params"] for it in items[k:k + chunk]], res, batch_size, png_level)
            for k in range(0, len(items), chunk)]
    results = pool.imap(_render_chunk, jobs) if pool is not None else map(_render_chunk, jobs)
    labels, lines = [], []
    bar = tqdm(total=len(items), desc=desc, unit="img", disable=not progress, dynamic_ncols=True)
    try:
        with zipfile.ZipFile(tmp_path, "w", compression=zipfile.ZIP_STORED) as zf:
            idx = 0
            for pngs in results:
                for png in pngs:
                    it = items[idx]
                    name = _archive_name(idx)
                    zf.writestr(name, png)
                    lab = labels_of(it["params"])
                    labels.append([name, lab])
                    lines.append(json.dumps({"filename": name, "index": idx, "split": it["split"],
                                             "seed": it["seed"], "labels": lab, **it["params"]},
                                            separators=(",", ":")))
                    idx += 1
                bar.update(len(pngs))
            assert idx == len(items), (idx, len(items))
            meta = {"labels": labels, "label_names": list(LABEL_NAMES), "resolution": res,
                    "generator": "training.data.synthfaces"}
            zf.writestr("dataset.json", json.dumps(meta, separators=(",", ":")))
            zf.writestr("params.jsonl", "\n".join(lines) + ("\n" if lines else ""))
    finally:
        bar.close()


def split_counts(n: int, both_share: float) -> dict:
    """Sizes of the --split training pool's sets: 'both' gets round(n * both_share), the other
    three share the rest equally (the first ones get the remainder)."""
    n_both = int(round(n * both_share))
    rest = n - n_both
    base, extra = divmod(rest, 3)
    counts = {name: base + (1 if i < extra else 0) for i, name in enumerate(("beard", "shaved", "neither"))}
    counts["both"] = n_both
    return counts


SPLIT_FIXED = {
    "beard": {"has_beard": True, "shaved": False},
    "shaved": {"has_beard": False, "shaved": True},
    "neither": {"has_beard": False, "shaved": False},
    "both": {"has_beard": True, "shaved": True},
}


def split_paths(out: str) -> dict:
    """The files `--split` writes for `--out out`: {'train': ..., 'heldout': ...}."""
    stem = out[:-4] if out.lower().endswith(".zip") else out
    return {"train": f"{stem}-train.zip", "heldout": f"{stem}-heldout-both.zip"}


def make_items(n: int, seed: int, *, split: bool = False, both_share: float = 0.01,
               heldout: int | None = None) -> dict:
    """The face list(s) a dataset is made of: {'all': items} or {'train': items, 'heldout': items}."""
    if not split:
        return {"all": [{"params": params_for(seed, i), "split": "all", "seed": [seed, i]} for i in range(n)]}
    counts = split_counts(n, both_share)
    names = [name for name, c in counts.items() for _ in range(c)]
    order = np.random.default_rng([seed, 2]).permutation(len(names))
    pool = []
    for i, j in enumerate(order):
        name = names[j]
        pool.append({"params": params_for(seed, i, stream=0, **SPLIT_FIXED[name]), "split": name,
                     "seed": [seed, 0, i]})
    m = max(1, n // 10) if heldout is None else heldout
    held = [{"params": params_for(seed, i, stream=1, **SPLIT_FIXED["both"]), "split": "heldout-both",
             "seed": [seed, 1, i]} for i in range(m)]
    return {"train": pool, "heldout": held}


def build(out: str, n: int, res: int, seed: int, *, split: bool = False, both_share: float = 0.01,
          heldout: int | None = None, workers: int = 1, batch_size: int = 8, png_level: int = 1,
          progress: bool = True) -> list:
    """Write the dataset zip(s); returns the paths written. All-or-nothing: files are written
    under temporary names and renamed only when every one is complete."""
    if not out.lower().endswith(".zip"):
        raise ValueError(f"--out must end with .zip, got {out!r}")
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    if res < 8:
        raise ValueError(f"--res must be >= 8, got {res}")
    if not 0.0 <= both_share < 1.0:
        raise ValueError(f"--both-share must be in [0, 1), got {both_share}")
    if heldout is not None and heldout < 0:
        raise ValueError(f"--heldout must be >= 0, got {heldout}")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if not 0 <= png_level <= 9:
        raise ValueError(f"--png-level must be in 0..9, got {png_level}")
    d = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(d):
        raise ValueError(f"output folder {d!r} does not exist")
    sets = make_items(n, seed, split=split, both_share=both_share, heldout=heldout)
    targets = {"all": out} if not split else split_paths(out)
    temps = {k: _temp_path(p) for k, p in targets.items()}
    pool = None
    try:
        if workers > 1:
            import multiprocessing as mp
            pool = mp.get_context("spawn" if sys.platform == "darwin" else None).Pool(workers, initializer=_pool_init)
        for k, items in sets.items():
            _write_zip(temps[k], items, res, workers=workers, batch_size=batch_size, png_level=png_level,
                       desc=os.path.basename(targets[k]), progress=progress, pool=pool)
        if pool is not None:
            pool.close()
            pool.join()
            pool = None
        for k in sets:
            os.replace(temps[k], targets[k])
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        for t in temps.values():
            if os.path.exists(t):
                os.remove(t)
    return [targets[k] for k in sets]


_EPILOG = """\
label vector (dataset.json "labels", names in "label_names"):
  [has_beard, shaved, glasses, smile, beard_full, hair_long]

without --split: OUT.zip, faces from the natural distribution (independent options:
  beard none/stubble/full 0.60/0.15/0.25, hair shaved/short/long 0.12/0.58/0.30,
  glasses 0.25, smile 0.5; so beard AND shaved head = 4.8%).

with --split, for --out faces.zip:
  faces-train.zip         the training pool of N faces, shuffled; params.jsonl's "split" is
                          beard (beard, not shaved), shaved (shaved, no beard), neither, or the
                          rare both (beard AND shaved: round(N * --both-share) faces); the other
                          three sets share the rest equally. Select a set with labels, e.g.
                          ImageDataset(path, filters={'has_beard': True, 'shaved': False}).
  faces-heldout-both.zip  --heldout both faces (default max(1, N // 10)) for evaluation only, from a
                          separate seed stream: no identity is shared with the pool.

each zip: uncompressed entries 00000/img00000000.png ..., dataset.json, params.jsonl (one line
per image: filename, index, split, seed, labels, identity, attributes, nuisance). Files are
written under temporary names and renamed at the end (never a half-written zip).
"""


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m training.data.synthfaces",
        description="Render procedural faces with exact attribute labels into StyleGAN2-ADA dataset zip(s).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output zip path (PATH.zip); with --split the stem names the zips")
    ap.add_argument("--n", type=int, required=True, help="number of images (with --split: the training pool)")
    ap.add_argument("--res", type=int, default=64, help="resolution in pixels (default 64)")
    ap.add_argument("--seed", type=int, default=0, help="seed (default 0); face i uses default_rng([seed, i])")
    ap.add_argument("--split", action="store_true", help="write the seeds' scenario: training pool + held-out both set")
    ap.add_argument("--both-share", type=float, default=0.01, help="share of 'both' faces in the pool (default 0.01)")
    ap.add_argument("--heldout", type=int, default=None, help="held-out 'both' faces with --split (default max(1, N // 10))")
    ap.add_argument("--workers", type=int, default=1, help="render processes (default 1)")
    ap.add_argument("--batch-size", type=int, default=8, help="faces rendered together (default 8)")
    ap.add_argument("--png-level", type=int, default=1, help="PNG compression level 0..9 (default 1)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    try:
        paths = build(args.out, args.n, args.res, args.seed, split=args.split, both_share=args.both_share,
                      heldout=args.heldout, workers=args.workers, batch_size=args.batch_size,
                      png_level=args.png_level, progress=not args.quiet)
    except KeyboardInterrupt:
        print("interrupted: nothing written", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
