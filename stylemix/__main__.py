"""Command-line interface: `python -m stylemix <command> ...`.

Commands:
  generate  images from seeds (one PNG per seed, or one grid)
  convert   any checkpoint StyleMix can read -> StyleMix's own safetensors format
  fetch     download a registered model into the cache, with resume and checksum
  info      describe a checkpoint (resolution, num_ws, dims, parameters, format)
  models    list the registered models

Errors print one line on stderr and exit with status 1 (2 for bad arguments).
"""

from __future__ import annotations

import argparse
import json
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
    save_generator(G, args.output, provenance={"converted_from": str(src)})
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
