"""A small threaded HTTP file server on 127.0.0.1 for download tests (no outside network).

    with FileServer() as srv:
        srv.add("/model.bin", data)                 # served with Range support
        srv.add("/cut.bin", data, mode="cut", cut_at=1000)
        url = srv.url("/model.bin")
        srv.requests                                 # [(path, {header: value}), ...]

Modes: 'ok' (200, or 206 for a `Range: bytes=N-` request), 'cut' (announces the full length,
sends `cut_at` bytes, then drops the connection), 'wrong' (same length, different bytes),
'norange' (ignores Range, always 200), 'badrange' (answers a Range request with a 206 for another
start offset), 404 for unknown paths.
"""

from __future__ import annotations

import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):  # noqa: N802
        srv: FileServer = self.server.owner  # type: ignore[attr-defined]
        with srv.lock:
            srv.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            spec = srv.files.get(self.path)
            if spec is not None and spec.get("then") and spec["served"] >= 1:
                spec = {**spec, **spec["then"]}
            if spec is not None:
                srv.files[self.path]["served"] += 1
        if spec is None:
            body = b"not found"
            self.send_response(404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        data: bytes = spec["data"]
        mode = spec["mode"]
        if mode == "wrong":
            data = bytes((b ^ 0x5A) for b in data)
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "") or "")
        if m and mode not in ("norange",):
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            shown = max(start - 7, 0) if mode == "badrange" else start
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {shown}-{len(data) - 1}/{len(data)}")
            body = data[shown:]
        else:
            self.send_response(200)
            body = data
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "cut":
            cut = max(int(spec["cut_at"]) - start, 0)
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.wfile.write(body)


class FileServer:
    def __init__(self):
        self.files: dict[str, dict] = {}
        self.requests: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, data: bytes, *, mode: str = "ok", cut_at: int = 0, then: dict | None = None):
        """Serve `data` at `path`; `then` = overrides (e.g. {'mode': 'ok'}) from the second request on."""
        with self.lock:
            self.files[path] = dict(data=data, mode=mode, cut_at=cut_at, then=then, served=0)

    def requests_for(self, path: str) -> list[dict]:
        with self.lock:
            return [h for p, h in self.requests if p == path]

    def __enter__(self) -> "FileServer":
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
