"""A fake Firezone portal: Phoenix channels over websockets, relay presence, credentials, chaos API.

``FakePortal(PortalConfig(...))`` runs in-process; ``python -m fake_portal --help`` runs it alone.
``EventKind`` is the schema of the event log's ``kind`` field (``GET /api/events``).
"""

from fake_portal.config import PortalConfig
from fake_portal.eventlog import EventKind
from fake_portal.server import FakePortal

__all__ = ["EventKind", "FakePortal", "PortalConfig"]
