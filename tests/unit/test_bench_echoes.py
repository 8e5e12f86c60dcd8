"""``bench.relayed_roundtrip.Echoes`` keeps its window full (fake clock, no sockets): a benchmark
whose window shrank with every lost datagram would measure a smaller window than its column names."""

from __future__ import annotations

from bench.relayed_roundtrip import LOST_AFTER, SEQ, Echoes


def _echoes(window: int) -> tuple[Echoes, list[bytes], list[float]]:
    sent: list[bytes] = []
    now = [0.0]
    echoes = Echoes(sent.append, payload=100, window=window)
    echoes.clock = lambda: now[0]
    return echoes, sent, now


def test_a_lost_datagram_is_replaced_after_lost_after_and_counted():
    echoes, sent, now = _echoes(4)
    echoes.start()
    echoes.counting = True
    assert len(sent) == 4 and all(len(p) == 100 for p in sent)
    now[0] = LOST_AFTER / 2
    for packet in sent[1:]:  # the first one is lost; the others' echoes send three more
        echoes.on_echo(packet)
    assert len(echoes.in_flight) == 4 and echoes.counted == 3
    echoes.refill()
    assert echoes.lost == 0 and len(sent) == 7  # not yet lost
    now[0] = LOST_AFTER + 0.001
    echoes.refill()
    assert echoes.lost == 1 and len(sent) == 8 and len(echoes.in_flight) == 4  # the window is whole again
    assert SEQ.unpack_from(sent[0])[0] not in echoes.in_flight


def test_a_late_echo_of_a_replaced_datagram_sends_nothing_and_counts_nothing():
    echoes, sent, now = _echoes(2)
    echoes.start()
    echoes.counting = True
    now[0] = LOST_AFTER + 0.001
    echoes.refill()  # both given up on and replaced
    assert echoes.lost == 2 and len(sent) == 4
    echoes.on_echo(sent[0])  # the first comes back after all
    assert echoes.counted == 0 and len(sent) == 4 and len(echoes.in_flight) == 2
    echoes.on_echo(sent[3])
    assert echoes.counted == 1 and len(sent) == 5 and len(echoes.in_flight) == 2
