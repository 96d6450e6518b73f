"""Whether a libfuse that mfusepy can mount with loads here: asked before anything mounts, by the waiting
``mixvfs mount``, the daemon and ``preflight``. Its own module, below the adapter it loads, so that loading the
adapter is an import of this module's callers only (the adapter never imports it back)."""

from __future__ import annotations

from mixvfs import host


def libfuse_problem(*, whole_adapter: bool = True) -> str | None:
    """None when a libfuse mfusepy can mount with loads; else one line: why not, and what to install or
    allow (macFUSE refused by the system shows here too: its library loads only once allowed).
    ``whole_adapter=False`` loads mfusepy alone: what the waiting ``mixvfs mount`` asks before it starts a
    daemon (which asks again with the whole adapter, and its answer reaches the terminal too). The adapter
    brings the whole core with it, a quarter of a second of a 10 000-track mount's start."""
    host.prefer_libfuse3()
    try:
        if whole_adapter:
            import mixvfs.vfs.adapter.fuse_ops  # noqa: F401
        else:
            import mfusepy  # noqa: F401
    except (OSError, AttributeError) as exc:
        return f"no usable libfuse ({exc}): {host.libfuse_hint()}"
    return None
