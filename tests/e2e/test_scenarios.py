"""Issue 6's chaos scenarios 1–7 on a real stack (Docker by default, ``--fleet process`` too).

Every scenario asserts measured bounds and reports its figures (``figures`` → the summary table at
the end of the run; ``-s`` prints them as they come). Every one has a mutation twin: the same
scenario with one fix disabled in the peer (a #6666 fix, or the probe of a quiet path) (``CONNLIB_TEST_DISABLE_FIXES`` in its container,
``Node(disabled_fixes=...)`` in process mode) that must fail with a message naming the bug.
Zero ERROR lines anywhere: the ERROR rule covers the containers' stderr as well.
"""

from __future__ import annotations

import pytest

from connlib.core.fixes import FIX_CREDENTIALS_COMPARE, FIX_PATH_PROBE, FIX_PROBE, FIX_PROBE_LISTED
from harness import checks
from harness.fleet import CLIENT_ID, GATEWAY_ID

from .scenarios import (
    COALESCING_DEBOUNCE,
    RESUME_BOUND,
    all_relays_restarted,
    attempts,
    relay_paused,
    restart_while_connected,
    rotation_while_partitioned,
    silent_loss_while_partitioned,
    stream_settled,
    udp_loss_on_carrying_relay,
)

pytestmark = pytest.mark.slow

# #6666 fix 1's twin: without the compare, the probe of listed relays (issue 9) would catch a
# rebooted relay too, so the twin turns both off: what is left is the pre-#6666 client.
NO_COMPARE = frozenset({FIX_CREDENTIALS_COMPARE, FIX_PROBE_LISTED})
NO_PROBE = frozenset({FIX_PROBE})
THREE_RELAYS = {"relays": 3, "portal": {"relays_per_client": 3}}


@pytest.fixture
def repeats(pytestconfig: pytest.Config) -> int:
    return max(1, pytestconfig.getoption("--e2e-repeats"))


def summarize(figures: dict, samples: list[dict], *, detect: str, resumed: str) -> None:
    figures.update(
        n=len(samples),
        detect_s=checks.p95(s[detect] for s in samples),
        resumed_s=checks.p95(s[resumed] for s in samples),
        gap_s=checks.p95(s["gap_s"] for s in samples),
        resumed_samples=[round(s[resumed], 2) for s in samples],
    )
    print(f"\nfigures (p95 over {len(samples)}): {figures}")


# ---------------------------------------------------------------------------- 1
async def _rotation(stack, figures: dict, repeats: int, peer: str) -> None:
    samples = []
    for _ in range(repeats):
        samples.append(await attempts(stack, figures, lambda: rotation_while_partitioned(stack, figures, peer)))
        await stream_settled(stack, stack.history.clock())
    summarize(figures, samples, detect="replaced_after_init_s", resumed="resumed_after_heal_s")
    assert figures["resumed_s"] <= RESUME_BOUND, f"p95 stream resumed {figures['resumed_s']:.2f}s after the heal"


async def test_1_credential_rotation_while_partitioned(stack, figures, repeats):
    """1. rotation while partitioned (client)"""
    await _rotation(stack, figures, repeats, CLIENT_ID)


@pytest.mark.stack(client_disabled_fixes=NO_COMPARE)
async def test_1_twin_without_credentials_compare(stack):
    """1. twin: credentials-compare off"""
    with pytest.raises(AssertionError, match="bug #6648"):
        await attempts(stack, {}, lambda: rotation_while_partitioned(stack, {}, CLIENT_ID))


# ---------------------------------------------------------------------------- 2
@pytest.mark.stack(**THREE_RELAYS)
async def test_2_silent_relay_loss_while_partitioned(stack, figures):
    """2. silent relay loss while partitioned"""
    await silent_loss_while_partitioned(stack, figures)
    print(f"\nfigures: {figures}")


@pytest.mark.stack(**THREE_RELAYS, client_disabled_fixes=NO_PROBE)
async def test_2_twin_without_probe(stack):
    """2. twin: probe off"""
    with pytest.raises(AssertionError, match=r"bug \(no probe\)"):
        await silent_loss_while_partitioned(stack, {})


# ---------------------------------------------------------------------------- 3
async def _restarts(stack, figures: dict, repeats: int, peer: str) -> None:
    samples = []
    for _ in range(repeats):
        samples.append(await attempts(stack, figures, lambda: restart_while_connected(stack, peer)))
        await stream_settled(stack, stack.history.clock())
    summarize(figures, samples, detect="replaced_after_presence_s", resumed="resumed_after_presence_s")
    assert figures["resumed_s"] <= RESUME_BOUND, f"p95 stream resumed {figures['resumed_s']:.2f}s after relays_presence"


@pytest.mark.stack(debounce=COALESCING_DEBOUNCE)
async def test_3_relay_restart_while_connected(stack, figures, repeats):
    """3. carrying relay restarted (client)"""
    await _restarts(stack, figures, repeats, CLIENT_ID)


@pytest.mark.stack(debounce=COALESCING_DEBOUNCE, client_disabled_fixes=NO_COMPARE)
async def test_3_twin_without_credentials_compare(stack):
    """3. twin: credentials-compare off"""
    with pytest.raises(AssertionError, match=r"bug #6648 \(relays_presence\)"):
        await attempts(stack, {}, lambda: restart_while_connected(stack, CLIENT_ID))


# ---------------------------------------------------------------------------- 4
async def test_4_relay_paused_black_hole(stack, figures):
    """4. carrying relay paused (black hole)"""
    await relay_paused(stack, figures)
    print(f"\nfigures: {figures}")


@pytest.mark.stack(client_disabled_fixes=frozenset({FIX_PATH_PROBE}))
async def test_4_twin_without_path_probe(stack):
    """4. twin: path probe off"""
    with pytest.raises(AssertionError, match=r"bug \(black hole kept"):
        await relay_paused(stack, {})


# ---------------------------------------------------------------------------- 5
@pytest.mark.stack(debounce=COALESCING_DEBOUNCE)
async def test_5_all_relays_restarted_at_once(stack, figures):
    """5. all relays restarted at once"""
    await attempts(stack, figures, lambda: all_relays_restarted(stack, figures))
    print(f"\nfigures: {figures}")


@pytest.mark.stack(debounce=COALESCING_DEBOUNCE, client_disabled_fixes=NO_COMPARE)
async def test_5_twin_without_credentials_compare(stack):
    """5. twin: credentials-compare off"""
    with pytest.raises(AssertionError, match=r"bug #6648 \(all relays\)"):
        await attempts(stack, {}, lambda: all_relays_restarted(stack, {}))


# ---------------------------------------------------------------------------- 6
@pytest.mark.backends("docker")
async def test_6_udp_loss_on_carrying_relay(stack, figures):
    """6. 50% UDP loss on the carrying relay, 10 s"""
    await udp_loss_on_carrying_relay(stack, figures)
    print(f"\nfigures: {figures}")


# ---------------------------------------------------------------------------- 7
async def test_7a_gateway_rotation_while_partitioned(stack, figures, repeats):
    """7a. rotation while partitioned (gateway)"""
    await _rotation(stack, figures, 1, GATEWAY_ID)


@pytest.mark.stack(gateway_disabled_fixes=NO_COMPARE)
async def test_7a_twin_without_credentials_compare(stack):
    """7a. twin: gateway credentials-compare off"""
    with pytest.raises(AssertionError, match="bug #6648"):
        await attempts(stack, {}, lambda: rotation_while_partitioned(stack, {}, GATEWAY_ID))


@pytest.mark.stack(debounce=COALESCING_DEBOUNCE)
async def test_7b_gateway_relay_restart_while_connected(stack, figures):
    """7b. carrying relay restarted (gateway)"""
    await _restarts(stack, figures, 1, GATEWAY_ID)


@pytest.mark.stack(debounce=COALESCING_DEBOUNCE, gateway_disabled_fixes=NO_COMPARE)
async def test_7b_twin_without_credentials_compare(stack):
    """7b. twin: gateway credentials-compare off"""
    with pytest.raises(AssertionError, match=r"bug #6648 \(relays_presence\)"):
        await attempts(stack, {}, lambda: restart_while_connected(stack, GATEWAY_ID))
