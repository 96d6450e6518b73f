"""What a server said about a URL: the one record that both the HTTP transport (which reads it off a HEAD's
or a GET's headers) and the source index (which remembers it for mounts while the server is down) speak.
Its own module so that neither side imports the other: ``http`` (transport) and ``index`` (storage) both
depend on it, and it depends on nothing."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RemoteInfo:
    """What a HEAD (or the headers of a GET) told us about a URL."""

    size: int | None
    etag: str | None
    content_type: str | None
    magic_ext: str | None = None
    last_modified: str | None = None
