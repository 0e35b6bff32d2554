"""Tests for training.stylegan2.augment (ADA pipeline and the adaptive-p heuristic)."""

import math

import pytest
import torch
import torch.nn.functional as F

from training.stylegan2.augment import AdaptiveP, AugmentPipe, augpipe_specs, grid_sample_reflect, _eye, _pad_symmetric

S = 32  # image size used throughout


def smooth_images(n=8, c=3, size=S, seed=0):
    """Band-limited random images in about [-1, 1] (the resampling filter is ~exact on them)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, size // 4, size // 4, generator=g)
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    return (x / x.abs().amax(dim=(1, 2, 3), keepdim=True)).contiguous()


def make_pipe(p=1.0, **kwargs):
    pipe = AugmentPipe(**kwargs)
    pipe.p.fill_(p)
    return pipe


def close(a, b, tol=0.02):
    return (a - b).abs().max().item() < tol


# --- basic behaviour ------------------------------------------------------------------------------

def test_p0_returns_input_exactly():
    x = smooth_images()
    pipe = AugmentPipe.from_spec("bgcfnc")
    assert float(pipe.p) == 0
    torch.manual_seed(0)
    y = pipe(x)
    assert torch.equal(y, x)


def test_p1_changes_images_and_keeps_shape_dtype():
    for dtype in (torch.float32, torch.float64):
        x = smooth_images().to(dtype)
        torch.manual_seed(0)
        y = make_pipe(1.0, **augpipe_specs["bgcfnc"])(x)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert torch.isfinite(y).all()
        per_sample = (y - x).abs().flatten(1).amax(1)
        assert (per_sample > 0.1).all()


def test_one_channel_and_colour_channel_check():
    x = smooth_images(c=1)
    torch.manual_seed(0)
    y = make_pipe(1.0, **augpipe_specs["bgc"])(x)
    assert y.shape == x.shape
    x2 = smooth_images(n=2, c=2)
    assert make_pipe(1.0, **augpipe_specs["bg"])(x2).shape == x2.shape  # geometric works for any C
    with pytest.raises(ValueError, match="channels"):
        make_pipe(1.0, brightness=1)(x2)
    with pytest.raises(ValueError):
        make_pipe(1.0, xflip=1)(torch.zeros(2, 3, 8))
    with pytest.raises(ValueError):
        make_pipe(1.0, xflip=1)(torch.zeros(2, 3, 8, 8, dtype=torch.long))


def test_gradients_flow():
    x = smooth_images(n=4).requires_grad_(True)
    torch.manual_seed(0)
    y = make_pipe(1.0, **augpipe_specs["bgcfnc"])(x)
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad.flatten(1).abs().sum(1) > 0).all()
    # Exact gradients (float64, same random draws at every evaluation).
    pipe = make_pipe(1.0, **augpipe_specs["bgcfnc"]).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)

    def f(x):
        torch.manual_seed(5)
        return pipe(x)

    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-5, fast_mode=True)
    # Second order too: R1 on reals differentiates D(augment(x)) w.r.t. x, then w.r.t. D's weights.
    assert torch.autograd.gradgradcheck(f, (x,), eps=1e-6, atol=1e-5, fast_mode=True)


def _grid_case(device="cpu"):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 6, 5, generator=g, dtype=torch.float64).to(device).requires_grad_(True)
    grid = (torch.rand(2, 7, 4, 2, generator=g, dtype=torch.float64) * 2.6 - 1.3).to(device)  # beyond the border
    return x, grid


def test_grid_sample_reflect_matches_grid_sample_to_second_order():
    x, grid = _grid_case()

    def ours(x):
        return grid_sample_reflect(x, grid)

    def torch_cpu(x):  # on CPU PyTorch's own op is twice differentiable (composite fallback)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    assert torch.equal(ours(x), torch_cpu(x))
    assert torch.autograd.gradcheck(ours, (x,)) and torch.autograd.gradgradcheck(ours, (x,))
    grads = []
    for f in (ours, torch_cpu):
        (g1,) = torch.autograd.grad(f(x).square().sum(), x, create_graph=True)
        (g2,) = torch.autograd.grad(g1.square().sum(), x)
        grads.append((g1.detach(), g2))
    assert torch.allclose(grads[0][0], grads[1][0]) and torch.allclose(grads[0][1], grads[1][1])


@pytest.mark.gpu
def test_r1_through_geometric_augmentation_on_cuda():
    # Before grid_sample_reflect: "derivative for aten::grid_sampler_2d_backward is not implemented".
    x, grid = _grid_case("cuda")
    assert torch.autograd.gradgradcheck(lambda x: grid_sample_reflect(x, grid), (x,))
    pipe = make_pipe(1.0, **augpipe_specs["bgc"]).cuda()
    real = smooth_images(n=4).cuda().requires_grad_(True)
    torch.manual_seed(0)
    score = pipe(real).square().sum()
    (g,) = torch.autograd.grad(score, real, create_graph=True)
    g.square().sum().backward()
    assert real.grad is not None and torch.isfinite(real.grad).all()


def test_deterministic_given_seed():
    x = smooth_images()
    pipe = make_pipe(0.7, **augpipe_specs["bgcfnc"])
    torch.manual_seed(123)
    a = pipe(x)
    torch.manual_seed(123)
    b = pipe(x)
    torch.manual_seed(124)
    c = pipe(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# --- single transformations -----------------------------------------------------------------------

def test_identity_resampling_is_near_exact():
    pipe = AugmentPipe()
    x = torch.randn(2, 3, S, S, generator=torch.Generator().manual_seed(1))  # white noise: worst case
    y = pipe._resample(x, _eye(3, 2, "cpu"))
    assert (y - x).pow(2).mean().sqrt() < 0.01
    assert close(y, x, 0.05)


def test_xflip_gives_image_or_mirror():
    x = smooth_images(n=16)
    torch.manual_seed(0)
    y = make_pipe(1.0, xflip=1)(x)
    flipped = []
    for i in range(len(x)):
        same, mirror = close(y[i], x[i]), close(y[i], x[i].flip(-1))
        assert same != mirror, i
        flipped.append(mirror)
    assert 0 < sum(flipped) < len(x)


def test_rotate90_gives_one_of_four_rotations():
    x = smooth_images(n=16)
    torch.manual_seed(0)
    y = make_pipe(1.0, rotate90=1)(x)
    seen = set()
    for i in range(len(x)):
        matches = [k for k in range(4) if close(y[i], torch.rot90(x[i], k, dims=(1, 2)))]
        assert len(matches) == 1, (i, matches)
        seen.add(matches[0])
    assert len(seen) >= 3


def test_xint_is_mirror_padded_integer_shift():
    x = smooth_images(n=8)
    torch.manual_seed(0)
    y = make_pipe(1.0, xint=1, xint_max=0.125)(x)
    P = S // 8
    padded = _pad_symmetric(x, P)
    shifts = []
    for i in range(len(x)):
        best = min(((y[i] - padded[i, :, P - dy: P - dy + S, P - dx: P - dx + S]).abs().max().item(), dx, dy)
                   for dx in range(-P, P + 1) for dy in range(-P, P + 1))
        assert best[0] < 0.02, (i, best)
        shifts.append(best[1:])
        # Mirror padding keeps the pixel values: the sorted values move only where pixels are repeated.
        assert (y[i].flatten().sort().values - x[i].flatten().sort().values).abs().mean() < 0.1
    assert len(set(shifts)) > 1 and any(s != (0, 0) for s in shifts)


def blob(size=S, sx=6.0, sy=3.5, cx=0.0, cy=0.0, theta=0.0):
    """Anisotropic Gaussian in centred pixel units (x right, y down), rotated by theta."""
    c = torch.arange(size, dtype=torch.float64) + 0.5 - size / 2
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    xr = math.cos(theta) * (xx - cx) + math.sin(theta) * (yy - cy)
    yr = -math.sin(theta) * (xx - cx) + math.cos(theta) * (yy - cy)
    return torch.exp(-0.5 * ((xr / sx) ** 2 + (yr / sy) ** 2)).float()[None, None].repeat(1, 3, 1, 1) * 2 - 1


def test_general_geometric_transformations_match_analytic():
    q = 0.7  # debug percentile: deterministic strength
    z = math.sqrt(2) * torch.erfinv(torch.tensor(2 * q - 1)).item()
    x = blob()

    def interior_close(a, b):  # the analytic blob has no mirror image beyond the border
        return close(a[..., 6:-6, 6:-6], b[..., 6:-6, 6:-6], 0.01)

    # rotate: two rotations of (2q-1)*pi*rotate_max each, in pixel coordinates with y down.
    theta = 2 * (2 * q - 1) * math.pi * 0.5
    y = make_pipe(0.0, rotate=1, rotate_max=0.5)(x, debug_percentile=q)
    assert interior_close(y, blob(theta=theta))
    assert not close(y, x)
    # scale: isotropic 2^(z * scale_std).
    s = 2 ** (z * 0.2)
    y = make_pipe(0.0, scale=1)(x, debug_percentile=q)
    assert interior_close(y, blob(sx=6 * s, sy=3.5 * s))
    # aniso: x scaled by s, y by 1/s.
    s = 2 ** (z * 0.2)
    y = make_pipe(0.0, aniso=1)(x, debug_percentile=q)
    assert interior_close(y, blob(sx=6 * s, sy=3.5 / s))
    # xfrac: translation by z * xfrac_std of the image size on both axes.
    t = z * 0.125 * S
    y = make_pipe(0.0, xfrac=1)(x, debug_percentile=q)
    assert interior_close(y, blob(cx=t, cy=t))


def test_brightness_shifts_mean_only():
    x = smooth_images(n=16)
    torch.manual_seed(0)
    y = make_pipe(1.0, brightness=1)(x)
    d = y - x
    assert torch.allclose(d, d.mean(dim=(1, 2, 3), keepdim=True).expand_as(d), atol=1e-6)
    shift = d.mean(dim=(1, 2, 3))
    assert shift.abs().max() > 0.05 and shift.std() > 0.05  # std 0.2 by default


def test_contrast_scales_about_zero():
    x = smooth_images(n=16)
    torch.manual_seed(0)
    y = make_pipe(1.0, contrast=1)(x)
    c = (y * x).sum(dim=(1, 2, 3)) / (x * x).sum(dim=(1, 2, 3))
    assert torch.allclose(y, c[:, None, None, None] * x, atol=1e-5)
    assert (c > 0).all() and c.std() > 0.1


def test_saturation_near_zero_gives_grey_with_same_luma():
    x = smooth_images(n=4)
    y = make_pipe(0.0, saturation=1, saturation_std=4)(x, debug_percentile=0.0)  # s = 2^(-19)
    luma_x, luma_y = x.mean(dim=1), y.mean(dim=1)
    assert torch.allclose(luma_x, luma_y, atol=1e-5)
    assert (y - luma_y[:, None]).abs().max() < 1e-4  # all channels equal: grey


def test_lumaflip_and_hue_keep_chroma_or_luma():
    x = smooth_images(n=16)
    luma = x.mean(dim=1, keepdim=True)
    torch.manual_seed(0)
    y = make_pipe(1.0, lumaflip=1)(x)
    flipped = 0
    for i in range(len(x)):
        if torch.allclose(y[i], x[i], atol=1e-5):
            continue
        assert torch.allclose(y[i], x[i] - 2 * luma[i], atol=1e-5)  # luma negated, chroma kept
        flipped += 1
    assert 0 < flipped < len(x)
    torch.manual_seed(0)
    y = make_pipe(1.0, hue=1)(x)
    assert torch.allclose(y.mean(dim=1, keepdim=True), luma, atol=1e-5)  # rotation about the luma axis
    assert torch.allclose((y - luma).norm(dim=1), (x - luma).norm(dim=1), atol=1e-5)
    assert not close(y, x, 0.05)


def test_imgfilter_noise_cutout():
    x = smooth_images(n=4)
    # Unit band gains: the filter bank sums to a delta.
    y = make_pipe(1.0, imgfilter=1, imgfilter_std=0)(x)
    assert close(y, x, 1e-5)
    torch.manual_seed(0)
    y = make_pipe(1.0, imgfilter=1)(x)
    assert not close(y, x, 0.01)
    torch.manual_seed(0)
    y = make_pipe(1.0, noise=1)(x)
    assert (y - x).std() > 0.01
    # Cutout at the 50th percentile: a centred square of half the side, zeroed.
    y = make_pipe(0.0, cutout=1)(x, debug_percentile=0.5)
    inner = torch.zeros(S, S, dtype=torch.bool)
    inner[S // 4: 3 * S // 4, S // 4: 3 * S // 4] = True
    assert (y[:, :, inner] == 0).all()
    assert torch.equal(y[:, :, ~inner], x[:, :, ~inner])


def test_probability_scales_with_p():
    x = smooth_images(n=64, size=8)
    torch.manual_seed(0)
    y = make_pipe(0.25, brightness=1)(x)
    frac = ((y - x).abs().flatten(1).amax(1) > 0).float().mean().item()
    assert 0.08 < frac < 0.45  # binomial(64, 0.25)


# --- presets and construction ---------------------------------------------------------------------

def test_presets_parse():
    expected = {"blit", "geom", "color", "filter", "noise", "cutout", "bg", "bgc", "bgcf", "bgcfn", "bgcfnc"}
    assert set(augpipe_specs) == expected
    assert augpipe_specs["bgc"] == dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1,
                                        brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
    for name, spec in augpipe_specs.items():
        pipe = AugmentPipe.from_spec(name)
        for key, value in spec.items():
            assert getattr(pipe, key) == value
    # An official run's augment_kwargs (training_options.json).
    official = dict(class_name="training.augment.AugmentPipe", **augpipe_specs["bgc"])
    pipe = AugmentPipe.from_spec(official)
    assert pipe.hue == 1 and pipe.scale_std == 0.2 and pipe.xint_max == 0.125 and pipe.contrast_std == 0.5
    with pytest.raises(ValueError, match="unknown augpipe"):
        AugmentPipe.from_spec("bgcx")
    with pytest.raises(ValueError):
        AugmentPipe.from_spec(dict(xflip=1, wobble=1))
    with pytest.raises(ValueError, match="xflip"):
        AugmentPipe(xflip=-1)


def test_state_dict_holds_p_and_loads_official_keys():
    pipe = AugmentPipe.from_spec("bgc")
    pipe.p.fill_(0.3)
    sd = pipe.state_dict()
    assert set(sd) == {"p"}
    other = AugmentPipe.from_spec("bgc")
    official_sd = dict(p=torch.tensor(0.3), Hz_geom=torch.zeros(12), Hz_fbank=torch.zeros(4, 12))
    other.load_state_dict(official_sd, strict=True)
    assert float(other.p) == pytest.approx(0.3)


# --- AdaptiveP ------------------------------------------------------------------------------------

def test_adaptive_p_moves_towards_target():
    pipe = AugmentPipe.from_spec("bgc")
    ada = AdaptiveP(pipe, batch_size=64, ada_interval=4, ada_kimg=0.5)  # step = 64*4/500 = 0.512
    step = 64 * 4 / 500
    assert ada.step_size == pytest.approx(step)
    overfit = torch.ones(16, 1)  # sign mean 1 > 0.6: D too confident on reals -> more augmentation
    for i in range(3):
        ada.accumulate(overfit)
        assert ada.step() is None  # nothing before the interval ends
    ada.accumulate(overfit)
    assert ada.step() == pytest.approx(step)
    assert ada.rt == 1.0 and float(pipe.p) == pytest.approx(step) and ada.p == pytest.approx(step)
    for _ in range(8):  # clamped at 1
        ada.accumulate(overfit)
        ada.step()
    assert ada.p == 1.0 and float(pipe.p) == 1.0
    underfit = torch.tensor([1.0, -1.0, 1.0, -1.0])  # mean 0 < 0.6 -> less augmentation
    for _ in range(4):
        ada.accumulate(underfit)
        ada.step()
    assert ada.p == pytest.approx(1 - step) and ada.rt == 0.0
    for _ in range(16):  # clamped at 0
        ada.accumulate(underfit)
        ada.step()
    assert ada.p == 0.0 and float(pipe.p) == 0.0


def test_adaptive_p_reduce_fn_and_state_round_trip():
    calls = []

    def reduce_fn(t):  # a second rank whose D is always sure the reals are real
        calls.append(t.clone())
        return t + torch.tensor([12.0, 12.0])

    ada = AdaptiveP(batch_size=8, ada_interval=2, ada_kimg=1, reduce_fn=reduce_fn)
    ada.accumulate(torch.tensor([-1.0, -1.0, 1.0, -1.0]))
    assert ada.step() is None
    state = ada.state_dict()  # mid-interval snapshot
    ada2 = AdaptiveP(batch_size=8, ada_interval=2, ada_kimg=1, reduce_fn=reduce_fn)
    ada2.load_state_dict(state)
    for a in (ada, ada2):
        a.accumulate(torch.tensor([-1.0, -1.0, -1.0, -1.0]))
        a.step()
    # Local: sum -6 over 8; with the other rank: (6)/(20) = 0.3 < 0.6 -> p stays clamped at 0.
    assert ada.rt == pytest.approx(0.3) and ada2.rt == pytest.approx(0.3)
    assert torch.equal(calls[0], torch.tensor([-6.0, 8.0]))
    assert ada.p == 0.0 and ada2.p == 0.0
    pipe = AugmentPipe()
    ada3 = AdaptiveP(pipe, batch_size=8)
    ada3.load_state_dict(dict(ada.state_dict(), p=0.25))
    assert float(pipe.p) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        ada3.load_state_dict(dict(p=2.0, num_batches=0))
    with pytest.raises(ValueError):
        AdaptiveP(batch_size=0)
