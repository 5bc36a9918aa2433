"""Home Assistant MQTT discovery: rkllmd appears in Home Assistant as one device, no YAML.

One device-based discovery message (``<prefix>/device/<node_id>/config``, retained) carries
every entity; all of them read rkllmd's own topics:

=================  ===============  ==========================================================
component id       platform         topics
=================  ===============  ==========================================================
state              sensor           ``<base>/state`` (``online``/``stopped``)
loaded_model       sensor           ``<base>/stats``
queue_depth        sensor           ``<base>/stats``
tokens_per_s       sensor           ``<base>/stats`` (``last_decode_tokens_per_s``)
ttft               sensor           ``<base>/stats`` (``last_ttft_ms``)
npu_load           sensor           ``<base>/stats`` (``plugins.npu``; only with the npu plugin)
busy               binary_sensor    ``<base>/stats``
model              select           state ``<base>/stats``, command ``<base>/request/load``
prompt             text             command ``<base>/request/generate`` (a plain-text prompt)
cancel             button           command ``<base>/plugins/homeassistant/cancel``
unload             button           command ``<base>/request/unload``
last_answer        sensor           ``<base>/plugins/homeassistant/answer`` (retained)
answer             event            ``<base>/plugins/homeassistant/event``
=================  ===============  ==========================================================

The ``answer`` event has type ``answer`` or ``error``; every generate request that fails or is
refused gets an ``error`` event, also one refused before its payload could be read (an empty
prompt from the ``prompt`` text entity): the daemon names the command before it decodes.
Availability comes from ``<base>/state``, whose payload is JSON, through a value template.
A sensor's state holds at most 255 characters, so ``last_answer`` shows the first 250 and keeps
the whole answer in its attributes (``text``), and the ``answer`` event carries it whole too.
Discovery is re-sent, after a small random delay, whenever Home Assistant's birth message
(``<prefix>/status`` = ``online``) arrives. When the plugin is no longer enabled (or fails),
its discovery is removed with empty retained payloads. Unique ids derive from ``node_id``
(default: ``mqtt.client_id``), so they stay the same across restarts.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from pydantic import Field, field_validator

from rkllmd.plugins import (
    RKLLMD_VERSION,
    Final,
    Message,
    NotFound,
    Plugin,
    PluginConfig,
    PluginContext,
    Token,
)

STATE_CHARS = 250
_ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")


class Config(PluginConfig):
    discovery_prefix: str = Field("homeassistant", description="Home Assistant's discovery prefix")
    node_id: str | None = Field(
        None, description="device id in topics and unique ids; default mqtt.client_id"
    )
    device_name: str = Field("rkllmd", description="the device's name in Home Assistant")
    suggested_area: str | None = None
    birth_delay_s: float = Field(
        2.0, ge=0, le=60, description="re-send discovery within 0..this after HA's birth"
    )
    npu_sensor: bool | None = Field(
        None, description="add the NPU load sensor; default: if the npu plugin runs"
    )

    @field_validator("node_id")
    @classmethod
    def _id_ok(cls, v: str | None) -> str | None:
        if v is not None and not _ID_RE.match(v):
            raise ValueError("node_id must use only [A-Za-z0-9_-]")
        return v

    @field_validator("discovery_prefix")
    @classmethod
    def _prefix_ok(cls, v: str) -> str:
        v = v.strip("/")
        if not v or any(c in v for c in "+#") or v.startswith("$"):
            raise ValueError("discovery_prefix must be a plain topic prefix")
        return v


def node_id(ctx: PluginContext, config: Config) -> str:
    return config.node_id or re.sub(r"[^A-Za-z0-9_-]", "_", ctx.settings.mqtt.client_id)


def discovery_topic(ctx: PluginContext, config: Config) -> str:
    return f"{config.discovery_prefix}/device/{node_id(ctx, config)}/config"


def fleet_discovery_topic(ctx: PluginContext, config: Config) -> str:
    group = ctx.settings.fleet.group
    return f"{config.discovery_prefix}/device/{_fleet_id(ctx, group or '')}/config"


def _fleet_id(ctx: PluginContext, group: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"rkllmd_{ctx.topics.base}_{group}_fleet")


def fleet_discovery_payload(ctx: PluginContext, config: Config) -> dict[str, Any]:
    """The fleet's own device: queue and boards across the group, which board answered last,
    and a prompt to the group's topic. Every board publishes the same message (it depends on the
    configuration only), so it stays while any board runs. Available while ``<base>/fleet/state``
    says online: the leader's, whose Will turns it offline when the last board dies.
    """
    t = ctx.topics
    group = ctx.settings.fleet.group or ""
    fid = _fleet_id(ctx, group)

    def sensor(name: str, tpl: str, **extra: Any) -> dict[str, Any]:
        return {"p": "sensor", "name": name, "stat_t": t.fleet_stats, "val_tpl": tpl, **extra}

    cmps: dict[str, dict[str, Any]] = {
        "boards_online": sensor(
            "Boards online", "{{ value_json.boards_online }}", stat_cla="measurement", ic="mdi:server"
        ),
        "busy_boards": sensor(
            "Busy boards", "{{ value_json.busy_boards }}", stat_cla="measurement", ic="mdi:server-network"
        ),
        "queue_depth": sensor(
            "Queue across boards", "{{ value_json.queue_depth }}", stat_cla="measurement", ic="mdi:tray-full"
        ),
        "last_board": sensor(
            "Last answer from", "{{ value_json.last_node or 'none' }}", ic="mdi:message-reply-text"
        ),
        "prompt": {
            "p": "text",
            "name": "Prompt",
            "cmd_t": t.group_request("generate"),
            "max": 255,
            "mode": "text",
            "ic": "mdi:message-text",
        },
    }
    for key, c in cmps.items():
        c["uniq_id"] = f"{fid}_{key}"
    dev = {"ids": [fid], "name": f"{config.device_name} fleet {group}", "mf": "rkllmd", "mdl": "LLM fleet"}
    return {
        "dev": dev,
        "o": {"name": "rkllmd", "sw": RKLLMD_VERSION},
        "avty": [
            {
                "topic": t.fleet_state,
                "value_template": "{{ 'online' if value_json.state == 'online' else 'offline' }}",
            }
        ],
        "cmps": cmps,
        "qos": ctx.settings.mqtt.qos,
    }


def discovery_payload(ctx: PluginContext, config: Config) -> dict[str, Any]:
    """The device-based discovery message (abbreviated keys as Home Assistant documents them)."""
    t = ctx.topics
    nid = node_id(ctx, config)
    uid = f"rkllmd_{nid}"

    def stats_sensor(name: str, tpl: str, **extra: Any) -> dict[str, Any]:
        return {"p": "sensor", "name": name, "stat_t": t.stats, "val_tpl": tpl, **extra}

    def num(key: str) -> str:
        return "{{ value_json." + key + " | default(None) }}"

    cmps: dict[str, dict[str, Any]] = {
        "state": {
            "p": "sensor",
            "name": "State",
            "stat_t": t.state,
            "val_tpl": "{{ value_json.state }}",
            "ic": "mdi:robot",
            "ent_cat": "diagnostic",
        },
        "loaded_model": stats_sensor(
            "Loaded model", "{{ value_json.loaded_model or 'none' }}", ic="mdi:brain"
        ),
        "queue_depth": stats_sensor(
            "Queue depth", num("queue_depth"), stat_cla="measurement", ic="mdi:tray-full"
        ),
        "tokens_per_s": stats_sensor(
            "Tokens per second",
            num("last_decode_tokens_per_s"),
            unit_of_meas="tok/s",
            stat_cla="measurement",
            ic="mdi:speedometer",
        ),
        "ttft": stats_sensor(
            "Time to first token",
            num("last_ttft_ms"),
            unit_of_meas="ms",
            dev_cla="duration",
            stat_cla="measurement",
        ),
        "busy": {
            "p": "binary_sensor",
            "name": "Busy",
            "stat_t": t.stats,
            "val_tpl": "{{ 'ON' if value_json.busy else 'OFF' }}",
            "dev_cla": "running",
        },
        "model": {
            "p": "select",
            "name": "Model",
            "cmd_t": t.request("load"),
            "stat_t": t.stats,
            "val_tpl": "{{ value_json.loaded_model | default(None) }}",
            "ops": list(ctx.settings.models),
            "ic": "mdi:brain",
        },
        "prompt": {
            "p": "text",
            "name": "Prompt",
            "cmd_t": t.request("generate"),
            "max": 255,
            "mode": "text",
            "ic": "mdi:message-text",
        },
        "cancel": {
            "p": "button",
            "name": "Cancel",
            "cmd_t": ctx.topic("cancel"),
            "pl_prs": "PRESS",
            "ic": "mdi:stop",
        },
        "unload": {
            "p": "button",
            "name": "Unload model",
            "cmd_t": t.request("unload"),
            "pl_prs": "{}",
            "ic": "mdi:eject",
            "ent_cat": "config",
        },
        "last_answer": {
            "p": "sensor",
            "name": "Last answer",
            "stat_t": ctx.topic("answer"),
            "val_tpl": "{{ (value_json.text or '')[:" + str(STATE_CHARS) + "] }}",
            "json_attr_t": ctx.topic("answer"),
            "ic": "mdi:message-reply-text",
        },
        "answer": {
            "p": "event",
            "name": "Answer",
            "stat_t": ctx.topic("event"),
            "evt_typ": ["answer", "error"],
            "ic": "mdi:message-reply-text",
        },
    }
    npu = config.npu_sensor if config.npu_sensor is not None else "npu" in ctx.enabled_plugins
    if npu:
        cmps["npu_load"] = stats_sensor(
            "NPU load",
            "{{ value_json.get('plugins', {}).get('npu', {}).get('load_percent') }}",
            unit_of_meas="%",
            stat_cla="measurement",
            ic="mdi:chip",
        )
    for key, c in cmps.items():
        c["uniq_id"] = f"{uid}_{key}"
    fleet = ctx.settings.fleet
    dev: dict[str, Any] = {
        "ids": [uid],
        "name": f"{config.device_name} {t.node}" if fleet.enabled else config.device_name,
        "mf": "rkllmd",
        "mdl": "LLM over MQTT",
        "sw": RKLLMD_VERSION,
    }
    if config.suggested_area:
        dev["sa"] = config.suggested_area
    if fleet.enabled:
        dev["via_device"] = _fleet_id(ctx, fleet.group or "")
    return {
        "dev": dev,
        "o": {"name": "rkllmd", "sw": RKLLMD_VERSION},
        "avty": [
            {
                "topic": t.state,
                "value_template": "{{ 'online' if value_json.state == 'online' else 'offline' }}",
            }
        ],
        "cmps": cmps,
        "qos": ctx.settings.mqtt.qos,
    }


def setup(ctx: PluginContext, config: Config) -> None:
    disc_topic = discovery_topic(ctx, config)
    last: dict[str, Any] = {}

    def publish_discovery() -> None:
        ctx.publish(disc_topic, discovery_payload(ctx, config), retain=True, qos=1)
        if ctx.settings.fleet.enabled:
            # Not in the removal marker below: one board leaving must not remove the fleet's device.
            ctx.publish(
                fleet_discovery_topic(ctx, config), fleet_discovery_payload(ctx, config), retain=True, qos=1
            )
        # What remove() needs to clean up, should the plugin be disabled later.
        ctx.publish(ctx.topic("discovery"), {"topics": [disc_topic]}, retain=True, qos=1)

    def resend() -> None:
        publish_discovery()
        if last:
            ctx.publish(ctx.topic("answer"), last, retain=True)
        ctx.refresh_stats()

    def on_birth(msg: Message) -> None:  # ingress thread: never sleep here
        if msg.payload.strip() == b"online":
            ctx.call_later(random.uniform(0, config.birth_delay_s), resend)

    def on_cancel(msg: Message) -> None:  # ingress thread
        running = ctx.stats().get("running")
        if not running:
            ctx.log.info("cancel pressed; nothing is running")
            return
        try:
            was = ctx.cancel(running)
        except NotFound:  # it ended meanwhile
            return
        ctx.log.info("cancel pressed", request_id=running, was=was)

    def route(event: Token | Final) -> None:  # dispatcher thread
        if not isinstance(event, Final) or event.request.command != "generate":
            return
        req = event.request
        body = {
            "id": req.id,
            "model": event.data.get("model") or req.model,
            "status": event.status,
            "finish_reason": event.data.get("finish_reason"),
            "text": event.text,
            "error": event.error,
            "code": event.code,
            "prompt": req.payload.get("prompt")
            if isinstance(req.payload.get("prompt"), str)
            else _last_user(req.payload.get("messages")),
        }
        if event.ok:
            last.clear()
            last.update(body)
            ctx.publish(ctx.topic("answer"), body, retain=True)
        ctx.publish(ctx.topic("event"), {"event_type": "answer" if event.ok else "error", **body})

    # Home Assistant reads its whole prefix as device configurations: no reply may land there.
    ctx.reserve(f"{config.discovery_prefix}/#")
    publish_discovery()
    ctx.subscribe(f"{config.discovery_prefix}/status", on_birth)
    ctx.subscribe(ctx.topic("cancel"), on_cancel)
    ctx.add_router(route, tokens=False)  # final replies only


def _last_user(messages: Any) -> str | None:
    if isinstance(messages, list):
        for m in reversed(messages):
            if isinstance(m, dict) and m.get("role") == "user":
                return str(m.get("content"))
    return None


def remove(ctx: PluginContext) -> None:
    """Not enabled (or failed): delete the discovery this plugin once published, if any."""
    marker = ctx.topic("discovery")

    def on_marker(msg: Message) -> None:
        if not msg.payload:
            return
        try:
            topics = json.loads(msg.payload).get("topics", [])
        except (ValueError, AttributeError):
            topics = []
        for topic in topics:
            if isinstance(topic, str) and topic.endswith("/config"):
                ctx.publish(topic, b"", retain=True, qos=1)
        ctx.publish(ctx.topic("answer"), b"", retain=True, qos=1)
        ctx.publish(marker, b"", retain=True, qos=1)
        ctx.log.info("Home Assistant discovery removed", topics=topics)

    ctx.subscribe(marker, on_marker)


PLUGIN = Plugin(
    name="homeassistant",
    version="1.0.0",
    description="Home Assistant MQTT device discovery",
    config=Config,
    setup=setup,
    remove=remove,
)
