"""Shared fixtures: one real mosquitto for the session, the C runtime double built with gcc."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Broker, Probe, start_broker


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A real mosquitto listening on a free 127.0.0.1 port for the whole session."""
    b = start_broker(tmp_path_factory.mktemp("broker"))
    yield b
    b.stop()


@pytest.fixture
def mqtt_probe(broker: Broker) -> Iterator[Probe]:
    p = Probe(broker)
    yield p
    p.close()


@pytest.fixture(scope="session")
def fake_lib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fake_rkllm")


@pytest.fixture(scope="session", params=["1.2", "1.3"])
def fake_abi(request: pytest.FixtureRequest) -> str:
    return str(request.param)
