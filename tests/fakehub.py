"""A local server that answers the real ``huggingface_hub`` client like huggingface.co.

It runs in a thread on 127.0.0.1 and speaks what ``hf_hub_download`` and the upload API of
``HfApi`` (``create_repo``, ``create_commit``, ``add_space_variable``) use, without Xet (the
client uses the LFS protocol when ``HF_HUB_DISABLE_XET`` is set):

Downloads

* ``HEAD`` / ``GET {endpoint}/[spaces/]{repo_id}/resolve/{revision}/{path}`` (``main``, or any
  commit served before): regular files answer 200 with ``X-Repo-Commit``, ``ETag`` (the git
  blob id) and ``Content-Length``; LFS files (``*.safetensors``) answer 302 to a CDN url on
  another origin with ``X-Linked-Etag`` (the sha256), ``X-Linked-Size`` and ``X-Repo-Commit``,
  as the Hub does;
* ``GET {cdn}/lfs/{sha256}``: the LFS content;
* 404 with ``X-Error-Code: RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound``.

Uploads

* ``GET /api/{type}s/{repo_id}/revision/{revision}``: the repo's id, commit and files;
  ``GET /api/{type}s/{repo_id}/tree/{revision}``: its files (one page, recursive);
* ``POST /api/repos/create``: 200 with the repo url, 409 (with the url) when it exists;
* ``POST /api/validate-yaml``: the README's YAML must parse into a mapping;
* ``POST /api/{type}s/{repo_id}/preupload/{revision}``: ``uploadMode`` "lfs" for binary samples
  and the suffixes in :data:`LFS_SUFFIXES`, else "regular"; ``oid`` of a file already there is
  its sha256 (LFS) or git blob id (regular), as on the Hub, so the client skips unchanged files;
* ``POST {endpoint}/[spaces/]{repo_id}.git/info/lfs/objects/batch``: upload and verify actions
  (none for content already stored);
* ``PUT /lfs-upload/{sha256}``: stores the content after checking its sha256;
  ``POST /lfs-verify/{sha256}``;
* ``POST /api/{type}s/{repo_id}/commit/{revision}`` (ndjson): applies ``file``, ``lfsFile`` and
  ``deletedFile`` operations; like the Hub, it rejects binary content committed as a regular file and an
  ``lfsFile`` whose content was not uploaded;
* ``POST /api/spaces/{repo_id}/variables``: stores a Space variable;
* ``GET /api/whoami-v2``: :attr:`FakeHub.user` when the request carries a token, else 401.

Faults (:attr:`FakeHub.fault`), for every request but the root ``/`` (which a reachability
probe asks): ``"hang"`` accepts and never answers (until the server closes), ``"drop"`` closes
the connection without an answer, ``"slow"`` answers after :attr:`FakeHub.delay_s`, and
``"trickle"`` sends LFS content in ten pieces :attr:`FakeHub.delay_s` apart.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import yaml
from huggingface_hub import constants

T = TypeVar("T")
LFS_SUFFIXES = (".safetensors", ".png", ".jpg", ".jpeg", ".gif", ".webp", ".pt", ".bin", ".npz", ".zip")


def within(seconds: float, call: Callable[[], T]) -> T:
    """``call()``, failing instead of hanging when it is not done after ``seconds``."""
    outcome: list[tuple[bool, object]] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as err:
            outcome.append((False, err))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still waiting after {seconds} s"
    ok, value = outcome[0]
    if not ok:
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]


def point_client_at(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """What HF_ENDPOINT does when set before huggingface_hub is imported."""
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )


def git_blob_id(body: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()


def is_binary(sample: bytes) -> bool:
    """The Hub's rule of thumb: a NUL byte or undecodable text means binary."""
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return b"\0" in sample


class FakeHub:
    """The server and what it holds.

    Attributes:
        repos: model repos, ``{repo_id: {path: content}}``.
        spaces: Space repos, same layout.
        space_sdks: the SDK each Space was created with.
        variables: ``{space_id: {key: value}}``.
        lfs: uploaded LFS content, ``{sha256: bytes}``.
        transfer: ``{sha256: bytes}``: what the CDN sends instead of the announced content (a
            download damaged on the way).
        history: every version served, ``{commit: {path: content}}``, so that a commit stays
            downloadable after the repo changed.
        requests: ``"METHOD path"`` of every request, in order.
        authorizations: the ``Authorization`` header of every request (None when absent).
        commits: every commit received: ``(repo_type, repo_id, {path: operation})``, the operation
            ``"file"``, ``"lfsFile"`` or ``"deletedFile"``.
        fault: None, ``"hang"``, ``"drop"``, ``"slow"`` or ``"trickle"`` (module docstring).
        delay_s: the delay of ``"slow"`` answers and between ``"trickle"`` pieces.
        user: the name ``whoami`` answers for any token (None: every token is refused).
    """

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.spaces: dict[str, dict[str, bytes]] = {}
        self.space_sdks: dict[str, str] = {}
        self.variables: dict[str, dict[str, str]] = {}
        self.lfs: dict[str, bytes] = {}
        self.transfer: dict[str, bytes] = {}
        self.history: dict[str, dict[str, bytes]] = {}
        self.requests: list[str] = []
        self.authorizations: list[str | None] = []
        self.commits: list[tuple[str, str, dict[str, str]]] = []
        self.user: str | None = "owner"
        self.fault: str | None = None
        self.delay_s = 0.0
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        port = self._server.server_port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.cdn = f"http://localhost:{port}"  # another origin: the client does not follow it on HEAD
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop answering: from now on every request but the root's is dropped.

        The port keeps listening until the process ends: a client call that a test gave up on
        may still be retrying in a background thread, and a refused connection makes
        ``huggingface_hub`` close its shared HTTP client, under the feet of later tests.
        """
        self.fault = "drop"
        self._closing.set()  # hanging handlers return

    def store(self, repo_type: str) -> dict[str, dict[str, bytes]]:
        return self.spaces if repo_type == "space" else self.repos

    def commit(self, repo_id: str, repo_type: str = "model") -> str:
        files = self.store(repo_type)[repo_id]
        return hashlib.sha1(
            b"".join(f"{name}:{git_blob_id(files[name])}".encode() for name in sorted(files))
        ).hexdigest()

    def hub_requests(self, repo_id: str) -> list[str]:
        return [r for r in self.requests if f"/{repo_id}/" in r]

    def write_space(self, space_id: str, folder: Path) -> Path:
        """Write a Space's files into ``folder``, as a Space's container checks it out."""
        for path, body in self.spaces[space_id].items():
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / path).write_bytes(body)
        return folder


def _handler(hub: FakeHub) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._record()
            if self._faulted():
                return
            self._download(head=True)

        def do_GET(self) -> None:
            self._record()
            if self._faulted():
                return
            if self.path == "/api/whoami-v2":
                if self.headers.get("Authorization") is None or hub.user is None:
                    return self._json(401, {"error": "Invalid credentials in Authorization header"})
                return self._json(200, {"type": "user", "name": hub.user, "orgs": []})
            parts = self.path.split("?")[0].split("/")
            if len(parts) == 7 and parts[1] == "api" and parts[5] in ("revision", "tree"):
                repo_type, repo_id = parts[2].removesuffix("s"), f"{parts[3]}/{parts[4]}"
                if parts[5] == "tree":
                    return self._tree(repo_type, repo_id)
                return self._repo_info(repo_type, repo_id)
            self._download(head=False)

        def do_POST(self) -> None:
            self._record()
            body = self._body()
            path = self.path.split("?")[0]
            with hub._lock:
                try:
                    self._post(path, body)
                except json.JSONDecodeError as err:
                    # An answer, not a dropped connection and a traceback printed from this
                    # thread: the client's error then says what arrived.
                    what = (
                        f"fake Hub: the body of POST {path} is not JSON ({err}; {len(body)} bytes, "
                        f"Content-Length {self.headers.get('Content-Length')}, "
                        f"Transfer-Encoding {self.headers.get('Transfer-Encoding')})"
                    )
                    self._json(400, {"error": what, "errors": [{"message": what}]})

        def do_PUT(self) -> None:
            self._record()
            body = self._body()
            parts = self.path.split("/")
            if len(parts) != 3 or parts[1] != "lfs-upload":
                return self._send(404, {}, b"not found")
            sha = parts[2]
            if hashlib.sha256(body).hexdigest() != sha:
                return self._send(400, {}, b"content does not match its sha256")
            hub.lfs[sha] = body
            return self._send(200, {}, b"")

        def _record(self) -> None:
            hub.requests.append(f"{self.command} {self.path}")
            hub.authorizations.append(self.headers.get("Authorization"))

        def _faulted(self) -> bool:
            """Apply ``hub.fault``; True when the request is not to be answered."""
            if self.path == "/" or hub.fault in (None, "trickle"):
                return False
            if hub.fault == "slow":
                hub._closing.wait(hub.delay_s)
                return False
            if hub.fault == "hang":
                hub._closing.wait(120)  # bounded: the server closes long before
            self.close_connection = True
            return True

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk
            while self.rfile.readline().strip():  # trailers, up to the blank line
                pass
            return b"".join(chunks)

        def _send(self, status: int, headers: dict[str, str], body: bytes, head: bool = False) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _json(self, status: int, value: object) -> None:
            self._send(status, {"Content-Type": "application/json"}, json.dumps(value).encode())

        # --- downloads -----------------------------------------------------------------------

        def _download(self, head: bool) -> None:
            parts = self.path.split("?")[0].split("/")
            if len(parts) == 3 and parts[1] == "lfs":
                return self._cdn(parts[2], head)
            repo_type = "space" if parts[1:2] == ["spaces"] else "model"
            parts = parts[1:] if repo_type == "space" else parts
            if len(parts) < 6 or parts[3] != "resolve":
                return self._send(404, {}, b"not found", head)
            repo_id, revision, filename = f"{parts[1]}/{parts[2]}", parts[4], "/".join(parts[5:])
            files = hub.store(repo_type).get(repo_id)
            if files is None:
                return self._send(404, {"X-Error-Code": "RepoNotFound"}, b"Repository not found", head)
            commit = hub.commit(repo_id, repo_type)
            hub.history[commit] = dict(files)
            if revision != "main":
                commit, files = revision, hub.history.get(revision)
                if files is None:
                    return self._send(404, {"X-Error-Code": "RevisionNotFound"}, b"Invalid rev id", head)
            if filename not in files:
                headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}
                return self._send(404, headers, b"Entry not found", head)
            body = files[filename]
            headers = {"X-Repo-Commit": commit, "ETag": f'"{git_blob_id(body)}"'}
            if not filename.endswith(".safetensors"):
                return self._send(200, headers, body, head)
            sha = hashlib.sha256(body).hexdigest()
            hub.lfs.setdefault(sha, body)
            headers.update(
                {
                    "X-Linked-Etag": f'"{sha}"',
                    "X-Linked-Size": str(len(body)),
                    "Location": f"{hub.cdn}/lfs/{sha}",
                }
            )
            return self._send(302, headers, b"", head)

        def _repo_info(self, repo_type: str, repo_id: str) -> None:
            files = hub.store(repo_type).get(repo_id)
            if files is None:
                return self._send(404, {"X-Error-Code": "RepoNotFound"}, b"Repository not found")
            siblings = [{"rfilename": path} for path in sorted(files)]
            return self._json(
                200, {"id": repo_id, "sha": hub.commit(repo_id, repo_type), "siblings": siblings}
            )

        def _tree(self, repo_type: str, repo_id: str) -> None:
            files = hub.store(repo_type).get(repo_id)
            if files is None:
                return self._send(404, {"X-Error-Code": "RepoNotFound"}, b"Repository not found")
            entries = [
                {"type": "file", "path": path, "size": len(body), "oid": git_blob_id(body)}
                for path, body in sorted(files.items())
            ]
            return self._json(200, entries)

        def _cdn(self, sha: str, head: bool) -> None:
            body = hub.transfer.get(sha, hub.lfs.get(sha))
            if body is None:
                return self._send(404, {}, b"not found", head)
            if hub.fault != "trickle" or head:
                return self._send(200, {"ETag": f'"{sha}"'}, body, head)
            self.send_response(200)
            self.send_header("ETag", f'"{sha}"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            step = -(-len(body) // 10)
            for start in range(0, len(body), step):
                self.wfile.write(body[start : start + step])
                self.wfile.flush()
                time.sleep(hub.delay_s)  # the server's pace, not the client's

        # --- uploads -------------------------------------------------------------------------

        def _post(self, path: str, body: bytes) -> None:
            parts = path.split("/")
            if path == "/api/repos/create":
                return self._create_repo(json.loads(body))
            if path == "/api/validate-yaml":
                return self._validate_yaml(json.loads(body))
            if path.endswith(".git/info/lfs/objects/batch"):
                return self._lfs_batch(json.loads(body))
            if len(parts) == 3 and parts[1] == "lfs-verify":
                return self._json(200 if parts[2] in hub.lfs else 404, {})
            if len(parts) == 7 and parts[1] == "api" and parts[5] in ("preupload", "commit"):
                repo_type, repo_id = parts[2].removesuffix("s"), f"{parts[3]}/{parts[4]}"
                if repo_id not in hub.store(repo_type):
                    return self._send(404, {"X-Error-Code": "RepoNotFound"}, b"Repository not found")
                if parts[5] == "preupload":
                    return self._preupload(repo_type, repo_id, json.loads(body))
                return self._commit(repo_type, repo_id, body)
            if len(parts) == 6 and parts[1:3] == ["api", "spaces"] and parts[5] == "variables":
                return self._variable(f"{parts[3]}/{parts[4]}", json.loads(body))
            return self._send(404, {}, b"not found")

        def _create_repo(self, payload: dict) -> None:
            repo_type = payload.get("type") or "model"
            repo_id = f"{payload['organization']}/{payload['name']}"
            prefix = "spaces/" if repo_type == "space" else ""
            url = f"{hub.endpoint}/{prefix}{repo_id}"
            store = hub.store(repo_type)
            if repo_id in store:  # the Hub names the existing repo in its 409
                return self._json(409, {"error": "You already created this repo", "url": url})
            store[repo_id] = {}
            if repo_type == "space":
                hub.space_sdks[repo_id] = payload["sdk"]
            return self._json(200, {"url": url})

        def _validate_yaml(self, payload: dict) -> None:
            content = payload["content"]
            if content.startswith("---"):
                header = content.split("---", 2)[1]
                try:
                    data = yaml.safe_load(header)
                except yaml.YAMLError as err:
                    return self._json(400, {"errors": [{"message": str(err)}]})
                if not isinstance(data, dict):
                    return self._json(400, {"errors": [{"message": "metadata must be a mapping"}]})
            return self._json(200, {"errors": [], "warnings": []})

        def _preupload(self, repo_type: str, repo_id: str, payload: dict) -> None:
            files = hub.store(repo_type)[repo_id]
            answer = []
            for entry in payload["files"]:
                sample = base64.b64decode(entry["sample"])
                lfs = entry["path"].endswith(LFS_SUFFIXES) or is_binary(sample)
                old = files.get(entry["path"])
                oid = None if old is None else hashlib.sha256(old).hexdigest() if lfs else git_blob_id(old)
                answer.append(
                    {
                        "path": entry["path"],
                        "uploadMode": "lfs" if lfs else "regular",
                        "shouldIgnore": False,
                        "oid": oid,
                    }
                )
            return self._json(200, {"files": answer, "commitOid": "0" * 40})

        def _lfs_batch(self, payload: dict) -> None:
            objects = []
            for obj in payload["objects"]:
                answer = {"oid": obj["oid"], "size": obj["size"]}
                if obj["oid"] not in hub.lfs:
                    answer["actions"] = {
                        "upload": {"href": f"{hub.endpoint}/lfs-upload/{obj['oid']}"},
                        "verify": {"href": f"{hub.endpoint}/lfs-verify/{obj['oid']}"},
                    }
                objects.append(answer)
            return self._json(200, {"transfer": "basic", "objects": objects})

        def _commit(self, repo_type: str, repo_id: str, body: bytes) -> None:
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            changes: dict[str, bytes] = {}
            deleted: list[str] = []
            for line in lines[1:]:
                value = line["value"]
                if line["key"] == "file":
                    content = base64.b64decode(value["content"])
                    if is_binary(content):
                        message = f"Your push was rejected because it contains binary files: {value['path']}"
                        return self._json(400, {"error": message})
                    changes[value["path"]] = content
                elif line["key"] == "lfsFile":
                    if value["oid"] not in hub.lfs:
                        return self._json(422, {"error": f"LFS object {value['oid']} was not uploaded"})
                    changes[value["path"]] = hub.lfs[value["oid"]]
                elif line["key"] == "deletedFile":
                    if value["path"] not in hub.store(repo_type)[repo_id]:
                        return self._json(
                            404, {"error": f"A file with this name doesn't exist: {value['path']}"}
                        )
                    deleted.append(value["path"])
                else:
                    return self._json(400, {"error": f"operation {line['key']} is not supported here"})
            files = hub.store(repo_type)[repo_id]
            files.update(changes)
            for path in deleted:
                del files[path]
            hub.commits.append(
                (repo_type, repo_id, {line["value"]["path"]: line["key"] for line in lines[1:]})
            )
            oid = hub.commit(repo_id, repo_type)
            prefix = "spaces/" if repo_type == "space" else ""
            url = f"{hub.endpoint}/{prefix}{repo_id}/commit/{oid}"
            return self._json(200, {"commitUrl": url, "commitOid": oid, "pullRequestUrl": None})

        def _variable(self, space_id: str, payload: dict) -> None:
            if space_id not in hub.spaces:
                return self._send(404, {"X-Error-Code": "RepoNotFound"}, b"Repository not found")
            hub.variables.setdefault(space_id, {})[payload["key"]] = payload["value"]
            return self._json(200, {k: {"value": v} for k, v in hub.variables[space_id].items()})

    return Handler
