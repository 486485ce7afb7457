"""A delivery's body, decoded within bounds: its size counted as inflated, its encoding.

A listener faces the internet, so nothing here does more work than the limit allows:

- ``Content-Encoding: gzip`` (or ``x-gzip``) and ``deflate`` bodies are inflated here,
  and the size limit applies to the inflated body, enforced while inflating: a body
  that inflates past it stops there (a 1 MB gzip bomb costs at most the limit's worth
  of inflating, not its gigabyte); the compressed body may not exceed it either;
- any other encoding (``br``, ``zstd``, ...) is refused (415): the listener never runs a
  decoder it cannot bound;
- a body that a server in front already inflated (its first byte is JSON's, which no
  gzip or deflate stream can start with) is taken as it is, within the same limit.
"""

from __future__ import annotations

import zlib

__all__ = ["BodyDecoder", "BodyRefused"]

_GZIP = ("gzip", "x-gzip")
_IDENTITY = ("", "identity")
_JSON_START = b"{["  # what a JSON delivery starts with (after whitespace)


class BodyRefused(Exception):
    """The body cannot be taken; answer ``status`` (and close the connection).

    Attributes:
        status: 400 (garbled compressed data), 413 (over the limit, inflated or not)
            or 415 (an encoding that is not gzip or deflate).
        reason: why, in a few words (for the log and the answer).
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _encoding(header: str | None) -> str:
    """The one content coding named by ``Content-Encoding`` (lowercase; "" for none).

    Raises:
        BodyRefused: 415 for several codings in a row or one this module cannot bound.
    """
    name = (header or "").strip().lower()
    if "," in name:
        raise BodyRefused(415, "only one content encoding (gzip or deflate) is accepted")
    if name not in (*_IDENTITY, *_GZIP, "deflate"):
        raise BodyRefused(415, f"content encoding {name[:40]!r} is not accepted (gzip, deflate)")
    return name


def _inflater(encoding: str, start: bytes) -> zlib._Decompress:
    """A decompressor for ``encoding``, given the stream's first bytes."""
    if encoding in _GZIP:
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    # deflate: RFC 9110 means the zlib format; some senders send the raw stream.
    zlib_header = (
        len(start) >= 2 and (start[0] & 0x0F) == 8 and (start[0] << 8 | start[1]) % 31 == 0
    )
    return zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)


class BodyDecoder:
    """Takes a body's bytes as they arrive, and gives the decoded body at the end.

    Args:
        content_encoding: the request's ``Content-Encoding`` header (``None``: none).
        limit: the most bytes the body may have, compressed and inflated.

    Raises:
        BodyRefused: (415) for an encoding other than gzip or deflate.
    """

    def __init__(self, content_encoding: str | None, limit: int) -> None:
        self._encoding = _encoding(content_encoding)
        self._limit = limit
        self._received = 0  # bytes as they came, compressed or not
        self._size = 0  # bytes of the decoded body
        self._parts: list[bytes] = []
        self._undecided = b""  # leading bytes, until they say whether to inflate
        self._inflate: zlib._Decompress | None = None
        self._plain = self._encoding in _IDENTITY

    def feed(self, chunk: bytes) -> None:
        """Take the next bytes of the body.

        Raises:
            BodyRefused: 413 past the limit; 400 for compressed data that is garbled.
        """
        self._received += len(chunk)
        if self._received > self._limit:
            raise BodyRefused(413, "body too large")
        if not self._plain and self._inflate is None:
            chunk = self._decide(chunk)
        if not chunk:
            return
        if self._inflate is None:
            self._keep(chunk)
            return
        room = self._limit - self._size
        try:
            data = self._inflate.decompress(chunk, room + 1)
        except zlib.error:
            raise BodyRefused(400, f"the body is not valid {self._encoding} data") from None
        if len(data) > room:
            raise BodyRefused(413, "body too large once inflated")
        self._keep(data)

    def _decide(self, chunk: bytes) -> bytes:
        """Whether the body still needs inflating: compressed data never starts like JSON
        (a server in front may have inflated it already). Returns the bytes to go on with
        (none while the first bytes cannot tell yet)."""
        head = self._undecided + chunk
        first = head.lstrip()[:1]
        if not first or (first not in _JSON_START and len(head) < 2):
            self._undecided = head  # whitespace so far, or too little to choose the format
            return b""
        self._undecided = b""
        if first in _JSON_START:
            self._plain = True
        else:
            self._inflate = _inflater(self._encoding, head)
        return head

    def _keep(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            raise BodyRefused(413, "body too large")
        self._parts.append(data)

    def finish(self) -> bytes:
        """The decoded body, once every byte was fed.

        Raises:
            BodyRefused: 400 for a compressed body cut short.
        """
        if self._undecided.strip():
            raise BodyRefused(400, f"the {self._encoding} body is cut short")
        if self._inflate is not None and not self._inflate.eof:
            raise BodyRefused(400, f"the {self._encoding} body is cut short")
        self._parts.append(self._undecided)  # whitespace: not an event, as the parser says
        return b"".join(self._parts)
