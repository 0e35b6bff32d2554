"""StyleGAN2 networks: parity with the official networks, official key names, behaviour, bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stylemix.networks.stylegan2 import (Discriminator, Generator, MappingNetwork, MinibatchStdLayer,
                                         SynthesisNetwork, normalize_2nd_moment)
from stylemix.ops import setup_filter, upfirdn2d
from stylemix.ops.conv2d_resample import conv2d_resample

FIXTURES = ["sg2ada_tiny32", "sg2ada_tiny64_cond"]
ATOL = 1e-4

# Tiny widths for the behaviour tests.
TINY_G = dict(z_dim=16, w_dim=16, img_channels=3, mapping_kwargs=dict(num_layers=2),
              synthesis_kwargs=dict(channel_base=256, channel_max=32, conv_clamp=256))
TINY_D = dict(img_channels=3, channel_base=256, channel_max=32, conv_clamp=256)


def tiny_G(res=32, c_dim=0, **synthesis_kwargs) -> Generator:
    kw = dict(TINY_G, c_dim=c_dim, img_resolution=res)
    kw["synthesis_kwargs"] = dict(TINY_G["synthesis_kwargs"], **synthesis_kwargs)
    return Generator(**kw)


def tiny_D(res=32, c_dim=0, **kwargs) -> Discriminator:
    return Discriminator(c_dim=c_dim, img_resolution=res, **dict(TINY_D, **kwargs))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------------
# Parity with the official networks (random weights, saved inputs and outputs).


def _load_fixture(fixtures_dir, name):
    from safetensors.torch import load_file

    kwargs = json.loads((fixtures_dir / f"{name}.json").read_text())
    tensors = load_file(str(fixtures_dir / f"{name}.safetensors"))
    G = Generator(**kwargs["G_kwargs"]).eval()
    D = Discriminator(**kwargs["D_kwargs"]).eval()
    G.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith("G.")}, strict=True)
    D.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith("D.")}, strict=True)
    return G, D, tensors


@pytest.fixture(scope="module", params=FIXTURES)
def official(request, fixtures_dir):
    return _load_fixture(fixtures_dir, request.param)


def _c(tensors):
    z = tensors["z"]
    return tensors["c"] if "c" in tensors else torch.zeros([z.shape[0], 0])


def test_fixture_mapping(official):
    G, _, t = official
    with torch.no_grad():
        ws = G.mapping(t["z"], _c(t))
        ws07 = G.mapping(t["z"], _c(t), truncation_psi=0.7)
    assert ws.shape == t["ws"].shape == (t["z"].shape[0], G.num_ws, G.w_dim)
    torch.testing.assert_close(ws, t["ws"], atol=ATOL, rtol=0)
    torch.testing.assert_close(ws07, t["ws_trunc07"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("fused_modconv", [None, True, False])  # None: picked per device and autograd
def test_fixture_synthesis(official, fused_modconv):
    G, _, t = official
    with torch.no_grad():
        img_const = G.synthesis(t["ws"], noise_mode="const", fused_modconv=fused_modconv)
        img_none = G.synthesis(t["ws"], noise_mode="none", fused_modconv=fused_modconv)
        img_t07 = G.synthesis(t["ws_trunc07"], noise_mode="const", fused_modconv=fused_modconv)
    for ours, key in [(img_const, "img_const"), (img_none, "img_none"), (img_t07, "img_trunc07_const")]:
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, t[key], atol=ATOL, rtol=1e-5, msg=key)


def test_fixture_generator_end_to_end(official):
    G, _, t = official
    with torch.no_grad():
        img = G(t["z"], _c(t), truncation_psi=0.7, noise_mode="const")
    torch.testing.assert_close(img, t["img_trunc07_const"], atol=ATOL, rtol=1e-5)


def test_fixture_discriminator(official):
    _, D, t = official
    with torch.no_grad():
        logits = D(t["img_const"], _c(t))
    assert logits.shape == t["D_logits"].shape
    torch.testing.assert_close(logits, t["D_logits"], atol=ATOL, rtol=1e-5)


def test_fixture_strict_load_rejects_missing_and_unexpected(fixtures_dir):
    G, D, t = _load_fixture(fixtures_dir, "sg2ada_tiny32")
    sd = {k[2:]: v for k, v in t.items() if k.startswith("G.")}
    missing = dict(sd)
    del missing["mapping.w_avg"]
    with pytest.raises(RuntimeError, match="w_avg"):
        Generator(**json.loads((fixtures_dir / "sg2ada_tiny32.json").read_text())["G_kwargs"]) \
            .load_state_dict(missing, strict=True)
    extra = dict(sd, **{"synthesis.b4.bogus": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="bogus"):
        G.load_state_dict(extra, strict=True)


# ----------------------------------------------------------------------------------------------------
# Official key names and shapes (FFHQ 256 paper256 and 1024 config-f), built on the meta device.


@pytest.mark.parametrize("fname,res,channel_base", [("ffhq256_paper256_keys.json", 256, 16384),
                                                     ("ffhq1024_configf_keys.json", 1024, 32768)])
def test_official_key_names_and_shapes(fixtures_dir, fname, res, channel_base):
    ref = json.loads((fixtures_dir / fname).read_text())
    with torch.device("meta"):
        G = Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=res, img_channels=3,
                      mapping_kwargs=dict(num_layers=8),
                      synthesis_kwargs=dict(channel_base=channel_base, channel_max=512, num_fp16_res=4,
                                            conv_clamp=256))
        D = Discriminator(c_dim=0, img_resolution=res, img_channels=3, channel_base=channel_base,
                          channel_max=512, num_fp16_res=4, conv_clamp=256,
                          epilogue_kwargs=dict(mbstd_group_size=8))
    assert G.num_ws == ref["num_ws"]
    for net, key in [(G, "G"), (D, "D")]:
        ours = {k: list(v.shape) for k, v in net.state_dict().items()}
        assert set(ours) == set(ref[key]), (set(ours) ^ set(ref[key]))
        for k, shape in ref[key].items():
            assert ours[k] == shape, (key, k, ours[k], shape)
    # Buffers vs parameters as in the official networks.
    params = dict(G.named_parameters())
    buffers = dict(G.named_buffers())
    assert "mapping.w_avg" in buffers and "synthesis.b8.conv0.noise_const" in buffers
    assert "synthesis.b8.conv0.resample_filter" in buffers
    assert "synthesis.b8.conv0.noise_strength" in params and params["synthesis.b8.conv0.noise_strength"].ndim == 0


def test_meta_build_then_load(fixtures_dir):
    """Building on 'meta' then `to_empty` + strict load gives the same network (no random init)."""
    G_ref, _, t = _load_fixture(fixtures_dir, "sg2ada_tiny32")
    kwargs = json.loads((fixtures_dir / "sg2ada_tiny32.json").read_text())["G_kwargs"]
    with torch.device("meta"):
        G = Generator(**kwargs)
    G = G.to_empty(device="cpu")
    G.load_state_dict({k[2:]: v for k, v in t.items() if k.startswith("G.")}, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(G.eval().synthesis(t["ws"], noise_mode="const"), t["img_const"],
                                   atol=ATOL, rtol=1e-5)


def test_official_init_kwargs_rebuild():
    """Keyword sets found in official pickles (incl. those converted from TF) are accepted."""
    G = Generator(z_dim=16, c_dim=2, w_dim=16, img_resolution=16, img_channels=3,
                  mapping_kwargs=dict(num_layers=2, embed_features=None, layer_features=None,
                                      activation="lrelu", lr_multiplier=0.01, w_avg_beta=0.995),
                  synthesis_kwargs=dict(channel_base=256, channel_max=32, num_fp16_res=1, conv_clamp=256,
                                        architecture="skip", resample_filter=[1, 3, 3, 1], use_noise=True,
                                        activation="lrelu", fp16_channels_last=False))
    D = Discriminator(c_dim=2, img_resolution=16, img_channels=3, architecture="resnet", channel_base=256,
                      channel_max=32, num_fp16_res=1, conv_clamp=256, cmap_dim=None,
                      block_kwargs=dict(activation="lrelu", resample_filter=[1, 3, 3, 1], freeze_layers=2),
                      mapping_kwargs=dict(num_layers=2, embed_features=None, layer_features=None,
                                          activation="lrelu", lr_multiplier=0.01),
                      epilogue_kwargs=dict(mbstd_group_size=2, mbstd_num_channels=1, activation="lrelu"))
    for attr, value in dict(z_dim=16, c_dim=2, w_dim=16, img_resolution=16, img_channels=3, num_ws=6).items():
        assert getattr(G, attr) == value, attr
    # freeze_layers=2: the first two layers of D (b16.fromrgb, b16.conv0) hold buffers, not parameters.
    params = dict(D.named_parameters())
    assert "b16.fromrgb.weight" not in params and "b16.conv0.weight" not in params
    assert "b16.conv1.weight" in params
    assert "b16.fromrgb.weight" in D.state_dict()
    z, c = torch.randn([2, 16]), torch.eye(2)
    assert D(G(z, c), c).shape == (2, 1)
    # The StyleGAN3 repo's StyleGAN2 generator records the synthesis arguments flat.
    G3 = Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                   mapping_kwargs=dict(num_layers=2), channel_base=256, channel_max=32)
    assert G3.synthesis.b16.conv1.weight.shape == (16, 16, 3, 3)
    assert G3.init_kwargs["synthesis_kwargs"] == dict(channel_base=256, channel_max=32)


# ----------------------------------------------------------------------------------------------------
# Mapping: w_avg, truncation.


def test_w_avg_updates_only_in_training_mode():
    G = tiny_G()
    z = torch.randn([4, G.z_dim])
    before = G.mapping.w_avg.clone()
    G.eval()
    G.mapping(z, None)
    assert torch.equal(G.mapping.w_avg, before)
    G.train()
    G.mapping(z, None, skip_w_avg_update=True)
    assert torch.equal(G.mapping.w_avg, before)
    G.mapping(z, None, update_emas=False)
    assert torch.equal(G.mapping.w_avg, before)
    with torch.no_grad():
        w = G.mapping.fc1(G.mapping.fc0(normalize_2nd_moment(z)))
    G.mapping(z, None)
    expected = w.mean(dim=0).lerp(before, G.mapping.w_avg_beta)
    torch.testing.assert_close(G.mapping.w_avg, expected, atol=1e-5, rtol=1e-5)
    assert not torch.equal(G.mapping.w_avg, before)
    # update_emas=True (the later official flag) updates in any mode.
    G.eval()
    before = G.mapping.w_avg.clone()
    G.mapping(z, None, update_emas=True)
    torch.testing.assert_close(G.mapping.w_avg, w.mean(dim=0).lerp(before, G.mapping.w_avg_beta),
                               atol=1e-5, rtol=1e-5)


def test_truncation_and_cutoff():
    G = tiny_G().eval()
    G.mapping.w_avg.normal_()
    z = torch.randn([3, G.z_dim])
    ws = G.mapping(z, None)
    assert ws.shape == (3, G.num_ws, G.w_dim)
    assert torch.equal(ws[:, 0], ws[:, -1])  # broadcast copies
    psi, cutoff = 0.5, 3
    full = G.mapping(z, None, truncation_psi=psi)
    torch.testing.assert_close(full, G.mapping.w_avg.lerp(ws, psi))
    cut = G.mapping(z, None, truncation_psi=psi, truncation_cutoff=cutoff)
    torch.testing.assert_close(cut[:, :cutoff], full[:, :cutoff])
    torch.testing.assert_close(cut[:, cutoff:], ws[:, cutoff:])
    torch.testing.assert_close(G.mapping(z, None, truncation_psi=0), G.mapping.w_avg.expand_as(ws))


# ----------------------------------------------------------------------------------------------------
# Synthesis: noise, gradients, fp16 on CPU, resolutions and architectures.


def test_noise_modes():
    G = tiny_G().eval()
    for name, buf in G.named_buffers():
        if name.endswith("noise_const"):
            buf.normal_()
    for name, p in G.named_parameters():
        if name.endswith("noise_strength"):
            p.data.fill_(0.5)
    ws = G.mapping(torch.randn([2, G.z_dim]), None)
    with torch.no_grad():
        a = G.synthesis(ws, noise_mode="random")
        b = G.synthesis(ws, noise_mode="random")
        c1 = G.synthesis(ws, noise_mode="const")
        c2 = G.synthesis(ws, noise_mode="const")
        n = G.synthesis(ws, noise_mode="none")
    assert a.shape == (2, 3, 32, 32)
    assert not torch.allclose(a, b)
    assert torch.equal(c1, c2)
    assert not torch.allclose(c1, n)
    with torch.no_grad():  # batch-independent
        torch.testing.assert_close(c1[0:1], G.synthesis(ws[0:1], noise_mode="const"), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("train", [False, True])  # eval: fused modconv, train: per-activation path
def test_gradients_flow_to_ws(train):
    G = tiny_G().requires_grad_(False).train(train)
    ws = G.mapping(torch.randn([2, G.z_dim]), None).detach().requires_grad_(True)
    img = G.synthesis(ws, noise_mode="const")
    img.square().mean().backward()
    assert ws.grad is not None and ws.grad.shape == ws.shape
    assert torch.isfinite(ws.grad).all()
    assert (ws.grad.abs().sum(dim=2) > 0).all()  # every layer's w matters


@pytest.mark.parametrize("batch", [1, 3])  # batch 1: plain conv (weights laid out for convT), 3: grouped
def test_fused_and_unfused_modconv_agree_with_grads(batch):
    G = tiny_G(res=16).eval()
    ws = G.mapping(torch.randn([batch, G.z_dim]), None).detach()
    outs = []
    for fused in (True, False):
        w = ws.clone().requires_grad_(True)
        img = G.synthesis(w, noise_mode="const", fused_modconv=fused)
        img.sum().backward()
        outs.append((img.detach(), w.grad))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(outs[0][1], outs[1][1], atol=1e-4, rtol=1e-4)


def test_fp16_blocks_run_fp32_on_cpu():
    G16 = tiny_G(num_fp16_res=4).eval()
    G32 = tiny_G(num_fp16_res=0).eval()
    G32.load_state_dict(G16.state_dict(), strict=True)
    assert G16.synthesis.b32.use_fp16 and not G32.synthesis.b32.use_fp16
    ws = G16.mapping(torch.randn([2, G16.z_dim]), None)
    with torch.no_grad():
        a = G16.synthesis(ws, noise_mode="const")
        b = G32.synthesis(ws, noise_mode="const")
    assert a.dtype == torch.float32
    assert torch.equal(a, b)
    D16, D32 = tiny_D(num_fp16_res=4), tiny_D(num_fp16_res=0)
    D32.load_state_dict(D16.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(D16(a, None), D32(a, None))


@pytest.mark.parametrize("res", [16, 32, 64])
@pytest.mark.parametrize("arch", ["orig", "skip", "resnet"])
def test_resolutions_and_architectures(res, arch):
    G = tiny_G(res=res, architecture=arch).eval()
    assert G.num_ws == 2 * int(np.log2(res)) - 2
    z = torch.randn([2, G.z_dim])
    with torch.no_grad():
        img = G(z, None, noise_mode="const")
    assert img.shape == (2, 3, res, res) and torch.isfinite(img).all()
    D = tiny_D(res=res, architecture=arch, epilogue_kwargs=dict(mbstd_group_size=2))
    logits = D(img, None)
    assert logits.shape == (2, 1) and torch.isfinite(logits).all()
    G.train()
    D(G(z, None), None).sum().backward()  # training path (non-fused modconv) backpropagates
    assert G.synthesis.b4.const.grad is not None


def test_widths_and_channel_counts():
    syn = SynthesisNetwork(w_dim=8, img_resolution=64, img_channels=1, channel_base=512, channel_max=64)
    assert syn.b4.const.shape == (64, 4, 4)
    assert syn.b64.conv1.weight.shape == (8, 8, 3, 3)
    assert syn.b64.torgb.weight.shape == (1, 8, 1, 1)
    assert syn.num_ws == 10
    m = MappingNetwork(z_dim=8, c_dim=0, w_dim=8, num_ws=None, num_layers=3, layer_features=5)
    assert m.fc1.weight.shape == (5, 5) and m.fc2.weight.shape == (8, 5)
    assert m(torch.randn([2, 8]), None).shape == (2, 8)


# ----------------------------------------------------------------------------------------------------
# Discriminator.


def test_discriminator_conditional():
    D = tiny_D(res=32, c_dim=3, epilogue_kwargs=dict(mbstd_group_size=2))
    assert D.cmap_dim == 32 and "mapping.embed.weight" in D.state_dict()
    assert "mapping.w_avg" not in D.state_dict()
    img = torch.randn([2, 3, 32, 32])
    c0 = torch.tensor([[1.0, 0, 0], [1.0, 0, 0]])
    c1 = torch.tensor([[0, 1.0, 0], [0, 0, 1.0]])
    a, b = D(img, c0), D(img, c1)
    assert a.shape == (2, 1)
    assert not torch.allclose(a, b)
    # Projection conditioning: logits = <out(x), cmap> / sqrt(cmap_dim).
    D.b4.out.weight.data.zero_()
    D.b4.out.bias.data.zero_()
    assert torch.equal(D(img, c0), torch.zeros([2, 1]))


def test_minibatch_std():
    x = torch.randn([4, 6, 4, 4])
    y = MinibatchStdLayer(group_size=2)(x)
    assert y.shape == (4, 7, 4, 4)
    # Samples i and i+2 form a group (group index = sample // (N // G)): same stddev feature.
    std = ((x[[0, 1]] - x[[2, 3]]) / 2).square().add(1e-8).sqrt().mean(dim=[1, 2, 3])
    torch.testing.assert_close(y[:, 6, 0, 0], std.repeat(2))
    assert torch.equal(y[:, :6], x)
    assert MinibatchStdLayer(group_size=8)(x).shape == (4, 7, 4, 4)  # group size capped by the batch


# ----------------------------------------------------------------------------------------------------
# Bad inputs.


def test_bad_constructor_arguments():
    for res in (48, 2, 0, 32.0, "64"):
        with pytest.raises(ValueError, match=repr(res)):
            Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=res, img_channels=3)
    with pytest.raises(ValueError, match="'bogus'"):
        tiny_G(architecture="bogus")
    with pytest.raises(ValueError, match="'bogus'"):
        tiny_D(architecture="bogus")
    with pytest.raises(ValueError, match="4"):
        tiny_D(res=4)
    with pytest.raises(ValueError, match="'swishy'"):
        tiny_G(activation="swishy")


def test_bad_call_arguments():
    G = tiny_G(c_dim=2).eval()
    z, c = torch.randn([2, G.z_dim]), torch.randn([2, 2])
    with pytest.raises(ValueError, match=r"\(2, 5\)"):
        G.mapping(torch.randn([2, 5]), c)
    with pytest.raises(ValueError, match="None"):
        G.mapping(z, None)
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        G.mapping(z, torch.randn([2, 3]))
    ws = G.mapping(z, c)
    with pytest.raises(ValueError, match="'fancy'"):
        G.synthesis(ws, noise_mode="fancy")
    with pytest.raises(ValueError, match=r"\(2, 7, 16\)"):
        G.synthesis(ws[:, :7])
    with pytest.raises(ValueError, match=r"\(16,\)"):
        G.synthesis(ws[0, 0])
    D = tiny_D(c_dim=2, epilogue_kwargs=dict(mbstd_group_size=4))
    with pytest.raises(ValueError, match=r"\(2, 3, 16, 16\)"):
        D(torch.randn([2, 3, 16, 16]), c)
    with pytest.raises(ValueError, match="None"):
        D(torch.randn([2, 3, 32, 32]), None)
    with pytest.raises(ValueError, match="batch size 6"):
        D(torch.randn([6, 3, 32, 32]), torch.randn([6, 2]))


# ----------------------------------------------------------------------------------------------------
# conv2d_resample: every fast path equals the plain definition (upsample, conv, downsample).


def _conv2d_resample_definition(x, w, f, *, up, down, padding, groups, flip_weight):
    """Pad once (padding of the upsampled input plus what the filters need), then upsample+filter,
    conv without padding, filter+decimate."""
    fw = f.shape[-1]
    p0 = p1 = padding
    if up > 1:
        p0, p1 = p0 + (fw + up - 1) // 2, p1 + (fw - up) // 2
    if down > 1:
        p0, p1 = p0 + (fw - down + 1) // 2, p1 + (fw - down) // 2
    if up > 1:
        x = upfirdn2d(x, f, up=up, padding=[p0, p1, p0, p1], gain=up ** 2)
    else:
        x = F.pad(x, [p0, p1, p0, p1])
    x = F.conv2d(x, w if flip_weight else w.flip([2, 3]), groups=groups)
    if down > 1:
        x = upfirdn2d(x, f, down=down)
    return x


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("up,down", [(1, 1), (2, 1), (1, 2), (2, 2)])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("flip_weight", [True, False])
def test_conv2d_resample_matches_definition(k, up, down, groups, flip_weight):
    x = torch.randn([2, 4, 8, 8], dtype=torch.float64).float()
    w = torch.randn([6, 4 // groups, k, k])
    f = setup_filter([1, 3, 3, 1])
    kw = dict(up=up, down=down, padding=k // 2, groups=groups, flip_weight=flip_weight)
    ours = conv2d_resample(x, w, f, **kw)
    ref = _conv2d_resample_definition(x, w, f, **kw)
    assert ours.shape == ref.shape == (2, 6, 8 * up // down, 8 * up // down)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    # Gradients too.
    xg, wg = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    g = torch.randn_like(ref)
    (conv2d_resample(xg, wg, f, **kw) * g).sum().backward()
    (_conv2d_resample_definition(xr, wr, f, **kw) * g).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(wg.grad, wr.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("up,down", [(1, 1), (2, 1), (1, 2)])
def test_conv2d_resample_cpu_bf16_mode(up, down):
    """cpu_conv_dtype(bfloat16): float32 in and out, values and gradients within bfloat16 rounding of
    float32, bit-identical float32 results again after the context, and bad dtypes refused."""
    from stylemix.ops.conv2d_resample import cpu_conv_dtype, get_cpu_conv_dtype, set_cpu_conv_dtype

    torch.manual_seed(0)
    x = torch.randn([2, 16, 8, 8])
    w = torch.randn([8, 16, 3, 3]) / 12
    f = setup_filter([1, 3, 3, 1])
    kw = dict(up=up, down=down, padding=1)
    ref = conv2d_resample(x, w, f, **kw)
    xg, wg = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    g = torch.randn_like(ref)
    with cpu_conv_dtype(torch.bfloat16):
        assert get_cpu_conv_dtype() == torch.bfloat16
        low = conv2d_resample(xg, wg, f, **kw)
        (low * g).sum().backward()
    assert get_cpu_conv_dtype() is None
    assert low.dtype == torch.float32 and low.shape == ref.shape
    assert not torch.equal(low, ref)  # it really ran in lower precision
    rel = lambda a, b: float((a - b).detach().norm() / b.detach().norm())  # noqa: E731
    assert rel(low, ref) < 1e-2
    xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    (conv2d_resample(xr, wr, f, **kw) * g).sum().backward()
    assert xg.grad.dtype == wg.grad.dtype == torch.float32
    assert rel(xg.grad, xr.grad) < 1e-2 and rel(wg.grad, wr.grad) < 1e-2
    assert torch.equal(conv2d_resample(x, w, f, **kw), ref)
    # float64 inputs are left alone.
    with cpu_conv_dtype(torch.bfloat16):
        assert torch.equal(conv2d_resample(x.double(), w.double(), f, **kw),
                           conv2d_resample(x.double(), w.double(), f, **kw))
    with pytest.raises(ValueError, match="bfloat16"):
        set_cpu_conv_dtype(torch.float16)
    assert get_cpu_conv_dtype() is None


def test_second_order_gradients_for_regularizers():
    """R1 (D) and path-length (G) regularisation differentiate through a gradient."""
    D = tiny_D(res=16, epilogue_kwargs=dict(mbstd_group_size=2))
    img = torch.randn([2, 3, 16, 16], requires_grad=True)
    (r1_grads,) = torch.autograd.grad(D(img, None).sum(), [img], create_graph=True)
    r1_grads.square().sum().backward()
    assert D.b16.conv0.weight.grad is not None and torch.isfinite(D.b16.conv0.weight.grad).all()

    G = tiny_G(res=16).train()
    ws = G.mapping(torch.randn([2, G.z_dim]), None)
    img = G.synthesis(ws, noise_mode="const")
    (pl_grads,) = torch.autograd.grad((img * torch.randn_like(img)).sum(), [ws], create_graph=True)
    pl_grads.square().sum().backward()
    assert G.synthesis.b16.conv0.weight.grad is not None
    assert torch.isfinite(G.synthesis.b16.conv0.weight.grad).all()


def test_modconv_path_choice_on_cpu(monkeypatch):
    """fused_modconv=None: official choice on CUDA; on CPU fused for one sample without autograd,
    per-activation with autograd (>= 64 channels) and for batches; ToRGB always fused (a matmul)."""
    import stylemix.networks.stylegan2 as sg

    calls = []
    real = sg.modulated_conv2d

    def spy(x, weight, styles, **kwargs):
        calls.append((weight.shape[0], kwargs["fused_modconv"]))
        return real(x, weight, styles, **kwargs)

    monkeypatch.setattr(sg, "modulated_conv2d", spy)
    G = tiny_G(res=8, channel_base=512, channel_max=64).eval().requires_grad_(False)
    ws = G.mapping(torch.randn([2, G.z_dim]), None)

    def choices(w, *, grad):
        calls.clear()
        with torch.set_grad_enabled(grad):
            G.synthesis(w, noise_mode="const")
        return {fused for out_ch, fused in calls if out_ch != 3}, {fused for out_ch, fused in calls if out_ch == 3}

    assert choices(ws[:1], grad=False) == ({True}, {True})
    assert choices(ws[:1].clone().requires_grad_(True), grad=True) == ({False}, {True})
    assert choices(ws, grad=False) == ({False}, {True})
    G.train()
    assert choices(ws[:1], grad=False) == ({False}, {True})
