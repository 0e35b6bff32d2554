"""Load and save StyleGAN2 networks: official NVIDIA pickles (safely), rosinality .pt, our own format.

    G = load_generator('ffhq256')                    # registered name: fetched into the cache once
    G = load_generator('network-snapshot.pkl')      # any supported file, recognised by its content
    nets = load_networks('snapshot.pkl')            # {'G', 'D', 'G_ema', 'augment_pipe', ...}
    save_generator(G, 'mine.safetensors', provenance={'trained_on': 'synthfaces v1'})

Formats (detected from the bytes, never from the file name):

- NVIDIA StyleGAN2-ADA pickles (`{G, D, G_ema, augment_pipe, training_set_kwargs}`, written with
  `pickle.dump` through `torch_utils.persistence`). They embed the source code of their network
  classes; StyleMix never runs it. A restricted unpickler accepts only the globals such a file needs
  (the persistence reconstructor, replaced by a recorder of its metadata; torch's tensor and
  parameter rebuilders, replaced by checked versions; storage bytes read with
  `torch.load(weights_only=True)`; OrderedDict, set, EasyDict as a dict, numpy dtypes and
  non-object scalars/arrays) and refuses anything else with `UnsafeCheckpointError`, which names
  the refused global. Networks are rebuilt from our classes with the recorded `_init_kwargs`, and
  their parameters and persistent buffers are gathered into a state dict loaded with strict=True.
  StyleGAN3 pickles are refused.
- rosinality/stylegan2-pytorch checkpoints (`torch.save({'g_ema': ..., 'g': ..., 'd': ...,
  'latent_avg': ...})`), read with `torch.load(weights_only=True)` and converted key by key to the
  official layout (see `rosinality_to_official`; `official_to_rosinality` is its inverse).
- StyleMix's own format: a safetensors file whose metadata key 'stylemix' holds a JSON header
  (format version, network class and constructor kwargs, provenance, sha256 of the weights).

User mistakes and unreadable files raise `CheckpointError` (a ValueError) naming the file.
"""

from __future__ import annotations

import argparse
import collections
import copy
import datetime
import hashlib
import io
import json
import math
import os
import pickle
import re
import struct
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .fileio import atomic_write_bytes

__all__ = [
    "CheckpointError", "UnsafeCheckpointError", "UnsupportedCheckpointError", "RecordedObject",
    "FORMAT_NVIDIA", "FORMAT_ROSINALITY", "FORMAT_STYLEMIX", "save_discriminator",
    "detect_format", "load_generator", "load_networks", "save_generator", "describe",
    "read_nvidia_pickle", "rosinality_to_official", "official_to_rosinality", "generator_kwargs",
]

FORMAT_NVIDIA = "stylegan2-ada-pickle"
FORMAT_ROSINALITY = "rosinality"
FORMAT_STYLEMIX = "stylemix"

STYLEMIX_FORMAT_VERSION = 1
_HEADER_KEY = "stylemix"
_NETWORK_CLASSES = ("Generator", "Discriminator", "MappingNetwork", "SynthesisNetwork")


# ------------------------------------------------------------------------------------------------
# Errors


class CheckpointError(ValueError):
    """A checkpoint cannot be read (corrupt, truncated, unknown format, wrong keys). Names the file."""

    def __init__(self, message: str, *, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = None if path is None else Path(path)


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """The pickle asks for a global that a network pickle does not need (e.g. os.system)."""

    def __init__(self, message: str, *, path=None, global_name: str | None = None):
        super().__init__(message, path=path)
        self.global_name = global_name


class UnsupportedCheckpointError(CheckpointError):
    """A well-formed checkpoint of a kind StyleMix does not load (e.g. StyleGAN3)."""


class _Refused(pickle.UnpicklingError):
    """Raised inside the unpickler; turned into UnsafeCheckpointError with the file name."""

    def __init__(self, global_name: str, why: str = ""):
        super().__init__(global_name)
        self.global_name = global_name
        self.why = why


# ------------------------------------------------------------------------------------------------
# Restricted unpickler for NVIDIA network pickles


@dataclass
class RecordedObject:
    """What `torch_utils.persistence._reconstruct_persistent_obj(meta)` would have rebuilt by
    running `meta['module_src']`; here only recorded. `state` is the object's __dict__."""

    class_name: str
    module_src: str
    version: Any
    state: dict

    @property
    def init_args(self) -> tuple:
        return tuple(_plain(self.state.get("_init_args", ())))

    @property
    def init_kwargs(self) -> dict:
        return dict(_plain(self.state.get("_init_kwargs", {})))

    def tensors(self, *, prefix: str = "") -> dict[str, torch.Tensor]:
        """Parameters and persistent buffers, recursively through _modules, with dotted names."""
        return _gather_tensors(self, prefix)

    def __repr__(self) -> str:
        return f"RecordedObject({self.class_name!r}, {len(self.tensors())} tensors)"


def _record_persistent(meta):
    if not isinstance(meta, dict):
        raise _Refused("torch_utils.persistence._reconstruct_persistent_obj", "its argument is not a dict")
    if meta.get("type") != "class":
        raise _Refused("torch_utils.persistence._reconstruct_persistent_obj",
                       f"persistent object of type {meta.get('type')!r} (only 'class' is supported)")
    class_name, module_src, state = meta.get("class_name"), meta.get("module_src"), meta.get("state")
    if not isinstance(class_name, str) or not isinstance(module_src, str):
        raise _Refused("torch_utils.persistence._reconstruct_persistent_obj", "class_name/module_src missing")
    if state is None:
        state = {}
    if not isinstance(state, dict):
        raise _Refused("torch_utils.persistence._reconstruct_persistent_obj", "state is not a dict")
    return RecordedObject(class_name=class_name, module_src=module_src, version=meta.get("version"), state=state)


class _EasyDict(dict):
    """Stand-in for dnnlib.util.EasyDict while unpickling; turned into a plain dict afterwards."""


class _NDArrayType:
    """Stand-in for numpy.ndarray: only accepted as the first argument of _reconstruct."""


class _TensorType:
    """Stand-in for torch.Tensor: only accepted as the type argument of _rebuild_from_type*."""


class _ParameterType:
    """Stand-in for torch.nn.Parameter: only accepted as the type argument of _rebuild_from_type*."""


class _NDArrayProxy:
    """Collects `ndarray.__setstate__` arguments and builds a non-object array from them."""

    def __init__(self):
        self.array = None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5):
            raise _Refused("numpy.ndarray.__setstate__", "unexpected array state")
        _version, shape, dtype, is_fortran, raw = state
        if not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise _Refused("numpy.ndarray", "object arrays are not allowed")
        if not isinstance(raw, (bytes, bytearray)):
            raise _Refused("numpy.ndarray", "array data is not bytes")
        shape = tuple(int(s) for s in shape)
        arr = np.frombuffer(bytes(raw), dtype=dtype)
        self.array = arr.reshape(shape, order="F" if is_fortran else "C").copy()


def _np_reconstruct(cls, shape, dtype_code):
    if cls is not _NDArrayType:
        raise _Refused("numpy.core.multiarray._reconstruct", "only plain ndarrays are allowed")
    return _NDArrayProxy()


def _np_dtype(*args):
    dt = np.dtype(*args)
    if dt.hasobject:
        raise _Refused("numpy.dtype", "object dtype is not allowed")
    return dt


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise _Refused("numpy.core.multiarray.scalar", "object scalars are not allowed")
    if not isinstance(data, (bytes, bytearray)):
        raise _Refused("numpy.core.multiarray.scalar", "scalar data is not bytes")
    return np.frombuffer(bytes(data), dtype=dtype, count=1)[0]


def _np_frombuffer(buf, dtype, shape, order):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(buf, (bytes, bytearray)):
        raise _Refused("numpy.core.numeric._frombuffer", "object or non-bytes array")
    return np.frombuffer(bytes(buf), dtype=dtype).reshape(tuple(shape), order=order).copy()


def _codecs_encode(text, encoding="utf-8", errors="strict"):
    # Protocol-2 pickles store bytes as _codecs.encode(str, 'latin1').
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "iso-8859-1"):
        raise _Refused("_codecs.encode", f"encoding {encoding!r}")
    return text.encode("latin1")


def _int_tuple(x, what: str) -> tuple[int, ...]:
    if not isinstance(x, (tuple, list, torch.Size)) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in x):
        raise _Refused("torch._utils._rebuild_tensor_v2", f"bad tensor {what}: {x!r}"[:200])
    return tuple(int(v) for v in x)


def _tensor_from_storage(storage, storage_offset, size, stride) -> torch.Tensor:
    if isinstance(storage, torch.storage.TypedStorage):
        dtype, untyped = storage.dtype, storage._untyped_storage
    elif isinstance(storage, torch.UntypedStorage):
        dtype, untyped = torch.uint8, storage
    else:
        raise _Refused("torch._utils._rebuild_tensor_v2", f"tensor storage is a {type(storage).__name__}")
    if untyped.device.type != "cpu":
        raise _Refused("torch._utils._rebuild_tensor_v2", "storage not on the CPU")
    if not isinstance(storage_offset, (int, np.integer)) or storage_offset < 0:
        raise _Refused("torch._utils._rebuild_tensor_v2", f"bad storage offset {storage_offset!r}")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise _Refused("torch._utils._rebuild_tensor_v2", f"bad size/stride {size}/{stride}")
    itemsize = torch.empty((), dtype=dtype).element_size()
    numel_storage = untyped.nbytes() // itemsize
    if all(s > 0 for s in size):
        last = int(storage_offset) + sum((s - 1) * st for s, st in zip(size, stride))
        if last >= numel_storage:
            raise _Refused("torch._utils._rebuild_tensor_v2", "tensor extends past its storage")
    t = torch.empty((0,), dtype=dtype)
    return t.set_(untyped, int(storage_offset), size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _tensor_from_storage(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    t = _tensor_from_storage(storage, storage_offset, size, stride)
    if requires_grad and (t.is_floating_point() or t.is_complex()):
        t.requires_grad_(True)
    # backward_hooks are never restored (they are meant to be an empty OrderedDict anyway);
    # metadata (conj/neg bits) only matters for complex tensors, which network pickles do not hold.
    return t


def _rebuild_parameter(data, requires_grad, backward_hooks=None):
    if not isinstance(data, torch.Tensor):
        raise _Refused("torch._utils._rebuild_parameter", "parameter data is not a tensor")
    return torch.nn.Parameter(data.detach(), bool(requires_grad))


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks=None, state=None):
    return _rebuild_parameter(data, requires_grad, backward_hooks)


def _rebuild_from_type(func, new_type, args, state=None):
    if func not in (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_parameter, _rebuild_parameter_with_state):
        raise _Refused("torch._tensor._rebuild_from_type_v2", "unexpected rebuild function")
    if new_type not in (_TensorType, _ParameterType):
        raise _Refused("torch._tensor._rebuild_from_type_v2", "tensor subclasses are not allowed")
    if not isinstance(args, tuple):
        raise _Refused("torch._tensor._rebuild_from_type_v2", "arguments are not a tuple")
    ret = func(*args)
    if new_type is _ParameterType and not isinstance(ret, torch.nn.Parameter):
        ret = torch.nn.Parameter(ret.detach(), ret.requires_grad)
    # Python attributes that were set on the tensor (state) are dropped: weights do not need them.
    return ret


def _load_storage_bytes(b):
    if not isinstance(b, (bytes, bytearray)):
        raise _Refused("torch.storage._load_from_bytes", "argument is not bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj = torch.load(io.BytesIO(bytes(b)), map_location="cpu", weights_only=True)
    if not isinstance(obj, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise _Refused("torch.storage._load_from_bytes", f"holds a {type(obj).__name__}, not a storage")
    return obj


def _allowed_globals() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _record_persistent,
        ("dnnlib.util", "EasyDict"): _EasyDict,
        ("dnnlib", "EasyDict"): _EasyDict,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
        ("torch._tensor", "_rebuild_from_type"): _rebuild_from_type,
        ("torch.tensor", "_rebuild_from_type"): _rebuild_from_type,        # torch 1.7-1.9 module name
        ("torch.tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
        ("torch", "Tensor"): _TensorType,
        ("torch._tensor", "Tensor"): _TensorType,
        ("torch.tensor", "Tensor"): _TensorType,
        ("torch.nn.parameter", "Parameter"): _ParameterType,
        ("torch.storage", "_load_from_bytes"): _load_storage_bytes,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("__builtin__", "set"): set,
        ("__builtin__", "frozenset"): frozenset,
        ("_codecs", "encode"): _codecs_encode,
        ("numpy", "dtype"): _np_dtype,
        ("numpy", "ndarray"): _NDArrayType,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(mod, "scalar")] = _np_scalar
        table[(mod, "_reconstruct")] = _np_reconstruct
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        table[(mod, "_frombuffer")] = _np_frombuffer
    for name in dir(torch):
        obj = getattr(torch, name, None)
        if isinstance(obj, torch.dtype):
            table[("torch", name)] = obj
        elif name.endswith("Storage") and isinstance(obj, type) and issubclass(
                obj, (torch.storage.TypedStorage, torch.UntypedStorage)):
            table[("torch", name)] = obj
    return table


_ALLOWED = _allowed_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        key = (module, name)
        if key in _ALLOWED:
            return _ALLOWED[key]
        raise _Refused(f"{module}.{name}")

    def persistent_load(self, pid):
        raise _Refused("persistent_load", "persistent ids are not used by network pickles")


def _plain(x):
    """Recorded pickle values -> plain Python (EasyDict -> dict, numpy scalars -> Python numbers)."""
    if isinstance(x, _NDArrayProxy):
        return x.array
    if isinstance(x, (_EasyDict, dict)) and not isinstance(x, collections.OrderedDict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, collections.OrderedDict):
        return collections.OrderedDict((k, _plain(v)) for k, v in x.items())
    if isinstance(x, list):
        return [_plain(v) for v in x]
    if isinstance(x, tuple):
        return tuple(_plain(v) for v in x)
    if isinstance(x, np.generic):
        return x.item()
    return x


def _gather_tensors(rec: RecordedObject, prefix: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    state = rec.state
    for k, v in (state.get("_parameters") or {}).items():
        if v is not None:
            out[prefix + k] = v
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for k, v in (state.get("_buffers") or {}).items():
        if v is not None and k not in non_persistent:
            out[prefix + k] = v
    for k, m in (state.get("_modules") or {}).items():
        if m is None:
            continue
        if not isinstance(m, RecordedObject):
            raise CheckpointError(f"submodule {prefix + k!r} of {rec.class_name} is a {type(m).__name__}, "
                                  f"not a persistent network object")
        out.update(_gather_tensors(m, prefix + k + "."))
    bad = [k for k, v in out.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{rec.class_name}: entries that are not tensors: {bad[:10]}")
    return out


def _walk_records(obj, seen=None):
    seen = set() if seen is None else seen
    if isinstance(obj, RecordedObject):
        if id(obj) in seen:
            return
        seen.add(id(obj))
        yield obj
        for m in (obj.state.get("_modules") or {}).values():
            yield from _walk_records(m, seen)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _walk_records(v, seen)


def _stylegan3_marker(rec: RecordedObject) -> str | None:
    if rec.class_name == "SynthesisInput":
        return "a SynthesisInput layer"
    if rec.class_name == "SynthesisLayer" and "is_torgb" in rec.state:
        return "SynthesisLayer with 'is_torgb'"
    if "class SynthesisInput" in rec.module_src:
        return "module source defining SynthesisInput"
    return None


def read_nvidia_pickle(path) -> dict:
    """Unpickle an NVIDIA network pickle without running any of its code.

    Returns the top-level dict with every persistent network as a `RecordedObject` and every
    other value as plain Python data. Raises UnsafeCheckpointError for a refused global,
    UnsupportedCheckpointError for StyleGAN3 networks, CheckpointError for unreadable files.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = _RestrictedUnpickler(f).load()
    except _Refused as exc:
        detail = f" ({exc.why})" if exc.why else ""
        hint = ""
        if exc.global_name.startswith("dnnlib.tflib"):
            hint = "; this is a TensorFlow-era pickle: convert it with NVIDIA's legacy.py first"
        raise UnsafeCheckpointError(
            f"{path}: refusing to load: the pickle asks for {exc.global_name}{detail}, which a StyleGAN2-ADA "
            f"network pickle does not need (StyleMix never runs code from pickles){hint}",
            path=path, global_name=exc.global_name) from None
    except CheckpointError:
        raise
    except MemoryError as exc:
        raise CheckpointError(f"{path}: corrupt pickle (asks for too much memory)", path=path) from exc
    except Exception as exc:  # truncated / corrupt: EOFError, UnpicklingError, struct.error, ...
        raise CheckpointError(f"{path}: cannot read network pickle (truncated or corrupt file?): "
                              f"{type(exc).__name__}: {_first_line(exc)}", path=path) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: a network pickle holds a dict, this one holds a {type(data).__name__}",
                              path=path)
    for rec in _walk_records(data):
        if not (isinstance(rec.class_name, str) and isinstance(rec.module_src, str) and isinstance(rec.state, dict)):
            raise CheckpointError(f"{path}: malformed persistent object", path=path)
        marker = _stylegan3_marker(rec)
        if marker:
            raise UnsupportedCheckpointError(
                f"{path}: this is a StyleGAN3 network pickle ({marker}); StyleGAN3 is not supported, "
                f"StyleMix loads StyleGAN2 / StyleGAN2-ADA networks only", path=path)
    return {k: (v if isinstance(v, RecordedObject) else _plain(v)) for k, v in data.items()}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


# ------------------------------------------------------------------------------------------------
# Building our networks and loading weights


def _network_class(class_name: str):
    from stylemix.networks import stylegan2

    if class_name not in _NETWORK_CLASSES:
        raise CheckpointError(f"no StyleMix network class for {class_name!r}")
    return getattr(stylegan2, class_name)


def _check_state_dict(net: torch.nn.Module, sd: dict[str, torch.Tensor], what: str, path) -> None:
    """Raise CheckpointError listing missing/unexpected keys and shape mismatches."""
    own = net.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(f"{k}: file {tuple(sd[k].shape)} vs network {tuple(own[k].shape)}"
                    for k in set(own) & set(sd) if tuple(sd[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        if shapes:
            parts.append(f"shape mismatches {shapes}")
        raise CheckpointError(f"{path}: {what} does not match its recorded architecture: " + "; ".join(parts),
                              path=path)


def _device(device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"bad device {device!r}: {exc}") from None


def _build(class_name: str, args: tuple, kwargs: dict, sd: dict[str, torch.Tensor], *, what: str, path,
           device: torch.device, requires_grad: dict[str, bool] | None = None,
           filters_from_kwargs: bool = False) -> torch.nn.Module:
    cls = _network_class(class_name)
    try:
        with torch.no_grad():
            net = cls(*args, **copy.deepcopy(kwargs))
    except (TypeError, ValueError, AssertionError, KeyError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild {what} ({class_name}) from its recorded arguments "
                              f"{kwargs}: {type(exc).__name__}: {exc}", path=path) from None
    if filters_from_kwargs:  # formats that do not store the resampling filters: they follow from kwargs
        sd = dict(sd)
        for k, v in net.state_dict().items():
            if k.endswith("resample_filter"):
                sd.setdefault(k, v)
    _check_state_dict(net, sd, what, path)
    own = net.state_dict()
    with torch.no_grad():
        fixed = {k: v.detach().to(dtype=own[k].dtype) for k, v in sd.items()}
    net.load_state_dict(fixed, strict=True)
    if requires_grad is not None:
        for name, p in net.named_parameters():
            if name in requires_grad:
                p.requires_grad_(requires_grad[name])
    net.eval()
    net.to(device)
    net.init_kwargs = copy.deepcopy(kwargs)  # so that save_generator() can describe it
    return net


def _build_from_record(rec: RecordedObject, *, what: str, path, device) -> torch.nn.Module:
    sd = rec.tensors()
    grads = {k: bool(v.requires_grad) for k, v in sd.items()}
    return _build(rec.class_name, rec.init_args, rec.init_kwargs, sd, what=what, path=path, device=device,
                  requires_grad=grads)


def _load_nvidia(path: Path, *, device, only: tuple[str, ...] | None) -> dict:
    data = read_nvidia_pickle(path)
    if only is not None:  # the first of `only` that the file has
        only = tuple(k for k in only if isinstance(data.get(k), RecordedObject))[:1] or only
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, RecordedObject):
            if value.class_name in _NETWORK_CLASSES and (only is None or key in only):
                out[key] = _build_from_record(value, what=f"network {key!r}", path=path, device=device)
            elif value.class_name in _NETWORK_CLASSES:
                continue
            else:
                out[key] = value  # e.g. augment_pipe: recorded (class, kwargs, tensors), not rebuilt
        else:
            out[key] = value
    if only is not None and not any(k in out for k in only):
        present = sorted(k for k, v in data.items() if isinstance(v, RecordedObject))
        raise CheckpointError(f"{path}: no generator in this pickle (networks: {present or 'none'})", path=path)
    out["format"] = FORMAT_NVIDIA
    return out


# ------------------------------------------------------------------------------------------------
# rosinality/stylegan2-pytorch <-> official layout

_ROS_LR_MLP = 0.01      # rosinality Generator(lr_mlp=0.01) default; never stored in its checkpoints
_OFFICIAL_LR_MAPPING = 0.01


def _kernel_taps(kernel2d: torch.Tensor) -> list[float] | None:
    """The 1-D taps of a separable, symmetric 2-D blur kernel (any scale), or None."""
    k = kernel2d.detach().to(torch.float64)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or float(k.sum()) == 0:
        return None
    k = k / k.sum()
    taps = k.sum(dim=1)
    if not torch.allclose(torch.outer(taps, taps), k, atol=1e-6):
        return None
    taps = taps / taps.min().clamp_min(1e-12)
    return [round(float(t), 6) for t in taps]


def _channel_fit(channels: dict[int, int], *, path) -> tuple[int, int]:
    """channel_base, channel_max with min(channel_base // res, channel_max) == channels[res]."""
    cmax = max(channels.values())
    candidates = sorted({c * r for r, c in channels.items() if c < cmax} | {cmax * max(channels)})
    for base in candidates:
        if all(min(base // r, cmax) == c for r, c in channels.items()):
            return base, cmax
    raise CheckpointError(f"{path}: channel widths {channels} cannot be expressed as "
                          f"min(channel_base // res, channel_max)", path=path)


def _ros_generator_config(sd: dict[str, torch.Tensor], *, path) -> dict:
    n_mlp = 0
    while f"style.{n_mlp + 1}.weight" in sd:
        n_mlp += 1
    n_rgb = 0
    while f"to_rgbs.{n_rgb}.conv.weight" in sd:
        n_rgb += 1
    needed = ["input.input", "conv1.conv.weight", "to_rgb1.conv.weight", "style.1.weight"]
    lacking = [k for k in needed if k not in sd]
    if lacking:
        raise CheckpointError(f"{path}: not a rosinality generator state dict: missing {lacking}", path=path)
    style_dim = int(sd["style.1.weight"].shape[1])
    size = 2 ** (n_rgb + 2)
    channels = {4: int(sd["input.input"].shape[1])}
    for i in range(n_rgb):
        key = f"convs.{2 * i}.conv.weight"
        if key not in sd:
            raise CheckpointError(f"{path}: rosinality generator lacks {key}", path=path)
        channels[2 ** (i + 3)] = int(sd[key].shape[1])
    base, cmax = _channel_fit(channels, path=path)
    img_channels = int(sd["to_rgb1.conv.weight"].shape[1])
    synthesis_kwargs = dict(channel_base=base, channel_max=cmax, num_fp16_res=0, conv_clamp=None)
    blur = sd.get("convs.0.conv.blur.kernel")
    if blur is not None:
        taps = _kernel_taps(blur)
        if taps is None:
            raise CheckpointError(f"{path}: blur kernel is not separable: {blur.tolist()}", path=path)
        if taps != [1.0, 3.0, 3.0, 1.0]:
            synthesis_kwargs["resample_filter"] = taps
    return dict(z_dim=style_dim, c_dim=0, w_dim=style_dim, img_resolution=size, img_channels=img_channels,
                mapping_kwargs=dict(num_layers=n_mlp, lr_multiplier=_OFFICIAL_LR_MAPPING),
                synthesis_kwargs=synthesis_kwargs)


def _ros_generator_pairs(kwargs: dict) -> list[tuple[str, str, str]]:
    """(kind, rosinality prefix, official prefix) for every layer of the synthesis network."""
    log2 = int(round(math.log2(kwargs["img_resolution"])))
    pairs = [("const", "input", "synthesis.b4"), ("conv", "conv1", "synthesis.b4.conv1"),
             ("torgb", "to_rgb1", "synthesis.b4.torgb")]
    for i in range(log2 - 2):
        res = 2 ** (i + 3)
        pairs += [("conv", f"convs.{2 * i}", f"synthesis.b{res}.conv0"),
                  ("conv", f"convs.{2 * i + 1}", f"synthesis.b{res}.conv1"),
                  ("torgb", f"to_rgbs.{i}", f"synthesis.b{res}.torgb")]
    return pairs


def _noise_index(ros_prefix: str) -> int:
    return 0 if ros_prefix == "conv1" else int(ros_prefix.split(".")[1]) + 1


def rosinality_to_official(sd: dict[str, torch.Tensor], *, latent_avg: torch.Tensor | None = None,
                           path="<state dict>") -> tuple[dict, dict[str, torch.Tensor]]:
    """A rosinality `Generator.state_dict()` -> (Generator kwargs, official state dict).

    Scales: rosinality keeps its equalized-lr constants outside the weights exactly like the
    official code, except in the modulated convolutions: it multiplies the weight by
    1/sqrt(in*k*k) before demodulating, while the official SynthesisLayer uses the raw weight.
    That constant is folded into the weight so that the demodulation epsilon sees the same numbers.
    ToRGB's constant is the official ToRGBLayer.weight_gain (applied to the styles): no change.
    Mapping layers: both use lr_mul 0.01 with weight*lr/sqrt(in) and bias*lr: unchanged.
    """
    kwargs = _ros_generator_config(sd, path=path)
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in sd:
            raise CheckpointError(f"{path}: rosinality generator lacks {key!r}", path=path)
        used.add(key)
        return sd[key].detach().to(torch.float32)

    lr_ratio = _ROS_LR_MLP / _OFFICIAL_LR_MAPPING
    for i in range(kwargs["mapping_kwargs"]["num_layers"]):
        out[f"mapping.fc{i}.weight"] = take(f"style.{i + 1}.weight") * lr_ratio
        out[f"mapping.fc{i}.bias"] = take(f"style.{i + 1}.bias") * lr_ratio
    w_dim = kwargs["w_dim"]
    if latent_avg is not None:
        latent_avg = latent_avg.detach().to(torch.float32).reshape(-1)
        if latent_avg.numel() != w_dim:
            raise CheckpointError(f"{path}: latent_avg has {latent_avg.numel()} values, expected {w_dim}", path=path)
        out["mapping.w_avg"] = latent_avg
    else:
        out["mapping.w_avg"] = torch.zeros([w_dim])

    for kind, rp, op in _ros_generator_pairs(kwargs):
        if kind == "const":
            out[f"{op}.const"] = take(f"{rp}.input")[0]
        elif kind == "conv":
            w = take(f"{rp}.conv.weight")[0]
            fan_in = w.shape[1] * w.shape[2] * w.shape[3]
            out[f"{op}.weight"] = w / math.sqrt(fan_in)
            out[f"{op}.affine.weight"] = take(f"{rp}.conv.modulation.weight")
            out[f"{op}.affine.bias"] = take(f"{rp}.conv.modulation.bias")
            out[f"{op}.noise_strength"] = take(f"{rp}.noise.weight").reshape([])
            out[f"{op}.noise_const"] = take(f"noises.noise_{_noise_index(rp)}")[0, 0]
            out[f"{op}.bias"] = take(f"{rp}.activate.bias")
        else:
            out[f"{op}.weight"] = take(f"{rp}.conv.weight")[0]
            out[f"{op}.affine.weight"] = take(f"{rp}.conv.modulation.weight")
            out[f"{op}.affine.bias"] = take(f"{rp}.conv.modulation.bias")
            out[f"{op}.bias"] = take(f"{rp}.bias").reshape(-1)

    # Resampling kernels are rebuilt from kwargs (resample_filter); anything else is unexpected.
    leftover = sorted(k for k in set(sd) - used
                      if not (k.endswith(".blur.kernel") or k.endswith(".upsample.kernel")))
    if leftover:
        raise CheckpointError(f"{path}: unexpected keys in rosinality generator: {leftover}", path=path)
    return kwargs, out


def _ros_discriminator_config(sd: dict[str, torch.Tensor], *, path) -> dict:
    n_res = 0
    while f"convs.{n_res + 1}.conv1.0.weight" in sd:
        n_res += 1
    if "convs.0.0.weight" not in sd or "final_conv.0.weight" not in sd:
        raise CheckpointError(f"{path}: not a rosinality discriminator state dict", path=path)
    size = 2 ** (n_res + 2)
    channels = {size: int(sd["convs.0.0.weight"].shape[0])}
    for i in range(1, n_res + 1):
        channels[size >> i] = int(sd[f"convs.{i}.conv2.1.weight"].shape[0])
    base, cmax = _channel_fit(channels, path=path)
    return dict(c_dim=0, img_resolution=size, img_channels=int(sd["convs.0.0.weight"].shape[1]),
                architecture="resnet", channel_base=base, channel_max=cmax, num_fp16_res=0, conv_clamp=None,
                epilogue_kwargs=dict(mbstd_group_size=4, mbstd_num_channels=1))


def _ros_discriminator_map(kwargs: dict) -> list[tuple[str, str]]:
    size = kwargs["img_resolution"]
    n_res = int(round(math.log2(size))) - 2
    m = [("convs.0.0.weight", f"b{size}.fromrgb.weight"), ("convs.0.1.bias", f"b{size}.fromrgb.bias")]
    for i in range(1, n_res + 1):
        res = size >> (i - 1)
        m += [(f"convs.{i}.conv1.0.weight", f"b{res}.conv0.weight"), (f"convs.{i}.conv1.1.bias", f"b{res}.conv0.bias"),
              (f"convs.{i}.conv2.1.weight", f"b{res}.conv1.weight"), (f"convs.{i}.conv2.2.bias", f"b{res}.conv1.bias"),
              (f"convs.{i}.skip.1.weight", f"b{res}.skip.weight")]
    m += [("final_conv.0.weight", "b4.conv.weight"), ("final_conv.1.bias", "b4.conv.bias"),
          ("final_linear.0.weight", "b4.fc.weight"), ("final_linear.0.bias", "b4.fc.bias"),
          ("final_linear.1.weight", "b4.out.weight"), ("final_linear.1.bias", "b4.out.bias")]
    return m


def rosinality_discriminator_to_official(sd: dict[str, torch.Tensor], *, path="<state dict>"):
    """A rosinality `Discriminator.state_dict()` -> (Discriminator kwargs, official state dict).
    EqualConv2d / EqualLinear(lr_mul=1) keep the same constants as Conv2dLayer / FullyConnectedLayer."""
    kwargs = _ros_discriminator_config(sd, path=path)
    out, used = {}, set()
    for rk, ok in _ros_discriminator_map(kwargs):
        if rk not in sd:
            raise CheckpointError(f"{path}: rosinality discriminator lacks {rk!r}", path=path)
        out[ok] = sd[rk].detach().to(torch.float32)
        used.add(rk)
    leftover = sorted(k for k in set(sd) - used if not k.endswith(".kernel"))
    if leftover:
        raise CheckpointError(f"{path}: unexpected keys in rosinality discriminator: {leftover}", path=path)
    return kwargs, out


def _make_kernel(taps, factor: int = 1) -> torch.Tensor:
    k = torch.as_tensor(taps, dtype=torch.float32)
    k = torch.outer(k, k)
    return k / k.sum() * factor ** 2


def official_to_rosinality(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Inverse of `rosinality_to_official`: our Generator -> a rosinality `g_ema` state dict, with the
    mapping's w_avg under the extra key '__latent_avg__' (rosinality keeps `latent_avg` beside g_ema,
    pop it before saving); our Discriminator -> a rosinality `d` state dict. Only configurations
    rosinality can express are accepted (skip G / resnet D, unconditional, z_dim == w_dim, no clamping)."""
    from stylemix.networks.stylegan2 import Discriminator, Generator

    kwargs = generator_kwargs(net) if isinstance(net, Generator) else getattr(net, "init_kwargs", None)
    sd = {k: v.detach().cpu().to(torch.float32) for k, v in net.state_dict().items()}
    if isinstance(net, Generator):
        syn = kwargs.get("synthesis_kwargs", {})
        if net.c_dim != 0 or net.z_dim != net.w_dim or syn.get("architecture", "skip") != "skip" \
                or syn.get("conv_clamp") is not None:
            raise ValueError("only unconditional 'skip' generators with z_dim == w_dim and conv_clamp=None "
                             f"have a rosinality layout; got {kwargs}")
        taps = syn.get("resample_filter", [1, 3, 3, 1])
        out: dict[str, torch.Tensor] = {}
        for i in range(kwargs.get("mapping_kwargs", {}).get("num_layers", 8)):
            out[f"style.{i + 1}.weight"] = sd[f"mapping.fc{i}.weight"] * (_OFFICIAL_LR_MAPPING / _ROS_LR_MLP)
            out[f"style.{i + 1}.bias"] = sd[f"mapping.fc{i}.bias"] * (_OFFICIAL_LR_MAPPING / _ROS_LR_MLP)
        for kind, rp, op in _ros_generator_pairs(kwargs):
            if kind == "const":
                out[f"{rp}.input"] = sd[f"{op}.const"][None]
            elif kind == "conv":
                w = sd[f"{op}.weight"]
                out[f"{rp}.conv.weight"] = (w * math.sqrt(w.shape[1] * w.shape[2] * w.shape[3]))[None]
                out[f"{rp}.conv.modulation.weight"] = sd[f"{op}.affine.weight"]
                out[f"{rp}.conv.modulation.bias"] = sd[f"{op}.affine.bias"]
                out[f"{rp}.noise.weight"] = sd[f"{op}.noise_strength"].reshape(1)
                out[f"{rp}.activate.bias"] = sd[f"{op}.bias"]
                out[f"noises.noise_{_noise_index(rp)}"] = sd[f"{op}.noise_const"][None, None]
                if op.endswith("conv0"):
                    out[f"{rp}.conv.blur.kernel"] = _make_kernel(taps, 2)
            else:
                out[f"{rp}.conv.weight"] = sd[f"{op}.weight"][None]
                out[f"{rp}.conv.modulation.weight"] = sd[f"{op}.affine.weight"]
                out[f"{rp}.conv.modulation.bias"] = sd[f"{op}.affine.bias"]
                out[f"{rp}.bias"] = sd[f"{op}.bias"].reshape(1, -1, 1, 1)
                if rp != "to_rgb1":
                    out[f"{rp}.upsample.kernel"] = _make_kernel(taps, 2)
        out["__latent_avg__"] = sd["mapping.w_avg"].clone()
        return out
    if isinstance(net, Discriminator):
        top = getattr(net, f"b{net.img_resolution}")
        if net.c_dim != 0 or getattr(top, "architecture", "resnet") != "resnet" \
                or getattr(top.conv0, "conv_clamp", None) is not None:
            raise ValueError("only unconditional 'resnet' discriminators with conv_clamp=None have a rosinality layout")
        dk = dict(img_resolution=net.img_resolution)
        out = {rk: sd[ok] for rk, ok in _ros_discriminator_map(dk)}
        for i in range(1, int(round(math.log2(net.img_resolution))) - 1):
            out[f"convs.{i}.conv2.0.kernel"] = _make_kernel([1, 3, 3, 1])
            out[f"convs.{i}.skip.0.kernel"] = _make_kernel([1, 3, 3, 1])
        return out
    raise ValueError(f"expected a Generator or Discriminator, got {type(net).__name__}")


def _load_torch_file(path: Path):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" not in text:
            raise CheckpointError(f"{path}: cannot read torch checkpoint (truncated or corrupt file?): "
                                  f"{_first_line(exc)}", path=path) from None
        m = re.search(r"GLOBAL ([\w.]+)", text)
        name = m.group(1) if m else None
        what = f"it asks for {name}" if name else "it needs more than plain weights"
        raise UnsafeCheckpointError(f"{path}: refusing to load this torch file: {what} (StyleMix reads torch "
                                    f"files with weights_only=True)", path=path, global_name=name) from None
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read torch checkpoint (truncated or corrupt file?): "
                              f"{type(exc).__name__}: {_first_line(exc)}", path=path) from None


def _load_rosinality(path: Path, *, device, only: tuple[str, ...] | None) -> dict:
    ckpt = _load_torch_file(path)
    if not isinstance(ckpt, dict) or not any(isinstance(ckpt.get(k), dict) for k in ("g_ema", "g")):
        keys = sorted(map(str, ckpt))[:20] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: torch file is not a rosinality StyleGAN2 checkpoint "
                              f"(expected a dict with 'g_ema'; found {keys})", path=path)
    latent_avg = ckpt.get("latent_avg")
    if latent_avg is not None and not isinstance(latent_avg, torch.Tensor):
        raise CheckpointError(f"{path}: latent_avg is not a tensor", path=path)
    out: dict[str, Any] = {}
    wanted = [("g_ema", "G_ema"), ("g", "G"), ("d", "D")]
    if only is not None:  # the first of `only` that the file has
        present = [dst for src, dst in wanted if isinstance(ckpt.get(src), dict)]
        only = tuple(k for k in only if k in present)[:1] or only
    for src, dst in wanted:
        sd = ckpt.get(src)
        if not isinstance(sd, dict) or (only is not None and dst not in only):
            continue
        if src == "d":
            kwargs, osd = rosinality_discriminator_to_official(sd, path=path)
            out[dst] = _build("Discriminator", (), kwargs, osd, what="rosinality 'd'", path=path, device=device,
                              filters_from_kwargs=True)
        else:
            if latent_avg is None and src == "g_ema":
                warnings.warn(f"{path}: no 'latent_avg' in this rosinality checkpoint; w_avg is set to zeros, "
                              f"so truncation will not work as intended", stacklevel=4)
            kwargs, osd = rosinality_to_official(sd, latent_avg=latent_avg, path=path)
            out[dst] = _build("Generator", (), kwargs, osd, what=f"rosinality {src!r}", path=path, device=device,
                              filters_from_kwargs=True)
    if only is not None and not out:
        raise CheckpointError(f"{path}: no generator in this rosinality checkpoint", path=path)
    for key in ("args", "ada_aug_p"):
        if key in ckpt:
            value = ckpt[key]
            out[key] = vars(value) if isinstance(value, argparse.Namespace) else value
    out["format"] = FORMAT_ROSINALITY
    return out


# ------------------------------------------------------------------------------------------------
# Our own format: safetensors + JSON header


def _weights_digest(sd: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().cpu().contiguous()
        h.update(k.encode("utf-8") + b"\0" + str(t.dtype).encode() + b"\0" + json.dumps(list(t.shape)).encode() + b"\0")
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _jsonable(value, what: str):
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be JSON-serialisable: {exc} (got {value!r})"[:500]) from None


def generator_kwargs(G) -> dict:
    """The keyword arguments that rebuild `G` (its `init_kwargs` when it has them)."""
    kw = getattr(G, "init_kwargs", None)
    if not isinstance(kw, dict):
        raise ValueError(f"{type(G).__name__} has no init_kwargs: build it with "
                         "stylemix.networks.stylegan2.Generator(...) so its constructor arguments are recorded")
    return copy.deepcopy(_plain(kw))


def save_generator(G, path, *, provenance: dict, storage_dtype: str = "float32") -> Path:
    """Write `G` in StyleMix's format (safetensors + JSON header) atomically; returns the path.

    provenance: a JSON-serialisable dict saying where the weights come from (training run,
    converted file, licence...). It is stored as is and returned by load_networks()['provenance'].
    storage_dtype: 'float32' (default: the weights as they are) or 'float16' (half the bytes; each
    weight rounded to the nearest float16, and loaded back as float32: a different network at the
    level of that rounding, so measure the file you keep).
    """
    from stylemix.networks.stylegan2 import Generator

    if not isinstance(G, Generator):
        raise ValueError(f"save_generator() saves a stylemix Generator, got {type(G).__name__}")
    return _save_network(G, "Generator", path, provenance=provenance, storage_dtype=storage_dtype)


def save_discriminator(D, path, *, provenance: dict) -> Path:
    """Write a StyleGAN2 Discriminator like save_generator (load_networks(path)['D'] reads it back),
    so that a shipped generator can be fine-tuned with the discriminator it was trained against."""
    from stylemix.networks.stylegan2 import Discriminator

    if not isinstance(D, Discriminator):
        raise ValueError(f"save_discriminator() saves a stylemix Discriminator, got {type(D).__name__}")
    return _save_network(D, "Discriminator", path, provenance=provenance)


STORAGE_DTYPES = {"float32": None, "float16": torch.float16}  # None: as the network holds them


def _stored_state_dict(net: torch.nn.Module, storage_dtype: str = "float32") -> dict[str, torch.Tensor]:
    """The tensors a StyleMix file of `net` stores: floating-point ones cast to `storage_dtype`.

    Raises ValueError if a value does not fit that type (inf/nan, or beyond float16's +-65504)."""
    if storage_dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage dtype must be one of {sorted(STORAGE_DTYPES)}, got {storage_dtype!r}")
    sd = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    target = STORAGE_DTYPES[storage_dtype]
    if target is None:
        return sd
    limit = torch.finfo(target).max
    for k, v in sd.items():
        if v.is_floating_point():
            if v.numel() and (not bool(torch.isfinite(v).all()) or float(v.abs().max()) > limit):
                raise ValueError(f"{k}: values beyond {storage_dtype}'s range (|x| <= {limit:g}, finite); "
                                 f"store this network as float32")
            sd[k] = v.to(target)
    return sd


def _save_network(net, network: str, path, *, provenance: dict, storage_dtype: str = "float32") -> Path:
    from safetensors.torch import save as st_save

    from stylemix import __version__

    if not isinstance(provenance, dict):
        raise ValueError(f"provenance must be a dict, got {type(provenance).__name__}: {provenance!r}")
    provenance = _jsonable(provenance, "provenance")
    kwargs = _jsonable(generator_kwargs(net), f"{network} kwargs")
    sd = _stored_state_dict(net, storage_dtype)
    header = {
        "format": FORMAT_STYLEMIX,
        "format_version": STYLEMIX_FORMAT_VERSION,
        "network": network,
        "module": "stylemix.networks.stylegan2",
        "kwargs": kwargs,
        "provenance": provenance,
        "weights_sha256": _weights_digest(sd),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "stylemix_version": __version__,
        "torch_version": torch.__version__,
    }
    if STORAGE_DTYPES[storage_dtype] is not None:
        header["storage_dtype"] = storage_dtype  # loaders cast back to the network's own dtypes
    data = st_save(sd, metadata={_HEADER_KEY: json.dumps(header, sort_keys=True)})
    path = Path(path)
    atomic_write_bytes(path, data)
    return path


def read_header(path) -> dict:
    """The JSON header of a StyleMix safetensors file (no weights are read)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read safetensors file (truncated or corrupt?): "
                              f"{type(exc).__name__}: {_first_line(exc)}", path=path) from None
    if _HEADER_KEY not in meta:
        raise CheckpointError(f"{path}: safetensors file without a StyleMix header; it does not say which "
                              f"network it holds (metadata keys: {sorted(meta)})", path=path)
    try:
        header = json.loads(meta[_HEADER_KEY])
    except ValueError as exc:
        raise CheckpointError(f"{path}: StyleMix header is not valid JSON: {exc}", path=path) from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_STYLEMIX:
        raise CheckpointError(f"{path}: not a StyleMix checkpoint header", path=path)
    version = header.get("format_version")
    if not isinstance(version, int) or version > STYLEMIX_FORMAT_VERSION or version < 1:
        raise CheckpointError(f"{path}: StyleMix format version {version!r} is not supported "
                              f"(this StyleMix reads up to {STYLEMIX_FORMAT_VERSION})", path=path)
    if header.get("network") not in _NETWORK_CLASSES or not isinstance(header.get("kwargs"), dict):
        raise CheckpointError(f"{path}: header names no known network ({header.get('network')!r})", path=path)
    return header


def _load_stylemix(path: Path, *, device, only: tuple[str, ...] | None) -> dict:
    from safetensors.torch import load_file

    header = read_header(path)
    try:
        sd = load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read weights (truncated or corrupt?): {type(exc).__name__}: "
                              f"{_first_line(exc)}", path=path) from None
    digest = _weights_digest(sd)
    if header.get("weights_sha256") != digest:
        raise CheckpointError(f"{path}: weights do not match the sha256 in the header "
                              f"({digest} vs {header.get('weights_sha256')}): the file was altered", path=path)
    net = _build(header["network"], (), header["kwargs"], sd, what=header["network"], path=path, device=device)
    key = {"Generator": "G_ema", "Discriminator": "D"}.get(header["network"], header["network"])
    return {key: net, "provenance": header.get("provenance", {}), "header": header, "format": FORMAT_STYLEMIX}


# ------------------------------------------------------------------------------------------------
# Dispatch

_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def _is_safetensors(path: Path, head: bytes, size: int) -> bool:
    """True when the file starts with a safetensors header: u64 length, then a JSON object."""
    if len(head) < 10 or head[8:9] != b"{":
        return False
    (n,) = struct.unpack("<Q", head[:8])
    if not 2 <= n <= min(size - 8, 100 << 20):
        return False
    with open(path, "rb") as f:
        f.seek(8)
        raw = f.read(n)
    try:
        return isinstance(json.loads(raw), dict)
    except ValueError:
        return False


def detect_format(path) -> str:
    """FORMAT_NVIDIA, FORMAT_ROSINALITY (any torch.save file) or FORMAT_STYLEMIX, from the bytes."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot open checkpoint: {exc.strerror or exc}", path=path) from None
    if size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint", path=path)
    # safetensors first: its 8-byte little-endian header length can begin with any byte, including
    # ones that also open a pickle (0x80, 'c', '(' ...), so a valid JSON header decides it.
    if _is_safetensors(path, head, size):
        return FORMAT_STYLEMIX
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise CheckpointError(f"{path}: broken zip/torch file (truncated?): {exc}", path=path) from None
        if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
            return FORMAT_ROSINALITY
        raise CheckpointError(f"{path}: a zip file that is not a torch checkpoint", path=path)
    if head.startswith(_TORCH_LEGACY_MAGIC):
        return FORMAT_ROSINALITY
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return FORMAT_NVIDIA
    if head[:1] in (b"c", b"(", b"}", b"]", b")"):
        return FORMAT_NVIDIA  # protocol 0/1 pickle: read (and refused where needed) by the same unpickler
    raise CheckpointError(f"{path}: unknown checkpoint format (not an NVIDIA pickle, a torch file or a "
                          f"StyleMix safetensors file; starts with {head[:16]!r})", path=path)


_LOADERS = {FORMAT_NVIDIA: _load_nvidia, FORMAT_ROSINALITY: _load_rosinality, FORMAT_STYLEMIX: _load_stylemix}


def _resolve(path_or_name) -> Path:
    from stylemix import pretrained

    if isinstance(path_or_name, (str, os.PathLike)):
        p = Path(path_or_name).expanduser()
        if p.exists() or not (isinstance(path_or_name, str) and pretrained.is_registered(path_or_name)):
            if not p.is_file():
                known = ", ".join(e.name for e in pretrained.list_models())
                raise CheckpointError(f"{p}: no such checkpoint file, and not a registered model name "
                                      f"(registered: {known})", path=p)
            return p
    return pretrained.resolve(path_or_name)


def load_networks(path_or_name, *, device="cpu") -> dict:
    """Every network in the file, rebuilt as StyleMix modules in eval mode on `device`.

    NVIDIA pickles: {'G', 'D', 'G_ema': modules, 'augment_pipe': RecordedObject (not rebuilt),
    'training_set_kwargs': dict, 'format'}. rosinality: {'G_ema', 'G', 'D', ('args'), 'format'}.
    StyleMix files: {'G_ema' (or 'D' for a saved discriminator), 'provenance', 'header', 'format'}.
    """
    dev = _device(device)
    path = _resolve(path_or_name)
    fmt = detect_format(path)
    return _LOADERS[fmt](path, device=dev, only=None)


def load_generator(path_or_name, *, device="cpu"):
    """The generator to sample from: G_ema where the file has several networks."""
    dev = _device(device)
    path = _resolve(path_or_name)
    fmt = detect_format(path)
    nets = _LOADERS[fmt](path, device=dev, only=("G_ema", "G"))
    G = nets.get("G_ema", nets.get("G"))
    if G is None:
        raise CheckpointError(f"{path}: no generator in this checkpoint", path=path)
    from stylemix.networks.stylegan2 import Generator

    if not isinstance(G, Generator):
        name = G.class_name if isinstance(G, RecordedObject) else type(G).__name__
        raise CheckpointError(f"{path}: the generator entry holds a {name}, not a StyleGAN2 Generator", path=path)
    if "provenance" in nets:
        G.provenance = nets["provenance"]
    # Where G came from, so companions (encoder, directions) can be found by name: the registry
    # name when loaded by name, else the file's stem.
    from stylemix import pretrained

    by_name = isinstance(path_or_name, str) and pretrained.is_registered(path_or_name) and not Path(path_or_name).exists()
    G.model_name = path_or_name if by_name else path.stem
    G.model_path = str(path)
    return G


def describe(path_or_name) -> dict:
    """A short JSON-able summary of a checkpoint (for `python -m stylemix info`)."""
    path = _resolve(path_or_name)
    fmt = detect_format(path)
    nets = _LOADERS[fmt](path, device=torch.device("cpu"), only=None)
    G = nets.get("G_ema", nets.get("G"))
    info: dict[str, Any] = {"path": str(path), "format": fmt, "size_bytes": path.stat().st_size,
                            "networks": sorted(k for k, v in nets.items() if isinstance(v, (torch.nn.Module, RecordedObject)))}
    if G is not None:
        info.update(img_resolution=G.img_resolution, num_ws=G.num_ws, z_dim=G.z_dim, w_dim=G.w_dim, c_dim=G.c_dim,
                    img_channels=G.img_channels, parameters=sum(p.numel() for p in G.parameters()),
                    kwargs=_jsonable(generator_kwargs(G), "kwargs"))
    if "provenance" in nets:
        info["provenance"] = nets["provenance"]
    if isinstance(nets.get("header"), dict):
        info["storage_dtype"] = nets["header"].get("storage_dtype", "float32")
    if isinstance(nets.get("training_set_kwargs"), dict):
        info["training_set_kwargs"] = _jsonable(nets["training_set_kwargs"], "training_set_kwargs")
    return info
