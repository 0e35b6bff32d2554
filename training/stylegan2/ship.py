"""Ship a training run's G_ema snapshot as a bundled model: `pretrained/<name>.safetensors` + its MANIFEST record.

    python -m training.stylegan2.ship --run RUN_DIR [--snapshot KIMG|latest|best] \\
        --quality-json quality.json --name synthfaces64 --out pretrained/synthfaces64.safetensors [--interim]

- `--snapshot`: `latest` (default: the one latest.json points at), `best` (the snapshot whose
  per-snapshot synthfaces metric in `metric-synthfaces*.jsonl` is best: passing ones first, then
  the lowest FD ratio, then the smallest attribute-rate gap) or a kimg value (`400`, `0.064`).
- `--quality-json`: the report of `python -m training.stylegan2.quality --model <that snapshot>`
  (its `--out` file, or its stdout: the last line that is a JSON object is taken). It must be
  about this snapshot (same weights, or the same file name when the measured file is gone).
- A snapshot that does not meet the quality bar (`passed` at the bar's 5,000 samples) is refused
  unless `--interim`, which records `"interim": true`.

The snapshot file is copied byte for byte when it is already a self-describing StyleMix
safetensors file (its sha256 then equals the snapshot's); anything else loadable is re-saved with
`stylemix.checkpoints.save_generator`. The record (name, path, sha256, size, resolution, kind
'generator', aligned_domain 'synthfaces', description, licence, made_by = the run's training
command rebuilt from training_options.json, kimg, training time = the sum of the run's tick times
in stats.jsonl up to the snapshot, hardware, quality, train_data with the dataset's render
options, interim) replaces the record of the same name in the manifest, in place; every other
record is kept as it is. Both files are written atomically (temporary file + rename), the model
first. `--manifest` (default: MANIFEST.json next to `--out`) must be in a folder that holds `--out`.

`--with-d` also ships the discriminator and the generator's training weights (G; the model file is
G_ema) of the training state saved with that snapshot, as `<out stem>_discriminator.safetensors`
and `<out stem>_training_generator.safetensors` with records '<name>-discriminator' and
'<name>-training-generator' (kinds 'discriminator' / 'training-generator', model '<name>');
`train --resume <name>` (or the shipped file's path) then continues from G, G_ema and D instead of
G_ema and a fresh D (only the optimisers' state is new). Shipping without it removes older
companions and their files.

Errors print one line (`error: ...`) and exit with status 1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

__all__ = ["ship", "find_snapshot", "training_command", "training_time", "update_manifest_record",
           "read_quality_json", "hardware", "main"]

DEFAULT_LICENCE = "same as the StyleMix repository; trained only on procedural synthfaces renders"
# ours: network-snapshot-<kimg:06d>[.<img:03d>].safetensors; the official runs': .pkl
SNAPSHOT_RE = re.compile(r"^network-snapshot-(\d{6,})(?:\.(\d{3}))?\.(?:safetensors|pkl|pt)$")
# Keys this tool writes; other keys of an existing record (e.g. best_recipe, added by
# benchmarks/bench_mixing.py --record) survive a re-ship of the same weights only.
RECORD_KEYS = ("name", "path", "sha256", "size", "resolution", "kind", "aligned_domain", "description", "licence",
               "source_page", "made_by", "interim", "kimg", "snapshot", "run", "training_time_s", "training_time_h",
               "ticks", "resumes", "resumed_by", "kimg_by_conv_dtype", "hardware", "quality", "train_data", "date",
               "storage_dtype")


# ------------------------------------------------------------------------------------------------
# Reading the run directory


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no {what} there") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable {what} ({exc})") from None


def _jsonl(path: Path) -> list[dict]:
    """The JSON objects of a .jsonl file; a partial or broken line is skipped."""
    out = []
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _snapshots(run: Path) -> dict[int, Path]:
    """{cur_nimg: path} of the run's generator snapshots (safetensors preferred at equal kimg)."""
    found = {}
    for p in sorted(run.iterdir()):
        m = SNAPSHOT_RE.match(p.name)
        if m and p.is_file():
            nimg = int(m.group(1)) * 1000 + int(m.group(2) or 0)
            if nimg not in found or p.suffix == ".safetensors":
                found[nimg] = p
    return found


def _metric_score(results: dict) -> tuple | None:
    """Sort key of one per-snapshot metric result (smaller is better), None when unusable."""
    if not isinstance(results, dict) or "error" in results:
        return None
    ratio = results.get("ratio")
    if ratio is None or not isinstance(ratio, (int, float)) or not math.isfinite(ratio):
        ratio = math.inf
    gaps = results.get("rate_gaps") or {}
    worst_gap = max((abs(float(g)) for g in gaps.values()), default=math.inf)
    return (not results.get("passed", False), ratio, worst_gap)


def find_snapshot(run, which: str = "latest") -> tuple[Path, int]:
    """(path, cur_nimg) of the snapshot named by `which`: 'latest', 'best' or a kimg value."""
    run = Path(run)
    snaps = _snapshots(run)
    if not snaps:
        raise ValueError(f"{run}: no network-snapshot-*.safetensors in this run directory")
    which = str(which).strip()
    if which == "latest":
        latest = run / "latest.json"
        if latest.is_file():
            rec = _read_json(latest, "snapshot pointer")
            name = rec.get("network") if isinstance(rec, dict) else None
            if not isinstance(name, str) or not (run / name).is_file():
                raise ValueError(f"{latest} points at {name!r}, which is not in {run}")
            nimg = next((n for n, p in snaps.items() if p.name == name), None)
            if nimg is None:
                raise ValueError(f"{latest} points at {name!r}, which is not a network snapshot")
            return run / name, nimg
        nimg = max(snaps)
        return snaps[nimg], nimg
    if which == "best":
        scored = []
        for path in sorted(run.glob("metric-*.jsonl")):
            for rec in _jsonl(path):
                nimg = _nimg(rec.get("kimg", -1))
                score = _metric_score(rec.get("results"))
                if score is not None and nimg in snaps:
                    scored.append((score, -nimg))
        if not scored:
            raise ValueError(f"{run}: no per-snapshot metric results (metric-*.jsonl) to pick the best snapshot "
                             f"from; name a kimg or 'latest'")
        nimg = -min(scored)[1]
        return snaps[nimg], nimg
    try:
        kimg = float(which)
    except ValueError:
        raise ValueError(f"--snapshot {which!r}: give a kimg value, 'latest' or 'best'") from None
    nimg = _nimg(kimg)
    if nimg not in snaps:
        have = ", ".join(f"{n / 1000:g}" for n in sorted(snaps))
        raise ValueError(f"{run}: no snapshot at kimg {kimg:g}; snapshots at kimg {have}")
    return snaps[nimg], nimg


def _nimg(kimg) -> int:
    """A kimg value as a whole number of images (snapshot tags and logs hold kimg to 3 decimals)."""
    return int(round(float(kimg) * 1000))


def _before(kimg, nimg: int) -> bool:
    """Whether a resume or resume change recorded at `kimg` came before the snapshot at `nimg`
    images, so that it trained that snapshot (None: not recorded, counted as before)."""
    return kimg is None or _nimg(kimg) < nimg


def training_time(run, cur_nimg: int) -> dict:
    """Sum of the tick times (sec_per_tick) in stats.jsonl up to the snapshot at `cur_nimg`.

    A tick's time runs from the end of the previous tick's bookkeeping to the end of its last step,
    so snapshot writing and per-snapshot metrics are not in it. Resumed runs drop the log lines
    past the snapshot they resume from, so each tick is counted once (a duplicate is counted once)."""
    stats = _jsonl(Path(run) / "stats.jsonl")
    ticks: dict[int, tuple[float, int, str]] = {}  # tick -> (seconds, nimg at its end, conv dtype)
    cumulative = None
    resumes = 0
    for rec in stats:
        if rec.get("event") == "resume":
            # a resume from this snapshot or a later one did not train it
            if _before(rec.get("kimg"), cur_nimg):
                resumes += 1
            continue
        if "tick" not in rec or "sec_per_tick" not in rec:
            continue
        nimg = _nimg(rec.get("kimg", 0))
        if nimg <= cur_nimg:
            ticks[int(rec["tick"])] = (float(rec["sec_per_tick"]), nimg, rec.get("cpu_conv_dtype", "float32"))
            if nimg == cur_nimg:
                cumulative = rec.get("sec")
    if not ticks:
        raise ValueError(f"{run}: stats.jsonl has no tick records up to kimg {cur_nimg / 1000:g}")
    total = sum(sec for sec, _, _ in ticks.values())
    # Images trained per convolution precision (train.py --cpu-bf16 is a runtime choice, logged per tick).
    by_dtype: dict[str, float] = {}
    prev = 0
    for _, nimg, dtype in (ticks[t] for t in sorted(ticks)):
        by_dtype[dtype] = by_dtype.get(dtype, 0) + (nimg - prev) / 1000
        prev = nimg
    return dict(seconds=round(total, 1), ticks=len(ticks), resumes=resumes,
                cumulative_sec=None if cumulative is None else float(cumulative),
                kimg_by_conv_dtype={k: round(v, 3) for k, v in sorted(by_dtype.items())})


# ------------------------------------------------------------------------------------------------
# The training command


def _fmt(x) -> str:
    return format(x, "g") if isinstance(x, float) else str(x)


def _change_flags(change: dict) -> str:
    """The flags of one training_options.json resume_changes entry, e.g. '--batch 256 --ema 80', and
    the kimg they took effect at when the entry records it ('--glr 0.001 from 433.632 kimg')."""
    flags = " ".join(f"--{k.replace('_', '-')} {_fmt(v)}" for k, v in change.items()
                     if k not in ("timestamp", "at_kimg"))
    at = change.get("at_kimg")
    return flags + (f" from {_fmt(float(at))} kimg" if at is not None else "")


def training_command(o: dict) -> str:
    """The `python -m training.stylegan2.train ...` command line that makes a run with options `o`
    (training_options.json): its data, outdir, cfg and every option that differs from what the cfg
    and the defaults give. The device and thread count are not recorded in the options."""
    from .configs import resolve_spec
    from .train import DEFAULTS

    a = dict(o.get("args") or {})
    data = o["data"]
    world = int(o.get("num_gpus", 1))
    cfg = o["cfg"]
    argv = ["--data", data["path"]]
    if o.get("run_dir"):
        argv += ["--outdir", str(Path(o["run_dir"]).parent)]
    argv += ["--cfg", cfg]
    if data.get("use_labels"):
        argv.append("--cond")
    if data.get("xflip"):
        argv.append("--mirror")
    res = int(data["resolution"])
    native = _dataset_resolution(data.get("path"))
    if native is not None and native != res:
        argv += ["--resolution", str(res)]
    spec = resolve_spec(cfg, resolution=res, gpus=world)
    got = o.get("cfg_spec") or {}
    for key, flag in (("cbase", "--cbase"), ("cmax", "--cmax"), ("map", "--map"), ("wdim", "--wdim"),
                      ("mbstd", "--mbstd")):
        if key in got and got[key] != spec[key]:
            argv += [flag, _fmt(got[key])]
    if "gamma" in a:
        argv += ["--gamma", _fmt(a["gamma"])]
    kimg = o.get("total_kimg", a.get("kimg"))
    if "kimg" in a or (kimg is not None and float(kimg) != float(spec["kimg"])):
        argv += ["--kimg", _fmt(kimg)]
    if "batch" in a:
        argv += ["--batch", _fmt(a["batch"])]
    for key in ("glr", "dlr", "ema"):
        if key in a:
            argv += [f"--{key}", _fmt(a[key])]
    per_rank = int(o["batch_size"]) // world
    if "batch" in a:
        default_bg = per_rank if cfg != "lite" else min(per_rank, spec["batch_gpu"])
    else:
        default_bg = min(spec["batch_gpu"], per_rank)
    if int(o["batch_gpu"]) != default_bg:
        argv += ["--batch-gpu", str(o["batch_gpu"])]
    if o.get("snap", DEFAULTS["snap"]) != DEFAULTS["snap"]:
        argv += ["--snap", _fmt(o["snap"])]
    if float(o.get("kimg_per_tick", DEFAULTS["tick"])) != float(DEFAULTS["tick"]):
        argv += ["--tick", _fmt(o["kimg_per_tick"])]
    if o.get("random_seed", DEFAULTS["seed"]) != DEFAULTS["seed"]:
        argv += ["--seed", _fmt(o["random_seed"])]
    if o.get("keep_states", DEFAULTS["keep_states"]) != DEFAULTS["keep_states"]:
        argv += ["--keep-states", _fmt(o["keep_states"])]
    if o.get("workers") not in (None, 1, 3):  # 1 and 3 are the CPU and CUDA defaults
        argv += ["--workers", _fmt(o["workers"])]
    aug = o.get("aug", DEFAULTS["aug"])
    if aug != DEFAULTS["aug"]:
        argv += ["--aug", aug]
    for key in ("p", "target", "augpipe"):
        if key in a:
            argv += [f"--{key}", _fmt(a[key])]
    if "resume" in a:
        argv += ["--resume", str(a["resume"])]
    if "freezed" in a:
        argv += ["--freezed", _fmt(a["freezed"])]
    if "warmup_d" in a:
        argv += ["--warmup-d", _fmt(a["warmup_d"])]
    m = o.get("metrics")
    if m:
        argv += ["--metrics", m["name"]]
        if int(m["num_samples"]) != DEFAULTS["metrics_n"]:
            argv += ["--metrics-n", str(m["num_samples"])]
        if m.get("render_options_source") == "--metrics-render-options":
            argv += ["--metrics-render-options", json.dumps(m["render_options"], sort_keys=True)]
    prefix = ["python", "-m", "training.stylegan2.train"] if world == 1 else \
        ["torchrun", "--nproc_per_node", str(world), "-m", "training.stylegan2.train"]
    return shlex.join(prefix + argv)


def _dataset_resolution(path) -> int | None:
    """The resolution a synthfaces dataset zip records (None when it is not one / not readable)."""
    if not path:
        return None
    try:
        from .quality import render_options_from_dataset

        found = render_options_from_dataset(path)
    except (OSError, ValueError):
        return None
    return int(found["render_options"]["res"]) if found else None


def train_data_record(o: dict, quality: dict) -> dict:
    """What the model was trained on: the dataset and its synthfaces render options (from the
    dataset zip when it is readable here, else from the run's metric options, else from the
    quality report), with where they came from."""
    data = o.get("data") or {}
    rec = {k: data[k] for k in ("name", "path", "num_raw", "size", "resolution", "xflip", "use_labels") if k in data}
    ro, source, seeds = None, None, None
    try:
        from .quality import render_options_from_dataset

        found = render_options_from_dataset(data["path"]) if data.get("path") else None
    except (OSError, ValueError):
        found = None
    if found is not None:
        ro, source, seeds = found["render_options"], "dataset zip (dataset.json + params.jsonl)", found["train_seeds"]
    elif (o.get("metrics") or {}).get("render_options") is not None:
        m = o["metrics"]
        ro, source = m["render_options"], f"training_options.json metrics ({m.get('render_options_source')})"
        seeds = m.get("exclude_seeds")
    elif isinstance(quality.get("render_options"), dict):
        ro, source = quality["render_options"], "quality report"
    rec["render_options"] = ro
    rec["render_options_source"] = source
    if seeds is not None:
        rec["render_seeds"] = seeds
    return rec


# ------------------------------------------------------------------------------------------------
# Quality report, hardware, manifest


def read_quality_json(path) -> dict:
    """The quality report: a JSON file, or a captured stdout whose last JSON-object line is it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"--quality-json {path}: cannot read it ({exc.strerror or exc})") from None
    report = None
    try:
        report = json.loads(text)
    except ValueError:
        for line in reversed(text.splitlines()):
            line = line.strip()
            if line.startswith("{"):
                try:
                    report = json.loads(line)
                    break
                except ValueError:
                    continue
    if not isinstance(report, dict):
        raise ValueError(f"--quality-json {path}: holds no JSON object (give the JSON that "
                         f"`python -m training.stylegan2.quality` prints or writes with --out)")
    missing = [k for k in ("fd", "floor", "passed", "num_samples") if k not in report]
    if missing:
        raise ValueError(f"--quality-json {path}: not a synthfaces quality report (no {', '.join(missing)})")
    return report


def hardware() -> str:
    """'<CPU model>, <N> cores, torch <version>' of this machine."""
    from training.machine import hardware as describe

    return describe()


def update_manifest_record(manifest, record: dict) -> list[str]:
    """Put `record` into manifest['models'] atomically: in place of the record of the same name
    (keeping its position), else at the end. Keys of the old record outside RECORD_KEYS (other
    tools' additions) are kept when the sha256 is the same and `record` does not set them, dropped
    otherwise. Every other record is kept byte-for-byte in value. Returns the keys dropped."""
    from stylemix.fileio import atomic_write_text

    manifest = Path(manifest)
    data: Any = {"models": []}
    if manifest.exists():
        data = _read_json(manifest, "manifest")
        if isinstance(data, list):
            data = {"models": data}
        if not isinstance(data, dict) or not isinstance(data.setdefault("models", []), list):
            raise ValueError(f"{manifest}: not a manifest ({{\"models\": [...]}})")
    models = data["models"]
    dropped: list[str] = []
    for i, old in enumerate(models):
        if isinstance(old, dict) and old.get("name") == record["name"]:
            extra = {k: v for k, v in old.items() if k not in RECORD_KEYS}
            if old.get("sha256") == record.get("sha256"):  # same weights: keep what other tools added,
                record = {**record, **{k: v for k, v in extra.items() if k not in record}}  # unless given anew
            else:
                dropped = sorted(extra)
            models[i] = record
            break
    else:
        models.append(record)
    atomic_write_text(manifest, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return dropped


def _same_model(quality: dict, snapshot: Path, digest: str, *, half: bool = False) -> None:
    """The quality report must be about this snapshot (same weights, or the same file name); with
    half, about its float16 weights (a measured converted copy: same digest)."""
    from stylemix.checkpoints import CheckpointError, read_header

    model = quality.get("model")
    if not model:
        return
    mp = Path(str(model)).expanduser()
    make_copy = f"python -m stylemix convert {snapshot} COPY.safetensors --half, then quality --model COPY"
    if mp.is_file():
        try:
            other = read_header(mp).get("weights_sha256")
        except CheckpointError:
            other = None
        if other is not None:
            if other != digest:
                if half:
                    raise ValueError(f"--half: the quality report measured {model}, whose weights differ from "
                                     f"{snapshot.name}'s in float16; measure its float16 copy ({make_copy})")
                raise ValueError(f"the quality report measured {model}, whose weights differ from {snapshot.name}; "
                                 f"measure the snapshot you ship")
            return
    if half:
        raise ValueError(f"--half: the quality report must name the float16 copy it measured (a file), got "
                         f"{model!r}; {make_copy}")
    if mp.name != snapshot.name:
        raise ValueError(f"the quality report measured {model!r}, not {snapshot.name}; measure the snapshot you ship "
                         f"(python -m training.stylegan2.quality --model {snapshot})")


# ------------------------------------------------------------------------------------------------
# Ship


def remove_manifest_record(manifest, name: str) -> dict | None:
    """Drop the record called `name` from `manifest` (atomically); returns it, or None if absent."""
    from stylemix.fileio import atomic_write_text

    manifest = Path(manifest)
    if not manifest.exists():
        return None
    data = _read_json(manifest, "manifest")
    models = data["models"] if isinstance(data, dict) else data
    hit = [m for m in models if isinstance(m, dict) and m.get("name") == name]
    if not hit:
        return None
    models[:] = [m for m in models if not (isinstance(m, dict) and m.get("name") == name)]
    atomic_write_text(manifest, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return hit[0]


def _companion_bytes(run: Path, o: dict, nimg: int, snap_path: Path) -> tuple[dict[str, bytes], Path]:
    """{'discriminator': D, 'training-generator': G} of the training state saved with the snapshot,
    each in StyleMix's safetensors format."""
    from stylemix.checkpoints import save_discriminator, save_generator

    from . import snapshot as snap_io

    state_path = run / f"training-state-{snap_io.snapshot_tag(nimg)}.pt"
    if not state_path.is_file():
        kept = sorted(p.name for p in run.glob("training-state-*.pt"))
        raise ValueError(f"--with-d: no training state for {snap_path.name} ({state_path.name}); a run keeps "
                         f"only its last --keep-states states (here: {', '.join(kept) or 'none'}): ship one of "
                         f"those snapshots, or leave out --with-d")
    state = snap_io.load_training_state(state_path)
    provenance = dict(trainer="training.stylegan2", run_dir=run.name, training_state=state_path.name,
                      kimg=nimg / 1000)
    if (total := snap_io.total_kimg(o, nimg)) is not None:
        provenance["kimg_total"] = total
    out = {}
    for kind, key, kwargs, save in (("discriminator", "D", o["D_kwargs"], save_discriminator),
                                    ("training-generator", "G", o["G_kwargs"], save_generator)):
        if state.get(key) is None:
            raise ValueError(f"--with-d: {state_path.name} holds no {key}")
        net = snap_io.network_from_state(state, key, kwargs)
        tmp = run / f".{kind}-{os.getpid()}.tmp"
        try:
            save(net, tmp, provenance=dict(provenance, weights=key))
            out[kind] = tmp.read_bytes()
        finally:
            tmp.unlink(missing_ok=True)
    return out, state_path


def ship(run, *, quality_json, name: str, out, snapshot: str = "latest", manifest=None, interim: bool = False,
         description: str | None = None, licence: str = DEFAULT_LICENCE, with_d: bool = False, half: bool = False,
         log=print) -> dict:
    """Copy the snapshot to `out` and write its record into `manifest`; returns the record.

    with_d: also write the run's D and G at that snapshot (from its training state) as
    `<out stem>_discriminator.safetensors` and `<out stem>_training_generator.safetensors`, recorded
    as '<name>-discriminator' and '<name>-training-generator', so that `train --resume <name>`
    continues from G, G_ema and D. Without it, older companions (records and files) are removed:
    they belong to other weights.

    half: store the shipped generator's weights as float16 (`save_generator(storage_dtype='float16')`;
    half the bytes). Those are other weights than the snapshot's, so the quality report must have
    measured a float16 copy (`python -m stylemix convert SNAPSHOT COPY --half`, then quality on COPY).
    The companions stay float32: they are for training on."""
    import hashlib

    from stylemix.checkpoints import CheckpointError, load_generator, read_header, save_generator
    from stylemix.fileio import atomic_write_bytes

    from .snapshot import COMPANION_KINDS, companion_file, total_kimg

    run = Path(run).expanduser()
    if not (run / "training_options.json").is_file():
        raise ValueError(f"--run {run}: not a training run directory (no training_options.json)")
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"--name {name!r}: a model name has no '/' and does not start with '.'")
    out = Path(out).expanduser()
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {out}: ship writes safetensors only (give a .safetensors path)")
    manifest = Path(manifest).expanduser() if manifest is not None else out.parent / "MANIFEST.json"
    try:
        rel = out.resolve().relative_to(manifest.resolve().parent)
    except ValueError:
        raise ValueError(f"--out {out} must lie in the manifest's folder {manifest.parent}") from None

    o = _read_json(run / "training_options.json", "training options")
    quality = read_quality_json(quality_json)
    snap_path, nimg = find_snapshot(run, snapshot)
    meets_bar = bool(quality.get("passed")) and quality.get("at_bar_size", True) is not False
    if not meets_bar and not interim:
        why = "does not pass the quality bar" if not quality.get("passed") else \
            f"was measured on {quality.get('num_samples')} samples, not the bar's size"
        raise ValueError(f"{snap_path.name} {why} (ratio {quality.get('ratio')}, rate gaps "
                         f"{quality.get('rate_gaps')}); pass --interim to ship it as an interim model")

    train_data = train_data_record(o, quality)
    qro = quality.get("render_options")
    if isinstance(qro, dict) and train_data["render_options"] is not None and qro != train_data["render_options"]:
        raise ValueError(f"the quality report compares against render options {json.dumps(qro)}, but the run trained "
                         f"on {json.dumps(train_data['render_options'])} ({train_data['render_options_source']})")
    out.parent.mkdir(parents=True, exist_ok=True)

    # The file: a self-describing StyleMix safetensors snapshot is copied byte for byte; anything
    # else that loads as a generator is re-saved in that format.
    try:
        header = read_header(snap_path) if snap_path.suffix == ".safetensors" else None
    except CheckpointError:
        header = None
    if header is not None and header.get("network") == "Generator" and \
            (not half or header.get("storage_dtype") == "float16"):
        data = snap_path.read_bytes()
    else:
        G = load_generator(snap_path)
        provenance = dict(getattr(G, "provenance", None) or {}, trainer="training.stylegan2", run_dir=run.name,
                          snapshot=snap_path.name, kimg=nimg / 1000)
        tmp = out.with_name(out.name + ".resave.tmp")
        try:
            save_generator(G, tmp, provenance=provenance, storage_dtype="float16" if half else "float32")
            header = read_header(tmp)
            data = tmp.read_bytes()
        finally:
            tmp.unlink(missing_ok=True)
    digest = header["weights_sha256"]
    storage = header.get("storage_dtype", "float32")
    resolution = int(header["kwargs"]["img_resolution"])
    _same_model(quality, snap_path, digest, half=half)

    companions, state_path = {}, None
    if with_d:
        companions, state_path = _companion_bytes(run, o, nimg, snap_path)

    t = training_time(run, nimg)
    total = total_kimg(o, nimg)  # None unless the run continued one of this trainer's snapshots
    if total is not None:
        total = round(total, 3)
    span = f"{nimg / 1000:g} kimg" + (f" on from {o.get('resume')}, {total} kimg in all" if total is not None else "")
    record = {
        "name": name,
        "path": rel.as_posix(),
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "resolution": resolution,
        "kind": "generator",
        "aligned_domain": "synthfaces",
        "description": description or (
            f"StyleGAN2-ADA generator {resolution}x{resolution} trained on procedural synthfaces renders "
            f"(--cfg {o.get('cfg')}, {span})" + (" - interim: below the quality bar" if interim else "")),
        "licence": licence,
        "source_page": "training/stylegan2/train.py",
        "made_by": training_command(o),
        "interim": bool(interim),
        "kimg": nimg / 1000,
        "snapshot": snap_path.name,
        "run": run.name,
        "training_time_s": t["seconds"],
        "training_time_h": round(t["seconds"] / 3600, 2),
        "ticks": t["ticks"],
        "resumes": t["resumes"],
        # options that --resume may change (kimg, snap, tick, workers, keep_states) show in made_by
        # with the values of the last resume
        "resumed_by": (f"python -m training.stylegan2.train --resume {o.get('run_dir') or run}"
                       + "".join(f"; once with {_change_flags(c)}" for c in o.get("resume_changes", [])
                                 if _before(c.get("at_kimg"), nimg))
                       if t["resumes"] else None),
        # kimg trained with float32 / bfloat16 CPU convolutions (--cpu-bf16, chosen at each resume)
        "kimg_by_conv_dtype": t["kimg_by_conv_dtype"],
        "hardware": hardware(),
        "quality": quality,
        "train_data": train_data,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "storage_dtype": storage,
    }
    if total is not None:
        # a run fine-tuned from one of this trainer's snapshots (e.g. `train --resume NAME` of a shipped
        # model with its discriminator): kimg counts this run, kimg_total every image since random weights
        record["continued_from"] = o.get("resume")
        record["kimg_total"] = total
    atomic_write_bytes(out, data)
    G_check = load_generator(out)  # the shipped file loads (and its header digest checks out)
    assert int(G_check.img_resolution) == resolution, (G_check.img_resolution, resolution)
    dropped = update_manifest_record(manifest, record)
    log(f"shipped {snap_path.name} (kimg {nimg / 1000:g}{', interim' if interim else ''}) as {name!r}: {out} "
        f"({record['size']} bytes, sha256 {record['sha256'][:16]}...), record in {manifest}")
    what = {"discriminator": "discriminator", "training-generator": "G (training weights; this file is G_ema)"}
    for kind in COMPANION_KINDS:
        c_name, c_out = f"{name}-{kind}", companion_file(out, kind)
        if kind in companions:
            c_data = companions[kind]
            atomic_write_bytes(c_out, c_data)
            c_record = {
                "name": c_name, "path": c_out.resolve().relative_to(manifest.resolve().parent).as_posix(),
                "sha256": hashlib.sha256(c_data).hexdigest(), "size": len(c_data), "resolution": resolution,
                "kind": kind, "model": name,
                "description": f"the {what[kind]} of {name}'s run at the same snapshot (kimg {nimg / 1000:g}); "
                               f"`train --resume {name}` continues with it",
                "licence": licence, "source_page": "training/stylegan2/train.py", "made_by": record["made_by"],
                "kimg": nimg / 1000, "snapshot": state_path.name, "run": run.name, "date": record["date"],
            }
            update_manifest_record(manifest, c_record)
            log(f"shipped its {kind} as {c_name!r}: {c_out} ({len(c_data)} bytes)")
        else:
            old = remove_manifest_record(manifest, c_name)
            stale = manifest.parent / old["path"] if old and old.get("path") else c_out
            if old is not None or stale.is_file():
                stale.unlink(missing_ok=True)
                log(f"note: removed {c_name!r} ({stale.name}): it was trained with other weights (ship with "
                    f"--with-d to include this run's)")
    if dropped:
        log(f"note: new weights, so the old record's {', '.join(dropped)} were dropped")
    return record


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.stylegan2.ship", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="the training run directory")
    ap.add_argument("--snapshot", default="latest", help="kimg value, 'latest' (default) or 'best'")
    ap.add_argument("--quality-json", dest="quality_json", required=True,
                    help="the snapshot's report from `python -m training.stylegan2.quality`")
    ap.add_argument("--name", required=True, help="model name in the manifest, e.g. synthfaces64")
    ap.add_argument("--out", required=True, help="where the model goes, e.g. pretrained/synthfaces64.safetensors")
    ap.add_argument("--manifest", help="manifest to update (default: MANIFEST.json next to --out)")
    ap.add_argument("--interim", action="store_true", help="ship a snapshot below the quality bar, marked interim")
    ap.add_argument("--description", help="one line for the model list (default: generated)")
    ap.add_argument("--licence", default=DEFAULT_LICENCE, help="licence line (default: the repository's)")
    ap.add_argument("--half", action="store_true",
                    help="store the generator's weights as float16 (half the bytes); the quality report must be "
                         "of a float16 copy: python -m stylemix convert SNAPSHOT COPY --half")
    ap.add_argument("--with-d", dest="with_d", action="store_true",
                    help="also ship the run's D and G at that snapshot (from its training state) as "
                         "<out stem>_discriminator.safetensors and <out stem>_training_generator.safetensors, "
                         "so that `train --resume NAME` continues the run")
    args = ap.parse_args(argv)
    try:
        ship(args.run, quality_json=args.quality_json, name=args.name, out=args.out, snapshot=args.snapshot,
             manifest=args.manifest, interim=args.interim, description=args.description, licence=args.licence,
             with_d=args.with_d, half=args.half)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
