"""Which proxy a client's requests go through: decided once, when the client is made.

- ``proxy=`` (an ``http://`` or ``https://`` URL, credentials allowed) is used for every
  request, whatever the environment says (``NO_PROXY`` and loopback included).
- Otherwise, with ``trust_env`` (the default), the environment: ``https_proxy`` /
  ``HTTPS_PROXY`` for an https base URL, ``http_proxy`` / ``HTTP_PROXY`` for an http one
  (the lower-case name first, as curl and urllib read them; ``HTTP_PROXY`` is ignored in
  a CGI script, where a request header can set it). A value without a scheme is taken
  as ``http://`` (as curl and httpx do).
- ``NO_PROXY`` (``no_proxy`` first) is a comma-separated list, read as curl and
  requests read it: ``*`` (every host), host names and domain suffixes (``example.com``,
  ``.example.com`` and ``*.example.com`` each cover ``example.com`` and
  ``api.example.com``), IP addresses and CIDR ranges (``10.0.0.0/8``), each optionally
  with ``:port`` (then only that port).
- A loopback base URL (``localhost``, ``127.0.0.0/8``, ``::1``: the fake server, the
  CLI's demo) never goes through a proxy from the environment: a proxy elsewhere on the
  network cannot reach this machine's loopback, and a test server must not depend on a
  developer's shell. (Go's net/http decides the same; requests and httpx only follow
  ``NO_PROXY``.)
- ``ALL_PROXY`` is not read: it usually names a SOCKS proxy, which aiohttp does not
  speak.

Credentials in the proxy URL are sent as ``Proxy-Authorization: Basic`` and kept out of
everything shown: the URL shown has none, and :attr:`Proxy.secrets` lists every form in
which they could appear, for the client's redaction.
"""

from __future__ import annotations

import base64
import ipaddress
import sys
from collections.abc import Mapping
from typing import Any

import attrs
from yarl import URL

from ._check import boolean
from ._errors import ConfigurationError

__all__ = ["Proxy", "choose_proxy", "parse_proxy"]

_TOKEN_LENGTH = 8  # a user name without a password this long is treated as a secret


@attrs.frozen(kw_only=True)
class Proxy:
    """A proxy to send requests through.

    Attributes:
        url: its URL, without credentials (what is connected to, and what is shown).
        source: where it came from, in the words a user would fix it with: ``"proxy="``
            or the environment variable's name (``"HTTPS_PROXY"``).
        authorization: the ``Proxy-Authorization`` value, or ``None`` without credentials.
        secrets: the credentials in every form they could be shown in (decoded and
            percent-encoded, and the base64 of the header), to redact.
    """

    url: URL
    source: str
    # Never in a repr (tracebacks that show locals print it).
    authorization: str | None = attrs.field(default=None, repr=False)
    secrets: tuple[str, ...] = attrs.field(default=(), repr=False)

    @property
    def shown(self) -> str:
        """The proxy's URL as messages show it: no credentials."""
        return str(self.url)

    @property
    def where(self) -> str:
        """Where to fix it: ``"proxy="`` or the environment variable."""
        return "proxy=" if self.source == "proxy" else self.source


def parse_proxy(value: Any, *, source: str) -> Proxy:
    """``value`` checked as a proxy URL, ``scheme://[user:password@]host[:port]``.

    Messages name ``source`` and never echo credentials.

    Raises:
        TypeError: not a str (or URL).
        ValueError: anything else wrong with it.
    """
    if not isinstance(value, (str, URL)):
        raise TypeError(f"{source} must be an http(s) proxy URL (str), got {type(value).__name__}")
    text = str(value).strip()
    form = "scheme://[user:password@]host[:port]"
    if not text:
        raise ValueError(f"{source} is empty; expected an http(s) proxy URL, {form}")
    try:
        url = URL(text)
        host, port = url.host, url.port
    except (ValueError, TypeError):
        # yarl's reasons may quote the text, credentials and all.
        raise ValueError(f"{source} is not a URL; expected an http(s) proxy URL, {form}") from None
    if url.scheme not in ("http", "https"):
        raise ValueError(
            f"{source} must be an http:// or https:// proxy URL, got scheme {url.scheme!r}: "
            "aiohttp speaks to HTTP proxies only (for SOCKS, pass a session= whose connector "
            "speaks it)"
        )
    if not host or port is None:
        raise ValueError(f"{source} must name the proxy's host: {form}")
    if url.raw_path not in ("", "/") or url.raw_query_string or url.raw_fragment:
        raise ValueError(f"{source} must be {form}, with nothing after the port")
    if url.scheme == "https" and sys.version_info < (3, 11):
        # An https proxy to an https API is TLS inside TLS, which asyncio supports from
        # Python 3.11; on 3.10 every request would fail.
        raise ValueError(
            f"{source}: an https:// proxy URL needs Python 3.11 or newer (TLS inside TLS); "
            "use the proxy's http:// address (requests to an https API stay encrypted "
            "through its CONNECT tunnel)"
        )
    return _with_credentials(url, source)


def _with_credentials(url: URL, source: str) -> Proxy:
    user, password = url.user, url.password
    plain = url.origin()  # scheme, host and port: no credentials, no path
    if user is None and password is None:
        return Proxy(url=plain, source=source)
    pair = f"{user or ''}:{password or ''}"
    token = base64.b64encode(pair.encode("utf-8")).decode("ascii")
    # The password is the secret. Without one, a lone user name may be a token: redacted
    # when it is long enough to be one (a short name masked would garble every message).
    if password:
        shown_secrets: tuple[str | None, ...] = (pair, password, url.raw_password)
    elif user and len(user) >= _TOKEN_LENGTH:
        shown_secrets = (user, url.raw_user)
    else:
        shown_secrets = ()
    secrets = {token, *(s for s in shown_secrets if s)}
    return Proxy(
        url=plain,
        source=source,
        authorization=f"Basic {token}",
        secrets=tuple(sorted(secrets, key=len, reverse=True)),
    )


def _env_value(environ: Mapping[str, str], scheme: str) -> tuple[str, str] | None:
    """``(variable name, value)`` of the proxy variable for ``scheme``, if set."""
    for name in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY"):
        if name == "HTTP_PROXY" and "REQUEST_METHOD" in environ:
            continue  # in a CGI script, a request's "Proxy:" header sets HTTP_PROXY (httpoxy)
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


def _no_proxy(environ: Mapping[str, str], base: URL) -> bool:
    """Whether ``NO_PROXY`` names the base URL's host (see the module docstring)."""
    rules = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
    host = (base.host or "").lower().rstrip(".")
    return any(_bypasses(rule, host, base.port) for rule in rules.replace(" ", ",").split(","))


def _bypasses(rule: str, host: str, port: int | None) -> bool:
    """Whether one ``NO_PROXY`` entry covers ``host:port``."""
    rule = rule.strip().lower()
    if rule == "*":
        return True
    name, port_text = rule, ""
    if rule.startswith("["):  # [v6]:port
        name, _, rest = rule[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif rule.count(":") == 1:
        name, port_text = rule.split(":")
    if port_text and port_text != str(port):
        return False
    name = name.removeprefix("*").removeprefix(".").rstrip(".")
    if not name:
        return False
    try:
        network = ipaddress.ip_network(name, strict=False)
    except ValueError:
        return host == name or host.endswith("." + name)
    try:
        return ipaddress.ip_address(host) in network
    except ValueError:
        return False  # an address rule, a host name


def _from_environment(base: URL, environ: Mapping[str, str]) -> Proxy | None:
    found = _env_value(environ, base.scheme)
    if found is None or _no_proxy(environ, base):
        return None
    name, value = found
    if "://" not in value:
        value = f"http://{value}"  # curl's reading of "proxy.example:3128"
    try:
        return parse_proxy(value, source=f"the {name} environment variable")
    except ValueError as exc:
        raise ConfigurationError(f"{exc}; fix or unset {name}, or pass trust_env=False") from None


def choose_proxy(
    base: URL,
    *,
    proxy: Any,
    trust_env: bool,
    loopback: bool,
    environ: Mapping[str, str],
) -> Proxy | None:
    """The proxy for requests to ``base`` (see the module docstring), or ``None``.

    Args:
        base: the client's base URL.
        proxy: the ``proxy=`` argument (``None``: none given).
        trust_env: whether to read the environment when ``proxy`` is ``None``.
        loopback: whether ``base`` names this machine (never proxied from the environment).
        environ: the environment.

    Raises:
        TypeError, ValueError: a bad ``proxy=``.
        ConfigurationError: a proxy variable that is not an http(s) proxy URL.
    """
    boolean("trust_env", trust_env)
    if proxy is not None:
        return parse_proxy(proxy, source="proxy")
    if not trust_env or loopback:
        return None
    return _from_environment(base, environ)
