"""Inversion quality and speed: the api's fast / balanced / best modes against the official-style
projector (1000 steps, in W and in W+), on the same images, side by side in one run.

Images (at the model's resolution, already aligned, so no face detection runs):
- `--n` held-out synthfaces renders: face i = training.data.synthfaces.params_for(SEED, i) with
  SEED = `--seed` (default 7300: outside the reserved seeds, i.e. the classifier's 7100-7109, the
  quality checks' 9000/9001 and the dataset seed 1), natural attribute distribution;
- `--n` samples of the generator itself: z = RandomState(SEED + 1).randn(n, z_dim), psi 1,
  noise_mode 'const' (a perfect inversion exists for these).

Per method and image: PSNR (dB, uint8 images at the model's resolution), the perceptual distance
the inversion optimises (stylemix.perceptual: LPIPS-VGG16 when its weights exist, else the offline
distance; printed), the identity distance and the seconds per image (wall clock of api.invert,
which holds the module's inversion lock; G's w statistics and the distance network are warmed up
before timing). Identity distance = L2 between the classifier's identity embeddings
(`classifier.identity`, standardised identity parameters: 1.0 = one population standard deviation)
of the reconstruction and of the target, as training.evaluation.metrics.identity_distance(...,
metric='l2'); the classifier is the one api.score uses for the model.

The projector is slow (1000 steps), so it runs on the first `--projector-n` images of each set
(default min(n, 5)); every ratio compares methods on exactly those images:
`balanced_psnr_vs_projector_wplus` = mean balanced PSNR / mean projector-W+ PSNR and
`balanced_time_vs_projector_wplus` = balanced s/image / projector-W+ s/image (target: >= 0.95 and
<= 0.1). 'fast' needs the model's encoder; without one it is reported as skipped.

Prints progress lines on stderr, a table on stdout, then one JSON object as the last line:
{"fast": {...}, "balanced": {...}, "best": {...}, "projector_w": {...}, "projector_wplus": {...},
 "balanced_psnr_vs_projector_wplus": ..., "balanced_time_vs_projector_wplus": ..., ...}

    python benchmarks/bench_inversion.py [--n 50] [--model synthfaces64] [--threads 2]
        [--projector-n 5] [--projector-steps 1000] [--qualities fast,balanced,best]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stylemix import api  # noqa: E402

DEFAULT_SEED = 7300
RESERVED = set(range(7100, 7110)) | {9000, 9001, 1}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def make_images(model, n: int, seed: int) -> dict[str, np.ndarray]:
    """{'renders': uint8 [n, R, R, 3], 'samples': uint8 [n, R, R, 3]}."""
    from training.data.synthfaces import params_for, render_many

    renders = render_many([params_for(seed, i) for i in range(n)], model.resolution) if n else \
        np.zeros((0, model.resolution, model.resolution, 3), np.uint8)
    G = model._G
    z = torch.from_numpy(np.random.RandomState(seed + 1).randn(n, G.z_dim)).float()
    samples = []
    with torch.no_grad():
        for i in range(n):
            ws = G.mapping(z[i:i + 1], None, truncation_psi=1.0)
            samples.append(np.asarray(api.render(model, ws[0].numpy())))
    samples = np.stack(samples) if samples else np.zeros_like(renders)
    return {"renders": renders, "samples": samples}


def run_method(model, clf, images: dict, method: str, count: int, *, steps: int, log_every: float = 10.0):
    """Invert the first `count` images of each set -> per-image records."""
    kwargs = {"quality": method}
    if method == "projector_w":
        kwargs = {"steps": steps, "w_plus": False}
    elif method == "projector_wplus":
        kwargs = {"steps": steps, "w_plus": True}
    out = []
    last = time.monotonic()
    total = sum(min(count, len(v)) for v in images.values())
    for set_name, arr in images.items():
        for i in range(min(count, len(arr))):
            t0 = time.perf_counter()
            lat = api.invert(model, arr[i], **kwargs)
            seconds = time.perf_counter() - t0
            rec = np.asarray(lat.image)
            emb = clf.identity(np.stack([rec, arr[i]]))
            out.append({"set": set_name, "index": i, "psnr": float(lat.psnr), "distance": float(lat.distance),
                        "identity_l2": float(np.linalg.norm(emb[0] - emb[1])), "seconds": seconds,
                        "steps": int(lat.steps)})
            if time.monotonic() - last >= log_every or len(out) == total:
                last = time.monotonic()
                log(f"  {method}: {len(out)}/{total} images, last PSNR {lat.psnr:.2f} dB, {seconds:.2f} s")
    return out


def summarise(records: list, where=None) -> dict:
    rs = [r for r in records if where is None or where(r)]
    if not rs:
        return {"n": 0}

    def mean(key, sel=None):
        v = [r[key] for r in rs if sel is None or r["set"] == sel]
        return round(float(np.mean(v)), 4) if v else None
    return {"n": len(rs), "psnr": mean("psnr"), "psnr_renders": mean("psnr", "renders"),
            "psnr_samples": mean("psnr", "samples"), "distance": mean("distance"),
            "identity_l2": mean("identity_l2"), "s_per_image": mean("seconds"), "steps": mean("steps")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50, help="images per set (renders, generator samples)")
    ap.add_argument("--model", default="synthfaces64", help="registered name or checkpoint path")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--projector-n", type=int, default=None,
                    help="images per set for the projector (default min(n, 5))")
    ap.add_argument("--projector-steps", type=int, default=1000, help="projector steps (default 1000, as official)")
    ap.add_argument("--qualities", default="fast,balanced,best", help="api modes to measure (comma list)")
    ap.add_argument("--no-projector", action="store_true", help="skip the projector (no ratios)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"synthfaces seed (default {DEFAULT_SEED})")
    args = ap.parse_args(argv)
    if args.n < 1 or args.threads < 1 or args.projector_steps < 1:
        ap.error("--n, --threads and --projector-steps must be >= 1")
    if args.seed in RESERVED or args.seed + 1 in RESERVED:
        ap.error(f"--seed {args.seed} (and seed + 1) must avoid the reserved seeds {sorted(RESERVED)}")
    qualities = [q.strip() for q in args.qualities.split(",") if q.strip()]
    bad = [q for q in qualities if q not in api.QUALITIES]
    if bad:
        ap.error(f"unknown --qualities {bad}; choose from {api.QUALITIES}")
    pn = min(args.n, 5) if args.projector_n is None else min(args.n, args.projector_n)
    torch.set_num_threads(args.threads)

    from stylemix import perceptual

    t_start = time.perf_counter()
    try:
        model = api.load_model(args.model)
    except api.ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    clf = api._classifier(api._classifier_name(model))
    log(f"model {model.name} ({model.resolution} px, num_ws {model.num_ws}), encoder: {model.encoder}, "
        f"distance: {perceptual.describe()}, classifier: {api._classifier_name(model)}, threads {args.threads}")
    log(f"{args.n} synthfaces renders (seed {args.seed}) + {args.n} generator samples (z seed {args.seed + 1}); "
        f"projector on the first {pn} of each set, {args.projector_steps} steps")
    images = make_images(model, args.n, args.seed)
    api.invert(model, images["renders"][0], steps=1)  # warm-up: w statistics, distance network

    results: dict = {}
    records: dict = {}
    methods = list(qualities) + ([] if args.no_projector else ["projector_w", "projector_wplus"])
    for method in methods:
        if method == "fast" and not model.has_encoder:
            results["fast"] = {"skipped": f"no encoder for {model.name} "
                                          f"(python -m training.encoder --model {model.name})"}
            log("fast: skipped (no encoder)")
            continue
        count = pn if method.startswith("projector") else args.n
        log(f"{method}: {2 * count} images")
        records[method] = run_method(model, clf, images, method, count, steps=args.projector_steps)
        results[method] = summarise(records[method])

    subset = lambda r: r["index"] < pn  # noqa: E731  (the projector's images)
    if "balanced" in records and "projector_wplus" in records:
        b, p = summarise(records["balanced"], subset), summarise(records["projector_wplus"], subset)
        results["balanced_psnr_vs_projector_wplus"] = round(b["psnr"] / p["psnr"], 4) if p["psnr"] else None
        results["balanced_time_vs_projector_wplus"] = round(b["s_per_image"] / p["s_per_image"], 4)
        results["balanced_on_projector_images"] = b
    results.update({"model": model.name, "n": args.n, "projector_n": pn, "projector_steps": args.projector_steps,
                    "distance_kind": perceptual.describe(), "identity": "L2 of classifier.identity embeddings "
                    "(standardised identity parameters)", "classifier": api._classifier_name(model),
                    "threads": args.threads, "seed": args.seed, "seconds": round(time.perf_counter() - t_start, 1),
                    "load_avg": [round(x, 2) for x in os.getloadavg()]})

    print(f"inversion on {model.name} ({model.resolution} px); {args.n} renders + {args.n} samples; "
          f"projector on {pn} + {pn}; load average {results['load_avg']}")
    print(f"{'method':>16} {'n':>4} {'PSNR':>7} {'renders':>8} {'samples':>8} {'distance':>9} {'id L2':>7} "
          f"{'s/img':>8}")
    for method in methods:
        r = results.get(method, {})
        if "skipped" in r:
            print(f"{method:>16}  skipped: {r['skipped']}")
            continue

        def f(v, fmt):
            return format(v, fmt) if isinstance(v, (int, float)) and math.isfinite(v) else "-"
        print(f"{method:>16} {r['n']:>4} {f(r['psnr'], '7.2f')} {f(r['psnr_renders'], '8.2f')} "
              f"{f(r['psnr_samples'], '8.2f')} {f(r['distance'], '9.4f')} {f(r['identity_l2'], '7.3f')} "
              f"{f(r['s_per_image'], '8.3f')}")
    if "balanced_psnr_vs_projector_wplus" in results:
        print(f"balanced vs projector W+ on the same {2 * pn} images: PSNR ratio "
              f"{results['balanced_psnr_vs_projector_wplus']} (target >= 0.95), time ratio "
              f"{results['balanced_time_vs_projector_wplus']} (target <= 0.1)")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
