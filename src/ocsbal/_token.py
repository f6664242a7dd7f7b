"""The admin token file: read at start and at every reload, never logged."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ocsbal._model import Admin

__all__ = ["AdminTokenError", "read_token"]


class AdminTokenError(ValueError):
    """The admin token file cannot be used; the message says why."""


def read_token(admin: Admin) -> bytes | None:
    """Read the token of ``admin``, or ``None`` if it has no token file.

    :raises AdminTokenError: if the file cannot be read or is empty.
    """
    if admin.token_file is None:
        return None
    try:
        token = Path(admin.token_file).read_bytes().strip()
    except OSError as e:
        raise AdminTokenError(
            f"[admin] token_file = {admin.token_file}: cannot read: {e.strerror}"
        ) from None
    if not token:
        raise AdminTokenError(f"[admin] token_file = {admin.token_file}: is empty")
    return token
