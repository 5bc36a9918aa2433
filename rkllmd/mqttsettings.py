"""The ``[mqtt]`` table and its ``[mqtt.tls]``: the broker, the session and the credentials
(a password inline or in a secret file), validated as rkllmd.settings validates the rest.

Part of the one configuration (rkllmd.settings.Settings holds it as ``mqtt``); the bus, its
connect and the fleet's side links read it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from rkllmd.config_base import Strict
from rkllmd.private import read_secret

# What a topic level rkllmd names may hold (base topic, fleet group, node, model names).
TOPIC_SAFE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./"


def _read_secret(path: Path | None, inline: str | None, what: str) -> str | None:
    if path is None:
        return inline
    return read_secret(path, f"{what} file").strip()  # refused if every user may read it


class TlsSettings(Strict):
    """Broker TLS; all paths are PEM files."""

    enabled: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = Field(False, description="skip hostname verification (testing only)")


class MqttSettings(Strict):
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str = "rkllmd"
    base_topic: str = "rkllmd"
    keepalive: int = Field(30, ge=5, le=3600)
    username: str | None = None
    password: str | None = Field(None, repr=False)
    password_file: Path | None = None
    qos: Literal[0, 1, 2] = 1
    connect_retries: int = Field(10, ge=1, description="first-connect attempts before giving up")
    clean_start: bool = Field(
        True, description="false: a persistent session, so the broker holds requests while rkllmd is away"
    )
    session_expiry_s: int = Field(
        300, ge=0, le=0xFFFFFFFF, description="MQTT 5: how long the broker keeps it (clean_start false)"
    )
    tls: TlsSettings = TlsSettings()
    redelivery_wait_s: float = Field(
        5.0,
        ge=0,
        description="after a restart with the session kept, wait this long for the broker to send "
        "again what the killed run left unanswered (state_dir's journal), then answer the rest interrupted",
    )

    @model_validator(mode="after")
    def _session_ok(self) -> MqttSettings:
        if not self.clean_start and not self.client_id:
            raise ValueError("mqtt.clean_start = false needs a fixed, non-empty mqtt.client_id")
        if not self.clean_start and self.protocol == "5" and self.session_expiry_s == 0:
            raise ValueError("mqtt.clean_start = false needs mqtt.session_expiry_s > 0 with MQTT 5")
        return self

    @field_validator("base_topic")
    @classmethod
    def _base_topic_ok(cls, v: str) -> str:
        v = v.strip("/")
        if not v or any(c not in TOPIC_SAFE for c in v):
            raise ValueError("base_topic must be non-empty and use only [A-Za-z0-9_-./]")
        return v

    def resolved_password(self) -> str | None:
        return _read_secret(self.password_file, self.password, "mqtt password")
