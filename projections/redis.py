"""The Redis read model: hot current scores, per-org leaderboards and recent changes.

A Lua script applies a whole batch atomically: it skips entries at or below the
stored position, writes the rest and moves the position, so redelivered or replayed
entries change nothing. It also publishes the leads it changed (projections/changes.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import redis.asyncio as aioredis
from redis.exceptions import DataError, NoScriptError, ReadOnlyError, ResponseError

from projections import changes
from projections.log import LogEntry

PREFIX = "leadscore"
# Redis error prefixes that say the server cannot write now, whatever is written.
_SERVER_STATES = (
    "OOM", "READONLY", "BUSY", "LOADING", "MASTERDOWN", "NOREPLICAS", "MISCONF", "TRYAGAIN",
    "CLUSTERDOWN", "NOSCRIPT",
)  # fmt: skip
RECENT_LIMIT = 100

# KEYS[1]: the change-notice channel. ARGV: position_key, recent_limit, prefix, then per
# score: position, org, lead, score, grade, fit, engagement, model_version, at, change_json,
# factors_json.
# ARGV[n] is the last position of the batch.
_APPLY = """
local position_key = ARGV[1]
local recent_limit = tonumber(ARGV[2])
local current = tonumber(redis.call('GET', position_key) or '0')
local prefix = ARGV[3]
local n = #ARGV - 1
local i = 4
local changed = {}
while i <= n do
  local pos = tonumber(ARGV[i])
  local org, lead = ARGV[i + 1], ARGV[i + 2]
  local base = prefix .. ':' .. org
  local have = tonumber(redis.call('HGET', base .. ':lead:' .. lead, 'position') or '0')
  -- A lead's hash never goes back to an older score (a re-driven quarantined entry).
  if pos > current and pos > have then
    redis.call('HSET', base .. ':lead:' .. lead,
      'score', ARGV[i + 3], 'grade', ARGV[i + 4], 'fit', ARGV[i + 5],
      'engagement', ARGV[i + 6], 'model_version', ARGV[i + 7], 'updated_at', ARGV[i + 8],
      'position', ARGV[i], 'factors', ARGV[i + 10])
    redis.call('ZADD', base .. ':leaderboard', ARGV[i + 3], lead)
    redis.call('LPUSH', base .. ':recent', ARGV[i + 9])
    redis.call('LTRIM', base .. ':recent', 0, recent_limit - 1)
    changed[#changed + 1] = org
    changed[#changed + 1] = lead
  end
  i = i + 11
end
local last = tonumber(ARGV[#ARGV])
if last > current then
  redis.call('SET', position_key, ARGV[#ARGV])
end
if #changed > 0 then
  redis.call('PUBLISH', KEYS[1], cjson.encode(changed))
end
return current
"""


class RedisProjection:
    name = "redis"

    def __init__(self, client: aioredis.Redis, prefix: str = PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self.position_key = f"{prefix}:projection:redis:position"
        self.channel = changes.redis_channel(prefix)
        self._script = client.register_script(_APPLY)

    async def setup(self) -> None:
        """Redis needs no schema."""

    async def position(self) -> int:
        value = await self.client.get(self.position_key)
        return int(value or 0)

    def is_data_error(self, exc: BaseException) -> bool:
        # The script refused an argument, or the client could not encode one; not a
        # server that cannot write now (out of memory, a read-only replica, loading, ...).
        if isinstance(exc, ReadOnlyError | NoScriptError):
            return False
        if isinstance(exc, ResponseError):
            return not str(exc).upper().startswith(_SERVER_STATES)
        return isinstance(exc, DataError | TypeError | ValueError | KeyError)

    async def advance(self, position: int) -> None:
        await self._script(
            keys=[self.channel], args=[self.position_key, RECENT_LIMIT, self.prefix, position]
        )

    async def reapply(self, entries: Sequence[LogEntry]) -> None:
        # A scratch position (0) so every entry is considered; each lead's own position
        # keeps newer scores in place. The projection's position does not move.
        scratch = f"{self.position_key}:reapply"
        await self.client.delete(scratch)
        try:
            await self._apply(scratch, entries)
        finally:
            await self.client.delete(scratch)

    async def project(self, entries: Sequence[LogEntry]) -> None:
        await self._apply(self.position_key, entries)

    async def _apply(self, position_key: str, entries: Sequence[LogEntry]) -> None:
        if not entries:
            return
        args: list[str | int | float] = [position_key, RECENT_LIMIT, self.prefix]
        for e in entries:
            if e.kind != "LeadScored":
                continue
            ev = e.event
            at = ev.scored_at.isoformat()
            change = {
                "lead_id": ev.lead_id,
                "score": ev.score,
                "previous_score": ev.previous_score,
                "grade": ev.grade,
                "model_version": ev.model_version,
                "at": at,
                "position": e.position,
            }
            args += [
                e.position, ev.org_id, ev.lead_id, ev.score, ev.grade,
                ev.components["fit"], ev.components["engagement"], ev.model_version, at,
                orjson.dumps(change).decode(), orjson.dumps(ev.factors).decode(),
            ]  # fmt: skip
        args.append(entries[-1].position)
        await self._script(keys=[self.channel], args=args)

    async def reset(self) -> None:
        cursor = 0
        while True:
            cursor, keys = await self.client.scan(cursor, match=f"{self.prefix}:*", count=1000)
            if keys:
                await self.client.delete(*keys)
            if cursor == 0:
                break
        await self.client.publish(self.channel, changes.FLUSH)

    async def close(self) -> None:
        """The client belongs to the caller."""
