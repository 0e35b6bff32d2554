"""Registry and fetch(): downloads from a local HTTP server that the tests start themselves."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest

from stylemix import pretrained
from stylemix.pretrained import FetchError, ModelEntry

from ._http_server import FileServer, free_port


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("STYLEMIX_CACHE", str(d))
    monkeypatch.delenv("STYLEMIX_ALLOW_UNVERIFIED", raising=False)
    monkeypatch.setattr(pretrained, "READ_TIMEOUT", 5.0)
    monkeypatch.setattr(pretrained, "CONNECT_TIMEOUT", 5.0)
    monkeypatch.setattr(pretrained, "CHUNK_SIZE", 4096)
    return d


@pytest.fixture
def server():
    with FileServer() as srv:
        yield srv


@pytest.fixture
def entries():
    """Register temporary entries; all are removed afterwards."""
    names = []

    def make(url, data: bytes | None = None, **kw) -> ModelEntry:
        name = f"test-{uuid.uuid4().hex[:8]}"
        if data is not None:
            kw.setdefault("sha256", hashlib.sha256(data).hexdigest())
            kw.setdefault("size", len(data))
        entry = ModelEntry(name=name, resolution=32, url=url, **kw)
        pretrained.register(entry)
        names.append(name)
        return entry

    yield make
    for n in names:
        pretrained.unregister(n)


DATA = os.urandom(50_000)


def _final(cache: Path, entry: ModelEntry) -> Path:
    return cache / entry.name / entry.file_name


def test_builtin_registry_lists_official_ffhq():
    models = {e.name: e for e in pretrained.list_models()}
    for name, res in [("ffhq256", 256), ("ffhq512", 512), ("ffhq1024", 1024)]:
        e = models[name]
        assert e.resolution == res
        assert e.url.startswith("https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/")
        assert e.url.endswith(".pkl") and f"res{res}" in e.url
        assert e.licence and e.source_page and e.description
        assert e.sha256 is None or len(e.sha256) == 64


def test_full_download(cache, server, entries):
    server.add("/m.bin", DATA)
    e = entries(server.url("/m.bin"), DATA)
    path = pretrained.fetch(e.name, progress=False)
    assert path == _final(cache, e)
    assert path.read_bytes() == DATA
    assert not path.with_name(path.name + ".part").exists()
    assert len(server.requests_for("/m.bin")) == 1
    assert "range" not in server.requests_for("/m.bin")[0]


def test_cached_file_reused_without_request(cache, server, entries):
    server.add("/m.bin", DATA)
    e = entries(server.url("/m.bin"), DATA)
    p1 = pretrained.fetch(e.name, progress=False)
    p2 = pretrained.fetch(e.name, progress=False)
    assert p1 == p2
    assert len(server.requests_for("/m.bin")) == 1
    # resolve() by name also uses the cache
    assert pretrained.resolve(e.name) == p1
    assert len(server.requests_for("/m.bin")) == 1


def test_cached_file_reused_with_server_gone(cache, entries):
    with FileServer() as srv:
        srv.add("/m.bin", DATA)
        e = entries(srv.url("/m.bin"), DATA)
        pretrained.fetch(e.name, progress=False)
    assert pretrained.fetch(e.name, progress=False).read_bytes() == DATA


def test_resume_after_cut(cache, server, entries):
    server.add("/m.bin", DATA, mode="cut", cut_at=20_000, then={"mode": "ok"})
    e = entries(server.url("/m.bin"), DATA)
    final = _final(cache, e)
    part = final.with_name(final.name + ".part")
    with pytest.raises(FetchError) as err:
        pretrained.fetch(e.name, progress=False)
    assert e.url in str(err.value)
    assert not final.exists()
    assert part.exists() and 0 < part.stat().st_size < len(DATA)
    have = part.stat().st_size
    assert DATA.startswith(part.read_bytes())

    path = pretrained.fetch(e.name, progress=False)
    assert path.read_bytes() == DATA
    assert not part.exists()
    reqs = server.requests_for("/m.bin")
    assert len(reqs) == 2
    assert reqs[1].get("range") == f"bytes={have}-"


def test_resume_falls_back_to_full_download_on_200(cache, server, entries):
    server.add("/m.bin", DATA, mode="cut", cut_at=10_000, then={"mode": "norange"})
    e = entries(server.url("/m.bin"), DATA)
    with pytest.raises(FetchError):
        pretrained.fetch(e.name, progress=False)
    path = pretrained.fetch(e.name, progress=False)
    assert path.read_bytes() == DATA
    assert "range" in server.requests_for("/m.bin")[1]


def test_resume_with_wrong_content_range_starts_over(cache, server, entries):
    server.add("/m.bin", DATA, mode="cut", cut_at=10_000, then={"mode": "badrange"})
    e = entries(server.url("/m.bin"), DATA)
    with pytest.raises(FetchError):
        pretrained.fetch(e.name, progress=False)
    # The 206 answers another offset: the .part is dropped and a plain request follows
    # (which the server, in 'badrange' mode, answers with a 200 since no Range is sent).
    path = pretrained.fetch(e.name, progress=False)
    assert path.read_bytes() == DATA
    reqs = server.requests_for("/m.bin")
    assert "range" in reqs[1] and "range" not in reqs[2]


def test_checksum_mismatch_leaves_no_file(cache, server, entries):
    server.add("/m.bin", DATA, mode="wrong")
    e = entries(server.url("/m.bin"), DATA)
    with pytest.raises(FetchError) as err:
        pretrained.fetch(e.name, progress=False)
    msg = str(err.value)
    assert e.url in msg and "sha256" in msg
    final = _final(cache, e)
    assert not final.exists()
    assert not final.with_name(final.name + ".part").exists()


def test_wrong_size_leaves_no_file(cache, server, entries):
    server.add("/m.bin", DATA[:-10])
    e = entries(server.url("/m.bin"), DATA)
    with pytest.raises(FetchError) as err:
        pretrained.fetch(e.name, progress=False)
    assert e.url in str(err.value)
    assert not _final(cache, e).exists()


def test_404(cache, server, entries):
    e = entries(server.url("/missing.bin"), DATA)
    with pytest.raises(FetchError) as err:
        pretrained.fetch(e.name, progress=False)
    assert "404" in str(err.value) and e.url in str(err.value)
    assert not _final(cache, e).exists()


def test_connection_refused(cache, entries):
    e = entries(f"http://127.0.0.1:{free_port()}/m.bin", DATA)
    with pytest.raises(FetchError) as err:
        pretrained.fetch(e.name, progress=False)
    assert e.url in str(err.value)
    assert not _final(cache, e).exists()


def test_unverified_entry_needs_permission(cache, server, entries):
    server.add("/u.bin", DATA)
    e = entries(server.url("/u.bin"), None)  # no sha256, no size
    assert e.sha256 is None
    with pytest.raises(FetchError, match="allow_unverified"):
        pretrained.fetch(e.name, progress=False)
    assert server.requests_for("/u.bin") == []  # refused before any download
    with pytest.warns(UserWarning, match=hashlib.sha256(DATA).hexdigest()):
        path = pretrained.fetch(e.name, progress=False, allow_unverified=True)
    assert path.read_bytes() == DATA


def test_cache_env_read_at_call_time(tmp_path, monkeypatch, server, entries):
    server.add("/m.bin", DATA)
    e = entries(server.url("/m.bin"), DATA)
    for sub in ("a", "b"):
        monkeypatch.setenv("STYLEMIX_CACHE", str(tmp_path / sub))
        assert pretrained.fetch(e.name, progress=False).parent.parent == tmp_path / sub
    assert len(server.requests_for("/m.bin")) == 2


def test_corrupt_cached_file_is_replaced_and_force(cache, server, entries):
    server.add("/m.bin", DATA)
    e = entries(server.url("/m.bin"), DATA)
    final = _final(cache, e)
    final.parent.mkdir(parents=True)
    final.write_bytes(b"x" * len(DATA))
    assert pretrained.fetch(e.name, progress=False).read_bytes() == DATA
    pretrained.fetch(e.name, progress=False, force=True)
    assert len(server.requests_for("/m.bin")) == 2


def test_resolve_and_errors(tmp_path):
    f = tmp_path / "x.pkl"
    f.write_bytes(b"abc")
    assert pretrained.resolve(f) == f
    assert pretrained.resolve(str(f)) == f
    with pytest.raises(ValueError, match="no-such-model"):
        pretrained.resolve("no-such-model")
    with pytest.raises(ValueError, match="no-such-model"):
        pretrained.fetch("no-such-model")
    with pytest.raises(ValueError):
        ModelEntry(name="x", resolution=1, url="http://a/b", sha256="nothex")
    with pytest.raises(ValueError, match="already registered"):
        pretrained.register(ModelEntry(name="ffhq256", resolution=256, url="http://a/b"))
