"""Training throughput on CPU: images per second of full StyleGAN2-ADA training steps, `--cfg lite`.

Every step is the trainer's own `Trainer.train_step()` (training/stylegan2/training_loop.py):
Gmain, Greg every 4 steps, Dmain, Dreg every 16, G_ema, ADA bookkeeping, on random 64x64 uint8
images held in memory (no decoding). `--steps 16` (the default) is exactly one regularisation
cycle, so the lazy regularisers are amortised as in a long run; one warm-up step runs first. The
trainer is built by training.stylegan2.bench_lite.make_trainer (the same options train.py resolves
for `--cfg lite`).

Prints one line per round and, last, one JSON object:
    {"img_per_s": <median over rounds, wall clock>, "img_per_cpu_s": ..., "res": 64,
     "channel_base": 2048, "channel_max": 128, "map_layers": 2, "batch": 32, "batch_gpu": 16,
     "r1_interval": 16, "pl_interval": 4, "threads": N, "torch": "2.13.0+cpu", ...}
"img_per_cpu_s" divides by the process's CPU time instead: with one thread it is the speed of one
idle core however busy the machine is. Compare with the official code on the same config and the
same CPU by running both side by side (the official code did ~19 img/s for this config at 64 px
on the 2-core machine, DESIGN.md).

`--cpu-bf16 compare` alternates float32 rounds with rounds whose convolutions run in bfloat16
(train.py --cpu-bf16; needs AVX512-BF16 or AMX) in the same process and adds "img_per_s_bf16" and
"bf16_speedup" (ratio of the medians) to the JSON; `--cpu-bf16 on` measures bfloat16 only.
"img_per_s" is always the float32 number, the like-for-like comparison with the official code.

`--no-speedups` turns off this project's CPU speed-up that the official code does not have
(training_loop.tune_cpu_allocator: glibc keeps freed memory instead of page-faulting it back in),
for an A/B run in another process (it is process-wide, so it cannot be toggled within one).

    python benchmarks/bench_train.py                 # all cores
    python benchmarks/bench_train.py --threads 1 --rounds 5
    python benchmarks/bench_train.py --cpu-bf16 compare
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--res", type=int, default=64, help="image resolution (default 64)")
    ap.add_argument("--batch", type=int, default=32, help="global batch (default 32, the lite/auto value at 64 px)")
    ap.add_argument("--batch-gpu", dest="batch_gpu", type=int, default=None,
                    help="images per forward pass (default: lite's, 16)")
    ap.add_argument("--cbase", type=int, default=None, help="channel_base (default: lite's, 2048)")
    ap.add_argument("--cmax", type=int, default=None, help="channel_max (default: lite's, 128)")
    ap.add_argument("--map", type=int, default=None, help="mapping layers (default: lite's, 2)")
    ap.add_argument("--steps", type=int, default=16, help="steps per round (default 16 = one regularisation cycle)")
    ap.add_argument("--rounds", type=int, default=3, help="measured rounds; the median is reported (default 3)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--aug-p", dest="aug_p", type=float, default=None,
                    help="fixed augmentation at this p (default: ADA starting at p = 0, as a new run)")
    ap.add_argument("--no-speedups", dest="speedups", action="store_false",
                    help="leave glibc's allocator as it is (training_loop.tune_cpu_allocator off), for an A/B "
                         "run in another process")
    ap.add_argument("--cpu-bf16", dest="cpu_bf16", choices=("off", "on", "compare"), default="off",
                    help="bfloat16 convolutions: off (default), on, or compare (alternating rounds, one process)")
    args = ap.parse_args(argv)
    for name in ("res", "batch", "steps", "rounds"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)

    from training.stylegan2.bench_lite import make_trainer
    from training.stylegan2.configs import cfg_specs
    from training.stylegan2 import training_loop
    from training.machine import cpu_model
    from stylemix.ops.conv2d_resample import bf16_supported, cpu_conv_dtype

    if args.cpu_bf16 != "off" and not bf16_supported():
        print("--cpu-bf16: this CPU has no native bfloat16 support (AVX512-BF16 or AMX)", file=sys.stderr)
        return 1

    lite = cfg_specs["lite"]
    cbase = args.cbase or lite["cbase"]
    cmax = args.cmax or lite["cmax"]
    map_layers = args.map or lite["map"]
    batch_gpu = args.batch_gpu or min(lite["batch_gpu"], args.batch)
    if not args.speedups:
        training_loop.TUNE_CPU_ALLOCATOR = False

    print(f"building lite {args.res}x{args.res}: channel_base {cbase}, channel_max {cmax}, {map_layers} mapping "
          f"layers, batch {args.batch} in passes of {batch_gpu}, {threads} thread(s), torch {torch.__version__}",
          file=sys.stderr, flush=True)
    tr = make_trainer(args.res, cbase, cmax, lite["wdim"], batch_gpu, args.batch, aug_p=args.aug_p,
                      map_layers=map_layers)
    o = tr.options
    n_g = sum(p.numel() for p in tr.G.parameters()) / 1e6
    n_d = sum(p.numel() for p in tr.D.parameters()) / 1e6
    t0 = time.perf_counter()
    tr.train_step()  # warm-up: first calls, allocator, data loader
    print(f"G {n_g:.2f}M, D {n_d:.2f}M parameters; warm-up step {time.perf_counter() - t0:.2f} s",
          file=sys.stderr, flush=True)

    modes = {"off": [None], "on": [torch.bfloat16], "compare": [None, torch.bfloat16]}[args.cpu_bf16]
    wall = {m: [] for m in modes}
    cpu = {m: [] for m in modes}
    for r in range(args.rounds):
        for mode in modes:
            with cpu_conv_dtype(mode):
                if len(modes) > 1:
                    tr.train_step()  # settle after the switch (not timed)
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(args.steps):
                    tr.train_step()
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
            n = args.steps * tr.batch_size
            wall[mode].append(n / dt)
            cpu[mode].append(n / dc)
            label = "" if mode is None else " bfloat16 convolutions"
            print(f"round {r + 1}/{args.rounds}{label}: {args.steps} steps, {n} images in {dt:.1f} s: "
                  f"{wall[mode][-1]:.2f} img/s ({cpu[mode][-1]:.2f} img per CPU-second)", file=sys.stderr, flush=True)

    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    main_mode = modes[0]
    result = {
        "img_per_s": round(statistics.median(wall[main_mode]), 3),
        "img_per_cpu_s": round(statistics.median(cpu[main_mode]), 3),
        "conv_dtype": "bfloat16" if main_mode is not None else "float32",
        "cfg": "lite",
        "res": args.res,
        "channel_base": int(o["G_kwargs"]["synthesis_kwargs"]["channel_base"]),
        "channel_max": int(o["G_kwargs"]["synthesis_kwargs"]["channel_max"]),
        "map_layers": int(o["G_kwargs"]["mapping_kwargs"]["num_layers"]),
        "w_dim": int(o["G_kwargs"]["w_dim"]),
        "batch": int(o["batch_size"]),
        "batch_gpu": int(o["batch_gpu"]),
        "r1_interval": int(o["D_reg_interval"]),
        "pl_interval": int(o["G_reg_interval"]),
        "mbstd_group": int(o["D_kwargs"]["epilogue_kwargs"]["mbstd_group_size"]),
        "augment": "ada (p from 0)" if args.aug_p is None else f"fixed p={args.aug_p:g}",
        "steps": args.steps,
        "rounds": args.rounds,
        "img_per_s_rounds": [round(x, 3) for x in wall[main_mode]],
        "threads": torch.get_num_threads(),
        "speedups": bool(args.speedups),
        "allocator_tuned": bool(tr.cpu_allocator_tuned),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "loadavg": load,
    }
    if args.cpu_bf16 == "compare":
        bf = statistics.median(wall[torch.bfloat16])
        result["img_per_s_bf16"] = round(bf, 3)
        result["img_per_s_bf16_rounds"] = [round(x, 3) for x in wall[torch.bfloat16]]
        result["bf16_speedup"] = round(bf / statistics.median(wall[None]), 3)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
