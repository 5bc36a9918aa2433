"""The waits between reconnect attempts (rkllmd/mqttloop.py, Backoff): short while a broker is away,
long once it refuses rkllmd, so a restarted broker is reached at once and a refusing one is not hammered."""

from __future__ import annotations

from rkllmd.mqttloop import FIRST_WAIT_S, MAX_WAIT_REFUSED_S, MAX_WAIT_S, STABLE_S, Backoff


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _longest(clock: Clock | None = None) -> Backoff:
    """Waits at the top of their jitter range (rand() = 1), so the sequence is exact."""
    return Backoff(rand=lambda: 1.0, clock=clock or Clock())


def test_waits_start_at_tens_of_ms_and_stay_under_half_a_second() -> None:
    """A broker away for any time is tried at least every MAX_WAIT_S: its return is seen at once."""
    b = _longest()
    waits = [b.next() for _ in range(40)]
    assert waits[0] == FIRST_WAIT_S < 0.05
    assert waits[1] == 2 * FIRST_WAIT_S
    assert max(waits) == MAX_WAIT_S <= 0.5


def test_jitter_keeps_each_wait_between_half_and_all_of_its_step() -> None:
    low = Backoff(rand=lambda: 0.0)
    assert low.next() == FIRST_WAIT_S / 2


def test_a_connection_that_lasted_starts_the_next_outage_from_the_first_wait() -> None:
    clock = Clock()
    b = _longest(clock)
    for _ in range(10):
        b.next()
    b.connected()
    clock.now += STABLE_S
    assert b.next() == FIRST_WAIT_S


def test_connections_dropped_at_once_count_as_a_refusal() -> None:
    """A broker that takes rkllmd and drops it straight away, again and again (mosquitto 2.0 does so
    when another client connects with rkllmd's client id), is tried less and less often, not twice a
    second; a broker restarted once just after rkllmd connected is still tried at once."""
    clock = Clock()
    b = _longest(clock)
    b.connected()
    clock.now += 0.1
    assert max(b.next() for _ in range(20)) == MAX_WAIT_S
    b.connected()
    clock.now += 0.1
    assert max(b.next() for _ in range(20)) == MAX_WAIT_REFUSED_S


def test_a_refusing_broker_is_tried_less_and_less_often() -> None:
    """CONNACK refused, or sent away (another client took the session): the waits grow to half a
    minute, until a connection lasts again."""
    clock = Clock()
    b = _longest(clock)
    b.refused()
    waits = [b.next() for _ in range(20)]
    assert max(waits) == MAX_WAIT_REFUSED_S and waits == sorted(waits)
    b.connected()
    clock.now += STABLE_S
    assert b.next() == FIRST_WAIT_S
