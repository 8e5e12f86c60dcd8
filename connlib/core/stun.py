"""STUN/TURN message codec (RFC 8489, RFC 8656) and ChannelData framing (RFC 8656 §12).

One table, ``ATTRIBUTES``, maps each attribute type to its name and pack/unpack functions; the
``Message`` class only knows the header and an ordered list of ``(name, value)`` pairs. Attributes
the table does not know are kept as ``(type_number, raw_bytes)``.

Decoding any byte string either returns a ``Message`` or raises ``StunParseError``; nothing else.
"""

from __future__ import annotations

import binascii
import enum
import hmac
import ipaddress
import random
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .addr import Address
from .credentials import hmac_sha1 as _hmac_sha1

# ``typing`` only for the type checker: its import is ~4 % of ``python -m connlib allocate``'s start-up
# (mypy treats a module's own ``TYPE_CHECKING`` like ``typing.TYPE_CHECKING``).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAGIC_COOKIE = 0x2112A442
HEADER_LENGTH = 20
FINGERPRINT_XOR = 0x5354554E
CHANNEL_MIN, CHANNEL_MAX = 0x4000, 0x4FFF


class StunParseError(ValueError):
    """The bytes are not a well-formed STUN message or ChannelData frame."""


class Method(enum.IntEnum):
    BINDING = 0x001
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009


class Class(enum.IntEnum):
    REQUEST = 0x000
    INDICATION = 0x010
    SUCCESS = 0x100
    ERROR = 0x110


# --- attribute value codecs: unpack(data, start, end, tid) -> value, pack(value, tid) -> bytes ------
#
# ``unpack`` reads the value at ``data[start:end]`` in place: the decoder passes offsets rather
# than a slice, so that only the codecs that keep bytes (or text) pay for a copy.


_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)
# family, port, then the four octets of an IPv4 address: one call instead of eight indexings.
_ADDRESS_V4 = struct.Struct("!xBH4B")
_ADDRESS_HEADER = struct.Struct("!xBH")
_U16X8 = struct.Struct("!8H")
# Zero groups of an IPv6 address in "%x:..." form, with the colons that "::" replaces; a single zero
# group never matches (RFC 5952 §4.2.2, as ``ipaddress`` does).
_ZERO_RUN = re.compile(r"(?:^|:)0(?::0)+(?::|$)")
_V4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"


def _format_ipv6(raw: bytes) -> str:
    """``str(ipaddress.IPv6Address(raw))`` at a quarter of the cost: the longest (first) run of at
    least two zero groups becomes "::"."""
    if raw[:12] == _V4_MAPPED_PREFIX:
        return str(ipaddress.IPv6Address(raw))  # Python 3.13 writes these with a dotted quad: follow it
    text = "{:x}:{:x}:{:x}:{:x}:{:x}:{:x}:{:x}:{:x}".format(*_U16X8.unpack(raw))
    best, zeros = None, 0
    for run in _ZERO_RUN.finditer(text):
        count = run.group().count("0")  # each zero group is one "0"; the colons vary with the place
        if count > zeros:
            best, zeros = run, count
    if best is None:
        return text
    return f"{text[: best.start()]}::{text[best.end() :]}"


def _unpack_address(data: bytes, start: int, end: int, tid: bytes, xor: bool = False) -> Address:
    size = end - start
    if size < 4:
        raise StunParseError("address attribute too short")
    family = data[start + 1]
    if family == 0x01:
        if size != 8:
            raise StunParseError("IPv4 address attribute must be 8 bytes")
        # Dotted quad by hand: an ipaddress object per address costs ~5x more (hot on every BINDING).
        _, port, a, b, c, d = _ADDRESS_V4.unpack_from(data, start)
        if xor:
            return f"{a ^ 0x21}.{b ^ 0x12}.{c ^ 0xA4}.{d ^ 0x42}", port ^ (MAGIC_COOKIE >> 16)
        return f"{a}.{b}.{c}.{d}", port
    if family == 0x02:
        if size != 20:
            raise StunParseError("IPv6 address attribute must be 20 bytes")
        _, port = _ADDRESS_HEADER.unpack_from(data, start)
        raw = data[start + 4 : end]
        if xor:
            port ^= MAGIC_COOKIE >> 16
            key = int.from_bytes(_COOKIE_BYTES + tid, "big")
            raw = (int.from_bytes(raw, "big") ^ key).to_bytes(16, "big")
        return _format_ipv6(raw), port
    raise StunParseError(f"unknown address family {family:#x}")


# Host text → (family, packed): a session names a handful of addresses (its relays, its peer) in
# every request it signs, and ``ipaddress`` parses a dotted quad at ~6 µs. Bounded like the HMAC
# states; a host ``ipaddress`` rejects raises ValueError as before and is not kept.
_PACKED_HOSTS: dict[str, tuple[int, bytes]] = {}
_MAX_PACKED_HOSTS = 256


def _packed_host(host: str) -> tuple[int, bytes]:
    packed = _PACKED_HOSTS.get(host)
    if packed is None:
        ip = ipaddress.ip_address(host)
        if len(_PACKED_HOSTS) >= _MAX_PACKED_HOSTS:
            _PACKED_HOSTS.clear()
        packed = _PACKED_HOSTS[host] = (0x01 if ip.version == 4 else 0x02, ip.packed)
    return packed


def _pack_address(value: Address, tid: bytes, xor: bool = False) -> bytes:
    host, port = value
    family, raw = _packed_host(host)
    if xor:
        port ^= MAGIC_COOKIE >> 16
        if family == 0x01:
            raw = (int.from_bytes(raw, "big") ^ MAGIC_COOKIE).to_bytes(4, "big")
        else:
            raw = bytes(a ^ b for a, b in zip(raw, _COOKIE_BYTES + tid, strict=True))
    return struct.pack("!xBH", family, port) + raw


def _unpack_xor_address(data: bytes, start: int, end: int, tid: bytes) -> Address:
    return _unpack_address(data, start, end, tid, xor=True)


def _pack_xor_address(value: Address, tid: bytes) -> bytes:
    return _pack_address(value, tid, xor=True)


def _unpack_text(data: bytes, start: int, end: int, tid: bytes) -> str:
    # Text that is not UTF-8 raises UnicodeDecodeError, which ``decode`` turns into its one error (a
    # try here costs a frame per attribute: ``decode`` inlines this function).
    return data[start:end].decode()


def _pack_text(value: str, tid: bytes) -> bytes:
    return value.encode("utf-8")


def _unpack_bytes(data: bytes, start: int, end: int, tid: bytes) -> bytes:
    return data[start:end]


def _pack_bytes(value: bytes, tid: bytes) -> bytes:
    return bytes(value)


def _fixed(fmt: str) -> tuple[Callable[[bytes, int, int, bytes], Any], Callable[[Any, bytes], bytes]]:
    codec = struct.Struct(fmt)
    size = codec.size
    unpack_from = codec.unpack_from

    def unpack(data: bytes, start: int, end: int, tid: bytes) -> int:
        if end - start != size:
            raise StunParseError(f"attribute must be {size} bytes, got {end - start}")
        return unpack_from(data, start)[0]

    def pack(value: int, tid: bytes) -> bytes:
        return codec.pack(value)

    return unpack, pack


def _unpack_error_code(data: bytes, start: int, end: int, tid: bytes) -> tuple[int, str]:
    if end - start < 4:
        raise StunParseError("ERROR-CODE too short")
    klass, number = data[start + 2] & 0x07, data[start + 3]
    if not 3 <= klass <= 6 or number > 99:
        raise StunParseError("ERROR-CODE out of range")
    return klass * 100 + number, data[start + 4 : end].decode()  # see _unpack_text


def _pack_error_code(value: tuple[int, str], tid: bytes) -> bytes:
    code, reason = value
    return struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode("utf-8")


def _unpack_first_byte(data: bytes, start: int, end: int, tid: bytes) -> int:
    """REQUESTED-TRANSPORT, ADDITIONAL-ADDRESS-FAMILY: one byte then three RFFU bytes."""
    if end - start != 4:
        raise StunParseError("attribute must be 4 bytes")
    return data[start]


def _pack_first_byte(value: int, tid: bytes) -> bytes:
    return struct.pack("!B3x", value)


def _unpack_channel_number(data: bytes, start: int, end: int, tid: bytes) -> int:
    if end - start != 4:
        raise StunParseError("CHANNEL-NUMBER must be 4 bytes")
    return struct.unpack_from("!H2x", data, start)[0]


def _pack_channel_number(value: int, tid: bytes) -> bytes:
    return struct.pack("!H2x", value)


def _unpack_empty(data: bytes, start: int, end: int, tid: bytes) -> None:
    if end != start:
        raise StunParseError("flag attribute must be empty")
    return None


def _pack_empty(value: None, tid: bytes) -> bytes:
    return b""


def _unpack_unknown_attributes(data: bytes, start: int, end: int, tid: bytes) -> list[int]:
    if (end - start) % 2:
        raise StunParseError("UNKNOWN-ATTRIBUTES length must be even")
    return list(struct.unpack_from(f"!{(end - start) // 2}H", data, start))


def _pack_unknown_attributes(value: list[int], tid: bytes) -> bytes:
    return struct.pack(f"!{len(value)}H", *value)


_U32 = _fixed("!I")
_U64 = _fixed("!Q")
_ADDRESS = (_unpack_address, _pack_address)
_XOR_ADDRESS = (_unpack_xor_address, _pack_xor_address)
_TEXT = (_unpack_text, _pack_text)
_BYTES = (_unpack_bytes, _pack_bytes)


@dataclass(frozen=True)
class AttributeCodec:
    type: int
    name: str
    unpack: Callable[[bytes, int, int, bytes], Any]
    pack: Callable[[Any, bytes], bytes]


def _table(*rows: tuple[int, str, tuple]) -> dict[int, AttributeCodec]:
    return {t: AttributeCodec(t, name, *codec) for t, name, codec in rows}


ATTRIBUTES: dict[int, AttributeCodec] = _table(
    (0x0001, "MAPPED-ADDRESS", _ADDRESS),
    (0x0006, "USERNAME", _TEXT),
    (0x0008, "MESSAGE-INTEGRITY", _BYTES),
    (0x0009, "ERROR-CODE", (_unpack_error_code, _pack_error_code)),
    (0x000A, "UNKNOWN-ATTRIBUTES", (_unpack_unknown_attributes, _pack_unknown_attributes)),
    (0x000C, "CHANNEL-NUMBER", (_unpack_channel_number, _pack_channel_number)),
    (0x000D, "LIFETIME", _U32),
    (0x0012, "XOR-PEER-ADDRESS", _XOR_ADDRESS),
    (0x0013, "DATA", _BYTES),
    (0x0014, "REALM", _TEXT),
    (0x0015, "NONCE", _TEXT),
    (0x0016, "XOR-RELAYED-ADDRESS", _XOR_ADDRESS),
    (0x0017, "REQUESTED-ADDRESS-FAMILY", (_unpack_first_byte, _pack_first_byte)),
    (0x0019, "REQUESTED-TRANSPORT", (_unpack_first_byte, _pack_first_byte)),
    (0x0020, "XOR-MAPPED-ADDRESS", _XOR_ADDRESS),
    (0x0024, "PRIORITY", _U32),
    (0x0025, "USE-CANDIDATE", (_unpack_empty, _pack_empty)),
    (0x8000, "ADDITIONAL-ADDRESS-FAMILY", (_unpack_first_byte, _pack_first_byte)),
    (0x8022, "SOFTWARE", _TEXT),
    (0x8028, "FINGERPRINT", _U32),
    (0x8029, "ICE-CONTROLLED", _U64),
    (0x802A, "ICE-CONTROLLING", _U64),
)
ATTRIBUTE_TYPES: dict[str, int] = {codec.name: t for t, codec in ATTRIBUTES.items()}
# Computed by ``Message.encode``; never carried in ``Message.attributes`` when encoding.
_INTEGRITY = 0x0008
_FINGERPRINT = 0x8028
# The decoder's view of the table: type -> (name, unpack), one lookup per attribute; no unpack for
# the two attributes that end the signed part (``_decode_trailer``).
_DECODERS: dict[int, tuple[str, Callable[[bytes, int, int, bytes], Any] | None]] = {
    t: (codec.name, None if t in (_INTEGRITY, _FINGERPRINT) else codec.unpack) for t, codec in ATTRIBUTES.items()
}

# The encoder's view: name -> (type, pack), one lookup per attribute.
_ENCODERS: dict[str, tuple[int, Callable[[Any, bytes], bytes]]] = {
    codec.name: (t, codec.pack) for t, codec in ATTRIBUTES.items()
}

ADDRESS_FAMILY_IPV4 = 0x01
ADDRESS_FAMILY_IPV6 = 0x02
TRANSPORT_UDP = 17


def new_transaction_id(rng: random.Random) -> bytes:
    """96 bits from the caller's rng: cores are seeded, so a run can be replayed byte for byte."""
    return rng.randbytes(12)


def _pad(length: int) -> int:
    return (4 - length % 4) % 4


def _fingerprint(data: bytes | bytearray) -> int:
    return (binascii.crc32(data) ^ FINGERPRINT_XOR) & 0xFFFFFFFF


_LENGTH = struct.Struct("!H")  # the header's length field, set in place by ``encode``
_INTEGRITY_HEADER = struct.pack("!HH", _INTEGRITY, 20)


@dataclass(slots=True)
class Message:
    method: Method | int
    cls: Class
    transaction_id: bytes
    attributes: list[tuple[str | int, Any]] = field(default_factory=list)
    # Set by ``decode``: the datagram and the offset of MESSAGE-INTEGRITY, for verification.
    raw: bytes | None = field(default=None, repr=False, compare=False)
    integrity_offset: int | None = field(default=None, repr=False, compare=False)

    # -- attribute access ----------------------------------------------------------------------
    def add(self, name: str | int, value: Any = None) -> Message:
        self.attributes.append((name, value))
        return self

    def get(self, name: str | int, default: Any = None) -> Any:
        for key, value in self.attributes:
            if key == name:
                return value
        return default

    def get_all(self, name: str | int) -> list[Any]:
        return [value for key, value in self.attributes if key == name]

    def __contains__(self, name: object) -> bool:
        return any(key == name for key, _ in self.attributes)

    def remove(self, *names: str | int) -> Message:
        self.attributes = [(k, v) for k, v in self.attributes if k not in names]
        return self

    def __iter__(self) -> Iterator[tuple[str | int, Any]]:
        return iter(self.attributes)

    @property
    def method_name(self) -> str:
        """``ALLOCATE``…, or the number in hex for a method the codec does not know (logs)."""
        return self.method.name if isinstance(self.method, Method) else f"{self.method:#05x}"

    @property
    def error_code(self) -> int | None:
        for key, value in self.attributes:  # not ``get``: read on every response, one call less
            if key == "ERROR-CODE":
                return value[0]
        return None

    # -- encoding ------------------------------------------------------------------------------
    def encode(self, integrity_key: bytes | None = None, fingerprint: bool = False, padding: bytes = b"\x00") -> bytes:
        """Encode; MESSAGE-INTEGRITY and FINGERPRINT are computed, never taken from ``attributes``.

        ``padding`` is the byte used to pad attribute values (RFC 5769's vectors use 0x20).
        """
        tid = self.transaction_id
        if len(tid) != 12:
            raise ValueError("transaction id must be 12 bytes")
        # One buffer: the header first (its length field set as each trailer is signed), then the
        # attributes; the codec table is read once per attribute.
        out = bytearray(HEADER_LENGTH)
        pad_byte = padding[:1]
        for name, value in self.attributes:
            if isinstance(name, int):
                attr_type, data = name, bytes(value)
            else:
                attr_type, pack = _ENCODERS[name]  # KeyError for an unknown name, as the table's
                data = pack(value, tid)
            if attr_type == _INTEGRITY or attr_type == _FINGERPRINT:
                continue
            size = len(data)
            out += _ATTRIBUTE_HEADER.pack(attr_type, size)
            out += data
            if size & 3:
                out += pad_byte * (4 - (size & 3))
        _HEADER.pack_into(out, 0, self._message_type(), len(out) - HEADER_LENGTH, MAGIC_COOKIE)
        out[8:HEADER_LENGTH] = tid
        if integrity_key is not None:
            _LENGTH.pack_into(out, 2, len(out) - HEADER_LENGTH + 24)
            mac = _hmac_sha1(integrity_key, out)
            out += _INTEGRITY_HEADER
            out += mac
        if fingerprint:
            _LENGTH.pack_into(out, 2, len(out) - HEADER_LENGTH + 8)
            out += _HEADER.pack(_FINGERPRINT, 4, _fingerprint(out))  # type, length, CRC: the same shape
        return bytes(out)

    def _message_type(self) -> int:
        m = int(self.method)
        if not 0 <= m <= 0xFFF:
            raise ValueError("method out of range")
        return (m & 0x0F) | ((m & 0x70) << 1) | ((m & 0xF80) << 2) | int(self.cls)

    # -- integrity ------------------------------------------------------------------------------
    def verify_integrity(self, key: bytes) -> bool:
        """Check a decoded message's MESSAGE-INTEGRITY against ``key`` (False if it has none)."""
        offset, raw = self.integrity_offset, self.raw
        if offset is None or raw is None:
            return False
        end = offset + 24
        if end == len(raw):
            signed = raw[:offset]  # MI is last: the header's length already covers it, as signed
        else:  # the length the signer wrote: up to the end of MESSAGE-INTEGRITY (RFC 8489 §14.5)
            signed = raw[:2] + (end - HEADER_LENGTH).to_bytes(2, "big") + raw[4:offset]
        return hmac.compare_digest(_hmac_sha1(key, signed), raw[offset + 4 : end])


# Nothing we exchange comes near this (an ALLOCATE success is ~150 bytes, an ICE check ~100);
# RFC 8489 §6.1 keeps STUN over UDP under the path MTU. A bigger datagram is rejected before any
# parsing: 64 KiB of junk attributes cost ~20 ms to walk.
MAX_MESSAGE_BYTES = 4096


def decode(data: bytes | bytearray | memoryview) -> Message:
    """Parse one STUN message occupying all of ``data``. Raises ``StunParseError`` only."""
    size = len(data)
    if size > MAX_MESSAGE_BYTES:
        raise StunParseError(f"longer than {MAX_MESSAGE_BYTES} bytes: {size}")
    if type(data) is not bytes:
        data = bytes(data)
    # One function, no helper per message: at ~100 bytes a message, calls are a good part of the cost.
    try:
        if size < HEADER_LENGTH:
            raise StunParseError("shorter than a STUN header")
        msg_type, length, cookie = _HEADER.unpack_from(data)
        if msg_type & 0xC000:
            raise StunParseError("first two bits must be zero")
        if cookie != MAGIC_COOKIE:
            raise StunParseError("bad magic cookie")
        if length % 4 or HEADER_LENGTH + length != size:
            raise StunParseError("length field does not match the datagram")
        tid = data[8:20]
        kind = _MESSAGE_TYPES.get(msg_type)
        if kind is None:  # a method the codec does not know: kept as its number
            number = (msg_type & 0x000F) | ((msg_type & 0x00E0) >> 1) | ((msg_type & 0x3E00) >> 2)
            kind = number, _CLASSES[msg_type & 0x0110]
        attributes: list[tuple[str | int, Any]] = []
        message = Message(kind[0], kind[1], tid, attributes, data)
        pos = HEADER_LENGTH
        after_integrity = False
        # ``size`` and ``pos`` are multiples of 4 (checked above; every step rounds up), so while
        # ``pos < size`` a whole 4-byte attribute header is there.
        while pos < size:
            attr_type, attr_len = _ATTRIBUTE_HEADER.unpack_from(data, pos)
            start = pos + 4
            end = start + attr_len
            next_pos = (end + 3) & ~3
            if next_pos > size:
                if end > size:
                    raise StunParseError("attribute runs past the end of the message")
                raise StunParseError("attribute padding runs past the end of the message")
            decoder = _DECODERS.get(attr_type)
            if decoder is None:
                if not after_integrity:
                    attributes.append((attr_type, data[start:end]))
            else:
                name, unpack = decoder
                if unpack is _unpack_text:
                    # Inline: text attributes are the commonest; a bad one is caught below.
                    if not after_integrity:
                        attributes.append((name, data[start:end].decode()))
                elif unpack is not None:
                    if not after_integrity:
                        attributes.append((name, unpack(data, start, end, tid)))
                elif attr_type == _FINGERPRINT:
                    if next_pos != size:
                        raise StunParseError("FINGERPRINT must be the last attribute")
                    if attr_len != 4:
                        raise StunParseError("FINGERPRINT must be 4 bytes")
                    received = _U32_CODEC.unpack_from(data, start)[0]
                    # FINGERPRINT is last, so the header's length already covers it: CRC the bytes as
                    # they are (no copy of the header with another length).
                    if received != binascii.crc32(data[:pos]) ^ FINGERPRINT_XOR:
                        raise StunParseError("FINGERPRINT mismatch")
                    attributes.append((name, received))
                elif not after_integrity:  # the first MESSAGE-INTEGRITY; RFC 8489 §14.5 ignores the rest
                    if attr_len != 20:
                        raise StunParseError("MESSAGE-INTEGRITY must be 20 bytes")
                    message.integrity_offset = pos
                    attributes.append((name, data[start:end]))
                    after_integrity = True
            pos = next_pos
        return message
    except StunParseError:
        raise
    except UnicodeDecodeError as exc:  # text attributes (``_unpack_text``) and ERROR-CODE's reason
        raise StunParseError("text attribute is not UTF-8") from exc
    except (ValueError, struct.error, TypeError, IndexError) as exc:  # belt and braces
        raise StunParseError(f"malformed STUN message: {exc}") from exc


_HEADER = struct.Struct("!HHI")  # type, length, cookie (the transaction id follows)
_ATTRIBUTE_HEADER = struct.Struct("!HH")
_U32_CODEC = struct.Struct("!I")
# Enum lookups by value: calling the enum class per message costs more than the rest of a header.
_CLASSES: dict[int, Class] = {int(c): c for c in Class}
# Message type (the method's bits interleaved with the class's) -> (method, class), known methods.
_MESSAGE_TYPES: dict[int, tuple[Method, Class]] = {
    Message(m, c, bytes(12))._message_type(): (m, c) for m in Method for c in Class
}


def is_stun(data: bytes) -> bool:
    """First byte 0..3 ⇒ STUN; 0x40..0x4F ⇒ ChannelData (RFC 7983 demultiplexing)."""
    return len(data) >= HEADER_LENGTH and data[0] < 4


def is_channel_data(data: bytes) -> bool:
    return len(data) >= 4 and 0x40 <= data[0] <= 0x4F


# --- ChannelData -----------------------------------------------------------------------------
_CHANNEL_HEADER = struct.Struct("!HH")  # channel number, payload length


def encode_channel_data(channel: int, payload: bytes) -> bytes:
    if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
        raise ValueError(f"channel number {channel:#x} outside 0x4000-0x4FFF")
    if len(payload) > 0xFFFF:
        raise ValueError("payload too long for ChannelData")
    return _CHANNEL_HEADER.pack(channel, len(payload)) + payload


def decode_channel_data(data: bytes | bytearray | memoryview) -> tuple[int, bytes]:
    """Return ``(channel, payload)``. Up to 3 bytes of padding after the payload are tolerated."""
    if len(data) < 4:
        raise StunParseError("ChannelData shorter than its header")
    channel, length = _CHANNEL_HEADER.unpack_from(data)  # in place: no slice for the header
    if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
        raise StunParseError(f"channel number {channel:#x} outside 0x4000-0x4FFF")
    extra = len(data) - 4 - length
    if extra and extra != _pad(length):
        raise StunParseError("ChannelData length does not match the datagram")
    return channel, bytes(data[4 : 4 + length])
