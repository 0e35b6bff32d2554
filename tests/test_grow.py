"""training.stylegan2.grow: wider networks that compute what the trained ones computed."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from stylemix.networks.stylegan2 import Discriminator, Generator
from training.stylegan2 import snapshot as snap_io
from training.stylegan2.grow import TOLERANCE, deepen_mapping, grow_networks, main, widen_kwargs, widen_state_dict

from ._cli import run_cli
from .test_train import TINY, run_main, write_png_folder

pytestmark = pytest.mark.usefixtures("one_thread")

G_KW = dict(z_dim=32, c_dim=0, w_dim=32, img_resolution=16, img_channels=3, mapping_kwargs=dict(num_layers=1),
            synthesis_kwargs=dict(channel_base=256, channel_max=32, conv_clamp=256))
D_KW = dict(c_dim=0, img_resolution=16, img_channels=3, channel_base=256, channel_max=32,
            epilogue_kwargs=dict(mbstd_group_size=4))


def _trained_like(cls, kwargs, seed):
    """A network whose biases, noise strengths and constants are not at their init values either, so that
    keeping its function is not the trivial case of zero biases."""
    torch.manual_seed(seed)
    net = cls(**copy.deepcopy(kwargs))
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("bias") or name.endswith("noise_strength"):
                p.add_(0.3 * torch.randn_like(p))
    net.init_kwargs = copy.deepcopy(kwargs)
    return net.eval().requires_grad_(False)


@pytest.fixture()
def nets():
    G = _trained_like(Generator, G_KW, 0)
    G_ema = _trained_like(Generator, G_KW, 1)
    D = _trained_like(Discriminator, D_KW, 2)
    return dict(G=G, G_ema=G_ema, D=D)


def test_widened_networks_compute_the_same_images_and_scores(nets):
    rng = torch.get_rng_state()
    grown, diffs = grow_networks(nets, cbase=1024, cmax=None, seed=0)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's random stream is untouched
    assert set(diffs) == {"G", "G_ema", "D"} and max(diffs.values()) <= TOLERANCE
    # the 16x16 block doubled (16 -> 64 channels would be capped at 32 by channel_max), 8x8 stayed at 32
    old_sd, new_sd = nets["G"].state_dict(), grown["G"].state_dict()
    assert old_sd["synthesis.b16.conv1.weight"].shape[:2] == (16, 16)
    assert new_sd["synthesis.b16.conv1.weight"].shape[:2] == (32, 32)
    assert new_sd["synthesis.b8.conv1.weight"].shape == old_sd["synthesis.b8.conv1.weight"].shape
    # old outputs read the new channels with zero weights; the new outputs got fresh random rows
    w = new_sd["synthesis.b16.conv1.weight"]
    assert torch.count_nonzero(w[:16, 16:]) == 0 and w[16:].std() > 0.5
    # G and G_ema gained the same new weights
    assert torch.equal(w[16:], grown["G_ema"].state_dict()["synthesis.b16.conv1.weight"][16:])
    # with independent z the grown G is still the old one, sample for sample
    z = torch.randn([6, 32])
    c = torch.zeros([6, 0])
    a = nets["G_ema"](z, c, noise_mode="const")
    b = grown["G_ema"](z, c, noise_mode="const")
    assert (a - b).abs().max() <= TOLERANCE
    img = torch.randn([8, 3, 16, 16])
    assert (nets["D"](img, torch.zeros([8, 0])) - grown["D"](img, torch.zeros([8, 0]))).abs().max() <= TOLERANCE
    assert grown["D"].init_kwargs["channel_base"] == 1024 and grown["G"].init_kwargs["synthesis_kwargs"]["channel_base"] == 1024


def test_widened_networks_train_their_new_channels(nets):
    """The zeros that hide the new channels get gradients, so the new capacity is used."""
    grown, _ = grow_networks(nets, cbase=1024, cmax=None, seed=0)
    G = grown["G"].train().requires_grad_(True)
    z = torch.randn([4, 32])
    G(z, torch.zeros([4, 0])).square().mean().backward()
    grad = dict(G.named_parameters())["synthesis.b16.conv1.weight"].grad
    assert grad[:16, 16:].abs().sum() > 0


def test_a_wider_4x4_block_is_refused(nets):
    # the 4x4 epilogue's minibatch-stddev channel sits after the features and averages over them
    with pytest.raises(ValueError, match=r"compute something else.*D"):
        grow_networks(nets, cbase=None, cmax=64, seed=0)
    # the generator alone can widen there
    grown, diffs = grow_networks(dict(G=nets["G"], G_ema=None, D=None), cbase=None, cmax=64, seed=0)
    assert set(diffs) == {"G"} and diffs["G"] <= TOLERANCE


def test_shrinking_and_other_shape_changes_are_refused(nets):
    with pytest.raises(ValueError, match="below the source's 256"):
        widen_kwargs(G_KW, "G", cbase=128, cmax=None)
    old = nets["G"].state_dict()
    with pytest.raises(ValueError, match=r"mapping.fc0.weight \[32, 32\] cannot grow into \[32, 16\]"):
        widen_state_dict(old, Generator(**{**G_KW, "z_dim": 16}).state_dict())
    with pytest.raises(ValueError, match="b32.* not in the source"):
        widen_state_dict(old, Generator(**{**G_KW, "img_resolution": 32}).state_dict())


def _tiny_run(tmp_path):
    """(data folder, run directory) of an 8-image TINY training run."""
    data = write_png_folder(tmp_path / "data")
    rc, _, err = run_main(["--data", str(data), "--outdir", str(tmp_path / "runs"), *TINY, "--kimg", "0.008",
                           "--tick", "0.004", "--snap", "1", "--no-progress"])
    assert rc == 0, err
    return data, next((tmp_path / "runs").iterdir())


def test_deeper_mapping_network_is_distilled_from_the_old_one(nets):
    deep, info = deepen_mapping(nets, num_layers=3, steps=800, batch=64, seed=0)
    assert deep["D"] is nets["D"]
    for which in ("G", "G_ema"):
        new, old = deep[which], nets[which]
        assert new.init_kwargs["mapping_kwargs"]["num_layers"] == 3 and new.mapping.num_layers == 3
        old_sd, new_sd = old.state_dict(), new.state_dict()
        for k, v in old_sd.items():
            if not k.startswith("mapping.fc"):
                assert torch.equal(new_sd[k], v), k  # synthesis and w_avg kept
    for k, v in deep["G"].mapping.state_dict().items():
        if k != "w_avg":  # both generators get the one distilled network
            assert torch.equal(v, deep["G_ema"].mapping.state_dict()[k]), k
    assert info["rel_mse"] < 0.5 * info["rel_mse_start"]
    # the stored weights are in the generator's parametrisation: its own forward gives the distilled w
    z = torch.randn([256, 32])
    with torch.no_grad():
        w_old = nets["G_ema"].mapping(z, None)[:, 0]
        w_new = deep["G_ema"].mapping(z, None)[:, 0]
    err = float((((w_new - w_old) / w_old.std(dim=0)) ** 2).mean())
    assert err == pytest.approx(info["rel_mse"], rel=0.5)
    with pytest.raises(ValueError, match="--map must be >= 1"):
        deepen_mapping(nets, num_layers=0)
    with pytest.raises(ValueError, match="--map 3: the mapping network has 3 layers already"):
        deepen_mapping(deep, num_layers=3)


def test_cli_deepens_the_mapping_network_and_training_goes_on(tmp_path):
    from stylemix.checkpoints import read_header

    data, run = _tiny_run(tmp_path)
    out = tmp_path / "deep.safetensors"
    rc, stdout, err = _cli([str(run), "--out", str(out), "--map", "2", "--map-steps", "40"])
    assert rc == 0, err
    assert "mapping network 1 -> 2 layers, distilled in 40 steps" in stdout
    grow = read_header(out)["provenance"]["grow"]
    assert grow["map_layers"] == [1, 2] and grow["map_distillation"]["steps"] == 40
    tiny = [*TINY]
    tiny[tiny.index("--map") + 1] = "2"
    rc, _, err = run_main(["--data", str(data), "--outdir", str(tmp_path / "runs2"), *tiny, "--kimg", "0.004",
                           "--tick", "0.004", "--snap", "1", "--no-progress", "--map-lr", "10", "--resume", str(out)])
    assert rc == 0, err
    rc, _, err = _cli([str(run), "--out", str(tmp_path / "bad.safetensors"), "--map", "0"])
    assert rc == 1 and err.startswith("error: --map must be >= 1") and not (tmp_path / "bad.safetensors").exists()


def _cli(argv):
    return run_cli(main, argv)


def test_cli_grows_a_run_and_training_goes_on_from_it(tmp_path):
    from stylemix.checkpoints import load_generator, read_header

    data, run = _tiny_run(tmp_path)
    out = tmp_path / "grown.safetensors"
    rc, stdout, err = _cli([str(run), "--out", str(out), "--cbase", "512"])
    assert rc == 0, err
    assert "channel_base 256 -> 512" in stdout
    for kind in ("discriminator", "training-generator"):
        assert snap_io.companion_file(out, kind).is_file()
    old = load_generator(snap_io.read_latest(run)["network_path"])
    new = load_generator(out)
    z = torch.randn([4, old.z_dim])
    c = torch.zeros([4, 0])
    assert (old(z, c, noise_mode="const") - new(z, c, noise_mode="const")).abs().max() <= TOLERANCE
    prov = read_header(out)["provenance"]
    assert prov["kimg_total"] == pytest.approx(0.008) and prov["grow"]["channel_base"] == [256, 512]
    # a grown file with its companions grows again, G and D found beside it
    rc, stdout, err = _cli([str(out), "--out", str(tmp_path / "again.safetensors"), "--cbase", "1024"])
    assert rc == 0, err
    assert "D: " in stdout and "G: " in stdout and "channel_base 512 -> 1024" in stdout
    assert read_header(tmp_path / "again.safetensors")["provenance"]["kimg_total"] == pytest.approx(0.008)
    # the old configuration no longer fits; the grown one trains on, counting the images
    runs2 = tmp_path / "runs2"
    rc, _, err = run_main(["--data", str(data), "--outdir", str(runs2), *TINY, "--kimg", "0.004", "--tick", "0.004",
                           "--snap", "1", "--no-progress", "--resume", str(out)])
    assert rc == 1 and "does not match" in err
    tiny = [*TINY]
    tiny[tiny.index("--cbase") + 1] = "512"
    rc, _, err = run_main(["--data", str(data), "--outdir", str(runs2), *tiny, "--kimg", "0.004", "--tick", "0.004",
                           "--snap", "1", "--no-progress", "--resume", str(out)])
    assert rc == 0, err
    run2 = next(runs2.iterdir())
    assert json.loads((run2 / "training_options.json").read_text())["resume_kimg"] == pytest.approx(0.008)
    log = (run2 / "stats.jsonl").read_text()
    assert "discriminator" in log and "training_generator" in log  # resumed with its companions


def test_cli_errors_are_one_line(tmp_path):
    rc, _, err = _cli([str(tmp_path / "nothing"), "--out", str(tmp_path / "g.safetensors"), "--cbase", "512"])
    assert rc == 1 and err.startswith("error: ") and err.count("\n") == 1
    rc, _, err = _cli([str(tmp_path), "--out", str(tmp_path / "g.pt"), "--cbase", "512"])
    assert rc == 1 and "must end in .safetensors" in err
    rc, _, err = _cli([str(tmp_path), "--out", str(tmp_path / "g.safetensors")])
    assert rc == 1 and "nothing to grow" in err and "--map" in err
    assert not list(tmp_path.glob("g*"))
