"""Contract test of profiler.grafana against Grafana's documented HTTP API.

The fake below serves only the subset the profiler uses, as documented in:

* Folder API, https://grafana.com/docs/grafana/v11.0/developers/http_api/folder/ :
  ``GET /api/folders/:uid`` (404 when missing), ``POST /api/folders`` with ``uid`` and ``title``.
* Dashboard API, https://grafana.com/docs/grafana/v11.0/developers/http_api/dashboard/ :
  ``POST /api/dashboards/db`` with ``dashboard`` (``id`` null, ``uid``, ``title``), ``folderUid``,
  ``overwrite``; answers ``{"id", "uid", "url", "status": "success", "version"}``; 400 for bad
  JSON or fields, 401, 403, 412 for a version/name clash without ``overwrite``.
* Annotations API, https://grafana.com/docs/grafana/v11.0/developers/http_api/annotations/ :
  ``POST /api/annotations`` with ``time`` (epoch ms), ``tags``, ``text``; answers
  ``{"message": "Annotation added", "id"}``.

Every request needs ``Authorization: Bearer <token>`` (service-account token). Anything that does
not match those pages is refused with the status Grafana uses, and every request is recorded, so
the tests check both what the profiler sends and what it makes of the answers.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("grafana_client")

from profiler.grafana import Annotator, GrafanaError, push_dashboards, token_from  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "profiler" / "dashboards"
TOKEN = "glsa_contract_token"


class FakeGrafana:
    """Grafana's folder, dashboard and annotation endpoints, in memory, on 127.0.0.1:port."""

    def __init__(self, port: int = 0) -> None:
        self.requests: list[dict] = []
        self.folders: dict[str, dict] = {}
        self.dashboards: dict[str, dict] = {}
        self.annotations: list[dict] = []
        self.force: tuple[int, dict] | None = None  # answer every authorized request with this
        self._ids = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                fake._handle(self, "GET")

            def do_POST(self):
                fake._handle(self, "POST")

            def do_PUT(self):
                fake._handle(self, "PUT")

            def do_DELETE(self):
                fake._handle(self, "DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def next_id(self) -> int:
        self._ids += 1
        return self._ids

    def calls(self, method: str, path: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and r["path"] == path]

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        record = {
            "method": method,
            "path": h.path,
            "auth": h.headers.get("Authorization"),
            "content_type": h.headers.get("Content-Type"),
            "raw": raw,
            "body": None,
        }
        with self._lock:
            self.requests.append(record)
            status, answer = self._route(record, method, h.path, raw)
        data = json.dumps(answer).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _route(self, record: dict, method: str, path: str, raw: bytes) -> tuple[int, dict]:
        if record["auth"] != f"Bearer {TOKEN}":
            return 401, {"message": "invalid API key"}
        if self.force is not None:
            return self.force
        body = None
        if method == "POST":
            if not (record["content_type"] or "").startswith("application/json"):
                return 400, {"message": "bad request data"}
            try:
                body = json.loads(raw)
            except ValueError:
                return 400, {"message": "bad request data"}
            if not isinstance(body, dict):
                return 400, {"message": "bad request data"}
            record["body"] = body

        if method == "GET" and path.startswith("/api/folders/"):
            uid = path.removeprefix("/api/folders/")
            if uid in self.folders:
                return 200, self.folders[uid]
            return 404, {"message": "folder not found", "status": "not-found"}
        if method == "POST" and path == "/api/folders":
            uid, title = body.get("uid"), body.get("title")
            if not isinstance(uid, str) or not uid or not isinstance(title, str) or not title:
                return 400, {"message": "bad request data"}
            if uid in self.folders:
                return 409, {"message": "a folder with the same uid already exists"}
            folder = {"id": self.next_id(), "uid": uid, "title": title, "version": 1}
            folder["url"] = f"/dashboards/f/{uid}/"
            self.folders[uid] = folder
            return 200, folder
        if method == "POST" and path == "/api/dashboards/db":
            return self._save_dashboard(body)
        if method == "POST" and path == "/api/annotations":
            ts, tags, text = body.get("time"), body.get("tags"), body.get("text")
            if (
                not isinstance(ts, int)
                or isinstance(ts, bool)
                or ts < 10**12  # epoch milliseconds, not seconds
                or not isinstance(tags, list)
                or not all(isinstance(t, str) for t in tags)
                or not isinstance(text, str)
            ):
                return 400, {"message": "bad request data"}
            self.annotations.append(body)
            return 200, {"message": "Annotation added", "id": self.next_id()}
        return 404, {"message": "Not found"}

    def _save_dashboard(self, body: dict) -> tuple[int, dict]:
        dash = body.get("dashboard")
        if (
            not isinstance(dash, dict)
            or not isinstance(dash.get("title"), str)
            or not isinstance(dash.get("uid"), str)
            or not isinstance(body.get("overwrite"), bool)
            or not isinstance(body.get("folderUid"), str)
        ):
            return 400, {"message": "bad request data"}
        if body["folderUid"] not in self.folders:
            return 400, {"message": "folder not found"}
        uid = dash["uid"]
        old = self.dashboards.get(uid)
        if old is not None and not body["overwrite"]:
            return 412, {"message": "The dashboard has been changed", "status": "version-mismatch"}
        if dash.get("id") is not None and (old is None or dash["id"] != old["id"]):
            return 404, {"message": "Dashboard not found", "status": "not-found"}
        saved = {
            "id": old["id"] if old else self.next_id(),
            "uid": uid,
            "version": old["version"] + 1 if old else 1,
            "folderUid": body["folderUid"],
            "model": dash,
        }
        self.dashboards[uid] = saved
        return 200, {
            "id": saved["id"],
            "uid": uid,
            "url": f"/d/{uid}/slug",
            "status": "success",
            "version": saved["version"],
            "slug": "slug",
        }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def grafana():
    fake = FakeGrafana()
    yield fake
    fake.stop()


def wait_for(cond, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def raw_request(url: str, method: str, body: bytes | None, headers: dict) -> int:
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_fake_rejects_what_grafana_rejects(grafana):
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    ok = json.dumps({"time": 1_700_000_000_000, "tags": ["a"], "text": "t"}).encode()
    url = grafana.url + "/api/annotations"
    assert raw_request(url, "POST", ok, auth) == 200
    assert raw_request(url, "POST", ok, {"Content-Type": "application/json"}) == 401
    assert raw_request(url, "POST", b"not json", auth) == 400
    seconds = json.dumps({"time": 1_700_000_000, "tags": [], "text": "t"}).encode()
    assert raw_request(url, "POST", seconds, auth) == 400
    assert raw_request(grafana.url + "/api/annotation", "POST", ok, auth) == 404
    assert raw_request(grafana.url + "/api/folders", "POST", b'{"title": "x"}', auth) == 400


def test_push_is_idempotent(grafana):
    dashboards = DASHBOARDS
    expected = sorted(json.loads(p.read_text())["uid"] for p in dashboards.glob("*.json"))
    assert len(expected) >= 2

    first = push_dashboards(grafana.url, TOKEN, dashboards)
    second = push_dashboards(grafana.url + "/", TOKEN, dashboards)

    assert sorted(first) == sorted(second) == expected
    assert len(grafana.calls("POST", "/api/folders")) == 1
    assert grafana.folders["ml-profiler"]["title"] == "ML profiler"
    assert len(grafana.calls("GET", "/api/folders/ml-profiler")) == 2
    saves = grafana.calls("POST", "/api/dashboards/db")
    assert len(saves) == 2 * len(expected)
    for call in saves:
        body = call["body"]
        assert call["auth"] == f"Bearer {TOKEN}"
        assert body["overwrite"] is True and body["folderUid"] == "ml-profiler"
        assert body["dashboard"]["id"] is None
    for uid in expected:
        assert grafana.dashboards[uid]["version"] == 2
        assert grafana.dashboards[uid]["folderUid"] == "ml-profiler"
    assert all(r["path"].startswith("/api/") for r in grafana.requests)


def test_push_custom_folder(grafana):
    push_dashboards(grafana.url, TOKEN, DASHBOARDS, folder_title="Team", folder_uid="t1")
    assert grafana.folders["t1"]["title"] == "Team"
    assert {d["folderUid"] for d in grafana.dashboards.values()} == {"t1"}


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


def test_bad_token_is_one_line(grafana):
    with pytest.raises(GrafanaError) as excinfo:
        push_dashboards(grafana.url, "wrong", DASHBOARDS)
    message = one_line_error(excinfo)
    assert "401" in message and "GRAFANA_TOKEN" in message and "--token-file" in message
    assert "wrong" not in message
    assert not grafana.dashboards


@pytest.mark.parametrize(
    ("status", "words"),
    [(403, "Editor"), (412, "rename"), (500, "server log")],
)
def test_refusals_are_one_line(grafana, status, words):
    grafana.force = (status, {"message": "nope\nsecond line"})
    with pytest.raises(GrafanaError) as excinfo:
        push_dashboards(grafana.url, TOKEN, DASHBOARDS)
    message = one_line_error(excinfo)
    assert str(status) in message and words in message


def test_unreachable_is_one_line():
    url = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(GrafanaError) as excinfo:
        push_dashboards(url, TOKEN, DASHBOARDS, timeout=2)
    assert time.monotonic() - start < 10
    message = one_line_error(excinfo)
    assert "cannot reach Grafana" in message and url in message


def test_bad_url_and_bad_dashboards(tmp_path):
    with pytest.raises(GrafanaError, match="not a Grafana URL"):
        push_dashboards("localhost:3000", TOKEN, DASHBOARDS)
    with pytest.raises(GrafanaError, match="no dashboards"):
        push_dashboards("http://127.0.0.1:1", TOKEN, tmp_path)
    (tmp_path / "x.json").write_text('{"title": "no uid"}')
    with pytest.raises(GrafanaError, match="has no 'uid'"):
        push_dashboards("http://127.0.0.1:1", TOKEN, tmp_path)


def test_token_from(tmp_path):
    assert token_from({"GRAFANA_TOKEN": " abc \n"}, None) == "abc"
    path = tmp_path / "token"
    path.write_text("from-file\n")
    assert token_from({"GRAFANA_TOKEN": "env"}, str(path)) == "from-file"
    with pytest.raises(GrafanaError, match="no Grafana token") as excinfo:
        token_from({}, None)
    one_line_error(excinfo)
    with pytest.raises(GrafanaError, match="cannot read") as excinfo:
        token_from({}, str(tmp_path / "missing"))
    one_line_error(excinfo)
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(GrafanaError, match="is empty"):
        token_from({}, str(tmp_path / "empty"))


def test_annotator_posts_fields(grafana):
    annotator = Annotator(grafana.url, TOKEN)
    t0 = 1_700_000_000.25
    for i in range(5):
        annotator.annotate(t0 + i, f"run r{i} started", ["ml-profiler", "run-start", f"r{i}"])
    annotator.close(timeout=10)
    assert annotator.sent == 5 and annotator.dropped == 0 and annotator.failed == 0
    posts = grafana.calls("POST", "/api/annotations")
    assert len(posts) == 5
    for i, call in enumerate(posts):
        assert call["auth"] == f"Bearer {TOKEN}"
        body = call["body"]
        assert body["time"] == 1_700_000_000_250 + 1000 * i and type(body["time"]) is int
        assert body["tags"] == ["ml-profiler", "run-start", f"r{i}"]
        assert body["text"] == f"run r{i} started"


def test_annotator_never_blocks_logs_once_and_retries(caplog):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    annotator = Annotator(url, TOKEN, backoff_s=0.05, max_backoff_s=0.2, max_retries=1000)
    caplog.set_level(logging.INFO, logger="profiler")
    worst = 0.0
    for i in range(20):
        start = time.perf_counter()
        annotator.annotate(1_700_000_000 + i, f"event {i}", ["ml-profiler"])
        worst = max(worst, time.perf_counter() - start)
        time.sleep(0.02)
    assert worst < 0.05
    assert wait_for(lambda: any("failing" in r.getMessage() for r in caplog.records))
    time.sleep(0.5)  # several more failed retries
    failing = [r for r in caplog.records if "failing" in r.getMessage()]
    assert len(failing) == 1 and "\n" not in failing[0].getMessage()
    assert annotator.sent == 0

    fake = FakeGrafana(port)  # Grafana comes back on the same address
    try:
        assert wait_for(lambda: annotator.sent == 20)
        annotator.close(timeout=2)
        assert [a["text"] for a in fake.annotations] == [f"event {i}" for i in range(20)]
        assert annotator.failed == 0 and annotator.dropped == 0
        assert any("delivered again" in r.getMessage() for r in caplog.records)
    finally:
        fake.stop()


def test_annotator_bounds_queue_and_gives_up():
    url = f"http://127.0.0.1:{free_port()}"
    annotator = Annotator(url, TOKEN, maxsize=3, max_retries=2, backoff_s=0.01, max_backoff_s=0.01)
    start = time.perf_counter()
    for i in range(50):
        annotator.annotate(1_700_000_000 + i, "x", [])
    annotator.annotate(float("nan"), "bad time", [])
    assert time.perf_counter() - start < 0.5
    assert annotator.dropped >= 40
    assert wait_for(lambda: annotator.dropped + annotator.failed == 51)
    annotator.close(timeout=1)
    annotator.annotate(1_700_000_000, "after close", [])
    assert annotator.sent == 0 and annotator.dropped + annotator.failed == 52


@pytest.mark.slow
def test_a_real_daemon_annotates_a_real_run_and_the_cli_pushes(grafana, tmp_path):
    import subprocess
    import sys

    from conftest import REPO, run_cli, start_daemon
    from conftest import wait_for as wait

    home = tmp_path / "home"
    home.mkdir()
    (home / "profiler.toml").write_text('[cost]\npricing = "flat"\ngpu_hour_price = 3.6\n')
    d = start_daemon(home, PROFILER_GRAFANA_URL=grafana.url, GRAFANA_TOKEN=TOKEN)
    try:
        out = subprocess.run(
            [sys.executable, str(REPO / "tests" / "scripts" / "train_tiny.py"), "--steps", "40",
             "--name", "annotated"],
            env=dict(d.env, PROFILER_RUN_ID="g-run"), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        posts = wait(lambda: (p := grafana.calls("POST", "/api/annotations")) and len(p) >= 2
                     and p, timeout=30, what="both annotations")  # fmt: skip
        start, end = (p["body"] for p in posts[:2])
        assert start["tags"] == ["ml-profiler", "run:g-run", "start"]
        assert start["text"] == "annotated (pytorch) started"
        assert end["tags"] == ["ml-profiler", "run:g-run", "end", "finished"]
        assert end["text"].startswith("annotated (pytorch) finished, cost ")
        assert end["text"].endswith(" USD") and end["time"] >= start["time"]
    finally:
        d.stop()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    push = run_cli(d.env, "dashboards", "push", "--grafana-url", grafana.url,
                   "--token-file", str(token_file))  # fmt: skip
    assert push.returncode == 0, push.stderr
    assert "ml-profiler-run" in push.stdout and "ml-profiler-fleet" in push.stdout
    bad = run_cli(dict(d.env, GRAFANA_TOKEN="wrong"), "dashboards", "push", "--grafana-url",
                  grafana.url)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "401" in bad.stderr
