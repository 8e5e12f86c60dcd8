"""Hypothesis properties of the STUN codec.

(a) any byte string decodes to a ``Message`` or raises ``StunParseError``, nothing else;
(b) the same for mutations of valid messages (bit flips, truncations, insertions, length edits);
(c) generated messages round trip (attributes equal, integrity verifies), as does ChannelData.
"""

from __future__ import annotations

import hmac
import ipaddress
import struct

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from connlib.core import stun
from connlib.core.credentials import long_term_key

# Deterministic: the same examples every run (seeded from each test), no example database.
_COMMON = settings(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
FAST = settings(_COMMON, max_examples=250)
MEDIUM = settings(_COMMON, max_examples=100)

COMPUTED = {"MESSAGE-INTEGRITY", "FINGERPRINT"}


def _decode_or_parse_error(data: bytes) -> stun.Message | None:
    """The property itself: a Message, or StunParseError; any other exception fails the test."""
    try:
        message = stun.decode(data)
    except stun.StunParseError as exc:
        assert str(exc), "a parse error says what is wrong"
        return None
    assert isinstance(message, stun.Message)
    assert isinstance(message.cls, stun.Class)
    assert len(message.transaction_id) == 12
    return message


# --- strategies -------------------------------------------------------------------------------

ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ipv6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
ports = st.integers(0, 0xFFFF)
addresses = st.tuples(st.one_of(ipv4, ipv6), ports)
texts = st.text(max_size=40)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
error_codes = st.tuples(st.integers(300, 699), texts)
octets = st.integers(0, 255)

# One value strategy per table name; the test below checks this covers the whole table.
VALUES: dict[str, st.SearchStrategy] = {
    "MAPPED-ADDRESS": addresses,
    "XOR-MAPPED-ADDRESS": addresses,
    "XOR-RELAYED-ADDRESS": addresses,
    "XOR-PEER-ADDRESS": addresses,
    "USERNAME": texts,
    "REALM": texts,
    "NONCE": texts,
    "SOFTWARE": texts,
    "ERROR-CODE": error_codes,
    "UNKNOWN-ATTRIBUTES": st.lists(st.integers(0, 0xFFFF), max_size=6),
    "CHANNEL-NUMBER": st.integers(0, 0xFFFF),
    "LIFETIME": u32,
    "PRIORITY": u32,
    "DATA": st.binary(max_size=64),
    "REQUESTED-TRANSPORT": octets,
    "REQUESTED-ADDRESS-FAMILY": octets,
    "ADDITIONAL-ADDRESS-FAMILY": octets,
    "ICE-CONTROLLED": u64,
    "ICE-CONTROLLING": u64,
    "USE-CANDIDATE": st.none(),
}

unknown_types = st.integers(0, 0xFFFF).filter(lambda t: t not in stun.ATTRIBUTES)
known_attribute = st.sampled_from(sorted(VALUES)).flatmap(lambda name: st.tuples(st.just(name), VALUES[name]))
unknown_attribute = st.tuples(unknown_types, st.binary(max_size=24))
attributes = st.lists(st.one_of(known_attribute, known_attribute, unknown_attribute), max_size=8)
methods = st.one_of(st.sampled_from(list(stun.Method)), st.integers(0, 0xFFF))
classes = st.sampled_from(list(stun.Class))
tids = st.binary(min_size=12, max_size=12)
keys = st.one_of(
    st.none(),
    st.binary(min_size=1, max_size=32),  # short-term: the password's bytes
    st.tuples(texts, texts, texts).map(lambda urp: long_term_key(*urp)),
)


@st.composite
def messages(draw) -> stun.Message:
    return stun.Message(draw(methods), draw(classes), draw(tids), draw(attributes))


@st.composite
def encoded(draw) -> bytes:
    return draw(messages()).encode(draw(keys), fingerprint=draw(st.booleans()))


def test_value_strategies_cover_the_table():
    assert set(VALUES) == {c.name for c in stun.ATTRIBUTES.values()} - COMPUTED


# --- (a) arbitrary bytes ----------------------------------------------------------------------


@FAST
@given(st.binary(max_size=200))
@example(b"")
@example(bytes(20))
def test_any_bytes_decode_or_raise_parse_error(data):
    _decode_or_parse_error(data)


@st.composite
def stun_shaped(draw) -> bytes:
    """Random attribute soup behind a valid header, so that the attribute parser is reached."""
    raw_attrs = draw(
        st.lists(
            st.tuples(
                st.one_of(st.sampled_from(sorted(stun.ATTRIBUTES)), st.integers(0, 0xFFFF)),
                st.binary(max_size=24),
            ),
            max_size=6,
        )
    )
    body = b""
    for attr_type, value in raw_attrs:
        body += struct.pack("!HH", attr_type, len(value)) + value + b"\x00" * (-len(value) % 4)
    msg_type = draw(st.integers(0, 0x3FFF))
    return struct.pack("!HHI", msg_type, len(body), stun.MAGIC_COOKIE) + draw(tids) + body


@FAST
@given(stun_shaped())
def test_stun_shaped_garbage_decodes_or_raises_parse_error(data):
    message = _decode_or_parse_error(data)
    if message is not None:
        assert message.raw == data


# --- (b) mutations of valid messages ----------------------------------------------------------


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(encoded()))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "length", "attr-length"]))
        if kind == "flip" and data:
            index = draw(st.integers(0, len(data) - 1))
            data[index] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        elif kind == "insert":
            index = draw(st.integers(0, len(data)))
            data[index:index] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and data:
            index = draw(st.integers(0, len(data) - 1))
            del data[index : index + draw(st.integers(1, 8))]
        elif kind == "length" and len(data) >= 4:
            data[2:4] = struct.pack("!H", draw(st.integers(0, 0xFFFF)))
        elif kind == "attr-length" and len(data) >= 24:
            # Rewrite the length of some attribute-header-aligned word.
            word = draw(st.integers(5, max(5, len(data) // 4 - 1)))
            if word * 4 + 4 <= len(data):
                data[word * 4 + 2 : word * 4 + 4] = struct.pack("!H", draw(st.integers(0, 0xFFFF)))
    return bytes(data)


@MEDIUM
@given(mutated())
def test_mutated_messages_decode_or_raise_parse_error(data):
    _decode_or_parse_error(data)


@MEDIUM
@given(messages(), keys, st.data())
def test_single_bit_flip_in_fingerprinted_message_never_escapes_unnoticed(message, key, draw):
    """A bit flip in a fingerprinted message is either rejected or visibly drops the FINGERPRINT."""
    data = message.encode(key, fingerprint=True)
    corrupted = bytearray(data)
    index = draw.draw(st.integers(0, len(data) - 1))
    corrupted[index] ^= 1 << draw.draw(st.integers(0, 7))
    result = _decode_or_parse_error(bytes(corrupted))
    if result is not None:
        # CRC-32 catches every single-bit error in what it covers, so a flipped message can only
        # decode if the flip hid the FINGERPRINT itself (its type, or a length that swallows it).
        assert "FINGERPRINT" not in result


# --- (c) round trips --------------------------------------------------------------------------


def _without_computed(attrs):
    return [(name, value) for name, value in attrs if name not in COMPUTED]


@MEDIUM
@given(messages(), keys, st.booleans(), st.sampled_from([b"\x00", b" "]))
def test_generated_messages_round_trip(message, key, fingerprint, padding):
    data = message.encode(key, fingerprint=fingerprint, padding=padding)
    assert len(data) % 4 == 0
    # RFC 7983 demultiplexing: first byte 0-3 is STUN, which holds for every method below 0x100
    # (all assigned ones); larger experimental methods fall outside that range by design.
    assert stun.is_stun(data) == (int(message.method) < 0x100)
    assert not stun.is_channel_data(data)
    decoded = stun.decode(data)
    assert decoded.method == message.method
    assert decoded.cls == message.cls
    assert decoded.transaction_id == message.transaction_id
    assert _without_computed(decoded.attributes) == message.attributes
    assert ("FINGERPRINT" in decoded) is fingerprint
    if key is None:
        assert "MESSAGE-INTEGRITY" not in decoded
        assert decoded.verify_integrity(b"k") is False
    else:
        assert decoded.verify_integrity(key) is True
        assert decoded.verify_integrity(key + b"x") is False
    # Re-encoding the decoded message with the same options reproduces the bytes exactly.
    assert decoded.encode(key, fingerprint=fingerprint, padding=padding) == data


@MEDIUM
@given(st.integers(stun.CHANNEL_MIN, stun.CHANNEL_MAX), st.binary(max_size=1500), st.booleans())
def test_channel_data_round_trip(channel, payload, pad):
    frame = stun.encode_channel_data(channel, payload)
    if pad:
        frame += b"\x00" * (-len(payload) % 4)
    assert stun.is_channel_data(frame)
    assert not stun.is_stun(frame)
    assert stun.decode_channel_data(frame) == (channel, payload)


@FAST
@given(st.binary(max_size=80))
@example(b"\x40\x00")
def test_channel_data_decode_any_bytes(data):
    try:
        channel, payload = stun.decode_channel_data(data)
    except stun.StunParseError:
        return
    assert stun.CHANNEL_MIN <= channel <= stun.CHANNEL_MAX
    assert payload == data[4 : 4 + len(payload)]
    assert len(data) - 4 - len(payload) in range(4)


# Groups drawn mostly from zero so that runs of zeros (the "::" cases) of every length and place occur.
hextets = st.lists(st.one_of(st.just(0), st.just(0), st.integers(0, 0xFFFF)), min_size=8, max_size=8)


@FAST
@given(hextets)
@example([0] * 8)
@example([0, 0, 1, 0, 0, 0, 1, 0])
@example([1, 0, 0, 1, 0, 0, 1, 1])
@example([0, 0, 0, 0, 0, 0xFFFF, 0x0102, 0x0304])  # IPv4-mapped: Python-version dependent form
def test_ipv6_text_is_what_ipaddress_writes(groups):
    raw = struct.pack("!8H", *groups)
    assert stun._format_ipv6(raw) == str(ipaddress.IPv6Address(raw))


@FAST
@given(st.binary(max_size=100), st.binary(max_size=200))
@example(b"", b"")
@example(b"k" * 64, b"exactly one block of key")
@example(b"k" * 65, b"a key longer than SHA-1's block is hashed first")
def test_cached_hmac_is_rfc_2104_hmac_sha1(key, data):
    assert stun._hmac_sha1(key, data) == hmac.digest(key, data, "sha1")
    assert stun._hmac_sha1(key, data) == hmac.digest(key, data, "sha1")  # again, from the cached states
