"""Build pickles laid out exactly like NVIDIA's StyleGAN2-ADA network pickles, without NVIDIA's code.

The official `torch_utils.persistence` pickles each network object as
`torch_utils.persistence._reconstruct_persistent_obj(meta)` with
meta = dict(type='class', version=6, module_src=<source of the defining module>,
            class_name=<class name>, state=<the object's __dict__>),
where the state holds `_parameters`, `_buffers`, `_modules` (nested persistent objects), hook dicts,
plain attributes (numpy float64 gains among them) and `_init_args` / `_init_kwargs`.
`fake_official_modules()` installs stand-ins for `torch_utils.persistence` and `dnnlib.util` in
sys.modules so that `pickle.dumps` can name them; their reconstructor, if anything ever called it,
would write `MARKER` and execute the module source.
"""

from __future__ import annotations

import collections
import contextlib
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import torch

_FAKE_NAMES = ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")


@contextlib.contextmanager
def fake_official_modules(marker: Path):
    saved = {n: sys.modules.get(n) for n in _FAKE_NAMES}
    torch_utils = types.ModuleType("torch_utils")
    persistence = types.ModuleType("torch_utils.persistence")
    dnnlib = types.ModuleType("dnnlib")
    util = types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta):  # what the real one does: exec the source. Must never run.
        Path(marker).write_text("persistence reconstructor was called")
        exec(compile(meta["module_src"], "<module_src>", "exec"), {})
        raise AssertionError("unreachable in tests")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj

    class EasyDict(dict):
        def __getattr__(self, name):
            try:
                return self[name]
            except KeyError:
                raise AttributeError(name) from None

        def __setattr__(self, name, value):
            self[name] = value

    EasyDict.__module__ = "dnnlib.util"
    EasyDict.__qualname__ = "EasyDict"
    util.EasyDict = EasyDict
    dnnlib.util = util
    dnnlib.EasyDict = EasyDict
    torch_utils.persistence = persistence
    sys.modules.update({"torch_utils": torch_utils, "torch_utils.persistence": persistence,
                        "dnnlib": dnnlib, "dnnlib.util": util})
    try:
        yield types.SimpleNamespace(EasyDict=EasyDict, reconstruct=_reconstruct_persistent_obj)
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


class Persistent:
    """Pickles as torch_utils.persistence._reconstruct_persistent_obj(meta)."""

    def __init__(self, class_name: str, state: dict, module_src: str, version: int = 6):
        self.meta = dict(type="class", version=version, module_src=module_src, class_name=class_name, state=state)

    def __reduce__(self):
        return (sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (self.meta,))


def hostile_source(marker: Path, extra: str = "") -> str:
    """Module source that would create `marker` if it were ever executed."""
    return (f"import pathlib\npathlib.Path({str(marker)!r}).write_text('module_src was executed')\n"
            f"import torch\n{extra}\n")


_PLAIN = (bool, int, float, str, type(None), np.generic, torch.Tensor)


def _clean(value):
    """Keep only values an official pickle would hold (no functions or foreign objects)."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, collections.OrderedDict):
        return collections.OrderedDict((k, _clean(v)) for k, v in value.items() if _ok(v))
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if _ok(v)}
    if isinstance(value, (list, tuple, set)):
        return type(value)(_clean(v) for v in value if _ok(v))
    raise TypeError(type(value))


def _ok(value) -> bool:
    try:
        _clean(value)
        return True
    except TypeError:
        return False


def persistent_tree(module: torch.nn.Module, *, module_src: str, init_kwargs=None, EasyDict=dict,
                    class_name: str | None = None) -> Persistent:
    """Mirror `module` (and its children) as official-style persistent objects."""
    state = {}
    for k, v in module.__dict__.items():
        if k == "_modules":
            continue
        if _ok(v):
            state[k] = _clean(v)
    for k in ("weight_gain", "act_gain", "bias_gain"):
        if isinstance(state.get(k), float):
            state[k] = np.float64(state[k])  # the official code computes these with numpy
    state["_modules"] = collections.OrderedDict(
        (name, None if child is None else persistent_tree(child, module_src=module_src, EasyDict=EasyDict))
        for name, child in module._modules.items())
    state["_init_args"] = ()
    state["_init_kwargs"] = _easy(init_kwargs or {}, EasyDict)
    return Persistent(class_name or type(module).__name__, state, module_src)


def _easy(d, EasyDict):
    if isinstance(d, dict):
        return EasyDict({k: _easy(v, EasyDict) for k, v in d.items()})
    return d


def official_pickle_bytes(nets: dict, *, marker: Path, training_set_kwargs=None, extra_state=None,
                          protocol: int = pickle.DEFAULT_PROTOCOL, augment_pipe=True) -> bytes:
    """nets: {'G': (module, kwargs), 'D': ..., 'G_ema': ...}. Needs fake_official_modules() active."""
    EasyDict = sys.modules["dnnlib.util"].EasyDict
    src = hostile_source(marker)
    data = {"training_set_kwargs": dict(training_set_kwargs or dict(
        class_name="training.dataset.ImageFolderDataset", path="~/datasets/ffhq.zip", use_labels=False,
        max_size=70000, xflip=True, resolution=32))}
    for key, (module, kwargs) in nets.items():
        module = module.eval().requires_grad_(False)
        tree = persistent_tree(module, module_src=src, init_kwargs=kwargs, EasyDict=EasyDict)
        if extra_state and key in extra_state:
            tree.meta["state"].update(extra_state[key])
        data[key] = tree
    if augment_pipe:
        aug_state = {"training": False, "_parameters": collections.OrderedDict(),
                     "_buffers": collections.OrderedDict(p=torch.zeros([]), Hz_geom=torch.randn(12)),
                     "_non_persistent_buffers_set": set(), "_modules": collections.OrderedDict(),
                     "xflip": 1.0, "rotate90": 1.0, "_init_args": (),
                     "_init_kwargs": EasyDict(xflip=1, rotate90=1, xint=1)}
        data["augment_pipe"] = Persistent("AugmentPipe", aug_state, src)
    else:
        data["augment_pipe"] = None
    return pickle.dumps(data, protocol=protocol)


def stylegan3_pickle_bytes(*, marker: Path) -> bytes:
    """A StyleGAN3-looking G_ema (SynthesisInput, SynthesisLayer with is_torgb). Needs fake modules."""
    src = hostile_source(marker, "class SynthesisInput(torch.nn.Module):\n    pass\n")

    def node(name, params=None, modules=None, **attrs):
        state = {"training": False, "_parameters": collections.OrderedDict(params or {}),
                 "_buffers": collections.OrderedDict(), "_non_persistent_buffers_set": set(),
                 "_modules": collections.OrderedDict(modules or {}), "_init_args": (), "_init_kwargs": {}}
        state.update(attrs)
        return Persistent(name, state, src)

    syn = node("SynthesisNetwork", modules={
        "input": node("SynthesisInput", params={"freqs": torch.randn(4, 2)}),
        "L0_36_512": node("SynthesisLayer", params={"weight": torch.randn(2, 2, 3, 3)}, is_torgb=False)})
    G = node("Generator", modules={"synthesis": syn}, z_dim=8)
    return pickle.dumps({"G_ema": G, "training_set_kwargs": {}})
