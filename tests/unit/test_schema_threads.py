"""Schema validation from several threads at once (four sending agencies in one process)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# In a fresh process, so the threads also compile the schemas at the same moment (libxml2 sets
# up its built-in types on first use); each thread validates its own faulty document and must
# read its own error, never another thread's.
SCRIPT = textwrap.dedent(
    """
    import threading
    from lxml import etree
    from bus import schema
    from bus.errors import SchemaViolation

    NS = "http://www.mic.gov.vn/TBT/QCVN_102_2016"
    THREADS, ROUNDS = 8, 200
    start = threading.Barrier(THREADS)
    wrong = []

    def work(n):
        tag = f"Unexpected{n}"
        doc = etree.fromstring(f'<edXML:edXML xmlns:edXML="{NS}"><edXML:{tag}/></edXML:edXML>')
        start.wait()
        for _ in range(ROUNDS):
            try:
                schema.validate(doc, "strict" if n % 2 else "lenient")
                wrong.append(f"{tag}: valid")
            except SchemaViolation as exc:
                if tag not in exc.message:
                    wrong.append(f"{tag}: {exc.message}")
            except Exception as exc:
                wrong.append(f"{tag}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(len(wrong), wrong[:3])
    """
)


def test_threads_compile_and_validate_at_once_and_each_reads_its_own_error() -> None:
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
        )
        assert done.stdout.startswith("0 []"), done.stdout + done.stderr
