"""Check that ``asyncjobs demo`` gives a live dashboard, as a new user would get it.

Standard library only: it runs against a venv that has exactly the README's install
(``pip install -e ".[cli]"`` or the wheel), without any test library. It starts
``ASYNCJOBS demo --port 0``, loads the dashboard and its static files, opens ``/ws``
with a raw WebSocket handshake, checks that the first message is ``queue_state``,
submits a countdown job and waits for its progress and completion over the socket, then
stops the server with SIGINT. Any failure exits 1 with one line saying what failed.

    python3 scripts/check_demo.py .venv/bin/asyncjobs [--since EPOCH_SECONDS]

``--since`` (for example the time of the ``git clone``) prints how long it took from
then until the dashboard was live.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from typing import Any

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class CheckFailed(Exception):
    pass


def start_demo(command: str, cwd: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [command, "demo", "--port", "0"],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise CheckFailed(f"asyncjobs demo exited ({proc.wait()}) before it listened")
        found = re.search(r"dashboard at http://127\.0\.0\.1:(\d+)/", line)
        if found:
            # Keep draining its log so the pipe never fills up and blocks the server.
            os.set_blocking(proc.stderr.fileno(), False)
            return proc, int(found.group(1))
    raise CheckFailed("asyncjobs demo printed no 'dashboard at' line within 60 s")


def http(port: int, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"} if data else {},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read()


class RawWebSocket:
    """Just enough of RFC 6455 for a client: the handshake, text frames, masking."""

    def __init__(self, port: int, path: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Origin: http://127.0.0.1:{port}\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise CheckFailed("the server closed /ws during the handshake")
            head += chunk
        head, self.buffer = head.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0].decode()
        if " 101 " not in status + " ":
            raise CheckFailed(
                f"/ws did not upgrade: {status!r} (is a WebSocket library installed for uvicorn?)"
            )
        accept = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()
        if accept.encode() not in head:
            raise CheckFailed("/ws answered 101 with a wrong Sec-WebSocket-Accept")

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise CheckFailed("the server closed /ws")
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def receive(self) -> dict[str, Any]:
        message = b""
        while True:
            first, second = self._read(2)
            opcode, length = first & 0x0F, second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self._read(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self._read(8))
            payload = self._read(length)
            if opcode == 0x8:
                raise CheckFailed(f"the server closed /ws: {payload[2:].decode(errors='replace')}")
            if opcode == 0x9:  # ping: answer, keep reading
                self._send(0xA, payload)
                continue
            if opcode in (0x1, 0x0):
                message += payload
                if first & 0x80:
                    return dict(json.loads(message))

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def close(self) -> None:
        try:
            self._send(0x8, struct.pack("!H", 1000))
        finally:
            self.sock.close()


def check(port: int) -> float:
    """Run the checks; return when (epoch seconds) the first queue_state arrived."""
    status, page = http(port, "GET", "/")
    if status != 200 or b"<html" not in page.lower():
        raise CheckFailed(f"the dashboard page answered {status} without HTML")
    for asset in re.findall(rb'(?:src|href)="(?:\./)?(static/[^"]+)"', page):
        status, _ = http(port, "GET", "/" + asset.decode())
        if status != 200:
            raise CheckFailed(f"the dashboard's {asset.decode()} answered {status}")
    ws = RawWebSocket(port, "/ws")
    try:
        first = ws.receive()
        if first.get("type") != "queue_state":
            raise CheckFailed(f"the first /ws message is {first.get('type')!r}, not queue_state")
        live = time.time()
        _, body = http(port, "POST", "/jobs", {"type": "countdown", "params": {"seconds": 2}})
        job_id = json.loads(body)["id"]
        seen: set[str] = set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            event = ws.receive()
            if event.get("job", {}).get("id") == job_id:
                seen.add(str(event["type"]))
                if event["type"] == "job_completed":
                    break
        if "job_completed" not in seen or "job_progress" not in seen:
            raise CheckFailed(f"the countdown job's events over /ws were {sorted(seen)}")
    finally:
        ws.close()
    return live


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is not None:
        raise CheckFailed(f"the demo exited early with {proc.returncode}")
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise CheckFailed("the demo did not stop within 20 s of SIGINT") from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("asyncjobs", help="the asyncjobs command of the venv to check")
    parser.add_argument("--since", type=float, help="epoch seconds to measure from")
    parser.add_argument("--cwd", default=os.getcwd(), help="directory to run the demo in")
    args = parser.parse_args()
    began = time.time()
    try:
        proc, port = start_demo(args.asyncjobs, args.cwd)
        try:
            live = check(port)
        finally:
            stop(proc)
    except (CheckFailed, OSError, ValueError, KeyError) as exc:
        print(f"check_demo: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"check_demo: ok: /ws upgraded, queue_state first, a countdown ran live (port {port})")
    print(f"check_demo: demo start to live dashboard (queue_state over /ws): {live - began:.1f} s")
    if args.since is not None:
        print(f"check_demo: from --since to live dashboard: {live - args.since:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
