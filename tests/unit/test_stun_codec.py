"""STUN/TURN codec: every attribute in the table, integrity, fingerprint, methods, ChannelData.

Wire bytes are built by hand here (``_raw``) wherever the point is what the codec does with a
given datagram, so that encoder bugs cannot hide decoder bugs and vice versa.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import ipaddress
import random
import struct

import pytest

from connlib.core import stun
from connlib.core.credentials import long_term_key

TID = bytes(range(1, 13))
COOKIE = bytes.fromhex("2112a442")


def _pad(data: bytes) -> bytes:
    return data + b"\x00" * (-len(data) % 4)


def _attr(attr_type: int, value: bytes) -> bytes:
    return struct.pack("!HH", attr_type, len(value)) + _pad(value)


def _raw(*attrs: tuple[int, bytes], msg_type: int = 0x0001, tid: bytes = TID, length: int | None = None) -> bytes:
    body = b"".join(_attr(t, v) for t, v in attrs)
    return struct.pack("!HH", msg_type, len(body) if length is None else length) + COOKIE + tid + body


def _with_fingerprint(data: bytes) -> bytes:
    """Append a FINGERPRINT computed independently of the codec."""
    data = data[:2] + struct.pack("!H", len(data) - 20 + 8) + data[4:]
    crc = (binascii.crc32(data) ^ 0x5354554E) & 0xFFFFFFFF
    return data + struct.pack("!HHI", 0x8028, 4, crc)


def _xor_addr(host: str, port: int, tid: bytes = TID) -> bytes:
    """XOR-*-ADDRESS value computed by hand (RFC 8489 §14.2)."""
    ip = ipaddress.ip_address(host)
    key = COOKIE + tid
    xored = bytes(b ^ k for b, k in zip(ip.packed, key, strict=False))
    return struct.pack("!BBH", 0, 1 if ip.version == 4 else 2, port ^ 0x2112) + xored


def _first_attr_value(data: bytes) -> bytes:
    attr_len = struct.unpack("!H", data[22:24])[0]
    return data[24 : 24 + attr_len]


def _roundtrip(message: stun.Message, **kwargs) -> stun.Message:
    return stun.decode(message.encode(**kwargs))


# --- every attribute in the table: round trip and wire form -----------------------------------

V4 = ("192.0.2.1", 32853)
V6 = ("2001:db8::1", 3478)

# (name, value, expected wire value or None to skip the wire check)
ROUND_TRIPS = [
    ("MAPPED-ADDRESS", V4, bytes.fromhex("00018055c0000201")),
    ("MAPPED-ADDRESS", V6, bytes.fromhex("00020d96") + ipaddress.ip_address(V6[0]).packed),
    ("XOR-MAPPED-ADDRESS", V4, _xor_addr(*V4)),
    ("XOR-MAPPED-ADDRESS", V6, _xor_addr(*V6)),
    ("XOR-RELAYED-ADDRESS", ("127.0.0.1", 50000), _xor_addr("127.0.0.1", 50000)),
    ("XOR-RELAYED-ADDRESS", ("::1", 50001), _xor_addr("::1", 50001)),
    ("XOR-PEER-ADDRESS", ("10.0.0.1", 1), _xor_addr("10.0.0.1", 1)),
    ("XOR-PEER-ADDRESS", ("fe80::1234:5678", 65535), _xor_addr("fe80::1234:5678", 65535)),
    ("XOR-MAPPED-ADDRESS", ("0.0.0.0", 0), _xor_addr("0.0.0.0", 0)),
    ("XOR-MAPPED-ADDRESS", ("255.255.255.255", 65535), _xor_addr("255.255.255.255", 65535)),
    ("ERROR-CODE", (401, "Unauthorized"), b"\x00\x00\x04\x01Unauthorized"),
    ("ERROR-CODE", (438, "Stale Nonce"), b"\x00\x00\x04\x26Stale Nonce"),
    ("ERROR-CODE", (437, "Allocation Mismatch"), b"\x00\x00\x04\x25Allocation Mismatch"),
    ("ERROR-CODE", (300, ""), b"\x00\x00\x03\x00"),
    ("ERROR-CODE", (699, "ünïcode"), b"\x00\x00\x06\x63" + "ünïcode".encode()),
    ("LIFETIME", 600, b"\x00\x00\x02\x58"),
    ("LIFETIME", 0, b"\x00\x00\x00\x00"),
    ("LIFETIME", 0xFFFFFFFF, b"\xff\xff\xff\xff"),
    ("REQUESTED-TRANSPORT", stun.TRANSPORT_UDP, b"\x11\x00\x00\x00"),
    ("REQUESTED-ADDRESS-FAMILY", stun.ADDRESS_FAMILY_IPV6, b"\x02\x00\x00\x00"),
    ("ADDITIONAL-ADDRESS-FAMILY", stun.ADDRESS_FAMILY_IPV6, b"\x02\x00\x00\x00"),
    ("CHANNEL-NUMBER", 0x4000, b"\x40\x00\x00\x00"),
    ("CHANNEL-NUMBER", 0x4FFF, b"\x4f\xff\x00\x00"),
    ("DATA", b"", b""),
    ("DATA", b"\x00\x01\x02", b"\x00\x01\x02"),
    ("DATA", bytes(range(256)) * 4, bytes(range(256)) * 4),
    ("USERNAME", "1700000000:salt", b"1700000000:salt"),
    ("USERNAME", "マトリックス", "マトリックス".encode()),
    ("REALM", "firezone", b"firezone"),
    ("NONCE", "f//499k954d6OL34oL9FSTvy64sA", b"f//499k954d6OL34oL9FSTvy64sA"),
    ("SOFTWARE", "connlib-py 0.1", b"connlib-py 0.1"),
    ("SOFTWARE", "", b""),
    ("PRIORITY", 0x6E0001FF, b"\x6e\x00\x01\xff"),
    ("ICE-CONTROLLING", 0x932FF9B151263B36, bytes.fromhex("932ff9b151263b36")),
    ("ICE-CONTROLLED", 0xFFFFFFFFFFFFFFFF, b"\xff" * 8),
    ("USE-CANDIDATE", None, b""),
    ("UNKNOWN-ATTRIBUTES", [0x0030, 0x7FFF], b"\x00\x30\x7f\xff"),
]


def test_round_trip_table_covers_every_codec_attribute():
    computed = {"MESSAGE-INTEGRITY", "FINGERPRINT"}  # covered by their own tests below
    covered = {name for name, _, _ in ROUND_TRIPS}
    assert covered == {codec.name for codec in stun.ATTRIBUTES.values()} - computed


@pytest.mark.parametrize(("name", "value", "wire"), ROUND_TRIPS, ids=lambda x: str(x)[:24])
def test_attribute_round_trip_and_wire_form(name, value, wire):
    message = stun.Message(stun.Method.ALLOCATE, stun.Class.SUCCESS, TID).add(name, value)
    data = message.encode()
    assert struct.unpack("!H", data[20:22])[0] == stun.ATTRIBUTE_TYPES[name]
    assert _first_attr_value(data) == wire
    assert len(data) % 4 == 0
    assert data[24 + len(wire) :] == b"\x00" * (-len(wire) % 4)  # zero padding by default
    decoded = stun.decode(data)
    assert decoded.attributes == [(name, value)]
    assert decoded == message


@pytest.mark.parametrize(("name", "value", "wire"), ROUND_TRIPS, ids=lambda x: str(x)[:24])
def test_attribute_decodes_from_hand_built_bytes(name, value, wire):
    decoded = stun.decode(_raw((stun.ATTRIBUTE_TYPES[name], wire), msg_type=0x0103))
    assert decoded.get(name) == value


def test_xor_address_depends_on_transaction_id_for_ipv6_only():
    tid2 = bytes(12)
    v4_a = stun.Message(stun.Method.BINDING, stun.Class.SUCCESS, TID).add("XOR-MAPPED-ADDRESS", V4)
    v4_b = stun.Message(stun.Method.BINDING, stun.Class.SUCCESS, tid2).add("XOR-MAPPED-ADDRESS", V4)
    assert _first_attr_value(v4_a.encode()) == _first_attr_value(v4_b.encode())
    v6_a = stun.Message(stun.Method.BINDING, stun.Class.SUCCESS, TID).add("XOR-MAPPED-ADDRESS", V6)
    v6_b = stun.Message(stun.Method.BINDING, stun.Class.SUCCESS, tid2).add("XOR-MAPPED-ADDRESS", V6)
    assert _first_attr_value(v6_a.encode()) != _first_attr_value(v6_b.encode())
    assert stun.decode(v6_b.encode()).get("XOR-MAPPED-ADDRESS") == V6


def test_many_attributes_round_trip_in_order():
    message = stun.Message(stun.Method.ALLOCATE, stun.Class.REQUEST, TID)
    for name, value, _ in ROUND_TRIPS:
        message.add(name, value)
    decoded = _roundtrip(message)
    assert decoded.attributes == message.attributes
    assert (decoded.method, decoded.cls, decoded.transaction_id) == (
        stun.Method.ALLOCATE,
        stun.Class.REQUEST,
        TID,
    )


def test_error_code_property():
    response = stun.Message(stun.Method.ALLOCATE, stun.Class.ERROR, TID).add("ERROR-CODE", (438, "Stale Nonce"))
    assert _roundtrip(response).error_code == 438
    assert stun.Message(stun.Method.ALLOCATE, stun.Class.SUCCESS, TID).error_code is None


def test_error_code_ignores_reserved_bits():
    # The 21 reserved bits before the class are ignored on receipt (RFC 8489 §14.8).
    decoded = stun.decode(_raw((0x0009, b"\xff\xff\xfc\x01Unauthorized"), msg_type=0x0113))
    assert decoded.get("ERROR-CODE") == (401, "Unauthorized")


# --- unknown attributes, repeated attributes --------------------------------------------------


@pytest.mark.parametrize("attr_type", [0x0030, 0x7FFF, 0x8050, 0xFFFF])
def test_unknown_attribute_kept_as_type_and_bytes_and_reencoded(attr_type):
    assert attr_type not in stun.ATTRIBUTES
    data = _raw((0x0006, b"user"), (attr_type, b"\x01\x02\x03"), (0x000D, b"\x00\x00\x02\x58"))
    decoded = stun.decode(data)
    assert decoded.attributes == [
        ("USERNAME", "user"),
        (attr_type, b"\x01\x02\x03"),
        ("LIFETIME", 600),
    ]
    assert decoded.get(attr_type) == b"\x01\x02\x03"
    assert attr_type in decoded
    assert decoded.encode() == data


def test_unknown_attribute_built_by_number_is_encoded_with_padding():
    message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, TID).add(0x8055, b"xyzzy")
    assert message.encode() == _raw((0x8055, b"xyzzy"))


def test_multiple_xor_relayed_addresses_kept_in_order():
    relayed = [("127.0.0.1", 49152), ("::1", 49153), ("127.0.0.2", 49154)]
    data = _raw(
        (0x0016, _xor_addr(*relayed[0])),
        (0x0020, _xor_addr("192.0.2.1", 1000)),
        (0x0016, _xor_addr(*relayed[1])),
        (0x000D, b"\x00\x00\x02\x58"),
        (0x0016, _xor_addr(*relayed[2])),
        msg_type=0x0103,
    )
    decoded = stun.decode(data)
    assert decoded.get_all("XOR-RELAYED-ADDRESS") == relayed
    assert decoded.get("XOR-RELAYED-ADDRESS") == relayed[0]
    assert decoded.get("XOR-MAPPED-ADDRESS") == ("192.0.2.1", 1000)
    assert decoded.encode() == data


def test_message_helpers():
    message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, TID)
    message.add("USERNAME", "a").add("LIFETIME", 1).add("USERNAME", "b")
    assert message.get("REALM") is None
    assert message.get("REALM", "dflt") == "dflt"
    assert message.get_all("USERNAME") == ["a", "b"]
    assert list(message) == [("USERNAME", "a"), ("LIFETIME", 1), ("USERNAME", "b")]
    message.remove("USERNAME")
    assert message.attributes == [("LIFETIME", 1)]
    assert "USERNAME" not in message


# --- MESSAGE-INTEGRITY ------------------------------------------------------------------------

USER, REALM, PASSWORD = "1700000000:salt", "firezone", "s3cr3t/pass+=="


def _allocate_request() -> stun.Message:
    return (
        stun.Message(stun.Method.ALLOCATE, stun.Class.REQUEST, TID)
        .add("REQUESTED-TRANSPORT", stun.TRANSPORT_UDP)
        .add("USERNAME", USER)
        .add("REALM", REALM)
        .add("NONCE", "nonce-1")
    )


def test_long_term_key_is_md5_of_user_realm_password():
    assert long_term_key(USER, REALM, PASSWORD) == hashlib.md5(f"{USER}:{REALM}:{PASSWORD}".encode()).digest()
    assert long_term_key("u", "r", "p") == bytes.fromhex(hashlib.md5(b"u:r:p").hexdigest())


@pytest.mark.parametrize("fingerprint", [False, True])
def test_message_integrity_long_term_key(fingerprint):
    key = long_term_key(USER, REALM, PASSWORD)
    data = _allocate_request().encode(key, fingerprint=fingerprint)
    decoded = stun.decode(data)
    assert decoded.verify_integrity(key) is True
    assert decoded.verify_integrity(long_term_key(USER, REALM, PASSWORD + "x")) is False
    assert decoded.verify_integrity(long_term_key(USER, "other", PASSWORD)) is False
    assert decoded.verify_integrity(PASSWORD.encode()) is False  # the short-term key is not the key
    # The MAC is HMAC-SHA1 over the message up to MESSAGE-INTEGRITY, length counting MI itself.
    mi_at = len(data) - 24 - (8 if fingerprint else 0)
    signed = data[:2] + struct.pack("!H", mi_at - 20 + 24) + data[4:mi_at]
    assert data[mi_at : mi_at + 4] == b"\x00\x08\x00\x14"
    assert data[mi_at + 4 : mi_at + 24] == hmac.new(key, signed, hashlib.sha1).digest()
    assert decoded.get("MESSAGE-INTEGRITY") == data[mi_at + 4 : mi_at + 24]
    assert ("FINGERPRINT" in decoded) is fingerprint


def test_message_integrity_short_term_key():
    key = b"VOkJxbRl1RmTxUk/WvJxBt"
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, TID)
    request.add("USERNAME", "evtj:h6vY").add("PRIORITY", 1).add("ICE-CONTROLLING", 7).add("USE-CANDIDATE")
    decoded = stun.decode(request.encode(key, fingerprint=True))
    assert decoded.verify_integrity(key) is True
    assert decoded.verify_integrity(key[:-1]) is False
    assert decoded.get("USE-CANDIDATE", "absent") is None
    assert "USE-CANDIDATE" in decoded


def test_verify_integrity_without_message_integrity_is_false():
    decoded = stun.decode(_allocate_request().encode(fingerprint=True))
    assert "MESSAGE-INTEGRITY" not in decoded
    assert decoded.verify_integrity(b"any") is False
    # A message that was built, not decoded, has nothing to verify either.
    assert _allocate_request().verify_integrity(b"any") is False


def test_integrity_and_fingerprint_in_attributes_are_recomputed_not_copied():
    message = _allocate_request().add("MESSAGE-INTEGRITY", b"\xaa" * 20).add("FINGERPRINT", 1)
    assert message.encode() == _allocate_request().encode()
    key = long_term_key(USER, REALM, PASSWORD)
    decoded = stun.decode(message.encode(key, fingerprint=True))
    assert decoded.get("MESSAGE-INTEGRITY") != b"\xaa" * 20
    assert decoded.verify_integrity(key)


def test_tampered_signed_attribute_fails_integrity():
    key = long_term_key(USER, REALM, PASSWORD)
    data = bytearray(_allocate_request().encode(key))
    data[data.index(b"nonce-1")] ^= 0x01  # "nonce-1" -> "oonce-1", still valid UTF-8
    decoded = stun.decode(bytes(data))
    assert decoded.get("NONCE") == "oonce-1"
    assert decoded.verify_integrity(key) is False


def test_attributes_after_message_integrity_are_ignored():
    key = long_term_key(USER, REALM, PASSWORD)
    signed = _allocate_request().encode(key)
    # Append an unauthenticated USERNAME, a LIFETIME and a malformed XOR-MAPPED-ADDRESS after MI.
    trailer = _attr(0x0006, b"mallory") + _attr(0x000D, b"\x00\x00\x00\x01") + _attr(0x0020, b"\x00\x09")
    data = signed[:2] + struct.pack("!H", len(signed) - 20 + len(trailer)) + signed[4:] + trailer
    decoded = stun.decode(data)
    assert decoded.get_all("USERNAME") == [USER]
    assert "LIFETIME" not in decoded
    assert "XOR-MAPPED-ADDRESS" not in decoded
    assert decoded.attributes[-1][0] == "MESSAGE-INTEGRITY"
    assert decoded.verify_integrity(key) is True
    # ... and FINGERPRINT after them is still checked.
    with_fp = _with_fingerprint(data)
    decoded = stun.decode(with_fp)
    assert decoded.attributes[-1][0] == "FINGERPRINT"
    assert decoded.verify_integrity(key) is True
    corrupted = bytearray(with_fp)
    corrupted[-1] ^= 1
    with pytest.raises(stun.StunParseError, match="FINGERPRINT"):
        stun.decode(bytes(corrupted))


def test_second_message_integrity_is_ignored():
    key = long_term_key(USER, REALM, PASSWORD)
    signed = _allocate_request().encode(key)
    trailer = _attr(0x0008, b"\x00" * 20)
    data = signed[:2] + struct.pack("!H", len(signed) - 20 + 24) + signed[4:] + trailer
    decoded = stun.decode(data)
    assert len(decoded.get_all("MESSAGE-INTEGRITY")) == 1
    assert decoded.verify_integrity(key) is True


# --- FINGERPRINT ------------------------------------------------------------------------------


def test_fingerprint_value_is_crc32_xor_stun():
    data = _allocate_request().encode(fingerprint=True)
    assert data == _with_fingerprint(_allocate_request().encode())
    assert stun.decode(data).get("FINGERPRINT") == struct.unpack("!I", data[-4:])[0]


def test_any_flipped_bit_after_the_header_is_rejected():
    data = _allocate_request().encode(long_term_key(USER, REALM, PASSWORD), fingerprint=True)
    fingerprint_type = range(len(data) - 8, len(data) - 6)
    for index in range(8, len(data)):  # transaction id, attributes, MI, FINGERPRINT value
        for bit in (0x01, 0x80):
            corrupted = bytearray(data)
            corrupted[index] ^= bit
            if index in fingerprint_type:
                # The FINGERPRINT's own type turned into an unknown attribute after MI: ignored,
                # so the message simply has no FINGERPRINT (a caller requiring one sees that).
                decoded = stun.decode(bytes(corrupted))
                assert "FINGERPRINT" not in decoded
                assert decoded.attributes[-1][0] == "MESSAGE-INTEGRITY"
                continue
            with pytest.raises(stun.StunParseError):
                stun.decode(bytes(corrupted))


def test_flipped_transaction_id_bit_is_a_fingerprint_mismatch():
    data = bytearray(_allocate_request().encode(fingerprint=True))
    data[12] ^= 0x10
    with pytest.raises(stun.StunParseError, match="FINGERPRINT mismatch"):
        stun.decode(bytes(data))


def test_fingerprint_must_be_last():
    data = _with_fingerprint(_raw((0x0006, b"user")))
    moved = data[:2] + struct.pack("!H", len(data) - 20 + 8) + data[4:] + _attr(0x000D, b"\x00\x00\x00\x01")
    with pytest.raises(stun.StunParseError, match="FINGERPRINT must be the last attribute"):
        stun.decode(moved)


# --- methods and classes ----------------------------------------------------------------------

# RFC 8489 §5 / RFC 8656 §17 message types: method bits interleaved with the class bits C1 C0.
MESSAGE_TYPES = [
    (stun.Method.BINDING, stun.Class.REQUEST, 0x0001),
    (stun.Method.BINDING, stun.Class.INDICATION, 0x0011),
    (stun.Method.BINDING, stun.Class.SUCCESS, 0x0101),
    (stun.Method.BINDING, stun.Class.ERROR, 0x0111),
    (stun.Method.ALLOCATE, stun.Class.REQUEST, 0x0003),
    (stun.Method.ALLOCATE, stun.Class.SUCCESS, 0x0103),
    (stun.Method.ALLOCATE, stun.Class.ERROR, 0x0113),
    (stun.Method.REFRESH, stun.Class.REQUEST, 0x0004),
    (stun.Method.REFRESH, stun.Class.SUCCESS, 0x0104),
    (stun.Method.REFRESH, stun.Class.ERROR, 0x0114),
    (stun.Method.SEND, stun.Class.INDICATION, 0x0016),
    (stun.Method.DATA, stun.Class.INDICATION, 0x0017),
    (stun.Method.CREATE_PERMISSION, stun.Class.REQUEST, 0x0008),
    (stun.Method.CREATE_PERMISSION, stun.Class.SUCCESS, 0x0108),
    (stun.Method.CREATE_PERMISSION, stun.Class.ERROR, 0x0118),
    (stun.Method.CHANNEL_BIND, stun.Class.REQUEST, 0x0009),
    (stun.Method.CHANNEL_BIND, stun.Class.SUCCESS, 0x0109),
    (stun.Method.CHANNEL_BIND, stun.Class.ERROR, 0x0119),
    # Methods beyond the low nibble exercise the other two bit groups.
    (0x0010, stun.Class.REQUEST, 0x0020),
    (0x0080, stun.Class.REQUEST, 0x0200),
    (0x0FFF, stun.Class.ERROR, 0x3FFF),
    (0x0FFF, stun.Class.REQUEST, 0x3EEF),
]


@pytest.mark.parametrize(
    ("method", "cls", "msg_type"), MESSAGE_TYPES, ids=lambda x: hex(x) if isinstance(x, int) else str(x)
)
def test_message_type_encoding(method, cls, msg_type):
    data = stun.Message(method, cls, TID).encode()
    assert struct.unpack("!H", data[:2])[0] == msg_type
    decoded = stun.decode(_raw(msg_type=msg_type))
    assert decoded.method == method
    assert decoded.cls == cls
    assert isinstance(decoded.cls, stun.Class)


def test_known_methods_decode_to_the_enum_unknown_stay_int():
    assert stun.decode(_raw(msg_type=0x0113)).method is stun.Method.ALLOCATE
    unknown = stun.decode(_raw(msg_type=0x0002))  # RFC 3489's Shared Secret, not in Method
    assert unknown.method == 2
    assert not isinstance(unknown.method, stun.Method)
    assert unknown.encode() == _raw(msg_type=0x0002)


def test_encode_rejects_bad_transaction_id_and_method():
    with pytest.raises(ValueError, match="transaction id"):
        stun.Message(stun.Method.BINDING, stun.Class.REQUEST, b"short").encode()
    with pytest.raises(ValueError, match="method"):
        stun.Message(0x1000, stun.Class.REQUEST, TID).encode()


def test_new_transaction_ids_are_12_random_bytes():
    rng = random.Random(1)
    ids = {stun.new_transaction_id(rng) for _ in range(50)}
    assert len(ids) == 50
    assert {len(t) for t in ids} == {12}


def test_decode_accepts_bytearray_and_memoryview():
    data = _allocate_request().encode(fingerprint=True)
    assert stun.decode(bytearray(data)) == stun.decode(memoryview(data)) == stun.decode(data)


def test_encode_padding_byte():
    message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, TID).add("USERNAME", "abcde")
    assert message.encode(padding=b" ").endswith(b"abcde   ")
    assert message.encode().endswith(b"abcde\x00\x00\x00")
    # The decoder does not care what the padding bytes are.
    assert stun.decode(message.encode(padding=b"\xff")).get("USERNAME") == "abcde"


# --- malformed input: each a StunParseError with a message that says what is wrong -----------

MALFORMED = [
    ("empty", b"", "shorter than a STUN header"),
    ("19 bytes", _raw()[:19], "shorter than a STUN header"),
    ("top bits set", b"\x40" + _raw()[1:], "first two bits must be zero"),
    ("top bit set", b"\x80" + _raw()[1:], "first two bits must be zero"),
    ("bad cookie", _raw()[:4] + b"\x21\x12\xa4\x43" + _raw()[8:], "bad magic cookie"),
    ("length not multiple of 4", _raw((0x0006, b"abcd"), length=6)[:26], "length field does not match"),
    ("length too long", _raw((0x0006, b"abcd"), length=12), "length field does not match"),
    ("length too short", _raw((0x0006, b"abcd"), length=4), "length field does not match"),
    ("trailing byte", _raw() + b"\x00", "length field does not match"),
    (
        "attribute past end",
        _raw()[:2] + b"\x00\x08" + _raw()[4:] + b"\x00\x06\x00\x08abcd",
        "attribute runs past the end",
    ),
    ("MI 19 bytes", _raw((0x0008, b"\x00" * 19)), "MESSAGE-INTEGRITY must be 20 bytes"),
    ("MI 32 bytes", _raw((0x0008, b"\x00" * 32)), "MESSAGE-INTEGRITY must be 20 bytes"),
    ("FINGERPRINT 8 bytes", _raw((0x8028, b"\x00" * 8)), "FINGERPRINT must be 4 bytes"),
    ("FINGERPRINT wrong", _raw((0x8028, b"\x00" * 4)), "FINGERPRINT mismatch"),
    ("FINGERPRINT not last", _raw((0x8028, b"\x00" * 4), (0x0006, b"u")), "FINGERPRINT must be the last"),
    ("address 3 bytes", _raw((0x0020, b"\x00\x01\x00")), "address attribute too short"),
    ("IPv4 address 6 bytes", _raw((0x0020, b"\x00\x01\x00\x00\x01\x02")), "IPv4 address attribute must be 8"),
    ("IPv4 address 20 bytes", _raw((0x0001, b"\x00\x01" + b"\x00" * 18)), "IPv4 address attribute must be 8"),
    ("IPv6 address 8 bytes", _raw((0x0016, b"\x00\x02" + b"\x00" * 6)), "IPv6 address attribute must be 20"),
    ("IPv6 address 24 bytes", _raw((0x0020, b"\x00\x02" + b"\x00" * 22)), "IPv6 address attribute must be 20"),
    ("IPv4 family, IPv6 length", _raw((0x0020, b"\x00\x01" + b"\x00" * 18)), "IPv4 address attribute must be 8"),
    ("address family 3", _raw((0x0012, b"\x00\x03" + b"\x00" * 6)), "unknown address family 0x3"),
    ("address family 0", _raw((0x0001, b"\x00\x00" + b"\x00" * 6)), "unknown address family 0x0"),
    ("LIFETIME 2 bytes", _raw((0x000D, b"\x00\x01")), "attribute must be 4 bytes, got 2"),
    ("PRIORITY 8 bytes", _raw((0x0024, b"\x00" * 8)), "attribute must be 4 bytes, got 8"),
    ("ICE-CONTROLLING 4 bytes", _raw((0x802A, b"\x00" * 4)), "attribute must be 8 bytes, got 4"),
    ("ERROR-CODE 3 bytes", _raw((0x0009, b"\x00\x00\x04")), "ERROR-CODE too short"),
    ("ERROR-CODE class 2", _raw((0x0009, b"\x00\x00\x02\x00OK")), "ERROR-CODE out of range"),
    ("ERROR-CODE class 7", _raw((0x0009, b"\x00\x00\x07\x00")), "ERROR-CODE out of range"),
    ("ERROR-CODE number 100", _raw((0x0009, b"\x00\x00\x04\x64")), "ERROR-CODE out of range"),
    ("ERROR-CODE reason not UTF-8", _raw((0x0009, b"\x00\x00\x04\x01\xff")), "not UTF-8"),
    ("USERNAME not UTF-8", _raw((0x0006, b"\xc3\x28")), "text attribute is not UTF-8"),
    ("REALM not UTF-8", _raw((0x0014, b"\xff\xfe")), "text attribute is not UTF-8"),
    ("NONCE not UTF-8", _raw((0x0015, b"\x80")), "text attribute is not UTF-8"),
    ("SOFTWARE not UTF-8", _raw((0x8022, b"\xed\xa0\x80")), "text attribute is not UTF-8"),  # surrogate
    ("REQUESTED-TRANSPORT 1 byte", _raw((0x0019, b"\x11")), "attribute must be 4 bytes"),
    ("ADDITIONAL-ADDRESS-FAMILY 8 bytes", _raw((0x8000, b"\x02" + b"\x00" * 7)), "attribute must be 4 bytes"),
    ("CHANNEL-NUMBER 2 bytes", _raw((0x000C, b"\x40\x00")), "CHANNEL-NUMBER must be 4 bytes"),
    ("USE-CANDIDATE with a value", _raw((0x0025, b"\x01")), "flag attribute must be empty"),
    ("UNKNOWN-ATTRIBUTES odd", _raw((0x000A, b"\x00\x30\x00")), "UNKNOWN-ATTRIBUTES length must be even"),
]


@pytest.mark.parametrize(("data", "message"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_input_raises_stun_parse_error(data, message):
    with pytest.raises(stun.StunParseError, match=message):
        stun.decode(data)


def test_stun_parse_error_is_a_value_error():
    # Callers that already catch ValueError keep working; nothing else needs catching.
    assert issubclass(stun.StunParseError, ValueError)


def test_channel_data_is_not_a_stun_message():
    with pytest.raises(stun.StunParseError, match="first two bits"):
        stun.decode(stun.encode_channel_data(0x4000, bytes(20)))


# --- ChannelData ------------------------------------------------------------------------------


def test_channel_data_encode_wire_form():
    assert stun.encode_channel_data(0x4000, b"hello") == b"\x40\x00\x00\x05hello"
    assert stun.encode_channel_data(0x4FFF, b"") == b"\x4f\xff\x00\x00"


@pytest.mark.parametrize("payload", [b"", b"a", b"ab", b"abc", b"abcd", bytes(range(256)) * 10, b"\x00" * 0xFFFF])
@pytest.mark.parametrize("channel", [0x4000, 0x4001, 0x4ABC, 0x4FFF])
def test_channel_data_round_trip(channel, payload):
    frame = stun.encode_channel_data(channel, payload)
    assert len(frame) == 4 + len(payload)
    assert stun.decode_channel_data(frame) == (channel, payload)
    assert stun.is_channel_data(frame)
    assert not stun.is_stun(frame)


@pytest.mark.parametrize("payload", [b"a", b"ab", b"abc", b"abcde"])
def test_channel_data_padding_is_tolerated(payload):
    frame = stun.encode_channel_data(0x4001, payload)
    padded = frame + b"\x00" * (-len(payload) % 4)
    assert len(padded) % 4 == 0
    assert stun.decode_channel_data(padded) == (0x4001, payload)
    assert stun.decode_channel_data(bytearray(padded)) == (0x4001, payload)


CHANNEL_DATA_ERRORS = [
    ("empty", b"", "shorter than its header"),
    ("3 bytes", b"\x40\x00\x00", "shorter than its header"),
    ("channel 0x3fff", b"\x3f\xff\x00\x00", "outside 0x4000-0x4FFF"),
    ("channel 0x5000", b"\x50\x00\x00\x00", "outside 0x4000-0x4FFF"),
    ("channel 0xffff", b"\xff\xff\x00\x01x", "outside 0x4000-0x4FFF"),
    ("length longer than data", b"\x40\x00\x00\x05abcd", "length does not match"),
    ("extra byte, aligned length", b"\x40\x00\x00\x04abcdX", "length does not match"),
    ("more than padding", b"\x40\x00\x00\x01a\x00\x00\x00\x00", "length does not match"),
    ("partial padding", b"\x40\x00\x00\x01a\x00", "length does not match"),
]


@pytest.mark.parametrize(
    ("data", "message"), [e[1:] for e in CHANNEL_DATA_ERRORS], ids=[e[0] for e in CHANNEL_DATA_ERRORS]
)
def test_channel_data_decode_errors(data, message):
    with pytest.raises(stun.StunParseError, match=message):
        stun.decode_channel_data(data)


def test_channel_data_encode_errors():
    with pytest.raises(ValueError, match="0x3fff outside"):
        stun.encode_channel_data(0x3FFF, b"x")
    with pytest.raises(ValueError, match="outside"):
        stun.encode_channel_data(0x5000, b"x")
    with pytest.raises(ValueError, match="payload too long"):
        stun.encode_channel_data(0x4000, b"\x00" * 0x10000)


# --- demultiplexing ---------------------------------------------------------------------------


def test_demux_stun_vs_channel_data_vs_other():
    stun_msg = _allocate_request().encode()
    channel = stun.encode_channel_data(0x4000, b"payload")
    assert stun.is_stun(stun_msg) and not stun.is_channel_data(stun_msg)
    assert stun.is_channel_data(channel) and not stun.is_stun(channel)
    for first_byte in range(256):
        packet = bytes([first_byte]) + bytes(23)
        assert stun.is_stun(packet) == (first_byte <= 3), first_byte
        assert stun.is_channel_data(packet) == (0x40 <= first_byte <= 0x4F), first_byte
    # Too short to be either.
    assert not stun.is_stun(stun_msg[:19])
    assert not stun.is_channel_data(b"\x40\x00\x00")
    assert stun.is_channel_data(b"\x40\x00\x00\x00")
    # DTLS (20-63) and RTP (128-191) are neither.
    assert not stun.is_stun(b"\x16" + bytes(30)) and not stun.is_channel_data(b"\x16" + bytes(30))
    assert not stun.is_stun(b"\x80" + bytes(30)) and not stun.is_channel_data(b"\x80" + bytes(30))
