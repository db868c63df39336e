"""docbus: the command line of the provincial document exchange bus.

Configuration comes from the environment: DOCBUS_AMQP_URL (the broker), DOCBUS_DB_URL (the
central archive; an SQLite file under DOCBUS_HOME by default), DOCBUS_HOME (keys and local
stores, default ./var).

Exit codes: 0 success; 1 a message was refused or did not verify; 2 wrong usage;
3 not set up or not found; 4 the broker is unreachable; 5 the demo or a check failed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import shutil
import sys
import textwrap
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from functools import wraps
from pathlib import Path
from typing import Any

import click
from peewee import DatabaseError

from bus import edxml, longrun, safexml
from bus.config import Settings, from_env
from bus.errors import BrokerUnavailable, ConfigError, DocbusError, NotFound, Refused, one_line
from bus.files import read_bounded

EXIT_REFUSED, EXIT_CONFIG, EXIT_BROKER, EXIT_FAILED = 1, 3, 4, 5
EXIT_BROKEN_PIPE = 141  # what a shell reports for a writer its reader left (128 + SIGPIPE)


class Finite(click.FloatRange):
    """A FloatRange that also refuses ``nan``, which every comparison of a range lets through."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value!r} is not a number", param, ctx)
        return number


# Numbers people type, bounded to what the code under them holds (SQLite's 64-bit integers,
# Python's dates, AMQP's 16-bit prefetch): past these a value is a typo, not a wish.
POSITIVE = Finite(min=0, max=1e9, min_open=True)
COUNT = click.IntRange(1, 1_000_000_000)
ROW_ID = click.IntRange(1, 2**63 - 1)
FIRST_YEAR, LAST_YEAR = 1900, 9998  # the days people name; one past the last is still a date
LIST_FILE_BYTES = 1024 * 1024  # a distribution list or a list of days off: a province's is a few KB


# --------------------------------------------------------------------------- output helpers


def _width(text: str) -> int:
    return sum(0 if unicodedata.combining(c) else (2 if unicodedata.east_asian_width(c) in "WF" else 1) for c in text)


def _cell(value: object, limit: int = 60) -> str:
    text = "" if value is None else str(value)
    text = " ".join(text.split())
    return text if _width(text) <= limit else text[: limit - 1] + "…"


def table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    """A plain-text table (UTF-8, diacritics intact) for people."""
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [max([_width(h)] + [_width(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v + " " * (w - _width(v)) for v, w in zip(values, widths, strict=True)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    if not rows:
        out.append("(none)")
    return "\n".join(out)


PRIORITY_NAMES = ", ".join(f"{code} {name}" for code, name in edxml.PRIORITIES.items())


def json_option(what: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--json``: what a command prints for people, as JSON for machines (UTF-8, diacritics intact)."""
    text = f"Print {what} as JSON, for machines." if what else "Print JSON for machines instead of text for people."
    return click.option("--json", "as_json", is_flag=True, help=text)


def recipients_option() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--to``: whom a document goes to, as 'docbus send' and 'docbus distribute' take it."""
    return click.option(
        "--to",
        "recipients",
        required=True,
        callback=some_codes,
        help="Recipient OrganIds, comma-separated, or @FILE: a distribution list, one OrganId a line (# comments).",
    )


def listing_options(noun: str, fetched: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--last``, ``--all``, ``--json`` and ``--no-fetch``, as the agency's listings (inbox,
    sent) take them: the newest 50 for people, everything for machines."""
    options: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.option(
            "--last",
            type=COUNT,
            help="Show only the newest N.  [default: 50 in the table, all with --json]",
        ),
        click.option("--all", "show_all", is_flag=True, help=f"Show every {noun}, however many."),
        json_option(),
        click.option(
            "--no-fetch", is_flag=True, help=f"Show the local store only; do not take new {fetched} from the broker."
        ),
    ]

    def apply(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply


class StageBars:
    """One progress bar per stage of a long run, on stderr: called ``(stage, done, total)``.

    A new stage closes the bar of the one before, so the output reads as a list of the steps
    done; ``--json`` output on stdout is left clean."""

    def __init__(self) -> None:
        self._stage: str | None = None
        self._bar: Any = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = click.progressbar(length=total, label=stage, file=sys.stderr, show_pos=True).__enter__()
        self._bar.update(done - self._bar.pos)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None

    def __enter__(self) -> StageBars:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def fail(message: str, code: int) -> None:
    click.echo(f"docbus: {message}", err=True)
    sys.exit(code)


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every docbus error into one clear line and a meaningful exit code; no traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BrokerUnavailable as exc:
            fail(exc.message, EXIT_BROKER)
        except Refused as exc:
            fail(f"refused [{exc.reason}]: {exc.message}", EXIT_REFUSED)
        except (ConfigError, NotFound) as exc:
            fail(exc.message, EXIT_CONFIG)
        except DocbusError as exc:
            fail(f"[{exc.reason}] {exc.message}", EXIT_FAILED)
        except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as a shell's SIGPIPE would
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(EXIT_BROKEN_PIPE)
        except OSError as exc:
            fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), EXIT_CONFIG)
        except DatabaseError as exc:  # the archive or a local store failed mid-command (a damaged file, a full disk)
            fail(f"database error: {one_line(exc)}", EXIT_CONFIG)

    return wrapper


def settings() -> Settings:
    return from_env()


def open_archive(s: Settings):
    from bus.archive import Archive

    return Archive(s.archive_url)


def amqp(s: Settings):
    from bus.transport import AmqpTransport

    return AmqpTransport(s.amqp_url)


def split_codes(value: str) -> list[str]:
    return [c.strip() for c in value.split(",") if c.strip()]


def not_blank(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A required text that may not be empty either (Trích yếu, Số)."""
    if value is not None and not value.strip():
        raise click.BadParameter("may not be empty")
    return value.strip() if value is not None else value


def organ_id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """The OrganId of an agency of this bus: QCVN 102:2016's form, the only one the bus
    registers, issues certificates and broker users for, so the only one an agency's command
    can name (deliveries from outside may carry others)."""
    from bus.config import QCVN_ORGAN_ID

    if value is not None and not QCVN_ORGAN_ID.match(value):
        shown = value if len(value) <= 40 else value[:40] + "…"
        raise click.BadParameter(f"{shown!r} is not a QCVN 102:2016 OrganId (like 000.00.00.H61)")
    return value


def some_codes(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Comma-separated OrganIds, at least one; ``@FILE``: a distribution list kept in a file."""
    if value is not None and value.startswith("@"):
        value = _distribution_list(Path(value[1:]))
    codes = split_codes(value) if value is not None else []
    if value is not None and not codes:
        raise click.BadParameter("give at least one OrganId, e.g. 000.00.00.H61")
    from bus.policy import named_twice  # not at start-up: it builds its folding table on import

    twice = named_twice(codes)
    if twice:
        raise click.BadParameter(f"{twice} is named more than once")
    return value


def _listed(path: Path, what: str) -> list[tuple[int, str]]:
    """(line number, text) of each line of a list kept in a file, without its ``#`` comment;
    blank ones left out.  Distribution lists and holiday lists are written this way."""
    try:
        raw = read_bounded(path, LIST_FILE_BYTES)
        # Windows Notepad's "Unicode" is UTF-16 with a byte-order mark; its "UTF-8" may start with one
        text = raw.decode("utf-16") if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else raw.decode("utf-8-sig")
    except OSError as exc:
        raise click.BadParameter(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc
    except DocbusError as exc:
        raise click.BadParameter(f"cannot read the {what}: {exc.message}") from exc
    except UnicodeDecodeError as exc:
        raise click.BadParameter(
            f"the {what} {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at {exc.start}): save it as "
            "UTF-8 (Notepad: Save as, Encoding UTF-8)"
        ) from exc
    lines = ((n, line.split("#", 1)[0].strip()) for n, line in enumerate(text.splitlines(), 1))
    return [(n, value) for n, value in lines if value]


def _distribution_list(path: Path) -> str:
    """OrganIds from a file, separated by commas or line breaks; ``#`` starts a comment
    (``000.00.01.H61  # Sở Nội vụ``)."""
    return ",".join(code for _, line in _listed(path, "distribution list") for code in line.replace(",", " ").split())


def electronic_files(ctx: click.Context, param: click.Parameter | None, value: tuple[Path, ...]) -> tuple[Path, ...]:
    """Attached files must hold something: an empty scan is no electronic file; and each once
    (as the pickup folder asks), a file named twice being a slip of the clerk's."""
    seen: set[Path] = set()
    for path in value:
        if path.is_file() and path.stat().st_size == 0:
            raise click.BadParameter(f"{path} is empty (0 bytes): attach the document's electronic file")
        if path.resolve() in seen:
            raise click.BadParameter(f"{path} is named more than once")
        seen.add(path.resolve())
    return value


# --------------------------------------------------------------------------- root


class _TextChecked:
    """Every text a command is given is checked to be UTF-8 before the command runs, so a
    wrongly encoded số or DocumentId is a usage error naming its option, not a traceback from
    whichever lookup meets it first.  File and folder names are left as the system has them."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)  # type: ignore[misc]
        if ctx.resilient_parsing:  # shell completion: nothing runs
            return rest
        for param in self.params:  # type: ignore[attr-defined]
            if isinstance(param.type, click.Path | click.File):
                continue
            value = ctx.params.get(param.name or "")
            for text in value if isinstance(value, list | tuple) else (value,):
                byte = edxml.not_utf8(text) if isinstance(text, str) else ""
                if byte:
                    raise click.BadParameter(
                        f"{edxml.show_not_utf8(text)!r} is not UTF-8 text (it holds {byte}): the terminal or "
                        "script writes another encoding (TCVN3, VNI, Windows-1258?); set it to UTF-8, e.g. "
                        "LANG=vi_VN.UTF-8 or C.UTF-8",
                        ctx=ctx,
                        param=param,
                    )
        return rest


class TextCheckedCommand(_TextChecked, click.Command):
    pass


class TextCheckedGroup(_TextChecked, click.Group):
    command_class = TextCheckedCommand
    group_class = type  # subgroups are of this class too


@click.group(cls=TextCheckedGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log what the bus does to stderr.")
def main(verbose: bool) -> None:
    """docbus: signed edXML documents between agencies over the provincial RabbitMQ bus.

    \b
    Set-up:      docbus init; docbus agency add 000.00.00.H61 "UBND tỉnh Vĩnh Long"
    Run:         docbus router run   (central)   docbus adapter run --agency CODE (each agency)
    Documents:   docbus send, docbus inbox, docbus sent, docbus status send, docbus trace,
                 docbus distribute (sao lục: a received document on to other agencies)
    Files:       docbus inspect FILE, docbus verify FILE...
    Try it all:  docbus demo

    Environment: DOCBUS_AMQP_URL, DOCBUS_DB_URL, DOCBUS_HOME (default ./var).
    Exit codes: 0 ok, 1 refused or not verified, 2 usage, 3 not set up, not found or a
    database that cannot be read, 4 broker unreachable, 5 check failed (or the agency's
    system did not take a message).
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    if not verbose:  # pika logs its own tracebacks; docbus reports broker errors in one line
        logging.getLogger("pika").setLevel(logging.CRITICAL)


@main.command()
@guarded
def init() -> None:
    """Create the provincial CA, the data centre's identity, the archive and the broker topology.

    The data centre's identity is two keys under $DOCBUS_HOME/hub: one signs its 02 answers,
    the other (hub/seal) seals the TraceHeader the router adds to each delivery.  Idempotent:
    running it again keeps the CA and the keys, makes a missing one, renews one whose
    certificate ends within 30 days (then restart the routers), and re-applies the topology
    (every registered agency's inbox included).
    """
    from bus import province

    s = settings()
    archive = open_archive(s)
    transport = amqp(s)
    try:
        prov, created = province.init(s, archive, transport)
    finally:
        transport.close()
    click.echo(
        f"{'created' if created else 'kept'} provincial CA {prov.ca.cert.subject.rfc4514_string()} in {s.home / 'ca'}"
    )
    click.echo(
        f"data centre {prov.hub.organ_id} ({prov.hub.name}); archive {s.archive_url}; "
        f"topology applied on {s.namespace}.*"
    )
    for role in prov.renewed:
        click.echo(f"renewed the data centre's {role} key (its certificate was ending): restart the routers")


# --------------------------------------------------------------------------- agencies


@main.group()
def agency() -> None:
    """Register agencies and list them."""


@agency.command("add")
@click.argument("code", callback=organ_id)
@click.argument("name", callback=not_blank)
@click.option("--parent", help="OrganId of the parent agency (province -> department/district -> commune).")
@guarded
def agency_add(code: str, name: str, parent: str | None) -> None:
    """Register agency CODE (a QCVN OrganId) named NAME, issue its key and certificate, create its inbox."""
    from bus import province

    s = settings()
    archive = open_archive(s)
    transport = amqp(s)
    try:
        a, created = province.add_agency(s, archive, transport, code, name, parent)
    finally:
        transport.close()
    click.echo(
        f"{'added' if created else 'updated'} {a.organ_id} {a.name}: "
        f"certificate {a.cert_serial[:16]}…, key in {s.agency_home(code)}"
    )


@agency.command("list")
@click.option("--under", metavar="CODE", help="Only the agencies below CODE (a district's communes, …).")
@click.option(
    "--codes",
    is_flag=True,
    help="Only the enabled agencies' OrganIds, one a line with the name as a # comment: a distribution "
    "list for 'docbus send --to @FILE'.",
)
@json_option("the list")
@guarded
def agency_list(under: str | None, codes: bool, as_json: bool) -> None:
    """The registered agencies as their tree reads: each followed by those under it."""
    from bus.province import in_tree_order
    from signing.ca import load_cert

    s = settings()
    agencies = open_archive(s).agencies()
    if under is not None and under not in {a.organ_id for a in agencies}:
        raise NotFound(f"no agency '{under}' is registered (see 'docbus agency list')")
    tree = in_tree_order(agencies, under)
    if codes:
        enabled = [a for a, _ in tree if a.enabled]
        below = f" below {under}" if under else ""
        noun = "agency" if len(enabled) == 1 else "agencies"
        click.echo(f"# {len(enabled)} enabled {noun}{below} (docbus agency list --codes)")
        for a in enabled:
            click.echo(f"{a.organ_id}  # {a.name}")
        return
    rows = []
    for a, depth in tree:
        cert = load_cert(a.cert_pem)
        rows.append(
            {
                "organ_id": a.organ_id,
                "name": a.name,
                "parent": a.parent,
                "enabled": a.enabled,
                "certificate_serial": a.cert_serial,
                "certificate_expires": cert.not_valid_after_utc.date().isoformat(),
                "depth": depth,
            }
        )
    if as_json:
        emit_json(rows)
        return
    click.echo(
        table(
            [
                [
                    r["organ_id"],
                    "· " * r["depth"] + r["name"],  # the tree, as the table can show it
                    r["parent"] or "",
                    "yes" if r["enabled"] else "no",
                    r["certificate_expires"],
                ]
                for r in rows
            ],
            ["OrganId", "Name", "Parent", "Enabled", "Cert expires"],
        )
    )


@agency.command("disable")
@click.argument("code")
@guarded
def agency_disable(code: str) -> None:
    """Cut CODE off the bus at once: its broker access and connections go; its queued mail stays."""
    from bus import province

    a = province.set_enabled(settings(), open_archive(settings()), code, False)
    click.echo(f"disabled {a.organ_id} {a.name}: it can neither send nor read; its inbox keeps its mail")


@agency.command("enable")
@click.argument("code")
@guarded
def agency_enable(code: str) -> None:
    """Give CODE its broker access back."""
    from bus import province

    a = province.set_enabled(settings(), open_archive(settings()), code, True)
    click.echo(f"enabled {a.organ_id} {a.name}")


# --------------------------------------------------------------------------- certificates


@main.group()
def ca() -> None:
    """The provincial certificate authority."""


@ca.command("init")
@guarded
def ca_init() -> None:
    """Create a new provincial CA (idempotent: an existing one is kept)."""
    from signing.ca import CertificateAuthority

    s = settings()
    if CertificateAuthority.exists(s.home):
        ca_ = CertificateAuthority.load(s.home, need_key=False)
        click.echo(f"kept the provincial CA {ca_.cert.subject.rfc4514_string()} in {s.home / 'ca'}")
        return
    ca_ = CertificateAuthority.create(s.home)
    click.echo(f"created the provincial CA {ca_.cert.subject.rfc4514_string()} in {s.home / 'ca'}")


@ca.command("import")
@click.argument("cert", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@guarded
def ca_import(cert: Path, key: Path) -> None:
    """Adopt an existing CA: CERT (PEM, CA:TRUE) and its unencrypted KEY (PEM)."""
    from bus import province

    ca_ = province.import_ca(settings(), cert, key)
    click.echo(f"imported the CA {ca_.cert.subject.rfc4514_string()}")


@main.group()
def cert() -> None:
    """Agency certificates: list, rotate, revoke."""


@cert.command("list")
@json_option()
@guarded
def cert_list(as_json: bool) -> None:
    """Every certificate issued to an agency, with its state and expiry; flags those expiring within 30 days."""
    from bus.archive import Certificate, utcnow
    from signing.identity import RENEW_WITHIN_DAYS

    open_archive(settings())
    now = utcnow()
    rows: list[dict[str, Any]] = []
    for c in Certificate.select().order_by(Certificate.organ_id, Certificate.issued_at):
        days = (c.not_after - now).days
        rows.append(
            {
                "organ_id": c.organ_id,
                "serial": c.serial,
                "state": c.state,
                "not_after": c.not_after.isoformat(sep=" ", timespec="minutes"),
                "days_left": days,
                "expiring": c.state != "revoked" and days < RENEW_WITHIN_DAYS,
                "retire_after": c.retire_after.isoformat(sep=" ", timespec="minutes") if c.retire_after else None,
                "revoked_reason": c.revoked_reason,
            }
        )
    if as_json:
        emit_json(rows)
        return
    table_rows = [
        [
            r["organ_id"],
            r["serial"][:16] + "…",
            r["state"]
            + (f" until {edxml.vn_text(r['retire_after'])}" if r["retire_after"] and r["state"] == "retiring" else ""),
            edxml.vn_text(r["not_after"]),
            f"{r['days_left']}" + ("  EXPIRES SOON" if r["expiring"] else ""),
        ]
        for r in rows
    ]
    click.echo(table(table_rows, ["OrganId", "Serial", "State", "Expires (UTC+7)", "Days left"]))


@cert.command("rotate")
@click.argument("code")
@click.option(
    "--overlap-days",
    type=Finite(0, 3650),
    default=7,
    show_default=True,
    help="How long the old certificate stays valid.",
)
@guarded
def cert_rotate(code: str, overlap_days: float) -> None:
    """Issue CODE a new key and certificate; the old one stays valid for the overlap window."""
    from bus import province

    old, new = province.rotate(settings(), open_archive(settings()), code, dt.timedelta(days=overlap_days))
    click.echo(
        f"{code}: new certificate {new.serial[:16]}…; "
        f"{old.serial[:16]}… valid until {edxml.vn_text(old.retire_after)[:16]} (UTC+7)"
    )


@cert.command("revoke")
@click.argument("target")
@click.option("--reason", required=True, callback=not_blank, help="Why (kept in the registry and the report).")
@guarded
def cert_revoke(target: str, reason: str) -> None:
    """Revoke TARGET: an agency's OrganId (all its certificates) or one certificate serial.

    The revocation list is published to every agency's inbox; routers honour it within a second.
    """
    from bus import province

    s = settings()
    archive = open_archive(s)
    try:
        transport = amqp(s)
    except BrokerUnavailable as exc:
        transport = None
        click.echo(f"the revocation list is written but not published: {exc.message}", err=True)
    try:
        revoked = province.revoke(s, archive, target, reason, transport)
    finally:
        if transport is not None:
            transport.close()
    for c in revoked:
        click.echo(f"revoked {c.organ_id} {c.serial}: {reason}")


# --------------------------------------------------------------------------- documents


def _adapter(s: Settings, code: str, *, one_shot: bool = True):
    """``code``'s adapter for a command.  A one-shot command reports what the broker did not
    take in its own line; the adapter's log line would say it a second time (``-v`` keeps it)."""
    from adapters import Adapter

    if one_shot and logging.getLogger().getEffectiveLevel() > logging.INFO:
        logging.getLogger("docbus.adapter.outbox").setLevel(logging.ERROR)
    return Adapter(s, code)


@main.command()
@click.option("--from", "sender", required=True, callback=organ_id, help="OrganId of the sending agency.")
@recipients_option()
@click.option("--subject", required=True, callback=not_blank, help="Trích yếu: what the document is about.")
@click.option("--number", required=True, callback=not_blank, help="Số: the document number.")
@click.option("--notation", required=True, help="Ký hiệu: e.g. UBND-VP (may be empty).")
@click.option(
    "--type", "type_name", default="Công văn", show_default=True, help="Document type name (Công văn, Quyết định, …)."
)
@click.option(
    "--priority",
    type=click.IntRange(0, 4),
    default=0,
    show_default=True,
    help=f"{PRIORITY_NAMES}.",
)
@click.option("--content", default="", help="Body text (defaults to the subject).")
@click.option("--paper-only", is_flag=True, help="Declare a paper-only technical dossier (no electronic file).")
@click.option("--zip", "zipped", is_flag=True, help="Zip each attachment as the national SDK does.")
@click.option("--revoke", metavar="DOCUMENT_ID", help="Revoke (thu hồi) a document this agency sent.")
@click.option("--update", metavar="DOCUMENT_ID", help="Update (cập nhật) a document this agency sent.")
@click.option(
    "--replace",
    "replace_ids",
    metavar="DOCUMENT_ID",
    multiple=True,
    help="Replace (thay thế) documents this agency sent.",
)
@json_option()
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, path_type=Path), callback=electronic_files)
@guarded
def send(
    sender: str,
    recipients: str,
    subject: str,
    number: str,
    notation: str,
    type_name: str,
    priority: int,
    content: str,
    paper_only: bool,
    zipped: bool,
    revoke: str | None,
    update: str | None,
    replace_ids: tuple[str, ...],
    as_json: bool,
    files: tuple[Path, ...],
) -> None:
    """Sign and send a document with its FILES; prints its DocumentId.

    The document is kept in the sender's outbox first: if the broker is down it is queued
    and 'docbus adapter run' sends it later.  --revoke, --update and --replace send the
    QCVN lifecycle messages (BussinessDocType 1, 2, 3) about a document already sent.
    A number this agency already used today is refused (exit 1): two documents would share
    one DocumentId.  One the bus refused (02 from the data centre) may be sent again.
    """
    chosen = [x for x in (revoke, update, replace_ids) if x]
    if len(chosen) > 1:
        raise click.UsageError("choose one of --revoke, --update, --replace")
    doc_type = 1 if revoke else 2 if update else 3 if replace_ids else 0
    s = settings()
    with _adapter(s, sender) as a:
        if doc_type not in (1, 2):  # a revocation or update keeps its document's DocumentId
            _refuse_number_in_use(a, number, notation)
        res = a.send(
            split_codes(recipients),
            subject=subject,
            number=number,
            notation=notation,
            files=files,
            type_name=type_name,
            priority=priority,
            content=content,
            paper_only=paper_only,
            zipped=zipped,
            business_doc_type=doc_type,
            about=revoke or update or "",
            replaces=replace_ids,
        )
    _print_sent(res, as_json)


@main.command()
@click.option(
    "--from", "sender", required=True, callback=organ_id, help="OrganId of the agency that received the document."
)
@recipients_option()
@click.option("--number", required=True, callback=not_blank, help="Số of the copy, this agency's own (e.g. 12).")
@click.option("--notation", required=True, help="Ký hiệu of the copy, e.g. SL-UBND.")
@click.option("--subject", callback=not_blank, help="Trích yếu of the copy.  [default: Sao lục: <the original's>]")
@click.option("--priority", type=click.IntRange(0, 4), help=f"{PRIORITY_NAMES}.  [default: the original's]")
@click.option(
    "--original",
    "original_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Instead of a DOCUMENT_ID: the original as an edXML file that came outside this bus (the national "
    "document axis, a ministry's system).  It is read leniently and NOT verified, which the copy's content says.",
)
@json_option()
@click.argument("items", nargs=-1, metavar="[DOCUMENT_ID] [FILES]...")
@guarded
def distribute(
    sender: str,
    recipients: str,
    number: str,
    notation: str,
    subject: str | None,
    priority: int | None,
    original_file: Path | None,
    as_json: bool,
    items: tuple[str, ...],
) -> None:
    """Sao lục: send a document this agency received on to other agencies; prints the copy's DocumentId.

    For central legal documents distributed downward without paper copies: 'docbus
    distribute --from 000.00.00.H61 --to @cac-so.txt --number 12 --notation SL-UBND
    DOCUMENT_ID'.  The copy is a new document of this agency (its own Số/Ký hiệu and
    signature) carrying the original's files and the original envelope as it arrived
    (ban-goc.edxml), which each recipient can check with 'docbus verify'.  FILES: a cover
    letter or other files of this agency's, attached first.  The original must be in this
    agency's inbox and still verify as of its arrival.

    A central document that came another way (the national document axis, a ministry's
    system) is distributed from its edXML file: '--original van-ban.edxml [FILES]', no
    DOCUMENT_ID.  This bus cannot verify its signer, so the copy says that the original's
    signature was not checked ('docbus verify ban-goc.edxml' at a recipient refuses it).
    """
    if original_file is None and not items:
        raise click.UsageError("name the DOCUMENT_ID of a received document, or --original FILE")
    document_id, names = (None, items) if original_file is not None else (items[0], items[1:])
    files = electronic_files(click.get_current_context(), None, _existing_files(names))
    s = settings()
    options: dict[str, Any] = {
        "number": number,
        "notation": notation,
        "subject": subject or "",
        "priority": priority,
        "files": files,
    }
    with _adapter(s, sender) as a:
        _refuse_number_in_use(a, number, notation)
        codes = split_codes(recipients)
        if original_file is not None:
            res = a.send_outside_copy(original_file, codes, **options)
        else:
            res = a.send_copy(document_id, codes, **options)
    _print_sent(res, as_json)


def _existing_files(names: Sequence[str]) -> tuple[Path, ...]:
    """FILES named on the command line, each an existing file (click's check, for a variadic
    argument that may begin with a DOCUMENT_ID)."""
    kind = click.Path(exists=True, dir_okay=False, path_type=Path)
    return tuple(kind.convert(n, None, click.get_current_context()) for n in names)


def _print_sent(res: Any, as_json: bool) -> None:
    """What 'send' and 'distribute' print: the DocumentId, and why it waits if it does."""
    if as_json:
        emit_json(
            {"document_id": res.document_id, "digest": res.digest, "published": res.published, "error": res.error}
        )
    else:
        click.echo(res.document_id)
        if not res.published:
            click.echo(
                f"queued in the outbox, not sent yet: {res.error or 'the broker did not take it'}; "
                "'docbus adapter run' sends it once the broker takes it",
                err=True,
            )


def _refuse_number_in_use(adapter: Any, number: str, notation: str) -> None:
    earlier = adapter.number_in_use(number, notation)
    if earlier is not None:
        raise earlier.refusal(", or change that one with --update or --replace")


@main.group(invoke_without_command=True)
@click.option("--agency", "code", callback=organ_id, help="OrganId whose inbox to show.")
@click.option("--kind", type=click.Choice(["edoc", "status"]), help="Only documents (edoc) or only statuses.")
@click.option("--since", help="Received on or after this day: YYYY-MM-DD, today or yesterday (Vietnamese days).")
@click.option(
    "--pending",
    is_flag=True,
    help="Only the documents still to be taken up: answered with nothing beyond the automatic 01 "
    "(not registered with 03 yet), not revoked, updated or replaced since.",
)
@listing_options("message", "deliveries")
@click.pass_context
@guarded
def inbox(
    ctx: click.Context,
    code: str | None,
    kind: str | None,
    since: str | None,
    pending: bool,
    last: int | None,
    show_all: bool,
    as_json: bool,
    no_fetch: bool,
) -> None:
    """An agency's electronic inbox (văn bản đến), newest last.

    New deliveries are taken from the broker first, verified, stored and answered with
    status 01 (arrived).  The clerk's daily look: 'docbus inbox --agency CODE --kind edoc
    --since today', and what is still to be registered: 'docbus inbox --agency CODE --pending'.
    """
    if ctx.invoked_subcommand is not None:
        return
    if not code:
        raise click.UsageError("--agency CODE is required")
    s = settings()
    with _adapter(s, code) as a:
        note = _take_new(a, no_fetch)
        start, limit = _window(since, last, show_all, as_json)
        if pending:
            everything = a.inbox(since=start, pending=True)
            items, total = everything[-limit:] if limit is not None else everything, len(everything)
        else:
            items = a.inbox(kind, since=start, last=limit)
            total = len(items) if limit is None or len(items) < limit else a.inbox_count(kind, since=start)
    note = _more_note(note, len(items), total)
    if as_json:
        emit_json([item.__dict__ for item in items])
    else:
        rows = [
            [
                edxml.vn_text(i.received_at),
                i.kind,
                i.status_code or "",
                edxml.PRIORITIES.get(i.priority, str(i.priority)) if i.kind == "edoc" and i.priority else "",
                i.sender,
                i.document_id,
                i.subject,
                _inbox_state(i),
            ]
            for i in items
        ]
        headers = ["Received (UTC+7)", "Kind", "Status", "Priority", "From", "DocumentId", "Subject", "State"]
        click.echo(table(rows, headers))
    if note:
        click.echo(note, err=True)


@inbox.command("save")
@click.option("--agency", "code", required=True, callback=organ_id, help="OrganId whose inbox holds the document.")
@click.argument("document_id")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@guarded
def inbox_save(code: str, document_id: str, folder: Path) -> None:
    """Write the attachments of DOCUMENT_ID to FOLDER (re-verified first)."""
    s = settings()
    with _adapter(s, code) as a:
        paths = a.save_attachments(document_id, folder)
    for p in paths:
        click.echo(str(p))


@main.group()
def status() -> None:
    """Send status messages about received documents."""


@status.command("send")
@click.option("--agency", "code", required=True, callback=organ_id, help="OrganId of the agency answering.")
@click.option(
    "--code",
    "status_code",
    required=True,
    type=click.Choice(sorted(edxml.STATUS_CODES)),
    help="01 arrived, 02 refused, 03 accepted, 04 assigned, 05 processing, 06 completed, "
    "13 recall request, 15/16 recall agreed/refused.",
)
@click.option("--description", default="", help="Free text (defaults to the code's name).")
@click.option("--to", "edoc_sender", help="The document's sender (default: looked up in the inbox).")
@click.argument("document_id")
@json_option()
@guarded
def status_send(
    code: str, status_code: str, description: str, edoc_sender: str | None, document_id: str, as_json: bool
) -> None:
    """Answer DOCUMENT_ID with a status."""
    s = settings()
    with _adapter(s, code) as a:
        if edoc_sender is None:
            # a recall request (13) is about the agency's own document; every other status answers a received one
            edoc_sender = code if status_code == "13" else a.document(document_id).sender.organ_id
        res = a.send_status(document_id, edoc_sender, status_code, description)
    if as_json:
        emit_json(
            {
                "document_id": res.document_id,
                "status_code": status_code,
                "to": edoc_sender,
                "digest": res.digest,
                "published": res.published,
                "error": res.error,
            }
        )
    elif res.published:
        click.echo(f"status {status_code} for {document_id} sent")
    else:
        click.echo(f"status {status_code} for {document_id} queued in the outbox, not sent yet: {res.error}")


SUPERSEDED_NAMES = {"revoked": "thu hồi", "updated": "cập nhật", "replaced": "thay thế"}


@main.command()
@click.option(
    "--agency", "code", required=True, callback=organ_id, help="OrganId of the agency whose sent documents to show."
)
@click.argument("document_id", required=False)
@click.option("--since", help="Sent on or after this day: YYYY-MM-DD, today or yesterday (Vietnamese days).")
@listing_options("document", "statuses")
@guarded
def sent(
    code: str,
    document_id: str | None,
    since: str | None,
    last: int | None,
    show_all: bool,
    as_json: bool,
    no_fetch: bool,
) -> None:
    """What an agency sent (văn bản đi), newest last, when the data centre relayed it (from its
    sealed receipt) or why it refused it, and what each recipient answered.

    From the agency's own store (no archive needed): new statuses are taken from the broker
    first.  With DOCUMENT_ID, one line per recipient with its latest status.
    """
    s = settings()
    with _adapter(s, code) as a:
        note = _take_new(a, no_fetch)
        start, limit = _window(since, last, show_all or document_id is not None, as_json)
        items = a.sent(since=start, last=limit, document_id=document_id)
        total = len(items) if limit is None or len(items) < limit else a.sent_count(since=start)
    if document_id is not None and not items:
        raise NotFound(f"{code} sent no document {document_id!r}")
    note = _more_note(note, len(items), total)
    if as_json:
        emit_json([_sent_json(i) for i in items])
    elif document_id is not None:
        for i in items:
            click.echo(f"{i.document_id}  “{i.subject}”  sent {edxml.vn_text(i.sent_at)} (UTC+7): {_sent_state(i)}")
            rows = [[org, *(_answer_cells(ans)), i.notes.get(org, "")] for org, ans in i.answers.items()]
            click.echo(table(rows, ["Recipient", "Status", "At (UTC+7)", "Note"]))
    else:
        rows = [
            [edxml.vn_text(i.sent_at), i.document_id, i.subject, _answers_summary(i), _sent_state(i)] for i in items
        ]
        click.echo(table(rows, ["Sent (UTC+7)", "DocumentId", "Subject", "Answers", "State"]))
    if note:
        click.echo(note, err=True)


def _sent_json(item: Any) -> dict[str, Any]:
    data = {k: v for k, v in item.__dict__.items() if k not in ("answers", "notes")}
    data["recipients"] = [
        {
            "organ_id": org,
            "status": ans[0] if ans else None,
            "at": ans[1] if ans else None,
            "description": item.notes.get(org) or None,
        }
        for org, ans in item.answers.items()
    ]
    return data


def _sent_state(item: Any) -> str:
    if item.refused:
        return f"refused by the data centre: {item.refused}"
    if item.accepted_at:
        state = f"relayed by the data centre {edxml.vn_text(item.accepted_at)}"
    else:
        state = "sent" if item.published else "queued (the adapter sends it when the broker takes it)"
    if item.business_doc_type:
        state += f", {edxml.BUSINESS_DOC_TYPES.get(item.business_doc_type, '').lower()}"
    return state


def _answer_cells(answer: tuple[str, str] | None) -> list[str]:
    if answer is None:
        return ["—", ""]
    code, at = answer
    return [_status_text(code), edxml.vn_text(at)]


def _answers_summary(item: Any) -> str:
    """'01 ×1, 03 ×2, none ×1' over the recipients' latest statuses."""
    counts = Counter(ans[0] if ans else "none" for ans in item.answers.values())
    return ", ".join(f"{c} ×{n}" for c, n in sorted(counts.items(), key=lambda kv: (kv[0] == "none", kv[0])))


def _take_new(adapter: Any, no_fetch: bool) -> str:
    """Send what waits in the outbox and take what the broker holds for the agency, before a
    listing; the note to print when the broker cannot be reached (the store is shown anyway)."""
    if no_fetch:
        return ""
    try:
        adapter.flush()
        adapter.receive(idle_timeout=0.5, hand=False)  # a running `adapter run` hands them to the system
    except BrokerUnavailable as exc:
        return f"showing the local store only: {exc.message}"
    return ""


def _window(
    since: str | None, last: int | None, show_all: bool, as_json: bool
) -> tuple[dt.datetime | None, int | None]:
    """A listing's start (``--since`` day) and how many of the newest to show: a screenful (50)
    for people, everything for machines unless ``--last`` asks for fewer, all with ``--all``."""
    day = _date(since, "--since")
    start = edxml.vn_day_start(day) if day is not None else None
    if last is None and not as_json:
        last = 50
    return start, None if show_all else last


def _more_note(note: str, shown: int, total: int) -> str:
    more = f"the newest {shown} of {total} shown: --all or --last N for more" if total > shown else ""
    return "\n".join(filter(None, [note, more]))


def _status_text(code: str, description: str | None = None) -> str:
    """'16 Từ chối thu hồi/cập nhật: why', the why only when it says more than the code's name."""
    note = edxml.status_note(code, description)
    return f"{code} {edxml.STATUS_CODES.get(code, '')}".strip() + (f": {note}" if note else "")


def _inbox_state(item: Any) -> str:
    """'stored' (not yet handed to the agency's system: no `adapter run` has taken it yet),
    'handed', 'invalid: reason', the agency's latest answer beyond the automatic 01, and
    whether its sender has since revoked, updated or replaced it."""
    state = {"new": "stored", "invalid": f"invalid: {item.reason}"}.get(item.state, item.state)
    if item.answered and item.answered != "01":
        state += f", answered {item.answered}"
    if item.superseded:
        state += f", {item.superseded} ({SUPERSEDED_NAMES.get(item.superseded, '')})".replace(" ()", "")
    return state


@main.command()
@click.argument("document_id")
@json_option()
@guarded
def trace(document_id: str, as_json: bool) -> None:
    """Every hop of DOCUMENT_ID and every status per recipient, with times (from the archive),
    and when the data centre's receipt went to the sender."""
    s = settings()
    data = open_archive(s).trace(document_id)
    if as_json:
        emit_json(data)
        return
    for sub in data["submissions"]:
        click.echo(f"{data['document_id']}  {sub['code']}  “{sub['subject']}”")
        click.echo(
            f"  submitted by {sub['sender']}, archived {edxml.vn_text(sub['received_at'])} (UTC+7) "
            f"({sub['state']}{': ' + sub['reason'] if sub['reason'] else ''})"
        )
        if sub["state"] == "accepted":
            told = sub["receipted_at"]
            click.echo(
                f"  the data centre's receipt went to the sender {edxml.vn_text(told)} (UTC+7)"
                if told
                else "  no receipt has gone to the sender yet"
            )
        rows = []
        for r in sub["recipients"]:
            rows.append([r["organ_id"], edxml.vn_text(r["delivered_at"]) or "pending", "", ""])
            for st in r["statuses"]:
                rows.append(["", "", _status_text(st["code"], st["description"]), edxml.vn_text(st["received_at"])])
        for st in sub["other_statuses"]:
            rows.append([st["organ_id"], "", f"{st['code']} {st['description']}", edxml.vn_text(st["received_at"])])
        click.echo(table(rows, ["Recipient", "Delivered (UTC+7)", "Status", "At (UTC+7)"]))


@main.command()
@click.option(
    "--overdue-hours",
    type=Finite(0, 24 * 36500),
    default=24,
    show_default=True,
    help="A delivery not taken in (no 01 from its recipient) for this long needs attention.",
)
@click.option(
    "--days",
    type=click.IntRange(1, 36500),
    default=30,
    show_default=True,
    help="Look at deliveries of this many days back.",
)
@json_option()
@guarded
def health(overdue_hours: float, days: int, as_json: bool) -> None:
    """The bus at a glance, for the daily check: routers, dead letters, and per agency its inbox.

    Per agency: messages on its inbox queues, whether its adapter is connected, and documents
    delivered to it that it has not taken in yet (no status 01 from it), with the oldest one's
    age; the certificates that end within 30 days (an agency's, or the data centre's
    signing and seal keys), with what renews each; and senders' receipts no router has sent
    after five minutes.  Exit 0 when nothing needs attention, 5
    when something does (each listed), 3 before 'docbus init', 4 when the broker's management
    API cannot be reached.

    The queue counts come from RabbitMQ's management statistics, which it refreshes every
    few seconds (5 by default): right after a burst they may still show what was just taken.
    The routers running are counted on the router queue itself, as they are now.
    """
    from bus import health as checkup
    from bus.brokeradmin import BrokerAdmin
    from bus.topology import Names

    s = settings()
    open_archive(s)
    admin = BrokerAdmin(s.amqp_url, s.mgmt_url or None)
    report = checkup.check(admin, s.amqp_url, Names(s.namespace), overdue_hours=overdue_hours, days=days, home=s.home)
    problems = report.problems()
    if as_json:
        emit_json(report.as_dict())
    else:
        click.echo(
            f"routers running: {report.routers}; waiting for a router: {report.waiting_for_router}; "
            f"dead letters: {report.dead}"
        )
        rows = [
            [
                a.organ_id,
                a.name + ("" if a.enabled else " (disabled)"),
                "connected" if a.connected else "-",
                a.in_inbox,
                a.not_taken,
                f"{a.oldest_hours:g} h" if a.oldest_hours is not None else "-",
            ]
            for a in report.agencies
        ]
        click.echo(table(rows, ["Agency", "Name", "Adapter", "In inbox", "Not taken in", "Oldest"]))
        click.echo("needs attention:\n" + "\n".join(f"  - {p}" for p in problems) if problems else "all well")
    if problems:
        sys.exit(EXIT_FAILED)


# --------------------------------------------------------------------------- processes


@main.group()
def router() -> None:
    """The central router."""


@router.command("run")
@click.option(
    "--idle-exit", type=Finite(min=0), default=None, help="Stop after this many seconds without a submission."
)
@click.option(
    "--prefetch",
    type=click.IntRange(1, 65535),
    default=200,
    show_default=True,
    help="Submissions the broker may hand this router ahead of its acks.",
)
@click.option(
    "--batch",
    type=click.IntRange(1, 10_000),
    default=100,
    show_default=True,
    help="Most submissions archived in one transaction; a quiet bus makes batches of one.",
)
@guarded
def router_run(idle_exit: float | None, prefetch: int, batch: int) -> None:
    """Consume submissions (urgent first): verify, archive, deliver, answer. Runs until interrupted.

    Survives broker restarts: it reconnects with backoff and finishes what was in flight.
    Run several for more throughput; they share the queue and the archive.
    """
    from bus.router import Router, describe_outcomes, load_trust
    from bus.transport import AmqpTransport
    from signing.identity import Identity, hub_folders

    s = settings()
    archive = open_archive(s)
    hub = Identity.load(s.hub_organ_id, hub_folders(s.home)["signing"], set_up_by="docbus init")
    r = Router(s, amqp(s), archive, load_trust(s), hub)
    r.on_summary = lambda line: click.echo(f"router: {line}", err=True)
    click.echo(
        f"router consuming {r.names.router_urgent}, {r.names.router_queue}, {r.names.router_status}"
        f" and {r.names.router_chunks}",
        err=True,
    )
    longrun.settle()
    longrun.stop_on_sigterm()
    try:
        r.serve(lambda: AmqpTransport(s.amqp_url), idle_exit=idle_exit, prefetch=prefetch, max_batch=batch)
    except KeyboardInterrupt:
        pass
    r.summarize()
    click.echo(f"router stopped after {r.processed} message(s): {describe_outcomes(r.tally)}", err=True)


@main.group()
def adapter() -> None:
    """An agency's adapter process."""


@adapter.command("run")
@click.option("--agency", "code", required=True, callback=organ_id, help="OrganId of the agency this adapter runs for.")
@click.option("--idle-exit", type=Finite(min=0), default=None, help="Stop after this many seconds without a delivery.")
@click.option(
    "--drop",
    type=click.Path(file_okay=False, path_type=Path),
    help="Hand each received message to the agency's system here: its files as <key>-<name>, its header "
    "as <key>.json, then the signed <key>.edxml (written last; key: 16 hex digits of the bus's message "
    "id, the SHA-256 of the envelope as submitted).",
)
@click.option(
    "--pickup",
    type=click.Path(file_okay=False, path_type=Path),
    help="Send what the agency's system leaves here: its files, then <name>.send.json naming them "
    '({"to", "subject", "number", "notation", "type", "files"}), or <name>.status.json '
    '({"document_id", "code"}) answering a received document; moved to sent/ or refused/ with result.json.',
)
@guarded
def adapter_run(code: str, idle_exit: float | None, drop: Path | None, pickup: Path | None) -> None:
    """Send the outbox and receive deliveries (urgent first; verify, store, answer 01) until interrupted.

    With the broker down it keeps the outbox and retries with backoff; it reconnects by itself.
    --drop and --pickup connect a document system that has no edXML of its own: what arrives
    is written to the drop folder, what it leaves in the pickup folder is sent.
    """
    from adapters import drop as drop_folder
    from adapters.pickup import Pickup

    s = settings()
    received = 0

    def hand_off(item: Any, msg: edxml.Message, raw: bytes) -> None:
        nonlocal received
        if drop is not None:  # first: the line below says the agency's system has it
            drop_folder.write(drop, item.digest, msg, raw)
        received += 1
        click.echo(
            f"{item.kind} {item.status_code or ''} from {item.sender}: {item.document_id} {item.subject}".replace(
                "  ", " "
            )
        )

    def receipted(document_id: str, digest: str, relayed_at_utc: dt.datetime) -> None:
        if drop is not None:  # first: the line below says the agency's system has it
            drop_folder.write_receipt(drop, document_id, digest, relayed_at_utc)
        click.echo(f"receipt: {document_id} relayed by the data centre {edxml.vn_text(relayed_at_utc)}")

    with _adapter(s, code, one_shot=False) as a:
        a.on_receive = hand_off
        a.on_receipt = receipted
        folder = Pickup(pickup) if pickup is not None else None

        def send_picked_up() -> int:
            done = folder.work(a) if folder is not None else []
            for o in done:
                what = f"status {o.status_code} for {o.document_id}" if o.status_code else o.document_id
                click.echo(
                    f"sent {o.name}: {what}"
                    if o.state == "sent"
                    else f"refused {o.name} [{o.reason}]: {o.message} (kept in {o.folder})"
                )
            return len(done)

        click.echo(f"adapter {code} consuming {', '.join(a.names.inboxes(code))}", err=True)
        longrun.settle()
        longrun.stop_on_sigterm()
        try:
            a.run(idle_exit=idle_exit, pickup=send_picked_up if folder is not None else None)
        except KeyboardInterrupt:
            pass
    click.echo(f"adapter {code} stopped after {received} message(s)", err=True)


@main.group()
def dead() -> None:
    """Poison messages the router gave up on (dead-lettered after the delivery limit)."""


def _dead_context():
    from bus.topology import Names

    s = settings()
    return s, open_archive(s), amqp(s), Names(s.namespace)


@dead.command("list")
@json_option()
@guarded
def dead_list(as_json: bool) -> None:
    """Move the dead queue into the archive and list every dead letter with its reason."""
    from bus import deadletter
    from bus.archive import DeadLetter

    _, archive, transport, names = _dead_context()
    try:
        moved = deadletter.collect(archive, transport, names)
    finally:
        transport.close()
    rows = [
        {
            "id": d.id,
            "dead_at": d.dead_at.isoformat(sep=" ", timespec="seconds"),
            "routing_key": d.routing_key,
            "user_id": d.user_id,
            "bytes": len(bytes(d.body)),
            "reason": d.reason,
            "replayed_at": d.replayed_at.isoformat(sep=" ", timespec="seconds") if d.replayed_at else None,
        }
        for d in DeadLetter.select().order_by(DeadLetter.id)
    ]
    if as_json:
        emit_json(rows)
        return
    if moved:
        click.echo(f"moved {moved} message(s) from {names.dead} into the archive", err=True)
    click.echo(
        table(
            [
                [
                    r["id"],
                    edxml.vn_text(r["dead_at"]),
                    r["routing_key"],
                    r["bytes"],
                    r["reason"],
                    edxml.vn_text(r["replayed_at"]),
                ]
                for r in rows
            ],
            ["Id", "Dead at (UTC+7)", "Routing key", "Bytes", "Reason", "Replayed"],
        )
    )


@dead.command("show")
@click.argument("letter_id", type=ROW_ID)
@guarded
def dead_show(letter_id: int) -> None:
    """One dead letter: where it came from, why, and the start of its bytes."""
    from bus import deadletter

    open_archive(settings())
    d = deadletter.get(letter_id)
    body = bytes(d.body)
    click.echo(f"id          {d.id}\ndead at     {edxml.vn_text(d.dead_at)} (UTC+7)\nrouting key {d.routing_key}")
    click.echo(
        f"broker user {d.user_id or ''}\nreason      {d.reason}\nbytes       {len(body)}\nheaders     {d.headers}"
    )
    click.echo(body[:2000].decode("utf-8", errors="replace"))


@dead.command("replay")
@click.argument("letter_id", type=ROW_ID, required=False)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter not replayed yet.")
@guarded
def dead_replay(letter_id: int | None, replay_all: bool) -> None:
    """Send dead letter(s) back to the router, with their original routing key and broker user."""
    from bus import deadletter
    from bus.archive import DeadLetter

    if (letter_id is None) == (not replay_all):
        raise click.UsageError("give one ID or --all")
    _, _, transport, names = _dead_context()
    try:
        letters = (
            [deadletter.get(letter_id)]
            if letter_id is not None
            else list(DeadLetter.select().where(DeadLetter.replayed_at.is_null()))
        )
        for d in letters:
            deadletter.replay(d, transport, names)
            click.echo(f"replayed #{d.id} ({d.routing_key})")
    finally:
        transport.close()


@dead.command("purge")
@click.argument("letter_id", type=ROW_ID)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@guarded
def dead_purge(letter_id: int, yes: bool) -> None:
    """Delete dead letter ID for good (asks first)."""
    from bus import deadletter

    open_archive(settings())
    d = deadletter.get(letter_id)
    if not yes and not click.confirm(
        f"Delete dead letter #{d.id} ({d.routing_key}, {len(bytes(d.body))} bytes) for good?"
    ):
        click.echo("kept")
        sys.exit(EXIT_FAILED)
    deadletter.purge(d)
    click.echo(f"purged #{d.id}")


# --------------------------------------------------------------------------- archive


@main.group()
def archive() -> None:
    """The central archive: search, show, export, verify, backup, restore, prune."""


RELATIVE_DAYS = {"today": 0, "hôm nay": 0, "yesterday": 1, "hôm qua": 1}


def _date(value: str | None, option: str) -> dt.date | None:
    """A day people name: ``YYYY-MM-DD``, or today / yesterday (hôm nay / hôm qua) in Vietnam."""
    if value is None:
        return None
    back = RELATIVE_DAYS.get(value.strip().lower())
    if back is not None:
        return edxml.now_vn().date() - dt.timedelta(days=back)
    try:
        day = dt.date.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(
            f"{value!r} is not a date like 2026-11-27 (or today, yesterday)", param_hint=option
        ) from exc
    if not FIRST_YEAR <= day.year <= LAST_YEAR:
        raise click.BadParameter(f"{value!r} is not a day of the years {FIRST_YEAR} to {LAST_YEAR}", param_hint=option)
    return day


@archive.command("search")
@click.option("--from", "sender", callback=not_blank, help="Sender OrganId.")
@click.option("--to", "recipient", callback=not_blank, help="Recipient OrganId.")
@click.option("--type", "type_name", callback=not_blank, help="Document type name, e.g. 'Công văn'.")
@click.option("--number", callback=not_blank, help="Số or Số/Ký hiệu, e.g. 125 or 125/SNV-VP.")
@click.option("--since", help="Received on or after this day: YYYY-MM-DD, today or yesterday (Vietnamese days).")
@click.option("--until", help="Received on or before this day: YYYY-MM-DD, today or yesterday (Vietnamese days).")
@click.option(
    "--priority",
    type=click.IntRange(0, 4),
    help=f"Only this priority: {PRIORITY_NAMES}.",
)
@click.option(
    "--status", "status_code", type=click.Choice(sorted(edxml.STATUS_CODES)), help="Has this status from a recipient."
)
@click.option("--text", help="Words of the subject, content or file names; diacritics and case do not matter.")
@click.option("--refused", is_flag=True, help="Search refused (quarantined) submissions instead.")
@click.option("--page", type=COUNT, default=1, show_default=True, help="Which page of results.")
@click.option("--per-page", type=click.IntRange(1, 500), default=20, show_default=True, help="Documents on a page.")
@json_option()
@guarded
def archive_search(
    sender: str | None,
    recipient: str | None,
    type_name: str | None,
    number: str | None,
    since: str | None,
    until: str | None,
    priority: int | None,
    status_code: str | None,
    text: str | None,
    refused: bool,
    page: int,
    per_page: int,
    as_json: bool,
) -> None:
    """Find archived documents, newest first."""
    from bus import search

    if text is not None and not search.terms(text):
        # otherwise no filter at all: "*" or "..." would list every document as if it matched
        raise click.BadParameter(f"{text!r} has no word to search for (letters or digits)", param_hint="'--text'")
    open_archive(settings())
    filters = search.Filters(
        sender=sender,
        recipient=recipient,
        type_name=type_name,
        number=number,
        since=_date(since, "--since"),
        until=_date(until, "--until"),
        priority=priority,
        status=status_code,
        text=text,
        state="quarantined" if refused else "accepted",
        kinds=("edoc", "status", "unknown") if refused else ("edoc",),
    )
    rows, total = search.search(filters, page=page, per_page=per_page)
    data = [
        {
            "document_id": m.document_id,
            "received_at": m.received_at.isoformat(sep=" ", timespec="seconds"),
            "from": m.sender,
            "code": f"{m.code_number}/{m.code_notation}" if m.code_number else "",
            "type": m.type_name,
            "priority": m.priority,
            "subject": m.subject,
            "state": m.state,
            "reason": m.reason,
        }
        for m in rows
    ]
    if as_json:
        # total_capped: the count stopped at search.COUNT_CAP + 1; there are at least that many
        capped = total > search.COUNT_CAP
        emit_json({"total": total, "total_capped": capped, "page": page, "per_page": per_page, "results": data})
        return
    cols = ["Received (UTC+7)", "From", "Số/Ký hiệu", "Type", "Subject", "DocumentId"]
    body = [
        [edxml.vn_text(d["received_at"]), d["from"], d["code"], d["type"], d["subject"], d["document_id"]] for d in data
    ]
    if refused:
        cols[3], body = "Reason", [[*r[:3], d["reason"], *r[4:]] for r, d in zip(body, data, strict=True)]
    click.echo(table(body, cols))
    pages = max(1, -(-total // per_page))
    if total > search.COUNT_CAP:  # counted no further: a common word over years of documents
        click.echo(f"page {page}; more than {search.COUNT_CAP:,} documents: add filters to narrow the search")
    elif page > pages:
        click.echo(f"page {page} is past the last page ({pages}); {total} document(s)")
    else:
        click.echo(f"page {page} of {pages}, {total} document(s)")


@archive.command("show")
@click.argument("document_id")
@json_option()
@guarded
def archive_show(document_id: str, as_json: bool) -> None:
    """Header, attachments and per-recipient status history of DOCUMENT_ID."""
    from bus.archive import AttachmentRecord

    s = settings()
    arch = open_archive(s)
    m = arch.find_edoc(document_id)
    msg = edxml.parse_tree(safexml.parse(arch.raw(m), s.limits))
    data = edxml.summary(msg)
    data["attachments"] = [
        {"content_id": a.content_id, "name": a.name, "content_type": a.content_type, "size": a.size, "sha256": a.sha256}
        for a in AttachmentRecord.select().where(AttachmentRecord.message == m)
    ] or data["attachments"]
    data["archived_at"] = m.received_at.isoformat(sep=" ", timespec="seconds")
    data["trace"] = arch.trace(document_id)
    if as_json:
        emit_json(data)
        return
    click.echo(
        f"{data['document_id']}\n  {data['code']['number']}/{data['code']['notation']}  {data['document_type']['name']}"
    )
    click.echo(
        f"  “{data['subject']}”\n  from {data['from']['organ_id']} {data['from']['name']}, "
        f"archived {edxml.vn_text(data['archived_at'])} (UTC+7)"
    )
    _echo_content(data["content"], data["subject"])
    click.echo(
        table(
            [[a["name"], a["content_type"], a["size"], a["sha256"][:16] + "…"] for a in data["attachments"]],
            ["File", "Type", "Bytes", "SHA-256"],
        )
    )
    rows = []
    for sub in data["trace"]["submissions"]:
        for r in sub["recipients"]:
            codes = ", ".join(f"{st['code']} {edxml.vn_text(st['received_at'])[5:16]}" for st in r["statuses"]) or "—"
            rows.append([r["organ_id"], edxml.vn_text(r["delivered_at"]) or "pending", codes])
    click.echo(table(rows, ["Recipient", "Delivered (UTC+7)", "Statuses"]))


def _echo_content(content: str, subject: str, *, indent: str = "  ") -> None:
    """Nội dung, wrapped and cut at about ten lines (--json has all of it); nothing when it
    only repeats the subject."""
    if not content.strip() or content.strip() == subject.strip():
        return
    lines = textwrap.wrap(
        " ".join(content.split()),
        width=96,
        initial_indent=indent,
        subsequent_indent=" " * len(indent),
        max_lines=10,
        placeholder=" …",
    )
    click.echo("\n".join(lines))


@archive.command("export")
@click.argument("document_id")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@guarded
def archive_export(document_id: str, folder: Path) -> None:
    """Write DOCUMENT_ID's original edXML (byte-exact, verifiable) and its attachment files into FOLDER."""
    s = settings()
    arch = open_archive(s)
    m = arch.find_edoc(document_id)
    raw = arch.raw(m)
    msg = edxml.parse_tree(safexml.parse(raw, s.limits))
    from bus.blobs import ChunkStore
    from bus.filenames import attachment_files, beside

    folder.mkdir(parents=True, exist_ok=True)
    attachments = getattr(msg, "attachments", [])
    names = attachment_files(a.name for a in attachments)
    already: list[bool] = []  # each file: there from an earlier export, checked by its digest
    for a, name in zip(attachments, names, strict=True):
        # under these very names, where `docbus verify` looks for a large file: never in place of another
        target, there = beside(folder, name, a.sha256)
        if target.name != name:
            raise Refused(f"{folder / name} is another file already: export into an empty folder", reason="file-exists")
        already.append(there)
    original = folder / f"{m.digest[:16]}.edxml"
    original.write_bytes(raw)
    click.echo(str(original))
    files = ChunkStore(s.home / "blobs")
    for a, name, there in zip(attachments, names, already, strict=True):
        target = folder / name  # never a path from the sender
        if not there:  # the same bytes already there are not copied again
            if a.external is not None:  # a large file kept beside the archive, under its digest
                if not files.has(a.external.sha256):
                    raise NotFound(f"the file of {a.name!r} (sha256:{a.external.sha256}) is not in the archive")
                shutil.copyfile(files.file(a.external.sha256), target)
            else:
                target.write_bytes(a.data)
        click.echo(str(target))


@archive.command("verify")
@click.option("--no-signatures", is_flag=True, help="Check the chain and the bytes only (faster).")
@json_option()
@guarded
def archive_verify(no_signatures: bool, as_json: bool) -> None:
    """Walk the hash chain: every row, every stored blob, every signature. Exit 5 at the first alteration."""
    result = _audit(settings(), not no_signatures)
    if as_json:
        emit_json(
            {
                "ok": result.ok,
                "entries": result.entries,
                "signatures": result.signatures,
                "first_problem": result.first_problem.__dict__ if result.first_problem else None,
            }
        )
    else:
        click.echo(_audit_line(result))
    if not result.ok:
        sys.exit(EXIT_FAILED)


def _audit(s: Settings, signatures: bool) -> Any:
    """The archive's chain, stored bytes, large files and (``signatures``) signatures, checked
    with the certificates as they were at arrival, behind a progress bar."""
    from dataclasses import replace

    from bus.archive import ChainEntry
    from bus.audit import verify_archive
    from bus.blobs import ChunkStore
    from bus.router import load_trust

    open_archive(s)  # also brings an archive (a restored backup) from an older version to this one's schema
    trust = replace(load_trust(s), revoked_serials=frozenset())
    total = ChainEntry.select().count()
    with click.progressbar(length=total, label="verifying the archive", file=sys.stderr, show_pos=True) as bar:
        return verify_archive(trust, signatures=signatures, progress=bar.update, files=ChunkStore(s.home / "blobs"))


def _audit_line(result: Any) -> str:
    """What 'archive verify' and 'archive restore' say of the chain they walked."""
    if (f := result.first_problem) is None:
        return f"archive intact: {result.entries} entries on the chain, {result.signatures} signatures re-verified"
    return f"ALTERED at chain entry {f.seq} (message #{f.message_id}, {f.document_id}): {f.problem}"


@archive.command("backup")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@json_option()
@guarded
def archive_backup(folder: Path, as_json: bool) -> None:
    """Copy the archive and its large files into FOLDER (new or empty), routers running.

    SQLite's online backup reads one snapshot, so the copy holds every commit made before it
    started and the routers need not stop (a plain 'cp' of archive.db while they write can copy
    a file that is not a database).  Large files are re-hashed as they are copied.  Not copied:
    the CA's and the data centre's keys, agencies' own stores, and a PostgreSQL database
    (pg_dump's job).  FOLDER/backup.json records the chain head that 'docbus archive verify'
    must reach on a restored copy (docs/DEPLOY.md, "Backups").  Exit 5 if a large file no
    longer matches its digest (it is named, not copied).
    """
    from dataclasses import asdict

    from bus.backup import backup_archive

    s = settings()
    with StageBars() as bars:
        result = backup_archive(s, folder, progress=_copy_bars(bars))
    if as_json:
        emit_json(asdict(result) | {"ok": result.ok})
    else:
        if result.database_copied:
            click.echo(
                f"archive: {result.messages} messages, {result.chain_entries} chain entries, "
                f"{result.database_bytes / 2**20:.1f} MiB -> {folder / 'archive.db'}"
            )
            click.echo(f"chain head: {result.chain_head or '(empty archive)'}")
        else:
            click.echo(f"archive {result.archive_url}: not copied, back it up with pg_dump (docs/DEPLOY.md)")
        click.echo(f"large files: {result.files}, {result.file_bytes / 2**20:.1f} MiB -> {folder / 'files'}")
        for sha in result.altered_files:
            click.echo(f"ALTERED, not copied: large file {sha} (its bytes no longer match its digest)")
        for path in result.skipped:
            click.echo(f"skipped {path}: not a stored file (an interrupted write leaves such temporaries)")
        click.echo(f"done in {result.seconds:.1f} s; {folder / 'backup.json'} says what was copied")
    if not result.ok:
        sys.exit(EXIT_FAILED)


def _copy_bars(bars: StageBars) -> Callable[[str, int, int], None]:
    """Progress of a backup or a restore: a bar for the archive, then one for the large files."""
    labels = {"archive": "copying the archive (bytes)", "files": "copying large files (bytes)"}
    return lambda stage, done, total: bars(labels[stage], done, total)


@archive.command("restore")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--no-signatures", is_flag=True, help="Check the restored chain and bytes only (faster).")
@click.option(
    "--head",
    metavar="SHA256",
    default="",
    help="The chain head the backup printed, as kept outside its folder (default: its backup.json's).",
)
@json_option()
@guarded
def archive_restore(folder: Path, yes: bool, no_signatures: bool, head: str, as_json: bool) -> None:
    """Put the backup in FOLDER in place of the SQLite archive, then verify it; routers stopped.

    Refused while a router consumes the bus.  Nothing is deleted: the archive that was there
    moves to $DOCBUS_HOME/archive-replaced-<time>/.  The backup's large files the data centre
    lacks are copied in, re-hashed.  Then the whole chain is verified (as 'docbus archive
    verify') and must end at the chain head backup.json names.  What was archived after the
    backup is not in the restored archive; an agency added or a certificate rotated since
    needs 'docbus agency add' again (docs/DEPLOY.md, "Backups").  Exit 5 if a check fails.
    """
    from dataclasses import asdict

    from bus.backup import restore_archive, routers_running

    s = settings()
    running = routers_running(s)
    if running:
        raise ConfigError(
            f"{running} router(s) consume {s.namespace}.router: stop them first "
            "(systemctl stop 'docbus-router@*'), restore, then start them again"
        )
    if running is None:
        click.echo("the broker's management API cannot say whether routers run: make sure none does", err=True)
    if not yes and not click.confirm(
        f"Replace the archive in {s.home} with the backup in {folder}? The current one is kept aside.", err=True
    ):
        click.echo("nothing restored")
        sys.exit(EXIT_FAILED)
    with StageBars() as bars:
        result = restore_archive(s, folder, progress=_copy_bars(bars), expected_head=head.strip().lower())
    audit = _audit(s, not no_signatures)
    problem = audit.first_problem
    ok = result.ok and audit.ok
    if as_json:
        emit_json(
            asdict(result)
            | {"verified_entries": audit.entries, "first_problem": problem.__dict__ if problem else None, "ok": ok}
        )
    else:
        if result.replaced_into:
            click.echo(f"the archive that was there: {result.replaced_into}")
        click.echo(
            f"restored the backup of {result.backup_created_at or '(no backup.json)'} UTC: {result.messages} messages, "
            f"{result.chain_entries} chain entries; large files copied {result.files_copied}, "
            f"already here {result.files_present}"
        )
        for sha in result.altered_files:
            click.echo(f"ALTERED, not copied: large file {sha} in the backup (its bytes no longer match its digest)")
        if result.expected_head and result.chain_head != result.expected_head:
            named = "given" if head else "backup.json names"
            click.echo(f"CHAIN HEAD {result.chain_head} is not the one {named} ({result.expected_head})")
        click.echo(_audit_line(audit))
        click.echo("start the routers again; what was archived after the backup is not in this archive")
    if not ok:
        sys.exit(EXIT_FAILED)


@archive.command("prune")
@click.option("--before", required=True, help="Cut-off date (YYYY-MM-DD, Vietnam time).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@guarded
def archive_prune(before: str, yes: bool) -> None:
    """Remove what the retention rule allows from before a date, and record that it did.

    Accepted documents and statuses are never removed. Refused submissions and dead letters
    older than the cut-off lose their bytes; their metadata and chain entries stay.
    """
    from bus.archive import RETENTION_RULE, prune

    s = settings()
    arch = open_archive(s)
    day = _date(before, "--before")
    assert day is not None  # --before is required
    cutoff = edxml.vn_day_start(day)
    if not yes and not click.confirm(f"Prune before {day}? Rule: {RETENTION_RULE}."):
        click.echo("nothing pruned")
        sys.exit(EXIT_FAILED)
    log = prune(cutoff, arch.database)
    click.echo(f"pruned {log.messages} item(s), {log.bytes_freed} bytes freed; recorded as prune #{log.id}")


# --------------------------------------------------------------------------- report


@main.group()
def report() -> None:
    """Reports the provincial directive asks for."""


@report.command("monthly")
@click.option("--month", required=True, help="YYYY-MM (Vietnam time).")
@click.option("--agency", "code", callback=organ_id, help="One agency, or a department/district with its agencies.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json", "html"]),
    default="table",
    show_default=True,
    help="table to read here, csv for a spreadsheet (in a file: with a UTF-8 byte-order mark, so Excel shows "
    "the diacritics), json for machines, html to send (charts included).",
)
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file instead of stdout."
)
@click.option(
    "--holidays",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Days off besides weekends (Tết, Quốc khánh, …), one YYYY-MM-DD a line, # comments: they do not count "
    "as working days for the 01 and 03 deadlines.",
)
@guarded
def report_monthly(month: str, code: str | None, fmt: str, output: Path | None, holidays: Path | None) -> None:
    """Sent, received, 01 within one working day, 03 within three, refusals by reason, unanswered.

    Working days are Monday to Friday in Vietnam, less the days listed with --holidays."""
    from bus import report as rep

    try:
        first = dt.date.fromisoformat(f"{month}-01")
    except ValueError as exc:
        raise click.BadParameter(f"{month!r} is not a month like 2026-11", param_hint="--month") from exc
    if not FIRST_YEAR <= first.year <= LAST_YEAR:
        raise click.BadParameter(
            f"{month!r} is not a month of the years {FIRST_YEAR} to {LAST_YEAR}", param_hint="--month"
        )
    days_off = _holidays(holidays) if holidays is not None else frozenset()
    open_archive(settings())
    r = rep.monthly(month, code, days_off)
    if fmt == "json":
        text = rep.to_json(r)
    elif fmt == "csv":
        text = rep.to_csv(r)
    elif fmt == "html":
        text = rep.to_html(r)
    else:
        agencies, units = rep.rows_for_table(r)
        by_unit = f"Tháng {month}: theo sở, ban, ngành và huyện (gồm các đơn vị trực thuộc)"
        text = f"{by_unit}\n{table(units, rep.HEADERS)}\n\nTheo cơ quan\n{table(agencies, rep.HEADERS)}"
        text += f"\n\n{rep.working_days(r)}"
    if output is not None:
        # Excel reads a CSV file without a byte-order mark in the machine's legacy code page: "Sở" becomes "Sá»Ÿ"
        output.write_text(text, encoding="utf-8-sig" if fmt == "csv" else "utf-8")
        click.echo(str(output))
    else:
        click.echo(text)


def _holidays(path: Path) -> frozenset[dt.date]:
    """Dates from a file, one a line; ``#`` starts a comment (``2027-02-08  # Tết``)."""
    days = set()
    for n, value in _listed(path, "list of days off"):
        try:
            day = dt.date.fromisoformat(value)
        except ValueError:
            day = None
        if day is None or not FIRST_YEAR <= day.year <= LAST_YEAR:
            raise click.BadParameter(
                f"{path}, line {n}: {value!r} is not a date like 2027-02-08", param_hint="--holidays"
            ) from None
        days.add(day)
    return frozenset(days)


# --------------------------------------------------------------------------- benchmarks


@main.group(invoke_without_command=True)
@click.option(
    "--documents",
    type=click.IntRange(10, 10_000_000),
    default=2000,
    show_default=True,
    help="Pre-signed 5 KB edocs for the throughput runs.",
)
@click.option(
    "--agencies",
    type=click.IntRange(2, 10_000),
    default=150,
    show_default=True,
    help="Agencies registered for the run; the throughput run's documents go between all of them.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=3,
    show_default=True,
    help="Router processes in the throughput run (they overlap confirm waits).",
)
@click.option(
    "--latency-workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Router processes in the latency run: at 200/s one router takes the submissions in batches, "
    "where several would each take batches of one and leave less CPU to the adapters.",
)
@click.option(
    "--rate",
    type=POSITIVE,
    default=200,
    show_default=True,
    help="Documents/s offered in the latency run, from four agencies at once (the rate achieved is reported).",
)
@click.option(
    "--latency-seconds",
    type=POSITIVE,
    default=10,
    show_default=True,
    help="How long the latency run offers its rate.",
)
@click.option("--large-mib", type=POSITIVE, default=1024, show_default=True, help="Size of the large-attachment run.")
@click.option(
    "--only",
    "parts",
    multiple=True,
    type=click.Choice(["router", "latency", "large"]),
    help="Run only these parts (repeatable); all three by default.",
)
@click.option(
    "--samples",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also write each latency-run document's submit and stored times here (JSON): when the slow ones happened.",
)
@json_option()
@click.pass_context
@guarded
def bench(
    ctx: click.Context,
    documents: int,
    agencies: int,
    workers: int,
    latency_workers: int,
    rate: float,
    latency_seconds: float,
    large_mib: float,
    parts: tuple[str, ...],
    samples: Path | None,
    as_json: bool,
) -> None:
    """Measure the bus on the local broker: router vs raw relay, latency, a large file.

    Figures, not verdicts: the targets are in docs/PERFORMANCE.md.  The router part also
    gives the CPU per document that half the relay's rate leaves on this machine's cores,
    beside what the library checks alone cost (benchmarks/floor.py).  'docbus bench archive'
    measures search at scale.  Run it on an otherwise idle machine, never two at once.

    \b
    The full run of docs/PERFORMANCE.md (a few minutes):
      docbus bench --documents 20000 --agencies 150 --rate 200 \\
                   --latency-seconds 10 --large-mib 1024
    """
    if ctx.invoked_subcommand is not None:
        return
    from benchmarks import bus_bench

    s = settings()
    with StageBars() as bars:
        data = bus_bench.run(
            s,
            documents=documents,
            agencies=agencies,
            workers=workers,
            latency_workers=latency_workers,
            rate=rate,
            latency_seconds=latency_seconds,
            large_bytes=int(large_mib * 1024 * 1024),
            parts=frozenset(parts) or bus_bench.PARTS,
            progress=bars,
            samples_to=samples,
        )
    if as_json:
        emit_json(data)
    else:
        host = data["machine"]
        click.echo(
            f"machine: {host['cpus']} CPUs, Python {host['python']}; "
            f"an RSA-2048 signature takes {host['rsa2048_sign_ms']} ms here now (the host's speed)"
        )
        click.echo(table(bus_bench.rows(data), ["Measure", "Result", "Detail"]))
    missing = bus_bench.shortfalls(data)
    if missing:
        fail(f"the run is not complete, its figures do not hold: {'; '.join(missing)}", EXIT_FAILED)


@bench.command("archive")
@click.option(
    "--documents",
    type=click.IntRange(100, 100_000_000),
    default=1_000_000,
    show_default=True,
    help="Synthetic documents to load.",
)
@click.option(
    "--queries", type=click.IntRange(1, 1_000_000), default=200, show_default=True, help="Runs of each kind of query."
)
@click.option(
    "--db", "db_url", help="Archive URL to load into (default: a fresh SQLite file under $DOCBUS_HOME/bench)."
)
@json_option()
@guarded
def bench_archive(documents: int, queries: int, db_url: str | None, as_json: bool) -> None:
    """Load DOCUMENTS synthetic archived documents, then time metadata and full-text searches."""
    import shutil

    from benchmarks import archive_bench
    from benchmarks.stats import machine, peak_rss_mib
    from bus.archive import Archive

    s = settings()
    if db_url is None:
        folder = s.home / "bench"
        shutil.rmtree(folder, ignore_errors=True)
        db_url = f"sqlite:///{(folder / 'archive.db').resolve()}"
    arch = Archive(db_url)
    with click.progressbar(
        length=documents, label="loading synthetic documents", file=sys.stderr, show_pos=True
    ) as bar:
        load_s = archive_bench.load(arch, documents, progress=bar.update)
    results = archive_bench.measure(queries)
    data = {
        "documents": documents,
        "load_seconds": round(load_s, 1),
        "backend": db_url.split(":", 1)[0],
        "queries": results,
        "peak_rss_mib": peak_rss_mib(),
        "machine": machine(),
    }
    if as_json:
        emit_json(data)
        return
    click.echo(f"{documents} documents loaded in {load_s:.0f} s ({data['backend']}); {queries} runs per query")
    rows = [[k, v["p50_ms"], v["p95_ms"], v["p99_ms"], v["max_ms"]] for k, v in results.items()]
    click.echo(table(rows, ["Query", "p50 ms", "p95 ms", "p99 ms", "max ms"]))


# --------------------------------------------------------------------------- files


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option("the header")
@guarded
def inspect(file: Path, as_json: bool) -> None:
    """Print the header of any edXML FILE (read leniently; nothing is verified)."""
    from bus.config import Limits

    limits = Limits(max_envelope_bytes=256 * 1024 * 1024)
    root = safexml.parse(read_bounded(file, limits.max_envelope_bytes), limits, huge_text=True)
    msg = edxml.parse_tree(root, limits)
    data = edxml.summary(msg)
    from bus import schema
    from bus.envelope import strip_hub_traces

    strip_hub_traces(root, settings().hub_organ_id)  # a received copy is checked as its recipient checks it
    data["schema"] = {p: schema.explain(root, p) or "valid" for p in ("lenient", "strict")}
    if as_json:
        emit_json(data)
        return
    click.echo(f"{data['kind']}  {data['document_id']}")
    click.echo(f"from     {data['from']['organ_id']}  {data['from']['name']}")
    for t in data["to"]:
        click.echo(f"to       {t['organ_id']}  {t.get('name', '')}")
    if data["kind"] == "edoc":
        click.echo(
            f"code     {data['code']['number']}/{data['code']['notation']}   type {data['document_type']['name']}   "
            f"priority {data['priority']} ({data['priority_name']})"
        )
        click.echo(f"subject  {data['subject']}")
        _echo_content(data["content"], data["subject"], indent="content  ")
        click.echo(f"business {data['business']['doc_type']} {data['business']['name']}")
    else:
        click.echo(
            f"status   {data['status_code']} {data['status_name']}: {data['description']}  at {data['timestamp']}"
        )
    click.echo(f"signature {data['signature']}" + ("" if data["signature"] == "present" else " (not verifiable)"))
    click.echo(f"schema   lenient: {data['schema']['lenient']}; strict: {data['schema']['strict']}")
    if data["attachments"]:
        click.echo(
            table(
                [
                    [a["content_id"], a["name"], a["content_type"], a["size"], a["sha256"][:16] + "…"]
                    for a in data["attachments"]
                ],
                ["ContentId", "Name", "Type", "Bytes", "SHA-256"],
            )
        )


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option()
@click.option(
    "--at",
    type=click.DateTime(["%Y-%m-%d %H:%M", "%Y-%m-%d"]),
    help="Check the signature as of this Vietnam time (an archived document signed years ago): the "
    "certificate's validity and the revocations made by then; the registry and policy checks are skipped.",
)
@guarded
def verify(files: tuple[Path, ...], as_json: bool, at: dt.datetime | None) -> None:
    """Check each FILE as the router would; exit 0 only if all verify.

    Schema, signature over the whole envelope, certificate (provincial CA, validity, revocation)
    and, where this machine has the archive, the registry and the directive's policy: a file
    is refused with the same reason the router gives.  The replay window does not apply.
    A large file (over 2 MiB) travels beside its envelope, which signs its SHA-256: it is
    looked for beside FILE, as 'archive export' or the drop folder writes it, and checked.
    A copy an agency received carries the data centre's TraceHeader: its seal must verify,
    and the time it was relayed is shown.
    """
    from dataclasses import replace

    from bus.blobs import ChunkStore, check_files_beside
    from bus.envelope import open_envelope
    from bus.gate import Gate
    from bus.router import load_trust

    s = settings()
    trust = load_trust(s)
    when = at.replace(tzinfo=edxml.VN_TZ) if at is not None else None
    if when is not None:  # a certificate revoked since then still signed validly then
        trust = replace(trust, revoked_serials=trust.revoked_as_of(when))
    gate = Gate(s, trust) if when is None and (s.db_url or (s.home / "archive.db").exists()) else None
    if gate is not None:
        open_archive(s)
    # where this machine keeps large files by digest: the data centre's, each agency's adapter's
    stores = [ChunkStore(s.home / "blobs")] + [ChunkStore(d) for d in sorted(s.home.glob("agencies/*/files"))]
    results = []
    for f in files:
        data = b""
        try:
            data = read_bounded(f, s.limits.max_envelope_bytes, ", more than the bus carries in one envelope")
            if gate is not None:
                opened = gate.check(data, claimed=None, at=when, from_hub=True, fresh=False)
            else:
                opened = open_envelope(data, trust, at=when, from_hub=True)
            attachments = getattr(opened.message, "attachments", [])
            large = check_files_beside(f, attachments, stores)
            results.append(
                {
                    "file": str(f),
                    "ok": True,
                    "signer": opened.signer,
                    "kind": opened.message.kind,
                    "document_id": opened.message.document_id,
                    "large_files": [str(p) for p in large],  # each found and matching its signed digest
                    # when the data centre passed it on, by its sealed TraceHeaders (Vietnam time)
                    "relayed": [t.timestamp for t in opened.relayed],
                }
            )
        except (Refused, NotFound) as exc:
            detail = exc.message
            if exc.reason == "schema-invalid":
                detail = f"{detail} (at {_schema_path(data)})"
            results.append({"file": str(f), "ok": False, "reason": exc.reason, "detail": detail})
    if as_json:
        emit_json(results)
    else:
        for r in results:
            if r["ok"]:
                files = "".join(f"; large file {p} checked" for p in r["large_files"])
                relayed = "".join(f"; relayed by the data centre {t} (sealed)" for t in r["relayed"])
                click.echo(f"OK    {r['file']}: {r['kind']} {r['document_id']} signed by {r['signer']}{relayed}{files}")
            else:
                click.echo(f"FAIL  {r['file']}: [{r['reason']}] {r['detail']}")
    if not all(r["ok"] for r in results):
        sys.exit(EXIT_REFUSED)


def _schema_path(data: bytes) -> str:
    from bus import schema
    from bus.config import Limits

    try:
        root = safexml.parse(data, Limits(max_envelope_bytes=256 * 1024 * 1024))
    except DocbusError as exc:
        return exc.message
    return schema.explain(root, "strict") or "?"


# --------------------------------------------------------------------------- demo


@main.command()
@click.option("--keep", is_flag=True, help="Keep the demo's queues on the broker afterwards.")
@guarded
def demo(keep: bool) -> None:
    """A small province on the local broker, end to end; exit 0 only if everything arrived.

    The People's Committee (000.00.00.H61), two departments and a district: a department
    sends a công văn with a PDF to the People's Committee; the People's Committee
    distributes a decision to all of them, sends the công văn on to the district (sao lục)
    and distributes a Prime Minister's decision from the national axis; recipients answer
    01 then 03; the trace is printed.
    Uses its own home ($DOCBUS_HOME/demo) and queue namespace (docbus-demo).
    """
    from bus.demo import run_demo

    base = settings()
    ok = run_demo(base.with_(home=base.home / "demo", namespace="docbus-demo", db_url=""), keep=keep, echo=click.echo)
    if not ok:
        fail("demo failed: some delivery or status did not arrive", EXIT_FAILED)


if __name__ == "__main__":
    main()
