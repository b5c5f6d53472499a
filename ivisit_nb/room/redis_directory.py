"""A :class:`~ivisit_nb.room.directory.Directory` shared through Redis by several room servers.

``ivisit-nb server --redis redis://HOST:PORT/DB`` runs one instance of a cluster;
every instance pointed at the same Redis database shares rooms, presence, name
claims and the relay of signalling. ``docs/room.md`` ("Clusters") tells the
design, the failure cases and what each one loses. In short:

* **The truth is in Redis**, changed only by Lua scripts, so each change is
  atomic. A user is one *claim*: the key ``claim:<skeleton>`` holds
  ``instance, connection, name, room, seq`` under a lease (``SET ... PX``,
  renewed by the owning instance). A copy without a TTL (``held:<skeleton>``)
  outlives a lease that ran out, so whoever frees the name can still announce
  who left: nobody ever disappears without a ``left``. Indexes: a sorted set
  per room, a set of claim keys per instance. Every change takes the next
  number of a global counter (``seq``) and is published on the ``events``
  channel inside the same script, so the events are in the order of the changes.
* **Each instance keeps a replica** of who is where, fed by those events and by
  a snapshot (on connecting, every 30 s, and after Redis lost its data). The
  hub's synchronous calls read the replica. A change is applied only if its
  ``seq`` is newer than what the replica has for that name, so events, replies
  and snapshots arriving by different connections cannot reorder presence.
  Every presence change, this instance's own users' included, reaches the hub
  through ``on_presence``: members hear of joins and leaves in one global order.
* **A hello is admitted before the hub sees it**: :meth:`RedisDirectory.admit`
  runs the ``hello`` script (claim the skeleton key with ``NX`` semantics, check
  the room's size, add to the room, publish), then waits until the replica has
  applied that change, so the ``welcome``'s member list and every later event
  line up exactly.
* **Liveness**: each instance renews a heartbeat key (``hb:<instance>``, 3 s TTL)
  every 0.5 s. Every instance sweeps every 0.5 s: an instance whose heartbeat is
  gone is *reaped* (its users leave their rooms, with ``left`` events). A claim
  held by a reaped or dead instance is free at once; the lease (60 s) is the
  backstop when no instance is left to sweep.
* **Routing**: a frame for a user of another instance is published on that
  instance's channel ``to:<instance>``. Frames and scripts go out through one
  ordered writer, so signals between two users keep their order.
* **Redis away**: new hellos are refused with :class:`Unavailable` (error code
  ``unavailable``); connected users and their peer-to-peer links carry on;
  signalling between two instances stops. When Redis is back, the instance
  re-asserts its users (``assert`` script) and resynchronises its replica.

All keys start with ``prefix`` (default ``ivisit:``); use another prefix or
another database number to run two clusters on one Redis. Scripts touch keys
they do not declare, so Redis Cluster (sharded Redis) is not supported; a
single Redis server (or a primary with replicas) is.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import heapq
import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from .directory import Address, ConnId, FrameCallback, PresenceCallback, Unavailable

log = logging.getLogger("ivisit_nb.room.cluster")

HEARTBEAT_EVERY = 0.5  # seconds between heartbeats (and sweeps for dead instances)
HEARTBEAT_TTL = 3.0  # an instance silent this long is dead: its users leave
RESYNC_EVERY = 30.0  # seconds between full snapshots of the shared state
RETRY_EVERY = 0.5  # seconds between attempts to reach Redis again
ADMIT_TIMEOUT = 5.0  # how long a hello may wait for Redis before it is refused
COMMAND_TIMEOUT = 2.0  # socket timeout of Redis commands
TOKEN_TTL = 30.0  # the cluster's token fingerprint outlives its last instance by this much
DEFAULT_LEASE = 60.0  # name lease until the hub tells us its own
MAX_BATCH = 512  # commands per pipeline round trip


class ClusterError(RuntimeError):
    """This instance must not join the cluster (for example, its ``--token`` differs)."""


# -- Lua -----------------------------------------------------------------------------------
# ARGV[1] is always the key prefix. A claim's value is
# "instance \t connection \t name \t room \t seq" (room empty for none); names and rooms
# never contain tabs (control characters are refused). Events on P.."events":
# "J|L \t epoch \t seq \t instance \t connection \t name \t room \t key".

_LIB = r"""
local P = ARGV[1]
local function fields(v)
  local t, i = {}, 1
  while true do
    local j = string.find(v, '\t', i, true)
    if not j then t[#t + 1] = string.sub(v, i); return t end
    t[#t + 1] = string.sub(v, i, j - 1)
    i = j + 1
  end
end
local function epoch(candidate)
  local e = redis.call('GET', P .. 'epoch')
  if not e then
    redis.call('SET', P .. 'epoch', candidate)
    e = candidate
  end
  return e
end
local function alive(inst)
  return redis.call('EXISTS', P .. 'hb:' .. inst) == 1
end
-- The claim on `key`: its value and whether its lease ran out (then only the shadow copy
-- `held:` is left, so that whoever frees it can still tell everyone who left).
local function current(key)
  local v = redis.call('GET', P .. 'claim:' .. key)
  if v then return v, false end
  v = redis.call('GET', P .. 'held:' .. key)
  if v then return v, true end
  return nil, false
end
local function drop(key, f, ep)
  redis.call('DEL', P .. 'claim:' .. key, P .. 'held:' .. key)
  redis.call('SREM', P .. 'inst:' .. f[1], key)
  if f[4] ~= '' then redis.call('ZREM', P .. 'room:' .. f[4], key .. '\t' .. f[3]) end
  local seq = redis.call('INCR', P .. 'seq')
  redis.call('PUBLISH', P .. 'events', table.concat({'L', ep, seq, f[1], f[2], f[3], f[4], key}, '\t'))
end
local function reap(inst, ep)
  if alive(inst) then return 0 end
  local n = 0
  for _, key in ipairs(redis.call('SMEMBERS', P .. 'inst:' .. inst)) do
    local v = current(key)
    if v then
      local f = fields(v)
      if f[1] == inst then drop(key, f, ep); n = n + 1 end
    end
  end
  redis.call('DEL', P .. 'inst:' .. inst)
  redis.call('SREM', P .. 'instances', inst)
  return n
end
-- Free `key` unless a live instance other than `inst` holds it under a lease that has not run
-- out; returns that holder's name, or nil once the key is free.
local function free(key, inst, ep)
  local v, lapsed = current(key)
  if not v then return nil end
  local f = fields(v)
  if not lapsed and f[1] ~= inst and alive(f[1]) then return f[3] end
  if f[1] ~= inst and not alive(f[1]) then reap(f[1], ep) end
  v = current(key)
  if v then drop(key, fields(v), ep) end
  return nil
end
local function put(inst, conn, name, key, room, lease, ep)
  local seq = redis.call('INCR', P .. 'seq')
  local value = table.concat({inst, conn, name, room, seq}, '\t')
  redis.call('SET', P .. 'claim:' .. key, value, 'PX', lease)
  redis.call('SET', P .. 'held:' .. key, value)
  redis.call('SADD', P .. 'inst:' .. inst, key)
  if room ~= '' then redis.call('ZADD', P .. 'room:' .. room, seq, key .. '\t' .. name) end
  redis.call('PUBLISH', P .. 'events', table.concat({'J', ep, seq, inst, conn, name, room, key}, '\t'))
  return seq
end
"""

# hello: ARGV = P, epoch candidate, instance, conn, name, key, room, limit, lease_ms
_HELLO = _LIB + r"""
local ep = epoch(ARGV[2])
local inst, conn, name, key, room = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
if not alive(inst) then return {'unavailable', ep} end
local v = redis.call('GET', P .. 'claim:' .. key)
if v and fields(v)[1] == inst then return {'name-taken', ep, fields(v)[3]} end  -- one of our live users
local holder = free(key, inst, ep)
if holder then return {'name-taken', ep, holder} end
if room ~= '' then
  local rk, limit = P .. 'room:' .. room, tonumber(ARGV[8])
  if redis.call('ZCARD', rk) >= limit then
    -- drop places whose claim lapsed without a leave (their lease ran out)
    for _, m in ipairs(redis.call('ZRANGE', rk, 0, -1)) do
      local t = string.find(m, '\t', 1, true)
      local v = current(string.sub(m, 1, t - 1))
      local ok = false
      if v then
        local g = fields(v)
        ok = g[3] == string.sub(m, t + 1) and g[4] == room
      end
      if not ok then redis.call('ZREM', rk, m) end
    end
    if redis.call('ZCARD', rk) >= limit then return {'room-full', ep} end
  end
end
return {'ok', ep, put(inst, conn, name, key, room, ARGV[9], ep)}
"""

# bye: ARGV = P, epoch candidate, instance, conn, key
_BYE = _LIB + r"""
local v = current(ARGV[5])
if not v then return 0 end
local f = fields(v)
if f[1] ~= ARGV[3] or f[2] ~= ARGV[4] then return 0 end
drop(ARGV[5], f, epoch(ARGV[2]))
return 1
"""

# heartbeat: ARGV = P, instance, ttl_ms, token_ttl_ms. 0 if the heartbeat had lapsed.
_HEARTBEAT = _LIB + r"""
if not redis.call('SET', P .. 'hb:' .. ARGV[2], '1', 'PX', ARGV[3], 'XX') then return 0 end
redis.call('PEXPIRE', P .. 'token', ARGV[4])
return 1
"""

# assert: ARGV = P, epoch candidate, instance, ttl_ms, lease_ms, token fingerprint, token_ttl_ms,
# strict (1: refuse a different token), then (conn, name, key, room) for each local user.
# Makes Redis hold exactly these users for this instance (unless another live instance took a
# name meanwhile: those names are returned as lost), then (re)starts the heartbeat.
_ASSERT = _LIB + r"""
local ep = epoch(ARGV[2])
local inst = ARGV[3]
local token = redis.call('GET', P .. 'token')
if token and token ~= ARGV[6] and ARGV[8] == '1' then return {'token-mismatch', ep} end
if not token then redis.call('SET', P .. 'token', ARGV[6], 'PX', ARGV[7]) end
local reply = {'ok', ep}
for i = 9, #ARGV, 4 do
  local conn, name, key, room = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local v = current(key)
  local f = v and fields(v)
  if f and f[1] == inst and f[2] == conn and f[4] == room then
    redis.call('SET', P .. 'claim:' .. key, v, 'PX', ARGV[5])
    redis.call('SADD', P .. 'inst:' .. inst, key)
    if room ~= '' then redis.call('ZADD', P .. 'room:' .. room, 'NX', f[5], key .. '\t' .. name) end
  else
    if free(key, inst, ep) then
      reply[#reply + 1] = name
    else
      put(inst, conn, name, key, room, ARGV[5], ep)
    end
  end
end
redis.call('SET', P .. 'hb:' .. inst, '1', 'PX', ARGV[4])
redis.call('SADD', P .. 'instances', inst)
return reply
"""

# sweep: ARGV = P, epoch candidate. Reaps every registered instance whose heartbeat is gone.
_SWEEP = _LIB + r"""
local n = 0
for _, inst in ipairs(redis.call('SMEMBERS', P .. 'instances')) do
  if not alive(inst) then n = n + reap(inst, epoch(ARGV[2])) end
end
return n
"""

# renew: ARGV = P, lease_ms, then (key, instance, conn) triples. Returns the keys no longer ours.
# A lease that ran out is renewed too if nobody took the name meanwhile (as in MemoryDirectory).
_RENEW = _LIB + r"""
local lost = {}
for i = 3, #ARGV, 3 do
  local v = current(ARGV[i])
  local f = v and fields(v)
  if f and f[1] == ARGV[i + 1] and f[2] == ARGV[i + 2] then
    redis.call('SET', P .. 'claim:' .. ARGV[i], v, 'PX', ARGV[2])
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
"""

# snapshot: ARGV = P, epoch candidate. {epoch, seq, claim value .. '\t' .. key, ...}
_SNAPSHOT = _LIB + r"""
local reply = {epoch(ARGV[2]), redis.call('GET', P .. 'seq') or '0'}
for _, inst in ipairs(redis.call('SMEMBERS', P .. 'instances')) do
  for _, key in ipairs(redis.call('SMEMBERS', P .. 'inst:' .. inst)) do
    local v = current(key)
    if v and fields(v)[1] == inst then reply[#reply + 1] = v .. '\t' .. key end
  end
end
return reply
"""

# leave: ARGV = P, epoch candidate, instance. A clean stop: everyone sees our users leave now.
_LEAVE = _LIB + r"""
redis.call('DEL', P .. 'hb:' .. ARGV[3])
return reap(ARGV[3], epoch(ARGV[2]))
"""

SCRIPTS = {
    "hello": _HELLO, "bye": _BYE, "heartbeat": _HEARTBEAT, "assert": _ASSERT, "sweep": _SWEEP,
    "renew": _RENEW, "snapshot": _SNAPSHOT, "leave": _LEAVE,
}


# -- Python side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Admission:
    """The shared directory's answer to one ``hello``: ``status`` is ``ok``, ``name-taken``
    (``holder`` is the name holding the look-alike key) or ``room-full``."""

    status: str
    name: str
    key: str
    room: str | None
    owner: Address
    holder: str | None = None


@dataclass(frozen=True)
class _Entry:
    """Where one user is, as the replica knows it."""

    room: str | None
    address: Address
    key: str


def _conn_id(text: str) -> ConnId:
    """Connection ids travel as text; ids made of ASCII digits come back as ``int``."""
    return int(text) if text.isascii() and text.isdigit() else text


def token_fingerprint(token: str | None, prefix: str) -> str:
    """What Redis keeps to check that every instance has the same ``--token``: a slow salted hash."""
    if token is None:
        return "none"
    salt = b"ivisit-nb cluster token|" + prefix.encode("utf-8")
    return hashlib.pbkdf2_hmac("sha256", token.encode("utf-8"), salt, 200_000).hex()


class RedisDirectory:
    """A :class:`~ivisit_nb.room.directory.SharedDirectory` on Redis (``redis.asyncio``).

    ``url`` is a Redis URL (``redis://HOST:PORT/DB``). Give the instance to a
    :class:`~ivisit_nb.room.app.RoomApp` (``RoomApp(directory=RedisDirectory(url))``,
    or ``ivisit-nb server --redis URL``); the app starts and stops it.

    :meth:`rooms` and :meth:`names` may be read from any thread; everything
    else runs on the app's event loop. :attr:`available` says whether Redis is
    reachable now, :attr:`problem` why not.
    """

    announces_presence = True

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "ivisit:",
        heartbeat_every: float = HEARTBEAT_EVERY,
        heartbeat_ttl: float = HEARTBEAT_TTL,
        resync_every: float = RESYNC_EVERY,
    ) -> None:
        try:
            import redis.asyncio  # noqa: F401
        except ImportError:
            raise ImportError(
                "a room-server cluster needs the redis package: pip install 'ivisit-nb[cluster]'"
            ) from None
        if heartbeat_ttl <= 2 * heartbeat_every:
            raise ValueError("heartbeat_ttl must be more than twice heartbeat_every")
        self.url = url
        self.prefix = prefix
        self.heartbeat_every = heartbeat_every
        self.heartbeat_ttl = heartbeat_ttl
        self.resync_every = resync_every
        self.instance = ""
        self.available = False
        self.problem = "not started"
        # the replica: readers on other threads take the lock
        self._lock = threading.Lock()
        self._users: dict[str, _Entry] = {}  # name -> where
        self._by_key: dict[str, str] = {}  # skeleton -> name
        self._rooms: dict[str, dict[str, None]] = {}  # room -> members in joining order
        self._epoch: str | None = None  # Redis's data generation (new after it lost its data)
        self._floor = 0  # the last snapshot's seq: older events are already in the replica
        self._name_seq: dict[str, int] = {}  # name -> seq of its last change (newer than _floor)
        self._seen = 0  # highest seq applied in this epoch
        self._grace_until = 0.0  # after Redis lost its data: no removals by snapshot until then
        self._resync_at = 0.0
        self._waiters: dict[str, list[tuple[int, int, asyncio.Future[None]]]] = {}
        self._waiter_ids = itertools.count()
        # this instance's users
        self._mine: dict[Address, tuple[str, str, str | None]] = {}  # owner -> (name, key, room)
        self._verdicts: dict[Address, Admission] = {}  # admitted, not yet taken up by the hub
        self._holder_hint: dict[str, str] = {}
        self._full: set[str] = set()
        self._lost: set[Address] = set()
        self._renewals: dict[str, Address] = {}
        self._lease_ms = int(DEFAULT_LEASE * 1000)
        self._retry: list[list[str]] = []  # bye scripts to run again once Redis is back
        # I/O
        self._queue: collections.deque[tuple[str, list[Any], asyncio.Future[Any] | None]] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._sha: dict[str, str] = {}
        self._redis: Any = None
        self._sub: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._strict_token = True
        self._fatal: ClusterError | None = None
        self._token = "none"
        self._nonce = os.urandom(6).hex()
        self._counter = itertools.count()
        self._on_presence: PresenceCallback = lambda room, user, joined: None
        self._on_frame: FrameCallback = lambda conn, text: None
        self._on_lost: Callable[[], None] = lambda: None

    # -- lifecycle ------------------------------------------------------------------------

    async def start(
        self, instance: str, *, token: str | None, on_presence: PresenceCallback,
        on_frame: FrameCallback, on_lost: Callable[[], None],
    ) -> None:
        """Connect and keep the replica fed. Returns after the first attempt to reach Redis:
        if Redis is down, the instance runs and refuses joins until it is back.

        Raises :class:`ClusterError` if the cluster runs with another ``--token``.
        """
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.instance = instance
        self._on_presence, self._on_frame, self._on_lost = on_presence, on_frame, on_lost
        self._token = await asyncio.get_running_loop().run_in_executor(None, token_fingerprint, token, self.prefix)
        # No automatic retries: a pipeline retried after a broken connection could run twice.
        common = dict(decode_responses=True, socket_connect_timeout=COMMAND_TIMEOUT, retry=Retry(NoBackoff(), 0))
        self._redis = aioredis.Redis.from_url(self.url, socket_timeout=COMMAND_TIMEOUT, **common)
        self._sub = aioredis.Redis.from_url(self.url, socket_timeout=None, **common)  # pub/sub waits for ever
        self._wake = asyncio.Event()
        first = asyncio.Event()
        self._tasks = [
            asyncio.ensure_future(self._supervise(first)),
            asyncio.ensure_future(self._write_forever()),
        ]
        await first.wait()
        if self._fatal is not None:
            await self.stop()
            raise self._fatal
        if not self.available:
            log.warning("room server %s starts without its cluster: %s; joins are refused until Redis answers",
                        instance, self.problem)

    async def stop(self) -> None:
        """Send what is queued (at most 2 s), then leave: our users leave everyone's presence now."""
        self._stopping = True
        deadline = time.monotonic() + 2.0
        while self._queue and self.available and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._redis is not None and "leave" in self._sha and self._fatal is None:
            try:
                await self._redis.evalsha(self._sha["leave"], 0, self.prefix, self._candidate(), self.instance)
            except Exception as exc:  # Redis away: our heartbeat runs out and the others reap us
                log.info("could not leave the cluster cleanly: %s", exc)
        for client in (self._redis, self._sub):
            if client is not None:
                closer = getattr(client, "aclose", None) or client.close
                try:
                    await closer()
                except Exception:
                    log.debug("closing a Redis client", exc_info=True)
        self._redis = self._sub = None
        self._fail_waiters("the server is stopping")
        self.available = False
        self.problem = "stopped"

    # -- the Directory interface (answers from the replica) --------------------------------

    def claim(self, name: str, key: str, owner: Address, lease_s: float, now: float) -> bool:
        """The verdict of :meth:`admit` for ``owner`` (which must come first)."""
        verdict = self._verdicts.pop(owner, None)
        if verdict is None or verdict.key != key:
            log.error("claim of %r without admit(): refused", name)
            return False
        if verdict.status == "name-taken":
            if verdict.holder is not None:
                self._holder_hint[key] = verdict.holder
            return False
        if verdict.status == "room-full":
            self._full.add(name)
        return True

    def renew(self, key: str, owner: Address, lease_s: float, now: float) -> bool:
        if owner in self._lost or owner not in self._mine:
            return False
        self._lease_ms = int(lease_s * 1000)
        self._renewals[key] = owner  # sent with the next heartbeat
        return True

    def release(self, key: str, owner: Address) -> bool:
        self._verdicts.pop(owner, None)
        self._lost.discard(owner)
        mine = self._mine.pop(owner, None)
        if mine is None:
            return False
        self._enqueue("bye", [self._candidate(), owner.instance, str(owner.conn), key])
        return True

    def holder(self, key: str, now: float) -> str | None:
        hint = self._holder_hint.pop(key, None)
        if hint is not None:
            return hint
        with self._lock:
            return self._by_key.get(key)

    def route(self, name: str, now: float) -> Address | None:
        with self._lock:
            entry = self._users.get(name)
            return None if entry is None else entry.address

    def join(self, room: str, name: str, limit: int) -> bool:
        """The room half of the verdict of :meth:`admit` (the place is taken there)."""
        if name in self._full:
            self._full.discard(name)
            return False
        return True

    def leave(self, room: str, name: str) -> None:
        """Nothing to do: :meth:`release` gives up the name and the room place in one script."""

    def members(self, room: str) -> list[str]:
        with self._lock:
            return list(self._rooms.get(room, ()))

    def rooms(self) -> dict[str, list[str]]:
        with self._lock:
            return {room: list(members) for room, members in self._rooms.items()}

    def names(self) -> list[str]:
        with self._lock:
            return list(self._users)

    # -- the SharedDirectory interface ------------------------------------------------------

    async def admit(self, name: str, key: str, room: str | None, owner: Address, limit: int, lease_s: float) -> Admission:
        """Claim ``key`` for ``name`` and a place in ``room`` in Redis; wait until the replica has it.

        Raises :class:`Unavailable` when Redis cannot be reached or does not answer
        within 5 s. The hub's next :meth:`claim` and :meth:`join` report the verdict.
        """
        if not self.available:
            raise Unavailable(f"{self._why()}; try again in a moment or at another server of the cluster")
        self._lease_ms = int(lease_s * 1000)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue(
            "hello",
            [self._candidate(), owner.instance, str(owner.conn), name, key, room or "", str(limit), str(self._lease_ms)],
            fut,
        )
        try:
            reply = await asyncio.wait_for(fut, ADMIT_TIMEOUT)
        except asyncio.TimeoutError:
            raise Unavailable(
                f"the cluster's Redis did not answer within {ADMIT_TIMEOUT:g} s; try again in a moment"
            ) from None
        status = reply[0]
        if status == "unavailable":
            raise Unavailable("this server is (re)joining its cluster; try again in a moment")
        holder = reply[2] if status == "name-taken" and len(reply) > 2 else None
        if status == "ok":
            self._mine[owner] = (name, key, room)
            try:
                await self._wait_seen(reply[1], int(reply[2]), ADMIT_TIMEOUT)
            except (asyncio.TimeoutError, Unavailable):
                self.release(key, owner)
                raise Unavailable(
                    "this server does not hear its cluster's events right now; try again in a moment"
                ) from None
        verdict = Admission(status, name, key, room, owner, holder)
        self._verdicts[owner] = verdict
        return verdict

    def forward(self, address: Address, text: str) -> None:
        """Publish ``text`` for connection ``address.conn`` on instance ``address.instance``'s channel."""
        if not self.available:
            log.debug("dropped a frame for %s: Redis is away", address)
            return
        self._enqueue("publish", [f"{self.prefix}to:{address.instance}", f"{address.conn}\t{text}"])

    # -- the writer: one ordered stream of scripts and publishes -----------------------------

    def _candidate(self) -> str:
        """An epoch name to use if Redis has none (it lost its data, or is new)."""
        return f"{self._nonce}-{next(self._counter)}"

    def _enqueue(self, kind: str, args: list[Any], fut: asyncio.Future[Any] | None = None) -> None:
        self._queue.append((kind, args, fut))
        if self._wake is not None:
            self._wake.set()

    async def _write_forever(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_BATCH))]
                await self._write(batch)

    async def _write(self, batch: list[tuple[str, list[Any], asyncio.Future[Any] | None]]) -> None:
        import redis.exceptions

        results: list[Any]
        try:
            if not self.available or "hello" not in self._sha:
                raise redis.exceptions.ConnectionError(self._why())
            async with self._redis.pipeline(transaction=False) as pipe:
                for kind, args, _ in batch:
                    if kind == "publish":
                        pipe.execute_command("PUBLISH", *args)
                    else:
                        pipe.execute_command("EVALSHA", self._sha[kind], 0, self.prefix, *args)
                results = await pipe.execute(raise_on_error=False)
        except (redis.exceptions.RedisError, OSError) as exc:
            results = [exc] * len(batch)
            if self.available:
                self._down(f"lost Redis at {self.url}: {exc}")
        for (kind, args, fut), result in zip(batch, results):
            failed = isinstance(result, BaseException)
            if failed and "NOSCRIPT" in str(result):
                self._down("Redis forgot our scripts (SCRIPT FLUSH or a restart)")
            if kind == "hello":
                if failed:  # it may have run: undo it once Redis is back (a no-op if it did not)
                    self._retry.append([self._candidate(), args[1], args[2], args[4]])
                elif fut is None or fut.done():  # the hello was given up: free its claim
                    if result[0] == "ok":
                        self._enqueue("bye", [self._candidate(), args[1], args[2], args[4]])
                    continue
                if fut is not None and not fut.done():
                    if failed:
                        fut.set_exception(Unavailable(f"{self._why()}; try again in a moment"))
                    else:
                        fut.set_result(result)
            elif kind == "bye" and failed:
                self._retry.append(args)
            elif failed:
                log.debug("dropped a frame for another instance: %s", result)

    # -- the connection to Redis --------------------------------------------------------------

    def _why(self) -> str:
        return f"this server cannot reach its cluster's Redis ({self.problem})"

    def _down(self, problem: str) -> None:
        if self.available:
            log.warning("room server %s: %s; refusing new joins until Redis is back", self.instance, problem)
        self.available = False
        self.problem = problem
        self._fail_waiters(problem)

    async def _supervise(self, first: asyncio.Event) -> None:
        import redis.exceptions

        while not self._stopping:
            try:
                await self._session(first)
            except ClusterError as exc:
                self._fatal = exc
                self._down(str(exc))
                log.error("%s", exc)
            except (redis.exceptions.RedisError, OSError, asyncio.TimeoutError) as exc:
                self._down(f"lost Redis at {self.url}: {exc or type(exc).__name__}")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug: log it, keep the instance running
                log.exception("cluster connection failed")
                self._down(f"internal error: {exc!r}")
            first.set()
            await asyncio.sleep(RETRY_EVERY if self._fatal is None else 5.0)

    async def _session(self, first: asyncio.Event) -> None:
        """One connection's lifetime: subscribe, assert our users, resync, then serve until it fails."""
        await self._redis.ping()
        for name, source in SCRIPTS.items():
            self._sha[name] = await self._redis.script_load(source)
        pubsub = self._sub.pubsub()
        subscribed = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        try:
            await pubsub.subscribe(f"{self.prefix}events", f"{self.prefix}to:{self.instance}")
            tasks.append(asyncio.ensure_future(self._read(pubsub, subscribed)))
            waiting = asyncio.ensure_future(subscribed.wait())
            done, _ = await asyncio.wait([tasks[0], waiting], timeout=COMMAND_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            if tasks[0] in done:
                tasks[0].result()
            if not subscribed.is_set():
                raise asyncio.TimeoutError("Redis did not confirm our subscriptions")
            await self._assert(strict=self._strict_token)
            self._strict_token = False  # checked once, when this instance joins
            await self._resync()
            self.available, self.problem = True, ""
            log.info("room server %s is in its cluster (Redis %s)", self.instance, self.url)
            first.set()
            retry, self._retry = self._retry, []
            for args in retry:
                self._enqueue("bye", args)
            tasks.append(asyncio.ensure_future(self._maintain()))
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            raise OSError("the Redis connection ended")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                closer = getattr(pubsub, "aclose", None) or pubsub.reset
                await closer()
            except Exception:
                log.debug("closing the subscription", exc_info=True)

    async def _read(self, pubsub: Any, subscribed: asyncio.Event) -> None:
        events, confirmations = f"{self.prefix}events", 0
        async for msg in pubsub.listen():
            kind = msg.get("type")
            if kind == "subscribe":
                confirmations += 1
                if confirmations >= 2:
                    subscribed.set()
            elif kind == "message":
                try:
                    if msg["channel"] == events:
                        self._on_event(msg["data"])
                    else:
                        conn, _, text = msg["data"].partition("\t")
                        self._on_frame(conn, text)
                except Exception:
                    log.exception("handling a cluster message %r", msg.get("data", "")[:200])

    async def _maintain(self) -> None:
        """Heartbeat, sweep for dead instances, renew leases, resync now and then."""
        ttl_ms, token_ms = str(int(self.heartbeat_ttl * 1000)), str(int(TOKEN_TTL * 1000))
        self._resync_at = time.monotonic() + self.resync_every
        while True:
            if not await self._redis.evalsha(self._sha["heartbeat"], 0, self.prefix, self.instance, ttl_ms, token_ms):
                log.warning("room server %s: its heartbeat lapsed (a stall, or Redis lost its data); "
                            "announcing its users again", self.instance)
                await self._assert(strict=False)
            await self._redis.evalsha(self._sha["sweep"], 0, self.prefix, self._candidate())
            if self._renewals:
                await self._renew()
            now = time.monotonic()
            if now >= self._resync_at and now >= self._grace_until:
                await self._resync()
            await asyncio.sleep(self.heartbeat_every)

    async def _assert(self, *, strict: bool) -> None:
        args = [
            self._candidate(), self.instance, str(int(self.heartbeat_ttl * 1000)), str(self._lease_ms),
            self._token, str(int(TOKEN_TTL * 1000)), "1" if strict else "0",
        ]
        owners = {}
        for owner, (name, key, room) in list(self._mine.items()):
            args += [str(owner.conn), name, key, room or ""]
            owners[name] = owner
        reply = await self._redis.evalsha(self._sha["assert"], 0, self.prefix, *args)
        if reply[0] == "token-mismatch":
            raise ClusterError(
                "this server's --token differs from the one the other servers of the cluster use "
                f"(Redis {self.url}); start every instance with the same --token (or $IVISIT_NB_TOKEN)"
            )
        self._note_lost([owners[name] for name in reply[2:] if name in owners])

    async def _renew(self) -> None:
        batch, self._renewals = self._renewals, {}
        args: list[str] = [str(self._lease_ms)]
        for key, owner in batch.items():
            args += [key, owner.instance, str(owner.conn)]
        lost = await self._redis.evalsha(self._sha["renew"], 0, self.prefix, *args)
        self._note_lost([batch[key] for key in lost if batch[key] in self._mine])

    def _note_lost(self, owners: list[Address]) -> None:
        if owners:
            log.warning("room server %s lost %d names to other connections", self.instance, len(owners))
            self._lost.update(owners)
            self._on_lost()

    # -- the replica --------------------------------------------------------------------------

    def _on_event(self, data: str) -> None:
        f = data.split("\t")
        kind, epoch, seq, name = f[0], f[1], int(f[2]), f[5]
        if epoch != self._epoch:
            self._new_epoch(epoch)
        entry = _Entry(f[6] or None, Address(f[3], _conn_id(f[4])), f[7]) if kind == "J" else None
        changes: list[tuple[str, str, bool]] = []
        if seq > max(self._floor, self._name_seq.get(name, 0)):
            self._name_seq[name] = seq
            changes = self._set(name, entry)
        self._seen = max(self._seen, seq)
        self._announce(changes)
        self._wake_waiters()

    async def _resync(self) -> None:
        """Bring the replica up to a snapshot of Redis (removals wait for the grace after data loss)."""
        reply = await self._redis.evalsha(self._sha["snapshot"], 0, self.prefix, self._candidate())
        epoch, seq = reply[0], int(reply[1])
        if epoch != self._epoch:
            self._new_epoch(epoch)
        target: dict[str, _Entry] = {}
        for value in reply[2:]:
            inst, conn, name, room, _, key = value.split("\t")
            target[name] = _Entry(room or None, Address(inst, _conn_id(conn)), key)
        now = time.monotonic()
        removals = now >= self._grace_until
        changes: list[tuple[str, str, bool]] = []
        for name in list(self._users) + [n for n in target if n not in self._users]:
            if self._name_seq.get(name, 0) > seq:
                continue  # an event newer than the snapshot already said where this user is
            entry = target.get(name)
            if entry is None and not removals:
                continue
            changes += self._set(name, entry)
        self._floor = max(self._floor, seq)
        self._name_seq = {n: s for n, s in self._name_seq.items() if s > self._floor}
        self._seen = max(self._seen, seq)
        self._resync_at = now + (self.resync_every if removals else max(self._grace_until - now, 0.0))
        self._announce(changes)
        self._wake_waiters()

    def _new_epoch(self, epoch: str) -> None:
        if self._epoch is not None:
            log.warning("the cluster's Redis lost its data (a restart?); instances announce their users again")
            # Until every live instance has re-asserted its users, absence from a snapshot means nothing.
            self._grace_until = time.monotonic() + self.heartbeat_ttl + 2 * self.heartbeat_every
            self._resync_at = self._grace_until
        self._epoch, self._floor, self._name_seq, self._seen = epoch, 0, {}, 0
        self._fail_waiters("the cluster's Redis lost its data", keep=epoch)

    def _set(self, name: str, entry: _Entry | None) -> list[tuple[str, str, bool]]:
        """Make the replica say ``entry`` for ``name``; the presence changes that makes."""
        with self._lock:
            old = self._users.get(name)
            if old == entry:
                return []
            if old is not None:
                del self._users[name]
                if self._by_key.get(old.key) == name:
                    del self._by_key[old.key]
                members = self._rooms.get(old.room) if old.room is not None else None
                if members is not None:
                    members.pop(name, None)
                    if not members:
                        del self._rooms[old.room]  # type: ignore[arg-type]
            if entry is not None:
                self._users[name] = entry
                self._by_key[entry.key] = name
                if entry.room is not None:
                    self._rooms.setdefault(entry.room, {})[name] = None
        changes = []
        if old is not None and old.room is not None and (entry is None or entry.room != old.room):
            changes.append((old.room, name, False))
        if entry is not None and entry.room is not None:
            changes.append((entry.room, name, True))  # also when only the address changed: re-link
        return changes

    def _announce(self, changes: list[tuple[str, str, bool]]) -> None:
        for room, name, joined in changes:
            try:
                self._on_presence(room, name, joined)
            except Exception:
                log.exception("announcing that %s %s %s", name, "joined" if joined else "left", room)

    async def _wait_seen(self, epoch: str, seq: int, timeout: float) -> None:
        if epoch == self._epoch and self._seen >= seq:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters.setdefault(epoch, []), (seq, next(self._waiter_ids), fut))
        try:
            await asyncio.wait_for(fut, timeout)
        finally:
            if not fut.done():
                fut.cancel()

    def _wake_waiters(self) -> None:
        heap = self._waiters.get(self._epoch or "")
        while heap and heap[0][0] <= self._seen:
            _, _, fut = heapq.heappop(heap)
            if not fut.done():
                fut.set_result(None)

    def _fail_waiters(self, why: str, keep: str | None = None) -> None:
        for epoch in [e for e in self._waiters if e != keep]:
            for _, _, fut in self._waiters.pop(epoch):
                if not fut.done():
                    fut.set_exception(Unavailable(why))
