"""Keeps passwords, URIs with a password and API keys out of everything the operator writes.

Drivers and SDKs quote what they were given when they fail: libpq echoes the piece of a connection
string it cannot parse (`invalid percent-encoded token: "p%ZZw"`), and that piece is often the password.
`redact` removes what can be recognised by shape (the password of a URI, `password=` pairs, the tokens
libpq quotes, Pinecone keys) and every value it is told about; `remember` tells it about a value for the
whole process, so the log filter scrubs an admin password even where it appears bare. Redaction is
applied where text leaves the operator: conditions, Events, log records and spans.
"""
from __future__ import annotations

import logging
import re
import threading
import traceback
import urllib.parse
from collections.abc import Iterable

MASK = "***"
# Shorter values are not remembered: masking every "abc" in every log line would hide more than it protects.
MIN_SECRET_LENGTH = 4
# A password split by a URI delimiter ("ab/cd@ef") reaches messages in pieces; pieces this long are masked too.
MIN_FRAGMENT_LENGTH = 6

# scheme://user:PASSWORD@host: the password runs to the '@' after which comes a host (no further '@'
# before a space, '/' or the end). Spaces, quotes and broken percent-encoding do not end it: a malformed
# URI is exactly when drivers echo it.
_URI_PASSWORD = re.compile(
    r"(?P<lead>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"]*:)"
    r"(?P<secret>[^@\n]*?(?:@[^@\s/]*)*?)"
    r"(?=@[^@\s]*(?:[\s/?#'\"]|$))",
    re.MULTILINE)
# password=hunter2, password = 'it\'s', "password": "x", PGPASSWORD=x, Api-Key: x (libpq conninfo, query
# strings, dict and JSON reprs, environments, HTTP headers). A quoted value runs to its closing quote, or
# to the end of the line; an unquoted one to the next `key=` (a space in it is a mistake libpq then
# reports by quoting the rest, so the rest is masked too).
_KEY_VALUE = re.compile(
    r"(?P<lead>\b(?:\w*?(?:password|passwd|api[_-]?key)|pwd)['\"]?\s*[:=]\s*)"
    r"(?P<secret>'(?:[^'\\\n]|\\.)*(?:'|$)|\"(?:[^\"\\\n]|\\.)*(?:\"|$)"
    r"|[^\s&]+(?:[ \t]+(?![A-Za-z_]\w*[ \t]*=)[^\s&]+)*)",
    re.IGNORECASE | re.MULTILINE)
# SQL: PASSWORD 'x' (CREATE/ALTER ROLE, should a statement ever be echoed).
_SQL_PASSWORD = re.compile(r"(?P<lead>\bpassword\s+)(?P<secret>'(?:[^'\n]|'')*(?:'|$))", re.IGNORECASE | re.MULTILINE)
# libpq's connection-string parse errors quote the offending piece, which may be (part of) the password.
_LIBPQ_QUOTED = re.compile(
    r"(?P<lead>(?:percent-encoded (?:token|value):|unexpected spaces found in|missing \"=\" after"
    r"|invalid connection option|URI query parameter:|invalid integer value|invalid port number:"
    r"|in URI[^\"\n]*:|host name)\s*)"
    r"\"(?P<secret>.*)\"",
    re.MULTILINE)
_PINECONE_KEY = re.compile(r"\bpcsk_[A-Za-z0-9_\-]{8,}")
_BEARER = re.compile(r"(?P<lead>\bBearer\s+)(?P<secret>[A-Za-z0-9._~+/=\-]+)", re.IGNORECASE)

_remembered: frozenset[str] = frozenset()
_remember_lock = threading.Lock()


def _mask_group(match: re.Match[str]) -> str:
    quote = match.group("secret")[:1]
    return match.group("lead") + (f"{quote}{MASK}{quote}" if quote in ("'", '"') else MASK)


def passwords_in(value: str) -> set[str]:
    """The passwords a URI or libpq key=value string carries (as written and percent-decoded)."""
    found: set[str] = set()
    for match in _URI_PASSWORD.finditer(value):
        found.add(match.group("secret"))
    # libpq takes the first '@' as the end of the password; a raw '@' in it leaves the rest in the host.
    _, separator, rest = value.partition("://")
    if separator and ":" in rest.split("@", 1)[0] and "@" in rest:
        userinfo = rest.rsplit("@", 1)[0]
        found.add(userinfo.split(":", 1)[1])
    for match in _KEY_VALUE.finditer(value):
        secret = match.group("secret")
        if secret[:1] in ("'", '"'):
            secret = re.sub(r"\\(.)", r"\1", secret[1:].removesuffix(secret[0]))
        found.add(secret)
    decoded = {urllib.parse.unquote(password) for password in found}
    fragments = {piece for password in found for piece in re.split(r"[/@:?#\s]", password)
                 if len(piece) >= MIN_FRAGMENT_LENGTH}
    return {password for password in found | decoded | fragments if password}


def remember(value: str | None) -> None:
    """Register a secret for the whole process (an admin URI, an API key): `redact` masks it and the passwords
    inside it wherever they appear, bare or not. Safe to call on every read; values are kept, never logged."""
    global _remembered
    if not value:
        return
    forms = {value, *passwords_in(value)}
    forms = {form for form in forms if len(form) >= MIN_SECRET_LENGTH}
    if forms <= _remembered:
        return
    with _remember_lock:
        _remembered = _remembered | forms


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` without passwords, URIs' passwords, API keys, remembered secrets and the given `secrets`.

    Given secrets are masked whatever their length (the caller knows they are secret), together with the
    passwords inside them when they are URIs or key=value strings.
    """
    if not text:
        return text
    given = {secret for secret in secrets if secret}
    known = given | _remembered
    for secret in given:
        known |= passwords_in(secret)
    for secret in sorted(known, key=len, reverse=True):  # a URI before the password inside it
        text = text.replace(secret, MASK)
    text = _URI_PASSWORD.sub(lambda match: match.group("lead") + MASK, text)
    text = _KEY_VALUE.sub(_mask_group, text)
    text = _SQL_PASSWORD.sub(_mask_group, text)
    text = _LIBPQ_QUOTED.sub(lambda match: f"{match.group('lead')}\"{MASK}\"", text)
    text = _PINECONE_KEY.sub("pcsk_" + MASK, text)
    return _BEARER.sub(_mask_group, text)


def describe_exception(error: BaseException) -> str:
    """The exception's traceback with its causes, redacted (for spans and anything else that records one)."""
    return redact("".join(traceback.format_exception(error)))


class RedactingFilter(logging.Filter):
    """Masks secrets in a log record's message, exception and stack before any handler formats it.

    Installed on handlers (Kopf's Event poster included), so records that propagate from any logger pass
    through it; the record is rewritten in place once and marked, so the next handler does no work.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "tenantstore_redacted", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 (a record whose arguments do not fit its format: keep what it holds)
            message = f"{record.msg} {record.args}"
        record.msg, record.args = redact(message), ()
        if record.exc_info and record.exc_info[1] is not None:
            # Formatters print exc_text when it is set; exc_info is dropped so none formats the raw exception.
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        record.tenantstore_redacted = True
        return True


LOGGERS_WITH_OWN_HANDLERS = ("kopf.objects",)  # Kopf posts this logger's records as Kubernetes Events


def install_log_filter() -> None:
    """Put the filter on every handler of the root logger and of Kopf's object logger (idempotent)."""
    for name in ("", *LOGGERS_WITH_OWN_HANDLERS):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(existing, RedactingFilter) for existing in handler.filters):
                handler.addFilter(RedactingFilter())
