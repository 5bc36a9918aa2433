"""Talking to a real Home Assistant as its frontend does, and seeing what it sends to rkllmd.

- :class:`HaApi`: HA's REST API (urllib) and its websocket API (a minimal RFC 6455 client on a raw
  socket: text frames only, which is all HA's API uses), logged in through onboarding.
- :class:`Recorder`: a loopback TCP relay between HA and rkllmd that keeps every byte HA sent, so the
  test can show and save HA's real ``/api/chat`` requests. It changes nothing it relays.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import struct
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

CLIENT_ID_PATH = "/"  # the frontend's client_id is HA's own URL


class HaError(RuntimeError):
    pass


class HaApi:
    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url, self.timeout = url, timeout
        self.token = ""

    # ---- REST ---------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, form: dict[str, str] | None = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        data = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as err:
            raise HaError(f"{method} {path}: {err.code} {err.read().decode(errors='replace')}") from None
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body if body is not None else {})

    def onboard(self, username: str = "owner", password: str = "rkllmd-test-pass") -> None:
        """The onboarding wizard's four steps, as the frontend posts them; leaves a logged-in token.

        Finishing core_config makes HA start the flows it offers a new home: Shopping List (no
        requirements: its todo entity is exposed and adds two list intents to the tools), met,
        radio_browser and google_translate, whose libraries are not installed, so they fail at
        import (logged) and HA makes no request beyond loopback.
        """
        client_id = self.url + CLIENT_ID_PATH
        user = {"client_id": client_id, "name": "Owner", "username": username, "password": password}
        code = self.post("/api/onboarding/users", {**user, "language": "en"})["auth_code"]
        tokens = self.request(
            "POST",
            "/auth/token",
            form={"grant_type": "authorization_code", "code": code, "client_id": client_id},
        )
        self.token = tokens["access_token"]
        self.post("/api/onboarding/core_config")
        self.post("/api/onboarding/analytics")
        self.post("/api/onboarding/integration", {"client_id": client_id, "redirect_uri": client_id})

    def state(self, entity_id: str) -> str:
        return str(self.get(f"/api/states/{entity_id}")["state"])

    # ---- websocket ----------------------------------------------------------------------------

    def ws_command(self, command: dict[str, Any]) -> Any:
        """One command on a fresh, authenticated websocket; its ``result`` or an HaError."""
        host, port = urllib.parse.urlsplit(self.url).hostname, urllib.parse.urlsplit(self.url).port
        assert host and port
        with socket.create_connection((host, port), timeout=self.timeout) as sock:
            key = base64.b64encode(os.urandom(16)).decode()
            sock.sendall(
                (
                    f"GET /api/websocket HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(1)
                if not chunk:
                    raise HaError("websocket closed during the handshake")
                head += chunk
            if not head.startswith(b"HTTP/1.1 101"):
                raise HaError(f"websocket handshake refused: {head.decode(errors='replace')}")
            if _ws_recv(sock)["type"] != "auth_required":
                raise HaError("no auth_required")
            _ws_send(sock, {"type": "auth", "access_token": self.token})
            if (auth := _ws_recv(sock))["type"] != "auth_ok":
                raise HaError(f"websocket login failed: {auth}")
            _ws_send(sock, {"id": 1, **command})
            reply = _ws_recv(sock)
        if not reply.get("success"):
            raise HaError(f"{command['type']}: {reply.get('error')}")
        return reply.get("result")


def _ws_send(sock: socket.socket, msg: dict[str, Any]) -> None:
    payload, mask = json.dumps(msg).encode(), os.urandom(4)
    n = len(payload)
    head = b"\x81" + (
        bytes([0x80 | n])
        if n < 126
        else (b"\xfe" + struct.pack(">H", n) if n < 65536 else b"\xff" + struct.pack(">Q", n))
    )
    sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise HaError("websocket closed")
        out += chunk
    return out


def _ws_recv(sock: socket.socket) -> dict[str, Any]:
    """The next text message (server frames are unmasked; HA does not fragment its messages)."""
    while True:
        b0, b1 = _recv_exact(sock, 2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", _recv_exact(sock, 2))[0]
        elif n == 127:
            n = struct.unpack(">Q", _recv_exact(sock, 8))[0]
        payload = _recv_exact(sock, n)
        if b0 & 0x0F == 0x1:
            return dict(json.loads(payload))
        if b0 & 0x0F == 0x8:
            raise HaError(f"websocket closed by HA: {payload!r}")


class Recorder:
    """A relay on a free loopback port to ``upstream``; ``sent`` holds the bytes of every connection.

    Runs two daemon threads per connection (one per direction) plus the accept thread; ``close``
    stops accepting and closes the sockets.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sent: list[bytearray] = []
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="ha-recorder-accept", daemon=True).start()

    def _accept(self) -> None:  # on the recorder's accept thread
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream, timeout=None)
            buf = bytearray()
            with self._lock:
                self.sent.append(buf)
                self._socks += [client, upstream]
            threading.Thread(target=_pump, args=(client, upstream, buf), daemon=True).start()
            threading.Thread(target=_pump, args=(upstream, client, None), daemon=True).start()

    def requests(self, path: str) -> list[dict[str, Any]]:
        """The JSON bodies of HA's requests to ``path``, in order (HTTP/1.1 with Content-Length)."""
        found: list[dict[str, Any]] = []
        with self._lock:
            streams = [bytes(b) for b in self.sent]
        for data in streams:
            while data:
                head, sep, rest = data.partition(b"\r\n\r\n")
                if not sep:
                    break
                lines = head.decode("latin-1").split("\r\n")
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                body, data = rest[:length], rest[length:]
                if lines[0].split(" ")[1:2] == [path] and body:
                    found.append(json.loads(body))
        return found

    def close(self) -> None:
        self.server.close()
        with self._lock:
            for s in self._socks:
                s.close()


def _pump(src: socket.socket, dst: socket.socket, keep: bytearray | None) -> None:  # relay thread
    try:
        while data := src.recv(65536):
            if keep is not None:
                keep += data
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
