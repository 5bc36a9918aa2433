"""The full path: a real rkllmd process and an MQTT client, timed from publish to first chunk."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from rkllmd.bench.broker import LocalBroker
from rkllmd.bench.daemonproc import DaemonProcess, to_toml
from rkllmd.bench.haturn import first_sentence_ms
from rkllmd.bench.mqttclient import BenchClient
from rkllmd.bench.stats import Sample, rate, stream_rate
from rkllmd.settings import Settings


class DaemonError(RuntimeError):
    """rkllmd answered a benchmark request with an error, or stopped."""


def daemon_config(
    settings: Settings, models: list[str], host: str, port: int, base: str, own_broker: bool, max_tokens: int
) -> dict[str, Any]:
    """The user's settings as TOML data, pointed at the benchmark's broker and base topic.

    preload is off so that each model's peak RSS starts from the daemon without any model.
    """
    data = settings.model_dump(mode="json", exclude_none=True)
    mqtt = data["mqtt"]
    mqtt.update(host=host, port=port, base_topic=base, client_id=base)
    if own_broker:  # the loopback broker is anonymous and plain TCP
        for k in ("username", "password", "password_file"):
            mqtt.pop(k, None)
        mqtt["tls"] = {"enabled": False}
    data["log"] = {"level": "info", "format": "json"}
    data["preload"] = False
    data["default_model"] = models[0]
    data["models"] = {m: data["models"][m] for m in models}
    limits = data["limits"]
    limits["max_tokens_cap"] = max(int(limits["max_tokens_cap"]), max_tokens)
    limits["max_tokens"] = min(int(limits["max_tokens"]), limits["max_tokens_cap"])
    # image cases send their snapshots base64 in the request (rkllmd.bench.images: under 1 MiB)
    limits["max_payload_bytes"] = max(int(limits["max_payload_bytes"]), 4 * 1024 * 1024)
    return data


class MqttPath:
    """Starts a broker (unless one is given) and one daemon serving every benchmarked model."""

    name = "mqtt"

    def __init__(
        self,
        settings: Settings,
        models: list[str],
        workdir: Path,
        *,
        host: str | None = None,
        port: int | None = None,
        max_tokens: int = 512,
    ) -> None:
        self.broker: LocalBroker | None = None
        self.daemon: DaemonProcess | None = None
        self.client: BenchClient | None = None
        self.base = "bench" + uuid.uuid4().hex[:8]  # never shares retained topics with a real rkllmd
        self._model: str | None = None  # the model load() loaded: every request names it
        try:
            if host is None:
                self.broker = LocalBroker(workdir)
                host, port = self.broker.host, self.broker.port
            port = port or settings.mqtt.port
            cfg = daemon_config(settings, models, host, port, self.base, self.broker is not None, max_tokens)
            path = workdir / "rkllmd-bench.toml"
            path.write_text(to_toml(cfg))
            self.daemon = DaemonProcess(path, workdir / "rkllmd.log")
            own = self.broker is not None
            user = None if own else settings.mqtt.username
            password = None if own else settings.mqtt.resolved_password()
            self.client = BenchClient(host, port, self.base, user, password)
            try:
                self.client.wait_state("online", timeout=60)
            except TimeoutError as exc:
                raise DaemonError(f"rkllmd did not come online:\n{self.daemon.log_tail()}") from exc
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int:
        assert self.daemon is not None
        return self.daemon.pid

    def _command(self, command: str, payload: dict[str, Any]) -> dict[str, Any]:
        assert self.client is not None and self.daemon is not None
        reply = self.client.command(command, payload)
        if reply.get("status") != "ok":
            raise DaemonError(f"{command} failed: {reply.get('code')}: {reply.get('error')}")
        return reply

    def load(self, model: str) -> dict[str, Any]:
        """Load ``model`` in the daemon; returns the runtime part of its retained info topic."""
        self._command("load", {"model": model})
        self._model = model
        assert self.client is not None
        runtime = self.client.info.get("runtime")
        return runtime if isinstance(runtime, dict) else {}

    def abort(self) -> None:
        """Cancel the request in flight, if any (any thread)."""
        if self.client is not None:
            self.client.cancel_current()

    def unload(self) -> None:
        self._command("unload", {})

    def run(self, request: dict[str, Any], clear: bool = True) -> Sample:
        """One generation through the daemon, after a clear_cache (if ``clear``) so the whole
        prompt is evaluated."""
        assert self.client is not None
        if clear:
            self._command("clear_cache", {})
        # The request names the model: the daemon would otherwise answer with its default one.
        ex = self.client.generate({**request, "model": self._model} if self._model else request)
        if ex.reply.get("status") != "ok":
            raise DaemonError(f"generate failed: {ex.reply.get('code')}: {ex.reply.get('error')}")
        data = ex.reply["data"]
        t, usage = data.get("timings") or {}, data.get("usage") or {}
        first = ex.delta_times[0] if ex.delta_times else ex.t_reply
        completion = int(usage.get("completion_tokens") or len(ex.deltas))
        prompt = usage.get("prompt_tokens")
        return Sample(
            ttft_ms=(first - ex.t_publish) * 1e3,
            total_ms=(ex.t_reply - ex.t_publish) * 1e3,
            completion_tokens=completion,
            prompt_tokens=prompt,
            prefill_ms=t.get("prefill_ms"),
            decode_ms=t.get("decode_ms"),
            # Recomputed from the counters rather than copied: the reply rounds them.
            prefill_tps=rate(prompt, t.get("prefill_ms")),
            decode_tps=rate(completion, t.get("decode_ms")),
            stream_tps=stream_rate(ex.delta_times),
            deltas=len(ex.deltas),
            daemon_ttft_ms=t.get("ttft_ms"),
            runtime_memory_mb=t.get("memory_mb"),
            ttfs_ms=first_sentence_ms(ex.deltas, ex.delta_times, ex.t_publish, ex.t_reply),
            finish_reason=str(data.get("finish_reason", "")),
            image_decode_ms=t.get("image_decode_ms"),
            image_encode_ms=t.get("image_encode_ms"),
            text=str(data.get("text", "".join(ex.deltas))),
        )

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.daemon is not None:
            self.daemon.stop()
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
