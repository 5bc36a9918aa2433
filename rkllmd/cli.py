"""Command line: ``rkllmd [run]``, ``check-config``, ``ask``, ``bench``, ``version``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rkllmd import __version__


def _add_config(p: argparse.ArgumentParser, *, top: bool = False) -> None:
    """``--config`` on the top parser (``rkllmd --config F``, which runs) and on each subcommand.

    A subcommand's default is SUPPRESS, so ``rkllmd --config F check-config`` keeps F instead of
    the subparser writing its own default over it; after the subcommand, the later one wins.
    """
    p.add_argument(
        "--config",
        "-c",
        type=Path,
        default=None if top else argparse.SUPPRESS,
        help="TOML config file (default: $RKLLMD_CONFIG, else /etc/rkllmd/rkllmd.toml if present, "
        "else built-in defaults with the embedded demo model)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rkllmd", description="Local LLMs over MQTT")
    parser.add_argument("--version", action="version", version=f"rkllmd {__version__}")
    _add_config(parser, top=True)
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the daemon in the foreground (the default)")
    _add_config(run)
    chk = sub.add_parser("check-config", help="validate the configuration and print every problem")
    _add_config(chk)
    ask = sub.add_parser("ask", help="send one prompt to a running daemon and stream the answer")
    ask.add_argument("prompt")
    _add_config(ask)
    ask.add_argument("--host", help="broker host (default: from config)")
    ask.add_argument("--port", type=int, help="broker port (default: from config)")
    ask.add_argument("--base-topic", help="base topic (default: from config)")
    ask.add_argument("--model")
    ask.add_argument("--system", help="system prompt")
    ask.add_argument("--max-tokens", type=int)
    ask.add_argument("--temperature", type=float)
    ask.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the answer")
    ask.add_argument("--json", action="store_true", help="print the final reply as JSON, no streaming")
    bench = sub.add_parser("bench", help="benchmark models directly and through the daemon; compare reports")
    _add_config(bench)
    from rkllmd.bench.cli import add_arguments as add_bench_arguments

    add_bench_arguments(bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "run"
    config = getattr(args, "config", None)

    from rkllmd.config import load_settings
    from rkllmd.errors import ConfigError

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        print(f"rkllmd: configuration error\n{exc.message}", file=sys.stderr)
        return 2

    if command == "bench":
        from rkllmd.bench.cli import main as bench_main

        return bench_main(args, settings)
    if command == "check-config":
        return _check_config(settings)
    if command == "ask":
        from rkllmd.client import AskOptions, ask

        m = settings.mqtt
        return ask(
            AskOptions(
                prompt=args.prompt,
                host=args.host or m.host,
                port=args.port or m.port,
                base_topic=args.base_topic or m.base_topic,
                model=args.model,
                system=args.system,
                max_tokens=args.max_tokens,
                temperature=args.temperature,
                timeout=args.timeout,
                as_json=args.json,
                username=m.username,
                password=m.resolved_password(),
            )
        )
    return _run(settings)


def _run(settings: object) -> int:
    from rkllmd import logs
    from rkllmd.daemon import serve
    from rkllmd.errors import ConfigError
    from rkllmd.mqttconnect import BrokerUnavailable
    from rkllmd.settings import Settings

    assert isinstance(settings, Settings)
    logs.configure(settings.log.level, settings.log.format)
    try:
        return serve(settings)
    except (BrokerUnavailable, ConfigError) as exc:
        print(f"rkllmd: {exc.message}", file=sys.stderr)
        return 1


def _check_config(settings: object) -> int:
    from rkllmd.runtime.registry import load_problems
    from rkllmd.settings import Settings

    assert isinstance(settings, Settings)
    problems: list[str] = []
    for name, cfg in settings.models.items():
        problems.extend(load_problems(name, cfg))
    if problems:
        print(f"rkllmd: {len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    m = settings.mqtt
    print(f"configuration OK: broker {m.host}:{m.port} (MQTT {m.protocol}), base topic {m.base_topic!r}")
    for name, cfg in settings.models.items():
        mark = " (default)" if name == settings.default else ""
        path = getattr(cfg, "path", None) or "embedded SmolLM2-135M"  # a runtime may have no file
        print(f"  model {name}{mark}: runtime {cfg.runtime}, path {path}")
    # Plugin config problems were reported by load_settings already (with plugins.<name>.<key>).
    from rkllmd.plugins.loader import load_plugin

    for i, name in enumerate(settings.plugins.enabled, 1):
        plugin = load_plugin(name, settings.plugins.folders)
        print(f"  plugin {i}. {name} {plugin.version} (plugin API {plugin.api_version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
