"""Procedural faces: determinism, attribute control, paired rendering, labels, dataset zips."""

import io
import json
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from training.data import synthfaces as sf


def _box(img, center, half):
    x, y = center
    h, w = img.shape[:2]
    x0, x1 = max(int(x - half), 0), min(int(x + half) + 1, w)
    y0, y1 = max(int(y - half), 0), min(int(y + half) + 1, h)
    return img[y0:y1, x0:x1].astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Sampling and rendering


def test_render_batch_shapes_and_determinism():
    a, pa = sf.render_batch(6, 32, seed=3)
    b, pb = sf.render_batch(6, 32, seed=3)
    c, _ = sf.render_batch(6, 32, seed=4)
    assert a.shape == (6, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and pa == pb
    assert not np.array_equal(a, c)
    # prefix stable: face i only depends on (seed, i)
    d, pd = sf.render_batch(3, 32, seed=3)
    assert np.array_equal(d, a[:3]) and pd == pa[:3]


def test_pixels_do_not_depend_on_the_batch():
    params = [sf.params_for(11, i) for i in range(10)]
    many = sf.render_many(params, 48, batch_size=4)
    for i in (0, 3, 7):
        assert np.array_equal(sf.render(params[i], 48), many[i])


@pytest.mark.parametrize("res", [32, 64, 128, 256, 40])
def test_resolutions(res):
    img = sf.render(sf.params_for(0, 1), res)
    assert img.shape == (res, res, 3) and img.dtype == np.uint8
    assert img.std() > 10  # not blank


def test_fixed_options_honoured():
    for beard in sf.BEARD_OPTIONS:
        for hair in sf.HAIR_OPTIONS:
            p = sf.params_for(5, 0, beard=beard, hair=hair, glasses=True, smile=False)
            a = p["attributes"]
            assert (a["beard"], a["hair"], a["glasses"], a["smile"]) == (beard, hair, True, False)
            assert a["has_beard"] == (beard != "none") and a["shaved"] == (hair == "shaved")


def test_derived_booleans_sample_among_matching_options():
    beards = {sf.params_for(1, i, has_beard=True)["attributes"]["beard"] for i in range(40)}
    hairs = {sf.params_for(1, i, shaved=False)["attributes"]["hair"] for i in range(40)}
    assert beards == {"stubble", "full"}
    assert hairs == {"short", "long"}
    for i in range(10):
        a = sf.params_for(2, i, has_beard=False, shaved=True)["attributes"]
        assert a["beard"] == "none" and a["hair"] == "shaved"
        assert sf.labels_of(sf.params_for(2, i, has_beard=True, shaved=True))[:2] == [1.0, 1.0]


def test_fixed_does_not_change_identity_or_nuisance():
    a = sf.sample_params(np.random.default_rng(9), beard="full", hair="shaved")
    b = sf.sample_params(np.random.default_rng(9), beard="none", hair="long", glasses=True)
    assert a["identity"] == b["identity"] and a["nuisance"] == b["nuisance"]


def test_natural_distribution_roughly():
    ps = [sf.params_for(0, i) for i in range(600)]
    share = np.mean([sf.labels_of(p) for p in ps], axis=0)
    assert abs(share[0] - 0.40) < 0.07  # has_beard
    assert abs(share[1] - 0.12) < 0.05  # shaved
    assert abs(share[2] - 0.25) < 0.06  # glasses


def test_identity_is_continuous():
    ps = [sf.params_for(0, i) for i in range(50)]
    widths = {p["identity"]["head_w"] for p in ps}
    skins = {tuple(p["identity"]["skin"]) for p in ps}
    assert len(widths) == 50 and len(skins) == 50


def test_params_json_round_trip():
    p = sf.params_for(7, 3, beard="stubble")
    q = json.loads(json.dumps(p))
    assert q == p
    assert np.array_equal(sf.render(q, 32), sf.render(p, 32))


def test_labels_order():
    p = sf.params_for(0, 0, beard="full", hair="long", glasses=True, smile=False)
    assert sf.LABEL_NAMES == ("has_beard", "shaved", "glasses", "smile", "beard_full", "hair_long")
    assert sf.labels_of(p) == [1.0, 0.0, 1.0, 0.0, 1.0, 1.0]


# ---------------------------------------------------------------------------------------------
# Paired rendering


def test_with_attributes_keeps_identity_and_nuisance():
    p = sf.params_for(4, 2, beard="none", hair="short")
    q = sf.with_attributes(p, has_beard=True, shaved=True)
    assert q["identity"] == p["identity"] and q["nuisance"] == p["nuisance"]
    assert q["attributes"]["beard"] == "full" and q["attributes"]["hair"] == "shaved"
    assert q["attributes"]["has_beard"] and q["attributes"]["shaved"]
    assert p["attributes"]["beard"] == "none"  # input untouched
    # an option that already matches is kept; style entries are kept
    r = sf.with_attributes(sf.with_attributes(p, beard="stubble"), has_beard=True)
    assert r["attributes"]["beard"] == "stubble"
    assert r["attributes"]["beard_color"] == p["attributes"]["beard_color"]
    s = sf.with_attributes(p, hair_color=[0.5, 0.1, 0.1])
    assert s["attributes"]["hair_color"] == [0.5, 0.1, 0.1]


def test_with_attributes_changes_only_hair_and_beard_regions():
    res = 96
    for i in range(3):
        p = sf.params_for(21, i, glasses=False, beard="none", hair="short")
        lm = sf.landmarks(p, res)
        eye = res * 0.03
        base = sf.render(p, res)
        for attrs in ({"beard": "full"}, {"beard": "stubble"}, {"hair": "shaved"}, {"hair": "long"},
                      {"has_beard": True, "shaved": True}):
            other = sf.render(sf.with_attributes(p, **attrs), res)
            for k in ("eye_l", "eye_r"):
                assert np.array_equal(_box(base, lm[k], eye), _box(other, lm[k], eye)), (i, attrs, k)
            assert not np.array_equal(base, other), attrs


def test_attributes_are_visible():
    """Mean colour change in the chin region (beard) and on top of the head (hair)."""
    res = 64
    for i in range(6):
        p = sf.params_for(33, i, glasses=False)
        lm = sf.landmarks(p, res)
        chin = ((lm["mouth"][0] + lm["chin"][0]) / 2, (lm["mouth"][1] * 0.35 + lm["chin"][1] * 0.65))
        top = (lm["head_top"][0], lm["head_top"][1] * 0.6 + lm["eye_l"][1] * 0.4)
        r = {}
        for b in sf.BEARD_OPTIONS:
            for h in sf.HAIR_OPTIONS:
                r[b, h] = sf.render(sf.with_attributes(p, beard=b, hair=h), res)

        def diff(a, b, c):
            return np.abs(_box(a, c, 3).mean((0, 1)) - _box(b, c, 3).mean((0, 1))).sum()

        assert diff(r["full", "short"], r["none", "short"], chin) > 40, i
        assert diff(r["stubble", "short"], r["none", "short"], chin) > 20, i
        assert diff(r["none", "shaved"], r["none", "long"], top) > 40, i
        assert diff(r["none", "shaved"], r["none", "short"], top) > 40, i


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("kwargs, match", [
    ({"beard": "huge"}, "beard"),
    ({"hair": "bald"}, "hair"),
    ({"glasses": "yes"}, "glasses"),
    ({"smile": 2}, "smile"),
    ({"moustache": True}, "moustache"),
    ({"beard": "none", "has_beard": True}, "has_beard"),
    ({"hair": "long", "shaved": True}, "shaved"),
    ({"identity": {"nose_size": 1.0}}, "nose_size"),
])
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sf.sample_params(np.random.default_rng(0), **kwargs)


def test_bad_calls_raise():
    p = sf.params_for(0, 0)
    with pytest.raises(ValueError, match="beard"):
        sf.with_attributes(p, beard="goatee")
    with pytest.raises(ValueError, match="fringe"):
        sf.with_attributes(p, fringe=True)
    with pytest.raises(ValueError, match="resolution"):
        sf.render(p, 4)
    with pytest.raises(ValueError, match="params"):
        sf.render({"identity": {}}, 32)
    bad = json.loads(json.dumps(p))
    bad["attributes"]["hair"] = "mohawk"
    with pytest.raises(ValueError, match="mohawk"):
        sf.render(bad, 32)
    with pytest.raises(ValueError, match="rng"):
        sf.sample_params(0)


# ---------------------------------------------------------------------------------------------
# Dataset zips and the CLI


def test_cli_writes_official_layout(tmp_path, capsys):
    out = tmp_path / "faces.zip"
    assert sf.main(["--out", str(out), "--n", "12", "--res", "32", "--seed", "1", "--quiet"]) == 0
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        pngs = [n for n in names if n.endswith(".png")]
        assert pngs == [f"00000/img{i:08d}.png" for i in range(12)]
        assert all(zf.getinfo(n).compress_type == zipfile.ZIP_STORED for n in names)
        meta = json.loads(zf.read("dataset.json"))
        assert meta["label_names"] == list(sf.LABEL_NAMES)
        assert [lab[0] for lab in meta["labels"]] == pngs
        lines = [json.loads(x) for x in zf.read("params.jsonl").decode().splitlines()]
        assert [x["filename"] for x in lines] == pngs
        for x, lab in zip(lines, meta["labels"]):
            p = {k: x[k] for k in ("identity", "attributes", "nuisance")}
            assert sf.labels_of(p) == lab[1] == x["labels"]
        img = np.asarray(Image.open(io.BytesIO(zf.read(pngs[3]))))
        assert img.shape == (32, 32, 3)
        p3 = {k: lines[3][k] for k in ("identity", "attributes", "nuisance")}
        assert np.array_equal(img, sf.render(p3, 32))
    assert str(out) in capsys.readouterr().out


def test_cli_readable_by_image_dataset(tmp_path):
    from training.data.datasets import ImageDataset
    out = tmp_path / "faces.zip"
    sf.build(str(out), 10, 32, 2, progress=False)
    ds = ImageDataset(out)
    assert len(ds) == 10 and ds.resolution == 32 and ds.label_names == list(sf.LABEL_NAMES)
    img, label = ds[0]
    assert img.shape == (3, 32, 32) and img.dtype == np.uint8 and label.dtype == np.float32


def test_cli_split_shares_and_heldout(tmp_path):
    out = tmp_path / "seeds.zip"
    paths = sf.build(str(out), 120, 16, 5, split=True, both_share=0.05, heldout=9, workers=1, progress=False)
    train, held = str(tmp_path / "seeds-train.zip"), str(tmp_path / "seeds-heldout-both.zip")
    assert paths == [train, held] and not out.exists()
    with zipfile.ZipFile(train) as zf:
        lines = [json.loads(x) for x in zf.read("params.jsonl").decode().splitlines()]
    with zipfile.ZipFile(held) as zf:
        held_lines = [json.loads(x) for x in zf.read("params.jsonl").decode().splitlines()]
    splits = [x["split"] for x in lines]
    assert len(lines) == 120
    assert splits.count("both") == 6  # round(120 * 0.05)
    assert splits.count("beard") == splits.count("shaved") == splits.count("neither") == 38
    expect = {"beard": [1.0, 0.0], "shaved": [0.0, 1.0], "neither": [0.0, 0.0], "both": [1.0, 1.0]}
    assert all(x["labels"][:2] == expect[x["split"]] for x in lines)
    assert splits[:20].count("beard") < 20  # shuffled, not grouped
    assert len(held_lines) == 9 and all(x["labels"][:2] == [1.0, 1.0] for x in held_lines)
    pool_ids = {json.dumps(x["identity"], sort_keys=True) for x in lines}
    assert not pool_ids & {json.dumps(x["identity"], sort_keys=True) for x in held_lines}
    assert sf.split_counts(1000, 0.01)["both"] == 10


def test_cli_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "faces.zip"
    calls = []

    def boom(job):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return [sf._encode_png(im, 1) for im in sf.render_many(job[0], job[1])]

    monkeypatch.setattr(sf, "_render_chunk", boom)
    assert sf.main(["--out", str(out), "--n", "130", "--res", "16", "--quiet"]) == 130
    assert os.listdir(tmp_path) == []
    calls.clear()
    monkeypatch.setattr(sf, "_render_chunk", lambda job: (_ for _ in ()).throw(OSError("disk full")))
    assert sf.main(["--out", str(out), "--n", "5", "--res", "16", "--split", "--quiet"]) == 1
    assert os.listdir(tmp_path) == []


def test_cli_errors(tmp_path, capsys):
    assert sf.main(["--out", str(tmp_path / "x.tar"), "--n", "3"]) == 1
    assert "zip" in capsys.readouterr().err
    assert sf.main(["--out", str(tmp_path / "x.zip"), "--n", "3", "--both-share", "1.5"]) == 1
    assert "both-share" in capsys.readouterr().err
    assert sf.main(["--out", str(tmp_path / "nodir" / "x.zip"), "--n", "3"]) == 1
