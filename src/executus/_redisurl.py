"""Redis URLs, read with the standard library only: the schemes executus takes, the
passwords a message must not show, and the checks a URL must pass.

``executus.config`` (part of the stdlib-only core) checks ``REDIS_URL`` at load with
``check_redis_url``, and ``RedisLane`` checks its URL with the same function before
redis-py's own parser, so a URL is refused with the same words by both, and config
refuses at load what a ``RedisLane`` would refuse at first use.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, unquote, unquote_plus, urlparse

__all__ = ["REDIS_SCHEMES", "check_redis_url", "masked_url", "scrubbed", "url_secrets"]

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")

# Query parameters redis-py reads as numbers (redis.connection.URL_QUERY_ARGUMENT_PARSERS),
# with what a value must be. redis-py refuses any other value when it parses the URL.
_NUMBER_PARAMS = {
    "db": ("an integer", int),
    "socket_timeout": ("a number", float),
    "socket_connect_timeout": ("a number", float),
    "socket_read_size": ("an integer", int),
    "max_connections": ("an integer", int),
    "health_check_interval": ("an integer", int),
    "ssl_min_version": ("an integer", int),
    "timeout": ("a number", float),
    "protocol": ("an integer", int),
}


def url_secrets(url: str) -> tuple[tuple[int, int] | None, list[str]]:
    """Where the password of ``url``'s user info is (offsets, or None when it has none),
    and the texts of it an error may quote: the password and its start, which urllib
    reads as a port when the password holds ``/``, ``?`` or ``#`` (a ``password=`` in
    the query is masked by ``masked_url``; errors do not quote it).

    The user info ends at the netloc's last ``@`` as ``urlsplit`` reads it; when the
    netloc has none but the URL has one further on, a password written with ``/``,
    ``?`` or ``#`` unencoded (``redis://u:pa/ss@host``) is taken to end there: masking
    too much is better than showing a password. A URL with no ``//`` before its first
    ``@`` (``default:secret@host:6379``, ``redis:u:secret@host``: the scheme or its
    slashes forgotten) has everything up to its last ``@`` as user info, and all of it
    after the first ``:`` as the password.
    """
    head, sep, rest = url.partition("//")
    if not sep or "@" in head:
        head, sep, rest = "", "", url
        end = rest.rfind("@")
    else:
        netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
        end = netloc.rfind("@") if "@" in netloc else rest.rfind("@")
    colon = rest.find(":", 0, max(end, 0))
    if end < 0 or colon < 0:
        return None, []
    password = rest[colon + 1 : end]
    secrets = [password, re.split(r"[/?#]", password, maxsplit=1)[0]] if password else []
    offset = len(head) + len(sep)
    return (offset + colon + 1, offset + end), secrets


def _is_password(name: str) -> bool:
    """True for a query parameter name redis-py reads as the password (``password``,
    also percent- or plus-encoded: ``pass%77ord``); any case, to mask rather than show."""
    return unquote_plus(name).strip().lower() == "password"


def _masked_query(url: str) -> str:
    """``url`` with the value of every ``password`` query parameter shown as ``***``.

    redis-py splits the query on ``&`` only (``parse_qs``), so a value runs to the next
    ``&``: a ``;`` or ``#`` in it is part of the password. A ``password=`` after a ``;``
    inside another parameter's value is masked too (to that parameter's end).
    """
    start = url.find("?")
    if start < 0:
        return url
    fields = url[start + 1 :].split("&")
    for i, field in enumerate(fields):
        pos = 0
        for part in field.split(";"):
            name, eq, _ = part.partition("=")
            if eq and _is_password(name):
                fields[i] = f"{field[: pos + len(name) + 1]}***"
                break
            pos += len(part) + 1
    return f"{url[: start + 1]}{'&'.join(fields)}"


def masked_url(url: str) -> str:
    """``url`` with its passwords (user info and ``password=`` query) shown as ``***``,
    for messages and logs: ``redis://u:***@host:6379/0``."""
    span, _ = url_secrets(url)
    if span is not None:
        url = f"{url[: span[0]]}***{url[span[1] :]}"
    return _masked_query(url)


def scrubbed(text: str, url: str) -> str:
    """``text`` (an error about ``url``) without any part of the URL's password."""
    for secret in sorted(filter(None, url_secrets(url)[1]), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def check_redis_url(url: str, *, cluster: bool, cluster_option: str = "cluster=True") -> None:
    """Refuse a URL redis-py could not connect with, as redis-py would read it.

    Checked: the scheme (``redis://``, ``rediss://`` or ``unix://``), a URL urllib cannot
    split (``[::1``), the port, the database (the path, or ``?db=``), the query
    parameters redis-py reads as numbers (``?socket_timeout=``), and, with ``cluster``,
    a database other than 0 (a Redis Cluster has only database 0).

    Args:
        url: the URL.
        cluster: the URL names a node of a Redis Cluster.
        cluster_option: how the message names the setting that made ``cluster`` true.

    Raises:
        ValueError: the rule and the URL, its passwords masked.
    """
    shown = masked_url(url)
    if not url.startswith(REDIS_SCHEMES):
        raise ValueError(f"redis URL must start with redis://, rediss:// or unix://, got {shown!r}")

    def invalid(rule: str) -> ValueError:
        return ValueError(f"redis URL {shown!r} is not valid: {rule}")

    try:
        parsed = urlparse(url)
        query = parse_qs(parsed.query)
        if parsed.scheme != "unix":
            _ = parsed.port  # reading it checks it, as redis-py does
    except ValueError as e:
        # urllib quotes a password written with "/" unencoded as a bad port: scrub it.
        raise invalid(scrubbed(str(e), url)) from None
    for name, (expected, parse) in _NUMBER_PARAMS.items():
        if query.get(name):  # redis-py reads the first value of a parameter
            value = query[name][0]
            try:
                parse(value)
            except ValueError:
                raise invalid(
                    f"its query parameter {name!r} must be {expected}, got {value!r}"
                ) from None
    db = int(query["db"][0]) if query.get("db") else 0
    if parsed.scheme != "unix":
        # redis-py reads a path that is not a number as no database at all (database 0).
        path = unquote(parsed.path).replace("/", "")
        if path:
            try:
                number = int(path) if path.isdigit() else None
            except ValueError:  # "²" is a digit int() cannot read
                number = None
            if number is None:
                raise invalid(f"its database must be a number, got {path!r}")
            if not query.get("db"):  # ?db= wins over the path, as in redis-py
                db = number
    if cluster and db != 0:
        raise ValueError(
            f"redis URL {shown!r} is not valid with {cluster_option}: a Redis Cluster has "
            f"database 0 only, got {db!r}"
        )
