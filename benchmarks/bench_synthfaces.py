"""Procedural face renderer speed on ONE core: faces per second.

Measures `training.data.synthfaces.render_batch(n, res, seed=...)` (parameter sampling plus
rendering, natural attribute distribution) per resolution, single-threaded (OMP/MKL/OpenBLAS
threads set to 1 before numpy is imported, torch.set_num_threads(1)). One warm-up call, then the
best of `--repeats` timed runs.

"On one core" is measured as this process's CPU time (time.process_time: the work is single
threaded, so this is what one core delivers even when other jobs share the machine); the
wall-clock rate is shown next to it and equals it on an idle machine. Also shown: rendering
alone (params sampled beforehand) and sampling alone.

Target: >= 500 faces/s at 64x64.

Prints a table, then one JSON object as the last line:
{"faces_per_s_64": ..., "faces_per_s_128": ..., ...}

    python benchmarks/bench_synthfaces.py [--res 32 64 128 256] [--n 512] [--repeats 3]
"""

from __future__ import annotations

import os

for _k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_k] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402,F401
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from training.data import synthfaces  # noqa: E402

TARGET_64 = 500.0


def _best(fn, repeats: int) -> tuple:
    """Best (CPU seconds, wall seconds) over repeats."""
    cpu = wall = float("inf")
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        cpu = min(cpu, time.process_time() - c)
        wall = min(wall, time.perf_counter() - t)
    return cpu, wall


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--res", type=int, nargs="+", default=[32, 64, 128, 256])
    ap.add_argument("--n", type=int, default=512, help="faces per timed run at 64 px (scaled by (64/res)^2)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    rows, out = [], {}
    for res in args.res:
        n = max(16, int(args.n * min(1.0, (64 / res) ** 2)))
        synthfaces.render_batch(min(n, 32), res, seed=args.seed + 1)  # warm-up: caches, allocator
        t_all, w_all = _best(lambda: synthfaces.render_batch(n, res, seed=args.seed), args.repeats)
        params = [synthfaces.params_for(args.seed, i) for i in range(n)]
        t_render, _ = _best(lambda: synthfaces.render_many(params, res), args.repeats)
        t_sample, _ = _best(lambda: [synthfaces.params_for(args.seed, i) for i in range(n)], args.repeats)
        fps = n / t_all
        rows.append((res, n, fps, n / w_all, n / t_render, n / t_sample, 1e3 * t_all / n))
        out[f"faces_per_s_{res}"] = round(fps, 1)

    print(f"synthfaces on one core (torch {torch.__version__}, numpy {np.__version__}); best of {args.repeats}")
    print(f"{'res':>5} {'n':>5} {'faces/s':>9} {'wall/s':>9} {'render/s':>9} {'sample/s':>9} {'ms/face':>8}")
    for res, n, fps, wps, rps, sps, ms in rows:
        print(f"{res:>5} {n:>5} {fps:>9.1f} {wps:>9.1f} {rps:>9.1f} {sps:>9.0f} {ms:>8.2f}")
    if "faces_per_s_64" in out:
        print(f"target at 64 px: {TARGET_64:.0f} faces/s -> ratio {out['faces_per_s_64'] / TARGET_64:.2f}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
