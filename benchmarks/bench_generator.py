"""Generator speed on CPU: seconds per image, batch 1, fp32, config-f widths.

Measures, per resolution (G in eval mode, noise_mode='const'):
- fwd:    `G(z, c)` under `torch.no_grad()` (mapping + synthesis);
- fwdbwd: `G.synthesis(ws)` forward plus backward of a scalar loss w.r.t. `ws` only (parameters
          frozen, as in projection/inversion).

Side by side (interleaved runs), the same network with `fused_modconv=True` everywhere ("official
policy": the official code's choice in eval mode) shows what the CPU-specific modulated-conv policy
gains. For fwd both take the same path (batch 1 without autograd is fused anyway), so that ratio
shows the measurement noise.
The official StyleGAN2-ADA code itself, measured earlier on these machines (DESIGN.md), is listed for
reference; those numbers were not taken in this run, so their ratio is only indicative (the CPU is
shared: check the load average printed with the table).

Warm-up runs first, then the median of `--repeats` runs. Prints a table, then one JSON object as the
last line: {"fwd_s_64": ..., "fwdbwd_s_64": ..., "fwd_s_256": ..., ...}.

    python benchmarks/bench_generator.py --res 64 256
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stylemix.networks.stylegan2 import Generator  # noqa: E402

# Official StyleGAN2-ADA code on these machines (DESIGN.md): (forward s, forward+backward s).
OFFICIAL_DESIGN_MD = {256: (0.58, 1.73), 1024: (2.6, 6.9)}


def build(res: int) -> Generator:
    """Config-f widths (FFHQ 1024 config: channel_base 32768, channel_max 512, 8 mapping layers)."""
    G = Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=res, img_channels=3,
                  mapping_kwargs=dict(num_layers=8),
                  synthesis_kwargs=dict(channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256))
    return G.eval().requires_grad_(False)


def make_runs(G: Generator, *, fused_modconv):
    """(forward, forward+backward) closures for batch 1."""
    z = torch.randn([1, G.z_dim])
    c = torch.zeros([1, 0])
    with torch.no_grad():
        ws0 = G.mapping(z, c)

    def fwd():
        with torch.no_grad():
            G(z, c, noise_mode="const", fused_modconv=fused_modconv)

    def fwdbwd():
        ws = ws0.clone().requires_grad_(True)
        img = G.synthesis(ws, noise_mode="const", fused_modconv=fused_modconv)
        img.square().mean().backward()
        assert ws.grad is not None

    return fwd, fwdbwd


def time_interleaved(fns: dict, *, warmup: int, repeats: int) -> dict:
    """Median seconds per closure; the closures alternate so that load changes hit all of them."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--res", type=int, nargs="+", default=[64, 256, 1024], help="resolutions to measure")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs before measuring")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs (median reported)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--no-compare", action="store_true", help="skip the fused_modconv=True comparison")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    result = {}
    rows = []
    for res in args.res:
        G = build(res)
        fwd_fns, fb_fns = {}, {}
        fwd_fns["fwd"], fb_fns["fb"] = make_runs(G, fused_modconv=None)
        if not args.no_compare:
            fwd_fns["fused_fwd"], fb_fns["fused_fb"] = make_runs(G, fused_modconv=True)
        t = time_interleaved(fwd_fns, warmup=args.warmup, repeats=args.repeats)
        t.update(time_interleaved(fb_fns, warmup=args.warmup, repeats=args.repeats))
        t_fwd, t_fb = t["fwd"], t["fb"]
        o_fwd, o_fb = t.get("fused_fwd", float("nan")), t.get("fused_fb", float("nan"))
        result[f"fwd_s_{res}"] = round(t_fwd, 4)
        result[f"fwdbwd_s_{res}"] = round(t_fb, 4)
        rows.append((res, t_fwd, t_fb, o_fwd, o_fb))
        del G

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"threads={torch.get_num_threads()} torch={torch.__version__} batch=1 fp32 config-f widths "
          f"load_avg_1min={load:.2f}")
    print(f"{'res':>5} | {'fwd s':>7} {'f+b s':>7} | {'fused fwd':>9} {'fused f+b':>9} {'ratio':>5} {'ratio':>5} | "
          f"{'DESIGN.md official':>18} {'ratio':>5} {'ratio':>5}")
    for res, t_fwd, t_fb, o_fwd, o_fb in rows:
        line = (f"{res:>5} | {t_fwd:7.3f} {t_fb:7.3f} | {o_fwd:9.3f} {o_fb:9.3f} {o_fwd / t_fwd:5.2f} "
                f"{o_fb / t_fb:5.2f} | ")
        if res in OFFICIAL_DESIGN_MD:
            of, ob = OFFICIAL_DESIGN_MD[res]
            line += f"{of:8.2f} {ob:9.2f} {of / t_fwd:5.2f} {ob / t_fb:5.2f}"
        else:
            line += f"{'-':>18} {'-':>5} {'-':>5}"
        print(line)
    print("ratio = other / ours (> 1: ours faster); fused fwd is the same computation as ours (noise check)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
