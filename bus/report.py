"""The monthly report the directive asks for (item 8): per agency and per district.

For a month (Vietnam time): documents sent and received, the share of received documents
answered with status 01 within one working day and with 03 within three, refused
submissions by reason, and received documents still unanswered (no 03 yet).  Working days
are Monday to Friday.  Formats: a table for people, CSV and JSON for machines, and one
self-contained HTML file with charts (inline SVG, no network) to attach to the report.
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import json
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bus.archive import Agency, Message, Recipient, StatusEvent
from bus.edxml import VN_TZ, vn_clock, vn_day_start

REASONS_VI = {
    "no-electronic-file": "không có tệp điện tử",
    "signature-invalid": "chữ ký không hợp lệ",
    "secret-document": "văn bản mật",
    "unknown-recipient": "nơi nhận không tồn tại",
}


@dataclass
class Row:
    organ_id: str
    name: str
    unit: str  # the department or district it belongs to (itself at that level)
    sent: int = 0
    received: int = 0
    arrived_on_time: int = 0  # 01 within one working day
    accepted_on_time: int = 0  # 03 within three working days
    unanswered: int = 0
    refused: int = 0
    refused_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def arrived_share(self) -> float | None:
        return self.arrived_on_time / self.received if self.received else None

    @property
    def accepted_share(self) -> float | None:
        return self.accepted_on_time / self.received if self.received else None

    def add(self, other: Row) -> None:
        for f in ("sent", "received", "arrived_on_time", "accepted_on_time", "unanswered", "refused"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        for k, v in other.refused_by_reason.items():
            self.refused_by_reason[k] = self.refused_by_reason.get(k, 0) + v

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["arrived_within_1_working_day"] = self.arrived_share
        d["accepted_within_3_working_days"] = self.accepted_share
        return d


@dataclass
class Report:
    month: str
    agencies: list[Row]
    units: list[Row]
    generated_at: str
    days_off: tuple[str, ...] = ()  # holidays that did not count as working days (YYYY-MM-DD)


def add_working_days(start: dt.datetime, days: int, holidays: Collection[dt.date] = ()) -> dt.datetime:
    """``start`` plus ``days`` working days, on ``start``'s own clock: Saturday, Sunday and
    ``holidays`` (Tết, Quốc khánh, … as the province observes them) do not count."""

    def off(t: dt.datetime) -> bool:
        return t.weekday() >= 5 or t.date() in holidays

    t = start
    while off(t):  # something delivered on a day off counts from the next working day's 00:00
        t = (t + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    added = 0
    while added < days:
        t += dt.timedelta(days=1)
        if not off(t):
            added += 1
    return t


def month_bounds(month: str) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of a YYYY-MM month in Vietnam time, as naive UTC (how the archive stores time)."""
    year, mon = (int(x) for x in month.split("-"))
    return vn_day_start(dt.date(year, mon, 1)), vn_day_start(dt.date(year + (mon == 12), mon % 12 + 1, 1))


def _units(agencies: list[Agency]) -> dict[str, str]:
    """Each agency's unit: the ancestor just below the root (the province), or itself."""
    parent = {a.organ_id: a.parent for a in agencies}
    unit = {}
    for a in agencies:
        node = a.organ_id
        while (up := parent.get(node)) and parent.get(up):
            node = up
        unit[a.organ_id] = node
    return unit


def monthly(month: str, agency: str | None = None, holidays: Collection[dt.date] = ()) -> Report:
    """The month's figures per agency and per unit; ``holidays``: days off besides weekends."""
    start, end = month_bounds(month)
    agencies = list(Agency.select().order_by(Agency.organ_id))
    names = {a.organ_id: a.name for a in agencies}
    unit_of = _units(agencies)
    rows = {a.organ_id: Row(a.organ_id, a.name, unit_of[a.organ_id]) for a in agencies}
    in_month = (Message.received_at >= start) & (Message.received_at < end)
    for m in Message.select(Message.sender).where(in_month & (Message.kind == "edoc") & (Message.state == "accepted")):
        if m.sender in rows:
            rows[m.sender].sent += 1
    refusals = Message.select(Message.sender, Message.reason).where(
        in_month & (Message.state == "quarantined") & (Message.kind != "status")
    )
    for m in refusals:
        if m.sender in rows:
            r = rows[m.sender]
            r.refused += 1
            r.refused_by_reason[m.reason or "?"] = r.refused_by_reason.get(m.reason or "?", 0) + 1
    deliveries = (
        Recipient.select(
            Recipient.organ_id, Recipient.delivered_at, Message.document_id, Message.sender, Message.received_at
        )
        .join(Message)
        .where(in_month & (Message.kind == "edoc") & (Message.state == "accepted") & (Message.business_doc_type == 0))
    )
    delivered = list(deliveries)
    docs = {d.message.document_id for d in delivered}
    first: dict[tuple[str, str, str], dt.datetime] = {}
    if docs:
        for s in StatusEvent.select().where(
            StatusEvent.document_id.in_(list(docs)) & StatusEvent.status_code.in_(["01", "03"])
        ):
            key = (s.document_id, s.organ_id, s.status_code)
            if key not in first or s.received_at < first[key]:
                first[key] = s.received_at
    for d in delivered:
        if d.organ_id not in rows:
            continue
        r = rows[d.organ_id]
        r.received += 1
        t0 = vn_clock(d.delivered_at or d.message.received_at)  # working days are Vietnam's days
        arrived = first.get((d.message.document_id, d.organ_id, "01"))
        accepted = first.get((d.message.document_id, d.organ_id, "03"))
        if arrived is not None and vn_clock(arrived) <= add_working_days(t0, 1, holidays):
            r.arrived_on_time += 1
        if accepted is not None and vn_clock(accepted) <= add_working_days(t0, 3, holidays):
            r.accepted_on_time += 1
        if accepted is None:
            r.unanswered += 1
    units: dict[str, Row] = {}
    for r in rows.values():
        u = units.setdefault(r.unit, Row(r.unit, names.get(r.unit, r.unit), r.unit))
        u.add(r)
    selected = [r for r in rows.values() if agency is None or r.organ_id == agency or r.unit == agency]
    return Report(
        month,
        selected,
        [u for u in units.values() if agency is None or u.organ_id == unit_of.get(agency, agency)],
        dt.datetime.now(VN_TZ).strftime("%Y-%m-%d %H:%M"),
        tuple(sorted(d.isoformat() for d in holidays if start <= vn_day_start(d) < end)),
    )


# --------------------------------------------------------------------------- formats


def working_days(rep: Report) -> str:
    """What the report counted as working days, in one line for its readers."""
    off = f", trừ ngày nghỉ {', '.join(rep.days_off)}" if rep.days_off else ""
    return f"Ngày làm việc: thứ Hai đến thứ Sáu{off}."


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.0f}%"


HEADERS = [
    "OrganId",
    "Cơ quan",
    "Gửi",
    "Nhận",
    "01 ≤1 ngày",
    "03 ≤3 ngày",
    "Chưa trả lời",
    "Bị từ chối",
    "Lý do từ chối",
]


def _cells(r: Row) -> list[str]:
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(r.refused_by_reason.items()))
    return [
        r.organ_id,
        r.name,
        str(r.sent),
        str(r.received),
        _pct(r.arrived_share),
        _pct(r.accepted_share),
        str(r.unanswered),
        str(r.refused),
        reasons,
    ]


def to_json(rep: Report) -> str:
    return json.dumps(
        {
            "month": rep.month,
            "generated_at": rep.generated_at,
            "days_off": list(rep.days_off),
            "agencies": [r.as_dict() for r in rep.agencies],
            "units": [r.as_dict() for r in rep.units],
        },
        ensure_ascii=False,
        indent=2,
    )


def to_csv(rep: Report) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["level", *HEADERS])
    for level, rows in (("agency", rep.agencies), ("unit", rep.units)):
        for r in rows:
            w.writerow([level, *_cells(r)])
    return buf.getvalue()


def _bars(title: str, series: Sequence[tuple[str, float]], *, percent: bool = False, width: int = 640) -> str:
    """A horizontal bar chart as inline SVG."""
    bar_h, gap, label_w = 18, 6, 220
    top = 28
    height = top + len(series) * (bar_h + gap) + 10
    peak = max([v for _, v in series] + [1e-9]) if not percent else 1.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{html.escape(title)}">'
    ]
    parts.append(f'<text x="0" y="18" font-size="14" font-weight="bold">{html.escape(title)}</text>')
    for i, (label, v) in enumerate(series):
        y = top + i * (bar_h + gap)
        w = int((width - label_w - 60) * (v / peak)) if peak else 0
        text = f"{100 * v:.0f}%" if percent else f"{v:g}"
        parts.append(f'<text x="0" y="{y + 13}" font-size="12">{html.escape(label[:34])}</text>')
        parts.append(f'<rect x="{label_w}" y="{y}" width="{max(w, 1)}" height="{bar_h}" fill="#2f6f9f"/>')
        parts.append(f'<text x="{label_w + w + 6}" y="{y + 13}" font-size="12">{text}</text>')
    parts.append("</svg>")
    return "".join(parts)


def to_html(rep: Report) -> str:
    def table(rows: list[Row]) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADERS)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(r)) + "</tr>" for r in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    reasons: Counter[str] = Counter()
    for r in rep.agencies:
        reasons.update(r.refused_by_reason)
    charts = [
        _bars(
            "Văn bản gửi và nhận theo đơn vị",
            [(f"{u.name} (gửi)", u.sent) for u in rep.units] + [(f"{u.name} (nhận)", u.received) for u in rep.units],
        ),
        _bars(
            "Tỷ lệ báo đã đến (01) trong 1 ngày làm việc",
            [(u.name, u.arrived_share or 0.0) for u in rep.units],
            percent=True,
        ),
        _bars(
            "Tỷ lệ tiếp nhận (03) trong 3 ngày làm việc",
            [(u.name, u.accepted_share or 0.0) for u in rep.units],
            percent=True,
        ),
    ]
    if reasons:
        charts.append(
            _bars(
                "Văn bản bị từ chối theo lý do",
                [(f"{k} ({REASONS_VI.get(k, '')})", v) for k, v in reasons.most_common()],
            )
        )
    style = (
        "body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #bbb;padding:4px 8px;font-size:13px}th{background:#eef3f7}"
        "svg{display:block;margin:1em 0}"
    )
    return (
        '<!DOCTYPE html><html lang="vi"><head><meta charset="utf-8">'
        f"<title>Báo cáo trao đổi văn bản điện tử tháng {html.escape(rep.month)}</title>"
        f"<style>{style}</style></head><body>"
        f"<h1>Báo cáo trao đổi văn bản điện tử tháng {html.escape(rep.month)}</h1>"
        f"<p>Lập lúc {html.escape(rep.generated_at)} (giờ Việt Nam). {html.escape(working_days(rep))}</p>"
        + "".join(charts)
        + "<h2>Theo sở, ban, ngành và huyện</h2>"
        + table(rep.units)
        + "<h2>Theo cơ quan</h2>"
        + table(rep.agencies)
        + "</body></html>"
    )


def rows_for_table(rep: Report) -> tuple[list[list[str]], list[list[str]]]:
    return [_cells(r) for r in rep.agencies], [_cells(r) for r in rep.units]


__all__ = ["HEADERS", "Report", "Row", "add_working_days", "monthly", "to_csv", "to_html", "to_json", "working_days"]
