"""The daemon's own cost, on any machine: rkllmd over real mosquitto with the RKLLM C double.

Builds the double (tests/fake_rkllm, gcc), starts a loopback mosquitto (or uses --host/--port)
and rkllmd on the double, then measures at fixed token rates: received tok/s / runtime tok/s,
TTFT added by the daemon (p50, p99), daemon CPU per token, the most one subscriber receives, and
RSS over --requests short requests. Prints the figures and writes them to --out as JSON and text.

    .venv/bin/python benchmarks/relay.py                      # about a minute on two cores
    .venv/bin/python benchmarks/relay.py --requests 5000 --rates 10,30,100,0
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
    ap.add_argument("--rates", default="10,30,100,0", help="tok/s, comma-separated; 0 = unthrottled")
    ap.add_argument("--tokens", type=int, default=30, help="tokens per request at each rate")
    ap.add_argument("--per-rate", type=int, default=5, help="measured requests per rate")
    ap.add_argument("--burst-tokens", type=int, default=2000, help="length of the unthrottled answers")
    ap.add_argument("--requests", type=int, default=2000, help="short requests for RSS growth")
    ap.add_argument("--host", help="broker host (default: start a loopback mosquitto)")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="result folder")
    ap.add_argument("--no-save", action="store_true", help="print only")
    args = ap.parse_args(argv)

    # The double lives with the tests; this script runs from a checkout.
    sys.path.insert(0, str(REPO))
    from rkllmd.bench.relay import RelayOptions, run_relay
    from rkllmd.bench.relayprint import relay_text
    from tests.fake_rkllm.build import build_fake

    with tempfile.TemporaryDirectory(prefix="fake-rkllm-") as tmp:
        lib = build_fake("1.3", Path(tmp))
        opts = RelayOptions(
            library=lib,
            rates=[float(x) for x in args.rates.split(",") if x.strip()],
            tokens=args.tokens,
            per_rate=args.per_rate,
            burst_tokens=args.burst_tokens,
            requests=args.requests,
            host=args.host,
            port=args.port if args.host else None,
        )
        result = run_relay(opts)
    text = relay_text(result)
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
