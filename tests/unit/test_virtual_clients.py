"""``connlib run --clients N``'s pure parts: the ids, seeds and status file each virtual client gets,
and the parser's bounds."""

from __future__ import annotations

import asyncio
import json

import pytest

from connlib.app.cli import build_parser, main
from connlib.app.errors import EXIT_USAGE
from connlib.app.peer import PeerConfig
from connlib.app.virtual import SEED_SPACE, BufferedLines, client_configs, virtual_ids

BASE = PeerConfig("client", "ws://portal", "t", "vc", name="load", connect_to="gw", seed=7, status_file="/s")


def test_one_client_keeps_the_base_identity():
    assert virtual_ids("vc", 1) == ["vc"]
    assert client_configs(BASE, 1) == [BASE]


def test_each_client_gets_its_own_id_name_seed_and_public_key():
    configs = client_configs(BASE, 3)
    assert [c.peer_id for c in configs] == ["vc-1", "vc-2", "vc-3"]
    assert [c.name for c in configs] == ["load-1", "load-2", "load-3"]
    assert [c.seed for c in configs] == [8, 9, 10]
    # The portal salts relay credentials with the public key: one per client, stable per id.
    assert len({c.public_key for c in configs}) == 3
    assert all(c.connect_to == "gw" and c.portal == BASE.portal for c in configs)


def test_only_the_first_client_keeps_the_status_file():
    assert [c.status_file for c in client_configs(BASE, 3)] == ["/s", None, None]


def test_seeds_wrap_within_64_bits():
    configs = client_configs(PeerConfig("client", "p", "t", "vc", seed=SEED_SPACE - 1), 2)
    assert [c.seed for c in configs] == [0, 1]


def test_no_name_stays_no_name():
    configs = client_configs(PeerConfig("client", "p", "t", "vc"), 2)
    assert [c.name for c in configs] == [None, None]


def test_zero_clients_is_refused():
    with pytest.raises(ValueError):
        virtual_ids("vc", 0)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--portal", "ws://p", "--token", "t", "--clients", "0"])


def test_the_cli_defaults_to_one_client():
    args = build_parser().parse_args(["run", "--portal", "ws://p", "--token", "t"])
    assert args.clients == 1


def test_a_gateway_cannot_be_virtualised():
    argv = ["run", "--role", "gateway", "--portal", "ws://127.0.0.1:9", "--token", "t", "--clients", "2"]
    assert main(argv) == EXIT_USAGE


async def test_lines_are_flushed_once_per_loop_turn():
    written: list[str] = []
    flushes: list[int] = []
    sink = BufferedLines(written.append, lambda: flushes.append(len(written)))
    sink({"id": "vc-1", "event": "stream"})
    sink({"id": "vc-2", "event": "stream"})
    assert flushes == []  # not yet: the turn is not over
    await asyncio.sleep(0)
    assert flushes == [2] and [json.loads(w) for w in written] == [
        {"id": "vc-1", "event": "stream"},
        {"id": "vc-2", "event": "stream"},
    ]
    assert all(w.endswith("\n") for w in written)
    sink({"id": "vc-3", "event": "gap"})
    await asyncio.sleep(0)
    assert flushes == [2, 3]
