"""A local stand-in of the Hugging Face Hub's file routes, on 127.0.0.1, for ``HF_ENDPOINT``.

It answers what ``huggingface_hub`` asks: ``GET /api/models/{repo}[/revision/{rev}]`` (the repo's
file list), ``HEAD``/``GET /{repo}/resolve/{rev}/{file}`` (X-Repo-Commit, ETag, Content-Length,
ranges), and 404s with the hub's ``X-Error-Code`` for unknown repos and files. It counts every
request, so a test can assert that a cached start made none.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubStandIn:
    """``repos`` maps ``org/name`` to ``{path in repo: local file}``; a repo in ``private``
    answers only requests bearing its token (else 401 RepoNotFound, as the Hub does)."""

    def __init__(self, repos: dict[str, dict[str, Path]],
                 private: dict[str, str] | None = None) -> None:
        self.repos = repos
        self.private = private or {}
        self.requests: list[str] = []
        self._etags: dict[Path, str] = {}
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def etag(self, path: Path) -> str:
        if path not in self._etags:  # LFS files: the ETag is the content's sha256
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            self._etags[path] = h.hexdigest()
        return self._etags[path]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                hub.requests.append(f"HEAD {self.path}")
                self._serve(body=False)

            def do_GET(self) -> None:
                hub.requests.append(f"GET {self.path}")
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                path = self.path.split("?", 1)[0]
                if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
                    return self._info(m[1])
                if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                    return self._file(m[1], m[3], body)
                return self._error(404, "RepoNotFound", "Repository not found")

            def _hidden(self, repo: str) -> bool:
                if repo not in hub.repos:
                    self._error(404, "RepoNotFound", "Repository not found")
                    return True
                token = hub.private.get(repo)
                if token and self.headers.get("Authorization") != f"Bearer {token}":
                    self._error(401, "RepoNotFound", "Invalid username or password.")
                    return True
                return False

            def _info(self, repo: str) -> None:
                if self._hidden(repo):
                    return
                doc = {"_id": repo, "id": repo, "modelId": repo, "sha": COMMIT,
                       "private": False, "gated": False, "tags": ["gguf"],
                       "siblings": [{"rfilename": f} for f in hub.repos[repo]]}
                data = json.dumps(doc).encode()
                self._head(200, {"Content-Type": "application/json",
                                 "Content-Length": str(len(data))})
                self.wfile.write(data)

            def _file(self, repo: str, name: str, body: bool) -> None:
                if self._hidden(repo):
                    return
                local = hub.repos[repo].get(name)
                if local is None:
                    self._error(404, "EntryNotFound", "Entry not found")
                    return
                size = local.stat().st_size
                start = 0
                if m := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
                    start = min(int(m[1]), size)
                etag = hub.etag(local)
                headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"',
                           "X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(size),
                           "Content-Length": str(size - start), "Accept-Ranges": "bytes",
                           "Content-Type": "application/octet-stream"}
                if start:
                    headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
                self._head(206 if start else 200, headers)
                if body:
                    with open(local, "rb") as f:
                        f.seek(start)
                        while block := f.read(1 << 20):
                            self.wfile.write(block)

            def _error(self, status: int, code: str, message: str) -> None:
                data = json.dumps({"error": message}).encode()
                self._head(status, {"X-Error-Code": code, "X-Error-Message": message,
                                    "Content-Type": "application/json",
                                    "Content-Length": str(len(data))})
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _head(self, status: int, headers: dict[str, str]) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()

        return Handler
