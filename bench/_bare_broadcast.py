"""The peer of ``bench.portal_presence``: a bare websockets server that only broadcasts.

Run as its own process (``python -m bench._bare_broadcast --debounce 1.0``); it prints one JSON
line ``{"url": …}`` and serves until terminated. Clients connect as they do to the portal (same
URL and headers, which websockets keeps per connection, unread here). A client's first message is the frame it wants
back (the bench passes the ``relays_presence`` text the portal sent it, so both servers write
the very same frames); the server answers ``ok``. When the trigger socket (path ``/trigger``)
closes, the server waits the debounce, as the portal does, and then writes every client its frame
with websockets' own :func:`~websockets.asyncio.server.broadcast`: no framework, no per-client
work but the write. What the portal costs beyond that is its own.

Not a benchmark itself: the leading underscore keeps ``python -m bench`` from running it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from websockets.asyncio.server import ServerConnection, broadcast, serve


async def serve_forever(debounce: float) -> None:
    frames: dict[ServerConnection, str] = {}
    loop = asyncio.get_running_loop()

    def fan_out() -> None:
        for ws, frame in list(frames.items()):
            broadcast((ws,), frame)

    async def handle(ws: ServerConnection) -> None:
        assert ws.request is not None
        if ws.request.path == "/trigger":
            await ws.wait_closed()
            loop.call_later(debounce, fan_out)
            return
        frames[ws] = str(await ws.recv())
        await ws.send("ok")
        try:
            await ws.wait_closed()
        finally:
            del frames[ws]

    async with serve(handle, "127.0.0.1", 0, compression=None, ping_interval=None) as server:
        port = server.sockets[0].getsockname()[1]
        print(json.dumps({"url": f"ws://127.0.0.1:{port}"}), flush=True)
        await asyncio.Future()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._bare_broadcast", description=__doc__.splitlines()[0])
    parser.add_argument("--debounce", type=float, default=1.0, help="seconds from the trigger's close to the writes")
    args = parser.parse_args(argv)
    asyncio.run(serve_forever(args.debounce))
    return 0


if __name__ == "__main__":
    sys.exit(main())
