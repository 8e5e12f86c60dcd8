"""Issue 9's chaos scenarios 8–11 on the Docker stack, each with its mutation twin.

Bounds on every one: traffic back within 3 s of the relay being usable again, no zombie relay
(15 s), at most 10 STUN requests per second to any relay (counted in the relay container). The
twins turn off, in the peer, the fix the scenario exists for and must fail naming the bug.
"""

from __future__ import annotations

import pytest

from connlib.core.fixes import (
    FIX_CHANNEL_NUMBER_REUSE,
    FIX_DELETE_ON_REPLACE,
    FIX_PATH_PROBE,
    FIX_PROBE_LISTED,
    FIX_REFUSAL_RETRY,
)

from .scenarios import COALESCING_DEBOUNCE, attempts, on_a_new_stack_if_missed
from .scenarios_hardening import (
    CHANNEL,
    QUOTA,
    channel_idle_past_its_lifetime,
    quota_exhausted,
    rotation_without_reboot,
    same_secret_restart_while_partitioned,
)

pytestmark = [pytest.mark.slow, pytest.mark.backends("docker")]

# The listed-relay probe's twin also turns the path probe off: it too finds a dead allocation
# (once the path has been quiet for a while), so what is left is the client before issue 9.
NO_LISTED_PROBE = frozenset({FIX_PROBE_LISTED, FIX_PATH_PROBE})
NO_REFUSAL_RETRY = frozenset({FIX_REFUSAL_RETRY})


# ---------------------------------------------------------------------------- 8
@pytest.mark.stack(debounce=COALESCING_DEBOUNCE)
async def test_8_same_secret_restart_while_partitioned(stack, figures):
    """8. carrying relay restarted with the same secret (client partitioned)"""
    await attempts(stack, figures, lambda: same_secret_restart_while_partitioned(stack, figures))
    print(f"\nfigures: {figures}")


@pytest.mark.stack(debounce=COALESCING_DEBOUNCE, client_disabled_fixes=NO_LISTED_PROBE)
async def test_8_twin_without_listed_probe(stack):
    """8. twin: probe-listed (and path-probe) off"""
    with pytest.raises(AssertionError, match=r"bug \(same secret\)"):
        await attempts(stack, {}, lambda: same_secret_restart_while_partitioned(stack, {}))


# ---------------------------------------------------------------------------- 9
@pytest.mark.stack(**QUOTA)
async def test_9_allocation_quota_exhausted(stack, new_stack, figures):
    """9. allocation quota exhausted on one relay"""
    await on_a_new_stack_if_missed(stack, new_stack, figures, lambda fleet: quota_exhausted(fleet, figures))
    print(f"\nfigures: {figures}")


@pytest.mark.stack(**QUOTA, client_disabled_fixes=NO_REFUSAL_RETRY, gateway_disabled_fixes=NO_REFUSAL_RETRY)
async def test_9_twin_without_refusal_retry(stack, new_stack):
    """9. twin: refusal-retry off"""
    with pytest.raises(AssertionError, match=r"bug \(zombie relay\)"):
        await on_a_new_stack_if_missed(stack, new_stack, {}, lambda fleet: quota_exhausted(fleet, {}))


# ---------------------------------------------------------------------------- 10
NO_NUMBER_REUSE = frozenset({FIX_CHANNEL_NUMBER_REUSE})


@pytest.mark.stack(**CHANNEL)
async def test_10_channel_idle_past_its_lifetime(stack, figures):
    """10. channel idle past a shortened lifetime, then traffic both ways"""
    await channel_idle_past_its_lifetime(stack, figures)
    print(f"\nfigures: {figures}")


@pytest.mark.xfail(
    strict=True,
    reason="not observable end to end: the peer's traffic (ICE keep-alives at least) reaches us over the old "
    "number, which coturn still binds, and revives it before the refused new number matters; the fake-clock "
    "and real-coturn tests of item 3 show the bug",
)
@pytest.mark.stack(**CHANNEL, client_disabled_fixes=NO_NUMBER_REUSE, gateway_disabled_fixes=NO_NUMBER_REUSE)
async def test_10_twin_without_channel_number_reuse(stack):
    """10. twin: channel-number-reuse off"""
    with pytest.raises(AssertionError, match=r"bug \(channel number\)"):
        await channel_idle_past_its_lifetime(stack, {})


# ---------------------------------------------------------------------------- 11
async def test_11_credentials_rotated_without_reboot(stack, figures):
    """11. credentials rotated on a running relay"""
    await rotation_without_reboot(stack, figures)
    print(f"\nfigures: {figures}")


@pytest.mark.stack(client_disabled_fixes=frozenset({FIX_DELETE_ON_REPLACE}))
async def test_11_twin_without_delete_on_replace(stack):
    """11. twin: delete-on-replace off"""
    with pytest.raises(AssertionError, match=r"bug \(rotation without reboot\)"):
        await rotation_without_reboot(stack, {})
