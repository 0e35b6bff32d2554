"""Train the inversion encoder of one generator on the generator's own samples.

    python -m training.encoder --model synthfaces64 [--out PATH] [--steps 2000] [--batch 32] [--lr 1e-3]
                               [--threads T] [--seed 0] [--resume] [--init ENCODER]

What it does (everything is drawn from G itself, no dataset):

1. Each step draws `--batch` latents: z ~ N(0, I) -> G.mapping -> w on every layer; a share
   `--mix-prob` is style-mixed (the rows from a random cut-off on come from a second z, as in
   StyleGAN's mixing regularisation) and a share `--jitter-prob` gets per-layer Gaussian jitter
   of `--jitter` per-dimension standard deviations, so the encoder sees W+ latents beyond W. The
   images are G.synthesis(ws, noise_mode=`--noise-mode`) ('random' by default: the encoder must
   not rely on one noise pattern). Step s's batch depends only on (--seed, s), so a resumed run
   sees the same data as an uninterrupted one.
2. The encoder (`stylemix.networks.encoder.Encoder`) predicts ws as offsets from G's w_avg in
   per-dimension std units; loss = MSE of those normalised offsets (`--ws-weight`), plus, every
   `--image-every` steps on the first `--image-batch` samples, `--image-weight` x the distance
   between G.synthesis(predicted ws, noise_mode='const') and the target image (`--image-loss`:
   'perceptual' = stylemix.perceptual, the distance inversion optimises; 'pixel' = MSE).
   Adam, linear warm-up (`--warmup` steps), cosine decay to 0 at `--steps`.
   `--init ENCODER` (a file or registered name) starts from that encoder's weights instead of
   random ones, e.g. the encoder of an earlier snapshot of the same generator run: it must have
   the same architecture (resolution, num_ws, w_dim, the width options; a mismatch is an error
   naming the tensors), and its w statistics are replaced by this generator's.
3. Every `--snap` steps (and on Ctrl-C) the training state (encoder, optimiser, step, options,
   time) is written atomically to `<out>.state.pt`; `--resume` continues from it (the options
   that define the run must match; `--steps` may grow). The state file is deleted after the final save.
4. At the end: the held-out measure on `--heldout` fresh samples (their own seed, plain W latents,
   noise_mode random): ws MSE (raw W units, and relative to always answering w_avg), PSNR and
   perceptual distance of the re-synthesis (noise_mode const, what `invert(mode='fast')` returns)
   against the sample, next to the same numbers for w_avg. Printed and stored in the file's
   metadata with the training options; the file is written atomically (`stylemix.inversion.save_encoder`).

Default output: `stylemix.pretrained.cache_dir()/encoders/<model_name>-encoder.safetensors`, where
`stylemix.inversion.find_encoder(G)` looks. Errors: one line on stderr, exit status 1.

Defaults (chosen on the 64 px lite generator, num_ws 10, w_dim 512): 2500 steps of batch 32, the
image loss (weight 0.1, offline perceptual distance, 8 samples every 4th step) joining at half-way:
it trades a little ws accuracy for a much closer re-synthesis (600-step trial: held-out PSNR 13.5
vs 11.4 dB, distance 1.17 vs 2.94; ws MSE ratio 0.98 vs 0.96). About 0.53 s of CPU per step on
one thread, so ~22 min of CPU for the default run.

Checking the inversion modes against the projector on a trained encoder (no training):

    python -m training.encoder --model synthfaces64 --compare-modes 4 [--out ENCODER] [--project-steps 1000]

inverts 4 fresh samples (their own seed; uint8 renders with random noise, as photos arrive) with
`invert` in every mode and with the 1000-step W+ `project`, and prints PSNR, distance and seconds
(wall and CPU) per image, and each mode's PSNR and time as a share of the projector's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from stylemix import perceptual
from stylemix.checkpoints import load_generator
from stylemix.fileio import atomic_open
from stylemix.inversion import _w_stats_full, default_encoder_path, psnr, save_encoder
from stylemix.mixing import to_uint8
from stylemix.networks.encoder import Encoder
from training.machine import hardware

__all__ = ["sample_batch", "heldout_measure", "train", "compare_modes", "main", "STATE_SUFFIX",
           "HELDOUT_SEED_OFFSET", "COMPARE_SEED_OFFSET"]

STATE_SUFFIX = ".state.pt"
STATE_VERSION = 1
HELDOUT_SEED_OFFSET = 1_000_003    # held-out samples use seed + this (never a training step's seed)
COMPARE_SEED_OFFSET = 2_000_003    # --compare-modes targets use seed + this
# Options that define a run: a resumed run must have the same values.
RUN_OPTIONS = ("seed", "batch", "lr", "warmup", "ws_weight", "image_weight", "image_every", "image_batch",
               "image_loss", "image_start", "mix_prob", "jitter_prob", "jitter", "noise_mode", "channel_base", "channel_max",
               "feature_dim", "init")


class UsageError(ValueError):
    pass


# ------------------------------------------------------------------------------------------------
# Data

def _step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(step), int(stream)])
    return torch.Generator().manual_seed(int(ss.generate_state(1, dtype=np.uint64)[0] >> 1))


def _mapping(G, z: torch.Tensor) -> torch.Tensor:
    c = torch.zeros([len(z), G.c_dim]) if getattr(G, "c_dim", 0) else None
    return G.mapping(z, c, skip_w_avg_update=True)


@torch.no_grad()
def sample_batch(G, n: int, gen: torch.Generator, *, w_scale: torch.Tensor, mix_prob: float = 0.5,
                 jitter_prob: float = 0.5, jitter: float = 0.25, noise_mode: str = "random"):
    """(ws [n, num_ws, w_dim], images [n, 3, R, R] in about [-1, 1]) drawn from G with `gen`."""
    L, C = G.num_ws, G.w_dim
    ws = _mapping(G, torch.randn([n, G.z_dim], generator=gen))
    ws2 = _mapping(G, torch.randn([n, G.z_dim], generator=gen))
    cut = torch.randint(1, max(L, 2), [n, 1], generator=gen)
    mixed = torch.rand([n, 1], generator=gen) < mix_prob
    take2 = (torch.arange(L)[None, :] >= cut) & mixed                       # [n, L]
    ws = torch.where(take2[:, :, None], ws2, ws)
    jit = (torch.rand([n, 1, 1], generator=gen) < jitter_prob).float() * float(jitter)
    ws = ws + jit * w_scale * torch.randn([n, L, C], generator=gen)
    noise_seed = int(torch.randint(0, 2 ** 62, [1], generator=gen))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(noise_seed)  # noise_mode='random' draws from torch's global generator
        images = G.synthesis(ws, noise_mode=noise_mode)
    return ws, images


# ------------------------------------------------------------------------------------------------
# Held-out measure

@torch.no_grad()
def heldout_measure(G, enc: Encoder, *, n: int = 200, seed: int = 0, batch: int = 50) -> dict:
    """The encoder on `n` fresh plain-W samples (noise_mode random) vs always answering w_avg."""
    metric = perceptual.get_metric()
    gen = _step_generator(seed + HELDOUT_SEED_OFFSET, 0, 1)
    enc_was_training = enc.training
    enc.eval()
    sums = {k: 0.0 for k in ("ws_mse", "ws_mse_w_avg", "psnr", "psnr_w_avg", "distance", "distance_w_avg")}
    done = 0
    while done < n:
        k = min(batch, n - done)
        ws, images = sample_batch(G, k, gen, w_scale=enc.w_scale, mix_prob=0.0, jitter_prob=0.0,
                                  noise_mode="random")
        images = images.clamp(-1, 1)
        pred = enc(images)
        avg = enc.w_avg.expand_as(ws)
        for tag, guess in (("", pred), ("_w_avg", avg)):
            sums["ws_mse" + tag] += float((guess - ws).square().mean(dim=(1, 2)).sum())
            render = G.synthesis(guess, noise_mode="const")
            sums["distance" + tag] += float(metric(render, images).sum())
            u8 = to_uint8(render)
            sums["psnr" + tag] += sum(psnr(u8[i], images[i]) for i in range(k))
        done += k
    enc.train(enc_was_training)
    out = {k: round(v / n, 6) for k, v in sums.items()}
    out["ws_mse_ratio"] = round(out["ws_mse"] / max(out["ws_mse_w_avg"], 1e-12), 4)
    out.update(n=int(n), seed=int(seed + HELDOUT_SEED_OFFSET), latents="plain W (z -> mapping, psi 1)",
               target_noise_mode="random", render_noise_mode="const", distance_kind=metric.describe())
    return out


# ------------------------------------------------------------------------------------------------
# Modes vs the projector

def compare_modes(G, encoder, *, n: int = 4, seed: int = 0, project_steps: int = 1000,
                  modes=("fast", "balanced", "best"), log=print) -> dict:
    """invert() in each mode and the `project_steps` W+ projector on `n` fresh samples of G.

    Targets are uint8 renders (noise_mode random) of plain W latents from their own seed. Returns
    {'per_image': [...], 'summary': {mode: {psnr, distance, wall, cpu, psnr_vs_project, time_vs_project}}}."""
    from stylemix.inversion import invert, project, w_stats

    w_stats(G)  # cached: not part of any timing
    gen = _step_generator(seed + COMPARE_SEED_OFFSET, 0, 2)
    rows = []
    for i in range(n):
        _, img = sample_batch(G, 1, gen, w_scale=torch.ones(G.w_dim), mix_prob=0.0, jitter_prob=0.0)
        target = to_uint8(img.clamp(-1, 1))[0]
        row = {"i": i}
        for mode in modes:
            c0, t0 = time.process_time(), time.perf_counter()
            inv = invert(G, target, mode=mode, encoder=encoder)
            row[mode] = {"psnr": inv.psnr, "distance": inv.distance, "wall": time.perf_counter() - t0,
                         "cpu": time.process_time() - c0, "steps": inv.steps}
        c0, t0 = time.process_time(), time.perf_counter()
        res = project(G, target, num_steps=project_steps, w_plus=True)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        with torch.no_grad():
            const = G.synthesis(res.ws[None], noise_mode="const")
        row["project"] = {"psnr": psnr(res.image, target), "distance": res.distance, "wall": wall, "cpu": cpu,
                          "steps": res.steps, "psnr_const_noise": psnr(to_uint8(const)[0], target)}
        log(json.dumps({k: ({kk: round(vv, 4) for kk, vv in v.items()} if isinstance(v, dict) else v)
                        for k, v in row.items()}))
        rows.append(row)
    summary = {}
    for key in (*modes, "project"):
        summary[key] = {m: float(np.mean([r[key][m] for r in rows])) for m in ("psnr", "distance", "wall", "cpu")}
    for key in modes:
        summary[key]["psnr_vs_project"] = summary[key]["psnr"] / summary["project"]["psnr"]
        summary[key]["time_vs_project"] = summary[key]["cpu"] / summary["project"]["cpu"]
    log(f"{'':10s} {'PSNR dB':>8s} {'distance':>9s} {'wall s':>8s} {'CPU s':>8s} {'PSNR/proj':>9s} {'CPU/proj':>9s}")
    for key, v in summary.items():
        extra = (f" {v['psnr_vs_project']:9.3f} {v['time_vs_project']:9.4f}" if key != "project" else "")
        log(f"{key:10s} {v['psnr']:8.2f} {v['distance']:9.4f} {v['wall']:8.2f} {v['cpu']:8.2f}{extra}")
    return {"per_image": rows, "summary": summary}


# ------------------------------------------------------------------------------------------------
# Training

def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def _generator_facts(G) -> dict:
    from stylemix.pretrained import sha256_file

    path = getattr(G, "model_path", None)
    facts = {"model_name": getattr(G, "model_name", None), "path": path,
             "img_resolution": int(G.img_resolution), "num_ws": int(G.num_ws), "w_dim": int(G.w_dim),
             "z_dim": int(G.z_dim)}
    if path and Path(path).is_file():
        facts["sha256"] = sha256_file(Path(path))
    return facts


def _save_state(path: Path, enc, opt, step: int, opts: dict, seconds: float, generator: dict, log: list) -> None:
    state = {"version": STATE_VERSION, "step": int(step), "seconds": float(seconds), "options": dict(opts),
             "generator": generator, "encoder": enc.state_dict(), "optimizer": opt.state_dict(),
             "log": list(log)}
    with atomic_open(path, "wb") as f:
        torch.save(state, f)


def _check_options(args) -> None:
    for name, lo in (("steps", 1), ("batch", 1), ("image_every", 1), ("snap", 1), ("heldout", 1),
                     ("channel_base", 1), ("channel_max", 1), ("feature_dim", 1)):
        if getattr(args, name) < lo:
            raise UsageError(f"--{name.replace('_', '-')} must be >= {lo}, got {getattr(args, name)}")
    for name in ("warmup", "image_batch"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    for name in ("lr", "ws_weight", "image_weight", "jitter"):
        v = getattr(args, name)
        if not math.isfinite(v) or v < 0 or (name == "lr" and v == 0):
            raise UsageError(f"--{name.replace('_', '-')} must be a finite number {'> 0' if name == 'lr' else '>= 0'}, got {v}")
    for name in ("mix_prob", "jitter_prob", "image_start"):
        v = getattr(args, name)
        if not 0 <= v <= 1:
            raise UsageError(f"--{name.replace('_', '-')} must be in [0, 1], got {v}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")


def _load_init(enc: Encoder, name_or_path: str) -> None:
    """Copy the weights of the encoder `name_or_path` into `enc` (same architecture, else UsageError)."""
    from stylemix.inversion import load_encoder

    try:
        source = load_encoder(name_or_path)
    except ValueError as exc:
        raise UsageError(f"--init: {str(exc).splitlines()[0]}") from None
    mine, theirs = enc.state_dict(), source.state_dict()
    bad = sorted(set(mine) ^ set(theirs)) + sorted(k for k in set(mine) & set(theirs)
                                                   if mine[k].shape != theirs[k].shape)
    if bad:
        shapes = ", ".join(f"{k} {tuple(mine[k].shape) if k in mine else '-'} vs "
                           f"{tuple(theirs[k].shape) if k in theirs else '-'}" for k in bad[:4])
        raise UsageError(f"--init {name_or_path}: another architecture than this run's ({len(bad)} tensors differ: "
                         f"{shapes}{', ...' if len(bad) > 4 else ''}); give the same --channel-base, "
                         f"--channel-max and --feature-dim, for a generator of the same resolution, num_ws and w_dim")
    enc.load_state_dict({k: v.float() for k, v in theirs.items()})
    print(f"--init: starting from {getattr(source, 'path', name_or_path)}", file=sys.stderr)


def train(args, *, stop_after: int | None = None) -> dict:
    """Run the training described by the parsed `args`; returns {'out', 'heldout', 'seconds', 'steps'}.

    stop_after (tests): stop after that many steps of this call as if the process were killed
    (nothing saved beyond the periodic state); returns {'stopped': step}."""
    from tqdm import tqdm

    _check_options(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    G = load_generator(args.model).eval().requires_grad_(False)
    out = Path(args.out).expanduser() if args.out else default_encoder_path(G.model_name)
    manifest_rel = _manifest_target(args, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state_path = out.with_name(out.name + STATE_SUFFIX)
    opts = {k: getattr(args, k) for k in RUN_OPTIONS}
    generator = _generator_facts(G)

    w_avg, _, w_std_dim = _w_stats_full(G, 10000)
    w_scale = w_std_dim.clamp_min(1e-3 * float(w_std_dim.mean()) + 1e-8)
    torch.manual_seed(args.seed)
    enc = Encoder(G.img_resolution, G.num_ws, G.w_dim, img_channels=G.img_channels,
                  channel_base=args.channel_base, channel_max=args.channel_max, feature_dim=args.feature_dim)
    if args.init:
        _load_init(enc, args.init)
    enc.set_w_stats(w_avg, w_scale)
    opt = torch.optim.Adam(enc.parameters(), lr=args.lr, betas=(0.9, 0.99))
    start, seconds_before, log = 0, 0.0, []

    if args.resume:
        if state_path.is_file():
            try:
                state = torch.load(state_path, map_location="cpu", weights_only=True)
            except Exception as exc:
                raise ValueError(f"{state_path}: cannot read the training state ({type(exc).__name__}); delete "
                                 f"it to start again") from None
            if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
                raise ValueError(f"{state_path}: not a training state of this version; delete it to start again")
            diff = {k: (state["options"].get(k), v) for k, v in opts.items() if state["options"].get(k) != v}
            if diff:
                raise ValueError(f"--resume: options differ from the interrupted run's ({state_path}): " +
                                 ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in diff.items()))
            old_sha, new_sha = state["generator"].get("sha256"), generator.get("sha256")
            if (old_sha, state["generator"].get("num_ws")) != (new_sha, generator["num_ws"]):
                raise ValueError(f"--resume: {state_path} was trained for another generator "
                                 f"({state['generator'].get('path')}), not {generator.get('path')}")
            enc.load_state_dict(state["encoder"])
            opt.load_state_dict(state["optimizer"])
            start, seconds_before, log = int(state["step"]), float(state["seconds"]), list(state["log"])
            print(f"resuming {state_path} at step {start}", file=sys.stderr)
        else:
            print(f"--resume: no training state at {state_path}; starting from step 0", file=sys.stderr)
    elif state_path.is_file():
        print(f"note: {state_path} holds an interrupted run; without --resume it is started again from step 0 "
              f"(and that state is overwritten)", file=sys.stderr)
    if start > args.steps:
        raise UsageError(f"--steps {args.steps} is below the {start} steps already done ({state_path})")

    metric = perceptual.get_metric() if args.image_weight > 0 and args.image_batch > 0 and \
        args.image_loss == "perceptual" else None
    enc.train()
    t0, c0 = time.perf_counter(), time.process_time()
    bar = tqdm(total=args.steps, initial=start, desc="encoder", unit="step", disable=args.quiet,
               file=sys.stderr, mininterval=2.0, dynamic_ncols=True)
    ema = None
    step = start
    try:
        for step in range(start, args.steps):
            if stop_after is not None and step - start >= stop_after:
                bar.close()
                return {"stopped": step, "state": str(state_path)}
            gen = _step_generator(args.seed, step)
            ws, images = sample_batch(G, args.batch, gen, w_scale=enc.w_scale, mix_prob=args.mix_prob,
                                      jitter_prob=args.jitter_prob, jitter=args.jitter, noise_mode=args.noise_mode)
            images = images.clamp(-1, 1)
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, args.steps, args.lr, args.warmup)
            off = enc.offsets(images)
            target = (ws - enc.w_avg) / enc.w_scale
            loss_ws = (off - target).square().mean()
            loss = args.ws_weight * loss_ws
            loss_img = None
            k = min(args.image_batch, args.batch)
            if args.image_weight > 0 and k > 0 and step % args.image_every == 0 \
                    and step >= args.image_start * args.steps:
                pred = enc.w_avg + enc.w_scale * off[:k]
                render = G.synthesis(pred, noise_mode="const")
                if metric is not None:
                    loss_img = metric(render, images[:k]).mean()
                else:
                    loss_img = (render - images[:k]).square().mean()
                loss = loss + args.image_weight * loss_img
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(enc.parameters(), 10.0)
            opt.step()
            lw = float(loss_ws.detach())
            if not math.isfinite(lw):
                raise FloatingPointError(f"training diverged at step {step} (ws loss {lw}); try a lower --lr")
            ema = lw if ema is None else 0.98 * ema + 0.02 * lw
            if loss_img is not None:
                bar.set_postfix(ws=f"{ema:.3f}", img=f"{float(loss_img.detach()):.3f}", refresh=False)
            bar.update(1)
            done = step + 1
            if done % 100 == 0:
                log.append({"step": done, "ws_loss_ema": round(ema, 5)})
            if done % args.snap == 0 and done < args.steps:
                _save_state(state_path, enc, opt, done, opts, seconds_before + time.perf_counter() - t0,
                            generator, log)
    except KeyboardInterrupt:
        bar.close()
        _save_state(state_path, enc, opt, step, opts, seconds_before + time.perf_counter() - t0, generator, log)
        raise
    bar.close()
    train_seconds = seconds_before + time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0  # this process only (not across --resume)

    enc.eval()
    t1 = time.perf_counter()
    measure = heldout_measure(G, enc, n=args.heldout, seed=args.seed)
    measure["seconds"] = round(time.perf_counter() - t1, 1)
    training = dict(opts, steps=int(args.steps), threads=torch.get_num_threads(),
                    train_seconds=round(train_seconds, 1), cpu_seconds_last_run=round(cpu_seconds, 1), samples=int(args.steps) * int(args.batch),
                    final_ws_loss_ema=None if ema is None else round(ema, 5), log=log[-50:],
                    command="python -m training.encoder " + " ".join(shlex.quote(a) for a in getattr(args, "argv", [])),
                    hardware=hardware(torch.get_num_threads()),
                    date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    save_encoder(enc, out, model_name=G.model_name, generator=generator, training=training, heldout=measure,
                 half=args.half)
    state_path.unlink(missing_ok=True)
    print(f"held-out ({measure['n']} fresh samples): ws MSE {measure['ws_mse']:.4g} "
          f"(w_avg {measure['ws_mse_w_avg']:.4g}, ratio {measure['ws_mse_ratio']:.3f}); re-synthesis PSNR "
          f"{measure['psnr']:.2f} dB (w_avg {measure['psnr_w_avg']:.2f} dB); distance {measure['distance']:.4f} "
          f"(w_avg {measure['distance_w_avg']:.4f})")
    print(f"wrote {out} ({args.steps} steps, {train_seconds / 60:.1f} min training, "
          f"{cpu_seconds / 60:.1f} min CPU in this run, {torch.get_num_threads()} threads)")
    if manifest_rel is not None:
        _register(args, out, manifest_rel, G, measure, training)
    return {"out": str(out), "heldout": measure, "seconds": train_seconds, "steps": int(args.steps)}


def _manifest_target(args, out: Path) -> str | None:
    """--manifest NAME: the encoder's path relative to pretrained/ (it must be written there)."""
    if not getattr(args, "manifest", None):
        return None
    from training.evaluation.classifier import manifest_relpath

    return manifest_relpath(out)


def _register(args, out: Path, rel: str, G, measure: dict, training: dict) -> None:
    """Add/replace the encoder's record (kind 'encoder') in pretrained/MANIFEST.json."""
    from stylemix import pretrained
    from stylemix.pretrained import sha256_file
    from training.evaluation.classifier import update_manifest

    manifest = pretrained.PRETRAINED_DIR / pretrained.MANIFEST_NAME
    entry = {
        "name": args.manifest,
        "path": rel,
        "sha256": sha256_file(out),
        "size": out.stat().st_size,
        "resolution": int(G.img_resolution),
        "kind": "encoder",
        "licence": "same as the StyleMix repository; computed from the generator's own samples",
        "description": f"inversion encoder for {G.model_name} (image {G.img_resolution}x{G.img_resolution} -> W+ "
                       f"offsets from w_avg{'; weights stored float16' if args.half else ''}), trained on the "
                       f"generator's own samples",
        "source_page": "training/encoder.py",
        "made_by": training["command"],
        "model": G.model_name,
        "steps": int(args.steps),
        "training_time_min": round(training["train_seconds"] / 60, 1),
        "heldout": {"n": measure["n"], "ws_mse_ratio_vs_w_avg": round(measure["ws_mse_ratio"], 3),
                    "psnr_db": round(measure["psnr"], 2), "psnr_w_avg_db": round(measure["psnr_w_avg"], 2)},
        "hardware": training["hardware"],
        "date": training["date"],
    }
    update_manifest(manifest, entry)
    print(f"registered {args.manifest!r} in {manifest}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m training.encoder",
                                 description="Train the inversion encoder of a generator on its own samples.")
    ap.add_argument("--model", required=True, help="generator: registry name or checkpoint file")
    ap.add_argument("--out", default=None, help="output .safetensors (default: cache_dir()/encoders/<model>-encoder.safetensors)")
    ap.add_argument("--steps", type=int, default=2500, help="optimiser steps (default 2500)")
    ap.add_argument("--batch", type=int, default=32, help="samples per step (default 32)")
    ap.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate (default 1e-3)")
    ap.add_argument("--warmup", type=int, default=50, help="linear warm-up steps (default 50)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the initial weights and of every batch (default 0)")
    ap.add_argument("--resume", action="store_true", help="continue from <out>.state.pt")
    ap.add_argument("--init", default=None, metavar="ENCODER",
                    help="start from this encoder's weights (file or registered name; same architecture)")
    ap.add_argument("--snap", type=int, default=100, help="write the training state every N steps (default 100)")
    ap.add_argument("--ws-weight", type=float, default=1.0, help="weight of the normalised ws MSE (default 1)")
    ap.add_argument("--image-weight", type=float, default=0.1, help="weight of the image loss (default 0.1; 0 = off)")
    ap.add_argument("--image-every", type=int, default=4, help="image loss every N steps (default 4)")
    ap.add_argument("--image-batch", type=int, default=8, help="samples the image loss renders (default 8)")
    ap.add_argument("--image-start", type=float, default=0.5,
                    help="fraction of the steps trained on the ws loss alone before the image loss joins (default 0.5)")
    ap.add_argument("--image-loss", choices=("perceptual", "pixel"), default="perceptual",
                    help="image distance: stylemix.perceptual or pixel MSE (default perceptual)")
    ap.add_argument("--mix-prob", type=float, default=0.5, help="share of style-mixed latents (default 0.5)")
    ap.add_argument("--jitter-prob", type=float, default=0.5, help="share of latents with per-layer jitter (default 0.5)")
    ap.add_argument("--jitter", type=float, default=0.25, help="per-layer jitter, in per-dimension stds (default 0.25)")
    ap.add_argument("--noise-mode", choices=("random", "const"), default="random",
                    help="noise of the training images (default random)")
    ap.add_argument("--channel-base", type=int, default=1024, help="encoder width: channels at r = base / r (default 1024)")
    ap.add_argument("--channel-max", type=int, default=256, help="encoder's maximum channels (default 256)")
    ap.add_argument("--feature-dim", type=int, default=512, help="encoder head width (default 512)")
    ap.add_argument("--heldout", type=int, default=200, help="fresh samples of the held-out measure (default 200)")
    ap.add_argument("--half", action="store_true",
                    help="store the weights as float16 (half the file size; they run in float32)")
    ap.add_argument("--manifest", default=None, metavar="NAME",
                    help="also add/replace NAME (kind 'encoder') in pretrained/MANIFEST.json; --out must be in "
                         "pretrained/")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--compare-modes", type=int, default=0, metavar="N",
                    help="do not train: compare invert's modes with the projector on N fresh samples, using the "
                         "encoder at --out (default: the cache's)")
    ap.add_argument("--project-steps", type=int, default=1000, help="projector steps for --compare-modes (default 1000)")
    return ap


def _compare_main(args) -> int:
    from stylemix.inversion import load_encoder

    if args.compare_modes < 0 or args.project_steps < 1:
        raise UsageError("--compare-modes and --project-steps must be positive")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    G = load_generator(args.model).eval().requires_grad_(False)
    path = Path(args.out).expanduser() if args.out else default_encoder_path(G.model_name)
    if not path.is_file():
        raise UsageError(f"no encoder at {path}: train one first (python -m training.encoder --model {args.model})")
    print(f"threads {torch.get_num_threads()}; encoder {path}", flush=True)
    compare_modes(G, load_encoder(path), n=args.compare_modes, seed=args.seed, project_steps=args.project_steps,
                  log=lambda m: print(m, flush=True))
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        if args.compare_modes:
            return _compare_main(args)
        train(args)
        return 0
    except KeyboardInterrupt:
        print("interrupted: training state saved; continue with --resume", file=sys.stderr)
        return 130
    except (ValueError, OSError, FloatingPointError, RuntimeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
