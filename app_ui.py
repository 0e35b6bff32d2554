"""Plain helpers for app.py: model choices, layer presets, cache keys and a process-wide result cache.

Nothing here imports streamlit or does model math; the functions take and return plain values so
they can be tested without a browser. The Streamlit script (app.py) draws the widgets and calls
`stylemix.api`.
"""

from __future__ import annotations

import collections
import hashlib
import io
import math
import os
import threading
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "synthfaces64"
MODEL_ENV = "STYLEMIX_APP_MODEL"      # the model the app starts on (registry name or checkpoint path)
MODELS_ENV = "STYLEMIX_APP_MODELS"    # more local checkpoints to offer, separated by os.pathsep
LOCAL_CHOICE = "Local checkpoint…"    # the select-box entry that opens a path text box

QUALITIES = ("fast", "balanced", "best")
PRESETS = ("coarse", "middle", "fine", "custom")
SLOTS = ("beard", "shaved")
SLOT_TITLES = {"beard": "beard reference", "shaved": "shaved-head reference"}
UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp"]
#: edit sliders shown first (attribute -> label); other directions a model has go in an expander
MAIN_EDITS = {"has_beard": "add beard", "shaved": "shave head"}
EDIT_LIMIT = 5.0  # edit sliders span -EDIT_LIMIT..EDIT_LIMIT standard deviations (more when a recipe needs it)


def other_slot(slot: str) -> str:
    """The slot that is not `slot` ('beard' <-> 'shaved')."""
    return SLOTS[1 - SLOTS.index(slot)]


# ----------------------------------------------------------------------------------------------
# Models


def default_model(environ: dict | None = None) -> str:
    """The model the app opens with: $STYLEMIX_APP_MODEL, else the bundled synthfaces64."""
    env = os.environ if environ is None else environ
    return (env.get(MODEL_ENV) or "").strip() or DEFAULT_MODEL


def extra_model_paths(environ: dict | None = None) -> list[str]:
    """Local checkpoints listed in $STYLEMIX_APP_MODELS (os.pathsep-separated), in order, no blanks."""
    env = os.environ if environ is None else environ
    return [p.strip() for p in (env.get(MODELS_ENV) or "").split(os.pathsep) if p.strip()]


def model_choices(models: Iterable[dict], default: str, extra_paths: Sequence[str] = ()) -> list[str]:
    """Select-box entries: the default first, then registry generators, listed local paths and the
    'local checkpoint' entry. Duplicates are dropped; order otherwise kept."""
    out: list[str] = []
    for name in [default, *(m["name"] for m in models), *extra_paths, LOCAL_CHOICE]:
        if name and name not in out:
            out.append(name)
    return out


def model_label(choice: str, models: Iterable[dict]) -> str:
    """How a choice reads in the select box: 'synthfaces64 · 64 px · bundled'."""
    if choice == LOCAL_CHOICE:
        return choice
    info = {m["name"]: m for m in models}.get(choice)
    if info is None:
        return f"{Path(choice).name} · local file" if _looks_like_path(choice) else choice
    parts = [choice]
    if info.get("resolution"):
        parts.append(f"{info['resolution']} px")
    if info.get("bundled"):
        parts.append("bundled" if info.get("available", True) else "bundled, missing")
    else:
        parts.append("downloaded" if info.get("available") else "not downloaded")
    return " · ".join(parts)


def _looks_like_path(s: str) -> bool:
    return os.sep in s or "/" in s or Path(s).suffix != ""


def model_key(choice: str) -> str:
    """A cache key for a model: the registry name, or a local file's absolute path + mtime + size
    (so a checkpoint rewritten in place is loaded again)."""
    p = Path(choice).expanduser()
    if p.is_file():
        st = p.stat()
        return f"{p.resolve()}@{st.st_mtime_ns}:{st.st_size}"
    return choice


def model_source(key: str) -> str:
    """The name or path to hand to api.load_model for a model_key()."""
    if "@" in key and Path(key.rsplit("@", 1)[0]).is_file():
        return key.rsplit("@", 1)[0]
    return key


def unavailable_message(choice: str, models: Iterable[dict]) -> str | None:
    """Why a registry model cannot be used yet (with what to do), or None when it can be loaded."""
    info = {m["name"]: m for m in models}.get(choice)
    if info is None and choice == DEFAULT_MODEL:
        info = {"bundled": True, "available": False}  # not even registered yet
    if info is None or info.get("available", True):
        return None
    if info.get("bundled"):
        return (f"The bundled model '{choice}' is not installed in this checkout (its training may still "
                f"be running). Pick another model in the sidebar, or give a local checkpoint path.")
    return (f"'{choice}' is not downloaded yet. Run `python -m stylemix fetch {choice} --allow-unverified` "
            f"in a terminal, then reload this page; or pick another model.")


def model_summary(model) -> str:
    """One line about a loaded api.Model: resolution, num_ws, w_dim, encoder, directions."""
    enc = "encoder" if getattr(model, "has_encoder", False) else "no encoder"
    dirs = getattr(model, "directions", None) or []
    d = f"{len(dirs)} edit directions" if dirs else "no edit directions"
    return f"{model.resolution}×{model.resolution} px · num_ws {model.num_ws} · w_dim {model.w_dim} · {enc} · {d}"


def qualities_for(model) -> list[str]:
    """Inversion qualities a model supports: 'fast' needs an encoder."""
    return [q for q in QUALITIES if q != "fast" or getattr(model, "has_encoder", False)]


# ----------------------------------------------------------------------------------------------
# Layers


def presets_for(groups: dict[str, list[int]]) -> list[str]:
    """Preset names for a model: the non-empty groups in coarse/middle/fine order, extra groups a
    model defines (e.g. 'best', shown even without rows: a recipe may be edits only), then 'custom'."""
    names = [p for p in PRESETS[:-1] if groups.get(p)]
    names += [g for g in groups if g not in names and (groups[g] or g == "best")]
    return names + ["custom"]


def preset_layers(preset: str, groups: dict[str, list[int]], num_ws: int) -> list[int]:
    """Rows of a preset (sorted, in range). 'custom' has no rows of its own."""
    if preset == "custom":
        return []
    if preset not in groups:
        raise ValueError(f"unknown layer preset {preset!r} (expected one of {', '.join(presets_for(groups))})")
    return sorted(i for i in groups[preset] if 0 <= i < num_ws)


def preset_of(layers: Iterable[int], groups: dict[str, list[int]]) -> str:
    """The preset whose rows are exactly `layers`, else 'custom' (never a rowless 'best': that
    recipe is its edits, which unticking every layer does not apply)."""
    chosen = sorted(set(layers))
    for name in presets_for(groups)[:-1]:
        if sorted(groups[name]) == chosen and chosen:
            return name
    return "custom"


def edit_limit(edits: dict | None = None) -> float:
    """The edit sliders' range: EDIT_LIMIT, widened to the next whole number that holds `edits`."""
    need = max((abs(float(v)) for v in (edits or {}).values()), default=0.0)
    return max(EDIT_LIMIT, float(math.ceil(need)))


MIX_CAPTION_PREFIX = "Result: "  # the mixed face's caption starts with this (the browser script finds it by it)


def mix_caption(base: str, layers: Sequence[int], labels: Sequence[str], edits: dict | None = None) -> str:
    """The mixed face's caption: which reference is the base, the layers taken from the other one
    and the edits applied, e.g. 'Result: shaved-head reference + add beard +2.00'."""
    other = other_slot(base)
    text = MIX_CAPTION_PREFIX + SLOT_TITLES[base]
    if layers:
        text += f" with {describe_layers(layers, labels)} from the {SLOT_TITLES[other]}"
    for attr, strength in (edits or {}).items():
        if strength:
            text += f" + {MAIN_EDITS.get(attr, attr.replace('_', ' '))} {float(strength):+.2f}"
    return text


def describe_layers(layers: Sequence[int], labels: Sequence[str]) -> str:
    if not layers:
        return "no layers (the base face, edits only)"
    return ", ".join(labels[i] for i in layers)


# ----------------------------------------------------------------------------------------------
# Keys and caches


def bytes_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def image_key(image) -> str:
    """sha256 of a PIL image's mode, size and pixels (the aligned crop an inversion starts from)."""
    h = hashlib.sha256()
    h.update(f"{image.mode}:{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class ResultCache:
    """A process-wide, thread-safe LRU cache of results keyed by hashable tuples.

    `get_or_compute(key, fn)` runs `fn()` at most once per key at a time: computations are
    serialised by one lock (the app's inversions are CPU-bound, so running several at once would only
    oversubscribe the cores); `on_wait()` is called first when another computation holds the lock.
    Counters (`hits`, `misses`) let tests check that a layer change does not re-invert.
    """

    def __init__(self, max_items: int = 64):
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        self.max_items = max_items
        self._data: collections.OrderedDict[Hashable, Any] = collections.OrderedDict()
        self._data_lock = threading.Lock()
        self._compute_lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        with self._data_lock:
            return key in self._data

    def get(self, key: Hashable, default=None):
        with self._data_lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
            return default

    def put(self, key: Hashable, value) -> None:
        with self._data_lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_items:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._data_lock:
            self._data.clear()
            self.hits = self.misses = 0

    def get_or_compute(self, key: Hashable, fn: Callable[[], Any], *, on_wait: Callable[[], None] | None = None):
        missing = object()
        value = self.get(key, missing)
        if value is not missing:
            self.hits += 1
            return value
        if not self._compute_lock.acquire(blocking=False):
            if on_wait is not None:
                on_wait()
            self._compute_lock.acquire()
        try:
            value = self.get(key, missing)  # another session may have computed it meanwhile
            if value is not missing:
                self.hits += 1
                return value
            self.misses += 1
            value = fn()
            self.put(key, value)
            return value
        finally:
            self._compute_lock.release()


def user_message(exc: BaseException, what: str) -> str:
    """Text for st.error: user errors (ValueError, incl. api.ApiError) as they are, since their
    messages say what to do; anything else with its type and a hint."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, ValueError):
        return f"{what}: {text}"
    return (f"{what} failed unexpectedly ({type(exc).__name__}: {text}). "
            f"Try another image or model; the rest of the app keeps working.")


def scores_text(scores: dict[str, float] | None) -> str:
    if not scores:
        return ""
    parts = []
    for key, label in (("has_beard", "P(beard)"), ("shaved", "P(shaved)")):
        if key in scores:
            parts.append(f"{label} {scores[key]:.2f}")
    return " · ".join(parts)


def latent_key(ws) -> str:
    """sha256 of a ws array's shape and float32 values (renders are cached by their inputs)."""
    import numpy as np

    a = np.ascontiguousarray(np.asarray(ws, dtype=np.float32))
    h = hashlib.sha256(str(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()


def display_image(image, side: int):
    """A copy for the page: small images are enlarged by a whole factor with nearest-neighbour
    sampling (crisp pixels, not a blur); big ones are left for the browser to scale."""
    factor = side // max(image.size)
    if factor >= 2:
        from PIL import Image

        return image.resize((image.width * factor, image.height * factor), Image.NEAREST)
    return image


def example_bytes(example) -> bytes:
    """The file bytes of a bundled example (its path when readable, else its image as PNG)."""
    path = getattr(example, "path", None)
    if path:
        try:
            return Path(path).read_bytes()
        except OSError:
            pass
    return png_bytes(example.image)


def example_pair(examples: Iterable) -> tuple[str, str] | None:
    """Names of the first 'beard' and first 'shaved' example, or None when a role is missing."""
    beard = next((e.name for e in examples if e.role == "beard"), None)
    shaved = next((e.name for e in examples if e.role == "shaved"), None)
    return (beard, shaved) if beard and shaved else None

