"""Setting up a province: the CA, the hub's identity, the topology, the agency registry.

Every function here is idempotent: ``docbus init`` twice changes nothing, and adding an
agency that exists re-declares its inbox and keeps its certificate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bus import topology
from bus.archive import Agency, Archive
from bus.config import Settings
from bus.errors import ConfigError
from bus.topology import Names
from bus.transport import Transport
from signing.ca import CertificateAuthority, load_cert
from signing.identity import Identity

# QCVN 102:2016 OrganId: V1V2V3.Z1Z2.Y1Y2.MX1X2
QCVN_ORGAN_ID = re.compile(r"^\d{3}\.\d{2}\.\d{2}\.[A-Z]\d{2}$")


@dataclass
class Province:
    settings: Settings
    ca: CertificateAuthority
    hub: Identity


def init(settings: Settings, archive: Archive, transport: Transport | None) -> tuple[Province, bool]:
    """Create (or load) the CA and the hub identity, and apply the topology. Returns (province, created)."""
    created = not CertificateAuthority.exists(settings.home)
    ca = (
        CertificateAuthority.create(settings.home)
        if created
        else CertificateAuthority.load(settings.home, need_key=False)
    )
    hub_dir = settings.home / "hub"
    if (hub_dir / "key.pem").exists():
        hub = Identity.load(settings.hub_organ_id, hub_dir)
    else:
        if ca.key is None:
            ca = CertificateAuthority.load(settings.home)
        hub = Identity.issue(ca, settings.hub_organ_id, settings.hub_name, hub_dir)
    if transport is not None:
        apply_topology(settings, archive, transport)
    return Province(settings, ca, hub), created


def apply_topology(settings: Settings, archive: Archive, transport: Transport) -> topology.Topology:
    names = Names(settings.namespace)
    full = topology.core(names)
    for a in archive.agencies():
        full = full + topology.agency(names, a.organ_id)
    transport.apply(full)
    return full


def add_agency(
    settings: Settings,
    archive: Archive,
    transport: Transport | None,
    organ_id: str,
    name: str,
    parent: str | None = None,
) -> tuple[Agency, bool]:
    """Register an agency, issue its key and certificate, declare its inbox. Returns (agency, created)."""
    if not QCVN_ORGAN_ID.match(organ_id):
        raise ConfigError(f"{organ_id!r} is not a QCVN 102:2016 OrganId (like 000.00.00.H61)")
    if organ_id == settings.hub_organ_id:
        raise ConfigError(f"{organ_id} is the data centre's own OrganId")
    if parent is not None:
        archive.agency(parent)  # raises NotFound with a clear message
    folder = settings.agency_home(organ_id)
    if (folder / "key.pem").exists():
        ident = Identity.load(organ_id, folder)
        created = False
    else:
        ident = Identity.issue(CertificateAuthority.load(settings.home), organ_id, name, folder)
        created = True
    cert = load_cert(ident.cert_pem)
    agency = archive.add_agency(organ_id, name, ident.cert_pem.decode(), format(cert.serial_number, "x"), parent)
    if transport is not None:
        transport.apply(topology.agency(Names(settings.namespace), organ_id))
    return agency, created
