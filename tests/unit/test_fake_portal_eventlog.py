"""fake_portal.eventlog: the frame fast path keeps what the generic ``record`` keeps."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fake_portal.eventlog import EncodedPayload, EventKind, EventLog

scalars = st.one_of(st.none(), st.integers(), st.text(max_size=200), st.sampled_from(['"quoted"', "x" * 121]))
payloads = st.one_of(
    st.dictionaries(st.sampled_from(["password", "pwd", "stamp_secret", "id", "addr"]), scalars, max_size=4),
    st.lists(scalars, max_size=3),
    st.builds(lambda text: EncodedPayload('{"payload":' + text + "}", "payload"), st.sampled_from(["{}", '{"a":1}'])),
)


@given(
    frames=st.lists(
        st.tuples(
            st.floats(0, 1e9, allow_nan=False),
            st.sampled_from(["in", "out"]),
            st.integers(1, 10**6),
            scalars,
            scalars,
            scalars,
            scalars,
            scalars,
            payloads,
            st.integers(0, 10**6),
        ),
        max_size=4,
    )
)
def test_record_frame_keeps_the_entry_record_keeps(frames):
    generic, fast = EventLog(8), EventLog(8)
    for ts, direction, sid, role, peer_id, topic, event, ref, payload, size in frames:
        generic.record(
            ts,
            EventKind.FRAME,
            dir=direction,
            sid=sid,
            role=role,
            id=peer_id,
            topic=topic,
            event=event,
            ref=ref,
            payload=payload,
            payload_bytes=size,
        )
        fast.record_frame(ts, direction, sid, role, peer_id, topic, event, ref, payload, size)
    assert fast.since() == generic.since()
    assert fast.last_seq == generic.last_seq
