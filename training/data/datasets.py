"""Image datasets for every trainer: image folders, dataset zips and CelebA, one class.

``ImageDataset(path, resolution=64, filters={'has_beard': True, 'shaved': False}, xflip=True)``
yields ``(image uint8 numpy [3, H, W], label float32 numpy [label_dim])`` like the official
StyleGAN2-ADA ``ImageFolderDataset`` (a DataLoader collates them into tensors).

Sources (picked from ``path``):

- a ``.zip`` file: every image in it (the official dataset_tool layout ``00000/img00000000.png``
  or any other), labels from ``dataset.json`` at its root (``{"labels": [[name, label], ...]}``,
  label a vector or a class index (one-hot)); the names of the label entries come from a
  ``label_names`` key when present (``training.data.synthfaces`` writes it), else
  ``label0, label1, ...`` (``class0, ...`` for class indices).
- a folder holding ``list_attr_celeba.txt`` (or that file itself): CelebA. Images are looked
  for in ``img_align_celeba/`` (also ``img_align_celeba/img_align_celeba/``), else next to the
  list. The label vector is ``[has_beard, shaved, glasses, smile]`` (has_beard = not No_Beard,
  shaved = Bald, glasses = Eyeglasses, smile = Smiling; the same first four entries as
  synthfaces) followed by the 40 CelebA attributes as 0/1 under their own names.
- any other folder: every image below it (recursively), labels from a ``dataset.json`` at its
  root when present, else none.

Image files: png, jpg, jpeg, webp, bmp. Images are converted to RGB, centre-cropped to a square
and resized to ``resolution`` with Lanczos (default: the first image's size).

``filters`` keeps the images whose labels equal the given values (``{'has_beard': True}``;
booleans mean 1/0). Unreadable images are skipped and counted in one warning, never a crash:
the headers are checked when the dataset is built (``check='header'``; ``'full'`` decodes every
image, ``'none'`` checks nothing) and an image that still fails to decode later is replaced by
the next good one (again one warning). An empty result is a ``ValueError`` naming the filters.
``xflip=True`` doubles the dataset with mirrored copies, like the official loader.
"""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
from typing import Any, Mapping

import numpy as np
import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CELEBA_LIST = "list_attr_celeba.txt"
CELEBA_DERIVED = ("has_beard", "shaved", "glasses", "smile")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


class ImageDataset(torch.utils.data.Dataset):
    """Images (and labels) from a folder, a dataset zip or CelebA; see the module docstring."""

    def __init__(self,
                 path: str | os.PathLike,
                 resolution: int | None = None,  # output size (square); None: the first image's
                 *,
                 filters: Mapping[str, Any] | None = None,  # label name -> required value
                 xflip: bool = False,  # append mirrored copies (doubles the length)
                 use_labels: bool = True,  # False: labels are empty vectors
                 max_size: int | None = None,  # keep at most this many images (before xflip)
                 check: str = "header",  # 'header', 'full' or 'none': how images are vetted
                 ):
        self.path = os.fspath(path)
        if resolution is not None and (isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer))
                                       or resolution < 1):
            raise ValueError(f"resolution must be a positive int, got {resolution!r}")
        if check not in ("header", "full", "none"):
            raise ValueError(f"check must be 'header', 'full' or 'none', got {check!r}")
        if max_size is not None and max_size < 0:
            raise ValueError(f"max_size must be >= 0, got {max_size!r}")
        self._zip_path = None
        self._zipfile = None
        self._zip_pid = None
        self._root = None
        if os.path.isfile(self.path) and self.path.lower().endswith(".zip"):
            self.kind = "zip"
            self._zip_path = self.path
            names, labels, label_names = self._scan_zip()
        elif os.path.isdir(self.path) and os.path.isfile(os.path.join(self.path, CELEBA_LIST)):
            self.kind = "celeba"
            names, labels, label_names = self._scan_celeba(os.path.join(self.path, CELEBA_LIST))
        elif os.path.isfile(self.path) and os.path.basename(self.path) == CELEBA_LIST:
            self.kind = "celeba"
            names, labels, label_names = self._scan_celeba(self.path)
        elif os.path.isdir(self.path):
            self.kind = "folder"
            self._root = self.path
            names, labels, label_names = self._scan_folder()
        elif not os.path.exists(self.path):
            raise ValueError(f"dataset path {self.path!r} does not exist")
        else:
            raise ValueError(f"dataset path {self.path!r} is neither a folder, a .zip nor {CELEBA_LIST}")
        if not use_labels:
            labels, label_names = None, []
        n_total = len(names)

        # filters (on labels, before touching the images)
        self.filters = dict(filters or {})
        if self.filters:
            if labels is None:
                raise ValueError(f"filters {self.filters} need labels, but {self.path!r} has none")
            keep = np.ones(len(names), bool)
            for key, want in self.filters.items():
                if key not in label_names:
                    raise ValueError(f"unknown filter {key!r}; label names are {label_names}")
                try:
                    value = float(want)
                except (TypeError, ValueError):
                    raise ValueError(f"filter {key!r} must be a bool or a number, got {want!r}") from None
                keep &= np.isclose(labels[:, label_names.index(key)], value)
            names = [nm for nm, k in zip(names, keep) if k]
            labels = labels[keep]
        if max_size is not None and len(names) > max_size:
            names, labels = names[:max_size], (labels[:max_size] if labels is not None else None)

        # vet the images
        bad = []
        size0 = None
        if check != "none":
            good = []
            for i, nm in enumerate(names):
                try:
                    with self._open(nm) as f:
                        from PIL import Image
                        with Image.open(f) as im:
                            if check == "full":
                                im.load()
                            if size0 is None:
                                size0 = im.size
                    good.append(i)
                except Exception:  # noqa: BLE001 -- any unreadable file is skipped
                    bad.append(nm)
            if bad:
                names = [names[i] for i in good]
                labels = labels[good] if labels is not None else None
        bad += getattr(self, "_missing", [])
        if bad:
            warnings.warn(f"ImageDataset: skipped {len(bad)} unreadable or missing image(s) in {self.path!r} "
                          f"(e.g. {bad[:3]})", stacklevel=2)
        if not names:
            if self.filters:
                raise ValueError(f"no images left in {self.path!r} after filters {self.filters} "
                                 f"({n_total} images before filtering)")
            raise ValueError(f"no readable images in {self.path!r}")

        self._names = names
        self._labels = labels.astype(np.float32) if labels is not None else np.zeros((len(names), 0), np.float32)
        self.label_names = list(label_names) if labels is not None else []
        if resolution is None:
            if size0 is None:
                size0 = self._load_raw(0).size
            resolution = min(size0)
        self.resolution = int(resolution)
        self.xflip = bool(xflip)
        self.name = os.path.splitext(os.path.basename(os.path.normpath(self.path)))[0]
        self._bad_at_load: list = []

    # ------------------------------------------------------------------ scanning

    def _scan_zip(self):
        with zipfile.ZipFile(self._zip_path) as zf:
            all_names = zf.namelist()
            names = sorted(n for n in all_names if _is_image(n) and not n.endswith("/"))
            meta = json.loads(zf.read("dataset.json")) if "dataset.json" in all_names else None
        labels, label_names = self._parse_meta(meta, names)
        return names, labels, label_names

    def _scan_folder(self):
        names = []
        for dirpath, dirnames, files in os.walk(self._root):
            dirnames.sort()
            for f in files:
                if _is_image(f):
                    names.append(os.path.relpath(os.path.join(dirpath, f), self._root).replace(os.sep, "/"))
        names.sort()
        meta_path = os.path.join(self._root, "dataset.json")
        meta = None
        if os.path.isfile(meta_path):
            with open(meta_path) as f:
                meta = json.load(f)
        labels, label_names = self._parse_meta(meta, names)
        return names, labels, label_names

    @staticmethod
    def _parse_meta(meta, names):
        if not meta or meta.get("labels") is None:
            return None, []
        table = {str(k).replace("\\", "/"): v for k, v in meta["labels"]}
        rows = [table.get(n) for n in names]
        if any(r is None for r in rows):
            missing = [n for n, r in zip(names, rows) if r is None]
            raise ValueError(f"dataset.json has no label for {len(missing)} image(s), e.g. {missing[:3]}")
        arr = np.array(rows)
        if arr.ndim == 1:  # class indices -> one-hot
            arr = arr.astype(np.int64)
            onehot = np.zeros((len(rows), int(arr.max()) + 1 if len(rows) else 0), np.float32)
            onehot[np.arange(len(rows)), arr] = 1
            return onehot, [f"class{i}" for i in range(onehot.shape[1])]
        arr = arr.astype(np.float32).reshape(len(rows), -1)
        names_ = meta.get("label_names")
        if names_ is None or len(names_) != arr.shape[1]:
            names_ = [f"label{i}" for i in range(arr.shape[1])]
        return arr, [str(x) for x in names_]

    def _scan_celeba(self, list_path):
        base = os.path.dirname(os.path.abspath(list_path))
        root = base
        for cand in (os.path.join(base, "img_align_celeba", "img_align_celeba"), os.path.join(base, "img_align_celeba")):
            if os.path.isdir(cand):
                root = cand
                break
        self._root = root
        with open(list_path) as f:
            lines = [ln for ln in f.read().splitlines() if ln.strip()]
        try:
            attr_names = lines[1].split()
            first = lines[2].split()
            if len(first) == len(attr_names):  # a header-less variant: "count" line missing
                raise ValueError
        except (IndexError, ValueError):
            raise ValueError(f"{list_path!r} is not a CelebA attribute list") from None
        idx = {a: i for i, a in enumerate(attr_names)}
        for need in ("No_Beard", "Bald", "Eyeglasses", "Smiling"):
            if need not in idx:
                raise ValueError(f"{list_path!r} lacks the CelebA attribute {need!r}")
        names, rows, missing = [], [], []
        for ln in lines[2:]:
            parts = ln.split()
            if len(parts) != len(attr_names) + 1:
                raise ValueError(f"{list_path!r}: malformed line {ln[:60]!r}")
            fname = parts[0]
            if not os.path.isfile(os.path.join(root, fname)):
                missing.append(fname)
                continue
            v = (np.array([float(x) for x in parts[1:]]) > 0).astype(np.float32)
            derived = [1.0 - v[idx["No_Beard"]], v[idx["Bald"]], v[idx["Eyeglasses"]], v[idx["Smiling"]]]
            names.append(fname)
            rows.append(np.concatenate([np.array(derived, np.float32), v]))
        self._missing = missing
        labels = np.stack(rows) if rows else np.zeros((0, 4 + len(attr_names)), np.float32)
        return names, labels, list(CELEBA_DERIVED) + attr_names

    # ------------------------------------------------------------------ access

    def _get_zipfile(self):
        # A forked DataLoader worker inherits the parent's open ZipFile, whose file offset the
        # processes would share: concurrent seek+read pairs then return other members' bytes (wrong
        # or undecodable images). Each process therefore opens its own handle.
        if self._zipfile is None or self._zip_pid != os.getpid():
            self._zipfile = zipfile.ZipFile(self._zip_path)
            self._zip_pid = os.getpid()
        return self._zipfile

    def _open(self, name):
        if self._zip_path is not None:
            return io.BytesIO(self._get_zipfile().read(name))
        return open(os.path.join(self._root, name), "rb")

    def _load_raw(self, i):
        from PIL import Image
        with self._open(self._names[i]) as f:
            im = Image.open(f)
            im.load()
        return im

    def _load_image(self, i) -> np.ndarray:
        from PIL import Image
        im = self._load_raw(i)
        if im.mode != "RGB":
            im = im.convert("RGB")
        w, h = im.size
        s = min(w, h)
        if w != h:
            left, top = (w - s) // 2, (h - s) // 2
            im = im.crop((left, top, left + s, top + s))
        r = self.resolution
        if s != r:
            im = im.resize((r, r), Image.LANCZOS, reducing_gap=3.0 if s >= 3 * r else None)
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_zipfile"] = None  # reopened lazily in each DataLoader worker
        return state

    def __del__(self):
        try:
            if self._zipfile is not None and self._zip_pid == os.getpid():
                self._zipfile.close()
        except Exception:  # noqa: BLE001
            pass

    def __len__(self) -> int:
        return len(self._names) * (2 if self.xflip else 1)

    def __getitem__(self, idx: int):
        n = len(self._names)
        if not -len(self) <= idx < len(self):
            raise IndexError(idx)
        idx %= len(self)
        raw, flip = idx % n, idx >= n
        for k in range(n):  # a file that decodes badly now is replaced by the next good one
            j = (raw + k) % n
            try:
                img = self._load_image(j)
                break
            except Exception:  # noqa: BLE001
                if self._names[j] not in self._bad_at_load:
                    self._bad_at_load.append(self._names[j])
                    if len(self._bad_at_load) == 1:
                        warnings.warn(f"ImageDataset: {self._names[j]!r} in {self.path!r} could not be decoded; "
                                      f"unreadable images are replaced by the next good one "
                                      f"(see .unreadable for the list)", stacklevel=2)
        else:
            raise ValueError(f"no image of {self.path!r} could be decoded")
        if flip:
            img = img[:, :, ::-1]
        return np.ascontiguousarray(img), self._labels[j].copy()

    # ------------------------------------------------------------------ metadata

    @property
    def unreadable(self) -> list:
        """Images that failed to decode after the initial check."""
        return list(self._bad_at_load)

    @property
    def filenames(self) -> list:
        return list(self._names)

    @property
    def labels(self) -> np.ndarray:
        """All labels (before xflip): float32 [num_images, label_dim]."""
        return self._labels.copy()

    def get_label(self, idx: int) -> np.ndarray:
        return self._labels[idx % len(self._names)].copy()

    @property
    def has_labels(self) -> bool:
        return self._labels.shape[1] > 0

    @property
    def label_dim(self) -> int:
        return int(self._labels.shape[1])

    @property
    def label_shape(self) -> list:
        return [self.label_dim]

    @property
    def image_shape(self) -> list:
        return [3, self.resolution, self.resolution]

    @property
    def num_channels(self) -> int:
        return 3

    def __repr__(self) -> str:
        return (f"ImageDataset({self.path!r}, kind={self.kind!r}, images={len(self._names)}, "
                f"resolution={self.resolution}, xflip={self.xflip}, labels={self.label_names or None}, "
                f"filters={self.filters or None})")
