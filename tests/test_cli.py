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
