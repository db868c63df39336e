"""A new agency is refused, with the setting to change, where its queues would leave RabbitMQ
without file handles (a node in that state answers no connection: the whole bus stops)."""

from __future__ import annotations

import pytest

from bus import province, topology
from bus.archive import Agency
from bus.brokeradmin import BrokerAdmin, FileHandleBudget
from bus.errors import ConfigError
from bus.topology import Names

pytestmark = pytest.mark.broker
NEW = "000.00.07.H61"


def test_the_budget_is_read_from_the_broker(broker_province) -> None:
    budget = BrokerAdmin(broker_province.settings.amqp_url).file_handles()
    assert budget.limit >= 1024  # the node's open-file limit
    assert budget.queues >= 5  # at least this province's core (connections: the management stats lag seconds)


def test_an_agency_that_would_exhaust_the_broker_is_refused_and_nothing_is_left_behind(
    broker_province, monkeypatch
) -> None:
    p = broker_province
    real = BrokerAdmin(p.settings.amqp_url).file_handles()
    room = real.limit - FileHandleBudget.RESERVED - real.needed()  # what the broker really has left
    assert room > 6 + 100, "this broker is itself too close to its open-file limit"
    # the same broker with room for one queue and a few connections: the agency's two queues do not fit
    tight = FileHandleBudget(
        limit=real.needed() + FileHandleBudget.RESERVED + 5, queues=real.queues, connections=real.connections
    )
    monkeypatch.setattr(BrokerAdmin, "file_handles", lambda self: tight)
    with pytest.raises(ConfigError, match="LimitNOFILE=65536"):
        province.add_agency(p.settings, p.archive, p.transport, NEW, "UBND xã Mới")
    assert Agency.get_or_none(Agency.organ_id == NEW) is None
    assert not (p.settings.agency_home(NEW) / "key.pem").exists()
    assert _queues_of(p, NEW) == []

    monkeypatch.setattr(BrokerAdmin, "file_handles", lambda self: real)  # the broker as it is: room enough
    try:
        province.add_agency(p.settings, p.archive, p.transport, NEW, "UBND xã Mới")
        assert Agency.get_or_none(Agency.organ_id == NEW) is not None
        assert sorted(_queues_of(p, NEW)) == sorted(Names(p.settings.namespace).inboxes(NEW))
    finally:
        names = Names(p.settings.namespace)
        province.remove_broker_users(p.settings, p.archive)
        p.transport.delete(topology.agency(names, NEW))


def _queues_of(p, organ_id: str) -> list[str]:
    inbox = Names(p.settings.namespace).inbox(organ_id)
    listed = BrokerAdmin(p.settings.amqp_url)._call("GET", "/queues?columns=name") or []
    return [q["name"] for q in listed if q["name"].startswith(inbox)]
