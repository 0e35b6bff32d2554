"""Compiled vs reference speed of bias_act and upfirdn2d at the shapes of a StyleGAN2 generator.

Shapes: config-f widths (channel_base 32768, max 512) at 256x256, batch 4:
  bias_act   every synthesis layer (lrelu, gain sqrt(2), clamp 256) at 512 ch x 4..64 px, 256 x 128,
             128 x 256; every toRGB (linear, clamp 256, 3 ch); the 8 mapping layers ([4, 512] lrelu).
  upfirdn2d  G: the 4x4 [1,3,3,1] filter after each transposed conv (up=2 layers: input res+1, pad 1,
             gain 4) and the RGB skip upsampling (up=2, 3 ch); D (resnet, mirrored widths): the
             filter before each stride-2 conv (pad 2) and the skip downsampling (down=2, pad 1).
Each repeat times forward + backward (w.r.t. every input) of all shapes for one path, the paths
interleaved; the table gives the median over repeats. Last line: one JSON object with
speedup = reference time / compiled time.

    python benchmarks/bench_ops.py [--reps 3] [--threads N] [--device cpu|cuda|all]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import importlib  # noqa: E402

bias_act_mod = importlib.import_module("stylemix.ops.bias_act")
upfirdn2d_mod = importlib.import_module("stylemix.ops.upfirdn2d")
from stylemix.ops._build import cpu_plugin, cuda_plugin  # noqa: E402
from stylemix.ops.bias_act import bias_act  # noqa: E402
from stylemix.ops.upfirdn2d import setup_filter, upfirdn2d  # noqa: E402

BATCH = 4
RES = 256


def channels(res: int) -> int:
    return min(32768 // res, 512)


def bias_act_cases():
    """(label, count, shape, kwargs) of every bias_act call in one generator pass."""
    cases = [("mapping fc", 8, (BATCH, 512), dict(act="lrelu", gain=None, clamp=None))]
    res = 4
    while res <= RES:
        layers = 1 if res == 4 else 2
        cases.append((f"synth {res}px", layers, (BATCH, channels(res), res, res),
                      dict(act="lrelu", gain=math.sqrt(2), clamp=256.0)))
        cases.append((f"torgb {res}px", 1, (BATCH, 3, res, res), dict(act="linear", gain=None, clamp=256.0)))
        res *= 2
    return cases


def upfirdn2d_cases():
    """(label, count, shape, kwargs) of every upfirdn2d call in one G pass and one D pass."""
    cases = []
    res = 8
    while res <= RES:
        c = channels(res)
        cases.append((f"G filter {res}px", 1, (BATCH, c, res + 1, res + 1), dict(padding=1, gain=4)))
        cases.append((f"G rgb up {res}px", 1, (BATCH, 3, res // 2, res // 2),
                      dict(up=2, padding=[2, 1, 2, 1], gain=4)))
        res *= 2
    res = RES
    while res >= 8:
        c = channels(res)
        cases.append((f"D filter {res}px", 1, (BATCH, c, res, res), dict(padding=2)))
        cases.append((f"D skip down {res}px", 1, (BATCH, c, res, res), dict(down=2, padding=1)))
        res //= 2
    return cases


def make_inputs(cases, device, kind):
    gen = torch.Generator().manual_seed(0)
    out = []
    for label, count, shape, kw in cases:
        x = torch.randn(shape, generator=gen).to(device).requires_grad_(True)
        if kind == "bias_act":
            b = torch.randn(shape[1], generator=gen).to(device).requires_grad_(True)
            y = bias_act(x, b, impl="ref", **kw)
            inputs = (x, b)
        else:
            b = None
            y = upfirdn2d(x, FILTER.to(device), impl="ref", **kw)
            inputs = (x,)
        dy = torch.randn(y.shape, generator=gen).to(device)
        out.append((label, count, x, b, inputs, dy, kw))
    return out


def run_case(kind, case, impl):
    label, count, x, b, inputs, dy, kw = case
    for _ in range(count):
        if kind == "bias_act":
            y = bias_act(x, b, impl=impl, **kw)
        else:
            y = upfirdn2d(x, FILTER.to(x.device), impl=impl, **kw)
        torch.autograd.grad(y, inputs, dy)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(kind, cases, device, reps):
    """{impl: {label: [seconds per repeat]}}, the two paths interleaved within every repeat."""
    times = {impl: {c[0]: [] for c in cases} for impl in ("ref", "compiled")}
    for impl in ("ref", "compiled"):  # warm-up (and the one-time build)
        for case in cases:
            run_case(kind, case, impl)
    for rep in range(reps):
        order = ("ref", "compiled") if rep % 2 == 0 else ("compiled", "ref")
        for impl in order:
            for case in cases:
                sync(device)
                t0 = time.perf_counter()
                run_case(kind, case, impl)
                sync(device)
                times[impl][case[0]].append(time.perf_counter() - t0)
    return times


def report(kind, cases, times, device):
    print(f"\n{kind} on {device.type}: forward + backward, median of {len(next(iter(times['ref'].values())))}")
    print(f"{'case':<22}{'count':>6}{'ref ms':>11}{'compiled ms':>13}{'speedup':>9}")
    tot_ref = tot_cmp = 0.0
    for label, count, *_ in cases:
        r = statistics.median(times["ref"][label])
        c = statistics.median(times["compiled"][label])
        tot_ref += r
        tot_cmp += c
        print(f"{label:<22}{count:>6}{r * 1e3:>11.2f}{c * 1e3:>13.2f}{r / c:>9.2f}")
    print(f"{'total':<22}{'':>6}{tot_ref * 1e3:>11.2f}{tot_cmp * 1e3:>13.2f}{tot_ref / tot_cmp:>9.2f}")
    return tot_ref, tot_cmp


FILTER = setup_filter([1, 3, 3, 1])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3, help="timed repeats per path (median reported)")
    ap.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    devices = []
    if args.device in ("cpu", "all"):
        devices.append(torch.device("cpu"))
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, batch {BATCH}, {RES}x{RES} config-f")

    result: dict = {}
    for device in devices:
        plugin = cpu_plugin if device.type == "cpu" else cuda_plugin
        t0 = time.perf_counter()
        plugin.get()
        result[f"build_or_load_s_{device.type}"] = round(time.perf_counter() - t0, 2)
        if not plugin.built:
            print(f"compiled ops unavailable on {device.type}: {plugin.error}")
            result[f"compiled_{device.type}"] = False
            continue
        d = device.type
        for kind in ("bias_act", "upfirdn2d"):
            cases = make_inputs(bias_act_cases() if kind == "bias_act" else upfirdn2d_cases(), device, kind)
            times = measure(kind, cases, device, args.reps)
            tot_ref, tot_cmp = report(kind, cases, times, device)
            result[f"{kind}_{d}_ref_ms"] = round(tot_ref * 1e3, 2)
            result[f"{kind}_{d}_compiled_ms"] = round(tot_cmp * 1e3, 2)
            result[f"{kind}_{d}_speedup"] = round(tot_ref / tot_cmp, 3)
            if d == "cpu":
                default = (bias_act_mod if kind == "bias_act" else upfirdn2d_mod)._CPU_DEFAULT
                result[f"{kind}_cpu_default"] = default
                result[f"{kind}_cpu_faster"] = "compiled" if tot_cmp < tot_ref else "ref"
                result[f"{kind}_cpu_default_speedup"] = round(
                    tot_ref / (tot_cmp if default == "compiled" else tot_ref), 3)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
