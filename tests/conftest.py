"""Shared fixtures.

Unit tests (tests/unit) use the in-memory transport and a temporary SQLite archive.
Integration tests (tests/integration, marker ``broker``) go through the real RabbitMQ at
DOCBUS_AMQP_URL, each in its own queue namespace so they run beside a live bus.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from bus import province
from bus.archive import Archive
from bus.config import Settings, from_env
from bus.transport import MemoryTransport, Transport

INTEROP = Path(__file__).resolve().parents[1].parent / "shared" / "interop" / "edxml"
AGENCIES = [
    ("000.00.00.H61", "UBND tỉnh Vĩnh Long"),
    ("000.00.01.H61", "Sở Nội vụ"),
    ("000.00.02.H61", "Sở Tài chính"),
]


def interop_files() -> list[Path]:
    files = sorted(INTEROP.glob("*.edxml"))
    if not files:
        pytest.skip(f"interop samples not found in {INTEROP}", allow_module_level=True)  # also at import
    return files


@dataclass
class Province:
    settings: Settings
    archive: Archive
    transport: Transport
    hub: object


@pytest.fixture(scope="session")
def keys_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CA, hub and agency keys made once per session (RSA key generation is the slow part)."""
    home = tmp_path_factory.mktemp("keys") / "home"
    settings = from_env().with_(home=home, db_url=f"sqlite:///{home / 'template.db'}")
    archive = Archive(settings.archive_url)
    province.init(settings, archive, None)
    for code, name in AGENCIES:
        province.add_agency(settings, archive, None, code, name)
    archive.close()
    for f in home.glob("template.db*"):
        f.unlink()
    return home


def _make(
    tmp_path: Path, transport: Transport, namespace: str, template: Path, db_url: str = "", broker_users: bool = False
) -> Province:
    settings = from_env().with_(home=tmp_path / "home", namespace=namespace, db_url=db_url)
    shutil.copytree(template, settings.home)
    archive = Archive(settings.archive_url)
    prov, _ = province.init(settings, archive, transport)
    for code, name in AGENCIES:
        parent = None if code == AGENCIES[0][0] else AGENCIES[0][0]
        province.add_agency(settings, archive, transport, code, name, parent, broker_user=broker_users)
    return Province(settings, archive, transport, prov.hub)


@pytest.fixture
def memory_province(tmp_path: Path, keys_template: Path) -> Iterator[Province]:
    p = _make(tmp_path, MemoryTransport(), "mem", keys_template)
    yield p
    p.archive.close()


@pytest.fixture
def small_inline(memory_province: Province) -> Province:
    """Files over 64 KiB travel as large files (in chunks), so the tests of them stay small."""
    p = memory_province
    p.settings = replace(p.settings, limits=replace(p.settings.limits, inline_attachment_bytes=64 * 1024))
    return p


def broker_settings() -> Settings:
    return from_env()


@pytest.fixture(scope="session")
def broker_url() -> str:
    from bus.errors import BrokerUnavailable
    from bus.transport import AmqpTransport

    url = broker_settings().amqp_url
    try:
        AmqpTransport(url).close()
    except BrokerUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs RabbitMQ: {exc.message}")
        pytest.skip(f"RabbitMQ is not running: {exc.message}")
    return url


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def broker_province(tmp_path: Path, broker_url: str, namespace: str, keys_template: Path) -> Iterator[Province]:
    from bus import topology
    from bus.topology import Names
    from bus.transport import AmqpTransport

    transport = AmqpTransport(broker_url)
    p = _make(tmp_path, transport, namespace, keys_template, broker_users=True)
    yield p
    try:
        province.remove_broker_users(p.settings, p.archive)
    finally:  # the queues go even when the users could not: leftover quorum queues pile up in the broker
        names = Names(namespace)
        full = topology.core(names)
        for code, _ in AGENCIES:
            full = full + topology.agency(names, code)
        cleanup = AmqpTransport(broker_url)
        cleanup.delete(full)
        cleanup.close()
        transport.close()
        p.archive.close()


PG_URL = os.environ.get("DOCBUS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one test (skipped with a message where there is none)."""
    psycopg2 = pytest.importorskip("psycopg2")
    name = f"docbus_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg2.connect(PG_URL)
    except psycopg2.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs PostgreSQL at {PG_URL}: {exc}")
        pytest.skip(f"PostgreSQL is not reachable at {PG_URL}: {exc}")
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    yield PG_URL.rsplit("/", 1)[0] + "/" + name
    from bus.archive import db

    db.close()
    admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(params=["sqlite", "postgres"])
def archive_province(request: pytest.FixtureRequest, tmp_path: Path, keys_template: Path) -> Iterator[Province]:
    """A province on the in-memory transport whose archive is SQLite, then PostgreSQL."""
    db_url = request.getfixturevalue("pg_database") if request.param == "postgres" else ""
    p = _make(tmp_path, MemoryTransport(), "mem", keys_template, db_url=db_url)
    yield p
    p.archive.close()
