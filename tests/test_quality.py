"""Tests for training.stylegan2.quality (the synthfaces64 quality bar) and its hook in train.py.

Tiny: 64 renders/samples, a 64x64 generator with 16 channels, one torch thread.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stylemix.networks.stylegan2 import Generator
from training.stylegan2 import quality
from training.stylegan2.train import main as train_main

from ._cli import last_json, run_cli

N = 64
RO = {"res": 64}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    # Only the quality cache moves: $STYLEMIX_CACHE also holds the compiled ops (built once, slow).
    monkeypatch.setattr(quality, "_cache_dir", lambda: tmp_path / "cache" / "quality")


@pytest.fixture(scope="module")
def classifier():
    from stylemix.attributes import load_classifier

    return load_classifier("synthfaces64")


@pytest.fixture(scope="module")
def tiny_G():
    torch.manual_seed(0)
    G = Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=64, img_channels=3,
                  mapping_kwargs=dict(num_layers=1), synthesis_kwargs=dict(channel_base=256, channel_max=16))
    return G.eval()


@pytest.fixture
def render_counter(monkeypatch):
    calls = []
    real = quality._render

    def counting(n, ro, seed, start=0):
        calls.append((n, seed, start))
        return real(n, ro, seed, start)

    monkeypatch.setattr(quality, "_render", counting)
    return calls


def test_untrained_G_report_keys_ratio_and_cache(tiny_G, classifier, render_counter, tmp_path):
    r = quality.synthfaces_quality(tiny_G, num_samples=N, render_options=RO, classifier=classifier, batch=8)
    for k in ("fd", "floor", "ratio", "rates", "reference_rates", "rate_gaps", "checks", "passed", "bar",
              "num_samples", "feature_net", "render_options", "reference_seed", "at_bar_size"):
        assert k in r, k
    assert set(r["rate_gaps"]) == set(quality.QUALITY_ATTRS)
    assert r["feature_net"] == "synthfaces64-classifier" and r["num_samples"] == N and not r["at_bar_size"]
    # n=64 < 128 feature dimensions: both FDs are inflated by singular covariances, yet the floor stays below.
    assert r["floor"] > 0 and r["ratio"] > 1 and r["fd"] > r["floor"]
    json.dumps(r, allow_nan=False)  # JSON-able
    assert {s for _, s, _ in render_counter} == {quality.DEFAULT_REFERENCE_SEED, quality.DEFAULT_REFERENCE_SEED + 1}
    assert len(list((tmp_path / "cache" / "quality").glob("*.npz"))) == 2

    # Second call: the reference and floor come from the cache, nothing is rendered again.
    n_calls = len(render_counter)
    r2 = quality.synthfaces_quality(tiny_G, num_samples=N, render_options=RO, classifier=classifier, batch=8)
    assert len(render_counter) == n_calls and r2["reference_cached"]
    assert r2["fd"] == pytest.approx(r["fd"]) and r2["floor"] == pytest.approx(r["floor"])
    # Other options, another key: rendered again.
    quality.reference_stats(N, {"res": 64, "glasses": True}, seed=quality.DEFAULT_REFERENCE_SEED,
                            classifier=classifier)
    assert len(render_counter) > n_calls


def test_noise_mode_random_is_seeded_and_leaves_torch_rng_alone(tiny_G, classifier):
    import copy

    G = copy.deepcopy(tiny_G)
    with torch.no_grad():
        for name, prm in G.named_parameters():
            if name.endswith("noise_strength"):
                prm.fill_(1.0)  # untrained layers start at 0: make the noise inputs matter
    const = quality.synthfaces_quality(G, num_samples=N, render_options=RO, classifier=classifier, batch=8,
                                       noise_mode="const")
    state = torch.get_rng_state()
    a = quality.synthfaces_quality(G, num_samples=N, render_options=RO, classifier=classifier, batch=8,
                                   noise_mode="random")
    assert torch.equal(torch.get_rng_state(), state)
    b = quality.synthfaces_quality(G, num_samples=N, render_options=RO, classifier=classifier, batch=8,
                                   noise_mode="random")
    assert a["noise_mode"] == "random" and const["noise_mode"] == "const"
    assert a["fd"] == pytest.approx(b["fd"]) and a["fd"] != pytest.approx(const["fd"])
    # the default is G's own default, fresh noise (as the official metrics sample)
    default = quality.synthfaces_quality(G, num_samples=N, render_options=RO, classifier=classifier, batch=8)
    assert default["noise_mode"] == "random" and default["fd"] == pytest.approx(a["fd"])
    with pytest.raises(ValueError, match="noise_mode"):
        quality.synthfaces_quality(G, num_samples=N, render_options=RO, classifier=classifier, noise_mode="none")


def test_floor_of_identical_sets_is_zero(classifier):
    s = quality.DEFAULT_REFERENCE_SEED
    same = quality.floor_distance(N, RO, seeds=(s, s), classifier=classifier)
    assert abs(same) < 1e-6
    assert quality.floor_distance(N, RO, seeds=(s, s + 1), classifier=classifier) > 1e-3


def test_bad_inputs_are_value_errors(tiny_G, classifier):
    with pytest.raises(ValueError, match="reserved"):
        quality.synthfaces_quality(tiny_G, num_samples=N, render_options=RO, reference=7104, classifier=classifier)
    with pytest.raises(ValueError, match="training data"):
        quality.synthfaces_quality(tiny_G, num_samples=N, render_options=RO, reference=5, exclude_seeds=[5],
                                   classifier=classifier)
    with pytest.raises(ValueError, match="res 32"):
        quality.synthfaces_quality(tiny_G, num_samples=N, render_options={"res": 32}, classifier=classifier)
    for bad in ('{"res": 64, "colour": 1}', "{}", "not json", {"res": 4}):
        with pytest.raises(ValueError):
            quality.check_render_options(bad)
    assert quality.check_render_options('{"res": 64, "shaved": true}') == {"res": 64, "shaved": True}


def test_render_options_from_synthfaces_zip(tmp_path):
    from training.data.synthfaces import build

    out = str(tmp_path / "sf.zip")
    build(out, 3, 16, 11, progress=False)
    found = quality.render_options_from_dataset(out)
    assert found == {"render_options": {"res": 16}, "train_seeds": [11]}
    assert quality.render_options_from_dataset(tmp_path / "missing.zip") is None


def _run(argv):
    return run_cli(train_main, argv)


def test_train_cli_metrics_option(tmp_path):
    from training.data.synthfaces import build

    data = str(tmp_path / "sf.zip")
    build(data, 4, 16, 3, progress=False)
    base = ["--data", data, "--outdir", str(tmp_path / "o"), "--cfg", "lite", "--dry-run"]
    rc, out, err = _run(base + ["--metrics", "synthfaces", "--metrics-n", "2000"])
    assert rc == 0, err
    m = json.loads(out)["metrics"]
    assert m["name"] == "synthfaces" and m["num_samples"] == 2000 and m["render_options"] == {"res": 16}
    assert m["render_options_source"] == "dataset" and m["exclude_seeds"] == [3]
    rc, out, err = _run(base)
    assert rc == 0 and json.loads(out)["metrics"] is None
    rc, out, err = _run(base + ["--metrics", "synthfaces", "--metrics-render-options", '{"res": 16, "smile": true}'])
    assert rc == 0 and json.loads(out)["metrics"]["render_options"] == {"res": 16, "smile": True}
    rc, out, err = _run(base + ["--metrics", "synthfaces", "--metrics-render-options", '{"res": 32}'])
    assert rc == 1 and "res 32" in err
    rc, out, err = _run(base + ["--metrics-n", "100"])
    assert rc == 1 and "needs --metrics synthfaces" in err


def test_train_cli_metrics_need_render_options_for_other_data(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    rc, out, err = _run(["--data", str(folder), "--outdir", str(tmp_path / "o"), "--cfg", "lite", "--dry-run",
                         "--metrics", "synthfaces"])
    assert rc == 1 and "--metrics-render-options" in err and len(err.strip().splitlines()) == 1


def test_metrics_fn_writes_jsonl(tiny_G, classifier, tmp_path, monkeypatch):
    from training.stylegan2.train import make_metrics_fn

    fn = make_metrics_fn(dict(name="synthfaces", num_samples=N, render_options=RO,
                              reference_seed=quality.DEFAULT_REFERENCE_SEED, exclude_seeds=[1]), tmp_path)
    monkeypatch.setattr("stylemix.attributes.load_classifier", lambda name: classifier)
    res = fn(tiny_G, 0.0)
    assert res["name"] == "synthfaces" and res["ratio"] > 1 and "rate_gaps" in res
    lines = (tmp_path / f"metric-synthfaces{N}.jsonl").read_text().splitlines()
    rec = json.loads(lines[-1])
    assert rec["snapshot"] == "network-snapshot-000000.safetensors" and rec["results"]["fd"] == res["fd"]


def test_quality_of_a_training_state_G_or_G_ema(tiny_G, classifier, tmp_path):
    from stylemix.checkpoints import save_generator
    from training.stylegan2 import snapshot as snap_io

    kwargs = dict(z_dim=16, c_dim=0, w_dim=16, img_resolution=64, img_channels=3,
                  mapping_kwargs=dict(num_layers=1), synthesis_kwargs=dict(channel_base=256, channel_max=16))
    torch.manual_seed(1)
    raw = Generator(**kwargs).eval()  # stands for the training weights; tiny_G for their moving average
    state = tmp_path / "training-state-000000.064.pt"
    snap_io.atomic_torch_save(dict(format=snap_io.STATE_FORMAT, version=snap_io.STATE_VERSION,
                                   options=dict(G_kwargs=kwargs), G=raw.state_dict(), G_ema=tiny_G.state_dict()),
                              state)
    for net, want in (("G", raw), ("G_ema", tiny_G)):
        got = quality.load_quality_generator(state, net=net).state_dict()
        assert all(torch.equal(got[k], v) for k, v in want.state_dict().items()), net

    tiny_G.init_kwargs = kwargs
    snap = save_generator(tiny_G, tmp_path / "snap.safetensors", provenance={"test": True})
    got = quality.load_quality_generator(snap).state_dict()  # G_ema by default
    assert all(torch.equal(got[k], v) for k, v in tiny_G.state_dict().items())
    with pytest.raises(ValueError, match="training-state-KIMG.pt"):
        quality.load_quality_generator(snap, net="G")

    # the CLI measures the network it names
    rc, out, err = run_cli(quality.main, ["--model", str(state), "--net", "G", "--render-options", json.dumps(RO),
                                          "--n", str(N)])
    assert rc == 0, err
    r = last_json(out)
    direct = quality.synthfaces_quality(raw, num_samples=N, render_options=RO, classifier=classifier)
    assert r["net"] == "G" and r["fd"] == pytest.approx(direct["fd"], rel=1e-6)
    ema = quality.synthfaces_quality(tiny_G, num_samples=N, render_options=RO, classifier=classifier)
    assert abs(ema["fd"] - r["fd"]) > 1e-3  # G and G_ema differ, so the choice shows
    rc, _, err = run_cli(quality.main, ["--model", str(snap), "--net", "G", "--render-options", json.dumps(RO),
                                        "--n", str(N)])
    assert rc == 1 and "holds no training generator G" in err


def test_diagnosis_splits_the_distance_and_names_the_axes(classifier):
    from training.evaluation.metrics import ReferenceStats

    n = 300
    ref, _ = quality.reference_stats(n, RO, seed=quality.DEFAULT_REFERENCE_SEED, classifier=classifier)
    other, _ = quality.reference_stats(n, RO, seed=quality.DEFAULT_REFERENCE_SEED + 1, classifier=classifier)
    w, v = np.linalg.eigh(ref.sigma)
    w0, v0 = w[-1], v[:, -1]
    # a "generator" half as spread as the renders (a quarter of the variance), shifted 2 sd along the first axis
    fake = ReferenceStats(ref.feature_net, ref.mu + 2 * np.sqrt(w0) * v0, 0.25 * ref.sigma, n)
    d = quality.diagnose(ref, other, fake, classifier=classifier, render_options=RO,
                         reference_seed=quality.DEFAULT_REFERENCE_SEED, components=3, params_n=n)
    s = d["samples"]
    assert s["mean_term"] == pytest.approx(4 * w0, rel=1e-6)
    assert s["mean_term"] + s["covariance_term"] == pytest.approx(s["fd"])
    assert s["fd"] == pytest.approx(quality._fd(ref, fake))
    assert d["floor"]["fd"] == pytest.approx(quality.floor_distance(n, RO, classifier=classifier))
    assert d["variance_ratio"] == pytest.approx(0.25) and 0.8 < d["floor_variance_ratio"] < 1.25
    comps = d["components"]
    assert [c["component"] for c in comps] == [0, 1, 2]
    assert comps[0]["reference_variance"] == pytest.approx(w0)
    assert all(c["variance_ratio"] == pytest.approx(0.25) for c in comps)
    assert abs(comps[0]["mean_shift_sd"]) == pytest.approx(2.0) and abs(comps[1]["mean_shift_sd"]) < 1e-6
    assert all(0.5 < c["floor_variance_ratio"] < 2 for c in comps)
    # the features' main axis is the beard (the classifier's strongest trait): the diagnosis says so
    name, r = comps[0]["follows"][0]
    assert name in ("attributes.has_beard", "attributes.beard=none") and abs(r) > 0.7
    assert all(len(c["follows"]) == 2 and all(-1 <= x <= 1 for _, x in c["follows"]) for c in comps)
    # a uniform narrowing mixes no axes: the covariance term is all "along the axes"
    assert s["along_axes"] == pytest.approx(s["covariance_term"], rel=1e-6, abs=1e-9)
    assert abs(s["between_axes"]) < 1e-6 * s["covariance_term"]
    assert all(abs(r) < 1e-6 for _, _, r, _ in d["correlated_axes"]) and len(d["correlated_axes"]) == 3
    f = d["floor"]
    assert f["along_axes"] + f["between_axes"] == pytest.approx(f["covariance_term"]) and f["between_axes"] > 0
    table = quality.format_diagnosis(d)
    assert "covariance term" in table and "attributes." in table and len(table.splitlines()) == 4 + 3 + 1
    # the same variances, but the first and third axes move together (correlation 0.6): the
    # per-axis part stays 0 and the between-axes part is what the mixing adds
    v1 = v[:, -3]
    mixed = ReferenceStats(ref.feature_net, ref.mu,
                           ref.sigma + 0.6 * np.sqrt(w0 * w[-3]) * (np.outer(v0, v1) + np.outer(v1, v0)), n)
    m = quality.diagnose(ref, other, mixed, classifier=classifier, render_options=RO,
                         reference_seed=quality.DEFAULT_REFERENCE_SEED, components=3, params_n=n, top_pairs=1)
    assert m["samples"]["along_axes"] == pytest.approx(0, abs=1e-6 * w0)
    assert m["samples"]["between_axes"] == pytest.approx(quality._fd(ref, mixed)) and m["samples"]["between_axes"] > 0
    assert [[a, b] for a, b, _, _ in m["correlated_axes"]] == [[0, 2]]
    assert abs(m["correlated_axes"][0][2]) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="components"):
        quality.diagnose(ref, other, fake, classifier=classifier, render_options=RO,
                         reference_seed=quality.DEFAULT_REFERENCE_SEED, components=0)


def test_flat_params_numbers_lists_and_indicators():
    got = quality._flat_params({"a": {"x": 0.5, "on": True, "kind": "full", "rgb": [0.1, 0.2]}, "n": 3})
    assert got == {"a.x": 0.5, "a.on": 1.0, "a.kind=full": 1.0, "a.rgb[0]": 0.1, "a.rgb[1]": 0.2, "n": 3.0}


@pytest.fixture
def tiny_cli_args(tiny_G, tmp_path):
    """The CLI's arguments for the tiny G saved as a StyleMix snapshot, at the tests' size."""
    from stylemix.checkpoints import save_generator

    tiny_G.init_kwargs = dict(z_dim=16, c_dim=0, w_dim=16, img_resolution=64, img_channels=3,
                              mapping_kwargs=dict(num_layers=1),
                              synthesis_kwargs=dict(channel_base=256, channel_max=16))
    snap = save_generator(tiny_G, tmp_path / "snap.safetensors", provenance={"test": True})
    base = ["--model", str(snap), "--render-options", json.dumps(RO), "--n", str(N)]
    return base


def test_cli_diagnose(tiny_cli_args, classifier):
    base = tiny_cli_args
    rc, text, err = run_cli(quality.main, base + ["--diagnose", "3"])
    assert rc == 0, err
    r = last_json(text)
    d = r["diagnosis"]
    assert len(d["components"]) == 3 and d["params_n"] == N and "diagnosis: fd" in text
    assert d["samples"]["fd"] == pytest.approx(r["fd"]) and d["floor"]["fd"] == pytest.approx(r["floor"])
    rc, out, _ = run_cli(quality.main, base)
    assert rc == 0
    assert "diagnosis" not in last_json(out)
    rc, _, err = run_cli(quality.main, base + ["--diagnose", "-1"])
    assert rc == 1
    assert "diagnose_components" in err


def test_parse_seeds():
    assert quality.parse_seeds("0-3") == [0, 1, 2, 3]
    assert quality.parse_seeds("0,5, 7") == [0, 5, 7]
    assert quality.parse_seeds("0-2,9") == [0, 1, 2, 9]
    for bad, match in (("3-1", "backwards"), ("0,0", "twice"), ("a", "list"), ("-1", "list"), ("", "list")):
        with pytest.raises(ValueError, match=match):
            quality.parse_seeds(bad)


def test_cli_seeds_reports_each_seed_and_the_worst(tiny_cli_args, classifier, tmp_path):
    base = tiny_cli_args
    rc, text, err = run_cli(quality.main, base + ["--seeds", "0-1", "--out", str(tmp_path / "q.json")])
    assert rc == 0, err
    s = last_json(text)
    assert s == json.loads((tmp_path / "q.json").read_text())
    assert s["seeds"] == [0, 1] and [r["seed"] for r in s["reports"]] == [0, 1]
    # each seed's report is what --seed S gives on its own
    rc, one, _ = run_cli(quality.main, base + ["--seed", "1"])
    assert rc == 0
    alone = last_json(one)
    assert s["reports"][1]["fd"] == pytest.approx(alone["fd"]) and s["reports"][1]["rates"] == alone["rates"]
    assert s["reports"][0]["fd"] != s["reports"][1]["fd"]
    ratios = [r["ratio"] for r in s["reports"]]
    assert s["ratio_max"] == pytest.approx(max(ratios)) and s["ratio_mean"] == pytest.approx(sum(ratios) / 2)
    for a, g in s["worst_rate_gaps"].items():
        assert abs(g) == pytest.approx(max(abs(r["rate_gaps"][a]) for r in s["reports"]))
    # an untrained G fails the bar at both seeds, and the summary says so
    assert s["passed_seeds"] == [] and s["passed_all"] is False and s["at_bar_size"] is False
    assert "seed 0 " in text and "seed 1 " in text and "passed at 0 of 2" in text and "FAIL" in text
    # a summary of passing reports passes; one failing seed fails it
    ok = dict(s["reports"][0], passed=True)
    assert quality.summarize_seeds([ok, dict(ok, seed=1)])["passed_all"] is True
    assert quality.summarize_seeds([ok, dict(ok, seed=1, passed=False)])["passed_seeds"] == [0]
    for extra, match in ((["--seeds", "0-1", "--seed", "2"], "not both"), (["--seeds", "0-1", "--diagnose"], "one seed"),
                         (["--seeds", "2-1"], "backwards")):
        rc, _, err = run_cli(quality.main, base + extra)
        assert rc == 1
        assert match in err and "Traceback" not in err
