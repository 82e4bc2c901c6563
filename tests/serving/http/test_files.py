"""What a server may index and what clients may upload, on a real uvicorn server (the real app,
fake engines and embedder, a runner that records what it was asked to index).

Every path outside `rag.index_roots` gets byte-for-byte the same 403, whether it exists, is a
symlink out of a root, climbs with `..` or is empty; uploads go through OpenAI's Files API (the
real `openai` SDK), are judged by content, named safely and refused past the size limit with
nothing left on disk.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from pipelines.keys import KeyStore
from pipelines.settings import PROJECT_ROOT, load_settings
from serving.engine.base import Engine
from serving.engine.manager import ModelManager
from serving.http.app import create_app
from tests.serving.fakes import FakeEmbedder, FakeEngine, FakeIndexRunner, StoreWithFakes
from tests.serving.servers import uvicorn_server

MB = 1 << 20


class Server:
    def __init__(self, url: str, data_dir: Path, runner: FakeIndexRunner) -> None:
        self.url = url
        self.data_dir = data_dir
        self.runner = runner
        self.http = httpx.Client(base_url=url, timeout=60)

    def sdk(self, token: str = "none") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=token, max_retries=0)

    def index(self, *paths: str, **kw: Any) -> httpx.Response:
        return self.http.post("/v1/rag/index", json={"paths": list(paths), **kw})


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Server]:
    """A server whose only index root (besides uploads) is tmp_path/docs."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\nalpha\n")
    data_dir = tmp_path / "state"
    settings = load_settings(
        data_dir=data_dir,
        serve={"keepalive_s": 0.5},
        rag={"index_roots": [str(tmp_path / "docs")]},
        rate_limits={"failed_auth": "1000/minute"},
    )

    def factory(name: str, path: Path) -> Engine:
        return FakeEngine(name)

    manager = ModelManager(
        StoreWithFakes(tmp_path, llms=["fake-llm"], embedders=["fake-embed"], builtins=False),
        factory,
        default_model="fake-llm",
    )
    runner = FakeIndexRunner()
    app = create_app(settings, manager=manager, embedder_factory=FakeEmbedder, index_runner=runner)
    with uvicorn_server(app) as url:
        yield Server(url, data_dir, runner)


def _files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


# -- index roots ---------------------------------------------------------------------------------


def test_every_path_outside_the_roots_gets_the_same_403(srv: Server, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("planted secret")
    (tmp_path / "docs" / "out").symlink_to("/etc")
    (tmp_path / "docs" / "leak.md").symlink_to(secret)
    refused = [
        "/etc",
        str(tmp_path / "docs" / "out"),  # a symlink inside the root, pointing out of it
        str(tmp_path / "docs" / "leak.md"),
        str(tmp_path / "docs" / "out" / "passwd"),
        "../..",
        str(tmp_path / "docs" / ".." / "secret.txt"),
        "",
        str(secret),  # exists
        "/no/such/dir",  # does not
        str(tmp_path / "nowhere"),
        "docs/\x00",
    ]
    bodies = set()
    for path in refused:
        r = srv.index(path)
        assert r.status_code == 403, (path, r.text)
        bodies.add(r.content)
    assert len(bodies) == 1, bodies  # byte-identical: nothing learnt about the disk
    error = httpx.Response(403, content=bodies.pop()).json()["error"]
    assert error["code"] == "permission_denied" and "rag.index_roots" in error["message"]
    assert str(tmp_path) not in error["message"]
    # one refused path among allowed ones refuses the request; nothing reached the runner
    assert srv.index(str(tmp_path / "docs"), "/etc").status_code == 403
    assert srv.runner.started == []


def test_inside_a_root_missing_says_so_and_runs_show_no_server_paths(
    srv: Server, tmp_path: Path
) -> None:
    r = srv.index(str(tmp_path / "docs" / "gone.md"))
    assert r.status_code == 400 and "docs/gone.md: no such file" in r.json()["error"]["message"]
    assert str(tmp_path) not in r.text
    r = srv.index(str(tmp_path / "docs"), collection="c")
    assert r.status_code == 202, r.text
    assert r.json()["paths"] == ["docs"] and str(tmp_path) not in r.text
    (paths, collection, _, _) = srv.runner.started[0]
    assert paths == [str((tmp_path / "docs").resolve())] and collection == "c"
    run = srv.http.get(f"/v1/rag/runs/{r.json()['id']}")
    assert run.status_code == 200 and str(tmp_path) not in run.text
    status = srv.http.get("/v1/rag/status")
    assert status.status_code == 200 and str(srv.data_dir) not in status.text


# -- uploads -------------------------------------------------------------------------------------


def test_the_openai_sdk_uploads_lists_reads_and_deletes(srv: Server) -> None:
    client = srv.sdk()
    text = b"# Notes\n\nThe lamp was lit at dusk.\n"
    f = client.files.create(file=("notes.md", io.BytesIO(text)), purpose="assistants")
    assert f.object == "file" and f.id.startswith("file-") and f.filename == "notes.md"
    assert f.bytes == len(text) and f.purpose == "assistants" and f.status == "processed"
    stored = srv.data_dir / "uploads" / f.id / "notes.md"
    assert stored.read_bytes() == text
    assert [x.id for x in client.files.list()] == [f.id]
    assert client.files.retrieve(f.id).filename == "notes.md"
    assert client.files.content(f.id).read() == text
    # index it by id: the runner gets the upload's path, the client sees none
    r = srv.http.post("/v1/rag/index", json={"file_ids": [f.id], "collection": "up"})
    assert r.status_code == 202 and r.json()["paths"] == ["uploads/notes.md"]
    assert srv.runner.started[-1][0] == [str(stored.resolve())]
    gone = client.files.delete(f.id)
    assert gone.deleted and gone.id == f.id and not stored.parent.exists()
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)
    r = srv.http.post("/v1/rag/index", json={"file_ids": [f.id]})
    assert r.status_code == 404 and r.json()["error"]["param"] == "file_id"


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("tool.exe", b"MZ\x90\x00" + b"\x00" * 64, "cannot be indexed"),
        ("notes.md", b"\x7fELF\x02\x01\x01" + b"\x00" * 200, "not what a .md file holds"),
        ("paper.pdf", b"just text, not a pdf\n", "not what a .pdf file holds"),
        ("empty.txt", b"", "is empty"),
        ("....", b"text", "needs a name"),
    ],
)
def test_uploads_are_judged_by_content(srv: Server, name: str, content: bytes, says: str) -> None:
    r = srv.http.post("/v1/files", files={"file": (name, content)}, data={"purpose": "assistants"})
    assert r.status_code == 400, r.text
    assert says in r.json()["error"]["message"]
    assert _files_under(srv.data_dir / "uploads") == []


def test_names_are_sanitised(srv: Server) -> None:
    for raw, safe in [
        ("../../etc/cron.d/evil.md", "evil.md"),
        ("..\\..\\win\\x.txt", "x.txt"),
        ("bell%07rock.md", "bell%07rock.md"),  # httpx percent-encodes control characters
        ("a" * 300 + ".md", "a" * 197 + ".md"),
        ("é" * 300 + ".txt", "é" * 98 + ".txt"),
    ]:
        r = srv.http.post("/v1/files", files={"file": (raw, b"# t\n\ntext\n")})
        assert r.status_code == 200, (raw, r.text)
        body = r.json()
        assert body["filename"] == safe
        assert (srv.data_dir / "uploads" / body["id"] / safe).is_file()
    assert not (srv.data_dir.parent / "etc").exists()
    from pipelines.uploads import sanitize_filename

    assert sanitize_filename("bell\x07\nrock\x1b\u202e.md") == "bellrock.md"
    assert sanitize_filename('a<b>:"c|?*.txt') == "abc.txt"


def test_a_20_mb_upload_is_refused_and_nothing_is_written(srv: Server, tmp_path: Path) -> None:
    big = b"a" * (20 * MB)
    # declared length: refused before a byte is read
    r = srv.http.post("/v1/files", files={"file": ("big.txt", big)}, data={"purpose": "assistants"})
    assert r.status_code == 413 and "rag.upload_max_bytes" in r.json()["error"]["message"]
    # no declared length (chunked): refused while streaming

    def chunks() -> Iterator[bytes]:
        boundary = b"--xyz"
        yield boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n'
        yield b"Content-Type: text/plain\r\n\r\n"
        for i in range(0, len(big), MB):
            yield big[i : i + MB]
        yield b"\r\n" + boundary + b"--\r\n"

    r = srv.http.post(
        "/v1/files",
        content=chunks(),
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
    )
    assert r.status_code == 413, r.text
    assert _files_under(srv.data_dir / "uploads") == []
    assert srv.http.get("/v1/files").json()["data"] == []
    # just under the limit is fine
    ok = srv.http.post("/v1/files", files={"file": ("fits.txt", b"b" * (16 * MB - 10))})
    assert ok.status_code == 200, ok.text


def test_roles_of_the_file_and_vector_store_routes(srv: Server) -> None:
    keys = KeyStore.open(srv.data_dir)
    tokens = {role: keys.create(role, role)[1] for role in ("readonly", "user", "admin")}

    def upload(token: str) -> httpx.Response:
        return srv.http.post(
            "/v1/files",
            files={"file": ("n.md", b"# n\n\nnote\n")},
            headers={"Authorization": f"Bearer {token}"},
        )

    assert upload(tokens["user"]).status_code == 403
    assert upload(tokens["readonly"]).status_code == 403
    f = upload(tokens["admin"])
    assert f.status_code == 200, f.text
    fid = f.json()["id"]
    user = srv.sdk(tokens["user"])
    assert [x.id for x in user.files.list()] == [fid]
    assert user.files.content(fid).read() == b"# n\n\nnote\n"
    with pytest.raises(openai.PermissionDeniedError):
        user.files.delete(fid)
    with pytest.raises(openai.PermissionDeniedError):
        user.vector_stores.create(name="mine")
    with pytest.raises(openai.PermissionDeniedError):
        srv.sdk(tokens["readonly"]).files.list()
    with pytest.raises(openai.AuthenticationError):
        srv.sdk("imp_000000000000_" + "x" * 30).files.list()
    admin = srv.sdk(tokens["admin"])
    vs = admin.vector_stores.create(name="mine")
    assert vs.id == "mine" and vs.file_counts.total == 0
    assert [v.id for v in user.vector_stores.list()] == ["mine"]
    with pytest.raises(openai.PermissionDeniedError):
        user.vector_stores.files.create(vector_store_id="mine", file_id=fid)
    with pytest.raises(openai.PermissionDeniedError):
        user.vector_stores.delete("mine")
    assert admin.files.delete(fid).deleted


def test_the_samples_root_is_the_default() -> None:
    from pipelines.roots import IndexRoots

    settings = load_settings()
    roots = IndexRoots.from_settings(settings)
    assert (PROJECT_ROOT / "data" / "samples").resolve() in roots.roots
    assert (
        roots.uploads == (settings.data_dir / "uploads").resolve() and roots.uploads in roots.roots
    )
    assert roots.display(str(roots.uploads / "file-0" / "x.md")) == "uploads/x.md"
    sample = PROJECT_ROOT / "data" / "samples" / "impetus-overview.md"
    assert roots.display(str(sample.resolve())) == "samples/impetus-overview.md"
