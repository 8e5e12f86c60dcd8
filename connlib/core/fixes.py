"""The names of connlib's test switches: behaviours a test can turn off to re-create a bug.

Each switch names one fix. The test suites disable one at a time (a *mutation twin*) to prove
that they catch the bug the fix exists for. Production code never disables anything.

- ``credentials-compare``: #6666 fix 1, a known relay id with new credentials is replaced;
- ``probe``: #6666 fix 2, every known relay not named in an update is probed with a REFRESH;
- ``path-probe``: the REFRESH probe of a relay whose connection path went quiet (what finds a
  black-holed relay the portal still lists).

Issue 9 (relay handling beyond #6666):

- ``channel-number-reuse``: a lapsed channel is re-bound to its peer under the *same* number
  (RFC 8656 §12); off, a new number is taken and coturn refuses it (400) while it remembers the
  old binding: the flow is black-holed;
- ``refusal-retry``: an ALLOCATE/REFRESH refused with an error we cannot act on (486, 508, 5xx,
  441, ...) is retried a bounded number of times and the relay then freed and held off; off, the
  allocation is left without a relay address or a timer (a zombie) and REFRESHes storm;
- ``delete-on-replace``: a relay replaced under new credentials on the same address that still
  holds the old allocation on our 5-tuple (it did not reboot: 437 to ALLOCATE, 441 to our delete
  under the new username) gets the delete under the old credentials; off, the relay is refused
  until coturn expires the old allocation (up to 600 s);
- ``probe-listed``: relays an update lists and we skip as known are probed too (a relay that
  restarted with the same secret while we were cut off from the portal); off, their dead
  candidates are offered until the next REFRESH;
- ``path-probe-retransmit``: the path probe retransmits (0.5 s, ×1.5, 2.5 s); off, it is the
  single-shot 1 s REFRESH and one lost packet frees a healthy relay.

Found by the simulator (issue 10):

- ``fail-unconnected``: the client's connection that loses its relay before it ever connected
  fails at once, and the session asks for a new one; off, it migrates to another relay while the
  gateway's end, whose pairs all ran through the lost relay, fails by ICE timeout: the migrated
  connection waits out a second ICE timeout before it is asked for again (seed 31025: 20 s).
"""

from __future__ import annotations

from collections.abc import Iterable

FIX_CREDENTIALS_COMPARE = "credentials-compare"
FIX_PROBE = "probe"
FIX_PATH_PROBE = "path-probe"
FIX_CHANNEL_NUMBER_REUSE = "channel-number-reuse"
FIX_REFUSAL_RETRY = "refusal-retry"
FIX_DELETE_ON_REPLACE = "delete-on-replace"
FIX_PROBE_LISTED = "probe-listed"
FIX_PATH_PROBE_RETRANSMIT = "path-probe-retransmit"
FIX_FAIL_UNCONNECTED = "fail-unconnected"
KNOWN_FIXES = frozenset(
    {
        FIX_CREDENTIALS_COMPARE,
        FIX_PROBE,
        FIX_PATH_PROBE,
        FIX_CHANNEL_NUMBER_REUSE,
        FIX_REFUSAL_RETRY,
        FIX_DELETE_ON_REPLACE,
        FIX_PROBE_LISTED,
        FIX_PATH_PROBE_RETRANSMIT,
        FIX_FAIL_UNCONNECTED,
    }
)


def checked(fixes: Iterable[str]) -> frozenset[str]:
    """``fixes`` as a frozenset; ValueError naming any unknown switch."""
    result = frozenset(fixes)
    unknown = result - KNOWN_FIXES
    if unknown:
        raise ValueError(f"unknown fixes to disable: {sorted(unknown)}; known: {sorted(KNOWN_FIXES)}")
    return result


def parse(text: str) -> frozenset[str]:
    """A comma-separated list of switch names (empty entries ignored), checked."""
    return checked(f.strip() for f in text.split(",") if f.strip())
