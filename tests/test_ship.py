"""Tests for training.stylegan2.ship: a run's G_ema snapshot into a pretrained/ folder + MANIFEST record.

Everything runs on a fake run directory in tmp_path (a tiny generator saved as snapshots, a
hand-written stats.jsonl and metric log, a fake quality report) and a temporary copy of the real
pretrained/MANIFEST.json; the real pretrained/ folder is never written.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from stylemix import pretrained
from stylemix.checkpoints import load_generator, read_header, save_generator
from stylemix.networks.stylegan2 import Generator
from training.stylegan2 import ship as ship_mod
from training.stylegan2.train import build_options, build_parser
from training.stylegan2.training_loop import TrainingSet

from ._cli import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--cfg", "lite", "--cbase", "256", "--cmax", "32", "--map", "1", "--wdim", "32", "--batch", "4",
        "--workers", "0"]


class MemImages:
    def __init__(self, n=8, res=16):
        self.x = np.random.RandomState(0).randint(0, 256, size=(n, 3, res, res), dtype=np.uint8)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], np.zeros([0], np.float32)


def options_for(argv, data="/data/synthfaces16.zip") -> dict:
    ts = TrainingSet(MemImages(), name="synthfaces16", xflip="--mirror" in argv)  # as open_training_set does
    args = build_parser().parse_args(["--data", data, *argv])
    return build_options(args, training_set=ts, world_size=1)


def tiny_G(seed: int) -> Generator:
    o = options_for(TINY)
    torch.manual_seed(seed)
    G = Generator(**o["G_kwargs"]).eval()
    G.init_kwargs = o["G_kwargs"]
    return G


def quality_report(model, *, passed=True, n=5000, ro=None) -> dict:
    return {"metric": "synthfaces", "model": str(model), "fd": 0.5, "floor": 0.2, "ratio": 2.5, "passed": passed,
            "num_samples": n, "at_bar_size": n == 5000, "rate_gaps": {"has_beard": 0.01, "smile": -0.02},
            "render_options": ro or {"res": 16}, "feature_net": "synthfaces64-classifier"}


@pytest.fixture()
def run_dir(tmp_path) -> Path:
    """A run with snapshots at 0.004, 0.008 and 0.012 kimg (latest.json -> 0.008), two of them
    measured by the per-snapshot metric, and a stats.jsonl with two resumes and a torn line."""
    run = tmp_path / "runs" / "00003-synthfaces16-mirror-lite-kimg0.012-ada"
    run.mkdir(parents=True)
    o = options_for([*TINY, "--mirror", "--kimg", "0.012", "--tick", "0.004", "--snap", "1", "--metrics", "synthfaces",
                     "--metrics-n", "200", "--metrics-render-options", '{"res": 16}'])
    o["run_dir"] = str(run)
    o["created"] = "2026-11-22T05:01:56"
    (run / "training_options.json").write_text(json.dumps(o, indent=2))
    for i, tag in enumerate(("000000.004", "000000.008", "000000.012")):
        save_generator(tiny_G(i), run / f"network-snapshot-{tag}.safetensors",
                       provenance={"trainer": "training.stylegan2", "kimg": (i + 1) * 0.004})
    (run / "latest.json").write_text(json.dumps({"network": "network-snapshot-000000.008.safetensors",
                                                 "state": "training-state-000000.008.pt", "cur_nimg": 8}))
    lines = [
        {"event": "start", "step": 0, "kimg": 0.0},
        {"tick": 0, "step": 1, "kimg": 0.004, "sec": 1.5, "sec_per_tick": 1.5},
        {"event": "resume", "step": 1, "kimg": 0.004},
        {"tick": 1, "step": 2, "kimg": 0.008, "sec": 4.0, "sec_per_tick": 2.5, "cpu_conv_dtype": "bfloat16"},
        {"event": "resume", "step": 2, "kimg": 0.008},  # after the 0.008 snapshot: not one of its resumes
        {"tick": 2, "step": 3, "kimg": 0.012, "sec": 7.0, "sec_per_tick": 3.0},
    ]
    text = "\n".join(json.dumps(x) for x in lines) + '\n{"tick": 3, "kimg": 0.0'  # a torn last line
    (run / "stats.jsonl").write_text(text)
    metric = [
        {"kimg": 0.004, "results": {"ratio": 9.0, "passed": False, "rate_gaps": {"smile": 0.2}}},
        {"kimg": 0.008, "results": {"ratio": 3.0, "passed": False, "rate_gaps": {"smile": 0.1}}},
        {"kimg": 0.012, "results": {"error": "RuntimeError: boom"}},
    ]
    (run / "metric-synthfaces200.jsonl").write_text("\n".join(json.dumps(x) for x in metric) + "\n")
    return run


@pytest.fixture()
def pretrained_dir(tmp_path) -> Path:
    """A copy of the real MANIFEST (and nothing else) in a temporary pretrained/ folder."""
    folder = tmp_path / "pretrained"
    folder.mkdir()
    real = pretrained.PRETRAINED_DIR / pretrained.MANIFEST_NAME
    (folder / "MANIFEST.json").write_bytes(real.read_bytes())
    return folder


def write_quality(tmp_path, report, name="quality.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(report))
    return p


def run_main(argv) -> tuple[int, str, str]:
    return run_cli(ship_mod.main, argv)


# ------------------------------------------------------------------------------------------------


def test_ship_copies_snapshot_and_writes_record(run_dir, pretrained_dir, tmp_path):
    manifest = pretrained_dir / "MANIFEST.json"
    before = json.loads(manifest.read_text())
    snap = run_dir / "network-snapshot-000000.008.safetensors"
    q = write_quality(tmp_path, quality_report(snap))
    out = pretrained_dir / "synthfaces16.safetensors"
    rc, stdout, stderr = run_main(["--run", str(run_dir), "--quality-json", str(q), "--name", "synthfaces16",
                                   "--out", str(out), "--manifest", str(manifest)])
    assert rc == 0, stderr
    assert "shipped network-snapshot-000000.008.safetensors" in stdout

    # The file is the snapshot, byte for byte, and loads.
    assert out.read_bytes() == snap.read_bytes()
    G = load_generator(out)
    ref = load_generator(snap)
    for (k, a), (_, b) in zip(G.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), k

    after = json.loads(manifest.read_text())
    assert after["models"][:-1] == before["models"]  # every other record untouched, in order
    rec = after["models"][-1]
    assert rec["name"] == "synthfaces16" and rec["path"] == "synthfaces16.safetensors"
    assert rec["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest() and rec["size"] == out.stat().st_size
    assert rec["kind"] == "generator" and rec["aligned_domain"] == "synthfaces" and rec["resolution"] == 16
    assert rec["interim"] is False and rec["kimg"] == 0.008 and rec["snapshot"] == snap.name
    assert rec["training_time_s"] == 4.0 and rec["ticks"] == 2 and rec["resumes"] == 1  # 1.5 + 2.5, not tick 2
    assert rec["resumed_by"] == f"python -m training.stylegan2.train --resume {run_dir}"
    assert rec["kimg_by_conv_dtype"] == {"bfloat16": 0.004, "float32": 0.004}  # tick 1 ran with --cpu-bf16
    assert rec["quality"] == quality_report(snap)
    assert rec["train_data"]["render_options"] == {"res": 16}
    assert "metrics" in rec["train_data"]["render_options_source"]
    assert rec["train_data"]["xflip"] is True and rec["train_data"]["name"] == "synthfaces16"
    assert "torch " + torch.__version__ in rec["hardware"] and "cores" in rec["hardware"]
    assert rec["licence"] and rec["description"]
    cmd = shlex.split(rec["made_by"])
    assert cmd[:3] == ["python", "-m", "training.stylegan2.train"]
    assert cmd[cmd.index("--outdir") + 1] == str(run_dir.parent) and "--mirror" in cmd
    assert cmd[cmd.index("--kimg") + 1] == "0.012" and cmd[cmd.index("--metrics-n") + 1] == "200"

    # The registry reads the record (a manifest in another folder: parse it the same way).
    entries = pretrained._manifest_entries(manifest)
    e = next(e for e in entries if e.name == "synthfaces16")
    assert e.kind == "generator" and e.sha256 == rec["sha256"] and e.bundled_path == "synthfaces16.safetensors"


def test_the_real_pretrained_folder_is_left_alone(run_dir, pretrained_dir, tmp_path):
    real = pretrained.PRETRAINED_DIR / pretrained.MANIFEST_NAME
    stamp = (real.read_bytes(), real.stat().st_mtime_ns)
    snap = run_dir / "network-snapshot-000000.008.safetensors"
    ship_mod.ship(run_dir, quality_json=write_quality(tmp_path, quality_report(snap)), name="synthfaces16",
                  out=pretrained_dir / "synthfaces16.safetensors", log=lambda m: None)  # manifest: next to out
    assert (real.read_bytes(), real.stat().st_mtime_ns) == stamp
    models = json.loads((pretrained_dir / "MANIFEST.json").read_text())["models"]
    assert any(m["name"] == "synthfaces16" for m in models)


def test_snapshot_choice_latest_best_kimg(run_dir):
    assert ship_mod.find_snapshot(run_dir, "latest")[1] == 8  # latest.json, not the newest file
    assert ship_mod.find_snapshot(run_dir, "best")[1] == 8    # ratio 3 < 9; the failed evaluation is ignored
    p, nimg = ship_mod.find_snapshot(run_dir, "0.012")
    assert nimg == 12 and p.name == "network-snapshot-000000.012.safetensors"
    with pytest.raises(ValueError, match=r"no snapshot at kimg 5; snapshots at kimg 0.004, 0.008, 0.012"):
        ship_mod.find_snapshot(run_dir, "5")
    with pytest.raises(ValueError, match="kimg value"):
        ship_mod.find_snapshot(run_dir, "newest")
    (run_dir / "latest.json").unlink()
    assert ship_mod.find_snapshot(run_dir, "latest")[1] == 12  # no pointer: the newest snapshot


def test_below_the_bar_needs_interim(run_dir, pretrained_dir, tmp_path):
    snap = run_dir / "network-snapshot-000000.012.safetensors"
    out = pretrained_dir / "synthfaces16.safetensors"
    argv = ["--run", str(run_dir), "--snapshot", "0.012", "--name", "synthfaces16", "--out", str(out)]
    for report in (quality_report(snap, passed=False), quality_report(snap, passed=True, n=2000)):
        q = write_quality(tmp_path, report)
        rc, _, err = run_main(argv + ["--quality-json", str(q)])
        assert rc == 1 and err.startswith("error: ") and "--interim" in err and err.count("\n") == 1
        assert not out.exists()
    rc, _, err = run_main(argv + ["--quality-json", str(q), "--interim"])
    assert rc == 0, err
    rec = next(m for m in json.loads((pretrained_dir / "MANIFEST.json").read_text())["models"]
               if m["name"] == "synthfaces16")
    assert rec["interim"] is True and "interim" in rec["description"] and rec["kimg"] == 0.012


def test_quality_report_must_be_about_the_snapshot(run_dir, pretrained_dir, tmp_path):
    out = pretrained_dir / "synthfaces16.safetensors"
    other = run_dir / "network-snapshot-000000.004.safetensors"  # measured another snapshot
    q = write_quality(tmp_path, quality_report(other))
    with pytest.raises(ValueError, match="weights differ"):
        ship_mod.ship(run_dir, quality_json=q, name="synthfaces16", out=out, log=lambda m: None)
    q = write_quality(tmp_path, quality_report("/gone/network-snapshot-000000.004.safetensors"))
    with pytest.raises(ValueError, match="measure the snapshot you ship"):
        ship_mod.ship(run_dir, quality_json=q, name="synthfaces16", out=out, log=lambda m: None)
    snap = run_dir / "network-snapshot-000000.008.safetensors"
    q = write_quality(tmp_path, quality_report(snap, ro={"res": 16, "has_beard": True}))
    with pytest.raises(ValueError, match="render options"):
        ship_mod.ship(run_dir, quality_json=q, name="synthfaces16", out=out, log=lambda m: None)
    assert not out.exists()


def test_ship_half_stores_float16_and_needs_the_float16_copy_measured(run_dir, pretrained_dir, tmp_path):
    from stylemix.__main__ import main as stylemix_main

    snap = run_dir / "network-snapshot-000000.008.safetensors"
    out = pretrained_dir / "synthfaces16.safetensors"
    argv = ["--run", str(run_dir), "--snapshot", "0.008", "--name", "synthfaces16", "--out", str(out), "--half"]
    # a report of the float32 snapshot does not describe the float16 weights
    rc, _, err = run_main(argv + ["--quality-json", str(write_quality(tmp_path, quality_report(snap)))])
    assert rc == 1 and "--half" in err and "convert" in err and err.count("\n") == 1
    rc, _, err = run_main(argv + ["--quality-json", str(write_quality(tmp_path, quality_report("gone.safetensors")))])
    assert rc == 1 and "float16 copy" in err
    assert not out.exists()

    copy = tmp_path / "copy16.safetensors"
    assert stylemix_main(["convert", str(snap), str(copy), "--half"]) == 0
    rc, _, err = run_main(argv + ["--quality-json", str(write_quality(tmp_path, quality_report(copy)))])
    assert rc == 0, err
    assert read_header(out)["storage_dtype"] == "float16"
    assert read_header(out)["weights_sha256"] == read_header(copy)["weights_sha256"]
    assert out.stat().st_size < 0.6 * snap.stat().st_size
    ref = load_generator(snap)
    assert all(torch.equal(a, b.half().float()) for a, b in zip(load_generator(out).state_dict().values(),
                                                                ref.state_dict().values()))
    rec = next(m for m in json.loads((pretrained_dir / "MANIFEST.json").read_text())["models"]
               if m["name"] == "synthfaces16")
    assert rec["storage_dtype"] == "float16" and rec["size"] == out.stat().st_size
    assert rec["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()

    # without --half: the float32 snapshot again, byte for byte
    rc, _, err = run_main(argv[:-1] + ["--quality-json", str(write_quality(tmp_path, quality_report(snap)))])
    assert rc == 0, err
    assert out.read_bytes() == snap.read_bytes()
    rec = next(m for m in json.loads((pretrained_dir / "MANIFEST.json").read_text())["models"]
               if m["name"] == "synthfaces16")
    assert rec["storage_dtype"] == "float32"


def test_quality_json_from_captured_stdout(tmp_path):
    report = quality_report("net.safetensors")
    p = tmp_path / "q.txt"
    p.write_text("synthfaces quality  fd 0.5000 ...\n  rates ...\n" + json.dumps(report) + "\n")
    assert ship_mod.read_quality_json(p) == report
    p.write_text("no json here\n")
    with pytest.raises(ValueError, match="no JSON object"):
        ship_mod.read_quality_json(p)
    p.write_text(json.dumps({"fd": 1.0}))
    with pytest.raises(ValueError, match="not a synthfaces quality report"):
        ship_mod.read_quality_json(p)


def test_manifest_record_replaced_in_place(tmp_path):
    manifest = tmp_path / "MANIFEST.json"
    a = {"name": "a", "path": "a.safetensors", "sha256": "1" * 64}
    m = {"name": "m", "path": "m.safetensors", "sha256": "2" * 64, "best_recipe": {"layers": [0, 3]}}
    z = {"name": "z", "path": "z.safetensors"}
    manifest.write_text(json.dumps({"models": [a, m, z], "note": "kept"}))
    assert ship_mod.update_manifest_record(manifest, {"name": "m", "path": "m.safetensors", "sha256": "2" * 64}) == []
    data = json.loads(manifest.read_text())
    assert [r["name"] for r in data["models"]] == ["a", "m", "z"] and data["note"] == "kept"
    assert data["models"][1]["best_recipe"] == {"layers": [0, 3]}  # same weights: other tools' keys survive
    ship_mod.update_manifest_record(manifest, {**data["models"][1], "best_recipe": {"layers": [1]}})
    data = json.loads(manifest.read_text())
    assert data["models"][1]["best_recipe"] == {"layers": [1]}  # ... unless the new record sets them
    dropped = ship_mod.update_manifest_record(manifest, {"name": "m", "path": "m.safetensors", "sha256": "3" * 64})
    data = json.loads(manifest.read_text())
    assert dropped == ["best_recipe"] and "best_recipe" not in data["models"][1]
    assert data["models"][0] == a and data["models"][2] == z
    assert not list(tmp_path.glob("*.tmp*"))


def test_resaves_a_snapshot_that_is_not_self_describing(run_dir, pretrained_dir, tmp_path):
    from tests._ckpt_fakes import fake_official_modules, official_pickle_bytes

    G = tiny_G(5)
    with fake_official_modules(tmp_path / "marker"):
        data = official_pickle_bytes({"G_ema": (G, G.init_kwargs)}, marker=tmp_path / "marker", augment_pipe=False)
    pkl = run_dir / "network-snapshot-000000.016.pkl"
    pkl.write_bytes(data)
    with open(run_dir / "stats.jsonl", "a") as f:
        f.write('\n{"tick": 3, "step": 4, "kimg": 0.016, "sec": 9.0, "sec_per_tick": 2.0}\n')
    q = write_quality(tmp_path, quality_report(pkl))
    out = pretrained_dir / "synthfaces16.safetensors"
    rec = ship_mod.ship(run_dir, quality_json=q, name="synthfaces16", out=out, snapshot="0.016", log=lambda m: None)
    header = read_header(out)  # a StyleMix file now, saying where it came from
    assert header["provenance"]["snapshot"] == pkl.name and header["provenance"]["run_dir"] == run_dir.name
    G2 = load_generator(out)
    for (k, a), (_, b) in zip(G.state_dict().items(), G2.state_dict().items()):
        assert torch.equal(a, b), k
    assert rec["training_time_s"] == 9.0 and rec["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert not list(pretrained_dir.glob("*.tmp"))


@pytest.mark.parametrize("argv", [
    TINY,
    [*TINY, "--mirror", "--kimg", "300", "--gamma", "0.5", "--snap", "10", "--tick", "2", "--seed", "3"],
    [*TINY, "--batch-gpu", "2", "--mbstd", "2", "--aug", "fixed", "--p", "0.2", "--keep-states", "0"],
    ["--cfg", "auto", "--batch", "4", "--aug", "noaug", "--freezed", "2", "--workers", "0"],
    [*TINY, "--target", "0.7", "--augpipe", "bg", "--metrics", "synthfaces", "--metrics-render-options",
     '{"res": 16, "has_beard": true}'],
])
def test_training_command_round_trips(argv, tmp_path):
    o = options_for(argv)
    o["run_dir"] = str(tmp_path / "runs" / "00000-x")
    cmd = shlex.split(ship_mod.training_command(o))
    assert cmd[:3] == ["python", "-m", "training.stylegan2.train"]
    rest = cmd[3:]
    assert rest[rest.index("--outdir") + 1] == str(tmp_path / "runs")
    rest = rest[:rest.index("--outdir")] + rest[rest.index("--outdir") + 2:]
    o2 = options_for(rest[2:], data=rest[1])  # rest = ["--data", path, ...]
    o2["run_dir"] = o["run_dir"]
    assert o2 == o


def test_ship_records_what_resumes_changed(run_dir, pretrained_dir, tmp_path):
    o = json.loads((run_dir / "training_options.json").read_text())
    o["resume_changes"] = [{"batch": 256, "ema": 80.0, "timestamp": 1.0}, {"data": "/d/faces.zip", "timestamp": 2.0},
                          {"glr": 0.001, "dlr": 0.001, "at_kimg": 0.004, "timestamp": 3.0},
                          {"glr": 0.0005, "dlr": 0.0005, "at_kimg": 0.008, "timestamp": 4.0}]  # after the snapshot
    (run_dir / "training_options.json").write_text(json.dumps(o))
    snap = run_dir / "network-snapshot-000000.008.safetensors"
    q = write_quality(tmp_path, quality_report(snap))
    manifest = pretrained_dir / "MANIFEST.json"
    rc, _, stderr = run_main(["--run", str(run_dir), "--quality-json", str(q), "--name", "synthfaces16",
                              "--out", str(pretrained_dir / "synthfaces16.safetensors"), "--manifest", str(manifest)])
    assert rc == 0, stderr
    rec = json.loads(manifest.read_text())["models"][-1]
    assert rec["resumed_by"] == (f"python -m training.stylegan2.train --resume {run_dir}; once with --batch 256 "
                                 f"--ema 80; once with --data /d/faces.zip; once with --glr 0.001 --dlr 0.001 "
                                 f"from 0.004 kimg")


def test_ship_with_d_pairs_the_discriminator_and_g_for_resume(run_dir, pretrained_dir, tmp_path, monkeypatch):
    from stylemix.networks.stylegan2 import Discriminator
    from training.stylegan2 import snapshot as snap_io

    o = json.loads((run_dir / "training_options.json").read_text())
    torch.manual_seed(5)
    D = Discriminator(**o["D_kwargs"])
    G = tiny_G(11)  # the run's G at the snapshot (the snapshot file holds G_ema)
    snap = run_dir / "network-snapshot-000000.008.safetensors"
    q = write_quality(tmp_path, quality_report(snap))
    manifest = pretrained_dir / "MANIFEST.json"
    out = pretrained_dir / "synthfaces16.safetensors"
    argv = ["--run", str(run_dir), "--quality-json", str(q), "--name", "synthfaces16", "--out", str(out),
            "--manifest", str(manifest)]
    before = manifest.read_bytes()
    rc, _, err = run_main([*argv, "--with-d"])  # no training state saved at 0.008 kimg
    assert rc == 1 and "--with-d: no training state for network-snapshot-000000.008.safetensors" in err
    assert manifest.read_bytes() == before and not out.exists()

    snap_io.atomic_torch_save({"format": snap_io.STATE_FORMAT, "version": 1, "D": D.state_dict(),
                               "G": G.state_dict()}, run_dir / "training-state-000000.008.pt")
    rc, stdout, err = run_main([*argv, "--with-d"])
    assert rc == 0, err
    d_out = pretrained_dir / "synthfaces16_discriminator.safetensors"
    g_out = pretrained_dir / "synthfaces16_training_generator.safetensors"
    recs = {r["name"]: r for r in json.loads(manifest.read_text())["models"]}
    for kind, path in (("discriminator", d_out), ("training-generator", g_out)):
        rec = recs[f"synthfaces16-{kind}"]
        assert rec["kind"] == kind and rec["model"] == "synthfaces16" and rec["path"] == path.name
        assert rec["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and rec["kimg"] == 0.008
        assert rec["snapshot"] == "training-state-000000.008.pt"
    assert read_header(g_out)["provenance"]["weights"] == "G"

    def same(a, b):
        return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)

    # `train --resume <shipped file>` finds both beside the generator: G, G_ema and D of the run
    nets = snap_io.load_resume_networks(out)
    assert same(nets["D"], D.state_dict()) and same(nets["G"], G.state_dict())
    assert same(nets["G_ema"], load_generator(snap).state_dict())
    assert "D: " in nets["source"] and "G: " in nets["source"]
    bare = snap_io.load_resume_networks(snap)  # a snapshot in a run has no shipped companions
    assert bare["D"] is None and bare["G"] is None
    with monkeypatch.context() as m:  # registered by name, as the real pretrained/ folder is
        m.setattr(pretrained, "PRETRAINED_DIR", pretrained_dir)
        by_name = snap_io.load_resume_networks("synthfaces16")
        assert by_name["source"] == ("synthfaces16 (D: synthfaces16-discriminator, "
                                     "G: synthfaces16-training-generator)")
        assert same(by_name["D"], D.state_dict()) and same(by_name["G"], G.state_dict())
        assert pretrained.get_entry("synthfaces16-training-generator").kind == "training-generator"

    # shipping new weights without --with-d removes the stale companions
    rc, stdout, err = run_main(argv)
    assert rc == 0, err
    assert "removed 'synthfaces16-discriminator'" in stdout and not d_out.exists()
    assert "removed 'synthfaces16-training-generator'" in stdout and not g_out.exists()
    names = {r["name"] for r in json.loads(manifest.read_text())["models"]}
    assert not names & {"synthfaces16-discriminator", "synthfaces16-training-generator"}
    nets = snap_io.load_resume_networks(out)
    assert nets["D"] is None and nets["G"] is None


def test_ship_counts_the_images_of_the_checkpoint_a_run_continued(run_dir, pretrained_dir, tmp_path):
    from training.stylegan2 import snapshot as snap_io

    snap = run_dir / "network-snapshot-000000.008.safetensors"
    assert snap_io.load_resume_networks(snap)["earlier_kimg"] == pytest.approx(0.008)  # its provenance's kimg
    save_generator(tiny_G(7), tmp_path / "cont.safetensors",
                   provenance={"trainer": "training.stylegan2", "kimg": 0.5, "kimg_total": 456.5})
    assert snap_io.load_resume_networks(tmp_path / "cont.safetensors")["earlier_kimg"] == 456.5
    save_generator(tiny_G(7), tmp_path / "other.safetensors", provenance={"trained_on": "elsewhere", "kimg": 9})
    assert snap_io.load_resume_networks(tmp_path / "other.safetensors")["earlier_kimg"] is None

    manifest = pretrained_dir / "MANIFEST.json"
    argv = ["--run", str(run_dir), "--quality-json", str(write_quality(tmp_path, quality_report(snap))),
            "--name", "synthfaces16", "--out", str(pretrained_dir / "synthfaces16.safetensors"), "--manifest",
            str(manifest)]
    rc, _, err = run_main(argv)
    assert rc == 0, err
    rec = json.loads(manifest.read_text())["models"][-1]
    assert "kimg_total" not in rec and "continued_from" not in rec  # a run from random weights
    assert "0.008 kimg)" in rec["description"] and "in all" not in rec["description"]
    o = json.loads((run_dir / "training_options.json").read_text())
    o.update(resume="synthfaces64-next", resume_kimg=456.032)
    (run_dir / "training_options.json").write_text(json.dumps(o))
    rc, _, err = run_main(argv)
    assert rc == 0, err
    rec = json.loads(manifest.read_text())["models"][-1]
    assert rec["kimg"] == 0.008 and rec["kimg_total"] == 456.04 and rec["continued_from"] == "synthfaces64-next"
    assert "0.008 kimg on from synthfaces64-next, 456.04 kimg in all" in rec["description"]
