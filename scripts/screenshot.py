"""Drive the StyleMix app in a real browser and save a screenshot (the README's docs/app.png).

    python scripts/screenshot.py                                # bundled model -> docs/app.png
    python scripts/screenshot.py --model path/to/G.safetensors --out /tmp/app.png

It starts `streamlit run app.py` on 127.0.0.1 and a free port, waits for the health endpoint,
opens the page in Debian's Chromium (/usr/bin/chromium, headless; Playwright never downloads a
browser), uploads a beard face and a shaved-head face, waits for the mixed face, switches the
layer preset, waits until the mixed face changes, and saves a full-page screenshot. The server is
always stopped. tests/test_browser.py runs the same steps.

Prints one JSON line: {"screenshot": ..., "seconds_to_mix": ..., "seconds_to_change": ..., ...}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("STYLEMIX_CHROMIUM", "/usr/bin/chromium")  # Debian's package; never downloaded
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-dev-shm-usage"]
MIXED = '[data-testid="stImage"]'
MIXED_CAPTION = "Result: "  # the mixed face's caption starts with this (app_ui.MIX_CAPTION_PREFIX)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing_requirements() -> str | None:
    """Why the browser run cannot happen here (None when it can)."""
    if not os.path.isfile(CHROMIUM) or not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} not found (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -r requirements.txt)"
    try:
        import streamlit  # noqa: F401
    except ImportError:
        return "streamlit is not installed (pip install -r requirements.txt)"
    return None


@contextlib.contextmanager
def app_server(*, env: dict | None = None, port: int | None = None, log_path: Path | None = None,
               timeout: float = 120.0):
    """`streamlit run app.py` in its own process group; yields the base URL once /_stcore/health
    answers 'ok'; always stopped (SIGTERM to the group, then SIGKILL)."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"),
           "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--server.address", "127.0.0.1", "--server.port", str(port),
           "--server.fileWatcherType", "none", "--global.developmentMode", "false",
           "--client.toolbarMode", "minimal"]
    full_env = dict(os.environ if env is None else env)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, cwd=str(REPO), env=full_env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with status {proc.returncode} before it was healthy"
                                   + (f"; see {log_path}" if log_path else ""))
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                    if r.status == 200 and r.read().strip() == b"ok":
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"streamlit did not answer {url}/_stcore/health within {timeout:.0f} s")
            time.sleep(0.25)
        yield url
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if log_path:
            log.close()


def _mixed_src(page) -> str | None:
    """The src of the mixed face's <img> (a content-addressed media URL), or None if not shown."""
    loc = page.locator(MIXED).filter(has_text=MIXED_CAPTION).locator("img")
    if loc.count() == 0:
        return None
    return loc.first.get_attribute("src")


def _messages(page) -> list[str]:
    """Texts of the alerts (st.error / st.warning / st.info) and exceptions on the page."""
    return page.locator('[data-testid="stAlert"], [data-testid="stException"]').all_inner_texts()


def _wait_for(cond, timeout: float, what: str, page=None):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            errors = []
            if page is not None:
                errors = _messages(page)
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}"
                               + (f"; messages on the page: {errors}" if errors else ""))
        time.sleep(0.2)


def drive(url: str, beard: Path, shaved: Path, out: Path, *, timeout: float = 240.0,
          preset: str = "middle", viewport=(1400, 1000), max_height: int = 2400) -> dict:
    """Upload two faces, wait for the mix, switch the layer preset, wait for the new mix, save a
    screenshot. Returns timings and the two image URLs (they differ when the face changed)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.set_default_timeout(timeout * 1000)
            page.goto(url, wait_until="domcontentloaded")
            inputs = page.locator('[data-testid="stFileUploader"] input[type="file"]')
            _wait_for(lambda: inputs.count() >= 2, timeout, "the two upload slots", page)
            t0 = time.monotonic()
            inputs.nth(0).set_input_files(str(beard))
            # the page re-renders after the first upload; find the second slot again
            page.locator('[data-testid="stFileUploader"] input[type="file"]').nth(1).set_input_files(str(shaved))
            first = _wait_for(lambda: _mixed_src(page), timeout, "the mixed face", page)
            t_mix = time.monotonic() - t0
            sidebar = page.locator('[data-testid="stSidebar"]')
            t1 = time.monotonic()
            # the preset radio only: 'best' is also an inversion quality
            presets = sidebar.locator('[data-testid="stRadio"]').filter(has_text="Layers from the other face")
            presets.get_by_text(preset, exact=True).first.click()
            second = _wait_for(lambda: (lambda s: s if s and s != first else None)(_mixed_src(page)),
                               timeout, f"the mixed face to change after choosing '{preset}'", page)
            t_change = time.monotonic() - t1
            chosen = presets.locator("label:has(input:checked)").inner_text().strip()
            if chosen != preset:
                raise RuntimeError(f"the layer preset shows {chosen!r} after clicking {preset!r}")
            # let the layer strip and the metrics finish drawing before the picture is taken
            _wait_for(lambda: page.locator('[data-testid="stStatusWidget"]').count() == 0 or
                      not page.locator('[data-testid="stStatusWidget"]').is_visible(), 60, "the run to end")
            page.wait_for_timeout(500)
            # Streamlit scrolls inside its own container, so a full-page shot needs a tall viewport
            height = page.evaluate("Math.max(...Array.from(document.querySelectorAll('*'), e => e.scrollHeight))")
            page.set_viewport_size({"width": viewport[0], "height": int(min(max(height, viewport[1]), max_height))})
            page.wait_for_timeout(500)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
            messages = _messages(page)
            exceptions = page.locator('[data-testid="stException"]').all_inner_texts()
        finally:
            browser.close()
    return {"screenshot": str(out), "seconds_to_mix": round(t_mix, 2), "seconds_to_change": round(t_change, 2),
            "first_src": first, "second_src": second, "messages": messages, "exceptions": exceptions}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "app.png", help="screenshot path")
    ap.add_argument("--model", help="registry name or checkpoint (default: the app's, synthfaces64)")
    ap.add_argument("--beard", type=Path, default=REPO / "assets" / "examples" / "beard_1.png")
    ap.add_argument("--shaved", type=Path, default=REPO / "assets" / "examples" / "shaved_1.png")
    ap.add_argument("--preset", default="middle", help="layer preset to switch to after the first mix")
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds per wait")
    ap.add_argument("--log", type=Path, default=None, help="write the server's output here")
    ap.add_argument("--threads", type=int, default=None,
                    help="OMP_NUM_THREADS for the server (default: inherited; 1 on a CPU shared with training)")
    args = ap.parse_args(argv)
    why = missing_requirements()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 1
    for p in (args.beard, args.shaved):
        if not p.is_file():
            print(f"error: {p} is not a file", file=sys.stderr)
            return 1
    env = dict(os.environ)
    if args.model:
        env["STYLEMIX_APP_MODEL"] = args.model
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    try:
        with app_server(env=env, log_path=args.log, timeout=args.timeout) as url:
            info = drive(url, args.beard, args.shaved, args.out, timeout=args.timeout, preset=args.preset)
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
