"""Registry of known weights and `fetch()`: download into a user cache with resume and checksum.

Every model StyleMix knows by name is a `ModelEntry`: where its bytes come from (a URL, or a file
shipped in the repository's `pretrained/` folder), what they must hash to, and what they are
(resolution, licence, source page). Names are resolved with `resolve(name_or_path) -> Path`;
`stylemix.checkpoints.load_generator` calls it for anything that is not an existing path.

Downloads go to `$STYLEMIX_CACHE/<name>/<file>` (default `~/.cache/stylemix`; the variable is read
at call time). A download is written to `<file>.part` and only renamed into place once its size and
sha256 are right, so the final path never holds a partial or wrong file. A `.part` left by a cut
connection is resumed with an HTTP Range request the next time; a `.part` whose checksum turns out
wrong is deleted. An entry whose sha256 is not known (None) is not installed unless the caller
passes `allow_unverified=True` (or sets `STYLEMIX_ALLOW_UNVERIFIED=1`): the sha256 of what was
downloaded is then reported so it can be pinned in the registry.

Bundled models (`bundled_path`) are described by `pretrained/MANIFEST.json`:

    {"models": [{"name": "...", "path": "file inside pretrained/", "sha256": "...", "size": 123,
                 "resolution": 64, "kind": "generator", "licence": "...", "description": "...",
                 "source_page": "...", "made_by": "how it was made"}]}
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import threading
import warnings
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

__all__ = [
    "ModelEntry", "FetchError", "register", "unregister", "get_entry", "list_models",
    "cache_dir", "cached_path", "fetch", "resolve", "sha256_file",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
PRETRAINED_DIR = REPO_ROOT / "pretrained"
MANIFEST_NAME = "MANIFEST.json"

CONNECT_TIMEOUT = 10.0   # seconds to open the connection
READ_TIMEOUT = 60.0      # seconds without a byte before giving up
CHUNK_SIZE = 1 << 20     # bytes per read while streaming

# 'discriminator' / 'training-generator': a shipped generator's D and G (its training weights; the
# generator file holds G_ema), for fine-tuning it (training.stylegan2.ship --with-d)
KINDS = ("generator", "networks", "discriminator", "training-generator", "encoder", "classifier", "other")


class FetchError(RuntimeError):
    """A registered model could not be downloaded or verified. Names the URL and the cause."""

    def __init__(self, message: str, *, url: str | None = None, cause: str | None = None):
        super().__init__(message)
        self.url = url
        self.cause = cause


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    name: str                       # registry key, e.g. 'ffhq256'
    resolution: int                 # output resolution in pixels (0 when not an image model)
    kind: str = "generator"         # one of KINDS; 'networks' = a pickle with G, D, G_ema
    url: str | None = None          # where the file is downloaded from (None for bundled files)
    sha256: str | None = None       # hex digest of the whole file; None = not known (unverified)
    size: int | None = None         # bytes; None = not known
    licence: str = ""               # short licence name + link
    source_page: str = ""           # where the URL and facts were taken from
    description: str = ""           # one line for `python -m stylemix models`
    filename: str | None = None     # file name in the cache (default: last part of the URL)
    bundled_path: str | None = None  # path relative to the repo's pretrained/ folder

    def __post_init__(self):
        if not self.name or "/" in self.name or "\\" in self.name or self.name.startswith("."):
            raise ValueError(f"bad model name {self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"bad kind {self.kind!r} for {self.name!r}; expected one of {KINDS}")
        if (self.url is None) == (self.bundled_path is None):
            raise ValueError(f"model {self.name!r} needs exactly one of url= or bundled_path=")
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"bad sha256 {self.sha256!r} for {self.name!r} (64 lowercase hex digits)")
        if self.size is not None and self.size < 0:
            raise ValueError(f"bad size {self.size!r} for {self.name!r}")
        if self.filename is not None and (not self.filename or Path(self.filename).name != self.filename):
            raise ValueError(f"bad filename {self.filename!r} for {self.name!r}")

    @property
    def file_name(self) -> str:
        if self.filename:
            return self.filename
        if self.bundled_path:
            return Path(self.bundled_path).name
        name = Path(urlparse(self.url).path).name
        return name or f"{self.name}.bin"

    @property
    def verified(self) -> bool:
        return self.sha256 is not None


_NV_SOURCE = "https://github.com/NVlabs/stylegan2-ada-pytorch (train.py resume_specs, README 'Data repository')"
_NV_LICENCE = "NVIDIA Source Code License (non-commercial), https://nvlabs.github.io/stylegan2-ada-pytorch/license.html"
_NV_BASE = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/"

# The official sha256 and sizes of these pickles are not published anywhere we could find:
# they stay None, and fetch() installs them only with allow_unverified=True.
_BUILTIN = [
    ModelEntry(
        name="ffhq256", resolution=256, kind="networks",
        url=_NV_BASE + "transfer-learning-source-nets/ffhq-res256-mirror-paper256-noaug.pkl",
        licence=_NV_LICENCE, source_page=_NV_SOURCE,
        description="NVIDIA StyleGAN2-ADA FFHQ 256x256 (paper256 config, mirror, no aug)"),
    ModelEntry(
        name="ffhq512", resolution=512, kind="networks",
        url=_NV_BASE + "transfer-learning-source-nets/ffhq-res512-mirror-stylegan2-noaug.pkl",
        licence=_NV_LICENCE, source_page=_NV_SOURCE,
        description="NVIDIA StyleGAN2-ADA FFHQ 512x512 (stylegan2 config, mirror, no aug)"),
    ModelEntry(
        name="ffhq1024", resolution=1024, kind="networks",
        url=_NV_BASE + "transfer-learning-source-nets/ffhq-res1024-mirror-stylegan2-noaug.pkl",
        licence=_NV_LICENCE, source_page=_NV_SOURCE,
        description="NVIDIA StyleGAN2-ADA FFHQ 1024x1024 (stylegan2 config-f, mirror, no aug)"),
    ModelEntry(
        name="ffhq", resolution=1024, kind="networks",
        url=_NV_BASE + "ffhq.pkl",
        licence=_NV_LICENCE, source_page=_NV_SOURCE,
        description="NVIDIA StyleGAN2-ADA release ffhq.pkl, 1024x1024, trained with original StyleGAN2"),
    # ImageNet VGG16 in torchvision's layout, for LPIPS in inversion (stylemix.perceptual). The
    # file name carries the digest's prefix; the full sha256 is the one public projects pin.
    ModelEntry(
        name="vgg16-imagenet", resolution=0, kind="other",
        url="https://download.pytorch.org/models/vgg16-397923af.pth",
        sha256="397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0", size=553_433_881,
        licence="torchvision model zoo (BSD-3-Clause); VGG16 weights by Simonyan & Zisserman, Oxford VGG "
                "(CC BY 4.0)",
        source_page="https://pytorch.org/vision/stable/models/generated/torchvision.models.vgg16.html",
        description="ImageNet VGG16 (torchvision layout) for LPIPS distances in inversion"),
    # The standard FID/KID feature network (TorchScript Inception-v3). Its sha256 is not published by
    # NVIDIA; this value is the one pinned by crowsonkb/k-diffusion (k_diffusion/evaluation.py) and
    # other public projects that verify the same file.
    ModelEntry(
        name="inception-2015-12-05", resolution=0, kind="other",
        url=_NV_BASE + "metrics/inception-2015-12-05.pt",
        sha256="f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4",
        licence="Inception-v3 weights from TensorFlow's inception-2015-12-05 (Apache-2.0); TorchScript "
                "file hosted by NVIDIA with stylegan2-ada-pytorch (" + _NV_LICENCE + ")",
        source_page="https://github.com/NVlabs/stylegan2-ada-pytorch (metrics/frechet_inception_distance.py)",
        description="FID/KID feature network: detector(uint8 NCHW, return_features=True) -> [N, 2048]"),
]

_REGISTRY: dict[str, ModelEntry] = {e.name: e for e in _BUILTIN}
_LOCK = threading.Lock()
_MANIFEST_STATE: dict[str, object] = {"key": None, "names": set()}
_VERIFIED: dict[tuple, str] = {}  # (path, size, mtime_ns) -> sha256, for files hashed in this process


# ------------------------------------------------------------------------------------------------
# Registry

def _manifest_entries(manifest: Path) -> list[ModelEntry]:
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        models = data["models"] if isinstance(data, dict) else data
        out = []
        for m in models:
            out.append(ModelEntry(
                name=m["name"], resolution=int(m.get("resolution", 0)), kind=m.get("kind", "generator"),
                sha256=m.get("sha256"), size=m.get("size"), licence=m.get("licence", ""),
                source_page=m.get("source_page", ""), description=m.get("description", ""),
                bundled_path=m["path"]))
        return out
    except (OSError, ValueError, KeyError, TypeError) as exc:
        warnings.warn(f"ignoring {manifest}: {exc}", stacklevel=3)
        return []


def _sync_manifest() -> None:
    """(Re)register the bundled models listed in pretrained/MANIFEST.json when it changed."""
    manifest = PRETRAINED_DIR / MANIFEST_NAME
    try:
        st = manifest.stat()
        key = (st.st_size, st.st_mtime_ns)
    except OSError:
        key = None
    with _LOCK:
        if key == _MANIFEST_STATE["key"]:
            return
        for name in _MANIFEST_STATE["names"]:  # type: ignore[union-attr]
            _REGISTRY.pop(name, None)
        names = set()
        if key is not None:
            for entry in _manifest_entries(manifest):
                if entry.name in _REGISTRY:
                    warnings.warn(f"{manifest}: {entry.name!r} shadows a built-in entry; ignored", stacklevel=3)
                    continue
                _REGISTRY[entry.name] = entry
                names.add(entry.name)
        _MANIFEST_STATE["key"] = key
        _MANIFEST_STATE["names"] = names


def register(entry: ModelEntry, *, overwrite: bool = False) -> ModelEntry:
    """Add `entry` to the registry (ValueError if the name is taken, unless `overwrite`)."""
    if not isinstance(entry, ModelEntry):
        raise ValueError(f"register() wants a ModelEntry, got {type(entry).__name__}")
    _sync_manifest()
    with _LOCK:
        if entry.name in _REGISTRY and not overwrite:
            raise ValueError(f"model name {entry.name!r} is already registered")
        _REGISTRY[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    with _LOCK:
        _REGISTRY.pop(name, None)


def get_entry(name: str) -> ModelEntry:
    _sync_manifest()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise ValueError(f"unknown model name {name!r}; registered models: {known}") from None


def list_models() -> list[ModelEntry]:
    _sync_manifest()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def is_registered(name: object) -> bool:
    _sync_manifest()
    return isinstance(name, str) and name in _REGISTRY


# ------------------------------------------------------------------------------------------------
# Cache

def cache_dir() -> Path:
    """`$STYLEMIX_CACHE`, or `~/.cache/stylemix`; read at every call."""
    env = os.environ.get("STYLEMIX_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "stylemix"


def cached_path(name: str) -> Path:
    """Where `name`'s file lives once fetched (bundled models: inside pretrained/)."""
    entry = get_entry(name)
    if entry.bundled_path is not None:
        return PRETRAINED_DIR / entry.bundled_path
    return cache_dir() / entry.name / entry.file_name


def sha256_file(path: Path, *, chunk: int = CHUNK_SIZE) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _file_key(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path), st.st_size, st.st_mtime_ns)


def _check_file(entry: ModelEntry, path: Path) -> str | None:
    """None when `path` matches the entry (size, sha256), else why not."""
    key = _file_key(path)
    if key is None:
        return "missing"
    if entry.size is not None and key[1] != entry.size:
        return f"size {key[1]} bytes, expected {entry.size}"
    if entry.sha256 is None:
        return None
    digest = _VERIFIED.get(key)
    if digest is None:
        digest = sha256_file(path)
    if digest != entry.sha256:
        return f"sha256 {digest}, expected {entry.sha256}"
    _VERIFIED[key] = digest
    return None


def _allow_unverified(flag: bool | None) -> bool:
    if flag is not None:
        return bool(flag)
    return os.environ.get("STYLEMIX_ALLOW_UNVERIFIED", "").strip().lower() in ("1", "true", "yes")


@contextlib.contextmanager
def _dir_lock(folder: Path) -> Iterator[None]:
    """Serialise downloads into one cache folder across processes (POSIX flock; no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(folder / ".lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------------
# Download

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


def _fail(entry: ModelEntry, cause: str) -> FetchError:
    return FetchError(f"could not fetch {entry.name!r} from {entry.url}: {cause}", url=entry.url, cause=cause)


def _download(entry: ModelEntry, part: Path, *, progress: bool) -> None:
    """Bring `part` to the complete file (resuming what it holds). Raises FetchError."""
    import requests
    from tqdm.auto import tqdm

    have = part.stat().st_size if part.exists() else 0
    if entry.size is not None and have > entry.size:
        part.unlink()
        have = 0
    if entry.size is not None and have == entry.size:
        return  # complete already; the caller verifies it

    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = requests.get(entry.url, headers=headers, stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
    except requests.RequestException as exc:
        raise _fail(entry, f"{type(exc).__name__}: {exc}") from exc

    with resp:
        total: int | None = None
        if have and resp.status_code == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            start = int(m.group(1)) if m else -1
            full = int(m.group(3)) if m and m.group(3) != "*" else None
            if start != have or (entry.size is not None and full is not None and full != entry.size):
                # The server answered another range than the one asked: start over.
                resp.close()
                part.unlink(missing_ok=True)
                return _download(entry, part, progress=progress)
            total = full
            mode = "ab"
        elif have and resp.status_code == 416:
            # Nothing left to send after `have` bytes, or the .part does not fit this file: start over.
            resp.close()
            part.unlink(missing_ok=True)
            return _download(entry, part, progress=progress)
        elif resp.status_code == 200:
            have = 0  # the server ignored the Range header: full download
            mode = "wb"
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        else:
            reason = f"HTTP {resp.status_code} {resp.reason or ''}".strip()
            raise _fail(entry, reason)

        if total is None:
            total = entry.size
        if entry.size is not None and total is not None and total != entry.size:
            raise _fail(entry, f"server reports {total} bytes, expected {entry.size}")

        written = have
        bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=entry.name, disable=not progress, leave=False)
        try:
            with open(part, mode) as f:
                for chunk in resp.iter_content(chunk_size=CHUNK_SIZE):
                    if not chunk:
                        continue
                    f.write(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
                    if total is not None and written > total:
                        break
                f.flush()
                os.fsync(f.fileno())
        except (requests.RequestException, OSError) as exc:
            raise _fail(entry, f"connection lost after {written} bytes ({type(exc).__name__}: {exc}); "
                               f"run again to resume from {part}") from exc
        finally:
            bar.close()

    if total is not None and written < total:
        raise _fail(entry, f"connection closed after {written} of {total} bytes; run again to resume from {part}")
    if total is not None and written > total:
        part.unlink(missing_ok=True)
        raise _fail(entry, f"server sent more than the {total} bytes it announced")


def fetch(name: str, *, progress: bool = True, force: bool = False,
          allow_unverified: bool | None = None) -> Path:
    """Return the local path of registered model `name`, downloading it into the cache if needed.

    A cached file that matches the entry is returned without any network access. `force` downloads
    again. Entries without a known sha256 need `allow_unverified=True` (or STYLEMIX_ALLOW_UNVERIFIED=1).
    Raises FetchError (URL + cause) on any download or verification failure, ValueError for an
    unknown name.
    """
    entry = get_entry(name)
    unverified_ok = _allow_unverified(allow_unverified)

    if entry.bundled_path is not None:
        path = PRETRAINED_DIR / entry.bundled_path
        problem = _check_file(entry, path)
        if problem is not None:
            raise FetchError(f"bundled model {entry.name!r} at {path} is broken: {problem}", cause=problem)
        if not entry.verified and not unverified_ok:
            raise FetchError(f"bundled model {entry.name!r} has no sha256 in {MANIFEST_NAME}; "
                             f"pass allow_unverified=True to use it", cause="unverified")
        return path

    final = cache_dir() / entry.name / entry.file_name
    part = final.with_name(final.name + ".part")

    if not entry.verified and not unverified_ok:
        raise FetchError(
            f"refusing to install {entry.name!r} from {entry.url}: its sha256 is not known, so the file "
            f"could not be verified; pass allow_unverified=True (CLI: `python -m stylemix fetch "
            f"{entry.name} --allow-unverified`; env: STYLEMIX_ALLOW_UNVERIFIED=1) to accept it",
            url=entry.url, cause="unverified")

    if not force and final.exists() and _check_file(entry, final) is None:
        return final

    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"cannot create cache folder {final.parent}: {exc}", url=entry.url, cause=str(exc)) from exc

    with _dir_lock(final.parent):
        if not force and final.exists():
            if _check_file(entry, final) is None:
                return final  # another process finished it while we waited
            final.unlink()  # wrong bytes in the final place: never keep them
        if force:
            part.unlink(missing_ok=True)

        _download(entry, part, progress=progress)

        size = part.stat().st_size
        if entry.size is not None and size != entry.size:
            part.unlink(missing_ok=True)
            raise _fail(entry, f"got {size} bytes, expected {entry.size}")
        digest = sha256_file(part)
        if entry.sha256 is not None and digest != entry.sha256:
            part.unlink(missing_ok=True)
            raise _fail(entry, f"sha256 mismatch: got {digest}, expected {entry.sha256}; the partial file was deleted")
        os.replace(part, final)
        key = _file_key(final)
        if key is not None:
            _VERIFIED[key] = digest
        if entry.sha256 is None:
            warnings.warn(f"installed unverified {entry.name!r} ({size} bytes, sha256 {digest}); "
                          f"pin this sha256 in stylemix.pretrained", stacklevel=2)
    return final


def resolve(name_or_path, *, progress: bool = True, allow_unverified: bool | None = None) -> Path:
    """An existing file path is returned as is; a registered name is fetched (cached) first."""
    if isinstance(name_or_path, (str, os.PathLike)):
        path = Path(name_or_path).expanduser()
        if path.is_file():
            return path
        if path.exists():
            raise ValueError(f"{str(path)!r} is not a file")
        if isinstance(name_or_path, str) and is_registered(name_or_path):
            return fetch(name_or_path, progress=progress, allow_unverified=allow_unverified)
        known = ", ".join(e.name for e in list_models()) or "none"
        raise ValueError(f"{str(name_or_path)!r} is neither an existing file nor a registered model name "
                         f"(registered: {known})")
    raise ValueError(f"expected a file path or a model name, got {type(name_or_path).__name__}")
