"""stylemix.editing and training.directions: directions in W, edit(), files, lookup, CLI."""

import warnings

import numpy as np
import pytest
import torch

from stylemix import editing, pretrained
from stylemix.editing import (Direction, DirectionSet, compute_directions, default_path, directions_from_labels,
                              edit, find_directions, load_directions, measure_effects, save_directions)
from stylemix.mixing import layer_groups

pytestmark = pytest.mark.usefixtures("one_thread")


def _cos(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# ------------------------------------------------------------------------------------------------
# Fakes: a generator whose images are linear in w, and classifiers reading the images


class LinearSynthesis(torch.nn.Module):
    """ws [N, num_ws, w_dim] -> 'image' [N, 3, 4, 4] = ((ws[:, 0] - centre) @ A) * gain: linear in w."""

    def __init__(self, w_dim, num_ws, A, centre, gain):
        super().__init__()
        self.w_dim, self.num_ws = w_dim, num_ws
        self.register_buffer("A", A)
        self.register_buffer("centre", centre)
        self.gain = gain

    def forward(self, ws, noise_mode="random"):
        assert noise_mode == "const"
        return (((ws[:, 0] - self.centre) @ self.A) * self.gain).reshape(-1, 3, 4, 4)


class LinearG(torch.nn.Module):
    """tiny32_G's mapping network (a real, anisotropic w distribution) + a linear 'synthesis'."""

    def __init__(self, G, seed=0):
        super().__init__()
        self.mapping = G.mapping
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = G.z_dim, 0, G.w_dim, G.num_ws
        self.img_resolution = 4
        g = torch.Generator().manual_seed(seed)
        A = torch.randn(G.w_dim, 48, generator=g) / G.w_dim ** 0.5
        with torch.no_grad():
            w = G.mapping(torch.randn(2000, G.z_dim, generator=g), None)[:, 0]
        centre = w.mean(0)
        gain = 0.5 / float(((w - centre) @ A).abs().max())  # images stay inside [-1, 1]: no clamping
        self.synthesis = LinearSynthesis(G.w_dim, G.num_ws, A, centre, gain)


class ProjectionClassifier:
    """Labels from a linear read-out of the image: P(smile) = sigmoid(k * (img . a)), so with LinearG
    the label is sign(w . u - c) with u = A @ a. 'rare' is positive only far out along u."""

    label_names = ("smile", "rare")
    name = "projection"

    def __init__(self, a, k=200.0):
        self.a = a
        self.k = k

    def predict(self, images):
        assert isinstance(images, torch.Tensor) and images.ndim == 4 and float(images.abs().max()) <= 1
        s = images.flatten(1).double() @ self.a.double()
        return {"smile": torch.sigmoid(self.k * s).numpy(), "rare": torch.sigmoid(self.k * (s - 10.0)).numpy()}


class RednessClassifier:
    """P(red) from the rendered image's red channel minus its green/blue channels."""

    label_names = ("red", "bright")
    name = "redness"

    def __init__(self, offset=0.0, k=30.0):
        self.offset, self.k = offset, k

    def score(self, images):
        x = images.double()
        return (x[:, 0] - 0.5 * (x[:, 1] + x[:, 2])).mean((1, 2))

    def predict(self, images):
        r = self.score(images)
        return {"red": torch.sigmoid(self.k * (r - self.offset)).numpy(),
                "bright": torch.sigmoid(self.k * images.double().mean((1, 2, 3))).numpy()}


@pytest.fixture(scope="module")
def linear_setup(tiny32_G):
    G = LinearG(tiny32_G)
    a = torch.randn(48, generator=torch.Generator().manual_seed(1))
    u = (G.synthesis.A @ a).numpy()
    return G, ProjectionClassifier(a), u


# ------------------------------------------------------------------------------------------------
# compute_directions


def test_interfacegan_recovers_the_labelling_direction(linear_setup):
    G, clf, u = linear_setup
    calls = []
    dirs = compute_directions(G, clf, n=1500, attributes=("smile",), seed=3, batch=250,
                              progress=lambda done, total: calls.append((done, total)))
    assert isinstance(dirs, DirectionSet) and set(dirs) == {("smile", m) for m in editing.METHODS}
    # a single attribute has nothing to be conditioned on: 'conditional' is its interfacegan normal
    assert np.allclose(dirs["smile", "conditional"].vector, dirs["smile", "interfacegan"].vector, atol=1e-6)
    assert dirs.meta["conditional_on"] == {"smile": []}
    assert calls[-1] == (1500, 1500) and len(calls) == 6
    ifg, md = dirs["smile", "interfacegan"], dirs["smile", "mean_diff"]
    assert _cos(ifg.vector, u) > 0.9
    assert _cos(md.vector, u) > 0.2  # points the right way (not along u: w is anisotropic)
    for d in (ifg, md):
        assert d.vector.dtype == np.float32 and d.vector.shape == (G.w_dim,)
        assert abs(np.linalg.norm(d.vector) - 1) < 1e-5
        assert d.n == 1500 and 0 < d.positives < 1500
        assert d.accuracy is not None and d.balanced_accuracy is not None
    assert ifg.accuracy > 0.9 and ifg.balanced_accuracy > 0.9
    assert ifg.accuracy >= md.accuracy - 0.02
    # scale = std of w . vector over the samples
    w = editing._sample_w(G, 1500, seed=3, stream=0, truncation_psi=1.0, batch=250)
    assert ifg.scale == pytest.approx(float(np.std(w.astype(np.float64) @ ifg.vector)), rel=1e-4)
    assert dirs.meta["n"] == 1500 and dirs.meta["seed"] == 3 and dirs.meta["classifier"] == "projection"
    assert 0 < dirs.meta["positive_rate"]["smile"] < 1


def test_interfacegan_maps_the_standardised_fit_back_to_w():
    # Per-dimension scales over two orders of magnitude: returning the normal of the standardised
    # fit (without dividing by the std) would point far from u.
    rng = np.random.default_rng(0)
    d = 24
    w = rng.standard_normal((3000, d)) * np.logspace(-1, 1, d)
    u = rng.standard_normal(d)
    labels = {"x": w @ u > 0.3}
    dirs = directions_from_labels(w, labels, methods=("interfacegan", "mean_diff"), seed=0)
    assert _cos(dirs["x", "interfacegan"].vector, u) > 0.95
    assert _cos(dirs["x", "mean_diff"].vector, u) > 0  # right half-space
    # probabilities are thresholded at 0.5 like the classifier's
    probs = directions_from_labels(w, {"x": np.where(labels["x"], 0.8, 0.2)}, methods=("mean_diff",))
    assert np.allclose(probs["x", "mean_diff"].vector, directions_from_labels(
        w, labels, methods=("mean_diff",))["x", "mean_diff"].vector)


def test_conditional_direction_leaves_the_other_attributes_logits_unchanged():
    # Two correlated attributes (their true normals at ~60 degrees): moving along x's interfacegan
    # normal also moves y's logit; moving along x's conditional direction does not.
    rng = np.random.default_rng(4)
    d = 16
    w = rng.standard_normal((4000, d)) * np.linspace(0.5, 2.0, d)
    u = np.zeros(d); u[0] = 1.0
    v = np.zeros(d); v[0], v[1] = 0.6, 0.8
    labels = {"x": w @ u > 0.2, "y": w @ v > -0.1, "z": w[:, 2] > 0}
    dirs = directions_from_labels(w, labels, methods=("interfacegan", "conditional"), seed=0)
    assert dirs.meta["conditional_on"] == {"x": ["y", "z"], "y": ["x", "z"], "z": ["x", "y"]}
    cx, ix = dirs["x", "conditional"], dirs["x", "interfacegan"]
    for other in ("y", "z"):
        assert abs(float(cx.vector @ dirs[other, "interfacegan"].vector)) < 1e-5
    assert abs(float(ix.vector @ dirs["y", "interfacegan"].vector)) > 0.3  # the plain normal is entangled
    assert _cos(cx.vector, u) > 0.3                                         # and still adds x
    assert cx.accuracy > 0.6 and cx.balanced_accuracy > 0.6 and cx.n == 4000
    assert cx.scale == pytest.approx(float(np.std(w @ cx.vector.astype(np.float64))), rel=1e-4)
    # only the conditional directions are returned when only they are asked for
    only = directions_from_labels(w, labels, methods="conditional", seed=0)
    assert set(only) == {(a, "conditional") for a in labels}
    assert np.allclose(only["x", "conditional"].vector, cx.vector, atol=1e-6)
    # an attribute whose normal is spanned by the others' has no conditional direction
    with pytest.raises(ValueError, match="'x'/conditional: its normal lies in the span"):
        directions_from_labels(w, {"x": labels["x"], "x2": labels["x"].copy()}, methods="conditional")


def test_too_few_positives_is_an_error_naming_the_counts(linear_setup):
    G, clf, _ = linear_setup
    with pytest.raises(ValueError, match=r"'rare' has \d+ positive and \d+ negative samples of 200"):
        compute_directions(G, clf, n=200, attributes=("smile", "rare"), batch=100)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dirs = compute_directions(G, clf, n=200, attributes=("smile", "rare"), batch=100, skip_rare=True,
                                  methods="mean_diff")
    assert set(dirs) == {("smile", "mean_diff")}
    assert any("'rare' has" in str(w.message) for w in caught)
    assert dirs.meta["skipped"]["rare"]["n"] == 200


def test_compute_directions_rejects_bad_arguments(linear_setup):
    G, clf, _ = linear_setup
    with pytest.raises(ValueError, match="no attribute 'beard'"):
        compute_directions(G, clf, n=10, attributes=("beard",))
    with pytest.raises(ValueError, match="methods"):
        compute_directions(G, clf, n=10, attributes=("smile",), methods=("pca",))
    with pytest.raises(ValueError, match="n must be"):
        compute_directions(G, clf, n=0, attributes=("smile",))


def test_directions_of_a_real_generator_move_the_classifier(tiny32_G):
    # End to end on the real synthesis network: label by redness of the render, edit, re-render.
    G = tiny32_G
    clf = RednessClassifier()
    w = editing._sample_w(G, 200, seed=5, stream=0, truncation_psi=1.0, batch=100)
    with torch.no_grad():
        imgs = G.synthesis(torch.from_numpy(w)[:, None].expand(-1, G.num_ws, -1), noise_mode="const").clamp(-1, 1)
    clf.offset = float(clf.score(imgs).median())  # about half the samples are 'red'
    dirs = compute_directions(G, clf, n=300, attributes=("red",), seed=5, batch=100, min_count=10)
    base, effects = measure_effects(G, clf, dirs, n=40, seed=5, batch=40)
    assert set(base) == {"red", "bright"} and 0 < base["red"] < 1
    for key in dirs:
        assert effects[key]["+2"]["red"] > 0.1, effects
        assert effects[key]["-2"]["red"] < -0.1, effects


# ------------------------------------------------------------------------------------------------
# edit


def _direction(w_dim=8, seed=0, scale=0.5):
    v = np.random.default_rng(seed).standard_normal(w_dim)
    return Direction("smile", "mean_diff", v * 3.0, scale)


def test_edit_numpy_moves_only_the_chosen_rows():
    d = _direction()
    assert abs(np.linalg.norm(d.vector) - 1) < 1e-6  # normalised on construction
    ws = np.random.default_rng(1).standard_normal((10, 8)).astype(np.float32)
    before = ws.copy()
    out = edit(ws, d, 2.0, layers=[1, 3])
    assert np.array_equal(ws, before) and out is not ws
    assert out.dtype == np.float32 and out.shape == ws.shape
    step = 2.0 * 0.5 * d.vector
    assert np.allclose(out[[1, 3]], ws[[1, 3]] + step, atol=1e-6)
    untouched = [i for i in range(10) if i not in (1, 3)]
    assert np.array_equal(out[untouched], ws[untouched])
    # all rows by default; a group name resolves like mixing.mix's
    assert np.allclose(edit(ws, d, -1.0), ws - 0.5 * d.vector, atol=1e-6)
    coarse = layer_groups(10)["coarse"]
    out = edit(ws, d, 1.0, layers="coarse")
    changed = [i for i in range(10) if not np.array_equal(out[i], ws[i])]
    assert changed == coarse
    out2 = edit(ws, d, 1.0, layers=["coarse", coarse[0]])  # rows listed twice move once
    assert np.array_equal(out, out2)


def test_edit_torch_batched_keeps_type_device_and_grad():
    d = _direction(seed=2)
    ws = torch.randn(3, 10, 8, dtype=torch.float64, requires_grad=True)
    out = edit(ws, d, 1.5, layers=["fine", 0])
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64 and out.shape == ws.shape
    rows = sorted(set(layer_groups(10)["fine"]) | {0})
    expected = ws.detach().clone()
    expected[:, rows] += torch.from_numpy(1.5 * 0.5 * d.vector.astype(np.float64))
    assert torch.allclose(out.detach(), expected, atol=1e-6)
    out.sum().backward()  # autograd flows through
    assert torch.equal(ws.grad, torch.ones_like(ws))
    # batched numpy agrees with torch
    npout = edit(ws.detach().numpy(), d, 1.5, layers=["fine", 0])
    assert np.allclose(npout, out.detach().numpy(), atol=1e-6)


def test_edit_rejects_bad_input():
    d = _direction()
    with pytest.raises(ValueError, match="w_dim 8 but ws"):
        edit(np.zeros((10, 16), np.float32), d, 1.0)
    with pytest.raises(ValueError, match="shape"):
        edit(np.zeros(8, np.float32), d, 1.0)
    with pytest.raises(ValueError, match="layer index 10 out of range"):
        edit(np.zeros((10, 8), np.float32), d, 1.0, layers=[10])
    with pytest.raises(ValueError, match="unknown layer group"):
        edit(np.zeros((10, 8), np.float32), d, 1.0, layers="hair")
    with pytest.raises(ValueError, match="strength"):
        edit(np.zeros((10, 8), np.float32), d, float("nan"))
    with pytest.raises(ValueError, match="floating point"):
        edit(np.zeros((10, 8), np.int64), d, 1.0)
    with pytest.raises(ValueError, match="Direction"):
        edit(np.zeros((10, 8), np.float32), "smile", 1.0)
    with pytest.raises(ValueError, match="non-zero"):
        Direction("smile", "mean_diff", np.zeros(8), 1.0)


# ------------------------------------------------------------------------------------------------
# Files and lookup


def _set(w_dim=8):
    a = _direction(w_dim, seed=0)
    b = Direction("shaved", "interfacegan", np.arange(1.0, w_dim + 1), 0.25, accuracy=0.9, balanced_accuracy=0.85,
                  n=100, positives=12, effects={"+2": {"shaved": 0.4}, "-2": {"shaved": -0.1}})
    return DirectionSet({a.key: a, b.key: b}, meta={"model": "tiny", "n": 100, "seed": 0})


def test_save_load_roundtrip(tmp_path):
    dirs = _set()
    path = save_directions(tmp_path / "d.safetensors", dirs, meta={"model": "tiny", "n": 100, "seed": 0,
                                                                    "classifier": "fake"})
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temporary file
    back = load_directions(path)
    assert isinstance(back, DirectionSet) and set(back) == set(dirs)
    assert back.meta == {"model": "tiny", "n": 100, "seed": 0, "classifier": "fake"}
    assert back.path == str(path) and back.w_dim == 8 and back.attributes == ["smile", "shaved"]
    for key, d in dirs.items():
        e = back[key]
        assert np.array_equal(e.vector, d.vector) and e.scale == d.scale
        assert (e.accuracy, e.balanced_accuracy, e.n, e.positives, e.effects) == \
            (d.accuracy, d.balanced_accuracy, d.n, d.positives, d.effects)
    # meta=None takes the set's own .meta
    back2 = load_directions(save_directions(tmp_path / "e.safetensors", dirs, meta=None))
    assert back2.meta == dirs.meta
    c = back.copy()
    assert isinstance(c, DirectionSet) and c == back and c is not back
    assert c.meta == back.meta and c.path == back.path and c.attributes == back.attributes
    c.pop(("smile", "mean_diff"))
    assert ("smile", "mean_diff") in back


def test_load_rejects_bad_files(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="not a usable directions file"):
        load_directions(junk)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(3)}, str(other), metadata={"format": "something.else"})
    with pytest.raises(ValueError, match="format"):
        load_directions(other)
    good = save_directions(tmp_path / "good.safetensors", _set(), meta={})
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(ValueError, match="not a usable directions file"):
        load_directions(cut)
    with pytest.raises(ValueError, match="neither an existing file nor a registered"):
        load_directions(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="stored under the key"):
        save_directions(tmp_path / "key.safetensors", {("glasses", "mean_diff"): _direction()}, meta={})
    with pytest.raises(ValueError, match="different w_dim"):
        save_directions(tmp_path / "mixed.safetensors", {("a", "m"): Direction("a", "m", np.ones(8), 1.0),
                                                         ("b", "m"): Direction("b", "m", np.ones(4), 1.0)}, meta={})


class _NamedG:
    def __init__(self, name, w_dim=8):
        self.model_name, self.w_dim = name, w_dim


def test_find_directions_cache_then_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("STYLEMIX_CACHE", str(tmp_path / "cache"))
    G = _NamedG("tinyfind")
    assert find_directions(G) is None
    assert find_directions(object()) is None  # no model_name
    path = default_path("tinyfind")
    assert path == tmp_path / "cache" / "directions" / "tinyfind-directions.safetensors"
    path.parent.mkdir(parents=True)
    save_directions(path, _set(), meta={"model": "tinyfind"})
    found = find_directions(G)
    assert found is not None and set(found) == set(_set()) and found.path == str(path)
    with pytest.raises(ValueError, match="w_dim 8, but 'tinyfind' has w_dim 16"):
        find_directions(_NamedG("tinyfind", w_dim=16))

    # a registered '<model>-directions' wins over the cache file
    glasses = Direction("glasses", "mean_diff", np.ones(8), 1.0)
    reg_file = save_directions(tmp_path / "reg.safetensors", {glasses.key: glasses}, meta={})
    entry = pretrained.ModelEntry(name="tinyfind-directions", resolution=0, kind="other",
                                  url="http://127.0.0.1:9/tinyfind-directions.safetensors",
                                  sha256=pretrained.sha256_file(reg_file), size=reg_file.stat().st_size)
    pretrained.register(entry)
    try:
        cached = pretrained.cached_path("tinyfind-directions")  # already 'downloaded': no network needed
        cached.parent.mkdir(parents=True)
        cached.write_bytes(reg_file.read_bytes())
        found = find_directions(G)
        assert set(found) == {("glasses", "mean_diff")}
        assert set(load_directions("tinyfind-directions")) == {("glasses", "mean_diff")}
        cached.write_bytes(b"x" * entry.size)  # right size, wrong bytes: refetch from a dead URL fails
        with pytest.raises(ValueError, match="could not fetch 'tinyfind-directions'"):
            find_directions(G)
    finally:
        pretrained.unregister("tinyfind-directions")


# ------------------------------------------------------------------------------------------------
# CLI


def test_cli_on_a_tiny_generator_file(tiny32_G, tmp_path, capsys):
    from stylemix.checkpoints import save_generator
    from training.directions import main

    gpath = save_generator(tiny32_G, tmp_path / "tinygen.safetensors", provenance={"test": "editing"})
    out = tmp_path / "dirs" / "tiny.safetensors"
    rc = main(["--model", str(gpath), "--out", str(out), "--n", "120", "--seed", "1", "--threads", "1",
               "--classifier", "synthfaces64", "--min-count", "3", "--batch", "40", "--effect-n", "8", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    dirs = load_directions(out)
    assert len(dirs) >= 2 and dirs.w_dim == tiny32_G.w_dim
    assert dirs.meta["model"] == "tinygen" and dirs.meta["n"] == 120 and dirs.meta["seed"] == 1
    assert dirs.meta["classifier"] == "synthfaces64" and "table" in dirs.meta
    for d in dirs.values():
        assert set(d.effects) == {"+2", "-2"} and d.attribute in d.effects["+2"]
        assert "hair_long" in d.effects["+2"]  # every classifier label is read out
    # the written file moves a latent
    d = next(iter(dirs.values()))
    assert not np.allclose(edit(np.zeros((tiny32_G.num_ws, tiny32_G.w_dim), np.float32), d, 1.0), 0)


def test_cli_errors_are_one_line(tmp_path, capsys):
    from training.directions import main

    rc = main(["--model", str(tmp_path / "nope.safetensors"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: ") and err.count("\n") == 1


def test_cli_manifest_registers_the_file(tiny32_G, tmp_path, monkeypatch, capsys):
    import json

    from stylemix.checkpoints import save_generator
    from training.directions import main

    gpath = save_generator(tiny32_G, tmp_path / "tinyreg.safetensors", provenance={"test": "editing"})
    clf_path = pretrained.resolve("synthfaces64-classifier")
    fake_pretrained = tmp_path / "pretrained"
    fake_pretrained.mkdir()
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", fake_pretrained)
    args = ["--model", str(gpath), "--n", "60", "--threads", "1", "--min-count", "3", "--batch", "30",
            "--effect-n", "0", "--methods", "mean_diff", "--attributes", "has_beard", "--quiet",
            "--classifier", str(clf_path), "--manifest", "tinyreg-directions"]
    # --out outside pretrained/ is refused before any work
    assert main(args + ["--out", str(tmp_path / "elsewhere.safetensors")]) == 1
    assert "inside" in capsys.readouterr().err
    out = fake_pretrained / "tinyreg_directions.safetensors"
    assert main(args + ["--out", str(out)]) == 0, capsys.readouterr().err
    record = json.loads((fake_pretrained / "MANIFEST.json").read_text())["models"][0]
    assert record["name"] == "tinyreg-directions" and record["kind"] == "other"
    assert record["path"] == "tinyreg_directions.safetensors" and record["size"] == out.stat().st_size
    assert record["sha256"] == pretrained.sha256_file(out)
    # the registry now finds it by the generator's name
    G = _NamedG("tinyreg", w_dim=tiny32_G.w_dim)
    found = find_directions(G)
    assert set(found) == {("has_beard", "mean_diff")} and found.meta["effects"]["n"] == 0
