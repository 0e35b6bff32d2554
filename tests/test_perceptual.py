import pytest
import torch
import torch.nn.functional as F

from stylemix import perceptual
from stylemix.perceptual import VGG16Features, distance, which

RES = 32


@pytest.fixture(autouse=True)
def _no_real_weights(monkeypatch, tmp_path):
    """Make sure no VGG16 file on this machine is picked up: the offline path is what runs here."""
    monkeypatch.delenv(perceptual.VGG16_ENV, raising=False)
    monkeypatch.delenv(perceptual.LPIPS_ENV, raising=False)
    monkeypatch.setenv("STYLEMIX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def _face_like(n=2, res=RES, seed=0):
    """Structured images in [-1, 1]: smooth gradients, an ellipse with sharp edges, stripes."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, res), torch.linspace(-1, 1, res), indexing="ij")
    imgs = []
    for i in range(n):
        phase = float(torch.rand(1, generator=g)) * 6
        ell = ((xx / 0.6) ** 2 + (yy / 0.8) ** 2 < 1).float()
        stripes = torch.sin(xx * 9 + phase) * 0.3
        base = torch.stack([0.5 * ell - 0.2 + stripes, 0.3 * ell + 0.2 * yy, -0.4 * ell + 0.3 * xx])
        imgs.append(base.clamp(-1, 1))
    return torch.stack(imgs)


def _blur(x, sigma):
    r = torch.arange(-6, 7, dtype=torch.float32)
    k = torch.exp(-r ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    x = F.pad(x, (6, 6, 6, 6), mode="reflect")
    x = F.conv2d(x, k.reshape(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    return F.conv2d(x, k.reshape(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)


def test_which_reports_offline_here():
    assert which() == "offline"
    assert perceptual.describe().startswith("offline")
    # the VGG16 registry entry is registered lazily, with its full sha256
    from stylemix import pretrained
    e = pretrained.get_entry(perceptual.VGG16_NAME)
    assert e.url.endswith("vgg16-397923af.pth") and e.sha256.startswith("397923af")


@pytest.mark.parametrize("res", [16, 32, 64])
def test_identical_is_zero(res):
    x = _face_like(res=res)
    assert distance(x, x).shape == (2,)
    assert float(distance(x, x).abs().max()) <= 1e-6
    assert float(distance(x, x.clone(), kind="offline").abs().max()) <= 1e-6


def test_grows_with_blur_and_noise():
    x = _face_like(n=1)
    d_blur = [float(distance(x, _blur(x, s))) for s in (0.5, 1.0, 2.0, 3.0)]
    assert all(a < b for a, b in zip(d_blur, d_blur[1:])), d_blur
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    d_noise = [float(distance(x, x + s * noise)) for s in (0.02, 0.05, 0.1, 0.2, 0.4)]
    assert all(a < b for a, b in zip(d_noise, d_noise[1:])), d_noise
    assert d_noise[0] > 0


def test_symmetric_and_batched():
    a, b = _face_like(seed=0), _face_like(seed=1) * 0.7
    d_ab, d_ba = distance(a, b), distance(b, a)
    torch.testing.assert_close(d_ab, d_ba, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(distance(a[1:], b[1:]), d_ab[1:], rtol=1e-5, atol=1e-6)


def test_differentiable():
    a = _face_like(seed=0)
    b = _blur(a, 1.5).requires_grad_(True)
    a = a.clone().requires_grad_(True)
    distance(a, b).sum().backward()
    for t in (a, b):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    # identical inputs (the minimum) still give finite gradients
    c = a.detach().clone().requires_grad_(True)
    distance(c, a.detach()).sum().backward()
    assert torch.isfinite(c.grad).all()


def test_offline_terms_and_weights_documented():
    m = perceptual.get_metric("offline")
    a, b = _face_like(seed=0), _face_like(seed=1)
    terms = m.terms(m.embed(a), m.embed(b))
    assert set(terms) == set(perceptual.OFFLINE_WEIGHTS)
    total = sum(perceptual.OFFLINE_WEIGHTS[k] * v for k, v in terms.items())
    torch.testing.assert_close(total, distance(a, b, kind="offline"))
    assert all(float(v.min()) >= 0 for v in terms.values())


def test_bad_inputs():
    x = _face_like()
    with pytest.raises(ValueError, match="16"):
        distance(x[..., :8, :8], x[..., :8, :8])
    with pytest.raises(ValueError, match="same shape"):
        distance(x, x[:1])
    with pytest.raises(ValueError, match="kind"):
        distance(x, x, kind="vgg")
    with pytest.raises(ValueError, match="NCHW"):
        distance(x[0], x[0])
    with pytest.raises(ValueError, match="lpips"):
        distance(x, x, kind="lpips")


# ---- LPIPS path, with a random VGG16 (torchvision key layout) and a fake LPIPS weight file -------

@pytest.fixture(scope="module")
def fake_lpips_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("lpips")
    torch.manual_seed(0)
    vgg = VGG16Features()
    for m in vgg.modules():
        if isinstance(m, torch.nn.Conv2d):  # He init keeps activations alive through 13 layers
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            torch.nn.init.zeros_(m.bias)
    state = dict(vgg.state_dict())
    state["classifier.0.weight"] = torch.zeros(4, 4)  # torchvision files also hold the classifier
    assert "features.0.weight" in state and "features.28.bias" in state
    torch.save(state, d / "vgg16-397923af.pth")
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) * 0.1
           for i, c in enumerate((64, 128, 256, 512, 512))}
    torch.save(lin, d / "vgg.pth")
    return d / "vgg16-397923af.pth", d / "vgg.pth"


def test_lpips_path_by_argument(fake_lpips_files):
    vgg, lin = fake_lpips_files
    kw = dict(kind="lpips", vgg16_path=vgg, lpips_path=lin)
    assert which(**kw) == "lpips"
    assert perceptual.describe(**kw).startswith("lpips")
    a, b = _face_like(seed=0), _face_like(seed=1)
    assert float(distance(a, a, **kw).abs().max()) <= 1e-6
    d_ab = distance(a, b, **kw)
    assert d_ab.shape == (2,) and float(d_ab.min()) > 0
    torch.testing.assert_close(d_ab, distance(b, a, **kw), rtol=1e-5, atol=1e-6)
    a.requires_grad_(True)
    distance(a, b, **kw).sum().backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_lpips_path_matches_formula(fake_lpips_files):
    vgg_path, lin_path = fake_lpips_files
    vgg = VGG16Features().load_torchvision(vgg_path).eval()
    lin = torch.load(lin_path, weights_only=True)
    a, b = _face_like(seed=0), _face_like(seed=2)
    shift = torch.tensor([-.030, -.088, -.188]).reshape(1, 3, 1, 1)
    scale = torch.tensor([.458, .448, .450]).reshape(1, 3, 1, 1)
    fa, fb = vgg.taps((a - shift) / scale), vgg.taps((b - shift) / scale)
    want = 0
    for i, (x, y) in enumerate(zip(fa, fb)):
        x = x / (x.norm(dim=1, keepdim=True) + 1e-10)
        y = y / (y.norm(dim=1, keepdim=True) + 1e-10)
        want = want + F.conv2d((x - y) ** 2, lin[f"lin{i}.model.1.weight"]).mean(dim=(1, 2, 3))
    got = distance(a, b, kind="lpips", vgg16_path=vgg_path, lpips_path=lin_path)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_lpips_auto_by_env(fake_lpips_files, monkeypatch):
    vgg, lin = fake_lpips_files
    monkeypatch.setenv(perceptual.VGG16_ENV, str(vgg))
    monkeypatch.setenv(perceptual.LPIPS_ENV, str(lin))
    assert which() == "lpips"
    x = _face_like()
    assert float(distance(x, x).abs().max()) <= 1e-6
    monkeypatch.setenv(perceptual.VGG16_ENV, str(vgg) + ".missing")
    with pytest.raises(ValueError, match="STYLEMIX_VGG16"):
        which()


def test_lpips_bad_files(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"foo": torch.zeros(1)}, bad)
    lin = tmp_path / "lin.pth"
    torch.save({"lin0.model.1.weight": torch.zeros(1, 64, 1, 1)}, lin)
    with pytest.raises(ValueError):
        distance(_face_like(), _face_like(), kind="lpips", vgg16_path=bad, lpips_path=lin)
