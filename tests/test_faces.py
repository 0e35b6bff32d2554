"""stylemix.faces: decoding, detection and FFHQ-style alignment on a real photo (skimage's astronaut)."""

import importlib.util
import io
import os
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from stylemix import faces

RES = 256
# Where the FFHQ procedure puts the eye centres (fractions of the side) for a face with
# |eye_to_mouth| ~ |eye_to_eye|: x = 0.5 -/+ 1/8, y = 0.5 - 0.1 * |eye_to_mouth| / (2 * 2 |eye_to_eye|).
CANON_LEFT, CANON_RIGHT = np.array([0.375, 0.475]), np.array([0.625, 0.475])


def _astronaut_path():
    spec = importlib.util.find_spec("skimage")
    if spec is None:
        pytest.skip("scikit-image (ships data/astronaut.png) is not installed")
    path = os.path.join(os.path.dirname(spec.origin), "data", "astronaut.png")
    if not os.path.isfile(path):
        pytest.skip(f"astronaut.png not found at {path}")
    return path


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.open(_astronaut_path()).convert("RGB")


@pytest.fixture(scope="module")
def dlib_ready():
    pytest.importorskip("dlib")
    if faces._dlib_available() is not None:
        pytest.skip(faces._dlib_available())
    faces._get_dlib()  # load the model once for the module


@pytest.fixture(scope="module")
def cv2_ready():
    pytest.importorskip("cv2")
    faces._get_cv2()


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _eyes(img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """Eye centres of the face in img (fractions of the size), by re-running the landmark predictor."""
    lm = faces.detect_landmarks(img)
    assert lm is not None, "no face found in the aligned output"
    return lm[36:42].mean(0) / img.width, lm[42:48].mean(0) / img.width


def _assert_canonical(img: Image.Image, tol: float) -> None:
    el, er = _eyes(img)
    angle = np.degrees(np.arctan2(er[1] - el[1], er[0] - el[0]))
    assert abs(angle) < 3.0, (angle, el, er)
    assert np.all(np.abs(el - CANON_LEFT) < tol), el
    assert np.all(np.abs(er - CANON_RIGHT) < tol), er


# ----------------------------------------------------------------------------------------------
# dlib


def test_dlib_aligns_astronaut(astronaut, dlib_ready):
    r = faces.align(_astronaut_path(), RES)
    assert r.method == "dlib"
    assert r.image.mode == "RGB" and r.image.size == (RES, RES)
    assert r.landmarks.shape == (68, 2) and r.quad.shape == (4, 2)
    assert r.source_size == astronaut.size
    # the quad is FFHQ's: a square around the face in the upper middle of the photo
    sides = np.hypot(*(np.roll(r.quad, -1, 0) - r.quad).T)
    np.testing.assert_allclose(sides, sides[0], rtol=1e-6)
    _assert_canonical(r.image, tol=0.03)


def test_dlib_rotated_face_comes_out_level(astronaut, dlib_ready):
    rotated = astronaut.rotate(20, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(0, 0, 0))
    r = faces.align(np.asarray(rotated), RES)
    assert r.method == "dlib"
    top_edge = r.quad[3] - r.quad[0]
    assert abs(np.degrees(np.arctan2(-top_edge[1], top_edge[0])) - 20) < 4  # the quad follows the head
    _assert_canonical(r.image, tol=0.04)


@pytest.mark.parametrize("orientation, transpose", [(6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)])
def test_exif_orientation_is_honoured(astronaut, dlib_ready, orientation, transpose):
    def jpeg(img, exif=None):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=95, **({"exif": exif.tobytes()} if exif else {}))
        return buf.getvalue()

    exif = Image.Exif()
    exif[0x0112] = orientation  # stored sideways; viewers rotate it upright
    sideways = jpeg(astronaut.transpose(transpose), exif)
    raw = np.float32(Image.open(io.BytesIO(sideways)).convert("RGB"))
    upright = np.float32(faces.load_image(sideways))
    assert np.abs(upright - np.float32(astronaut)).mean() < 3.0  # rotated back
    assert np.abs(raw - np.float32(astronaut)).mean() > 20.0  # the stored pixels really are sideways
    a = faces.align(sideways, RES)
    b = faces.align(jpeg(astronaut), RES)
    assert a.method == b.method == "dlib"
    np.testing.assert_allclose(a.quad, b.quad, atol=3.0)
    diff = np.abs(np.float32(a.image) - np.float32(b.image)).mean()
    assert diff < 4.0, diff


def test_face_at_the_border_is_padded(astronaut, dlib_ready):
    # the FFHQ quad leaves the image at the top and left: reflect-padded, blurred, still canonical
    r = faces.align(astronaut.crop((150, 60, 400, 300)), RES)
    assert r.method == "dlib" and r.quad[:, 1].min() < 0 and r.quad[:, 0].min() < 0
    _assert_canonical(r.image, tol=0.03)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16"])
def test_modes_align(astronaut, dlib_ready, mode):
    if mode == "I;16":
        gray = np.asarray(astronaut.convert("L")).astype(np.uint16) * 257
        img = Image.fromarray(gray)
    elif mode == "P":
        img = astronaut.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    else:
        img = astronaut.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="JPEG" if mode == "CMYK" else "PNG")
    r = faces.align(buf.getvalue(), RES)
    assert r.method == "dlib" and r.image.mode == "RGB" and r.image.size == (RES, RES)


def test_load_image_conversions():
    # 16-bit is scaled to 8 bits, not clipped
    a16 = np.array([[0, 257, 32896, 65535]], np.uint16)
    out = np.asarray(faces.load_image(_png_bytes(Image.fromarray(a16))))
    assert out.shape == (1, 4, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])
    np.testing.assert_array_equal(np.asarray(faces.load_image(a16))[0, :, 1], [0, 1, 128, 255])
    # transparency composited on white
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)
    out = np.asarray(faces.load_image(_png_bytes(Image.fromarray(rgba, "RGBA"))))
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[1, 1]) == (255, 255, 255)
    la = Image.fromarray(np.array([[[0, 0], [0, 255]]], np.uint8), "LA")
    assert np.asarray(faces.load_image(la))[0].tolist() == [[255, 255, 255], [0, 0, 0]]
    # palette with a transparent index
    p = Image.new("P", (2, 1))
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.putpixel((1, 0), 1)
    p.info["transparency"] = 0
    assert np.asarray(faces.load_image(_png_bytes(p)))[0].tolist() == [[255, 255, 255], [255, 0, 0]]
    # grey numpy, CMYK
    assert faces.load_image(np.zeros((3, 5), np.uint8)).size == (5, 3)
    assert faces.load_image(Image.new("CMYK", (4, 4), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(ValueError, match="dtype"):
        faces.load_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        faces.load_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match="must be bytes"):
        faces.load_image(12)


# ----------------------------------------------------------------------------------------------
# no face, centre crop, haar, passthrough


def test_noise_has_no_face(dlib_ready, cv2_ready):
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    with pytest.raises(faces.NoFaceError, match="allow_centre_crop=True"):
        faces.align(noise, RES)
    with pytest.raises(ValueError):  # NoFaceError is a ValueError
        faces.align(noise, RES, method="dlib")
    r = faces.align(noise, RES, allow_centre_crop=True)
    assert r.method == "centre" and r.image.size == (RES, RES) and r.landmarks is None
    np.testing.assert_allclose(r.quad, [[40, 0], [40, 240], [280, 240], [280, 0]])
    assert faces.align(noise, 64, method="centre").method == "centre"


def test_haar_aligns_astronaut(astronaut, cv2_ready, dlib_ready):
    r = faces.align(astronaut, RES, method="haar")
    assert r.method == "haar" and r.image.size == (RES, RES) and r.quad.shape == (4, 2)
    assert r.landmarks is not None and r.landmarks.shape == (2, 2)  # both eyes found
    _assert_canonical(r.image, tol=0.05)


def test_haar_face_box_only(astronaut, cv2_ready, monkeypatch):
    # no eyes found: eyes and mouth come from the face box proportions
    _, face_cc, _ = faces._get_cv2()

    class NoEyes:
        def detectMultiScale(self, *a, **k):
            return ()

    monkeypatch.setattr(faces, "_cv2_models", (faces._get_cv2()[0], face_cc, NoEyes()))
    r = faces.align(astronaut, 64, method="haar")
    assert r.method == "haar" and r.landmarks is None and r.image.size == (64, 64)


def test_passthrough(astronaut):
    square = astronaut.resize((64, 64))
    r = faces.align(square, 64, passthrough=True)
    assert r.method == "passthrough" and r.landmarks is None
    np.testing.assert_array_equal(np.asarray(r.image), np.asarray(square))
    r = faces.align(_png_bytes(square), 32, domain="synthfaces")
    assert r.method == "passthrough" and r.image.size == (32, 32)
    with pytest.raises(ValueError, match="square"):
        faces.align(astronaut.crop((0, 0, 300, 200)), 64, passthrough=True)


def test_synthfaces_domain_aligns_non_square(astronaut, dlib_ready):
    r = faces.align(astronaut.crop((0, 0, 512, 400)), 64, domain="synthfaces")
    assert r.method == "dlib"


# ----------------------------------------------------------------------------------------------
# bad input


def _png_claiming(width: int, height: int) -> bytes:
    data = bytearray(_png_bytes(Image.new("RGB", (4, 4))))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.parametrize("side", [8000, 100_000])  # 64 MP (our limit), 10 GP (also PIL's bomb guard)
def test_oversized_header_refused_before_decoding(side):
    # the pixel data is 4x4: decoding would fail as truncated, so this error proves nothing was decoded
    with pytest.raises(faces.ImageTooLargeError, match="megapixels|too large"):
        faces.align(_png_claiming(side, side), RES)


def test_max_pixels_configurable():
    png = _png_bytes(Image.new("RGB", (100, 100)))
    with pytest.raises(faces.ImageTooLargeError, match="limit"):
        faces.load_image(png, max_pixels=5000)
    with pytest.raises(faces.ImageTooLargeError):
        faces.load_image(np.zeros((100, 100, 3), np.uint8), max_pixels=5000)
    assert faces.load_image(png, max_pixels=None).size == (100, 100)
    # a claimed size under the limit gets decoded, and the truncated data is then unreadable
    with pytest.raises(faces.UnreadableImageError):
        faces.load_image(_png_claiming(1000, 1000))


def test_unreadable_bytes(tmp_path):
    with pytest.raises(faces.UnreadableImageError, match="upload"):
        faces.align(b"this is not an image" * 10, RES)
    with pytest.raises(faces.UnreadableImageError):
        faces.align(_png_bytes(Image.new("RGB", (64, 64)))[:60], RES)  # truncated
    bad = tmp_path / "x.jpg"
    bad.write_bytes(os.urandom(256))
    with pytest.raises(ValueError):
        faces.align(str(bad), RES)
    with pytest.raises(ValueError, match="does not exist"):
        faces.align(tmp_path / "missing.png", RES)


def test_argument_errors(astronaut):
    with pytest.raises(ValueError, match="method"):
        faces.align(astronaut, RES, method="mtcnn")
    with pytest.raises(ValueError, match="resolution"):
        faces.align(astronaut, 0)
    with pytest.raises(ValueError, match="domain"):
        faces.align(astronaut, RES, domain="celeba")
    with pytest.raises(TypeError):
        faces.align(astronaut, RES, "dlib")  # options are keyword-only


def test_missing_detectors(astronaut, monkeypatch):
    monkeypatch.setattr(faces, "_dlib_available", lambda: "dlib is not installed (pip install dlib-bin)")
    monkeypatch.setattr(faces, "_cv2_available", lambda: "OpenCV is not installed (pip install x)")
    monkeypatch.setattr(faces, "_warned_missing", set())
    with pytest.raises(faces.DetectorUnavailableError, match="pip install dlib-bin"):
        faces.align(astronaut, RES, method="dlib")
    with pytest.warns(RuntimeWarning, match="skips"):
        r = faces.align(astronaut, 32, allow_centre_crop=True)
    assert r.method == "centre"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        assert faces.align(astronaut, 32, allow_centre_crop=True).method == "centre"
    with pytest.raises(faces.DetectorUnavailableError, match="no face detector"):
        faces.align(astronaut, 32)


def test_threads_share_the_cached_model(astronaut, dlib_ready):
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: faces.align(astronaut, 64), range(2)))
    assert [r.method for r in results] == ["dlib", "dlib"]
    np.testing.assert_array_equal(np.asarray(results[0].image), np.asarray(results[1].image))
