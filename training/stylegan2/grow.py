"""Widen a trained StyleGAN2 generator and discriminator (more channels) without changing what they
compute, so that a run can go on with more capacity instead of starting again from random weights.

    python -m training.stylegan2.grow RUN_DIR --out grown.safetensors --cbase 4096
    python -m training.stylegan2.train --data faces64.zip --outdir runs --cfg lite --cbase 4096 \\
        --resume grown.safetensors

SRC is a run directory (its latest training state), a training-state file, or a generator that
`train --resume` takes together with its companions (a file, or a registered name such as
synthfaces64-next). `--cbase` / `--cmax` are the new channel_base / channel_max of both networks
(each at least the old one; the default keeps it).

How the function is kept: every channel a layer gains starts from that layer's fresh random init
(a new output row), and every weight that reads a gained channel starts at zero, so nothing
downstream sees the new channels until training moves those zeros. The old weights are multiplied
by sqrt(new fan-in / old fan-in), which undoes the change of the equalized-learning-rate gain
1/sqrt(fan-in) (under demodulation it cancels anyway). G and G_ema gain the same new weights.
The result is checked: the grown G, G_ema and D are run beside the old ones on the same inputs and
the largest difference is printed; above the tolerance (e.g. a wider 4x4 block, whose
minibatch-stddev channel and averages would move) nothing is written.

`--map N` also replaces the mapping network by one of N layers (the mapping's share of the
parameters is small, its compute negligible), and this part is *not* exact: the new network is
distilled from G_ema's (fresh latents every step, `--map-steps` steps of 512, the squared difference of
the w's in units of their spread, Adam with warm-up and cosine decay; `deepen_mapping`). Its held-out
relative error and the largest image difference it leaves are printed and recorded; training from
the result starts where that approximation is (e.g. `synthfaces64-next --map 8`, 2 -> 8 layers:
error 0.53 after 3,000 steps, and 5,000 samples at 10.9x the floor against the source's 4.9x) and
has to catch up first.

Writes OUT (G_ema) and beside it OUT's companions `<stem>_training_generator.safetensors` (G) and
`<stem>_discriminator.safetensors` (D), the names `train --resume OUT` pairs; their provenance keeps
the source's kimg (so the new run's totals go on counting) and records the growth. The optimisers'
state is not carried (a new run starts fresh Adam moments). Errors print one line (`error: ...`)
and exit with status 1.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path

import torch

__all__ = ["widen_state_dict", "widen_kwargs", "grow_networks", "deepen_mapping", "load_source", "main"]

TOLERANCE = 1e-4  # largest allowed |difference| of images (in [-1, 1]) and of D's scores


def widen_kwargs(kwargs: dict, which: str, *, cbase: int | None, cmax: int | None) -> dict:
    """G or D kwargs with channel_base / channel_max replaced (None keeps the old value)."""
    out = copy.deepcopy(kwargs)
    target = out["synthesis_kwargs"] if which in ("G", "G_ema") else out
    for key, value in (("channel_base", cbase), ("channel_max", cmax)):
        old = int(target.get(key, 32768 if key == "channel_base" else 512))
        if value is not None:
            if value < old:
                raise ValueError(f"{key} {value} is below the source's {old}: growing cannot remove channels")
            target[key] = int(value)
    return out


def widen_state_dict(old: dict[str, torch.Tensor], init: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict of a network shaped like `init` (a freshly built, wider one) that computes what
    `old` computes: equal shapes are copied; a grown weight [out, in, ...] gets the old block rescaled
    by sqrt(fan-in ratio), zeros where old outputs read new inputs and `init`'s values for new outputs;
    any other grown tensor (biases, the 4x4 constant) gets the old values in its leading rows."""
    problems = [f"{k} is not in the source" for k in init if k not in old]
    problems += [f"{k} is not in the grown network" for k in old if k not in init]
    out = {}
    for key, fresh in init.items():
        if key not in old:
            continue
        src = old[key].to(fresh.dtype)
        if src.shape == fresh.shape:
            out[key] = src.clone()
            continue
        weight = key.endswith("weight") and src.dim() >= 2
        fixed = src.shape[2:] if weight else src.shape[1:]
        if src.dim() != fresh.dim() or (fresh.shape[2:] if weight else fresh.shape[1:]) != fixed \
                or any(a > b for a, b in zip(src.shape, fresh.shape)):
            problems.append(f"{key} {list(src.shape)} cannot grow into {list(fresh.shape)}")
            continue
        t = fresh.clone()
        rows = src.shape[0]
        if weight:
            cols = src.shape[1]
            t[:rows, :cols] = src * math.sqrt(fresh[0].numel() / src[0].numel())
            t[:rows, cols:] = 0
        else:
            t[:rows] = src
        out[key] = t
    if problems:
        raise ValueError(f"{len(problems)} tensor(s) cannot be grown: " + "; ".join(problems[:10])
                         + ("; ..." if len(problems) > 10 else ""))
    return out


def _build(which: str, kwargs: dict, sd: dict | None = None) -> torch.nn.Module:
    from stylemix.networks.stylegan2 import Discriminator, Generator

    net = (Discriminator if which == "D" else Generator)(**copy.deepcopy(kwargs))
    if sd is not None:
        net.load_state_dict(sd, strict=True)
    net.init_kwargs = copy.deepcopy(kwargs)
    return net.eval().requires_grad_(False)


@torch.no_grad()
def _largest_difference(old: dict, new: dict, *, seed: int, batch: int = 8) -> dict[str, float]:
    """max |old - new| of each network's outputs: the generators on the same z (constant noise), D on
    the old G_ema's images."""
    gen = torch.Generator().manual_seed(seed)
    diffs, images = {}, None
    for which in ("G_ema", "G"):
        if old.get(which) is None:
            continue
        z = torch.randn([batch, old[which].z_dim], generator=gen)
        c = torch.zeros([batch, old[which].c_dim])
        a = old[which](z, c, noise_mode="const")
        b = new[which](z, c, noise_mode="const")
        diffs[which] = float((a - b).abs().max())
        images = a if images is None else images
    if old.get("D") is not None:
        c = torch.zeros([batch, old["D"].c_dim])
        if images is None:
            res = old["D"].img_resolution
            images = torch.randn([batch, old["D"].img_channels, res, res], generator=gen)
        diffs["D"] = float((old["D"](images, c) - new["D"](images, c)).abs().max())
    return diffs


def grow_networks(nets: dict, *, cbase: int | None, cmax: int | None, seed: int = 0) -> tuple[dict, dict]:
    """({'G', 'G_ema', 'D': grown modules or None}, {name: largest output difference}) from
    {'G', 'G_ema', 'D': modules with init_kwargs, or None}. ValueError when a shape cannot grow or the
    grown networks compute something else (difference above TOLERANCE)."""
    grown: dict = {"G": None, "G_ema": None, "D": None}
    g_init = None
    with torch.random.fork_rng(devices=[]):  # building modules draws from it: the caller's stream stays
        for which in ("G", "G_ema", "D"):
            net = nets.get(which)
            if net is None:
                continue
            kwargs = widen_kwargs(net.init_kwargs, which, cbase=cbase, cmax=cmax)
            if which == "D" or g_init is None:
                torch.manual_seed(seed + (1 if which == "D" else 0))
                init = _build(which, kwargs).state_dict()
                if which != "D":
                    g_init = init  # G and G_ema gain the same new weights
            else:
                init = g_init
            old_sd = {k: v.detach().cpu() for k, v in net.state_dict().items()}
            grown[which] = _build(which, kwargs, widen_state_dict(old_sd, init))
    diffs = _largest_difference(nets, grown, seed=seed)
    worse = {k: v for k, v in diffs.items() if not v <= TOLERANCE}
    if worse:
        raise ValueError("the grown networks compute something else (largest |difference| "
                         + ", ".join(f"{k} {v:.3g}" for k, v in worse.items())
                         + f" > {TOLERANCE:g}); only channels above 4x4 can grow this way")
    return grown, diffs


def _mapping_layers(net) -> int:
    return int(net.init_kwargs.get("mapping_kwargs", {}).get("num_layers", 8))


def deepen_mapping(nets: dict, *, num_layers: int, steps: int = 3000, batch: int = 512, lr: float = 3e-3,
                   seed: int = 0, log=None) -> tuple[dict, dict]:
    """({'G', 'G_ema', 'D'}, info) with G's and G_ema's mapping networks replaced by one of `num_layers`
    layers, distilled from G_ema's (G's when there is no G_ema): fresh z every step, loss = the mean
    squared difference of the two w's in units of the teacher's per-dimension spread, Adam (betas 0.9,
    0.99), `lr` with a 200-step warm-up and cosine decay. This is an approximation, not the same
    function: info gives the held-out relative error ('rel_mse', 5,000 z) and that of the random
    start ('rel_mse_start'). The synthesis networks, D and each generator's w_avg are kept."""
    from stylemix.networks.stylegan2 import MappingNetwork

    if num_layers < 1:
        raise ValueError(f"--map must be >= 1, got {num_layers}")
    if steps < 1:
        raise ValueError(f"--map-steps must be >= 1, got {steps}")
    source = nets["G_ema"] if nets.get("G_ema") is not None else nets["G"]
    if source.c_dim:
        raise ValueError("--map: conditional generators are not supported")
    teacher = source.mapping
    if num_layers == teacher.num_layers:
        raise ValueError(f"--map {num_layers}: the mapping network has {num_layers} layers already (distilling "
                         f"it into the same depth would only approximate it)")
    old_kw = source.init_kwargs.get("mapping_kwargs", {})
    lr_mult = float(old_kw.get("lr_multiplier", 0.01))
    z_dim, w_dim = teacher.z_dim, teacher.w_dim

    def target(z):
        with torch.no_grad():
            return teacher(z, None, update_emas=False)[:, 0]

    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = MappingNetwork(z_dim, 0, w_dim, None, num_layers=num_layers, lr_multiplier=1,
                                 layer_features=old_kw.get("layer_features"))
    spread = target(torch.randn([20000, z_dim], generator=gen)).std(dim=0).clamp_min(1e-8)
    z_held = torch.randn([5000, z_dim], generator=gen)

    def rel_mse(z):
        with torch.no_grad():
            return float((((student(z, None) - target(z)) / spread) ** 2).mean())

    info = {"rel_mse_start": rel_mse(z_held)}
    opt = torch.optim.Adam(student.parameters(), lr=lr, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 200) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    for step in range(steps):
        z = torch.randn([batch, z_dim], generator=gen)
        loss = (((student(z, None) - target(z)) / spread) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log is not None and (step % 500 == 0 or step == steps - 1):
            log(f"distilling the mapping network: step {step + 1}/{steps}, relative error {float(loss.detach()):.4f}")
    info.update(rel_mse=rel_mse(z_held), steps=steps, batch=batch, lr=lr, seed=seed)
    # The student trained with lr_multiplier 1; store its weights in the generator's parametrisation
    # (weight and bias gains scale with lr_multiplier), so the generator computes the student's w.
    mapped = {f"mapping.{k}": v.detach() / lr_mult for k, v in student.state_dict().items()}
    out = dict(nets)
    for which in ("G", "G_ema"):
        net = nets.get(which)
        if net is None:
            continue
        kwargs = copy.deepcopy(net.init_kwargs)
        kwargs.setdefault("mapping_kwargs", {})["num_layers"] = num_layers
        sd = {k: v for k, v in net.state_dict().items() if not k.startswith("mapping.fc")}
        sd.update(mapped)
        out[which] = _build(which, kwargs, sd)
    return out, info


def load_source(src) -> tuple[dict, str, float | None]:
    """({'G', 'G_ema', 'D': modules or None}, source description, kimg trained in all or None) from a
    run directory (its latest training state), a training-state file, or a generator with its
    companions (what `train --resume` reads: snapshot.load_resume_networks)."""
    from . import snapshot as snap_io

    p = Path(str(src)).expanduser()
    found = snap_io.load_resume_networks(snap_io.read_latest(p)["state_path"] if p.is_dir() else src)
    nets = {"G": None, "G_ema": None, "D": None}
    for which in nets:
        if found.get(which) is None:
            continue
        kwargs = found.get(f"{which[0]}_kwargs")
        if not isinstance(kwargs, dict):
            raise ValueError(f"{src}: cannot tell the {which} network's configuration")
        nets[which] = _build(which, kwargs, found[which])
    return nets, found["source"], found.get("earlier_kimg")


def _channels(net) -> tuple[int, int]:
    kw = net.init_kwargs.get("synthesis_kwargs", net.init_kwargs)
    return int(kw.get("channel_base", 32768)), int(kw.get("channel_max", 512))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.stylegan2.grow",
                                 description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="run directory, training-state file, or generator file / registered name")
    ap.add_argument("--out", required=True, help="where to write the grown G_ema (.safetensors); companions go beside it")
    ap.add_argument("--cbase", type=int, default=None, help="new channel_base (default: unchanged)")
    ap.add_argument("--cmax", type=int, default=None, help="new channel_max (default: unchanged)")
    ap.add_argument("--map", type=int, default=None, metavar="N",
                    help="replace the mapping network by one of N layers, distilled from the old one (approximate)")
    ap.add_argument("--map-steps", dest="map_steps", type=int, default=3000,
                    help="distillation steps of --map, 512 latents each (default 3000)")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the new channels' random weights and of --map's distillation (default 0)")
    args = ap.parse_args(argv)
    from stylemix.checkpoints import save_discriminator, save_generator

    from .snapshot import companion_file

    try:
        out = Path(args.out)
        if out.suffix != ".safetensors":
            raise ValueError(f"--out must end in .safetensors, got {out}")
        if args.cbase is None and args.cmax is None and args.map is None:
            raise ValueError("give --cbase, --cmax and/or --map: nothing to grow")
        for name, value in (("--cbase", args.cbase), ("--cmax", args.cmax)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        if not out.parent.is_dir():
            raise ValueError(f"{out.parent} is not a folder")
        nets, source, kimg = load_source(args.src)
        if nets["G_ema"] is None and nets["G"] is None:
            raise ValueError(f"{args.src}: no generator to grow")
        first = nets["G_ema"] if nets["G_ema"] is not None else nets["G"]
        old = _channels(first)
        if args.cbase is not None or args.cmax is not None:
            grown, diffs = grow_networks(nets, cbase=args.cbase, cmax=args.cmax, seed=args.seed)
        else:
            grown, diffs = dict(nets), {}
        new = _channels(grown["G_ema"] if grown["G_ema"] is not None else grown["G"])
        grow = dict(channel_base=[old[0], new[0]], channel_max=[old[1], new[1]], seed=args.seed,
                    largest_difference=diffs)
        if args.map is not None:
            grown, info = deepen_mapping(grown, num_layers=args.map, steps=args.map_steps, seed=args.seed,
                                         log=lambda m: print(m, flush=True))
            grow.update(map_layers=[_mapping_layers(first), args.map], map_distillation=info,
                        largest_difference_after_distillation=_largest_difference(nets, grown, seed=args.seed))
        provenance = dict(trainer="training.stylegan2", grown_by="training.stylegan2.grow", source=source,
                          grow=grow)
        if kimg is not None:
            provenance["kimg_total"] = kimg
        # Companions first: a complete OUT means its companions are there.
        files = [(grown["D"], companion_file(out, "discriminator"), save_discriminator)]
        if grown["G_ema"] is not None:
            files.append((grown["G"], companion_file(out, "training-generator"), save_generator))
        files.append((grown["G_ema"] if grown["G_ema"] is not None else grown["G"], out, save_generator))
        written = []
        for net, path, save in files:
            if net is not None:
                written.append(save(net, path, provenance=provenance))
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    params = {k: sum(p.numel() for p in v.parameters()) for k, v in grown.items() if v is not None}
    widened = f"channel_base {old[0]} -> {new[0]}, channel_max {old[1]} -> {new[1]}; " if diffs else ""
    print(f"grew {source}: {widened}"
          + ", ".join(f"{k} {n / 1e6:.2f}M parameters" for k, n in params.items())
          + ("; largest |difference| " + ", ".join(f"{k} {v:.2g}" for k, v in diffs.items()) if diffs else ""))
    if args.map is not None:
        m = grow["map_distillation"]
        after = grow["largest_difference_after_distillation"]
        print(f"mapping network {grow['map_layers'][0]} -> {args.map} layers, distilled in {m['steps']} steps: "
              f"held-out relative error {m['rel_mse']:.4f} (random start {m['rel_mse_start']:.4f}); "
              f"largest |difference| after it " + ", ".join(f"{k} {v:.2g}" for k, v in after.items()))
    print("wrote " + ", ".join(str(p) for p in written))
    if grown["D"] is None:
        print(f"note: {args.src} has no discriminator; `train --resume {out}` starts D from random weights")
    return 0


if __name__ == "__main__":
    sys.exit(main())
