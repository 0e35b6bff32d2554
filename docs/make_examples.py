"""The example faces the app offers (`stylemix.api.examples()`): `python docs/make_examples.py`
writes assets/examples/*.png and assets/examples/examples.json.

- 3 'beard' faces (has_beard, head not shaved) and 3 'shaved' faces (shaved head, no beard),
  procedural renders from training.data.synthfaces at 128 px: face i of seed 4242 (beard) / 4243
  (shaved) with the attributes pinned (`render_batch(..., has_beard=True, shaved=False)`), so each
  subset has its own identities. Seeds 4242/4243 are outside the reserved ranges (classifier
  7100-7109, quality checks 9000/9001, the dataset seed 1). The first faces of each seed that the
  shipped classifier (synthfaces64) labels correctly (both probabilities on the right side of 0.5)
  are kept; examples.json records their index and probabilities.
- 1 'photo': scikit-image's astronaut.png (Eileen Collins, NASA, public domain), aligned
  FFHQ-style by stylemix.faces.align at 128 px (dlib when installed, else Haar).

PNGs are stored as 256-colour palette images (PIL quantize, fast octree, no dithering; about
37 dB PSNR against the render, far above what inversion reaches) with optimize=True, so the seven
files take under 60 KB; the classifier check runs on the stored pixels and examples.json records
each file's PSNR against the full-colour image.
stylemix never imports training: api.examples() only reads what this script wrote.
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stylemix.fileio import atomic_write_bytes, atomic_write_text  # noqa: E402

OUT = REPO / "assets" / "examples"
RES = 128
PER_ROLE = 3
SUBSETS = {  # role -> (seed, pinned attributes, classifier check: attribute -> wanted label)
    "beard": (4242, dict(has_beard=True, shaved=False), {"has_beard": True, "shaved": False}),
    "shaved": (4243, dict(has_beard=False, shaved=True), {"has_beard": False, "shaved": True}),
}


def _store(img: Image.Image) -> tuple[bytes, np.ndarray, float]:
    """-> (palette PNG bytes, the RGB pixels they decode to, PSNR in dB against img)."""
    q = img.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    buf = io.BytesIO()
    q.save(buf, format="PNG", optimize=True)
    stored = np.asarray(q.convert("RGB"))
    mse = float(np.mean((stored.astype(np.float64) - np.asarray(img.convert("RGB"), np.float64)) ** 2))
    psnr = float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
    return buf.getvalue(), stored, round(float(psnr), 2)


def _astronaut_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None:
        raise SystemExit("error: scikit-image is not installed (it ships data/astronaut.png)")
    path = Path(spec.origin).parent / "data" / "astronaut.png"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found")
    return path


def main() -> int:
    import torch

    torch.set_num_threads(1)
    from stylemix import faces
    from stylemix.attributes import load_classifier
    from training.data.synthfaces import params_for, render_many

    clf = load_classifier("synthfaces64")
    OUT.mkdir(parents=True, exist_ok=True)
    entries = []
    for role, (seed, fixed, want) in SUBSETS.items():
        kept = 0
        for index in range(50):
            params = params_for(seed, index, **fixed)
            data, img, psnr = _store(Image.fromarray(render_many([params], RES)[0]))
            probs = clf.predict(img[None])
            p = {k: round(float(probs[k][0]), 4) for k in ("has_beard", "shaved")}
            if any((p[k] >= 0.5) != v for k, v in want.items()):
                print(f"skip {role} seed {seed} face {index}: classifier says {p}", file=sys.stderr)
                continue
            name = f"{role}_{kept + 1}"
            file = f"{name}.png"
            atomic_write_bytes(OUT / file, data)
            a = params["attributes"]
            entries.append({
                "name": name, "role": role, "file": file, "resolution": RES,
                "made_by": f"training.data.synthfaces: params_for({seed}, {index}, "
                           + ", ".join(f"{k}={v}" for k, v in fixed.items()) + f"), render_many(..., {RES})",
                "seed": seed, "index": index, "palette_psnr_db": psnr,
                "attributes": {"beard": a["beard"], "hair": a["hair"], "glasses": bool(a["glasses"]),
                               "smile": bool(a["smile"])},
                "classifier_synthfaces64": p,
            })
            kept += 1
            if kept == PER_ROLE:
                break
        if kept < PER_ROLE:
            raise SystemExit(f"error: only {kept} {role} faces of seed {seed} pass the classifier check")

    path = _astronaut_path()
    face = faces.align(str(path), RES)
    data, _, psnr = _store(face.image)
    atomic_write_bytes(OUT / "photo_astronaut.png", data)
    entries.append({
        "name": "astronaut", "role": "photo", "file": "photo_astronaut.png", "resolution": RES,
        "made_by": f"scikit-image data/astronaut.png (Eileen Collins, NASA; public domain), "
                   f"stylemix.faces.align(..., {RES}) method '{face.method}'",
        "align_method": face.method, "palette_psnr_db": psnr,
    })

    index = {"about": "example faces for the StyleMix app; made by docs/make_examples.py", "examples": entries}
    atomic_write_text(OUT / "examples.json", json.dumps(index, indent=1) + "\n")
    total = sum(os.path.getsize(OUT / e["file"]) for e in entries)
    for e in entries:
        print(OUT / e["file"])
    print(f"{len(entries)} examples, {total / 1024:.1f} KB of PNG", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
