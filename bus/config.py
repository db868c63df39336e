"""Settings from the environment, as one frozen dataclass.

``DOCBUS_AMQP_URL`` (the provincial vhost on RabbitMQ), ``DOCBUS_DB_URL`` (the central
archive: SQLite file or ``postgresql://``), ``DOCBUS_HOME`` (keys and local stores).
Defaults are the local broker with the guest user and an SQLite archive under ``./var``:
good for a developer machine, never for production, where each agency has its own user.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from bus.errors import ConfigError

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


@dataclass(frozen=True)
class Limits:
    """Bounds applied to every envelope before anything else looks at it.

    Security: these limits are what keeps a hostile submission from taking the router's
    memory or CPU; raise them knowingly.
    """

    # files over inline_attachment_bytes travel in chunks (bus.blobs), so an envelope stays
    # small; a router may hold its prefetch of them at once, which this bounds
    max_envelope_bytes: int = 4 * 1024 * 1024
    max_depth: int = 32
    max_attachment_bytes: int = 64 * 1024 * 1024  # decoded (and unzipped) size of one file
    max_decoded_bytes: int = 64 * 1024 * 1024  # ... and of all the files inside one envelope together
    # an edXML file from outside the bus (sao lục from the national axis) carries its scans
    # inline and is read whole: about five times its size in memory while it is parsed
    max_outside_file_bytes: int = 20 * 1024 * 1024
    inline_attachment_bytes: int = 2 * 1024 * 1024  # larger files travel in chunks (bus.blobs)
    max_recipients: int = 500
    max_age_hours: float = 168.0  # a signed message older than this is refused (replay window)
    max_clock_skew_minutes: float = 10.0  # ... and one signed further in the future than this


@dataclass(frozen=True)
class Settings:
    amqp_url: str = DEFAULT_AMQP_URL
    db_url: str = ""
    home: Path = Path("var")
    namespace: str = "docbus"
    mgmt_url: str = ""
    hub_organ_id: str = "000.00.99.H61"
    hub_name: str = "Trung tâm Tích hợp dữ liệu tỉnh Vĩnh Long"
    limits: Limits = field(default_factory=Limits)

    @property
    def archive_url(self) -> str:
        return self.db_url or f"sqlite:///{(self.home / 'archive.db').resolve()}"

    def agency_home(self, organ_id: str) -> Path:
        return self.home / "agencies" / organ_id

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]


# an OrganId as QCVN 102:2016 writes it (000.00.00.H61): what this bus issues certificates for
QCVN_ORGAN_ID = re.compile(r"^\d{3}\.\d{2}\.\d{2}\.[A-Z]\d{2}$")
# a namespace prefixes every exchange, queue and broker user name: plain characters only
_NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def from_env(env: dict[str, str] | None = None) -> Settings:
    """Settings from ``DOCBUS_*``; a value that cannot be used raises :class:`ConfigError`
    naming the variable (the CLI prints it in one line), before anything connects."""
    env = dict(os.environ if env is None else env)
    amqp_url = env.get("DOCBUS_AMQP_URL") or DEFAULT_AMQP_URL
    try:
        parts = urlsplit(amqp_url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ConfigError(f"DOCBUS_AMQP_URL is not a URL docbus can use: {exc}") from None
    if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
        raise ConfigError(
            f"DOCBUS_AMQP_URL {redact(amqp_url)!r} is not an AMQP URL (like amqp://user:password@host:5672/%2F)"
        )
    namespace = env.get("DOCBUS_NAMESPACE") or "docbus"
    if not _NAMESPACE.match(namespace):
        raise ConfigError(
            f"DOCBUS_NAMESPACE {namespace!r}: letters, digits, '.', '_' and '-' only (it prefixes queue and user names)"
        )
    age = env.get("DOCBUS_MAX_AGE_HOURS") or str(Limits.max_age_hours)
    try:
        max_age_hours = float(age)
    except ValueError:
        max_age_hours = float("nan")
    if not max_age_hours > 0 or max_age_hours == float("inf"):
        raise ConfigError(f"DOCBUS_MAX_AGE_HOURS {age!r} is not a number of hours above 0")
    hub = env.get("DOCBUS_HUB_ID") or Settings.hub_organ_id
    if not QCVN_ORGAN_ID.match(hub):
        raise ConfigError(f"DOCBUS_HUB_ID {hub!r} is not a QCVN 102:2016 OrganId (like 000.00.99.H61)")
    home = Path(env.get("DOCBUS_HOME") or "var")
    if home.exists() and not home.is_dir():
        raise ConfigError(f"DOCBUS_HOME {str(home)!r} is a file, not a folder (keys, stores and the archive go there)")
    return Settings(
        amqp_url=amqp_url,
        db_url=env.get("DOCBUS_DB_URL", ""),
        home=home,
        namespace=namespace,
        mgmt_url=env.get("DOCBUS_MGMT_URL", ""),
        limits=Limits(max_age_hours=max_age_hours),
        hub_organ_id=hub,
    )


def redact(url: str) -> str:
    """The URL without its password, for messages people read."""
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.netloc.rpartition('@')[2]}"
        return urlunsplit(parts._replace(netloc=netloc))
    return url
