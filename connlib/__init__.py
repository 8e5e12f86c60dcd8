"""A Python re-creation of Firezone connlib's TURN relay handling.

The protocol objects (``stun``, ``backoff``, ``allocation``, ``node``) are sans-IO: bytes and
``now`` in, datagrams and events out. Only ``driver`` owns sockets and a clock.
"""
