"""RFC 5769 STUN test vectors: decode, check every attribute, verify integrity, re-encode exactly.

The byte strings are the RFC's own sample messages (sections 2.1-2.4), transcribed from its text.
Vectors 2.1-2.3 pad attribute values with 0x20 bytes; 2.4 pads with 0x00 and has no FINGERPRINT.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest

from connlib.core import stun
from connlib.core.credentials import long_term_key


def _hex(text: str) -> bytes:
    """Hex dump, one 4-byte word per line, ``#`` starts a comment (the RFC's annotations)."""
    return bytes.fromhex("".join(line.split("#", 1)[0] for line in text.strip().splitlines()))


SHORT_TERM_PASSWORD = "VOkJxbRl1RmTxUk/WvJxBt"
SHORT_TERM_KEY = SHORT_TERM_PASSWORD.encode()
TRANSACTION_ID_21_23 = bytes.fromhex("b7e7a701bc34d686fa87dfae")
TRANSACTION_ID_24 = bytes.fromhex("78ad3433c6ad72c029da412e")

# RFC 5769 §2.1: Sample Request
SAMPLE_REQUEST = _hex(
    """
    00 01 00 58  # Request type and message length
    21 12 a4 42  # Magic cookie
    b7 e7 a7 01  # Transaction ID
    bc 34 d6 86
    fa 87 df ae
    80 22 00 10  # SOFTWARE attribute header
    53 54 55 4e  # "STUN test client"
    20 74 65 73
    74 20 63 6c
    69 65 6e 74
    00 24 00 04  # PRIORITY attribute header
    6e 00 01 ff  # ICE priority value
    80 29 00 08  # ICE-CONTROLLED attribute header
    93 2f f9 b1  # pseudo-random tie breaker
    51 26 3b 36
    00 06 00 09  # USERNAME attribute header
    65 76 74 6a  # "evtj:h6vY" and 3 bytes of padding (0x20)
    3a 68 36 76
    59 20 20 20
    00 08 00 14  # MESSAGE-INTEGRITY attribute header
    9a ea a7 0c  # HMAC-SHA1
    bf d8 cb 56
    78 1e f2 b5
    b2 d3 f2 49
    c1 b5 71 a2
    80 28 00 04  # FINGERPRINT attribute header
    e5 7a 3b cf  # CRC32 fingerprint
    """
)

# RFC 5769 §2.2: Sample IPv4 Response
SAMPLE_IPV4_RESPONSE = _hex(
    """
    01 01 00 3c  # Response type and message length
    21 12 a4 42  # Magic cookie
    b7 e7 a7 01  # Transaction ID
    bc 34 d6 86
    fa 87 df ae
    80 22 00 0b  # SOFTWARE attribute header
    74 65 73 74  # "test vector" and 1 byte of padding (0x20)
    20 76 65 63
    74 6f 72 20
    00 20 00 08  # XOR-MAPPED-ADDRESS attribute header
    00 01 a1 47  # family IPv4, xor'd port
    e1 12 a6 43  # xor'd IPv4 address
    00 08 00 14  # MESSAGE-INTEGRITY attribute header
    2b 91 f5 99  # HMAC-SHA1
    fd 9e 90 c3
    8c 74 89 f9
    2a f9 ba 53
    f0 6b e7 d7
    80 28 00 04  # FINGERPRINT attribute header
    c0 7d 4c 96  # CRC32 fingerprint
    """
)

# RFC 5769 §2.3: Sample IPv6 Response
SAMPLE_IPV6_RESPONSE = _hex(
    """
    01 01 00 48  # Response type and message length
    21 12 a4 42  # Magic cookie
    b7 e7 a7 01  # Transaction ID
    bc 34 d6 86
    fa 87 df ae
    80 22 00 0b  # SOFTWARE attribute header
    74 65 73 74  # "test vector" and 1 byte of padding (0x20)
    20 76 65 63
    74 6f 72 20
    00 20 00 14  # XOR-MAPPED-ADDRESS attribute header
    00 02 a1 47  # family IPv6, xor'd port
    01 13 a9 fa  # xor'd IPv6 address
    a5 d3 f1 79
    bc 25 f4 b5
    be d2 b9 d9
    00 08 00 14  # MESSAGE-INTEGRITY attribute header
    a3 82 95 4e  # HMAC-SHA1
    4b e6 7b f1
    17 84 c9 7c
    82 92 c2 75
    bf e3 ed 41
    80 28 00 04  # FINGERPRINT attribute header
    c8 fb 0b 4c  # CRC32 fingerprint
    """
)

# RFC 5769 §2.4: Sample Request with Long-Term Authentication
SAMPLE_REQUEST_LONG_TERM_AUTH = _hex(
    """
    00 01 00 60  # Request type and message length
    21 12 a4 42  # Magic cookie
    78 ad 34 33  # Transaction ID
    c6 ad 72 c0
    29 da 41 2e
    00 06 00 12  # USERNAME attribute header
    e3 83 9e e3  # "マトリックス" (18 bytes) and 2 bytes of padding (0x00)
    83 88 e3 83
    aa e3 83 83
    e3 82 af e3
    82 b9 00 00
    00 15 00 1c  # NONCE attribute header
    66 2f 2f 34  # "f//499k954d6OL34oL9FSTvy64sA"
    39 39 6b 39
    35 34 64 36
    4f 4c 33 34
    6f 4c 39 46
    53 54 76 79
    36 34 73 41
    00 14 00 0b  # REALM attribute header
    65 78 61 6d  # "example.org" and 1 byte of padding (0x00)
    70 6c 65 2e
    6f 72 67 00
    00 08 00 14  # MESSAGE-INTEGRITY attribute header
    f6 70 24 65  # HMAC-SHA1
    6d d6 4a 3e
    02 b8 e0 71
    2e 85 c9 a2
    8c a8 96 66
    """
)

# "マトリックス" spelled by code point, so that no editor normalisation can change it.
LONG_TERM_USERNAME = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
LONG_TERM_PASSWORD = "TheMatrIX"  # after SASLprep
LONG_TERM_NONCE = "f//499k954d6OL34oL9FSTvy64sA"
LONG_TERM_REALM = "example.org"
LONG_TERM_KEY = long_term_key(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD)

WRONG_KEYS = [
    b"",
    b"VOkJxbRl1RmTxUk/WvJxBu",  # last character changed
    hashlib.md5(b"evtj:h6vY").digest(),
]

# (vector, key, padding byte, with FINGERPRINT)
ALL_VECTORS = {
    "2.1-request": (SAMPLE_REQUEST, SHORT_TERM_KEY, b" ", True),
    "2.2-ipv4-response": (SAMPLE_IPV4_RESPONSE, SHORT_TERM_KEY, b" ", True),
    "2.3-ipv6-response": (SAMPLE_IPV6_RESPONSE, SHORT_TERM_KEY, b" ", True),
    "2.4-long-term-request": (SAMPLE_REQUEST_LONG_TERM_AUTH, LONG_TERM_KEY, b"\x00", False),
}


def test_vector_lengths_match_their_headers():
    # A transcription slip (a missing or extra word) would show here first.
    for name, (vector, *_rest) in ALL_VECTORS.items():
        assert len(vector) == 20 + int.from_bytes(vector[2:4], "big"), name
    assert [len(v) for v, *_ in ALL_VECTORS.values()] == [108, 80, 92, 116]


def test_long_term_key_is_md5_of_username_realm_password():
    expected = hashlib.md5("マトリックス:example.org:TheMatrIX".encode()).digest()
    assert LONG_TERM_USERNAME == "マトリックス"
    assert LONG_TERM_KEY == expected
    assert len(LONG_TERM_KEY) == 16


# --- 2.1 ---------------------------------------------------------------------------------------


def test_sample_request_decodes_every_attribute():
    message = stun.decode(SAMPLE_REQUEST)
    assert message.method == stun.Method.BINDING
    assert message.cls == stun.Class.REQUEST
    assert message.transaction_id == TRANSACTION_ID_21_23
    assert [name for name, _ in message.attributes] == [
        "SOFTWARE",
        "PRIORITY",
        "ICE-CONTROLLED",
        "USERNAME",
        "MESSAGE-INTEGRITY",
        "FINGERPRINT",
    ]
    assert message.get("SOFTWARE") == "STUN test client"
    assert message.get("PRIORITY") == 0x6E0001FF
    assert message.get("ICE-CONTROLLED") == 0x932FF9B151263B36
    assert message.get("USERNAME") == "evtj:h6vY"
    assert message.get("MESSAGE-INTEGRITY") == bytes.fromhex("9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2")
    assert message.get("FINGERPRINT") == 0xE57A3BCF


# --- 2.2 ---------------------------------------------------------------------------------------


def test_sample_ipv4_response_decodes_every_attribute():
    message = stun.decode(SAMPLE_IPV4_RESPONSE)
    assert message.method == stun.Method.BINDING
    assert message.cls == stun.Class.SUCCESS
    assert message.transaction_id == TRANSACTION_ID_21_23
    assert [name for name, _ in message.attributes] == [
        "SOFTWARE",
        "XOR-MAPPED-ADDRESS",
        "MESSAGE-INTEGRITY",
        "FINGERPRINT",
    ]
    assert message.get("SOFTWARE") == "test vector"
    assert message.get("XOR-MAPPED-ADDRESS") == ("192.0.2.1", 32853)
    assert message.get("MESSAGE-INTEGRITY") == bytes.fromhex("2b91f599fd9e90c38c7489f92af9ba53f06be7d7")
    assert message.get("FINGERPRINT") == 0xC07D4C96


# --- 2.3 ---------------------------------------------------------------------------------------


def test_sample_ipv6_response_decodes_every_attribute():
    message = stun.decode(SAMPLE_IPV6_RESPONSE)
    assert message.method == stun.Method.BINDING
    assert message.cls == stun.Class.SUCCESS
    assert message.transaction_id == TRANSACTION_ID_21_23
    assert [name for name, _ in message.attributes] == [
        "SOFTWARE",
        "XOR-MAPPED-ADDRESS",
        "MESSAGE-INTEGRITY",
        "FINGERPRINT",
    ]
    assert message.get("SOFTWARE") == "test vector"
    assert message.get("XOR-MAPPED-ADDRESS") == ("2001:db8:1234:5678:11:2233:4455:6677", 32853)
    assert message.get("MESSAGE-INTEGRITY") == bytes.fromhex("a382954e4be67bf11784c97c8292c275bfe3ed41")
    assert message.get("FINGERPRINT") == 0xC8FB0B4C


# --- 2.4 ---------------------------------------------------------------------------------------


def test_sample_long_term_request_decodes_every_attribute():
    message = stun.decode(SAMPLE_REQUEST_LONG_TERM_AUTH)
    assert message.method == stun.Method.BINDING
    assert message.cls == stun.Class.REQUEST
    assert message.transaction_id == TRANSACTION_ID_24
    assert [name for name, _ in message.attributes] == [
        "USERNAME",
        "NONCE",
        "REALM",
        "MESSAGE-INTEGRITY",
    ]
    assert message.get("USERNAME") == LONG_TERM_USERNAME
    assert message.get("USERNAME").encode() == bytes.fromhex("e3839ee38388e383aae38383e382afe382b9")
    assert message.get("NONCE") == LONG_TERM_NONCE
    assert message.get("REALM") == LONG_TERM_REALM
    assert message.get("MESSAGE-INTEGRITY") == bytes.fromhex("f67024656dd64a3e02b8e0712e85c9a28ca89666")
    assert "FINGERPRINT" not in message


# --- all four: integrity, re-encoding ----------------------------------------------------------


@pytest.mark.parametrize("name", ALL_VECTORS)
def test_integrity_verifies_with_the_right_key(name):
    vector, key, _padding, _fingerprint = ALL_VECTORS[name]
    assert stun.decode(vector).verify_integrity(key) is True


@pytest.mark.parametrize("name", ALL_VECTORS)
@pytest.mark.parametrize("wrong_key", WRONG_KEYS, ids=["empty", "one-char-off", "md5-other"])
def test_integrity_fails_with_a_wrong_key(name, wrong_key):
    vector, key, _padding, _fingerprint = ALL_VECTORS[name]
    assert wrong_key != key
    assert stun.decode(vector).verify_integrity(wrong_key) is False


def test_short_term_and_long_term_keys_are_not_interchangeable():
    assert stun.decode(SAMPLE_REQUEST).verify_integrity(LONG_TERM_KEY) is False
    assert stun.decode(SAMPLE_REQUEST_LONG_TERM_AUTH).verify_integrity(SHORT_TERM_KEY) is False


@pytest.mark.parametrize("name", ALL_VECTORS)
def test_integrity_fails_when_a_signed_byte_changes(name):
    vector, key, _padding, _fingerprint = ALL_VECTORS[name]
    # Flip a bit in the last byte of the transaction id: covered by the HMAC, and (for vectors
    # with FINGERPRINT) re-fingerprinted so that decoding still succeeds.
    tampered = bytearray(vector)
    tampered[19] ^= 0x01
    message = stun.decode(vector)
    if "FINGERPRINT" in message:
        offset = len(tampered) - 8
        crc = stun._fingerprint(bytes(tampered[:offset]))
        tampered[offset + 4 :] = crc.to_bytes(4, "big")
    assert stun.decode(bytes(tampered)).verify_integrity(key) is False


@pytest.mark.parametrize("name", ALL_VECTORS)
def test_reencodes_byte_for_byte(name):
    vector, key, padding, fingerprint = ALL_VECTORS[name]
    message = stun.decode(vector)
    assert message.encode(key, fingerprint=fingerprint, padding=padding) == vector


@pytest.mark.parametrize("name", ALL_VECTORS)
def test_reencodes_byte_for_byte_from_a_freshly_built_message(name):
    """Build the message from values alone (no decoded state) and get the RFC bytes back."""
    vector, key, padding, fingerprint = ALL_VECTORS[name]
    decoded = stun.decode(vector)
    fresh = stun.Message(decoded.method, decoded.cls, decoded.transaction_id)
    for attr, value in decoded.attributes:
        if attr not in ("MESSAGE-INTEGRITY", "FINGERPRINT"):
            fresh.add(attr, value)
    assert fresh.encode(key, fingerprint=fingerprint, padding=padding) == vector


def test_sample_request_mac_is_hmac_sha1_over_the_adjusted_header():
    # Independent of the codec: the RFC's HMAC covers everything before MESSAGE-INTEGRITY with the
    # length field counting up to and including MESSAGE-INTEGRITY (0x58 - 8 = 0x50).
    mi_offset = len(SAMPLE_REQUEST) - 8 - 24
    signed = SAMPLE_REQUEST[:2] + (0x50).to_bytes(2, "big") + SAMPLE_REQUEST[4:mi_offset]
    mac = hmac.new(SHORT_TERM_KEY, signed, hashlib.sha1).digest()
    assert SAMPLE_REQUEST[mi_offset + 4 : mi_offset + 24] == mac


@pytest.mark.parametrize("name", ["2.1-request", "2.2-ipv4-response", "2.3-ipv6-response"])
def test_fingerprint_bit_flip_is_a_parse_error(name):
    vector = bytearray(ALL_VECTORS[name][0])
    vector[-1] ^= 0x80
    with pytest.raises(stun.StunParseError, match="FINGERPRINT"):
        stun.decode(bytes(vector))


@pytest.mark.parametrize("name", ["2.1-request", "2.2-ipv4-response", "2.3-ipv6-response"])
def test_body_bit_flip_breaks_the_fingerprint(name):
    vector = bytearray(ALL_VECTORS[name][0])
    vector[24] ^= 0x01  # inside the first attribute's value (SOFTWARE text)
    with pytest.raises(stun.StunParseError, match="FINGERPRINT"):
        stun.decode(bytes(vector))
