"""The faults one container can be given, as blocking docker-py calls: start, pause, unpause, and
iptables rules inside it (UDP loss, a cut from one address); restart, stop and kill are
:mod:`harness.network_turns`' (a stack's containers take turns at leaving its networks).

The one place for these facts: the harness's Docker backend (:mod:`harness.docker_faults`) and the
chaos control service (:mod:`harness.control`) both call them. No harness import: the chaos image
runs this with only docker-py installed. Rules go in with ``iptables -I`` and out with ``-D`` of the
same text; a container's rules die with its network namespace (a stop, kill or restart).
"""

from __future__ import annotations

import json

from docker.models.containers import Container

LOSS_RULE = "INPUT ! -i lo -p udp -m statistic --mode random --probability {probability:.4f} -j DROP"
"""A share of the UDP datagrams that arrive from the network: not the container's own on loopback
(Docker's DNS at 127.0.0.11, the relay agent's Binding to its turnserver), which no loss between
hosts touches (the simulator's loss is on a host's datagrams to and from others)."""
# Counts (no target) the STUN messages that reach the TURN port from outside: the first two bits of
# the UDP payload are 0 for STUN, 01 for ChannelData (RFC 8656 §12.4), so data is not counted.
REQUEST_RULE = "INPUT -p udp --dport {port} ! -i lo -m u32 --u32 0>>22&0x3C@8>>30=0"
CUT_RULES = ("INPUT -s {addr} -j DROP", "OUTPUT -d {addr} -j DROP")
"""Every packet from and to one address (a peer cut off from a relay)."""
ARRIVAL_RULE = "INPUT -s {addr} -j DROP"
"""Every packet from one address, dropped on arrival: put in both ends' containers, a cut both ways
that neither end's own sends notice (a DROP in OUTPUT fails the sender's sendto with EPERM)."""
AGENT = ["/opt/venv/bin/python", "/opt/connlib-relays/agent.py"]


def loss_rule(probability: float) -> str:
    return LOSS_RULE.format(probability=probability)


def cut_rules(addr: str) -> list[str]:
    return [rule.format(addr=addr) for rule in CUT_RULES]


def arrival_rules(addrs: list[str]) -> list[str]:
    return [ARRIVAL_RULE.format(addr=addr) for addr in addrs]


def exec_checked(container: Container, command: list[str], name: str | None = None) -> str:
    """Run ``command`` in the container; its output, or RuntimeError naming it when it exits non-zero."""
    result = container.exec_run(command)
    output = result.output.decode(errors="replace")
    if result.exit_code != 0:
        raise RuntimeError(
            f"{' '.join(command)} in {name or container.name} exited {result.exit_code}: {output.strip()}"
        )
    return output


def add_rule(container: Container, rule: str, name: str | None = None) -> None:
    exec_checked(container, ["iptables", "-I", *rule.split()], name)


def delete_rule(container: Container, rule: str, name: str | None = None) -> None:
    exec_checked(container, ["iptables", "-D", *rule.split()], name)


def add_rules(container: Container, rules: list[str], name: str | None = None) -> None:
    """``rules`` in one exec (a cut puts several into each end: one exec costs ~0.1-0.5 s), each
    unless the container has it already (a cut put back after an unpause)."""
    if rules:
        script = " && ".join(f"{{ iptables -C {rule} 2>/dev/null || iptables -I {rule}; }}" for rule in rules)
        exec_checked(container, ["sh", "-c", script], name)


def delete_rules_if_present(container: Container, rules: list[str], name: str | None = None) -> None:
    """Delete each of ``rules`` the container still has (a restart took them otherwise), in one exec."""
    if rules:
        script = "; ".join(f"if iptables -C {rule} 2>/dev/null; then iptables -D {rule}; fi" for rule in rules)
        exec_checked(container, ["sh", "-c", script], name)


def set_routes(container: Container, routes: list[str], name: str | None = None) -> None:
    """``ip route replace`` of each route (``"<dst> via <gateway>"``) in the container, in order."""
    for route in routes:
        exec_checked(container, ["ip", "route", "replace", *route.split()], name)


def rule_packets(container: Container, rules: list[str], name: str | None = None) -> int:
    """Packets the container's plain address rules (``CHAIN -s|-d ADDR -j DROP``) dropped so far."""
    wanted = set()
    for rule in rules:
        chain, flag, addr, *_ = rule.split()
        any_addr = "0.0.0.0/0"
        wanted.add((chain, _cidr(addr) if flag == "-s" else any_addr, _cidr(addr) if flag == "-d" else any_addr))
    total, chain = 0, ""
    for line in exec_checked(container, ["iptables", "-L", "-v", "-n", "-x"], name).splitlines():
        fields = line.split()  # "Chain NAME (...)", then: pkts bytes target prot opt in out source destination
        if fields[:1] == ["Chain"]:
            chain = fields[1]
        elif len(fields) == 9 and fields[2] == "DROP" and (chain, _cidr(fields[7]), _cidr(fields[8])) in wanted:
            total += int(fields[0])
    return total


def _cidr(addr: str) -> str:
    return addr if "/" in addr else addr + "/32"


ALLOCATE_TWICE = """
import json, sys
sys.path.insert(0, "/opt/connlib-relays")
import turn_probe as tp
username, password = tp.rest_credentials(open("/run/relay/secret").read().strip())
answers, clients = [], []
for _ in range(2):
    client = tp.TurnClient(("127.0.0.1", {port}), username, password)
    clients.append(client)
    try:
        client.allocate()
        answers.append("allocated")
    except tp.ProbeError as exc:
        answers.append(str(exc))
for client in clients:
    client.close()
print(json.dumps(answers))
"""
"""Two ALLOCATEs under one REST username from two sockets, on the relay itself, then both freed:
what a relay under ``user-quota 1`` answers the second one (``error 486 ...``), else "allocated"."""


HOLD_CAPACITY = """
import base64, hashlib, hmac, os, signal, struct, sys, time
sys.path.insert(0, "{probe_dir}")
import turn_probe as tp
secret = open("{secret_file}").read().strip().encode()
held, unsure = [], []


def say(path, text):  # whole or not at all: a reader of a file open("w") just emptied saw nothing (CI)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


start = time.monotonic()
until = start + {grab}  # ports of deleted allocations come free ~1 s later: take them too
while len(held) < {limit}:  # a username each: a user quota in force too does not stop it
    username = f"{{int(time.time()) + 3600}}:hold{{len(held)}}"
    password = base64.b64encode(hmac.new(secret, username.encode(), hashlib.sha1).digest()).decode()
    client = tp.TurnClient(("127.0.0.1", {port}), username, password, timeout={timeout})
    try:
        client.allocate()
    except tp.ProbeError as exc:
        if "508" in str(exc):
            client.sock.close()
            if time.monotonic() > until:
                break
        elif time.monotonic() - start < {give_up}:  # unanswered under load (seen): again, until the give-up
            unsure.append(client)  # it may hold an allocation whose answer was lost: freed with the rest
        else:
            for client in held + unsure:
                client.close()
            say("{failed}", f"{{exc}} (held {{len(held)}})\\n")
            sys.exit(1)
        time.sleep(0.2)
        continue
    held.append(client)
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
say("{path}", f"{{os.getpid()}} {{len(held)}}\\n")
refreshed = time.monotonic()
while not stop:
    time.sleep(0.2)
    if time.monotonic() - refreshed > 300:  # the allocations' 600 s: a fault may last longer
        for client in held + unsure:
            try:  # an unsure one holds nothing (437) or a port like the rest
                client.transact(tp.REFRESH, [(tp.LIFETIME, struct.pack("!I", 600))], auth=True)
            except tp.ProbeError:
                pass
        refreshed = time.monotonic()
for client in held + unsure:
    client.close()
os.unlink("{path}")
"""
"""Allocates on the relay (from inside its container) until coturn answers 508 (no relay port
left) for ``grab`` s or it holds ``limit``, holds them, writes ``<pid> <count>`` to ``path``; SIGTERM frees them
(REFRESH 0) and exits. Any other failure is retried until ``give_up`` s from the start, then the holder frees what
it holds, writes the reason to :func:`failed_file` and exits (it used to die silently on an unanswered ALLOCATE under
load, and the fault's wait ran out with no word of why). coturn frees a port about 1 s after the deletion
(measured on 4.6.1)."""
HOLD_PATH = "/run/relay/capacity-hold"
HOLD_GRAB_S = 2.0
"""How long the holder goes on taking ports that come free: a deleted allocation's port is free again
~1 s after its REFRESH(0) (the probes' own, just before), and one left free would let every probe
allocate (seen: the relay allowing both ALLOCATEs under the 508 fault in 3 of 6 runs)."""
HOLD_GIVE_UP_S = 10.0
"""How long the holder goes on retrying failures other than 508: below the 15 s the fault waits for it."""
PROBE_DIR = "/opt/connlib-relays"
"""Where every image keeps ``turn_probe.py``."""
SECRET_FILE = "/run/relay/secret"
"""The relay's per-boot secret, written by its agent."""


class HolderFailed(RuntimeError):
    """The capacity holder gave up (it says why)."""


def hold_capacity_script(
    port: int,
    limit: int,
    path: str = HOLD_PATH,
    give_up: float = HOLD_GIVE_UP_S,
    probe_dir: str = PROBE_DIR,
    secret_file: str = SECRET_FILE,
    timeout: float = 1.0,
) -> str:
    """:data:`HOLD_CAPACITY` for one relay; the defaults are the relay image's paths and turn_probe's
    first retransmission ``timeout``."""
    return HOLD_CAPACITY.format(
        port=port,
        path=path,
        failed=failed_file(path),
        limit=limit,
        grab=HOLD_GRAB_S,
        give_up=give_up,
        probe_dir=probe_dir,
        secret_file=secret_file,
        timeout=timeout,
    )


def failed_file(path: str = HOLD_PATH) -> str:
    """Where a holder writing to ``path`` says why it gave up."""
    return f"{path}.failed"


def hold_status_command(path: str = HOLD_PATH) -> list[str]:
    """The command that tells a holder's state (its files): see :func:`hold_status`."""
    return ["sh", "-c", f"cat {path} 2>/dev/null && exit 0; cat {failed_file(path)} 2>/dev/null && exit 3; exit 1"]


def hold_status(exit_code: int, output: bytes) -> int | None:
    """What :func:`hold_status_command` said: the count held, None while the holder has not said (or is
    gone); :class:`HolderFailed` once it gave up."""
    if exit_code == 0:
        words = output.split()
        # the holder renames a whole file into place; anything else is not its word (yet)
        return int(words[1]) if len(words) == 2 and words[1].isdigit() else None
    if exit_code == 3:
        raise HolderFailed(f"capacity holder gave up: {output.decode(errors='replace').strip()}")
    return None


def hold_capacity(container: Container, port: int, limit: int) -> None:
    """Start :data:`HOLD_CAPACITY` in the relay's container (detached; it says when it holds), taking
    at most ``limit`` ports."""
    script = hold_capacity_script(port, limit)
    # setsid and sh's own background job: a docker-py detached exec's process was gone within ~1 s
    # (seen: its allocations freed), this one lives until the SIGTERM
    launch = f'rm -f {failed_file()}; setsid /usr/bin/python3 -c "$0" >/dev/null 2>&1 &'
    exec_checked(container, ["sh", "-c", launch, script])


def held_capacity(container: Container) -> int | None:
    """How many allocations the holder holds, None while it has not said (or is gone);
    :class:`HolderFailed` once it gave up."""
    result = container.exec_run(hold_status_command())
    return hold_status(result.exit_code, result.output)


def release_capacity(container: Container, name: str | None = None) -> None:
    """SIGTERM to the holder, if it still runs (a restart of the relay ended it and its allocations)."""
    script = (
        f"rm -f {failed_file()}; "
        f"if [ -f {HOLD_PATH} ]; then kill -TERM $(cut -d' ' -f1 {HOLD_PATH}) || rm -f {HOLD_PATH}; fi"
    )
    exec_checked(container, ["sh", "-c", script], name)


def allocate_twice(container: Container, port: int, name: str | None = None) -> list[str]:
    """The relay's answers to :data:`ALLOCATE_TWICE` (the relay image's python3 and turn_probe)."""
    output = exec_checked(container, ["/usr/bin/python3", "-c", ALLOCATE_TWICE.format(port=port)], name)
    answers: list[str] = json.loads(output.strip().splitlines()[-1])
    return answers


def turn_cli(container: Container, commands: list[str], name: str | None = None) -> str:
    """Commands on the relay's coturn telnet CLI (the relay image's ``agent.py turn-cli``); its output."""
    return exec_checked(container, [*AGENT, "turn-cli", *commands], name)


def dropped_by_loss(container: Container, name: str | None = None) -> int:
    """Datagrams the container's loss rules dropped so far (iptables counters)."""
    output = exec_checked(container, ["iptables", "-L", "INPUT", "-v", "-n", "-x"], name)
    return sum(int(line.split()[0]) for line in output.splitlines() if "statistic" in line)


def stun_requests(container: Container, port: int, name: str | None = None) -> int:
    """STUN messages that reached the container's TURN ``port`` since the counting rule went in;
    the first call (and the first after a restart) puts it in and returns 0."""
    rule = REQUEST_RULE.format(port=port).split()
    if container.exec_run(["iptables", "-C", *rule]).exit_code != 0:
        exec_checked(container, ["iptables", "-I", *rule], name)
        return 0
    output = exec_checked(container, ["iptables", "-L", "INPUT", "-v", "-n", "-x"], name)
    return sum(int(line.split()[0]) for line in output.splitlines() if " u32 " in line)


def start(container: Container) -> None:
    container.start()


def pause(container: Container) -> None:
    container.pause()


def unpause(container: Container) -> None:
    container.unpause()
