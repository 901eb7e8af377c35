"""SharedDict on Redis: the same mapping and txn(), kept in a Redis server.

``SharedDict.connect("redis://host:6379/0", "jobs")`` returns a
:class:`RedisDict`.  Keys and values are encoded exactly as in a segment
(``_core.encode_key`` / ``_core.encode_value``), so ``1``, ``1.0`` and
``True`` are one key here too and a value reads back the same from either
backend.  docs/remote.md has the design: the Redis keys, the writer lease
and its fencing token, the reader registrations, and what holds when
Redis itself fails over.

In short: a write txn takes the dict's writer lease (``SET NX PX``; a
waiter blocks on a list, never polls hot), reads through to Redis, buffers
its writes in the client, and commits them in one Lua script that first
checks the lease is still its own -- so a client that was paused or cut
off past its lease commits nothing.  A read txn registers itself (with an
expiry) and sees one snapshot: a writer's commit waits until the read txns
registered before it have ended.  Each operation outside a txn is one
atomic Redis command or script.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import re
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import Any, Final, NoReturn, TypeVar, cast

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from . import _core
from .dict import _HandleMethods, _TxnMethods
from .errors import (CorruptSegmentError, Error, IncompatibleSegmentError,
                     LockTimeout, NestedTransactionError, ReadOnlyError,
                     SegmentClosedError, SegmentExistsError,
                     SegmentNotFoundError, TransactionClosedError,
                     TransactionsOpenError, TransactionThreadError)

__all__ = ["RedisDict", "RedisDictTxn", "LeaseLostError",
           "RemoteUnavailableError", "FORMAT"]

#: The layout of the Redis keys (docs/remote.md); kept in the meta hash.
FORMAT: Final = 2
_KEYS, _VALUES, _ITEMS = 0, 1, 2
_MISSING: Final = object()
_SLICE = 1.0            # longest blocking wait before looking again (s)
_TIMEOUT = 10.0         # a handle's default bound on connecting and replies
_TICK = 0.1             # Redis ends a BLPOP on its clock tick (hz 10): late
_MAX_TIMEOUT = 1e9


class LeaseLostError(Error, RuntimeError):
    """A txn's lease expired or was taken over (the client was paused or
    cut off for longer than ``lease=``): nothing of the txn was applied."""


class RemoteUnavailableError(Error, ConnectionError):
    """The Redis server could not be reached, did not answer within the
    handle's ``timeout``, the connection broke, or Redis refused the
    dict's commands (a database number it does not have, an ACL, out of
    memory, a read-only replica)."""


# ---- the scripts -----------------------------------------------------
#
# A script gets the dict's keys in this order (all under one hash tag,
# so a Redis Cluster keeps them in one slot), or the few it uses
# (_SCRIPT_KEYS: fewer keys, a cheaper call):
#   M meta hash   D data hash   O order zset   K key kinds hash
#   L writer lease   R readers zset   W drain flag
#   N writers' wake list   Q readers' wake list   X drain wake list
#   C committed txns' tokens (zset scored by fence)
_KEY_NAMES: Final = "MDOKLRWNQXC"
_COMMITS_KEPT: Final = 256   # tokens in C: a retried commit looks there

_PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function gone(id) return redis.call('HGET', M, 'id') ~= id end
local function live_readers()
  if redis.call('EXISTS', R) == 0 then return 0 end
  redis.call('ZREMRANGEBYSCORE', R, '-inf', now_ms())
  return redis.call('ZCARD', R)
end
local function put(field, value, kind)
  if redis.call('HSET', D, field, value) == 1 then
    redis.call('ZADD', O, redis.call('HINCRBY', M, 'next', 1), field)
    if kind ~= '0' then redis.call('HSET', K, field, kind) end
  end
end
local function del(field)
  if redis.call('HDEL', D, field) == 0 then return 0 end
  redis.call('ZREM', O, field)
  redis.call('HDEL', K, field)
  return 1
end
local function bump() return redis.call('HINCRBY', M, 'version', 1) end
local function wake()
  redis.call('LPUSH', N, 1)
  redis.call('LTRIM', N, 0, 0)
  local n = tonumber(redis.call('HGET', M, 'rwait') or '0')
  if n > 0 then
    for i = 1, n do redis.call('LPUSH', Q, 1) end
    redis.call('LTRIM', Q, 0, n - 1)
    redis.call('HSET', M, 'rwait', 0)
  end
end
local function read(what, from)
  if what == 'g' then
    local out = {}
    for i = from, #ARGV do out[#out + 1] = redis.call('HGET', D, ARGV[i]) end
    return out
  elseif what == 'n' then
    return redis.call('HLEN', D)
  elseif what == 'x' then
    local out = {redis.call('HLEN', D)}
    for i = from, #ARGV do
      out[#out + 1] = redis.call('HEXISTS', D, ARGV[i])
    end
    return out
  end
  local keys = redis.call('ZRANGE', O, 0, -1)
  local values = {}
  if what ~= 'k' then
    for i = 1, #keys do values[i] = redis.call('HGET', D, keys[i]) end
  end
  return {keys, redis.call('HGETALL', K), values}
end
"""

# create: ARGV id, format, created -> 1, or 0 if the name is taken
_CREATE = """
if redis.call('EXISTS', M) == 1 then return 0 end
redis.call('DEL', D, O, K, L, R, W, N, Q, X, C)
redis.call('HSET', M, 'id', ARGV[1], 'format', ARGV[2], 'created', ARGV[3],
           'version', 0, 'fence', 0, 'next', 0, 'rwait', 0, 'forgot', 0)
return 1
"""

# one write outside a txn: ARGV id, op ('s' set, 'd' del, 'c' clear),
# field, value, kind -> 1 done, 0 (del) no such key, -1 gone, -2 busy
_SINGLE = """
if gone(ARGV[1]) then return -1 end
if redis.call('EXISTS', L, R) > 0 and
   (redis.call('EXISTS', L) == 1 or live_readers() > 0) then return -2 end
local op = ARGV[2]
if op == 's' then put(ARGV[3], ARGV[4], ARGV[5])
elseif op == 'd' then
  if del(ARGV[3]) == 0 then return 0 end
else redis.call('DEL', D, O, K) end
bump()
return 1
"""

# take the writer lease: ARGV id, client name, lease ms
# -> {1, token} | {0, pttl, holder} | {-1}
_ACQUIRE = """
if gone(ARGV[1]) then return {-1} end
local cur = redis.call('GET', L)
if cur then return {0, redis.call('PTTL', L), cur} end
local token = redis.call('HINCRBY', M, 'fence', 1) .. ' ' .. ARGV[2]
redis.call('SET', L, token, 'PX', ARGV[3])
return {1, token}
"""

# keep the lease: ARGV token, lease ms -> 1, or 0 if it is no longer ours
_RENEW = """
if redis.call('GET', L) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', L, ARGV[2])
if redis.call('GET', W) == ARGV[1] then redis.call('PEXPIRE', W, ARGV[2]) end
return 1
"""

# give up what a token holds (an abort), or clear what a client that is
# gone held: the lease, the drain flag, a read registration.
# ARGV token -> 1 if it held the lease or the drain flag, else 0
_RELEASE = """
local held = 0
if redis.call('GET', L) == ARGV[1] then redis.call('DEL', L); held = 1 end
if redis.call('GET', W) == ARGV[1] then redis.call('DEL', W); held = 1 end
redis.call('ZREM', R, ARGV[1])
if held == 1 then wake() end
return held
"""

# commit: ARGV token, id, lease ms, cleared ('0'/'1'), then per write
# op ('s' set, 'f' set moved to the end, 'd' del), field, value, kind
# -> {1, version} | {0, ms to the first reader's expiry, readers...} |
#    {-1} gone | {-3} lease lost, nothing applied | {-4} the lease is
#    gone and whether this token committed was forgotten (C is trimmed)
_COMMIT = """
if gone(ARGV[2]) then return {-1} end
local fence = tonumber(string.match(ARGV[1], '^%d+'))
if redis.call('GET', L) ~= ARGV[1] then
  if redis.call('ZSCORE', C, ARGV[1]) then
    return {1, tonumber(redis.call('HGET', M, 'version'))}
  end
  if fence <= tonumber(redis.call('HGET', M, 'forgot') or '0') then
    return {-4}
  end
  return {-3}
end
if live_readers() > 0 then
  redis.call('PEXPIRE', L, ARGV[3])
  redis.call('SET', W, ARGV[1], 'PX', ARGV[3])
  local first = redis.call('ZRANGE', R, 0, 0, 'WITHSCORES')
  local out = {0, tonumber(first[2]) - now_ms()}
  for _, r in ipairs(redis.call('ZRANGE', R, 0, 99)) do out[#out + 1] = r end
  return out
end
local changed = ARGV[4] == '1'
if changed then redis.call('DEL', D, O, K) end
for i = 5, #ARGV, 4 do
  if ARGV[i] == 'd' then del(ARGV[i + 1])
  else
    if ARGV[i] == 'f' then del(ARGV[i + 1]) end
    put(ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
  end
  changed = true
end
local v
if changed then v = bump()
else v = tonumber(redis.call('HGET', M, 'version')) end
redis.call('ZADD', C, fence, ARGV[1])
if redis.call('ZCARD', C) > {kept} then
  redis.call('HSET', M, 'forgot', redis.call('ZPOPMIN', C)[2])
end
redis.call('DEL', L, W)
wake()
return {1, v}
""".replace("{kept}", str(_COMMITS_KEPT))

# begin a read txn: ARGV id, reader token, lease ms
# -> {1} | {0, pttl of the drain flag, the drainer's token} | {-1}
_READ_BEGIN = """
if gone(ARGV[1]) then return {-1} end
local drainer = redis.call('GET', W)
if drainer then
  redis.call('HINCRBY', M, 'rwait', 1)
  return {0, redis.call('PTTL', W), drainer}
end
redis.call('ZADD', R, now_ms() + tonumber(ARGV[3]), ARGV[2])
return {1}
"""

# end a read txn: ARGV reader token
_READ_END = """
redis.call('ZREM', R, ARGV[1])
if redis.call('EXISTS', W) == 1 then
  redis.call('LPUSH', X, 1)
  redis.call('LTRIM', X, 0, 0)
end
return 1
"""

# a read inside a read txn: ARGV reader token, lease ms, what, fields...
# -> {1, result} | {-3} (the registration expired, or the dict is gone)
_READ_IN = """
if not redis.call('ZSCORE', R, ARGV[1]) then return {-3} end
redis.call('ZADD', R, 'XX', now_ms() + tonumber(ARGV[2]), ARGV[1])
return {1, read(ARGV[3], 4)}
"""

# a consistent read outside a read txn: ARGV id, what, fields...
# -> {1, result} | {-1} gone
_READ = """
if gone(ARGV[1]) then return {-1} end
return {1, read(ARGV[2], 3)}
"""

# a read inside a write txn, which also renews its lease: ARGV id, token,
# lease ms, what, fields... -> {1, result} | {-1} gone | {-3} lease lost
_READ_HELD = """
if gone(ARGV[1]) then return {-1} end
if redis.call('GET', L) ~= ARGV[2] then return {-3} end
redis.call('PEXPIRE', L, ARGV[3])
return {1, read(ARGV[4], 5)}
"""

# remove the dict: ARGV id -> 1, or 0 if it is not (or no longer) ours
_UNLINK = """
if gone(ARGV[1]) then return 0 end
redis.call('DEL', M, D, O, K, L, R, W, N, Q, X, C)
return 1
"""

# the keys of the scripts that use fewer than all (a single write is the
# commonest call: it passes six keys, not eleven)
_SCRIPT_KEYS: Final = {"single": "MDOKLR"}


def _source(which: str) -> str:
    """Script `which` with the prelude, its KEYS named by letter."""
    letters = _SCRIPT_KEYS.get(which, _KEY_NAMES)
    names = ", ".join(letters)
    values = ", ".join(f"KEYS[{i + 1}]" for i in range(len(letters)))
    return f"local {names} = {values}\n" + _PRELUDE + _SCRIPTS[which]


_SCRIPTS: Final = {
    "create": _CREATE, "single": _SINGLE, "acquire": _ACQUIRE,
    "renew": _RENEW, "release": _RELEASE, "commit": _COMMIT,
    "read_begin": _READ_BEGIN, "read_end": _READ_END, "read_in": _READ_IN,
    "read": _READ, "read_held": _READ_HELD, "unlink": _UNLINK,
}

# ---- helpers ------------------------------------------------------------

_F = TypeVar("_F", bound=Callable[..., Any])
_tokens = itertools.count(1)
# (pid, thread, url, name) -> the txn that thread has open on that dict
_open_txns: weakref.WeakValueDictionary[tuple[int, int, str, str],
                                        RedisDictTxn] = \
    weakref.WeakValueDictionary()
_open_lock = threading.Lock()   # guards _open_txns and making clients


def _check_timeout(timeout: object) -> float | None:
    """txn()'s timeout, checked as the shared-memory backend checks it."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be None or a number of seconds, not "
                        f"{type(timeout).__name__}")
    value = float(timeout)
    if not (math.isfinite(value) and 0 <= value <= _MAX_TIMEOUT):
        raise ValueError(f"timeout must be from 0 to {_MAX_TIMEOUT:g} "
                         f"seconds (got {timeout})")
    return value


def _client_name() -> str:
    """A connection name unique to this handle in this process: a waiter
    that finds no connection of that name knows the holder is gone."""
    host = re.sub(r"[^A-Za-z0-9.-]", "", socket.gethostname())[:40]
    return f"shmtxn-{host}-{os.getpid()}-{secrets.token_hex(6)}"


def _holder_name(token: bytes) -> bytes:
    """The connection name in a lease or reader token."""
    return token.partition(b" ")[2]


class _Field:
    """One buffered write of a write txn: op b's' (set), b'f' (set after
    a delete in this txn: it moves to the end), b'd' (delete)."""

    __slots__ = ("op", "value", "kind")

    def __init__(self, op: bytes, value: bytes, kind: int) -> None:
        self.op, self.value, self.kind = op, value, kind


def _wrapped(method: _F) -> _F:
    """Turn Redis client errors into shmtxn errors naming the dict."""
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except redis.RedisError as e:
            handle = self if isinstance(self, RedisDict) else self._d
            raise handle._redis_failed(e) from e
    functools.update_wrapper(call, method)  # its name, doc, signature
    return call  # type: ignore[return-value]


def _reconnect(url: str, name: str, read_only: bool, lease: float,
               timeout: float | None = None) -> RedisDict:
    """Unpickle a handle: connect again by URL and name."""
    return RedisDict(url, name, read_only=read_only, lease=lease,
                     timeout=timeout)


# ---- the handle -----------------------------------------------------------

class RedisDict(_HandleMethods, MutableMapping[Any, Any]):
    """A SharedDict kept in Redis (``SharedDict.connect(url, name)``).

    ``RedisDict(url, name, create=False, *, read_only=False, timeout=None,
    lease=10.0)``: ``create`` is False (attach), True (create; the name
    must be free) or None (either); ``timeout`` (seconds, default 10)
    bounds connecting and waiting for each reply from Redis
    (RemoteUnavailableError beyond it); ``lease`` is how long (seconds) a txn's claim on the dict outlives a
    client that stopped talking to Redis.  The handle that created the
    dict owns it: leaving its ``with`` block removes it.
    """

    __slots__ = ("_url", "_name", "_read_only", "_lease_ms", "_lease",
                 "_timeout", "_created", "_creator_pid", "_id", "_keys",
                 "_client", "_client_pid", "_conn_name", "_scripts",
                 "_closed", "__weakref__")

    def __init__(self, url: str, name: str, create: bool | None = False, *,
                 read_only: bool = False, timeout: float | None = None,
                 lease: float = 10.0) -> None:
        self._closed = True
        if not isinstance(url, str) or not isinstance(name, str):
            raise TypeError("url and name must be str")
        if not name or "\0" in name or len(name) > 248:
            raise ValueError(f"bad SharedDict name {name!r}: it must be 1 "
                             f"to 248 characters, without NUL")
        if name.startswith("}"):
            # the keys' hash tag {NAME} ends at the first '}': it would be
            # empty, and a Redis Cluster would spread the keys over slots
            raise ValueError(f"bad SharedDict name {name!r} for Redis: it "
                             f"must not start with '}}'")
        if create not in (True, False, None):
            raise TypeError("create must be True, False or None")
        if isinstance(lease, bool) or not isinstance(lease, (int, float)) \
                or not (math.isfinite(lease) and 0.01 <= lease <= 86400):
            raise ValueError(f"lease must be 0.01 to 86400 seconds "
                             f"(got {lease!r})")
        if create and read_only:
            raise ValueError("create=True with read_only=True")
        self._url, self._name, self._read_only = url, name, bool(read_only)
        checked = _check_timeout(timeout)
        if checked == 0:
            raise ValueError("timeout must be more than 0 seconds (or None "
                             "for the default)")
        self._timeout: float = _TIMEOUT if checked is None else checked
        self._lease = float(lease)
        self._lease_ms = max(1, int(lease * 1000))
        self._keys = self._key_names(b"")
        self._client: redis.Redis | None = None
        self._client_pid = 0
        self._conn_name = ""
        self._scripts: dict[str, Script] = {}
        self._created = False
        self._creator_pid = 0
        self._id = b""
        self._closed = False
        try:
            self._open(create)
        except BaseException:
            if self._created:  # made, then failed: leave nothing behind
                try:
                    self._script("unlink", self._id)
                except (Error, redis.RedisError):
                    pass
            self._disconnect()
            self._closed = True
            raise

    def _key_names(self, dict_id: bytes) -> list[str]:
        """The Redis keys of this dict (docs/remote.md); the data keys D,
        O and K carry the id of the dict's creation, so a plain HGET of a
        handle whose dict was removed and made again under its name finds
        nothing rather than the newer dict's data."""
        prefix = f"shmtxn:{{{self._name}}}:"
        return [prefix + k + (f":{dict_id.decode()}" if k in "DOK" else "")
                for k in _KEY_NAMES]

    @_wrapped
    def _open(self, create: bool | None) -> None:
        r = self._redis()
        if create is not False:
            new_id = secrets.token_hex(16).encode()
            self._keys = self._key_names(new_id)
            if self._script("create", new_id, FORMAT, f"{time.time():.6f}"):
                self._created, self._creator_pid = True, os.getpid()
                self._id = new_id
                return
            if create:
                raise SegmentExistsError(
                    f"SharedDict {self._name!r} already exists on "
                    f"{self._url}; attach with create=False or None, or "
                    f"remove it (unlink())")
        meta = r.hmget(self._keys[0], ["id", "format"])
        if meta[0] is None:
            raise SegmentNotFoundError(
                f"no SharedDict {self._name!r} on {self._url}; create it "
                f"with create=True (or create=None)")
        if meta[1] != str(FORMAT).encode():
            raise IncompatibleSegmentError(
                f"SharedDict {self._name!r} on {self._url} has key layout "
                f"{meta[1]!r}, this shmtxn reads layout {FORMAT}")
        self._id = cast(bytes, meta[0])
        self._keys = self._key_names(self._id)

    # -- the connection --

    def _redis(self) -> redis.Redis:
        """This process's client (a forked child makes its own)."""
        client = self._client
        if client is not None and self._client_pid == os.getpid():
            return client
        with _open_lock:  # one client per process: its name is our lease's
            if self._closed:
                raise SegmentClosedError(f"SharedDict {self._name!r} on "
                                         f"{self._url} is closed")
            if self._client is None or self._client_pid != os.getpid():
                name = _client_name()
                self._scripts = {}
                client = redis.Redis.from_url(
                    self._url, client_name=name,
                    retry=Retry(NoBackoff(), 0),
                    socket_connect_timeout=self._timeout,
                    socket_timeout=self._timeout)
                options = client.connection_pool.connection_kwargs
                if options.get("decode_responses"):
                    client.close()
                    raise ValueError(
                        f"SharedDict {self._name!r}: the URL {self._url} "
                        f"asks for decode_responses, but a SharedDict "
                        f"needs Redis's replies as bytes; drop the option")
                self._client = client
                self._conn_name, self._client_pid = name, os.getpid()
            return self._client

    def _script(self, which: str, *args: Any) -> Any:
        """Run script `which` on this dict's keys."""
        self._check_open()
        script = self._scripts.get(which)
        if script is None:
            script = self._redis().register_script(_source(which))
            self._scripts[which] = script
        letters = _SCRIPT_KEYS.get(which)
        keys = self._keys if letters is None else \
            [self._keys[_KEY_NAMES.index(c)] for c in letters]
        return script(keys=keys, args=args)

    def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._client_pid == os.getpid():
            client.close()

    def _check_open(self) -> None:
        if self._closed:
            raise SegmentClosedError(f"SharedDict {self._name!r} on "
                                     f"{self._url} is closed")

    def _check_write(self) -> None:
        if self._read_only:
            raise ReadOnlyError(f"SharedDict {self._name!r} on {self._url} "
                                f"was opened read_only=True")

    def _redis_failed(self, e: redis.RedisError) -> Exception:
        """The shmtxn error for a Redis client error."""
        where = f"SharedDict {self._name!r} on {self._url}"
        if isinstance(e, redis.TimeoutError):
            return RemoteUnavailableError(
                f"{where}: Redis did not answer within timeout="
                f"{self._timeout:g} s ({e})")
        if isinstance(e, redis.ConnectionError):
            return RemoteUnavailableError(f"{where}: Redis is unreachable "
                                          f"or the connection broke ({e})")
        if isinstance(e, redis.ResponseError) and "WRONGTYPE" in str(e):
            return CorruptSegmentError(f"{where}: a Redis key under "
                                       f"'shmtxn:{{{self._name}}}:' holds "
                                       f"another type ({e})")
        if "DB index" in str(e):
            return RemoteUnavailableError(
                f"{where}: this Redis has no database of the URL's number "
                f"({e})")
        return RemoteUnavailableError(f"{where}: Redis refused the dict's "
                                      f"commands ({e})")

    def _gone(self) -> NoReturn:
        raise SegmentNotFoundError(
            f"SharedDict {self._name!r} on {self._url} was removed (or "
            f"Redis lost it: a restart without persistence, a failover)")

    def _check_here(self) -> None:
        """SegmentNotFoundError unless the dict this handle opened is
        still there (after a read found nothing)."""
        if self._redis().hget(self._keys[0], "id") != self._id:
            self._gone()

    def _nested_check(self) -> None:
        """No single op while this thread has a txn open on the dict."""
        if _open_txns and self._txn_key() in _open_txns:
            raise NestedTransactionError(
                f"this thread already has a txn open on SharedDict "
                f"{self._name!r}: use it (t[k]) inside the txn")

    def _txn_key(self) -> tuple[int, int, str, str]:
        return (os.getpid(), threading.get_ident(), self._url, self._name)

    # -- decoding --

    def _value(self, raw: bytes) -> Any:
        try:
            return _core.decode_value(raw)
        except MemoryError:
            raise
        except Exception as e:
            raise CorruptSegmentError(
                f"a value stored in SharedDict {self._name!r} on "
                f"{self._url} cannot be decoded or unpickled "
                f"({type(e).__name__}: {e}): it is damaged, or needs a "
                f"class this process cannot import; storing or deleting "
                f"the key replaces it") from e

    def _key(self, field: bytes, kind: int) -> Any:
        try:
            return _core.decode_key(field, kind)
        except (ValueError, OverflowError) as e:
            raise CorruptSegmentError(
                f"a key stored in SharedDict {self._name!r} on {self._url} "
                f"cannot be decoded") from e

    def _entries(self, what: int, reply: list[Any],
                 drop: set[bytes] | None = None) -> list[Any]:
        """A read script's snapshot reply as keys, values or items."""
        fields, kinds_flat, values = reply
        kinds = dict(zip(kinds_flat[::2], kinds_flat[1::2]))
        out: list[Any] = []
        for i, f in enumerate(fields):
            if drop is not None and f in drop:
                continue
            if what == _KEYS:
                out.append(self._key(f, int(kinds.get(f, 0))))
            elif what == _VALUES:
                out.append(self._value(values[i]))
            else:
                out.append((self._key(f, int(kinds.get(f, 0))),
                            self._value(values[i])))
        return out

    # -- the mapping, each op atomic --

    # d[k], `in` and len() are one plain command on D, whose name carries
    # the id: if it finds nothing, the dict may be gone (one more look)

    @_wrapped
    def __getitem__(self, key: Any) -> Any:
        field, _ = _core.encode_key(key)
        self._nested_check()
        raw = cast("bytes | None", self._redis().hget(self._keys[1], field))
        if raw is None:
            self._check_here()
            raise KeyError(key)
        return self._value(raw)

    def get(self, key: Any, default: Any = None, /) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    @_wrapped
    def __contains__(self, key: object) -> bool:
        field, _ = _core.encode_key(key)
        self._nested_check()
        if self._redis().hexists(self._keys[1], field):
            return True
        self._check_here()
        return False

    @_wrapped
    def __len__(self) -> int:
        self._nested_check()
        n = int(self._redis().hlen(self._keys[1]))
        if n == 0:
            self._check_here()
        return n

    def __iter__(self) -> Iterator[Any]:
        return iter(self._snapshot(_KEYS))

    @_wrapped
    def _single(self, op: bytes, field: bytes = b"", value: bytes = b"",
                kind: int = 0) -> int:
        """One write outside a txn: a script when nobody holds the dict,
        else a txn of its own (it waits its turn)."""
        self._check_write()
        self._nested_check()
        rc = int(self._script("single", self._id, op, field, value, kind))
        if rc == -1:
            self._gone()
        return rc

    def __setitem__(self, key: Any, value: Any) -> None:
        field, kind = _core.encode_key(key)
        raw = _core.encode_value(value)
        if self._single(b"s", field, raw, kind) == -2:
            with self.txn() as t:
                t._put(field, raw, kind)

    def __delitem__(self, key: Any) -> None:
        field, _ = _core.encode_key(key)
        rc = self._single(b"d", field)
        if rc == -2:
            with self.txn() as t:
                del t[key]
        elif rc == 0:
            raise KeyError(key)

    def clear(self) -> None:
        if self._single(b"c") == -2:
            with self.txn() as t:
                t.clear()

    @_wrapped
    def _read(self, what: bytes, *fields: bytes) -> Any:
        self._nested_check()
        reply = self._script("read", self._id, what, *fields)
        if reply[0] == -1:
            self._gone()
        return reply[1]

    def get_many(self, keys: Iterable[Any], default: Any = None) -> list[Any]:
        """The values of `keys` (`default` for absent ones), read in one
        snapshot: one round trip."""
        fields = [_core.encode_key(k)[0] for k in keys]
        if not fields:
            self._check_open()
            return []
        return [default if raw is None else self._value(raw)
                for raw in self._read(b"g", *fields)]

    def _snapshot(self, what: int) -> list[Any]:
        return self._entries(what, self._read(b"kvi"[what:what + 1]))

    # -- transactions --

    def txn(self, write: bool | None = None,
            timeout: float | None = None) -> RedisDictTxn:
        """A transaction (a write txn unless ``write=False`` or the
        handle is read-only); ``timeout`` bounds the wait to open it."""
        if write is None:
            write = not self._read_only
        elif write is not True and write is not False:
            raise TypeError(f"write must be True, False or None, not "
                            f"{type(write).__name__}")
        if write:
            self._check_write()
        self._check_open()
        return RedisDictTxn(self, write, _check_timeout(timeout))

    def _open_txn_count(self) -> int:
        pid = os.getpid()
        with _open_lock:
            return sum(1 for k in _open_txns
                       if k[0] == pid and k[2:] == (self._url, self._name))

    @_wrapped
    def _wait_on(self, lists: int, seconds: float) -> None:
        """Block on wake list `lists` (an index into the keys) for at most
        `seconds` (Redis wakes us when the list gets an element)."""
        # Redis answers a BLPOP that times out up to a tick late: its
        # reply must still come within the handle's reply timeout
        seconds = max(0.001, min(seconds, _SLICE))
        block = min(seconds, self._timeout / 2 - _TICK)
        if block >= 0.01:
            self._redis().blpop([self._keys[lists]], timeout=block)
        elif self._redis().lpop(self._keys[lists]) is None:
            # a reply timeout too short to block on Redis: look, then
            # sleep a part of it
            time.sleep(min(seconds, self._timeout / 4))

    @_wrapped
    def _dead(self, tokens: list[bytes]) -> list[bytes]:
        """Those of `tokens` whose client has no connection to Redis any
        more (it died, or its connection broke).  None, if Redis does not
        let us list clients (an ACL): their leases then simply expire."""
        try:
            listing = cast(Any, self._redis()).execute_command("CLIENT",
                                                               "LIST")
        except redis.ResponseError:
            return []
        if isinstance(listing, bytes):
            text = listing
        elif isinstance(listing, str):
            text = listing.encode()
        else:  # parsed by the client
            text = b"\n".join(b" name=" + str(c.get("name", "")).encode()
                              + b" " for c in listing)
        return [t for t in tokens
                if b" name=" + _holder_name(t) + b" " not in text]

    # -- info --

    @property
    def name(self) -> str:
        return self._name

    @property
    def url(self) -> str:
        return self._url

    @property
    def read_only(self) -> bool:
        return self._read_only

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def created(self) -> bool:
        return self._created

    @property
    def owner(self) -> bool:
        """True for the handle that created the dict, in its process."""
        return self._created and self._creator_pid == os.getpid()

    @property
    def lease(self) -> float:
        return self._lease

    @property
    @_wrapped
    def version(self) -> int:
        """Commits that wrote (and single writes) so far."""
        self._check_open()
        meta = self._redis().hmget(self._keys[0], ["id", "version"])
        if meta[0] != self._id:
            self._gone()
        return int(cast(bytes, meta[1]))

    @_wrapped
    def stats(self) -> dict[str, Any]:
        """count, version, writer leases granted, live readers, the lease
        holder, and the bytes Redis uses for the entries."""
        self._check_open()
        r = self._redis()
        pipe = r.pipeline(transaction=True)
        pipe.hmget(self._keys[0], ["id", "version", "fence"])
        pipe.hlen(self._keys[1])
        pipe.zcard(self._keys[5])
        pipe.get(self._keys[4])
        pipe.memory_usage(self._keys[1])
        (meta_id, version, fence), count, readers, holder, used = \
            pipe.execute()
        if meta_id != self._id:
            self._gone()
        return {"count": count, "version": int(version),
                "writer_leases": int(fence), "readers": readers,
                "lease_holder": holder.decode() if holder else None,
                "data_bytes": used or 0}

    @_wrapped
    def info(self) -> dict[str, Any]:
        """The dict and its server: backend, URL, name, layout, stats."""
        stats = self.stats()
        server = self._redis().info("server")
        return {"backend": "redis", "url": self._url, "name": self._name,
                "layout": "dict", "format": FORMAT,
                "redis_version": server.get("redis_version"),
                "lease": self._lease, "read_only": self._read_only,
                "dict": stats}

    @_wrapped
    def verify(self) -> None:
        """CorruptSegmentError unless the entries, their order and their
        key kinds agree (and every key and value decodes)."""
        self._check_open()
        with self.txn(write=False) as t:
            items = t._snapshot(_ITEMS)
            n = len(t)
        if len(items) != n:
            raise CorruptSegmentError(
                f"SharedDict {self._name!r} on {self._url}: {n} entries "
                f"but {len(items)} in the order")

    # -- lifetime --

    def close(self) -> None:
        """Disconnect.  Refused while this process has a txn open on the
        dict through this handle."""
        if self._closed:
            return
        if any(t._d is self for t in list(_open_txns.values())
               if t._pid == os.getpid()):
            raise TransactionsOpenError(
                f"cannot close SharedDict {self._name!r}: a txn is open "
                f"on it; leave its with-block first")
        self._disconnect()
        self._closed = True

    @_wrapped
    def unlink(self) -> None:
        """Remove the dict from Redis (only the one this handle opened:
        never a newer dict of the same name).  Idempotent."""
        client = self._client
        if self._closed and client is None:
            self._closed = False  # reconnect just to remove it
            try:
                self._script("unlink", self._id)
            finally:
                self._disconnect()
                self._closed = True
            return
        self._script("unlink", self._id)

    def __enter__(self) -> RedisDict:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.owner:
            try:
                self.unlink()
            finally:
                self.close()
        else:
            self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        if self._closed:
            raise ValueError(f"cannot pickle closed SharedDict "
                             f"{self._name!r}")
        return (_reconnect, (self._url, self._name, self._read_only,
                             self._lease, self._timeout))

    def __repr__(self) -> str:
        if self._closed:
            return f"<SharedDict {self._name!r} closed on {self._url}>"
        mode = "read-only" if self._read_only else "read-write"
        return (f"<SharedDict {self._name!r} keys={len(self)} {mode} "
                f"on {self._url}>")


# ---- transactions ---------------------------------------------------------

class RedisDictTxn(_TxnMethods, MutableMapping[Any, Any]):
    """What ``with d.txn() as t`` binds on a RedisDict: the mapping, all
    of it inside one transaction."""

    __slots__ = ("_d", "_write", "_timeout", "_token", "_state", "_thread",
                 "_pid", "_buf", "_cleared", "_renewed", "_live",
                 "__weakref__")

    def __init__(self, d: RedisDict, write: bool,
                 timeout: float | None) -> None:
        self._d, self._write, self._timeout = d, write, timeout
        self._token = b""
        self._state = 0           # 0 new, 1 open, 2 ended
        self._thread = 0
        self._pid = 0
        self._buf: dict[bytes, _Field] = {}
        self._cleared = False
        self._renewed = 0.0
        self._live = [False]      # shared with the finalizer (_drop)

    @property
    def write(self) -> bool:
        return self._write

    @property
    def active(self) -> bool:
        return (self._state == 1 and self._pid == os.getpid()
                and self._thread == threading.get_ident())

    def __repr__(self) -> str:
        state = ("not started", "active", "ended")[self._state]
        kind = "write" if self._write else "read"
        return f"<RedisDictTxn {kind} on {self._d._name!r} {state}>"

    # -- opening and ending --

    @_wrapped
    def __enter__(self) -> RedisDictTxn:
        d = self._d
        if self._state != 0:
            raise TransactionClosedError(
                f"this txn on SharedDict {d._name!r} has ended; open a new "
                f"one with d.txn()")
        d._check_open()
        key = d._txn_key()
        with _open_lock:
            if key in _open_txns:
                raise NestedTransactionError(
                    f"this thread already has a txn open on SharedDict "
                    f"{d._name!r}")
            _open_txns[key] = self
        try:
            if self._write:
                self._acquire()
            else:
                self._register()
        except BaseException:
            with _open_lock:
                _open_txns.pop(key, None)
            raise
        self._state, self._pid = 1, os.getpid()
        self._thread = threading.get_ident()
        self._renewed = time.monotonic()
        self._live[0] = True
        weakref.finalize(self, _drop, d, self._write, self._token,
                         self._pid, self._live)
        return self

    def _deadline(self) -> float | None:
        t = self._timeout
        return None if t is None else time.monotonic() + t

    def _timed_out(self, deadline: float | None) -> float:
        """Seconds left before `deadline` (inf without one); LockTimeout
        once none are."""
        if deadline is None:
            return math.inf
        left = deadline - time.monotonic()
        if left <= 0:
            kind = "write" if self._write else "read"
            raise LockTimeout(
                f"SharedDict {self._d._name!r} on {self._d._url}: no "
                f"{kind} txn within {self._timeout} s (a writer holds it)")
        return left

    def _acquire(self) -> None:
        """Take the writer lease, waiting as the timeout allows."""
        d = self._d
        deadline = self._deadline()
        while True:
            d._redis()
            reply = d._script("acquire", d._id, d._conn_name, d._lease_ms)
            if reply[0] == 1:
                self._token = reply[1]
                return
            if reply[0] == -1:
                d._gone()
            holder = reply[2]
            if d._dead([holder]) and d._script("release", holder):
                continue  # the holder's client is gone: its lease too
            left = self._timed_out(deadline)
            d._wait_on(7, min(left, max(int(reply[1]), 1) / 1000))

    def _register(self) -> None:
        """Register as a reader, waiting while a writer commits."""
        d = self._d
        deadline = self._deadline()
        d._redis()
        self._token = f"r{next(_tokens)} {d._conn_name}".encode()
        while True:
            reply = d._script("read_begin", d._id, self._token, d._lease_ms)
            if reply[0] == 1:
                return
            if reply[0] == -1:
                d._gone()
            drainer = reply[2]
            if d._dead([drainer]) and d._script("release", drainer):
                continue  # the committing writer is gone: its flag too
            left = self._timed_out(deadline)
            d._wait_on(8, min(left, max(int(reply[1]), 1) / 1000))

    def _check(self) -> None:
        """Usable here and now?"""
        if self._state == 1 and self._pid == os.getpid() \
                and self._thread == threading.get_ident():
            return
        if self._state == 1 and self._pid != os.getpid():
            raise TransactionClosedError(
                f"this txn on SharedDict {self._d._name!r} was opened "
                f"before fork(): it belongs to the parent process")
        if self._state == 1:
            raise TransactionThreadError(
                f"this txn on SharedDict {self._d._name!r} belongs to "
                f"another thread; open a txn in this one")
        raise TransactionClosedError(
            f"this txn on SharedDict {self._d._name!r} has ended")

    def _end(self) -> None:
        self._state = 2
        self._live[0] = False
        with _open_lock:
            if _open_txns.get(self._d._txn_key()) is self:
                del _open_txns[self._d._txn_key()]

    def _lost(self) -> NoReturn:
        self._end()
        raise LeaseLostError(
            f"the txn on SharedDict {self._d._name!r} on {self._d._url} "
            f"lost its lease (the client was paused or cut off for longer "
            f"than lease={self._d._lease} s, or Redis lost it): nothing "
            f"of it was applied")

    @_wrapped
    def commit(self) -> None:
        """Apply the txn's writes in one step; the txn ends."""
        self._check()
        d = self._d
        if not self._write:
            self._end()
            d._script("read_end", self._token)
            return
        args: list[Any] = [self._token, d._id, d._lease_ms,
                           b"1" if self._cleared else b"0"]
        for field, e in self._buf.items():
            args += (e.op, field, e.value, e.kind)
        retried = False
        try:
            while True:
                try:
                    reply = d._script("commit", *args)
                except (redis.ConnectionError, redis.TimeoutError) as e:
                    # Did it apply before the connection broke?  Once
                    # more: the script answers "committed" for our token
                    # (C keeps it), or applies now, or says the lease is
                    # gone and the txn was not applied.
                    if retried:
                        self._end()
                        raise self._unknown(f"Redis cannot be asked ({e})") \
                            from e
                    retried = True
                    continue
                if reply[0] == 1:
                    break
                if reply[0] == -1:
                    self._end()
                    d._gone()
                if reply[0] == -4 and retried:
                    self._end()
                    raise self._unknown(
                        f"more than {_COMMITS_KEPT} commits happened since, "
                        f"and Redis keeps no record of it")
                if reply[0] in (-3, -4):
                    self._lost()
                dead = d._dead(list(reply[2:]))
                if dead:
                    for token in dead:
                        d._script("release", token)
                    continue
                # wake when a reader leaves, else look again before the
                # first reader's expiry or a third of our lease: the
                # script renews the lease and the drain flag each time
                d._wait_on(9, min(max(int(reply[1]), 1) / 1000,
                                  d._lease / 3))
        finally:
            self._buf = {}
        self._end()

    def _unknown(self, why: str) -> RemoteUnavailableError:
        d = self._d
        return RemoteUnavailableError(
            f"SharedDict {d._name!r} on {d._url}: the connection broke "
            f"during the commit and whether it was applied is unknown: "
            f"{why}")

    @_wrapped
    def abort(self) -> None:
        """Drop every write of the txn; it ends."""
        self._check()
        self._end()
        self._buf = {}
        if self._write:
            self._d._script("release", self._token)
        else:
            self._d._script("read_end", self._token)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._state != 1:
            return
        if exc_type is None:
            self.commit()
        else:
            try:
                self.abort()
            except Error:
                pass  # the body's exception is the one to see

    # -- reads --

    def _renew(self) -> None:
        """Keep the writer lease while the txn runs (a round trip once
        a third of the lease has passed)."""
        now = time.monotonic()
        if now - self._renewed > self._d._lease / 3:
            if not self._d._script("renew", self._token, self._d._lease_ms):
                self._lost()
            self._renewed = now

    def _server(self, what: bytes, *fields: bytes) -> Any:
        """A read of the committed dict, as this txn may see it."""
        d = self._d
        if self._write:
            now = time.monotonic()
            reply = d._script("read_held", d._id, self._token, d._lease_ms,
                              what, *fields)
            if reply[0] == -1:
                self._end()
                d._gone()
            if reply[0] != 1:
                self._lost()
            self._renewed = now
            return reply[1]
        reply = d._script("read_in", self._token, d._lease_ms, what, *fields)
        if reply[0] != 1:
            d._check_here()
            self._lost()
        return reply[1]

    @_wrapped
    def _lookup(self, key: Any) -> bytes | None:
        """The encoded value of `key` in this txn's view, or None."""
        field, _ = _core.encode_key(key)
        self._check()
        e = self._buf.get(field)
        if e is not None:
            return None if e.op == b"d" else e.value
        if self._cleared:
            return None
        value: bytes | None = self._server(b"g", field)[0]
        return value

    def __getitem__(self, key: Any) -> Any:
        raw = self._lookup(key)
        if raw is None:
            raise KeyError(key)
        return self._d._value(raw)

    def get(self, key: Any, default: Any = None, /) -> Any:
        raw = self._lookup(key)
        return default if raw is None else self._d._value(raw)

    def __contains__(self, key: object) -> bool:
        return self._lookup(key) is not None

    @_wrapped
    def get_many(self, keys: Iterable[Any], default: Any = None) -> list[Any]:
        """The values of `keys` in this txn's view, one round trip."""
        fields = [_core.encode_key(k)[0] for k in keys]
        self._check()
        ask = [f for f in fields if f not in self._buf]
        got = dict(zip(ask, self._server(b"g", *ask))) \
            if ask and not self._cleared else {}
        out = []
        for f in fields:
            e = self._buf.get(f)
            raw = got.get(f) if e is None else \
                (None if e.op == b"d" else e.value)
            out.append(default if raw is None else self._d._value(raw))
        return out

    @_wrapped
    def __len__(self) -> int:
        self._check()
        if self._cleared:
            return sum(1 for e in self._buf.values() if e.op != b"d")
        fields = list(self._buf)
        reply = self._server(b"x", *fields)
        n = int(reply[0])
        for field, there in zip(fields, reply[1:]):
            live = self._buf[field].op != b"d"
            n += live - int(there)
        return n

    def __iter__(self) -> Iterator[Any]:
        return iter(self._snapshot(_KEYS))

    @_wrapped
    def _snapshot(self, what: int) -> list[Any]:
        self._check()
        if not self._write:
            return self._d._entries(what,
                                    self._server(b"kvi"[what:what + 1]))
        d, buf = self._d, self._buf
        server = [[], [], []] if self._cleared else \
            self._server(b"i" if what != _KEYS else b"k")
        fields, kinds_flat, values = server
        kinds = dict(zip(kinds_flat[::2], kinds_flat[1::2]))
        order: list[tuple[bytes, int, bytes | None]] = []
        for i, f in enumerate(fields):
            e = buf.get(f)
            if e is None:
                order.append((f, int(kinds.get(f, 0)),
                              values[i] if values else None))
            elif e.op == b"s":
                order.append((f, int(kinds.get(f, 0)), e.value))
        on_server = set(fields)
        order += [(f, e.kind, e.value) for f, e in buf.items()
                  if e.op == b"f" or (e.op == b"s" and f not in on_server)]
        if what == _KEYS:
            return [d._key(f, k) for f, k, _ in order]
        if what == _VALUES:
            return [d._value(v) for _, _, v in order if v is not None]
        return [(d._key(f, k), d._value(v)) for f, k, v in order
                if v is not None]

    # -- writes (buffered until commit) --

    def _writable(self) -> None:
        self._check()
        if not self._write:
            raise ReadOnlyError(f"a read txn on SharedDict "
                                f"{self._d._name!r} cannot write")

    @_wrapped
    def _put(self, field: bytes, raw: bytes, kind: int) -> None:
        self._writable()
        e = self._buf.get(field)
        if e is None:
            self._buf[field] = _Field(b"s", raw, kind)
        elif e.op == b"d":
            del self._buf[field]   # re-inserted: it moves to the end
            self._buf[field] = _Field(b"f", raw, kind)
        else:
            e.value = raw          # overwritten: keeps place and kind
        self._renew()

    def __setitem__(self, key: Any, value: Any) -> None:
        field, kind = _core.encode_key(key)
        self._put(field, _core.encode_value(value), kind)

    @_wrapped
    def __delitem__(self, key: Any) -> None:
        field, _ = _core.encode_key(key)
        self._writable()
        e = self._buf.get(field)
        if e is not None:
            if e.op == b"d":
                raise KeyError(key)
        elif self._cleared or not self._server(b"x", field)[1]:
            raise KeyError(key)
        self._buf.pop(field, None)
        self._buf[field] = _Field(b"d", b"", 0)

    def clear(self) -> None:
        self._writable()
        self._cleared = True
        self._buf = {}


def _drop(d: RedisDict, write: bool, token: bytes, pid: int,
          live: list[bool]) -> None:
    """A txn object freed while open (its thread ended in it, say): give
    its lease or registration back instead of making others wait for it
    to expire."""
    if not live[0] or d._closed or pid != os.getpid():
        return
    try:
        d._script("release" if write else "read_end", token)
    except (Error, redis.RedisError):
        pass
