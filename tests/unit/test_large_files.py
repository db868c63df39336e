"""Large files travel in chunks beside a small signed envelope (bus.blobs), on the in-memory transport."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import time

import pytest

from adapters import Adapter
from bus import blobs, safexml
from bus.archive import AttachmentRecord, Message
from bus.blobs import ChunkStore, External
from bus.errors import MalformedEnvelope, Refused
from bus.router import WAITING_SINCE, Router, load_trust
from bus.topology import Names
from tests.helpers import alter_first_byte

PC, DEPT = "000.00.00.H61", "000.00.01.H61"
SIZE = 2 * blobs.CHUNK_BYTES + 12345  # three chunks, the last one short


def big_file(tmp_path, size: int = SIZE):
    path = tmp_path / "ban-do-quy-hoach.tif"
    path.write_bytes(os.urandom(size))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def send_big(p, tmp_path, number: str, size: int = SIZE, subject: str = "Bản đồ"):
    """DEPT sends PC one large file of ``size`` bytes; (the send result, the file's digest)."""
    path, digest = big_file(tmp_path, size)
    with Adapter(p.settings, DEPT, transport=p.transport) as dept:
        return dept.send([PC], subject=subject, number=number, notation="SNV", files=[path]), digest


def router_of(p) -> Router:
    return Router(p.settings, p.transport, p.archive, load_trust(p.settings), p.hub)


def queue(p, name: str):
    return p.transport.queues[name]


def test_large_file_goes_in_chunks_and_arrives_intact(small_inline, tmp_path) -> None:
    p = small_inline
    sent, digest = send_big(p, tmp_path, "7", subject="Bản đồ quy hoạch")
    names = Names(p.settings.namespace)
    chunks = list(queue(p, names.router_chunks))
    envelope = list(queue(p, names.router_queue))
    assert len(chunks) == 3 and max(len(c.body) for c in chunks) <= blobs.CHUNK_BYTES
    assert len(envelope) == 1 and len(envelope[0].body) < 20_000  # the file is not in the envelope
    assert f'sha256="{digest}"'.encode() in envelope[0].body  # ... its digest is, signed
    router_of(p).run()
    record = Message.get(Message.document_id == sent.document_id)
    assert record.state == "accepted"
    att = AttachmentRecord.get(AttachmentRecord.message == record)
    assert (att.sha256, att.size) == (digest, SIZE)
    assert ChunkStore(p.settings.home / "blobs").has(digest)  # kept beside the archive
    with Adapter(p.settings, PC, transport=p.transport) as pc:
        got = pc.receive()
        assert [g.document_id for g in got] == [sent.document_id]
        doc = pc.document(sent.document_id)
        assert doc.attachments[0].path is not None
        assert hashlib.sha256(doc.attachments[0].path.read_bytes()).hexdigest() == digest
        saved = pc.save_attachments(sent.document_id, tmp_path / "saved")
        assert hashlib.sha256(saved[0].read_bytes()).hexdigest() == digest


def test_chunks_that_do_not_make_the_signed_digest_are_refused(small_inline, tmp_path) -> None:
    p = small_inline
    sent, _ = send_big(p, tmp_path, "8")
    names = Names(p.settings.namespace)
    chunk = queue(p, names.router_chunks)[1]
    chunk.body = bytes([chunk.body[0] ^ 1]) + chunk.body[1:]  # one flipped bit in transit
    router_of(p).run()
    record = Message.get(Message.document_id == sent.document_id)
    assert (record.state, record.reason) == ("quarantined", "attachment-digest")
    assert not queue(p, names.inbox(PC))  # nothing delivered


def test_envelope_waits_for_its_chunks_then_goes(small_inline, tmp_path) -> None:
    p = small_inline
    sent, _ = send_big(p, tmp_path, "9")
    names = Names(p.settings.namespace)
    held = list(queue(p, names.router_chunks))
    queue(p, names.router_chunks).clear()  # another router still holds them
    router = router_of(p)
    router.process_batch([router.submission(queue(p, names.router_queue).popleft())])
    assert not Message.select().where(Message.document_id == sent.document_id).exists()
    parked = queue(p, names.router_wait)
    assert len(parked) == 1  # parked for a moment, not dropped
    queue(p, names.router_queue).append(parked.popleft())  # what the wait queue's TTL does on RabbitMQ
    queue(p, names.router_chunks).extend(held)
    router.run()
    rec = Message.get(Message.document_id == sent.document_id)
    assert rec.state == "accepted", (rec.reason, rec.reason_detail)


def test_chunk_headers_out_of_bounds_are_refused(tmp_path) -> None:
    store = ChunkStore(tmp_path)
    ext = External("a" * 64, 10, 4)
    good = blobs.chunk_headers(ext, 0)
    with pytest.raises(MalformedEnvelope):
        store.put("000.00.01.H61", good | {"x-docbus-index": 3}, b"1234")  # index past the end
    with pytest.raises(MalformedEnvelope):
        store.put("000.00.01.H61", good, b"12345")  # longer than a chunk
    with pytest.raises(MalformedEnvelope):
        External("a" * 64, blobs.MAX_FILE_BYTES + 1, 4)
    # AMQP headers are the sender's to fill: a double, a table, a timestamp where an integer belongs
    for odd in (float("inf"), float("nan"), {"a": 1}, dt.datetime(2026, 11, 28), None, "3", b"x"):
        with pytest.raises(MalformedEnvelope) as refused:
            store.put("000.00.01.H61", good | {"x-docbus-index": odd}, b"1234")
        assert refused.value.reason == "bad-chunk", odd
    with pytest.raises(Refused) as info:
        store.assemble("000.00.01.H61", ext)
    assert info.value.reason == "attachment-incomplete"


def test_external_reference_is_inside_the_signature(small_inline, tmp_path) -> None:
    """Changing the digest the envelope names breaks the sender's signature."""
    from bus.envelope import open_envelope

    p = small_inline
    _, digest = send_big(p, tmp_path, "10", 100_000)
    body = queue(p, Names(p.settings.namespace).router_queue)[0].body
    forged = body.replace(digest.encode(), ("0" * 64).encode())
    safexml.parse(forged)
    with pytest.raises(Refused) as info:
        open_envelope(forged, load_trust(p.settings))
    assert info.value.reason == "signature-invalid"


def test_archive_verify_rehashes_large_files(small_inline, tmp_path) -> None:
    from bus.audit import verify_archive

    p = small_inline
    _, digest = send_big(p, tmp_path, "11", 200_000)
    router_of(p).run()
    files = ChunkStore(p.settings.home / "blobs")
    trust = load_trust(p.settings)
    assert verify_archive(trust, files=files).ok
    kept = files.file(digest)
    alter_first_byte(kept)
    bad = verify_archive(trust, files=files)
    assert not bad.ok and "altered" in bad.first_problem.problem
    kept.unlink()
    assert "missing" in verify_archive(trust, files=files).first_problem.problem


def test_stale_staged_chunks_are_swept(tmp_path) -> None:
    store = ChunkStore(tmp_path)
    ext = External("b" * 64, 10, 4)
    store.put("000.00.01.H61", blobs.chunk_headers(ext, 0), b"1234")
    assert store.sweep(older_than_seconds=3600) == 0  # fresh: kept
    old = tmp_path / "incoming" / "000.00.01.H61" / ext.sha256 / "0000000"
    os.utime(old, (0, 0))
    assert store.sweep(older_than_seconds=3600) == 1
    assert not (tmp_path / "incoming" / "000.00.01.H61" / ext.sha256).exists()


def test_verify_checks_the_large_file_beside_an_exported_or_received_envelope(small_inline, tmp_path) -> None:
    """The envelope signs only the file's digest: `docbus verify` finds the file where `archive
    export` and the drop folder put it and says so; a different file or none is not OK."""
    import json

    from click.testing import CliRunner

    from adapters import drop
    from cli import main

    p = small_inline
    sent, digest = send_big(p, tmp_path, "12", 200_000)
    router_of(p).run()
    env = {"DOCBUS_HOME": str(p.settings.home), "DOCBUS_NAMESPACE": p.settings.namespace}
    run = CliRunner().invoke

    def verify(path) -> tuple[int, dict]:
        res = run(main, ["verify", "--json", str(path)], env=env)
        return res.exit_code, json.loads(res.output)[0]

    exported = run(main, ["archive", "export", sent.document_id, str(tmp_path / "exp")], env=env).output.split()
    envelope, copy = exported[0], tmp_path / "exp" / "ban-do-quy-hoach.tif"
    assert exported[1] == str(copy)
    code, out = verify(envelope)
    assert code == 0 and out["large_files"] == [str(copy)]
    alter_first_byte(copy)
    code, out = verify(envelope)
    assert (code, out["reason"]) == (1, "attachment-digest")
    copy.unlink()  # nothing beside it: the data centre's own copy is checked instead
    kept = ChunkStore(p.settings.home / "blobs").file(digest)
    code, out = verify(envelope)
    assert code == 0 and out["large_files"] == [str(kept)]
    kept.unlink()  # ... then the sending agency's, on a machine that holds one
    senders = ChunkStore(p.settings.agency_home(DEPT) / "files").file(digest)
    code, out = verify(envelope)
    assert code == 0 and out["large_files"] == [str(senders)]
    senders.unlink()
    code, out = verify(envelope)
    assert (code, out["reason"]) == (1, "attachment-missing") and "ban-do-quy-hoach.tif" in out["detail"]

    dropped = []  # a recipient's drop folder, as `docbus adapter run --drop` fills it

    def hand_off(item, msg, raw) -> None:
        dropped.append(drop.write(tmp_path / "drop", item.digest, msg, raw))

    with Adapter(p.settings, PC, transport=p.transport, on_receive=hand_off) as pc:
        pc.receive()
    [written] = dropped
    code, out = verify(written)
    assert code == 0 and out["large_files"] == [str(written.with_name(f"{written.stem}-ban-do-quy-hoach.tif"))]


def test_files_each_small_enough_but_too_large_together_go_partly_in_chunks(memory_province, tmp_path) -> None:
    """Three 1.9 MB scans: each under the inline limit, together over an envelope's bound."""
    p = memory_province
    files = []
    for i in range(3):
        files.append(tmp_path / f"trang-{i}.pdf")
        files[-1].write_bytes(os.urandom(1_900_000))
    with Adapter(p.settings, DEPT, transport=p.transport) as dept:
        sent = dept.send([PC], subject="Hồ sơ ba tệp", number="31", notation="SNV", files=files)
    [envelope] = list(queue(p, Names(p.settings.namespace).router_queue))
    assert len(envelope.body) <= p.settings.limits.max_envelope_bytes
    router_of(p).run()
    assert Message.get(Message.document_id == sent.document_id).state == "accepted"
    with Adapter(p.settings, PC, transport=p.transport) as pc:
        pc.receive()
        got = pc.document(sent.document_id).attachments
    assert [a.name for a in got] == [f.name for f in files]
    assert [a.data for a in got] == [f.read_bytes() for f in files]
    assert 1 <= sum(a.external is not None for a in got) < 3  # the largest by reference, the rest inside


@pytest.mark.parametrize("claimed", ["abc", float("inf"), 1, 10**12])
def test_a_waiting_time_the_sender_wrote_is_not_believed(small_inline, tmp_path, claimed) -> None:
    """Only the router's own wait queue says since when an envelope has waited: a sender's
    header (nonsense, long ago, far in the future) neither breaks the router, nor refuses the
    envelope at once, nor keeps it waiting for ever."""
    p = small_inline
    sent, _ = send_big(p, tmp_path, "11")
    names = Names(p.settings.namespace)
    queue(p, names.router_chunks).clear()  # still on their way
    delivery = queue(p, names.router_queue).popleft()
    delivery.headers = dict(delivery.headers or {}) | {WAITING_SINCE: claimed}
    router = router_of(p)
    out = router.process_batch([router.submission(delivery)])[0]
    assert (out.state, out.reason) == ("waiting", "attachment-incomplete")
    parked = queue(p, names.router_wait)[0]
    assert abs(parked.headers[WAITING_SINCE] - time.time()) < 60  # the clock starts now
    assert not Message.select().where(Message.document_id == sent.document_id).exists()
