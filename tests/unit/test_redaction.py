"""No password, URI with a password or API key survives redaction: not from our own messages, and not from
the errors psycopg and libpq raise for a malformed admin URI (they quote the piece they could not parse)."""
from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Iterator

import psycopg
import psycopg.conninfo
import pytest

from tenantstore import conditions, redaction, tracing
from tenantstore.conditions import Condition
from tenantstore.redaction import MASK, RedactingFilter, passwords_in, redact

# Malformed admin URIs, each with the password a driver error must not reveal. Port 1 on loopback: nothing listens.
MALFORMED = [
    pytest.param("postgresql://admin:p%ZZw0rd-hunter2@127.0.0.1:1/db", "p%ZZw0rd-hunter2", id="bad-percent-encoding"),
    pytest.param("postgresql://admin:pass word hunter2@127.0.0.1:1/db", "pass word hunter2", id="space"),
    pytest.param("postgresql://admin:p%00hunter2@127.0.0.1:1/db", "p%00hunter2", id="percent-zero"),
    pytest.param("host=127.0.0.1 port=1 password=hunter2-secret dbname", "hunter2-secret", id="missing-equals"),
    pytest.param("host=127.0.0.1 port=1 password='hunter2 secret dbname=x", "hunter2 secret", id="unterminated-quote"),
    pytest.param("host=127.0.0.1 port=1 password=hunter2 secret2x dbname=x", "secret2x", id="space-in-unquoted"),
    pytest.param("postgresql://admin:hunter2/secret@127.0.0.1:1/db", "hunter2/secret", id="raw-slash"),
]


def pieces(password: str) -> list[str]:
    """The password and the parts of it a parser may echo alone (split at spaces and URI delimiters)."""
    return [password] + [piece for piece in password.replace("/", " ").split() if len(piece) >= 6]


def driver_errors(uri: str) -> list[BaseException]:
    """What psycopg raises for this URI: parsing it, building a conninfo from it, connecting with it."""
    errors: list[BaseException] = []
    for attempt in (lambda: psycopg.conninfo.conninfo_to_dict(uri),
                    lambda: psycopg.conninfo.make_conninfo(uri, dbname="tenants", connect_timeout=1),
                    lambda: asyncio.run(psycopg.AsyncConnection.connect(uri, connect_timeout=1))):
        try:
            attempt()
        except Exception as error:  # noqa: BLE001 (whatever the driver raises is what the operator would see)
            errors.append(error)
    return errors


def everything_said(error: BaseException) -> str:
    """str, repr and the full traceback with chained causes and contexts."""
    chain, current = [], error
    while current is not None:
        chain += [str(current), repr(current)]
        current = current.__cause__ or current.__context__
    return "\n".join(chain + ["".join(traceback.format_exception(error))])


@pytest.mark.parametrize(("uri", "password"), MALFORMED)
def test_driver_errors_for_malformed_uris_lose_the_password(uri: str, password: str) -> None:
    errors = driver_errors(uri)
    assert errors, "the driver accepted a malformed URI"
    for error in errors:
        text = redact(everything_said(error))  # by shape alone: nothing remembered, no secrets given
        for piece in pieces(password):
            assert piece not in text, f"{piece!r} survived in {text!r}"


@pytest.mark.parametrize(("uri", "password"), MALFORMED)
def test_remembered_uris_are_scrubbed_even_bare(uri: str, password: str, forget: None) -> None:
    redaction.remember(uri)
    for piece in pieces(password):
        assert piece not in redact(f"something quoted {piece} without any context")
    assert uri not in redact(f"the uri was {uri}")


@pytest.mark.parametrize(("text", "expected"), [
    ("postgresql://tenantstore_admin:s3cr3t-pw@db:5432/tenants", f"postgresql://tenantstore_admin:{MASK}@db:5432/tenants"),
    ("connect postgres://u:a%2Fb@h/db failed", f"connect postgres://u:{MASK}@h/db failed"),
    ("postgresql://u:p@ss@h/db as admin@x", f"postgresql://u:{MASK}@h/db as admin@x"),  # a raw '@' in the password
    ("host=h password=hunter2 dbname=x", f"host=h password={MASK} dbname=x"),
    ("host=h password = 'hun ter2' dbname=x", f"host=h password = '{MASK}' dbname=x"),
    ("host=h password='it\\'s' dbname=x", f"host=h password='{MASK}' dbname=x"),
    ("{'user': 'a', 'password': 'p@ss'}", f"{{'user': 'a', 'password': '{MASK}'}}"),
    ('{"password": "x y"}', f'{{"password": "{MASK}"}}'),
    ("PGPASSWORD=hunter2 psql -h db", f"PGPASSWORD={MASK}"),  # unquoted: masked up to the next key=
    ("PGPASSWORD=hunter2 PGHOST=db", f"PGPASSWORD={MASK} PGHOST=db"),
    ("?sslmode=require&password=hunter2&x=1", f"?sslmode=require&password={MASK}&x=1"),
    ("Api-Key: 1234-abcd", f"Api-Key: {MASK}"),
    ("key pcsk_4a7Bc9_deFgHiJkLmNoPqRsTuV in a message", f"key pcsk_{MASK} in a message"),
    ("Authorization: Bearer eyJhbGciOi.x.y", f"Authorization: Bearer {MASK}"),
    ("ALTER ROLE r PASSWORD 'SCRAM-SHA-256$4096:x'", f"ALTER ROLE r PASSWORD '{MASK}'"),
    ('invalid percent-encoded token: "p%ZZw"', f'invalid percent-encoded token: "{MASK}"'),
])
def test_shapes_that_carry_a_password(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize("text", [
    'password authentication failed for user "tenantstore_admin"',
    "Postgres at 127.0.0.1:5432 is unreachable: connection refused",
    "https://api.pinecone.io:443/indexes and http://127.0.0.1:8080/healthz",
    "role tenant_acme, schema tenant_acme in database tenants, namespace acme of shared index shared-3-cosine-1",
    "usage at 80% of maxDocuments",
    "Handler 'reconcile_tenantstore' succeeded.",
])
def test_ordinary_messages_pass_unchanged(text: str) -> None:
    assert redact(text) == text


def test_given_secrets_are_masked_whatever_their_shape() -> None:
    api_key = "3f2a9c1e-7b4d-4e8f-9a6b-0c1d2e3f4a5b"  # an older Pinecone key: a UUID, no recognisable shape
    assert redact(f"Pinecone said no to {api_key}", [api_key]) == f"Pinecone said no to {MASK}"
    assert redact("short xy secret", ["xy"]) == f"short {MASK} secret"
    assert redact("nothing here", [None, ""]) == "nothing here"


def test_a_given_uri_also_masks_its_password_alone() -> None:
    uri = "postgresql://admin:Zq8-long-password@h/db"
    assert redact("the server said Zq8-long-password is wrong", [uri]) == f"the server said {MASK} is wrong"


def test_passwords_in_reads_uris_and_key_values() -> None:
    assert passwords_in("postgresql://a:p%40ss@h/db") >= {"p%40ss", "p@ss"}
    assert "hun ter2" in passwords_in("host=h password='hun ter2'")
    assert passwords_in("postgresql://h:5432/db") == set()


@pytest.fixture
def forget() -> Iterator[None]:
    remembered = redaction._remembered  # noqa: SLF001 (process-wide state, restored after the test)
    yield
    redaction._remembered = remembered  # noqa: SLF001


def test_short_values_are_not_remembered(forget: None) -> None:
    redaction.remember("abc")
    assert redact("abc def") == "abc def"


# ---- the log filter, Events' and status' messages, spans -------------------------------------------------------

@pytest.fixture
def redacted_log() -> Iterator[tuple[logging.Logger, list[str]]]:
    """A logger whose handler formats like the operator's, behind the redacting filter."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("tenantstore.test-redaction")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    logger.propagate = False
    yield logger, lines
    logger.removeHandler(handler)


@pytest.mark.parametrize(("uri", "password"), MALFORMED)
def test_the_log_filter_scrubs_a_logged_driver_exception(uri: str, password: str,
                                                         redacted_log: tuple[logging.Logger, list[str]]) -> None:
    logger, lines = redacted_log
    for error in driver_errors(uri):
        try:
            raise RuntimeError(f"reconcile failed: {error}") from error  # a wrapped error, as handlers see them
        except RuntimeError:
            logger.exception("Handler 'reconcile_tenantstore' failed for %s", uri)
    written = "\n".join(lines)
    assert "Traceback" in written and "reconcile failed" in written
    for piece in pieces(password):
        assert piece not in written


def test_the_log_filter_scrubs_remembered_values_and_arguments(redacted_log: tuple[logging.Logger, list[str]],
                                                               forget: None) -> None:
    logger, lines = redacted_log
    redaction.remember("postgresql://admin:Remembered-Pass-1@db/tenants")
    logger.warning("the server rejected %s (%d)", "Remembered-Pass-1", 7)
    logger.info("80%% done, %s", "fine")
    assert lines == [f"WARNING the server rejected {MASK} (7)", "INFO 80% done, fine"]


def test_the_filter_is_installed_on_root_and_kopf_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only these handlers, so pytest's own capture handlers are left as they are.
    added = [logging.NullHandler(), logging.NullHandler()]
    monkeypatch.setattr(logging.getLogger(), "handlers", [added[0]])
    monkeypatch.setattr(logging.getLogger("kopf.objects"), "handlers", [added[1]])
    redaction.install_log_filter()
    redaction.install_log_filter()  # idempotent
    for handler in added:
        assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1


def test_condition_messages_are_redacted() -> None:
    merged = conditions.merge_conditions(None, [Condition("Ready", False, "StoreClassInvalid",
                                                          'invalid percent-encoded token: "p%ZZw0rd"')], 1)
    assert "p%ZZw0rd" not in merged[0]["message"]


def test_spans_record_exceptions_redacted() -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: PLC0415
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: PLC0415

    exporter = InMemorySpanExporter()
    tracing.configure(SimpleSpanProcessor(exporter))
    uri = "postgresql://admin:p%ZZw0rd-in-span@127.0.0.1:1/db"
    with pytest.raises(psycopg.ProgrammingError):
        with tracing.lifecycle(tracing.CREATE, {"spec": {"tenantId": "acme"}}):
            with tracing.backend_call("postgres", "ensure"):
                psycopg.conninfo.conninfo_to_dict(uri)
    spans = exporter.get_finished_spans()
    assert {span.name for span in spans} >= {"postgres ensure", tracing.CREATE}
    for span in spans:
        said = [span.status.description or ""] + [str(value) for event in span.events
                                                  for value in event.attributes.values()]
        assert any("percent-encoded" in text for text in said)
        assert not any("p%ZZw0rd-in-span" in text for text in said), said


async def test_an_error_escaping_a_handler_carries_only_a_redacted_message() -> None:
    """Kopf keeps a failed handler's message in the object's progress annotation, beyond any log filter."""
    from tenantstore.handlers import RedactedError, redacted_errors  # noqa: PLC0415 (registers Kopf handlers)

    @redacted_errors
    async def failing(**_: object) -> None:
        psycopg.conninfo.conninfo_to_dict("postgresql://admin:p%ZZw0rd-in-handler@127.0.0.1:1/db")

    with pytest.raises(RedactedError) as raised:
        await failing()
    assert "p%ZZw0rd-in-handler" not in str(raised.value) and "percent-encoded" in str(raised.value)
    assert failing.__name__ == "failing"  # Kopf's handler id stays the function's name
