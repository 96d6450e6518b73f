"""``cachectl pin SESSION`` and ``cachectl unpin SESSION``: keep a session's tracks whatever the limits.

A pin is a row of the cache's own index (``pin:<manifest path>``: the session's name and its cloud URLs), so
every process on the cache — a live mount's commit-time eviction, its start's prune, ``cachectl prune`` — reads
it at its next eviction and spares the blobs those URLs map to. The pin is written *before* the downloads, so
every blob they commit is already pinned; one eviction already under way in another process when the pin was
written may still remove a blob it had chosen, which the check after the downloads names (exit 1: pin again).
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from mixvfs.cache.errors import ConfigError
from mixvfs.cache.index import Pin, SourceIndex
from mixvfs.cache.units import format_size
from mixvfs.vfs.commands import warm
from mixvfs.vfs.runtime import Runtime
from mixvfs.vfs.session.manifest import Session


def pin(path: Path, session: Session, runtime: Runtime, *, out: TextIO, tty: bool) -> int:
    urls = [t.cloud_url for t in session.tracks if t.cloud_url]
    pinned = runtime.index.pin(str(path.resolve()), session.name, urls)
    code = warm.warm(session, runtime, out=out, tty=tty)
    count, size = held(runtime, pinned)
    if code == warm.EXIT_OK and count < len(pinned.urls):
        # An eviction another process had under way when the pin was written took a blob. The downloads are
        # over (warm closed its fetcher): say so, and what fetches it again.
        print(f"{len(pinned.urls) - count} pinned track(s) were evicted by another process as they were pinned: "
              "run `cachectl pin` again to download them", file=out, flush=True)
        code = warm.EXIT_FAILED
    print(f"pinned {session.name!r}: {count} of {len(pinned.urls)} cloud track(s) held, {format_size(size)}; "
          f"kept whatever the size and age limits until `cachectl unpin`", file=out, flush=True)
    every = runtime.store.pinned()
    total = sum(info.size for info in runtime.store.infos() if info.digest in every)
    if total > runtime.store.max_size:
        print(pins_warning(total, runtime.store.max_size), file=out, flush=True)
    return code


def held(runtime: Runtime, pinned: Pin) -> tuple[int, int]:
    """How many of the pin's URLs have a stored blob, and the bytes of those blobs."""
    sizes = {info.digest: info.size for info in runtime.store.infos()}
    by_url = runtime.index.digests_of_urls(set(pinned.urls))
    kept = {url: [d for d in digests if d in sizes] for url, digests in by_url.items()}
    return sum(bool(d) for d in kept.values()), sum(sizes[d] for d in {d for ds in kept.values() for d in ds})


def pins_warning(pinned_bytes: int, max_size: int) -> str:
    return (f"warning: pinned sessions alone hold {format_size(pinned_bytes)}, over the size limit "
            f"({format_size(max_size)}): nothing unpinned is kept; `cachectl unpin SESSION` or a larger --max-size")


def unpin(which: str, index: SourceIndex) -> Pin:
    """Remove the pin named by ``which``: a manifest's path, or a pinned session's name (one only)."""
    pins = index.pins()
    candidate = Path(which).expanduser()
    key = str(candidate.resolve()) if candidate.exists() else which
    chosen = [p for p in pins if p.key == key] or [p for p in pins if p.session == which]
    if len(chosen) > 1:
        raise ConfigError(f"{len(chosen)} pinned sessions are named {which!r}: name one by its manifest: "
                          + ", ".join(p.key for p in chosen))
    if not chosen:
        known = ", ".join(f"{p.session!r} ({p.key})" for p in pins) or "none"
        raise ConfigError(f"{which!r} is not pinned; pinned sessions: {known}")
    index.unpin(chosen[0].key)
    return chosen[0]
