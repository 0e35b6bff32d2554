"""Layer-wise style mixing of W+ latents, named layer groups and per-layer previews.

A StyleGAN2 latent `ws` has shape [N, num_ws, w_dim] (or [num_ws, w_dim] for one latent). Row i
drives one layer of the synthesis network. In the official layout (`SynthesisNetwork.forward`)
block `b4` reads rows 0 (conv1) and 1 (torgb); every higher block reads its `num_conv +
num_torgb` rows starting where the previous block's convs stopped, so a block's torgb shares its
row with the next block's conv0. Only the last block's torgb has a row of its own (the last row).

`layer_resolutions` gives, for each row, the resolution of the block whose *conv* uses it (the
last row, which only the final torgb reads, maps to the top resolution):

    num_ws=8  (32 px):   [4, 8, 8, 16, 16, 32, 32, 32]
    num_ws=18 (1024 px): [4, 8, 8, 16, 16, 32, 32, ..., 1024, 1024, 1024]

Named groups follow those resolutions: 'coarse' = 4-8 px, 'middle' = 16-32 px, 'fine' = 64 px
and up. Note this differs by one row from the StyleGAN (v1) paper's "rows 0-3 are coarse": in the
StyleGAN2 layout row 3 already feeds the 16 px block. Groups with no rows at a low resolution
(e.g. 'fine' at 32 px) are left out of `layer_groups`, and asking `mix` for them is an error.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import numpy as np
import torch

__all__ = [
    "GROUP_NAMES",
    "layer_groups",
    "layer_label",
    "layer_rows",
    "layer_resolutions",
    "layer_strip",
    "mix",
    "style_mix_grid",
    "to_uint8",
]

#: group name -> (lowest, highest) block resolution in pixels, inclusive
GROUP_RANGES: dict[str, tuple[int, float]] = {
    "coarse": (4, 8),
    "middle": (16, 32),
    "fine": (64, math.inf),
}
GROUP_NAMES = tuple(GROUP_RANGES)


# ----------------------------------------------------------------------------------------------
# Images


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """Generator output in [-1, 1], float NCHW tensor -> uint8 NHWC numpy array.

    Official rounding: `(x * 127.5 + 128).clamp(0, 255)` then truncation to uint8. A single
    CHW image gives HWC.
    """
    if not isinstance(img, torch.Tensor) or img.ndim not in (3, 4):
        raise ValueError(f"to_uint8 expects an NCHW (or CHW) tensor, got "
                         f"{tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__}")
    out = (img.detach() * 127.5 + 128).clamp(0, 255).to("cpu", torch.uint8)
    perm = (0, 2, 3, 1) if out.ndim == 4 else (1, 2, 0)
    return out.permute(*perm).numpy()


# ----------------------------------------------------------------------------------------------
# Layer layout


def _synthesis_of(obj):
    """G, G.synthesis or anything with `block_resolutions` and `b<res>` blocks -> that network."""
    syn = getattr(obj, "synthesis", obj)
    if not hasattr(syn, "block_resolutions") or not hasattr(syn, "num_ws"):
        raise ValueError(f"expected a Generator or SynthesisNetwork, got {type(obj).__name__}")
    return syn


def _check_num_ws(num_ws) -> int:
    if isinstance(num_ws, bool) or not isinstance(num_ws, numbers.Integral):
        raise ValueError(f"num_ws must be an int (or pass G), got {num_ws!r}")
    num_ws = int(num_ws)
    # official layout: num_ws = 2 * log2(resolution) - 2, i.e. even and >= 2
    if num_ws < 2 or num_ws % 2:
        raise ValueError(f"num_ws={num_ws} is not a StyleGAN2 layout (expected an even number >= 2, "
                         f"2*log2(resolution) - 2)")
    return num_ws


def layer_resolutions(num_ws_or_G) -> list[int]:
    """The resolution (px) each ws row controls: row i -> the block whose conv reads it; the last
    row (read only by the final torgb) -> the top resolution.

    Given G (or G.synthesis) the answer is read from its blocks; given an int it assumes the
    official layout (num_ws = 2*log2(res) - 2).
    """
    if isinstance(num_ws_or_G, numbers.Integral) and not isinstance(num_ws_or_G, bool):
        num_ws = _check_num_ws(num_ws_or_G)
        top = 2 ** ((num_ws + 2) // 2)
        res = [4] + [2 ** ((i + 1) // 2 + 2) for i in range(1, num_ws - 1)] + [top]
        return res
    syn = _synthesis_of(num_ws_or_G)
    res: list[int] = []
    for r in syn.block_resolutions:
        res.extend([r] * getattr(syn, f"b{r}").num_conv)
    res.extend([syn.block_resolutions[-1]] * (syn.num_ws - len(res)))  # the final torgb row(s)
    assert len(res) == syn.num_ws, (len(res), syn.num_ws)
    return res


def layer_groups(num_ws_or_G=None, *, img_resolution: int | None = None) -> dict[str, list[int]]:
    """Named groups of ws rows: {'coarse': [...], 'middle': [...], 'fine': [...]}.

    coarse = rows whose block is 4-8 px, middle = 16-32 px, fine = 64 px and up. The groups
    partition range(num_ws). Empty groups are omitted (at 16 or 32 px there is no 'fine'; at 4 or
    8 px only 'coarse' exists). Pass num_ws (int) or G positionally, or `img_resolution=` by
    keyword (an int alone is always read as num_ws: 8 could be either).
    """
    if (num_ws_or_G is None) == (img_resolution is None):
        raise ValueError("pass exactly one of num_ws / G or img_resolution=")
    if img_resolution is not None:
        if (isinstance(img_resolution, bool) or not isinstance(img_resolution, numbers.Integral)
                or img_resolution < 4 or img_resolution & (img_resolution - 1)):
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution!r}")
        num_ws_or_G = 2 * int(img_resolution).bit_length() - 4  # 2*log2(res) - 2
    resolutions = layer_resolutions(num_ws_or_G)
    groups: dict[str, list[int]] = {}
    for name, (lo, hi) in GROUP_RANGES.items():
        rows = [i for i, r in enumerate(resolutions) if lo <= r <= hi]
        if rows:
            groups[name] = rows
    return groups


def layer_label(i: int, G) -> str:
    """UI label for ws row i, e.g. 'layer 3 · 16 px'. G may also be num_ws (official layout)."""
    resolutions = layer_resolutions(G)
    if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= i < len(resolutions):
        raise ValueError(f"layer index {i!r} out of range [0, {len(resolutions) - 1}]")
    return f"layer {int(i)} · {resolutions[int(i)]} px"


# ----------------------------------------------------------------------------------------------
# Mixing


def layer_rows(layers, num_ws: int) -> list[int]:
    """The sorted, distinct ws rows named by `layers` (ints and/or group names, as `mix` takes them)."""
    return sorted({r for _, rows in _resolve_layers(layers, num_ws) for r in rows})


def _resolve_layers(layers, num_ws: int) -> list[tuple[object, list[int]]]:
    """layers -> [(entry as given, [row indices])], one item per listed entry."""
    if layers is None:
        raise ValueError("layers must be an iterable of ints and/or group names, got None")
    if isinstance(layers, (str, numbers.Integral)):
        layers = [layers]
    elif isinstance(layers, (np.ndarray, torch.Tensor)):
        layers = layers.tolist()
        layers = [layers] if not isinstance(layers, list) else layers
    elif not isinstance(layers, Iterable):
        raise ValueError(f"layers must be an iterable of ints and/or group names, got {layers!r}")
    groups = None
    out = []
    for entry in layers:
        if isinstance(entry, str):
            if groups is None:
                groups = layer_groups(num_ws)
            if entry not in groups:
                if entry in GROUP_RANGES:
                    raise ValueError(f"layer group {entry!r} is empty for num_ws={num_ws} "
                                     f"(available: {', '.join(groups)})")
                raise ValueError(f"unknown layer group {entry!r} (expected one of {', '.join(groups)} "
                                 f"or a layer index)")
            out.append((entry, groups[entry]))
        elif isinstance(entry, numbers.Integral) and not isinstance(entry, bool):
            if not 0 <= entry < num_ws:
                raise ValueError(f"layer index {entry} out of range [0, {num_ws - 1}]")
            out.append((int(entry), [int(entry)]))
        else:
            raise ValueError(f"bad layer {entry!r}: expected an int index or a group name")
    return out


def _resolve_weights(weights, entries) -> list[float] | None:
    """weights -> one float in [0, 1] per entry (None = replace)."""
    if weights is None:
        return None
    if isinstance(weights, torch.Tensor):
        weights = weights.detach().cpu().numpy()
    try:
        arr = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"weights must be a number or a sequence of numbers, got {weights!r}") from None
    if arr.ndim == 0:
        if not 0 <= float(arr) <= 1:  # also catches NaN
            raise ValueError(f"weight {float(arr)} is outside [0, 1]")
        arr = np.full(len(entries), float(arr))
    elif arr.ndim != 1 or len(arr) != len(entries):
        raise ValueError(f"weights must be a scalar or one value per listed layer ({len(entries)}), "
                         f"got shape {tuple(arr.shape)}")
    for w, (entry, _) in zip(arr.tolist(), entries):
        if not 0 <= w <= 1:  # also catches NaN
            raise ValueError(f"weight {w} for layer {entry!r} is outside [0, 1]")
    return arr.tolist()


def _ws_shape_error(name, ws) -> ValueError:
    return ValueError(f"{name} must have shape [N, num_ws, w_dim] or [num_ws, w_dim], "
                      f"got {tuple(ws.shape)}")


def mix(ws_a, ws_b, layers, *, weights=None):
    """Take the rows `layers` of ws_b into ws_a; returns a new array of ws_a's type.

    ws_a, ws_b: [N, num_ws, w_dim] or [num_ws, w_dim], numpy arrays or torch tensors (ws_b is
        converted to ws_a's type, dtype and device). A batch of 1 (or an unbatched latent)
        broadcasts against a batch of N; the result is unbatched only when both inputs are.
    layers: an int index, a group name ('coarse', 'middle', 'fine', see `layer_groups`) or an
        iterable mixing both. Rows listed twice are taken once (with equal weights).
    weights: None (replace the rows), a scalar in [0, 1], or one value in [0, 1] per entry of
        `layers` (a group's weight applies to all its rows). Listed rows become
        (1 - w) * a + w * b; w = 1 gives b's rows exactly, w = 0 a's.
    The inputs are never modified; torch inputs keep autograd.
    """
    is_torch = isinstance(ws_a, torch.Tensor)
    if not is_torch and not isinstance(ws_a, np.ndarray):
        raise ValueError(f"ws_a must be a numpy array or a torch tensor, got {type(ws_a).__name__}")
    if not isinstance(ws_b, (np.ndarray, torch.Tensor)):
        raise ValueError(f"ws_b must be a numpy array or a torch tensor, got {type(ws_b).__name__}")
    if is_torch:
        ws_b = torch.as_tensor(ws_b, device=ws_a.device)
    elif isinstance(ws_b, torch.Tensor):
        ws_b = ws_b.detach().cpu().numpy()
    for name, ws in (("ws_a", ws_a), ("ws_b", ws_b)):
        if ws.ndim not in (2, 3):
            raise _ws_shape_error(name, ws)
    if tuple(ws_a.shape[-2:]) != tuple(ws_b.shape[-2:]):
        raise ValueError(f"ws_a and ws_b differ in [num_ws, w_dim]: {tuple(ws_a.shape[-2:])} vs "
                         f"{tuple(ws_b.shape[-2:])}")
    num_ws = int(ws_a.shape[-2])
    unbatched = ws_a.ndim == 2 and ws_b.ndim == 2
    a = ws_a if ws_a.ndim == 3 else ws_a[None]
    b = ws_b if ws_b.ndim == 3 else ws_b[None]
    na, nb = int(a.shape[0]), int(b.shape[0])
    if na != nb and 1 not in (na, nb):
        raise ValueError(f"batch sizes of ws_a ({na}) and ws_b ({nb}) differ (only 1 broadcasts)")
    n = max(na, nb)

    entries = _resolve_layers(layers, num_ws)
    wlist = _resolve_weights(weights, entries)
    row_w: dict[int, float] = {}
    for k, (entry, rows) in enumerate(entries):
        w = 1.0 if wlist is None else wlist[k]
        for r in rows:
            if r in row_w and row_w[r] != w:
                raise ValueError(f"layer {r} is listed twice with different weights ({row_w[r]} and {w})")
            row_w[r] = w
    rows = sorted(row_w)

    if is_torch:
        dtype = torch.promote_types(a.dtype, b.dtype)
        out = a.to(dtype).expand(n, -1, -1).clone()
        bb = b.to(dtype).expand(n, -1, -1)
        if rows:
            idx = torch.tensor(rows, device=out.device)
            if wlist is None:
                out[:, idx] = bb[:, idx]
            else:
                w = torch.tensor([row_w[r] for r in rows], dtype=dtype, device=out.device)[None, :, None]
                out[:, idx] = (1 - w) * out[:, idx] + w * bb[:, idx]
    else:
        dtype = np.result_type(a.dtype, b.dtype)
        out = np.array(np.broadcast_to(a.astype(dtype, copy=False), (n,) + a.shape[1:]))
        bb = np.broadcast_to(b.astype(dtype, copy=False), (n,) + b.shape[1:])
        if rows:
            if wlist is None:
                out[:, rows] = bb[:, rows]
            else:
                w = np.array([row_w[r] for r in rows], dtype=dtype)[None, :, None]
                out[:, rows] = (1 - w) * out[:, rows] + w * bb[:, rows]
    return out[0] if unbatched else out


# ----------------------------------------------------------------------------------------------
# Rendering


def _as_ws_tensor(G, ws, name: str) -> torch.Tensor:
    """numpy/torch [num_ws, w_dim] or [N, num_ws, w_dim] -> float32 [N, num_ws, w_dim] on G's device."""
    if not isinstance(ws, (np.ndarray, torch.Tensor)):
        raise ValueError(f"{name} must be a numpy array or a torch tensor, got {type(ws).__name__}")
    device = next(G.parameters()).device
    ws = torch.as_tensor(ws).to(device, torch.float32)
    if ws.ndim == 2:
        ws = ws[None]
    if ws.ndim != 3 or tuple(ws.shape[1:]) != (G.num_ws, G.w_dim):
        raise ValueError(f"{name} must have shape [N, {G.num_ws}, {G.w_dim}] or [{G.num_ws}, {G.w_dim}], "
                         f"got {tuple(ws.shape)}")
    assert ws.shape[1:] == (G.num_ws, G.w_dim)
    return ws


def _check_batch(batch) -> int:
    if isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    return int(batch)


@torch.no_grad()
def _synthesize(G, ws: torch.Tensor, *, noise_mode: str, batch: int) -> np.ndarray:
    """ws [N, num_ws, w_dim] -> uint8 [N, H, W, C], `batch` latents per synthesis call."""
    out = [to_uint8(G.synthesis(chunk, noise_mode=noise_mode)) for chunk in ws.split(batch)]
    return np.concatenate(out) if out else np.zeros((0, G.img_resolution, G.img_resolution, 3), np.uint8)


def layer_strip(G, ws_a, ws_b, *, layers=None, noise_mode: str = "const",
                batch: int = 8) -> list[tuple[int, np.ndarray]]:
    """The effect of each single layer: [(i, image of ws_a with row i from ws_b)], uint8 HxWx3.

    ws_a, ws_b: one latent each, [num_ws, w_dim] or [1, num_ws, w_dim] (numpy or torch).
    layers: the rows to show (default: all num_ws rows, in order).
    Renders under no_grad, `batch` images per synthesis call.
    """
    a = _as_ws_tensor(G, ws_a, "ws_a")
    b = _as_ws_tensor(G, ws_b, "ws_b")
    if a.shape[0] != 1 or b.shape[0] != 1:
        raise ValueError(f"layer_strip takes one latent each, got batches of {a.shape[0]} and {b.shape[0]}")
    batch = _check_batch(batch)
    if layers is None:
        rows = list(range(G.num_ws))
    else:
        rows = [r for entry, group_rows in _resolve_layers(layers, G.num_ws) for r in group_rows]
    if not rows:
        return []
    ws = torch.cat([mix(a, b, [r]) for r in rows])
    images = _synthesize(G, ws, noise_mode=noise_mode, batch=batch)
    return list(zip(rows, images))


def style_mix_grid(G, ws_rows, ws_cols, layers, *, weights=None, noise_mode: str = "const",
                   batch: int = 8) -> np.ndarray:
    """The official style-mixing figure as one uint8 image [(R+1)*H, (C+1)*W, 3].

    Top row: the column sources; left column: the row sources; cell (r, c): ws_rows[r] with
    `layers` taken from ws_cols[c] (see `mix`, `weights` too). The top-left cell is black.
    ws_rows [R, num_ws, w_dim], ws_cols [C, num_ws, w_dim] (numpy or torch; 2-D = one latent).
    """
    rws = _as_ws_tensor(G, ws_rows, "ws_rows")
    cws = _as_ws_tensor(G, ws_cols, "ws_cols")
    batch = _check_batch(batch)
    R, C = rws.shape[0], cws.shape[0]
    cells = mix(rws.repeat_interleave(C, dim=0), cws.repeat(R, 1, 1), layers, weights=weights)
    images = _synthesize(G, torch.cat([cws, rws, cells]), noise_mode=noise_mode, batch=batch)
    H, W, ch = images.shape[1:]
    grid = np.zeros(((R + 1) * H, (C + 1) * W, ch), dtype=np.uint8)
    for c in range(C):
        grid[:H, (c + 1) * W:(c + 2) * W] = images[c]
    for r in range(R):
        grid[(r + 1) * H:(r + 2) * H, :W] = images[C + r]
        for c in range(C):
            grid[(r + 1) * H:(r + 2) * H, (c + 1) * W:(c + 2) * W] = images[C + R + r * C + c]
    return grid
