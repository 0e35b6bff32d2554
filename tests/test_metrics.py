"""training.evaluation.metrics on constructed cases with known answers (no classifier weights)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from training.evaluation import metrics as M
from training.evaluation.metrics import (
    ClassifierFeatures, FeatureNetwork, InceptionFeatures, ReferenceStats, attribute_rates, both_rate,
    compare, evaluate_images, feature_stats, frechet_distance, frechet_distance_from_stats,
    identity_distance, kid, load_feature_network, precision_recall, save_report,
)


def _rotation(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def _fd_closed_form_commuting(mu_a, a, mu_b, b) -> float:
    """Covariances sharing eigenvectors with eigenvalues a, b."""
    return float(((mu_a - mu_b) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())


# ------------------------------------------------------------------------------------------------
# Attribute rates

def test_both_rate_all_none_and_mixed():
    n = 8
    all_both = {"has_beard": np.full(n, 0.9), "shaved": np.full(n, 0.8), "smile": np.zeros(n)}
    assert both_rate(all_both) == 1.0
    none = {"has_beard": np.full(n, 0.9), "shaved": np.full(n, 0.1)}
    assert both_rate(none) == 0.0
    mixed = {"has_beard": np.array([0.9, 0.9, 0.1, 0.6, 0.5, 0.49]),
             "shaved":    np.array([0.9, 0.2, 0.9, 0.7, 0.5, 0.99])}
    # both: rows 0, 3, 4 (0.5 counts as positive at threshold 0.5)
    assert both_rate(mixed) == pytest.approx(3 / 6)
    assert both_rate(mixed, threshold=0.8) == pytest.approx(1 / 6)
    assert both_rate(mixed, ("has_beard",)) == pytest.approx(4 / 6)


def test_attribute_rates_exact_and_validation():
    probs = {"has_beard": [0.1, 0.6, 0.7, 0.2], "shaved": torch.tensor([1.0, 0.0, 0.0, 0.0])}
    assert attribute_rates(probs) == {"has_beard": 0.5, "shaved": 0.25}
    assert attribute_rates(probs, threshold=0.65) == {"has_beard": 0.25, "shaved": 0.25}
    assert M.mean_probabilities(probs)["has_beard"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="shaved"):
        both_rate({"has_beard": [0.9]})
    with pytest.raises(ValueError, match="length"):
        attribute_rates({"a": [0.1, 0.2], "b": [0.3]})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        attribute_rates({"a": [1.5]})
    with pytest.raises(ValueError, match="threshold"):
        attribute_rates({"a": [0.5]}, threshold=2)


# ------------------------------------------------------------------------------------------------
# Frechet distance

def test_fd_identical_sets_is_zero_and_matches_stats_path():
    f = np.random.default_rng(0).standard_normal((300, 16)) * np.linspace(0.1, 3, 16) + 5
    assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-9)
    g = np.random.default_rng(1).standard_normal((200, 16))
    assert frechet_distance(f, g) == pytest.approx(
        frechet_distance_from_stats(*feature_stats(f), *feature_stats(g)), rel=1e-12)


def test_fd_diagonal_closed_form_and_symmetric():
    rng = np.random.default_rng(2)
    d = 10
    mu_a, mu_b = rng.standard_normal(d), rng.standard_normal(d)
    a, b = rng.uniform(0.1, 4, d), rng.uniform(0.1, 4, d)
    a[:2] = 0.0  # a singular covariance too
    expected = _fd_closed_form_commuting(mu_a, a, mu_b, b)
    fd_ab = frechet_distance_from_stats(mu_a, np.diag(a), mu_b, np.diag(b))
    fd_ba = frechet_distance_from_stats(mu_b, np.diag(b), mu_a, np.diag(a))
    assert fd_ab == pytest.approx(expected, rel=1e-10)
    assert fd_ba == pytest.approx(expected, rel=1e-10)


def test_fd_non_diagonal_commuting_closed_form():
    rng = np.random.default_rng(3)
    d = 12
    q = _rotation(d, 4)
    a, b = rng.uniform(0.01, 5, d), rng.uniform(0.01, 5, d)
    sa, sb = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu_a, mu_b = rng.standard_normal(d), rng.standard_normal(d)
    expected = _fd_closed_form_commuting(mu_a, a, mu_b, b)
    assert frechet_distance_from_stats(mu_a, sa, mu_b, sb) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance_from_stats(mu_b, sb, mu_a, sa) == pytest.approx(expected, rel=1e-9)


def test_fd_non_commuting_2x2_closed_form():
    # For 2x2 M with non-negative eigenvalues: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)).
    sa = np.array([[2.0, 0.7], [0.7, 1.0]])
    sb = np.array([[0.5, -0.3], [-0.3, 3.0]])
    assert not np.allclose(sa @ sb, sb @ sa)
    tr_sqrt = math.sqrt(np.trace(sa @ sb) + 2 * math.sqrt(np.linalg.det(sa) * np.linalg.det(sb)))
    mu_a, mu_b = np.array([1.0, 2.0]), np.array([-1.0, 0.5])
    expected = float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * tr_sqrt)
    assert frechet_distance_from_stats(mu_a, sa, mu_b, sb) == pytest.approx(expected, rel=1e-12)
    assert frechet_distance_from_stats(mu_b, sb, mu_a, sa) == pytest.approx(expected, rel=1e-12)


def test_fd_random_psd_matches_eigenvalues_of_product_and_is_symmetric():
    rng = np.random.default_rng(5)
    d = 20
    x, y = rng.standard_normal((d, d)), rng.standard_normal((d, d))
    sa, sb = x @ x.T / d, y @ y.T / d
    ev = np.linalg.eigvals(sa @ sb)
    tr_sqrt = np.sqrt(np.clip(ev.real, 0, None)).sum()
    expected = np.trace(sa) + np.trace(sb) - 2 * tr_sqrt
    mu = np.zeros(d)
    assert frechet_distance_from_stats(mu, sa, mu, sb) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance_from_stats(mu, sb, mu, sa) == pytest.approx(expected, rel=1e-9)


def test_fd_fewer_samples_than_dims():
    rng = np.random.default_rng(6)
    f = rng.standard_normal((10, 64))
    assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-9)
    g = rng.standard_normal((12, 64)) + 1.0
    v1, v2 = frechet_distance(f, g), frechet_distance(g, f)
    assert math.isfinite(v1) and v1 > 0
    assert v1 == pytest.approx(v2, rel=1e-9)


def test_fd_feature_stats_from_sampled_gaussians():
    # Large samples of known Gaussians land near the closed form.
    rng = np.random.default_rng(7)
    d, n = 4, 40000
    a, b = np.array([1.0, 2.0, 0.5, 3.0]), np.array([2.0, 0.5, 0.5, 1.0])
    fa = rng.standard_normal((n, d)) * np.sqrt(a)
    fb = rng.standard_normal((n, d)) * np.sqrt(b) + 1.0
    expected = _fd_closed_form_commuting(np.zeros(d), a, np.ones(d), b)
    assert frechet_distance(fa, fb) == pytest.approx(expected, rel=0.03)


def test_fd_validation():
    with pytest.raises(ValueError, match="dimensions"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="2-D"):
        frechet_distance(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match="symmetric"):
        frechet_distance_from_stats(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), np.zeros(2), np.eye(2))


# ------------------------------------------------------------------------------------------------
# KID

def _kid_brute_force(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    k = lambda p, q: (p @ q / d + 1) ** 3  # noqa: E731
    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_unbiased_mmd_formula():
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((7, 3)), rng.standard_normal((7, 3)) + 0.5
    # One subset of the full size is a permutation of each set: the estimate is the full one.
    assert kid(x, y, num_subsets=1, max_subset_size=7) == pytest.approx(_kid_brute_force(x, y), rel=1e-10)
    assert kid(y, x, num_subsets=3, max_subset_size=7) == pytest.approx(_kid_brute_force(x, y), rel=1e-10)


def test_kid_same_distribution_near_zero_shifted_positive():
    rng = np.random.default_rng(9)
    d = 16
    a, b = rng.standard_normal((600, d)), rng.standard_normal((600, d))
    same = kid(a, b, num_subsets=10, max_subset_size=150)
    shifted = kid(a, b + 1.0, num_subsets=10, max_subset_size=150)
    assert abs(same) < 0.05  # unbiased: scatters around 0 (shifted: ~8)
    assert shifted > 1.0
    mean, std = kid(a, b + 1.0, num_subsets=10, max_subset_size=150, return_std=True)
    assert mean == shifted and std >= 0
    assert kid(a, b, num_subsets=5, max_subset_size=100, seed=1) == kid(a, b, num_subsets=5, max_subset_size=100, seed=1)


def test_kid_validation():
    with pytest.raises(ValueError, match="subsets"):
        kid(np.zeros((5, 2)), np.zeros((5, 2)), max_subset_size=1)


# ------------------------------------------------------------------------------------------------
# Precision / recall

def test_precision_recall_identical_sets():
    f = np.random.default_rng(10).standard_normal((80, 8)) * 3 + 100
    pr = precision_recall(f, f, k=3, row_batch=17)
    assert pr["precision"] == 1.0 and pr["recall"] == 1.0 and pr["k"] == 3


def test_precision_recall_far_apart():
    rng = np.random.default_rng(11)
    real, fake = rng.standard_normal((60, 5)), rng.standard_normal((50, 5)) + 1000.0
    pr = precision_recall(real, fake, k=3)
    assert pr["precision"] == 0.0 and pr["recall"] == 0.0


def test_precision_recall_half_overlap():
    # real = cluster A + cluster B, fake = the same A points + cluster C; A, B, C far apart.
    rng = np.random.default_rng(12)
    d, n = 6, 40
    a = rng.standard_normal((n, d))
    b = rng.standard_normal((n, d)) + 500.0
    c = rng.standard_normal((n, d)) - 500.0
    real, fake = np.concatenate([a, b]), np.concatenate([a, c])
    pr = precision_recall(real, fake, k=3, row_batch=13)
    assert pr["precision"] == 0.5 and pr["recall"] == 0.5
    # A quarter of the fakes in the real manifold -> precision 1/4.
    fake2 = np.concatenate([a[:10], c[:30]])
    assert precision_recall(real, fake2, k=3)["precision"] == 0.25


def test_precision_recall_validation():
    with pytest.raises(ValueError, match="k must be"):
        precision_recall(np.zeros((3, 2)), np.zeros((3, 2)), k=3)


# ------------------------------------------------------------------------------------------------
# Identity

def test_identity_distance_zero_for_identical_and_known_values():
    e = np.random.default_rng(13).standard_normal((5, 8))
    for metric in ("cosine", "l2"):
        r = identity_distance(e, e, metric=metric)
        assert r["metric"] == metric and r["mean"] == pytest.approx(0.0, abs=1e-12)
    a = np.array([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
    b = np.array([[0.0, 1.0], [1.0, 1.0], [5.0, 0.0], [-1.0, 0.0]])
    cos = identity_distance(a, b, metric="cosine")
    assert cos["per_pair"] == pytest.approx([1.0, 1 - 1 / math.sqrt(2), 0.0, 2.0])
    assert cos["mean"] == pytest.approx((1.0 + 1 - 1 / math.sqrt(2) + 0.0 + 2.0) / 4)
    l2 = identity_distance(a, b)  # l2 by default
    assert l2["metric"] == "l2" and l2["per_pair"] == pytest.approx([math.sqrt(2), 1.0, 3.0, 2.0])
    with pytest.raises(ValueError, match="metric"):
        identity_distance(a, b, metric="manhattan")
    with pytest.raises(ValueError, match="zero"):
        identity_distance(np.zeros((1, 2)), np.ones((1, 2)), metric="cosine")
    with pytest.raises(ValueError, match="shape"):
        identity_distance(a, b[:3])


# ------------------------------------------------------------------------------------------------
# Feature networks

class TinyDetector(torch.nn.Module):
    """Mimics inception-2015-12-05.pt: uint8 NCHW in; features (channel means and stds) with
    return_features=True, else 'logits'."""

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        assert img.dtype == torch.uint8
        assert img.shape[1] == 3
        x = img.to(torch.float32)
        feats = torch.cat([x.mean(dim=[2, 3]), x.std(dim=[2, 3])], dim=1)
        if return_features:
            return feats
        return torch.softmax(feats, dim=1)


def _tiny_file(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in torch >= 2.10
        torch.jit.script(TinyDetector()).save(str(path))
    return path


class FakeClassifier:
    """Stands in for the attribute classifier: probabilities from colour, features = channel means."""

    name = "fake64"

    def predict(self, images):
        x = np.asarray(images, dtype=np.float64)
        return {"has_beard": (x[..., 0].mean(axis=(1, 2)) > 127).astype(np.float64),
                "shaved": (x[..., 1].mean(axis=(1, 2)) > 127).astype(np.float64)}

    def features(self, images):
        x = np.asarray(images, dtype=np.float64)
        return np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2))], axis=1)

    def identity(self, images):
        return np.asarray(images, dtype=np.float64).reshape(len(images), -1)[:, :6] + 1.0


def _images(n, seed, lo=0, hi=256, res=8):
    return np.random.default_rng(seed).integers(lo, hi, (n, res, res, 3), dtype=np.uint8)


def test_inception_wrapper_with_tiny_torchscript(tmp_path):
    net = InceptionFeatures.from_file(_tiny_file(tmp_path / "tiny-detector.pt"), batch_size=3)
    assert isinstance(net, FeatureNetwork) and net.name == "tiny-detector"
    imgs = _images(7, 0)
    f = net.features(imgs)
    assert f.shape == (7, 6) and f.dtype == np.float64
    np.testing.assert_allclose(f[:, :3], imgs.reshape(7, -1, 3).mean(axis=1), rtol=1e-5)
    grey = imgs[..., :1]
    np.testing.assert_allclose(net(grey)[:, :3], np.repeat(grey.reshape(7, -1).mean(axis=1)[:, None], 3, 1), rtol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        net.features(imgs.astype(np.float32))
    with pytest.raises(ValueError, match="batch"):
        net.features(imgs[0])


def test_inception_from_file_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        InceptionFeatures.from_file(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torchscript archive")
    with pytest.raises(ValueError, match="TorchScript"):
        InceptionFeatures.from_file(junk)
    state = tmp_path / "state.pt"
    torch.save({"w": torch.zeros(2)}, state)
    with pytest.raises(ValueError, match="TorchScript"):
        InceptionFeatures.from_file(state)


def test_official_name_with_other_bytes_is_renamed(tmp_path):
    path = _tiny_file(tmp_path / M.INCEPTION_FILE)
    with pytest.warns(UserWarning, match="sha256"):
        net = InceptionFeatures.from_file(path)
    assert net.name.startswith(M.INCEPTION_NAME + "-sha") and net.name != M.INCEPTION_NAME


def test_standard_file_recognised_by_sha256_whatever_its_name(tmp_path, monkeypatch):
    path = _tiny_file(tmp_path / "renamed.pt")
    from stylemix.pretrained import sha256_file

    monkeypatch.setattr(M, "INCEPTION_SHA256", sha256_file(path))  # pretend the tiny file is the standard one
    assert InceptionFeatures.from_file(path).name == M.INCEPTION_NAME
    assert InceptionFeatures.from_file(path, name="custom").name == "custom"


@pytest.fixture
def no_inception(tmp_path, monkeypatch):
    monkeypatch.setenv("STYLEMIX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(M.INCEPTION_ENV, raising=False)
    return tmp_path


def test_classifier_net_name():
    class Loaded:
        path = "/somewhere/pretrained/synthfaces64.safetensors"

        def features(self, images):
            return np.zeros((len(images), 2))

    assert M.classifier_net_name(FakeClassifier()) == "fake64-classifier"
    assert M.classifier_net_name(Loaded()) == "synthfaces64-classifier"
    assert ClassifierFeatures(Loaded(), name="x").name == "x"
    grey = _images(2, 0)[..., :1]
    assert ClassifierFeatures(FakeClassifier()).features(grey).shape == (2, 6)  # grey -> RGB


def test_classifier_net_used_and_named_without_inception(no_inception):
    assert M.find_inception() is None
    net = load_feature_network("inception", classifier=FakeClassifier())
    assert isinstance(net, ClassifierFeatures) and net.name == "fake64-classifier"
    assert net.features(_images(3, 1)).shape == (3, 6)
    with pytest.raises(ValueError, match="prefer"):
        load_feature_network("vgg", classifier=FakeClassifier())


def test_inception_found_by_argument_env_and_cache(no_inception, monkeypatch):
    tiny = _tiny_file(no_inception / "tiny-inception.pt")
    net = load_feature_network("inception", tiny, classifier=FakeClassifier())
    assert isinstance(net, InceptionFeatures) and net.name == "tiny-inception"
    # prefer='classifier' ignores the file
    assert load_feature_network("classifier", tiny, classifier=FakeClassifier()).name == "fake64-classifier"
    monkeypatch.setenv(M.INCEPTION_ENV, str(tiny))
    assert load_feature_network(classifier=FakeClassifier()).name == "tiny-inception"
    monkeypatch.setenv(M.INCEPTION_ENV, str(no_inception / "nowhere.pt"))
    with pytest.raises(ValueError, match=M.INCEPTION_ENV):
        load_feature_network(classifier=FakeClassifier())
    monkeypatch.delenv(M.INCEPTION_ENV)
    with pytest.raises(ValueError, match="inception_path"):
        load_feature_network("inception", no_inception / "nowhere.pt", classifier=FakeClassifier())
    # the cache layout of stylemix.pretrained.fetch(): $STYLEMIX_CACHE/<name>/<file>
    cached = no_inception / "cache" / M.INCEPTION_NAME / M.INCEPTION_FILE
    cached.parent.mkdir(parents=True)
    _tiny_file(cached)
    assert M.find_inception() == cached
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny stand-in is not the official file
        net = load_feature_network(classifier=FakeClassifier())
    assert isinstance(net, InceptionFeatures)


# ------------------------------------------------------------------------------------------------
# Stats tagged with their network; compare; evaluate_images; JSON

class ShiftNet(FeatureNetwork):
    def __init__(self, name, shift=0.0):
        self.name, self.shift = name, shift

    def features(self, images, *, batch_size=None):
        x = M._images_uint8_nhwc(images).astype(np.float64)
        return np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2))], axis=1) + self.shift


def test_compare_refuses_stats_from_another_network(tmp_path):
    real, fake = _images(30, 2), _images(30, 3)
    net_a, net_b = ShiftNet("net-a"), ShiftNet("net-b", shift=10.0)
    stats_a = ReferenceStats.from_images(real, net_a)
    with pytest.raises(ValueError, match="net-a.*net-b"):
        compare(stats_a, fake, net_b)
    saved = ReferenceStats.load(stats_a.save(tmp_path / "ref.npz"))
    assert saved.feature_net == "net-a" and saved.num_items == 30
    np.testing.assert_array_equal(saved.features, stats_a.features)
    with pytest.raises(ValueError, match="net-a"):
        compare(real, saved, net_b)
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(ValueError, match="ReferenceStats"):
        ReferenceStats.load(tmp_path / "junk.npz")
    r = compare(saved, fake, net_a, kid_subsets=5, kid_subset_size=20)
    assert r["feature_net"] == "net-a" and r["fd_is_fid"] is False
    assert r["fd"] == pytest.approx(frechet_distance(net_a.features(real), net_a.features(fake)), rel=1e-12)
    # same net for both sets: images on both sides
    same = compare(real, real, net_b, kid_subsets=5, kid_subset_size=20)
    assert same["fd"] == pytest.approx(0.0, abs=1e-6) and same["precision"] == 1.0 and same["recall"] == 1.0
    # stats without features: FD only
    lean = ReferenceStats.from_images(real, net_a, keep_features=False)
    r2 = compare(lean, fake, net_a)
    assert r2["kid"] is None and r2["precision"] is None and r2["fd"] == pytest.approx(r["fd"])


def test_evaluate_images_report(tmp_path, no_inception):
    imgs = _images(24, 5, hi=100)  # dark: no attribute
    imgs[:6, ..., 0] = 250   # beard
    imgs[:6, ..., 1] = 250   # and shaved -> 6 of 24 with both
    imgs[6:9, ..., 0] = 250  # beard only
    clf = FakeClassifier()
    report = evaluate_images(imgs, reference_images=imgs, classifier=clf, pairs=imgs,
                             kid_subsets=4, kid_subset_size=10)
    assert report["feature_net"] == "fake64-classifier"
    assert report["distribution"]["feature_net"] == "fake64-classifier"
    assert report["attributes"]["both_rate"] == pytest.approx(6 / 24)
    assert report["attributes"]["rates"]["has_beard"] == pytest.approx(9 / 24)
    assert report["distribution"]["fd"] == pytest.approx(0.0, abs=1e-6)  # features ~100: round-off
    assert report["distribution"]["precision"] == 1.0 and report["distribution"]["recall"] == 1.0
    assert report["identity"]["l2"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert report["identity"]["cosine"]["mean"] == pytest.approx(0.0, abs=1e-12)
    shifted = imgs.copy()
    shifted[:, 0, 0, 0] = imgs[:, 0, 0, 0] // 2  # the fake identity embedding reads the first pixels
    expected = np.abs(imgs[:, 0, 0, 0].astype(float) - shifted[:, 0, 0, 0]).mean()
    r_id = evaluate_images(imgs, classifier=clf, pairs=shifted)
    assert r_id["identity"]["l2"]["mean"] == pytest.approx(expected)
    assert len(r_id["identity"]["l2"]["per_pair"]) == 24
    json.dumps(report, allow_nan=False)  # JSON-able as is

    # reference stats made by another network are refused; made by this one, accepted
    other = ReferenceStats.from_images(imgs, ShiftNet("other-net"))
    with pytest.raises(ValueError, match="other-net"):
        evaluate_images(imgs, reference_stats=other, classifier=clf)
    ref = ReferenceStats.from_images(imgs[::-1].copy(), ClassifierFeatures(clf))
    r2 = evaluate_images(imgs, reference_stats=ref, classifier=clf, kid_subsets=2, kid_subset_size=10)
    assert r2["feature_net"] == "fake64-classifier" and r2["distribution"]["fd"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="not both"):
        evaluate_images(imgs, reference_images=imgs, reference_stats=ref, classifier=clf)
    no_ref = evaluate_images(imgs, classifier=clf)
    assert no_ref["distribution"] is None and no_ref["identity"] is None

    out = save_report(tmp_path / "reports" / "eval.json", report)
    assert json.loads(out.read_text()) == report
    assert sorted(p.name for p in out.parent.iterdir()) == ["eval.json"]  # no temporary left behind


def test_save_report_converts_numpy_and_refuses_objects(tmp_path):
    out = save_report(tmp_path / "r.json", {"a": np.float32(1.5), "b": np.arange(3), "c": float("nan"),
                                            "d": np.bool_(True)})
    assert json.loads(out.read_text()) == {"a": 1.5, "b": [0, 1, 2], "c": None, "d": True}
    with pytest.raises(ValueError, match="JSON"):
        save_report(tmp_path / "bad.json", {"x": object()})
    assert not (tmp_path / "bad.json").exists()
