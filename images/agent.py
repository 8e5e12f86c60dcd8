"""Relay container entry point and presence agent.

``agent.py relay`` is what the relay image runs (under tini) at every start:

1. a fresh random secret (32 random bytes, hex) — a restarted container is a relay with a new secret —
   unless the secret was kept (``RELAY_KEEP_SECRET=1``, or ``agent.py keep-secret`` run in the
   container before a restart, once): then a relay that lost every allocation, with credentials
   that look the same (what issue 9's same-secret scenario restarts);
2. ``turnserver.conf`` rendered from ``turnserver.conf.tmpl`` (realm ``firezone``, ``use-auth-secret``,
   ``static-auth-secret`` = the secret, 3478/udp, ``relay-ip`` = the relay's address on the
   relay-to-relay network, …);
3. ``turnserver`` started as a child; once it answers a STUN Binding on 127.0.0.1 the presence agent
   joins the portal's ``relay`` topic with ``{"stamp_secret": secret}`` and heartbeats, reconnecting
   with a capped backoff whenever the portal goes away;
4. SIGTERM/SIGINT: the agent leaves the portal and turnserver is stopped (SIGTERM, then SIGKILL after a
   grace period); exit 0. If turnserver exits on its own, the agent leaves and the container exits
   with a non-zero status: no zombie relay that the portal still believes in.

``agent.py turn-cli COMMAND...`` runs commands on the running turnserver's telnet CLI (127.0.0.1,
the password of this start in ``/run/relay/cli-password``) and prints their answers; exit 1 when
coturn answers "Error" (e.g. ``cc user-quota 1``: coturn 4.6.1 takes quotas at runtime, and answers
new ALLOCATEs over them with 486 while its allocations keep working).

``agent.py presence`` runs only the agent, for a turnserver started elsewhere (process fleets):
``--watch-pid`` ends it when that process is gone.

Configuration comes from the environment (compose file) or flags:

=================  ====================================================================
RELAY_NAME         name sent to the portal (default: the hostname)
PORTAL_URL         ``ws://portal:4000``; empty: no agent (plain coturn with a fresh secret)
PORTAL_TOKEN       token for the portal socket
RELAY_IP           relay-ip; or RELAY_SUBNET (CIDR) to pick this container's address in it;
                   default: the first non-loopback IPv4 address
RELAY_PUBLIC_IP    address announced to the portal (default RELAY_IP)
LISTENING_PORT     3478
MIN_PORT/MAX_PORT  relay port range (49160–49200)
TURN_EXTRA         extra turnserver.conf lines (``;``-separated), e.g. ``verbose``
CLI_PORT           coturn's telnet CLI, on 127.0.0.1 only (5766)
RELAY_KEEP_SECRET  ``1``: every start reuses the secret of the first (default ``0``: a new one)
RELAY_STATE_DIR    where a kept secret survives a restart (``/var/lib/connlib-relay``)
=================  ====================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import secrets
import signal
import socket
import string
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode, urlsplit

# turn_probe.py is a sibling file: Python puts this script's folder on sys.path, in the image
# (/opt/connlib-relays/) as in a checkout (images/). connlib comes from the image's venv.
import turn_probe

from connlib.aio.portal_client import PortalClient

log = logging.getLogger("relay.agent")

HERE = Path(__file__).resolve().parent
DEFAULT_TEMPLATE = HERE / "turnserver.conf.tmpl"
STOP_GRACE_S = 3.0
READY_TIMEOUT_S = 10.0
LEAVE_TIMEOUT_S = 2.0
RECONNECT_MAX_S = 5.0
PORTAL_LISTEN_POLL_S = 0.05
PORTAL_LISTEN_TIMEOUT_S = 1.0


KEPT_SECRET = "kept-secret"
CLI_PASSWORD = "cli-password"
CLI_TIMEOUT_S = 2.0
CLI_PROMPT = b">"


def choose_secret(state_dir: Path, keep: bool) -> tuple[str, bool]:
    """This start's secret and whether it is a kept one. A secret kept for one restart
    (``keep-secret``) is used once; with ``keep`` every start reuses the first one."""
    kept = state_dir / KEPT_SECRET
    try:
        secret = kept.read_text().strip()
    except FileNotFoundError:
        secret = ""
    if secret and not keep:
        kept.unlink()
    if secret:
        return secret, True
    secret = secrets.token_hex(32)
    if keep:
        write_private(kept, secret)
    return secret, False


def write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    path.chmod(0o600)


def keep_secret(run_dir: Path, state_dir: Path) -> int:
    """``agent.py keep-secret``: the running relay's next start reuses its secret (once)."""
    try:
        secret = (run_dir / "secret").read_text().strip()
    except FileNotFoundError:
        print(f"keep-secret: no running relay secret in {run_dir}", file=sys.stderr)
        return 1
    write_private(state_dir / KEPT_SECRET, secret)
    print(f"keep-secret: the next start reuses secret_fingerprint={fingerprint(secret)}")
    return 0


def turn_cli(run_dir: Path, port: int, commands: list[str]) -> int:
    """``agent.py turn-cli``: each command on coturn's telnet CLI, its answer printed; 1 on "Error"."""
    try:
        password = (run_dir / CLI_PASSWORD).read_text().strip()
    except FileNotFoundError:
        print(f"turn-cli: no running relay in {run_dir}", file=sys.stderr)
        return 1
    with socket.create_connection(("127.0.0.1", port), timeout=CLI_TIMEOUT_S) as sock:
        _cli_answer(sock, b"password:")
        sock.sendall(password.encode() + b"\r\n")
        _cli_answer(sock, CLI_PROMPT)
        failed = False
        for command in commands:
            sock.sendall(command.encode() + b"\r\n")
            answer = _cli_answer(sock, CLI_PROMPT).decode(errors="replace")
            print(f"turn-cli: {command}: {' '.join(answer.split())}")
            failed = failed or "Error" in answer
        sock.sendall(b"quit\r\n")
    return 1 if failed else 0


def _cli_answer(sock: socket.socket, until: bytes) -> bytes:
    """What the CLI writes up to and including ``until`` (its prompt, then maybe blanks); TimeoutError
    if it stops short."""
    answer = b""
    while not answer.rstrip().endswith(until):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"the CLI closed the connection after {answer!r}")
        answer += chunk
    return answer


def fingerprint(secret: str) -> str:
    """What the logs show instead of the secret; the same as the portal's ``secret_fingerprint``
    (first 8 hex digits of its SHA-256), so a relay's log and the dashboard can be matched."""
    return hashlib.sha256(secret.encode()).hexdigest()[:8]


def ipv4_addresses() -> list[tuple[str, str]]:
    """``(interface, address/prefix)`` for every IPv4 address of this network namespace."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], check=True, capture_output=True, text=True).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        if "inet" in fields:
            found.append((fields[1], fields[fields.index("inet") + 1]))
    return found


def pick_relay_ip(relay_ip: str | None, relay_subnet: str | None) -> str:
    if relay_ip:
        return relay_ip
    addresses = [(dev, ipaddress.ip_interface(a)) for dev, a in ipv4_addresses()]
    if relay_subnet:
        net = ipaddress.ip_network(relay_subnet, strict=False)
        for _, iface in addresses:
            if iface.ip in net:
                return str(iface.ip)
        raise SystemExit(f"relay: no address in RELAY_SUBNET={relay_subnet} among {[str(i) for _, i in addresses]}")
    for _, iface in addresses:
        if not iface.ip.is_loopback:
            return str(iface.ip)
    raise SystemExit("relay: no non-loopback IPv4 address")


def render_config(template: str, **values: object) -> str:
    values.setdefault("extra", "")
    return string.Template(template).substitute({k: str(v) for k, v in values.items()})


def portal_relay_url(portal_url: str, ipv4: str, port: int, name: str) -> str:
    base = portal_url.rstrip("/")
    if not base.endswith("/relay/websocket"):
        base += "/relay/websocket"
    return f"{base}?{urlencode({'ipv4': ipv4, 'port': port, 'name': name})}"


async def wait_turn_ready(port: int, proc: asyncio.subprocess.Process | None, timeout: float = READY_TIMEOUT_S) -> None:
    """Until turnserver answers a STUN Binding on 127.0.0.1:port (or exits, or the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.returncode is not None:
            raise RuntimeError(f"turnserver exited with {proc.returncode} before it was ready")
        client = turn_probe.TurnClient(("127.0.0.1", port), timeout=0.2)
        try:
            await asyncio.to_thread(client.transact, turn_probe.BINDING, [], False, 1)
            return
        except (turn_probe.ProbeError, OSError):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"turnserver did not answer a STUN Binding on 127.0.0.1:{port} within {timeout}s"
                ) from None
            await asyncio.sleep(0.1)
        finally:
            client.sock.close()


async def portal_listening(url: str, poll: float = PORTAL_LISTEN_POLL_S) -> None:
    """Until the portal's TCP port accepts a connection (closed again at once, before any HTTP: the
    portal's websockets server drops it without a word). In a fresh stack the relays start with the
    portal, whose Python start-up takes longer than the agent's: a first dial before it listens is
    refused, and connlib's PortalClient retries after its reconnect backoff (0.5 s with jitter, then
    1.5x), so the relay came online up to a second after the portal listened. The wait is the
    agent's, not connlib's: the client dials the moment the port is open, with its backoff unchanged
    for every later loss. Runs until the port accepts or the task is cancelled, as the presence loop."""
    parts = urlsplit(url)
    host, port = parts.hostname or "localhost", parts.port or (443 if parts.scheme == "wss" else 80)
    waited = time.monotonic()
    while True:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), PORTAL_LISTEN_TIMEOUT_S)
        except (OSError, TimeoutError):  # refused, no name yet (the portal's container not running), no answer
            await asyncio.sleep(poll)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        if time.monotonic() - waited > poll:
            log.info("portal listening host=%s port=%d waited_s=%.2f", host, port, time.monotonic() - waited)
        return


async def presence(url: str, token: str, secret: str, heartbeat_interval: float = 10.0) -> None:
    """Join the portal's ``relay`` topic and stay joined, reconnecting with a capped backoff. Runs until cancelled."""

    def on_message(event: str, payload: dict) -> None:
        log.debug("portal message event=%s payload=%s", event, payload)

    delay = 0.2
    while True:
        await portal_listening(url)
        client = PortalClient(
            url, token, "relay", {"stamp_secret": secret}, heartbeat_interval=heartbeat_interval, on_message=on_message
        )
        started = time.monotonic()
        try:
            log.info("joining portal topic=relay url=%s secret_fingerprint=%s", url.split("?")[0], fingerprint(secret))
            await client.run()
            log.warning("portal connection ended; reconnecting")
        except asyncio.CancelledError:
            try:
                await asyncio.wait_for(client.close(), LEAVE_TIMEOUT_S)
            except (Exception, asyncio.CancelledError) as exc:
                log.info("leaving the portal: %s", exc or type(exc).__name__)
            raise
        except Exception as exc:
            log.warning("portal connection failed: %s: %s; reconnecting", type(exc).__name__, exc)
        if time.monotonic() - started > 10:
            delay = 0.2
        await asyncio.sleep(delay)
        delay = min(delay * 2, RECONNECT_MAX_S)


def _install_stop(loop: asyncio.AbstractEventLoop) -> asyncio.Event:
    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        log.info("received %s: stopping", sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    return stop


async def _cancel(task: asyncio.Task | None) -> None:
    if task is None or task.done():
        return
    task.cancel()
    try:
        await asyncio.wait_for(task, LEAVE_TIMEOUT_S + 0.5)
    except (TimeoutError, asyncio.CancelledError):
        pass
    except Exception as exc:
        log.warning("agent ended with %s: %s", type(exc).__name__, exc)


async def run_relay(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = _install_stop(loop)
    secret, kept = choose_secret(Path(args.state_dir), args.keep_secret)
    relay_ip = pick_relay_ip(args.relay_ip, args.relay_subnet)
    public_ip = args.public_ip or relay_ip
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cli_password = secrets.token_hex(16)
    config = render_config(
        Path(args.template).read_text(),
        realm=args.realm,
        secret=secret,
        listening_port=args.port,
        relay_ip=relay_ip,
        min_port=args.min_port,
        max_port=args.max_port,
        run_dir=run_dir,
        cli_port=args.cli_port,
        cli_password=cli_password,
        extra="\n".join(line.strip() for line in args.extra.split(";") if line.strip()),
    )
    conf_path = run_dir / "turnserver.conf"
    conf_path.write_text(config)
    cli_path = run_dir / CLI_PASSWORD
    write_private(cli_path, cli_password)
    conf_path.chmod(0o600)
    secret_path = run_dir / "secret"  # for diagnostics, tests and keep-secret (docker exec); never logged
    write_private(secret_path, secret)
    log.info(
        "relay starting name=%s relay_ip=%s announce=%s:%d ports=%d-%d secret_fingerprint=%s kept=%s",
        args.name,
        relay_ip,
        public_ip,
        args.port,
        args.min_port,
        args.max_port,
        fingerprint(secret),
        kept,
    )

    proc = await asyncio.create_subprocess_exec(args.turnserver, "-c", str(conf_path))
    agent: asyncio.Task | None = None
    turn_exit = asyncio.ensure_future(proc.wait())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        ready = asyncio.ensure_future(wait_turn_ready(args.port, proc))
        done, _ = await asyncio.wait({ready, turn_exit, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if ready in done and ready.exception() is None:
            log.info("turnserver ready on 127.0.0.1:%d", args.port)
            if args.portal_url:
                url = portal_relay_url(args.portal_url, public_ip, args.port, args.name)
                agent = asyncio.create_task(presence(url, args.token, secret, args.heartbeat), name="presence")
            else:
                log.info("PORTAL_URL is empty: no presence agent")
            await asyncio.wait({turn_exit, stopping}, return_when=asyncio.FIRST_COMPLETED)
        elif ready in done:
            log.warning("%s", ready.exception())
        else:
            ready.cancel()
        if agent is not None and agent.done() and not agent.cancelled() and agent.exception():
            log.warning("agent failed: %r", agent.exception())
    finally:
        await _cancel(agent)
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
            except TimeoutError:
                log.warning("turnserver ignored SIGTERM for %.0fs: SIGKILL", STOP_GRACE_S)
                proc.kill()
                await proc.wait()
        stopping.cancel()
        for path in (secret_path, conf_path, cli_path):  # a restarted container must not show the old secret
            path.unlink(missing_ok=True)
    if stop.is_set():
        log.info("relay stopped (turnserver exit status %s)", proc.returncode)
        return 0
    log.warning("turnserver exited on its own with status %s: the relay container exits", proc.returncode)
    code = proc.returncode
    return code if code and code > 0 else 1


async def run_presence(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = _install_stop(loop)
    url = portal_relay_url(args.portal_url, args.public_ip, args.port, args.name)
    secret = args.secret or os.environ.get("RELAY_SECRET", "")
    if not secret:
        raise SystemExit("presence: --secret or RELAY_SECRET is required")
    agent = asyncio.create_task(presence(url, args.token, secret, args.heartbeat))

    async def watch() -> None:
        while args.watch_pid:
            try:
                os.kill(args.watch_pid, 0)
            except ProcessLookupError:
                log.warning("watched process %d is gone: leaving the portal", args.watch_pid)
                return
            await asyncio.sleep(0.2)
        await asyncio.Event().wait()

    watcher = asyncio.create_task(watch())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({watcher, stopping, agent}, return_when=asyncio.FIRST_COMPLETED)
    await _cancel(agent)
    watcher.cancel()
    stopping.cancel()
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    ap = argparse.ArgumentParser(prog="agent.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", default=env("RELAY_NAME") or socket.gethostname())
    common.add_argument("--portal-url", default=env("PORTAL_URL", ""))
    common.add_argument("--token", default=env("PORTAL_TOKEN", ""))
    common.add_argument("--port", type=int, default=int(env("LISTENING_PORT", "3478")))
    common.add_argument("--heartbeat", type=float, default=float(env("PORTAL_HEARTBEAT_S", "10")))
    r = sub.add_parser("relay", parents=[common], help="render the config, run turnserver and the agent")
    r.add_argument("--relay-ip", default=env("RELAY_IP"))
    r.add_argument("--relay-subnet", default=env("RELAY_SUBNET"))
    r.add_argument("--public-ip", default=env("RELAY_PUBLIC_IP"))
    r.add_argument("--realm", default=env("RELAY_REALM", "firezone"))
    r.add_argument("--min-port", type=int, default=int(env("MIN_PORT", "49160")))
    r.add_argument("--max-port", type=int, default=int(env("MAX_PORT", "49200")))
    r.add_argument("--template", default=env("TURN_TEMPLATE", str(DEFAULT_TEMPLATE)))
    r.add_argument("--run-dir", default=env("RELAY_RUN_DIR", "/run/relay"))
    r.add_argument("--turnserver", default=env("TURNSERVER", "turnserver"))
    r.add_argument("--extra", default=env("TURN_EXTRA", ""))
    r.add_argument("--cli-port", type=int, default=int(env("CLI_PORT", "5766")))
    r.add_argument("--keep-secret", action="store_true", default=env("RELAY_KEEP_SECRET", "0") == "1")
    r.add_argument("--state-dir", default=env("RELAY_STATE_DIR", "/var/lib/connlib-relay"))
    k = sub.add_parser("keep-secret", help="make the running relay's next start reuse its secret (once)")
    k.add_argument("--run-dir", default=env("RELAY_RUN_DIR", "/run/relay"))
    k.add_argument("--state-dir", default=env("RELAY_STATE_DIR", "/var/lib/connlib-relay"))
    c = sub.add_parser("turn-cli", help="commands on the running turnserver's telnet CLI (e.g. 'cc user-quota 1')")
    c.add_argument("commands", nargs="+")
    c.add_argument("--run-dir", default=env("RELAY_RUN_DIR", "/run/relay"))
    c.add_argument("--cli-port", type=int, default=int(env("CLI_PORT", "5766")))
    p = sub.add_parser("presence", parents=[common], help="only the agent, for a turnserver run elsewhere")
    p.add_argument("--public-ip", required=True)
    p.add_argument("--secret")
    p.add_argument("--watch-pid", type=int, default=0)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    args = parse_args(argv)
    if args.cmd == "keep-secret":
        return keep_secret(Path(args.run_dir), Path(args.state_dir))
    if args.cmd == "turn-cli":
        return turn_cli(Path(args.run_dir), args.cli_port, args.commands)
    runner = run_relay if args.cmd == "relay" else run_presence
    return asyncio.run(runner(args))


if __name__ == "__main__":
    sys.exit(main())
