
import numpy as np
import pytest
import torch

from stylemix.inversion import ProjectionResult, project
from stylemix.networks.stylegan2 import Generator
from stylemix.mixing import to_uint8

STEPS = 30
FAST = dict(w_avg_samples=1000)  # fewer mapped z's than the official 10000, for test speed


@pytest.fixture(scope="module")
def G(tiny32_G):
    return tiny32_G


@pytest.fixture(scope="module")
def target(G):
    """An image G itself renders from known ws."""
    with torch.no_grad():
        ws = G.mapping(torch.from_numpy(np.random.RandomState(5).randn(1, G.z_dim)).float(), None)
        img = G.synthesis(ws, noise_mode="const")
    return img[0].clamp(-1, 1), ws[0]


@pytest.fixture(scope="module")
def runs(G, target):
    calls = []
    before = {k: v.clone() for k, v in G.state_dict().items()}
    flags = {k: p.requires_grad for k, p in G.named_parameters()}
    res_w = project(G, target[0], num_steps=STEPS, w_plus=False,
                    progress=lambda *a: calls.append(a), **FAST)
    res_wp = project(G, target[0], num_steps=STEPS, w_plus=True, **FAST)
    return res_w, res_wp, calls, before, flags


def test_projection_reduces_distance(runs, G):
    res, _, _, _, _ = runs
    assert isinstance(res, ProjectionResult)
    assert res.ws.shape == (G.num_ws, G.w_dim)
    assert torch.allclose(res.ws, res.ws[:1].expand_as(res.ws))  # W: one w on every layer
    assert res.image.shape == (32, 32, 3) and res.image.dtype == np.uint8
    assert res.steps == STEPS and len(res.history) == STEPS and not res.stopped_early
    assert res.distance < 0.5 * res.history[0], (res.history[0], res.distance)
    assert res.seconds > 0 and res.distance_kind.startswith("offline")
    assert set(res.noise) and all(k.endswith("noise_const") for k in res.noise)
    for v in res.noise.values():  # renormalised after every step
        assert abs(float(v.mean())) < 1e-4 and abs(float(v.square().mean()) - 1) < 1e-3


def test_image_is_rendering_of_result(runs, G):
    res = runs[0]
    G2 = Generator(**G.init_kwargs) if hasattr(G, "init_kwargs") else None
    if G2 is None:
        pytest.skip("Generator has no init_kwargs")
    sd = dict(G.state_dict())
    sd.update({k: v for k, v in res.noise.items()})
    G2.load_state_dict(sd)
    with torch.no_grad():
        img = to_uint8(G2.eval().synthesis(res.ws[None], noise_mode="const"))[0]
    assert np.abs(img.astype(int) - res.image.astype(int)).max() <= 1


def test_w_plus_not_worse(runs, G):
    res_w, res_wp = runs[0], runs[1]
    assert res_wp.ws.shape == (G.num_ws, G.w_dim) and res_wp.w_plus
    assert res_wp.distance <= res_w.distance * 1.05, (res_wp.distance, res_w.distance)


def test_progress_called(runs):
    calls = runs[2]
    assert [c[0] for c in calls] == list(range(STEPS))
    assert all(c[1] == STEPS and isinstance(c[2], float) for c in calls)


def test_G_unchanged(runs, G):
    before, flags = runs[3], runs[4]
    after = G.state_dict()
    assert set(after) == set(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), k
        assert not after[k].requires_grad or k in flags
    assert {k: p.requires_grad for k, p in G.named_parameters()} == flags
    assert not G.training


def test_early_stop(G, target):
    res = project(G, target[0], num_steps=STEPS, early_stop={"patience": 3, "min_delta": 1e9}, **FAST)
    assert res.stopped_early and res.steps == 4 and len(res.history) == 4


def test_uint8_target_custom_distance_and_ws_init(G, target):
    img_u8 = to_uint8(target[0][None])[0]
    big = np.repeat(np.repeat(img_u8, 2, axis=0), 2, axis=1)  # 64x64, resized to 32
    mse = lambda a, b: (a - b).square().mean(dim=(1, 2, 3))  # noqa: E731
    res = project(G, big, num_steps=5, distance=mse, init=target[1], w_plus=True, **FAST)
    assert res.distance_kind == "custom" and res.steps == 5
    assert res.ws.shape == (G.num_ws, G.w_dim)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_steps=0), "num_steps"),
    (dict(num_steps=2.5), "num_steps"),
    (dict(init="zeros"), "init"),
    (dict(init=torch.zeros(3, 5)), "init"),
    (dict(initial_learning_rate=-1.0), "initial_learning_rate"),
    (dict(w_avg_samples=1), "w_avg_samples"),
    (dict(early_stop={"patience": 0}), "patience"),
    (dict(early_stop={"min_delta": 0.1}), "early_stop"),
    (dict(distance="lpips"), "distance"),
    (dict(progress=3), "progress"),
])
def test_bad_args(G, target, kwargs, match):
    with pytest.raises(ValueError, match=match):
        project(G, target[0], **{**dict(num_steps=2, **FAST), **kwargs})


@pytest.mark.parametrize("bad", [
    np.zeros((32, 32, 4), np.uint8),
    np.zeros((32, 16, 3), np.uint8),
    torch.zeros(2, 3, 32, 32),
    torch.zeros(3, 32, 32, dtype=torch.int64),
    torch.full((3, 32, 32), 255.0),
    "image.png",
])
def test_bad_targets(G, bad):
    with pytest.raises(ValueError):
        project(G, bad, num_steps=2, **FAST)


def test_bad_generator(target):
    with pytest.raises(ValueError, match="Generator"):
        project(torch.nn.Linear(2, 2), target[0], num_steps=2)


# ------------------------------------------------------------------------------------------------
# invert(): encoder init + W+ optimisation

from stylemix import inversion  # noqa: E402
from stylemix.inversion import MODES, Inversion, invert, w_stats  # noqa: E402
from stylemix.networks.encoder import Encoder  # noqa: E402


@pytest.fixture(scope="module")
def enc(G):
    """A small encoder whose answers are w_avg plus a small random offset (untrained)."""
    torch.manual_seed(3)
    e = Encoder(G.img_resolution, G.num_ws, G.w_dim, channel_base=256, channel_max=64, feature_dim=64)
    w_avg, w_std = w_stats(G)
    with torch.no_grad():
        e.out.weight.normal_(0, 0.02)
        e.set_w_stats(w_avg, torch.full((G.w_dim,), w_std / G.w_dim ** 0.5))
    e.name = "test-encoder"
    return e.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def inversions(G, target, enc):
    before = {k: v.clone() for k, v in G.state_dict().items()}
    flags = {k: p.requires_grad for k, p in G.named_parameters()}
    calls = []
    mp = pytest.MonkeyPatch()
    mp.setitem(MODES, "best", dict(MODES["best"], steps=40))  # the real 'best' is longer; same code path
    try:
        out = {mode: invert(G, target[0], mode=mode, encoder=enc,
                            progress=(lambda *a: calls.append(a)) if mode == "balanced" else None)
               for mode in ("fast", "balanced", "best")}
    finally:
        mp.undo()
    return out, calls, before, flags


def test_invert_modes_shapes(inversions, G):
    out = inversions[0]
    for mode, inv in out.items():
        assert isinstance(inv, Inversion) and inv.mode == mode
        assert isinstance(inv.ws, torch.Tensor) and inv.ws.shape == (G.num_ws, G.w_dim)
        assert inv.ws.dtype == torch.float32 and inv.ws.device.type == "cpu" and not inv.ws.requires_grad
        assert inv.image.shape == (32, 32, 3) and inv.image.dtype == np.uint8
        assert isinstance(inv.distance, float) and isinstance(inv.psnr, float) and np.isfinite(inv.psnr)
        assert inv.seconds > 0 and inv.encoder == "test-encoder"
        assert inv.distance_kind.startswith("offline") or inv.distance_kind.startswith("lpips")
    assert out["fast"].steps == 0 and out["fast"].history == []
    assert out["balanced"].steps == MODES["balanced"]["steps"] == len(out["balanced"].history)
    assert out["best"].steps == 40


def test_invert_optimisation_improves(inversions):
    out = inversions[0]
    fast, bal, best = out["fast"], out["balanced"], out["best"]
    assert bal.init_distance == pytest.approx(fast.distance, rel=1e-4)  # starts at the encoder's answer
    assert bal.distance < 0.9 * fast.distance, (fast.distance, bal.distance)
    assert bal.psnr > fast.psnr
    assert best.distance <= bal.distance * 1.02, (bal.distance, best.distance)


def test_invert_image_is_the_const_render(inversions, G, target):
    for inv in inversions[0].values():
        with torch.no_grad():
            img = to_uint8(G.synthesis(inv.ws[None], noise_mode="const"))[0]
        assert np.array_equal(img, inv.image)  # what mixing / api.mix will render
        t255 = (target[0].permute(1, 2, 0).double() + 1) * 127.5
        mse = float((torch.from_numpy(img).double() - t255).square().mean())
        assert inv.psnr == pytest.approx(10 * np.log10(255 ** 2 / mse), abs=1e-6)


def test_invert_progress_called(inversions):
    calls = inversions[1]
    steps = MODES["balanced"]["steps"]
    assert [c[0] for c in calls] == list(range(steps))
    assert all(c[1] == steps and isinstance(c[2], float) for c in calls)


def test_invert_G_unchanged(inversions, G):
    before, flags = inversions[2], inversions[3]
    after = G.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert {k: p.requires_grad for k, p in G.named_parameters()} == flags
    assert all(p.grad is None for p in G.parameters())
    assert not G.training


def test_invert_without_encoder(G, target, monkeypatch, tmp_path):
    monkeypatch.setenv("STYLEMIX_CACHE", str(tmp_path))  # find_encoder finds nothing here
    monkeypatch.setitem(MODES, "balanced", dict(MODES["balanced"], steps=5))
    with pytest.raises(ValueError, match="training.encoder"):
        invert(G, target[0], mode="fast", encoder=False)
    with pytest.raises(ValueError, match="training.encoder"):
        invert(G, target[0], mode="fast")  # None: looked up, none found
    inv = invert(G, target[0], mode="balanced", encoder=False)
    assert inv.encoder is None and inv.steps == 5
    w_avg, _ = w_stats(G)
    with torch.no_grad():
        avg_img = G.synthesis(w_avg.expand(1, G.num_ws, G.w_dim), noise_mode="const")
    from stylemix import perceptual
    assert inv.init_distance == pytest.approx(float(perceptual.distance(avg_img, target[0][None])), rel=1e-4)


def test_invert_uint8_any_size(G, target, enc, monkeypatch):
    monkeypatch.setitem(MODES, "balanced", dict(MODES["balanced"], steps=3))
    img_u8 = to_uint8(target[0][None])[0]
    big = np.repeat(np.repeat(img_u8, 3, axis=0), 3, axis=1)  # 96x96 -> resized to 32
    inv = invert(G, big, mode="balanced", encoder=enc)
    assert inv.image.shape == (32, 32, 3) and inv.steps == 3


@pytest.mark.parametrize("bad", [
    np.zeros((32, 32, 4), np.uint8),
    np.zeros((32, 16, 3), np.uint8),
    torch.zeros(2, 3, 32, 32),
    torch.full((3, 32, 32), float("nan")),
    torch.full((3, 32, 32), 255.0),
    "image.png",
    None,
])
def test_invert_bad_images(G, enc, bad):
    with pytest.raises(ValueError):
        invert(G, bad, mode="fast", encoder=enc)


@pytest.mark.parametrize("kwargs, match", [
    (dict(mode="slow"), "mode"),
    (dict(mode=None), "mode"),
    (dict(progress=3), "progress"),
    (dict(encoder=3.5), "encoder"),
    (dict(seed="a"), "seed"),
])
def test_invert_bad_args(G, target, enc, kwargs, match):
    with pytest.raises(ValueError, match=match):
        invert(G, target[0], **{**dict(mode="fast", encoder=enc), **kwargs})


def test_invert_bad_generator(target, enc):
    with pytest.raises(ValueError, match="Generator"):
        invert(torch.nn.Linear(2, 2), target[0], encoder=enc)


def test_w_stats_cached_per_G(G):
    import copy

    G2 = copy.deepcopy(G)
    a = w_stats(G2, 500)
    assert G2 in inversion._W_STATS_CACHE
    calls = []
    orig = G2.mapping.forward
    G2.mapping.forward = lambda *a, **k: calls.append(1) or orig(*a, **k)
    b = w_stats(G2, 500)
    assert calls == [] and torch.equal(a[0], b[0]) and a[1] == b[1]  # no new mapping pass
    with torch.no_grad():
        next(G2.mapping.parameters()).mul_(1.5)  # weights change: fresh statistics
    c = w_stats(G2, 500)
    assert calls and not torch.equal(a[0], c[0])
    del G2.mapping.forward


@pytest.fixture(scope="module", autouse=True)
def _single_thread(one_thread):
    """Every test of this module on one thread (tiny models; the CPU is shared)."""
    yield
