"""stylemix.ops: compiled (C++ CPU / CUDA) paths against the PyTorch reference.

Values, first and second derivatives over grids of options; gradcheck / gradgradcheck through the
compiled path; path selection (impl=, STYLEMIX_OPS, defaults); the warn-once fallback when a build
fails; the build cache and its cross-process lock. The first run builds the CPU library (~20-40 s
on 2 cores), later runs load it from the cache.
"""

from __future__ import annotations

import importlib
import itertools
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from stylemix.ops import _build
from stylemix.ops.bias_act import _bias_act_ref, activation_funcs, bias_act
from stylemix.ops.upfirdn2d import (_parse_padding, _parse_scaling, _upfirdn2d_ref, downsample2d, filter2d,
                                    setup_filter, upfirdn2d, upsample2d)

from ._cli import last_json

ba_mod = importlib.import_module("stylemix.ops.bias_act")
up_mod = importlib.import_module("stylemix.ops.upfirdn2d")

REPO = pathlib.Path(__file__).resolve().parents[1]
ACTS = sorted(activation_funcs)


def _toolchain_missing() -> str | None:
    """Why a C++ build cannot even start here (no compiler / no ninja), or None."""
    from torch.utils import cpp_extension

    try:
        cpp_extension.verify_ninja_availability()
    except Exception:  # noqa: BLE001
        return "ninja is not installed"
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return f"no C++ compiler ({cxx})"
    return None


@pytest.fixture(scope="module")
def cpu_ops():
    """The compiled CPU library (built or loaded once). Skips only without a toolchain."""
    ops = _build.cpu_plugin.get()
    if ops is None:
        missing = _toolchain_missing()
        if missing:
            pytest.skip(f"compiled CPU ops cannot be built: {missing}")
        pytest.fail(f"compiled CPU ops failed to build: {_build.cpu_plugin.error}")
    return ops


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("STYLEMIX_OPS", raising=False)


def _close(a, b, dtype, what, scale=1.0):
    if a is None or b is None:  # None (no path to the input) must match None, not zeros
        assert a is None and b is None, f"{what}: {type(a).__name__} vs {type(b).__name__}"
        return
    tol = {torch.float64: (1e-9, 1e-10), torch.float32: (2e-5, 2e-5), torch.float16: (2e-2, 2e-2)}[dtype]
    torch.testing.assert_close(a, b, rtol=tol[0], atol=tol[1] * scale, msg=lambda m: f"{what}: {m}")


# ---- bias_act ---------------------------------------------------------------------------------

BIAS_ACT_VARIANTS = [
    dict(),  # each activation's default alpha / gain, no clamp
    dict(alpha=0.3, gain=0.7),
    dict(gain=2.0, clamp=0.8),
]
BIAS_ACT_LAYOUTS = [  # (dim, shape, with bias, contiguous)
    (1, (2, 5, 3, 4), True, True),  # NCHW, bias over channels (spans of H*W)
    (0, (6, 3), True, True),
    (1, (3, 6), True, True),  # bias along the innermost dim (vector-bias rows)
    (2, (2, 3, 5), True, True),
    (3, (2, 3, 4, 5), True, True),
    (1, (2, 5, 3, 4), False, True),  # no bias
    (1, (2, 5, 3, 4), True, False),  # non-contiguous input
]


def _bias_act_derivatives(impl, x, b, dy, r, kw):
    """y; dx, db; and the derivatives of a scalar of (dx, db) w.r.t. x, b and dy (like R1)."""
    x = x.detach().clone().requires_grad_(True)
    b = None if b is None else b.detach().clone().requires_grad_(True)
    dy = dy.detach().clone().requires_grad_(True)
    y = bias_act(x, b, impl=impl, **kw)
    inputs = [x] if b is None else [x, b]
    grads = torch.autograd.grad(y, inputs, dy, create_graph=True)
    loss = sum((g.square() * 0.5 + g * r_).sum() for g, r_ in zip(grads, r))
    second = torch.autograd.grad(loss, inputs + [dy], allow_unused=True) if loss.requires_grad else [None] * 3
    return [y] + list(grads) + list(second)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("variant", range(len(BIAS_ACT_VARIANTS)), ids=["default", "alpha-gain", "gain-clamp"])
@pytest.mark.parametrize("act", ACTS)
def test_bias_act_parity(cpu_ops, act, variant, dtype):
    """y, dx, db and the second derivatives w.r.t. x, b, dy, for every layout in BIAS_ACT_LAYOUTS."""
    kw = dict(BIAS_ACT_VARIANTS[variant], act=act)
    for layout in BIAS_ACT_LAYOUTS:
        dim, shape, with_b, contiguous = layout
        gen = torch.Generator().manual_seed(len(shape) * 100 + dim * 10 + variant)
        x = torch.randn(shape, generator=gen, dtype=dtype) * 2
        if not contiguous:
            x = x.transpose(0, -1).contiguous().transpose(0, -1)
            assert not x.is_contiguous()
        b = torch.randn(shape[dim], generator=gen, dtype=dtype) if with_b else None
        dy = torch.randn(shape, generator=gen, dtype=dtype)
        r = [torch.randn(shape, generator=gen, dtype=dtype)]
        if with_b:
            r.append(torch.randn(shape[dim], generator=gen, dtype=dtype))
        ref = _bias_act_derivatives("ref", x, b, dy, r, dict(kw, dim=dim))
        cmp = _bias_act_derivatives("compiled", x, b, dy, r, dict(kw, dim=dim))
        assert type(cmp[0].grad_fn).__name__ == "_BiasActFnBackward"
        names = ["y", "dx"] + (["db"] if with_b else []) + ["d2x"] + (["d2b"] if with_b else []) + ["d2dy"]
        for name, a, c in zip(names, ref, cmp):
            _close(None if c is None else c.detach(), None if a is None else a.detach(), dtype,
                   f"{act} {kw} {layout} {name}", scale=x.numel() if name in ("db", "d2b") else 1.0)


@pytest.mark.parametrize("clamp", [None, 0.8])
@pytest.mark.parametrize("act", ACTS)
def test_bias_act_gradcheck(cpu_ops, act, clamp):
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(2, 3, 4, generator=gen, dtype=torch.float64) * 1.5).requires_grad_(True)
    b = torch.randn(3, generator=gen, dtype=torch.float64).requires_grad_(True)

    def fn(x, b):
        return bias_act(x, b, act=act, gain=1.3, clamp=clamp, impl="compiled")

    assert type(fn(x, b).grad_fn).__name__ == "_BiasActFnBackward"
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


def test_bias_act_edge_cases(cpu_ops):
    x = torch.randn(2, 4, 3)
    b = torch.randn(4)
    for impl in ("ref", "compiled"):  # empty tensors, clamp 0, no bias + linear
        assert bias_act(x[:0], b, act="lrelu", impl=impl).shape == (0, 4, 3)
    torch.testing.assert_close(bias_act(x, b, act="tanh", clamp=0.0, impl="compiled"),
                               bias_act(x, b, act="tanh", clamp=0.0, impl="ref"))
    torch.testing.assert_close(bias_act(x, None, impl="compiled"), x)
    with pytest.raises(ValueError, match="nope"):
        bias_act(x, b, act="nope", impl="compiled")
    with pytest.raises(AssertionError):
        bias_act(x, torch.randn(5), impl="compiled")  # wrong bias length, like the reference


# ---- upfirdn2d --------------------------------------------------------------------------------

FILTERS = {
    "2d-1331": lambda: setup_filter([1, 3, 3, 1]),  # 4x4, the StyleGAN2 filter
    "1d-8tap": lambda: setup_filter([1, 3, 5, 7, 7, 5, 3, 1]),  # separable (two passes)
    "2d-rect": lambda: torch.randn(3, 5, generator=torch.Generator().manual_seed(3)),
    "none": lambda: None,  # 1x1
}
UPS = [1, 2, (3, 1)]  # (x, y)
DOWNS = [1, 2, (1, 3)]
PADS = [0, [1, 2, 0, 3], [-1, 2, 1, -2]]  # [x0, x1, y0, y1], negative = crop
FLIP_GAIN = [(False, 1.0), (True, 1.0), (False, 3.0)]
# every padding, flip/gain and filter with every up x down; paddings and flip/gain vary together
UPFIRDN_GRID = [(up, down, pad, fg, fname) for up, down, (pad, fg), fname
                in itertools.product(UPS, DOWNS, zip(PADS, FLIP_GAIN), list(FILTERS))]


def _upfirdn_case_id(case):
    up, down, pad, (flip, gain), fname = case
    return f"up{up}-down{down}-pad{pad}-flip{int(flip)}-gain{gain:g}-{fname}".replace(" ", "")


@pytest.mark.parametrize("down", DOWNS, ids=lambda d: f"down{d}".replace(" ", ""))
@pytest.mark.parametrize("up", UPS, ids=lambda u: f"up{u}".replace(" ", ""))
def test_upfirdn2d_parity(cpu_ops, up, down):
    """y and dx over paddings, flip/gain and filters (float64; float32 for the StyleGAN2 filter)."""
    gen = torch.Generator().manual_seed(7)
    x64 = torch.randn(2, 3, 11, 10, generator=gen, dtype=torch.float64)  # non-square, >= 8 taps after cropping
    for _, _, pad, (flip, gain), fname in [c for c in UPFIRDN_GRID if c[0] == up and c[1] == down]:
        f = FILTERS[fname]()
        kw = dict(up=up, down=down, padding=pad, flip_filter=flip, gain=gain)
        for dtype in (torch.float64, torch.float32) if fname == "2d-1331" else (torch.float64,):
            x = x64.to(dtype)
            outs = []
            for impl in ("ref", "compiled"):
                xi = x.clone().requires_grad_(True)
                y = upfirdn2d(xi, f, impl=impl, **kw)
                if impl == "compiled":
                    assert type(y.grad_fn).__name__ == "_Upfirdn2dFnBackward"
                dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(8), dtype=dtype)
                (dx,) = torch.autograd.grad(y, xi, dy)
                outs.append((y.detach(), dx))
            _close(outs[1][0], outs[0][0], dtype, f"{kw} {fname} y")
            _close(outs[1][1], outs[0][1], dtype, f"{kw} {fname} dx")


def test_upfirdn2d_gpu_pixel_loop_on_cpu(cpu_ops):
    """The CUDA kernel's per-pixel loop (upfirdn_pixel), run on the CPU, against the reference."""
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    for up, down, pad, (flip, gain), fname in UPFIRDN_GRID:
        if fname not in ("2d-1331", "2d-rect"):
            continue
        f = FILTERS[fname]()
        g = (f * gain).double()  # scaled in float32 like the reference
        g = g if flip else g.flip([0, 1])
        (ux, uy), (dx, dy), p = _parse_scaling(up), _parse_scaling(down), _parse_padding(pad)
        y = cpu_ops.upfirdn2d_direct(x, g, ux, uy, dx, dy, *p)
        ref = _upfirdn2d_ref(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain)
        _close(y, ref, torch.float64, f"{up} {down} {pad} {flip} {gain} {fname}")


@pytest.mark.parametrize("kw,fname", [
    (dict(up=2, padding=[2, 1, 2, 1], gain=4), "2d-1331"),
    (dict(down=2, padding=1), "2d-1331"),
    (dict(up=(1, 2), down=(3, 1), padding=[-1, 2, 1, 0], flip_filter=True), "2d-rect"),
    (dict(up=2, down=2, padding=[0, 1, 2, -1], gain=2), "1d-8tap"),
])
def test_upfirdn2d_gradcheck(cpu_ops, kw, fname):
    f = FILTERS[fname]()
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)

    def fn(x):
        return upfirdn2d(x, f, impl="compiled", **kw)

    assert type(fn(x).grad_fn).__name__ == "_Upfirdn2dFnBackward"
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("fname", ["2d-1331", "1d-8tap"])
def test_resample_helpers_parity(cpu_ops, fname):
    f = FILTERS[fname]()
    x = torch.randn(2, 4, 8, 6)
    calls = [
        lambda impl: filter2d(x, f, impl=impl),
        lambda impl: filter2d(x, f, padding=[1, 0, 2, -1], gain=2, impl=impl),
        lambda impl: upsample2d(x, f, impl=impl),
        lambda impl: upsample2d(x, f, up=(2, 1), impl=impl),
        lambda impl: downsample2d(x, f, impl=impl),
        lambda impl: downsample2d(x, f, down=(1, 2), flip_filter=True, impl=impl),
    ]
    for call in calls:
        _close(call("compiled"), call("ref"), torch.float32, fname)


def test_upfirdn2d_filter_with_grad_uses_reference(cpu_ops):
    f = setup_filter([1, 3, 3, 1]).requires_grad_(True)
    x = torch.randn(1, 2, 5, 5)
    y = upfirdn2d(x, f, up=2, padding=2, impl="compiled")
    (gf,) = torch.autograd.grad(y.square().sum(), f)  # the reference gives the filter a gradient
    assert gf.shape == f.shape


def test_upfirdn2d_errors(cpu_ops):
    x = torch.randn(1, 1, 3, 3)
    with pytest.raises(ValueError):
        upfirdn2d(x, setup_filter([1, 3, 3, 1]), padding=-1, impl="compiled")  # 1x1 left for a 4x4 filter
    with pytest.raises(ValueError):
        upfirdn2d(x, None, up=0, impl="compiled")


# ---- path selection ---------------------------------------------------------------------------

def _path(y) -> str:
    return "compiled" if type(y.grad_fn).__name__ in ("_BiasActFnBackward", "_Upfirdn2dFnBackward") else "ref"


def _paths():
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    b = torch.randn(2)
    f = setup_filter([1, 3, 3, 1])
    return lambda impl=None: (_path(bias_act(x, b, act="lrelu", impl=impl)),
                              _path(upfirdn2d(x, f, up=2, padding=2, impl=impl)))


def test_cpu_defaults(cpu_ops, no_env):
    assert _paths()() == (ba_mod._CPU_DEFAULT, up_mod._CPU_DEFAULT)
    assert _paths()("ref") == ("ref", "ref")
    assert _paths()("compiled") == ("compiled", "compiled")


def test_env_forces_path(cpu_ops, monkeypatch):
    run = _paths()
    monkeypatch.setenv("STYLEMIX_OPS", "ref")
    assert run() == ("ref", "ref")
    assert run("compiled") == ("compiled", "compiled")  # an explicit impl= wins
    monkeypatch.setenv("STYLEMIX_OPS", "compiled")
    assert run() == ("compiled", "compiled")
    assert run("ref") == ("ref", "ref")
    monkeypatch.setenv("STYLEMIX_OPS", "fast")
    with pytest.raises(ValueError, match="fast"):
        run()


def test_bad_impl(no_env):
    with pytest.raises(ValueError, match="cuda"):
        bias_act(torch.randn(2, 3), act="relu", impl="cuda")
    with pytest.raises(ValueError, match="cuda"):
        upfirdn2d(torch.randn(1, 1, 4, 4), None, impl="cuda")


def test_unsupported_dtype_uses_reference(cpu_ops, no_env):
    f = setup_filter([1, 3, 3, 1])
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.randn(1, 2, 4, 4).to(dtype).requires_grad_(True)
        b = torch.randn(2).to(dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback warning: this is a plain dispatch
            y = bias_act(x, b, act="lrelu", impl="compiled")
            z = upfirdn2d(x, f, padding=1, impl="compiled")
        assert _path(y) == _path(z) == "ref"
        torch.testing.assert_close(y, _bias_act_ref(x, b, act="lrelu"))
        torch.testing.assert_close(z, _upfirdn2d_ref(x, f, padding=1))


# ---- build: fallback, cache, concurrency --------------------------------------------------------

def _break_toolchain(kind, tmp_path, monkeypatch):
    if kind == "compile-error":
        (tmp_path / "broken.cpp").write_text("this is not C++;\n")
        return ["broken.cpp"]
    (tmp_path / "ok.cpp").write_text('extern "C" int stylemix_ok() { return 1; }\n')
    if kind == "no-compiler":
        monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    elif kind == "no-ninja":
        from torch.utils import cpp_extension

        def no_ninja():
            raise RuntimeError("Ninja is required to load C++ extensions")

        monkeypatch.setattr(cpp_extension, "verify_ninja_availability", no_ninja)
    return ["ok.cpp"]


@pytest.mark.parametrize("kind", ["compile-error", "no-compiler", "no-ninja"])
def test_failed_build_warns_once_and_falls_back(kind, tmp_path, monkeypatch, no_env):
    sources = _break_toolchain(kind, tmp_path, monkeypatch)
    broken = _build.Plugin("stylemix_cpu_broken", sources, [], ops=["bias_act", "upfirdn2d"], cuda=False,
                           csrc=tmp_path)
    monkeypatch.setattr(_build, "cpu_plugin", broken)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    b = torch.randn(3)
    f = setup_filter([1, 3, 3, 1])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        y1 = bias_act(x, b, act="lrelu", clamp=0.5, impl="compiled")
        y2 = upfirdn2d(x, f, up=2, padding=2, impl="compiled")
        y3 = bias_act(x, b, act="tanh")  # the default path tries the same build: no second warning
        y4 = upfirdn2d(x, f, down=2, impl="compiled")
    ours = [w for w in rec if "could not build" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in rec]
    assert issubclass(ours[0].category, RuntimeWarning) and broken.error
    torch.testing.assert_close(y1, _bias_act_ref(x, b, act="lrelu", clamp=0.5))
    torch.testing.assert_close(y2, _upfirdn2d_ref(x, f, up=2, padding=2))
    torch.testing.assert_close(y3, _bias_act_ref(x, b, act="tanh"))
    torch.testing.assert_close(y4, _upfirdn2d_ref(x, f, down=2))
    assert _path(y1) == _path(y2) == "ref"
    y1.sum().backward()  # the reference path is differentiable as usual
    assert x.grad is not None


def test_cache_location_and_key(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setenv("STYLEMIX_CACHE", str(tmp_path / "c"))
    assert _build.cache_root() == tmp_path / "c" / "torch_extensions"
    monkeypatch.delenv("STYLEMIX_CACHE")
    assert _build.cache_root() == pathlib.Path("~/.cache/stylemix/torch_extensions").expanduser()
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "t"))
    assert _build.cache_root() == tmp_path / "t"
    # the key follows the sources (headers included) and the flags
    for name in _build.cpu_plugin.sources + _build.cpu_plugin.headers:
        shutil.copy(_build.CSRC / name, tmp_path / name)
    p = _build.Plugin("k", _build.cpu_plugin.sources, _build.cpu_plugin.headers, ops=[], cuda=False, csrc=tmp_path)
    k0 = p.key()
    with open(tmp_path / _build.cpu_plugin.headers[0], "a") as fh:
        fh.write("\n// changed\n")
    k1 = p.key()
    p2 = _build.Plugin("k", p.sources, p.headers, ops=[], cuda=False, csrc=tmp_path, extra_cflags=["-O1"])
    assert len({k0, k1, p2.key()}) == 3


_BUILD_SCRIPT = textwrap.dedent("""
    import json, os, pathlib, sys, time
    import torch
    import stylemix.ops, stylemix.ops.bias_act, stylemix.ops.upfirdn2d
    from stylemix.ops import _build
    # importing compiled nothing and loaded no library
    assert not _build.cpu_plugin.built and _build.cpu_plugin.error is None, "built at import"
    assert not _build._LOADED and not any("stylemix" in p for p in torch.ops.loaded_libraries), "loaded at import"
    csrc, barrier, n = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3])
    plugin = _build.Plugin("stylemix_tiny", ["tiny.cpp"], [], ops=[], cuda=False, csrc=csrc)
    (barrier / str(time.time())).touch()
    while len(list(barrier.iterdir())) < n:  # all processes start building at the same moment
        time.sleep(0.002)
    ok = plugin.get() is not None
    print(json.dumps({"ok": ok, "error": plugin.error, "dir": str(plugin.build_dir)}))
""")


def test_processes_build_at_once_despite_a_stale_lock(tmp_path):
    """Importing stylemix.ops compiles nothing. Two processes build one extension at the same moment,
    in a directory where a builder killed mid-build left cpp_extension's lock file: both load it,
    it is compiled once, nothing hangs."""
    csrc = tmp_path / "csrc"
    csrc.mkdir()
    (csrc / "tiny.cpp").write_text('extern "C" int stylemix_tiny() { return 42; }\n')
    plugin = _build.Plugin("stylemix_tiny", ["tiny.cpp"], [], ops=[], cuda=False, csrc=csrc)
    build_dir = tmp_path / "ext" / f"stylemix_tiny_{plugin.key()}"
    build_dir.mkdir(parents=True)
    (build_dir / "lock").write_text("")  # stale: nobody holds it
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"), PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", _BUILD_SCRIPT, str(csrc), str(barrier), "2"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=180)
        assert p.returncode == 0, stderr
        outs.append(last_json(stdout))
    assert all(o["ok"] and o["error"] is None for o in outs), outs
    assert outs[0]["dir"] == outs[1]["dir"] == str(build_dir)
    log = (build_dir / ".ninja_log").read_text()
    assert log.count("tiny.o") == 1, log  # compiled once; the other process found it built
    assert not (build_dir / "lock").exists()


# ---- nvcc (slow; needs the CUDA toolkit, not a GPU) -----------------------------------------------

def _cuda_home() -> pathlib.Path | None:
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (pathlib.Path(home) / "include" / "cuda_runtime.h").exists():
            return pathlib.Path(home)
    return None


def _nvcc() -> str | None:
    home = _cuda_home()
    if home is not None and (home / "bin" / "nvcc").exists():
        return str(home / "bin" / "nvcc")
    return shutil.which("nvcc")


@pytest.mark.slow
@pytest.mark.parametrize("source", ["bias_act_cuda.cu", "upfirdn2d_cuda.cu"])
def test_cuda_kernels_compile_with_nvcc(source, tmp_path):
    """The kernel files include no torch header, so plain nvcc compiles them (flags as cpp_extension)."""
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found")
    cmd = [nvcc, "-std=c++17", "-O3", "-c", str(_build.CSRC / source), "-o", str(tmp_path / "k.o"),
           "-I", str(_build.CSRC), "-Xcompiler", "-fPIC", "-D__CUDA_NO_HALF_OPERATORS__",
           "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr


@pytest.mark.slow
def test_cuda_binding_compiles(tmp_path):
    """Syntax check of cuda_ops.cpp against this torch's headers and the CUDA toolkit's (a CPU-only
    torch lacks one generated c10/cuda header; a stub stands in for it)."""
    cuda_home = _cuda_home()
    cxx = shutil.which(os.environ.get("CXX", "c++"))
    if cuda_home is None or cxx is None:
        pytest.skip("needs the CUDA toolkit's headers and a C++ compiler")
    from torch.utils import cpp_extension

    includes = cpp_extension.include_paths()
    stub = tmp_path / "stub"
    if not any(pathlib.Path(p, "c10/cuda/impl/cuda_cmake_macros.h").exists() for p in includes):
        (stub / "c10/cuda/impl").mkdir(parents=True)
        (stub / "c10/cuda/impl/cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    cuda_include = cuda_home / "include"
    cmd = [cxx, "-std=c++20", "-fsyntax-only", "-DSTYLEMIX_NS=stylemix_cuda_check", "-I", str(_build.CSRC),
           "-I", str(stub), "-isystem", str(cuda_include)]
    for p in includes:
        cmd += ["-isystem", p]
    out = subprocess.run(cmd + [str(_build.CSRC / "cuda_ops.cpp")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


# ---- CUDA (skipped without a GPU by conftest.py) ---------------------------------------------------

@pytest.fixture(scope="module")
def cuda_ops():
    ops = _build.cuda_plugin.get()
    if ops is None:
        pytest.fail(f"compiled CUDA ops failed to build: {_build.cuda_plugin.error}")
    return ops


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64], ids=["f16", "f32", "f64"])
@pytest.mark.parametrize("variant", range(len(BIAS_ACT_VARIANTS)), ids=["default", "alpha-gain", "gain-clamp"])
@pytest.mark.parametrize("act", ACTS)
def test_cuda_bias_act_parity(cuda_ops, act, variant, dtype):
    kw = dict(BIAS_ACT_VARIANTS[variant], act=act)
    for dim, shape, with_b, contiguous in BIAS_ACT_LAYOUTS:
        gen = torch.Generator().manual_seed(5)
        x = (torch.randn(shape, generator=gen) * 2).to("cuda", dtype)
        if not contiguous:
            x = x.transpose(0, -1).contiguous().transpose(0, -1)
        b = torch.randn(shape[dim], generator=gen).to("cuda", dtype) if with_b else None
        dy = torch.randn(shape, generator=gen).to("cuda", dtype)
        r = [torch.randn(shape, generator=gen).to("cuda", dtype)] + (
            [torch.randn(shape[dim], generator=gen).to("cuda", dtype)] if with_b else [])
        if dtype == torch.float16:  # values and first derivatives; the reference runs in float32
            xr, br = x.float(), None if b is None else b.float()
            y = bias_act(x, b, dim=dim, impl="compiled", **kw)
            _close(y.float(), _bias_act_ref(xr, br, dim=dim, **kw), torch.float16, f"{act} {kw}", scale=4)
            continue
        ref = _bias_act_derivatives("ref", x, b, dy, r, dict(kw, dim=dim))
        cmp = _bias_act_derivatives("compiled", x, b, dy, r, dict(kw, dim=dim))
        assert type(cmp[0].grad_fn).__name__ == "_BiasActFnBackward"
        for i, (a, c) in enumerate(zip(ref, cmp)):
            _close(c if c is None else c.detach(), a if a is None else a.detach(), dtype, f"{act} {kw} #{i}",
                   scale=x.numel())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64], ids=["f16", "f32", "f64"])
def test_cuda_upfirdn2d_parity(cuda_ops, dtype):
    for case in UPFIRDN_GRID:
        up, down, pad, (flip, gain), fname = case
        f = FILTERS[fname]()
        f = None if f is None else f.cuda()
        kw = dict(up=up, down=down, padding=pad, flip_filter=flip, gain=gain)
        x = torch.randn(2, 3, 11, 10, generator=torch.Generator().manual_seed(7)).to("cuda", dtype)
        xr = x.float() if dtype == torch.float16 else x
        xc = x.clone().requires_grad_(True)
        xr = xr.clone().requires_grad_(True)
        y = upfirdn2d(xc, f, impl="compiled", **kw)
        assert type(y.grad_fn).__name__ == "_Upfirdn2dFnBackward"
        yr = _upfirdn2d_ref(xr, f, **kw)
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(8)).to("cuda", dtype)
        (dx,) = torch.autograd.grad(y, xc, dy)
        (dxr,) = torch.autograd.grad(yr, xr, dy.to(yr.dtype))
        _close(y.to(yr.dtype), yr, dtype, f"{case} y", scale=4)
        _close(dx.to(yr.dtype), dxr, dtype, f"{case} dx", scale=4)


@pytest.mark.gpu
def test_cuda_gradcheck_and_default(cuda_ops, no_env):
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, device="cuda", requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, device="cuda", requires_grad=True)
    f = setup_filter([1, 3, 3, 1], device="cuda")
    for act in ACTS:
        fn = lambda x, b: bias_act(x, b, act=act, gain=1.3, clamp=0.9, impl="compiled")  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, b)) and torch.autograd.gradgradcheck(fn, (x, b))
    for kw in (dict(up=2, padding=[2, 1, 2, 1]), dict(down=2, padding=[-1, 2, 1, 0], flip_filter=True)):
        fn = lambda x: upfirdn2d(x, f, impl="compiled", **kw)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x,)) and torch.autograd.gradgradcheck(fn, (x,))
    assert _path(bias_act(x, b, act="lrelu")) == "compiled"
    assert _path(upfirdn2d(x, f, up=2)) == "compiled"
