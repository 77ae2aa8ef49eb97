"""A Hub-compatible HTTP endpoint on 127.0.0.1 for tests: the routes huggingface_hub's real upload and download code
uses (create repo, preupload, commit, resolve), files kept in memory. Nothing leaves the machine.

    with FakeHub() as hub:   # then, in a fresh process: HF_ENDPOINT=hub.endpoint (set before huggingface_hub loads)
        ...

Every commit answers ``uploadMode: regular`` in preupload, so file contents arrive inline (base64) in the commit
payload; LFS / xet uploads, branches and pull requests are not implemented (relzoo does not use them).
Run as ``python tests/fakehub.py`` to serve until killed (prints the endpoint).
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

_REPO = r"(?:models/)?(?P<repo>[\w.-]+/[\w.-]+)"


class _State:
    def __init__(self):
        self.repos: dict[str, dict] = {}  # repo id -> {"private": bool, "files": {path: bytes}, "commits": [sha]}
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []


class _Handler(BaseHTTPRequestHandler):
    state: _State
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _json(self, code: int, body, headers: dict | None = None):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _body(self) -> bytes:
        return self._raw

    def _route(self):
        length = int(self.headers.get("Content-Length") or 0)  # read every body: keep-alive connections go on
        self._raw = self.rfile.read(length) if length else b""
        path = unquote(urlparse(self.path).path)
        self.state.requests.append((self.command, path))
        if self.command == "POST" and path == "/api/repos/create":
            return self._create()
        if self.command == "POST" and path == "/api/validate-yaml":
            return self._json(200, {})
        m = re.fullmatch(rf"/api/{_REPO}/preupload/(?P<rev>[^/]+)", path)
        if m and self.command == "POST":
            files = json.loads(self._body() or b"{}").get("files", [])
            return self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                              for f in files]})
        m = re.fullmatch(rf"/api/{_REPO}/commit/(?P<rev>[^/]+)", path)
        if m and self.command == "POST":
            return self._commit(m["repo"])
        m = re.fullmatch(r"/api/models/(?P<repo>[\w.-]+/[\w.-]+)(?:/revision/(?P<rev>[^/]+))?", path)
        if m and self.command == "GET":
            return self._info(m["repo"])
        m = re.fullmatch(r"/(?P<repo>[\w.-]+/[\w.-]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", path)
        if m and self.command in ("GET", "HEAD"):
            return self._resolve(m["repo"], m["file"])
        if self.command in ("GET", "HEAD") and path == "/":
            return self._json(200, {"fake": "hub"})
        return self._json(404, {"error": f"fake hub: no route for {self.command} {path}"})

    def _create(self):
        body = json.loads(self._body() or b"{}")
        repo = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        with self.state.lock:
            if repo in self.state.repos:
                return self._json(409, {"error": "You already created this model repo", "url": self._url(repo)})
            self.state.repos[repo] = {"private": bool(body.get("private")), "files": {}, "commits": []}
        return self._json(200, {"url": self._url(repo), "name": repo, "id": repo})

    def _commit(self, repo: str):
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        with self.state.lock:
            if repo not in self.state.repos:
                return self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            files = self.state.repos[repo]["files"]
            for line in lines:
                if line["key"] == "file":
                    value = line["value"]
                    content = value["content"]
                    files[value["path"]] = (base64.b64decode(content) if value.get("encoding") == "base64"
                                            else content.encode())
                elif line["key"] == "deletedFile":
                    files.pop(line["value"]["path"], None)
                elif line["key"] in ("lfsFile", "deletedFolder"):
                    return self._json(400, {"error": f"fake hub: {line['key']} is not supported"})
            sha = hashlib.sha1(json.dumps(sorted((p, hashlib.sha1(b).hexdigest()) for p, b in files.items()))
                               .encode()).hexdigest()
            self.state.repos[repo]["commits"].append(sha)
        return self._json(200, {"commitUrl": f"{self._url(repo)}/commit/{sha}", "commitOid": sha,
                                "pullRequestUrl": None})

    def _info(self, repo: str):
        entry = self.state.repos.get(repo)
        if entry is None:
            return self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        sha = entry["commits"][-1] if entry["commits"] else "0" * 40
        return self._json(200, {"id": repo, "modelId": repo, "sha": sha, "private": entry["private"],
                                "siblings": [{"rfilename": p} for p in sorted(entry["files"])]})

    def _resolve(self, repo: str, file: str):
        entry = self.state.repos.get(repo)
        if entry is None:
            return self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        data = entry["files"].get(file)
        sha = entry["commits"][-1] if entry["commits"] else "0" * 40
        if data is None:
            return self._json(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound",
                                                                  "X-Repo-Commit": sha})
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Repo-Commit", sha)
        self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(data)

    def _url(self, repo: str) -> str:
        return f"http://{self.headers.get('Host')}/{repo}"

    do_GET = do_POST = do_HEAD = _route


class FakeHub:
    """Serve a fake Hub on 127.0.0.1 (a free port) in a background thread while the context is open."""

    def __init__(self):
        self.state = _State()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def files(self, repo: str) -> dict[str, bytes]:
        return dict(self.state.repos[repo]["files"])

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


if __name__ == "__main__":
    with FakeHub() as hub:
        print(hub.endpoint, flush=True)
        hub.thread.join()
