"""The contact policy: at most K messages per customer per period, across all rules.

``CRM_CONTACT_CAP=3/7d`` lets no customer receive more than 3 messages in any 7 days. Counting
happens when the scheduler claims a delivery (one atomic script per delivery, so two schedulers
cannot both squeeze in the last slot); a delivery over the cap is recorded in the ledger as
``skipped`` with the reason, so it is visible and never planned again.

What counts: messages *to the customer* (``to: customer.…``) of rules not marked
``exempt_from_cap: true``. Exempt rules (complaint handling) and messages to anyone else (an
escalation to the account manager) neither count nor are stopped. A counted message that is
later skipped at send time (the customer opted out) still counts for its period.

Example::

    >>> ContactCap.parse("3/7d")
    ContactCap(limit=3, period=datetime.timedelta(days=7))
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import redis

from worker.constants import CONTACT_KEY_PREFIX
from worker.rules.models import Rule, SendAction
from worker.settings import ContactCap

# Forget deliveries older than the period; a key counted before stays admitted (re-claim after
# a crash); otherwise admit only while under the limit.
_ADMIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""


def counted(rule: Rule, action: SendAction) -> bool:
    """Does this message count against (and is it stopped by) the cap?"""
    return not rule.exempt_from_cap and action.to_customer


def customer_id_of(context: Mapping[str, object]) -> str | None:
    """The id of the customer a message is about (from its template context)."""
    customer = context.get("customer")
    if isinstance(customer, Mapping) and customer.get("id"):
        return str(customer["id"])
    return None


class ContactPolicy:
    """Counts messages per customer in Redis; without a cap it admits everything."""

    def __init__(self, client: redis.Redis, cap: ContactCap | None) -> None:
        self.client = client
        self.cap = cap
        self._admit = client.register_script(_ADMIT)

    def admit(self, customer_id: str, key: str, now: datetime) -> bool:
        """Count delivery ``key`` for the customer at ``now``; False when over the cap."""
        if self.cap is None:
            return True
        since = now - self.cap.period
        args: list[str | int] = [
            f"{since.timestamp():.3f}",
            f"{now.timestamp():.3f}",
            key,
            self.cap.limit,
            int(self.cap.period.total_seconds() * 1000),
        ]
        return bool(self._admit(keys=[CONTACT_KEY_PREFIX + customer_id], args=args))

    def count(self, customer_id: str, now: datetime) -> int:
        """Messages counted for the customer in the period up to ``now`` (read-only)."""
        if self.cap is None:
            return 0
        since = now - self.cap.period
        return int(
            self.client.zcount(
                CONTACT_KEY_PREFIX + customer_id, f"({since.timestamp():.3f}", "+inf"
            )
        )

    def reason(self) -> str:
        """The skip reason recorded for a delivery over the cap."""
        return f"contact cap reached: {self.cap} per customer (CRM_CONTACT_CAP)"
