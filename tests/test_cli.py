import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from stylemix.__main__ import main, parse_seeds
from stylemix.checkpoints import load_generator, save_generator

from .conftest import REPO


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, tiny32_G):
    G = tiny32_G
    path = tmp_path_factory.mktemp("ckpt") / "tiny32.safetensors"
    save_generator(G, path, provenance={"source": "sg2ada_tiny32 fixture"})
    return path


def test_parse_seeds():
    assert parse_seeds("0-3,10,12-13") == [0, 1, 2, 3, 10, 12, 13]
    assert parse_seeds("5") == [5]
    for bad in ["", "a", "3-1", "1,,2", "-1"]:
        with pytest.raises(ValueError):
            parse_seeds(bad)


def test_generate_writes_one_png_per_seed(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["generate", "--model", str(tiny_ckpt), "--seeds", "0-2", "--trunc", "0.7", "--outdir", str(out)]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["seed0000.png", "seed0001.png", "seed0002.png"]
    imgs = [np.asarray(Image.open(out / f)) for f in files]
    assert all(im.shape == (32, 32, 3) and im.dtype == np.uint8 for im in imgs)
    assert not np.array_equal(imgs[0], imgs[1])  # different seeds, different faces

    # The same seed gives the same image as the library call with the same z.
    G = load_generator(tiny_ckpt)
    z = torch.from_numpy(np.random.RandomState(1).randn(1, G.z_dim)).float()
    with torch.no_grad():
        ref = G(z, torch.zeros([1, 0]), truncation_psi=0.7, noise_mode="const")
    ref = (ref * 127.5 + 128).clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
    assert np.abs(ref.astype(int) - imgs[1].astype(int)).max() <= 1


def test_generate_grid(tiny_ckpt, tmp_path):
    out = tmp_path / "grid"
    assert main(["generate", "--model", str(tiny_ckpt), "--seeds", "0-5", "--grid", "--grid-cols", "3",
                 "--outdir", str(out), "--quiet"]) == 0
    assert [p.name for p in out.iterdir()] == ["grid.png"]
    assert Image.open(out / "grid.png").size == (3 * 32, 2 * 32)


def test_info_and_convert(tiny_ckpt, tmp_path, capsys):
    assert main(["info", str(tiny_ckpt), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["img_resolution"] == 32
    assert info["num_ws"] == 8
    assert info["z_dim"] == 64 and info["w_dim"] == 64
    assert info["format"] == "stylemix"
    assert info["parameters"] > 0

    out = tmp_path / "converted.safetensors"
    assert main(["convert", str(tiny_ckpt), str(out)]) == 0
    a, b = load_generator(tiny_ckpt), load_generator(out)
    ws = torch.randn(1, a.num_ws, a.w_dim)
    with torch.no_grad():
        assert torch.equal(a.synthesis(ws, noise_mode="const"), b.synthesis(ws, noise_mode="const"))

    half = tmp_path / "half.safetensors"
    assert main(["convert", str(tiny_ckpt), str(half), "--half"]) == 0
    assert half.stat().st_size < 0.6 * out.stat().st_size
    c = load_generator(half)
    assert all(torch.equal(x, y.half().float()) for x, y in zip(c.state_dict().values(), a.state_dict().values()))
    capsys.readouterr()
    assert main(["info", str(half), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["storage_dtype"] == "float16"


@pytest.mark.parametrize("argv, needle", [
    (["generate", "--model", "MISSING.pkl", "--outdir", "x"], "MISSING"),
    (["generate", "--model", "{ckpt}", "--seeds", "9-1", "--outdir", "x"], "seed"),
    (["generate", "--model", "{ckpt}", "--trunc", "-1", "--outdir", "x"], "--trunc"),
    (["generate", "--model", "{ckpt}", "--class", "0", "--outdir", "x"], "unconditional"),
    (["info", "{garbage}"], "garbage.bin"),
    (["fetch", "no-such-model"], "no-such-model"),
])
def test_errors_are_one_line(tiny_ckpt, tmp_path, capsys, argv, needle):
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not a checkpoint at all")
    argv = [a.format(ckpt=tiny_ckpt, garbage=garbage) for a in argv]
    argv = [str(tmp_path / a) if a == "x" else a for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert needle in err, err
    assert "Traceback" not in err


def test_module_entry_point(tiny_ckpt, tmp_path):
    """`python -m stylemix` as a user runs it: PNGs on success, one line and exit 1 on failure."""
    out = tmp_path / "cli"
    ok = subprocess.run([sys.executable, "-m", "stylemix", "generate", "--model", str(tiny_ckpt),
                         "--seeds", "3", "--outdir", str(out)], cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (out / "seed0003.png").is_file()
    bad = subprocess.run([sys.executable, "-m", "stylemix", "info", str(tmp_path / "nope.pkl")],
                         cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1, bad.stderr


# ----------------------------------------------------------------------------------------------
# project / mix / edit (through stylemix.api)


@pytest.fixture
def private_cache(tmp_path, monkeypatch, one_thread):
    """An empty STYLEMIX_CACHE (no user encoders/directions); the compiled ops stay where they are."""
    import os

    from stylemix import pretrained

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", os.environ.get("TORCH_EXTENSIONS_DIR")
                       or str(pretrained.cache_dir() / "torch_extensions"))
    cache = tmp_path / "cache"
    monkeypatch.setenv("STYLEMIX_CACHE", str(cache))
    return cache


@pytest.fixture
def face_png(tiny_ckpt, tmp_path):
    """A 48x48 PNG of one of the tiny generator's faces (square: --aligned passes it through)."""
    G = load_generator(tiny_ckpt)
    ws = torch.from_numpy(np.random.RandomState(5).randn(1, G.num_ws, G.w_dim).astype(np.float32) * 0.5)
    with torch.no_grad():
        img = (G.synthesis(ws, noise_mode="const") * 127.5 + 128).clamp(0, 255).to(torch.uint8)[0]
    path = tmp_path / "face.png"
    Image.fromarray(img.permute(1, 2, 0).numpy()).resize((48, 48)).save(path)
    return path


def _cli_ws(path):
    from stylemix import api

    return api.read_npz(path)


def test_project_writes_aligned_reconstruction_and_latent(tiny_ckpt, face_png, private_cache, tmp_path, capsys):
    out = tmp_path / "proj"
    assert main(["project", "--model", str(tiny_ckpt), "--image", str(face_png), "--aligned",
                 "--quality", "balanced", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["face.npz", "face_aligned.png", "face_projected.png"]
    assert captured.out.split() == [str(out / n) for n in ("face_aligned.png", "face_projected.png", "face.npz")]
    assert "project:" in captured.err and "100.0%" in captured.err and "PSNR" in captured.err
    assert Image.open(out / "face_aligned.png").size == (32, 32)
    ws, meta = _cli_ws(out / "face.npz")
    assert ws.shape == (8, 64) and ws.dtype == np.float32
    assert meta["model"] == "tiny32" and meta["quality"] == "balanced" and meta["align_method"] == "passthrough"
    assert meta["source"] == "face.png" and len(meta["source_sha256"]) == 64 and meta["psnr"] > 0
    # the reconstruction PNG is the latent's rendering
    G = load_generator(tiny_ckpt)
    with torch.no_grad():
        ref = (G.synthesis(torch.from_numpy(ws)[None], noise_mode="const") * 127.5 + 128).clamp(0, 255)
    ref = ref.to(torch.uint8)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(Image.open(out / "face_projected.png")), ref)


def test_project_with_the_projector(tiny_ckpt, face_png, private_cache, tmp_path):
    out = tmp_path / "proj"
    assert main(["project", "--model", str(tiny_ckpt), "--image", str(face_png), "--aligned",
                 "--steps", "2", "--w-plus", "--out", str(out), "--quiet"]) == 0
    ws, meta = _cli_ws(out / "face.npz")
    assert meta["quality"] == "projector-2-wplus" and meta["steps"] == 2


def test_mix_from_latents_and_photos(tiny_ckpt, face_png, private_cache, tmp_path):
    from stylemix import api, mixing

    rng = np.random.RandomState(0)
    a, b = (rng.randn(8, 64) * 0.5).astype(np.float32), (rng.randn(8, 64) * 0.5).astype(np.float32)
    (tmp_path / "a.npz").write_bytes(api.npz_bytes(a, model="tiny32"))
    (tmp_path / "b.npz").write_bytes(api.npz_bytes(b, model="other-model"))
    out = tmp_path / "mix"
    assert main(["mix", "--model", str(tiny_ckpt), "--a", str(tmp_path / "a.npz"), "--b", str(tmp_path / "b.npz"),
                 "--layers", "coarse,5", "--weights", "1,0.5", "--out", str(out)]) == 0
    ws, meta = _cli_ws(out / "mix.npz")
    assert np.allclose(ws, mixing.mix(a, b, ["coarse", 5], weights=[1, 0.5]))
    assert meta["op"] == "mix" and meta["layers"] == "coarse,5" and meta["b"]["source"] == "b.npz"
    model = api.load_model(str(tiny_ckpt))
    assert np.array_equal(np.asarray(Image.open(out / "mix.png")), np.asarray(api.render(model, ws)))

    # a photo is aligned and inverted first; its latent is kept as b.npz
    out2 = tmp_path / "mix2"
    assert main(["mix", "--model", str(tiny_ckpt), "--a", str(tmp_path / "a.npz"), "--b", str(face_png),
                 "--aligned", "--layers", "0,1", "--truncation", "0.7", "--out", str(out2), "--quiet"]) == 0
    assert sorted(p.name for p in out2.iterdir()) == ["b.npz", "mix.npz", "mix.png"]
    b_ws, b_meta = _cli_ws(out2 / "b.npz")
    assert b_meta["quality"] == "balanced"
    assert np.allclose(_cli_ws(out2 / "mix.npz")[0], api.mix(model, a, b_ws, [0, 1], truncation=0.7))


def test_edit_with_directions(tiny_ckpt, private_cache, tmp_path):
    from stylemix import api
    from stylemix.editing import Direction, save_directions

    rng = np.random.RandomState(1)
    d = Direction("shaved", "interfacegan", rng.randn(64).astype(np.float32), scale=0.7)
    e = Direction("has_beard", "interfacegan", rng.randn(64).astype(np.float32), scale=1.3)
    (private_cache / "directions").mkdir(parents=True)
    save_directions(private_cache / "directions" / "tiny32-directions.safetensors", {d.key: d, e.key: e}, meta={})
    ws = (rng.randn(8, 64) * 0.5).astype(np.float32)
    (tmp_path / "x.npz").write_bytes(api.npz_bytes(ws, model="tiny32"))
    out = tmp_path / "edit"
    assert main(["edit", "--model", str(tiny_ckpt), "--ws", str(tmp_path / "x.npz"), "--attr", "shaved=2",
                 "--attr", "has_beard=-1", "--layers", "coarse", "--out", str(out), "--quiet"]) == 0
    got, meta = _cli_ws(out / "edit.npz")
    ref = ws.copy()
    ref[:3] += 2 * d.scale * d.vector - 1 * e.scale * e.vector
    assert np.allclose(got, ref, atol=1e-5)
    assert meta["edits"] == {"shaved": 2.0, "has_beard": -1.0} and (out / "edit.png").is_file()


@pytest.mark.parametrize("argv, needle", [
    (["project", "--model", "{ckpt}", "--image", "{face}", "--aligned", "--quality", "fast", "--out", "x"],
     "training.encoder --model tiny32"),
    (["project", "--model", "{ckpt}", "--image", "{face}", "--quality", "best", "--steps", "3", "--out", "x"],
     "either --quality or --steps"),
    (["project", "--model", "{ckpt}", "--image", "{face}", "--w-plus", "--out", "x"], "--w-plus goes with --steps"),
    (["project", "--model", "{ckpt}", "--image", "{garbage}", "--out", "x"], "could not read"),
    (["project", "--model", "{ckpt}", "--image", "MISSING.png", "--out", "x"], "MISSING.png"),
    (["project", "--model", "no-such-model", "--image", "{face}", "--out", "x"], "no-such-model"),
    (["mix", "--model", "{ckpt}", "--a", "{npz}", "--b", "{npz}", "--layers", "fine", "--out", "x"], "'fine'"),
    (["mix", "--model", "{ckpt}", "--a", "{npz}", "--b", "{npz}", "--layers", "0,99", "--out", "x"], "out of range"),
    (["mix", "--model", "{ckpt}", "--a", "{badnpz}", "--b", "{npz}", "--layers", "0", "--out", "x"], ".npz"),
    (["mix", "--model", "{ckpt}", "--a", "{npz}", "--b", "{npz}", "--layers", "0", "--weights", "7", "--out", "x"],
     "outside"),
    (["edit", "--model", "{ckpt}", "--ws", "{npz}", "--attr", "shaved=2", "--out", "x"], "training.directions"),
    (["edit", "--model", "{ckpt}", "--ws", "{npz}", "--attr", "shaved", "--out", "x"], "NAME=STRENGTH"),
])
def test_project_mix_edit_errors_are_one_line(tiny_ckpt, face_png, private_cache, tmp_path, capsys, argv, needle):
    from stylemix import api

    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    npz = tmp_path / "x.npz"
    npz.write_bytes(api.npz_bytes(np.zeros((8, 64), np.float32), model="tiny32"))
    badnpz = tmp_path / "bad.npz"
    badnpz.write_bytes(b"PK\x03\x04 broken")
    fill = dict(ckpt=tiny_ckpt, face=face_png, garbage=garbage, npz=npz, badnpz=badnpz)
    argv = [a.format(**fill) for a in argv]
    argv = [str(tmp_path / "out") if a == "x" else a for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and needle in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
