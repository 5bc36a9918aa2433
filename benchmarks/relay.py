"""The daemon's own cost, on any machine: rkllmd over real mosquitto with the RKLLM C double.

Builds the double (tests/fake_rkllm, gcc), starts a loopback mosquitto (or uses --host/--port)
and rkllmd on the double, then measures at fixed token rates: received tok/s / runtime tok/s,
TTFT added by the daemon (p50, p99), CPU per token of the daemon, its worker and the broker, the
most one subscriber receives, the memory of the daemon's process tree, its idle CPU and wake-ups,
RSS over --requests short requests, and the CPU and wake-ups of a request beyond its tokens.
With --rounds N it does all of that N times, each with a fresh broker and daemon, and prints the
medians. Prints the figures and writes them to --out as JSON and text.

    .venv/bin/python benchmarks/relay.py                      # about a minute and a half on two cores
    .venv/bin/python benchmarks/relay.py --rounds 3 --set stream.qos=1
    .venv/bin/python benchmarks/relay.py --daemon-pythonpath /tmp/old-checkout   # another version
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="10,30,100,1000,0", help="tok/s, comma-separated; 0 = unthrottled")
    ap.add_argument("--tokens", type=int, default=30, help="tokens per request at each rate")
    ap.add_argument("--per-rate", type=int, default=5, help="measured requests per rate")
    ap.add_argument("--burst-tokens", type=int, default=2000, help="length of the unthrottled answers")
    ap.add_argument("--requests", type=int, default=2000, help="short requests for RSS growth")
    ap.add_argument("--idle-s", type=float, default=30.0, help="idle spell with the model loaded (0: skip)")
    ap.add_argument("--spaced", type=int, default=100, help="one-token requests 50 ms apart (0: skip)")
    ap.add_argument("--rounds", type=int, default=1, help="repeat everything; the summary is the medians")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="TABLE.KEY=JSON",
        help="a setting of the daemon under test, e.g. stream.qos=1 (repeatable)",
    )
    ap.add_argument("--library", type=Path, help="a built RKLLM double (default: build tests/fake_rkllm)")
    ap.add_argument("--daemon-pythonpath", help="run the daemon from this checkout (PYTHONPATH)")
    ap.add_argument(
        "--http", action="store_true", help="also serve the OpenAI API and measure each rate over it"
    )
    ap.add_argument("--label", default="rkllmd over MQTT", help="the summary row's name")
    ap.add_argument("--host", help="broker host (default: start a loopback mosquitto)")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="result folder")
    ap.add_argument("--no-save", action="store_true", help="print only")
    args = ap.parse_args(argv)

    # The double lives with the tests; this script runs from a checkout.
    sys.path.insert(0, str(REPO))
    from rkllmd.bench.relay import RelayOptions, run_relay
    from rkllmd.bench.relayprint import headline_table, median_headline, relay_text
    from tests.fake_rkllm.build import build_fake

    config: dict[str, dict[str, object]] = {}
    for item in args.set:
        dotted, _, raw = item.partition("=")
        table, _, key = dotted.partition(".")
        config.setdefault(table, {})[key] = json.loads(raw)
    with tempfile.TemporaryDirectory(prefix="fake-rkllm-") as tmp:
        lib = args.library or build_fake("1.3", Path(tmp))
        opts = RelayOptions(
            library=lib,
            rates=[float(x) for x in args.rates.split(",") if x.strip()],
            tokens=args.tokens,
            per_rate=args.per_rate,
            burst_tokens=args.burst_tokens,
            requests=args.requests,
            idle_s=args.idle_s,
            spaced_requests=args.spaced,
            host=args.host,
            port=args.port if args.host else None,
            config=config,
            daemon_env={"PYTHONPATH": args.daemon_pythonpath} if args.daemon_pythonpath else {},
            http=args.http,
        )
        rounds = []
        for i in range(args.rounds):
            rounds.append(run_relay(opts))
            if args.rounds > 1:  # each round as it ends; the last one and the medians below
                print(f"--- round {i + 1} of {args.rounds} ---\n{relay_text(rounds[-1])}", flush=True)
    result = {**rounds[-1], "rounds": rounds, "summary": median_headline([r["headline"] for r in rounds])}
    text = relay_text(rounds[-1])
    if args.rounds > 1:
        table = "\n".join(headline_table([r["headline"] for r in rounds], args.label))
        text += f"\nmedians of {args.rounds} rounds:\n{table}\n"
    print(text, end="")
    if not args.no_save:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = f"{dt.date.today().isoformat()}-{result['machine']['host']}-relay"
        (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.out / f"{stem}.txt").write_text(text)
        print(f"written: {args.out / stem}.json and .txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
