"""Compute a generator's attribute directions, measure what they do, and save them.

    python -m training.directions --model synthfaces64 [--out PATH] [--n 20000] [--seed 0] [--threads 2]
        [--classifier NAME] [--batch 32] [--effect-n 500] [--attributes has_beard shaved glasses smile]
        [--methods mean_diff interfacegan conditional] [--min-count 20] [--manifest NAME]

1. `stylemix.editing.compute_directions`: --n samples of the generator, labelled by the attribute
   classifier (default: the model's own '<model>-classifier' when registered, else 'synthfaces64'),
   directions by mean difference, by logistic regression (InterFaceGAN) and InterFaceGAN's
   conditional variant (the normal with the other attributes' normals projected out) in W. An attribute with
   fewer than --min-count positives or negatives is skipped with a note (and the run fails when
   none is left).
2. `stylemix.editing.measure_effects`: on --effect-n fresh samples, each direction applied at
   strength +2 and -2 (all layers); the mean change of every classifier probability. The row of the
   direction's own attribute is its effect; the other columns are the entanglement.
3. Prints a table (held-out probe accuracy, scale, effects) and writes the directions, with the
   table in their metadata, atomically to --out (default
   cache_dir()/directions/<model>-directions.safetensors, where `stylemix.editing.find_directions`
   looks). --manifest NAME also adds/replaces NAME (kind 'other') in pretrained/MANIFEST.json; --out
   must then lie inside pretrained/.

Errors are one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from pathlib import Path

__all__ = ["main", "format_table"]


def _hardware(threads: int) -> str:
    from training.machine import hardware

    return hardware(threads)


def _fmt(x) -> str:
    return "   -  " if x is None else f"{x:+.3f}"


def format_table(directions, labels) -> str:
    """One row per direction: probe accuracy (balanced), scale, then per label the mean change of
    its probability at +2 / -2. The direction's own attribute is marked with '*'."""
    labels = list(labels)
    head = f"{'direction':<26} {'acc':>5} {'bal':>5} {'scale':>7}  " + "  ".join(f"{lb[:13]:>13}" for lb in labels)
    lines = [head, " " * 48 + "  ".join(f"{'(+2 / -2)':>13}" for _ in labels), "-" * len(head)]
    for d in directions.values():
        acc = "  -  " if d.accuracy is None else f"{d.accuracy:.3f}"
        bal = "  -  " if d.balanced_accuracy is None else f"{d.balanced_accuracy:.3f}"
        cells = []
        for lb in labels:
            eff = d.effects or {}
            up, down = eff.get("+2", {}).get(lb), eff.get("-2", {}).get(lb)
            mark = "*" if lb == d.attribute else " "
            cells.append(f"{mark}{_fmt(up)}/{_fmt(down)}")
        lines.append(f"{d.key_str:<26} {acc:>5} {bal:>5} {d.scale:>7.3f}  " + "  ".join(f"{c:>13}" for c in cells))
    return "\n".join(lines)


def _default_classifier(model_name: str | None) -> str:
    from stylemix import pretrained
    from stylemix.attributes import CLASSIFIER_SUFFIX

    if model_name and pretrained.is_registered(model_name + CLASSIFIER_SUFFIX):
        return model_name
    return "synthfaces64"


def run(args) -> int:
    import torch
    from tqdm import tqdm

    from stylemix import pretrained
    from stylemix.attributes import load_classifier
    from stylemix.checkpoints import load_generator
    from stylemix.editing import compute_directions, default_path, measure_effects, save_directions

    t0 = time.time()
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.effect_n < 0:
        raise ValueError(f"--effect-n must be >= 0, got {args.effect_n}")
    G = load_generator(args.model).eval().requires_grad_(False)
    model_name = getattr(G, "model_name", None) or Path(str(args.model)).stem
    out = Path(args.out) if args.out else default_path(model_name)
    manifest_path = None
    if args.manifest:
        from training.evaluation.classifier import manifest_relpath

        manifest_path = pretrained.PRETRAINED_DIR / pretrained.MANIFEST_NAME
        rel = manifest_relpath(out)
    clf_name = args.classifier or _default_classifier(model_name)
    clf = load_classifier(clf_name)
    quiet = args.quiet
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    say(f"model {model_name!r} ({G.img_resolution} px, num_ws {G.num_ws}, w_dim {G.w_dim}); classifier "
        f"{clf.name!r} ({clf.path}); {args.n} samples, seed {args.seed}, {torch.get_num_threads()} threads")

    # Fail before the long part when the output cannot be written.
    out.parent.mkdir(parents=True, exist_ok=True)

    bar = tqdm(total=args.n, desc="directions", unit="img", disable=quiet, dynamic_ncols=True, mininterval=2.0)

    def progress(done, total, bar=bar):
        bar.update(done - bar.n)

    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            dirs = compute_directions(G, clf, n=args.n, attributes=args.attributes, methods=args.methods,
                                      seed=args.seed, batch=args.batch, truncation_psi=args.psi,
                                      progress=progress, min_count=args.min_count, skip_rare=True)
        finally:
            bar.close()
    for w in caught:
        say(f"note: {w.message}")
    if not dirs:
        skipped = dirs.meta.get("skipped", {})
        counts = "; ".join(f"{a}: {c['positives']} positive / {c['negatives']} negative" for a, c in skipped.items())
        raise ValueError(f"no attribute has at least {args.min_count} positive and negative samples of {args.n} "
                         f"({counts}); use a larger --n or a lower --min-count")
    t_fit = time.time() - t0

    base, labels = {}, list(clf.label_names)
    if args.effect_n:
        total = args.effect_n * (1 + 2 * len(dirs))
        bar = tqdm(total=total, desc="effects", unit="img", disable=quiet, dynamic_ncols=True, mininterval=2.0)
        try:
            base, effects = measure_effects(G, clf, dirs, n=args.effect_n, strengths=(2.0, -2.0), seed=args.seed,
                                            batch=args.batch, truncation_psi=args.psi,
                                            progress=lambda done, tot: bar.update(done - bar.n))
        finally:
            bar.close()
        for key, eff in effects.items():
            dirs[key].effects = {s: {k: round(v, 5) for k, v in e.items()} for s, e in eff.items()}
        labels = [lb for lb in labels if lb in base] or list(base)

    table = format_table(dirs, labels)
    say("")
    say(table)
    if base:
        say("base rate (mean probability, unedited): " + ", ".join(f"{k} {v:.3f}" for k, v in base.items()))

    meta = dict(dirs.meta)
    meta.update({
        "model": model_name,
        "model_path": getattr(G, "model_path", str(args.model)),
        "img_resolution": int(G.img_resolution),
        "classifier": clf.name,
        "classifier_path": str(clf.path),
        "effects": {"n": args.effect_n, "seed": args.seed, "stream": 1, "strengths": [2.0, -2.0], "layers": "all",
                    "base_probability": {k: round(v, 5) for k, v in base.items()}},
        "table": table,
        "command": "python -m training.directions " + " ".join(shlex.quote(a) for a in args.argv),
        "time_s": round(time.time() - t0, 1),
        "fit_time_s": round(t_fit, 1),
        "hardware": _hardware(torch.get_num_threads()),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    })
    save_directions(out, dirs, meta=meta)
    say(f"wrote {len(dirs)} directions to {out}")

    if manifest_path is not None:
        from stylemix.pretrained import sha256_file
        from training.evaluation.classifier import update_manifest

        entry = {
            "name": args.manifest,
            "path": rel,
            "sha256": sha256_file(out),
            "size": out.stat().st_size,
            "resolution": 0,
            "kind": "other",
            "licence": "same as the StyleMix repository; computed from the generator's own samples",
            "description": f"attribute directions in W for {model_name} ({', '.join(dirs.attributes)}; "
                           f"{', '.join(meta['methods'])}), labelled by {clf.name}",
            "source_page": "training/directions.py",
            "made_by": meta["command"],
            "model": model_name,
            "w_dim": int(G.w_dim),
            "accuracy": {d.key_str: round(d.accuracy, 4) for d in dirs.values() if d.accuracy is not None},
            "n": args.n,
            "seed": args.seed,
            "time_s": meta["time_s"],
            "hardware": meta["hardware"],
        }
        update_manifest(manifest_path, entry)
        say(f"registered {args.manifest!r} in {manifest_path}")
    return 0


def main(argv=None) -> int:
    from stylemix.editing import DEFAULT_ATTRIBUTES, METHODS

    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m training.directions",
                                 description="Compute, measure and save a generator's attribute directions in W.")
    ap.add_argument("--model", required=True, help="generator: registered name or checkpoint path")
    ap.add_argument("--out", default=None,
                    help="output .safetensors (default cache_dir()/directions/<model>-directions.safetensors)")
    ap.add_argument("--n", type=int, default=20000, help="samples to fit the directions on (default 20000)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--classifier", default=None,
                    help="attribute classifier: name or path (default: '<model>-classifier' if registered, "
                         "else synthfaces64)")
    ap.add_argument("--batch", type=int, default=16, help="images per synthesis call (default 16)")
    ap.add_argument("--effect-n", type=int, default=500,
                    help="fresh samples for the +2/-2 effect readout (default 500; 0 skips it)")
    ap.add_argument("--attributes", nargs="+", default=list(DEFAULT_ATTRIBUTES),
                    help=f"classifier labels (default {' '.join(DEFAULT_ATTRIBUTES)})")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                    help=f"default {' '.join(METHODS)}")
    ap.add_argument("--psi", type=float, default=1.0, help="truncation psi of the samples (default 1)")
    ap.add_argument("--min-count", type=int, default=20,
                    help="fewest positives and negatives an attribute needs (default 20)")
    ap.add_argument("--manifest", default=None, metavar="NAME",
                    help="also register --out (inside pretrained/) as NAME (kind other) in pretrained/MANIFEST.json")
    ap.add_argument("--quiet", action="store_true", help="no progress bars or table")
    args = ap.parse_args(argv)
    args.argv = argv
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted: nothing written", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
