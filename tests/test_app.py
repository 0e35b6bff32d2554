"""app.py through Streamlit's AppTest (no browser): uploads, examples, layer presets and checkboxes,
edit sliders, model switch, the comparison view and every error path; plus app_ui's plain helpers.

The app runs on tiny 32x32 generators saved from the official tiny fixture: 'tinyplain' (no
encoder, no directions) and 'tinyfull' (an untrained encoder and random directions written where
api finds them by name), so the tests do not depend on the bundled model's training.
"""

import io
import os
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

import app_ui as ui  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")
EXAMPLES = REPO / "assets" / "examples"
TIMEOUT = 180  # seconds per AppTest run: two inversions on a CPU shared with a training run


# ----------------------------------------------------------------------------------------------
# Fixtures


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _huge_png(width: int = 9000, height: int = 9000) -> bytes:
    """A PNG whose header claims width x height pixels (the decoder refuses it before decoding)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def _example(name: str) -> bytes:
    path = EXAMPLES / f"{name}.png"
    if not path.is_file():
        pytest.skip(f"bundled example {path} is missing")
    return path.read_bytes()


@pytest.fixture(scope="module")
def app_env(tmp_path_factory, fixtures_dir, one_thread):
    """Two tiny models on disk, a private STYLEMIX_CACHE (the compiled ops stay where they are) and
    the app's model env vars; restored afterwards."""
    import torch

    from stylemix import pretrained
    from stylemix.checkpoints import save_generator
    from stylemix.editing import Direction, save_directions
    from stylemix.inversion import save_encoder, w_stats
    from stylemix.networks.encoder import Encoder
    from tests.conftest import load_fixture_generator

    root = tmp_path_factory.mktemp("app")
    cache = root / "cache"
    G = load_fixture_generator(fixtures_dir)
    plain = save_generator(G, root / "tinyplain.safetensors", provenance={"test": "tests/test_app.py"})
    full = save_generator(G, root / "tinyfull.safetensors", provenance={"test": "tests/test_app.py"})
    torch.manual_seed(0)
    enc = Encoder(G.img_resolution, G.num_ws, G.w_dim, channel_base=64, channel_max=16, feature_dim=32)
    enc.w_avg.copy_(w_stats(G)[0])  # untrained (its output layer starts at zero): it returns w_avg
    save_encoder(enc, cache / "encoders" / "tinyfull-encoder.safetensors", model_name="tinyfull")
    rng = np.random.default_rng(0)
    dirs = {}
    for attr in ("has_beard", "shaved", "glasses"):
        d = Direction(attribute=attr, method="interfacegan", vector=rng.standard_normal(G.w_dim), scale=1.0)
        dirs[d.key] = d
    (cache / "directions").mkdir(parents=True, exist_ok=True)
    save_directions(cache / "directions" / "tinyfull-directions.safetensors", dirs, meta={"test": True})

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_EXTENSIONS_DIR", os.environ.get("TORCH_EXTENSIONS_DIR")
                  or str(pretrained.cache_dir() / "torch_extensions"))
        mp.setenv("STYLEMIX_CACHE", str(cache))
        mp.setenv(ui.MODEL_ENV, str(plain))
        mp.setenv(ui.MODELS_ENV, str(full))
        yield {"plain": str(plain), "full": str(full), "root": root}


@pytest.fixture
def inversions(monkeypatch):
    """Counts api.invert calls made by the app (the app calls it through the module)."""
    from stylemix import api

    calls = []
    real = api.invert

    def counting(model, image, **kw):
        calls.append((model.name, kw.get("quality")))
        return real(model, image, **kw)

    monkeypatch.setattr(api, "invert", counting)
    return calls


def new_app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    _ok(at)
    return at


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _image_captions(at: AppTest) -> list[str]:
    return [c for img in at.image for c in img.captions]


def _errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def _upload(at: AppTest, slot: str, name: str, data: bytes, mime: str = "image/png") -> None:
    gen = at.session_state["upgen_" + slot] if "upgen_" + slot in at.session_state else 0
    at.file_uploader(key=f"upload_{slot}_{gen}").set_value((name, data, mime))


def _result(at: AppTest) -> dict | None:
    return at.session_state["result"] if "result" in at.session_state else None


def _upload_pair(at: AppTest) -> dict:
    _upload(at, "beard", "beard.png", _example("beard_1"))
    _upload(at, "shaved", "shaved.jpg", _jpeg(_example("shaved_1")), "image/jpeg")
    at.run()
    _ok(at)
    assert _errors(at) == []
    res = _result(at)
    assert res is not None, "no mixed face after two uploads"
    return res


def _jpeg(png: bytes) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buf, format="JPEG", quality=95)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# Flows


def test_start_shows_model_layers_and_examples(app_env):
    at = new_app()
    captions = [c.value for c in at.sidebar.caption]
    assert any("32×32 px · num_ws 8" in c and "no encoder" in c for c in captions), captions
    # no encoder: 'fast' is not offered, and the sidebar says how to get one
    assert at.radio(key="quality").options == ["balanced", "best"]
    assert any("training.encoder --model tinyplain" in c for c in captions)
    # presets for a 32 px layout (no 'fine' rows) and one checkbox per layer, labelled with its resolution
    assert at.radio(key="preset").options == ["coarse", "middle", "custom"]
    assert at.radio(key="preset").value == "coarse"
    boxes = [at.checkbox(key=f"layer_{i}") for i in range(8)]
    assert [b.label for b in boxes][:3] == ["layer 0 · 4 px", "layer 1 · 8 px", "layer 2 · 8 px"]
    assert [b.value for b in boxes] == [True] * 3 + [False] * 5
    # nothing uploaded yet: each slot says what to do; the gallery offers the bundled faces
    assert len(at.info) == 2 and all("Upload a" in i.value for i in at.info)
    assert at.button(key="example_pair")
    assert _result(at) is None


def test_upload_two_files_then_change_layers_without_reinverting(app_env, inversions):
    at = new_app()
    res = _upload_pair(at)
    assert res["layers"] == [0, 1, 2] and res["base"] == "beard"
    assert len(inversions) <= 2  # 0 when an earlier test already inverted these crops
    n_inv = len(inversions)
    captions = _image_captions(at)
    assert sum(c.startswith("aligned (") for c in captions) == 2
    assert sum(c.startswith("reconstruction · distance") for c in captions) == 2
    assert {m.label for m in at.metric} == {"P(beard)", "P(shaved)"}
    assert [d.label for d in at.get("download_button")] == ["Download PNG", "Download ws (.npz)"]
    # the layer strip: one image per layer, labelled like the checkboxes
    assert sum(c.startswith("layer ") for c in captions) == 8

    # a preset sets the checkboxes and re-renders
    at.radio(key="preset").set_value("middle").run()
    _ok(at)
    assert [at.checkbox(key=f"layer_{i}").value for i in range(8)] == [False] * 3 + [True] * 5
    res2 = _result(at)
    assert res2["layers"] == [3, 4, 5, 6, 7] and res2["sha256"] != res["sha256"]
    # a checkbox makes the preset 'custom'; ticking back to a preset's rows names it again
    at.checkbox(key="layer_0").check().run()
    _ok(at)
    assert at.radio(key="preset").value == "custom"
    res3 = _result(at)
    assert res3["layers"] == [0, 3, 4, 5, 6, 7] and res3["sha256"] not in (res["sha256"], res2["sha256"])
    at.checkbox(key="layer_0").uncheck().run()
    assert at.radio(key="preset").value == "middle"
    assert _result(at)["sha256"] == res2["sha256"]
    # base swap and truncation re-render too
    at.radio(key="base").set_value("shaved").run()
    _ok(at)
    assert _result(at)["base"] == "shaved" and _result(at)["sha256"] != res2["sha256"]
    at.slider(key="truncation").set_value(0.5).run()
    _ok(at)
    assert _result(at)["truncation"] == 0.5
    # none of this ran an inversion again
    assert len(inversions) == n_inv
    # nor does a new session with the same images (process-wide cache)
    at2 = new_app()
    _upload_pair(at2)
    assert len(inversions) == n_inv


def test_example_gallery_without_uploading(app_env):
    at = new_app()
    at.button(key="example_pair").click().run()
    _ok(at)
    assert _errors(at) == []
    first = _result(at)
    assert first is not None
    assert at.session_state["example_beard"] == "beard_1" and at.session_state["example_shaved"] == "shaved_1"
    # another example for one slot
    at.button(key="ex_shaved_shaved_2").click().run()
    _ok(at)
    assert at.session_state["example_shaved"] == "shaved_2"
    assert _result(at)["sha256"] != first["sha256"]
    # an upload replaces the example in its slot
    _upload(at, "shaved", "mine.png", _example("shaved_1"))
    at.run()
    _ok(at)
    assert "example_shaved" not in at.session_state
    assert _result(at)["sha256"] == first["sha256"]


def test_model_switch_fast_quality_and_edit_sliders(app_env):
    at = new_app()
    assert not at.get("slider") or all(not s.key.startswith("edit_") for s in at.slider)
    at.selectbox(key="model_choice").set_value(app_env["full"]).run()
    _ok(at)
    assert at.radio(key="quality").options == ["fast", "balanced", "best"]
    captions = [c.value for c in at.sidebar.caption]
    assert any("encoder ·" in c and "3 edit directions" in c for c in captions), captions
    assert at.slider(key="edit_has_beard").label == "add beard"
    assert at.slider(key="edit_shaved").label == "shave head"
    assert at.slider(key="edit_glasses")  # the other directions sit in an expander
    at.radio(key="quality").set_value("fast")
    res = _upload_pair(at)
    assert res["edits"] == {}
    at.slider(key="edit_has_beard").set_value(2.0).run()
    _ok(at)
    edited = _result(at)
    assert edited["edits"] == {"has_beard": 2.0} and edited["sha256"] != res["sha256"]
    assert any(c.value.startswith("Edits: has_beard +2.00") for c in at.caption)
    # editing alone: no layers from the other face
    for i in range(8):
        at.checkbox(key=f"layer_{i}").uncheck()
    at.run()
    _ok(at)
    assert _result(at)["layers"] == [] and _errors(at) == []
    # back to the model without an encoder: 'fast' falls back to 'balanced', the sliders go away
    at.selectbox(key="model_choice").set_value(app_env["plain"]).run()
    _ok(at)
    assert at.radio(key="quality").value == "balanced"
    assert all(not s.key.startswith("edit_") for s in at.slider)


def test_compare_methods_view(app_env, monkeypatch):
    results = app_env["root"] / "cwd" / "results" / "comparison"
    results.mkdir(parents=True)
    (results / "metrics.csv").write_text("method,both_rate,fd\nmix: coarse,0.4,12.5\nedit: beard + shave,0.3,10.1\n")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(results / "both_rate.png")
    monkeypatch.chdir(app_env["root"] / "cwd")
    at = new_app()
    at.selectbox(key="model_choice").set_value(app_env["full"])
    at.radio(key="view").set_value("Compare methods")
    at.button(key="example_pair").click().run()
    _ok(at)
    assert _errors(at) == []
    names = _image_captions(at)
    for method in ("mix: coarse", "mix: middle", "edit: beard + shave", "edit: shaved + beard"):
        assert method in names, names
    assert "mix: fine" not in names  # a 32 px model has no fine rows
    assert len(at.dataframe) == 1
    assert at.dataframe[0].value.shape == (2, 3)
    assert "both_rate.png" in names
    # the model without directions lists the mixes and says how to get W editing
    at.selectbox(key="model_choice").set_value(app_env["plain"]).run()
    _ok(at)
    names = _image_captions(at)
    assert "mix: coarse" in names and not any(n.startswith("edit:") for n in names)
    assert any("training.directions --model tinyplain" in c.value for c in at.caption)


# ----------------------------------------------------------------------------------------------
# Errors: each is an st.error saying what to do, and the rest of the app keeps working


def test_unreadable_and_too_large_uploads(app_env):
    at = new_app()
    _upload(at, "beard", "broken.png", b"this is not an image at all")
    _upload(at, "shaved", "shaved.png", _example("shaved_1"))
    at.run()
    _ok(at)
    errors = _errors(at)
    assert len(errors) == 1 and errors[0].startswith("The beard reference (broken.png)"), errors
    # the other slot still shows its reconstruction
    assert sum(c.startswith("reconstruction") for c in _image_captions(at)) == 1
    assert _result(at) is None
    _upload(at, "beard", "huge.png", _huge_png())
    at.run()
    _ok(at)
    errors = _errors(at)
    assert len(errors) == 1 and "huge.png" in errors[0] and "pixels" in errors[0].lower(), errors
    # fixing the upload clears the error
    _upload(at, "beard", "beard.png", _example("beard_1"))
    at.run()
    _ok(at)
    assert _errors(at) == [] and _result(at) is not None


def test_no_face_error_and_centre_crop(app_env):
    at = new_app()
    grey = _png(Image.new("RGB", (96, 96), (128, 128, 128)))
    _upload(at, "beard", "wall.png", grey)
    at.run()
    _ok(at)
    errors = _errors(at)
    assert len(errors) == 1 and "face" in errors[0].lower() and "centre crop" in errors[0], errors
    at.checkbox(key="centre_crop").check().run()
    _ok(at)
    assert _errors(at) == []
    assert "aligned (centre)" in _image_captions(at)


def test_model_errors_keep_the_app_usable(app_env, monkeypatch, tmp_path):
    bad = tmp_path / "notes.safetensors"
    bad.write_text("not a checkpoint")
    monkeypatch.setenv(ui.MODEL_ENV, str(tmp_path / "missing.safetensors"))
    at = new_app()
    errors = _errors(at)
    assert len(errors) == 1 and "missing.safetensors" in errors[0], errors
    assert not at.file_uploader  # nothing to do without a model ...
    # ... but the sidebar still offers the others, and a local path
    at.selectbox(key="model_choice").set_value(ui.LOCAL_CHOICE).run()
    _ok(at)
    assert any("Type the path" in i.value for i in at.sidebar.info)
    at.text_input(key="model_path").input(str(bad)).run()
    _ok(at)
    errors = _errors(at)
    assert len(errors) == 1 and "notes.safetensors" in errors[0] and "Pick another model" in errors[0], errors
    at.text_input(key="model_path").input(app_env["plain"]).run()
    _ok(at)
    assert _errors(at) == [] and len(at.file_uploader) == 2


def test_best_preset_applies_the_measured_recipe(app_env, monkeypatch, tmp_path):
    """A registered model whose MANIFEST record has a best_recipe: the 'best' preset checks its
    layers, picks its base face and sets the edit sliders (widened to hold a strength above 5)."""
    import json
    import shutil

    from stylemix import pretrained

    folder = tmp_path / "pretrained"
    folder.mkdir()
    shutil.copy(app_env["full"], folder / "tinybest.safetensors")
    path = folder / "tinybest.safetensors"
    record = {"name": "tinybest", "path": path.name, "kind": "generator", "resolution": 32,
              "sha256": pretrained.sha256_file(path), "size": path.stat().st_size, "description": "tiny",
              "best_recipe": {"base": "shaved", "layers": [0, 3], "edits": {"has_beard": 5.5}}}
    (folder / "MANIFEST.json").write_text(json.dumps({"models": [record]}))
    cache = pretrained.cache_dir()
    for kind, suffix in (("encoders", "encoder"), ("directions", "directions")):
        shutil.copy(cache / kind / f"tinyfull-{suffix}.safetensors", cache / kind / f"tinybest-{suffix}.safetensors")
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", folder)
    monkeypatch.setenv(ui.MODEL_ENV, "tinybest")
    try:
        at = new_app()
        assert "best" in at.radio(key="preset").options
        assert at.slider(key="edit_has_beard").value == 0.0 and at.radio(key="base").value == "beard"
        assert at.slider(key="edit_has_beard").max == 6.0  # the recipe's 5.5 fits
        at.slider(key="edit_shaved").set_value(1.0).run()
        at.radio(key="preset").set_value("best").run()
        _ok(at)
        assert [i for i in range(8) if at.checkbox(key=f"layer_{i}").value] == [0, 3]
        assert at.radio(key="base").value == "shaved"
        assert at.slider(key="edit_has_beard").value == 5.5 and at.slider(key="edit_shaved").value == 0.0
        at.radio(key="preset").set_value("middle").run()  # other presets leave the base and sliders alone
        _ok(at)
        assert at.slider(key="edit_has_beard").value == 5.5 and at.radio(key="base").value == "shaved"
    finally:
        for kind, suffix in (("encoders", "encoder"), ("directions", "directions")):
            (cache / kind / f"tinybest-{suffix}.safetensors").unlink(missing_ok=True)


def test_default_model_is_bundled_synthfaces64(app_env, monkeypatch):
    """Without STYLEMIX_APP_MODEL the app opens synthfaces64; until it is installed it says so."""
    monkeypatch.delenv(ui.MODEL_ENV)
    at = new_app()
    assert at.selectbox(key="model_choice").value == "synthfaces64"
    errors = _errors(at)
    if errors:
        assert "synthfaces64" in errors[0] and "not installed" in errors[0], errors
    else:
        assert any("64×64 px" in c.value for c in at.sidebar.caption)


# ----------------------------------------------------------------------------------------------
# app_ui helpers


def test_model_choices_and_labels():
    models = [{"name": "synthfaces64", "resolution": 64, "bundled": True, "available": True},
              {"name": "ffhq256", "resolution": 256, "bundled": False, "available": False}]
    choices = ui.model_choices(models, "synthfaces64", ["/x/G.pkl", "/x/G.pkl"])
    assert choices == ["synthfaces64", "ffhq256", "/x/G.pkl", ui.LOCAL_CHOICE]
    assert ui.model_label("synthfaces64", models) == "synthfaces64 · 64 px · bundled"
    assert ui.model_label("ffhq256", models) == "ffhq256 · 256 px · not downloaded"
    assert ui.model_label("/x/G.pkl", models) == "G.pkl · local file"
    assert "python -m stylemix fetch ffhq256" in ui.unavailable_message("ffhq256", models)
    assert ui.unavailable_message("synthfaces64", models) is None
    assert "not installed" in ui.unavailable_message("synthfaces64", [])  # not registered yet
    assert ui.default_model({}) == "synthfaces64"
    assert ui.default_model({ui.MODEL_ENV: " /m.pkl "}) == "/m.pkl"
    assert ui.extra_model_paths({ui.MODELS_ENV: f"a.pkl{os.pathsep}{os.pathsep} b.pt"}) == ["a.pkl", "b.pt"]


def test_model_key_follows_file_changes(tmp_path):
    p = tmp_path / "G.safetensors"
    p.write_bytes(b"1")
    k1 = ui.model_key(str(p))
    assert ui.model_source(k1) == str(p.resolve())
    os.utime(p, ns=(1, 10**9))
    assert ui.model_key(str(p)) != k1
    assert ui.model_key("synthfaces64") == ui.model_source("synthfaces64") == "synthfaces64"


def test_presets():
    groups = {"coarse": [0, 1, 2], "middle": [3, 4, 5, 6], "fine": [7, 8, 9]}
    assert ui.presets_for(groups) == ["coarse", "middle", "fine", "custom"]
    assert ui.presets_for({**groups, "best": [2, 5]}) == ["coarse", "middle", "fine", "best", "custom"]
    assert ui.presets_for({**groups, "best": []}) == ["coarse", "middle", "fine", "best", "custom"]
    assert ui.preset_of([], {**groups, "best": []}) == "custom"
    assert ui.preset_layers("middle", groups, 10) == [3, 4, 5, 6]
    assert ui.preset_layers("custom", groups, 10) == []
    with pytest.raises(ValueError, match="'huge'"):
        ui.preset_layers("huge", groups, 10)
    assert ui.preset_of([9, 8, 7], groups) == "fine"
    assert ui.preset_of([0, 9], groups) == "custom"
    assert ui.describe_layers([], ["a"]).startswith("no layers")
    labels = ["layer 0 · 4 px", "layer 1 · 8 px"]
    assert ui.mix_caption("beard", [1], labels) == "Result: beard reference with layer 1 · 8 px from the shaved-head reference"
    assert ui.mix_caption("shaved", [], labels, {"has_beard": 2, "shaved": 0, "smile": -1}) == \
        "Result: shaved-head reference + add beard +2.00 + smile -1.00"
    shot = (Path(__file__).resolve().parents[1] / "scripts" / "screenshot.py").read_text(encoding="utf-8")
    assert f'MIXED_CAPTION = "{ui.MIX_CAPTION_PREFIX}"' in shot  # the browser script finds the result by it


def test_result_cache_computes_once_and_serialises():
    cache = ui.ResultCache(max_items=2)
    started, release = threading.Event(), threading.Event()
    calls, waits, running, peak = [], [], [0], [0]
    lock = threading.Lock()

    def compute(value, block=False):
        def fn():
            with lock:
                calls.append(value)
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            if block:
                started.set()
                assert release.wait(30)
            with lock:
                running[0] -= 1
            return value
        return fn

    out = {}

    def get(name, key, fn):
        out[name] = cache.get_or_compute(key, fn, on_wait=lambda: waits.append(name))

    first = threading.Thread(target=get, args=("A", "a", compute("a", block=True)))
    first.start()
    assert started.wait(30)
    others = [threading.Thread(target=get, args=("B", "a", compute("a-again"))),
              threading.Thread(target=get, args=("C", "b", compute("b")))]
    for t in others:
        t.start()
    deadline = time.monotonic() + 30
    while len(waits) < 2 and time.monotonic() < deadline:  # both wait while "a" is computed
        time.sleep(0.01)
    release.set()
    for t in [first, *others]:
        t.join(30)
    assert sorted(waits) == ["B", "C"]
    assert out == {"A": "a", "B": "a", "C": "b"}  # B got A's result: "a" was computed once
    assert sorted(calls) == ["a", "b"] and peak[0] == 1  # one computation at a time
    assert cache.misses == 2 and cache.hits == 1
    cache.get_or_compute("a", compute("unused"))  # a hit refreshes "a" ...
    cache.get_or_compute("c", compute("c"))       # ... so "b" is the least recently used one
    assert len(cache) == 2 and "b" not in cache and "a" in cache
    with pytest.raises(RuntimeError):
        cache.get_or_compute("boom", lambda: (_ for _ in ()).throw(RuntimeError("x")))
    assert "boom" not in cache
    assert cache.get_or_compute("boom", lambda: 4) == 4  # the lock was released


def test_display_and_messages():
    small = Image.new("RGB", (32, 32))
    assert ui.display_image(small, 192).size == (192, 192)
    big = Image.new("RGB", (512, 512))
    assert ui.display_image(big, 192) is big
    assert ui.user_message(ValueError("no face found; try X"), "The beard reference") == \
        "The beard reference: no face found; try X"
    assert "unexpectedly (RuntimeError: boom)" in ui.user_message(RuntimeError("boom"), "Mixing")
    assert ui.scores_text({"has_beard": 0.91, "shaved": 0.2, "smile": 1}) == "P(beard) 0.91 · P(shaved) 0.20"
    a = np.zeros((8, 64), np.float32)
    assert ui.latent_key(a) == ui.latent_key(a.astype(np.float64)) != ui.latent_key(a + 1)
