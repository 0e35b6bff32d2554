"""App latency through `stylemix.api`: two uploaded images -> mixed face, and a layer change -> new face.

What the app does for each, timed here without Streamlit:

- upload_to_mix_s: for both uploaded files (their bytes) `api.align` + `api.invert(quality=...)`,
  then `api.mix` (the 'coarse' preset, beard reference as base) + `api.render`. The model is
  already loaded (the app loads it once per process) and the process is warm (the first pipeline
  run, which also loads the face detector, the perceptual metric and the w statistics, is reported
  as `cold_upload_to_mix_s` and not counted).
- layer_change_s: what the app reruns when a layer checkbox or preset changes: `api.mix` with
  other layers + `api.render` + `api.score` (inversions and the layer strip come from its cache).

Targets on the project's 2-core CPU: upload_to_mix_s < 5 s (balanced), layer_change_s < 0.3 s.
Both are the median of `--repeats` timed runs. Prints a table, then one JSON object as the last line:
{"upload_to_mix_s": ..., "layer_change_s": ..., "model": ..., ...}

    python benchmarks/bench_app.py [--model synthfaces64] [--quality balanced] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET_UPLOAD_TO_MIX_S = 5.0
TARGET_LAYER_CHANGE_S = 0.3


def _time(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="synthfaces64", help="registry name or checkpoint path")
    ap.add_argument("--beard", type=Path, default=REPO / "assets" / "examples" / "beard_1.png")
    ap.add_argument("--shaved", type=Path, default=REPO / "assets" / "examples" / "shaved_1.png")
    ap.add_argument("--quality", default="balanced", choices=("fast", "balanced", "best"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a CPU shared with a training run, 2 threads measured "
                         "~20x slower; run the app with OMP_NUM_THREADS=1 there too)")
    args = ap.parse_args(argv)

    import torch

    from stylemix import api

    torch.set_num_threads(args.threads)
    try:
        files = {"beard": args.beard.read_bytes(), "shaved": args.shaved.read_bytes()}
    except OSError as exc:
        print(f"error: cannot read an example face: {exc}", file=sys.stderr)
        return 1
    try:
        t_load, model = _time(lambda: api.load_model(args.model))
    except api.ApiError as exc:
        print(f"error: {exc} (pass --model with a checkpoint path)", file=sys.stderr)
        return 1
    groups = model.layer_groups
    first = groups.get("coarse") or next(iter(groups.values()))
    other = groups.get("middle") or groups.get("fine") or [model.num_ws - 1]

    def upload_to_mix():
        parts = {}
        latents = {}
        for slot, data in files.items():
            t_a, face = _time(lambda: api.align(model, data))
            t_i, lat = _time(lambda: api.invert(model, face.image, quality=args.quality))
            parts[f"align_{slot}"], parts[f"invert_{slot}"] = t_a, t_i
            latents[slot] = lat
        t_m, image = _time(lambda: api.render(model, api.mix(model, latents["beard"].ws, latents["shaved"].ws, first)))
        parts["mix_render"] = t_m
        return parts, latents

    t0 = time.perf_counter()
    cold_parts, latents = upload_to_mix()
    cold = time.perf_counter() - t0
    api.score(model, latents["beard"].image)  # load the classifier outside the timed layer changes

    runs, parts_runs = [], []
    for _ in range(max(1, args.repeats)):
        t = time.perf_counter()
        parts, latents = upload_to_mix()
        runs.append(time.perf_counter() - t)
        parts_runs.append(parts)

    ws_b, ws_s = latents["beard"].ws, latents["shaved"].ws
    changes, renders = [], []
    for i in range(max(3, args.repeats * 3)):
        layers = other if i % 2 == 0 else first

        def change():
            img = api.render(model, api.mix(model, ws_b, ws_s, layers))
            api.score(model, img)
        changes.append(_time(change)[0])
        renders.append(_time(lambda: api.render(model, api.mix(model, ws_b, ws_s, layers)))[0])

    upload_s = statistics.median(runs)
    change_s = statistics.median(changes)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"app latency through stylemix.api: model {model.name} ({model.resolution} px, num_ws {model.num_ws}, "
          f"encoder: {'yes' if model.has_encoder else 'no'}), quality {args.quality}, torch {torch.__version__}, "
          f"{args.threads} threads, load average {load[0]:.2f}")
    print(f"model load (once per process, not counted): {t_load:.2f} s; cold first pipeline: {cold:.2f} s")
    print(f"{'step':<22} {'median s':>9}")
    for key in parts_runs[0]:
        print(f"{key:<22} {statistics.median(p[key] for p in parts_runs):>9.3f}")
    print(f"{'upload -> mixed face':<22} {upload_s:>9.3f}   target < {TARGET_UPLOAD_TO_MIX_S:g} s "
          f"-> ratio {upload_s / TARGET_UPLOAD_TO_MIX_S:.2f}")
    print(f"{'layer change (+score)':<22} {change_s:>9.3f}   target < {TARGET_LAYER_CHANGE_S:g} s "
          f"-> ratio {change_s / TARGET_LAYER_CHANGE_S:.2f}")
    print(f"{'  mix + render only':<22} {statistics.median(renders):>9.3f}")
    print(json.dumps({
        "model": model.name, "resolution": model.resolution, "num_ws": model.num_ws,
        "has_encoder": model.has_encoder, "quality": args.quality, "threads": args.threads,
        "load_average": round(load[0], 2), "cold_upload_to_mix_s": round(cold, 3),
        "mix_render_s": round(statistics.median(renders), 4),
        "upload_to_mix_ratio": round(upload_s / TARGET_UPLOAD_TO_MIX_S, 3),
        "layer_change_ratio": round(change_s / TARGET_LAYER_CHANGE_S, 3),
        "upload_to_mix_s": round(upload_s, 3), "layer_change_s": round(change_s, 4),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
