"""`docbus archive restore` will not replace the archive under a running router (real RabbitMQ)."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

from bus.archive import Message
from bus.backup import routers_running
from bus.demo import RouterThread
from cli import EXIT_CONFIG, main

pytestmark = pytest.mark.broker


def test_restore_is_refused_while_a_router_consumes_the_bus(broker_province, tmp_path) -> None:
    p = broker_province
    env = {
        "DOCBUS_HOME": str(p.settings.home),
        "DOCBUS_NAMESPACE": p.settings.namespace,
        "DOCBUS_AMQP_URL": p.settings.amqp_url,
    }
    assert CliRunner().invoke(main, ["archive", "backup", str(tmp_path / "b")], env=env).exit_code == 0
    assert routers_running(p.settings) == 0
    with RouterThread(p.settings, p.archive, p.hub):
        deadline = time.monotonic() + 20  # the management API's queue statistics lag a few seconds
        while routers_running(p.settings) == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        result = CliRunner().invoke(main, ["archive", "restore", str(tmp_path / "b"), "--yes"], env=env)
    assert result.exit_code == EXIT_CONFIG, result.output
    assert f"1 router(s) consume {p.settings.namespace}.router: stop them first" in result.output
    assert not list(p.settings.home.glob("archive-replaced-*"))  # the archive in use was not touched
    assert Message.select().count() == 0
