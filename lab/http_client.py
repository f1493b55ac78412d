"""An HTTP/1.1 test client that runs inside a test's network namespace (``nsenter --net=NS python http_client.py``).

argv[1] is a JSON list of steps; stdout is one JSON list with each step's result. Only the standard library, so it
runs under any python3. Every step is bounded by the timeout it names (default 60 s) and talks to 127.0.0.1 only
(the namespace's own loopback). Steps (``op``):

- ``ready`` {port, timeout}: connect until the listener accepts (the pod's readiness); result ``{"ready": true}``
- ``request`` {port, method, path, headers, body_bytes, chunked}: one request; ``body_bytes`` N sends N bytes of
  ``pattern(N)`` (chunked in 64 KiB pieces when ``chunked``); result {status, headers, length, sha256, text}
  (``text`` only for bodies up to 64 KiB), or {error} when the connection failed
- ``parallel`` {requests: [request...]}: the requests at once, one thread each; results in order, each with
  ``done``, its completion rank (0 = first)
- ``raw`` {port, data, body_bytes, chunked, timeout}: send ``data`` (latin-1 text), then ``body_bytes`` bytes of
  ``pattern`` (as one chunk of a chunked body, never terminated, when ``chunked``), and read until the server
  closes or the timeout; result {received (latin-1 text), closed}
- ``abandon`` {port, path, declared, send}: a POST declaring ``declared`` body bytes, ``send`` of them sent, then
  the connection is closed (a client that disconnects mid-body); result {}
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator

CHUNK = 64 * 1024


def pattern(size: int) -> bytes:
    block = bytes(range(256)) * (CHUNK // 256)
    return (block * (size // len(block) + 1))[:size]


def ready(step: dict) -> dict:
    deadline = time.monotonic() + step.get("timeout", 60)
    while True:
        try:
            socket.create_connection(("127.0.0.1", step["port"]), timeout=5).close()
            return {"ready": True}
        except OSError:
            if time.monotonic() > deadline:
                return {"ready": False}
            time.sleep(0.05)


def request(step: dict) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", step["port"], timeout=step.get("timeout", 60))
    try:
        headers = dict(step.get("headers", {}))
        size = step.get("body_bytes")
        body: bytes | Iterator[bytes] | None = None
        if size is not None:
            data = pattern(size)
            if step.get("chunked"):
                body = (data[i:i + CHUNK] for i in range(0, len(data), CHUNK))
                headers["Transfer-Encoding"] = "chunked"
            else:
                body = data
        conn.request(step.get("method", "GET"), step["path"], body=body, headers=headers,
                     encode_chunked=bool(step.get("chunked")))
        response = conn.getresponse()
        digest, length, head = hashlib.sha256(), 0, b""
        while chunk := response.read(CHUNK):
            digest.update(chunk)
            length += len(chunk)
            if len(head) < CHUNK:
                head += chunk[:CHUNK - len(head)]
        return {
            "status": response.status,
            "headers": {k.lower(): v for k, v in response.getheaders()},
            "length": length,
            "sha256": digest.hexdigest(),
            "text": head.decode("utf-8", "replace") if length <= CHUNK else None,
        }
    except (OSError, http.client.HTTPException) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        conn.close()


def parallel(step: dict) -> list[dict]:
    results: list[dict] = [{} for _ in step["requests"]]
    order: list[int] = []
    lock = threading.Lock()

    def one(index: int, req: dict) -> None:
        result = request(req)
        with lock:
            result["done"] = len(order)
            order.append(index)
            results[index] = result

    threads = [threading.Thread(target=one, args=(i, r)) for i, r in enumerate(step["requests"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def raw(step: dict) -> dict:
    sock = socket.create_connection(("127.0.0.1", step["port"]), timeout=10)
    received, closed = b"", False
    deadline = time.monotonic() + step.get("timeout", 30)
    try:
        sock.sendall(step["data"].encode("latin-1"))
        size = step.get("body_bytes", 0)
        if size:
            body = pattern(size)
            sock.sendall(f"{size:x}\r\n".encode() + body + b"\r\n" if step.get("chunked") else body)
        while time.monotonic() < deadline:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                chunk = sock.recv(CHUNK)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
    finally:
        sock.close()
    return {"received": received.decode("latin-1"), "closed": closed}


def abandon(step: dict) -> dict:
    sock = socket.create_connection(("127.0.0.1", step["port"]), timeout=10)
    head = (f"POST {step['path']} HTTP/1.1\r\nHost: test\r\nContent-Length: {step['declared']}\r\n\r\n")
    sock.sendall(head.encode() + pattern(step["send"]))
    time.sleep(0.2)  # let the server start reading it before the client goes away
    sock.close()
    return {}


STEPS = {"ready": ready, "request": request, "parallel": parallel, "raw": raw, "abandon": abandon}

if __name__ == "__main__":
    print(json.dumps([STEPS[step["op"]](step) for step in json.loads(sys.argv[1])]))
