"""Two operators apply a policy at two replicas at once, both based on the same version.

The policy is written with a compare-and-swap on the version it was based on (``If-Match``):
of two changes based on version N, exactly one becomes version N + 1; the other is refused
with 409, naming the version that won, and nothing is overwritten unseen.
"""

from __future__ import annotations

import asyncio
import functools

import pytest
import yaml

from tests.integration.ha.conftest import POLICY, HaMesh
from tests.interop.xds.harness import until

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.interop,
              pytest.mark.timeout(120)]

RACES = 5


def edit(timeout_ms: int) -> str:
    """The policy, with a connect timeout for orders that tells one change from another."""
    return yaml.safe_dump({"clusters": [
        {**c, "connect_timeout": f"{timeout_ms / 1000}s"} if c["name"] == "orders" else c
        for c in POLICY["clusters"]]})


async def test_of_two_changes_based_on_one_version_exactly_one_is_applied(ha: HaMesh) -> None:
    one, two = ha.replicas[0], ha.replicas[1]
    for race in range(RACES):
        based_on = (await one.status())["policy_version"]
        outcomes = await asyncio.gather(one.apply_policy(edit(500 + race), based_on=based_on),
                                        two.apply_policy(edit(600 + race), based_on=based_on))
        won = [body for status, body in outcomes if status == 200]
        refused = [body for status, body in outcomes if status == 409]
        assert len(won) == 1 and len(refused) == 1, outcomes
        assert won[0]["version"] == refused[0]["version"] == based_on + 1, outcomes
        assert f"based on version {based_on}" in str(refused[0]["error"]), refused
        assert f"now at version {based_on + 1}" in str(refused[0]["error"]), refused
        winner = (one, two)[[status for status, _ in outcomes].index(200)]
        print(f"\nrace {race + 1} on version {based_on}: {winner.host} won; the other was "
              f"told: {refused[0]['error']}")
        await until(functools.partial(ha.policy_in_force, based_on + 1),
                    what=f"version {based_on + 1} in force at every replica", timeout=5)
