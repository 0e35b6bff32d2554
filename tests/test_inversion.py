
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
