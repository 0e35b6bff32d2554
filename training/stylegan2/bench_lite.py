"""Measure training speed (img/s) of CPU-sized network options, side by side in one process.

    python -m training.stylegan2.bench_lite [--res 64] [--steps 16] [--rounds 3] [--threads N]

Each option runs full training steps (Gmain, Greg every 4, Dmain, Dreg every 16, G_ema, ADA
bookkeeping) on random 64x64 uint8 images; `--steps 16` covers the regularisation cycle exactly.
Options are measured in turns, `--rounds` times, and the median img/s of each is printed with its
ratio to the first option, so a busy machine slows all of them alike. "img/CPU-s" divides by the
process's CPU time instead of wall time: with one thread it is the speed on an idle core, however
busy the machine.

The measurements behind the `lite` config are in training.stylegan2.configs.LITE_NOTES.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

OPTIONS = {
    # name: (cbase, cmax, wdim, batch_gpu)
    "2048/128 w512 bg4": (2048, 128, 512, 4),
    "2048/128 w512 bg8": (2048, 128, 512, 8),
    "2048/128 w512 bg16": (2048, 128, 512, 16),
    "2048/128 w512 bg32": (2048, 128, 512, 32),
    "2048/128 w256 bg4": (2048, 128, 256, 4),
    "4096/128 w512 bg4": (4096, 128, 512, 4),
    "4096/256 w512 bg4": (4096, 256, 512, 4),
}


class _RandomImages:
    def __init__(self, n: int, res: int):
        self.x = np.random.RandomState(0).randint(0, 256, size=(n, 3, res, res), dtype=np.uint8)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], np.zeros([0], np.float32)


def make_trainer(res: int, cbase: int, cmax: int, wdim: int, batch_gpu: int, batch: int, aug_p: float | None = None,
                 map_layers: int | None = None):
    """A Trainer with the options train.py resolves for `--cfg lite` and these sizes, on 64 random
    in-memory images (also used by benchmarks/bench_train.py)."""
    from .train import build_options, build_parser
    from .training_loop import Trainer, TrainingSet

    ts = TrainingSet(_RandomImages(64, res), name="random")
    argv = ["--data", ".", "--cfg", "lite", "--cbase", str(cbase), "--cmax", str(cmax), "--wdim", str(wdim),
            "--batch", str(batch), "--batch-gpu", str(batch_gpu), "--workers", "0"]
    if map_layers is not None:
        argv += ["--map", str(map_layers)]
    if aug_p is not None:  # ADA's cost once p has grown: fixed augmentation at that p
        argv += ["--aug", "fixed", "--p", str(aug_p)]
    o = build_options(build_parser().parse_args(argv), training_set=ts, world_size=1)
    return Trainer(o, ts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--res", type=int, default=64)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--aug-p", dest="aug_p", type=float, default=None, help="fixed augmentation at this p (default: ADA, p = 0)")
    ap.add_argument("--only", nargs="*", default=None, help="option names to run")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for n in OPTIONS if args.only is None or n in args.only]
    trainers = {}
    for n in names:
        cbase, cmax, wdim, bg = OPTIONS[n]
        tr = make_trainer(args.res, cbase, cmax, wdim, bg, max(args.batch, bg), aug_p=args.aug_p)
        tr.train_step()  # warm-up (data loader, allocator)
        trainers[n] = tr
        ng = sum(p.numel() for p in tr.G.parameters()) / 1e6
        nd = sum(p.numel() for p in tr.D.parameters()) / 1e6
        print(f"{n}: G {ng:.2f}M D {nd:.2f}M params", flush=True)
    speeds = {n: [] for n in names}
    cpu_speeds = {n: [] for n in names}
    for r in range(args.rounds):
        for n in names:
            tr = trainers[n]
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                tr.train_step()
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            speeds[n].append(args.steps * tr.batch_size / dt)
            cpu_speeds[n].append(args.steps * tr.batch_size / dc)
            print(f"round {r} {n}: {speeds[n][-1]:.2f} img/s wall, {cpu_speeds[n][-1]:.2f} img per CPU-second",
                  flush=True)
    base = statistics.median(speeds[names[0]])
    cbase = statistics.median(cpu_speeds[names[0]])
    print(f"\nres {args.res}, threads {torch.get_num_threads()}, {args.steps} steps x {args.rounds} rounds, "
          f"batch max({args.batch}, batch_gpu), augment p {args.aug_p or 0}")
    print(f"{'option':24s} {'img/s':>7s}        {'img/CPU-s':>9s}")
    for n in names:
        med, cmed = statistics.median(speeds[n]), statistics.median(cpu_speeds[n])
        print(f"{n:24s} {med:7.2f} x{med / base:.2f}   {cmed:9.2f} x{cmed / cbase:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
