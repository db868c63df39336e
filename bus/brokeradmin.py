"""Broker users and permissions, through the RabbitMQ management HTTP API.

Each agency gets its own broker user, named by its OrganId, that may:

- write only to the submission exchange, and only with routing keys that carry its own
  OrganId (a topic permission on ``<ns>.submit``);
- read only its own inbox queue;
- configure nothing (no declare, delete or bind).

The permissions are declared as data (:func:`agency_permissions`) and applied idempotently.
The management API URL defaults to port 15672 on the broker's host, with the credentials of
``DOCBUS_AMQP_URL`` (an administrator on the data centre's machine); ``DOCBUS_MGMT_URL``
overrides it.  Security: the administrator credentials never leave the data centre.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from bus.errors import BrokerUnavailable, DocbusError
from bus.topology import Names


@dataclass(frozen=True)
class Permissions:
    user: str
    vhost: str
    configure: str
    write: str
    read: str
    topic_exchange: str
    topic_write: str
    topic_read: str


def user_name(names: Names, organ_id: str) -> str:
    """The agency's broker user: its OrganId (prefixed by the namespace outside production,
    so a test or demo province never touches a live agency's user)."""
    return organ_id if names.namespace == "docbus" else f"{names.namespace}:{organ_id}"


def agency_permissions(names: Names, organ_id: str, vhost: str) -> Permissions:
    key = re.escape(organ_id)
    return Permissions(
        user=user_name(names, organ_id),
        vhost=vhost,
        configure="^$",
        write=f"^{re.escape(names.submit)}$",
        read=f"^{re.escape(names.inbox(organ_id))}(\\.urgent)?$",
        topic_exchange=names.submit,
        topic_write=f"^(urgent\\.)?(edoc|status|chunk)\\.{key}$",
        topic_read="^$",
    )


HANDLES_PER_QUORUM_QUEUE = 3
"""File handles RabbitMQ reserves for every quorum queue (3.10: ten queues, thirty reserved).

Its file handle cache counts them against the node's open-file limit less about 100, and a
node with none left still accepts TCP connections but never answers the AMQP handshake: the
whole bus stops, for every agency at once.  At the default limit of 1024 that is about 300
quorum queues, and each agency has two (its inbox and its urgent inbox)."""


@dataclass(frozen=True)
class FileHandleBudget:
    """What a RabbitMQ node can still open: its open-file limit against the handles that its
    queues reserve and its connections hold (every queue is counted as a quorum queue: the
    classic ones are few, and erring on the safe side costs three handles each)."""

    limit: int  # the node's open-file limit (the lowest in a cluster: each node holds every quorum queue)
    queues: int
    connections: int

    RESERVED = 100  # kept back by RabbitMQ itself

    def needed(self, more_queues: int = 0, more_connections: int = 0) -> int:
        return HANDLES_PER_QUORUM_QUEUE * (self.queues + more_queues) + self.connections + more_connections

    def fits(self, more_queues: int = 0, more_connections: int = 0) -> bool:
        return self.needed(more_queues, more_connections) <= self.limit - self.RESERVED


def vhost_of(amqp_url: str) -> str:
    path = urlsplit(amqp_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def agency_url(amqp_url: str, user: str, password: str) -> str:
    """``amqp_url`` with the agency's own credentials instead of the administrator's."""
    parts = urlsplit(amqp_url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class BrokerAdmin:
    def __init__(self, amqp_url: str, mgmt_url: str | None = None, timeout: float = 10.0) -> None:
        parts = urlsplit(amqp_url)
        self.user = unquote(parts.username or "guest")
        self.password = unquote(parts.password or "guest")
        self.base = (mgmt_url or f"http://{parts.hostname or '127.0.0.1'}:15672").rstrip("/") + "/api"
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and method in ("DELETE", "GET"):
                return None
            detail = exc.read().decode(errors="replace")[:200]
            raise DocbusError(
                f"RabbitMQ management API {method} {path}: {exc.code} {detail}", reason="broker-admin"
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise BrokerUnavailable(
                f"the RabbitMQ management API is not reachable at {self.base} ({exc}); "
                "enable it with 'rabbitmq-plugins enable rabbitmq_management' or set DOCBUS_MGMT_URL"
            ) from exc
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        """A read-only call of the management API (``path`` after ``/api``); None if not found."""
        return self._call("GET", path)

    def available(self) -> bool:
        try:
            self._call("GET", "/whoami")
        except (BrokerUnavailable, DocbusError):
            return False
        return True

    def file_handles(self) -> FileHandleBudget:
        nodes = [n for n in self._call("GET", "/nodes?columns=name,fd_total") or [] if n.get("fd_total")]
        totals = (self._call("GET", "/overview") or {}).get("object_totals", {})
        return FileHandleBudget(
            limit=min((int(n["fd_total"]) for n in nodes), default=0),
            queues=int(totals.get("queues", 0)),
            connections=int(totals.get("connections", 0)),
        )

    # -- users and permissions
    def ensure_user(self, user: str, password: str) -> None:
        self._call("PUT", f"/users/{quote(user, safe='')}", {"password": password, "tags": ""})

    def apply(self, p: Permissions) -> None:
        v, u = quote(p.vhost, safe=""), quote(p.user, safe="")
        self._call("PUT", f"/permissions/{v}/{u}", {"configure": p.configure, "write": p.write, "read": p.read})
        self._call(
            "PUT",
            f"/topic-permissions/{v}/{u}",
            {"exchange": p.topic_exchange, "write": p.topic_write, "read": p.topic_read},
        )

    def revoke(self, user: str, vhost: str) -> None:
        """Take every permission away and close the user's connections; queues keep their mail."""
        v, u = quote(vhost, safe=""), quote(user, safe="")
        self._call("DELETE", f"/permissions/{v}/{u}")
        self._call("DELETE", f"/topic-permissions/{v}/{u}")
        self.close_connections(user)

    def close_connections(self, user: str) -> int:
        closed = 0
        for conn in self._call("GET", "/connections") or []:
            if conn.get("user") == user:
                self._call("DELETE", f"/connections/{quote(conn['name'], safe='')}")
                closed += 1
        return closed

    def delete_user(self, user: str) -> None:
        self._call("DELETE", f"/users/{quote(user, safe='')}")

    def user_exists(self, user: str) -> bool:
        return self._call("GET", f"/users/{quote(user, safe='')}") is not None


def new_password() -> str:
    return secrets.token_urlsafe(24)
