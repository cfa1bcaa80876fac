"""A minimal self-hosted app registry for a SuperLink: signed FABs from a folder.

Flower 1.42's SuperLink fetches ``flwr run @publisher/name==version`` apps from
``$FLWR_SUPERGRID_API_URL/hub/fetch-fab`` (``flwr.supercore.utils.request_download_link``): a
POST of ``{"app_id", "app_version", "flwr_version"}`` answered by ``{"fab_url",
"verifications": [{"public_key_id", "signature", "signed_at"}]}``, then a GET of ``fab_url``.
Only such apps reach the SuperNodes with signatures (``Fab.verifications``); a SuperNode started
with ``--trusted-entities`` refuses every other app.

This registry answers both requests from a folder written by ``fedtune sign`` (``<fab>`` and
``<fab>.json`` pairs), re-read on every request, so adding an app needs no restart. It holds
no secret and checks no signature itself: the SuperNodes do. Standard library only.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from fedtune.deploy.signing import RECORD_SUFFIX, SigningError

LOG = logging.getLogger("fedtune.registry")
FETCH_PATH = "/hub/fetch-fab"
FAB_PREFIX = "/fab/"
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")) if _VERSION.match(version) else (-1,)


def read_apps(folder: str | Path) -> list[dict[str, Any]]:
    """The records of ``folder``: each ``<fab>.json`` whose FAB file is present."""
    folder = Path(folder)
    apps = []
    for path in sorted(folder.glob(f"*.fab{RECORD_SUFFIX}")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            LOG.warning("skipping %s: %s", path, err)
            continue
        fab = folder / str(record.get("file", ""))
        if fab.parent != folder or not fab.is_file() or not isinstance(
                record.get("verifications"), list):
            LOG.warning("skipping %s: its FAB file or verifications are missing", path)
            continue
        apps.append(record)
    return apps


def lookup(folder: str | Path, app_id: str, version: str | None
           ) -> tuple[dict[str, Any] | None, list[str]]:
    """(the record of ``app_id`` at ``version``, or at its highest version when None; the
    versions available for ``app_id``)."""
    matching = [r for r in read_apps(folder) if r.get("app_id") == app_id]
    versions = sorted({str(r.get("version")) for r in matching}, key=_version_key)
    if version is None and versions:
        version = versions[-1]
    found = [r for r in matching if r.get("version") == version]
    # two files claiming one version: the newest record file wins, as `fedtune sign` wrote it
    found.sort(key=lambda r: (Path(folder) / (r["file"] + RECORD_SUFFIX)).stat().st_mtime)
    return (found[-1] if found else None), versions


class _Handler(BaseHTTPRequestHandler):
    server: RegistryServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
        LOG.info("%s %s", self.address_string(), format % args)

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        if self.path.rstrip("/") != FETCH_PATH:
            self._json(404, {"detail": f"no such endpoint {self.path}"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            request = json.loads(self.rfile.read(min(length, 65536)) or b"{}")
            app_id, version = str(request["app_id"]), request.get("app_version")
        except (ValueError, KeyError, TypeError):
            self._json(400, {"detail": "expected JSON {app_id, app_version}"})
            return
        record, versions = lookup(self.server.folder, app_id, version)
        if record is None:
            if versions:
                self._json(404, {"detail": {"available_app_versions": versions}})
            else:
                self._json(404, {"detail": f"{app_id} is not in this registry"})
            return
        host = self.headers.get("Host") or self.server.url.removeprefix("http://")
        LOG.info("app %s==%s: %s (signed by %s)", app_id, record["version"], record["file"],
                 ", ".join(v.get("public_key_id", "?") for v in record["verifications"]))
        self._json(200, {"fab_url": f"http://{host}{FAB_PREFIX}{record['file']}",
                         "verifications": record["verifications"]})

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        name = self.path[len(FAB_PREFIX):] if self.path.startswith(FAB_PREFIX) else ""
        files = {r["file"] for r in read_apps(self.server.folder)}
        if name not in files:  # only files a record names: no path ever leaves the folder
            self._json(404, {"detail": f"no such FAB {self.path}"})
            return
        data = (self.server.folder / name).read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class RegistryServer(ThreadingHTTPServer):
    """An HTTP server answering Flower's fetch-fab request from ``folder``."""

    daemon_threads = True

    def __init__(self, folder: str | Path, host: str = "127.0.0.1", port: int = 9099):
        self.folder = Path(folder).resolve()
        if not self.folder.is_dir():
            raise SigningError(f"--apps {folder} is not a folder; create it with `fedtune sign "
                               "--out <folder>`.")
        try:
            super().__init__((host, port), _Handler)
        except OSError as err:
            raise SigningError(f"cannot listen on {host}:{port} ({err.strerror}); choose "
                               "another --port.") from None

    @property
    def url(self) -> str:
        """What to set FLWR_SUPERGRID_API_URL to (on this machine)."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> threading.Thread:
        """Serve in a daemon thread (tests, embedding); ``shutdown()`` stops it."""
        thread = threading.Thread(target=self.serve_forever, daemon=True)
        thread.start()
        return thread
