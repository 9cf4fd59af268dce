"""A small Hugging Face Hub-compatible HTTP server for tests, on 127.0.0.1 only.

It speaks the subset of the Hub protocol that ``huggingface_hub`` uses to download files
(HEAD/GET ``/{repo}/resolve/{revision}/{file}`` with X-Repo-Commit and ETag headers) and to
upload small files (create repo, preupload, NDJSON commit with base64 "regular" files).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<filename>.+)$")
API_REPO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<action>preupload|commit)/(?P<revision>[^/]+)$")


class FakeHub:
    """Repos as ``{repo_id: {"branches": {name: sha}, "commits": {sha: {filename: bytes}}}}``."""

    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}
        self.requests: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def commit(self, repo_id: str, files: dict[str, bytes], branch: str = "main") -> str:
        repo = self.repos.setdefault(repo_id, {"branches": {}, "commits": {}})
        parent = repo["commits"].get(repo["branches"].get(branch), {})
        tree = {**parent, **files}
        sha = hashlib.sha1(json.dumps(sorted((k, hashlib.sha1(v).hexdigest()) for k, v in tree.items())).encode())
        sha = sha.hexdigest()
        repo["commits"][sha] = tree
        repo["branches"][branch] = sha
        return sha

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, payload: object, status: int = 200) -> None:
                self._reply(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})

            def _error(self, code: str, message: str) -> None:
                self._reply(404, json.dumps({"error": message}).encode(), {"X-Error-Code": code})

            def _resolve(self) -> None:
                hub.requests.append(f"{self.command} {self.path}")
                match = RESOLVE.match(unquote(self.path.split("?")[0]))
                if not match:
                    return self._error("EntryNotFound", "bad path")
                repo = hub.repos.get(match["repo"])
                if repo is None:
                    return self._error("RepoNotFound", "Repository not found")
                revision = match["revision"]
                sha = repo["branches"].get(revision, revision if revision in repo["commits"] else None)
                if sha is None:
                    return self._error("RevisionNotFound", "Revision not found")
                content = repo["commits"][sha].get(match["filename"])
                if content is None:
                    return self._error("EntryNotFound", "Entry not found")
                etag = hashlib.sha256(content).hexdigest()
                self._reply(200, content, {"X-Repo-Commit": sha, "ETag": f'"{etag}"'})

            do_HEAD = _resolve
            do_GET = _resolve

            def do_POST(self) -> None:
                hub.requests.append(f"POST {self.path}")
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    payload = json.loads(body)
                    repo_id = f"{payload['organization']}/{payload['name']}"
                    hub.repos.setdefault(repo_id, {"branches": {}, "commits": {}})
                    return self._json({"url": f"{hub.endpoint}/{repo_id}"})
                if path == "/api/validate-yaml":  # model card metadata check
                    return self._json({"errors": [], "warnings": []})
                match = API_REPO.match(path)
                if not match or match["repo"] not in hub.repos:
                    return self._error("RepoNotFound", "Repository not found")
                if match["action"] == "preupload":
                    files = json.loads(body)["files"]
                    return self._json(
                        {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
                    )
                files = {}
                for line in body.decode().splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                sha = hub.commit(match["repo"], files, branch=match["revision"])
                return self._json({"commitUrl": f"{hub.endpoint}/{match['repo']}/commit/{sha}", "commitOid": sha})

        return Handler
