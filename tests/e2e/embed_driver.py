"""Run one embeddings call through an official client (a pinned version), print the result as JSON.

Run by tests/e2e/test_embed_clients.py in a subprocess whose PYTHONPATH is the pinned client's own
install (as tests/e2e/ha_replay_driver.py is), so the client under test is exactly that version.
Standalone: imports nothing of rkllmd.

    python embed_driver.py '<spec as JSON>'

spec: ``{"client": "openai" | "ollama", "url", "call": "embed" | "embeddings", "kwargs": {...}}``.
Prints ``{"version", "vectors", "usage"}``, or
``{"version", "error": {"status", "message", "body", "param"}}``
when the client raised the API's error.
"""

from __future__ import annotations

import base64
import json
import struct
import sys
from typing import Any


def _floats(embedding: Any) -> list[float]:
    """A vector as the client returns it: floats, or the base64 text when the caller asked for
    base64 itself (then the client leaves it to the caller: little-endian float32)."""
    if isinstance(embedding, str):
        raw = base64.b64decode(embedding)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    return [float(x) for x in embedding]


def _openai(spec: dict[str, Any]) -> dict[str, Any]:
    import openai

    client = openai.OpenAI(base_url=spec["url"], api_key="sk-test", max_retries=0, timeout=60)
    out: dict[str, Any] = {"version": openai.__version__}
    try:
        resp = client.embeddings.create(**spec["kwargs"])
    except openai.APIStatusError as exc:
        param = getattr(exc, "param", None)  # BadRequestError and NotFoundError carry it
        out["error"] = {"status": exc.status_code, "message": exc.message, "body": exc.body, "param": param}
        return out
    out["vectors"] = [_floats(d.embedding) for d in sorted(resp.data, key=lambda d: d.index)]
    out["usage"] = {"prompt_tokens": resp.usage.prompt_tokens, "total_tokens": resp.usage.total_tokens}
    out["model"] = resp.model
    return out


def _ollama(spec: dict[str, Any]) -> dict[str, Any]:
    from importlib.metadata import version

    import ollama

    client = ollama.Client(host=spec["url"], timeout=60)
    out: dict[str, Any] = {"version": version("ollama")}
    try:
        if spec["call"] == "embed":
            resp = client.embed(**spec["kwargs"])
            out["vectors"] = [list(v) for v in resp["embeddings"]]
            out["usage"] = {"prompt_tokens": resp.get("prompt_eval_count")}
            out["model"] = resp["model"]
        else:
            resp = client.embeddings(**spec["kwargs"])
            out["vectors"] = [list(resp["embedding"])]
    except ollama.ResponseError as exc:
        out["error"] = {"status": exc.status_code, "message": exc.error}
    return out


def main() -> None:
    spec = json.loads(sys.argv[1])
    out = _openai(spec) if spec["client"] == "openai" else _ollama(spec)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
