"""Many processes, one key: the shared budget and event fan-out, on a real redis-server.

No mock stands in for Redis here: each test talks to a ``redis-server`` process on
loopback (see tests/redis_support.py). The first tests run clients in this process; the
last ones run one client per worker process (tests/coordination_worker.py), as in
production, against the fake server here, and check what the server saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
import logging
import math
import re
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import redis.asyncio

import copyai_async._coordination as coordination_module
import copyai_async._redis as redis_module
from copyai_async import CopyAIClient, PollPolicy, RedisCoordination
from copyai_async.aitasker import AITaskerClient
from copyai_async.testing import FakeCopyAI, Fault, Schedule

from .redis_support import RedisServer, free_port, max_in_window, require_redis, run_workers


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(require_redis()).start()
    yield server
    server.close()


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def raw_redis(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
def quick_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    # The first wait before trying Redis again, shortened so outages end fast in tests.
    monkeypatch.setattr(redis_module, "_FIRST_BACKOFF", 0.05)


@contextlib.contextmanager
def logged(prefix: str) -> Iterator[asyncio.Event]:
    """An event set once the library logs a message starting with ``prefix``."""
    seen = asyncio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith(prefix):
                seen.set()

    handler = Watch()
    logger = logging.getLogger("copyai_async")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level or logging.INFO, logging.INFO))
    try:
        yield seen
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def polled(check: Callable[[], Awaitable[bool]], every: float = 0.01) -> None:
    """Return once ``check()`` is true, looking every ``every`` s; fail after 10 s."""
    for _ in range(math.ceil(10 / every)):
        if await check():
            return
        await asyncio.sleep(every)
    raise AssertionError(f"{check.__qualname__} still false after 10 s")


def client_for(
    server: FakeCopyAI, coordination: str | RedisCoordination, **options: object
) -> CopyAIClient:
    return CopyAIClient(server.api_key, base_url=server.url, coordination=coordination, **options)  # type: ignore[arg-type]


# -- arguments ---------------------------------------------------------------------------


def test_bad_arguments_name_the_argument() -> None:
    with pytest.raises(TypeError, match="coordination must be a Redis URL"):
        CopyAIClient("k", coordination=6379)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"url must start with redis://, rediss:// or unix://"):
        RedisCoordination("http://h:secret@x")
    with pytest.raises(TypeError, match=r"url must be a str or a redis\.asyncio\.Redis"):
        RedisCoordination(b"redis://x")
    for bad in ("", "a b", "x" * 65, "{tag}"):
        with pytest.raises(ValueError, match="namespace must be 1 to 64"):
            RedisCoordination("redis://x", namespace=bad)
    with pytest.raises(TypeError, match="namespace must be a str"):
        RedisCoordination("redis://x", namespace=1)  # type: ignore[arg-type]
    for name in ("timeout", "retry_max"):
        with pytest.raises(ValueError, match=f"{name} must be a finite number > 0"):
            RedisCoordination("redis://x", **{name: 0})  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=f"{name} must be a number"):
            RedisCoordination("redis://x", **{name: "1"})  # type: ignore[arg-type]


async def test_repr_hides_the_redis_password() -> None:
    coordination = RedisCoordination("redis://user:hunter2@127.0.0.1:1/0")
    assert "hunter2" not in repr(coordination)
    assert "redis://user:***@127.0.0.1:1/0" in repr(coordination)
    await coordination.aclose()


# -- URLs: read as redis-py reads them, the password never shown ---------------------------

PASSWORD = "pwA1@pwB2"  # an '@' inside: redis-py splits the userinfo at the last '@'
ENCODED = "pwC3/pwD4%pwE5#pwF6"  # must be percent-encoded in a URL


def pieces(password: str) -> list[str]:
    """The password, its encoded forms, and every run of 4+ letters or digits in it."""
    return [
        password,
        quote(password, safe=""),
        quote_plus(password),
        *(p for p in re.split(r"[^A-Za-z0-9]+", password) if len(p) >= 4),
    ]


def assert_hidden(text: str, password: str = PASSWORD) -> None:
    shown = [p for p in pieces(password) if p in text]
    assert not shown, f"{shown} in {text!r}"


# Newer redis-py versions take the TLS key's passphrase (ssl_password); 5.0 does not.
TAKES_SSL_PASSWORD = "ssl_password" in inspect.signature(redis.asyncio.SSLConnection).parameters

# How each form gives the password; the server for it: user, password, socket directory.
PASSWORD_FORMS: dict[str, tuple[str, dict[str, str]]] = {
    "user:pass@": ("redis://user:{password}@{tcp}/0", {"user": "user"}),
    ":pass@": ("redis://:{password}@{tcp}/0", {}),
    "?password=": ("redis://{tcp}/0?password={password}", {}),
    "percent-encoded": ("redis://:{password}@{tcp}/0", {"password": ENCODED}),
    "rediss://": ("rediss://user:{password}@{tcp}/0", {"user": "user"}),
    # The TLS key's passphrase is a secret too (no TLS on the test server: never used).
    **(
        {"rediss ?ssl_password=": ("rediss://{tcp}/0?ssl_password={password}", {})}
        if TAKES_SSL_PASSWORD
        else {}
    ),
    "unix ?password=": ("unix://{socket}?password={password}", {}),
    "unix user:pass@": ("unix://user:{password}@{socket}", {"user": "user"}),
    # redis-py's errors quote the socket's path: here, it holds the password too.
    "unix, password in the path": ("unix://:{password}@{socket}", {"unix_dir": f"dir-{PASSWORD}"}),
}


@pytest.mark.parametrize("form", PASSWORD_FORMS)
@pytest.mark.usefixtures("quick_retry")
async def test_no_piece_of_a_password_in_reprs_or_logs(
    form: str, server: FakeCopyAI, caplog: pytest.LogCaptureFixture, namespace: str
) -> None:
    run = server.add_runs(1)[0]
    template, options = PASSWORD_FORMS[form]
    password = options.get("password", PASSWORD)
    later = RedisServer(
        require_redis(),
        password=password,
        user=options.get("user"),
        unix_dir=options.get("unix_dir", "sockets"),
    )
    # '?password=' and 'percent-encoded' encode it; the others write it as it is.
    encoded = ("?password=", "percent-encoded", "rediss ?ssl_password=")
    written = quote(password, safe="") if form in encoded else password
    url = template.format(password=written, tcp=f"127.0.0.1:{later.port}", socket=later.socket)
    caplog.set_level(logging.DEBUG, logger="copyai_async")
    coordination = RedisCoordination(url, namespace=namespace)
    try:
        async with coordination, client_for(server, coordination, rate_limit=100) as client:
            link = client._transport.budget.shared
            for text in (repr(coordination), repr(client), repr(link)):
                assert_hidden(text, password)
            await client.get_run(server.workflow_id, run.id)  # the WARNING
            await asyncio.sleep(0.1)  # past the first backoff
            await client.get_run(server.workflow_id, run.id)  # "still unavailable": DEBUG
            if not form.startswith("rediss"):  # no TLS on the test server: never available
                later.start()
                deadline = time.monotonic() + 10
                while not coordination.available and time.monotonic() < deadline:
                    await client.get_run(server.workflow_id, run.id)
                    await asyncio.sleep(0.02)
                assert coordination.available  # so the password was right
                assert_hidden(repr(coordination), password)
    finally:
        later.close()
    levels = {r.levelname for r in caplog.records if "Redis at" in r.getMessage()}
    assert {"WARNING", "DEBUG"} <= levels
    if not form.startswith("rediss"):
        assert "INFO" in levels
    for record in caplog.records:
        assert_hidden(record.getMessage(), password)


async def test_a_passed_in_clients_password_is_hidden_too(
    server: FakeCopyAI, caplog: pytest.LogCaptureFixture
) -> None:
    socket_dir = f"dir-{PASSWORD}"  # so that redis-py's error quotes the password
    mine = redis.asyncio.Redis(
        unix_socket_path=f"/nonexistent/{socket_dir}/r.sock", password=PASSWORD
    )
    caplog.set_level(logging.DEBUG, logger="copyai_async")
    async with RedisCoordination(mine) as coordination, client_for(server, coordination) as client:
        await client.get_run(server.workflow_id, server.add_runs(1)[0].id)
        assert_hidden(repr(coordination))
    await mine.aclose()
    assert any(r.levelno == logging.WARNING for r in caplog.records)
    for record in caplog.records:
        assert_hidden(record.getMessage())


BAD_URLS_WITH_PASSWORDS = [
    "http://user:pwA1@pwB2@x",  # not a Redis scheme
    "redis://user:pwA1/pwB2@127.0.0.1:6379/0",  # an unencoded '/' ends the host part
    "redis://:pwA1?pwB2@127.0.0.1/0",  # an unencoded '?' starts the query
    "redis://:pwA1#pwB2@127.0.0.1/0",  # an unencoded '#' starts a fragment
    "redis://:pwA1[pwB2@127.0.0.1/0",  # a '[' makes it unparseable
    "redis://:pwA1@127.0.0.1:pwB2/0",  # the port
    "redis://:pwA1@127.0.0.1/pwB2",  # the database
    "redis://127.0.0.1/0?password=pwA1&pwB2=x",  # an unencoded '&': an unknown option
    "redis://127.0.0.1/0?password=pwA1&pwB2",  # ...or a malformed query
    "redis://127.0.0.1/0?password=pwA1 pwB2",  # a space
    "unix://user:pwA1@pwB2/run/redis.sock",  # a host in a unix:// URL
]


@pytest.mark.parametrize("url", BAD_URLS_WITH_PASSWORDS)
def test_a_refused_url_never_shows_a_piece_of_its_password(url: str) -> None:
    for make in (RedisCoordination, lambda u: CopyAIClient("k", coordination=u)):
        with pytest.raises(ValueError, match=r"^url ") as caught:
            make(url)
        # The message, and everything a traceback would print (causes, contexts).
        assert_hidden("".join(traceback.format_exception(caught.value)))


BAD_URLS = {
    "redis://localhost/abc": "path that is not a database number",
    "redis://localhost/0/1": "path that is not a database number",
    "redis://localhost/-1": "path that is not a database number",
    "redis://localhost:port/0": "port that is not a number from 1 to 65535",
    "redis://localhost:65536/0": "port that is not a number from 1 to 65535",
    "redis://localhost:0/0": "port 0",
    "redis://localhost/0?foo=1": "option redis-py does not take",
    "redis://localhost/0?ssl_ca_certs=/ca.pem": "option redis-py does not take",  # TLS only
    # redis-py passes it on as the string written: "no" would mean yes.
    "redis://localhost/0?decode_responses=no": "option decode_responses, which redis-py passes",
    "redis://localhost/0?retry=3": "option retry, which redis-py passes on as the string",
    "redis://localhost?db=x": "option db with a value redis-py cannot read",
    "redis://localhost?health_check_interval=often": "option health_check_interval with",
    "redis://localhost/0?socket_timeout=5": "sets socket_timeout",
    # redis-py would fail operations beyond it (MaxConnectionsError): false outages.
    "redis://localhost/0?max_connections=4": "sets max_connections",
    "redis://localhost/0?max_connections=-1": "sets max_connections",
    # Deprecated by newer redis-py, which warns on every connection.
    "redis://localhost/0?lib_name=me": "sets lib_name",
    # Values only redis-py's connection checks: refused when it is made, not at first use.
    "redis://localhost/0?protocol=5": "option protocol with a value redis-py refuses",
    "rediss://localhost/0?ssl_cert_reqs=bad": "option ssl_cert_reqs with a value redis-py refuses",
    "redis://localhost/0?encoding=nonexistent": "option encoding with a value redis-py refuses",
    "redis://localhost?host=other": "gives the host as an option",
    "redis://localhost/0?db=1": "gives the db twice",
    "redis://:pw@localhost/0?password=pw": "gives the password twice",
    "redis://localhost?db=1&db=2": "gives an option more than once",
    "redis://localhost?db=": "option without a value",
    "redis://localhost/0#main": "contains '#'",
    "redis://[::1/0": "cannot be parsed",
    "redis:localhost/0": "must start with redis://, rediss:// or unix://",
    "localhost:6379": "must start with redis://, rediss:// or unix://",
    "unix://localhost/run/redis.sock": "names a host or port",
    "unix://run/redis.sock": "names a host or port",
    "unix://": "has no socket path",
    "unix:///run/redis.sock?ssl_ca_certs=/ca.pem": "option redis-py does not take",
}


@pytest.mark.parametrize(("url", "problem"), BAD_URLS.items())
def test_a_url_redis_py_would_misread_is_refused(url: str, problem: str) -> None:
    for make in (RedisCoordination, lambda u: CopyAIClient("k", coordination=u)):
        with pytest.raises(ValueError, match=r"^url ") as caught:
            make(url)
        message = str(caught.value)
        assert problem in message
        assert "expected redis://[[user]:password@]host[:port][/db]" in message  # the rules


def test_an_unknown_option_is_answered_with_the_ones_redis_py_takes() -> None:
    with pytest.raises(ValueError, match="option redis-py does not take") as caught:
        RedisCoordination("rediss://localhost/0?certfile=x")
    message = str(caught.value)
    for option in ("db", "password", "client_name", "ssl_ca_certs", "ssl_cert_reqs"):
        assert option in message
    assert "socket_timeout" not in message  # this object's own timeout sets it


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost",
        "redis://localhost/",
        "redis://localhost:6379/15",
        "REDIS://LOCALHOST:6379/0",
        "redis://[::1]:6379/0",
        "redis://:p%2Fw@localhost/0",
        f"redis://user:{PASSWORD}@localhost/0",
        "redis://localhost?db=3&client_name=me&health_check_interval=5&protocol=3",
        "rediss://localhost:6380/0?ssl_cert_reqs=none&ssl_ca_certs=/etc/ca.pem",
        "unix:///run/redis.sock",
        "unix:///run/redis.sock?db=2&password=pw",
        "unix://user:pw@/run/redis.sock?db=1",
    ],
)
async def test_urls_redis_py_reads_as_written_are_taken(url: str) -> None:
    async with RedisCoordination(url) as coordination:
        assert coordination.namespace == "default"


def test_an_option_redis_py_decodes_twice_is_refused() -> None:
    # '%2541' is '%41' once decoded; redis-py 5.x decodes ?option= values twice ('A').
    url = "redis://localhost/0?password=a%2541b"
    if redis.asyncio.connection.parse_url(url)["password"] == "a%41b":
        RedisCoordination(url)  # read as written: taken
    else:
        with pytest.raises(ValueError, match="option password, which this redis-py decodes twice"):
            RedisCoordination(url)


async def test_a_url_is_shown_as_written_but_for_its_password() -> None:
    cases = {
        "redis://user:pw@h:1/2": "redis://user:***@h:1/2",
        f"redis://:{PASSWORD}@h/0": "redis://:***@h/0",
        "rediss://h?password=pw&db=1": "rediss://h?password=***&db=1",
        **(
            {"rediss://h?ssl_password=topsecret&db=1": "rediss://h?ssl_password=***&db=1"}
            if TAKES_SSL_PASSWORD
            else {}
        ),
        # Short passwords garble nothing: not the option names, not the host.
        "redis://h/0?username=u&password=p": "redis://h/0?username=u&password=***",
        "redis://:0@127.0.0.1/0": "redis://:***@127.0.0.1/0",
        "unix:///s.sock?password=pw": "unix:///s.sock?password=***",
        "unix://u:pw@/s.sock": "unix://u:***@/s.sock",
        "redis://h/0": "redis://h/0",
    }
    for url, shown in cases.items():
        async with RedisCoordination(url) as coordination:
            assert (
                repr(coordination) == f"<RedisCoordination {shown} namespace='default' available>"
            )


# -- the shared budget, in one process ----------------------------------------------------


async def test_keys_carry_a_hash_of_the_key_never_the_key(
    server: FakeCopyAI, redis_server: RedisServer, raw_redis: redis.asyncio.Redis, namespace: str
) -> None:
    run = server.add_runs(1)[0]
    coordination = RedisCoordination(redis_server.url, namespace=namespace)
    async with coordination, client_for(server, coordination, rate_limit=100) as client:
        await client.get_run(server.workflow_id, run.id)
        keys = [k.decode() async for k in raw_redis.scan_iter(f"*{namespace}*")]
    digest = hashlib.sha256(b"copyai-async\0" + server.api_key.encode()).hexdigest()[:32]
    base = f"copyai-async:{{{namespace}:{digest}}}"
    # The rate's next start stays; the lease set is empty (so gone) after the request.
    assert keys == [f"{base}:next"]
    everything = [k async for k in raw_redis.scan_iter("*")]
    assert not any(server.api_key.encode() in k for k in everything)


async def test_two_clients_share_one_rate(
    server: FakeCopyAI, redis_server: RedisServer, namespace: str
) -> None:
    run = server.add_runs(1)[0]
    coordination = RedisCoordination(redis_server.url, namespace=namespace)
    async with (
        coordination,
        client_for(server, coordination, rate_limit=20) as a,
        client_for(server, coordination, rate_limit=20) as b,
    ):
        began = time.monotonic()
        await asyncio.gather(
            *(c.get_run(server.workflow_id, run.id) for c in (a, b) for _ in range(20))
        )
        took = time.monotonic() - began
    # 40 requests at 20/s together (each alone would allow 40/s): 39 gaps of 50 ms.
    assert took >= 39 / 20 * 0.95
    assert max_in_window(r.received_at for r in server.requests) <= 21


async def test_clients_with_other_keys_or_namespaces_do_not_share(
    server: FakeCopyAI, redis_server: RedisServer, namespace: str
) -> None:
    run = server.add_runs(1)[0]
    async with (
        RedisCoordination(redis_server.url, namespace=namespace) as one,
        RedisCoordination(redis_server.url, namespace=namespace + "-other") as other,
        client_for(server, one, rate_limit=10) as a,
        client_for(server, other, rate_limit=10) as b,
    ):
        began = time.monotonic()
        await asyncio.gather(
            *(c.get_run(server.workflow_id, run.id) for c in (a, b) for _ in range(6))
        )
        took = time.monotonic() - began
    # Each namespace paces its own 6 requests (0.5 s); shared, 12 would take 1.1 s.
    assert 0.45 <= took < 1.0


async def test_in_flight_cap_is_shared(
    server: FakeCopyAI, redis_server: RedisServer, namespace: str
) -> None:
    run = server.add_runs(1)[0]
    server.latency = 0.1
    coordination = RedisCoordination(redis_server.url, namespace=namespace)
    async with (
        coordination,
        client_for(server, coordination, max_connections=3) as a,
        client_for(server, coordination, max_connections=3) as b,
    ):
        runs = await asyncio.gather(
            *(c.get_run(server.workflow_id, run.id) for c in (a, b) for _ in range(12))
        )
    assert len(runs) == 24
    assert server.stats.max_in_flight == 3  # not 6: the cap is for both clients


async def test_waiting_for_a_full_in_flight_cap_is_not_waiting_on_redis(
    server: FakeCopyAI,
    redis_server: RedisServer,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Looks for a free slot every millisecond: many answered polls, each taking some time.
    monkeypatch.setattr(coordination_module, "_SLOT_POLL_FIRST", 0.001)
    monkeypatch.setattr(coordination_module, "_SLOT_POLL_MAX", 0.001)
    run = server.add_runs(1)[0]
    server.latency = 0.5
    coordination = RedisCoordination(redis_server.url, namespace=namespace, timeout=0.1)
    async with (
        coordination,
        client_for(server, coordination, max_connections=1) as a,
        client_for(server, coordination, max_connections=1) as b,
    ):
        # One slot for both: three of the four requests wait 0.5 to 1.5 s for it.
        await asyncio.gather(
            *(c.get_run(server.workflow_id, run.id) for c in (a, b) for _ in range(2))
        )
        assert coordination.available
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert server.stats.max_in_flight == 1


async def test_a_429_pauses_every_client_sharing_the_key(
    server: FakeCopyAI,
    redis_server: RedisServer,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = server.add_runs(1)[0]
    caplog.set_level(logging.INFO, logger="copyai_async")
    coordination = RedisCoordination(redis_server.url, namespace=namespace)
    with logged("paused every process") as paused:
        async with (
            coordination,
            client_for(server, coordination) as a,
            client_for(server, coordination) as b,
        ):
            server.inject(Fault.rate_limit(retry_after=1), method="GET")
            retried = asyncio.ensure_future(a.get_run(server.workflow_id, run.id))
            await asyncio.wait_for(paused.wait(), 5)  # a saw the 429 and set the pause
            await b.get_run(server.workflow_id, run.id)  # b never saw a 429
            await retried
    limited, *answered = server.requests
    assert limited.status == 429
    assert [r.status for r in answered] == [200, 200]
    assert min(r.received_at for r in answered) >= limited.received_at + 1.0


async def test_aitasker_clients_share_a_budget_too(
    server: FakeCopyAI, redis_server: RedisServer, namespace: str
) -> None:
    run_id = server.add_aitasker_run().id
    coordination = RedisCoordination(redis_server.url, namespace=namespace)
    clients = [
        AITaskerClient(
            server.api_key, base_url=server.aitasker_url, rate_limit=20, coordination=coordination
        )
        for _ in range(2)
    ]
    async with coordination, clients[0] as a, clients[1] as b:
        wf = server.add_aitasker_run().workflow_id
        began = time.monotonic()
        await asyncio.gather(*(c.get_run(wf, run_id) for c in (a, b) for _ in range(10)))
        took = time.monotonic() - began
    assert took >= 19 / 20 * 0.95


async def test_a_client_closes_the_coordination_it_made_not_one_passed_in(
    server: FakeCopyAI, redis_server: RedisServer
) -> None:
    async with client_for(server, redis_server.url) as made:
        owned = made.coordination
        assert owned is not None
    assert owned.closed
    async with RedisCoordination(redis_server.url) as mine:
        async with client_for(server, mine):
            pass
        assert not mine.closed  # still usable by other clients
        async with client_for(server, mine) as again:
            run = server.add_runs(1)[0]
            await again.get_run(server.workflow_id, run.id)
        assert mine.available


# -- when Redis fails -------------------------------------------------------------------------


async def test_no_redis_means_local_limits_and_one_warning(
    server: FakeCopyAI, caplog: pytest.LogCaptureFixture
) -> None:
    run = server.add_runs(1)[0]
    dead = f"redis://127.0.0.1:{free_port()}/0"
    caplog.set_level(logging.INFO, logger="copyai_async")
    async with client_for(server, dead, rate_limit=20) as client:
        began = time.monotonic()
        await asyncio.gather(*(client.get_run(server.workflow_id, run.id) for _ in range(10)))
        took = time.monotonic() - began
        assert client.coordination is not None
        assert not client.coordination.available
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "is unavailable" in warnings[0].getMessage()
    assert took >= 9 / 20 * 0.95  # the local rate still holds


async def test_a_redis_error_never_reaches_the_caller(
    server: FakeCopyAI,
    redis_server: RedisServer,
    raw_redis: redis.asyncio.Redis,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = server.add_runs(1)[0]
    digest = hashlib.sha256(b"copyai-async\0" + server.api_key.encode()).hexdigest()[:32]
    # Something else wrote a list where the rate's next start belongs: every script fails.
    await raw_redis.rpush(f"copyai-async:{{{namespace}:{digest}}}:next", "oops")
    coordination = RedisCoordination(redis_server.url, namespace=namespace)
    async with coordination, client_for(server, coordination, rate_limit=50) as client:
        for _ in range(3):
            assert (await client.get_run(server.workflow_id, run.id)).id == run.id
        assert not coordination.available
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 1


async def test_a_redis_client_that_fails_before_any_io_fails_no_api_call(
    server: FakeCopyAI, caplog: pytest.LogCaptureFixture
) -> None:
    run = server.add_runs(1)[0]
    # redis-py raises LookupError as soon as it encodes anything (registering a script).
    mine = redis.asyncio.Redis(host="127.0.0.1", port=free_port(), encoding="nonexistent")
    coordination = RedisCoordination(mine)
    # Not entered: the first API call is the first use of Redis.
    client = client_for(server, coordination, rate_limit=50)
    try:
        for _ in range(2):
            assert (await client.get_run(server.workflow_id, run.id)).id == run.id
        assert not coordination.available
    finally:
        await client.aclose()
        await coordination.aclose()
        await mine.aclose()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "LookupError" in warnings[0]


@pytest.mark.usefixtures("quick_retry")
async def test_shared_limits_return_when_redis_does(
    server: FakeCopyAI, caplog: pytest.LogCaptureFixture, namespace: str
) -> None:
    run = server.add_runs(1)[0]
    later = RedisServer(require_redis())
    caplog.set_level(logging.INFO, logger="copyai_async")
    coordination = RedisCoordination(later.url, namespace=namespace)
    try:
        async with coordination, client_for(server, coordination, rate_limit=100) as client:
            await client.get_run(server.workflow_id, run.id)
            assert not coordination.available
            later.start()
            deadline = time.monotonic() + 10
            while not coordination.available and time.monotonic() < deadline:
                await client.get_run(server.workflow_id, run.id)
                await asyncio.sleep(0.02)
            assert coordination.available
            await client.get_run(server.workflow_id, run.id)
            async with redis.asyncio.Redis.from_url(later.url) as raw:
                assert [k async for k in raw.scan_iter(f"*{namespace}*:next")]
    finally:
        later.close()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("is unavailable" in m for m in messages) == 1
    assert sum("is available again" in m for m in messages) == 1


# -- a Redis that hangs ----------------------------------------------------------------------


@pytest.fixture
async def hanging_redis() -> AsyncIterator[tuple[RedisServer, Hang]]:
    """A redis-server of its own (others would hang with it) and a way to hang it."""
    server = RedisServer(require_redis()).start()
    hang = Hang(server)
    try:
        yield server, hang
        await hang.over()
    finally:
        server.close()


class Hang:
    """``DEBUG SLEEP``: Redis accepts connections but answers nothing meanwhile."""

    def __init__(self, server: RedisServer) -> None:
        self._raw = redis.asyncio.Redis.from_url(server.url, socket_timeout=None)
        self._probe = redis.asyncio.Redis.from_url(server.url, socket_timeout=None)
        self._sleeps: list[asyncio.Future[object]] = []

    async def start(self, seconds: float) -> None:
        """Make Redis hang for ``seconds`` from now; return once it does."""
        # Both connected, so DEBUG SLEEP goes out at once, and the probe's PINGs too.
        await asyncio.gather(self._raw.ping(), self._probe.ping())
        self._sleeps.append(
            asyncio.ensure_future(self._raw.execute_command("DEBUG", "SLEEP", seconds))
        )
        await polled(self._hangs, every=0.001)

    async def _hangs(self) -> bool:
        """Whether Redis leaves a PING unanswered for 20 ms (it answers in well under
        one)."""
        with contextlib.suppress(asyncio.TimeoutError):  # TimeoutError from Python 3.11
            await asyncio.wait_for(self._probe.ping(), 0.02)
            return False
        return True

    async def over(self) -> None:
        await asyncio.gather(*self._sleeps)
        await self._raw.aclose()
        await self._probe.aclose()


async def test_a_hung_redis_costs_a_request_or_entering_a_client_one_timeout(
    server: FakeCopyAI, hanging_redis: tuple[RedisServer, Hang], namespace: str
) -> None:
    redis_server, hang = hanging_redis
    run = server.add_runs(1)[0]
    coordination = RedisCoordination(redis_server.url, namespace=namespace, timeout=0.5)
    async with coordination, client_for(server, coordination, rate_limit=100) as client:
        await client.get_run(server.workflow_id, run.id)  # connected; all well
        await hang.start(1.5)
        began = time.monotonic()
        assert (await client.get_run(server.workflow_id, run.id)).id == run.id
        took = time.monotonic() - began
        assert not coordination.available
    # redis-py's retry on a new connection would double it (1.0 s): one timeout, 0.5 s.
    assert took < 0.8
    await hang.over()
    await hang.start(1.5)
    began = time.monotonic()
    other = RedisCoordination(redis_server.url, namespace=namespace, timeout=0.5)
    async with other, client_for(server, other):  # waits for the event subscription
        entered = time.monotonic() - began
    assert entered < 0.8


async def test_a_request_waits_on_redis_one_timeout_in_all_not_per_operation(
    server: FakeCopyAI,
    hanging_redis: tuple[RedisServer, Hang],
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    redis_server, hang = hanging_redis
    run = server.add_runs(1)[0]
    coordination = RedisCoordination(redis_server.url, namespace=namespace, timeout=1.0)
    async with coordination, client_for(server, coordination, rate_limit=1) as client:
        await client.get_run(server.workflow_id, run.id)  # books the next start, 1 s on
        began = time.monotonic()
        await hang.start(0.6)  # the turn of the next request waits ~0.55 s of its 1 s
        second = asyncio.ensure_future(client.get_run(server.workflow_id, run.id))
        await asyncio.sleep(0.25)
        await hang.start(1.3)  # ...and the check after its sleep (at ~1 s) hangs
        await second
        took = time.monotonic() - began
    # Waited on Redis ~0.55 s + at most ~0.45 s, and slept until its place (~1 s): 1.5 s.
    # A timeout per operation would end the check at 2.0 s (and redis-py's retry, 3.0 s).
    assert took < 1.75
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "no answer within timeout=1 s" in warnings[0]


@pytest.mark.usefixtures("quick_retry")
async def test_after_each_backoff_one_operation_tries_a_hung_redis(
    server: FakeCopyAI,
    hanging_redis: tuple[RedisServer, Hang],
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    redis_server, hang = hanging_redis
    run = server.add_runs(1)[0]
    caplog.set_level(logging.DEBUG, logger="copyai_async")
    coordination = RedisCoordination(redis_server.url, namespace=namespace, timeout=0.3)
    waited: list[float] = []  # how long each request sent once Redis was known down took

    async def request(once_down: bool) -> None:
        began = time.monotonic()
        await client.get_run(server.workflow_id, run.id)
        if once_down:
            waited.append(time.monotonic() - began)

    async with coordination, client_for(server, coordination) as client:
        await client.get_run(server.workflow_id, run.id)  # connected; all well
        await hang.start(2.0)
        requests = []
        ends = time.monotonic() + 1.8
        while time.monotonic() < ends:  # a request every 20 ms while Redis hangs
            requests.append(asyncio.ensure_future(request(not coordination.available)))
            await asyncio.sleep(0.02)
        await asyncio.gather(*requests)
    tried = [r for r in caplog.records if "is still unavailable" in r.getMessage()]
    # Once Redis was known down (the requests under way then each waited their timeout),
    # each try after a backoff (0.05, 0.1, 0.2, 0.4 s) cost one operation a timeout: a
    # request, or the event subscription. The others went on at once, on local limits.
    slow = [t for t in waited if t >= 0.25]
    assert len(waited) > 40
    assert len(slow) <= len(tried) <= 6, (len(waited), len(slow), len(tried))


# -- when Redis loses its keys --------------------------------------------------------------


def test_what_a_client_offers_to_rebuild_the_rate_from() -> None:
    booked = coordination_module._Booked()
    # [next start (Redis's clock), left (this clock), booked if lost, pause end, left]
    assert booked.offers(0.0) == [0, 0, 0, 0, 0]  # saw nothing yet
    booked.saw(100.0, 5_000_000, 0.0, 1.2)  # asked at 100 s: the next start 1.2 s on
    # What Redis held, on its clock, and counting down on this one...
    assert booked.offers(100.5)[:2] == [6_200_000, 700_000]
    # ...and, should it be gone while still ahead, the booking as deep as seen.
    assert booked.offers(100.5)[2] == 1_200_000
    # Past the next start seen, nothing: what was booked has started (a quiet period).
    assert booked.offers(101.2)[1:3] == [0, 0]
    booked.saw(200.0, 9_000_000, 2.0, 2.5)  # a pause of 2 s, then 0.5 s booked
    assert booked.pause(201.0) == 1.0  # the pause counts down: its end is known
    assert booked.offers(201.0) == [11_500_000, 1_500_000, 1_500_000, 11_000_000, 1_000_000]
    booked.saw(199.0, 8_000_000, 0.0, 9.0)  # an older answer, come late: no deeper booking
    assert booked.if_lost(201.0) == 1.5
    booked.saw(300.0, 20_000_000, 3.0)  # a 429's pause, as Redis set it
    assert booked.offers(301.0)[3:] == [23_000_000, 2_000_000]


async def knows_of_a_pause(client: CopyAIClient) -> None:
    """Return once a turn of ``client`` has seen a shared pause."""
    budget = client._transport.budget
    link = budget.shared
    assert isinstance(link, coordination_module.SharedLink)

    async def seen() -> bool:
        return link._booked.pause(budget.clock.monotonic()) > 0

    await polled(seen)


async def flush(redis_server: RedisServer) -> float:
    async with redis.asyncio.Redis.from_url(redis_server.url) as raw:
        await raw.flushall()
    return time.monotonic()


async def test_a_flush_mid_run_lets_no_burst_through(
    server: FakeCopyAI, redis_server: RedisServer, namespace: str
) -> None:
    run = server.add_runs(1)[0]
    coordinations = [RedisCoordination(redis_server.url, namespace=namespace) for _ in range(3)]
    clients = [client_for(server, c, rate_limit=20) for c in coordinations]
    ends = time.monotonic() + 3.0

    async def load(client: CopyAIClient) -> None:
        while time.monotonic() < ends:
            await client.get_run(server.workflow_id, run.id)

    async def flush_midway() -> None:
        await asyncio.sleep(1.5)
        await flush(redis_server)

    async with contextlib.AsyncExitStack() as stack:
        for resource in (*coordinations, *clients):
            await stack.enter_async_context(resource)
        # 3 processes' worth of clients, 8 requests each under way: 1.2 s booked ahead.
        await asyncio.gather(flush_midway(), *(load(c) for c in clients for _ in range(8)))
    # Lost with the flush, the next start would let a second stream through alongside
    # the starts already booked (about 37 in one second).
    assert max_in_window(r.received_at for r in server.requests) <= 21
    assert all(c.available for c in coordinations)


async def test_a_flush_first_asked_about_by_a_client_that_knew_nothing(
    server: FakeCopyAI, redis_server: RedisServer, namespace: str
) -> None:
    run = server.add_runs(1)[0]
    async with (
        RedisCoordination(redis_server.url, namespace=namespace) as one,
        RedisCoordination(redis_server.url, namespace=namespace) as two,
        client_for(server, one, rate_limit=20) as busy,
        client_for(server, two, rate_limit=20) as newcomer,
    ):
        ends = time.monotonic() + 3.0

        async def load(client: CopyAIClient) -> None:
            while time.monotonic() < ends:
                await client.get_run(server.workflow_id, run.id)

        async def flush_then_newcomer() -> None:
            await asyncio.sleep(1.5)  # 24 requests under way: 1.2 s booked ahead
            await flush(redis_server)
            # The newcomer never took a turn: it knows nothing, and asks first.
            await asyncio.gather(*(load(newcomer) for _ in range(2)))

        await asyncio.gather(flush_then_newcomer(), *(load(busy) for _ in range(24)))
    # Had the newcomer's fresh start stood, the busy client's offers ignored: about 41 in
    # one second. The busy client's next turn (within 50 ms) puts the next start back
    # after the starts it saw booked: only the newcomer's turns before it (its 2
    # requests, and the next of the first: 3) and the busy client's own last ones
    # (booked after it looked: a turn or two) went at the rate afresh, alongside them.
    assert max_in_window(r.received_at for r in server.requests) <= 20 + 3 + 2


async def test_a_request_after_a_quiet_expiry_is_not_delayed(
    server: FakeCopyAI,
    redis_server: RedisServer,
    raw_redis: redis.asyncio.Redis,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The next start outlives its booking by 0.2 s, not 10 s: it expires soon.
    monkeypatch.setattr(coordination_module, "_BOOKING_KEPT", 0.2)
    run = server.add_runs(1)[0]
    coordination = RedisCoordination(redis_server.url, namespace=namespace)
    async with coordination, client_for(server, coordination, rate_limit=10) as client:
        # 8 at 10/s: 0.8 s booked ahead, as seen by the last of them.
        await asyncio.gather(*(client.get_run(server.workflow_id, run.id) for _ in range(8)))

        async def expired() -> bool:
            return not [k async for k in raw_redis.scan_iter(f"*{namespace}*:next")]

        await polled(expired)  # quiet, until Redis lets the next start expire
        began = time.monotonic()
        await client.get_run(server.workflow_id, run.id)
        took = time.monotonic() - began
    assert took < 0.1  # nothing booked is ahead any more: no wait


async def test_a_pause_lost_with_a_flush_still_holds(
    server: FakeCopyAI, redis_server: RedisServer, namespace: str
) -> None:
    run = server.add_runs(1)[0]
    async with (
        RedisCoordination(redis_server.url, namespace=namespace) as one,
        RedisCoordination(redis_server.url, namespace=namespace) as two,
        client_for(server, one) as limited,
        client_for(server, two) as other,
    ):
        server.inject(Fault.rate_limit(retry_after=2), method="GET")
        with logged("paused every process") as paused:
            retried = asyncio.ensure_future(limited.get_run(server.workflow_id, run.id))
            await asyncio.wait_for(paused.wait(), 5)  # the 429 came; its pause is in Redis
        waiting = asyncio.ensure_future(other.get_run(server.workflow_id, run.id))
        await knows_of_a_pause(other)  # its turn saw the pause: it sleeps until its end
        await flush(redis_server)
        # Asked after the flush, by a process that knew of the pause.
        await other.get_run(server.workflow_id, run.id)
        await asyncio.gather(retried, waiting)
    limited_at, *answered = server.requests
    assert limited_at.status == 429
    assert len(answered) == 3
    assert min(r.received_at for r in answered) >= limited_at.received_at + 1.95


# -- events, in one process ---------------------------------------------------------------------


async def test_an_event_at_one_client_ends_a_wait_at_another(
    server: FakeCopyAI, redis_server: RedisServer, namespace: str
) -> None:
    # The run finishes 1.5 s from now; polls 60 s apart could not see it in time.
    run = server.add_run(schedule=Schedule.seconds(("PROCESSING", 1.5)))
    coordination = RedisCoordination(redis_server.url, namespace=namespace)
    policy = PollPolicy(initial=60, max_interval=60, safety_interval=60)
    async with (
        coordination,
        client_for(server, coordination) as listening,
        client_for(server, coordination) as waiting,
        listening.listen() as listener,
    ):
        await listener.register(server.workflow_id)
        done = await asyncio.wait_for(
            waiting.wait_for_run(server.workflow_id, run.id, policy=policy), timeout=10
        )
    assert done.status.value == "COMPLETE"
    gets = server.stats.by_path[f"GET /api/workflow/{server.workflow_id}/run/{run.id}"]
    assert gets == 2  # the first poll, and the one the relayed event asked for


# -- many processes: one client per worker process, as deployed ---------------------------


def worker(
    server: FakeCopyAI, redis_server: RedisServer, namespace: str, **job: object
) -> dict[str, object]:
    return {
        "base_url": server.url,
        "api_key": server.api_key,
        "redis": redis_server.url,
        "namespace": namespace,
        "workflow_id": server.workflow_id,
        **job,
    }


def no_errors(results: list[dict[str, Any]]) -> None:
    errors = [e for r in results for e in r["errors"]]
    assert errors == [], errors[:5]


@pytest.mark.slow  # 30 s of load: the rate must hold over time, not for a moment
async def test_eight_processes_hold_one_rate_limit(
    server: FakeCopyAI, redis_server: RedisServer, namespace: str
) -> None:
    run = server.add_runs(1)[0]
    processes, tasks, rate, seconds = 8, 4, 50, 30
    job = worker(
        server,
        redis_server,
        namespace,
        job="load",
        rate=rate,
        seconds=seconds,
        tasks=tasks,
        run_id=run.id,
    )
    results = await run_workers([job] * processes)
    no_errors(results)
    arrived = sorted(r.received_at for r in server.requests)
    # Measured at the server. The shared budget spaces request starts 1/rate apart; a
    # request may reach the server late (a busy machine), but each task has one request
    # in flight at a time, so within any window of W seconds at most rate * W + 1 requests
    # started in it plus the `processes * tasks` started earlier can arrive: a bound a
    # correct budget cannot miss, however loaded the machine. Eight processes that each
    # kept their own 50/s would send 400/s.
    late = processes * tasks
    for width in (1.0, 5.0, 10.0):
        bound = rate * width + 1 + late
        assert max_in_window(arrived, width) <= bound, (width, bound)
    # ...and the budget is used, not merely respected (1,500 in 30 s at 50/s).
    span = arrived[-1] - arrived[0]
    assert len(arrived) >= 0.9 * rate * span
    assert span >= 0.9 * seconds
    assert all(r["available"] for r in results)


async def test_a_429_in_one_process_pauses_every_process(
    server: FakeCopyAI, redis_server: RedisServer, namespace: str
) -> None:
    run = server.add_runs(1)[0]
    job = worker(server, redis_server, namespace, job="load", rate=50, seconds=7, run_id=run.id)

    async def during() -> None:
        await asyncio.sleep(2)
        server.inject(Fault.rate_limit(retry_after=2), method="GET")

    results = await run_workers([job] * 8, during)
    no_errors(results)
    pauses = [t for r in results for t, _, m in r["logs"] if m.startswith("paused every process")]
    assert len(pauses) == 1  # one process saw the 429 and set the shared pause
    paused_at = pauses[0]
    starts = sorted(t for r in results for t in r["starts"])
    # No process sent anything for the 2 s the server asked, from when the pause was
    # set; then sending resumed.
    assert [t - paused_at for t in starts if paused_at < t < paused_at + 2.0] == []
    resumed = min(t for t in starts if t >= paused_at)
    assert paused_at + 2.0 <= resumed < paused_at + 2.5


async def test_events_at_one_process_end_waits_in_another(
    server: FakeCopyAI, redis_server: RedisServer, namespace: str
) -> None:
    runs = [server.add_run(schedule=Schedule.seconds(("PROCESSING", 3600))) for _ in range(30)]
    listen = worker(server, redis_server, namespace, job="listen")
    wait = worker(server, redis_server, namespace, job="wait", run_ids=[r.id for r in runs])

    async def during() -> None:
        await asyncio.sleep(0.5)  # the waiter's first polls are done
        for i, run in enumerate(runs):
            elapsed = server.clock() - run.created_mono
            server.reschedule(run, Schedule.seconds(("PROCESSING", elapsed + 0.5 + i * 0.1)))
        await asyncio.sleep(0.5 + len(runs) * 0.1 + 2.0)

    listener, waiter = await run_workers([listen, wait], during)
    no_errors([listener, waiter])
    delivered = {
        d.run_id: d.sent_at for d in server.delivered if d.event_type == "workflowRun.completed"
    }
    assert set(waiter["ended"]) == {r.id for r in runs}  # every wait ended...
    late = {run_id: ended - delivered[run_id] for run_id, ended in waiter["ended"].items()}
    # ...on the relayed event: polls 60 s apart would have taken a minute.
    assert max(late.values()) < 5.0, late
    gets = sum(
        n for path, n in server.stats.by_path.items() if path.startswith("GET /api/workflow/")
    )
    assert gets <= 2 * len(runs) + 5  # one first poll and one verifying GET per run


async def test_redis_killed_and_restarted_fails_no_api_call(
    server: FakeCopyAI, namespace: str
) -> None:
    run = server.add_runs(1)[0]
    redis_server = RedisServer(require_redis()).start()
    job = worker(
        server,
        redis_server,
        namespace,
        job="load",
        rate=50,
        seconds=8,
        run_id=run.id,
        start_every=10,
    )

    async def during() -> None:
        await asyncio.sleep(2)
        redis_server.kill()
        await asyncio.sleep(2)
        redis_server.start()

    try:
        results = await run_workers([job] * 4, during)
    finally:
        redis_server.close()
    no_errors(results)
    assert all(r["calls"] > 0 for r in results)
    for result in results:
        messages = [m for _, level, m in result["logs"] if level == "WARNING"]
        assert len(messages) == 1, result["logs"]
        assert "is unavailable" in messages[0]
        assert result["available"]  # shared again once Redis was back


async def test_what_one_client_learns_of_durations_every_client_learns(
    redis_server: RedisServer, namespace: str
) -> None:
    schedule = Schedule.seconds(("PROCESSING", 0.3), spread=0.2)
    async with FakeCopyAI(default_schedule=schedule) as server:
        coordination = RedisCoordination(redis_server.url, namespace=namespace)
        other = RedisCoordination(redis_server.url, namespace=f"{namespace}-other")
        async with (
            coordination,
            other,
            client_for(server, coordination) as teaching,
            client_for(server, coordination) as learning,
            client_for(server, other) as elsewhere,
        ):
            await asyncio.gather(
                *(teaching.start_and_wait(server.workflow_id, {"n": n}) for n in range(25))
            )
            taught = teaching.durations(server.workflow_id)
            assert taught.observed == 25
            assert taught.ready

            async def learned() -> bool:
                return learning.durations(server.workflow_id).observed == 25

            await polled(learned)
            shared = learning.durations(server.workflow_id)
            assert shared.ready
            assert shared.schedule
            # Every run was seen end by the second poll, 1 s after its start.
            assert shared.p50 is not None
            assert 0 < shared.p50 <= 1.05
            # Another namespace shares nothing.
            assert elsewhere.durations(server.workflow_id).observed == 0


async def test_malformed_duration_messages_are_ignored(
    redis_server: RedisServer, namespace: str, raw_redis: redis.asyncio.Redis, server: FakeCopyAI
) -> None:
    coordination = RedisCoordination(redis_server.url, namespace=namespace)
    async with coordination, client_for(server, coordination) as client:
        link = client._transport.budget.shared
        assert isinstance(link, coordination_module.SharedLink)
        for message in (
            {"o": "x", "d": 42, "l": 1.0, "h": 2.0},
            {"o": "x", "d": "WCFG-1", "l": "1", "h": 2.0},
            {"o": "x", "d": "WCFG-1", "l": 1.0, "h": float("inf")},
            {"o": "x", "d": "WCFG-1", "l": True, "h": 2.0},
            {"o": "x", "d": "WCFG-1", "l": 3.0, "h": 2.0},
            {"o": "x", "d": "WCFG-1"},
            {"o": "x", "d": "WCFG-1", "l": 0, "h": 10**400},
            {"o": "x", "d": "WCFG-1", "l": 0, "h": 2, "r": 7},
        ):
            await raw_redis.publish(link.channel, json.dumps(message))
        await raw_redis.publish(
            link.channel, json.dumps({"o": "x", "d": "WCFG-1", "l": 1, "h": 2, "r": "WRUN-1"})
        )
        # The same run told again (another process saw it end too) is learned once.
        await raw_redis.publish(
            link.channel, json.dumps({"o": "y", "d": "WCFG-1", "l": 1, "h": 2, "r": "WRUN-1"})
        )
        await raw_redis.publish(
            link.channel, json.dumps({"o": "x", "d": "WCFG-2", "l": 1, "h": 2, "r": "WRUN-2"})
        )

        async def last_learned() -> bool:
            return client.durations("WCFG-2").observed == 1

        await polled(last_learned)
        assert client.durations("WCFG-1").observed == 1
        assert coordination.available  # no message took Redis for down
