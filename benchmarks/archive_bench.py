"""Archive search at scale: load N synthetic archived documents, time the queries people run.

The documents are written straight into the archive tables (metadata, recipients, statuses,
folded search text and its index), the way a year of traffic would leave them; their bytes
are not stored, because the queries never read them.  Each query kind is run many times
with varied parameters, through the same code ``docbus archive search`` uses (one page of
20 results and the total count).
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Callable
from typing import Any

from benchmarks.stats import summary_ms, timed
from bus import search
from bus.archive import Archive, Message, Recipient, StatusEvent

SUBJECTS = [
    "Công văn V/v kết nối, liên thông phần mềm quản lý văn bản",
    "Quyết định ban hành Đề án 112 về trao đổi văn bản điện tử",
    "Báo cáo tình hình kinh tế - xã hội tháng",
    "Kế hoạch triển khai chuyển đổi số năm",
    "Tờ trình V/v phê duyệt dự toán kinh phí",
    "Thông báo kết luận cuộc họp giao ban",
    "Giấy mời dự hội nghị tổng kết công tác",
    "Công điện về việc phòng chống bão lũ",
    "Hướng dẫn thực hiện cải cách hành chính",
    "Chỉ thị về tăng cường kỷ luật, kỷ cương hành chính",
]
PLACES = ["Long Hồ", "Mang Thít", "Vũng Liêm", "Tam Bình", "Trà Ôn", "Bình Minh", "Bình Tân", "Vĩnh Long"]
TYPES = ["Công văn", "Quyết định", "Báo cáo", "Kế hoạch", "Tờ trình", "Thông báo", "Giấy mời", "Công điện"]
QUERIES_TEXT = [
    "cong van ket noi",
    "quyet dinh de an",
    "bao cao kinh te",
    "phong chong bao lu",
    "cai cach hanh chinh vung liem",
]


def agencies(n: int = 150) -> list[str]:
    return [f"000.{i // 100:02d}.{i % 100:02d}.H61" for i in range(n)]


def load(
    archive: Archive, n: int, *, seed: int = 7, batch: int = 5000, progress: Callable[[int], None] | None = None
) -> float:
    """Insert ``n`` synthetic documents; returns the seconds it took."""
    rng = random.Random(seed)
    orgs = agencies()
    start = dt.datetime(2025, 1, 1)
    span = 700 * 86400

    def work() -> None:
        done = 0
        while done < n:
            size = min(batch, n - done)
            messages, recips, statuses = [], [], []
            for i in range(done, done + size):
                sender = rng.choice(orgs)
                subject = f"{rng.choice(SUBJECTS)} {rng.choice(PLACES)} số {i}"
                type_name = rng.choice(TYPES)
                received = start + dt.timedelta(seconds=span * i / n + rng.random())  # arrival order, as archived
                doc_id = f"{sender},{received:%Y/%m/%d},{i}/VB"
                messages.append(
                    {
                        "digest": uuid.UUID(int=rng.getrandbits(128)).hex + uuid.UUID(int=rng.getrandbits(128)).hex,
                        "kind": "edoc",
                        "state": "accepted",
                        "sender": sender,
                        "document_id": doc_id,
                        "code_number": str(i),
                        "code_notation": "VB",
                        "type_name": type_name,
                        "subject": subject,
                        "priority": rng.choice((0, 0, 0, 0, 1, 2, 3)),
                        "received_at": received,
                        "size": 5000,
                        "search_text": search.sender_token(sender) + " " + search.folded(subject, type_name, f"{i}/VB"),
                    }
                )
            with archive.write():
                first = Message.insert_many(messages).execute()
                ids = _ids(first, size)
                for mid, m in zip(ids, messages, strict=True):
                    for r in rng.sample(orgs, rng.choice((1, 1, 2, 3))):
                        recips.append({"message": mid, "organ_id": r, "delivered_at": m["received_at"]})
                        if rng.random() < 0.8:
                            statuses.append(
                                {
                                    "message": mid,
                                    "document_id": m["document_id"],
                                    "edoc_sender": m["sender"],
                                    "organ_id": r,
                                    "status_code": rng.choice(("01", "03", "03", "05", "06")),
                                    "received_at": m["received_at"] + dt.timedelta(hours=2),
                                }
                            )
                Recipient.insert_many(recips).execute()
                StatusEvent.insert_many(statuses).execute()
            done += size
            if progress is not None:
                progress(size)

    seconds, _ = timed(work)
    archive.database.execute_sql("ANALYZE")  # what a nightly 'PRAGMA optimize' keeps up to date
    return seconds


def _ids(insert_result: Any, size: int) -> list[int]:
    """Ids of the rows one insert_many just made (last id on SQLite, a cursor on PostgreSQL)."""
    if isinstance(insert_result, int):
        return list(range(insert_result - size + 1, insert_result + 1))
    return [row[0] for row in insert_result]


def measure(queries: int = 200, *, seed: int = 11) -> dict[str, Any]:
    """Time each kind of search ``queries`` times; returns percentiles per kind."""
    rng = random.Random(seed)
    orgs = agencies()
    kinds: dict[str, Callable[[], search.Filters]] = {
        "sender + month": lambda: search.Filters(
            sender=rng.choice(orgs), since=dt.date(2025, rng.randint(1, 12), 1), until=dt.date(2025, 12, 31)
        ),
        "recipient": lambda: search.Filters(recipient=rng.choice(orgs)),
        "number": lambda: search.Filters(number=f"{rng.randrange(1000)}/VB"),
        "type + priority": lambda: search.Filters(type_name=rng.choice(TYPES), priority=rng.choice((1, 2, 3))),
        "status 06": lambda: search.Filters(status="06", sender=rng.choice(orgs)),
        "full text": lambda: search.Filters(text=rng.choice(QUERIES_TEXT)),
        "full text + sender": lambda: search.Filters(text=rng.choice(QUERIES_TEXT), sender=rng.choice(orgs)),
    }
    out: dict[str, Any] = {}
    for name, make in kinds.items():
        samples = []
        for _ in range(queries):
            f = make()
            seconds, _ = timed(lambda f=f: search.search(f, page=1, per_page=20))
            samples.append(seconds)
        out[name] = summary_ms(samples)
    return out
