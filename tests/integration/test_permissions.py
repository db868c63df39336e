"""Logged in as agency A, nothing of agency B's is reachable: proven against the real broker."""

from __future__ import annotations

import pytest

from bus import province
from bus.errors import BrokerUnavailable, DocbusError
from bus.topology import Binding, Names, Queue, Topology
from bus.transport import AmqpTransport, DeliveryFailed
from tests.helpers import connect_as, signed_edoc, user_of

pytestmark = pytest.mark.broker
PC, DEPT = "000.00.00.H61", "000.00.01.H61"


@pytest.fixture
def names(broker_province) -> Names:
    return Names(broker_province.settings.namespace)


def attempt(p, fn) -> DocbusError:
    t = connect_as(p, DEPT)
    try:
        with pytest.raises(DocbusError) as info:
            fn(t)
        return info.value
    finally:
        t.close()


def test_agency_can_submit_with_its_own_key_and_read_its_own_inbox(broker_province, names) -> None:
    p = broker_province
    t = connect_as(p, DEPT)
    try:
        t.publish(names.submit, f"edoc.{DEPT}", signed_edoc(p.settings, DEPT, [PC]), user_id=user_of(p, DEPT))
        assert t.get(names.inbox(DEPT)) is None  # readable (and empty)
    finally:
        t.close()


def test_cannot_read_another_agencys_inbox(broker_province, names) -> None:
    err = attempt(broker_province, lambda t: t.get(names.inbox(PC)))
    assert err.reason == "access-refused"


def test_cannot_publish_with_another_agencys_routing_key(broker_province, names) -> None:
    p = broker_province
    err = attempt(p, lambda t: t.publish(names.submit, f"edoc.{PC}", b"<x/>", user_id=user_of(p, DEPT)))
    assert isinstance(err, DeliveryFailed) and "ACCESS_REFUSED" in str(err)


def test_cannot_publish_with_another_agencys_user_id(broker_province, names) -> None:
    p = broker_province
    err = attempt(p, lambda t: t.publish(names.submit, f"edoc.{DEPT}", b"<x/>", user_id=user_of(p, PC)))
    assert isinstance(err, DeliveryFailed) and "user_id" in str(err)


def test_cannot_bypass_the_router(broker_province, names) -> None:
    p = broker_province
    err = attempt(p, lambda t: t.publish(names.deliver, PC, b"<x/>", user_id=user_of(p, DEPT)))
    assert isinstance(err, DeliveryFailed) and "ACCESS_REFUSED" in str(err)


def test_cannot_declare_delete_or_bind(broker_province, names) -> None:
    p = broker_province
    declare = attempt(
        p, lambda t: t.apply(Topology(queues=(Queue(f"{names.namespace}.spy", {"x-queue-type": "quorum"}),)))
    )
    delete = attempt(p, lambda t: t.delete(Topology(queues=(Queue(names.inbox(PC)),))))
    delete_own = attempt(p, lambda t: t.delete(Topology(queues=(Queue(names.inbox(DEPT)),))))
    bind = attempt(p, lambda t: t.apply(Topology(bindings=(Binding(names.deliver, names.inbox(DEPT), PC),))))
    assert all("ACCESS_REFUSED" in str(e) for e in (declare, delete, delete_own, bind))


def test_disable_cuts_access_at_once_and_keeps_the_mail(broker_province, names) -> None:
    p = broker_province
    admin = AmqpTransport(p.settings.amqp_url)
    live = connect_as(p, DEPT)
    try:
        admin.publish(names.deliver, DEPT, b"<waiting/>")
        province.set_enabled(p.settings, p.archive, DEPT, False)
        with pytest.raises(DocbusError):
            live.get(names.inbox(DEPT))  # its open connection was closed
        with pytest.raises(BrokerUnavailable) as info:
            connect_as(p, DEPT)
        assert info.value.reason == "access-refused"
        waiting = admin.get(names.inbox(DEPT))
        assert waiting is not None and waiting.body == b"<waiting/>"
        waiting.reject(requeue=True)
        province.set_enabled(p.settings, p.archive, DEPT, True)
        back = connect_as(p, DEPT)
        got = back.get(names.inbox(DEPT))
        assert got is not None and got.body == b"<waiting/>"
        got.ack()
        back.close()
    finally:
        live.close()
        admin.close()
