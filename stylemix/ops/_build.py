"""Build and load the compiled ops on first use (never at import time).

The C++ (CPU) and CUDA sources in `csrc/` are compiled with `torch.utils.cpp_extension.load` and
ninja into a build directory named after a hash of everything that affects the binary: the
sources, the compiler flags, the torch version and build (CUDA version, C++ ABI), Python and the
platform. Builds are cached across processes under

    $TORCH_EXTENSIONS_DIR/<name>_<hash>             when TORCH_EXTENSIONS_DIR is set, else
    $STYLEMIX_CACHE/torch_extensions/<name>_<hash>  (STYLEMIX_CACHE defaults to ~/.cache/stylemix).

Concurrency: cpp_extension serialises builds with a lock *file* created with O_EXCL; a second
process polls until the file is gone and then imports the result. That lock is never released if
the building process is killed (every later process then waits forever), and a waiter imports
without knowing whether the build worked. So the build also holds an OS lock (`fcntl.flock`,
released by the kernel when the process dies) on `<build dir>/stylemix.lock`; whoever holds it is
the only stylemix builder of that directory, so a leftover cpp_extension `lock` file is stale and
removed before building. The second process blocks on the OS lock, then finds the build done
(ninja has nothing to do) and loads it.

A failed build (no compiler, no ninja, a compile error, no CUDA toolkit) warns once per plugin and
process; callers then use the reference path. `Plugin.reset()` forgets the outcome (for tests).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import platform
import sys
import threading
import warnings
from typing import Any

import torch

CSRC = pathlib.Path(__file__).resolve().parent / "csrc"
_LOADED: dict[str, Any] = {}  # library namespace -> ops, for the libraries this process has loaded


def cache_root() -> pathlib.Path:
    """Directory that holds one build directory per (plugin, hash)."""
    env = os.environ.get("TORCH_EXTENSIONS_DIR")
    if env:
        return pathlib.Path(env).expanduser()
    base = os.environ.get("STYLEMIX_CACHE") or os.path.join("~", ".cache", "stylemix")
    return pathlib.Path(base).expanduser() / "torch_extensions"


@contextlib.contextmanager
def _os_lock(path: pathlib.Path):
    """Exclusive lock held by this process until the block ends (or the process dies).

    Yields True when held; False where the platform or file system has no such lock (then only
    cpp_extension's own lock file protects the build)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield False
        return
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        except OSError:  # e.g. a network file system without locking
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _gpu_archs() -> str:
    """The GPU architectures a CUDA build targets (cpp_extension builds for the visible GPUs unless
    TORCH_CUDA_ARCH_LIST says otherwise), so a cache shared by different machines stays correct."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    try:
        return repr(sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}))
    except Exception:  # noqa: BLE001 - no usable CUDA: the build fails later with a clear reason
        return ""


def _short(text: str, limit: int = 1500) -> str:
    """The informative part of a (compiler) message: its error lines, else its end."""
    text = str(text).strip()
    errors = [line.strip() for line in text.splitlines() if "error" in line.lower() and len(line) < 400]
    if errors:
        text = " | ".join(errors[:8])
    return text if len(text) <= limit else "..." + text[-limit:]


class Plugin:
    """One compiled library: its sources, flags, lazily built state and the warn-once fallback."""

    def __init__(self, name: str, sources: list[str], headers: list[str], *, ops: list[str], cuda: bool,
                 extra_cflags: list[str] | None = None, extra_cuda_cflags: list[str] | None = None,
                 extra_ldflags: list[str] | None = None, csrc: pathlib.Path = CSRC):
        self.name = name  # base name; the library namespace and directory add the hash
        self.csrc = pathlib.Path(csrc)
        self.sources = list(sources)  # files in csrc that are compiled
        self.headers = list(headers)  # files in csrc that are included (hashed, not compiled)
        self.ops = list(ops)  # op names the library registers in its namespace
        self.cuda = cuda  # build with nvcc (needs a CUDA build of torch)
        self.extra_cflags = list(extra_cflags or [])
        self.extra_cuda_cflags = list(extra_cuda_cflags or [])
        self.extra_ldflags = list(extra_ldflags or [])
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget a previous build or failure (the next `get()` tries again and may warn again)."""
        self._ops: Any = None
        self.error: str | None = None  # why the build failed, None if it did not (yet)
        self.build_dir: pathlib.Path | None = None

    def key(self) -> str:
        """Hash of everything that changes the binary."""
        h = hashlib.sha256()
        for fname in sorted(self.sources + self.headers):
            h.update(fname.encode())
            h.update((self.csrc / fname).read_bytes())
        facts = [
            torch.__version__, str(torch.version.cuda), str(getattr(torch.version, "git_version", "")),
            str(torch._C._GLIBCXX_USE_CXX11_ABI), sys.version.split()[0], platform.machine(), platform.system(),
            os.environ.get("CXX", ""),
            repr(self.extra_cflags), repr(self.extra_cuda_cflags), repr(self.extra_ldflags), str(self.cuda),
            _gpu_archs() if self.cuda else "",
        ]
        h.update("\0".join(facts).encode())
        return h.hexdigest()[:16]

    @property
    def built(self) -> bool:
        return self._ops is not None

    def get(self) -> Any:
        """The op namespace (torch.ops.<ns>) or None when the build failed (warned once)."""
        if self._ops is not None or self.error is not None:
            return self._ops
        with self._lock:
            if self._ops is None and self.error is None:
                try:
                    self._ops = self._build()
                except Exception as exc:  # noqa: BLE001 - any failure means: use the reference
                    self.error = f"{type(exc).__name__}: {_short(exc)}"
                    warnings.warn(
                        f"stylemix.ops: could not build the compiled {self.name} ops, using the PyTorch "
                        f"reference path instead (slower). Reason: {self.error}",
                        RuntimeWarning, stacklevel=4)
        return self._ops

    def _build(self) -> Any:
        from torch.utils import cpp_extension

        if self.cuda and not (torch.cuda.is_available() and torch.version.cuda):
            raise RuntimeError("this torch build has no CUDA support")
        cpp_extension.verify_ninja_availability()
        key = self.key()
        ns = f"{self.name}_{key}"  # unique library namespace: two builds can live in one process
        if ns in _LOADED:
            return _LOADED[ns]  # loaded earlier in this process (e.g. before a reset())
        build_dir = cache_root() / ns
        build_dir.mkdir(parents=True, exist_ok=True)
        self.build_dir = build_dir
        define = [f"-DSTYLEMIX_NS={ns}"]
        with _os_lock(build_dir / "stylemix.lock") as locked:
            stale = build_dir / "lock"  # cpp_extension's lock file; while we hold the OS lock, no
            if locked and stale.exists():  # other builder is alive, so a leftover one is stale
                stale.unlink()
            cpp_extension.load(
                name=ns,
                sources=[str(self.csrc / s) for s in self.sources],
                extra_cflags=self.extra_cflags + define,
                extra_cuda_cflags=self.extra_cuda_cflags + define,
                extra_ldflags=self.extra_ldflags,
                extra_include_paths=[str(self.csrc)],
                build_directory=str(build_dir),
                with_cuda=self.cuda,
                is_python_module=False,
                verbose=False,
            )
        _LOADED[ns] = self._lookup(ns)
        return _LOADED[ns]

    def _lookup(self, ns: str) -> Any:
        lib = getattr(torch.ops, ns)
        for op in self.ops:
            getattr(lib, op)  # raises if the library did not register it
        return lib


# Portable flags (no -march: the binary may be cached on a shared disk and used by other machines;
# the upfirdn2d rows also carry an AVX2 clone picked at load time). -fno-trapping-math lets GCC
# turn the activations' selects into vector blends. OpenMP drives at::parallel_for (GCC/Linux);
# it links the libgomp that torch has already loaded (same soname), so there is one thread pool.
_OPENMP = ["-fopenmp"] if sys.platform.startswith("linux") else []
_CPU_CFLAGS = ["-O3", "-fno-trapping-math"] + _OPENMP
_CPU_LDFLAGS = list(_OPENMP)

cpu_plugin = Plugin(
    "stylemix_cpu",
    sources=["ops_cpu.cpp", "bias_act_cpu.cpp", "upfirdn2d_cpu.cpp"],
    headers=["bias_act_math.h", "upfirdn2d_index.h", "cpu_kernels.h"],
    ops=["bias_act", "upfirdn2d"], cuda=False, extra_cflags=_CPU_CFLAGS, extra_ldflags=_CPU_LDFLAGS)

cuda_plugin = Plugin(
    "stylemix_cuda",
    sources=["cuda_ops.cpp", "bias_act_cuda.cu", "upfirdn2d_cuda.cu"],
    headers=["bias_act_math.h", "upfirdn2d_index.h", "cuda_launchers.h"],
    ops=["bias_act", "upfirdn2d"], cuda=True, extra_cflags=["-O3"], extra_cuda_cflags=["-O3"])


def plugin_for(device: torch.device) -> Plugin | None:
    """The plugin that serves tensors on `device` (None where there is no compiled path)."""
    if device.type == "cpu":
        return cpu_plugin
    if device.type == "cuda":
        return cuda_plugin
    return None


IMPLS = (None, "ref", "compiled")


def select_ops(impl: str | None, device: torch.device, *, cpu_default: str) -> Any:
    """Which path serves one call: the compiled op namespace, or None for the reference path.

    impl: None (the default for `device`, which STYLEMIX_OPS=ref|compiled overrides), 'ref' or
    'compiled'. An explicit `impl=` argument wins over STYLEMIX_OPS. The default is the compiled
    path on CUDA and `cpu_default` on the CPU. 'compiled' falls back to the reference (None) when
    the build failed (one warning per process) or the device has no compiled path.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be None, 'ref' or 'compiled', got {impl!r}")
    if impl is None:
        env = os.environ.get("STYLEMIX_OPS", "").strip().lower()
        if env not in ("", "auto", "ref", "compiled"):
            raise ValueError(f"STYLEMIX_OPS must be 'ref', 'compiled' or unset, got {env!r}")
        if env in ("ref", "compiled"):
            impl = env
    if impl is None:
        impl = {"cuda": "compiled", "cpu": cpu_default}.get(device.type, "ref")
    if impl == "ref":
        return None
    plugin = plugin_for(device)
    return plugin.get() if plugin is not None else None
