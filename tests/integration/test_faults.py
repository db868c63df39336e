"""Nothing lost, nothing twice: real processes, killed and restarted, against the real broker.

Counts scale with DOCBUS_SOAK_SCALE (default 1: the sizes CI runs); e.g. DOCBUS_SOAK_SCALE=10
for a longer soak by hand.  Each test prints its counts.
"""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from tests.integration.faults import AGENCIES, make_province, report, scaled, teardown

pytestmark = pytest.mark.broker


@pytest.fixture
def fault_province(tmp_path, broker_url, namespace):
    p = make_province(tmp_path, broker_url, namespace)
    yield p
    teardown(p)


def assert_exactly_once(c: dict[str, int]) -> None:
    assert c["archived"] == c["documents"] and c["archived_twice"] == 0
    assert c["delivered"] == c["deliveries_expected"] and c["delivered_twice"] == 0
    assert c["status01_back"] == c["status01_expected"] and c["status01_twice"] == 0
    assert c["receipted"] == c["documents"]  # every sender holds the data centre's receipt


def archived_count(p) -> int:
    import sqlite3

    con = sqlite3.connect(f"file:{p.settings.home / 'archive.db'}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute("select count(*) from message").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


def test_router_killed_repeatedly_while_documents_flow(fault_province) -> None:
    p = fault_province
    for code, _ in AGENCIES:
        p.start_adapter(code)
    router = p.start_router()
    n = scaled(2000)
    sender = threading.Thread(target=p.send, args=(n,))
    sender.start()
    kills, last = 0, 0
    # kill -9 every few hundred archived messages (each document and its two 01s), spread
    # over the whole run whatever its size: about 40 kills
    every = max(150, 3 * n // 40)
    while sender.is_alive() or archived_count(p) < n:
        time.sleep(0.2)
        count = archived_count(p)
        if count - last >= every:
            p.kill(router)
            kills += 1
            last = count
            router = p.start_router()
        if kills > 50:
            break
    sender.join()
    c = p.wait_complete(timeout=180)
    report(f"router kill -9 x{kills}", c)
    assert kills >= 2
    assert_exactly_once(c)


def test_broker_restart_in_the_middle_of_a_stream(fault_province) -> None:
    p = fault_province
    for code, _ in AGENCIES:
        p.start_adapter(code)
    p.start_router()
    n = scaled(300)
    sender = threading.Thread(target=p.send, args=(n,))
    sender.start()
    while archived_count(p) < n // 4:
        time.sleep(0.2)
    subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=120)
    time.sleep(2)
    subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True, timeout=120)
    subprocess.run(["rabbitmqctl", "await_startup"], check=True, capture_output=True, timeout=120)
    sender.join()
    c = p.wait_complete(timeout=240)
    report("broker restart", c)
    assert_exactly_once(c)


def test_recipient_offline_then_started(fault_province) -> None:
    p = fault_province
    offline = AGENCIES[3][0]
    for code, _ in AGENCIES[:3]:
        p.start_adapter(code)
    p.start_router()
    n = scaled(200)
    p.send(n, senders=[c for c, _ in AGENCIES[:3]])
    time.sleep(3)
    assert p.store_rows(offline, "select count(*) from inbox") in ([], [(0,)])
    p.start_adapter(offline)
    c = p.wait_complete(timeout=180)
    report("recipient offline, then started", c)
    assert_exactly_once(c)


def test_two_routers_one_killed(fault_province) -> None:
    p = fault_province
    for code, _ in AGENCIES:
        p.start_adapter(code)
    first, _second = p.start_router(), p.start_router()
    n = scaled(400)
    sender = threading.Thread(target=p.send, args=(n,))
    sender.start()
    while archived_count(p) < n // 3:
        time.sleep(0.2)
    p.kill(first)
    sender.join()
    c = p.wait_complete(timeout=180)
    report("two routers, one killed", c)
    assert_exactly_once(c)
