"""Tests for training.stylegan2: configs, losses and regularisers, the loop, snapshots, resume,
fine-tuning, the CLI, SIGKILL + resume, and two gloo processes under torchrun.

Everything runs 16x16 networks with 32 channels; torch is held to one thread (the machine is
shared; two threads on two busy cores run ~10x slower).
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from training.stylegan2 import snapshot as snap_io
from training.stylegan2.configs import resolve_spec
from training.stylegan2.loss import StyleGAN2Loss
from training.stylegan2.train import build_options, build_parser, main
from training.stylegan2.training_loop import InfiniteSampler, Trainer, TrainingSet

from ._cli import run_cli

REPO = Path(__file__).resolve().parents[1]
TINY = ["--cfg", "lite", "--cbase", "256", "--cmax", "32", "--map", "1", "--wdim", "32", "--batch", "4",
        "--workers", "0"]


pytestmark = pytest.mark.usefixtures("one_thread")


class MemImages:
    """Smooth random uint8 images [3, res, res] (and one-hot labels when c_dim > 0)."""

    def __init__(self, n=16, res=16, c_dim=0, seed=0):
        rs = np.random.RandomState(seed)
        low = rs.uniform(0, 255, size=(n, 3, 4, 4))
        self.x = np.kron(low, np.ones((1, 1, res // 4, res // 4))).astype(np.uint8)
        self.labels = np.eye(max(c_dim, 1), dtype=np.float32)[rs.randint(max(c_dim, 1), size=n)][:, :c_dim]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.labels[i]


def make_options(extra=(), *, ds=None, use_labels=False, world_size=1):
    ts = TrainingSet(ds if ds is not None else MemImages(), name="mem", use_labels=use_labels)
    args = build_parser().parse_args(["--data", ".", *TINY, *extra])
    return build_options(args, training_set=ts, world_size=world_size), ts


def make_trainer(extra=(), **kw):
    o, ts = make_options(extra, **{k: v for k, v in kw.items() if k in ("ds", "use_labels")})
    return Trainer(o, ts, **{k: v for k, v in kw.items() if k not in ("ds", "use_labels")})


def write_png_folder(folder: Path, n=16, size=16, seed=0) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rs = np.random.RandomState(seed)
    for i in range(n):
        low = rs.uniform(0, 255, size=(4, 4, 3))
        img = np.kron(low, np.ones((math.ceil(size / 4), math.ceil(size / 4), 1)))[:size, :size]
        Image.fromarray(img.astype(np.uint8)).save(folder / f"img{i:03d}.png")
    return folder


def run_main(argv) -> tuple[int, str, str]:
    return run_cli(main, argv)


def subprocess_env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


# ------------------------------------------------------------------------------------------------
# Configs


def test_configs_official_values_and_auto_formula():
    s = resolve_spec("paper256", resolution=256, gpus=8)
    assert (s["mb"], s["mbstd"], s["fmaps"], s["lrate"], s["gamma"], s["ema"], s["ramp"], s["map"]) == \
        (64, 8, 0.5, 0.0025, 1, 20, None, 8)
    assert s["cbase"] == 16384 and s["cmax"] == 512 and s["batch_gpu"] == 8
    s = resolve_spec("stylegan2", resolution=1024, gpus=1)
    assert (s["mb"], s["mbstd"], s["fmaps"], s["lrate"], s["gamma"], s["ema"]) == (32, 4, 1, 0.002, 10, 10)
    assert s["batch_gpu"] == 4  # mb // ref_gpus: 8 rounds per step on one GPU, like the official code
    assert resolve_spec("paper512", resolution=512, gpus=8)["gamma"] == 0.5
    assert resolve_spec("paper1024", resolution=1024, gpus=8)["gamma"] == 2
    # auto: mb = max(min(gpus * min(4096 // res, 32), 64), gpus), gamma = 0.0002 res^2 / mb, ema = mb * 10 / 32
    s = resolve_spec("auto", resolution=256, gpus=8)
    assert (s["mb"], s["mbstd"], s["fmaps"], s["lrate"], s["ema"], s["ramp"], s["map"]) == \
        (64, 4, 0.5, 0.0025, 20, 0.05, 2)
    assert s["gamma"] == pytest.approx(0.0002 * 256 ** 2 / 64)
    s = resolve_spec("auto", resolution=1024, gpus=1)
    assert (s["mb"], s["mbstd"], s["fmaps"], s["lrate"]) == (4, 4, 1, 0.002)
    assert s["gamma"] == pytest.approx(0.0002 * 1024 ** 2 / 4) and s["ema"] == pytest.approx(1.25)
    s = resolve_spec("lite", resolution=64, gpus=1)
    assert (s["cbase"], s["cmax"], s["map"], s["mb"]) == (2048, 128, 2, 32)
    assert s["gamma"] == pytest.approx(0.0002 * 64 ** 2 / 32) and s["ema"] == 10 and s["ramp"] == 0.05
    with pytest.raises(ValueError, match="unknown --cfg"):
        resolve_spec("paper2048", resolution=64, gpus=1)
    with pytest.raises(ValueError, match="power of two"):
        resolve_spec("auto", resolution=48, gpus=1)


def test_lazy_regularisation_optimisers_and_options():
    tr = make_trainer()
    assert [p.name for p in tr.phases] == ["Gmain", "Greg", "Dmain", "Dreg"]
    assert [p.interval for p in tr.phases] == [1, 4, 1, 16]
    g, d = tr.opts["G"].param_groups[0], tr.opts["D"].param_groups[0]
    assert g["lr"] == pytest.approx(0.0025 * 4 / 5) and d["lr"] == pytest.approx(0.0025 * 16 / 17)
    assert g["betas"] == pytest.approx((0, 0.99 ** (4 / 5))) and d["betas"] == pytest.approx((0, 0.99 ** (16 / 17)))
    assert g["eps"] == 1e-8
    o = tr.options
    assert o["loss_kwargs"] == dict(r1_gamma=pytest.approx(0.0002 * 16 ** 2 / 32), pl_weight=2, pl_decay=0.01,
                                    pl_batch_shrink=2, style_mixing_prob=0.9)
    assert o["ema_kimg"] == pytest.approx(32 * 10 / 32) and o["ema_rampup"] == 0.05
    assert o["aug"] == "ada" and o["ada_target"] == 0.6 and o["augpipe"] == "bgc" and o["ada_kimg"] == 500
    o2, _ = make_options(["--gamma", "3", "--resume", "x.pkl", "--aug", "fixed", "--p", "0.2"])
    assert o2["loss_kwargs"]["r1_gamma"] == 3 and o2["ada_kimg"] == 100 and o2["ema_rampup"] is None
    assert o2["augment_p"] == 0.2 and o2["ada_target"] is None
    assert o2["desc"] == "mem-lite-gamma3-batch4-fixed-p0.2-resumex"


def test_path_length_and_style_mixing_can_be_switched_off():
    o, _ = make_options(["--pl-weight", "0", "--mixing", "0"])
    assert (o["loss_kwargs"]["pl_weight"], o["loss_kwargs"]["style_mixing_prob"]) == (0, 0)
    assert o["desc"] == "mem-lite-pl0-mixing0-batch4-ada"
    for bad in (["--pl-weight", "-1"], ["--mixing", "1.5"], ["--mixing", "-0.1"]):
        with pytest.raises(ValueError, match="--pl-weight must be >= 0|--mixing must be in"):
            make_options(bad)

    def mapping_calls(extra):
        torch.manual_seed(0)
        tr = make_trainer(extra)
        calls = []
        tr.G.mapping.register_forward_hook(lambda *_: calls.append(1))
        tr.train_step()  # the first step runs all four phases, Greg included
        return tr, len(calls)

    on, n_on = mapping_calls(["--mixing", "1"])
    off, n_off = mapping_calls(["--pl-weight", "0", "--mixing", "0"])
    # mixing 1: every G pass draws a second latent for the layers after the cut-off
    assert n_on > n_off > 0
    assert float(on.loss.pl_mean) != 0  # the path-length phase ran and moved its running mean
    assert float(off.loss.pl_mean) == 0  # ... and was skipped at weight 0


def test_mapping_network_learning_rate_multiple():
    o, _ = make_options(["--map-lr", "5", "--glr", "0.001"])
    assert o["G_opt_kwargs"]["mapping_lr_mult"] == 5 and "mapping_lr_mult" not in o["D_opt_kwargs"]
    assert o["desc"] == "mem-lite-batch4-glr0.001-maplr5-ada"
    with pytest.raises(ValueError, match="--map-lr must be > 0"):
        make_options(["--map-lr", "0"])
    tr = make_trainer(["--map-lr", "5", "--glr", "0.001"])
    mapping = {id(p) for p in tr.G.mapping.parameters()}
    rest, mapped = tr.opts["G"].param_groups
    assert {id(p) for p in mapped["params"]} == mapping and not mapping & {id(p) for p in rest["params"]}
    assert len(rest["params"]) + len(mapped["params"]) == len(list(tr.G.parameters()))
    assert (rest["lr"], mapped["lr"]) == (pytest.approx(0.001 * 4 / 5), pytest.approx(0.005 * 4 / 5))
    assert len(tr.opts["D"].param_groups) == 1
    before = {n: p.clone() for n, p in tr.G.named_parameters()}
    tr.train_step()
    moved = {n: float((p - before[n]).abs().max()) for n, p in tr.G.named_parameters()}
    assert all(v > 0 for n, v in moved.items() if n.startswith("mapping.fc"))

    # a state saved with one grouping resumes with the other: each parameter keeps its own moments
    for src_extra, dst_extra in (([], ["--map-lr", "5"]), (["--map-lr", "5"], [])):
        src = make_trainer(src_extra)
        src.train_step()
        by_name = {n: src.opts["G"].state[p]["exp_avg_sq"] for n, p in src.G.named_parameters()}
        tr = make_trainer(dst_extra, resume=dict(kind="state", state=src.state_dict(), source="mem"))
        assert len(tr.opts["G"].param_groups) == (2 if dst_extra else 1)
        for n, p in tr.G.named_parameters():
            assert torch.equal(tr.opts["G"].state[p]["exp_avg_sq"], by_name[n]), n
        tr.train_step()


# ------------------------------------------------------------------------------------------------
# Losses and the loop


def test_steps_losses_finite_regularisers_and_ema():
    tr = make_trainer()
    tr.train_step()  # step 0: Gmain, Greg, Dmain, Dreg all run
    stats = tr.stats.collect(1)
    for key in ("Loss/G/loss", "Loss/D/loss", "Loss/pl_penalty", "Loss/r1_penalty", "Loss/G/reg", "Loss/D/reg"):
        assert key in stats and math.isfinite(stats[key]), (key, stats)
    assert stats["Loss/r1_penalty"] > 0 and stats["Loss/pl_penalty"] > 0
    assert float(tr.loss.pl_mean) > 0
    # EMA ramp-up: at cur_nimg = 0 the EMA length is 0, so G_ema == G after the first step.
    for pe, p in zip(tr.G_ema.parameters(), tr.G.parameters()):
        assert torch.equal(pe, p)
    for _ in range(2):
        tr.train_step()
    assert any(not torch.equal(pe, p) for pe, p in zip(tr.G_ema.parameters(), tr.G.parameters()))
    w = dict(tr.G.named_buffers())["mapping.w_avg"]
    assert torch.equal(dict(tr.G_ema.named_buffers())["mapping.w_avg"], w) and w.abs().sum() > 0
    for net in (tr.G, tr.D):
        assert all(torch.isfinite(p).all() for p in net.parameters())


def test_r1_and_path_length_backpropagate_through_double_backward():
    tr = make_trainer(["--aug", "fixed", "--p", "0.5"])  # through the augment pipe, too
    real = torch.from_numpy(MemImages(4).x).float() / 127.5 - 1
    c = torch.zeros([4, 0])
    z = torch.randn([4, tr.G.z_dim])
    for phase, net in (("Dreg", tr.D), ("Greg", tr.G)):
        net.requires_grad_(True)
        for p in net.parameters():
            p.grad = None
        tr.loss.accumulate_gradients(phase, real, c, z, c, gain=4)
        grads = [p.grad for p in net.parameters()]
        net.requires_grad_(False)
        assert all(g is not None for g in grads), phase  # every parameter takes part (all-reduce needs it)
        assert sum(float(g.abs().sum()) for g in grads) > 0, phase
        assert all(torch.isfinite(g).all() for g in grads), phase


def test_cpu_bf16_convolutions_give_the_float32_gradients():
    """--cpu-bf16: a phase's gradients agree with float32 to bfloat16 precision (cosine > 0.999;
    Greg's double backward > 0.995). Dreg runs in float32 (FLOAT32_PHASES: see the next test)."""
    from stylemix.ops.conv2d_resample import cpu_conv_dtype

    tr = make_trainer()
    real = torch.from_numpy(MemImages(4).x).float() / 127.5 - 1
    c = torch.zeros([4, 0])
    z = torch.randn([4, tr.G.z_dim])
    for phase, net, floor in (("Dmain", tr.D, 0.999), ("Gmain", tr.G, 0.999), ("Greg", tr.G, 0.995)):
        grads = []
        for dtype in (None, torch.bfloat16):
            net.requires_grad_(True)
            for p in net.parameters():
                p.grad = None
            torch.manual_seed(1)
            with cpu_conv_dtype(dtype):
                tr.loss.accumulate_gradients(phase, real, c, z, c, gain=1)
            grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
            net.requires_grad_(False)
        a, b = grads
        assert not torch.equal(a, b), phase
        assert float(torch.nn.functional.cosine_similarity(a, b, dim=0)) > floor, phase


def test_cpu_bf16_training_step_runs_r1_in_float32():
    """Under --cpu-bf16 every phase but Dreg (R1) convolves in bfloat16; Dreg in float32, as AMX's
    bfloat16 kernels got its double backward wrong (cosine 0.964 to float32 on this tiny D)."""
    from stylemix.ops.conv2d_resample import cpu_conv_dtype, get_cpu_conv_dtype

    tr = make_trainer()
    seen = {}
    real_accumulate = tr.loss.accumulate_gradients

    def spy(phase, *args, **kwargs):
        seen[phase] = get_cpu_conv_dtype()
        return real_accumulate(phase, *args, **kwargs)

    tr.loss.accumulate_gradients = spy
    with cpu_conv_dtype(torch.bfloat16):
        tr.train_step()  # step 0: every phase is due
        assert get_cpu_conv_dtype() == torch.bfloat16
    assert seen == {"Gmain": torch.bfloat16, "Greg": torch.bfloat16, "Dmain": torch.bfloat16, "Dreg": None}


def test_style_mixing_regularisation():
    G = make_trainer().G
    loss = StyleGAN2Loss(G, None, style_mixing_prob=1.0)
    torch.manual_seed(0)
    _, ws = loss.run_G(torch.randn([2, G.z_dim]), torch.zeros([2, 0]))
    assert not torch.equal(ws[:, 0], ws[:, -1])  # two latents: switched at a random layer
    loss = StyleGAN2Loss(G, None, style_mixing_prob=0.0)
    _, ws = loss.run_G(torch.randn([2, G.z_dim]), torch.zeros([2, 0]))
    assert torch.equal(ws[:, 0], ws[:, -1])


def test_freezed_layers_stay_bit_identical():
    tr = make_trainer(["--freezed", "2"])
    b = tr.D.b16
    frozen = {"b16.fromrgb.weight": b.fromrgb.weight, "b16.conv0.weight": b.conv0.weight}
    before = {k: v.clone() for k, v in tr.D.state_dict().items()}
    opt_params = {id(p) for g in tr.opts["D"].param_groups for p in g["params"]}
    assert all(id(t) not in opt_params for t in frozen.values())
    for _ in range(2):
        tr.train_step()
    after = tr.D.state_dict()
    for k in ("b16.fromrgb.weight", "b16.fromrgb.bias", "b16.conv0.weight", "b16.conv0.bias"):
        assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["b16.conv1.weight"], after["b16.conv1.weight"])
    assert not torch.equal(before["b4.fc.weight"], after["b4.fc.weight"])


def test_warmup_d_trains_d_alone_first():
    tr = make_trainer(["--warmup-d", "0.008"])  # batch 4: the first two steps train D only
    assert tr.options["warmup_d_kimg"] == 0.008
    # Weights only: the w_avg buffer keeps tracking the mapping's outputs, as in any D step.
    g0 = {k: v.clone() for k, v in tr.G.named_parameters()}
    e0 = {k: v.clone() for k, v in tr.G_ema.named_parameters()}
    d0 = {k: v.clone() for k, v in tr.D.named_parameters()}
    for _ in range(2):
        tr.train_step()
    stats = tr.stats.collect(1)
    assert "Loss/D/loss" in stats and "Loss/G/loss" not in stats and "Loss/pl_penalty" not in stats
    assert all(torch.equal(v, dict(tr.G.named_parameters())[k]) for k, v in g0.items())
    assert all(torch.equal(v, dict(tr.G_ema.named_parameters())[k]) for k, v in e0.items())
    assert any(not torch.equal(v, dict(tr.D.named_parameters())[k]) for k, v in d0.items())
    tr.train_step()  # past the warm-up: G trains again
    assert "Loss/G/loss" in tr.stats.collect(1)
    assert any(not torch.equal(v, dict(tr.G.named_parameters())[k]) for k, v in g0.items())
    for bad, msg in ((["--warmup-d", "-1"], "--warmup-d must be >= 0"),
                     (["--warmup-d", "5", "--kimg", "5"], "leaves no G training")):
        with pytest.raises(ValueError, match=msg):
            make_options(bad)
    from training.stylegan2.ship import training_command
    o, _ = make_options(["--warmup-d", "0.008", "--kimg", "1"])
    assert "--warmup-d 0.008" in training_command(o) and o["desc"].endswith("-warmupd0.008")


def test_glr_dlr_set_each_optimiser():
    from training.stylegan2.ship import training_command

    tr = make_trainer(["--glr", "0.0002", "--dlr", "0.003"])
    r = 4 / 5, 16 / 17  # lazy regularisation scales each lr by interval / (interval + 1)
    assert tr.opts["G"].param_groups[0]["lr"] == pytest.approx(0.0002 * r[0])
    assert tr.opts["D"].param_groups[0]["lr"] == pytest.approx(0.003 * r[1])
    cmd = training_command(tr.options)
    assert "--glr 0.0002" in cmd and "--dlr 0.003" in cmd and "-glr0.0002-dlr0.003" in tr.options["desc"]
    assert make_options()[0]["G_opt_kwargs"]["lr"] == resolve_spec("lite", resolution=16, gpus=1)["lrate"]
    with pytest.raises(ValueError, match="--glr must be > 0"):
        make_options(["--glr", "0"])


def test_conditional_training_step():
    tr = make_trainer(["--cond"], ds=MemImages(c_dim=3), use_labels=True)
    assert tr.G.c_dim == 3 and tr.D.c_dim == 3
    tr.train_step()
    assert math.isfinite(tr.stats.collect(1)["Loss/D/loss"])


def test_sampler_splits_ranks_and_resumes_at_offset():
    r0 = InfiniteSampler(10, rank=0, world_size=2, seed=3)
    r1 = InfiniteSampler(10, rank=1, world_size=2, seed=3)
    a, b = iter(r0), iter(r1)
    first = [next(a) for _ in range(5)] + [next(b) for _ in range(5)]
    assert sorted(first) == list(range(10))  # one epoch, split between the ranks
    it = iter(InfiniteSampler(10, seed=3))
    seq = [next(it) for _ in range(25)]
    it2 = iter(InfiniteSampler(10, seed=3, start=12))
    assert [next(it2) for _ in range(13)] == seq[12:]


def test_resume_in_process_is_exact():
    a = make_trainer()
    for _ in range(18):
        a.train_step()
    b = make_trainer()
    for _ in range(7):
        b.train_step()
    state = b.state_dict()
    c = make_trainer(resume=dict(kind="state", state=state, source="mem"))
    assert c.batch_idx == 7 and c.cur_nimg == 28
    for _ in range(11):
        c.train_step()
    for name in ("G", "D", "G_ema"):
        sa, sc = getattr(a, name).state_dict(), getattr(c, name).state_dict()
        assert all(torch.equal(sa[k], sc[k]) for k in sa), name
    assert float(a.augment_pipe.p) == float(c.augment_pipe.p) and a.ada.num_batches == c.ada.num_batches


def test_resume_shape_mismatch_lists_keys(tmp_path):
    src = make_trainer()
    nets = dict(kind="networks", G=src.G.state_dict(), D=src.D.state_dict(), G_ema=src.G_ema.state_dict(),
                source="ckpt.pkl")
    o, ts = make_options(["--cmax", "16"])
    with pytest.raises(ValueError) as e:
        Trainer(o, ts, resume=nets)
    msg = str(e.value)
    assert "ckpt.pkl" in msg and "differing key(s)" in msg
    assert "synthesis.b4.conv1.weight [32, 32, 3, 3] in checkpoint vs [16, 16, 3, 3] in this run" in msg
    o, ts = make_options(["--map", "2"])
    with pytest.raises(ValueError, match=r"mapping\.fc1\.weight missing in checkpoint \(run has \[32, 32\]\)"):
        Trainer(o, ts, resume=nets)
    # A snapshot's training state is checked the same way.
    with pytest.raises(ValueError, match="state.pt: G does not match"):
        make_trainer(["--cmax", "16"], resume=dict(kind="state", state=src.state_dict(), source="state.pt"))


def test_finetune_from_official_pickle_and_from_snapshot(tmp_path):
    from tests._ckpt_fakes import fake_official_modules, official_pickle_bytes

    src = make_trainer()
    for _ in range(2):
        src.train_step()
    with fake_official_modules(tmp_path / "marker"):
        data = official_pickle_bytes({"G": (src.G, src.options["G_kwargs"]), "D": (src.D, src.options["D_kwargs"]),
                                      "G_ema": (src.G_ema, src.options["G_kwargs"])}, marker=tmp_path / "marker")
    (tmp_path / "net.pkl").write_bytes(data)
    nets = snap_io.load_resume_networks(tmp_path / "net.pkl")
    assert not (tmp_path / "marker").exists()
    tr = make_trainer(["--resume", str(tmp_path / "net.pkl"), "--freezed", "3"], resume=dict(kind="networks", **nets))
    for name in ("G", "D", "G_ema"):
        ref, got = getattr(src, name).state_dict(), getattr(tr, name).state_dict()
        assert all(torch.equal(ref[k], got[k]) for k in ref), name
    assert tr.batch_idx == 0 and tr.options["ada_kimg"] == 100
    tr.train_step()

    # Our own G_ema snapshot (safetensors) has no D: G and G_ema start from it, D from scratch.
    from stylemix.checkpoints import save_generator

    save_generator(src.G_ema, tmp_path / "g.safetensors", provenance={"test": True})
    nets = snap_io.load_resume_networks(tmp_path / "g.safetensors")
    assert nets["D"] is None
    logs = []
    tr = make_trainer(resume=dict(kind="networks", **nets), log=logs.append)
    assert torch.equal(tr.G.state_dict()["synthesis.b16.conv1.weight"], src.G_ema.state_dict()["synthesis.b16.conv1.weight"])
    assert any("no D" in m for m in logs)


def test_finetune_starts_the_path_length_mean_at_the_measured_lengths(tmp_path):
    from stylemix.checkpoints import save_generator

    src = make_trainer()
    for _ in range(2):
        src.train_step()
    save_generator(src.G_ema, tmp_path / "g.safetensors", provenance={"test": True})
    nets = snap_io.load_resume_networks(tmp_path / "g.safetensors")
    # The same G and seed twice: one starts pl_mean at its first measurement, one (the official way,
    # kept for runs from scratch) moves it 1% of the way from 0. The first PL step sees the same lengths.
    # (each built right before its step: building a trainer seeds torch's global RNG)
    measured = make_trainer(resume=dict(kind="networks", **nets))
    assert measured.loss.pl_mean_from_first and not src.loss.pl_mean_from_first
    measured.train_step()
    official = make_trainer(resume=dict(kind="networks", **nets))
    official.loss.pl_mean_from_first = False
    official.train_step()
    assert float(official.loss.pl_mean) > 0
    assert float(measured.loss.pl_mean) == pytest.approx(float(official.loss.pl_mean) / 0.01, rel=1e-4)
    assert not measured.loss.pl_mean_from_first

    # Pending through --warmup-d (G's first PL step comes after it), also across a training-state resume.
    warm = make_trainer(["--warmup-d", "0.008"], resume=dict(kind="networks", **nets))
    warm.train_step()
    assert warm.loss.pl_mean_from_first and float(warm.loss.pl_mean) == 0
    state = warm.state_dict()
    again = make_trainer(["--warmup-d", "0.008"])
    assert not again.loss.pl_mean_from_first
    again.load_state_dict(state)
    assert again.loss.pl_mean_from_first
    while again.batch_idx <= 4:  # past the warm-up, and then G's first PL step (every 4th step)
        again.train_step()
    assert not again.loss.pl_mean_from_first and float(again.loss.pl_mean) > 0


def test_cli_finetune_snapshots_count_the_checkpoints_images(tmp_path):
    from stylemix.checkpoints import load_generator, read_header, save_generator

    data = write_png_folder(tmp_path / "data")
    src = make_trainer()
    save_generator(src.G_ema, tmp_path / "g.safetensors",
                   provenance={"trainer": "training.stylegan2", "kimg": 12.0, "kimg_total": 300.0})
    rc, _, err = run_main(["--data", str(data), "--outdir", str(tmp_path / "runs"), *TINY, "--kimg", "0.008",
                           "--tick", "0.004", "--snap", "1", "--no-progress", "--resume", str(tmp_path / "g.safetensors")])
    assert rc == 0, err
    run = next((tmp_path / "runs").iterdir())
    assert json.loads((run / "training_options.json").read_text())["resume_kimg"] == 300.0
    prov = read_header(snap_io.read_latest(run)["network_path"])["provenance"]
    assert prov["kimg"] == 0.008 and prov["kimg_total"] == pytest.approx(300.008)
    # resuming that run's last snapshot in turn counts on from there
    nets = snap_io.load_resume_networks(snap_io.read_latest(run)["network_path"])
    assert nets["earlier_kimg"] == pytest.approx(300.008)
    assert nets["G_kwargs"] == src.G_ema.init_kwargs and nets["D_kwargs"] is None  # a G_ema file: no D
    nets = snap_io.load_resume_networks(snap_io.read_latest(run)["state_path"])
    assert nets["earlier_kimg"] == pytest.approx(300.008)
    assert nets["G_kwargs"] == src.G_ema.init_kwargs and nets["D_kwargs"]["channel_base"] == 256
    assert load_generator(snap_io.read_latest(run)["network_path"]).img_resolution == 16


def test_snapshot_files_and_atomicity(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    tr = make_trainer(run_dir=run)
    tr.train_step()
    info = tr.save_snapshot()
    assert info["snapshot"] == "000000.004"
    latest = snap_io.read_latest(run)
    assert latest["step"] == 1 and latest["state_path"].name == "training-state-000000.004.pt"
    state = snap_io.load_training_state(latest["state_path"])  # weights_only=True
    assert state["counters"]["cur_nimg"] == 4 and set(state["rng"][0]) >= {"torch", "numpy", "python"}
    assert snap_io.is_training_state(latest["state_path"])
    from stylemix.checkpoints import load_generator

    G = load_generator(latest["network_path"])
    assert G.img_resolution == 16 and G.provenance["step"] == 1
    assert not list(run.glob(".*.tmp"))
    # A write that fails half-way leaves the previous file intact and no temporary file.
    path = run / "x.pt"
    snap_io.atomic_torch_save({"a": 1}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        snap_io.atomic_torch_save({"a": Boom()}, path)
    assert torch.load(path, weights_only=True) == {"a": 1} and not list(run.glob(".*.tmp"))


# ------------------------------------------------------------------------------------------------
# CLI


def test_cli_errors_are_one_line(tmp_path):
    from stylemix.checkpoints import save_generator

    data = write_png_folder(tmp_path / "data")
    other = tmp_path / "other.safetensors"
    save_generator(make_trainer(["--cmax", "16"]).G_ema, other, provenance={})
    cases = [
        (["--data", str(tmp_path / "missing"), "--outdir", str(tmp_path / "o")], "no such file"),
        (["--data", str(data), "--outdir", str(tmp_path / "o"), "--cfg", "nope"], "--cfg 'nope'"),
        (["--data", str(write_png_folder(tmp_path / "d24", n=2, size=24)), "--outdir", str(tmp_path / "o")],
         "power of two"),
        (["--data", str(data), "--outdir", str(tmp_path / "o"), "--p", "0.3"], "--aug fixed"),
        (["--data", str(data), "--outdir", str(tmp_path / "o"), "--batch", "6", "--cfg", "lite"], "minibatch-stddev"),
        (["--data", str(data), "--outdir", str(tmp_path / "o"), "--batch", "8", "--batch-gpu", "3"], "must divide"),
        (["--data", str(data), "--outdir", str(tmp_path / "o"), "--cond"], "needs labels"),
        (["--resume", str(data)], "not a run directory"),
        (["--data", str(data), "--outdir", str(tmp_path / "o"), *TINY, "--resume", str(other)],
         "G does not match this run's configuration"),
    ]
    for argv, needle in cases:
        rc, out, err = run_main(argv + ["--no-progress"])
        assert rc == 1, (argv, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (argv, err)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_cli_dry_run_prints_options(tmp_path):
    data = write_png_folder(tmp_path / "data")
    rc, out, err = run_main(["--data", str(data), "--outdir", str(tmp_path / "o"), "--cfg", "paper256",
                             "--mirror", "--dry-run"])
    assert rc == 0, err
    o = json.loads(out)
    assert o["cfg"] == "paper256" and o["batch_size"] == 64 and o["batch_gpu"] == 8
    assert o["G_kwargs"]["synthesis_kwargs"]["channel_base"] == 16384 and o["G_kwargs"]["mapping_kwargs"]["num_layers"] == 8
    assert o["data"]["xflip"] and o["data"]["size"] == 32 and o["desc"] == "data-mirror-paper256-ada"
    assert not (tmp_path / "o").exists()


def _wait_for(pred, proc, timeout, what):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = pred()
        if v:
            return v
        if proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}: "
                                 f"{proc.stdout.read()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}")


def test_sigkill_then_resume_continues(tmp_path):
    data = write_png_folder(tmp_path / "data")
    outdir = tmp_path / "runs"
    cmd = [sys.executable, "-m", "training.stylegan2.train", "--data", str(data), "--outdir", str(outdir), *TINY,
           "--kimg", "1", "--tick", "0.008", "--snap", "1", "--keep-states", "0", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        def snapshot_at_step3():
            runs = list(outdir.glob("0*")) if outdir.exists() else []
            if runs and (runs[0] / "latest.json").exists():
                try:
                    if json.loads((runs[0] / "latest.json").read_text())["step"] >= 3:
                        return runs[0]
                except ValueError:
                    return None
            return None
        run_dir = _wait_for(snapshot_at_step3, proc, 120, "a snapshot at step >= 3")
        time.sleep(0.2)  # mid-training, possibly mid-write
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    latest = json.loads((run_dir / "latest.json").read_text())
    step0, nimg0 = latest["step"], latest["cur_nimg"]
    assert step0 >= 3
    state = snap_io.load_training_state(run_dir / latest["state"])
    p0 = state["ada"]["p"]

    from stylemix.ops.conv2d_resample import bf16_supported

    bf16 = ["--cpu-bf16"] if bf16_supported() else []  # a runtime option that --resume may switch on
    resumed = subprocess.run([sys.executable, "-m", "training.stylegan2.train", "--resume", str(run_dir),
                              "--kimg", str((nimg0 + 16) / 1000), "--no-progress", *bf16],
                             cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"at step {step0}," in resumed.stdout and f"p {p0:.4f}" in resumed.stdout

    lines = [json.loads(x) for x in (run_dir / "stats.jsonl").read_text().splitlines()]
    events = [r for r in lines if "event" in r]
    assert [e["event"] for e in events] == ["start", "resume"] and events[1]["step"] == step0
    assert all(e["device"].endswith(f"torch {torch.__version__}") for e in events)  # what it trained on
    assert events[1]["p"] == pytest.approx(p0)
    after = lines[lines.index(events[1]) + 1:]
    assert after and all(r["step"] > step0 for r in after) and after[-1]["step"] == step0 + 4
    assert all(r.get("cpu_conv_dtype") == ("bfloat16" if bf16 else None) for r in after)
    assert not any("cpu_conv_dtype" in r for r in lines[:lines.index(events[1])])
    ticks = [r["tick"] for r in lines if "event" not in r]
    assert ticks == list(range(len(ticks)))  # no tick logged twice, none missing
    final = json.loads((run_dir / "latest.json").read_text())
    assert final["step"] == step0 + 4 and final["cur_nimg"] == nimg0 + 16

    from stylemix.checkpoints import load_generator

    nets = sorted(run_dir.glob("network-snapshot-*.safetensors"))
    states = sorted(run_dir.glob("training-state-*.pt"))
    assert len(nets) >= 3 and len(states) >= 3
    for p in nets:
        assert load_generator(p).img_resolution == 16
    for p in states:
        assert snap_io.load_training_state(p)["counters"]["cur_nimg"] == snap_io.parse_tag(p.name)
    assert not list(run_dir.glob(".*.tmp"))
    for name in ("reals.png", "fakes_init.png", "stats.png", "training_options.json"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "training_options.json").read_text())["total_kimg"] == (nimg0 + 16) / 1000
    from PIL import Image

    assert Image.open(run_dir / f"fakes{snap_io.snapshot_tag(nimg0 + 16)}.png").size == (16 * 8, 16 * 8)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_gloo_processes_stay_identical(tmp_path):
    data = write_png_folder(tmp_path / "data")
    outdir = tmp_path / "runs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "training.stylegan2.train", "--data", str(data),
           "--outdir", str(outdir), *[a if a != "4" else "8" for a in TINY], "--batch-gpu", "4",
           "--kimg", "0.04", "--tick", "0.016", "--snap", "1", "--no-progress"]
    r = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    runs = list(outdir.iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("00000-data-lite")  # one run dir: only rank 0 writes
    opts = json.loads((runs[0] / "training_options.json").read_text())
    assert opts["num_gpus"] == 2 and opts["batch_size"] == 8 and opts["batch_gpu"] == 4
    recs = [json.loads(x) for x in (runs[0] / "stats.jsonl").read_text().splitlines()]
    snaps = [x for x in recs if "snapshot" in x]
    assert len(snaps) >= 3 and snaps[-1]["step"] == 5
    for x in snaps:  # G, D, G_ema parameter digests of rank 0 and rank 1
        assert len(x["rank_digests"]) == 2 and x["rank_digests"][0] == x["rank_digests"][1]
    assert r.stdout.count("run directory:") == 1


def test_ema_half_life_option():
    from training.stylegan2.ship import training_command

    tr = make_trainer(["--ema", "0.05"])
    assert tr.options["ema_kimg"] == 0.05 and "-ema0.05" in tr.options["desc"]
    assert "--ema 0.05" in training_command(tr.options)
    assert make_options()[0]["ema_kimg"] == resolve_spec("lite", resolution=16, gpus=1)["ema"]
    with pytest.raises(ValueError, match="--ema must be > 0"):
        make_options(["--ema", "-1"])
    # G_ema = lerp(G, G_ema, 0.5 ** (batch / ema_nimg)) with the ramp-up capping ema_nimg early on
    g_ema0 = [p.detach().clone() for p in tr.G_ema.parameters()]
    tr.cur_nimg = 10_000  # past the ramp-up's cap for 50 images
    tr.train_step()
    beta = 0.5 ** (tr.batch_size / 50.0)
    for p0, pe, pg in zip(g_ema0, tr.G_ema.parameters(), tr.G.parameters()):
        torch.testing.assert_close(pe.detach(), pg.detach() + beta * (p0 - pg.detach()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_with_a_snapshot_then_resume(tmp_path, sig):
    # A stop signal mid-run writes a snapshot at the step it stopped on (between snapshot ticks),
    # with DataLoader workers in the same process group (as under `timeout` or a terminal's Ctrl-C).
    data = write_png_folder(tmp_path / "data")
    outdir = tmp_path / "runs"
    cmd = [sys.executable, "-m", "training.stylegan2.train", "--data", str(data), "--outdir", str(outdir),
           *TINY[:-2], "--workers", "2", "--kimg", "10", "--tick", "0.2", "--snap", "1000", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        def two_ticks():
            runs = list(outdir.glob("0*")) if outdir.exists() else []
            st = runs[0] / "stats.jsonl" if runs else None
            if st is not None and st.exists() and st.read_text().count('"tick"') >= 2:
                return runs[0]
            return None
        run_dir = _wait_for(two_ticks, proc, 120, "two ticks")
        os.killpg(proc.pid, sig)  # the whole group: trainer and its workers
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + sig, out
    assert f"stopped by {signal.Signals(sig).name}" in out and f"--resume {run_dir}" in out
    lines = [json.loads(x) for x in (run_dir / "stats.jsonl").read_text().splitlines()]
    last = [r for r in lines if "tick" in r][-1]
    latest = json.loads((run_dir / "latest.json").read_text())
    assert latest["step"] == last["step"] > 1 and last["kimg"] < 10 and "snapshot" in last
    assert snap_io.load_training_state(run_dir / latest["state"])["counters"]["batch_idx"] == latest["step"]
    resumed = subprocess.run([sys.executable, "-m", "training.stylegan2.train", "--resume", str(run_dir),
                              "--kimg", str(latest["cur_nimg"] / 1000 + 0.008), "--no-progress"],
                             cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"at step {latest['step']}," in resumed.stdout
    assert json.loads((run_dir / "latest.json").read_text())["step"] == latest["step"] + 2


def test_resume_run_dir_with_new_batch_lr_ema_gamma_and_moved_data(tmp_path):
    import shutil

    data = write_png_folder(tmp_path / "data")
    outdir = tmp_path / "runs"
    rc, out, err = run_main(["--data", str(data), "--outdir", str(outdir), *TINY, "--kimg", "0.016", "--tick", "0.008",
                             "--snap", "1", "--no-progress"])
    assert rc == 0, err
    run = next(outdir.glob("0*"))
    step0 = json.loads((run / "latest.json").read_text())["step"]
    assert step0 == 4
    moved = tmp_path / "elsewhere"
    shutil.copytree(data, moved)
    shutil.rmtree(data)
    rc, _, err = run_main(["--resume", str(run), "--kimg", "0.032", "--no-progress"])
    assert rc == 1 and "no such file" in err  # the run's own data path is gone
    rc, _, err = run_main(["--resume", str(run), "--cfg", "auto", "--no-progress"])
    assert rc == 1 and "may change (got --cfg)" in err
    rc, _, err = run_main(["--resume", str(run), "--data", str(moved), "--batch", "6", "--no-progress"])
    assert rc == 1 and "--batch-gpu 4 must divide the per-process batch 6" in err
    rc, _, err = run_main(["--resume", str(run), "--data", str(moved), "--batch", "6", "--batch-gpu", "6"])
    assert rc == 1 and "minibatch-stddev group size (4)" in err
    assert json.loads((run / "training_options.json").read_text())["batch_size"] == 4  # errors change nothing

    # a copy of the run directory continues as its own run, and records where it now lives
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    run = copy
    rc, out, err = run_main(["--resume", str(run), "--data", str(moved), "--batch", "8", "--glr", "0.001",
                             "--ema", "0.02", "--gamma", "0.5", "--pl-weight", "0", "--mixing", "0.5",
                             "--map-lr", "3", "--kimg", "0.032", "--no-progress"])
    assert rc == 0, err
    o = json.loads((run / "training_options.json").read_text())
    assert (o["batch_size"], o["batch_gpu"], o["G_opt_kwargs"]["lr"], o["D_opt_kwargs"]["lr"], o["ema_kimg"],
            o["loss_kwargs"]["r1_gamma"]) == (8, 4, 0.001, 0.0025, 0.02, 0.5)
    assert (o["loss_kwargs"]["pl_weight"], o["loss_kwargs"]["style_mixing_prob"]) == (0, 0.5)
    assert o["G_opt_kwargs"]["mapping_lr_mult"] == 3
    assert o["data"]["path"] == str(moved.resolve())
    assert Path(o["run_dir"]).resolve() == copy.resolve()
    assert {k: v for k, v in o["resume_changes"][-1].items() if k != "timestamp"} == dict(
        batch=8, glr=0.001, ema=0.02, gamma=0.5, pl_weight=0, mixing=0.5, map_lr=3, data=str(moved.resolve()),
        at_kimg=0.016)
    latest = json.loads((run / "latest.json").read_text())
    assert latest["cur_nimg"] == 32 and latest["step"] == step0 + 2  # 16 more images in steps of 8

    # the optimiser keeps its state but takes the new learning rate
    src = make_trainer()
    src.train_step()
    tr = make_trainer(["--glr", "0.001"], resume=dict(kind="state", state=src.state_dict(), source="mem"))
    assert tr.opts["G"].param_groups[0]["lr"] == pytest.approx(0.001 * 4 / 5)
    assert tr.opts["G"].state_dict()["state"][0]["step"] == src.opts["G"].state_dict()["state"][0]["step"]


def test_ctrl_c_under_torchrun_stops_both_ranks_with_a_snapshot(tmp_path):
    # A terminal's Ctrl-C reaches torchrun and both ranks (one process group); torchrun passes it on
    # as well. Both ranks must stop at the same step, rank 0 writing the snapshot, within torchrun's
    # grace period.
    data = write_png_folder(tmp_path / "data")
    outdir = tmp_path / "runs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "training.stylegan2.train", "--data", str(data),
           "--outdir", str(outdir), *[a if a != "4" else "8" for a in TINY], "--batch-gpu", "4",
           "--kimg", "10", "--tick", "0.016", "--snap", "1000", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        def two_ticks():
            runs = list(outdir.glob("0*")) if outdir.exists() else []
            st = runs[0] / "stats.jsonl" if runs else None
            return runs[0] if st is not None and st.exists() and st.read_text().count('"tick"') >= 2 else None
        run_dir = _wait_for(two_ticks, proc, 180, "two ticks")
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "stopped by SIGINT" in out, out[-3000:]
    last = [json.loads(x) for x in (run_dir / "stats.jsonl").read_text().splitlines() if '"tick"' in x][-1]
    latest = json.loads((run_dir / "latest.json").read_text())
    assert latest["step"] == last["step"] and "snapshot" in last and last["kimg"] < 10
    assert len(last["rank_digests"]) == 2 and last["rank_digests"][0] == last["rank_digests"][1]
    state = snap_io.load_training_state(run_dir / latest["state"])
    assert state["counters"]["batch_idx"] == latest["step"] and state["world_size"] == 2
