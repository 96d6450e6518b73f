"""What a server said about a URL (:class:`RemoteInfo`) and which version of it we mean (:class:`Source`,
:func:`identity`): the records that both the HTTP transport (which reads them off a HEAD's or a GET's headers)
and the source index (which remembers them for mounts while the server is down) speak. Its own module so that
neither side imports the other, and so the commands that only name tracks (``check-export``) need neither
httpx nor diskcache: ``http`` (transport) and ``index`` (storage) depend on it; it depends on nothing."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RemoteInfo:
    """What a HEAD (or the headers of a GET) told us about a URL."""

    size: int | None
    etag: str | None
    content_type: str | None
    magic_ext: str | None = None
    last_modified: str | None = None


def identity(url: str, *, etag: str | None, size: int | None) -> str:
    """The cache identity of a remote file version: URL plus ETag, else size."""
    if etag:
        return f"{url}#etag={etag}"
    if size is not None:
        return f"{url}#size={size}"
    return url


@dataclass(frozen=True)
class Seen:
    """The name ("Artist - Title.ext") a cached source was last seen under, and in which session: what the
    cache's commands show first."""

    name: str
    session: str


def url_of(ident: str) -> str:
    """The URL of a source identity (:func:`identity`'s inverse, less the version)."""
    at = ident.find("#etag=")  # an ETag is the server's text: it may hold anything after its mark
    if at < 0:
        at = ident.rfind("#size=")
    return ident if at < 0 else ident[:at]


@dataclass(frozen=True, slots=True)
class Source:
    """A remote file version as far as we know it before downloading."""

    url: str
    size: int | None = None
    etag: str | None = None
    # What names the track in the log: anything whose str() does (a session's track passes its spec, whose text
    # is made only when a line is logged: a string per track is 7 MB of a 100 000-track mount). Not part of
    # the version's identity.
    label: object = field(default="", compare=False)

    @property
    def ident(self) -> str:
        return identity(self.url, etag=self.etag, size=self.size)
