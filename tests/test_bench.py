"""`rkllmd bench` end to end: SmolLM2 through both paths, and the C double for Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from rkllmd.bench.broker import LOOPBACK, _ephemeral_range, die_with_parent, free_port
from rkllmd.bench.report import cell, response_html
from tests.fake_rkllm.build import build_fake
from tests.helpers import Broker, write_config


def bench(args: list[str], extra_env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RKLLMD_")} | (extra_env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "rkllmd", "bench", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=die_with_parent(),
        **kw,
    )


def only_report(out: Path) -> tuple[dict[str, Any], str]:
    (js,) = out.glob("*.json")
    return json.loads(js.read_text()), js.with_suffix(".md").read_text()


@pytest.mark.model
def test_small_real_run_writes_consistent_report(broker: Broker, tmp_path: Path) -> None:
    """One SmolLM2 case on both paths yields a report with the prompt, every response and sane figures."""
    cfg = write_config(tmp_path / "empty.toml", {"log": {"level": "warning"}})
    out = tmp_path / "results"
    proc = bench(
        [
            *("-c", str(cfg), "--case", "capital", "--runs", "1", "--warmup", "0", "--max-tokens", "8"),
            *("--host", broker.host, "--port", str(broker.port), "--out", str(out)),
        ]
    )
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr
    report, md = only_report(out)

    assert report["format"] == "rkllmd-bench/1" and not report["interrupted"] and not report["errors"]
    assert report["machine"]["cores"] >= 1 and report["versions"]["llama-cpp-python"]
    (case,) = report["cases"]
    assert case["prompt"] in md
    assert {(e["path"], len(e["samples"])) for e in report["runs"]} == {("direct", 1), ("mqtt", 1)}
    for e in report["runs"]:
        s = e["samples"][0]
        assert s["text"].strip() and response_html(s["text"]) in md
        assert 0 < s["completion_tokens"] <= 8 and s["prompt_tokens"] > 0
        assert 0 < s["ttft_ms"] <= s["total_ms"]
        assert s["prefill_tps"] > 0 and s["decode_tps"] > 0
        # The figures agree with each other: rate x time = count.
        assert s["decode_tps"] * s["decode_ms"] / 1000 == pytest.approx(s["completion_tokens"], rel=0.01)
        assert s["prefill_tps"] * s["prefill_ms"] / 1000 == pytest.approx(s["prompt_tokens"], rel=0.01)
        # JSON and markdown agree: the table row holds the JSON's medians as printed.
        row = next(line for line in md.splitlines() if line.startswith(f"| capital | {e['path']} |"))
        for metric, decimals in (("ttft_ms", 1), ("decode_tps", 1), ("completion_tokens", 0)):
            assert f" {cell(e['summary'][metric], decimals)} |" in row
    assert e["samples"][0]["daemon_ttft_ms"] > 0  # the mqtt entry carries the daemon's own TTFT
    assert all(m["peak_rss_mb"] > 0 for m in report["memory"])
    (over,) = report["overhead"]
    assert over["stream_tps_ratio"] is None or over["stream_tps_ratio"] > 0
    for name in report["charts"]:
        assert (out / name).read_bytes()[:4] == b"\x89PNG" and f"]({name})" in md


def fake_setup(tmp: Path, delay_ms: int, tokens: int) -> tuple[Path, Path]:
    """A config serving the C double as model 'fake', and a one-case prompt suite for it."""
    lib = build_fake("1.3", tmp)
    model = tmp / "fake.rkllm"
    model.write_bytes(b"RKLLM stand-in\n")
    cfg = write_config(
        tmp / "fake.toml",
        {"models": {"fake": {"runtime": "rkllm", "path": str(model), "library": str(lib)}}},
    )
    suite = tmp / "suite"
    suite.mkdir()
    (suite / "echo.toml").write_text(
        f'[[case]]\nid = "echo"\nprompt = "[[delay_ms={delay_ms}]] [[len={tokens}]] one two three"\n'
        f"max_tokens = {tokens}\n"
    )
    return cfg, suite


def test_ctrl_c_writes_what_was_measured(broker: Broker, tmp_path: Path) -> None:
    """SIGINT mid-run ends the benchmark with exit 130 and a report marked interrupted, samples kept."""
    cfg, suite = fake_setup(tmp_path, delay_ms=20, tokens=10)
    out = tmp_path / "results"
    proc = bench(
        [
            *("-c", str(cfg), "--suite", str(suite), "--runs", "200", "--warmup", "0", "--no-charts"),
            *("--host", broker.host, "--port", str(broker.port), "--out", str(out)),
        ]
    )
    deadline = time.monotonic() + 60
    assert proc.stderr is not None
    while "echo" not in proc.stderr.readline():  # the progress bar names the case once a run is done
        assert time.monotonic() < deadline and proc.poll() is None
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    report, md = only_report(out)
    assert report["interrupted"] and "Interrupted" in md
    samples = [s for e in report["runs"] for s in e["samples"]]
    assert 1 <= len(samples) < 400
    # a run cut short by the Ctrl-C is dropped, so every kept one is complete
    assert all(s["finish_reason"] in ("stop", "length") and s["completion_tokens"] == 10 for s in samples)


def test_ha_turn_reports_cold_warm_and_reload_on_the_double(broker: Broker, tmp_path: Path) -> None:
    """The HA-turn case on the double with a prompt cache: three phases per path, the cache saved
    once per cold turn and loaded after the reload, and the time to the first sentence."""
    lib = build_fake("1.3", tmp_path)
    model = tmp_path / "fake.rkllm"
    model.write_bytes(b"RKLLM stand-in\n")
    folder = tmp_path / "pc"
    cfg = write_config(
        tmp_path / "fake.toml",
        {
            "rkllm": {"prompt_cache_dir": str(folder)},
            "models": {
                "fake": {
                    "runtime": "rkllm",
                    "path": str(model),
                    "library": str(lib),
                    "max_context_len": 8192,
                    "prompt_cache": True,
                }
            },
        },
    )
    out = tmp_path / "results"
    proc = bench(
        [
            *("-c", str(cfg), "--case", "ha_turn", "--runs", "1", "--warmup", "0", "--no-charts"),
            *("--host", broker.host, "--port", str(broker.port), "--out", str(out)),
        ]
    )
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    report, md = only_report(out)
    assert [c["id"] for c in report["cases"]] == ["ha_turn:cold", "ha_turn:warm", "ha_turn:reload"]
    assert report["cases"][0]["system"].startswith("You are a voice assistant for Home Assistant.")
    by = {(e["case"], e["path"]): e["samples"][0] for e in report["runs"]}
    assert len(by) == 6
    for (case, _path), s in by.items():
        question = report["cases"][[c["id"] for c in report["cases"]].index(case)]["prompt"]
        assert s["text"] == question.upper() and s["ttfs_ms"] is not None
        assert 0 < s["ttft_ms"] <= s["ttfs_ms"] <= s["total_ms"]
    # One cache file (and its sidecar) per cold turn's system prompt, one per path.
    assert len(list(folder.glob("*.cache"))) == 2 and len(list(folder.glob("*.json"))) == 2
    assert "HA turn `ha_turn` (direct): TTFT cold" in md and "HA turn `ha_turn` (mqtt)" in md


def test_first_sentence_time_is_when_the_chunker_returns_a_sentence() -> None:
    """The first sentence is complete at the delta after its end; an answer without one at the end."""
    from rkllmd.bench.haturn import first_sentence_ms

    deltas = ["The kitchen", " light is off", ".", " The socket", " is on."]
    times = [1.0, 1.1, 1.2, 1.3, 1.4]
    assert first_sentence_ms(deltas, times, 0.5, 2.0) == pytest.approx(800.0)
    assert first_sentence_ms(["no", " end"], [1.0, 1.1], 0.5, 2.0) == pytest.approx(1500.0)
    assert first_sentence_ms([], [], 0.5, 2.0) is None


def test_free_port_is_outside_the_ephemeral_range_and_bindable() -> None:
    """A listener's port never collides with an outgoing connection's local port (the daemon's own
    MQTT connection took the port its ollama plugin was given, and the plugin never listened)."""
    lo, hi = _ephemeral_range()
    for _ in range(20):
        port = free_port()
        assert not lo <= port <= hi
        with socket.socket() as s:
            s.bind((LOOPBACK, port))


def test_free_port_never_hands_out_a_port_twice() -> None:
    """Ports drawn one after the other before any listener binds them (a daemon's OpenAI and Ollama
    ports) differ: each is free when drawn, so only what was handed out before can tell them apart.
    Among 300 draws from some 20,000 ports, a repeat is more likely than not without that."""
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)


def test_image_cases_on_a_vision_model_and_skipped_on_a_text_one(broker: Broker, tmp_path: Path) -> None:
    """The suite's image cases on the doubles (the RKNN double's encoder, the RKLLM double naming
    what it saw): each image reaches the model on both paths, the encoder's time is reported
    beside TTFT, the answers are in the report; a model without an encoder skips them."""
    from tests.fake_rknn.build import build_fake_rknn, write_model

    lib = build_fake("1.3", tmp_path)
    model = tmp_path / "fake.rkllm"
    model.write_bytes(b"RKLLM stand-in\n")
    encoder = write_model(tmp_path / "enc.rknn", size=(32, 32), grid=(2, 2), embed=6)
    rkllm = {"runtime": "rkllm", "path": str(model), "library": str(lib)}
    vision = {"vision_encoder": str(encoder), "vision_library": str(build_fake_rknn(tmp_path))}
    cfg = write_config(
        tmp_path / "vis.toml",
        {"models": {"vis": {**rkllm, **vision}, "plain": rkllm}, "default_model": "vis"},
    )
    out = tmp_path / "results"
    cases = ("--case", "door_parcel", "--case", "door_compare")
    proc = bench(
        [
            *("-c", str(cfg), "-m", "vis", "-m", "plain", *cases, "--runs", "1", "--warmup", "0"),
            *("--no-charts", "--host", broker.host, "--port", str(broker.port), "--out", str(out)),
        ],
        extra_env={"FAKE_RKLLM_EMBED_DIM": "6"},
    )
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    report, md = only_report(out)
    assert not report["errors"], report["errors"]
    by = {(e["model"], e["case"], e["path"]): e for e in report["runs"]}
    assert {m for m, _, _ in by} == {"vis"}  # "plain" measured nothing
    assert len(report["skipped"]) == 4 and all("takes no images" in s for s in report["skipped"])
    for path in ("direct", "mqtt"):
        one = by[("vis", "door_parcel", path)]["samples"][0]
        two = by[("vis", "door_compare", path)]["samples"][0]
        assert [w.split(":")[0] for w in one["text"].split() if w.startswith("IMAGE")] == ["IMAGE1"]
        seen = [w for w in two["text"].split() if w.startswith("IMAGE")]
        assert [w.split(":")[0] for w in seen] == ["IMAGE1", "IMAGE2"] and seen[0] != seen[1]
        assert one["image_encode_ms"] > 0 and one["image_decode_ms"] > 0
        assert one["ttft_ms"] >= one["image_encode_ms"]
        assert response_html(two["text"]) in md
    assert "image encode ms" in md and "`door_parcel`: a front door with a parcel" in md
    assert "Skipped: door_parcel on plain via direct: the model takes no images" in md
