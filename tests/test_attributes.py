"""The shipped attribute classifier: accuracy on fresh renders, input handling, identity, manifest.

Faces come from synthfaces seed 7103, reserved for this test (training.evaluation.classifier
RESERVED_SEEDS: the classifier trained on 7100 and was evaluated on 7101/7102)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from stylemix import pretrained
from stylemix.attributes import AttributeClassifier, load_classifier, to_input
from training.data import synthfaces as sf

SEED = 7103
NAME = "synthfaces64"  # the model; its classifier is registered as NAME + "-classifier"
ENTRY = NAME + "-classifier"


@pytest.fixture(scope="module")
def clf() -> AttributeClassifier:
    return load_classifier(NAME)


@pytest.fixture(scope="module")
def faces():
    """200 fresh faces, has_beard x shaved balanced (50 of each combination)."""
    params = [sf.params_for(SEED, i, has_beard=bool(i & 1), shaved=bool(i & 2)) for i in range(200)]
    images = sf.render_many(params, 64)
    labels = np.asarray([sf.labels_of(p) for p in params], np.float32)
    return images, labels, params


def _manifest_entry() -> dict:
    data = json.loads((pretrained.PRETRAINED_DIR / pretrained.MANIFEST_NAME).read_text(encoding="utf-8"))
    entries = [m for m in data["models"] if m["name"] == ENTRY]
    assert len(entries) == 1, entries
    return entries[0]


def test_manifest_entry_matches_file():
    e = _manifest_entry()
    path = pretrained.PRETRAINED_DIR / e["path"]
    blob = path.read_bytes()
    assert e["kind"] == "classifier" and e["resolution"] == 64
    assert e["size"] == len(blob)
    assert e["sha256"] == hashlib.sha256(blob).hexdigest()
    for key in ("accuracy", "command", "training_time_s", "hardware", "seeds"):
        assert key in e, key
    assert e["accuracy"]["heldout"]["has_beard"] >= 0.98
    assert e["accuracy"]["heldout"]["shaved"] >= 0.98
    assert pretrained.get_entry(ENTRY).kind == "classifier"


def test_loaded_by_model_name_and_by_registry_name(clf):
    assert clf.name == NAME
    other = load_classifier(ENTRY)
    assert other.name == NAME and other.path == clf.path


def test_accuracy_on_fresh_renders(clf, faces):
    images, labels, _ = faces
    p = clf.predict(images)
    assert set(p) == set(clf.label_names)
    assert clf.label_names[:4] == ["has_beard", "shaved", "glasses", "smile"]
    assert clf.resolution == 64
    for j, name in enumerate(("has_beard", "shaved")):
        assert p[name].shape == (200,) and p[name].dtype == np.float32
        assert ((p[name] >= 0) & (p[name] <= 1)).all()
        acc = float(((p[name] > 0.5) == (labels[:, j] > 0.5)).mean())
        assert acc >= 0.97, (name, acc)
    # the rare combination the project is about: beard AND shaved head
    both = (labels[:, 0] > 0.5) & (labels[:, 1] > 0.5)
    assert ((p["has_beard"][both] > 0.5) & (p["shaved"][both] > 0.5)).mean() >= 0.9


def test_uint8_and_float_inputs_agree(clf, faces):
    images = faces[0][:16]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    a = clf.outputs(images)
    b = clf.outputs(x)
    c = clf.outputs(x.numpy())
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5)
        np.testing.assert_allclose(a[k], c[k], atol=1e-5)
    # batching does not change the result; a single HWC image is a batch of one
    d = clf.outputs(images, batch_size=5)
    for k in a:
        np.testing.assert_allclose(a[k], d[k], atol=1e-5)
    one = clf.predict(images[3])
    assert one["has_beard"].shape == (1,)
    assert abs(float(one["has_beard"][0]) - float(a["probs"][3, 0])) < 1e-5


def test_other_sizes(clf, faces):
    _, labels, params = faces
    idx = list(range(0, 200, 5))  # 40 faces, 10 per combination
    big = sf.render_many([params[i] for i in idx], 128)
    p = clf.predict(big)
    assert p["has_beard"].shape == (40,)
    for j, name in enumerate(("has_beard", "shaved")):
        acc = float(((p[name] > 0.5) == (labels[idx, j] > 0.5)).mean())
        assert acc >= 0.9, (name, acc)
    small = to_input(big, 48)
    assert small.shape == (40, 3, 48, 48)
    assert clf.predict(small)["shaved"].shape == (40,)  # upsampled back to 64 internally


def test_features_and_identity_shapes(clf, faces):
    images = faces[0][:10]
    f = clf.features(images)
    e = clf.identity(images)
    assert f.shape == (10, clf.feature_dim) and f.dtype == np.float32 and np.isfinite(f).all()
    fc = clf.features(images, layer="fc")
    assert fc.shape == (10, clf.fc_dim) and (fc >= 0).all()
    with pytest.raises(ValueError):
        clf.features(images, layer="conv1")
    assert e.shape == (10, len(clf.identity_names)) and np.isfinite(e).all()
    assert len(clf.identity_mean) == len(clf.identity_std) == e.shape[1]
    empty = clf.outputs(images[:0])
    assert empty["probs"].shape == (0, len(clf.label_names))
    assert empty["features"].shape == (0, clf.feature_dim)


def test_identity_embedding_ignores_attributes(clf, faces):
    _, _, params = faces
    base = params[:40]
    other = [sf.with_attributes(p, has_beard=not p["attributes"]["has_beard"],
                                shaved=not p["attributes"]["shaved"], glasses=not p["attributes"]["glasses"])
             for p in base]
    ea = clf.identity(sf.render_many(base, 64))
    eb = clf.identity(sf.render_many(other, 64))
    same = np.linalg.norm(ea - eb, axis=1)
    diff = np.linalg.norm(ea - np.roll(eb, 1, axis=0), axis=1)
    assert same.mean() < 0.7 * diff.mean(), (same.mean(), diff.mean())
    assert (same < diff).mean() >= 0.75


def test_logits_are_differentiable(clf, faces):
    x = (torch.from_numpy(faces[0][:2]).permute(0, 3, 1, 2).float() / 127.5 - 1)
    x = torch.nn.functional.interpolate(x, size=(96, 96), mode="bilinear", align_corners=False)
    x.requires_grad_(True)
    lg = clf.logits(x)
    assert lg.shape == (2, len(clf.label_names)) and lg.requires_grad
    lg[:, 0].sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is None for p in clf.net.parameters())
    with torch.no_grad():
        p = torch.sigmoid(clf.logits(x)).numpy()
    np.testing.assert_allclose(p[:, 0], clf.predict(x.detach())["has_beard"], atol=1e-5)


@pytest.mark.parametrize("bad", [
    np.zeros((2, 64, 64, 3), np.int32),                 # wrong dtype
    np.zeros((2, 3, 64, 64), np.uint8),                 # uint8 must be NHWC
    np.zeros((2, 64, 64, 3), np.float32),               # float must be NCHW
    np.zeros((64, 64), np.uint8),                       # no channels
    np.zeros((2, 64, 48, 3), np.uint8),                 # not square
    np.full((1, 3, 64, 64), 200.0, np.float32),         # float in 0..255
    np.full((1, 3, 64, 64), np.nan, np.float32),        # NaN
    torch.zeros((2, 3, 64, 64), dtype=torch.int64),     # integer tensor
    [[0, 1, 2]],                                        # not an array
])
def test_bad_inputs_raise(clf, bad):
    with pytest.raises(ValueError):
        clf.predict(bad)


def test_bad_arguments_raise(clf, faces, tmp_path):
    with pytest.raises(ValueError):
        clf.predict(faces[0][:2], batch_size=0)
    with pytest.raises(ValueError):
        clf.logits(faces[0][:2])  # the differentiable path wants a tensor
    with pytest.raises(ValueError):
        load_classifier("no-such-classifier")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError):
        load_classifier(junk)


def test_load_by_path(clf):
    again = load_classifier(clf.path)
    assert again.label_names == clf.label_names and again.resolution == clf.resolution


def test_stylemix_does_not_import_training():
    code = ("import sys, stylemix.attributes; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('training', 'streamlit', 'torchvision')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(pretrained.REPO_ROOT))
