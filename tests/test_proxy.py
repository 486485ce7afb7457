"""Proxies: through a real HTTP proxy (proxy.py, from PyPI) on loopback.

Plain forwarding (an http base URL) runs in this process; CONNECT (an https base URL, a
fake server with a trustme certificate) runs in a fresh process that trusts the test
CA through ``SSL_CERT_FILE`` (tests/proxy_worker.py). A made-up host, ``copyai.test``,
is proxied like any host that is not loopback; the proxy and the client both map it to
127.0.0.1, so every byte stays on this machine.

Also: the proxy chosen from arguments and the environment (no sockets), the checks of
``proxy=``, and redaction of proxy credentials.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import traceback
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from yarl import URL

from copyai_async import (
    APIConnectionError,
    ConfigurationError,
    CopyAIClient,
    ProxyError,
    StartUncertainError,
)
from copyai_async._proxy import choose_proxy, parse_proxy
from copyai_async.aitasker import AITaskerClient
from copyai_async.testing import FakeClock, FakeCopyAI

from .proxy_support import (
    PASSWORD,
    PASSWORD_IN_URL,
    ROOT,
    USER,
    RunningProxy,
    closed_port,
    resolve_test_hosts,
    running_proxy,
)

PROXY_VARIABLES = (
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "no_proxy",
    "NO_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "REQUEST_METHOD",
)
TOKEN = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
WRONG = "wr0ng-pa55word"
# aiohttp before 3.14 (seen on 3.10.0, 3.10.11 and 3.11.0) reports TLS transports unclosed
# when a session or a TLS server closes: through a CONNECT tunnel on each of those, and on
# 3.10.0 direct connections and its own web server too (aiohttp#1925, #5426). Its own
# close, not the client's: the https cases tolerate those ResourceWarnings there (the
# newest environment holds them to "no warning at all").
AIOHTTP_LEAKS_TLS = tuple(int(p) for p in aiohttp.__version__.split(".")[:2]) < (3, 14)
old_aiohttp_tls = pytest.mark.filterwarnings(
    "ignore::ResourceWarning" if AIOHTTP_LEAKS_TLS else "error"
)


def _secrets_absent(*texts: str) -> None:
    """No form of the proxy's credentials in any text shown."""
    for text in texts:
        for secret in (PASSWORD, PASSWORD_IN_URL, TOKEN, WRONG, "s3cret"):
            assert secret not in text, (secret, text)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The developer's (or CI's) own proxy settings must not reach these tests.
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _test_hosts_are_local(monkeypatch: pytest.MonkeyPatch) -> None:
    # A direct connection to copyai.test (NO_PROXY, trust_env=False) must not ask a
    # real resolver: it is this machine, as it is for the proxy.
    monkeypatch.setattr(socket, "getaddrinfo", resolve_test_hosts())


@pytest.fixture(scope="module")
def open_proxy() -> Iterator[RunningProxy]:
    with running_proxy(credentials=False) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def auth_proxy() -> Iterator[RunningProxy]:
    with running_proxy(credentials=True) as proxy:
        yield proxy


@pytest.fixture
def fresh_open_proxy(open_proxy: RunningProxy) -> RunningProxy:
    open_proxy.forget()
    return open_proxy


@pytest.fixture
def fresh_auth_proxy(auth_proxy: RunningProxy) -> RunningProxy:
    auth_proxy.forget()
    return auth_proxy


def _test_host(url: str, host: str = "copyai.test") -> str:
    """The fake server's URL under a made-up host name (not loopback, so proxied)."""
    return str(URL(url).with_host(host))


def _port(url: str) -> int:
    port = URL(url).port
    assert port is not None
    return port


# -- choosing the proxy: arguments and environment (no sockets) --------------------------

HTTPS_BASE = URL("https://api.copy.ai/api")


def _choose(environ: dict[str, str], base: URL = HTTPS_BASE, **kw: Any) -> str | None:
    options: dict[str, Any] = {"proxy": None, "trust_env": True, **kw}
    chosen = choose_proxy(
        base, loopback=base.host in ("127.0.0.1", "localhost"), environ=environ, **options
    )
    return None if chosen is None else chosen.shown


def test_environment_proxy_by_scheme_lower_case_first() -> None:
    env = {"HTTPS_PROXY": "http://upper:3128", "HTTP_PROXY": "http://plain:3128"}
    assert _choose(env) == "http://upper:3128"
    assert _choose({**env, "https_proxy": "http://lower:3128"}) == "http://lower:3128"
    assert _choose(env, URL("http://api.example/api")) == "http://plain:3128"
    assert _choose({"HTTP_PROXY": "http://plain:3128"}) is None  # not for https
    # No scheme: http:// (curl's reading).
    assert _choose({"HTTPS_PROXY": "proxy.example:3128"}) == "http://proxy.example:3128"
    # ALL_PROXY is not read (it usually names a SOCKS proxy).
    assert _choose({"ALL_PROXY": "socks5://proxy:1080"}) is None


def test_http_proxy_ignored_in_a_cgi_script() -> None:
    # There, a request's "Proxy:" header becomes HTTP_PROXY (httpoxy).
    env = {"HTTP_PROXY": "http://evil:3128", "REQUEST_METHOD": "GET"}
    assert _choose(env, URL("http://api.example/api")) is None
    assert _choose({**env, "http_proxy": "http://ok:3128"}, URL("http://x.example")) is not None


@pytest.mark.parametrize(
    ("no_proxy", "bypassed"),
    [
        ("*", True),
        ("api.copy.ai", True),
        ("copy.ai", True),
        (".copy.ai", True),
        ("*.copy.ai", True),
        ("other.example, copy.ai", True),
        ("other.example copy.ai", True),
        ("API.COPY.AI", True),
        ("api.copy.ai:443", True),
        ("api.copy.ai:8443", False),
        ("py.ai", False),
        ("i.copy.ai", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_no_proxy_forms(no_proxy: str, bypassed: bool) -> None:
    env = {"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": no_proxy}
    assert (_choose(env) is None) is bypassed


@pytest.mark.parametrize(
    ("host", "no_proxy", "bypassed"),
    [
        ("10.1.2.3", "10.0.0.0/8", True),
        ("10.1.2.3", "10.1.2.3", True),
        ("11.1.2.3", "10.0.0.0/8", False),
        ("fd00::5", "fd00::/8", True),
        ("fd00::5", "[fd00::5]:443", True),
        ("api.example", "10.0.0.0/8", False),
    ],
)
def test_no_proxy_addresses(host: str, no_proxy: str, bypassed: bool) -> None:
    base = URL.build(scheme="https", host=host, path="/api")
    env = {"HTTPS_PROXY": "http://proxy:3128", "no_proxy": no_proxy}
    assert (_choose(env, base) is None) is bypassed


def test_loopback_never_proxied_from_the_environment_but_proxy_argument_applies() -> None:
    env = {"HTTP_PROXY": "http://proxy:3128", "HTTPS_PROXY": "http://proxy:3128"}
    for base in ("http://127.0.0.1:8080/api", "https://localhost/api"):
        assert _choose(env, URL(base)) is None
        assert _choose(env, URL(base), proxy="http://mine:3128") == "http://mine:3128"


def test_proxy_argument_wins_over_environment_and_no_proxy() -> None:
    env = {"HTTPS_PROXY": "http://env:3128", "NO_PROXY": "*"}
    assert _choose(env, proxy="http://mine:3128") == "http://mine:3128"
    assert _choose(env, proxy="http://mine:3128", trust_env=False) == "http://mine:3128"
    assert _choose({"HTTPS_PROXY": "http://env:3128"}, trust_env=False) is None


@pytest.mark.parametrize(
    ("value", "error", "words"),
    [
        (3128, TypeError, "proxy must be an http(s) proxy URL (str), got int"),
        (b"http://p:1", TypeError, "got bytes"),
        ("", ValueError, "proxy is empty"),
        ("proxy.example:3128", ValueError, "must be an http:// or https:// proxy URL"),
        (f"socks5://{USER}:{PASSWORD_IN_URL}@p:1080", ValueError, "got scheme 'socks5'"),
        ("http:///x", ValueError, "must name the proxy's host"),
        (f"http://{USER}:{PASSWORD_IN_URL}@:3128", ValueError, "proxy is not a URL"),
        (f"http://{USER}:{PASSWORD_IN_URL}@p:3128/path", ValueError, "nothing after the port"),
        (f"http://{USER}:{PASSWORD_IN_URL}@p:3128/?q=1", ValueError, "nothing after the port"),
        (f"http://{USER}:{PASSWORD_IN_URL}@p:99999", ValueError, "proxy is not a URL"),
    ],
)
def test_bad_proxy_argument_named_without_credentials(
    value: Any, error: type[Exception], words: str
) -> None:
    with pytest.raises(error) as info:
        CopyAIClient("k", proxy=value)
    assert words in str(info.value)
    assert str(info.value).startswith("proxy ")
    _secrets_absent(str(info.value))
    with pytest.raises(error):
        AITaskerClient("t", base_url="https://aitasker.example", proxy=value)


def test_bad_trust_env() -> None:
    with pytest.raises(TypeError, match="trust_env must be a bool, got str"):
        CopyAIClient("k", trust_env="no")  # type: ignore[arg-type]


def test_bad_proxy_variable_is_a_configuration_error_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", f"socks5://{USER}:{PASSWORD_IN_URL}@proxy:1080")
    with pytest.raises(ConfigurationError) as info:
        CopyAIClient("k")
    message = str(info.value)
    assert "the HTTPS_PROXY environment variable must be an http:// or https://" in message
    assert "fix or unset HTTPS_PROXY, or pass trust_env=False" in message
    _secrets_absent(message)
    assert CopyAIClient("k", trust_env=False).proxy is None


def test_credentials_parsed_and_hidden() -> None:
    proxy = parse_proxy(f"http://{USER}:{PASSWORD_IN_URL}@proxy.example:3128/", source="proxy")
    assert proxy.shown == "http://proxy.example:3128"
    assert proxy.authorization == f"Basic {TOKEN}"
    assert {PASSWORD, PASSWORD_IN_URL, TOKEN} <= set(proxy.secrets)
    client = CopyAIClient("k", proxy=f"http://{USER}:{PASSWORD_IN_URL}@proxy.example:3128")
    assert client.proxy == "http://proxy.example:3128"
    assert "proxy='http://proxy.example:3128'" in repr(client)
    _secrets_absent(repr(client), client.proxy)
    _secrets_absent(repr(proxy))  # what a traceback showing locals would print
    # A lone user name (a token as user) is the secret then, if it is long enough to be
    # one: a short name masked would garble every message it appears in.
    lone = parse_proxy("http://tok3n-value@proxy.example", source="proxy")
    assert lone.shown == "http://proxy.example"
    assert "tok3n-value" in lone.secrets
    short = parse_proxy("http://a@proxy.example", source="proxy")
    assert short.authorization is not None
    assert "a" not in short.secrets
    assert "a:" not in short.secrets


@pytest.mark.skipif(sys.version_info >= (3, 11), reason="TLS inside TLS works from 3.11")
def test_an_https_proxy_is_refused_where_it_cannot_work() -> None:
    with pytest.raises(ValueError, match=r"https:// proxy URL needs Python 3\.11"):
        CopyAIClient("k", proxy="https://proxy.example:3128")


def test_no_proxy_environment_read_with_a_session_of_your_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The session's own trust_env decides then (aiohttp reads the environment itself).
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert CopyAIClient("k").proxy == "http://proxy.example:3128"

    async def with_session() -> str | None:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            return CopyAIClient("k", session=session).proxy

    assert asyncio.run(with_session()) is None


# -- plain forwarding (http base URL), in this process ----------------------------------


def _client(server: FakeCopyAI, clock: FakeClock, base: str, **kw: Any) -> CopyAIClient:
    return CopyAIClient(server.api_key, base_url=base, clock=clock, allow_http=True, **kw)


async def test_http_proxy_variable_forwards(
    server: FakeCopyAI,
    clock: FakeClock,
    fresh_open_proxy: RunningProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", fresh_open_proxy.url)
    base = _test_host(server.url)
    async with _client(server, clock, base) as client:
        assert client.proxy == fresh_open_proxy.bare_url
        page = await client.list_runs(server.workflow_id)
    assert page.runs == ()
    assert fresh_open_proxy.seen() == [f"GET copyai.test:{_port(base)}"]
    assert "proxy.py" in server.requests[-1].headers.get("Via", "")


async def test_proxy_argument_forwards_and_applies_to_loopback(
    server: FakeCopyAI, clock: FakeClock, fresh_open_proxy: RunningProxy
) -> None:
    async with _client(server, clock, server.url, proxy=fresh_open_proxy.url) as client:
        await client.list_runs(server.workflow_id)
    assert fresh_open_proxy.seen() == [f"GET 127.0.0.1:{server.port}"]


@pytest.mark.parametrize(
    ("variables", "options"),
    [
        ({"NO_PROXY": "example.org,copyai.test"}, {}),
        ({"no_proxy": ".test"}, {}),
        ({}, {"trust_env": False}),
    ],
)
async def test_no_proxy_and_trust_env_false_go_direct(
    server: FakeCopyAI,
    clock: FakeClock,
    fresh_open_proxy: RunningProxy,
    monkeypatch: pytest.MonkeyPatch,
    variables: dict[str, str],
    options: dict[str, Any],
) -> None:
    monkeypatch.setenv("HTTP_PROXY", fresh_open_proxy.url)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    async with _client(server, clock, _test_host(server.url), **options) as client:
        assert client.proxy is None
        await client.list_runs(server.workflow_id)
    assert fresh_open_proxy.seen() == []
    assert "Via" not in server.requests[-1].headers


async def test_loopback_base_url_ignores_proxy_variables(
    server: FakeCopyAI, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy from the environment that nobody answers at: never used for loopback.
    dead = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("HTTP_PROXY", dead)
    monkeypatch.setenv("HTTPS_PROXY", dead)
    async with _client(server, clock, server.url, max_retries=0) as client:
        assert client.proxy is None
        await client.list_runs(server.workflow_id)


async def test_proxy_credentials_accepted(
    server: FakeCopyAI, clock: FakeClock, fresh_auth_proxy: RunningProxy
) -> None:
    base = _test_host(server.url)
    async with _client(server, clock, base, proxy=fresh_auth_proxy.url) as client:
        await client.list_runs(server.workflow_id)
    assert fresh_auth_proxy.seen() == [f"GET copyai.test:{_port(base)}"]
    # The proxy took them: the API never sees the proxy's credentials.
    assert "Proxy-Authorization" not in server.requests[-1].headers


@pytest.mark.parametrize("source", ["proxy=", "HTTP_PROXY"])
async def test_proxy_credentials_refused_never_shown(
    server: FakeCopyAI,
    clock: FakeClock,
    fresh_auth_proxy: RunningProxy,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    source: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger="copyai_async")
    wrong = fresh_auth_proxy.url.replace(PASSWORD_IN_URL, WRONG)
    options: dict[str, Any] = {"proxy": wrong} if source == "proxy=" else {}
    if source == "HTTP_PROXY":
        monkeypatch.setenv("HTTP_PROXY", wrong)
    async with _client(server, clock, _test_host(server.url), **options) as client:
        with pytest.raises(ProxyError) as info:
            await client.list_runs(server.workflow_id)
        shown = repr(client)
    error = info.value
    assert error.status == 407
    assert error.proxy == fresh_auth_proxy.bare_url
    assert error.method == "GET"
    assert error.path.endswith("/run")
    assert clock.sleeps == []  # refused: the same credentials would be refused again
    message = str(error)
    assert "407 Proxy Authentication Required" in message
    where = "proxy=" if source == "proxy=" else "the HTTP_PROXY environment variable"
    assert f"refused the credentials given in {where}" in message
    assert server.stats.requests == 0
    _secrets_absent(
        message, repr(error), "".join(traceback.format_exception(error)), caplog.text, shown
    )


async def test_proxy_without_credentials_asked_for_them(
    server: FakeCopyAI, clock: FakeClock, fresh_auth_proxy: RunningProxy
) -> None:
    async with _client(
        server, clock, _test_host(server.url), proxy=fresh_auth_proxy.bare_url
    ) as client:
        with pytest.raises(ProxyError, match="it wants credentials: put them in its URL"):
            await client.list_runs(server.workflow_id)


@pytest.mark.parametrize("call", ["get", "start"])
async def test_unreachable_proxy_retried_even_for_a_start(
    server: FakeCopyAI, clock: FakeClock, call: str
) -> None:
    dead = f"http://{USER}:{PASSWORD_IN_URL}@127.0.0.1:{closed_port()}"
    async with _client(server, clock, _test_host(server.url), proxy=dead, max_retries=2) as client:
        attempt = (
            client.list_runs(server.workflow_id)
            if call == "get"
            else client.start_run(server.workflow_id, {"topic": "otters"})
        )
        with pytest.raises(ProxyError) as info:
            await attempt
    error = info.value
    assert not isinstance(error, StartUncertainError)
    assert isinstance(error, APIConnectionError)
    assert error.status is None
    assert "could not connect to the proxy http://127.0.0.1:" in str(error)
    assert "(after 3 attempts)" in str(error)
    assert len(clock.sleeps) == 2  # never reached the API: safe to send again, a POST too
    assert server.stats.requests == 0
    _secrets_absent(str(error), "".join(traceback.format_exception(error)))


# -- CONNECT (https base URL), in a fresh process that trusts the test CA ---------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    """A server context for copyai.test (and forbidden.test), and the CA's PEM file."""
    ca = trustme.CA()
    cert = ca.issue_cert("copyai.test", "forbidden.test", "127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    pem = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    return context, pem


@pytest.fixture
async def https_server(tls: tuple[ssl.SSLContext, Path]) -> AsyncIterator[FakeCopyAI]:
    async with FakeCopyAI(ssl_context=tls[0]) as srv:
        yield srv


async def _in_fresh_process(
    tls: tuple[ssl.SSLContext, Path],
    server: FakeCopyAI,
    *,
    base: str,
    variables: dict[str, str] | None = None,
    call: str = "list_runs",
    **client: Any,
) -> dict[str, Any]:
    """Run one call of a CopyAIClient in a fresh process trusting the test CA."""
    spec = {
        "base_url": base,
        "api_key": server.api_key,
        "workflow_id": server.workflow_id,
        "call": call,
        "client": client,
    }
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}
    env.update(variables or {}, SSL_CERT_FILE=str(tls[1]), PYTHONPATH=str(ROOT))
    tolerate = ["-W", "ignore::ResourceWarning"] if AIOHTTP_LEAKS_TLS else []
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "error",
        *tolerate,
        "-m",
        "tests.proxy_worker",
        json.dumps(spec),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert not err, err.decode()  # no warning, nothing unclosed
    result: dict[str, Any] = json.loads(out)
    return result


@old_aiohttp_tls
@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy"])
async def test_https_proxy_variable_tunnels(
    tls: tuple[ssl.SSLContext, Path],
    https_server: FakeCopyAI,
    fresh_auth_proxy: RunningProxy,
    variable: str,
) -> None:
    base = _test_host(https_server.url)
    result = await _in_fresh_process(
        tls, https_server, base=base, variables={variable: fresh_auth_proxy.url}
    )
    assert result["ok"], result
    assert result["proxy"] == fresh_auth_proxy.bare_url
    assert fresh_auth_proxy.seen() == [f"CONNECT copyai.test:{_port(base)}"]
    assert https_server.stats.requests == 1
    # Credentials went on the CONNECT, never into the tunnel to the API.
    assert "Proxy-Authorization" not in https_server.requests[-1].headers
    _secrets_absent(result["log"], result["repr"])


@old_aiohttp_tls
async def test_proxy_argument_tunnels(
    tls: tuple[ssl.SSLContext, Path], https_server: FakeCopyAI, fresh_open_proxy: RunningProxy
) -> None:
    base = _test_host(https_server.url)
    result = await _in_fresh_process(tls, https_server, base=base, proxy=fresh_open_proxy.url)
    assert result["ok"], result
    assert fresh_open_proxy.seen() == [f"CONNECT copyai.test:{_port(base)}"]


@old_aiohttp_tls
@pytest.mark.parametrize(
    "variables",
    [{"NO_PROXY": "copyai.test"}, {"no_proxy": "*"}],
)
async def test_no_proxy_respected_for_https(
    tls: tuple[ssl.SSLContext, Path],
    https_server: FakeCopyAI,
    fresh_open_proxy: RunningProxy,
    variables: dict[str, str],
) -> None:
    base = _test_host(https_server.url)
    result = await _in_fresh_process(
        tls, https_server, base=base, variables={"HTTPS_PROXY": fresh_open_proxy.url, **variables}
    )
    assert result["ok"], result
    assert result["proxy"] is None
    assert fresh_open_proxy.seen() == []
    assert https_server.stats.requests == 1


@old_aiohttp_tls
async def test_trust_env_false_respected_for_https(
    tls: tuple[ssl.SSLContext, Path], https_server: FakeCopyAI, fresh_open_proxy: RunningProxy
) -> None:
    base = _test_host(https_server.url)
    result = await _in_fresh_process(
        tls,
        https_server,
        base=base,
        variables={"HTTPS_PROXY": fresh_open_proxy.url},
        trust_env=False,
    )
    assert result["ok"], result
    assert fresh_open_proxy.seen() == []


@old_aiohttp_tls
@pytest.mark.parametrize("call", ["list_runs", "start_run"])
async def test_connect_refused_for_credentials_raised_at_once(
    tls: tuple[ssl.SSLContext, Path],
    https_server: FakeCopyAI,
    fresh_auth_proxy: RunningProxy,
    call: str,
) -> None:
    wrong = fresh_auth_proxy.url.replace(PASSWORD_IN_URL, WRONG)
    result = await _in_fresh_process(
        tls,
        https_server,
        base=_test_host(https_server.url),
        variables={"HTTPS_PROXY": wrong},
        call=call,
    )
    error = result["error"]
    assert error["type"] == "ProxyError"
    assert error["status"] == 407
    assert error["proxy"] == fresh_auth_proxy.bare_url
    assert "refused the tunnel to copyai.test:" in error["str"]
    assert "407 Proxy Authentication Required" in error["str"]
    assert "refused the credentials given in the HTTPS_PROXY environment variable" in error["str"]
    assert result["sleeps"] == 0
    assert https_server.stats.requests == 0
    _secrets_absent(error["str"], error["repr"], error["traceback"], result["log"], result["repr"])


@old_aiohttp_tls
async def test_connect_forbidden_host_raised_at_once(
    tls: tuple[ssl.SSLContext, Path], https_server: FakeCopyAI, fresh_open_proxy: RunningProxy
) -> None:
    result = await _in_fresh_process(
        tls,
        https_server,
        base=_test_host(https_server.url, "forbidden.test"),
        proxy=fresh_open_proxy.url,
    )
    error = result["error"]
    assert (error["type"], error["status"]) == ("ProxyError", 403)
    assert "refused to open a tunnel to forbidden.test:" in error["str"]
    assert "NO_PROXY" in error["str"]
    assert result["sleeps"] == 0


@old_aiohttp_tls
@pytest.mark.parametrize("call", ["list_runs", "start_run"])
async def test_connect_failing_upstream_retried_even_for_a_start(
    tls: tuple[ssl.SSLContext, Path],
    https_server: FakeCopyAI,
    fresh_open_proxy: RunningProxy,
    call: str,
) -> None:
    # The proxy answers CONNECT with a 5xx: it cannot reach the API (nothing listens).
    base = f"https://copyai.test:{closed_port()}/api"
    result = await _in_fresh_process(
        tls, https_server, base=base, proxy=fresh_open_proxy.url, call=call, max_retries=2
    )
    error = result["error"]
    assert error["type"] == "ProxyError", error
    assert error["status"] >= 500
    assert "could not open a tunnel to copyai.test:" in error["str"]
    assert "never reached the API" in error["str"]
    assert "(after 3 attempts)" in error["str"]
    assert result["sleeps"] == 2
    assert len(fresh_open_proxy.seen()) == 3


# -- the command line ---------------------------------------------------------------------


def test_cli_proxy_option(
    fresh_open_proxy: RunningProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    from copyai_async.cli import EXIT_OK, EXIT_USAGE, main

    from .test_cli import ThreadedServer

    threaded = ThreadedServer()
    try:
        srv = threaded.server
        base = ["--api-key", srv.api_key, "--base-url", srv.url]
        listing = ["runs", "list", srv.workflow_id]
        assert main([*base, "--proxy", fresh_open_proxy.url, *listing]) == EXIT_OK
        assert fresh_open_proxy.seen() == [f"GET 127.0.0.1:{srv.port}"]
        # A global option: after the command too.
        assert main([*base, *listing, "--proxy", fresh_open_proxy.url]) == EXIT_OK
        assert len(fresh_open_proxy.seen()) == 2
        capsys.readouterr()
        bad = f"socks5://{USER}:{PASSWORD_IN_URL}@proxy:1080"
        assert main([*base, "--proxy", bad, *listing]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert "error: --proxy must be an http:// or https:// proxy URL" in err
        _secrets_absent(err)
    finally:
        threaded.close()


def test_cli_bad_proxy_variable_advice(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from copyai_async.cli import EXIT_USAGE, main

    monkeypatch.setenv("HTTPS_PROXY", "ftp://proxy:21")
    assert main(["--api-key", "k", "runs", "get", "WCFG-1", "WRUN-1"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "fix or unset HTTPS_PROXY, or pass --proxy" in err
