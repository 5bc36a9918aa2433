"""The prompt cache through a real rkllmd process, real mosquitto and the C double."""

from __future__ import annotations

import re
from pathlib import Path

from tests.e2e.conftest import Start, final_of
from tests.helpers import Probe

NAME = re.compile(r"^[0-9a-f]{16}-[0-9a-f]{32}\.(cache|json)$")


def test_cache_files_stay_in_the_folder_whatever_a_request_says(
    start_daemon: Start, mqtt_probe: Probe, tmp_path: Path
) -> None:
    """Cache files are named by hashes under the configured folder; a request naming a path is refused."""
    folder = tmp_path / "pc"
    evil = tmp_path / "evil"
    _d, base = start_daemon(
        model={"prompt_cache": True, "prompt_cache_dir": str(folder)}, limits={"max_payload_bytes": 65536}
    )
    mqtt_probe.subscribe(f"{base}/response/generate")
    system = f"{evil}/../../x.cache You control a smart home. " + "light.kitchen (off) " * 40
    for i, question in enumerate(["turn on the kitchen", "and the hall"]):
        mqtt_probe.publish(f"{base}/request/generate", {"id": f"p{i}", "system": system, "prompt": question})
        reply = final_of(mqtt_probe, f"{base}/response/generate")
        assert reply["status"] == "ok" and reply["data"]["text"] == question.upper()
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 2 and all(NAME.match(n) for n in names), names
    for field in ("prompt_cache_path", "prompt_cache_dir"):
        mqtt_probe.publish(
            f"{base}/request/generate", {"id": f"x{field}", "prompt": "hi", field: str(evil / "c.bin")}
        )
        reply = final_of(mqtt_probe, f"{base}/response/generate")
        assert reply["status"] == "error" and reply["code"] == "bad_request"
    assert not evil.exists() and sorted(p.name for p in folder.iterdir()) == names
