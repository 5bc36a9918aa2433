"""The benchmark loop: every model, on each path, every case, warm-up then measured runs.

The report dict is filled in as samples arrive, so a Ctrl-C (KeyboardInterrupt) leaves a
consistent partial report that is then summarised and written like a complete one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rkllmd import __version__
from rkllmd.bench import procfs
from rkllmd.bench.progress import Progress
from rkllmd.bench.stats import Sample, summarise_samples
from rkllmd.bench.suite import Case
from rkllmd.settings import Settings
from rkllmd.signals import SignalWatch

FORMAT = "rkllmd-bench/1"


class BenchPath(Protocol):
    name: str

    @property
    def pid(self) -> int: ...

    def load(self, model: str) -> dict[str, Any]: ...

    def unload(self) -> None: ...

    def run(self, request: dict[str, Any], clear: bool = True) -> Sample: ...

    def abort(self) -> None: ...


class StopOnInterrupt:
    """Ctrl-C handling: the first aborts the run in progress and stops after it; a second kills.

    A plain KeyboardInterrupt is not enough: raised inside a runtime's ctypes callback it is
    printed and swallowed, and the generation runs on. So the first Ctrl-C is acted on by the
    signals thread (rkllmd.signals), not in the handler, which may interrupt the main thread in
    the middle of a line's write or holding the runtime's own (non-reentrant) lock; the handler
    only counts, and raises KeyboardInterrupt at the second.
    """

    def __init__(self, paths: list[BenchPath]) -> None:
        self.paths, self.hit = paths, False
        self._watch: SignalWatch | None = None
        self._aborting = False  # the signals thread has aborted the runs (once)

    def __enter__(self) -> StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._watch = SignalWatch((signal.SIGINT,), self._abort, handler=self._handle)
            self._watch.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._watch is not None:
            self._watch.__exit__(*exc)
            self._watch = None

    def _handle(self, signum: int) -> None:
        """Main thread, inside the signal handler: count, and quit at the second."""
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True

    def _abort(self, signum: int) -> None:
        """The signals thread: the first Ctrl-C ends the runs in progress."""
        if self._aborting:
            return
        self._aborting = True
        print("\nstopping after the run in progress (Ctrl-C again to quit at once)", file=sys.stderr)
        for p in self.paths:
            # a thread each: one stuck abort holds no other
            threading.Thread(target=p.abort, name="bench-abort", daemon=True).start()

    def check(self) -> None:
        if self.hit:
            raise KeyboardInterrupt


@dataclass
class BenchOptions:
    models: list[str]
    cases: list[Case]
    runs: int = 3
    warmup: int = 1
    max_tokens: int | None = None  # overrides every case's own max_tokens
    temperature: float = 0.0
    seed: int = 42
    paths: tuple[str, ...] = ("direct", "mqtt")
    host: str | None = None
    port: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def new_report(settings: Settings, opts: BenchOptions) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "finished": None,
        "interrupted": False,
        "machine": procfs.machine(),
        "versions": _versions(),
        "options": {
            "runs": opts.runs,
            "warmup": opts.warmup,
            "max_tokens": opts.max_tokens,
            "temperature": opts.temperature,
            "seed": opts.seed,
            "paths": list(opts.paths),
            "daemon_isolation": getattr(settings, "isolation", "thread"),
            "broker": f"{opts.host}:{opts.port}" if opts.host else "loopback mosquitto started by bench",
            **opts.extra,
        },
        "models": {
            m: {
                "runtime": settings.models[m].runtime,
                "description": settings.models[m].description,
                "path": str(getattr(settings.models[m], "path", None) or "embedded SmolLM2-135M"),
                "vision": settings.models[m].takes_images,
                "info": {},
            }
            for m in opts.models
        },
        "cases": _report_cases(opts.cases),
        "runs": [],
        "memory": [],
        "errors": [],
        "skipped": [],
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"rkllmd": __version__}
    for dist in ("llama-cpp-python", "paho-mqtt"):
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    return out


def run_bench(settings: Settings, opts: BenchOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Measure everything ``opts`` asks for; returns the report (interrupted=True after Ctrl-C)."""
    report = new_report(settings, opts)
    steps = len(opts.models) * len(opts.paths) * len(opts.cases) * (opts.warmup + opts.runs)
    progress = progress or Progress(steps)
    with tempfile.TemporaryDirectory(prefix="rkllmd-bench-") as tmp:
        paths: list[BenchPath] = []
        stop = StopOnInterrupt(paths)
        try:
            if "direct" in opts.paths:
                from rkllmd.bench.direct import DirectPath

                paths.append(DirectPath(settings))
            if "mqtt" in opts.paths:
                from rkllmd.bench.mqttpath import MqttPath

                biggest = max(opts.max_tokens or c.max_tokens for c in opts.cases)
                paths.append(
                    MqttPath(
                        settings, opts.models, Path(tmp), host=opts.host, port=opts.port, max_tokens=biggest
                    )
                )
            for model in opts.models:
                for path in paths:
                    try:
                        with stop:
                            _bench_model(report, path, model, opts, progress, stop)
                        stop.check()
                    except Exception as exc:  # one broken model must not cost the others' figures
                        report["errors"].append(f"{model} via {path.name}: {type(exc).__name__}: {exc}")
        except KeyboardInterrupt:
            report["interrupted"] = True
        finally:
            progress.close()
            for path in paths:
                close = getattr(path, "close", None) or getattr(path, "unload", None)
                if close is not None:
                    try:
                        close()
                    except Exception as exc:  # the measurements matter more than a clean stop
                        report["errors"].append(f"closing {path.name}: {exc}")
    finish_report(report)
    return report


def _bench_model(
    report: dict[str, Any],
    path: BenchPath,
    model: str,
    opts: BenchOptions,
    progress: Progress,
    stop: StopOnInterrupt,
) -> None:
    # The peak is reset before loading, so it covers this model's load and runs only (a worker
    # process the daemon starts for the model begins with a fresh peak of its own).
    procfs.reset_peak_rss(path.pid)
    info = path.load(model)
    if info and not report["models"][model]["info"]:
        report["models"][model]["info"] = info
    mem: dict[str, Any] = {"model": model, "path": path.name}
    report["memory"].append(mem)
    try:
        for case in opts.cases:
            if case.images and not report["models"][model]["vision"]:
                report["skipped"].append(f"{case.id} on {model} via {path.name}: the model takes no images")
                progress.step(f"{model} {path.name} {case.id}", opts.warmup + opts.runs)
                continue
            if case.kind == "ha_turn":
                _bench_ha_turn(report, path, model, case, opts, progress, stop)
                mem["peak_rss_mb"] = procfs.tree_peak_rss_mb(path.pid)
                continue
            entry: dict[str, Any] = {"model": model, "path": path.name, "case": case.id, "samples": []}
            report["runs"].append(entry)
            request = case.request(opts.max_tokens, opts.temperature, opts.seed)
            for i in range(opts.warmup + opts.runs):
                sample = path.run(request)
                stop.check()  # a run cut short by Ctrl-C is not a measurement
                if i >= opts.warmup:
                    entry["samples"].append(sample.to_json())
                progress.step(f"{model} {path.name} {case.id}")
            mem["peak_rss_mb"] = procfs.tree_peak_rss_mb(path.pid)
    finally:
        # Read before unload: unloading ends the daemon's worker process and its figures with it.
        mem["peak_rss_mb"] = procfs.tree_peak_rss_mb(path.pid)
        mem["rss_mb"] = procfs.tree_rss_mb(path.pid)
        path.unload()


def _bench_ha_turn(
    report: dict[str, Any],
    path: BenchPath,
    model: str,
    case: Case,
    opts: BenchOptions,
    progress: Progress,
    stop: StopOnInterrupt,
) -> None:
    """Cold, warm and reload turns of an HA-sized prompt (rkllmd.bench.haturn), no cache clearing."""
    from rkllmd.bench import haturn

    entries: dict[str, dict[str, Any]] = {}
    for phase in haturn.PHASES:
        entries[phase] = {"model": model, "path": path.name, "case": f"{case.id}:{phase}", "samples": []}
        report["runs"].append(entries[phase])
    max_tokens = opts.max_tokens or case.max_tokens
    for i in range(opts.warmup + opts.runs):
        system = haturn.session_system(i)
        questions = {"cold": case.prompt, "warm": case.warm_prompt, "reload": case.warm_prompt}
        for phase in haturn.PHASES:
            if phase == "reload":
                path.unload()
                path.load(model)
            req = haturn.request(system, questions[phase], max_tokens, opts.temperature, opts.seed)
            sample = path.run(req, clear=False)
            stop.check()
            if i >= opts.warmup:
                entries[phase]["samples"].append(sample.to_json())
        progress.step(f"{model} {path.name} {case.id}")


def _report_cases(cases: list[Case]) -> list[dict[str, Any]]:
    return [x for c in cases for x in (ha_turn_cases(c) if c.kind == "ha_turn" else [c.to_json()])]


def ha_turn_cases(case: Case) -> list[dict[str, Any]]:
    """The report's case entries of an ha_turn case: one per phase, the system prompt on the first."""
    from rkllmd.bench import haturn

    system = haturn.system_prompt()
    note = (
        f"{case.note} An HA-sized turn: a system prompt of {len(system)} characters (after a session "
        f"line that makes each run's first turn cold) and {len(haturn.tools())} tools."
    ).strip()
    out = []
    for phase in haturn.PHASES:
        prompt = case.prompt if phase == "cold" else case.warm_prompt
        c = {**case.to_json(), "id": f"{case.id}:{phase}", "prompt": prompt, "system": None, "note": ""}
        if phase == "cold":
            c.update(system=system, note=note)
        out.append(c)
    return out


def finish_report(report: dict[str, Any]) -> None:
    """Add summaries per run entry and the daemon's overhead per (model, case); idempotent."""
    report["finished"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    for entry in report["runs"]:
        samples = [Sample(**s) for s in entry["samples"]]
        entry["summary"] = summarise_samples(samples)
    by_key = {(e["model"], e["path"], e["case"]): e["summary"] for e in report["runs"] if e["samples"]}
    overhead = []
    for (model, path, case), direct in by_key.items():
        mqtt = by_key.get((model, "mqtt", case))
        if path != "direct" or mqtt is None:
            continue
        overhead.append(
            {
                "model": model,
                "case": case,
                "stream_tps_ratio": _ratio(mqtt, direct, "stream_tps"),
                "decode_tps_ratio": _ratio(mqtt, direct, "decode_tps"),
                "ttft_added_ms": _diff(mqtt, direct, "ttft_ms"),
            }
        )
    report["overhead"] = overhead


def _median(summary: dict[str, Any], metric: str) -> float | None:
    m = summary.get(metric)
    return None if m is None else float(m["median"])


def _ratio(a: dict[str, Any], b: dict[str, Any], metric: str) -> float | None:
    x, y = _median(a, metric), _median(b, metric)
    return None if x is None or not y else x / y


def _diff(a: dict[str, Any], b: dict[str, Any], metric: str) -> float | None:
    x, y = _median(a, metric), _median(b, metric)
    return None if x is None or y is None else x - y
