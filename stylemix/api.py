"""The surface the app (and the CLI) uses: PIL images, numpy arrays and plain values in and out.

    from stylemix import api
    model = api.load_model("synthfaces64")                 # or a checkpoint path
    face = api.align(model, photo_bytes)                   # Aligned(image: PIL, method: str)
    beard = api.invert(model, face.image)                  # Latent(ws: np.float32 [num_ws, w_dim], image: PIL, ...)
    shaved = api.invert(model, api.align(model, other_bytes).image)
    ws = api.mix(model, beard.ws, shaved.ws, ["coarse"])   # beard's ws with shaved's coarse rows
    image = api.render(model, ws)                          # PIL, noise_mode='const'
    probs = api.score(model, image)                        # {'has_beard': 0.97, 'shaved': 0.91, ...}

Rules this module keeps:

- No torch type appears in anything it returns: latents are `np.float32` arrays, images PIL images,
  numbers Python floats. (`Model` keeps its generator in a private attribute.)
- Every error a user can cause (bad image bytes, no face, a latent of the wrong shape, asking for
  'fast' inversion without an encoder, editing without directions, ...) is an `ApiError` (a
  ValueError) whose message says what to do; the app shows it with `st.error`, the CLI as one line.
- One inversion runs at a time per process (`_INVERSION_LOCK`): a second call waits for the
  first; `inversion_busy()` tells a UI whether it would wait.
- Renders are always `G.synthesis(ws[None], noise_mode='const')`, so a latent renders to the same
  pixels wherever it is used (inversion result, mix, edit, method comparison).

A model's companions are found by name (see the spec in DESIGN.md): its MANIFEST record
(`pretrained/MANIFEST.json`: extra keys `aligned_domain` and `best_recipe`), its encoder
(`inversion.find_encoder`), its attribute directions (`editing.find_directions`) and the
attribute classifier (`<model>-classifier` when registered, else the bundled `synthfaces64` one,
which resizes other resolutions; `score` says so).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import numbers
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

__all__ = [
    "ApiError", "Model", "Aligned", "Latent", "Example", "Method", "Scores",
    "list_models", "load_model", "align", "invert", "inversion_busy", "mix", "edit", "render",
    "layer_strip", "score", "png_bytes", "npz_bytes", "load_npz", "read_npz", "examples",
    "methods", "run_method", "register_method", "comparison_results", "best_edits", "mix_recipe",
    "check_recipe", "RECIPE_BASES", "RECIPE_EDITS",
    "QUALITIES", "SCORE_ATTRIBUTES", "DEFAULT_CLASSIFIER", "EDIT_STRENGTH",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = REPO_ROOT / "assets" / "examples"
QUALITIES = ("fast", "balanced", "best")
SCORE_ATTRIBUTES = ("has_beard", "shaved", "glasses", "smile")
DEFAULT_CLASSIFIER = "synthfaces64"  # the only classifier shipped so far
EDIT_STRENGTH = 2.0  # strength (in standard deviations of w along the direction) of the built-in edit methods
MAX_NPZ_BYTES = 16 << 20  # refuse latent files that would expand to more than this
GENERATOR_KINDS = ("generator", "networks")


class ApiError(ValueError):
    """An error the user can fix; the message says how."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ------------------------------------------------------------------------------------------------
# Result types (plain values only)


@dataclasses.dataclass(eq=False)
class Model:
    """A loaded generator with its companions. Public fields are plain values."""

    name: str                          # registry name, else the checkpoint file's stem
    resolution: int                    # G.img_resolution
    num_ws: int
    w_dim: int
    layer_labels: list                 # one per ws row, mixing.layer_label: 'layer 3 · 16 px'
    layer_groups: dict                 # 'coarse' / 'middle' / 'fine' -> [row indices] (empty groups left out)
    has_encoder: bool                  # 'fast' inversion possible
    directions: list                   # attribute names with an editing direction
    aligned_domain: str | None         # faces.align(domain=...): 'synthfaces' passes square images through
    description: str
    path: str = ""                     # the checkpoint file
    best_recipe: dict | None = None    # 'mix: best' (MANIFEST): {'base', 'layers', 'edits'}, see check_recipe
    encoder: str | None = None         # the encoder's name or path
    direction_methods: list = dataclasses.field(default_factory=list)  # e.g. ['interfacegan', 'mean_diff']
    notes: list = dataclasses.field(default_factory=list)  # companions that were found but unusable
    record: dict = dataclasses.field(default_factory=dict)  # the MANIFEST record (JSON values)
    _G: Any = dataclasses.field(default=None, repr=False)
    _encoder: Any = dataclasses.field(default=None, repr=False)
    _directions: Any = dataclasses.field(default=None, repr=False)
    _w_avg: Any = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass
class Aligned:
    image: Image.Image   # RGB, model.resolution x model.resolution
    method: str          # 'dlib' | 'haar' | 'centre' | 'passthrough'


@dataclasses.dataclass
class Latent:
    ws: np.ndarray       # float32 [num_ws, w_dim]
    image: Image.Image   # the model's rendering of ws (noise_mode='const')
    distance: float      # perceptual distance of image to the target
    psnr: float          # dB, image vs the target resized to the model's resolution
    seconds: float
    quality: str         # 'fast' | 'balanced' | 'best' | 'projector-<steps>-w' | 'projector-<steps>-wplus'
    steps: int = 0       # optimiser steps taken
    distance_kind: str = ""
    encoder: str | None = None


@dataclasses.dataclass
class Example:
    name: str
    role: str            # 'beard' | 'shaved' | 'photo'
    path: str
    image: Image.Image
    description: str = ""


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    description: str


class Scores(dict):
    """{attribute: probability} (plain floats) with `.classifier` (its name) and `.note` (None, or
    a sentence such as 'classifier made for 64 px; the 256 px image was resized')."""

    classifier: str = ""
    note: str | None = None


# ------------------------------------------------------------------------------------------------
# Models


def _manifest_record(name: str) -> dict:
    """The raw JSON record of a bundled model in pretrained/MANIFEST.json ({} if none)."""
    from . import pretrained

    path = pretrained.PRETRAINED_DIR / pretrained.MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    models = data.get("models", []) if isinstance(data, dict) else data
    for rec in models if isinstance(models, list) else []:
        if isinstance(rec, dict) and rec.get("name") == name:
            return rec
    return {}


def list_models() -> list[dict]:
    """Registered generators: [{name, resolution, kind, description, available, bundled}].

    available: the file is present (bundled in pretrained/, or already fetched into the cache);
    nothing is downloaded or hashed here.
    """
    from . import pretrained

    out = []
    for e in pretrained.list_models():
        if e.kind not in GENERATOR_KINDS:
            continue
        try:
            available = pretrained.cached_path(e.name).is_file()
        except (OSError, ValueError):
            available = False
        out.append({"name": e.name, "resolution": int(e.resolution), "kind": e.kind,
                    "description": e.description, "available": bool(available),
                    "bundled": e.bundled_path is not None})
    return out


def _available_names() -> str:
    names = [m["name"] for m in list_models()]
    return ", ".join(names) if names else "none"


def load_model(name_or_path) -> Model:
    """Load a generator by registry name or checkpoint path, with its encoder, directions and
    MANIFEST record. Registered models that are not downloaded yet are fetched (see
    stylemix.pretrained); errors become ApiError."""
    from . import pretrained
    from .checkpoints import load_generator
    from .faces import DOMAINS
    from .mixing import layer_groups, layer_label

    if not isinstance(name_or_path, (str, Path)) or not str(name_or_path).strip():
        raise ApiError(f"model must be a registered name or a checkpoint path, got {name_or_path!r}; "
                       f"registered generators: {_available_names()}")
    as_path = Path(name_or_path).expanduser()
    if isinstance(name_or_path, str) and not as_path.exists():
        if not pretrained.is_registered(name_or_path):
            raise ApiError(f"unknown model {name_or_path!r}: not a file and not a registered name; "
                           f"choose one of {_available_names()} or pass a checkpoint path")
        kind = pretrained.get_entry(name_or_path).kind
        if kind not in GENERATOR_KINDS:
            raise ApiError(f"{name_or_path!r} is a {kind}, not a generator; choose one of {_available_names()}")
    elif not as_path.is_file():
        raise ApiError(f"model path {str(as_path)!r} is not a file; pass a checkpoint file or a registered name")
    try:
        G = load_generator(name_or_path, device="cpu")
    except (ValueError, OSError, RuntimeError, KeyError) as exc:
        raise ApiError(f"could not load model {str(name_or_path)!r}: {_first_line(exc)}") from exc
    G.eval().requires_grad_(False)
    name = str(getattr(G, "model_name", None) or as_path.stem)
    path = str(getattr(G, "model_path", None) or as_path)

    record: dict = {}
    description = f"checkpoint {path} ({G.img_resolution} px)"
    if pretrained.is_registered(name):
        entry = pretrained.get_entry(name)
        if entry.kind in GENERATOR_KINDS:
            record = dict(_manifest_record(name))
            description = entry.description or description
    notes: list[str] = []

    domain = record.get("aligned_domain")
    if domain not in DOMAINS:
        notes.append(f"MANIFEST aligned_domain {domain!r} is not one of {DOMAINS}; ignored")
        domain = None

    best = record.get("best_recipe")
    if best is not None:
        try:
            best = check_recipe(best, G.num_ws)
        except ApiError as exc:
            notes.append(f"MANIFEST best_recipe ignored: {exc}")
            best = None

    from . import editing, inversion

    encoder = None
    try:
        encoder = inversion.find_encoder(G)
    except (ValueError, OSError, RuntimeError) as exc:
        notes.append(f"encoder found but not usable ({_first_line(exc)}); 'fast' inversion is off")
    directions = None
    try:
        directions = editing.find_directions(G)
    except (ValueError, OSError, RuntimeError) as exc:
        notes.append(f"directions found but not usable ({_first_line(exc)}); editing is off")
    directions = directions or None

    enc_name = None
    if encoder is not None:
        enc_name = str(getattr(encoder, "name", None) or getattr(encoder, "path", None) or f"{name}-encoder")
    attrs = sorted({k[0] for k in directions}) if directions else []
    dmethods = sorted({k[1] for k in directions}) if directions else []
    return Model(
        name=name, resolution=int(G.img_resolution), num_ws=int(G.num_ws), w_dim=int(G.w_dim),
        layer_labels=[layer_label(i, G) for i in range(G.num_ws)],
        layer_groups={k: [int(i) for i in v] for k, v in layer_groups(G).items()},
        has_encoder=encoder is not None, directions=attrs, aligned_domain=domain,
        description=description, path=path, best_recipe=best, encoder=enc_name,
        direction_methods=dmethods, notes=notes, record=_jsonable(record),
        _G=G, _encoder=encoder, _directions=directions)


def _jsonable(value):
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return {}


def _check_model(model) -> Model:
    if not isinstance(model, Model) or model._G is None:
        raise ApiError(f"expected a model from api.load_model(), got {type(model).__name__}")
    return model


# ------------------------------------------------------------------------------------------------
# Images


def _to_pil_rgb(image, what: str = "image") -> Image.Image:
    """PIL | uint8 numpy | Aligned | Latent -> RGB PIL (no size limit beyond faces' decoder's)."""
    from .faces import load_image

    if isinstance(image, (Aligned, Latent)):
        image = image.image
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, np.ndarray) or isinstance(image, (bytes, bytearray, memoryview)):
        try:
            return load_image(image)
        except ValueError as exc:
            raise ApiError(f"{what}: {_first_line(exc)}") from exc
    raise ApiError(f"{what} must be a PIL image or a uint8 HxWx3 numpy array, got {type(image).__name__}")


def align(model: Model, image, *, allow_centre_crop: bool = False, passthrough: bool = False) -> Aligned:
    """Find the face in `image` (bytes | PIL | uint8 numpy) and crop it for `model`.

    The model's aligned_domain (e.g. 'synthfaces') passes square images through; `passthrough=True`
    says the caller's image is already aligned (it must be square). Errors -> ApiError.
    """
    from . import faces

    model = _check_model(model)
    if isinstance(image, (Aligned, Latent)):
        image = image.image
    if not isinstance(image, (bytes, bytearray, memoryview, Image.Image, np.ndarray)):
        raise ApiError(f"image must be the bytes of an image file, a PIL image or a uint8 numpy array, "
                       f"got {type(image).__name__}")
    try:
        face = faces.align(image, model.resolution, allow_centre_crop=bool(allow_centre_crop),
                           passthrough=bool(passthrough), domain=model.aligned_domain)
    except faces.DetectorUnavailableError as exc:
        raise ApiError(f"{_first_line(exc)}") from exc
    except ValueError as exc:  # NoFaceError, ImageTooLargeError, UnreadableImageError, bad arrays
        raise ApiError(_first_line(exc)) from exc
    return Aligned(image=face.image, method=face.method)


def png_bytes(image) -> bytes:
    """PIL image or uint8 HxWx3 numpy -> PNG file bytes."""
    img = _to_pil_rgb(image)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _target_array(image) -> np.ndarray:
    img = _to_pil_rgb(image)
    if img.width != img.height:
        raise ApiError(f"the image is {img.width}x{img.height}; inversion needs an aligned, square face: "
                       f"run align() on it first")
    return np.asarray(img, dtype=np.uint8).copy()


# ------------------------------------------------------------------------------------------------
# Latents


def _ws_array(model: Model, ws, what: str = "ws") -> np.ndarray:
    """Anything array-like -> float32 [num_ws, w_dim] (a single w [w_dim] is broadcast)."""
    if isinstance(ws, Latent):
        ws = ws.ws
    if hasattr(ws, "detach") and hasattr(ws, "cpu"):  # a torch tensor from library code
        ws = ws.detach().cpu().numpy()
    if not isinstance(ws, np.ndarray):
        if isinstance(ws, (list, tuple)):
            try:
                ws = np.asarray(ws, dtype=np.float32)
            except (TypeError, ValueError):
                raise ApiError(f"{what} must be a numeric array [num_ws, w_dim]") from None
        else:
            raise ApiError(f"{what} must be a latent array [{model.num_ws}, {model.w_dim}], "
                           f"got {type(ws).__name__}")
    if ws.dtype.kind not in "fiu":
        raise ApiError(f"{what} must be a numeric array, got dtype {ws.dtype}")
    ws = ws.astype(np.float32)
    if ws.ndim == 3 and ws.shape[0] == 1:
        ws = ws[0]
    if ws.shape == (model.w_dim,):
        ws = np.repeat(ws[None], model.num_ws, axis=0)
    if ws.shape != (model.num_ws, model.w_dim):
        raise ApiError(f"{what} has shape {tuple(ws.shape)} but model {model.name!r} needs "
                       f"[{model.num_ws}, {model.w_dim}]; invert the image with this model first")
    if not np.isfinite(ws).all():
        raise ApiError(f"{what} contains NaN or infinite values")
    return np.ascontiguousarray(ws)


def npz_bytes(ws, **meta) -> bytes:
    """A latent and JSON-able metadata -> .npz file bytes (keys 'ws' float32 [num_ws, w_dim], 'meta')."""
    if isinstance(ws, Latent):
        ws = ws.ws
    if hasattr(ws, "detach"):
        ws = ws.detach().cpu().numpy()
    ws = np.asarray(ws, dtype=np.float32)
    if ws.ndim != 2:
        raise ApiError(f"ws must be [num_ws, w_dim], got shape {tuple(ws.shape)}")
    try:
        text = json.dumps(meta, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ApiError(f"npz metadata must be JSON values: {exc}") from None
    buf = io.BytesIO()
    np.savez(buf, ws=ws, meta=np.array(text))
    return buf.getvalue()


def read_npz(data) -> tuple[np.ndarray, dict]:
    """.npz bytes (or a path) -> (ws float32 [num_ws, w_dim], metadata dict).

    Reads StyleMix's files ('ws' + 'meta') and the official projector's projected_w.npz ('w',
    [1, num_ws, w_dim]). Nothing is unpickled.
    """
    if isinstance(data, (str, Path)):
        try:
            data = Path(data).read_bytes()
        except OSError as exc:
            raise ApiError(f"could not read latent file {str(data)!r}: {exc.strerror or exc}") from None
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ApiError(f"expected the bytes of a .npz latent file, got {type(data).__name__}")
    data = bytes(data)
    hint = "expected a .npz latent written by StyleMix (project/mix/edit) or the official projector"
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            total = sum(i.file_size for i in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise ApiError(f"not a readable .npz file ({len(data)} bytes); {hint}") from None
    if total > MAX_NPZ_BYTES:
        raise ApiError(f"the .npz file expands to {total} bytes, more than a latent needs; {hint}")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            key = "ws" if "ws" in npz.files else "w" if "w" in npz.files else None
            if key is None:
                raise ApiError(f"the .npz file has no 'ws' array (it has {sorted(npz.files)}); {hint}")
            ws = npz[key]
            meta_raw = npz["meta"] if "meta" in npz.files else None
    except ApiError:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise ApiError(f"could not read the .npz file ({_first_line(exc)}); {hint}") from None
    if ws.dtype.kind not in "fiu":
        raise ApiError(f"the latent in the .npz file has dtype {ws.dtype}, not numbers; {hint}")
    ws = ws.astype(np.float32)
    if ws.ndim == 3 and ws.shape[0] == 1:
        ws = ws[0]
    if ws.ndim != 2 or 0 in ws.shape:
        raise ApiError(f"the latent in the .npz file has shape {tuple(ws.shape)}, expected [num_ws, w_dim]")
    if not np.isfinite(ws).all():
        raise ApiError("the latent in the .npz file contains NaN or infinite values")
    meta: dict = {}
    if meta_raw is not None:
        try:
            meta = json.loads(str(meta_raw))
        except ValueError:
            meta = {}
        if not isinstance(meta, dict):
            meta = {}
    return np.ascontiguousarray(ws), meta


def load_npz(data) -> np.ndarray:
    """.npz bytes (or a path) -> ws float32 [num_ws, w_dim]. See read_npz."""
    return read_npz(data)[0]


# ------------------------------------------------------------------------------------------------
# Rendering


def _render_array(model: Model, ws: np.ndarray) -> np.ndarray:
    import torch

    from .mixing import to_uint8

    with torch.no_grad():
        img = model._G.synthesis(torch.from_numpy(np.ascontiguousarray(ws, np.float32))[None],
                                 noise_mode="const")
    return to_uint8(img)[0]


def render(model: Model, ws) -> Image.Image:
    """The model's image of one latent [num_ws, w_dim] (noise_mode='const')."""
    model = _check_model(model)
    return Image.fromarray(_render_array(model, _ws_array(model, ws)))


def layer_strip(model: Model, ws_base, ws_other) -> list[tuple[str, Image.Image]]:
    """One image per ws row: ws_base with that single row taken from ws_other, [(label, PIL)]."""
    from .mixing import layer_strip as _strip

    model = _check_model(model)
    a = _ws_array(model, ws_base, "ws_base")
    b = _ws_array(model, ws_other, "ws_other")
    # batch=1 renders exactly as render() does (batched renders can differ by one level)
    rows = _strip(model._G, a, b, batch=1)
    return [(model.layer_labels[i], Image.fromarray(img)) for i, img in rows]


# ------------------------------------------------------------------------------------------------
# Inversion

_INVERSION_LOCK = threading.Lock()


def inversion_busy() -> bool:
    """True while an inversion runs in this process (a new invert() call would wait)."""
    return _INVERSION_LOCK.locked()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * math.log10(255.0 ** 2 / mse))


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or not 1 <= steps <= 100_000:
        raise ApiError(f"steps must be an integer in [1, 100000], got {steps!r}")
    return int(steps)


def invert(model: Model, image, *, quality: str = "balanced", progress: Callable | None = None,
           steps: int | None = None, w_plus: bool = True, seed: int = 0) -> Latent:
    """Find the latent whose rendering matches an aligned face.

    image: the aligned face (PIL, uint8 HxWx3 numpy or an Aligned), square, any size.
    quality: 'fast' (encoder only; needs an encoder), 'balanced' (encoder + short W+ optimisation),
        'best' (encoder + long optimisation); without an encoder 'balanced' and 'best' start at w_avg.
    steps: instead of a quality, run the official-style projector (stylemix.inversion.project) for
        this many steps, in W+ (`w_plus=True`) or W; quality then reads 'projector-<steps>-wplus'.
    progress: progress(fraction in [0, 1], text) from this thread while it runs.
    One inversion runs at a time per process: a second call waits for the first.
    """
    from . import inversion, perceptual

    model = _check_model(model)
    if progress is not None and not callable(progress):
        raise ApiError(f"progress must be a callable (fraction, text) or None, got {type(progress).__name__}")
    if steps is None:
        if quality not in QUALITIES:
            raise ApiError(f"quality must be one of {', '.join(QUALITIES)}, got {quality!r}")
        if quality == "fast" and not model.has_encoder:
            raise ApiError(f"model {model.name!r} has no encoder, so 'fast' inversion is not available: "
                           f"choose 'balanced' or 'best', or train one with "
                           f"`python -m training.encoder --model {model.name}`")
    else:
        steps = _check_steps(steps)
    target = _target_array(image)

    def report(fraction: float, text: str) -> None:
        if progress is not None:
            progress(float(min(1.0, max(0.0, fraction))), text)

    def on_step(step, total, distance) -> None:
        done = int(step) + 1
        report(done / max(1, int(total)), f"step {done}/{int(total)}, distance {float(distance):.4f}")

    with _INVERSION_LOCK:
        t0 = time.perf_counter()
        report(0.0, "inverting" if steps is None else f"projecting ({steps} steps)")
        try:
            if steps is None:
                # encoder=False: this model has none (None would make invert look it up again)
                enc = model._encoder if model._encoder is not None else False
                inv = inversion.invert(model._G, target, mode=quality, encoder=enc,
                                       progress=on_step, seed=seed)
                ws = inv.ws.detach().cpu().numpy().astype(np.float32) if hasattr(inv.ws, "detach") \
                    else np.asarray(inv.ws, np.float32)
                image_out = np.asarray(inv.image, dtype=np.uint8)
                result = Latent(ws=ws, image=Image.fromarray(image_out), distance=float(inv.distance),
                                psnr=float(inv.psnr), seconds=0.0, quality=quality,
                                steps=int(getattr(inv, "steps", 0)),
                                distance_kind=str(getattr(inv, "distance_kind", "")),
                                encoder=(None if getattr(inv, "encoder", None) is None else str(inv.encoder)))
            else:
                import torch

                res = inversion.project(model._G, target, num_steps=steps, w_plus=bool(w_plus),
                                        progress=on_step, seed=seed)
                ws = res.ws.detach().cpu().numpy().astype(np.float32)
                rendered = _render_array(model, ws)  # const noise, as everywhere else
                tgt = inversion.prepare_target(target, model.resolution)
                with torch.no_grad():
                    d = perceptual.distance(torch.from_numpy(rendered).permute(2, 0, 1)[None].float() / 127.5 - 1,
                                            tgt)
                result = Latent(ws=ws, image=Image.fromarray(rendered), distance=float(d.sum()),
                                psnr=float(inversion.psnr(rendered, tgt)), seconds=0.0,
                                quality=f"projector-{steps}-{'wplus' if w_plus else 'w'}",
                                steps=int(res.steps), distance_kind=str(res.distance_kind))
        except ApiError:
            raise
        except (ValueError, FloatingPointError) as exc:
            raise ApiError(f"inversion failed: {_first_line(exc)}") from exc
        result.seconds = float(time.perf_counter() - t0)
        report(1.0, f"done in {result.seconds:.1f} s, PSNR {result.psnr:.1f} dB")
    return result


# ------------------------------------------------------------------------------------------------
# Mixing and editing


def _parse_layers(model: Model, layers, what: str = "layers") -> list:
    """'coarse' | 'middle,fine' | '0,1,2' | [ints / group names] -> a list mixing.mix accepts."""
    if layers is None:
        raise ApiError(f"{what}: pick at least one layer or group ({', '.join(model.layer_groups)}, "
                       f"or rows 0-{model.num_ws - 1})")
    if isinstance(layers, str):
        parts = [p.strip() for p in layers.split(",") if p.strip()]
        if not parts:
            raise ApiError(f"{what} {layers!r} is empty; give group names ({', '.join(model.layer_groups)}) "
                           f"or rows like '0,1,2'")
        layers = parts
    elif isinstance(layers, numbers.Integral) and not isinstance(layers, bool):
        layers = [layers]
    elif isinstance(layers, np.ndarray):
        layers = layers.tolist()
    if not isinstance(layers, (list, tuple, set, frozenset)):
        raise ApiError(f"{what} must be group names or row indices, got {type(layers).__name__}")
    out = []
    for entry in (sorted(layers, key=str) if isinstance(layers, (set, frozenset)) else layers):
        if isinstance(entry, str):
            e = entry.strip()
            if e.lstrip("-").isdigit():
                entry = int(e)
            else:
                entry = e
        if isinstance(entry, str):
            if entry not in model.layer_groups:
                raise ApiError(f"unknown layer group {entry!r} for model {model.name!r}: use "
                               f"{', '.join(model.layer_groups)} or row numbers 0-{model.num_ws - 1}")
        elif isinstance(entry, numbers.Integral) and not isinstance(entry, bool):
            if not 0 <= int(entry) < model.num_ws:
                raise ApiError(f"layer {int(entry)} is out of range: model {model.name!r} has rows "
                               f"0-{model.num_ws - 1}")
            entry = int(entry)
        else:
            raise ApiError(f"bad layer {entry!r}: use group names ({', '.join(model.layer_groups)}) or row numbers")
        out.append(entry)
    return out


def _w_avg(model: Model) -> np.ndarray:
    if model._w_avg is None:
        from .inversion import w_stats

        G = model._G
        w_avg = getattr(getattr(G, "mapping", None), "w_avg", None)
        if w_avg is not None and float(w_avg.abs().sum()) > 0:
            model._w_avg = w_avg.detach().cpu().numpy().astype(np.float32)
        else:  # a generator that never tracked its w average
            model._w_avg = w_stats(G)[0].detach().cpu().numpy().astype(np.float32)
    return model._w_avg


def mix(model: Model, ws_base, ws_other, layers, *, weights=None, truncation: float = 1.0) -> np.ndarray:
    """ws_base with the rows `layers` taken from ws_other (blended by `weights` in [0, 1] when
    given), then truncated towards the model's w_avg by `truncation` (1 = none). -> float32
    [num_ws, w_dim]."""
    from .mixing import mix as _mix

    model = _check_model(model)
    a = _ws_array(model, ws_base, "ws_base")
    b = _ws_array(model, ws_other, "ws_other")
    entries = _parse_layers(model, layers)
    if isinstance(weights, str):
        try:
            weights = [float(x) for x in weights.split(",") if x.strip()]
        except ValueError:
            raise ApiError(f"weights {weights!r} must be numbers in [0, 1], e.g. '0.5' or '1,0.5'") from None
        weights = weights[0] if len(weights) == 1 else weights
    try:
        out = _mix(a, b, entries, weights=weights)
    except ValueError as exc:
        raise ApiError(f"cannot mix: {_first_line(exc)}") from exc
    if isinstance(truncation, bool) or not isinstance(truncation, numbers.Real) \
            or not math.isfinite(truncation) or not 0 <= truncation <= 2:
        raise ApiError(f"truncation must be a number in [0, 2] (1 = none), got {truncation!r}")
    if truncation != 1:
        w_avg = _w_avg(model)
        out = w_avg[None] + float(truncation) * (out - w_avg[None])
    return np.ascontiguousarray(out, dtype=np.float32)


def _directions_help(model: Model) -> str:
    return f"compute them with `python -m training.directions --model {model.name}`"


def edit(model: Model, ws, edits: dict, *, method: str | None = None, layers=None) -> np.ndarray:
    """Move a latent along attribute directions: edits = {attribute: strength} (strength in
    standard deviations of w along the direction; + adds the attribute, - removes it).
    method: 'conditional' / 'interfacegan' / 'mean_diff' (stylemix.editing); None = per attribute,
    'conditional' when the model has it and it is not much weaker than 'interfacegan' (see
    CONDITIONAL_MIN_EFFECT), else 'interfacegan', else its other one. layers: None = all rows, else groups / rows as in mix.
    -> float32 [num_ws, w_dim]."""
    from . import editing

    model = _check_model(model)
    out = _ws_array(model, ws)
    if not model._directions:
        raise ApiError(f"model {model.name!r} has no attribute directions, so it cannot edit; "
                       f"{_directions_help(model)}")
    if not isinstance(edits, dict) or not edits:
        raise ApiError(f"edits must be a non-empty dict {{attribute: strength}}, e.g. {{'shaved': 2}}; "
                       f"attributes: {', '.join(model.directions)}")
    rows = None if layers is None else _parse_layers(model, layers)
    for attr, strength in edits.items():
        if attr not in model.directions:
            raise ApiError(f"no direction for attribute {attr!r} on model {model.name!r}; "
                           f"available: {', '.join(model.directions) or 'none'}")
        key = (attr, method or _direction_method(model, attr))
        if key not in model._directions:
            have = sorted(m for a, m in model._directions if a == attr)
            raise ApiError(f"no {method!r} direction for {attr!r}; available methods: {', '.join(have)}")
        if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not math.isfinite(strength):
            raise ApiError(f"strength for {attr!r} must be a finite number, got {strength!r}")
        if abs(float(strength)) > 100:
            raise ApiError(f"strength {strength} for {attr!r} is too large (use -100..100; 1 = one standard deviation)")
        try:
            out = editing.edit(out, model._directions[key], float(strength), layers=rows)
        except ValueError as exc:
            raise ApiError(f"cannot edit {attr!r}: {_first_line(exc)}") from exc
        out = np.asarray(out.detach().cpu().numpy() if hasattr(out, "detach") else out, dtype=np.float32)
    return np.ascontiguousarray(out, dtype=np.float32)


# ------------------------------------------------------------------------------------------------
# Scores

_CLASSIFIERS: dict = {}
_CLASSIFIER_LOCK = threading.Lock()


def _classifier_name(model: Model) -> str:
    from . import pretrained
    from .attributes import CLASSIFIER_SUFFIX

    own = model.name + CLASSIFIER_SUFFIX
    return own if pretrained.is_registered(own) else DEFAULT_CLASSIFIER


def _classifier(name: str):
    from .attributes import load_classifier

    with _CLASSIFIER_LOCK:
        clf = _CLASSIFIERS.get(name)
        if clf is None:
            try:
                clf = load_classifier(name)
            except (ValueError, OSError, RuntimeError) as exc:
                raise ApiError(f"the attribute classifier {name!r} could not be loaded: {_first_line(exc)}") from exc
            _CLASSIFIERS[name] = clf
    return clf


def score(model: Model, image) -> Scores:
    """Attribute probabilities of a face image: {'has_beard', 'shaved', 'glasses', 'smile'} -> float.
    `.note` says when the classifier was made for another resolution (the image is resized)."""
    model = _check_model(model)
    img = _to_pil_rgb(image)
    if img.width != img.height:
        raise ApiError(f"score needs a square face image, got {img.width}x{img.height}; align it first")
    name = _classifier_name(model)
    clf = _classifier(name)
    arr = np.asarray(img, dtype=np.uint8)[None]
    probs = clf.predict(arr)
    out = Scores({k: float(probs[k][0]) for k in SCORE_ATTRIBUTES if k in probs})
    out.classifier = name
    notes = []
    if img.width != clf.resolution:
        notes.append(f"classifier {name!r} is made for {clf.resolution} px; the {img.width} px image was resized")
    if name == DEFAULT_CLASSIFIER and not model.name.startswith(DEFAULT_CLASSIFIER):
        notes.append(f"scored with the {name!r} classifier, trained on procedural faces only")
    out.note = "; ".join(notes) or None
    return out


# ------------------------------------------------------------------------------------------------
# Example faces


def examples(root=None) -> list[Example]:
    """The bundled example faces (assets/examples/examples.json + PNGs); [] when not installed."""
    folder = Path(root) if root is not None else EXAMPLES_DIR
    index = folder / "examples.json"
    if not index.is_file():
        return []
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        items = data["examples"] if isinstance(data, dict) else data
        out = []
        for item in items:
            path = folder / item["file"]
            with Image.open(path) as im:
                img = im.convert("RGB")
            out.append(Example(name=str(item["name"]), role=str(item["role"]), path=str(path), image=img,
                               description=str(item.get("made_by", item.get("description", "")))))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ApiError(f"the example faces in {folder} are broken ({_first_line(exc)}); "
                       f"re-create them with `python docs/make_examples.py`") from exc
    return out


# ------------------------------------------------------------------------------------------------
# Methods: ways to make one face from a beard latent and a shaved latent


@dataclasses.dataclass
class _MethodSpec:
    name: str
    description: str
    fn: Callable            # fn(model, ws_beard, ws_shaved) -> ws [num_ws, w_dim] | PIL | uint8 HxWx3
    applies: Callable | None  # applies(model) -> None if usable, else why not (str)


_METHODS: dict[str, _MethodSpec] = {}
_METHODS_LOCK = threading.Lock()


def register_method(name: str, description: str, fn: Callable, *, applies: Callable | None = None,
                    replace: bool = False) -> Method:
    """Add a method to methods()/run_method(). fn(model, ws_beard, ws_shaved) returns a latent
    [num_ws, w_dim] (rendered) or an image (PIL / uint8 HxWx3). applies(model) returns None when the
    method can run on that model, else a sentence saying why not."""
    if not isinstance(name, str) or not name.strip():
        raise ApiError(f"method name must be a non-empty string, got {name!r}")
    if not callable(fn) or (applies is not None and not callable(applies)):
        raise ApiError("fn (and applies, when given) must be callables")
    with _METHODS_LOCK:
        if name in _METHODS and not replace:
            raise ApiError(f"method {name!r} is already registered (pass replace=True to replace it)")
        _METHODS[name] = _MethodSpec(name, str(description), fn, applies)
    return Method(name, str(description))


def _why_not(spec: _MethodSpec, model: Model) -> str | None:
    return None if spec.applies is None else spec.applies(model)


def methods(model: Model | None = None) -> list[Method]:
    """Registered methods (in registration order); with a model, only those that can run on it."""
    with _METHODS_LOCK:
        specs = list(_METHODS.values())
    if model is not None:
        model = _check_model(model)
        specs = [s for s in specs if _why_not(s, model) is None]
    return [Method(s.name, s.description) for s in specs]


def run_method(model: Model, name: str, ws_beard, ws_shaved) -> Image.Image:
    """Run method `name` on a beard latent and a shaved latent -> the resulting face (PIL)."""
    model = _check_model(model)
    with _METHODS_LOCK:
        spec = _METHODS.get(name)
    if spec is None:
        raise ApiError(f"unknown method {name!r}; available: {', '.join(m.name for m in methods(model))}")
    why = _why_not(spec, model)
    if why is not None:
        raise ApiError(f"method {name!r} cannot run on model {model.name!r}: {why}")
    a = _ws_array(model, ws_beard, "ws_beard")
    b = _ws_array(model, ws_shaved, "ws_shaved")
    out = spec.fn(model, a, b)
    if isinstance(out, Image.Image):
        return out.convert("RGB")
    arr = np.asarray(out.detach().cpu().numpy() if hasattr(out, "detach") else out)
    if arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3:
        return Image.fromarray(arr)
    return render(model, arr)


def _group_method(group: str):
    def fn(model, ws_beard, ws_shaved):
        return mix(model, ws_beard, ws_shaved, [group])

    def applies(model):
        return None if group in model.layer_groups else f"its layout has no {group!r} rows"
    return fn, applies


for _g, _res in (("coarse", "4-8 px"), ("middle", "16-32 px"), ("fine", "64 px and up")):
    _fn, _ok = _group_method(_g)
    register_method(f"mix: {_g}", f"the beard latent with the shaved latent's {_g} rows ({_res})", _fn, applies=_ok)


RECIPE_EDITS = ("has_beard", "shaved")  # the attributes a recipe's edits move, in this order
RECIPE_BASES = ("beard", "shaved")
# api.edit's default direction method: 'conditional' leaves the other attributes' linear logits
# unchanged (adding a beard does not grow hair back), unless the projection took most of the edit
# away: its measured own effect at +2 (Direction.effects) below this share of plain 'interfacegan's
# (an attribute the generator entangles with the others, e.g. glasses with beards) -> 'interfacegan'.
CONDITIONAL_MIN_EFFECT = 0.5


def _own_effect(direction) -> float | None:
    """The measured mean change of the direction's own attribute at strength +2, if recorded."""
    value = ((getattr(direction, "effects", None) or {}).get("+2") or {}).get(direction.attribute)
    return float(value) if isinstance(value, numbers.Real) and math.isfinite(value) else None


def _direction_method(model: Model, attr: str) -> str:
    """The method to edit `attr` with: 'conditional' when the model has it and it keeps at least
    CONDITIONAL_MIN_EFFECT of the 'interfacegan' direction's measured own effect (or either effect
    was not measured); else 'interfacegan' when the model has it; else its first method by name."""
    cond, ifg = model._directions.get((attr, "conditional")), model._directions.get((attr, "interfacegan"))
    if cond is not None:
        mine, plain = _own_effect(cond), _own_effect(ifg) if ifg is not None else None
        if mine is None or plain is None or mine >= CONDITIONAL_MIN_EFFECT * plain:
            return "conditional"
    if ifg is not None:
        return "interfacegan"
    return sorted(m for a, m in model._directions if a == attr)[0]


def check_recipe(recipe, num_ws: int) -> dict:
    """A mixing recipe, validated and normalised: {'base': 'beard' | 'shaved' (the latent whose
    other rows are kept), 'layers': sorted rows taken from the other latent, 'edits': {attribute:
    strength} applied after the mix, zero strengths dropped}. It must do something (rows or an
    edit). ApiError says what is wrong. This is the MANIFEST `best_recipe` a benchmark measured
    (benchmarks/bench_mixing.py) and what 'mix: best' and the app's 'best' preset apply."""
    if not isinstance(recipe, dict):
        raise ApiError(f"a recipe is a dict with 'base', 'layers' and 'edits', got {type(recipe).__name__}")
    unknown = sorted(set(recipe) - {"base", "layers", "edits"})
    if unknown:
        raise ApiError(f"unknown recipe keys {unknown} (expected base, layers, edits)")
    base = recipe.get("base", "beard")
    if base not in RECIPE_BASES:
        raise ApiError(f"recipe base {base!r} is not one of {RECIPE_BASES}")
    layers = recipe.get("layers", [])
    if not isinstance(layers, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < num_ws for i in layers):
        raise ApiError(f"recipe layers {layers!r} is not a list of rows in [0, {num_ws - 1}]")
    edits = recipe.get("edits", {})
    if not isinstance(edits, dict) or not all(isinstance(k, str) for k in edits):
        raise ApiError(f"recipe edits {edits!r} is not a dict {{attribute: strength}}")
    for attr, strength in edits.items():
        if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not math.isfinite(strength) \
                or abs(strength) > 100:
            raise ApiError(f"recipe strength {strength!r} for {attr!r} is not a number in [-100, 100]")
    edits = {a: float(v) for a, v in edits.items() if v}
    if not layers and not edits:
        raise ApiError("the recipe does nothing (no layers and no edits)")
    return {"base": base, "layers": sorted(set(layers)), "edits": edits}


def _usable_edits(model: Model, edits: dict) -> dict:
    """The entries of `edits` that the model has a direction for."""
    have = set(getattr(model, "directions", None) or []) if getattr(model, "_directions", None) else set()
    return {a: s for a, s in edits.items() if a in have}


def best_edits(model: Model) -> dict:
    """The edits of the model's 'mix: best' recipe that it has directions for ({} when none)."""
    return _usable_edits(model, (getattr(model, "best_recipe", None) or {}).get("edits", {}))


def mix_recipe(model: Model, ws_beard, ws_shaved, recipe: dict) -> np.ndarray:
    """Apply a recipe (check_recipe) to a beard latent and a shaved-head latent: the base latent
    with the recipe's rows taken from the other one, then the recipe's edits that the model has
    directions for (api.edit), in RECIPE_EDITS order and then by name. What 'mix: best' runs and
    benchmarks/bench_mixing.py measures. -> float32 [num_ws, w_dim]."""
    model = _check_model(model)
    recipe = check_recipe(recipe, model.num_ws)
    pair = (_ws_array(model, ws_beard, "ws_beard"), _ws_array(model, ws_shaved, "ws_shaved"))
    base, other = pair if recipe["base"] == "beard" else pair[::-1]
    ws = mix(model, base, other, recipe["layers"]) if recipe["layers"] else base.copy()
    edits = _usable_edits(model, recipe["edits"])
    for attr in [a for a in RECIPE_EDITS if a in edits] + sorted(a for a in edits if a not in RECIPE_EDITS):
        ws = edit(model, ws, {attr: edits[attr]})
    return ws


def _best_fn(model, ws_beard, ws_shaved):
    return mix_recipe(model, ws_beard, ws_shaved, model.best_recipe)


register_method("mix: best", "the recipe benchmarks/bench_mixing.py found best for this model (MANIFEST "
                "best_recipe): one reference as the base, some rows from the other, then edits", _best_fn,
                applies=lambda m: None if m.best_recipe else "its MANIFEST record has no best_recipe "
                "(run benchmarks/bench_mixing.py --record)")


def _edit_method(base: str, attr: str):
    def fn(model, ws_beard, ws_shaved):
        return edit(model, ws_beard if base == "beard" else ws_shaved, {attr: EDIT_STRENGTH})

    def applies(model):
        if not model._directions:
            return f"it has no attribute directions; {_directions_help(model)}"
        return None if attr in model.directions else f"it has no {attr!r} direction; {_directions_help(model)}"
    return fn, applies


_fn, _ok = _edit_method("beard", "shaved")
register_method("edit: beard + shave", f"the beard latent moved {EDIT_STRENGTH:g} standard deviations along "
                "the 'shaved' direction", _fn, applies=_ok)
_fn, _ok = _edit_method("shaved", "has_beard")
register_method("edit: shaved + beard", f"the shaved latent moved {EDIT_STRENGTH:g} standard deviations along "
                "the 'has_beard' direction", _fn, applies=_ok)
del _fn, _ok, _g, _res


# ------------------------------------------------------------------------------------------------
# Comparison results (written by the comparison run of training.evaluation)


def comparison_results(root="results/comparison") -> dict | None:
    """What the comparison run left in `root` (relative paths: the current folder, else the repo):
    {'root', 'metrics': {stem: parsed JSON}, 'tables': {stem: [row dicts from CSV]},
     'plots': [image paths], 'report': text of report.md or None}; None when there is nothing."""
    folder = Path(root).expanduser()
    if not folder.is_absolute() and not folder.is_dir():
        folder = REPO_ROOT / folder
    if not folder.is_dir():
        return None
    metrics, tables, plots = {}, {}, []
    report = None
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        suffix = path.suffix.lower()
        try:
            if suffix == ".json":
                metrics[path.stem] = json.loads(path.read_text(encoding="utf-8"))
            elif suffix == ".csv":
                with open(path, newline="", encoding="utf-8") as f:
                    tables[path.stem] = [dict(row) for row in csv.DictReader(f)]
            elif suffix in (".png", ".jpg", ".jpeg", ".svg", ".webp"):
                plots.append(str(path))
            elif suffix == ".md" and (report is None or path.stem == "report"):
                report = path.read_text(encoding="utf-8")
        except (OSError, ValueError, UnicodeDecodeError):
            continue  # a file being written or broken: show the rest
    if not (metrics or tables or plots or report):
        return None
    return {"root": str(folder), "metrics": metrics, "tables": tables, "plots": plots, "report": report}


def image_sha256(data: bytes) -> str:
    """sha256 of image bytes (for cache keys and metadata)."""
    return hashlib.sha256(bytes(data)).hexdigest()
