"""stylemix.api: every function on the tiny 32 px generator, every user error an ApiError, plain
(non-torch) return values and one inversion at a time per process."""

import dataclasses
import io
import json
import os
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from stylemix import api, mixing, pretrained
from stylemix.checkpoints import save_generator
from stylemix.editing import Direction

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------
# Fixtures: a tiny generator saved to a file, an empty cache, a second file with an encoder and
# directions in that cache.


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """STYLEMIX_CACHE pointing at an empty folder for the whole module (so no user encoders or
    directions are found); the compiled ops stay where they were built."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_EXTENSIONS_DIR", os.environ.get("TORCH_EXTENSIONS_DIR")
                  or str(pretrained.cache_dir() / "torch_extensions"))
        mp.setenv("STYLEMIX_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny32_G):
    path = tmp_path_factory.mktemp("ckpt") / "tiny32.safetensors"
    save_generator(tiny32_G, path, provenance={"source": "sg2ada_tiny32 fixture"})
    return path


@pytest.fixture(scope="module")
def model(cache, ckpt):
    return api.load_model(str(ckpt))


def _directions(w_dim: int):
    from stylemix.editing import Direction

    rng = np.random.RandomState(3)
    return {(a, m): Direction(a, m, rng.randn(w_dim).astype(np.float32), scale=0.5 + k)
            for k, (a, m) in enumerate([("has_beard", "interfacegan"), ("shaved", "interfacegan"),
                                        ("shaved", "mean_diff")])}


@pytest.fixture(scope="module")
def full_model(cache, ckpt, tiny32_G):
    """The same weights as 'tiny32full', with an (untrained) encoder and three directions in the cache."""
    from stylemix.editing import save_directions
    from stylemix.inversion import default_encoder_path, save_encoder, w_stats
    from stylemix.networks.encoder import Encoder

    path = ckpt.parent / "tiny32full.safetensors"
    path.write_bytes(ckpt.read_bytes())
    enc = Encoder(32, tiny32_G.num_ws, tiny32_G.w_dim, channel_base=64, channel_max=32, feature_dim=32)
    w_avg, w_std = w_stats(tiny32_G)
    enc.set_w_stats(w_avg, torch.full([tiny32_G.w_dim], w_std / tiny32_G.w_dim ** 0.5))
    save_encoder(enc, default_encoder_path("tiny32full"), model_name="tiny32full")
    dpath = cache / "directions" / "tiny32full-directions.safetensors"
    dpath.parent.mkdir(parents=True, exist_ok=True)
    save_directions(dpath, _directions(tiny32_G.w_dim), meta={"model": "tiny32full"})
    return api.load_model(path)


def _ws(model, seed=0):
    return (np.random.RandomState(seed).randn(model.num_ws, model.w_dim) * 0.5).astype(np.float32)


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _assert_plain(value, where="value"):
    """No torch object anywhere in a return value (recursing into containers and dataclasses)."""
    assert not isinstance(value, (torch.Tensor, torch.nn.Module)), where
    assert type(value).__module__.split(".")[0] != "torch", (where, type(value))
    if isinstance(value, dict):
        for k, v in value.items():
            _assert_plain(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _assert_plain(v, f"{where}[{i}]")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            if not f.name.startswith("_"):
                _assert_plain(getattr(value, f.name), f"{where}.{f.name}")


# ----------------------------------------------------------------------------------------------
# Models


def test_list_models_reads_files_without_downloading(cache, monkeypatch):
    def no_fetch(*a, **k):
        raise AssertionError("list_models must not download")

    monkeypatch.setattr(pretrained, "fetch", no_fetch)
    models = api.list_models()
    _assert_plain(models)
    names = [m["name"] for m in models]
    assert "ffhq256" in names and "synthfaces64-classifier" not in names  # generators only
    for m in models:
        assert set(m) == {"name", "resolution", "kind", "description", "available", "bundled"}
        assert m["kind"] in ("generator", "networks")
    ffhq = next(m for m in models if m["name"] == "ffhq256")
    assert ffhq["available"] is False and ffhq["bundled"] is False  # empty cache
    fake = cache / "ffhq256" / pretrained.get_entry("ffhq256").file_name
    fake.parent.mkdir(parents=True, exist_ok=True)
    fake.write_bytes(b"x")  # present = available (not verified here)
    try:
        assert next(m for m in api.list_models() if m["name"] == "ffhq256")["available"] is True
    finally:
        fake.unlink()


def test_load_model_by_path(model, tiny32_G):
    assert model.name == "tiny32" and model.resolution == 32
    assert (model.num_ws, model.w_dim) == (tiny32_G.num_ws, tiny32_G.w_dim) == (8, 64)
    assert model.layer_labels == [mixing.layer_label(i, tiny32_G) for i in range(8)]
    assert model.layer_groups == mixing.layer_groups(tiny32_G)
    assert "fine" not in model.layer_groups  # 32 px has no 64 px rows
    assert model.has_encoder is False and model.encoder is None
    assert model.directions == [] and model.aligned_domain is None and model.best_recipe is None
    assert isinstance(model.description, str) and model.description
    _assert_plain(model)


def test_load_model_with_encoder_and_directions(full_model):
    assert full_model.name == "tiny32full"
    assert full_model.has_encoder is True and "tiny32full-encoder" in full_model.encoder
    assert full_model.directions == ["has_beard", "shaved"]
    assert full_model.direction_methods == ["interfacegan", "mean_diff"]
    assert full_model.notes == []
    _assert_plain(full_model)


def test_load_model_reads_the_manifest_record(ckpt, cache, monkeypatch, tmp_path):
    """A bundled generator: MANIFEST extra keys aligned_domain and best_layers reach the Model."""
    folder = tmp_path / "pretrained"
    folder.mkdir()
    (folder / "tinygen.safetensors").write_bytes(ckpt.read_bytes())
    record = {"name": "tinygen", "path": "tinygen.safetensors", "kind": "generator", "resolution": 32,
              "sha256": pretrained.sha256_file(ckpt), "size": ckpt.stat().st_size,
              "description": "a tiny bundled generator", "aligned_domain": "synthfaces",
              "best_recipe": {"base": "shaved", "layers": [2, 0], "edits": {"has_beard": 2, "shaved": 0}}}
    (folder / "MANIFEST.json").write_text(json.dumps({"models": [record]}))
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", folder)
    try:
        listed = {m["name"]: m for m in api.list_models()}
        assert listed["tinygen"]["available"] is True and listed["tinygen"]["bundled"] is True
        m = api.load_model("tinygen")
        assert m.name == "tinygen" and m.description == "a tiny bundled generator"
        assert m.aligned_domain == "synthfaces"
        assert m.best_recipe == {"base": "shaved", "layers": [0, 2], "edits": {"has_beard": 2.0}}
        assert m.record["best_recipe"]["layers"] == [2, 0]
        assert "mix: best" in [x.name for x in api.methods(m)]
        # synthfaces domain: a square image passes through without face detection
        a = api.align(m, Image.new("RGB", (80, 80), (120, 90, 60)))
        assert a.method == "passthrough" and a.image.size == (32, 32)
        # a bad best_recipe is ignored with a note that says what is wrong
        for bad, why in (({"base": "nobody", "layers": [1]}, "base"), ({"layers": [1, 8]}, "layers"),
                         ({"layers": [], "edits": {"shaved": "2"}}, "strength"), ({"layers": []}, "does nothing"),
                         ({"layers": [1], "weights": [0.5]}, "unknown"), ([0, 1], "dict")):
            (folder / "MANIFEST.json").write_text(json.dumps({"models": [{**record, "best_recipe": bad}]}))
            m = api.load_model("tinygen")
            assert m.best_recipe is None, bad
            assert any("best_recipe" in n and why in n for n in m.notes), (bad, m.notes)
            assert "mix: best" not in [x.name for x in api.methods(m)]
    finally:
        monkeypatch.undo()
        pretrained.list_models()  # re-sync the registry with the real MANIFEST


@pytest.mark.parametrize("bad, needle", [
    ("no-such-model", "unknown model"),
    ("synthfaces64-classifier", "not a generator"),
    ("", "registered name"),
    (None, "registered name"),
])
def test_load_model_errors(cache, bad, needle):
    with pytest.raises(api.ApiError, match=needle):
        api.load_model(bad)


def test_load_model_broken_file_and_folder(cache, tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(api.ApiError, match="could not load model"):
        api.load_model(str(garbage))
    with pytest.raises(api.ApiError, match="not a file"):
        api.load_model(tmp_path)


# ----------------------------------------------------------------------------------------------
# Align


def test_align_passthrough_and_centre_crop(model):
    img = Image.fromarray(np.random.RandomState(0).randint(0, 255, (40, 60, 3), np.uint8))
    with pytest.raises(api.ApiError, match="square"):
        api.align(model, img, passthrough=True)
    sq = api.align(model, np.asarray(img)[:, :40], passthrough=True)
    assert sq.method == "passthrough" and sq.image.size == (32, 32) and sq.image.mode == "RGB"
    out = api.align(model, _png(Image.new("RGB", (90, 60), (128, 128, 128))), allow_centre_crop=True)
    assert out.method == "centre" and out.image.size == (32, 32)
    _assert_plain(out)


def test_align_errors(model):
    with pytest.raises(api.ApiError, match="could not read"):
        api.align(model, b"\x89PNG but not really an image")
    big = Image.new("1", (8000, 6000))  # 48 MP, above the 40 MP limit; tiny as a 1-bit PNG
    with pytest.raises(api.ApiError, match="megapixels"):
        api.align(model, _png(big))
    with pytest.raises(api.ApiError, match="no face"):
        api.align(model, _png(Image.new("RGB", (120, 90), (128, 128, 128))))
    with pytest.raises(api.ApiError, match="bytes of an image"):
        api.align(model, "photo.jpg")
    with pytest.raises(api.ApiError, match="uint8"):
        api.align(model, np.zeros((32, 32, 3), np.float32))


# ----------------------------------------------------------------------------------------------
# Invert (one inversion at a time)


@pytest.fixture(scope="module")
def target(model):
    return api.render(model, _ws(model, 1))


@pytest.fixture(scope="module")
def balanced(model, target):
    calls = []
    lat = api.invert(model, target, quality="balanced", progress=lambda f, t: calls.append((f, t)))
    return lat, calls


def test_invert_balanced(model, target, balanced):
    lat, calls = balanced
    _assert_plain(lat)
    assert isinstance(lat.ws, np.ndarray) and lat.ws.dtype == np.float32 and lat.ws.shape == (8, 64)
    assert isinstance(lat.image, Image.Image) and lat.image.size == (32, 32)
    assert all(isinstance(getattr(lat, k), float) for k in ("distance", "psnr", "seconds"))
    assert lat.quality == "balanced" and lat.steps > 0 and lat.encoder is None
    fractions = [f for f, _ in calls]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert all(isinstance(t, str) for _, t in calls) and len(calls) >= 3
    # the reported image is what render() gives for the latent
    assert np.array_equal(np.asarray(lat.image), np.asarray(api.render(model, lat.ws)))
    # reconstruction beats the mean face
    mean = api._psnr(np.asarray(api.render(model, api._w_avg(model))), np.asarray(target))
    assert lat.psnr > mean


def test_invert_projector(model, target):
    w = api.invert(model, target, steps=3, w_plus=False)
    wp = api.invert(model, np.asarray(target), steps=3, w_plus=True)
    assert w.quality == "projector-3-w" and wp.quality == "projector-3-wplus"
    assert w.steps == 3 and wp.ws.shape == (8, 64)
    assert np.allclose(w.ws, w.ws[:1])  # W: one w on every row
    assert np.array_equal(np.asarray(wp.image), np.asarray(api.render(model, wp.ws)))
    _assert_plain(wp)


def test_invert_errors(model, full_model, target):
    with pytest.raises(api.ApiError, match="training.encoder --model tiny32"):
        api.invert(model, target, quality="fast")
    with pytest.raises(api.ApiError, match="quality"):
        api.invert(model, target, quality="ultra")
    with pytest.raises(api.ApiError, match="align"):
        api.invert(model, Image.new("RGB", (40, 30)))
    with pytest.raises(api.ApiError, match="steps"):
        api.invert(model, target, steps=0)
    with pytest.raises(api.ApiError, match="PIL image|uint8"):
        api.invert(model, "face.png")
    with pytest.raises(api.ApiError, match="load_model"):
        api.invert(object(), target)


def test_invert_fast_with_encoder(full_model, target):
    lat = api.invert(full_model, target, quality="fast")
    assert lat.quality == "fast" and lat.steps == 0 and "tiny32full-encoder" in lat.encoder
    _assert_plain(lat)


def test_one_inversion_at_a_time(model, target):
    """While the lock is held, invert() waits; it runs once the lock is free."""
    started = threading.Event()
    results = []

    def run():
        results.append(api.invert(model, target, steps=2, progress=lambda f, t: started.set()))

    assert not api.inversion_busy()
    with api._INVERSION_LOCK:
        assert api.inversion_busy()
        th = threading.Thread(target=run)
        th.start()
        assert not started.wait(0.5)  # blocked on the lock: no progress reported
    th.join(60)
    assert started.is_set() and len(results) == 1 and not api.inversion_busy()

    # two concurrent inversions never overlap
    spans, lock = [], threading.Lock()

    def timed():
        def progress(f, t):
            with lock:
                spans.append((threading.get_ident(), f, time.perf_counter()))
            assert api.inversion_busy()
        api.invert(model, target, steps=3, progress=progress)

    threads = [threading.Thread(target=timed) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    order = [tid for tid, _, _ in sorted(spans, key=lambda s: s[2])]
    first = order[0]
    n_first = order.count(first)
    assert order[:n_first] == [first] * n_first, "the second inversion started before the first ended"


# ----------------------------------------------------------------------------------------------
# Mix, edit, render, strips


def test_render_matches_the_generator(model, tiny32_G):
    ws = _ws(model)
    img = api.render(model, ws)
    assert isinstance(img, Image.Image) and img.size == (32, 32)
    with torch.no_grad():
        ref = mixing.to_uint8(tiny32_G.synthesis(torch.from_numpy(ws)[None], noise_mode="const"))[0]
    assert np.array_equal(np.asarray(img), ref)
    assert np.array_equal(np.asarray(api.render(model, ws[None])), ref)  # [1, num_ws, w_dim] too
    with pytest.raises(api.ApiError, match=r"\[8, 64\]"):
        api.render(model, np.zeros((18, 512), np.float32))
    with pytest.raises(api.ApiError, match="NaN"):
        api.render(model, np.full((8, 64), np.nan, np.float32))


def test_mix(model):
    a, b = _ws(model, 0), _ws(model, 1)
    out = api.mix(model, a, b, ["coarse"])
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (8, 64)
    assert np.array_equal(out, mixing.mix(a, b, ["coarse"]))
    assert np.array_equal(api.mix(model, a, b, "0,1,2"), out)
    assert np.array_equal(api.mix(model, a, b, "coarse"), out)
    assert np.array_equal(api.mix(model, a, b, [5]), mixing.mix(a, b, [5]))
    half = api.mix(model, a, b, ["coarse", 5], weights=[0.5, 1.0])
    assert np.allclose(half[0], (a[0] + b[0]) / 2) and np.array_equal(half[5], b[5])
    assert np.allclose(api.mix(model, a, b, "middle", weights="0.25")[4], 0.75 * a[4] + 0.25 * b[4], atol=1e-6)
    w_avg = api._w_avg(model)
    assert np.allclose(api.mix(model, a, b, [0], truncation=0.0), np.broadcast_to(w_avg, (8, 64)))
    t = api.mix(model, a, b, [0], truncation=0.5)
    assert np.allclose(t, w_avg + 0.5 * (mixing.mix(a, b, [0]) - w_avg), atol=1e-6)


@pytest.mark.parametrize("layers, needle", [
    ("fine", "unknown layer group 'fine'"),
    ([8], "out of range"),
    ("banana", "unknown layer group"),
    ("", "empty"),
    (None, "pick at least one"),
    ([1.5], "bad layer"),
])
def test_mix_bad_layers(model, layers, needle):
    with pytest.raises(api.ApiError, match=needle):
        api.mix(model, _ws(model), _ws(model, 1), layers)


def test_mix_other_errors(model):
    a, b = _ws(model), _ws(model, 1)
    with pytest.raises(api.ApiError, match="outside"):
        api.mix(model, a, b, ["coarse"], weights=2.0)
    with pytest.raises(api.ApiError, match="weights"):
        api.mix(model, a, b, ["coarse"], weights="half")
    with pytest.raises(api.ApiError, match="truncation"):
        api.mix(model, a, b, ["coarse"], truncation=3.0)
    with pytest.raises(api.ApiError, match="ws_other"):
        api.mix(model, a, b[:4], ["coarse"])
    with pytest.raises(api.ApiError, match="ws_base"):
        api.mix(model, "latent", b, ["coarse"])


def test_edit_without_directions(model):
    with pytest.raises(api.ApiError, match="training.directions --model tiny32"):
        api.edit(model, _ws(model), {"shaved": 2})


def test_edit(full_model):
    dirs = full_model._directions
    ws = _ws(full_model)
    out = api.edit(full_model, ws, {"shaved": 2.0})
    d = dirs["shaved", "interfacegan"]
    assert out.dtype == np.float32 and np.allclose(out, ws + 2.0 * d.scale * d.vector[None], atol=1e-5)
    both = api.edit(full_model, ws, {"shaved": 1.0, "has_beard": -1.0}, method="interfacegan")
    e = dirs["has_beard", "interfacegan"]
    assert np.allclose(both, ws + d.scale * d.vector - e.scale * e.vector, atol=1e-5)
    md = api.edit(full_model, ws, {"shaved": 1.0}, method="mean_diff")
    assert np.allclose(md, ws + dirs["shaved", "mean_diff"].scale * dirs["shaved", "mean_diff"].vector, atol=1e-5)
    coarse = api.edit(full_model, ws, {"shaved": 2.0}, layers="coarse")
    assert np.array_equal(coarse[3:], ws[3:]) and not np.array_equal(coarse[:3], ws[:3])
    _assert_plain(out)


@pytest.mark.parametrize("edits, kwargs, needle", [
    ({"glasses": 1}, {}, "no direction for attribute 'glasses'"),
    ({"has_beard": 1}, {"method": "mean_diff"}, "no 'mean_diff' direction"),
    ({"shaved": float("nan")}, {}, "finite"),
    ({"shaved": 1e6}, {}, "too large"),
    ({}, {}, "non-empty"),
    ({"shaved": 1}, {"layers": "fine"}, "unknown layer group"),
])
def test_edit_errors(full_model, edits, kwargs, needle):
    with pytest.raises(api.ApiError, match=needle):
        api.edit(full_model, _ws(full_model), edits, **kwargs)


def test_layer_strip(model):
    a, b = _ws(model, 0), _ws(model, 1)
    strip = api.layer_strip(model, a, b)
    assert [label for label, _ in strip] == model.layer_labels
    for i, (_, img) in enumerate(strip):
        assert np.array_equal(np.asarray(img), np.asarray(api.render(model, mixing.mix(a, b, [i]))))
    with pytest.raises(api.ApiError):
        api.layer_strip(model, a, np.zeros((3, 64), np.float32))


def test_score(model):
    img = api.render(model, _ws(model))
    s = api.score(model, img)
    assert isinstance(s, dict) and set(s) == {"has_beard", "shaved", "glasses", "smile"}
    assert all(type(v) is float and 0 <= v <= 1 for v in s.values())
    assert s.classifier == "synthfaces64" and "64 px" in s.note and "32 px" in s.note
    assert api.score(model, np.asarray(img)) == s
    with pytest.raises(api.ApiError, match="square"):
        api.score(model, Image.new("RGB", (40, 30)))


# ----------------------------------------------------------------------------------------------
# Files


def test_png_and_npz_round_trip(model):
    img = api.render(model, _ws(model))
    data = api.png_bytes(img)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), np.asarray(img))
    assert api.png_bytes(np.asarray(img)) == data

    ws = _ws(model)
    blob = api.npz_bytes(ws, model="tiny32", psnr=21.5, layers=["coarse", 5])
    assert np.array_equal(api.load_npz(blob), ws)
    got, meta = api.read_npz(blob)
    assert meta == {"model": "tiny32", "psnr": 21.5, "layers": ["coarse", 5]}
    # the official projector's projected_w.npz: key 'w', [1, num_ws, w_dim]
    buf = io.BytesIO()
    np.savez(buf, w=ws[None])
    assert np.array_equal(api.load_npz(buf.getvalue()), ws)
    with pytest.raises(api.ApiError, match="JSON"):
        api.npz_bytes(ws, bad=object())


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.mark.parametrize("blob, needle", [
    (b"not a zip file", "not a readable .npz"),
    (_npz(other=np.zeros(3)), "no 'ws' array"),
    (_npz(ws=np.array([{"a": 1}], dtype=object)), "could not read|not numbers"),
    (_npz(ws=np.zeros((2, 3, 4, 5), np.float32)), "shape"),
    (_npz(ws=np.full((8, 64), np.inf, np.float32)), "NaN or infinite"),
    (_npz(ws=np.array(["a", "b"])), "not numbers"),
    ("not bytes", "could not read latent file"),
    (12, "bytes of a .npz"),
])
def test_bad_npz(blob, needle):
    with pytest.raises(api.ApiError, match=needle):
        api.load_npz(blob)


def test_npz_for_another_model(model):
    ws = api.load_npz(_npz(ws=np.zeros((18, 512), np.float32)))
    with pytest.raises(api.ApiError, match="invert the image with this model"):
        api.render(model, ws)


def test_examples():
    ex = api.examples()
    _assert_plain([dataclasses.replace(e, image=None) for e in ex])
    roles = [e.role for e in ex]
    assert roles.count("beard") == 3 and roles.count("shaved") == 3 and roles.count("photo") == 1
    for e in ex:
        assert isinstance(e.image, Image.Image) and e.image.mode == "RGB" and e.image.size == (128, 128)
        assert e.name and e.description and e.path.endswith(".png")
    total = sum(len(open(e.path, "rb").read()) for e in ex)
    assert total < 64 * 1024, total


def test_examples_missing_or_broken(tmp_path):
    assert api.examples(tmp_path) == []
    (tmp_path / "examples.json").write_text('{"examples": [{"name": "x", "role": "beard", "file": "nope.png"}]}')
    with pytest.raises(api.ApiError, match="make_examples"):
        api.examples(tmp_path)


# ----------------------------------------------------------------------------------------------
# Methods


def test_methods_on_a_bare_model(model):
    names = [m.name for m in api.methods(model)]
    assert names == ["mix: coarse", "mix: middle"]  # no fine rows at 32 px, no best layers, no directions
    every = [m.name for m in api.methods()]
    assert {"mix: coarse", "mix: middle", "mix: fine", "mix: best", "edit: beard + shave",
            "edit: shaved + beard"} <= set(every)
    a, b = _ws(model, 0), _ws(model, 1)
    img = api.run_method(model, "mix: coarse", a, b)
    assert np.array_equal(np.asarray(img), np.asarray(api.render(model, mixing.mix(a, b, ["coarse"]))))
    with pytest.raises(api.ApiError, match="training.directions"):
        api.run_method(model, "edit: beard + shave", a, b)
    with pytest.raises(api.ApiError, match="best_recipe"):
        api.run_method(model, "mix: best", a, b)
    with pytest.raises(api.ApiError, match="no 'fine' rows"):
        api.run_method(model, "mix: fine", a, b)
    with pytest.raises(api.ApiError, match="unknown method"):
        api.run_method(model, "mix: everything", a, b)
    with pytest.raises(api.ApiError, match="ws_shaved"):
        api.run_method(model, "mix: coarse", a, b[:2])


def test_methods_with_directions_and_best_recipe(full_model):
    m = dataclasses.replace(full_model, best_recipe={"base": "beard", "layers": [0, 3], "edits": {}})
    names = [x.name for x in api.methods(m)]
    assert names == ["mix: coarse", "mix: middle", "mix: best", "edit: beard + shave", "edit: shaved + beard"]
    a, b = _ws(m, 0), _ws(m, 1)
    best = api.run_method(m, "mix: best", a, b)
    assert np.array_equal(np.asarray(best), np.asarray(api.render(m, mixing.mix(a, b, [0, 3]))))
    shave = api.run_method(m, "edit: beard + shave", a, b)
    ref = api.edit(m, a, {"shaved": api.EDIT_STRENGTH})
    assert np.array_equal(np.asarray(shave), np.asarray(api.render(m, ref)))
    grow = api.run_method(m, "edit: shaved + beard", a, b)
    assert np.array_equal(np.asarray(grow), np.asarray(api.render(m, api.edit(m, b, {"has_beard": api.EDIT_STRENGTH}))))
    assert api.best_edits(m) == {}
    # the shaved face as the base, the beard face's rows 0 and 3, then a beard edit
    m2 = dataclasses.replace(m, best_recipe={"base": "shaved", "layers": [0, 3], "edits": {"has_beard": 1.5}})
    assert api.best_edits(m2) == {"has_beard": 1.5}
    recipe = api.edit(m2, mixing.mix(b, a, [0, 3]), {"has_beard": 1.5})
    out = api.run_method(m2, "mix: best", a, b)
    assert np.array_equal(np.asarray(out), np.asarray(api.render(m2, recipe)))
    assert not np.array_equal(np.asarray(out), np.asarray(best))
    # edits alone (no rows); an edit of an attribute the model has no direction for is skipped
    only = api.mix_recipe(m, a, b, {"base": "beard", "layers": [], "edits": {"shaved": 2, "moustache": 1}})
    assert np.array_equal(only, api.edit(m, a, {"shaved": 2.0}))
    assert api.best_edits(dataclasses.replace(m, best_recipe={"base": "beard", "layers": [],
                                                               "edits": {"moustache": 1.0}})) == {}


def test_check_recipe():
    assert api.check_recipe({"layers": [3, 1, 3]}, 8) == {"base": "beard", "layers": [1, 3], "edits": {}}
    assert api.check_recipe({"base": "shaved", "layers": [], "edits": {"has_beard": 3, "shaved": 0}}, 8) == \
        {"base": "shaved", "layers": [], "edits": {"has_beard": 3.0}}
    for bad, why in (({"layers": [8]}, "rows in"), ({"layers": [True]}, "rows in"), ({"layers": "0,1"}, "rows in"),
                     ({"base": "both", "layers": [0]}, "base"), ({"edits": {"shaved": float("nan")}}, "strength"),
                     ({"edits": {"shaved": 101}}, "strength"), ({"edits": []}, "dict"), ({}, "does nothing"),
                     ({"layers": [0], "mode": 1}, "unknown"), (None, "dict")):
        with pytest.raises(api.ApiError, match=why):
            api.check_recipe(bad, 8)


def test_edit_picks_the_method_per_attribute(full_model):
    """method=None: conditional, else interfacegan where the model has it, else its other method; a
    named method is used."""
    a = _ws(full_model, 0)
    cond = Direction("shaved", "conditional", np.random.default_rng(5).standard_normal(full_model.w_dim), scale=0.5)
    with_cond = dataclasses.replace(full_model, _directions={**full_model._directions, ("shaved", "conditional"): cond})
    assert np.array_equal(api.edit(with_cond, a, {"shaved": 1.0}),
                          api.edit(with_cond, a, {"shaved": 1.0}, method="conditional"))
    assert not np.array_equal(api.edit(with_cond, a, {"shaved": 1.0}), api.edit(full_model, a, {"shaved": 1.0}))
    # a conditional direction that keeps less than half of interfacegan's measured own effect is passed over
    ifg = dataclasses.replace(full_model._directions["shaved", "interfacegan"], effects={"+2": {"shaved": 0.4}})
    for own, chosen in ((0.1, "interfacegan"), (0.25, "conditional")):
        weak = dataclasses.replace(cond, effects={"+2": {"shaved": own, "has_beard": 0.0}})
        m = dataclasses.replace(full_model, _directions={**full_model._directions, ("shaved", "interfacegan"): ifg,
                                                         ("shaved", "conditional"): weak})
        assert np.array_equal(api.edit(m, a, {"shaved": 1.0}), api.edit(m, a, {"shaved": 1.0}, method=chosen))
    assert np.array_equal(api.edit(full_model, a, {"shaved": 1.0}),
                          api.edit(full_model, a, {"shaved": 1.0}, method="interfacegan"))
    dirs = {k: v for k, v in full_model._directions.items() if not (k[0] == "shaved" and k[1] == "interfacegan")}
    m = dataclasses.replace(full_model, _directions=dirs)
    other = sorted(meth for attr, meth in dirs if attr == "shaved")[0]
    assert np.array_equal(api.edit(m, a, {"shaved": 1.0}), api.edit(m, a, {"shaved": 1.0}, method=other))
    with pytest.raises(api.ApiError, match="no 'interfacegan' direction"):
        api.edit(m, a, {"shaved": 1.0}, method="interfacegan")


def test_register_method(model):
    def average(m, ws_beard, ws_shaved):
        return (ws_beard + ws_shaved) / 2

    try:
        info = api.register_method("average", "the mean of the two latents", average)
        assert info == api.Method("average", "the mean of the two latents")
        assert "average" in [x.name for x in api.methods(model)]
        a, b = _ws(model, 0), _ws(model, 1)
        assert np.array_equal(np.asarray(api.run_method(model, "average", a, b)),
                              np.asarray(api.render(model, (a + b) / 2)))
        with pytest.raises(api.ApiError, match="already registered"):
            api.register_method("average", "again", average)
        api.register_method("average", "as an image", lambda m, x, y: np.zeros((32, 32, 3), np.uint8),
                            replace=True)
        assert api.run_method(model, "average", a, b).getpixel((0, 0)) == (0, 0, 0)
        api.register_method("never", "never applies", average, applies=lambda m: "not today")
        assert "never" not in [x.name for x in api.methods(model)]
        with pytest.raises(api.ApiError, match="not today"):
            api.run_method(model, "never", a, b)
        with pytest.raises(api.ApiError):
            api.register_method("", "no name", average)
        with pytest.raises(api.ApiError):
            api.register_method("x", "not callable", 3)
    finally:
        api._METHODS.pop("average", None)
        api._METHODS.pop("never", None)


# ----------------------------------------------------------------------------------------------
# Comparison results


def test_comparison_results(tmp_path):
    assert api.comparison_results(tmp_path / "missing") is None
    assert api.comparison_results(tmp_path) is None  # empty folder
    (tmp_path / "metrics.json").write_text(json.dumps({"methods": {"stylemix": {"both_rate": 0.4}}}))
    (tmp_path / "table.csv").write_text("method,both_rate\nstylemix,0.4\nlsgan,0.1\n")
    Image.new("RGB", (4, 4)).save(tmp_path / "both_rate.png")
    (tmp_path / "report.md").write_text("# Comparison\n")
    (tmp_path / "broken.json").write_text("{not json")
    res = api.comparison_results(tmp_path)
    assert res["metrics"] == {"metrics": {"methods": {"stylemix": {"both_rate": 0.4}}}}
    assert res["tables"]["table"] == [{"method": "stylemix", "both_rate": "0.4"},
                                      {"method": "lsgan", "both_rate": "0.1"}]
    assert res["plots"] == [str(tmp_path / "both_rate.png")]
    assert res["report"] == "# Comparison\n"
    _assert_plain(res)
