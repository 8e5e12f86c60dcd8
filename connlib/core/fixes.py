"""The names of connlib's test switches: behaviours a test can turn off to re-create a bug.

Each switch names one fix. The test suites disable one at a time (a *mutation twin*) to prove
that they catch the bug the fix exists for. Production code never disables anything.

- ``credentials-compare``: #6666 fix 1, a known relay id with new credentials is replaced;
- ``probe``: #6666 fix 2, every known relay not named in an update is probed with a REFRESH;
- ``path-probe``: the REFRESH probe of a relay whose connection path went quiet (what finds a
  black-holed relay the portal still lists).
"""

from __future__ import annotations

from collections.abc import Iterable

FIX_CREDENTIALS_COMPARE = "credentials-compare"
FIX_PROBE = "probe"
FIX_PATH_PROBE = "path-probe"
KNOWN_FIXES = frozenset({FIX_CREDENTIALS_COMPARE, FIX_PROBE, FIX_PATH_PROBE})


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
