"""Smoke tests of benchmarks/bench_inversion.py and benchmarks/bench_mixing.py on the tiny 32 px
generator (with an untrained encoder and made-up directions): they run end to end in seconds,
print progress on stderr and one JSON object as the last stdout line."""

import importlib.util
import json
import os

import numpy as np
import pytest
import torch

from stylemix import api, pretrained
from stylemix.checkpoints import save_generator

from ._cli import last_json
from .conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"bench_{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, tiny32_G):
    """tinybench.safetensors with an encoder and has_beard/shaved directions in a private cache."""
    from stylemix.editing import Direction, save_directions
    from stylemix.inversion import default_encoder_path, save_encoder, w_stats
    from stylemix.networks.encoder import Encoder

    root = tmp_path_factory.mktemp("bench")
    cache = root / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_EXTENSIONS_DIR", os.environ.get("TORCH_EXTENSIONS_DIR")
                  or str(pretrained.cache_dir() / "torch_extensions"))
        mp.setenv("STYLEMIX_CACHE", str(cache))
        path = save_generator(tiny32_G, root / "tinybench.safetensors", provenance={"test": "test_benchmarks"})
        torch.manual_seed(0)
        enc = Encoder(32, tiny32_G.num_ws, tiny32_G.w_dim, channel_base=64, channel_max=32, feature_dim=32)
        w_avg, w_std = w_stats(tiny32_G)  # this generator's statistics (no 'other weights' warning)
        enc.set_w_stats(w_avg, torch.full([tiny32_G.w_dim], w_std / tiny32_G.w_dim ** 0.5))
        save_encoder(enc, default_encoder_path("tinybench"), model_name="tinybench")
        rng = np.random.RandomState(0)
        dirs = {}
        for attr in ("has_beard", "shaved"):
            d = Direction(attr, "interfacegan", rng.randn(tiny32_G.w_dim).astype(np.float32), scale=1.0)
            dirs[d.key] = d
        (cache / "directions").mkdir(parents=True)
        save_directions(cache / "directions" / "tinybench-directions.safetensors", dirs, meta={})
        yield str(path)


def test_bench_inversion_smoke(tiny_model, capsys):
    bench = _load("inversion")
    assert bench.main(["--model", tiny_model, "--n", "2", "--projector-n", "1", "--projector-steps", "2",
                       "--qualities", "fast,balanced", "--threads", "1"]) == 0
    captured = capsys.readouterr()
    res = last_json(captured.out)
    for key in ("fast", "balanced", "projector_w", "projector_wplus"):
        assert res[key]["n"] == (2 if key == "projector_w" or key == "projector_wplus" else 4)
        for metric in ("psnr", "distance", "identity_l2", "s_per_image"):
            assert isinstance(res[key][metric], float) and np.isfinite(res[key][metric])
    assert res["fast"]["steps"] == 0 and res["projector_wplus"]["steps"] == 2
    assert res["balanced_psnr_vs_projector_wplus"] > 0 and res["balanced_time_vs_projector_wplus"] > 0
    assert res["projector_n"] == 1 and res["model"] == "tinybench"
    assert "projector on the first 1 of each set" in captured.err and "balanced:" in captured.err


def test_bench_inversion_rejects_reserved_seed(tiny_model):
    with pytest.raises(SystemExit):
        _load("inversion").main(["--model", tiny_model, "--seed", "7100"])


def test_bench_mixing_smoke(tiny_model, capsys):
    bench = _load("mixing")
    assert bench.main(["--model", tiny_model, "--pairs", "2", "--quality", "fast", "--search", "greedy",
                       "--strengths", "2", "--threads", "1"]) == 0
    captured = capsys.readouterr()
    res = last_json(captured.out)
    assert set(res["both_rate"]) == {"coarse", "middle"}  # 32 px: no fine rows
    assert all(0 <= v <= 1 for v in res["both_rate"].values())
    assert set(res["single_layer_both_rate"]) == {str(i) for i in range(8)}
    assert isinstance(res["best_layers"], list) and all(0 <= r < 8 for r in res["best_layers"])
    assert 0 <= res["best_both_rate"] <= 1 and res["selection_pairs"] == res["evaluation_pairs"] == 1
    assert set(res["edit_both_rate"]) == {"beard+shaved@2", "shaved+has_beard@2"}
    recipe = res["best_recipe"]
    assert recipe == api.check_recipe(recipe, 8)  # a valid recipe, as 'mix: best' reads it
    assert recipe["layers"] in (res["best_layers"], res["best_layers_shaved_base"], [])
    assert set(recipe["edits"]) <= {"has_beard", "shaved"} and set(recipe["edits"].values()) <= {2.0}
    assert 0 <= res["best_recipe_both_rate"] <= 1
    assert res["best_recipe_both_rate_selection"] >= res["best_both_rate_selection"]
    # per base: its row sets x {0, 2}^2 edits, less the plain reconstructions, each latent once (the
    # beard base taking rows R is the shaved base taking the other rows)
    groups = api.load_model(tiny_model).layer_groups
    latents = {frozenset(set(range(8)) - set(rows)) for rows in bench.recipe_layer_sets(res["best_layers"], groups)}
    latents |= {frozenset(rows) for rows in bench.recipe_layer_sets(res["best_layers_shaved_base"], groups)}
    assert res["recipes_tried"] == len(latents) * 4 - 2 and len(res["top_recipes"]) == 8
    tops = [(t["recipe"]["base"], tuple(t["recipe"]["layers"]), tuple(t["recipe"]["edits"].items()))
            for t in res["top_recipes"]]
    assert len(set(tops)) == 8
    assert res["top_recipes"][0]["recipe"] == recipe and set(res["both_rate_shaved_base"]) == {"coarse", "middle"}
    assert "recorded" not in res
    assert res["identity"]["coarse"]["to_beard"] >= 0 and res["identity_mode"] == "different"
    assert "inverted 2/2 pairs" in captured.err


class _FakeEvaluator:
    """both-rate = share of pairs whose 'target' rows are all taken, minus 0.1 per extra row
    (as a share of pairs that lose an attribute): the best set is {1, 3}."""

    def __init__(self, n):
        self.n = n
        self.calls = []

    def mix(self, rows, idx, base="beard"):
        self.calls.append(tuple(sorted(rows)))
        rows = set(rows)
        hit = 0.0
        if 1 in rows:
            hit += 0.3
        if 3 in rows:
            hit += 0.4
        hit -= 0.1 * len(rows - {1, 3})
        k = int(round(max(0.0, hit) * len(idx)))
        arr = np.zeros((len(idx), 4))
        arr[:k, :2] = 1.0  # the first k pairs carry both attributes
        return arr


def test_layer_searches_find_the_best_set():
    bench = _load("mixing")
    ev = _FakeEvaluator(10)
    rows, rate, trace = bench.greedy(ev, 6, list(range(10)))
    assert rows == [1, 3] and rate == pytest.approx(0.7)
    assert [t["rows"] for t in trace] == [[], [3], [1, 3]]
    assert len(set(ev.calls)) <= 1 + 6 + 5 + 4  # baseline + three rounds of candidates
    rows, rate, _ = bench.exhaustive(_FakeEvaluator(10), 6, list(range(10)))
    assert rows == [1, 3] and rate == pytest.approx(0.7)
    # nothing beats taking no rows: greedy keeps the empty set
    class Flat(_FakeEvaluator):
        def mix(self, rows, idx, base="beard"):
            return np.zeros((len(idx), 4))
    assert bench.greedy(Flat(4), 6, list(range(4)))[0] == []


def test_greedy_takes_a_whole_group_when_no_single_row_helps():
    """Both attributes appear only when rows 0 and 1 are taken together (one row alone changes too
    little): single-row greedy would stop at [], the group move finds {0, 1}."""
    bench = _load("mixing")

    class Pair(_FakeEvaluator):
        def mix(self, rows, idx, base="beard"):
            arr = np.zeros((len(idx), 4))
            if {0, 1} <= set(rows):
                arr[: len(idx) // 2, :2] = 1.0
            return arr

    groups = {"coarse": [0, 1], "middle": [2, 3], "fine": [4, 5]}
    assert bench.greedy(Pair(10), 6, list(range(10)))[0] == []
    rows, rate, trace = bench.greedy(Pair(10), 6, list(range(10)), groups)
    assert rows == [0, 1] and rate == pytest.approx(0.5)
    assert [t["rows"] for t in trace] == [[], [0, 1]]


def test_recipe_search_order_and_ties():
    """Recipes are ranked by selection rate, then identity distance to the farther face (per pair),
    then smaller total strength, fewer rows, beard base."""
    bench = _load("mixing")

    class Grid:
        def recipe(self, recipe, idx):
            e = recipe["edits"]
            if recipe["base"] == "shaved":  # a beard edit of 2 or more does it; rows do not matter
                rate = 1.0 if e.get("has_beard", 0) >= 2 else 0.0
            else:  # the beard base needs its rows and a shave of 2 or more
                rate = 1.0 if recipe["layers"] and e.get("shaved", 0) >= 2 else 0.5 * bool(recipe["layers"])
            arr = np.zeros((len(idx), 4))
            arr[: int(rate * len(idx)), :2] = 1.0
            arr[:, 2:4] = 2.0  # identity distance to each face: the farther one shrinks with taken rows
            arr[:, 2 if recipe["base"] == "shaved" else 3] = 1.0 - 0.1 * len(recipe["layers"])
            arr[0, 3 if recipe["base"] == "shaved" else 2] = 0.5  # (a near one never counts)
            return arr

    ranked = bench.recipe_search(Grid(), {"beard": [2], "shaved": [0, 1]}, ["has_beard", "shaved"], [1.0, 2.0],
                                 list(range(4)))
    assert len(ranked) == 2 * (3 * 3 - 1) + 2 * 3 * 3  # no groups: no rows or the searched rows
    rate, best, id_other = ranked[0]
    # rate 1 for 'shaved base has_beard@2' with or without rows 0 and 1, and 'beard base [2]
    # shaved@2': the two taken rows keep more of the beard face (0.8 < 0.9 < 1.0)
    assert rate == 1.0 and best == {"base": "shaved", "layers": [0, 1], "edits": {"has_beard": 2.0}}
    assert id_other == pytest.approx((0.8 + 3 * 2.0) / 4)
    assert ranked[1][1] == {"base": "shaved", "layers": [0, 1], "edits": {"has_beard": 2.0, "shaved": 1.0}}
    assert [t[0] for t in ranked] == sorted((t[0] for t in ranked), reverse=True)
    assert all(r["layers"] or r["edits"] for _, r, _ in ranked)  # never the plain reconstruction
    # with layer groups: each group and each union of two are candidates too, once each
    groups = {"coarse": [0, 1], "middle": [2, 3], "fine": [4]}
    assert bench.recipe_layer_sets([0, 1], groups) == [[], [0, 1], [2, 3], [4], [0, 1, 2, 3], [0, 1, 4], [2, 3, 4]]
    ranked = bench.recipe_search(Grid(), {"beard": [2], "shaved": [0, 1]}, ["has_beard"], [2.0], [0, 1], groups)
    assert len(ranked) == (1 + 7 * 2) + (1 + 6 * 2)
    # with num_ws, a latent two recipes make is scored once, named by fewer rows, then the beard base:
    # on 3 rows, 'beard base [2]' is 'shaved base [0, 1]' and keeps its name (one row)
    seen = []

    class Counting(Grid):
        def recipe(self, recipe, idx):
            seen.append(recipe)
            return super().recipe(recipe, idx)
    ranked = bench.recipe_search(Counting(), {"beard": [2], "shaved": [0, 1]}, ["has_beard"], [2.0], [0, 1],
                                 num_ws=3)
    names = [(r["base"], r["layers"], r["edits"]) for _, r, _ in ranked]
    assert len(seen) == len(ranked) == 4  # 3 latents ({0, 1, 2}, {0, 1}, {} from beard) x {0, 2}, less 2 plain
    assert ("beard", [2], {}) in names and ("shaved", [0, 1], {}) not in names
    assert ("beard", [2], {"has_beard": 2.0}) in names and ("shaved", [0, 1], {"has_beard": 2.0}) not in names


def test_bench_mixing_record(tiny_model, tmp_path, monkeypatch, capsys):
    """--record writes best_recipe into the registered model's MANIFEST record ('mix: best' reads it);
    a model without a record is a clear error (exit 1) and the MANIFEST is left as it was."""
    import shutil

    bench = _load("mixing")
    folder = tmp_path / "pretrained"
    folder.mkdir()
    shutil.copy(tiny_model, folder / "tinybench.safetensors")
    path = folder / "tinybench.safetensors"
    other = {"name": "other", "path": "other.safetensors", "kind": "other", "sha256": "0" * 64,
             "description": "Fréchet features"}
    record = {"name": "tinybench", "path": path.name, "kind": "generator", "resolution": 32,
              "sha256": pretrained.sha256_file(path), "size": path.stat().st_size, "description": "tiny"}
    # the bundled classifier, which scoring and the perceptual distance load by name
    real = json.loads((pretrained.PRETRAINED_DIR / pretrained.MANIFEST_NAME).read_text(encoding="utf-8"))
    clf = next(m for m in real["models"] if m["name"] == "synthfaces64-classifier")
    shutil.copy(pretrained.PRETRAINED_DIR / clf["path"], folder / clf["path"])
    (folder / "MANIFEST.json").write_text(json.dumps({"models": [record, other, clf], "note": "kept"}))
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", folder)
    args = ["--pairs", "2", "--quality", "fast", "--strengths", "2", "--threads", "1", "--record"]
    try:
        assert bench.main(["--model", "tinybench"] + args) == 0
        res = last_json(capsys.readouterr().out)
        data = json.loads((folder / "MANIFEST.json").read_text())
        assert [m["name"] for m in data["models"]] == ["tinybench", "other", "synthfaces64-classifier"]
        assert data["models"][1:] == [other, clf] and data["note"] == "kept"  # in place; the rest untouched
        assert "Fréchet" in (folder / "MANIFEST.json").read_text(encoding="utf-8")  # as written, not \u-escaped
        rec = data["models"][0]
        assert rec["best_recipe"] == res["best_recipe"] and rec["sha256"] == record["sha256"]
        assert rec["best_recipe_measured"]["both_rate"] == res["best_recipe_both_rate"]
        assert rec["best_recipe_measured"]["pairs"] == 2 and "--record" in rec["best_recipe_measured"]["command"]
        assert res["recorded"] == str(folder / "MANIFEST.json")
        assert api.load_model("tinybench").best_recipe == res["best_recipe"]
        before = (folder / "MANIFEST.json").read_text()
        for model in (str(path), "other", "nobody"):  # a path, a record that is no generator, no record
            assert bench.main(["--model", model] + args) == 1
            err = capsys.readouterr().err
            assert "--record needs the name of a generator" in err and "inverted" not in err  # fails before the work
        assert (folder / "MANIFEST.json").read_text() == before
    finally:
        monkeypatch.undo()
        pretrained.list_models()


def test_bench_train_smoke_and_bf16_compare(capsys):
    """bench_train on a 16 px lite network: float32 rounds, and with --cpu-bf16 compare, bfloat16
    rounds measured in the same process with their ratio (bfloat16 convolutions run, slowly, in
    software on CPUs without AVX512-BF16, so the comparison is only requested where it is native)."""
    from stylemix.ops.conv2d_resample import bf16_supported

    bench = _load("train")
    small = ["--res", "16", "--cbase", "64", "--cmax", "16", "--map", "1", "--batch", "4", "--steps", "1",
             "--rounds", "2", "--threads", "1"]
    mode = "compare" if bf16_supported() else "off"
    assert bench.main([*small, "--cpu-bf16", mode]) == 0
    out, err = capsys.readouterr()
    r = last_json(out)
    assert r["img_per_s"] > 0 and r["res"] == 16 and r["batch"] == 4 and r["conv_dtype"] == "float32"
    assert (r["channel_base"], r["channel_max"], r["map_layers"]) == (64, 16, 1)
    assert r["r1_interval"] == 16 and r["pl_interval"] == 4 and len(r["img_per_s_rounds"]) == 2
    if mode == "compare":
        assert r["img_per_s_bf16"] > 0 and len(r["img_per_s_bf16_rounds"]) == 2
        assert r["bf16_speedup"] == pytest.approx(r["img_per_s_bf16"] / r["img_per_s"], rel=0.01)
        assert "bfloat16 convolutions" in err
    else:
        assert bench.main([*small, "--cpu-bf16", "on"]) == 1
        assert "no native bfloat16" in capsys.readouterr().err
