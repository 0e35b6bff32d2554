"""Face detection and FFHQ-style alignment.

`align(image, resolution)` turns a photo (bytes, a path, a PIL image or a uint8 numpy array) into the
square RGB crop a StyleGAN2 generator trained on FFHQ-aligned faces expects:

1. Decode safely: the pixel count is read from the header (PIL's `Image.open` is lazy) and refused
   above `max_pixels` before anything is decoded; EXIF orientation is honoured; every PIL mode
   (L, LA, RGBA, P, CMYK, I;16, ...) becomes 8-bit RGB (transparency composited on white, 16-bit
   scaled down, not clipped).
2. Find the largest face and its eyes and mouth:
   'dlib'  - dlib's frontal face detector + the 68-landmark shape predictor shipped by the
             `face-recognition-models` package (loaded once, cached, thread-safe);
   'haar'  - OpenCV Haar cascades (frontal face + eyes); the mouth is estimated from the eyes with
             fixed face proportions, or eyes and mouth from the face box when no eyes are found;
   'centre'- the largest centred square (only with `allow_centre_crop=True` or `method='centre'`).
3. Build the oriented crop quad exactly as the FFHQ dataset did (Karras et al., "A Style-Based
   Generator Architecture for GANs", dataset alignment procedure) and resample it: shrink large
   images first, crop, reflect-pad with a blurred border where the quad leaves the image, quad
   transform, then an antialiased resize to `resolution`.

Images already in the model's domain (e.g. procedurally rendered synthfaces, which are square and
aligned by construction) skip all of this: `align(..., passthrough=True)` or
`align(..., domain='synthfaces')` (the value of a model MANIFEST's "aligned_domain") only resizes.

Errors a user can cause are `ValueError` subclasses with a message saying what to do:
`NoFaceError`, `ImageTooLargeError`, `UnreadableImageError`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import os
import threading
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageFilter, ImageOps

__all__ = [
    "AlignedFace",
    "NoFaceError",
    "ImageTooLargeError",
    "UnreadableImageError",
    "DetectorUnavailableError",
    "align",
    "load_image",
    "detect_landmarks",
    "ffhq_quad",
    "DEFAULT_MAX_PIXELS",
    "METHODS",
]

DEFAULT_MAX_PIXELS = 40_000_000  # refuse bigger images before decoding them
METHODS = ("auto", "dlib", "haar", "centre")
DOMAINS = (None, "ffhq", "synthfaces")  # "aligned_domain" of a model; 'synthfaces' passes through

# Face proportions used where only eyes (or only a face box) are known. |eye_to_mouth| / |eye_to_eye|
# is ~0.86 on skimage's astronaut and ~0.9-1.0 on FFHQ's mean face; the box fractions are where
# dlib's eye/mouth centres fall inside OpenCV's frontalface_default box (astronaut: eyes at
# (0.28, 0.37) / (0.75, 0.40), mouth at (0.50, 0.78)).
_MOUTH_FROM_EYES = 0.9
_BOX_EYE_LEFT = (0.30, 0.38)
_BOX_EYE_RIGHT = (0.70, 0.38)
_BOX_MOUTH = (0.50, 0.78)

_DETECT_MAX_SIDE = 800  # detectors run on a copy no larger than this (landmarks on the full image)


# ----------------------------------------------------------------------------------------------
# Errors and result


class NoFaceError(ValueError):
    """No face was found in the image the user passed."""


class ImageTooLargeError(ValueError):
    """The image has more pixels than allowed (checked from the header, before decoding)."""


class UnreadableImageError(ValueError):
    """The bytes/file are not an image PIL can decode."""


class DetectorUnavailableError(ImportError):
    """A forced detection method needs a package that is not installed."""


@dataclasses.dataclass
class AlignedFace:
    image: Image.Image  # RGB, resolution x resolution
    method: str  # 'dlib' | 'haar' | 'centre' | 'passthrough'
    landmarks: np.ndarray | None  # dlib: [68, 2]; haar: [2, 2] eye centres (None if from the box)
    quad: np.ndarray | None  # [4, 2] float: crop corners (top-left, bottom-left, bottom-right,
    #                          top-right of the output) in source pixel coords (after EXIF rotation)
    source_size: tuple[int, int]  # (width, height) of the decoded, upright source image


# ----------------------------------------------------------------------------------------------
# Decoding


def _check_pixels(width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and int(width) * int(height) > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {int(width) * int(height) / 1e6:.1f} megapixels, more than "
            f"the limit of {max_pixels / 1e6:.1f} megapixels; downscale it first (or pass a larger max_pixels=)"
        )


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Transparency is composited on white; 16-bit is scaled to 8-bit."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img).astype(np.float64)
        # 'I' (32-bit int) comes from 16-bit greyscale files in older PILs: treat it as 16-bit.
        a = np.clip(a, 0, 65535) / 257.0
        return Image.fromarray(np.uint8(np.clip(np.rint(a), 0, 255)), "L").convert("RGB")
    if mode == "F":
        a = np.asarray(img).astype(np.float64)
        a = a * 255.0 if np.nanmax(a) <= 1.0 else a  # 0..1 floats, else 0..255
        return Image.fromarray(np.uint8(np.clip(np.rint(np.nan_to_num(a)), 0, 255)), "L").convert("RGB")
    if mode == "P" or mode == "PA":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, ...


def _from_array(a: np.ndarray, max_pixels: int | None) -> Image.Image:
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"image array must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]; got shape {a.shape}")
    _check_pixels(a.shape[1], a.shape[0], max_pixels)
    if a.dtype == np.uint16:
        a = np.uint8(np.rint(a.astype(np.float64) / 257.0))
    if a.dtype != np.uint8:
        raise ValueError(f"image array must be uint8 (or uint16); got dtype {a.dtype}")
    a = np.ascontiguousarray(a)
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[a.shape[2] if a.ndim == 3 else 2]
    return _to_rgb(Image.fromarray(a, mode))


def load_image(image: Any, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """bytes | path | PIL image | uint8 numpy array -> upright 8-bit RGB PIL image.

    The pixel count is checked from the header before decoding (ImageTooLargeError); PIL's own
    decompression-bomb guard also applies. Undecodable input raises UnreadableImageError.
    """
    if isinstance(image, np.ndarray):
        return _from_array(image, max_pixels)
    if isinstance(image, Image.Image):
        _check_pixels(image.width, image.height, max_pixels)
        img = image
    else:
        if isinstance(image, (bytes, bytearray, memoryview)):
            src: Any = io.BytesIO(bytes(image))
            what = f"{len(image)} bytes"
        elif isinstance(image, (str, os.PathLike)):
            if not os.path.isfile(image):
                raise ValueError(f"image path does not exist or is not a file: {os.fspath(image)!r}")
            src = os.fspath(image)
            what = repr(src)
        else:
            raise ValueError(
                f"image must be bytes, a path, a PIL image or a uint8 numpy array; got {type(image).__name__}"
            )
        try:
            img = Image.open(src)  # lazy: reads the header only
        except Image.DecompressionBombError as e:
            raise ImageTooLargeError(f"image refused as too large by PIL ({e}); downscale it first") from e
        except (Image.UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise UnreadableImageError(
                f"could not read {what} as an image ({e}); upload a JPEG, PNG or WebP photo"
            ) from e
        _check_pixels(img.width, img.height, max_pixels)
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"image refused as too large by PIL ({e}); downscale it first") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise UnreadableImageError(
            f"could not decode the image ({e}); the file may be truncated or corrupt - upload it again or re-save it"
        ) from e


# ----------------------------------------------------------------------------------------------
# Detectors (loaded lazily, once; calls serialised because neither library promises thread safety)

_lock = threading.Lock()
_dlib_models: tuple[Any, Any] | None = None
_cv2_models: tuple[Any, Any, Any] | None = None
_warned_missing: set[str] = set()


def _have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _dlib_model_dir() -> str | None:
    # Located without importing face_recognition_models (its __init__ pulls in pkg_resources).
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        return None
    return os.path.join(os.path.dirname(spec.origin), "models")


def _dlib_available() -> str | None:
    """None if usable, else what is missing (with the pip command)."""
    if not _have("dlib"):
        return "dlib is not installed (pip install dlib-bin)"
    d = _dlib_model_dir()
    if d is None or not os.path.isfile(os.path.join(d, "shape_predictor_68_face_landmarks.dat")):
        return "dlib's 68-landmark model is not installed (pip install face-recognition-models)"
    return None


def _cv2_available() -> str | None:
    if not _have("cv2"):
        return "OpenCV is not installed (pip install opencv-python-headless)"
    return None


def _get_dlib() -> tuple[Any, Any]:
    global _dlib_models
    with _lock:
        if _dlib_models is None:
            import dlib

            path = os.path.join(_dlib_model_dir(), "shape_predictor_68_face_landmarks.dat")
            _dlib_models = (dlib.get_frontal_face_detector(), dlib.shape_predictor(path))
        return _dlib_models


def _get_cv2() -> tuple[Any, Any, Any]:
    global _cv2_models
    with _lock:
        if _cv2_models is None:
            import cv2

            root = cv2.data.haarcascades
            face = cv2.CascadeClassifier(os.path.join(root, "haarcascade_frontalface_default.xml"))
            eye = cv2.CascadeClassifier(os.path.join(root, "haarcascade_eye.xml"))
            if face.empty() or eye.empty():
                raise DetectorUnavailableError(f"OpenCV's Haar cascades could not be loaded from {root}")
            _cv2_models = (cv2, face, eye)
        return _cv2_models


def _detection_copy(img: Image.Image) -> tuple[np.ndarray, float]:
    """A copy no larger than _DETECT_MAX_SIDE and the factor from its coords to the source's."""
    scale = max(img.size) / _DETECT_MAX_SIDE
    if scale > 1:
        small = img.resize((max(1, round(img.width / scale)), max(1, round(img.height / scale))), Image.Resampling.BOX)
        return np.asarray(small), img.width / small.width
    return np.asarray(img), 1.0


def detect_landmarks(img: Image.Image) -> np.ndarray | None:
    """The largest face's 68 dlib landmarks [68, 2] (x, y) in img's pixel coords, or None."""
    import dlib

    detector, predictor = _get_dlib()
    small, s = _detection_copy(img)
    with _lock:
        rects, scores, _ = detector.run(small, 1, 0.0)
    if len(rects) == 0:
        return None
    best = max(range(len(rects)), key=lambda i: (rects[i].width() * rects[i].height(), scores[i]))
    r = rects[best]
    rect = dlib.rectangle(round(r.left() * s), round(r.top() * s), round(r.right() * s), round(r.bottom() * s))
    full = np.asarray(img)
    with _lock:
        shape = predictor(full, rect)
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)


def _detect_haar(img: Image.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None] | None:
    """(eye_left, eye_right, mouth) for the largest Haar face, plus the eye centres if the eye
    cascade found both (else None: everything estimated from the face box)."""
    cv2, face_cc, eye_cc = _get_cv2()
    small, s = _detection_copy(img)
    gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
    min_side = max(24, min(gray.shape) // 20)
    with _lock:
        faces = face_cc.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
    if len(faces) == 0:
        return None
    x, y, w, h = (float(v) for v in max(faces, key=lambda b: b[2] * b[3]))
    # Eyes: in the upper part of the face box, one per half.
    y0, y1 = int(y + 0.15 * h), int(y + 0.6 * h)
    roi = gray[y0:y1, int(x) : int(x + w)]
    with _lock:
        eyes = eye_cc.detectMultiScale(roi, scaleFactor=1.1, minNeighbors=3, minSize=(max(8, int(w / 10)),) * 2,
                                       maxSize=(int(w / 2.5),) * 2) if roi.size else []
    left = [e for e in eyes if e[0] + e[2] / 2 < w / 2]
    right = [e for e in eyes if e[0] + e[2] / 2 >= w / 2]
    if left and right:
        el, er = (max(c, key=lambda b: b[2] * b[3]) for c in (left, right))
        eye_left = np.array([x + el[0] + el[2] / 2, y0 + el[1] + el[3] / 2])
        eye_right = np.array([x + er[0] + er[2] / 2, y0 + er[1] + er[3] / 2])
        e2e = eye_right - eye_left
        mouth = (eye_left + eye_right) / 2 + np.array([-e2e[1], e2e[0]]) * _MOUTH_FROM_EYES  # rot90 downwards
        eyes_found = np.stack([eye_left, eye_right]) * s
    else:
        box = lambda f: np.array([x + f[0] * w, y + f[1] * h])  # noqa: E731
        eye_left, eye_right, mouth = box(_BOX_EYE_LEFT), box(_BOX_EYE_RIGHT), box(_BOX_MOUTH)
        eyes_found = None
    return eye_left * s, eye_right * s, mouth * s, eyes_found


# ----------------------------------------------------------------------------------------------
# FFHQ alignment


def ffhq_quad(eye_left, eye_right, mouth_avg) -> np.ndarray:
    """The oriented crop quad [4, 2] of the FFHQ procedure from the two eye centres (image-left eye
    first) and the mouth centre (mean of the mouth corners)."""
    eye_left, eye_right, mouth_avg = (np.asarray(v, dtype=np.float64) for v in (eye_left, eye_right, mouth_avg))
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = mouth_avg - eye_avg
    rot90 = lambda v: np.array([-v[1], v[0]])  # noqa: E731  (flipud(v) * [-1, 1])
    x = eye_to_eye - rot90(eye_to_mouth)
    norm = np.hypot(*x)
    if not np.isfinite(norm) or norm < 1e-6:
        raise NoFaceError("the detected face is degenerate (eyes and mouth coincide); try a clearer photo")
    x = x / norm * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = rot90(x)
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def _quad_from_landmarks(lm: np.ndarray) -> np.ndarray:
    assert lm.shape == (68, 2), lm.shape
    return ffhq_quad(lm[36:42].mean(0), lm[42:48].mean(0), (lm[48] + lm[54]) * 0.5)


def _resample_quad(img: Image.Image, quad: np.ndarray, resolution: int, *, transform_size: int | None,
                   enable_padding: bool = True) -> Image.Image:
    """Shrink, crop, pad (reflect + blur) and quad-transform `img` so `quad` fills the output."""
    quad = np.array(quad, dtype=np.float64)
    qsize = np.hypot(*(quad[3] - quad[0]))  # = 2 |x|

    # Shrink: downsample big sources first (antialiased) so the quad is at most ~2x the output.
    shrink = int(np.floor(qsize / resolution * 0.5))
    if shrink > 1:
        rsize = (max(1, int(np.rint(img.width / shrink))), max(1, int(np.rint(img.height / shrink))))
        img = img.resize(rsize, Image.Resampling.LANCZOS)
        quad /= shrink
        qsize /= shrink

    # Crop to the quad plus a border.
    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (int(np.floor(quad[:, 0].min())), int(np.floor(quad[:, 1].min())),
            int(np.ceil(quad[:, 0].max())), int(np.ceil(quad[:, 1].max())))
    crop = (max(crop[0] - border, 0), max(crop[1] - border, 0),
            min(crop[2] + border, img.width), min(crop[3] + border, img.height))
    if crop[2] - crop[0] < img.width or crop[3] - crop[1] < img.height:
        if crop[2] <= crop[0] or crop[3] <= crop[1]:
            raise NoFaceError("the face lies outside the image; try a photo with the whole face in it")
        img = img.crop(crop)
        quad -= crop[0:2]

    # Pad where the quad leaves the image: reflect, blur towards the edge, fade to the median colour.
    pad = (int(np.floor(quad[:, 0].min())), int(np.floor(quad[:, 1].min())),
           int(np.ceil(quad[:, 0].max())), int(np.ceil(quad[:, 1].max())))
    pad = (max(-pad[0] + border, 0), max(-pad[1] + border, 0),
           max(pad[2] - img.width + border, 0), max(pad[3] - img.height + border, 0))
    if enable_padding and max(pad) > border - 4:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        pad = np.maximum(pad, 1)
        a = np.pad(np.float32(img), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), mode="reflect")
        h, w, _ = a.shape
        yy, xx, _ = np.ogrid[:h, :w, :1]
        mask = np.maximum(1.0 - np.minimum(np.float32(xx) / pad[0], np.float32(w - 1 - xx) / pad[2]),
                          1.0 - np.minimum(np.float32(yy) / pad[1], np.float32(h - 1 - yy) / pad[3]))
        blurred = Image.fromarray(np.uint8(a), "RGB").filter(ImageFilter.GaussianBlur(float(qsize * 0.02)))  # a holds uint8 values
        a += (np.float32(blurred) - a) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
        a += (np.median(a, axis=(0, 1)) - a) * np.clip(mask, 0.0, 1.0)
        img = Image.fromarray(np.uint8(np.clip(np.rint(a), 0, 255)), "RGB")
        quad += pad[:2]

    # Transform: sample the quad at about its own size (>= the output), then resize down with
    # antialiasing (PIL's QUAD transform does not antialias).
    if transform_size is None:
        transform_size = int(min(4096, max(resolution, np.ceil(qsize))))
    img = img.transform((transform_size, transform_size), Image.Transform.QUAD, (quad + 0.5).flatten(),
                        Image.Resampling.BILINEAR)
    if transform_size != resolution:
        img = img.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return img


def _square_quad(left: float, top: float, side: float) -> np.ndarray:
    return np.array([[left, top], [left, top + side], [left + side, top + side], [left + side, top]], np.float64)


def _resize_square(img: Image.Image, resolution: int) -> Image.Image:
    return img if img.size == (resolution, resolution) else img.resize((resolution, resolution), Image.Resampling.LANCZOS)


def _skip_warning(what: str) -> None:
    with _lock:
        if what in _warned_missing:
            return
        _warned_missing.add(what)
    warnings.warn(f"face alignment: {what}; method='auto' skips it", RuntimeWarning, stacklevel=3)


def align(
    image: Any,  # bytes | str | os.PathLike | PIL.Image.Image | uint8 numpy array [H, W(, C)]
    resolution: int,  # output side in pixels (the generator's img_resolution)
    *,
    method: str = "auto",  # 'auto' (dlib, then haar, then centre if allowed) | 'dlib' | 'haar' | 'centre'
    allow_centre_crop: bool = False,  # 'auto' falls back to a centre crop instead of raising NoFaceError
    transform_size: int | None = None,  # side of the quad-transform canvas; None: about the quad's size
    max_pixels: int | None = DEFAULT_MAX_PIXELS,  # refuse bigger images before decoding (None: no limit)
    passthrough: bool = False,  # the caller says the image is already aligned (square): only resize
    domain: str | None = None,  # the model MANIFEST's "aligned_domain"; 'synthfaces' passes square images through
) -> AlignedFace:
    """Detect the largest face in `image` and crop it FFHQ-style to `resolution` x `resolution` RGB.

    Raises NoFaceError (no face and no centre crop allowed), ImageTooLargeError, UnreadableImageError
    (all ValueError), ValueError for bad arguments, DetectorUnavailableError if a forced method's
    package is missing.

    Passthrough: with `passthrough=True` the image must be square and is only resized (method
    'passthrough'). With `domain='synthfaces'` (images rendered by training/data/synthfaces.py are
    aligned by construction) a square image passes through and any other image is aligned as usual.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 8:
        raise ValueError(f"resolution must be an int >= 8; got {resolution!r}")
    resolution = int(resolution)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}; got {domain!r}")
    if transform_size is not None and (not isinstance(transform_size, (int, np.integer)) or transform_size < resolution):
        raise ValueError(f"transform_size must be an int >= resolution ({resolution}); got {transform_size!r}")
    if max_pixels is not None and max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive or None; got {max_pixels!r}")

    img = load_image(image, max_pixels=max_pixels)
    size = (img.width, img.height)

    if passthrough or domain == "synthfaces":
        if img.width == img.height:
            return AlignedFace(_resize_square(img, resolution), "passthrough", None,
                               _square_quad(0, 0, img.width), size)
        if passthrough:
            raise ValueError(
                f"passthrough=True needs a square, already aligned image; got {img.width}x{img.height}"
                " (leave passthrough off to detect and align the face)"
            )

    order = {"auto": ("dlib", "haar", "centre" if allow_centre_crop else None),
             "dlib": ("dlib",), "haar": ("haar",), "centre": ("centre",)}[method]
    tried = []
    for m in order:
        if m is None:
            continue
        if m in ("dlib", "haar"):
            missing = _dlib_available() if m == "dlib" else _cv2_available()
            if missing is not None:
                if method != "auto":
                    raise DetectorUnavailableError(f"method={method!r} needs {missing}")
                _skip_warning(missing)
                continue
            tried.append(m)
        if m == "dlib":
            lm = detect_landmarks(img)
            if lm is None:
                continue
            quad = _quad_from_landmarks(lm)
            out = _resample_quad(img, quad, resolution, transform_size=transform_size)
            return AlignedFace(out, "dlib", lm, quad, size)
        if m == "haar":
            found = _detect_haar(img)
            if found is None:
                continue
            eye_left, eye_right, mouth, eyes = found
            quad = ffhq_quad(eye_left, eye_right, mouth)
            out = _resample_quad(img, quad, resolution, transform_size=transform_size)
            return AlignedFace(out, "haar", eyes, quad, size)
        if m == "centre":
            side = min(img.size)
            left, top = (img.width - side) // 2, (img.height - side) // 2
            out = _resize_square(img.crop((left, top, left + side, top + side)), resolution)
            return AlignedFace(out, "centre", None, _square_quad(left, top, side), size)

    if not tried:
        raise DetectorUnavailableError(
            "no face detector is installed (pip install dlib-bin face-recognition-models "
            "opencv-python-headless), or pass allow_centre_crop=True"
        )
    raise NoFaceError(
        f"no face found in the {img.width}x{img.height} image (tried: {', '.join(tried)}); use a photo with one "
        "clearly visible, roughly frontal face, or pass allow_centre_crop=True to use the centre of the image"
    )
