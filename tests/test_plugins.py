"""The plugin contract: loader, config validation, lifecycle, chains, through the testing kit."""

from __future__ import annotations

import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from rkllmd import cli
from rkllmd.config import load_settings
from rkllmd.errors import ConfigError, EmptyPrompt, RequestError
from rkllmd.plugins import (
    Exchange,
    Final,
    NotReady,
    Plugin,
    PluginConfig,
    PluginContext,
    PluginError,
    PluginHost,
)
from rkllmd.plugins import loader as plugins
from rkllmd.protocol import LocalMessage
from rkllmd.testing import FakeServices, PluginHarness, wait_until


def make_plugin(name: str, setup: Any, **kw: Any) -> Plugin:
    return Plugin(name=name, version="0.1", setup=setup, **kw)


def host_of(*items: Plugin, services: FakeServices | None = None) -> tuple[PluginHost, FakeServices]:
    h = PluginHarness(items[0])
    svc = services or h.services
    host = PluginHost(svc, [(p, PluginConfig()) for p in items], remove_disabled=False)
    host.retry_initial_s = 0.01
    return host, svc


# --- the template plugin, through the kit ------------------------------------------------------


def test_example_plugin_uses_every_hook() -> None:
    """The template plugin rewrites a prompt, routes the answer, echoes its topic and adds stats."""
    with PluginHarness("example", {"prefix": "Q: "}) as h:
        req = h.preprocess({"prompt": "hello", "shout": True})
        assert req.payload == {"prompt": "Q: HELLO"}
        h.finish(req, "Hi!")
        assert h.published("rkllmd/plugins/example/last")[-1].json() == {"id": req.id, "text": "Hi!"}
        h.message("rkllmd/plugins/example/ping", "x")
        assert h.published("rkllmd/plugins/example/pong")[-1].payload == b"x"
        assert h.stats() == {"example": {"answers": 1}}
        assert h.status()["state"] == "running"
    assert h.services.subscriptions == {}
    assert h.status()["state"] == "stopped"


def test_the_kit_admits_and_answers_as_the_daemon_does() -> None:
    """The kit's requests pass the daemon's own admission (the max_tokens cap, no reply into
    rkllmd's topics, an id made for a request without one, the injected request's checks), and its
    final reply carries the data the loop builds."""
    with PluginHarness("example", {"prefix": "Q: "}) as h:
        cap = h.settings.limits.max_tokens_cap
        with pytest.raises(RequestError, match=f"over the limit of {cap}"):
            h.preprocess({"prompt": "x", "max_tokens": cap + 1})
        with pytest.raises(RequestError, match="reply_to"):
            h.preprocess({"prompt": "x", "reply_to": "rkllmd/state"})
        req = h.preprocess({"prompt": "x", "max_tokens": 7})
        assert req.id and req.address is not None and req.address.request_id == req.id
        assert req.inp is not None and req.inp.max_tokens == 7 and h.generate_input(req) is req.inp
        final = h.finish(req, "one two three")
        assert final.data["usage"] == {"prompt_tokens": None, "completion_tokens": 3, "total_tokens": 3}
        assert final.as_reply()["data"]["text"] == "one two three"
        msg = LocalMessage("rkllmd/request/generate", b'{"prompt": "x", "temperature": "hot"}', key="k1")
        with pytest.raises(RequestError, match="temperature"):
            h.local_request(msg)


def test_example_plugin_waits_for_its_file(tmp_path: Path) -> None:
    """NotReady from setup is retried with backoff until it succeeds; the status says so meanwhile."""
    flag = tmp_path / "ready"
    with PluginHarness("example", {"wait_for": str(flag)}) as h:
        assert h.state == "not_ready"
        assert h.status()["state"] == "not_ready" and h.status()["retry_in_s"] > 0
        with pytest.raises(RequestError):  # its preprocessor is not in the chain yet
            h.preprocess({"prompt": "x", "shout": True})
        flag.touch()
        assert h.wait(lambda: h.state == "running", timeout=5)
        assert h.preprocess({"prompt": "x", "shout": True}).payload == {"prompt": "X"}


# --- loader and config -------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_plugin_config_errors_name_plugin_and_key(tmp_path: Path) -> None:
    """Bad plugin config is reported with core config problems, each with its dotted key."""
    cfg = write(
        tmp_path / "c.toml",
        """
        [limits]
        queue_size = 0
        [plugins]
        enabled = ["sessions", "nosuch", "example"]
        [plugins.sessions]
        idle_timeout_s = -1
        [plugins.example]
        colour = "red"
        """,
    )
    with pytest.raises(ConfigError) as ei:
        load_settings(cfg)
    msg = ei.value.message
    assert "limits.queue_size" in msg
    assert "plugins.sessions.idle_timeout_s: Input should be greater than 0" in msg
    assert "plugins.example.colour: unknown key" in msg
    assert "plugins.enabled.1: no plugin named 'nosuch'" in msg
    assert "4 problem(s)" in msg


def test_check_config_prints_plugin_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`rkllmd check-config` exits non-zero and prints the plugin's name and key."""
    cfg = write(
        tmp_path / "c.toml", '[plugins]\nenabled = ["transcript"]\n[plugins.transcript]\nmax_bytes = 1\n'
    )
    assert cli.main(["check-config", "--config", str(cfg)]) == 2
    assert "plugins.transcript.max_bytes" in capsys.readouterr().err


def test_valid_plugin_config_loads_in_order(tmp_path: Path) -> None:
    """Enabled plugins keep their configured order and their tables reach the settings."""
    cfg = write(
        tmp_path / "c.toml",
        '[plugins]\nenabled = ["sessions", "example"]\n[plugins.example]\nprefix = "> "\n',
    )
    s = load_settings(cfg)
    assert s.plugins.enabled == ["sessions", "example"]
    assert s.plugins.tables() == {"example": {"prefix": "> "}}


def test_entry_point_plugins_are_found_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A distribution's `rkllmd.plugins` entry point is loaded; a wrong API version is refused."""
    site = tmp_path / "site"
    (site / "thirdparty-0.1.dist-info").mkdir(parents=True)
    (site / "thirdparty-0.1.dist-info" / "METADATA").write_text("Name: thirdparty\nVersion: 0.1\n")
    (site / "thirdparty-0.1.dist-info" / "entry_points.txt").write_text(
        "[rkllmd.plugins]\nthird = thirdparty_plugin\nold = thirdparty_plugin:OLD\n"
    )
    (site / "thirdparty_plugin.py").write_text(
        "from rkllmd.plugins import Plugin\n"
        "PLUGIN = Plugin(name='third', version='2.0', setup=lambda ctx, cfg: None)\n"
        "OLD = Plugin(name='old', version='0.1', setup=lambda ctx, cfg: None, api_version=0)\n"
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(plugins, "_cache", {})
    assert plugins.discover()["third"] == "entry point thirdparty_plugin"
    assert plugins.load_plugin("third").version == "2.0"
    with pytest.raises(plugins.PluginLoadError, match="targets plugin API 0"):
        plugins.load_plugin("old")
    sys.modules.pop("thirdparty_plugin", None)


def test_a_plugin_importing_a_renamed_name_is_told_the_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plugin written when the request's record was also called Request fails to load with an
    error that names Exchange, the one name it has now."""
    folder = tmp_path / "myplugins"
    folder.mkdir()
    (folder / "oldstyle.py").write_text(
        "from rkllmd.plugins import Plugin, Request\n"
        "PLUGIN = Plugin(name='oldstyle', version='1', setup=lambda ctx, cfg: None)\n"
    )
    monkeypatch.setattr(plugins, "_cache", {})
    with pytest.raises(plugins.PluginLoadError, match="Request is now Exchange"):
        plugins.load_plugin("oldstyle", [folder])


def test_config_model_must_reject_unknown_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plugin whose config model would ignore typos is refused at load time."""
    from pydantic import BaseModel

    class Loose(BaseModel):
        x: int = 1

    fake = make_plugin("loose", lambda c, k: None, config=Loose)
    monkeypatch.setattr(plugins, "_cache", {})
    monkeypatch.setattr(plugins.importlib, "import_module", lambda name: type("M", (), {"PLUGIN": fake}))
    monkeypatch.setattr(plugins.importlib.util, "find_spec", lambda name: object())
    with pytest.raises(plugins.PluginLoadError, match="reject unknown keys"):
        plugins.load_plugin("loose")


# --- lifecycle and chains ---------------------------------------------------------------------


def test_setup_in_order_teardown_in_reverse() -> None:
    """Plugins are set up in configured order and torn down in reverse; chains follow that order."""
    calls: list[str] = []

    def plugin(name: str) -> Plugin:
        def setup(ctx: PluginContext, cfg: Any) -> None:
            calls.append(f"setup {name}")

            def pre(req: Exchange) -> Exchange:
                req.payload["prompt"] += name
                return req

            ctx.add_preprocessor(pre)

        return make_plugin(name, setup, teardown=lambda ctx: calls.append(f"teardown {name}"))

    host, _ = host_of(plugin("a"), plugin("b"))
    host.start()
    assert host.preprocess(Exchange("generate", "t", {"prompt": ">"})).payload["prompt"] == ">ab"
    host.stop()
    assert calls == ["setup a", "setup b", "teardown b", "teardown a"]


def test_fatal_setup_disables_only_that_plugin() -> None:
    """A plugin whose setup raises is disabled with a retained failed status and its remove run."""
    removed = threading.Event()

    def bad(ctx: PluginContext, cfg: Any) -> None:
        ctx.add_router(lambda e: None)
        raise RuntimeError("no such device")

    good = make_plugin("good", lambda ctx, cfg: ctx.add_stats(lambda: {"ok": 1}))
    host, svc = host_of(make_plugin("bad", bad, remove=lambda ctx: removed.set()), good)
    host.start()
    assert host.status() == {"bad": "failed", "good": "running"}
    status = svc.retained["rkllmd/plugins/bad/status"]
    assert b'"failed"' in status and b"no such device" in status
    assert removed.is_set()
    assert not host.has_routers  # what bad registered before failing is gone
    assert host.stats() == {"good": {"ok": 1}}


def test_not_ready_backoff_grows() -> None:
    """Each NotReady doubles the retry delay announced in the status topic."""
    attempts: list[float] = []

    def setup(ctx: PluginContext, cfg: Any) -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise NotReady("broker of my own is down")

    host, svc = host_of(make_plugin("slow", setup))
    host.start()
    assert wait_until(lambda: host.status()["slow"] == "running", 5)

    def statuses() -> list[Any]:
        return [p.json() for p in svc.published if p.topic.endswith("slow/status")]

    # the running status is published just after the state flips: wait for it, not for the flip
    assert wait_until(lambda: any(s["state"] == "running" for s in statuses()), 5)
    delays = [s.get("retry_in_s") for s in statuses()]
    assert delays[:2] == [0.01, 0.02] and delays[2] is None
    host.stop()


def test_raising_preprocessor_becomes_error_naming_plugin() -> None:
    """A preprocessor bug is a plugin_error reply naming the plugin; a RequestError keeps its code."""

    def setup(ctx: PluginContext, cfg: Any) -> None:
        def pre(req: Exchange) -> Exchange:
            if req.payload.get("prompt") == "boom":
                raise KeyError("area")
            if req.payload.get("prompt") == "empty":
                raise EmptyPrompt("nothing to say")
            return req

        ctx.add_preprocessor(pre)

    with PluginHarness(make_plugin("picky", setup)) as h:
        with pytest.raises(PluginError, match="plugin 'picky' failed: KeyError") as ei:
            h.preprocess({"prompt": "boom"})
        assert ei.value.code == "plugin_error"
        with pytest.raises(EmptyPrompt, match="plugin 'picky': nothing to say"):
            h.preprocess({"prompt": "empty"})
        assert h.preprocess({"prompt": "fine"}).payload == {"prompt": "fine"}


def test_preprocessor_must_return_the_request() -> None:
    """A preprocessor that forgets to return the request is an error naming it, not a silent None."""
    forgetful = make_plugin("forgetful", lambda ctx, cfg: ctx.add_preprocessor(lambda r: None))
    with PluginHarness(forgetful) as h, pytest.raises(PluginError, match=r"'forgetful'.*returned NoneType"):
        h.preprocess({"prompt": "x"})


def test_raising_router_does_not_stop_the_others() -> None:
    """A router that raises is logged; the routers after it still see the event."""
    seen: list[str] = []

    def broken(ctx: PluginContext, cfg: Any) -> None:
        ctx.add_router(lambda e: (_ for _ in ()).throw(ValueError("nope")))

    def ok(ctx: PluginContext, cfg: Any) -> None:
        ctx.add_router(lambda e: seen.append(e.text) if isinstance(e, Final) else None)

    host, _ = host_of(make_plugin("broken", broken), make_plugin("ok", ok))
    host.start()
    host.route(Final(Exchange("generate", "t"), "ok", {"text": "hi"}))
    assert seen == ["hi"]


def test_subscriptions_are_shared_and_released() -> None:
    """Two plugins on one topic share one broker subscription, released when the last goes."""
    got: list[str] = []

    def p(name: str) -> Plugin:
        return make_plugin(name, lambda ctx, cfg: ctx.subscribe("x/#", lambda m: got.append(name)))

    host, svc = host_of(p("a"), p("b"))
    host.start()
    assert svc.subscriptions == {"x/#": 1}
    assert host.handles("x/y") and not host.handles("y")
    from rkllmd.plugins import Message

    host.deliver(Message("x/y", b""))
    assert got == ["a", "b"]
    host.stop()
    assert svc.subscriptions == {}


def test_plugins_may_not_subscribe_under_request_topics() -> None:
    """A plugin cannot claim rkllmd's own request topics (that would steal requests)."""

    def setup(ctx: PluginContext, cfg: Any) -> None:
        ctx.subscribe(ctx.topics.request("generate"), lambda m: None)

    with PluginHarness(make_plugin("thief", setup)) as h:
        assert h.state == "failed"


def test_stats_contributor_that_raises_is_left_out() -> None:
    """Stats contributions are keyed by plugin; one that raises or returns None is left out."""

    def setup(ctx: PluginContext, cfg: Any) -> None:
        ctx.add_stats(lambda: 1 / 0)  # type: ignore[arg-type,return-value]
        ctx.add_stats(lambda: None)

    with PluginHarness(make_plugin("flaky", setup)) as h:
        assert h.stats() == {}


def test_a_router_sees_tokens_only_when_it_asked_for_them() -> None:
    """tokens=False routers get final replies only, "local" ones the tokens of local requests only."""
    from rkllmd.exchange import Exchange, Final, Token
    from rkllmd.plugins.hooks import Hooks
    from rkllmd.protocol import Address

    hooks = Hooks([])
    seen: dict[str, list[str]] = {"all": [], "none": [], "local": []}
    hooks.add("route", ("a", lambda e: seen["all"].append(type(e).__name__), True, False))
    hooks.add("route", ("b", lambda e: seen["none"].append(type(e).__name__), False, False))
    hooks.add("route", ("c", lambda e: seen["local"].append(type(e).__name__), "local", False))
    mqtt = Exchange(command="generate", topic="t", id="m", address=Address("r"))
    local = Exchange(command="generate", topic="t", id="l", address=Address("r", local=True))
    for ex in (mqtt, local):
        hooks.route(Token(ex, 0, "hi"))
        hooks.route(Final(ex, "ok", {}))
    assert seen == {
        "all": ["Token", "Final", "Token", "Final"],
        "none": ["Final", "Final"],
        "local": ["Final", "Token", "Final"],
    }
    assert hooks.routes_tokens(mqtt) and hooks.routes_tokens(local)
    only_finals = Hooks([])
    only_finals.add("route", ("b", lambda e: None, False, False))
    assert not only_finals.routes_tokens(mqtt)


def test_ctx_models_lists_every_configured_model_and_marks_the_loaded_one(tmp_path: Path) -> None:
    """ctx.models() is the list every interface builds its own from: each configured model, the
    default, and the loaded one as the daemon's stats say, changing when the loaded model does."""
    toml = tmp_path / "rkllmd.toml"
    toml.write_text(
        textwrap.dedent(
            """
            default_model = "a"
            [models.a]
            runtime = "rkllm"
            path = "/models/a.rkllm"
            description = "first"
            max_context_len = 2048
            [models.b]
            runtime = "rkllm"
            path = "/models/b.rkllm"
            """
        )
    )
    seen: list[PluginContext] = []
    with PluginHarness(
        make_plugin("lister", lambda ctx, cfg: seen.append(ctx)), settings=load_settings(toml)
    ) as h:
        ctx = seen[0]
        first = {m.name: m for m in ctx.models()}
        assert list(first) == ["a", "b"]
        assert first["a"].default and first["a"].loaded and not first["b"].loaded  # the kit's daemon loaded a
        assert (first["a"].description, first["a"].context_length, first["a"].path) == (
            "first",
            2048,
            "/models/a.rkllm",
        )
        h.services.current_stats["loaded_model"] = "b"
        assert [m.name for m in ctx.models() if m.loaded] == ["b"]
        h.services.current_stats["loaded_model"] = None
        assert not any(m.loaded for m in ctx.models())
