"""A small HTTP server that speaks the part of the Hugging Face hub protocol that hearth and
huggingface_hub's hf_hub_download use:

- GET /api/models/{repo}/revision/{rev}[?blobs=true]: the commit and the files (sizes, git
  blob ids, LFS sha256s);
- HEAD and GET /{repo}/resolve/{rev}/{path}: the file, with X-Repo-Commit, ETag /
  X-Linked-Etag / X-Linked-Size as the hub sends them, and Range requests (206).

Repositories are given as a dict: repo -> {"files": {path: bytes}, "gated": bool,
"bad_sha": set of paths whose listed sha256 is wrong, "drop": set of paths whose first
GET stops halfway, "short_size": set of paths listed 100 bytes shorter than they are}. Every request is logged (method, path, Range header) for the
tests to inspect.
"""
import hashlib
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = "hf_good_token"
LFS_SUFFIXES = (".gguf", ".safetensors", ".bin")


def git_blob_id(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repo:
    def __init__(self, name, spec):
        self.name = name
        self.files = spec["files"]
        self.gated = spec.get("gated", False)
        self.bad_sha = set(spec.get("bad_sha", ()))
        self.drop = set(spec.get("drop", ()))
        self.dropped = set()
        self.commit = hashlib.sha1(name.encode() + b"@commit").hexdigest()
        self.meta = {}
        for path, data in self.files.items():
            lfs = path.endswith(LFS_SUFFIXES)
            sha = hashlib.sha256(data).hexdigest()
            if path in self.bad_sha:
                sha = hashlib.sha256(data + b"tampered").hexdigest()
            blob = git_blob_id(data)
            if path in self.bad_sha and not lfs:
                blob = git_blob_id(data + b"tampered")
            self.meta[path] = {
                "lfs": lfs,
                "sha256": sha,
                "blob": blob,
                # a listed size that understates the file (a hostile or broken server)
                "size": len(data) - 100 if path in spec.get("short_size", ()) else len(data),
            }

    def info(self, blobs):
        sib = []
        for path, m in sorted(self.meta.items()):
            e = {"rfilename": path}
            if blobs:
                e["blobId"] = m["blob"]
                e["size"] = m["size"]
                if m["lfs"]:
                    e["lfs"] = {"sha256": m["sha256"], "size": m["size"], "pointerSize": 134}
            sib.append(e)
        return {
            "_id": "x",
            "id": self.name,
            "modelId": self.name,
            "sha": self.commit,
            "private": False,
            "gated": "manual" if self.gated else False,
            "disabled": False,
            "tags": [],
            "siblings": sib,
        }


class Hub:
    def __init__(self, repos):
        self.repos = {k: Repo(k, v) for k, v in repos.items()}
        self.log = []
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def send(self, code, body=b"", headers=(), head=False):
                self.send_response(code)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def error(self, code, msg, head=False, error_code=None):
                headers = [("Content-Type", "application/json"), ("X-Error-Message", msg)]
                if error_code:
                    headers.append(("X-Error-Code", error_code))
                self.send(code, json.dumps({"error": msg}).encode(), headers, head)

            def auth_ok(self, repo):
                if not repo.gated:
                    return None
                a = self.headers.get("Authorization")
                if a is None:
                    return 401
                return None if a == f"Bearer {TOKEN}" else 403

            def find(self, parts):
                # the repo is ORG/NAME: two parts
                if len(parts) < 2:
                    return None, parts
                return hub.repos.get("/".join(parts[:2])), parts[2:]

            def handle_any(self, head):
                u = urllib.parse.urlsplit(self.path)
                q = urllib.parse.parse_qs(u.query)
                parts = [urllib.parse.unquote(p) for p in u.path.split("/") if p]
                with hub.lock:
                    hub.log.append((self.command, u.path, self.headers.get("Range")))
                if parts[:2] == ["api", "models"]:
                    repo, rest = self.find(parts[2:])
                    if repo is None:
                        # as the hub: 401 to anyone, so that private repositories do not show
                        return self.error(401, "Repository not found", head, "RepoNotFound")
                    code = self.auth_ok(repo)
                    if code:
                        return self.error(code, "Access to this gated repo is restricted", head, "GatedRepo")
                    if rest[:1] == ["revision"] and len(rest) >= 2 and rest[1] in ("main", repo.commit) or not rest:
                        blobs = q.get("blobs", ["false"])[0].lower() == "true"
                        body = json.dumps(repo.info(blobs)).encode()
                        return self.send(200, body, [("Content-Type", "application/json")], head)
                    return self.error(404, "Revision not found", head, "RevisionNotFound")
                repo, rest = self.find(parts)
                if repo is None:
                    return self.error(401, "Repository not found", head, "RepoNotFound")
                if rest[:1] != ["resolve"] or len(rest) < 3:
                    return self.error(404, "Not found", head)
                code = self.auth_ok(repo)
                if code:
                    return self.error(code, "Access to this gated repo is restricted", head, "GatedRepo")
                rev, path = rest[1], "/".join(rest[2:])
                if rev not in ("main", repo.commit):
                    return self.error(404, "Revision not found", head, "RevisionNotFound")
                if path not in repo.files:
                    return self.send(404, b"Entry not found", [("X-Error-Code", "EntryNotFound")], head)
                data, m = repo.files[path], repo.meta[path]
                headers = [("X-Repo-Commit", repo.commit), ("Accept-Ranges", "bytes")]
                if m["lfs"]:
                    headers += [
                        ("ETag", '"%s"' % m["sha256"]),
                        ("X-Linked-Etag", '"%s"' % m["sha256"]),
                        ("X-Linked-Size", str(m["size"])),
                    ]
                else:
                    headers.append(("ETag", '"%s"' % m["blob"]))
                rng = self.headers.get("Range")
                start, end = 0, len(data) - 1
                code = 200
                if rng and rng.startswith("bytes="):
                    a, _, b = rng[6:].partition("-")
                    start = int(a)
                    end = min(int(b), len(data) - 1) if b else len(data) - 1
                    if start >= len(data):
                        return self.send(416, b"", [("Content-Range", f"bytes */{len(data)}")], head)
                    code = 206
                    headers.append(("Content-Range", f"bytes {start}-{end}/{len(data)}"))
                body = data[start : end + 1]
                with hub.lock:
                    drop = not head and path in repo.drop and path not in repo.dropped
                    if drop:
                        repo.dropped.add(path)
                if drop:
                    self.send_response(code)
                    for k, v in headers:
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.send(code, body, headers, head)

            def do_GET(self):
                self.handle_any(False)

            def do_HEAD(self):
                self.handle_any(True)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                # a client that hangs up (hearth after a drop, a range read it stopped) is
                # expected here
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def take_log(self):
        with self.lock:
            out, self.log = self.log, []
        return out
