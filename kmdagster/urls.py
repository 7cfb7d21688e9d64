"""Database URLs in the configuration: which are PostgreSQL's, and never a password shown.

Passwords never live in the configuration (libpq reads ``PGPASSWORD`` or ``~/.pgpass``);
a URL or a driver's error that holds one anyway is shown with ``***`` in its place.
"""

from __future__ import annotations

import re

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_CREDENTIALS = re.compile(r"(://[^/@:]*):[^/@]*@")


def is_postgres_url(text: str) -> bool:
    return text.startswith(POSTGRES_SCHEMES)


def has_password(url: str) -> bool:
    return _CREDENTIALS.search(url) is not None


def without_password(text: str) -> str:
    """``text`` (a URL, or an error quoting one) with any password as ``***``."""
    return _CREDENTIALS.sub(r"\1:***@", text)
