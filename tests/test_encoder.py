"""The inversion encoder: network, file format, lookup, and its training CLI (training.encoder)."""

import copy
import json

import pytest
import torch

from stylemix.checkpoints import save_generator
from stylemix.inversion import (ENCODER_FORMAT, check_encoder, default_encoder_path, find_encoder, invert,
                                load_encoder, read_encoder_header, save_encoder)
from stylemix.networks.encoder import Encoder

# A small encoder for the 32 px test generator (num_ws 8, w_dim 64): trains in seconds.
SMALL = dict(channel_base=256, channel_max=64, feature_dim=128)
SMALL_ARGS = ["--channel-base", "256", "--channel-max", "64", "--feature-dim", "128"]


@pytest.fixture(scope="module")
def G(tiny32_G, one_thread):
    return tiny32_G


@pytest.fixture(scope="module")
def G_file(G, tmp_path_factory):
    return save_generator(G, tmp_path_factory.mktemp("gen") / "tiny32.safetensors", provenance={"test": True})


def _random_encoder(G, seed=0, **kw):
    torch.manual_seed(seed)
    enc = Encoder(G.img_resolution, G.num_ws, G.w_dim, **{**SMALL, **kw})
    with torch.no_grad():
        enc.out.weight.normal_(0, 0.01)
        enc.set_w_stats(torch.randn(G.w_dim), torch.rand(G.w_dim) + 0.5)
    return enc.eval()


def _no_temp_files(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")] == []


# ------------------------------------------------------------------------------------------------
# Network

def test_encoder_shapes_and_init(G):
    enc = Encoder(32, 8, 64, **SMALL)
    assert enc.init_kwargs == dict(img_resolution=32, num_ws=8, w_dim=64, img_channels=3, **SMALL)
    w_avg, w_scale = torch.randn(64), torch.rand(64) + 0.1
    enc.set_w_stats(w_avg, w_scale)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    ws = enc(x)
    assert ws.shape == (3, 8, 64) and ws.dtype == torch.float32
    # The last layer starts at zero: an untrained encoder answers w_avg on every layer.
    assert torch.equal(ws, w_avg.expand(3, 8, 64))
    assert enc.offsets(x).shape == (3, 8, 64)
    enc2 = Encoder(**enc.init_kwargs)  # the recorded kwargs rebuild it
    assert set(enc2.state_dict()) == set(enc.state_dict())


@pytest.mark.parametrize("kwargs", [dict(img_resolution=48), dict(img_resolution=4), dict(num_ws=0),
                                    dict(w_dim=2.5), dict(channel_base=True)])
def test_encoder_bad_kwargs(kwargs):
    with pytest.raises(ValueError):
        Encoder(**{**dict(img_resolution=32, num_ws=8, w_dim=64), **kwargs})


def test_encoder_bad_stats():
    enc = Encoder(32, 8, 64, **SMALL)
    with pytest.raises(ValueError):
        enc.set_w_stats(torch.zeros(64), torch.zeros(64))
    with pytest.raises(ValueError):
        enc.set_w_stats(torch.full((64,), float("nan")), torch.ones(64))


# ------------------------------------------------------------------------------------------------
# Files

def test_save_load_roundtrip(G, tmp_path):
    enc = _random_encoder(G)
    path = save_encoder(enc, tmp_path / "sub" / "enc.safetensors", model_name="tiny32",
                        generator={"path": "x"}, training={"steps": 1}, heldout={"ws_mse": 0.5})
    assert path.is_file() and _no_temp_files(path.parent)
    header = read_encoder_header(path)
    assert header["format"] == ENCODER_FORMAT and header["model_name"] == "tiny32"
    assert (header["img_resolution"], header["num_ws"], header["w_dim"]) == (32, 8, 64)
    assert header["kwargs"] == enc.init_kwargs and header["training"] == {"steps": 1}
    assert header["heldout"] == {"ws_mse": 0.5}
    loaded = load_encoder(path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.model_name == "tiny32" and loaded.path == str(path)
    assert torch.equal(loaded.w_avg, enc.w_avg) and torch.equal(loaded.w_scale, enc.w_scale)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x), enc(x))
    assert load_encoder(str(path)) is loaded  # cached per file
    check_encoder(loaded, G)  # fits
    # float16 storage: half the weights' bytes, loads as float32, same answers up to rounding.
    half = save_encoder(enc, tmp_path / "half.safetensors", model_name="tiny32", half=True)
    assert half.stat().st_size < 0.6 * path.stat().st_size
    assert read_encoder_header(half)["stored_dtype"] == "float16"
    h = load_encoder(half)
    assert all(v.dtype == torch.float32 for v in h.state_dict().values())
    assert torch.equal(h.w_avg, enc.w_avg)
    with torch.no_grad():
        assert torch.allclose(h(x), enc(x), atol=1e-2)


def test_load_errors(G, G_file, tmp_path):
    with pytest.raises(ValueError):
        load_encoder(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="not a StyleMix encoder"):
        load_encoder(G_file)  # a generator file
    with pytest.raises(ValueError):
        load_encoder(12)
    enc = _random_encoder(G)
    path = save_encoder(enc, tmp_path / "enc.safetensors", model_name="tiny32")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError):
        load_encoder(tmp_path / "cut.safetensors")
    altered = bytearray(data)
    altered[-5] ^= 0xFF  # a weight byte: the header's sha256 no longer matches
    (tmp_path / "altered.safetensors").write_bytes(bytes(altered))
    with pytest.raises(ValueError, match="sha256"):
        load_encoder(tmp_path / "altered.safetensors")
    with pytest.raises(ValueError):
        save_encoder(torch.nn.Linear(2, 2), tmp_path / "x.safetensors", model_name="m")


def test_mismatch_is_a_clear_error(G, tmp_path):
    for kw in (dict(num_ws=10), dict(w_dim=32), dict(img_resolution=64)):
        args = {**dict(img_resolution=32, num_ws=8, w_dim=64), **kw}
        enc = Encoder(**args, **SMALL)
        with pytest.raises(ValueError, match="does not fit") as e:
            check_encoder(enc, G)
        assert "training.encoder" in str(e.value)
        with pytest.raises(ValueError, match="does not fit"):
            invert(G, torch.zeros(3, 32, 32), mode="fast", encoder=enc)


def test_find_encoder(G, tmp_path, monkeypatch):
    monkeypatch.setenv("STYLEMIX_CACHE", str(tmp_path))
    G2 = copy.deepcopy(G)
    assert find_encoder(G2) is None  # no model_name
    G2.model_name = "tiny-test-gen"
    assert find_encoder(G2) is None  # nothing in the cache
    path = default_encoder_path("tiny-test-gen")
    assert path == tmp_path / "encoders" / "tiny-test-gen-encoder.safetensors"
    save_encoder(_random_encoder(G), path, model_name="tiny-test-gen")
    found = find_encoder(G2)
    assert found is not None and found.path == str(path)
    save_encoder(Encoder(32, 10, 64, **SMALL), path, model_name="tiny-test-gen")  # stale, wrong num_ws
    with pytest.raises(ValueError, match="does not fit"):
        find_encoder(G2)


# ------------------------------------------------------------------------------------------------
# Training CLI

def _cli(G_file, out, *extra):
    return ["--model", str(G_file), "--out", str(out), "--threads", "1", "--quiet", "--batch", "8",
            "--heldout", "16", "--image-batch", "2", "--image-every", "2", "--image-start", "0",
            "--image-weight", "0.5", *SMALL_ARGS, *extra]


def test_cli_trains_and_resumes(G_file, tmp_path, capsys):
    from training import encoder as te

    # Uninterrupted: 8 steps.
    out_a = tmp_path / "a" / "enc.safetensors"
    assert te.main(_cli(G_file, out_a, "--steps", "6", "--snap", "2")) == 0
    printed = capsys.readouterr().out
    assert "held-out" in printed and "PSNR" in printed
    header = read_encoder_header(out_a)
    assert header["model_name"] == "tiny32" and header["training"]["steps"] == 6
    assert header["generator"]["sha256"] and header["generator"]["num_ws"] == 8
    for k in ("ws_mse", "ws_mse_w_avg", "ws_mse_ratio", "psnr", "psnr_w_avg", "distance", "n"):
        assert k in header["heldout"], k
    assert header["heldout"]["n"] == 16 and header["training"]["image_weight"] == 0.5
    assert not (out_a.parent / (out_a.name + te.STATE_SUFFIX)).exists()  # removed after the final save
    assert _no_temp_files(out_a.parent)

    # Killed after 3 steps (last state at step 2), then resumed: same weights as uninterrupted.
    out_b = tmp_path / "b" / "enc.safetensors"
    args = te.build_parser().parse_args(_cli(G_file, out_b, "--steps", "6", "--snap", "2"))
    r = te.train(args, stop_after=3)
    state = out_b.parent / (out_b.name + te.STATE_SUFFIX)
    assert r["stopped"] == 3 and state.is_file() and not out_b.exists()
    assert torch.load(state, weights_only=True)["step"] == 2
    # Options that define the run must match.
    assert te.main(_cli(G_file, out_b, "--steps", "6", "--snap", "2", "--resume", "--lr", "0.01")) == 1
    assert "options differ" in capsys.readouterr().err
    assert te.main(_cli(G_file, out_b, "--steps", "6", "--snap", "2", "--resume")) == 0
    assert "resuming" in capsys.readouterr().err
    a, b = load_encoder(out_a), load_encoder(out_b)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-6), k
    assert not state.exists()


def test_cli_init_starts_from_another_encoder(G_file, tmp_path, capsys):
    """--init copies an encoder's weights (a tiny learning rate then leaves them there) and is recorded;
    another architecture or a missing file is a one-line error and writes nothing."""
    from training import encoder as te

    src = tmp_path / "src.safetensors"
    assert te.main(_cli(G_file, src, "--steps", "3")) == 0
    out = tmp_path / "init.safetensors"
    assert te.main(_cli(G_file, out, "--steps", "1", "--lr", "1e-12", "--warmup", "0", "--init", str(src))) == 0
    assert "--init: starting from" in capsys.readouterr().err
    a, b = load_encoder(src), load_encoder(out)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-6), k
    assert read_encoder_header(out)["training"]["init"] == str(src)
    # without --init the same run starts elsewhere
    fresh = tmp_path / "fresh.safetensors"
    assert te.main(_cli(G_file, fresh, "--steps", "1", "--lr", "1e-12", "--warmup", "0", "--seed", "5")) == 0
    assert not torch.allclose(load_encoder(fresh).out.weight, a.out.weight)
    capsys.readouterr()
    bad = tmp_path / "bad.safetensors"
    wider = [a if a != "128" else "96" for a in _cli(G_file, bad, "--steps", "1", "--init", str(src))]
    assert te.main(wider) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --init") and "another architecture" in err and "\n" not in err
    assert te.main(_cli(G_file, bad, "--steps", "1", "--init", str(tmp_path / "none.safetensors"))) == 1
    assert capsys.readouterr().err.startswith("error: --init")
    assert not bad.exists()


def test_cli_errors(G_file, tmp_path, capsys):
    from training import encoder as te

    cases = [
        ["--model", str(tmp_path / "nope.safetensors")],
        ["--model", str(G_file), "--steps", "0"],
        ["--model", str(G_file), "--mix-prob", "1.5"],
        ["--model", str(G_file), "--lr", "-1"],
    ]
    for argv in cases:
        assert te.main(argv + ["--out", str(tmp_path / "e.safetensors"), "--quiet"]) == 1, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err
    assert not (tmp_path / "e.safetensors").exists()


def test_default_out_is_the_cache(G_file, tmp_path, monkeypatch):
    from training import encoder as te

    monkeypatch.setenv("STYLEMIX_CACHE", str(tmp_path / "cache"))
    argv = ["--model", str(G_file), "--steps", "2", "--threads", "1", "--quiet", "--batch", "4",
            "--heldout", "4", "--image-weight", "0", *SMALL_ARGS]
    assert te.main(argv) == 0
    assert (tmp_path / "cache" / "encoders" / "tiny32-encoder.safetensors").is_file()


def test_cli_manifest_registers_the_encoder(G_file, tmp_path, monkeypatch, capsys):
    from stylemix import pretrained
    from training import encoder as te

    fake = tmp_path / "pretrained"
    fake.mkdir()
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", fake)
    argv = ["--model", str(G_file), "--steps", "2", "--threads", "1", "--quiet", "--batch", "4", "--heldout", "4",
            "--image-weight", "0", "--half", "--manifest", "tiny32-encoder", *SMALL_ARGS]
    # --out outside pretrained/ is refused before any work
    assert te.main(argv + ["--out", str(tmp_path / "elsewhere.safetensors")]) == 1
    assert "inside" in capsys.readouterr().err and not (tmp_path / "elsewhere.safetensors").exists()
    out = fake / "tiny32_encoder.safetensors"
    assert te.main(argv + ["--out", str(out)]) == 0, capsys.readouterr().err
    assert "registered 'tiny32-encoder'" in capsys.readouterr().out
    rec = json.loads((fake / "MANIFEST.json").read_text())["models"][0]
    assert rec["name"] == "tiny32-encoder" and rec["kind"] == "encoder" and rec["model"] == "tiny32"
    assert rec["path"] == "tiny32_encoder.safetensors" and rec["size"] == out.stat().st_size
    assert rec["sha256"] == pretrained.sha256_file(out) and rec["steps"] == 2 and rec["resolution"] == 32
    assert rec["heldout"]["n"] == 4 and "float16" in rec["description"] and "--manifest" in rec["made_by"]


@pytest.fixture(scope="module")
def trained(G, G_file, tmp_path_factory):
    """150 steps of the ws loss alone on the tiny generator (~10 s; held-out ws MSE ratio ~0.83)."""
    from training import encoder as te

    out = tmp_path_factory.mktemp("trained") / "enc.safetensors"
    args = te.build_parser().parse_args(_cli(G_file, out, "--steps", "150", "--batch", "16", "--lr", "4e-3",
                                             "--heldout", "64", "--image-weight", "0"))
    res = te.train(args)
    return load_encoder(out), res["heldout"]


def test_trained_encoder_beats_w_avg(G, trained):
    enc, measure = trained
    # The held-out measure (fresh samples, never trained on) in the file's metadata.
    assert measure["ws_mse"] < 0.9 * measure["ws_mse_w_avg"], measure
    assert measure["ws_mse_ratio"] < 0.9
    assert measure["distance"] < measure["distance_w_avg"], measure
    # Checked independently here, on other fresh samples.
    gen = torch.Generator().manual_seed(12345)
    with torch.no_grad():
        ws = G.mapping(torch.randn(32, G.z_dim, generator=gen), None)
        img = G.synthesis(ws, noise_mode="const").clamp(-1, 1)
        pred = enc(img)
    mse_enc = float((pred - ws).square().mean())
    mse_avg = float((enc.w_avg - ws).square().mean())
    assert mse_enc < 0.9 * mse_avg, (mse_enc, mse_avg)


def test_trained_encoder_fast_inversion(G, trained):
    enc, _ = trained
    with torch.no_grad():
        ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(7)), None)
        img = G.synthesis(ws, noise_mode="const")[0].clamp(-1, 1)
    fast = invert(G, img, mode="fast", encoder=enc)
    assert fast.encoder == enc.name and fast.steps == 0 and fast.history == []
    from stylemix import perceptual
    with torch.no_grad():
        avg_img = G.synthesis(enc.w_avg.expand(1, G.num_ws, G.w_dim), noise_mode="const")
        d_avg = float(perceptual.distance(avg_img, img[None]))
    assert fast.distance < d_avg, (fast.distance, d_avg)


def test_compare_modes_cli(G_file, trained, monkeypatch, capsys):
    from stylemix import inversion
    from training import encoder as te

    enc, _ = trained
    monkeypatch.setitem(inversion.MODES, "balanced", dict(inversion.MODES["balanced"], steps=4))
    monkeypatch.setitem(inversion.MODES, "best", dict(inversion.MODES["best"], steps=6))
    argv = ["--model", str(G_file), "--out", enc.path, "--compare-modes", "1", "--project-steps", "3",
            "--threads", "1"]
    assert te.main(argv) == 0
    out = capsys.readouterr().out
    for key in ("fast", "balanced", "best", "project", "PSNR/proj"):
        assert key in out, out
    assert te.main(argv[:2] + ["--out", str(G_file) + ".missing", "--compare-modes", "1"]) == 1
    assert "no encoder" in capsys.readouterr().err
