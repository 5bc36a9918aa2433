"""The relay benchmark's HTTP paths: the same double and daemon, tokens streamed over HTTP.

With ``--http`` the daemon under test also runs the ``http`` and ``ollama`` plugins, and at each
rate the benchmark measures, right after the MQTT row, the same requests made as streamed chats
over each API: ``POST /v1/chat/completions`` (server-sent events; Open WebUI, Extended OpenAI
Conversation) and ``POST /api/chat`` (NDJSON; Home Assistant's Ollama integration). The client is
a raw socket on one kept-alive connection, stamping each event as it is read, so that its own cost
and delay stay out of the figures. CPU per token counts the daemon (which now also serves HTTP),
its worker and the broker (stats and logs still go there), as the MQTT row does. Ollama's last
line carries the run's decode time, so its rows have the double's own rate per request and the
ratio, as the MQTT rows do; an OpenAI stream has no timings, so its rows have neither (the
double's rate at 1000 tok/s moves by a third between requests on a busy machine: another
request's rate would make the ratio up).
"""

from __future__ import annotations

import json
import select
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from rkllmd.bench.stats import percentile


@dataclass
class HttpExchange:
    t_publish: float  # the request written
    deltas: list[str] = field(default_factory=list)  # content deltas, in order
    delta_times: list[float] = field(default_factory=list)  # when each was read
    t_reply: float = 0.0  # the [DONE] event read
    usage: dict[str, Any] = field(default_factory=dict)
    status: int = 0
    runtime_tps: float | None = None  # the double's decode rate, where the API tells it (Ollama)

    @property
    def tokens(self) -> int:
        return int(self.usage.get("completion_tokens") or 0)


class HttpStreamClient:
    """One kept-alive connection to the OpenAI (``api="openai"``) or the Ollama API; streamed
    chats, one at a time."""

    def __init__(self, host: str, port: int, api: str = "openai", timeout: float = 120.0) -> None:
        self.addr, self.api, self.timeout = (host, port), api, timeout
        self._sep = b"\n\n" if api == "openai" else b"\n"
        self._sock: socket.socket | None = None

    def wait_listening(self, timeout: float) -> None:
        """Until the plugin accepts connections (it starts after the daemon connects)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(self.addr, timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nothing listens on {self.addr}") from None
                time.sleep(0.1)

    def _conn(self) -> socket.socket:
        """The kept-alive connection, or a new one if the server has closed it meanwhile (its
        idle timeout), as HTTP clients' pools do: a closed socket reads as ready, at end of file."""
        if self._sock is not None and select.select([self._sock], [], [], 0)[0]:
            self.close()
        if self._sock is None:
            self._sock = socket.create_connection(self.addr, timeout=self.timeout)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._sock

    def chat(self, prompt: str, max_tokens: int) -> HttpExchange:
        messages = [{"role": "user", "content": prompt}]
        if self.api == "openai":
            path, ask = (
                "/v1/chat/completions",
                {"max_tokens": max_tokens, "stream_options": {"include_usage": True}},
            )
        else:
            path, ask = "/api/chat", {"options": {"num_predict": max_tokens}}
        body = json.dumps({"messages": messages, "stream": True, **ask}).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        sock = self._conn()
        ex = HttpExchange(time.perf_counter())
        sock.sendall(head + body)
        try:
            self._read(sock, ex)
        except BaseException:
            self.close()
            raise
        return ex

    def _read(self, sock: socket.socket, ex: HttpExchange) -> None:
        """The response: its head, then chunked server-sent events up to the last chunk."""
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += self._recv(sock)
        head, _, buf = buf.partition(b"\r\n\r\n")
        ex.status = int(head.split(b" ", 2)[1])
        if ex.status != 200:
            raise RuntimeError(f"HTTP {ex.status}: {head.decode(errors='replace')}")
        if b"transfer-encoding: chunked" not in head.lower():  # events until the server closes
            events = buf
            while data := sock.recv(65536):  # (rkllmd's http.server plugin before aiohttp did that)
                events = self._events(events + data, ex, time.perf_counter())
            ex.t_reply = time.perf_counter()
            self._events(events + self._sep, ex, ex.t_reply)
            self.close()
            return
        events = b""
        while True:
            now = time.perf_counter()
            while True:  # every whole chunk in the buffer
                size_end = buf.find(b"\r\n")
                if size_end < 0:
                    break
                size = int(buf[:size_end], 16)
                if len(buf) < size_end + 2 + size + 2:
                    break
                events += buf[size_end + 2 : size_end + 2 + size]
                buf = buf[size_end + 4 + size :]
                if size == 0:
                    self._events(events, ex, now)
                    ex.t_reply = now
                    return
            events = self._events(events, ex, now)
            buf += self._recv(sock)

    def _events(self, data: bytes, ex: HttpExchange, now: float) -> bytes:
        """Take the whole events (lines) of ``data``; returns the rest (one still being written)."""
        *whole, rest = data.split(self._sep)
        for event in whole:
            text = event.decode().removeprefix("data: ")
            if text in ("[DONE]", ""):
                continue
            chunk = json.loads(text)
            if "error" in chunk:
                raise RuntimeError(f"the stream failed: {chunk['error']}")
            if self.api == "openai":
                if chunk.get("usage"):
                    ex.usage = chunk["usage"]
                contents = [(c.get("delta") or {}).get("content") for c in chunk.get("choices") or []]
            else:
                contents = [(chunk.get("message") or {}).get("content")]
                if chunk.get("done"):
                    ex.usage = {"completion_tokens": chunk.get("eval_count")}
                    ns = chunk.get("eval_duration") or 0
                    ex.runtime_tps = chunk["eval_count"] / (ns / 1e9) if ns else None
            for content in contents:
                if content:
                    ex.deltas.append(content)
                    ex.delta_times.append(now)
        return rest

    def _recv(self, sock: socket.socket) -> bytes:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        return data

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def http_rate_row(
    http: HttpStreamClient,
    cpu: Any,
    rate: float,
    delay: int,
    tokens: int,
    per_rate: int,
) -> dict[str, Any]:
    """The HTTP row at one rate: as the MQTT row (relay._rate_row), over ``per_rate`` streamed
    chats after one warm-up; the double's rate and the ratio only where the stream tells it."""
    prompt = f"[[delay_ms={delay}]] [[len={tokens}]] relay benchmark words for the double to echo"
    http.chat(prompt, tokens)  # warm-up
    cpu0, woke0, runs = cpu.read(), cpu.woke(), []
    for _ in range(per_rate):
        runs.append(http.chat(prompt, tokens))
    got = sum(ex.tokens for ex in runs)
    per = cpu.per_token(cpu0, cpu.read(), got)
    woke1 = cpu.woke()
    received = []
    for ex in runs:
        t = ex.delta_times
        if len(t) >= 2 and t[-1] > t[0]:
            received.append((ex.tokens - 1) / (t[-1] - t[0]))
    told = [ex.runtime_tps for ex in runs if ex.runtime_tps]
    runtime_tps = percentile(told, 50) if told else None
    added = [
        ((ex.delta_times[0] if ex.delta_times else ex.t_reply) - ex.t_publish) * 1e3 - delay for ex in runs
    ]
    med = percentile(received, 50) if received else None
    return {
        "rate": rate or "unthrottled",
        "delay_ms": delay,
        "requests": len(runs),
        "runtime_tps": runtime_tps,
        "received_tps": med,
        "ratio": med / runtime_tps if med and runtime_tps else None,
        "ttft_added_p50_ms": percentile(added, 50),
        "ttft_added_p99_ms": percentile(added, 99),
        "cpu_ms_per_token": None if per["daemon"] is None else per["daemon"] + (per["worker"] or 0),
        "cpu_ms_per_token_parts": per,
        "wakeups_per_token_parts": (woke := {k: (woke1[k] - woke0[k]) / got if got else None for k in woke0}),
        "wakeups_per_token": sum(v for v in woke.values() if v is not None) if got else None,
        "chunks_per_request": percentile([float(len(ex.deltas)) for ex in runs], 50),
        # every token the double made came (its count), as one stream of deltas
        "intact": all(ex.tokens == tokens and ex.deltas for ex in runs),
    }
