
import numpy as np
import pytest
import torch

from stylemix.mixing import (layer_groups, layer_label, layer_resolutions, layer_rows, layer_strip, mix,
                             style_mix_grid, to_uint8)

NUM_WS, W_DIM = 8, 4


@pytest.fixture(scope="module")
def G(tiny32_G):
    return tiny32_G


@pytest.fixture(scope="module")
def ws_ab(G):
    with torch.no_grad():
        ws = G.mapping(torch.from_numpy(np.random.RandomState(0).randn(2, G.z_dim)).float(), None)
    return ws[0], ws[1]


def _synth(G, ws):
    with torch.no_grad():
        return to_uint8(G.synthesis(ws.reshape(-1, G.num_ws, G.w_dim), noise_mode="const"))


def _ab(kind, shape_a=(3, NUM_WS, W_DIM), shape_b=(3, NUM_WS, W_DIM)):
    rng = np.random.RandomState(1)
    a = rng.randn(*shape_a).astype(np.float32)
    b = rng.randn(*shape_b).astype(np.float32) + 10  # never equal to a
    return (a, b) if kind == "numpy" else (torch.from_numpy(a), torch.from_numpy(b))


# ---------------------------------------------------------------------------------------- mix


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_mix_replaces_exactly_listed_rows(kind):
    a, b = _ab(kind)
    a0, b0 = np.asarray(a).copy(), np.asarray(b).copy()
    out = mix(a, b, [1, 5, 7])
    assert type(out) is type(a) and out.shape == a.shape
    o = np.asarray(out)
    listed = [1, 5, 7]
    rest = [i for i in range(NUM_WS) if i not in listed]
    np.testing.assert_array_equal(o[:, listed], b0[:, listed])
    np.testing.assert_array_equal(o[:, rest], a0[:, rest])
    np.testing.assert_array_equal(np.asarray(a), a0)  # inputs untouched
    np.testing.assert_array_equal(np.asarray(b), b0)
    np.testing.assert_array_equal(np.asarray(mix(a, b, [])), a0)
    np.testing.assert_array_equal(np.asarray(mix(a, b, range(NUM_WS))), b0)
    # group names, alone or mixed with indices; duplicates are fine
    np.testing.assert_array_equal(np.asarray(mix(a, b, "coarse")), np.asarray(mix(a, b, [0, 1, 2])))
    np.testing.assert_array_equal(np.asarray(mix(a, b, ["middle", 0, 3])),
                                  np.asarray(mix(a, b, [0, 3, 4, 5, 6, 7])))
    np.testing.assert_array_equal(np.asarray(mix(a, b, 4)), np.asarray(mix(a, b, [4])))


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_mix_weights(kind):
    a, b = _ab(kind)
    an, bn = np.asarray(a), np.asarray(b)
    o = np.asarray(mix(a, b, [2, 6], weights=[0.25, 1.0]))
    np.testing.assert_allclose(o[:, 2], 0.75 * an[:, 2] + 0.25 * bn[:, 2], rtol=1e-6)
    np.testing.assert_array_equal(o[:, 6], bn[:, 6])
    rest = [0, 1, 3, 4, 5, 7]
    np.testing.assert_array_equal(o[:, rest], an[:, rest])
    o = np.asarray(mix(a, b, ["coarse", 5], weights=[0.5, 0.0]))
    np.testing.assert_allclose(o[:, :3], 0.5 * (an[:, :3] + bn[:, :3]), rtol=1e-6)
    np.testing.assert_array_equal(o[:, 5], an[:, 5])
    np.testing.assert_array_equal(np.asarray(mix(a, b, [3], weights=1)), np.asarray(mix(a, b, [3])))
    np.testing.assert_array_equal(np.asarray(mix(a, b, [3], weights=0.0)), an)


def test_mix_torch_keeps_autograd():
    a, b = _ab("torch")
    a.requires_grad_(True)
    mix(a, b, [0], weights=0.5).sum().backward()
    assert a.grad[:, 0].eq(0.5).all() and a.grad[:, 1:].eq(1).all()


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_mix_broadcasts(kind):
    a, b = _ab(kind, (NUM_WS, W_DIM), (3, NUM_WS, W_DIM))
    out = mix(a, b, [0])
    assert tuple(out.shape) == (3, NUM_WS, W_DIM)
    np.testing.assert_array_equal(np.asarray(out)[:, 1:], np.broadcast_to(np.asarray(a)[1:], (3, NUM_WS - 1, W_DIM)))
    np.testing.assert_array_equal(np.asarray(out)[:, 0], np.asarray(b)[:, 0])
    assert tuple(mix(b, a[None], [0]).shape) == (3, NUM_WS, W_DIM)
    assert tuple(mix(a, a, [0]).shape) == (NUM_WS, W_DIM)  # both unbatched -> unbatched


def test_mix_numpy_and_torch_together():
    a, b = _ab("numpy")
    out = mix(a, torch.from_numpy(b), [2])
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, mix(a, b, [2]))


@pytest.mark.parametrize("layers, weights, match", [
    ([8], None, "8"),
    ([-1], None, "-1"),
    (["coarse", "hair"], None, "'hair'"),
    (["fine"], None, "'fine'"),          # empty at 32 px
    ([1.5], None, "1.5"),
    ([True], None, "True"),
    (None, None, "None"),
    ([1, 2], [0.5, 1.5], "1.5"),
    ([1, 2], -0.1, "-0.1"),
    ([1, 2], float("nan"), "nan"),
    ([1, 2], [0.5], r"\(1,\)"),
    (["coarse", 1], [0.5, 1.0], "layer 1"),  # row 1 listed twice, different weights
])
def test_mix_errors(layers, weights, match):
    a, b = _ab("numpy")
    with pytest.raises(ValueError, match=match):
        mix(a, b, layers, weights=weights)


def test_mix_shape_errors():
    a, b = _ab("numpy")
    with pytest.raises(ValueError, match=r"\(10, 4\)"):
        mix(a, np.zeros((3, 10, W_DIM), np.float32), [0])
    with pytest.raises(ValueError, match=r"\(8, 5\)"):
        mix(a, np.zeros((NUM_WS, 5), np.float32), [0])
    with pytest.raises(ValueError, match=r"\(2\)"):
        mix(a, np.zeros((2, NUM_WS, W_DIM), np.float32), [0])
    with pytest.raises(ValueError, match=r"\(8,\)"):
        mix(a, np.zeros(NUM_WS, np.float32), [0])
    with pytest.raises(ValueError, match="list"):
        mix(a.tolist(), b, [0])


# --------------------------------------------------------------------------------- layer layout


@pytest.mark.parametrize("res, num_ws", [(4, 2), (8, 4), (16, 6), (32, 8), (64, 10), (256, 14), (1024, 18)])
def test_groups_partition_rows_by_resolution(res, num_ws):
    groups = layer_groups(num_ws)
    assert groups == layer_groups(img_resolution=res)
    rows = sorted(r for g in groups.values() for r in g)
    assert rows == list(range(num_ws))
    assert all(groups.values())  # no empty groups
    resolutions = layer_resolutions(num_ws)
    assert len(resolutions) == num_ws and resolutions[0] == 4 and resolutions[-1] == res
    bounds = {"coarse": (4, 8), "middle": (16, 32), "fine": (64, 10 ** 6)}
    for name, group in groups.items():
        assert all(bounds[name][0] <= resolutions[i] <= bounds[name][1] for i in group), name
    assert ("fine" in groups) == (res >= 64) and ("middle" in groups) == (res >= 16)
    if num_ws == 18:
        assert groups == {"coarse": [0, 1, 2], "middle": [3, 4, 5, 6], "fine": list(range(7, 18))}


def test_layer_resolutions_match_generator(G):
    res = layer_resolutions(G)
    assert res == layer_resolutions(G.num_ws) == layer_resolutions(G.synthesis)
    # walk the blocks the way SynthesisNetwork.forward splits ws: each conv's row -> its block
    expected, w_idx = {}, 0
    for r in G.synthesis.block_resolutions:
        block = getattr(G.synthesis, f"b{r}")
        for k in range(block.num_conv):
            expected[w_idx + k] = r
        w_idx += block.num_conv
    assert w_idx == G.num_ws - 1
    expected[G.num_ws - 1] = G.img_resolution  # the final torgb's own row
    assert res == [expected[i] for i in range(G.num_ws)]
    assert layer_label(3, G) == "layer 3 · 16 px"
    assert layer_label(G.num_ws - 1, G) == f"layer {G.num_ws - 1} · {G.img_resolution} px"
    with pytest.raises(ValueError, match="8"):
        layer_label(8, G)


def test_layer_rows():
    g = layer_groups(10)
    assert layer_rows(["coarse", 1, 0], 10) == g["coarse"]
    assert layer_rows([5, "coarse", 2], 10) == sorted(set(g["coarse"]) | {5})
    assert layer_rows([9, "fine", 0], 10) == sorted({0, 9} | set(g["fine"])) and layer_rows(5, 10) == [5] and layer_rows([], 10) == []
    with pytest.raises(ValueError, match="out of range"):
        layer_rows([10], 10)
    with pytest.raises(ValueError, match="unknown layer group"):
        layer_rows(["hair"], 10)


def test_layer_layout_errors():
    with pytest.raises(ValueError, match="7"):
        layer_resolutions(7)
    with pytest.raises(ValueError, match="48"):
        layer_groups(img_resolution=48)
    with pytest.raises(ValueError):
        layer_groups()


def test_to_uint8_official_rounding():
    x = torch.tensor([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0]).reshape(1, 1, 1, 6).expand(1, 3, 1, 6)
    out = to_uint8(x)
    assert out.shape == (1, 1, 6, 3) and out.dtype == np.uint8
    assert out[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255, 255]


# ---------------------------------------------------------------------------------- rendering


def test_mix_images(G, ws_ab):
    a, b = ws_ab
    img_a, img_b = _synth(G, a), _synth(G, b)
    assert not np.array_equal(img_a, img_b)
    np.testing.assert_array_equal(_synth(G, mix(a, b, [])), img_a)
    np.testing.assert_array_equal(_synth(G, mix(a, b, range(G.num_ws))), img_b)
    np.testing.assert_array_equal(_synth(G, mix(a, b, list(layer_groups(G)))), img_b)


def test_layer_strip(G, ws_ab):
    a, b = ws_ab
    strip = layer_strip(G, a, b.numpy(), batch=1)
    assert [i for i, _ in strip] == list(range(G.num_ws))
    for i, img in strip:
        assert img.shape == (G.img_resolution, G.img_resolution, 3) and img.dtype == np.uint8
        np.testing.assert_array_equal(img, _synth(G, mix(a, b, [i]))[0])
    # batched synthesis may round differently (grouped conv), by at most one level
    batched = layer_strip(G, a[None], b, batch=3)
    for (i, x), (j, y) in zip(strip, batched):
        assert i == j and np.abs(x.astype(int) - y).max() <= 1
    assert [i for i, _ in layer_strip(G, a, b, layers=["coarse"])] == [0, 1, 2]
    with pytest.raises(ValueError, match="2"):
        layer_strip(G, torch.stack([a, a]), b)
    with pytest.raises(ValueError, match="0"):
        layer_strip(G, a, b, batch=0)


def test_style_mix_grid(G, ws_ab):
    a, b = ws_ab
    rows, cols = torch.stack([a, b]), torch.stack([b, a, b])
    grid = style_mix_grid(G, rows, cols, "coarse", batch=16)
    R = G.img_resolution
    assert grid.shape == (3 * R, 4 * R, 3) and grid.dtype == np.uint8
    assert not grid[:R, :R].any()  # blank top-left
    img_a, img_b = _synth(G, a)[0], _synth(G, b)[0]
    # headers within one level (batched synthesis), cells with layers from the same latent = itself
    assert np.abs(grid[:R, R:2 * R].astype(int) - img_b).max() <= 1
    assert np.abs(grid[R:2 * R, :R].astype(int) - img_a).max() <= 1
    assert np.abs(grid[R:2 * R, 2 * R:3 * R].astype(int) - img_a).max() <= 1  # row a, col a
    cell = _synth(G, mix(a, b, "coarse"))[0]  # row a, col b
    assert np.abs(grid[R:2 * R, R:2 * R].astype(int) - cell).max() <= 1
    with pytest.raises(ValueError, match="shape"):
        style_mix_grid(G, rows[:, :3], cols, [0])
