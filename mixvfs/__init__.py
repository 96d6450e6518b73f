"""mixvfs: a read-only FUSE folder of a MixBoard session, cloud tracks fetched into a content-addressed cache.

The code lives in ``mixvfs.vfs`` (the FUSE folder, the session, the commands) and ``mixvfs.cache`` (the
content-addressed cache, FUSE-free); the repository's top-level ``vfs/`` and ``cache/`` are links to them. Nothing
of ours is a top-level module that another distribution — PyPI has a ``cache`` — or a folder in the working
directory could shadow.
"""



def __getattr__(name: str) -> str:
    # Read from the package metadata only when asked (``--version``): importlib.metadata costs ~40 ms of
    # start-up that every command, check-export above all, would pay.
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mixvfs")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "0+unknown"
