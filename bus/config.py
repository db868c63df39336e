"""Settings from the environment, as one frozen dataclass.

``DOCBUS_AMQP_URL`` (the provincial vhost on RabbitMQ), ``DOCBUS_DB_URL`` (the central
archive: SQLite file or ``postgresql://``), ``DOCBUS_HOME`` (keys and local stores).
Defaults are the local broker with the guest user and an SQLite archive under ``./var``:
good for a developer machine, never for production, where each agency has its own user.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

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


def from_env(env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    return Settings(
        amqp_url=env.get("DOCBUS_AMQP_URL") or DEFAULT_AMQP_URL,
        db_url=env.get("DOCBUS_DB_URL", ""),
        home=Path(env.get("DOCBUS_HOME") or "var"),
        namespace=env.get("DOCBUS_NAMESPACE") or "docbus",
        mgmt_url=env.get("DOCBUS_MGMT_URL", ""),
        limits=Limits(max_age_hours=float(env.get("DOCBUS_MAX_AGE_HOURS") or Limits.max_age_hours)),
        hub_organ_id=env.get("DOCBUS_HUB_ID") or Settings.hub_organ_id,
    )


def redact(url: str) -> str:
    """The URL without its password, for messages people read."""
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
