"""Train StyleGAN2-ADA: `python -m training.stylegan2.train --data DATA --outdir DIR [options]`.

    # a CPU-sized model on a dataset zip, 200 kimg, a snapshot every 10 ticks of 4 kimg
    python -m training.stylegan2.train --data faces64.zip --outdir runs --cfg lite --kimg 200 --snap 10
    # fine-tune an official FFHQ-256 pickle (--cfg must give the same shapes) with Freeze-D
    python -m training.stylegan2.train --data beards.zip --outdir runs --cfg paper256 --mirror \\
        --resume ffhq256.pkl --freezed 10
    # continue an interrupted run where it stopped (its own options; --kimg may be raised)
    python -m training.stylegan2.train --resume runs/00003-faces64-lite-kimg200
    # ... on a GPU machine, with its copy of the data, a larger batch and the G_ema half-life scaled to it
    python -m training.stylegan2.train --resume runs/00003-faces64-lite-kimg200 --data /data/faces64.zip \
        --device cuda --batch 256 --ema 80
    # 4 GPUs (or 2 CPU processes with gloo); --batch is the global batch
    torchrun --nproc_per_node 4 -m training.stylegan2.train --data ... --outdir ... --cfg auto --batch 64

Options follow the official StyleGAN2-ADA train.py (--cfg, --gamma, --kimg, --batch, --snap,
--mirror, --cond, --aug, --p, --target, --augpipe, --resume, --freezed, --seed, --workers, --dry-run);
ours: --warmup-d KIMG (D alone first, for checkpoints without a discriminator), --glr/--dlr (as in
StyleGAN3's train.py), --map-lr M (the mapping network at M x G's learning rate), --ema KIMG (G_ema
half-life), --pl-weight W and --mixing P (path-length weight and style-mixing probability, 0 = off,
as the official cifar config sets them), --cfg lite, --tick,
--batch-gpu, --cbase/--cmax/--map/--wdim (network size), --keep-states, --device, --no-progress,
--metrics synthfaces|none with --metrics-n N and --metrics-render-options JSON (evaluated at each
snapshot on rank 0; results in stats.jsonl and metric-synthfaces<N>.jsonl). Each run gets
`<outdir>/<NNNNN>-<dataset>[-cond][-mirror]-<cfg>...`, with
training_options.json, stats.jsonl (one JSON line per tick: losses, p, img/s, kimg, sec), stats.png,
reals.png, fakes_init.png, fakes<kimg>.png, network-snapshot-<kimg>.safetensors (G_ema, loadable
with stylemix.checkpoints.load_generator), training-state-<kimg>.pt and latest.json.

Ctrl-C or SIGTERM stops after the current step (every process, under torchrun) with a snapshot and
training state, then exits with status 130 / 143; `--resume RUN_DIR` continues. A second one, more
than a second later, aborts at once, losing the work since the last snapshot.

Errors print one line (`error: ...`) on stderr and exit with status 1 (2 for bad arguments).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

__all__ = ["main", "build_parser", "build_options", "make_run_dir", "describe_run"]

DEFAULTS = dict(cfg="auto", snap=50, tick=4.0, seed=0, aug="ada", target=0.6, augpipe="bgc", freezed=0,
                keep_states=3, device="auto", metrics="none", metrics_n=5000)
METRICS = ("synthfaces", "none")
# What `--resume RUN_DIR` lets you change when continuing a run (everything else comes from the run).
RESUME_OVERRIDES = ("kimg", "snap", "tick", "workers", "keep_states", "device", "threads", "cpu_bf16", "progress",
                    "dry_run", "resume", "batch", "batch_gpu", "glr", "dlr", "map_lr", "ema", "gamma", "pl_weight",
                    "mixing", "data")
# what a resume may change in how the run continues (recorded in training_options.json's resume_changes)
RESUME_CHANGES = ("batch", "batch_gpu", "glr", "dlr", "map_lr", "ema", "gamma", "pl_weight", "mixing", "data")


class UsageError(ValueError):
    """A bad combination of command-line options."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.stylegan2.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("general")
    g.add_argument("--data", help="training data: image folder, dataset zip or CelebA folder "
                                       "(required unless --resume RUN_DIR; with it, where that run's data is now)")
    g.add_argument("--outdir", help="where run directories are created (required unless --resume RUN_DIR)")
    g.add_argument("--cfg", choices=None, help="lite | auto | stylegan2 | paper256 | paper512 | paper1024 "
                                                 "(default: auto)")
    g.add_argument("--gamma", type=float, help="R1 weight (default: from --cfg)")
    g.add_argument("--pl-weight", dest="pl_weight", type=float,
                   help="path-length regularisation weight, 0 = off (default: 2, as in every official config "
                        "but cifar)")
    g.add_argument("--mixing", type=float, help="style-mixing regularisation probability, 0 = off (default: 0.9, "
                                                "as in every official config but cifar)")
    g.add_argument("--kimg", type=float, help="training length in thousands of images (default: from --cfg)")
    g.add_argument("--batch", type=int, help="global batch size, all processes (default: from --cfg)")
    g.add_argument("--glr", type=float, help="G learning rate (default: from --cfg)")
    g.add_argument("--dlr", type=float, help="D learning rate (default: from --cfg)")
    g.add_argument("--map-lr", dest="map_lr", type=float,
                   help="G's mapping network at this multiple of G's learning rate, on top of its own "
                        "lr_multiplier (default: 1)")
    g.add_argument("--ema", type=float, help="G_ema half-life in kimg (default: from --cfg; the official auto "
                                              "config uses batch * 10 / 32, e.g. 80 for --batch 256)")
    g.add_argument("--batch-gpu", dest="batch_gpu", type=int,
                   help="images per forward pass in each process (gradient accumulation; default: --batch / processes)")
    g.add_argument("--snap", type=int, help="snapshot every N ticks (default: 50)")
    g.add_argument("--tick", type=float, help="tick length in kimg (default: 4)")
    g.add_argument("--seed", type=int, help="random seed (default: 0)")
    g.add_argument("--workers", type=int, help="data loader processes (default: 3 on CUDA, 1 on CPU)")
    g.add_argument("--keep-states", dest="keep_states", type=int,
                   help="keep the last N training-state files, 0 = all (default: 3; G_ema snapshots are all kept)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: cuda when available")
    g.add_argument("--threads", type=int, help="CPU threads per process (default: torch's; use 1 on a shared machine)")
    g.add_argument("--cpu-bf16", dest="cpu_bf16", action="store_true", default=None,
                   help="on CPU, run the training steps' convolutions in bfloat16 (float32 accumulation and everything "
                        "else float32); needs a CPU with AVX512-BF16 or AMX, where lite training is ~1.3x faster "
                        "(benchmarks/bench_train.py --cpu-bf16 compare). May be switched on or off when resuming")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    g.add_argument("--dry-run", dest="dry_run", action="store_true", help="print the resolved options and exit")
    d = p.add_argument_group("dataset")
    d.add_argument("--cond", action="store_true", default=None, help="train a conditional model on dataset labels")
    d.add_argument("--mirror", action="store_true", default=None, help="add x-flipped copies of the images")
    d.add_argument("--resolution", type=int, help="resize the images to this size (default: their own size)")
    n = p.add_argument_group("network size (override --cfg)")
    n.add_argument("--cbase", type=int, help="channel_base: channels at resolution r = cbase / r")
    n.add_argument("--cmax", type=int, help="channel_max")
    n.add_argument("--map", type=int, help="mapping network layers")
    n.add_argument("--wdim", type=int, help="z_dim = w_dim")
    n.add_argument("--mbstd", type=int, help="minibatch-stddev group size")
    a = p.add_argument_group("augmentation (ADA)")
    a.add_argument("--aug", choices=("ada", "fixed", "noaug"), help="default: ada")
    a.add_argument("--p", type=float, help="augment probability for --aug fixed")
    a.add_argument("--target", type=float, help="ADA target value of E[sign(D(real))] (default: 0.6)")
    a.add_argument("--augpipe", help="augmentation preset (default: bgc)")
    t = p.add_argument_group("transfer learning")
    t.add_argument("--resume", help="checkpoint to start from (name, .pkl/.pt/.safetensors, training state) "
                                    "or a run directory to continue (with its own options; --kimg, --snap, --tick, "
                                    "--workers, --keep-states, --device, --threads, --cpu-bf16, --batch, "
                                    "--batch-gpu, --glr, --dlr, --map-lr, --ema, --gamma, --pl-weight, --mixing "
                                    "and --data, for a copy of its dataset, may change)")
    t.add_argument("--freezed", type=int, help="freeze the first N layers of D, counted from the input (default: 0)")
    t.add_argument("--warmup-d", dest="warmup_d", type=float,
                   help="train D alone (G and G_ema weights frozen) for the first KIMG thousand images; for a "
                        "--resume checkpoint without a discriminator (default: 0)")
    m = p.add_argument_group("metrics (at each snapshot, rank 0; see training/stylegan2/quality.py)")
    m.add_argument("--metrics", choices=METRICS, help="synthfaces: the synthfaces64 quality bar (classifier FD vs "
                                                     "held-out renders, its floor, attribute rates) | none (default)")
    m.add_argument("--metrics-n", dest="metrics_n", type=int,
                   help=f"samples per evaluation (default {DEFAULTS['metrics_n']}; the bar is defined at 5000)")
    m.add_argument("--metrics-render-options", dest="metrics_render_options",
                   help='the training distribution as JSON, e.g. \'{"res": 64}\' (default: read from a synthfaces '
                        'dataset zip; required otherwise)')
    return p


# ------------------------------------------------------------------------------------------------
# Options


def _explicit(args) -> dict:
    return {k: v for k, v in vars(args).items() if v is not None and v is not False}


def describe_run(o: dict) -> str:
    """The run directory's description, in the official style ('faces-mirror-auto1-kimg200-ada')."""
    a = o["args"]
    desc = o["data"]["name"]
    if o["data"]["use_labels"]:
        desc += "-cond"
    if o["data"]["xflip"]:
        desc += "-mirror"
    desc += f"-{o['cfg']}"
    if o["cfg"] == "auto":
        desc += f"{o['num_gpus']}"
    if a.get("gamma") is not None:
        desc += f"-gamma{a['gamma']:g}"
    if a.get("pl_weight") is not None:
        desc += f"-pl{a['pl_weight']:g}"
    if a.get("mixing") is not None:
        desc += f"-mixing{a['mixing']:g}"
    if a.get("kimg") is not None:
        desc += f"-kimg{a['kimg']:g}"
    if a.get("batch") is not None:
        desc += f"-batch{a['batch']}"
    for key in ("glr", "dlr", "map_lr", "ema"):
        if a.get(key) is not None:
            desc += f"-{key.replace('_', '')}{a[key]:g}"
    desc += f"-{o['aug']}"
    if a.get("p") is not None:
        desc += f"-p{a['p']:g}"
    if a.get("target") is not None:
        desc += f"-target{a['target']:g}"
    if a.get("augpipe") is not None:
        desc += f"-{a['augpipe']}"
    if a.get("resume") is not None:
        stem = Path(str(a["resume"])).name
        stem = re.sub(r"\.(pkl|pt|pth|safetensors)$", "", stem)
        desc += f"-resume{re.sub(r'[^A-Za-z0-9_.]+', '', stem)[:32] or 'custom'}"
    if a.get("freezed"):
        desc += f"-freezed{a['freezed']}"
    if a.get("warmup_d"):
        desc += f"-warmupd{a['warmup_d']:g}"
    return desc


def build_options(args, *, training_set, world_size: int, device_type: str = "cpu") -> dict:
    """Resolve the command line into the training options (what training_options.json holds)."""
    from .augment import augpipe_specs
    from .configs import CFG_NAMES, check_channels, network_kwargs, resolve_spec

    a = _explicit(args)
    cfg = a.get("cfg", DEFAULTS["cfg"])
    if cfg not in CFG_NAMES:
        raise UsageError(f"--cfg {cfg!r} is not a configuration; choose from {', '.join(CFG_NAMES)}")
    res = training_set.resolution
    spec = resolve_spec(cfg, resolution=res, gpus=world_size)
    for key, name in (("cbase", "cbase"), ("cmax", "cmax"), ("map", "map"), ("wdim", "wdim"), ("mbstd", "mbstd")):
        if name in a:
            if a[name] < 1:
                raise UsageError(f"--{name} must be >= 1, got {a[name]}")
            spec[key] = a[name]
    if "wdim" in a:
        spec["zdim"] = a["wdim"]
    check_channels(spec, res)

    # Batch.
    batch = a.get("batch", spec["mb"])
    if batch < 1 or batch % world_size != 0:
        raise UsageError(f"--batch {batch} must be a positive multiple of the number of processes ({world_size})")
    per_rank = batch // world_size
    if "batch_gpu" in a:
        batch_gpu = a["batch_gpu"]
    elif "batch" in a:
        batch_gpu = per_rank if cfg != "lite" else min(per_rank, spec["batch_gpu"])
    else:
        batch_gpu = min(spec["batch_gpu"], per_rank)
    if batch_gpu < 1 or per_rank % batch_gpu != 0:
        raise UsageError(f"--batch-gpu {batch_gpu} must divide the per-process batch {per_rank}")
    mbstd = min(spec["mbstd"], batch_gpu)
    if batch_gpu % mbstd != 0:
        raise UsageError(f"images per forward pass ({batch_gpu}) must be a multiple of the minibatch-stddev "
                         f"group size ({spec['mbstd']}); change --batch/--batch-gpu or --mbstd")

    # Augmentation (official rules).
    aug = a.get("aug", DEFAULTS["aug"])
    if "p" in a and aug != "fixed":
        raise UsageError("--p can only be given with --aug fixed")
    if aug == "fixed" and "p" not in a:
        raise UsageError("--aug fixed needs --p")
    if "p" in a and not 0 <= a["p"] <= 1:
        raise UsageError(f"--p must be in [0, 1], got {a['p']}")
    if "target" in a and aug != "ada":
        raise UsageError("--target can only be given with --aug ada")
    target = a.get("target", DEFAULTS["target"])
    if not 0 <= target <= 1:
        raise UsageError(f"--target must be in [0, 1], got {target}")
    if "augpipe" in a and aug == "noaug":
        raise UsageError("--augpipe cannot be given with --aug noaug")
    augpipe = a.get("augpipe", DEFAULTS["augpipe"])
    if augpipe not in augpipe_specs:
        raise UsageError(f"--augpipe {augpipe!r} is not a preset; choose from {', '.join(augpipe_specs)}")

    for key in ("glr", "dlr", "map_lr", "ema"):
        if key in a and not a[key] > 0:
            raise UsageError(f"--{key.replace('_', '-')} must be > 0, got {a[key]}")
    glr, dlr = a.get("glr", spec["lrate"]), a.get("dlr", spec["lrate"])
    gamma = a.get("gamma", spec["gamma"])
    if gamma < 0:
        raise UsageError(f"--gamma must be >= 0, got {gamma}")
    pl_weight, mixing = a.get("pl_weight", 2.0), a.get("mixing", 0.9)
    _check_pl_mixing(pl_weight, mixing)
    kimg = a.get("kimg", spec["kimg"])
    if not kimg > 0:
        raise UsageError(f"--kimg must be > 0, got {kimg}")
    snap = a.get("snap", DEFAULTS["snap"])
    if snap < 1:
        raise UsageError(f"--snap must be >= 1, got {snap}")
    tick = a.get("tick", DEFAULTS["tick"])
    if not tick > 0:
        raise UsageError(f"--tick must be > 0, got {tick}")
    freezed = a.get("freezed", DEFAULTS["freezed"])
    if freezed < 0:
        raise UsageError(f"--freezed must be >= 0, got {freezed}")
    warmup_d = a.get("warmup_d", 0.0)
    if not warmup_d >= 0:
        raise UsageError(f"--warmup-d must be >= 0, got {warmup_d}")
    if warmup_d >= kimg:
        raise UsageError(f"--warmup-d {warmup_d:g} leaves no G training within --kimg {kimg:g}")
    workers = a.get("workers", 3 if device_type == "cuda" else 1)
    if workers < 0:
        raise UsageError(f"--workers must be >= 0, got {workers}")

    spec["mbstd"] = spec["mbstd"]
    G_kwargs, D_kwargs = network_kwargs(spec, resolution=res, img_channels=training_set.num_channels,
                                        c_dim=training_set.label_dim, freezed=freezed,
                                        cpu_sized=(cfg == "lite"))
    fine_tune = "resume" in a
    ada_kimg = 100 if fine_tune else 500       # official: ADA reacts faster when fine-tuning
    ema_rampup = None if fine_tune else spec["ramp"]  # official: no EMA ramp-up when fine-tuning

    o = dict(
        cfg=cfg, cfg_spec=spec, num_gpus=world_size,
        data=dict(path=str(Path(args.data).expanduser().resolve()), **training_set.describe()),
        G_kwargs=G_kwargs, D_kwargs=D_kwargs,
        G_opt_kwargs=dict(lr=glr, betas=[0, 0.99], eps=1e-8,
                          **({"mapping_lr_mult": a["map_lr"]} if "map_lr" in a else {})),
        D_opt_kwargs=dict(lr=dlr, betas=[0, 0.99], eps=1e-8),
        loss_kwargs=dict(r1_gamma=gamma, pl_weight=pl_weight, pl_decay=0.01, pl_batch_shrink=2,
                         style_mixing_prob=mixing),
        G_reg_interval=4, D_reg_interval=16,
        batch_size=batch, batch_gpu=batch_gpu,
        ema_kimg=a.get("ema", spec["ema"]), ema_rampup=ema_rampup,
        aug=aug, augpipe=augpipe if aug != "noaug" else None,
        augment_kwargs=dict(augpipe_specs[augpipe]) if aug != "noaug" else None,
        augment_p=float(a.get("p", 0.0)),
        ada_target=target if aug == "ada" else None, ada_interval=4, ada_kimg=ada_kimg,
        total_kimg=kimg, kimg_per_tick=tick, snap=snap, keep_states=a.get("keep_states", DEFAULTS["keep_states"]),
        random_seed=a.get("seed", DEFAULTS["seed"]), workers=workers,
        resume=str(a["resume"]) if fine_tune else None, freezed=freezed, warmup_d_kimg=float(warmup_d),
        args={k: v for k, v in a.items() if k in ("gamma", "pl_weight", "mixing", "kimg", "batch", "glr", "dlr",
                                                  "map_lr", "ema", "p", "target", "augpipe", "resume", "freezed",
                                                  "warmup_d")},
    )
    o["metrics"] = metrics_options(a, data_path=args.data, resolution=res)
    o["desc"] = describe_run(o)
    return o


def _check_pl_mixing(pl_weight, mixing) -> None:
    if pl_weight is not None and not pl_weight >= 0:
        raise UsageError(f"--pl-weight must be >= 0, got {pl_weight}")
    if mixing is not None and not 0 <= mixing <= 1:
        raise UsageError(f"--mixing must be in [0, 1], got {mixing}")


def metrics_options(a: dict, *, data_path, resolution: int) -> dict | None:
    """The `metrics` entry of the options: None, or {'name': 'synthfaces', 'num_samples', 'render_options',
    'reference_seed', 'exclude_seeds', 'render_options_source'}."""
    name = a.get("metrics", DEFAULTS["metrics"])
    if name not in METRICS:
        raise UsageError(f"--metrics {name!r}: choose from {', '.join(METRICS)}")
    if name == "none":
        for k in ("metrics_n", "metrics_render_options"):
            if k in a:
                raise UsageError(f"--{k.replace('_', '-')} needs --metrics synthfaces")
        return None
    from .quality import DEFAULT_REFERENCE_SEED, check_render_options, render_options_from_dataset

    n = a.get("metrics_n", DEFAULTS["metrics_n"])
    if n < 2:
        raise UsageError(f"--metrics-n must be >= 2, got {n}")
    found = render_options_from_dataset(data_path) if data_path is not None else None
    if "metrics_render_options" in a:
        try:
            ro = check_render_options(a["metrics_render_options"])
        except ValueError as exc:
            raise UsageError(f"--metrics-render-options: {exc}") from None
        source = "--metrics-render-options"
    elif found is not None:
        ro, source = found["render_options"], "dataset"
    else:
        raise UsageError(f"--metrics synthfaces: the data ({data_path}) does not record its synthfaces render "
                         f"options; give --metrics-render-options JSON, e.g. '{{\"res\": {resolution}}}'")
    if ro["res"] != resolution:
        raise UsageError(f"--metrics synthfaces: render options res {ro['res']} differ from the training "
                         f"resolution {resolution}")
    exclude = found["train_seeds"] if found is not None else []
    ref = DEFAULT_REFERENCE_SEED
    while ref in exclude or ref + 1 in exclude:
        ref += 2
    return dict(name=name, num_samples=int(n), render_options=ro, render_options_source=source,
                reference_seed=ref, exclude_seeds=exclude)


def make_metrics_fn(metrics: dict | None, run_dir: Path, *, log=None):
    """The Trainer's metrics_fn(G_ema, kimg) for options['metrics'] (None when there are none).
    Each result is also appended to <run_dir>/metric-synthfaces<N>.jsonl; an error is recorded, not raised."""
    if not metrics:
        return None
    import time

    from . import snapshot as snap_io
    from .quality import synthfaces_quality

    n = int(metrics["num_samples"])
    path = Path(run_dir) / f"metric-{metrics['name']}{n // 1000}k.jsonl" if n % 1000 == 0 else \
        Path(run_dir) / f"metric-{metrics['name']}{n}.jsonl"
    state: dict = {}

    def fn(G, kimg: float) -> dict:
        t0 = time.time()
        try:
            if "classifier" not in state:
                from stylemix.attributes import load_classifier

                state["classifier"] = load_classifier("synthfaces64")
            r = synthfaces_quality(G, num_samples=n, reference=metrics["reference_seed"],
                                   render_options=metrics["render_options"], exclude_seeds=metrics["exclude_seeds"],
                                   classifier=state["classifier"], log=log)
            summary = {k: r[k] for k in ("fd", "floor", "ratio", "rate_gaps", "passed")}
        except Exception as exc:  # a broken evaluation must not stop training
            r = summary = {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"}
        line = dict(metric=metrics["name"], kimg=kimg,
                    snapshot=f"network-snapshot-{snap_io.snapshot_tag(int(round(kimg * 1000)))}.safetensors",
                    results=r, total_time=round(time.time() - t0, 2), timestamp=time.time())
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line, sort_keys=True) + "\n")
        if log is not None:
            if "error" in summary:
                log(f"metrics {metrics['name']}: {summary['error']}")
            else:
                log(f"metrics {metrics['name']} ({n}): fd {r['fd']:.4f} floor {r['floor']:.4f} ratio "
                    f"{r['ratio'] if r['ratio'] is not None else float('inf'):.2f} gaps "
                    + " ".join(f"{a} {g:+.3f}" for a, g in r["rate_gaps"].items())
                    + f" -> {'pass' if r['passed'] else 'fail'} ({time.time() - t0:.0f} s)")
        return dict(summary, name=metrics["name"], num_samples=n)

    return fn


def options_for_resumed_run(args, run_dir: Path, *, world_size: int) -> dict:
    """The options of the run in `run_dir`, with the few allowed overrides applied."""
    path = run_dir / "training_options.json"
    if not path.is_file():
        raise UsageError(f"--resume {run_dir}: a directory, but not a run directory (no training_options.json)")
    try:
        o = json.loads(path.read_text())
    except ValueError as exc:
        raise UsageError(f"{path}: unreadable ({exc})") from None
    a = _explicit(args)
    conflicts = sorted(k for k in a if k not in RESUME_OVERRIDES)
    if conflicts:
        raise UsageError("--resume RUN_DIR continues that run with its own options; only --kimg, --snap, --tick, "
                         "--workers, --keep-states, --device, --threads, --cpu-bf16, --batch, --batch-gpu, --glr, "
                         "--dlr, --map-lr, --ema, --gamma, --pl-weight, --mixing and --data may change (got " +
                         ", ".join("--" + k.replace("_", "-") for k in conflicts) + ")")
    if "kimg" in a:
        if not a["kimg"] > 0:
            raise UsageError(f"--kimg must be > 0, got {a['kimg']}")
        o["total_kimg"] = a["kimg"]
    if "snap" in a:
        if a["snap"] < 1:
            raise UsageError(f"--snap must be >= 1, got {a['snap']}")
        o["snap"] = a["snap"]
    if "tick" in a:
        if not a["tick"] > 0:
            raise UsageError(f"--tick must be > 0, got {a['tick']}")
        o["kimg_per_tick"] = a["tick"]
    if "workers" in a:
        o["workers"] = a["workers"]
    if "keep_states" in a:
        o["keep_states"] = a["keep_states"]
    for key, (part, field) in (("glr", ("G_opt_kwargs", "lr")), ("dlr", ("D_opt_kwargs", "lr")),
                               ("map_lr", ("G_opt_kwargs", "mapping_lr_mult")),
                               ("ema", (None, "ema_kimg")), ("gamma", ("loss_kwargs", "r1_gamma"))):
        if key in a:
            if not (a[key] > 0 or (key == "gamma" and a[key] == 0)):
                raise UsageError(f"--{key.replace('_', '-')} must be > {'=' if key == 'gamma' else ''} 0, "
                                 f"got {a[key]}")
            (o if part is None else o[part])[field] = a[key]
    _check_pl_mixing(a.get("pl_weight"), a.get("mixing"))
    for key, field in (("pl_weight", "pl_weight"), ("mixing", "style_mixing_prob")):
        if key in a:
            o["loss_kwargs"][field] = a[key]
    if "batch" in a or "batch_gpu" in a:
        batch = a.get("batch", o["batch_size"])
        if batch < 1 or batch % world_size != 0:
            raise UsageError(f"--batch {batch} must be a positive multiple of the number of processes ({world_size})")
        per_rank = batch // world_size
        batch_gpu = a.get("batch_gpu", min(per_rank, o["batch_gpu"]))
        if batch_gpu < 1 or per_rank % batch_gpu != 0:
            raise UsageError(f"--batch-gpu {batch_gpu} must divide the per-process batch {per_rank}")
        group = o["D_kwargs"].get("epilogue_kwargs", {}).get("mbstd_group_size") or 1
        if batch_gpu % group != 0:
            raise UsageError(f"images per forward pass ({batch_gpu}) must be a multiple of this run's "
                             f"minibatch-stddev group size ({group})")
        o["batch_size"], o["batch_gpu"] = batch, batch_gpu
    changes = {k: (str(Path(a[k]).expanduser().resolve()) if k == "data" else a[k]) for k in RESUME_CHANGES if k in a}
    if changes:
        from . import snapshot as snap_io

        try:  # where the changes take effect: the snapshot this resume starts from
            at_kimg = snap_io.read_latest(run_dir)["cur_nimg"] / 1000
        except (ValueError, KeyError, TypeError):
            at_kimg = None  # no snapshot yet: the resume itself reports that
        o.setdefault("resume_changes", []).append(dict(changes, at_kimg=at_kimg, timestamp=round(time.time(), 3)))
    if world_size != o["num_gpus"]:
        batch = o["batch_size"]
        if batch % world_size != 0:
            raise UsageError(f"this run's batch {batch} cannot be split over {world_size} processes")
        per_rank = batch // world_size
        if per_rank % o["batch_gpu"] != 0:
            o["batch_gpu"] = per_rank
        o["num_gpus"] = world_size
    return o


def make_run_dir(outdir, desc: str) -> Path:
    """`outdir/<NNNNN>-<desc>`, numbered one past the highest existing run (official scheme)."""
    outdir = Path(outdir).expanduser()
    outdir.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        ids = [int(m.group()) for x in os.listdir(outdir)
               if (outdir / x).is_dir() and (m := re.match(r"^\d+", x))]
        run_dir = outdir / f"{max(ids, default=-1) + 1:05d}-{desc}"
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a run directory in {outdir}")


# ------------------------------------------------------------------------------------------------
# Processes


def _init_distributed(device_choice: str):
    import torch
    import torch.distributed as dist

    want_cuda = device_choice == "cuda" or (device_choice == "auto" and torch.cuda.is_available())
    if device_choice == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda, but CUDA is not available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, torch.device("cuda" if want_cuda else "cpu")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if want_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    kwargs = dict(backend=backend, init_method="env://")
    if backend == "nccl":
        kwargs["device_id"] = device
    dist.init_process_group(**kwargs)
    return rank, world, device


def _from_rank0(fn, rank: int, world: int):
    """Run fn() on rank 0 and hand its result (or its error) to every rank."""
    if world == 1:
        return fn()
    import torch.distributed as dist

    box = [None]
    if rank == 0:
        try:
            box = [("ok", fn())]
        except Exception as exc:  # forwarded to every rank, then raised there
            box = [("error", (type(exc).__name__, str(exc)))]
    dist.broadcast_object_list(box, src=0)
    status, payload = box[0]
    if status == "error":
        name, msg = payload
        raise (ValueError if name in ("ValueError", "UsageError", "CheckpointError") else RuntimeError)(msg)
    return payload


def _run(args) -> int:
    import torch
    import torch.distributed as dist

    from . import snapshot as snap_io
    from .training_loop import Trainer, open_training_set

    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.cpu_bf16:
        from stylemix.ops.conv2d_resample import bf16_supported
        if not bf16_supported():
            raise UsageError("--cpu-bf16: this CPU has no native bfloat16 support (AVX512-BF16 or AMX); leave it out")
    rank, world, device = _init_distributed(args.device or DEFAULTS["device"])
    try:
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = False  # the official default: TF32 off
            torch.backends.cudnn.allow_tf32 = False
        # Decided and read on rank 0 (other machines need not see the run directory).
        def find_run_dir():
            if args.resume is not None and Path(args.resume).expanduser().is_dir():
                run = Path(args.resume).expanduser().resolve()
                return str(run), options_for_resumed_run(args, run, world_size=world)
            return None, None
        resume_dir, options = _from_rank0(find_run_dir, rank, world)
        if resume_dir is not None:
            resume_dir = Path(resume_dir)
            moved = args.data is not None  # the same data elsewhere (another machine, another copy)
            training_set = open_training_set(args.data if moved else options["data"]["path"],
                                             use_labels=options["data"]["use_labels"],
                                             xflip=options["data"]["xflip"],
                                             resolution=options["data"]["resolution"])
            if moved:
                new = training_set.describe()
                bad = [k for k in ("resolution", "num_channels", "label_dim") if new[k] != options["data"][k]]
                if bad:
                    raise UsageError(f"--data {args.data}: does not fit this run (" + ", ".join(
                        f"{k} {new[k]} vs {options['data'][k]}" for k in bad) + ")")
                options["data"] = dict(path=str(Path(args.data).expanduser().resolve()), **new)
        else:
            if args.data is None:
                raise UsageError("--data is required (unless --resume names a run directory)")
            if args.outdir is None and not args.dry_run:
                raise UsageError("--outdir is required (unless --resume names a run directory)")
            if args.resolution is not None and args.resolution < 4:
                raise UsageError(f"--resolution must be a power of two >= 4, got {args.resolution}")
            training_set = open_training_set(args.data, use_labels=bool(args.cond), xflip=bool(args.mirror),
                                             resolution=args.resolution)
            options = build_options(args, training_set=training_set, world_size=world, device_type=device.type)

        if args.dry_run:
            if rank == 0:
                print(json.dumps(options, indent=2, sort_keys=True))
            return 0

        # The resume source, read once (rank 0) and handed to every rank.
        resume = None
        if resume_dir is not None:
            def load_state():
                latest = snap_io.read_latest(resume_dir)
                return dict(kind="state", state=snap_io.load_training_state(latest["state_path"]),
                            source=str(latest["state_path"]))
            resume = _from_rank0(load_state, rank, world)
            run_dir = resume_dir
        else:
            if options.get("resume"):
                def load_nets():
                    nets = snap_io.load_resume_networks(options["resume"])
                    return dict(kind="networks", **nets)
                resume = _from_rank0(load_nets, rank, world)
                # what the checkpoint had seen, so snapshots and ship count the images in all
                options["resume_kimg"] = resume.get("earlier_kimg")
            run_dir = None

        # Built before a new run directory exists: a checkpoint that does not fit leaves nothing behind.
        trainer = Trainer(options, training_set, device=device, resume=resume,
                          progress=args.progress is not False and rank == 0)
        if run_dir is None:
            def create():
                return str(make_run_dir(args.outdir, options["desc"]))
            run_dir = Path(_from_rank0(create, rank, world))
        trainer.run_dir = run_dir
        if args.cpu_bf16 and device.type == "cpu":
            trainer.cpu_conv_dtype = torch.bfloat16
        if rank == 0:
            trainer.metrics_fn = make_metrics_fn(options.get("metrics"), run_dir,
                                                 log=lambda m: print(m, flush=True))
        options["run_dir"] = trainer.options["run_dir"] = str(run_dir)
        if rank == 0:
            if resume_dir is None:
                snap_io.atomic_write_json(run_dir / "training_options.json",
                                          dict(options, created=datetime.datetime.now().isoformat(timespec="seconds")))
                print(f"run directory: {run_dir}", flush=True)
            else:
                stored = json.loads((run_dir / "training_options.json").read_text())
                changed = {k: options[k] for k in ("total_kimg", "snap", "kimg_per_tick", "workers", "keep_states",
                                                   "num_gpus", "batch_gpu", "batch_size", "G_opt_kwargs",
                                                   "D_opt_kwargs", "ema_kimg", "loss_kwargs", "data",
                                                   "resume_changes", "run_dir")
                           if k in options and stored.get(k) != options[k]}
                if changed:
                    stored.update(changed)
                    snap_io.atomic_write_json(run_dir / "training_options.json", stored)
            n_g = sum(p.numel() for p in trainer.G.parameters())
            n_d = sum(p.numel() for p in trainer.D.parameters())
            print(f"{options['cfg']}: {training_set.resolution}x{training_set.resolution}, G {n_g / 1e6:.2f}M params, "
                  f"D {n_d / 1e6:.2f}M trainable, batch {options['batch_size']} ({world} process(es) x "
                  f"{options['batch_size'] // world // options['batch_gpu']} round(s) x {options['batch_gpu']}), "
                  f"device {device}", flush=True)
        last = _run_with_graceful_stop(trainer)
        if world > 1:
            # Rank 0 may still be writing the last snapshot: every rank waits for it before the group
            # goes (each then leaves through _end_process).
            dist.barrier()
        if last.get("stopped"):
            return 128 + int(signal.Signals[last["stopped"]])  # the shell's code for "ended by that signal"
        return 0
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _run_with_graceful_stop(trainer) -> dict:
    """trainer.run() with SIGINT/SIGTERM asking for a stop with a snapshot; a second one aborts."""
    if threading.current_thread() is not threading.main_thread():
        return trainer.run()

    first = []

    def handler(signum, _frame):
        if trainer.stop_signal is not None:
            # torchrun passes a terminal's Ctrl-C on to the ranks, which got it already: a repeat
            # within a second is that echo; a later one is the user insisting.
            if time.monotonic() - first[0] > 1.0:
                raise KeyboardInterrupt
            return
        first.append(time.monotonic())
        trainer.request_stop(signum)
        if trainer.rank == 0:
            print(f"{signal.Signals(signum).name}: stopping after this step with a snapshot "
                  f"(send it again to abort without one)", file=sys.stderr, flush=True)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return trainer.run()
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 1
    except Exception as exc:
        if os.environ.get("STYLEMIX_DEBUG"):
            traceback.print_exc()
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {type(exc).__name__}: {msg}", file=sys.stderr)
        return 1


def _end_process(code: int) -> None:
    """Leave with `code`; a torchrun rank skips the interpreter's finalization.

    A gloo worker thread can still be releasing the last collective's work (and with it tensors
    that have Python objects) after the collective returned; if that happens while Python shuts
    down, the thread cannot take the GIL and the rank aborts ("terminate called without an active
    exception", seen on loaded CPUs after a finished run). Everything a run writes is complete and
    closed by now, so a rank flushes its streams and exits at once.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    _end_process(main())
