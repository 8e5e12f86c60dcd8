"""Real coturn (``turnserver``) processes on 127.0.0.x, for tests, benches and the process fleet.

Each instance uses TURN REST credentials (``use-auth-secret`` + ``static-auth-secret``), realm
``firezone``, UDP only, and keeps its listening port across restarts so that a restarted relay is
the same relay address (with the same or a new secret).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from connlib.core import stun
from connlib.core.credentials import REALM, rest_credentials
from connlib.core.logfmt import kv

log = logging.getLogger("harness.coturn")

TURNSERVER = "turnserver"
READY_TIMEOUT = 10.0


class CoturnNotAvailable(RuntimeError):
    """``turnserver`` is not installed (Debian package ``coturn``)."""


class CoturnNotReady(RuntimeError):
    pass


def turnserver_path() -> str | None:
    return shutil.which(TURNSERVER) or ("/usr/bin/turnserver" if os.access("/usr/bin/turnserver", os.X_OK) else None)


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def stun_binding(host: str, port: int, timeout: float = 0.5) -> tuple[str, int]:
    """One STUN Binding round trip; returns the XOR-MAPPED-ADDRESS. Raises OSError on no answer."""
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, os.urandom(12))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(request.encode(), (host, port))
        while True:
            data, _ = sock.recvfrom(2048)
            try:
                response = stun.decode(data)
            except stun.StunParseError:
                continue
            if response.transaction_id == request.transaction_id:
                return response.get("XOR-MAPPED-ADDRESS")


class Coturn:
    """One ``turnserver`` process. ``restart(secret=...)`` models a reboot with a new secret."""

    def __init__(
        self,
        secret: str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        relay_ports: tuple[int, int] | None = None,
        name: str = "coturn",
        extra_args: tuple[str, ...] = (),
        relay_port_count: int = 64,
    ) -> None:
        binary = turnserver_path()
        if binary is None:
            raise CoturnNotAvailable("turnserver not found; install Debian's 'coturn' package")
        self.binary = binary
        self.name = name
        self.extra_args = tuple(extra_args)  # e.g. ("--user-quota", "1", "--channel-lifetime", "30")
        self.host = host
        self.port = port or free_udp_port(host)
        self.secret = secret or secrets.token_hex(32)
        low = relay_ports[0] if relay_ports else 20000 + (self.port * 7919) % 40000
        # One allocation per port: the default 64 suit a test; a load test asks for more.
        self.relay_ports = relay_ports or (low, low + relay_port_count - 1)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{name}-"))
        self.process: subprocess.Popen | None = None
        self.log_path = self.workdir / "turnserver.log"

    @property
    def addr(self) -> tuple[str, int]:
        return self.host, self.port

    def credentials(self, salt: str = "test", expires_at: int | None = None) -> tuple[str, str]:
        """TURN REST credentials valid for the current secret (default: expire in a day).

        coturn reads the expiry as a signed 32-bit time: anything past 2038-01-19 is refused.
        """
        if expires_at is None:
            expires_at = int(time.time()) + 86400
        return rest_credentials(self.secret, expires_at, salt)

    def command(self) -> list[str]:
        low, high = self.relay_ports
        return [
            self.binary,
            "-n",
            "--listening-ip",
            self.host,
            "--listening-port",
            str(self.port),
            "--relay-ip",
            self.host,
            "--min-port",
            str(low),
            "--max-port",
            str(high),
            "--realm",
            REALM,
            "--use-auth-secret",
            "--static-auth-secret",
            self.secret,
            "--no-tls",
            "--no-dtls",
            "--no-tcp",
            "--no-tcp-relay",
            "--fingerprint",
            "--no-cli",
            "--allow-loopback-peers",
            "--no-rfc5780",
            "--no-software-attribute",
            "--db",
            str(self.workdir / "turndb"),
            "--pidfile",
            str(self.workdir / "turnserver.pid"),
            "--log-file",
            "stdout",
            "--simple-log",
            *self.extra_args,
        ]

    def start(self) -> None:
        if self.running:
            return
        logfile = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.command(), stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        logfile.close()
        try:
            self.wait_ready()
        except CoturnNotReady:
            self.stop()
            raise
        log.info("coturn started %s", kv(name=self.name, addr=f"{self.host}:{self.port}", pid=self.process.pid))

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        retrying = Retrying(
            stop=stop_after_delay(timeout),
            wait=wait_fixed(0.05),
            retry=retry_if_exception_type(OSError),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    if self.process is None or self.process.poll() is not None:
                        raise CoturnNotReady(f"{self.name} exited early; log: {self.tail_log()}")
                    stun_binding(self.host, self.port, timeout=0.2)
        except OSError as exc:
            raise CoturnNotReady(
                f"{self.name} did not answer STUN on {self.host}:{self.port} within {timeout}s"
            ) from exc

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        log.info("coturn stopped %s", kv(name=self.name, addr=f"{self.host}:{self.port}"))
        self.process = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def pause(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def restart(self, secret: str | None = None) -> None:
        """Stop and start on the same port; ``secret`` given ⇒ a reboot with new credentials."""
        if self.process is not None:
            self.resume()  # a paused process cannot handle SIGTERM
        self.stop()
        if secret is not None:
            self.secret = secret
        self.start()

    def tail_log(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        self.resume()
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Coturn:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
