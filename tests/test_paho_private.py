"""paho's private names rkllmd uses (rkllmd/pahoprivate.py), each one checked against the paho
release constraints.txt pins: there, with the shape and the behaviour the bus relies on; and no
other module of rkllmd names one."""

from __future__ import annotations

import inspect
import re
import socket
import time
from collections.abc import Callable
from importlib.metadata import version

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt import enums
from paho.mqtt.enums import CallbackAPIVersion

from rkllmd import pahoprivate
from rkllmd.errors import RkllmdError
from tests.helpers import REPO, Broker


def new_client() -> pahoprivate.Client:
    return pahoprivate.Client(CallbackAPIVersion.VERSION2)


def test_the_installed_paho_is_the_pinned_one() -> None:
    """The checks below ran against the release the project pins, not another one."""
    pins = (REPO / "constraints.txt").read_text()
    m = re.search(r"^paho-mqtt==(\S+)$", pins, re.M)
    assert m is not None, "constraints.txt pins paho-mqtt"
    assert version("paho-mqtt") == m.group(1)


def _create_socket(broker: Broker) -> None:
    """A socket connected to the host and port connect_async() recorded, taken without arguments."""
    assert list(inspect.signature(mqtt.Client._create_socket).parameters) == ["self"]
    c = new_client()
    c.connect_async(broker.host, broker.port)
    sock = pahoprivate.open_socket(c)
    try:
        assert isinstance(sock, socket.socket) and sock.getpeername()[1] == broker.port
    finally:
        sock.close()


def _packet_queue(broker: Broker) -> None:
    """(command, packet, mid, qos, info=None); the bytes queued are written (want_write)."""
    params = inspect.signature(mqtt.Client._packet_queue).parameters
    assert list(params) == ["self", "command", "packet", "mid", "qos", "info"]
    assert params["info"].default is None
    c = new_client()
    assert not c.want_write()
    pahoprivate.queue_raw(c, b"\xc0\x00")
    assert c.want_write()


def _loop_rc_handle(broker: Broker) -> None:
    """(rc): the connection is dropped and on_disconnect told, as paho's own loop does."""
    assert list(inspect.signature(mqtt.Client._loop_rc_handle).parameters) == ["self", "rc"]
    c = new_client()
    told: list[object] = []
    c.on_disconnect = lambda *args: told.append(args[3])
    pahoprivate.drop_connection(c, mqtt.MQTT_ERR_UNKNOWN)
    assert len(told) == 1 and c.socket() is None


def _state(broker: Broker) -> None:
    """A _ConnectionState: not closed when new, closed once disconnect() was called."""
    c = new_client()
    assert isinstance(c._state, enums._ConnectionState)
    assert not pahoprivate.closed(c)
    c.connect_async(broker.host, broker.port)
    assert not pahoprivate.closed(c)
    c.disconnect()
    assert pahoprivate.closed(c)


def _keepalive(broker: Broker) -> None:
    """An int of seconds: paho's default, then what connect_async() was given."""
    c = new_client()
    assert pahoprivate.keepalive(c) == 60
    c.connect_async(broker.host, broker.port, keepalive=17)
    assert type(c._keepalive) is int and pahoprivate.keepalive(c) == 17


def _msgtime_mutex(broker: Broker) -> None:
    """A lock (taken by last_traffic, as paho takes it)."""
    lock = new_client()._msgtime_mutex
    assert callable(lock.acquire) and callable(lock.release)
    with lock:
        assert lock.locked()


def _last_times(name: str) -> Callable[[Broker], None]:
    def check(broker: Broker) -> None:
        """A float on time.monotonic's clock (what last_traffic compares with it)."""
        before = time.monotonic()
        c = new_client()
        assert isinstance(getattr(c, name), float)
        assert before <= getattr(c, name) <= time.monotonic()
        assert before <= pahoprivate.last_traffic(c) <= time.monotonic()

    return check


def _out_messages(broker: Broker) -> None:
    """Sized: one more for a QoS 1 publish paho holds (here: not connected)."""
    c = new_client()
    assert pahoprivate.unacked(c) == 0
    c.publish("t/paho-private", b"x", qos=1)
    assert pahoprivate.unacked(c) == 1


SHAPES: dict[str, Callable[[Broker], None]] = {
    "_create_socket": _create_socket,
    "_packet_queue": _packet_queue,
    "_loop_rc_handle": _loop_rc_handle,
    "_state": _state,
    "_keepalive": _keepalive,
    "_msgtime_mutex": _msgtime_mutex,
    "_last_msg_out": _last_times("_last_msg_out"),
    "_last_bytes_received": _last_times("_last_bytes_received"),
    "_out_messages": _out_messages,
}


def test_every_private_name_has_its_check() -> None:
    assert set(SHAPES) == set(pahoprivate.CLIENT_NAMES)


@pytest.mark.parametrize("name", list(pahoprivate.CLIENT_NAMES))
def test_private_client_name_has_the_shape_rkllmd_relies_on(name: str, broker: Broker) -> None:
    assert hasattr(new_client(), name)
    SHAPES[name](broker)


def test_the_connection_states_closed_relies_on_exist() -> None:
    assert set(pahoprivate.ENUM_NAMES) == {"_ConnectionState"}
    states = enums._ConnectionState
    assert {"MQTT_CS_DISCONNECTING", "MQTT_CS_DISCONNECTED"} <= set(states.__members__)


def test_check_names_what_a_paho_lacks() -> None:
    """The start-up check passes on the pinned paho, and names a private name that went missing."""
    c = new_client()
    pahoprivate.check(c)
    del c._keepalive
    with pytest.raises(RkllmdError, match="_keepalive"):
        pahoprivate.check(c)


def test_no_other_module_names_a_paho_private() -> None:
    """Every use goes through rkllmd/pahoprivate.py."""
    on_client = "|".join(map(re.escape, pahoprivate.CLIENT_NAMES))  # not a class's own (self._state)
    in_paho = "|".join(map(re.escape, pahoprivate.ENUM_NAMES))
    pattern = re.compile(rf"(?<!\bself)\.({on_client})\b|\b({in_paho})\b")
    found = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for root in ("rkllmd", "plugins", "benchmarks")
        for path in sorted((REPO / root).rglob("*.py"))
        if path.name != "pahoprivate.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []
