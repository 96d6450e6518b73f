"""mixvfs: a read-only FUSE folder of a MixBoard session, cloud tracks fetched into a content-addressed cache.

The code lives in the repository's top-level ``vfs/`` and ``cache/`` folders; this package installs them as
``mixvfs.vfs`` and ``mixvfs.cache`` (``vfs`` and ``cache`` here are links to them), so nothing of ours is a
top-level module that another distribution — PyPI has a ``cache`` — or a folder in the working directory
could shadow.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mixvfs")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0+unknown"
