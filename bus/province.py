"""Running a province: the CA, the hub's identity, the topology, agencies and their certificates.

Every function here is idempotent where that makes sense: ``docbus init`` twice changes
nothing, and adding an agency that exists re-declares its inbox and keeps its certificate.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bus import edxml, topology
from bus.archive import Agency, Archive, Certificate, utcnow
from bus.brokeradmin import HANDLES_PER_QUORUM_QUEUE, BrokerAdmin, agency_permissions, new_password, vhost_of
from bus.config import QCVN_ORGAN_ID, Settings
from bus.errors import BrokerUnavailable, ConfigError, DocbusError, NotFound
from bus.topology import Names
from bus.transport import AmqpTransport, Transport
from signing import crl, seal
from signing.ca import CertificateAuthority, IssuePolicy, load_cert
from signing.identity import RENEW_WITHIN_DAYS, Identity, hub_folders

log = logging.getLogger("docbus.province")

# QCVN 102:2016 OrganId: V1V2V3.Z1Z2.Y1Y2.MX1X2
CRL_KIND = "crl"


@dataclass
class Province:
    settings: Settings
    ca: CertificateAuthority
    hub: Identity
    renewed: tuple[str, ...] = ()  # the data centre's keys `init` renewed: "signing", "seal"


HUB_KEY_POLICIES = {"signing": IssuePolicy(), "seal": seal.POLICY}  # RSA for edXML, P-256 for seals


def init(settings: Settings, archive: Archive, transport: Transport | None) -> tuple[Province, bool]:
    """Create (or load) the CA and the hub identity, and apply the topology. Returns (province, created)."""
    created = not CertificateAuthority.exists(settings.home)
    ca = (
        CertificateAuthority.create(settings.home)
        if created
        else CertificateAuthority.load(settings.home, need_key=False)
    )
    has_ca_key = CertificateAuthority.paths(settings.home)[1].exists()
    renewed: list[str] = []
    # each missing key is made (homes from before trace seals get theirs now), and each whose
    # certificate ends within RENEW_WITHIN_DAYS is replaced: when one ends, adapters refuse what it signs
    for role, folder in hub_folders(settings.home).items():
        if (folder / "key.pem").exists():
            ends = load_cert((folder / "cert.pem").read_bytes()).not_valid_after_utc
            if ends - dt.datetime.now(dt.UTC) > dt.timedelta(days=RENEW_WITHIN_DAYS) or not has_ca_key:
                continue  # without the CA key `docbus health` says it ends soon, and where to renew it
            renewed.append(role)
        elif not has_ca_key:
            raise ConfigError(
                f"the data centre's {role} key ({folder}) is missing and this machine has no CA key to issue it: "
                f"run 'docbus init' where the CA key is, then copy {folder.relative_to(settings.home)}/ here"
            )
        if ca.key is None:
            ca = CertificateAuthority.load(settings.home)
        Identity.issue(ca, settings.hub_organ_id, settings.hub_name, folder, HUB_KEY_POLICIES[role])
    hub = Identity.load(settings.hub_organ_id, hub_folders(settings.home)["signing"])
    if transport is not None:
        apply_topology(settings, archive, transport)
    return Province(settings, ca, hub, tuple(renewed)), created


def import_ca(settings: Settings, cert_path: Path, key_path: Path) -> CertificateAuthority:
    """Adopt an existing CA (certificate and key) as the provincial CA."""
    if CertificateAuthority.exists(settings.home):
        raise ConfigError(f"a provincial CA already exists in {settings.home / 'ca'}; move it away first")
    cert = load_cert(cert_path.read_bytes())
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{key_path} is not an unencrypted PEM private key: {exc}") from exc
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        basic = None
    if basic is None or not basic.ca:
        raise ConfigError(f"{cert_path} is not a CA certificate (BasicConstraints CA:TRUE is missing)")
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, pub) != cert.public_key().public_bytes(
        serialization.Encoding.DER, pub
    ):
        raise ConfigError(f"{key_path} is not the key of {cert_path}")
    ca = CertificateAuthority(cert, key)  # type: ignore[arg-type]
    ca.save(settings.home)
    return ca


def apply_topology(settings: Settings, archive: Archive, transport: Transport) -> topology.Topology:
    names = Names(settings.namespace)
    full = topology.core(names)
    for a in archive.agencies():
        full = full + topology.agency(names, a.organ_id)
    transport.apply(full)
    return full


def _admin(settings: Settings) -> BrokerAdmin | None:
    """The management API client, or None when it is not reachable (development brokers)."""
    admin = BrokerAdmin(settings.amqp_url, settings.mgmt_url or None)
    return admin if admin.available() else None


ROUTER_CONNECTIONS = 4  # the data centre's routers and operators' commands, beside one per agency


def check_broker_room(admin: BrokerAdmin, archive: Archive, new_queues: int) -> None:
    """Refuse to declare ``new_queues`` more quorum queues where RabbitMQ would run out of
    file handles, with every registered agency's adapter connected (one connection each).

    Such a node still accepts TCP connections but answers none (``HANDLES_PER_QUORUM_QUEUE``):
    a province that grows past it stops the bus for everybody, so the agency that would tip
    it over is refused, with the setting to change."""
    budget = admin.file_handles()
    if not budget.limit:
        return
    expected = max(budget.connections, len(archive.agencies()) + 1 + ROUTER_CONNECTIONS)
    if budget.fits(new_queues, expected - budget.connections):
        return
    queues = budget.queues + new_queues
    raise ConfigError(
        f"RabbitMQ's open-file limit ({budget.limit}) is too low for this agency: {queues} queues reserve "
        f"{HANDLES_PER_QUORUM_QUEUE} file handles each and {expected} connections (one per agency's adapter) "
        f"one each, {budget.needed(new_queues, expected - budget.connections)} in all, over the "
        f"{budget.limit - budget.RESERVED} it lets them use; a node that runs out stops answering every "
        "connection. Raise it (LimitNOFILE=65536 in its systemd unit, or 'ulimit -n 65536' in "
        "/etc/rabbitmq/rabbitmq-env.conf), restart RabbitMQ, and add the agency again"
    )


def add_agency(
    settings: Settings,
    archive: Archive,
    transport: Transport | None,
    organ_id: str,
    name: str,
    parent: str | None = None,
    *,
    broker_user: bool = True,
) -> tuple[Agency, bool]:
    """Register an agency, issue its key and certificate, declare its inbox, create its broker user.

    Returns (agency, created).  Without the management API the agency is registered without a
    broker user of its own (a warning is logged): fine for development, not for production.
    """
    if not QCVN_ORGAN_ID.match(organ_id):
        raise ConfigError(f"{organ_id!r} is not a QCVN 102:2016 OrganId (like 000.00.00.H61)")
    if organ_id == settings.hub_organ_id:
        raise ConfigError(f"{organ_id} is the data centre's own OrganId")
    if not name.strip():
        raise ConfigError(f"{organ_id} needs a name (tên cơ quan): it goes into its certificate and every From")
    name = edxml.nfc(name)
    if parent is not None:
        archive.agency(parent)  # raises NotFound with a clear message
    folder = settings.agency_home(organ_id)
    created = not (folder / "key.pem").exists()
    queues = topology.agency(Names(settings.namespace), organ_id)
    on_broker = isinstance(transport, AmqpTransport)  # an in-memory bus has no room to check, no users
    # the management API, asked once: the broker's room for a new agency's queues, its broker user
    # (without it, on development brokers, nothing is checked)
    admin = _admin(settings) if on_broker and (created or broker_user) else None
    if admin is not None and created:
        check_broker_room(admin, archive, len(queues.queues))
    if created:
        ident = Identity.issue(CertificateAuthority.load(settings.home), organ_id, name, folder)
    else:
        ident = Identity.load(organ_id, folder)
    cert = load_cert(ident.cert_pem)
    agency = archive.add_agency(
        organ_id,
        name,
        ident.cert_pem.decode(),
        format(cert.serial_number, "x"),
        cert.not_valid_after_utc.replace(tzinfo=None),
        parent,
    )
    if transport is not None:
        transport.apply(queues)
        if broker_user and on_broker:
            provision_broker_user(settings, agency, admin)
    return Agency.get_by_id(organ_id), created


def in_tree_order(agencies: Sequence[Agency], under: str | None = None) -> list[tuple[Agency, int]]:
    """``agencies`` as their tree reads, each followed by those under it, with its depth (0 at
    the top): province, then each department and district with its communes.  ``under``: only
    those below that agency (a district's communes, for a distribution list)."""
    children: dict[str | None, list[Agency]] = {}
    known = {a.organ_id for a in agencies}
    for a in sorted(agencies, key=lambda a: a.organ_id):
        children.setdefault(a.parent if a.parent in known else None, []).append(a)
    out: list[tuple[Agency, int]] = []
    stack: list[tuple[Agency, int]] = [(a, 0) for a in reversed(children.get(under, []))]
    seen: set[str] = set()
    while stack:
        agency, depth = stack.pop()
        if agency.organ_id in seen:  # a parent loop written by hand into the registry: once each
            continue
        seen.add(agency.organ_id)
        out.append((agency, depth))
        stack.extend((c, depth + 1) for c in reversed(children.get(agency.organ_id, [])))
    return out


def provision_broker_user(settings: Settings, agency: Agency, admin: BrokerAdmin | None = None) -> bool:
    """Create the agency's broker user with its permissions; its credentials go to its home."""
    admin = admin or _admin(settings)
    if admin is None:
        log.warning("management API unreachable: %s has no broker user of its own", agency.organ_id)
        return False
    creds_path = settings.agency_home(agency.organ_id) / "broker.json"
    perms = agency_permissions(Names(settings.namespace), agency.organ_id, vhost_of(settings.amqp_url))
    if creds_path.exists():
        password = json.loads(creds_path.read_text())["password"]
    else:
        password = new_password()
    admin.ensure_user(perms.user, password)
    admin.apply(perms)
    creds_path.write_text(json.dumps({"user": perms.user, "password": password}))
    creds_path.chmod(0o600)
    Agency.update(broker_user=perms.user).where(Agency.organ_id == agency.organ_id).execute()
    return True


def remove_broker_users(settings: Settings, archive: Archive) -> int:
    """Delete the broker users of every registered agency (tearing down a test or demo province)."""
    admin = _admin(settings)
    if admin is None:
        return 0
    users = [a.broker_user for a in archive.agencies() if a.broker_user]
    for user in users:
        admin.close_connections(user)
        admin.delete_user(user)
    return len(users)


def set_enabled(settings: Settings, archive: Archive, organ_id: str, enabled: bool) -> Agency:
    """Disable: the agency loses broker access at once (connections closed); its queued mail stays."""
    agency = archive.agency(organ_id)
    Agency.update(enabled=enabled).where(Agency.organ_id == organ_id).execute()
    if agency.broker_user:
        admin = _admin(settings)
        if admin is None:
            raise BrokerUnavailable("the RabbitMQ management API is needed to change an agency's broker access")
        if enabled:
            admin.apply(agency_permissions(Names(settings.namespace), organ_id, vhost_of(settings.amqp_url)))
        else:
            admin.revoke(agency.broker_user, vhost_of(settings.amqp_url))
    return Agency.get_by_id(organ_id)


def rotate(
    settings: Settings, archive: Archive, organ_id: str, overlap: dt.timedelta
) -> tuple[Certificate, Certificate]:
    """Issue a new certificate; the old one stays valid for ``overlap``. Returns (old, new)."""
    agency = archive.agency(organ_id)
    old = Certificate.get_by_id(agency.cert_serial)
    folder = settings.agency_home(organ_id)
    for name in ("key.pem", "cert.pem"):
        if (folder / name).exists():
            shutil.copy2(folder / name, folder / f"{name[:-4]}-{old.serial}.pem")
    ident = Identity.issue(CertificateAuthority.load(settings.home), organ_id, agency.name, folder)
    cert = load_cert(ident.cert_pem)
    serial = format(cert.serial_number, "x")
    with archive.write():
        Certificate.update(state="retiring", retire_after=utcnow() + overlap).where(
            Certificate.serial == old.serial
        ).execute()
        Certificate.create(
            serial=serial,
            organ_id=organ_id,
            pem=ident.cert_pem.decode(),
            not_after=cert.not_valid_after_utc.replace(tzinfo=None),
        )
        Agency.update(cert_pem=ident.cert_pem.decode(), cert_serial=serial).where(Agency.organ_id == organ_id).execute()
    return Certificate.get_by_id(old.serial), Certificate.get_by_id(serial)


def revoke(
    settings: Settings, archive: Archive, target: str, reason: str, transport: Transport | None
) -> list[Certificate]:
    """Revoke an agency's certificates (by OrganId: all of them) or one serial; publish the CRL."""
    if QCVN_ORGAN_ID.match(target):
        archive.agency(target)
        query = Certificate.select().where((Certificate.organ_id == target) & (Certificate.state != "revoked"))
    else:
        query = Certificate.select().where(Certificate.serial == target.lower().removeprefix("0x"))
    found = list(query)
    if not found:
        raise NotFound(f"no unrevoked certificate matches {target!r} (see 'docbus cert list')")
    now = utcnow()
    Certificate.update(state="revoked", revoked_at=now, revoked_reason=reason).where(
        Certificate.serial.in_([c.serial for c in found])
    ).execute()
    publish_crl(settings, archive, transport)
    return [Certificate.get_by_id(c.serial) for c in found]


def publish_crl(settings: Settings, archive: Archive, transport: Transport | None) -> bytes:
    """Write the CRL to $DOCBUS_HOME/ca/crl.pem and send it to every agency's inbox."""
    ca = CertificateAuthority.load(settings.home)
    revoked = [(int(c.serial, 16), c.revoked_at) for c in Certificate.select().where(Certificate.state == "revoked")]
    pem = crl.to_pem(crl.build(ca, revoked))
    (settings.home / "ca" / "crl.pem").write_bytes(pem)
    if transport is not None:
        names = Names(settings.namespace)
        for a in archive.agencies():
            try:
                transport.publish(names.deliver, a.organ_id, pem, headers={"x-docbus-kind": CRL_KIND})
            except DocbusError as exc:  # an agency without an inbox yet gets it at its next start
                log.warning("CRL not delivered to %s: %s", a.organ_id, exc.message)
    return pem
