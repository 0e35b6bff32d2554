"""Command-line interface: `python -m stylemix <command> ...`.

Commands:
  generate  images from seeds (one PNG per seed, or one grid)
  convert   any checkpoint StyleMix can read -> StyleMix's own safetensors format
  fetch     download a registered model into the cache, with resume and checksum
  info      describe a checkpoint (resolution, num_ws, dims, parameters, format)
  models    list the registered models
  project   align a photo and invert it into a model's latent space (PNG + .npz latent)
  mix       take chosen layers of one latent into another (latents from .npz files or photos)
  edit      move a latent along attribute directions (e.g. --attr shaved=2)

Progress goes to stderr, written paths to stdout; every file is written atomically.
Errors print one line on stderr and exit with status 1 (2 for bad arguments).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path


class CLIError(Exception):
    """An error whose message is shown to the user as is."""


def parse_seeds(text: str) -> list[int]:
    """'0-3,10,12-13' -> [0, 1, 2, 3, 10, 12, 13]."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"bad seed list {text!r}: expected numbers and ranges like '0-7,10'")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise ValueError(f"bad seed range {part!r}: end before start")
        if hi - lo >= 100_000:
            raise ValueError(f"seed range {part!r} is too long (at most 100000 seeds)")
        seeds.extend(range(lo, hi + 1))
    return seeds


def _save_png_atomic(img, path: Path) -> None:
    """Write a PIL image to `path` through a temporary file in the same folder."""
    from .fileio import atomic_open

    with atomic_open(path) as f:
        img.save(f, format="PNG")


def cmd_generate(args) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from .checkpoints import load_generator
    from .mixing import to_uint8 as _to_uint8_images

    seeds = parse_seeds(args.seeds)
    if not 0 <= args.trunc <= 2:
        raise ValueError(f"--trunc must be in [0, 2], got {args.trunc}")
    G = load_generator(args.model, device=args.device)
    G.eval()
    c = torch.zeros([1, G.c_dim], device=args.device)
    if G.c_dim:
        if args.class_idx is None:
            raise ValueError(f"this model is conditional (c_dim={G.c_dim}): pass --class")
        if not 0 <= args.class_idx < G.c_dim:
            raise ValueError(f"--class must be in [0, {G.c_dim - 1}], got {args.class_idx}")
        c[:, args.class_idx] = 1
    elif args.class_idx is not None:
        raise ValueError("--class given but this model is unconditional")

    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    images = []
    from tqdm import tqdm

    with torch.no_grad():
        for seed in tqdm(seeds, desc="generate", unit="img", disable=not sys.stderr.isatty() or args.quiet):
            z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim)).to(args.device, torch.float32)
            img = G(z, c, truncation_psi=args.trunc, noise_mode=args.noise_mode)
            arr = _to_uint8_images(img)[0]
            if args.grid:
                images.append(arr)
            else:
                path = outdir / f"seed{seed:04d}.png"
                _save_png_atomic(Image.fromarray(arr), path)
                if not args.quiet:
                    print(path)
    if args.grid:
        n = len(images)
        cols = args.grid_cols or int(np.ceil(np.sqrt(n)))
        rows = (n + cols - 1) // cols
        h, w, ch = images[0].shape
        grid = np.zeros([rows * h, cols * w, ch], dtype=np.uint8)
        for i, arr in enumerate(images):
            r, col = divmod(i, cols)
            grid[r * h:(r + 1) * h, col * w:(col + 1) * w] = arr
        path = outdir / "grid.png"
        _save_png_atomic(Image.fromarray(grid), path)
        if not args.quiet:
            print(path)
    return 0


def cmd_convert(args) -> int:
    from .checkpoints import load_generator, save_generator

    src = args.input
    G = load_generator(src, device="cpu")
    save_generator(G, args.output, provenance={"converted_from": str(src)},
                   storage_dtype="float16" if args.half else "float32")
    print(args.output)
    return 0


def cmd_fetch(args) -> int:
    from .pretrained import fetch

    path = fetch(args.name, force=args.force, progress=not args.quiet,
                 allow_unverified=True if args.allow_unverified else None)
    print(path)
    return 0


def cmd_models(args) -> int:
    from .pretrained import list_models

    for entry in list_models():
        res = f"{entry.resolution}px" if entry.resolution else "-"
        print(f"{entry.name:24s} {res:>7s}  {entry.description}")
    return 0


def cmd_info(args) -> int:
    from .checkpoints import describe

    info = describe(args.path)
    if args.json:
        print(json.dumps(info, indent=1, sort_keys=True))
    else:
        for key in sorted(info):
            value = info[key]
            if isinstance(value, (dict, list)):
                value = json.dumps(value, sort_keys=True)
            print(f"{key:18s} {value}")
    return 0


# ----------------------------------------------------------------------------------------------
# project / mix / edit (through stylemix.api: the same code paths as the app)


def _progress(args, label: str):
    """progress(fraction, text) that prints to stderr about twice a second (and at the end)."""
    import time

    if getattr(args, "quiet", False):
        return None
    state = {"last": 0.0}

    def report(fraction: float, text: str) -> None:
        now = time.monotonic()
        if fraction >= 1.0 or fraction <= 0.0 or now - state["last"] >= 0.5:
            state["last"] = now
            print(f"{label}: {100 * fraction:5.1f}% {text}", file=sys.stderr, flush=True)
    return report


def _note(args, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(text, file=sys.stderr, flush=True)


def _load_model(args):
    from . import api

    model = api.load_model(args.model)
    for note in model.notes:
        _note(args, f"warning: {note}")
    return model


def _write(path: Path, data: bytes, args) -> None:
    from .fileio import atomic_write_bytes

    atomic_write_bytes(path, data)
    if not getattr(args, "quiet", False):
        print(path)


def _is_npz(path: Path) -> bool:
    if path.suffix.lower() == ".npz":
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def _image_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise CLIError(f"image file not found: {str(path)!r}")
    return path.read_bytes()


def _invert_image(model, path: Path, args, label: str):
    """Align + invert one photo -> (Latent, Aligned, sha256 of the file)."""
    import hashlib

    from . import api

    data = _image_bytes(path)
    face = api.align(model, data, allow_centre_crop=args.allow_centre_crop, passthrough=args.aligned)
    _note(args, f"{label}: aligned {path.name} ({face.method})")
    steps = getattr(args, "steps", None)
    if steps is not None:
        lat = api.invert(model, face.image, steps=steps, w_plus=bool(getattr(args, "w_plus", False)),
                         progress=_progress(args, label), seed=args.seed)
    else:
        lat = api.invert(model, face.image, quality=args.quality or "balanced",
                         progress=_progress(args, label), seed=args.seed)
    _note(args, f"{label}: {lat.quality}, PSNR {lat.psnr:.2f} dB, distance {lat.distance:.4f}, {lat.seconds:.1f} s")
    return lat, face, hashlib.sha256(data).hexdigest()


def _latent_meta(model, lat, face, sha, source: Path) -> dict:
    from . import __version__

    return {"model": model.name, "model_path": model.path, "resolution": model.resolution,
            "num_ws": model.num_ws, "w_dim": model.w_dim, "op": "invert", "quality": lat.quality,
            "steps": lat.steps, "psnr": round(lat.psnr, 4) if math.isfinite(lat.psnr) else None,
            "distance": round(lat.distance, 6), "distance_kind": lat.distance_kind,
            "seconds": round(lat.seconds, 3), "encoder": lat.encoder, "source": source.name,
            "source_sha256": sha, "align_method": face.method, "stylemix": __version__}


def _latent_from(model, spec: str, args, label: str, out: Path):
    """A latent from a .npz file, or from a photo (aligned + inverted; its latent is saved too)."""
    from . import api

    path = Path(spec)
    if not path.exists():
        raise CLIError(f"{label}: {spec!r} does not exist (give a .npz latent or an image file)")
    if _is_npz(path):
        ws, meta = api.read_npz(path)
        made_for = meta.get("model")
        if made_for and made_for != model.name:
            _note(args, f"warning: {label} latent {path.name} was made with model {made_for!r}, not {model.name!r}")
        return ws, {"source": path.name, "kind": "npz"}
    lat, face, sha = _invert_image(model, path, args, label)
    _write(out / f"{label}.npz", api.npz_bytes(lat.ws, **_latent_meta(model, lat, face, sha, path)), args)
    return lat.ws, {"source": path.name, "kind": "image", "source_sha256": sha, "quality": lat.quality}


def cmd_project(args) -> int:
    from . import api

    if args.steps is not None and args.quality is not None:
        raise CLIError("give either --quality or --steps (the projector), not both")
    if args.w_plus and args.steps is None:
        raise CLIError("--w-plus goes with --steps N (the projector); --quality modes always use W+")
    src = Path(args.image)
    model = _load_model(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lat, face, sha = _invert_image(model, src, args, "project")
    stem = src.stem
    _write(out / f"{stem}_aligned.png", api.png_bytes(face.image), args)
    _write(out / f"{stem}_projected.png", api.png_bytes(lat.image), args)
    _write(out / f"{stem}.npz", api.npz_bytes(lat.ws, **_latent_meta(model, lat, face, sha, src)), args)
    return 0


def cmd_mix(args) -> int:
    from . import api

    model = _load_model(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ws_a, src_a = _latent_from(model, args.a, args, "a", out)
    ws_b, src_b = _latent_from(model, args.b, args, "b", out)
    ws = api.mix(model, ws_a, ws_b, args.layers, weights=args.weights, truncation=args.truncation)
    image = api.render(model, ws)
    meta = {"model": model.name, "op": "mix", "a": src_a, "b": src_b, "layers": args.layers,
            "weights": args.weights, "truncation": args.truncation, "num_ws": model.num_ws, "w_dim": model.w_dim}
    _write(out / "mix.png", api.png_bytes(image), args)
    _write(out / "mix.npz", api.npz_bytes(ws, **meta), args)
    return 0


def _parse_attr(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    name = name.strip()
    try:
        strength = float(value) if sep else None
    except ValueError:
        strength = None
    if not name or strength is None or not math.isfinite(strength):
        raise CLIError(f"bad --attr {text!r}: expected NAME=STRENGTH, e.g. shaved=2 or has_beard=-1.5")
    return name, strength


def cmd_edit(args) -> int:
    from . import api

    edits: dict[str, float] = {}
    for text in args.attr:
        name, strength = _parse_attr(text)
        if name in edits:
            raise CLIError(f"--attr {name} is given twice")
        edits[name] = strength
    model = _load_model(args)
    if not model.directions:  # say so before a long inversion
        raise CLIError(f"model {model.name!r} has no attribute directions; compute them with "
                       f"`python -m training.directions --model {model.name}`")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ws, src = _latent_from(model, args.ws, args, "source", out)
    ws = api.edit(model, ws, edits, method=args.method, layers=args.layers)
    image = api.render(model, ws)
    meta = {"model": model.name, "op": "edit", "source": src, "edits": edits, "method": args.method or "default",
            "layers": args.layers, "num_ws": model.num_ws, "w_dim": model.w_dim}
    _write(out / "edit.png", api.png_bytes(image), args)
    _write(out / "edit.npz", api.npz_bytes(ws, **meta), args)
    return 0


def _add_inversion_options(p, *, projector: bool) -> None:
    p.add_argument("--quality", choices=["fast", "balanced", "best"], default=None,
                   help="inversion quality for photos (default balanced; fast needs a trained encoder)")
    if projector:
        p.add_argument("--steps", type=int, default=None,
                       help="run the official-style projector for N steps instead of a --quality mode")
        p.add_argument("--w-plus", action="store_true", help="with --steps: optimise in W+ (default W)")
    p.add_argument("--allow-centre-crop", action="store_true",
                   help="use the image centre when no face is detected")
    p.add_argument("--aligned", action="store_true",
                   help="the photos are already aligned square faces: only resize them")
    p.add_argument("--seed", type=int, default=0, help="seed of the inversion (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr, no paths on stdout")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m stylemix", description="StyleMix command-line tools.")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate images from seeds")
    g.add_argument("--model", required=True, help="registered model name or checkpoint path")
    g.add_argument("--seeds", default="0-7", help="seed list, e.g. '0-7' or '1,5,9' (default 0-7)")
    g.add_argument("--trunc", type=float, default=1.0, help="truncation psi (default 1)")
    g.add_argument("--class", dest="class_idx", type=int, default=None, help="class index for conditional models")
    g.add_argument("--noise-mode", default="const", choices=["const", "random", "none"])
    g.add_argument("--outdir", required=True, help="output folder (created if missing)")
    g.add_argument("--grid", action="store_true", help="write one grid.png instead of one PNG per seed")
    g.add_argument("--grid-cols", type=int, default=None, help="columns of the grid (default: square)")
    g.add_argument("--device", default="cpu")
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("convert", help="convert a checkpoint to StyleMix's safetensors format")
    c.add_argument("input", help="official .pkl, rosinality .pt, or StyleMix .safetensors (detected by content)")
    c.add_argument("output", help="output .safetensors path")
    c.add_argument("--half", action="store_true",
                   help="store the weights as float16 (half the bytes; loaded back as float32; each weight "
                        "rounded to float16, so measure the converted file before you rely on it)")
    c.set_defaults(func=cmd_convert)

    f = sub.add_parser("fetch", help="download a registered model into $STYLEMIX_CACHE")
    f.add_argument("name")
    f.add_argument("--force", action="store_true", help="download again even if cached")
    f.add_argument("--allow-unverified", action="store_true",
                   help="install a file whose sha256 is not published (prints the computed sha256)")
    f.add_argument("--quiet", action="store_true")
    f.set_defaults(func=cmd_fetch)

    i = sub.add_parser("info", help="describe a checkpoint")
    i.add_argument("path", help="checkpoint path or registered name")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=cmd_info)

    m = sub.add_parser("models", help="list registered models")
    m.set_defaults(func=cmd_models)

    pr = sub.add_parser("project", help="align a photo and invert it (aligned PNG, reconstruction PNG, .npz)")
    pr.add_argument("--model", required=True, help="registered model name or checkpoint path")
    pr.add_argument("--image", required=True, help="photo (JPEG, PNG, WebP, ...)")
    pr.add_argument("--out", required=True, help="output folder (created if missing)")
    _add_inversion_options(pr, projector=True)
    pr.set_defaults(func=cmd_project)

    mx = sub.add_parser("mix", help="take layers of latent B into latent A (mix.png + mix.npz)")
    mx.add_argument("--model", required=True, help="registered model name or checkpoint path")
    mx.add_argument("--a", required=True, help="base: a .npz latent or a photo (inverted first)")
    mx.add_argument("--b", required=True, help="the latent whose layers are taken: .npz or a photo")
    mx.add_argument("--layers", required=True,
                    help="groups and/or rows: coarse | middle | fine | 'coarse,5' | '0,1,2'")
    mx.add_argument("--weights", default=None,
                    help="blend weight(s) in [0, 1]: one value, or one per --layers entry ('1,0.5')")
    mx.add_argument("--truncation", type=float, default=1.0, help="pull the result towards w_avg (1 = none)")
    mx.add_argument("--out", required=True, help="output folder (created if missing)")
    _add_inversion_options(mx, projector=False)
    mx.set_defaults(func=cmd_mix)

    ed = sub.add_parser("edit", help="move a latent along attribute directions (edit.png + edit.npz)")
    ed.add_argument("--model", required=True, help="registered model name or checkpoint path")
    ed.add_argument("--ws", required=True, help="a .npz latent or a photo (inverted first)")
    ed.add_argument("--attr", action="append", required=True, metavar="NAME=STRENGTH",
                    help="attribute and strength in standard deviations, e.g. shaved=2 (repeatable)")
    ed.add_argument("--method", default=None, choices=["conditional", "interfacegan", "mean_diff"],
                    help="direction method (default: conditional where the model has it and it is not much "
                         "weaker than interfacegan, else interfacegan, else mean_diff)")
    ed.add_argument("--layers", default=None, help="edit only these groups/rows (default: all)")
    ed.add_argument("--out", required=True, help="output folder (created if missing)")
    _add_inversion_options(ed, projector=False)
    ed.set_defaults(func=cmd_edit)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError, CLIError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
