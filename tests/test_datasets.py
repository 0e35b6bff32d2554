"""ImageDataset over folders, dataset zips and CelebA: labels, filters, xflip, resizing, bad files."""

import io
import multiprocessing
import os
import json
import pickle
import warnings
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import synthfaces as sf
from training.data.datasets import ImageDataset


def _save(path, arr, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)


def _rgb(h, w, value):
    return np.full((h, w, 3), value, np.uint8)


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "imgs"
    _save(root / "a.png", _rgb(40, 40, 10))
    _save(root / "sub" / "b.jpg", _rgb(30, 50, 120))
    _save(root / "sub" / "deeper" / "c.webp", _rgb(50, 30, 200))
    _save(root / "d.bmp", _rgb(20, 20, 60))
    (root / "bad.png").write_bytes(b"this is not a png")
    (root / "notes.txt").write_text("ignored")
    return root


def _no_warnings():
    return warnings.catch_warnings(record=True)


def test_folder_recursive_with_one_warning_for_bad_files(folder):
    with pytest.warns(UserWarning) as rec:
        ds = ImageDataset(folder, resolution=16)
    assert len([w for w in rec if "unreadable" in str(w.message)]) == 1
    assert "1 unreadable" in str(rec[0].message)
    assert ds.filenames == ["a.png", "d.bmp", "sub/b.jpg", "sub/deeper/c.webp"]
    assert len(ds) == 4 and not ds.has_labels and ds.label_dim == 0 and ds.label_names == []
    assert ds.name == "imgs" and ds.kind == "folder" and ds.image_shape == [3, 16, 16]
    for i in range(len(ds)):
        img, label = ds[i]
        assert img.shape == (3, 16, 16) and img.dtype == np.uint8
        assert label.shape == (0,) and label.dtype == np.float32
    assert abs(int(ds[2][0].mean()) - 120) <= 2  # the jpg, resized


def test_folder_default_resolution_is_first_image(folder):
    with pytest.warns(UserWarning):
        ds = ImageDataset(folder)
    assert ds.resolution == 40 and ds[1][0].shape == (3, 40, 40)


def test_folder_dataset_json_labels(tmp_path):
    root = tmp_path / "lab"
    for i in range(4):
        _save(root / f"{i}.png", _rgb(8, 8, 40 * i))
    (root / "dataset.json").write_text(json.dumps({"labels": [[f"{i}.png", i % 2] for i in range(4)]}))
    ds = ImageDataset(root)
    assert ds.label_names == ["class0", "class1"]
    assert ds[1][1].tolist() == [0.0, 1.0]
    assert len(ImageDataset(root, filters={"class1": True})) == 2


def test_center_crop_and_resize(tmp_path):
    arr = np.zeros((20, 60, 3), np.uint8)
    arr[:, :20] = 255  # left band, cropped away
    arr[:, 40:] = 255  # right band, cropped away
    arr[:, 20:40] = 100
    _save(tmp_path / "wide.png", arr)
    ds = ImageDataset(tmp_path, resolution=10)
    img, _ = ds[0]
    assert img.shape == (3, 10, 10)
    assert np.abs(img.astype(int) - 100).max() <= 3


def test_xflip_doubles_and_mirrors(tmp_path):
    arr = np.zeros((8, 8, 3), np.uint8)
    arr[:, :3] = 255
    _save(tmp_path / "x.png", arr)
    _save(tmp_path / "y.png", _rgb(8, 8, 7))
    ds = ImageDataset(tmp_path, xflip=True)
    assert len(ds) == 4
    a, _ = ds[0]
    b, _ = ds[2]
    assert np.array_equal(b, a[:, :, ::-1]) and not np.array_equal(a, b)


def test_corrupt_after_header_check_is_replaced(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_rgb(32, 32, 50)).save(buf, format="png")
    (tmp_path / "a_truncated.png").write_bytes(buf.getvalue()[:60])  # header ok, data cut
    _save(tmp_path / "b_good.png", _rgb(32, 32, 90))
    ds = ImageDataset(tmp_path, resolution=8)
    assert len(ds) == 2
    with pytest.warns(UserWarning, match="could not be decoded"):
        img, _ = ds[0]
    assert int(img.mean()) == 90 and ds.unreadable == ["a_truncated.png"]
    with _no_warnings() as rec:
        warnings.simplefilter("always")
        ds[0]
    assert not [w for w in rec if "decoded" in str(w.message)]  # one warning only


def test_synthfaces_zip_labels_filters(tmp_path):
    out = tmp_path / "faces.zip"
    sf.build(str(out), 24, 32, 3, progress=False)
    with zipfile.ZipFile(out) as zf:
        labels = dict(json.loads(zf.read("dataset.json"))["labels"])
    ds = ImageDataset(out, resolution=16)
    assert ds.kind == "zip" and ds.name == "faces" and len(ds) == 24
    assert ds.label_names == list(sf.LABEL_NAMES) and ds.label_dim == 6 and ds.has_labels
    img, lab = ds[5]
    assert img.shape == (3, 16, 16)
    assert lab.tolist() == labels[ds.filenames[5]]
    f = ImageDataset(out, filters={"has_beard": True, "shaved": False})
    assert len(f) == sum(1 for v in labels.values() if v[0] == 1 and v[1] == 0) > 0
    assert all(f[i][1][0] == 1 and f[i][1][1] == 0 for i in range(len(f)))
    assert ImageDataset(out, use_labels=False).label_dim == 0
    assert len(ImageDataset(out, max_size=5)) == 5
    # picklable for DataLoader workers, and collates into tensors
    ds2 = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(ds2[3][0], ds[3][0])
    x, y = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.uint8 and y.shape == (4, 6)


def test_empty_filter_and_bad_filters(tmp_path):
    out = tmp_path / "faces.zip"
    sf.build(str(out), 6, 16, 0, split=True, both_share=0.0, heldout=3, progress=False)
    held = tmp_path / "faces-heldout-both.zip"
    with pytest.raises(ValueError, match="shaved"):
        ImageDataset(held, filters={"shaved": False})
    with pytest.raises(ValueError, match="unknown filter 'bald'"):
        ImageDataset(held, filters={"bald": True})
    with pytest.raises(ValueError, match="need labels"):
        ImageDataset(held, use_labels=False, filters={"shaved": True})
    with pytest.raises(ValueError, match="does not exist"):
        ImageDataset(tmp_path / "nope")


def _fake_celeba(root):
    attrs = ["5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
             "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
             "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
             "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
             "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
             "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
             "Wearing_Necktie", "Young"]
    rows = []
    spec = {  # name: (No_Beard, Bald, Eyeglasses, Smiling)
        "000001.jpg": (1, -1, -1, 1), "000002.jpg": (-1, -1, 1, -1), "000003.jpg": (-1, 1, -1, -1),
        "000004.jpg": (1, 1, -1, 1), "000005.jpg": (1, -1, -1, -1),
    }
    for i, (name, (nb, bald, eg, sm)) in enumerate(spec.items()):
        v = {a: -1 for a in attrs}
        v.update(No_Beard=nb, Bald=bald, Eyeglasses=eg, Smiling=sm, Male=1 if nb < 0 else -1)
        rows.append(name + "  " + " ".join(f"{v[a]:2d}" for a in attrs))
        if name != "000005.jpg":  # listed but missing
            _save(root / "img_align_celeba" / name, _rgb(218, 178, 30 + 40 * i), fmt="JPEG")
    (root / "list_attr_celeba.txt").write_text(f"{len(rows)}\n" + " ".join(attrs) + "\n" + "\n".join(rows) + "\n")
    return attrs


def test_celeba(tmp_path):
    attrs = _fake_celeba(tmp_path)
    with pytest.warns(UserWarning, match="1 unreadable or missing"):
        ds = ImageDataset(tmp_path, resolution=32)
    assert ds.kind == "celeba" and len(ds) == 4
    assert ds.label_names == ["has_beard", "shaved", "glasses", "smile"] + attrs
    assert ds.label_dim == 44 and ds[0][0].shape == (3, 32, 32)
    lab = {n: ds.get_label(i) for i, n in enumerate(ds.filenames)}
    assert lab["000002.jpg"][:4].tolist() == [1, 0, 1, 0]
    assert lab["000004.jpg"][:4].tolist() == [0, 1, 0, 1]
    assert lab["000002.jpg"][4 + attrs.index("Male")] == 1
    with pytest.warns(UserWarning):
        beard = ImageDataset(tmp_path / "list_attr_celeba.txt", resolution=16, filters={"has_beard": True})
    assert beard.filenames == ["000002.jpg", "000003.jpg"]
    with pytest.warns(UserWarning):
        both = ImageDataset(tmp_path, filters={"has_beard": True, "shaved": True})
    assert both.filenames == ["000003.jpg"]
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="Wearing_Hat"):
        ImageDataset(tmp_path, filters={"Wearing_Hat": True})


def _read_items_in_child(ds, idx, q):
    q.put([ds[i][0].tobytes() for i in idx])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_zip_handle_not_shared_with_forked_workers(tmp_path):
    # A worker forked after the parent opened the zip must not move the parent's file offset, and
    # a multi-worker DataLoader must return exactly the images a single process reads.
    out = tmp_path / "noise.zip"
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(out, "w") as zf:
        for i in range(64):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, format="png")
            zf.writestr(f"{i:03d}.png", buf.getvalue())
    ds = ImageDataset(out, use_labels=False)
    want = [ds[i][0] for i in range(len(ds))]  # the parent now holds an open handle
    fd = ds._get_zipfile().fp.fileno()
    pos = os.lseek(fd, 0, os.SEEK_CUR)
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_read_items_in_child, args=(ds, [5, 40, 63, 0], q))
    p.start()
    got = q.get(timeout=60)
    p.join(60)
    assert got == [want[i].tobytes() for i in (5, 40, 63, 0)]
    assert os.lseek(fd, 0, os.SEEK_CUR) == pos
    dl = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=3,
                                     multiprocessing_context=ctx)
    imgs = torch.cat([b[0] for b in dl]).numpy()
    assert all(np.array_equal(imgs[i], want[i]) for i in range(len(ds))) and not ds.unreadable
