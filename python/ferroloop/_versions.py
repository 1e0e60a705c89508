"""Differences between asyncio versions that more than one module follows."""

from __future__ import annotations

import sys

# Since 3.12 asyncio refuses to make a transport on a socket another (open)
# transport owns, with the RuntimeError of _ensure_fd_no_transport.
TRANSPORTS_REFUSE_OWNED_SOCKETS = sys.version_info >= (3, 12)
