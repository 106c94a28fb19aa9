"""A Kubernetes API upstream for the HTTP gateway's tests, answering from
fixtures: no Kubernetes API server can run on the test machines.

The answers follow the Kubernetes API reference (v1.32): legacy discovery
(`APIVersions`, `APIGroupList`, `APIResourceList`), objects and lists,
`meta.k8s.io/v1` `Table`s when the client asks for them, `Status` errors,
watch event streams (`{"type": "ADDED", "object": …}` lines), pod logs
(`text/plain`, streamed with `follow=true`), the `scale` subresource, and
the OpenAPI v3 discovery and group-version documents (reduced to the
PATCH operations kubectl checks for `fieldValidation`), `exec` over
WebSocket with the `v5.channel.k8s.io` / `v4.channel.k8s.io` channel protocol (one byte of channel, then data; a `Status` on channel 3
ends the command). Every request that reaches it is appended to
`K8S_FIXTURE_LOG` (JSON lines: method, the request target as sent, path, query, the Authorization it
got, body) so tests can count what ran.

Usage: python3 k8s_fixture.py PORT   (env: K8S_FIXTURE_LOG, K8S_FIXTURE_TOKEN,
K8S_FIXTURE_RELEASE: a file whose appearance lets a followed log go on)
"""

import base64
import copy
import hashlib
import json
import os
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = os.environ.get("K8S_FIXTURE_TOKEN", "k8s-upstream-token")
LOG = os.environ.get("K8S_FIXTURE_LOG", "k8s-requests.jsonl")
RELEASE = os.environ.get("K8S_FIXTURE_RELEASE", "k8s-release")
LOCK = threading.Lock()
NOW = "2026-12-01T10:00:00Z"

DISCOVERY = {
    "/api": {"kind": "APIVersions", "versions": ["v1"],
             "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "10.0.0.1:6443"}]},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
        {"name": "apps", "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
         "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}}]},
    "/api/v1": {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
        {"name": "namespaces", "singularName": "namespace", "namespaced": False, "kind": "Namespace",
         "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"], "shortNames": ["ns"]},
        {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod",
         "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
         "shortNames": ["po"], "categories": ["all"]},
        {"name": "pods/exec", "singularName": "", "namespaced": True, "kind": "PodExecOptions", "verbs": ["create", "get"]},
        {"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod", "verbs": ["get"]},
        {"name": "secrets", "singularName": "secret", "namespaced": True, "kind": "Secret",
         "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]},
    ]},
    "/apis/apps/v1": {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "apps/v1", "resources": [
        {"name": "deployments", "singularName": "deployment", "namespaced": True, "kind": "Deployment",
         "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
         "shortNames": ["deploy"], "categories": ["all"]},
        {"name": "deployments/scale", "singularName": "", "namespaced": True, "group": "autoscaling",
         "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]},
        {"name": "deployments/status", "singularName": "", "namespaced": True, "kind": "Deployment",
         "verbs": ["get", "patch", "update"]},
    ]},
}


# OpenAPI v3: the discovery document and the apps/v1 spec, reduced to what
# kubectl reads before `apply` (whether PATCH of a kind takes the
# `fieldValidation` parameter: then it validates on the server's side).
OPENAPI_V3 = {"paths": {
    "api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=F1XTURE1"},
    "apis/apps/v1": {"serverRelativeURL": "/openapi/v3/apis/apps/v1?hash=F1XTURE2"}}}


def gv_spec(prefix, group, kinds):
    paths = {}
    for kind, plural in kinds:
        paths[f"{prefix}/namespaces/{{namespace}}/{plural}/{{name}}"] = {"patch": {
            "operationId": f"patch{kind}",
            "parameters": [{"name": p, "in": "query", "schema": {"type": "string"}} for p in ("dryRun", "fieldManager", "fieldValidation")],
            "responses": {"200": {"description": "OK"}},
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": {"group": group, "kind": kind, "version": "v1"}}}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"}, "paths": paths, "components": {"schemas": {}}}


OPENAPI_SPECS = {
    "/openapi/v3/api/v1": gv_spec("/api/v1", "", [("Pod", "pods"), ("Secret", "secrets")]),
    "/openapi/v3/apis/apps/v1": gv_spec("/apis/apps/v1", "apps", [("Deployment", "deployments")]),
}


def meta(name, ns, uid_seed, rv="1000"):
    uid = hashlib.sha1(uid_seed.encode()).hexdigest()
    return {"name": name, "namespace": ns, "uid": f"{uid[:8]}-{uid[8:12]}-{uid[12:16]}-{uid[16:20]}-{uid[20:32]}",
            "resourceVersion": rv, "creationTimestamp": NOW}


def pod(name, ns):
    return {"kind": "Pod", "apiVersion": "v1", "metadata": dict(meta(name, ns, "pod/" + ns + "/" + name), labels={"app": "web"}),
            "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}], "nodeName": "node-1"},
            "status": {"phase": "Running", "podIP": "10.1.0.7", "startTime": NOW,
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": [{"name": "app", "ready": True, "restartCount": 0, "image": "nginx:1.27",
                                              "imageID": "", "containerID": "containerd://1", "started": True,
                                              "state": {"running": {"startedAt": NOW}}}]}}


def deployment(name, ns, replicas=2):
    return {"kind": "Deployment", "apiVersion": "apps/v1",
            "metadata": dict(meta(name, ns, "deploy/" + ns + "/" + name), generation=1, labels={"app": name}),
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}}},
            "status": {"replicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas,
                       "updatedReplicas": replicas, "observedGeneration": 1}}


def secret(name, ns):
    return {"kind": "Secret", "apiVersion": "v1", "metadata": meta(name, ns, "secret/" + ns + "/" + name),
            "type": "Opaque", "data": {"password": base64.b64encode(b"hunter2").decode()}}


# The objects, by (resource path without the name, name).
OBJECTS = {}
for ns in ("default", "prod"):
    OBJECTS[(f"/api/v1/namespaces/{ns}/pods", "web-1")] = pod("web-1", ns)
    OBJECTS[(f"/apis/apps/v1/namespaces/{ns}/deployments", "web")] = deployment("web", ns)
    OBJECTS[(f"/api/v1/namespaces/{ns}/secrets", "db")] = secret("db", ns)
# A service-account token Secret holding the very token the gateway
# authenticates with (base64 in `data`, as the API returns it).
OBJECTS[("/api/v1/namespaces/prod/secrets", "gateway-token")] = dict(
    secret("gateway-token", "prod"), type="kubernetes.io/service-account-token",
    data={"token": base64.b64encode(TOKEN.encode()).decode(),
          "ca.crt": base64.b64encode(b"-----BEGIN CERTIFICATE-----\n").decode()})

LIST_KINDS = {"pods": ("PodList", "v1"), "deployments": ("DeploymentList", "apps/v1"), "secrets": ("SecretList", "v1")}


def status(code, reason, message, details=None):
    s = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
         "reason": reason, "code": code}
    if details:
        s["details"] = details
    return s


def table(objs, resource):
    cols = [{"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}]
    if resource == "pods":
        cols += [{"name": "Ready", "type": "string", "format": "", "description": "The aggregate readiness state of this pod for accepting traffic.", "priority": 0},
                 {"name": "Status", "type": "string", "format": "", "description": "The aggregate status of the containers in this pod.", "priority": 0},
                 {"name": "Restarts", "type": "string", "format": "", "description": "The number of times the containers in this pod have been restarted.", "priority": 0}]
    elif resource == "deployments":
        cols += [{"name": "Ready", "type": "string", "format": "", "description": "Number of the pod with ready state", "priority": 0},
                 {"name": "Up-to-date", "type": "string", "format": "", "description": "Total number of non-terminated pods targeted by this deployment that have the desired template spec.", "priority": 0}]
    cols.append({"name": "Age", "type": "string", "format": "", "description": "CreationTimestamp is a timestamp representing the server time when this object was created.", "priority": 0})
    rows = []
    for o in objs:
        cells = [o["metadata"]["name"]]
        if resource == "pods":
            cells += ["1/1", "Running", "0"]
        elif resource == "deployments":
            r = o["spec"]["replicas"]
            cells += [f"{r}/{r}", r]
        cells.append("1d")
        pm = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}
        rows.append({"cells": cells, "object": pm})
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": "1000"},
            "columnDefinitions": cols, "rows": rows}


def merge(dst, patch):
    """RFC 7386 JSON merge patch (the fixture applies strategic merge
    patches the same way: enough for the fields kubectl changes here)."""
    for k, v in patch.items():
        if v is None:
            dst.pop(k, None)
        elif isinstance(v, dict) and isinstance(dst.get(k), dict):
            merge(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def record(self, body):
        u = urllib.parse.urlsplit(self.path)
        entry = {"method": self.command, "target": self.path, "path": u.path,
                 "query": urllib.parse.parse_qs(u.query, keep_blank_values=True),
                 "authorization": self.headers.get("Authorization"), "content_type": self.headers.get("Content-Type"),
                 "upgrade": self.headers.get("Upgrade"), "body": body.decode("utf-8", "replace")}
        with LOCK, open(LOG, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def send_json(self, code, obj, ctype="application/json"):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Audit-Id", "fixture")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def handle_any(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        self.record(body)
        if self.headers.get("Authorization") != "Bearer " + TOKEN:
            return self.send_json(401, status(401, "Unauthorized", "Unauthorized"))
        u = urllib.parse.urlsplit(self.path)
        path, q = u.path, urllib.parse.parse_qs(u.query, keep_blank_values=True)
        if path in DISCOVERY and self.command == "GET":
            return self.send_json(200, DISCOVERY[path])
        if path == "/openapi/v3" and self.command == "GET":
            return self.send_json(200, OPENAPI_V3)
        if path in OPENAPI_SPECS and self.command == "GET":
            return self.send_json(200, OPENAPI_SPECS[path])
        if path == "/version":
            return self.send_json(200, {"major": "1", "minor": "32", "gitVersion": "v1.32.0", "platform": "linux/amd64"})
        parts = path.strip("/").split("/")
        # /api/v1/namespaces/{ns}/{resource}[/{name}[/{sub}]] or /apis/{g}/{v}/namespaces/...
        base = 2 if parts[0] == "api" else 3
        rest = parts[base:]
        if len(rest) < 3 or rest[0] != "namespaces":
            return self.send_json(404, status(404, "NotFound", "the server could not find the requested resource"))
        ns, resource = rest[1], rest[2]
        coll = "/" + "/".join(parts[:base] + rest[:3])
        name = rest[3] if len(rest) > 3 else None
        sub = rest[4] if len(rest) > 4 else None
        accept = self.headers.get("Accept") or ""
        with LOCK:
            obj = OBJECTS.get((coll, name)) if name else None
        if name and obj is None and not (self.command == "POST"):
            return self.send_json(404, status(404, "NotFound", f'{resource} "{name}" not found',
                                              {"name": name, "kind": resource}))
        if sub == "exec":
            return self.exec(q)
        if sub == "log":
            return self.logs(q)
        if sub == "scale":
            if self.command == "PATCH":
                patch = json.loads(body)
                with LOCK:
                    obj["spec"]["replicas"] = patch["spec"]["replicas"]
            r = obj["spec"]["replicas"]
            return self.send_json(200, {"kind": "Scale", "apiVersion": "autoscaling/v1",
                                        "metadata": obj["metadata"], "spec": {"replicas": r},
                                        "status": {"replicas": r, "selector": f"app={name}"}})
        if self.command in ("GET", "HEAD") and name:
            if "as=Table" in accept:
                return self.send_json(200, table([obj], resource))
            return self.send_json(200, obj)
        if self.command == "GET":
            with LOCK:
                items = [o for (c, _), o in OBJECTS.items() if c == coll]
            if q.get("watch", [""])[0] in ("true", "1"):
                return self.watch(items, accept)
            if "as=Table" in accept:
                return self.send_json(200, table(items, resource))
            kind, api = LIST_KINDS.get(resource, ("List", "v1"))
            return self.send_json(200, {"kind": kind, "apiVersion": api, "metadata": {"resourceVersion": "1000"}, "items": items})
        if self.command == "POST":
            new = json.loads(body)
            new.setdefault("metadata", {}).update(meta(new["metadata"]["name"], ns, "new/" + coll + new["metadata"]["name"]))
            with LOCK:
                OBJECTS[(coll, new["metadata"]["name"])] = new
            return self.send_json(201, new)
        if self.command == "PATCH":
            patch = json.loads(body)
            with LOCK:
                merge(obj, patch)
                obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
            return self.send_json(200, obj)
        if self.command == "PUT":
            new = json.loads(body)
            with LOCK:
                OBJECTS[(coll, name)] = new
            return self.send_json(200, new)
        if self.command == "DELETE":
            with LOCK:
                OBJECTS.pop((coll, name), None)
            return self.send_json(200, obj)
        return self.send_json(405, status(405, "MethodNotAllowed", "the server does not allow this method"))

    def watch(self, items, accept):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for o in items:
            self.chunk((json.dumps({"type": "ADDED", "object": o}) + "\n").encode())
        self.wait_release()
        self.chunk((json.dumps({"type": "MODIFIED", "object": items[0] if items else {}}) + "\n").encode())
        self.chunk(b"")

    def logs(self, q):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.chunk(b"line 1: server started\n")
        if q.get("follow", [""])[0] == "true":
            self.wait_release()
            self.chunk(b"line 2: after release\n")
        self.chunk(b"")

    def wait_release(self):
        deadline = time.time() + 30
        while not os.path.exists(RELEASE) and time.time() < deadline:
            time.sleep(0.02)

    def exec(self, q):
        """`exec` over WebSocket (RFC 6455) with the channel protocol."""
        if (self.headers.get("Upgrade") or "").lower() != "websocket":
            return self.send_json(400, status(400, "BadRequest", "Upgrade request required"))
        offered = [p.strip() for p in (self.headers.get("Sec-WebSocket-Protocol") or "").split(",")]
        proto = next((p for p in ("v5.channel.k8s.io", "v4.channel.k8s.io") if p in offered), None)
        if proto is None:
            return self.send_json(400, status(400, "BadRequest", "no supported channel protocol"))
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.send_header("Sec-WebSocket-Protocol", proto)
        self.end_headers()
        self.wfile.flush()
        command = q.get("command", [])
        out = ("ran: " + " ".join(command) + " in " + q.get("container", ["?"])[0] + "\n").encode()
        self.frame(b"\x01" + out)
        self.frame(b"\x03" + json.dumps({"metadata": {}, "status": "Success"}).encode())
        self.frame(b"\x03\xe8", opcode=0x8)
        self.close_connection = True
        # Read until the client's close frame (or EOF).
        try:
            self.connection.settimeout(5)
            while self.connection.recv(4096):
                pass
        except OSError:
            pass

    def frame(self, payload, opcode=0x2):
        n = len(payload)
        if n < 126:
            head = bytes([0x80 | opcode, n])
        elif n < 65536:
            head = bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
        else:
            head = bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big")
        self.wfile.write(head + payload)
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = handle_any


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()
