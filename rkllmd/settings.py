"""The one validated configuration: a TOML file, ``RKLLMD_*`` environment overrides, secret files.

Every model here rejects unknown keys, so a typo is an error at ``check-config`` rather than a
silently ignored setting. Precedence, highest first: environment, TOML file, defaults.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from rkllmd.config_base import ModelCommon, Strict
from rkllmd.errors import ConfigError
from rkllmd.mqttsettings import TOPIC_SAFE, MqttSettings
from rkllmd.runtime.base import RuntimeKind
from rkllmd.runtime.kinds import discover
from rkllmd.runtime.llamacpp.settings import LlamaCppModelSettings

DEFAULT_CONFIG_PATH = Path("/etc/rkllmd/rkllmd.toml")
EMBEDDED_MODEL_NAME = "smollm2"


class LimitSettings(Strict):
    queue_size: int = Field(
        8,
        ge=1,
        le=10_000,
        description="requests waiting behind the running one; embed and rerank jobs have as many "
        "places again of their own",
    )
    background_overtakes: int = Field(
        4,
        ge=0,
        le=1000,
        description="generations that may run before a queued embed or rerank job before it runs "
        "(0: arrival order); docs/EMBEDDINGS.md",
    )
    backlog_max: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="MQTT requests the broker sends beyond queue_size that wait instead of busy: its "
        "backlog after a restart, a fleet's requests (docs/FLEET.md, 'A backlog waits its turn')",
    )
    max_payload_bytes: int = Field(256 * 1024, ge=64)
    max_tokens: int = Field(512, ge=1, description="default completion cap per request")
    max_tokens_cap: int = Field(8192, ge=1, description="largest max_tokens a request may ask for")
    first_token_timeout_s: float = Field(60.0, gt=0)
    total_timeout_s: float = Field(600.0, gt=0)
    shutdown_grace_s: float = Field(10.0, ge=0)
    stall_timeout_s: float = Field(60.0, gt=0, description="abort a generation with no new token this long")
    abort_grace_s: float = Field(15.0, gt=0, description="kill a worker that ignores abort for this long")
    restart_budget: int = Field(3, ge=0, description="worker crashes allowed within restart_window_s")
    restart_window_s: float = Field(600.0, gt=0)
    max_embed_inputs: int = Field(
        64, ge=1, le=10_000, description="texts one embed request (documents one rerank request) may hold"
    )
    max_embed_tokens: int = Field(
        16384, ge=1, description="tokens of one embed or rerank job in all: how long it may hold the queue"
    )


class ImageSettings(Strict):
    """Images in requests (docs/VISION.md)."""

    folder: Path | None = Field(
        None, description="MQTT requests may name image files under this folder (none: base64 only)"
    )
    max_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="largest encoded image accepted")


class FleetSettings(Strict):
    """Several boards behind one request topic through MQTT v5 shared subscriptions (docs/FLEET.md)."""

    group: str | None = Field(
        None, description="share group name; set it on every board of the fleet (MQTT 5 only)"
    )
    node_id: str | None = Field(None, description="this board's name in topics; default the host name")
    models: Literal["configured", "loaded"] = Field(
        "configured", description="subscribe a model's own topic while it is configured, or only while loaded"
    )
    receive_maximum: int | None = Field(
        None, ge=1, le=65535, description="requests in flight to this board; default limits.queue_size + 1"
    )
    cancel_timeout_s: float = Field(2.0, gt=0, description="wait this long for every board's cancel report")
    takeover: bool = Field(
        True, description="the leader takes over a dead board's kept session and serves what it held"
    )
    takeover_grace_s: float = Field(
        60.0, ge=0, description="how long a board may stay offline before the leader takes its session over"
    )

    @field_validator("group", "node_id")
    @classmethod
    def _name_ok(cls, v: str | None) -> str | None:
        allowed = TOPIC_SAFE.replace("/", "").replace(".", "")
        if v is not None and (not v or any(c not in allowed for c in v)):
            raise ValueError("must be non-empty and use only [A-Za-z0-9_-]")
        return v

    @property
    def enabled(self) -> bool:
        return self.group is not None

    def node(self) -> str:
        """This board's node id: the configured one, else the host name made topic-safe."""
        if self.node_id:
            return self.node_id
        host = socket.gethostname().split(".")[0] or "rkllmd"
        return "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in host)


class LogSettings(Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "console", "json"] = "auto"


class StreamSettings(Strict):
    """Stream chunks (``<base>/stream/<id>`` and ``…/text``), docs/PROTOCOL.md.

    QoS 0 by default: on one TCP connection a chunk is lost only when the connection is, and then
    the final reply, sent at ``mqtt.qos``, still carries the whole text. QoS 1 would cost a PUBACK
    per chunk each way and cap a stream at what paho's in-flight window lets through.
    """

    qos: Literal[0, 1, 2] = Field(0, description="QoS of stream chunks; the final reply keeps mqtt.qos")
    text_topic: bool = Field(True, description="also publish the bare deltas on <base>/stream/<id>/text")
    thinking_topic: bool = Field(
        True, description="also publish a thinking model's bare thought on <base>/stream/<id>/thinking"
    )
    coalesce_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="tokens that come within this long of a request's last chunk wait and join the "
        "next one; 0: only tokens that queued up while the daemon was busy are joined",
    )
    sentence_max_chars: int = Field(
        200, ge=20, le=2000, description="a sentence stream cuts text without a sentence end at this length"
    )
    sentence_min_chars: int = Field(
        10, ge=0, le=200, description='a sentence shorter than this joins the next one ("Ok.", "Sure!")'
    )

    @model_validator(mode="after")
    def _sentence_lengths(self) -> StreamSettings:
        if self.sentence_min_chars >= self.sentence_max_chars:
            raise ValueError("stream.sentence_min_chars must be below stream.sentence_max_chars")
        return self


# A [models.X] table is the settings model of its runtime, whose kind is found by looking
# (rkllmd.runtime.kinds): adding a runtime package adds its table here. mypy sees the common keys.
if TYPE_CHECKING:
    ModelSettings = ModelCommon
else:
    ModelSettings = Annotated[
        Union[tuple(kind.settings for kind in discover().values())],  # noqa: UP007 (a runtime tuple)
        Field(discriminator="runtime"),
    ]


def runtime_tables(kinds: Mapping[str, RuntimeKind]) -> type[BaseSettings]:
    """A base for :class:`Settings` with a section ``[<name>]`` for each kind that declares a
    runtime-wide table (``RuntimeKind.table``: RKLLM's ``[rkllm]``), defaulted as its model is."""
    fields: dict[str, Any] = {
        name: (kind.table, Field(default_factory=kind.table)) for name, kind in kinds.items() if kind.table
    }
    return create_model("RuntimeTables", __base__=BaseSettings, __module__=__name__, **fields)


# The runtimes' own top-level tables, found as the kinds are: a runtime package adds its table
# here. mypy sees none of them; a runtime reads its own as ``settings.<kind>`` (rkllmd.runtime.base).
if TYPE_CHECKING:
    _RuntimeTables = BaseSettings
else:
    _RuntimeTables = runtime_tables(discover())


class PluginConfigProblems(ValueError):
    """Raised while validating [plugins]; each problem names its dotted key (plugins.<name>.<key>)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class PluginsSettings(BaseModel):
    """``enabled``: plugin names in the order they run; ``[plugins.<name>]``: each one's config."""

    model_config = ConfigDict(extra="allow", frozen=True)

    enabled: list[str] = Field(default_factory=list)
    folders: list[Path] = Field(
        default_factory=list, description="folders of your own plugin modules (a checkout's plugins/ too)"
    )

    def tables(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _plugin_configs(self) -> PluginsSettings:
        # The plugin loader is handed in by load_settings (rkllmd.config passes it), so that this
        # module, which plugins import, imports no plugin code.
        check = _CHECK_PLUGINS.get("check")
        problems = check(self.enabled, self.tables(), self.folders) if check is not None else []
        if problems:
            raise PluginConfigProblems(problems)
        return self


#: Validates the plugin tables: (enabled, tables, folders) -> problems, one line each.
PluginCheck = Callable[[list[str], dict[str, Any], list[Path]], list[str]]


class Settings(_RuntimeTables):
    """Everything rkllmd reads at startup (the runtimes' own tables, such as ``[rkllm]``, come
    from ``_RuntimeTables``)."""

    model_config = SettingsConfigDict(
        env_prefix="RKLLMD_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    mqtt: MqttSettings = MqttSettings()
    limits: LimitSettings = LimitSettings()
    log: LogSettings = LogSettings()
    stream: StreamSettings = StreamSettings()
    fleet: FleetSettings = FleetSettings()
    images: ImageSettings = ImageSettings()
    state_dir: Path | None = Field(
        None, description="where rkllmd keeps its request journal (answers requests a kill interrupted)"
    )
    journal_fsync: bool = Field(
        True,
        description="fsync each journal line before it counts, so a power cut loses none (docs/FLEET.md)",
    )
    default_model: str | None = None
    preload: bool = Field(True, description="load the default model at startup")
    isolation: Literal["process", "thread"] = Field(
        "process", description="run each runtime in a worker process, so a native crash costs one request"
    )
    models: dict[str, ModelSettings] = Field(default_factory=dict)
    plugins: PluginsSettings = Field(default_factory=PluginsSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = _TOML_PATH.get("path")
        sources: list[PydanticBaseSettingsSource] = [env_settings, init_settings]
        if toml is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)

    @field_validator("models")
    @classmethod
    def _model_names(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if not name or any(c not in TOPIC_SAFE.replace("/", "") for c in name):
                raise ValueError(f"model name {name!r} must use only [A-Za-z0-9_-.]")
        return v

    @model_validator(mode="after")
    def _embedded_default(self) -> Settings:
        # With no models configured, serve the embedded demo model through llama.cpp.
        if not self.models:
            object.__setattr__(
                self,
                "models",
                {
                    EMBEDDED_MODEL_NAME: LlamaCppModelSettings(
                        runtime="llamacpp",
                        description="SmolLM2-135M-Instruct on the CPU (embedded demo model)",
                        max_context_len=2048,
                        temperature=0.2,
                    )
                },
            )
        if self.default_model is None:
            object.__setattr__(self, "default_model", next(iter(self.models)))
        elif self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not among the configured models")
        if self.limits.max_tokens > self.limits.max_tokens_cap:
            raise ValueError("limits.max_tokens must not exceed limits.max_tokens_cap")
        if self.fleet.enabled:
            if self.mqtt.protocol != "5":
                raise ValueError('fleet.group needs mqtt.protocol = "5" (shared subscriptions are MQTT 5)')
            if "client_id" not in self.mqtt.model_fields_set:
                # every board needs its own client id, or the broker keeps disconnecting one for the other
                mqtt = self.mqtt.model_copy(update={"client_id": f"rkllmd-{self.fleet.node()}"})
                object.__setattr__(self, "mqtt", mqtt)
        return self

    @property
    def default(self) -> str:
        assert self.default_model is not None
        return self.default_model


_CLASH = set(_RuntimeTables.model_fields) & set(Settings.__annotations__)
if _CLASH:  # a runtime named after a section of the configuration: found at import, not at run
    raise TypeError(f"runtime kinds {sorted(_CLASH)} name a section rkllmd's configuration has already")

# The TOML path and the plugin check are handed to the validators through these dicts because
# pydantic-settings builds sources from the class; load_settings() sets and clears them.
_TOML_PATH: dict[str, Path | None] = {}
_CHECK_PLUGINS: dict[str, PluginCheck] = {}


def load_settings(
    path: Path | None = None, *, env: dict[str, str] | None = None, check_plugins: PluginCheck | None = None
) -> Settings:
    """Read and validate the configuration, or raise ConfigError listing every problem.

    ``check_plugins`` validates the plugin tables with the rest; rkllmd.config.load_settings
    passes the plugin loader's check.
    """
    explicit = path is not None
    if path is None:
        env_path = (env or os.environ).get("RKLLMD_CONFIG")
        path = Path(env_path) if env_path else DEFAULT_CONFIG_PATH
        explicit = bool(env_path)
    if not path.exists():
        if explicit:
            raise ConfigError(f"config file {path} does not exist")
        path = None
    elif path.is_dir():
        raise ConfigError(f"config path {path} is a directory, not a TOML file")
    _TOML_PATH["path"] = path
    if check_plugins is not None:
        _CHECK_PLUGINS["check"] = check_plugins
    try:
        if path is not None:
            import tomllib

            try:
                tomllib.loads(path.read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
            except OSError as exc:
                raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
        settings = Settings()
        settings.mqtt.resolved_password()
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, path)) from exc
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    finally:
        _TOML_PATH.clear()
        _CHECK_PLUGINS.clear()
    return settings


def format_validation_error(exc: ValidationError, path: Path | None) -> str:
    """One line per problem: the dotted key, what is wrong, and the value given."""
    where = str(path) if path else "settings"
    lines: list[str] = []
    for err in exc.errors():
        plugin_problems = (err.get("ctx") or {}).get("error")
        if isinstance(plugin_problems, PluginConfigProblems):
            lines.extend(f"  - {p}" for p in plugin_problems.problems)
            continue
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  - {loc}: {msg}")
    return "\n".join([f"{where}: {len(lines)} problem(s):", *lines])
