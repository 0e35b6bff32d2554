"""The app in a real browser: Playwright drives Debian's Chromium (/usr/bin/chromium, headless)
against `streamlit run app.py` on 127.0.0.1 and a free port. Two uploads -> the mixed face; a
layer preset change -> a different mixed face; a screenshot is saved. The steps are those of
scripts/screenshot.py, which makes the README's docs/app.png.

Skips (with the reason) when Chromium, Playwright or Streamlit is missing; .ci/run installs them.
"""

import importlib.util
import os
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("stylemix_screenshot", REPO / "scripts" / "screenshot.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


shot = _load_script()


@pytest.fixture(scope="module")
def browser_ready():
    why = shot.missing_requirements()
    if why:
        pytest.skip(why)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, fixtures_dir):
    from stylemix.checkpoints import save_generator
    from tests.conftest import load_fixture_generator

    path = tmp_path_factory.mktemp("browser") / "tinybrowser.safetensors"
    return save_generator(load_fixture_generator(fixtures_dir), path, provenance={"test": "tests/test_browser.py"})


def test_free_port_is_bindable():
    import socket

    port = shot.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_upload_mix_change_preset_screenshot(browser_ready, tiny_model, tmp_path):
    from stylemix import pretrained

    beard = REPO / "assets" / "examples" / "beard_1.png"
    shaved = REPO / "assets" / "examples" / "shaved_1.png"
    if not (beard.is_file() and shaved.is_file()):
        pytest.skip("bundled example faces are missing")
    env = dict(os.environ)
    env.update({
        "STYLEMIX_APP_MODEL": str(tiny_model),
        "STYLEMIX_CACHE": str(tmp_path / "cache"),  # no encoder/directions found for the tiny model
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR")
        or str(pretrained.cache_dir() / "torch_extensions"),  # reuse the built ops
        "OMP_NUM_THREADS": "1",  # tiny model; the CPU may be shared
    })
    out = tmp_path / "app.png"
    log = tmp_path / "server.log"
    with shot.app_server(env=env, log_path=log, timeout=120) as url:
        assert url.startswith("http://127.0.0.1:")
        info = shot.drive(url, beard, shaved, out, timeout=240, preset="middle")
    assert info["first_src"] and info["second_src"] and info["first_src"] != info["second_src"]
    assert info["exceptions"] == []
    assert not any("error" in m.lower() or "failed" in m.lower() for m in info["messages"]), info["messages"]
    with Image.open(out) as im:
        assert im.width == 1400 and im.height >= 1000
    # the server is gone once the block ends
    import urllib.error
    import urllib.request

    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(url + "/_stcore/health", timeout=2)
