"""What a durable request journal costs: a request's two journal lines, with and without fsync.

Each request writes one line when it is taken (on the ingress thread, before it is queued: its
time is added to the request's start) and one when its reply is with the broker (on the
dispatcher thread, before the request is acknowledged). This times ``Journal.took`` and
``Journal.answered`` for ``--requests`` requests one after another, in a folder on the disk
under test (``--dir``; the systemd unit's is /var/lib/rkllmd), with ``journal_fsync`` on and off.
Figures are printed, never asserted: they are the disk's.

    .venv/bin/python benchmarks/journal.py --dir /var/lib/rkllmd-bench --requests 500
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def run(folder: Path, fsync: bool, n: int) -> dict[str, Any]:
    from rkllmd.exchange import Exchange
    from rkllmd.journal import Journal
    from rkllmd.protocol import Address, Receipt

    journal = Journal(folder / f"journal-{'fsync' if fsync else 'nosync'}.jsonl", fsync=fsync)
    journal.recover()
    took, answered = [], []
    for i in range(n):
        address = Address(topic="reply/bench", request_id=f"r{i}", receipt=Receipt(1, i % 65535 + 1, 1))
        ex = Exchange(command="generate", topic="rkllmd/request/generate", id=f"r{i}", address=address)
        t0 = time.perf_counter()
        journal.took(ex)
        t1 = time.perf_counter()
        journal.answered(ex.run.journal_key, ex.id)
        t2 = time.perf_counter()
        took.append((t1 - t0) * 1000)
        answered.append((t2 - t1) * 1000)
    journal.close()

    def p(xs: list[float], q: float) -> float:
        return round(sorted(xs)[int((len(xs) - 1) * q)], 3)

    return {
        "fsync": fsync,
        "requests": n,
        "took_ms_p50": p(took, 0.5),
        "took_ms_p99": p(took, 0.99),
        "answered_ms_p50": p(answered, 0.5),
        "answered_ms_p99": p(answered, 0.99),
        "per_request_ms_mean": round(statistics.fmean(a + b for a, b in zip(took, answered, strict=True)), 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--dir", type=Path, default=None, help="a folder on the disk to measure (default: a temp dir)"
    )
    ap.add_argument("--requests", type=int, default=500)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory(prefix="rkllmd-journal-", dir=args.dir) as tmp:
        rows = [run(Path(tmp), fsync, args.requests) for fsync in (False, True)]
    for r in rows:
        print(json.dumps(r))
    extra = rows[1]["per_request_ms_mean"] - rows[0]["per_request_ms_mean"]
    print(
        f"fsync adds {extra:.2f} ms per request (two lines); "
        f"{rows[1]['took_ms_p50']:.2f} ms (median) of it before queueing"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
