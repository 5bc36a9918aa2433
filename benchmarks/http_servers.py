"""How the candidate HTTP servers for the http/ollama plugins compare (docs/HTTP.md, "Why aiohttp").

For each server (the standard library's http.server with a thread per connection, aiohttp's
low-level server, uvicorn with starlette on h11 and on httptools) a server process streams
chunked NDJSON; a producer thread, standing in for rkllmd's dispatcher, makes N tokens at a fixed
rate per request and hands each to the request as rkllmd's relay does: call_soon_threadsafe into
an asyncio queue, or a queue read by the connection's thread. This process reads the stream over
a raw socket and prints, per server: RSS once serving, CPU per token at 30 and 1000 tok/s, the
time to the first byte beyond the first token's delay, and the received rate over the nominal one
(the producer's own sleep keeps it under 1 at 1000 tok/s for all). The candidates are not
rkllmd's dependencies: run it in a scratch venv,

    python -m venv /tmp/hs && /tmp/hs/bin/pip install aiohttp uvicorn starlette httptools
    /tmp/hs/bin/python benchmarks/http_servers.py stdlib,aiohttp,uvicorn-h11,uvicorn-httptools 4
    /tmp/hs/bin/python benchmarks/http_servers.py probe stdlib,aiohttp,uvicorn-h11,uvicorn-httptools

``probe`` sends each server garbage, an HTTP/0.9 request line, two Content-Lengths, Content-Length
with Transfer-Encoding, and a head one byte at a time, and prints the start of each answer.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    raw = Path(f"/proc/{pid}/stat").read_text()
    f = raw[raw.rindex(")") + 2 :].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def produce(put, n: int, delay: float) -> None:
    def run() -> None:
        for i in range(n):
            if delay:
                time.sleep(delay)
            put(f"tok{i} ")
        put(None)

    threading.Thread(target=run, daemon=True).start()


def parse_q(path: str) -> tuple[int, float]:
    q = dict(p.split("=") for p in path.split("?", 1)[1].split("&"))
    return int(q["n"]), float(q["d"])


def serve(kind: str, port: int) -> None:
    rss0 = rss_mb(os.getpid())
    if kind == "stdlib":
        import queue
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                n, d = parse_q(self.path)
                q: queue.SimpleQueue = queue.SimpleQueue()
                produce(q.put, n, d)
                item = q.get()
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                while item is not None:
                    data = (json.dumps({"t": item}) + "\n").encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                    item = q.get()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        srv = ThreadingHTTPServer(("127.0.0.1", port), H)
        srv.daemon_threads = True
        print(json.dumps({"import_mb": rss_mb(os.getpid()) - rss0}), flush=True)
        srv.serve_forever()
    elif kind == "aiohttp":
        import asyncio

        from aiohttp import web

        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            await request.read()
            n, d = parse_q(request.path_qs)
            loop = asyncio.get_running_loop()
            q: asyncio.Queue = asyncio.Queue()
            produce(lambda x: loop.call_soon_threadsafe(q.put_nowait, x), n, d)
            item = await q.get()
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            while item is not None:
                await resp.write((json.dumps({"t": item}) + "\n").encode())
                item = await q.get()
            await resp.write_eof()
            return resp

        async def main() -> None:
            server = web.Server(handle, access_log=None)
            loop = asyncio.get_running_loop()
            await loop.create_server(server, "127.0.0.1", port)
            print(json.dumps({"import_mb": rss_mb(os.getpid()) - rss0}), flush=True)
            await asyncio.Event().wait()

        asyncio.run(main())
    else:
        import asyncio

        import uvicorn
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import StreamingResponse
        from starlette.routing import Route

        async def handle(request: Request) -> StreamingResponse:
            await request.body()
            n, d = int(request.query_params["n"]), float(request.query_params["d"])
            loop = asyncio.get_running_loop()
            q: asyncio.Queue = asyncio.Queue()
            produce(lambda x: loop.call_soon_threadsafe(q.put_nowait, x), n, d)
            first = await q.get()

            async def gen():
                item = first
                while item is not None:
                    yield (json.dumps({"t": item}) + "\n").encode()
                    item = await q.get()

            return StreamingResponse(gen(), media_type="application/x-ndjson")

        app = Starlette(routes=[Route("/s", handle, methods=["POST"])])
        http = "h11" if kind == "uvicorn-h11" else "httptools"
        cfg = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            http=http,
            loop="asyncio",
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        server = uvicorn.Server(cfg)
        print(json.dumps({"import_mb": rss_mb(os.getpid()) - rss0}), flush=True)
        server.run()


def one(port: int, n: int, d: float) -> tuple[float, list[float]]:
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t0 = time.perf_counter()
    s.sendall(f"POST /s?n={n}&d={d} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}".encode())
    buf, times, ttfb = b"", [], None
    while not buf.endswith(b"0\r\n\r\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        now = time.perf_counter()
        if ttfb is None:
            ttfb = now - t0
        c = chunk.count(b'{"t"')
        times += [now] * c
        buf += chunk
    s.close()
    return (ttfb or 0) - d, times


def bench(kind: str) -> dict:
    port = 20000 + (os.getpid() % 10000)
    p = subprocess.Popen(
        [sys.executable, __file__, "serve", kind, str(port)], stdout=subprocess.PIPE, text=True
    )
    imp = json.loads(p.stdout.readline())["import_mb"]
    time.sleep(0.3)
    out: dict = {"kind": kind, "import_mb": round(imp, 1)}
    one(port, 16, 0)
    out["rss_serving_mb"] = round(rss_mb(p.pid), 1)
    for rate, n, reqs in ((30, 30, 6), (1000, 300, 5)):
        d = 1 / rate
        c0 = cpu_s(p.pid)
        ttfbs, ratios, total = [], [], 0
        for _ in range(reqs):
            ttfb, times = one(port, n, d)
            ttfbs.append(ttfb * 1e3)
            total += len(times)
            if len(times) > 1:
                ratios.append(((len(times) - 1) / (times[-1] - times[0])) / rate)
        c1 = cpu_s(p.pid)
        ttfbs.sort()
        ratios.sort()
        out[f"cpu_ms_tok_{rate}"] = round((c1 - c0) * 1e3 / total, 3)
        out[f"ttfb_added_ms_{rate}"] = round(ttfbs[len(ttfbs) // 2], 2)
        out[f"ratio_{rate}"] = round(ratios[len(ratios) // 2], 3)
    out["rss_after_mb"] = round(rss_mb(p.pid), 1)
    p.kill()
    p.wait()
    return out


def _send(port: int, data: bytes, wait: float = 2.0) -> bytes:
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(wait)
    s.sendall(data)
    out = b""
    try:
        while chunk := s.recv(4096):
            out += chunk
    except TimeoutError:
        out += b"<no more within 2 s>"
    except OSError:
        out += b"<reset>"
    s.close()
    return out[:100]


def probe(kind: str) -> None:
    port = 20000 + (os.getpid() % 10000)
    p = subprocess.Popen(
        [sys.executable, __file__, "serve", kind, str(port)], stdout=subprocess.PIPE, text=True
    )
    assert p.stdout is not None
    p.stdout.readline()
    time.sleep(0.3)
    post = b"POST /s?n=1&d=0 HTTP/1.1\r\nHost: x\r\n"
    print("==", kind)
    print("  garbage:", _send(port, b"GARBAGE\r\n\r\n"))
    print("  HTTP/0.9 line:", _send(port, b"GET /\r\n\r\n"))
    print("  two lengths:", _send(port, post + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}x"))
    print(
        "  length and chunked:",
        _send(port, post + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    )
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(0.5)
    start, closed = time.monotonic(), None
    for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"b" * 40:
        try:
            s.send(bytes([b]))
            if s.recv(100) == b"":
                closed = time.monotonic() - start
                break
        except TimeoutError:
            pass
        except OSError:
            closed = time.monotonic() - start
            break
        if time.monotonic() - start > 8:
            break
    s.close()
    print("  a head trickled for 8 s, closed by the server after:", closed)
    p.kill()
    p.wait()


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "probe":
        for kind in sys.argv[2].split(","):
            probe(kind)
    else:
        for _rnd in range(int(sys.argv[2]) if len(sys.argv) > 2 else 1):
            for kind in sys.argv[1].split(","):
                print(json.dumps(bench(kind)), flush=True)
