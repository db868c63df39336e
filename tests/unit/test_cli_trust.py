"""docbus ca / cert commands on a province's files (the broker is not needed for these)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from cli import main
from signing.ca import CertificateAuthority, cert_pem, key_pem

PC = "000.00.00.H61"


def env_for(p) -> dict[str, str]:
    return {
        "DOCBUS_HOME": str(p.settings.home),
        "DOCBUS_NAMESPACE": p.settings.namespace,
        "DOCBUS_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/%2F",
    }


def test_cert_list_rotate_revoke(memory_province) -> None:
    env = env_for(memory_province)
    runner = CliRunner()
    listed = json.loads(runner.invoke(main, ["cert", "list", "--json"], env=env).output)
    assert {c["organ_id"] for c in listed} == {"000.00.00.H61", "000.00.01.H61", "000.00.02.H61"}
    assert all(c["state"] == "active" and c["days_left"] > 700 and not c["expiring"] for c in listed)

    rotated = runner.invoke(main, ["cert", "rotate", PC, "--overlap-days", "3"], env=env)
    assert rotated.exit_code == 0 and "valid until" in rotated.output
    states = sorted(
        c["state"]
        for c in json.loads(runner.invoke(main, ["cert", "list", "--json"], env=env).output)
        if c["organ_id"] == PC
    )
    assert states == ["active", "retiring"]

    revoked = runner.invoke(main, ["cert", "revoke", PC, "--reason", "lộ khóa ký"], env=env)
    assert revoked.exit_code == 0, revoked.output
    assert revoked.output.count(f"revoked {PC}") == 2 and "not published" in revoked.output
    assert (memory_province.settings.home / "ca" / "crl.pem").exists()
    table = runner.invoke(main, ["cert", "list"], env=env).output
    assert "revoked" in table and "Days left" in table

    again = runner.invoke(main, ["cert", "revoke", PC, "--reason", "x"], env=env)
    assert again.exit_code == 3 and "no unrevoked certificate" in again.output


def test_cert_list_flags_certificates_expiring_within_30_days(memory_province) -> None:
    import datetime as dt

    from bus.archive import Certificate, utcnow

    Certificate.update(not_after=utcnow() + dt.timedelta(days=12)).where(Certificate.organ_id == PC).execute()
    out = CliRunner().invoke(main, ["cert", "list"], env=env_for(memory_province)).output
    line = next(ln for ln in out.splitlines() if ln.startswith(PC))
    assert "EXPIRES SOON" in line


def test_ca_import_adopts_an_existing_ca_and_refuses_a_non_ca(tmp_path) -> None:
    existing = CertificateAuthority.create(tmp_path / "old")
    (tmp_path / "ca.pem").write_bytes(cert_pem(existing.cert))
    (tmp_path / "ca.key").write_bytes(key_pem(existing.key))
    env = {"DOCBUS_HOME": str(tmp_path / "home")}
    ok = CliRunner().invoke(main, ["ca", "import", str(tmp_path / "ca.pem"), str(tmp_path / "ca.key")], env=env)
    assert ok.exit_code == 0 and "imported" in ok.output
    assert CertificateAuthority.load(tmp_path / "home").cert == existing.cert
    twice = CliRunner().invoke(main, ["ca", "import", str(tmp_path / "ca.pem"), str(tmp_path / "ca.key")], env=env)
    assert twice.exit_code == 3 and "already exists" in twice.output
    other = CertificateAuthority.create(tmp_path / "other")
    (tmp_path / "wrong.key").write_bytes(key_pem(other.key))
    mismatch = CliRunner().invoke(
        main,
        ["ca", "import", str(tmp_path / "ca.pem"), str(tmp_path / "wrong.key")],
        env={"DOCBUS_HOME": str(tmp_path / "h2")},
    )
    assert mismatch.exit_code == 3 and "is not the key of" in mismatch.output


def test_init_gives_an_older_home_its_seal_key_only_where_the_ca_key_is(memory_province) -> None:
    """A home made before hub trace seals gets its seal key from `docbus init`; on a router
    host without the CA key, init says where to make it instead of failing obscurely."""
    import shutil

    import pytest

    from bus import province
    from bus.envelope import append_hub_trace, open_envelope
    from bus.errors import ConfigError
    from bus.router import load_trust
    from tests.helpers import hub_seal, signed_edoc

    p = memory_province
    seal_dir = p.settings.home / "hub" / "seal"
    shutil.rmtree(seal_dir)
    province.init(p.settings, p.archive, None)
    data = append_hub_trace(signed_edoc(p.settings, "000.00.01.H61", [PC]), hub_seal(p.settings))
    assert open_envelope(data, load_trust(p.settings), from_hub=True).message.traces[-1].organ_id
    shutil.rmtree(seal_dir)
    ca_key = CertificateAuthority.paths(p.settings.home)[1]
    ca_key.rename(ca_key.with_suffix(".away"))
    with pytest.raises(ConfigError, match="no CA key to issue it"):
        province.init(p.settings, p.archive, None)


def test_init_renews_a_data_centre_key_before_it_ends_and_health_says_what_ends_soon(memory_province) -> None:
    """When the seal key's certificate ends, every adapter refuses every delivery: `docbus init`
    renews it within 30 days of its end, and `docbus health` lists it (and an agency's own)
    until then, with what renews each."""
    import datetime as dt

    from bus import health, province
    from bus.archive import Certificate, utcnow
    from bus.envelope import append_hub_trace, open_envelope
    from bus.router import load_trust
    from signing import seal
    from signing.ca import load_cert, new_key
    from tests.helpers import hub_seal, signed_edoc

    p = memory_province
    home, hub_id = p.settings.home, p.settings.hub_organ_id
    key = new_key(seal.POLICY)
    short = CertificateAuthority.load(home).issue(hub_id, "Trung tâm", key.public_key(), days=10)
    (home / "hub" / "seal" / "key.pem").write_bytes(key_pem(key))
    (home / "hub" / "seal" / "cert.pem").write_bytes(cert_pem(short))
    now = utcnow()
    Certificate.update(not_after=now + dt.timedelta(days=5)).where(Certificate.organ_id == PC).execute()

    found = {e.holder: e for e in health.expiring_certificates(home, now)}
    assert set(found) == {"hub seal", PC}
    assert found["hub seal"].days_left in (9, 10) and "docbus init" in found["hub seal"].remedy
    problems = health.Health(1, 0, 0, (), 24, tuple(found.values())).problems()
    assert any(f"docbus cert rotate {PC}" in line and "ends in 5 day(s)" in line for line in problems)

    renewed, _ = province.init(p.settings, p.archive, None)
    assert renewed.renewed == ("seal",)
    ends = load_cert(hub_seal(p.settings).cert_pem).not_valid_after_utc
    assert ends > dt.datetime.now(dt.UTC) + dt.timedelta(days=700)
    assert [e.holder for e in health.expiring_certificates(home, now)] == [PC]
    data = append_hub_trace(signed_edoc(p.settings, "000.00.01.H61", [PC]), hub_seal(p.settings))
    assert open_envelope(data, load_trust(p.settings), from_hub=True).relayed
    assert province.init(p.settings, p.archive, None)[0].renewed == ()
