"""Which layers to mix: how often a mix of a beard face and a shaved-head face carries BOTH
attributes, per layer group, per single layer and for the best layer set found by a search.

Pairs (`--pairs`, default 200): pair i = (beard-only render, shaved-only render) from
training.data.synthfaces at the model's resolution, SEED = `--seed` (default 7400; outside the
reserved seeds 7100-7109, 9000/9001 and 1):
- `--identity different` (default, the app's situation: two photos of two people): the beard face
  is params_for(SEED, i, stream=0, has_beard=True, shaved=False) and the shaved face
  params_for(SEED, i, stream=1, has_beard=False, shaved=True): other identity, other nuisance;
- `--identity shared`: one face params_for(SEED, i, stream=0) rendered twice with
  with_attributes(has_beard=True, shaved=False) and with_attributes(has_beard=False, shaved=True).
Each face is aligned with api.align (passthrough: renders are aligned by construction; `--detect`
runs face detection instead, for FFHQ-aligned models) and inverted with api.invert (`--quality`,
default balanced). A mix keeps one latent as the base (the beard one unless said otherwise) and
takes the listed rows from the other (api.mix); everything is rendered by api.render (noise 'const').

Measures, with the classifier api.score uses for the model (threshold 0.5):
- both_rate: share of mixes classified has_beard AND shaved; also each attribute's rate;
- identity distances of the mix to each source render: L2 between classifier.identity embeddings
  (standardised identity parameters; 1.0 = one population standard deviation), as
  training.evaluation.metrics.identity_distance(..., metric='l2'); for scale, the two sources'
  distance to each other and each reconstruction's distance to its source are reported too;
- sanity: how often the reconstructions keep their source's attributes (inversion quality bounds
  everything else).

Layer search (the choice is tuned on one half of the pairs and reported on the other, so the
reported best rate is not inflated by the selection): the pairs are split into a selection half
(even indices) and an evaluation half (odd indices).
- `--search greedy` (default): forward selection; start from no rows; each round adds the row,
  or the whole layer group (coarse / middle / fine), whose addition gives the highest both_rate
  on the selection half; stop when nothing improves it strictly (ties: the smaller, then lower
  addition). Groups are candidates because one row alone often changes too little to flip an
  attribute. The start (no rows: the beard reconstruction) is the baseline, so best_layers is []
  when no row set beats it. At most num_ws rounds.
- `--search exhaustive`: every non-empty row subset (2^num_ws - 1 sets; refused above 2^12); the
  first set (fewest rows, then lowest rows) with the highest selection rate wins.
`best_layers` is the chosen set, `best_both_rate` its rate on the evaluation half,
`best_both_rate_selection` on the selection half. Groups and single layers use all pairs.

The same search also runs with the shaved latent as the base (rows taken from the beard latent):
`best_layers_shaved_base`, and its groups as `both_rate_shaved_base`.

W-editing (when the model has attribute directions): the beard latent moved along the 'shaved'
direction at each `--strengths` (and the shaved latent along 'has_beard'), same measures.

Recipes (the app can mix and edit at once, with either face as the base): for each base, rows
taken from the other latent (none, its searched rows, each layer group, each union of two groups),
then 'has_beard' and 'shaved' edits with every combination of strengths in {0} + `--strengths`
(default 1,2,3,4,5,6; api.mix_recipe, which 'mix: best' runs). The best on the selection half is
Recipes that make the same latent (the beard base taking rows R = the shaved base taking the
other rows) are scored once, under the name with fewer rows (then the beard base).
`best_recipe` {"base", "layers", "edits"}: the highest both-rate; among equals the one whose
identity distance to the farther of the two faces is smallest (per pair, then the mean), since a
composite should keep something of both faces; then the smaller total strength, fewer rows, the
beard base. `best_recipe_both_rate` is its rate
on the evaluation half; `top_recipes` lists the eight best with both halves' rates.

`--record` writes best_recipe into the model's record in pretrained/MANIFEST.json (with
`best_recipe_measured`: rates, pairs, command, date), where api's 'mix: best' method and the app's
'best' preset read it; without it the script only prints.

Prints progress lines on stderr, a table on stdout, then one JSON object as the last line:
{"both_rate": {"coarse": ..., "middle": ..., "fine": ...}, "best_layers": [...],
 "best_both_rate": ..., "single_layer_both_rate": {...}, "identity": {...}, "edit": {...},
 "best_recipe": {...}, "best_recipe_both_rate": ..., ...}

    python benchmarks/bench_mixing.py [--pairs 200] [--model synthfaces64] [--quality balanced]
        [--identity different|shared] [--search greedy|exhaustive] [--strengths 1,2,3,4,5,6]
        [--threads 2] [--record]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stylemix import api  # noqa: E402

DEFAULT_SEED = 7400
RESERVED = set(range(7100, 7110)) | {9000, 9001, 1}
THRESHOLD = 0.5


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def make_pairs(n: int, res: int, seed: int, identity: str) -> tuple[np.ndarray, np.ndarray]:
    from training.data.synthfaces import params_for, render_many, with_attributes

    beard, shaved = [], []
    for i in range(n):
        if identity == "shared":
            p = params_for(seed, i, stream=0)
            beard.append(with_attributes(p, has_beard=True, shaved=False))
            shaved.append(with_attributes(p, has_beard=False, shaved=True))
        else:
            beard.append(params_for(seed, i, stream=0, has_beard=True, shaved=False))
            shaved.append(params_for(seed, i, stream=1, has_beard=False, shaved=True))
    return render_many(beard, res), render_many(shaved, res)


class Evaluator:
    """Renders and classifies mixes of the pairs for a row set, caching per (rows, pair)."""

    def __init__(self, model, clf, ws_beard, ws_shaved, src_beard, src_shaved):
        self.model, self.clf = model, clf
        self.ws_beard, self.ws_shaved = ws_beard, ws_shaved
        self.id_beard = clf.identity(src_beard)
        self.id_shaved = clf.identity(src_shaved)
        self.cache: dict = {}  # key -> {pair index: (has_beard p, shaved p, id to beard, id to shaved)}
        self.renders = 0

    def _compute(self, key, make_ws, idx):
        store = self.cache.setdefault(key, {})
        todo = [i for i in idx if i not in store]
        if todo:
            images = np.stack([np.asarray(api.render(self.model, make_ws(i))) for i in todo])
            self.renders += len(todo)
            out = self.clf.outputs(images)  # one pass: probabilities and identity embedding
            emb = out["identity"]
            hb, sh = (self.clf.label_names.index(k) for k in ("has_beard", "shaved"))
            for k, i in enumerate(todo):
                store[i] = (float(out["probs"][k, hb]), float(out["probs"][k, sh]),
                            float(np.linalg.norm(emb[k] - self.id_beard[i])),
                            float(np.linalg.norm(emb[k] - self.id_shaved[i])))
        return np.array([store[i] for i in idx], dtype=np.float64).reshape(len(idx), 4)

    def _pair(self, base: str, i: int):
        return (self.ws_beard[i], self.ws_shaved[i]) if base == "beard" else (self.ws_shaved[i], self.ws_beard[i])

    def mix(self, rows, idx, base: str = "beard"):
        """The `base` latent with `rows` taken from the other one (no rows: the base's reconstruction)."""
        rows = tuple(sorted(rows))
        return self._compute(("mix", base, rows), lambda i: api.mix(self.model, *self._pair(base, i), list(rows)),
                             idx)

    def edit(self, base: str, attr: str, strength: float, idx):
        return self.recipe({"base": base, "layers": [], "edits": {attr: strength}}, idx)

    def recipe(self, recipe: dict, idx):
        """api.mix_recipe of `recipe` ({'base', 'layers', 'edits'}); without edits the same as mix."""
        edits = {a: float(s) for a, s in recipe["edits"].items() if s}
        if not edits:
            return self.mix(recipe["layers"], idx, recipe["base"])
        key = ("recipe", recipe["base"], tuple(sorted(recipe["layers"])), tuple(sorted(edits.items())))
        return self._compute(key, lambda i: api.mix_recipe(self.model, self.ws_beard[i], self.ws_shaved[i],
                                                           {**recipe, "edits": edits}), idx)


def summary(arr: np.ndarray) -> dict:
    if len(arr) == 0:
        return {"n": 0}
    beard, shaved = arr[:, 0] >= THRESHOLD, arr[:, 1] >= THRESHOLD
    return {"n": int(len(arr)), "both_rate": round(float(np.mean(beard & shaved)), 4),
            "has_beard_rate": round(float(np.mean(beard)), 4), "shaved_rate": round(float(np.mean(shaved)), 4),
            "identity_to_beard": round(float(arr[:, 2].mean()), 4),
            "identity_to_shaved": round(float(arr[:, 3].mean()), 4)}


def both(arr: np.ndarray) -> float:
    return float(np.mean((arr[:, 0] >= THRESHOLD) & (arr[:, 1] >= THRESHOLD))) if len(arr) else 0.0


def greedy(ev: Evaluator, num_ws: int, sel, groups: dict | None = None, base: str = "beard") -> tuple[list, float, list]:
    chosen: list[int] = []
    best = both(ev.mix([], sel, base))  # no rows taken: the base's reconstruction itself
    trace = [{"rows": [], "both_rate_selection": round(best, 4)}]
    while len(chosen) < num_ws:
        moves = [[r] for r in range(num_ws) if r not in chosen]
        for rows in (groups or {}).values():
            extra = sorted(set(rows) - set(chosen))
            if len(extra) > 1 and extra not in moves:
                moves.append(extra)
        # best rate; ties: fewer rows added, then the lower rows
        rate, _, _, add = max((both(ev.mix(chosen + m, sel, base)), -len(m), [-r for r in m], m) for m in moves)
        if rate <= best:
            break
        chosen.extend(add)
        best = rate
        trace.append({"rows": sorted(chosen), "both_rate_selection": round(rate, 4)})
        log(f"  greedy ({base} base): rows {sorted(chosen)} -> both-rate {rate:.3f} on the selection half")
    return sorted(chosen), best, trace


def exhaustive(ev: Evaluator, num_ws: int, sel, groups: dict | None = None,
               base: str = "beard") -> tuple[list, float, list]:
    best, best_rows = both(ev.mix([], sel, base)), []
    subsets = [list(c) for k in range(1, num_ws + 1) for c in itertools.combinations(range(num_ws), k)]
    for j, rows in enumerate(subsets):
        rate = both(ev.mix(rows, sel, base))
        if rate > best:  # ties keep the earlier (smaller, lower) set
            best, best_rows = rate, rows
        if (j + 1) % 64 == 0:
            log(f"  exhaustive ({base} base): {j + 1}/{len(subsets)} sets, best {best_rows} -> {best:.3f}")
    return best_rows, best, []


def recipe_layer_sets(rows: list, groups: dict) -> list:
    """The row sets a recipe may take from the other latent: none, the searched `rows`, each layer
    group and every union of two groups (no repeats, in that order)."""
    sets: list = []
    names = [g for g in groups if groups[g]]
    candidates = [[], list(rows)] + [list(groups[g]) for g in names]
    candidates += [sorted(set(groups[a]) | set(groups[b])) for a, b in itertools.combinations(names, 2)]
    for c in candidates:
        c = sorted(set(c))
        if c not in sets:
            sets.append(c)
    return sets


def recipe_search(ev: Evaluator, rows_by_base: dict, edit_attrs: list, strengths: list, sel,
                  groups: dict | None = None, num_ws: int | None = None) -> list:
    """Every recipe of the grid, scored on the selection pairs, best first: for each base, the row
    sets of recipe_layer_sets (its searched rows, none, the groups), times every combination of
    strengths in {0} + `strengths` for each attribute of `edit_attrs` (the plain reconstructions
    left out: no rows and no edits, or with `num_ws` all rows). With `num_ws`, recipes that make the same latent are scored once, under the name
    the order below prefers (the beard base taking rows R is the shaved base taking the other
    rows). Order: the selection both-rate; then the identity distance to the farther of the two
    faces (per pair, then the mean: a composite should keep something of both); then the smaller
    total strength, fewer rows, the beard base. -> [(rate, recipe, that identity distance)]"""
    chosen: dict = {}  # what the latent is made of -> the recipe that names it
    for base, rows in rows_by_base.items():
        for layers in recipe_layer_sets(rows, groups or {}):
            for values in itertools.product([0.0] + strengths, repeat=len(edit_attrs)):
                edits = {a: v for a, v in zip(edit_attrs, values) if v}
                if not layers and not edits:
                    continue
                recipe = {"base": base, "layers": list(layers), "edits": edits}
                key = (base, tuple(layers), tuple(edits.items()))
                if num_ws is not None:  # the rows taken from the beard latent, then the edits
                    beard_rows = set(layers) if base == "shaved" else set(range(num_ws)) - set(layers)
                    if not edits and len(beard_rows) in (0, num_ws):
                        continue  # all rows from one face: its plain reconstruction
                    key = (tuple(sorted(beard_rows)), tuple(edits.items()))
                old = chosen.get(key)
                if old is None or (len(layers), base != "beard") < (len(old["layers"]), old["base"] != "beard"):
                    chosen[key] = recipe
    scored = []
    for recipe in chosen.values():
        arr = ev.recipe(recipe, sel)
        id_far = float(arr[:, 2:4].max(axis=1).mean()) if len(arr) else 0.0
        rate = both(arr)
        scored.append(((-rate, round(id_far, 6), sum(abs(v) for v in recipe["edits"].values()),
                        len(recipe["layers"]), recipe["base"] != "beard"), rate, recipe, id_far))
    scored.sort(key=lambda t: t[0])
    return [(rate, recipe, id_far) for _, rate, recipe, id_far in scored]


def recipe_label(recipe: dict) -> str:
    edits = "+".join(f"{a}@{s:g}" for a, s in recipe["edits"].items())
    return f"{recipe['base']} base {recipe['layers']}" + (f" {edits}" if edits else "")


def manifest_record(name: str) -> tuple[Path, dict]:
    """(pretrained/MANIFEST.json, the record of generator `name` in it); ValueError when there is none."""
    from stylemix import pretrained

    manifest = pretrained.PRETRAINED_DIR / pretrained.MANIFEST_NAME
    data = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {"models": []}
    for record in (data.get("models", []) if isinstance(data, dict) else data):
        if isinstance(record, dict) and record.get("name") == name \
                and record.get("kind", "generator") in ("generator", "networks"):
            return manifest, record
    raise ValueError(f"--record needs the name of a generator registered in {manifest} (not a path), "
                     f"got {name!r}; register it with python -m training.stylegan2.ship")


def record_recipe(name: str, num_ws: int, recipe: dict, measured: dict) -> str:
    """Write `recipe` as the MANIFEST best_recipe of the registered generator `name` (with
    `measured` beside it as best_recipe_measured), in place and atomically
    (training.stylegan2.ship.update_manifest_record); returns the path."""
    from stylemix import pretrained
    from training.stylegan2.ship import update_manifest_record

    manifest, record = manifest_record(name)
    update_manifest_record(manifest, {**record, "best_recipe": api.check_recipe(recipe, num_ws),
                                      "best_recipe_measured": measured})
    pretrained.list_models()  # re-read the registry
    return str(manifest)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=200, help="beard/shaved pairs (>= 2)")
    ap.add_argument("--model", default="synthfaces64", help="registered name or checkpoint path")
    ap.add_argument("--quality", default="balanced", choices=api.QUALITIES, help="api.invert quality")
    ap.add_argument("--identity", default="different", choices=["different", "shared"],
                    help="the two faces of a pair: different people (default) or one person")
    ap.add_argument("--search", default="greedy", choices=["greedy", "exhaustive"])
    ap.add_argument("--strengths", default="1,2,3,4,5,6",
                    help="edit strengths (standard deviations) of the recipe grid, comma list of positive numbers")
    ap.add_argument("--detect", action="store_true", help="detect and align faces instead of passthrough")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"synthfaces seed (default {DEFAULT_SEED})")
    ap.add_argument("--record", action="store_true",
                    help="write best_recipe into the model's record in pretrained/MANIFEST.json (a registered "
                         "generator), where 'mix: best' and the app's 'best' preset read it")
    args = ap.parse_args(argv)
    if args.pairs < 2 or args.threads < 1:
        ap.error("--pairs must be >= 2 (one half selects, the other evaluates) and --threads >= 1")
    if args.seed in RESERVED:
        ap.error(f"--seed {args.seed} is reserved ({sorted(RESERVED)})")
    try:
        strengths = sorted({float(s) for s in args.strengths.split(",") if s.strip()})
    except ValueError:
        strengths = []
    if not strengths or not all(0 < s <= 100 for s in strengths):
        ap.error(f"--strengths {args.strengths!r}: expected positive numbers up to 100 like '1,2,3'")
    if args.record:
        try:
            manifest_record(args.model)
        except (ValueError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    try:
        model = api.load_model(args.model)
    except api.ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.search == "exhaustive" and model.num_ws > 12:
        ap.error(f"--search exhaustive would try {2 ** model.num_ws - 1} sets; use greedy")
    clf_name = api._classifier_name(model)
    clf = api._classifier(clf_name)
    log(f"model {model.name} ({model.resolution} px, num_ws {model.num_ws}), encoder {model.encoder}, "
        f"directions {model.directions or 'none'}, classifier {clf_name}; {args.pairs} pairs "
        f"({args.identity} identities, seed {args.seed}), inversion {args.quality}, search {args.search}")

    src_beard, src_shaved = make_pairs(args.pairs, model.resolution, args.seed, args.identity)
    ws_beard, ws_shaved, rec_beard, rec_shaved = [], [], [], []
    t_inv = time.perf_counter()
    for i in range(args.pairs):
        for src, ws_out, rec_out in ((src_beard, ws_beard, rec_beard), (src_shaved, ws_shaved, rec_shaved)):
            face = api.align(model, src[i], passthrough=not args.detect, allow_centre_crop=args.detect)
            lat = api.invert(model, face.image, quality=args.quality)
            ws_out.append(lat.ws)
            rec_out.append(np.asarray(lat.image))
        if (i + 1) % 10 == 0 or i + 1 == args.pairs:
            log(f"  inverted {i + 1}/{args.pairs} pairs ({(time.perf_counter() - t_inv) / (2 * (i + 1)):.2f} s/image)")
    inversion_s = (time.perf_counter() - t_inv) / (2 * args.pairs)
    rec_beard, rec_shaved = np.stack(rec_beard), np.stack(rec_shaved)

    # Sanity: do the reconstructions keep their attributes and identities?
    pb, ps = clf.predict(rec_beard), clf.predict(rec_shaved)
    id_src_b, id_src_s = clf.identity(src_beard), clf.identity(src_shaved)
    def rate(mask) -> float:
        return round(float(np.mean(mask)), 4)

    def id_l2(a, b) -> float:
        return round(float(np.linalg.norm(a - b, axis=1).mean()), 4)
    recon = {
        "beard_keeps_beard_not_shaved": rate((pb["has_beard"] >= THRESHOLD) & (pb["shaved"] < THRESHOLD)),
        "shaved_keeps_shaved_no_beard": rate((ps["shaved"] >= THRESHOLD) & (ps["has_beard"] < THRESHOLD)),
        "identity_beard_recon_to_source": id_l2(clf.identity(rec_beard), id_src_b),
        "identity_shaved_recon_to_source": id_l2(clf.identity(rec_shaved), id_src_s),
        "identity_between_sources": id_l2(id_src_b, id_src_s),
        "inversion_s_per_image": round(inversion_s, 3),
    }
    log(f"reconstructions: {recon}")

    ev = Evaluator(model, clf, ws_beard, ws_shaved, src_beard, src_shaved)
    everyone = list(range(args.pairs))
    sel, evl = everyone[0::2], everyone[1::2]
    groups = {g: summary(ev.mix(rows, everyone)) for g, rows in model.layer_groups.items()}
    log(f"groups: { {g: s['both_rate'] for g, s in groups.items()} }")
    groups_shaved = {g: summary(ev.mix(rows, everyone, "shaved")) for g, rows in model.layer_groups.items()}
    log(f"groups on the shaved base: { {g: s['both_rate'] for g, s in groups_shaved.items()} }")
    singles = {str(r): summary(ev.mix([r], everyone)) for r in range(model.num_ws)}
    log(f"single layers: { {r: s['both_rate'] for r, s in singles.items()} }")
    search = greedy if args.search == "greedy" else exhaustive
    rows_by_base, sel_by_base, trace = {}, {}, []
    for base in api.RECIPE_BASES:
        rows_by_base[base], sel_by_base[base], tr = search(ev, model.num_ws, sel, model.layer_groups, base=base)
        if base == "beard":
            trace = tr
    best_rows, best_sel = rows_by_base["beard"], sel_by_base["beard"]
    best_eval = summary(ev.mix(best_rows, evl))  # [] (nothing beat taking no rows): the beard reconstruction
    log(f"best rows {best_rows}: both-rate {best_sel:.3f} (selection half), "
        f"{best_eval['both_rate']:.3f} (evaluation half)")

    edits = None
    if model._directions:
        edits = {}
        for base, attr in (("beard", "shaved"), ("shaved", "has_beard")):
            if attr not in model.directions:
                continue
            for s in strengths:
                edits[f"{base}+{attr}@{s:g}"] = summary(ev.edit(base, attr, s, everyone))
        log(f"edits: { {k: v['both_rate'] for k, v in edits.items()} }")

    # Recipes: each base with its searched rows (or none), then has_beard / shaved edits from the
    # grid; chosen on the selection half, reported on the evaluation half.
    edit_attrs = [a for a in api.RECIPE_EDITS if a in model.directions] if model._directions else []
    ranked = recipe_search(ev, rows_by_base, edit_attrs, strengths, sel, model.layer_groups, model.num_ws)
    recipe_sel, recipe, _ = ranked[0]
    recipe_eval = summary(ev.recipe(recipe, evl))
    top = [{"recipe": r, "both_rate_selection": round(rate, 4), "identity_to_farther_selection": round(id_o, 4),
            "both_rate_evaluation": round(both(ev.recipe(r, evl)), 4)} for rate, r, id_o in ranked[:8]]
    log(f"recipes: {len(ranked)} tried; best {recipe_label(recipe)}: {recipe_sel:.3f} (selection half), "
        f"{recipe_eval.get('both_rate', 0):.3f} (evaluation half)")

    result = {
        "both_rate": {g: s["both_rate"] for g, s in groups.items()},
        "best_layers": best_rows,
        "best_both_rate": best_eval.get("both_rate"),
        "best_both_rate_selection": round(best_sel, 4),
        "single_layer_both_rate": {r: s["both_rate"] for r, s in singles.items()},
        "groups": groups, "single_layers": singles, "best": best_eval, "search_trace": trace,
        "identity": {**{g: {"to_beard": s["identity_to_beard"], "to_shaved": s["identity_to_shaved"]}
                        for g, s in groups.items()},
                     "best": {"to_beard": best_eval.get("identity_to_beard"),
                              "to_shaved": best_eval.get("identity_to_shaved")},
                     "metric": "L2 of classifier.identity embeddings (standardised identity parameters)"},
        "both_rate_shaved_base": {g: s["both_rate"] for g, s in groups_shaved.items()},
        "best_layers_shaved_base": rows_by_base["shaved"],
        "edit": edits,
        "best_recipe": recipe,
        "best_recipe_both_rate": recipe_eval.get("both_rate"),
        "best_recipe_both_rate_selection": round(recipe_sel, 4),
        "best_recipe_eval": recipe_eval, "recipes_tried": len(ranked), "top_recipes": top,
        "edit_both_rate": None if edits is None else {k: v["both_rate"] for k, v in edits.items()},
        "reconstruction": recon,
        "model": model.name, "pairs": args.pairs, "identity_mode": args.identity, "quality": args.quality,
        "search": args.search, "selection_pairs": len(sel), "evaluation_pairs": len(evl),
        "classifier": clf_name, "threshold": THRESHOLD, "seed": args.seed, "renders": ev.renders,
        "threads": args.threads, "seconds": round(time.perf_counter() - t_start, 1),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }

    print(f"mixing on {model.name}: {args.pairs} pairs ({args.identity} identities), inversion {args.quality} "
          f"({inversion_s:.2f} s/image); rows are taken from the other latent")
    print(f"{'mix':>44} {'n':>4} {'both':>6} {'beard':>6} {'shaved':>6} {'id->beard':>9} {'id->shaved':>10}")

    def row(label, s):
        if s.get("n"):
            print(f"{label:>44} {s['n']:>4} {s['both_rate']:>6.3f} {s['has_beard_rate']:>6.3f} "
                  f"{s['shaved_rate']:>6.3f} "
                  f"{s['identity_to_beard']:>9.3f} {s['identity_to_shaved']:>10.3f}")
    for g, s in groups.items():
        row(f"beard base: {g}", s)
    for g, s in groups_shaved.items():
        row(f"shaved base: {g}", s)
    for r, s in singles.items():
        row(f"beard base: layer {r}", s)
    row(f"beard base: best {best_rows} (eval)", best_eval)
    for k, s in (edits or {}).items():
        row(k, s)
    print(f"top recipes ({len(ranked)} tried): both-rate on the selection half / evaluation half, "
          f"identity distance to the farther face (selection half)")
    for t in top:
        print(f"{recipe_label(t['recipe']):>44} {t['both_rate_selection']:.3f} / {t['both_rate_evaluation']:.3f}"
              f"   {t['identity_to_farther_selection']:.3f}")
    row(f"best recipe (eval): {recipe_label(recipe)}", recipe_eval)
    print(f"reconstructions: {recon}")
    if args.record:
        measured = {"both_rate": recipe_eval.get("both_rate"), "both_rate_selection": round(recipe_sel, 4),
                    "pairs": args.pairs, "evaluation_pairs": len(evl), "quality": args.quality,
                    "identity_mode": args.identity, "seed": args.seed,
                    "command": "python benchmarks/bench_mixing.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        try:
            where = record_recipe(args.model, model.num_ws, recipe, measured)
        except (ValueError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            print(json.dumps(result))
            return 1
        log(f"recorded best_recipe {recipe} for {model.name} in {where}")
        result["recorded"] = where
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
