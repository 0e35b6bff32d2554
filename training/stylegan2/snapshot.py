"""Snapshots of a training run: atomic writes, the `latest` pointer, training state, resume sources.

A snapshot at `tag` (the kimg counter, e.g. '000200', or '000000.064' for a fraction of a kimg)
is two files in the run directory, written in this order, each through a temporary file in the
same folder and `os.replace` (so a crash never leaves a half-written file under the final name):

    network-snapshot-<tag>.safetensors   G_ema in StyleMix's own format (stylemix.checkpoints)
    training-state-<tag>.pt              everything needed to continue (torch.save; loads with
                                         torch.load(weights_only=True)): G, D, G_ema, optimiser
                                         states, augment p and the AdaptiveP state, the PL mean,
                                         counters (images, steps, ticks, seconds) and the RNG
                                         states (torch, CUDA, numpy, python) of every process

then `latest.json` is replaced to point at them. `--resume RUN_DIR` reads `latest.json`.
"""

from __future__ import annotations

import json
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stylemix.fileio import atomic_open, atomic_write_bytes

__all__ = [
    "STATE_FORMAT", "atomic_write_bytes", "atomic_torch_save", "atomic_write_json", "snapshot_tag",
    "write_latest", "read_latest", "load_training_state", "is_training_state", "get_rng_state",
    "set_rng_state", "check_state_dict_match", "load_resume_networks", "network_from_state", "clean_temp_files",
]

STATE_FORMAT = "stylemix-training-state"
STATE_VERSION = 1
LATEST = "latest.json"


# ------------------------------------------------------------------------------------------------
# Atomic writes


def atomic_torch_save(obj, path) -> Path:
    with atomic_open(path) as f:
        torch.save(obj, f)
    return Path(path)


def atomic_write_json(path, obj) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def clean_temp_files(run_dir) -> list[Path]:
    """Remove temporary files left by a process killed while writing (names '.<file>.*.tmp')."""
    removed = []
    for p in Path(run_dir).glob(".*.tmp"):
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def snapshot_tag(cur_nimg: int) -> str:
    """'000200' at 200 kimg (the official naming); '000000.064' when not a whole kimg."""
    if cur_nimg % 1000 == 0:
        return f"{cur_nimg // 1000:06d}"
    return f"{cur_nimg // 1000:06d}.{cur_nimg % 1000:03d}"


# ------------------------------------------------------------------------------------------------
# The latest pointer


def write_latest(run_dir, *, network: str, state: str, cur_nimg: int, step: int, tick: int) -> Path:
    return atomic_write_json(Path(run_dir) / LATEST, dict(network=network, state=state, cur_nimg=int(cur_nimg),
                                                           kimg=cur_nimg / 1000, step=int(step), tick=int(tick)))


def read_latest(run_dir) -> dict:
    """The `latest.json` of a run directory, with absolute paths; ValueError when there is none."""
    run_dir = Path(run_dir)
    path = run_dir / LATEST
    if not path.is_file():
        raise ValueError(f"{run_dir}: no {LATEST} in this run directory (no snapshot was written yet)")
    try:
        latest = json.loads(path.read_text())
        state = run_dir / latest["state"]
        network = run_dir / latest["network"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: unreadable snapshot pointer: {exc}") from None
    if not state.is_file():
        raise ValueError(f"{path} points at {state.name}, which does not exist")
    latest["state_path"] = state
    latest["network_path"] = network
    return latest


# ------------------------------------------------------------------------------------------------
# Training state


def is_training_state(path) -> bool:
    """True for a torch zip file written by this module (checked without unpickling)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            data = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if not data:
                return False
            raw = z.read(data[0])
        return STATE_FORMAT.encode() in raw
    except (zipfile.BadZipFile, OSError, KeyError):
        return False


def load_training_state(path, *, map_location="cpu") -> dict:
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/corrupt files
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"{path}: cannot read training state ({type(exc).__name__}: {msg})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: not a StyleMix training state")
    if int(state.get("version", 0)) > STATE_VERSION:
        raise ValueError(f"{path}: training state version {state.get('version')} is newer than this code "
                         f"reads ({STATE_VERSION})")
    return state


def network_from_state(state: dict, key: str, kwargs: dict | None = None) -> torch.nn.Module:
    """Network `key` ('G', 'G_ema' or 'D') of a training state as a module in eval mode, built from
    `kwargs` (default: the state's own options, G_kwargs or D_kwargs) and recorded as its
    init_kwargs, so that save_generator / save_discriminator can describe it."""
    import copy

    from stylemix.networks.stylegan2 import Discriminator, Generator

    if state.get(key) is None:
        raise ValueError(f"the training state holds no {key}")
    cls, kind = (Discriminator, "D_kwargs") if key == "D" else (Generator, "G_kwargs")
    kwargs = copy.deepcopy(kwargs if kwargs is not None else state["options"][kind])
    net = cls(**kwargs)
    net.load_state_dict(state[key], strict=True)
    net.init_kwargs = copy.deepcopy(kwargs)
    return net.eval().requires_grad_(False)


def get_rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    out = dict(
        torch=torch.get_rng_state(),
        numpy=dict(kind=str(np_state[0]), keys=torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
                   pos=int(np_state[2]), has_gauss=int(np_state[3]), cached_gaussian=float(np_state[4])),
        python=[int(py_state[0]), list(py_state[1]), py_state[2]],
    )
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]),
                         float(n["cached_gaussian"])))
    p = state["python"]
    random.setstate((int(p[0]), tuple(int(v) for v in p[1]), p[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu().to(torch.uint8))


# ------------------------------------------------------------------------------------------------
# Resuming from checkpoints


def check_state_dict_match(src: dict[str, torch.Tensor], dst: torch.nn.Module, *, what: str, source: str,
                           max_listed: int = 20) -> None:
    """Raise ValueError listing every key that is missing, unexpected or of another shape."""
    dst_sd = dst.state_dict()
    problems = []
    for k in dst_sd:
        if k not in src:
            problems.append(f"{k} missing in checkpoint (run has {list(dst_sd[k].shape)})")
        elif tuple(src[k].shape) != tuple(dst_sd[k].shape):
            problems.append(f"{k} {list(src[k].shape)} in checkpoint vs {list(dst_sd[k].shape)} in this run")
    for k in src:
        if k not in dst_sd:
            problems.append(f"{k} {list(src[k].shape)} in checkpoint, not in this run")
    if problems:
        shown = problems[:max_listed]
        more = f"; ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        raise ValueError(f"{source}: {what} does not match this run's configuration (--cfg and overrides, "
                         f"--cond, dataset resolution/channels); {len(problems)} differing key(s): "
                         + "; ".join(shown) + more)


def load_resume_networks(path_or_name) -> dict[str, Any]:
    """{'G', 'D', 'G_ema': state dicts or None, 'G_kwargs', 'D_kwargs': the networks' constructor
    arguments or None, 'source': str, 'format': str, 'earlier_kimg': float or None} from anything
    stylemix.checkpoints reads (official pickles, rosinality, StyleMix files, registered names) or
    from a StyleMix training state file. `earlier_kimg`: the images (thousands) the checkpoint was
    trained on, where this trainer made it (see trained_kimg)."""
    p = Path(str(path_or_name)).expanduser()
    if p.is_file() and is_training_state(p):
        state = load_training_state(p)
        nimg = int(state["counters"]["cur_nimg"])
        o = state.get("options") or {}
        return dict(G=state["G"], D=state["D"], G_ema=state["G_ema"], source=str(p), format=STATE_FORMAT,
                    G_kwargs=o.get("G_kwargs"), D_kwargs=o.get("D_kwargs"),
                    earlier_kimg=total_kimg(state.get("options"), nimg) or nimg / 1000)
    from stylemix.checkpoints import load_networks

    nets = load_networks(path_or_name, device="cpu")
    out: dict[str, Any] = dict(source=str(path_or_name), format=nets.get("format"),
                               earlier_kimg=trained_kimg(nets.get("provenance")), G_kwargs=None, D_kwargs=None)
    for name in ("G", "D", "G_ema"):
        net = nets.get(name)
        out[name] = {k: v.detach().clone() for k, v in net.state_dict().items()} \
            if isinstance(net, torch.nn.Module) else None
        if out[name] is not None and out[f"{name[0]}_kwargs"] is None:
            out[f"{name[0]}_kwargs"] = getattr(net, "init_kwargs", None)
    if out["G_ema"] is None and out["G"] is None:
        raise ValueError(f"{path_or_name}: no generator in this checkpoint")
    # A shipped generator's companions (ship --with-d): its D, and its G (the trained weights; the
    # shipped file is G_ema). Continuing from G_ema alone lost ground: see find_companion.
    found = []
    for key, what in (("D", "discriminator"), ("G", "training-generator")):
        src = find_companion(path_or_name, what) if out[key] is None else None
        net = load_networks(src, device="cpu").get("D" if key == "D" else "G_ema") if src is not None else None
        if isinstance(net, torch.nn.Module):
            out[key] = {k: v.detach().clone() for k, v in net.state_dict().items()}
            if out[f"{key}_kwargs"] is None:
                out[f"{key}_kwargs"] = getattr(net, "init_kwargs", None)
            found.append(f"{key}: {src}")
    if found:
        out["source"] = f"{path_or_name} ({', '.join(found)})"
    return out


def total_kimg(options, nimg: int) -> float | None:
    """Thousands of images since random weights after `nimg` images of a run whose options say it went on
    from one of this trainer's checkpoints (`resume_kimg`, set by train --resume); None for other runs,
    whose own kimg is the total."""
    earlier = (options or {}).get("resume_kimg")
    return None if earlier is None else float(earlier) + nimg / 1000


def trained_kimg(provenance) -> float | None:
    """Thousands of images a StyleMix training snapshot has seen in all (its `kimg_total`, else its
    run's `kimg`), from its provenance; None for anything this trainer did not write."""
    if not isinstance(provenance, dict) or provenance.get("trainer") != "training.stylegan2":
        return None
    value = provenance.get("kimg_total", provenance.get("kimg"))
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


# A shipped generator's companions, written by `ship --with-d` and paired by --resume: registry
# name '<model>-<kind>' (that kind) or the file '<stem>_<kind with _>.safetensors' beside it.
#   discriminator        D at the shipped snapshot
#   training-generator   G at the shipped snapshot (the shipped model is G_ema, its moving average)
# Measured on the synthfaces64 CPU run at 100 kimg, 8 kimg on from the same snapshot (2,000-sample
# FD ratio, 81.9 at the start): the run's own training state 74.7 -> 67.2; G_ema + D with fresh
# optimisers (G starting from G_ema) 83.6 -> 84.8; G + G_ema + D with fresh optimisers 77.9 -> 74.1.
COMPANION_KINDS = ("discriminator", "training-generator")


def companion_file(generator_file, kind: str) -> Path:
    """Where `ship` puts a generator file's companion of this kind."""
    assert kind in COMPANION_KINDS, kind
    p = Path(generator_file)
    return p.with_name(f"{p.stem}_{kind.replace('-', '_')}.safetensors")


def find_companion(path_or_name, kind: str) -> str | None:
    """A companion shipped with a generator file (kind 'discriminator' or 'training-generator'), or
    None: the registry entry '<name>-<kind>' of that kind when the generator is that registered
    model (by name, or its very file), else the file companion_file(generator, kind) beside it."""
    from stylemix import pretrained

    assert kind in COMPANION_KINDS, kind
    text = str(path_or_name)
    p = Path(text).expanduser()
    name = None
    if pretrained.is_registered(text) and not p.exists():
        name = text
    elif p.is_file() and pretrained.is_registered(p.stem):
        try:
            if pretrained.resolve(p.stem, progress=False).resolve() == p.resolve():
                name = p.stem
        except Exception:  # noqa: BLE001 -- an unavailable registry file: no pairing by name
            name = None
    if name is not None:
        reg = f"{name}-{kind}"
        if pretrained.is_registered(reg) and pretrained.get_entry(reg).kind == kind:
            return reg
    if p.is_file():
        sibling = companion_file(p, kind)
        if sibling.is_file():
            return str(sibling)
    return None


def parse_tag(name: str) -> int | None:
    """cur_nimg from a snapshot file name ('network-snapshot-000012.500.safetensors' -> 12500)."""
    m = re.search(r"-(\d{6,})(?:\.(\d{3}))?\.(?:safetensors|pt|png)$", name)
    if not m:
        return None
    return int(m.group(1)) * 1000 + int(m.group(2) or 0)
