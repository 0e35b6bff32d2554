"""Checkpoint loading and saving: NVIDIA pickles (no code run), rosinality .pt, StyleMix safetensors.

All fixtures are made here, in tmp_path, from the tiny reference networks in shared/fixtures.
"""

from __future__ import annotations

import argparse
import builtins
import copy
import json
import os
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from stylemix import checkpoints, pretrained
from stylemix.checkpoints import (CheckpointError, UnsafeCheckpointError, UnsupportedCheckpointError,
                                  load_generator, load_networks, save_generator)
from stylemix.networks.stylegan2 import Discriminator, Generator

from . import _ckpt_rosinality as ros
from ._ckpt_fakes import fake_official_modules, official_pickle_bytes, stylegan3_pickle_bytes


# ------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def tiny(fixtures_dir):
    from safetensors.torch import load_file

    cfg = json.loads((fixtures_dir / "sg2ada_tiny32.json").read_text())
    t = load_file(str(fixtures_dir / "sg2ada_tiny32.safetensors"))
    G_sd = {k[2:]: v for k, v in t.items() if k.startswith("G.")}
    D_sd = {k[2:]: v for k, v in t.items() if k.startswith("D.")}
    # Batch 1 keeps the many synthesis calls cheap; the rosinality check uses batch 2 (grouped convs).
    return dict(cfg=cfg, t=t, G_sd=G_sd, D_sd=D_sd, ws1=t["ws"][:1], img1=t["img_const"][:1], ws2=t["ws"][:2])


def make_G(tiny, **synthesis_overrides) -> Generator:
    kwargs = copy.deepcopy(tiny["cfg"]["G_kwargs"])
    kwargs["synthesis_kwargs"].update(synthesis_overrides)
    G = Generator(**kwargs)
    G.load_state_dict(tiny["G_sd"])
    return G.eval(), kwargs


def make_D(tiny, **overrides) -> Discriminator:
    kwargs = copy.deepcopy(tiny["cfg"]["D_kwargs"])
    kwargs.update(overrides)
    D = Discriminator(**kwargs)
    D.load_state_dict(tiny["D_sd"])
    return D.eval(), kwargs


def perturbed(G: Generator, seed: int) -> Generator:
    G = copy.deepcopy(G)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    return G


def synth(G, ws):
    with torch.no_grad():
        return G.synthesis(ws, noise_mode="const")


@pytest.fixture
def marker(tmp_path):
    m = tmp_path / "CODE_WAS_RUN"
    yield m
    assert not m.exists(), "code from a checkpoint was executed"


@pytest.fixture(scope="module")
def official_pkl(tmp_path_factory, tiny):
    """An official-layout pickle {G, D, G_ema, augment_pipe, training_set_kwargs}, written with the
    fake modules present and loaded after they are removed from sys.modules. Read-only for tests."""
    folder = tmp_path_factory.mktemp("official")
    marker = folder / "CODE_WAS_RUN"
    G_ema, gk = make_G(tiny)
    D, dk = make_D(tiny)
    G = perturbed(G_ema, 1)
    with fake_official_modules(marker):
        data = official_pickle_bytes({"G": (G, gk), "D": (D, dk), "G_ema": (G_ema, gk)}, marker=marker)
    assert "torch_utils.persistence" not in sys.modules and "dnnlib.util" not in sys.modules
    path = folder / "network-snapshot-000000.pkl"
    path.write_bytes(data)
    yield path
    assert not marker.exists(), "code from the official-layout pickle was executed"


# ------------------------------------------------------------------------------------------------
# (a) official pickles


def test_official_pickle_loads_without_running_code(official_pkl, tiny, marker):
    G = load_generator(official_pkl)
    assert isinstance(G, Generator) and not G.training
    img = synth(G, tiny["ws1"])
    torch.testing.assert_close(img, tiny["img1"], atol=1e-4, rtol=0)
    assert all(not p.requires_grad for p in G.parameters())  # as stored (official: requires_grad_(False))
    assert not marker.exists()


def test_official_pickle_load_networks(official_pkl, tiny, marker):
    nets = load_networks(official_pkl)
    assert {"G", "D", "G_ema", "augment_pipe", "training_set_kwargs"} <= set(nets)
    assert isinstance(nets["G"], Generator) and isinstance(nets["G_ema"], Generator)
    assert isinstance(nets["D"], Discriminator) and not nets["D"].training
    # G is the perturbed snapshot, G_ema the reference weights.
    assert not torch.equal(nets["G"].synthesis.b4.const, nets["G_ema"].synthesis.b4.const)
    logits = nets["D"](tiny["t"]["img_const"], tiny["t"]["c"])
    torch.testing.assert_close(logits, tiny["t"]["D_logits"], atol=1e-4, rtol=1e-4)
    aug = nets["augment_pipe"]
    assert isinstance(aug, checkpoints.RecordedObject) and aug.class_name == "AugmentPipe"
    assert set(aug.tensors()) == {"p", "Hz_geom"} and aug.init_kwargs == {"xflip": 1, "rotate90": 1, "xint": 1}
    tsk = nets["training_set_kwargs"]
    assert type(tsk) is dict and tsk["max_size"] == 70000
    assert type(nets["G_ema"].init_kwargs["synthesis_kwargs"]) is dict  # EasyDict -> plain dict


def test_official_pickle_with_fake_modules_still_present(tmp_path, tiny, marker):
    G_ema, gk = make_G(tiny)
    with fake_official_modules(marker) as fake:
        data = official_pickle_bytes({"G_ema": (G_ema, gk)}, marker=marker, protocol=2, augment_pipe=False)
        path = tmp_path / "p2.pkl"
        path.write_bytes(data)
        G = load_generator(path)  # the fake reconstructor would write the marker if called
    torch.testing.assert_close(synth(G, tiny["ws1"]), tiny["img1"], atol=1e-4, rtol=0)
    # numpy 1.x (the official files) names its scalar reconstructor numpy.core.multiarray.scalar.
    assert b"numpy._core.multiarray\nscalar" in data
    old_numpy = tmp_path / "numpy1.pkl"
    old_numpy.write_bytes(data.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar"))
    G1 = load_generator(old_numpy)
    assert G1.mapping.fc0.weight.shape == G.mapping.fc0.weight.shape


def test_numpy_arrays_allowed_object_arrays_refused(tmp_path, tiny, marker):
    G_ema, gk = make_G(tiny)
    with fake_official_modules(marker):
        ok = official_pickle_bytes({"G_ema": (G_ema, gk)}, marker=marker,
                                   training_set_kwargs={"label_shape": np.arange(6, dtype=np.int32).reshape(2, 3)})
        bad = official_pickle_bytes({"G_ema": (G_ema, gk)}, marker=marker,
                                    training_set_kwargs={"names": np.array(["a", 1], dtype=object)})
    (tmp_path / "ok.pkl").write_bytes(ok)
    (tmp_path / "bad.pkl").write_bytes(bad)
    tsk = load_networks(tmp_path / "ok.pkl")["training_set_kwargs"]
    assert isinstance(tsk["label_shape"], np.ndarray) and tsk["label_shape"].tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(UnsafeCheckpointError, match="object"):
        load_networks(tmp_path / "bad.pkl")


def test_official_pickle_wrong_shapes_lists_keys(tmp_path, tiny, marker):
    G_ema, gk = make_G(tiny)
    bad_kwargs = copy.deepcopy(gk)
    bad_kwargs["synthesis_kwargs"]["channel_max"] = 64  # recorded kwargs disagree with the tensors
    with fake_official_modules(marker):
        data = official_pickle_bytes({"G_ema": (G_ema, bad_kwargs)}, marker=marker)
    path = tmp_path / "bad.pkl"
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as err:
        load_generator(path)
    msg = str(err.value)
    assert str(path) in msg and "shape mismatches" in msg and "synthesis.b4.const" in msg


# ------------------------------------------------------------------------------------------------
# (b) hostile pickles


class _Reduce:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _hostile_cases(marker):
    m = str(marker)
    return [
        ("os.system", b"cos\nsystem\n(S'touch " + m.encode() + b"'\ntR."),
        ("posix.system", pickle.dumps(_Reduce(os.system, f"touch {m}"))),
        ("builtins.eval", pickle.dumps(_Reduce(eval, f"open({m!r}, 'w')"))),
        ("builtins.exec", pickle.dumps(_Reduce(exec, f"open({m!r}, 'w')"))),
        ("subprocess.Popen", pickle.dumps(_Reduce(subprocess.Popen, ["touch", m]))),
        ("builtins.__import__", pickle.dumps(_Reduce(builtins.__import__, "os"))),
        ("builtins.getattr", pickle.dumps({"G_ema": _Reduce(getattr, _Reduce(builtins.__import__, "os"), "system")})),
    ]


@pytest.mark.parametrize("index", range(7))
def test_hostile_pickles_refused(tmp_path, marker, index):
    name, data = _hostile_cases(marker)[index]
    path = tmp_path / "evil.pkl"
    path.write_bytes(data)
    for loader in (load_generator, load_networks):
        with pytest.raises(UnsafeCheckpointError) as err:
            loader(path)
        assert name in str(err.value) and str(path) in str(err.value)
        assert err.value.global_name == name
        assert isinstance(err.value, ValueError) and isinstance(err.value, pickle.UnpicklingError)
    assert not marker.exists()


@pytest.mark.parametrize("where", ["init_kwargs", "buffers", "top", "training_set_kwargs"])
def test_hostile_object_nested_in_valid_pickle(tmp_path, tiny, marker, where):
    G_ema, gk = make_G(tiny)
    evil = _Reduce(os.system, f"touch {marker}")
    extra = None
    with fake_official_modules(marker) as fake:
        if where == "init_kwargs":
            extra = {"G_ema": {"_init_kwargs": fake.EasyDict(gk, mapping_kwargs=fake.EasyDict(x=evil))}}
        elif where == "buffers":
            extra = {"G_ema": {"_buffers": {"sneaky": evil}}}
        tsk = {"path": evil} if where == "training_set_kwargs" else None
        data = official_pickle_bytes({"G_ema": (G_ema, gk)}, marker=marker, extra_state=extra,
                                     training_set_kwargs=tsk)
        if where == "top":
            data = pickle.dumps({"payload": evil, "G_ema": None})
    path = tmp_path / "nested.pkl"
    path.write_bytes(data)
    with pytest.raises(UnsafeCheckpointError, match="posix.system"):
        load_networks(path)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------
# (c) broken files


def test_truncated_pickles(official_pkl, tmp_path):
    data = official_pkl.read_bytes()
    for cut in [1, 2, 10, 100, len(data) // 3, len(data) // 2, len(data) - 100, len(data) - 1]:
        path = tmp_path / f"cut{cut}.pkl"
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as err:
            load_generator(path)
        assert str(path) in str(err.value), cut


@pytest.mark.parametrize("kind", ["rosinality", "rosinality-legacy", "stylemix"])
def test_truncated_other_formats(tmp_path, tiny, kind):
    if kind == "stylemix":
        G, _ = make_G(tiny)
        src = tmp_path / "g.safetensors"
        save_generator(G, src, provenance={})
    else:
        src, *_ = _rosinality_file(tmp_path, tiny, legacy=kind.endswith("legacy"))
    data = src.read_bytes()
    for cut in [4, 9, 64, len(data) // 2, len(data) - 1]:
        path = tmp_path / f"cut{cut}.bin"
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as err:
            load_generator(path)
        assert str(path) in str(err.value), (kind, cut)


def test_empty_garbage_and_text_files(tmp_path):
    rng = random.Random(0)
    files = {"empty.pkl": b"", "text.pkl": b"this is just a text file\nwith two lines\n",
             "json.safetensors": b'{"not": "a checkpoint"}'}
    for i in range(6):
        files[f"random{i}.pt"] = bytes(rng.getrandbits(8) for _ in range(2000))
    files["random_pickle_head.pkl"] = b"\x80\x04" + bytes(rng.getrandbits(8) for _ in range(2000))
    files["random_zip_head.pt"] = b"PK\x03\x04" + bytes(rng.getrandbits(8) for _ in range(2000))
    files["random_st_head.safetensors"] = (100).to_bytes(8, "little") + b"{" + bytes(rng.getrandbits(8) for _ in range(300))
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CheckpointError) as err:
            load_generator(path)
        assert str(path) in str(err.value), name
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_generator(tmp_path / "does-not-exist.pkl")


def test_unknown_name_is_a_value_error():
    with pytest.raises(ValueError, match="not-a-model"):
        load_generator("not-a-model")


# ------------------------------------------------------------------------------------------------
# (d) own format


def test_own_format_round_trip(tmp_path, tiny):
    G, _ = make_G(tiny)
    path = tmp_path / "g.safetensors"
    prov = {"source": "unit test", "kimg": 12, "nested": {"a": [1, 2]}}
    assert save_generator(G, path, provenance=prov) == path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.safetensors"]  # no temp file left
    G2 = load_generator(path)
    assert G2 is not G and not G2.training
    torch.testing.assert_close(synth(G2, tiny["ws1"]), synth(G, tiny["ws1"]), atol=0, rtol=0)
    assert G2.provenance == prov
    nets = load_networks(path)
    assert nets["provenance"] == prov and nets["format"] == "stylemix"
    _assert_subset(tiny["cfg"]["G_kwargs"], nets["header"]["kwargs"])  # inferred: G has no init_kwargs
    # A loaded generator knows its kwargs, and saving it again keeps them.
    save_generator(G2, tmp_path / "g2.safetensors", provenance={})
    assert checkpoints.read_header(tmp_path / "g2.safetensors")["kwargs"] == nets["header"]["kwargs"]


def _assert_subset(small: dict, big: dict):
    for k, v in small.items():
        if isinstance(v, dict):
            _assert_subset(v, big[k])
        else:
            assert big[k] == v, (k, big[k], v)


def test_own_format_from_loaded_official_pickle(official_pkl, tmp_path, tiny):
    G = load_generator(official_pkl)
    out = tmp_path / "conv.safetensors"
    save_generator(G, out, provenance={"converted_from": str(official_pkl)})
    torch.testing.assert_close(synth(load_generator(out), tiny["ws1"]), tiny["img1"], atol=1e-4, rtol=0)


def test_own_format_failed_write_leaves_nothing(tmp_path, tiny, monkeypatch):
    G, _ = make_G(tiny)
    path = tmp_path / "g.safetensors"
    with pytest.raises(ValueError, match="provenance"):
        save_generator(G, path, provenance={"bad": object()})
    with pytest.raises(ValueError, match="provenance"):
        save_generator(G, path, provenance="not a dict")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        save_generator(G, path, provenance={})
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    # An existing file survives a failed overwrite untouched.
    save_generator(G, path, provenance={"v": 1})
    before = path.read_bytes()
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(5, "I/O error")))
    with pytest.raises(OSError):
        save_generator(perturbed(G, 3), path, provenance={"v": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.safetensors"]
    with pytest.raises(ValueError, match="does not exist"):
        save_generator(G, tmp_path / "no" / "dir.safetensors", provenance={})


def test_own_format_detects_altered_weights(tmp_path, tiny):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    G, _ = make_G(tiny)
    path = tmp_path / "g.safetensors"
    save_generator(G, path, provenance={})
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    sd = load_file(str(path))
    sd["synthesis.b4.const"] = sd["synthesis.b4.const"] + 1
    save_file(sd, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="sha256"):
        load_generator(path)


def test_float16_storage_halves_the_file_and_loads_the_rounded_weights(tmp_path, tiny):
    from safetensors import safe_open

    G, _ = make_G(tiny)
    full, half = tmp_path / "g32.safetensors", tmp_path / "g16.safetensors"
    save_generator(G, full, provenance={})
    save_generator(G, half, provenance={"p": 1}, storage_dtype="float16")
    assert half.stat().st_size < 0.6 * full.stat().st_size
    with safe_open(str(half), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    H = load_generator(half)
    assert checkpoints.read_header(half)["storage_dtype"] == "float16"
    assert "storage_dtype" not in checkpoints.read_header(full)
    assert checkpoints.describe(half)["storage_dtype"] == "float16"
    assert checkpoints.describe(full)["storage_dtype"] == "float32"
    for (k, a), (_, b) in zip(G.state_dict().items(), H.state_dict().items()):
        assert b.dtype == torch.float32 and torch.equal(b, a.half().float()), k
    # a rounding, not a new network: the images agree to float16's precision
    ws = torch.randn(2, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x, y = G.synthesis(ws, noise_mode="const"), H.synthesis(ws, noise_mode="const")
    assert 0 < float((x - y).abs().max()) < 0.02
    # saving the loaded network as float16 again changes nothing: the rounding is idempotent
    again = tmp_path / "again.safetensors"
    save_generator(H, again, provenance={}, storage_dtype="float16")
    assert checkpoints.read_header(again)["weights_sha256"] == checkpoints.read_header(half)["weights_sha256"]


def test_float16_storage_refuses_values_out_of_range(tmp_path, tiny):
    G, _ = make_G(tiny)
    with torch.no_grad():
        G.synthesis.b4.const[0, 0, 0] = 1e6
    path = tmp_path / "g.safetensors"
    with pytest.raises(ValueError, match="synthesis.b4.const: values beyond float16"):
        save_generator(G, path, provenance={}, storage_dtype="float16")
    with pytest.raises(ValueError, match="storage dtype must be one of"):
        save_generator(G, path, provenance={}, storage_dtype="bfloat16")
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_own_format_detected_whatever_its_header_length(tmp_path, tiny):
    # The safetensors header length is a little-endian u64 (a multiple of 8): its first byte runs
    # through 0, 8, ..., 248, including 0x80 and '(' which also open a pickle.
    G, _ = make_G(tiny)
    path = tmp_path / "g.safetensors"
    first_bytes = set()
    for n in range(256):
        save_generator(G, path, provenance={"pad": "x" * n})
        first_bytes.add(path.read_bytes()[0])
        assert checkpoints.detect_format(path) == checkpoints.FORMAT_STYLEMIX, n
    assert first_bytes >= {0x80, ord("(")}
    torch.testing.assert_close(synth(load_generator(path), tiny["ws1"]), synth(G, tiny["ws1"]))


def test_safetensors_without_header_refused(tmp_path, tiny):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file(tiny["G_sd"], str(path))
    with pytest.raises(CheckpointError, match="header"):
        load_generator(path)


# ------------------------------------------------------------------------------------------------
# (e) rosinality


def _rosinality_file(tmp_path, tiny, *, legacy=False, with_latent_avg=True):
    G, _ = make_G(tiny, conv_clamp=None)
    D, _ = make_D(tiny, conv_clamp=None)
    sd = checkpoints.official_to_rosinality(G)
    latent_avg = sd.pop("__latent_avg__")
    ckpt = {"g_ema": sd, "g": {k: v.clone() for k, v in sd.items()}, "d": checkpoints.official_to_rosinality(D),
            "args": argparse.Namespace(size=32, n_mlp=2, channel_multiplier=2, path="lmdb")}
    if with_latent_avg:
        ckpt["latent_avg"] = latent_avg
    path = tmp_path / ("legacy.pt" if legacy else "550000.pt")
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    return path, G, D, sd


def test_rosinality_conversion_matches_source(tmp_path, tiny):
    path, G_src, D_src, ros_sd = _rosinality_file(tmp_path, tiny)
    ws, z = tiny["ws2"], tiny["t"]["z"]
    with torch.no_grad():
        # The rosinality layout evaluated with rosinality's own definitions equals the source network...
        torch.testing.assert_close(ros.synthesis(ros_sd, ws), synth(G_src, ws), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ros.mapping(ros_sd, z), G_src.mapping(z, None)[:, 0], atol=1e-5, rtol=1e-5)
        # ...and the converted generator reproduces both.
        G = load_generator(path)
        torch.testing.assert_close(synth(G, ws), ros.synthesis(ros_sd, ws), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(G.mapping(z, None), G_src.mapping(z, None), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(G.mapping.w_avg, G_src.mapping.w_avg)
    for k, v in G_src.state_dict().items():
        torch.testing.assert_close(G.state_dict()[k], v, atol=1e-6, rtol=1e-6, msg=k)
    nets = load_networks(path)
    assert nets["format"] == "rosinality" and nets["args"]["size"] == 32
    img = tiny["t"]["img_const"]
    ros_d = torch.load(path, weights_only=False)["d"]
    with torch.no_grad():
        torch.testing.assert_close(ros.discriminator(ros_d, img), D_src(img, None), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(nets["D"](img, None), D_src(img, None), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(synth(nets["G"], ws), synth(G_src, ws), atol=1e-4, rtol=1e-4)


def test_rosinality_legacy_torch_file(tmp_path, tiny):
    path, G_src, _, _ = _rosinality_file(tmp_path, tiny, legacy=True)  # torch < 1.6 serialisation
    assert checkpoints.detect_format(path) == checkpoints.FORMAT_ROSINALITY
    torch.testing.assert_close(synth(load_generator(path), tiny["ws1"]), synth(G_src, tiny["ws1"]),
                               atol=1e-5, rtol=1e-5)


def test_rosinality_without_latent_avg_warns(tmp_path, tiny):
    path, *_ = _rosinality_file(tmp_path, tiny, with_latent_avg=False)
    with pytest.warns(UserWarning, match="latent_avg"):
        G = load_generator(path)
    assert torch.count_nonzero(G.mapping.w_avg) == 0


def test_rosinality_missing_key_listed(tmp_path, tiny):
    path, G_src, D_src, sd = _rosinality_file(tmp_path, tiny)
    ckpt = torch.load(path, weights_only=False)
    del ckpt["g_ema"]["convs.1.noise.weight"]
    ckpt["g_ema"]["bogus.weight"] = torch.zeros(1)
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError) as err:
        load_generator(path)
    assert "convs.1.noise.weight" in str(err.value) and str(path) in str(err.value)


def test_torch_file_with_code_refused(tmp_path, marker):
    path = tmp_path / "evil.pt"
    torch.save({"g_ema": _Reduce(os.system, f"touch {marker}")}, path)
    with pytest.raises(UnsafeCheckpointError, match="posix.system"):
        load_generator(path)
    assert not marker.exists()
    path2 = tmp_path / "other.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, path2)
    with pytest.raises(CheckpointError, match="g_ema"):
        load_generator(path2)


# ------------------------------------------------------------------------------------------------
# (f) StyleGAN3, (g) dispatch by content


def test_stylegan3_refused(tmp_path, marker):
    with fake_official_modules(marker):
        data = stylegan3_pickle_bytes(marker=marker)
    path = tmp_path / "stylegan3-r-ffhq-1024x1024.pkl"
    path.write_bytes(data)
    with pytest.raises(UnsupportedCheckpointError, match="StyleGAN3 is not supported"):
        load_generator(path)


def test_dispatch_by_content_not_extension(official_pkl, tmp_path, tiny):
    renamed = tmp_path / "looks_like.safetensors"
    renamed.write_bytes(official_pkl.read_bytes())
    assert checkpoints.detect_format(renamed) == checkpoints.FORMAT_NVIDIA
    G = load_generator(renamed)
    torch.testing.assert_close(synth(G, tiny["ws1"]), tiny["img1"], atol=1e-4, rtol=0)
    own = tmp_path / "own.pkl"
    save_generator(G, own, provenance={})
    assert checkpoints.detect_format(own) == checkpoints.FORMAT_STYLEMIX
    assert isinstance(load_generator(own), Generator)


def test_registered_name_resolves_through_pretrained(official_pkl, tmp_path, monkeypatch, tiny):
    import hashlib

    from ._http_server import FileServer

    data = official_pkl.read_bytes()
    monkeypatch.setenv("STYLEMIX_CACHE", str(tmp_path / "cache"))
    with FileServer() as srv:
        srv.add("/tiny.pkl", data)
        entry = pretrained.ModelEntry(name="test-tiny-official", resolution=32, kind="networks",
                                      url=srv.url("/tiny.pkl"), sha256=hashlib.sha256(data).hexdigest(),
                                      size=len(data))
        pretrained.register(entry)
        try:
            G = load_generator("test-tiny-official")
            G_again = load_generator("test-tiny-official")
            info = checkpoints.describe("test-tiny-official")
        finally:
            pretrained.unregister(entry.name)
        assert len(srv.requests_for("/tiny.pkl")) == 1
    torch.testing.assert_close(synth(G, tiny["ws1"]), tiny["img1"], atol=1e-4, rtol=0)
    assert info["format"] == checkpoints.FORMAT_NVIDIA and info["num_ws"] == G.num_ws
    assert {"G", "D", "G_ema"} <= set(info["networks"])
    json.dumps(info)


def test_bad_device_is_value_error(official_pkl):
    with pytest.raises(ValueError, match="device"):
        load_generator(official_pkl, device="not-a-device")


def test_save_discriminator_round_trip(tmp_path):
    kw = dict(c_dim=0, img_resolution=16, img_channels=3, channel_base=256, channel_max=32)
    torch.manual_seed(3)
    D = Discriminator(**kw)
    path = checkpoints.save_discriminator(D, tmp_path / "d.safetensors", provenance={"run": "x"})
    nets = checkpoints.load_networks(path)
    assert set(nets) >= {"D", "provenance"} and "G_ema" not in nets and nets["provenance"] == {"run": "x"}
    assert all(torch.equal(a, b) for a, b in zip(nets["D"].state_dict().values(), D.state_dict().values()))
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(nets["D"](x, None), D.eval()(x, None))
    with pytest.raises(CheckpointError, match="no generator in this checkpoint"):
        checkpoints.load_generator(path)
    with pytest.raises(ValueError, match="saves a stylemix Discriminator"):
        checkpoints.save_discriminator(torch.nn.Linear(2, 2), tmp_path / "x.safetensors", provenance={})
