"""Push the dashboards to Grafana and mark runs on them with annotations.

Both talk to Grafana's HTTP API through ``grafana-client`` (the ``grafana`` extra):

* :func:`push_dashboards` creates the folder if it is missing, then creates or updates every
  ``dashboards/*.json`` in it (``POST /api/dashboards/db`` with ``overwrite``), so running it
  twice is harmless.
* :class:`Annotator` posts annotations (``POST /api/annotations``) from a background thread, so
  the daemon never waits on Grafana and never fails because of it.

Every failure the caller sees is a :class:`GrafanaError` whose message is one line saying what
failed and what to do about it.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("profiler")

TOKEN_ENV = "GRAFANA_TOKEN"
TOKEN_HINT = (
    "create a service-account token with Editor rights and pass it in GRAFANA_TOKEN or --token-file"
)


class GrafanaError(ValueError):
    """A Grafana call failed; the message is one line saying what failed and what to do."""


def token_from(env: Mapping[str, str], token_file: str | None) -> str:
    """The API token: from ``token_file`` when given, else from ``GRAFANA_TOKEN`` in ``env``."""
    if token_file:
        try:
            token = Path(token_file).expanduser().read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise GrafanaError(
                f"cannot read the Grafana token file {token_file} ({reason}): {TOKEN_HINT}"
            ) from None
        if not token:
            raise GrafanaError(f"the Grafana token file {token_file} is empty: {TOKEN_HINT}")
        if "\n" in token:
            raise GrafanaError(
                f"the Grafana token file {token_file} holds more than one line: "
                "put only the token in it"
            )
        return token
    token = (env.get(TOKEN_ENV) or "").strip()
    if not token:
        raise GrafanaError(f"no Grafana token: {TOKEN_HINT}")
    return token


def _api_url(url: str) -> str:
    """``url`` checked and shaped for ``GrafanaApi.from_url`` (a sub-path needs a final ``/``)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise GrafanaError(
            f"not a Grafana URL: {url!r}: pass its root, e.g. --grafana-url http://localhost:3000"
        )
    base = url.strip().rstrip("/")
    return base + "/" if urlsplit(base).path else base


def _shown(url: str) -> str:
    """``url`` without any user:password, for messages."""
    parts = urlsplit(url.strip())
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path.rstrip('/')}"


def _errors() -> tuple[type[BaseException], ...]:
    """What a grafana-client call raises: its own errors and the transport's (all OSError)."""
    from grafana_client.client import GrafanaException

    return (GrafanaException, OSError, ValueError)


def _client(url: str, token: str, timeout: float) -> Any:
    try:
        from grafana_client import GrafanaApi
        from grafana_client.client import TokenAuth
    except ImportError:
        raise GrafanaError(
            "grafana-client is not installed: pip install 'ml-energy-profiler[grafana]' "
            "(or pip install grafana-client)"
        ) from None
    return GrafanaApi.from_url(_api_url(url), credential=TokenAuth(token), timeout=timeout)


def _one_line(text: object, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _status(exc: BaseException) -> int:
    return int(getattr(exc, "status_code", 0) or 0)


def _server_message(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return _one_line(response.get("message") or response.get("status") or "")
    return _one_line(response or "")


def _explain(exc: BaseException, url: str, action: str) -> GrafanaError:
    """One line for a failed ``action`` against Grafana at ``url``."""
    at = _shown(url)
    status = _status(exc)
    said = _server_message(exc)
    said = f": {said}" if said else ""
    if status == 401:
        return GrafanaError(f"Grafana at {at} refused the token (401) {action}: {TOKEN_HINT}")
    if status == 403:
        return GrafanaError(
            f"Grafana at {at} denied {action} (403{said}): give the token's service account "
            "the Editor role, or write permission on the folder"
        )
    if status == 404:
        return GrafanaError(
            f"Grafana at {at} has no such API (404{said}) {action}: pass Grafana's root URL "
            "(e.g. http://localhost:3000), not a dashboard or datasource address"
        )
    if status == 409 or status == 412:
        return GrafanaError(
            f"Grafana at {at} refused {action} ({status}{said}): another dashboard or folder "
            "already has that title or uid; rename or delete it in Grafana, then push again"
        )
    if status == 400:
        return GrafanaError(
            f"Grafana at {at} rejected {action} as invalid (400{said}): check the JSON and "
            "the Grafana version (9 or later)"
        )
    if status >= 500:
        return GrafanaError(
            f"Grafana at {at} failed {action} ({status}{said}): see Grafana's server log, "
            "then try again"
        )
    if status:
        return GrafanaError(f"Grafana at {at} answered {status}{said} {action}")
    reason = _one_line(getattr(exc, "message", None) or exc or type(exc).__name__, 100)
    return GrafanaError(
        f"cannot reach Grafana at {at} {action} ({reason}): check --grafana-url and that "
        "Grafana is running and reachable from here"
    )


def _load_dashboard(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GrafanaError(
            f"cannot read dashboard {path} ({_one_line(exc, 100)}): fix or remove it"
        ) from None
    if not isinstance(data, dict):
        raise GrafanaError(f"dashboard {path} is not a JSON object: fix or remove it")
    for key in ("uid", "title"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise GrafanaError(
                f"dashboard {path} has no {key!r}: give it one so pushes update it in place"
            )
    return data


def push_dashboards(
    url: str,
    token: str,
    dashboards_dir: Path,
    folder_title: str = "ML profiler",
    folder_uid: str = "ml-profiler",
    *,
    timeout: float = 10.0,
) -> list[str]:
    """Create or update every ``dashboards_dir/*.json`` in folder ``folder_uid``; their uids.

    Idempotent: the folder is created only when missing, and each dashboard keeps its ``uid``
    and is saved with ``overwrite`` so a second push just bumps its version.
    """
    paths = sorted(Path(dashboards_dir).glob("*.json"))
    if not paths:
        raise GrafanaError(f"no dashboards (*.json) in {dashboards_dir}: nothing to push")
    dashboards = [(path, _load_dashboard(path)) for path in paths]
    api = _client(url, token, timeout)
    errors = _errors()

    action = f"while looking up folder {folder_uid!r}"
    try:
        try:
            api.folder.get_folder(folder_uid)
        except errors as exc:
            if _status(exc) != 404:
                raise
            action = f"while creating folder {folder_title!r} ({folder_uid})"
            api.folder.create_folder(folder_title, uid=folder_uid)
            log.info("created Grafana folder %r (%s)", folder_title, folder_uid)
    except errors as exc:
        raise _explain(exc, url, action) from None

    uids = []
    for path, dashboard in dashboards:
        payload = {
            "dashboard": {**dashboard, "id": None},
            "folderUid": folder_uid,
            "overwrite": True,
            "message": f"profiler dashboards push ({path.name})",
        }
        try:
            answer = api.dashboard.update_dashboard(payload)
        except errors as exc:
            raise _explain(exc, url, f"while saving dashboard {path.name}") from None
        version = answer.get("version") if isinstance(answer, dict) else None
        log.info("pushed dashboard %s (uid %s, version %s)", path.name, dashboard["uid"], version)
        uids.append(dashboard["uid"])
    return uids


class Annotator:
    """Posts annotations to Grafana from a daemon thread; never blocks or raises into callers.

    ``annotate()`` only enqueues (a full queue drops the item and counts it in ``dropped``).
    The thread retries a failing post with exponential backoff, up to ``max_retries`` times
    per item, then drops it and counts it in ``failed``. The first failure is logged once on
    the ``profiler`` logger, and a recovery once after that.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        maxsize: int = 256,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        timeout: float = 5.0,
    ) -> None:
        self._url = url
        self._api = _client(url, token, timeout)
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=maxsize)
        self._max_retries = max_retries
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._closing = threading.Event()
        self._abort = threading.Event()
        self._failing = False
        self._lock = threading.Lock()
        self.sent = 0
        self.dropped = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="grafana-annotator", daemon=True)
        self._thread.start()

    def annotate(self, time_s: float, text: str, tags: list[str]) -> None:
        """Queue an annotation at ``time_s`` (Unix seconds); returns at once."""
        try:
            if self._closing.is_set() or not math.isfinite(time_s):
                raise ValueError("closed or bad time")
            item = {"time": int(round(time_s * 1000)), "text": str(text), "tags": list(tags)}
            self._queue.put_nowait(item)
        except (queue.Full, ValueError, TypeError, OverflowError):
            with self._lock:
                self.dropped += 1

    def close(self, timeout: float = 2.0) -> None:
        """Give the thread up to ``timeout`` seconds to deliver what is queued, then stop."""
        self._closing.set()
        self._thread.join(max(0.0, timeout))
        self._abort.set()
        self._thread.join(0.2)

    def _run(self) -> None:
        while not self._abort.is_set():
            try:
                item = self._queue.get(timeout=0.05)
            except queue.Empty:
                if self._closing.is_set():
                    return
                continue
            self._deliver(item)
        with self._lock:  # aborted by close(): whatever is left is lost
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
                self.dropped += 1

    def _deliver(self, item: dict[str, Any]) -> None:
        attempt = 0
        while True:
            try:
                self._api.annotations.add_annotation(
                    time_from=item["time"], tags=item["tags"], text=item["text"]
                )
            except Exception as exc:  # noqa: BLE001 - the thread must outlive any failure
                if not self._failing:
                    self._failing = True
                    log.warning(
                        "Grafana annotations are failing, will retry in the background: %s",
                        _explain(exc, self._url, "while posting an annotation"),
                    )
                attempt += 1
                if attempt > self._max_retries or self._abort.is_set():
                    with self._lock:
                        self.failed += 1
                    return
                delay = min(self._max_backoff_s, self._backoff_s * 2 ** (attempt - 1))
                if self._abort.wait(delay):
                    with self._lock:
                        self.failed += 1
                    return
                continue
            with self._lock:
                self.sent += 1
            if self._failing:
                self._failing = False
                log.info("Grafana annotations are being delivered again")
            return
