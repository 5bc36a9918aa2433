"""Run one client call the way Home Assistant makes it, with a pinned client version, and print
what went on the wire and what came back as JSON on stdout.

Run by tests/e2e/test_ha_replay.py in a subprocess whose PYTHONPATH is the pinned client's own
install (``pip install --target``), so the client under test is exactly the version Home
Assistant pins, never the one in rkllmd's virtualenv. Standalone: imports nothing of rkllmd.

    python ha_replay_driver.py '<spec as JSON>'      (or - to read it from stdin)

spec: ``{"client": "ollama" | "openai", "url": ..., "key": ..., "kwargs": {...}, "method": "chat" |
"generate"}`` (ollama's method, chat by default); for ollama,
``kwargs["messages"]`` are built into ``ollama.Message`` objects as Home Assistant's
``_convert_content`` builds them (images as bytes, ``images_b64`` in the spec).
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path
from typing import Any


def _ollama_message(ollama: Any, m: dict[str, Any]) -> Any:
    """A message as HA's ollama integration makes it (entity.py / conversation.py _convert_content)."""
    fields: dict[str, Any] = {"role": m["role"]}
    for key in ("content", "thinking"):
        if key in m:
            fields[key] = m[key]
    if m.get("tool_calls"):
        fields["tool_calls"] = [
            ollama.Message.ToolCall(
                function=ollama.Message.ToolCall.Function(
                    name=c["function"]["name"], arguments=c["function"]["arguments"]
                )
            )
            for c in m["tool_calls"]
        ]
    if m.get("images_b64"):
        fields["images"] = [ollama.Image(value=base64.b64decode(b)) for b in m["images_b64"]]
    if m.get("image_paths"):  # HA 2025.8+ (ollama/entity.py): ollama.Image(value=attachment.path)
        fields["images"] = [ollama.Image(value=Path(p)) for p in m["image_paths"]]
    return ollama.Message(**fields)


async def _ollama(spec: dict[str, Any], sent: list[Any]) -> dict[str, Any]:
    import ollama

    async def record(request: Any) -> None:
        sent.append(json.loads(request.read() or b"null"))

    headers = {"Authorization": f"Bearer {spec['key']}"} if spec.get("key") else None
    client = ollama.AsyncClient(host=spec["url"], headers=headers, event_hooks={"request": [record]})
    kwargs = dict(spec["kwargs"])
    call = client.generate if spec.get("method") == "generate" else client.chat
    if "messages" in kwargs:
        kwargs["messages"] = [_ollama_message(ollama, m) for m in kwargs["messages"]]
    if "images_b64" in kwargs:  # generate's images, as bytes
        kwargs["images"] = [ollama.Image(value=base64.b64decode(b)) for b in kwargs.pop("images_b64")]
    try:
        result = await call(**kwargs)
        if not kwargs.get("stream"):
            return {"parts": [result.model_dump(exclude_none=True)]}
        parts = [part.model_dump(exclude_none=True) async for part in result]
    except ollama.ResponseError as err:
        return {"error": {"status_code": err.status_code, "message": err.error}}
    return {"parts": parts}


async def _openai(spec: dict[str, Any], sent: list[Any]) -> dict[str, Any]:
    import httpx2
    import openai

    async def record(request: Any) -> None:
        sent.append(json.loads(request.read() or b"null"))

    http_client = httpx2.AsyncClient(event_hooks={"request": [record]})
    client = openai.AsyncOpenAI(base_url=spec["url"], api_key=spec["key"], http_client=http_client)
    try:
        result = await client.chat.completions.create(**spec["kwargs"])
        if spec["kwargs"].get("stream"):
            chunks = [chunk.model_dump(exclude_none=True) async for chunk in result]
            return {"chunks": chunks}
        return {"completion": result.model_dump(exclude_none=True)}
    except openai.APIStatusError as err:
        body = err.body if isinstance(err.body, dict) else {"message": str(err.body)}
        return {"error": {"status_code": err.status_code, **body}}


def main() -> None:
    # "-": the spec on stdin (a request with a large image is over the kernel's limit for one argument)
    spec = json.loads(sys.stdin.read() if sys.argv[1] == "-" else sys.argv[1])
    sent: list[Any] = []
    run = _ollama if spec["client"] == "ollama" else _openai
    out = asyncio.run(run(spec, sent))
    version = __import__(spec["client"]).__version__ if spec["client"] == "openai" else _ollama_version()
    print(json.dumps({"sent": sent, "version": version, **out}, default=str))


def _ollama_version() -> str:
    from importlib.metadata import version

    return version("ollama")


if __name__ == "__main__":
    main()
