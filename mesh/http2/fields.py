"""Header fields: what RFC 9113 allows in a header block, checked in one pass.

Every header block a connection receives is checked here (:func:`received`) against RFC 9113
§8.2 (fields) and §8.3 (pseudo-header fields):

- a name is not empty and has no character in 0x00–0x20, ``A``–``Z`` or 0x7f–0xff, and no
  colon except the one that starts a pseudo-header field's name;
- a value has no NUL, CR or LF, and does not start or end with a space or a tab;
- no connection-specific field (``connection``, ``keep-alive``, ``proxy-connection``,
  ``transfer-encoding``, ``upgrade``), and ``te`` only as ``trailers``;
- pseudo-header fields are the defined ones, each at most once, all before the regular fields,
  and none in trailers. A request has ``:method``, ``:scheme`` and a non-empty ``:path``
  (a plain CONNECT has neither of the last two, and has ``:authority``; ``:protocol`` only
  comes with CONNECT), and ``:authority`` or ``host`` — equal if both, ``host`` at most once.
  A response has ``:status`` and no request pseudo-header field;
- and, the mesh's own rule: names and values are UTF-8, as the text the mesh passes on (a
  value in Latin-1 "obs-text" is refused, not passed on garbled).

Informational (1xx) responses are not checked: the connection drops them unread.

A block that breaks a rule is *malformed*: a stream error (RFC 9113 §8.1.1), so the connection
resets that stream with PROTOCOL_ERROR and goes on serving its others. Split ``cookie`` fields
are joined into one (RFC 9113 §8.2.3), as an HTTP/1.1 app expects.

Why not ``h2``'s own validation: it is a chain of eight generators and a Python loop over every
byte of every name and value, about 10 µs a block here — two blocks received per request at
each hop, a tenth of a sidecar's time at one stream in ``bench/sidecar_pair.py``. The same
rules in one loop with two regular expressions take about a fifth of that.

Blocks the mesh sends go through :func:`for_sending`: names lowercased, values stripped of
surrounding whitespace, connection-specific fields dropped, and credentials (``authorization``,
``proxy-authorization``, short cookies) marked never-indexed, so HPACK keeps them out of its
tables (RFC 7541 §7.1.3) — what ``h2``'s outbound normalization does — and encoded as bytes,
the form the HPACK encoder takes. Its second pass, checking
the pseudo-header fields of what we send, is left out: the mesh builds those itself, from
blocks checked on the way in.
"""

from __future__ import annotations

import re
from enum import Enum

from mesh.http2.stream import Headers

# A name: an optional leading colon (pseudo-header fields), then 0x21–0x7e without A–Z or ':'.
_NAME = re.compile(rb":?[!-9;-@\[-~]+")
# A value: no NUL, CR or LF, and no space or tab at either end (or empty).
_VALUE = re.compile(rb"(?:[^\0\r\n \t](?:[^\0\r\n]*[^\0\r\n \t])?)?")
CONNECTION_SPECIFIC = frozenset({"connection", "keep-alive", "proxy-connection",
                                 "transfer-encoding", "upgrade"})
_SPECIAL = CONNECTION_SPECIFIC | {"te", "cookie", "host"}  # regular fields with rules
_REQUEST_PSEUDO = frozenset({":method", ":scheme", ":authority", ":path", ":protocol"})
_NEVER_INDEXED = frozenset({"authorization", "proxy-authorization"})
_SHORT_COOKIE = 20  # cookies shorter than this are guessable from the table: never indexed


class Block(Enum):
    """Which header block of a stream: the rules differ."""

    REQUEST = "request"
    RESPONSE = "response"
    TRAILERS = "trailers"


class MalformedHeaders(Exception):
    """A received header block breaks RFC 9113; the message says which field and how."""


def received(raw: list[tuple[bytes, bytes]], block: Block) -> Headers:
    """Check a header block as HPACK decoded it, and return it as text.

    Raises:
        MalformedHeaders: it breaks a rule (see the module docstring).
    """
    headers: Headers = []
    for field in raw:
        text = _checked.get(field)
        if text is None:
            text = _check_field(*field)
            if len(field[0]) + len(field[1]) <= _CHECKED_SIZE and \
                    field[0] not in _NOT_REMEMBERED:
                if len(_checked) >= _CHECKED_MAX:
                    _checked.clear()
                _checked[field] = text
        headers.append(text)
    pseudo: dict[str, str] = {}
    for name, value in headers:
        if name[0] != ":":
            break
        if name in pseudo:
            raise MalformedHeaders(f"pseudo-header field {name} twice")
        pseudo[name] = value
    if block is Block.TRAILERS and pseudo:
        raise MalformedHeaders(f"pseudo-header field {next(iter(pseudo))} in trailers")
    special = [(name, value) for name, value in headers[len(pseudo):]
               if name in _SPECIAL or name[0] == ":"]
    if special:
        headers = _special_fields(headers, special)
    if block is Block.REQUEST:
        _check_request(pseudo, [value for name, value in special if name == "host"])
    elif block is Block.RESPONSE:
        _check_response(pseudo)
    return headers


# Fields already checked, as text. Most fields of a block repeat from block to block (HPACK
# exists because they do), and a hit costs a sixth of checking the field again: 8 µs less per
# request at each hop of bench/sidecar_pair.py. Only small fields, and no credentials (they
# should not outlive their request), so it holds at most _CHECKED_MAX × _CHECKED_SIZE bytes of
# fields (1 MiB); cleared when full, whatever a peer sends.
_checked: dict[tuple[bytes, bytes], tuple[str, str]] = {}
_CHECKED_MAX = 4096
_CHECKED_SIZE = 256
_NOT_REMEMBERED = frozenset({b"authorization", b"proxy-authorization", b"cookie"})


def _check_field(name: bytes, value: bytes) -> tuple[str, str]:
    if _NAME.fullmatch(name) is None:
        raise MalformedHeaders(f"invalid field name {_show(name)}")
    shown = "(hidden)" if name in _NOT_REMEMBERED else _show(value)  # no credentials in logs
    if _VALUE.fullmatch(value) is None:
        raise MalformedHeaders(f"field {_show(name)} has an invalid value {shown} "
                               f"(NUL, CR, LF, or a space or tab at either end)")
    try:
        return name.decode(), value.decode()
    except UnicodeDecodeError:
        raise MalformedHeaders(f"field {_show(name)} is not UTF-8: {shown}") from None


def _show(raw: bytes | str, limit: int = 40) -> str:
    """``raw`` for an error message, quoted: escaped, and cut short (it may be huge, or a
    secret)."""
    shown = repr(raw[:limit])
    shown = shown[2:-1] if isinstance(raw, bytes) else shown[1:-1]
    return f"'{shown}" + ("…'" if len(raw) > limit else "'")


def _special_fields(headers: Headers, special: Headers) -> Headers:
    """The rare regular fields with rules: connection-specific ones, te, cookie crumbs; and
    a pseudo-header field among them."""
    for name, value in special:
        if name[0] == ":":
            raise MalformedHeaders(f"pseudo-header field {name} after a regular field")
        if name in CONNECTION_SPECIFIC:
            raise MalformedHeaders(f"connection-specific field {name}")
        if name == "te" and value.lower() != "trailers":
            raise MalformedHeaders(f"te: {_show(value)} (only 'trailers' is allowed)")
    cookies = [value for name, value in special if name == "cookie"]
    if len(cookies) < 2:
        return headers
    return [(name, value) for name, value in headers if name != "cookie"] + \
        [("cookie", "; ".join(cookies))]


def _check_request(pseudo: dict[str, str], hosts: list[str]) -> None:
    if unknown := sorted(pseudo.keys() - _REQUEST_PSEUDO):
        raise MalformedHeaders(f"request with {', '.join(unknown)}")
    method = pseudo.get(":method")
    if method is None:
        raise MalformedHeaders("request without :method")
    if method == "CONNECT" and ":protocol" not in pseudo:  # a tunnel: RFC 9113 §8.5
        if ":scheme" in pseudo or ":path" in pseudo:
            raise MalformedHeaders("CONNECT with :scheme or :path")
        if ":authority" not in pseudo:
            raise MalformedHeaders("CONNECT without :authority")
    else:
        if ":protocol" in pseudo and method != "CONNECT":
            raise MalformedHeaders(f"{method} with :protocol (only CONNECT may have one)")
        if missing := [name for name in (":scheme", ":path") if name not in pseudo]:
            raise MalformedHeaders(f"request without {' and '.join(missing)}")
        if not pseudo[":path"]:
            raise MalformedHeaders("empty :path")
    if len(hosts) > 1:
        raise MalformedHeaders("more than one host field")
    authority = pseudo.get(":authority")
    if hosts and authority is not None and authority != hosts[0]:
        raise MalformedHeaders(f":authority {_show(authority)} and host {_show(hosts[0])} differ")
    if not hosts and authority is None:
        raise MalformedHeaders("request without :authority or host")


def _check_response(pseudo: dict[str, str]) -> None:
    if ":status" not in pseudo:
        raise MalformedHeaders("response without :status")
    if extra := sorted(pseudo.keys() - {":status"}):
        raise MalformedHeaders(f"response with {', '.join(extra)}")


Field = tuple[bytes, bytes, bool]
"""A field ready for HPACK: name, value, and whether it must never be indexed."""


def for_sending(headers: Headers) -> list[Field]:
    """A header block ready for HPACK (:meth:`~mesh.http2.h2_state.MeshH2Connection.
    send_block`): lowercase names, no connection-specific fields, credentials never indexed."""
    fields: list[Field] = []
    for name, value in headers:
        name, value = name.lower(), value.strip(" \t")
        if name in CONNECTION_SPECIFIC:
            continue
        hidden = name in _NEVER_INDEXED or (name == "cookie" and len(value) < _SHORT_COOKIE)
        fields.append((name.encode(), value.encode(), hidden))
    return fields
