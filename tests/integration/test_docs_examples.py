"""The examples in the docs run as they are written, against the real broker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from adapters import Adapter
from bus.demo import RouterThread
from tests.helpers import receive_until

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[2]
PC, DEPT = "000.00.00.H61", "000.00.01.H61"


def python_blocks(doc: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "docs" / doc).read_text(encoding="utf-8"), re.S)


def test_the_agency_api_example_in_deploy_md_sends_receives_and_answers(broker_province, tmp_path) -> None:
    p = broker_province
    [example] = python_blocks("DEPLOY.md")
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        DOCBUS_HOME=str(p.settings.home),
        DOCBUS_NAMESPACE=p.settings.namespace,
        DOCBUS_AMQP_URL=p.settings.amqp_url,
    )
    with RouterThread(p.settings, p.archive, p.hub):
        run = subprocess.run(
            [sys.executable, "-c", example], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 0, run.stderr
        lines = run.stdout.splitlines()
        assert lines[0].startswith(f"sent {DEPT},") and lines[0].endswith(",125/SNV-VP")
        document_id = lines[0].split()[1]
        assert lines[1:] == [f"received {document_id} Công văn V/v kết nối, liên thông phần mềm"]
        assert len(list(tmp_path.glob("*.edxml"))) == 1  # handed to "the agency's system"
        with Adapter(p.settings, DEPT) as sender:  # the People's Committee's 01 and 03 came back
            answers = receive_until(sender, 2)
    assert sorted((a.status_code, a.document_id) for a in answers) == [("01", document_id), ("03", document_id)]
