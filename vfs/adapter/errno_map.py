"""Our exceptions to errno, in one table. The FUSE binding turns any exception that is not an OSError
into EINVAL, so every failure must leave the adapter as a deliberate ``FuseOSError``."""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from mixvfs.cache.errors import CacheError, ConfigError, FetchError, MixvfsError

log = logging.getLogger(__name__)

ERRNO_TABLE: tuple[tuple[type[BaseException], int], ...] = (
    (FetchError, errno.EIO),  # every track failure: the copying program sees "Input/output error"
    (CacheError, errno.EIO),
    (ConfigError, errno.EIO),
    (MixvfsError, errno.EIO),
)


def errno_for(exc: BaseException) -> int:
    for kind, code in ERRNO_TABLE:
        if isinstance(exc, kind):
            return code
    if isinstance(exc, OSError) and isinstance(exc.errno, int) and exc.errno > 0:
        return exc.errno
    return errno.EIO


P = ParamSpec("P")
R = TypeVar("R")


def fuse_errors(error_type: Callable[[int], OSError]) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a FUSE operation so that whatever goes wrong leaves as ``error_type(errno)``."""

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return func(*args, **kwargs)
            except MixvfsError as exc:
                raise error_type(errno_for(exc)) from None
            except OSError as exc:
                if exc.errno is None or exc.errno <= 0:
                    log.exception("%s failed", func.__name__)
                raise error_type(errno_for(exc)) from None
            except Exception:
                log.exception("%s crashed; answering EIO", func.__name__)
                raise error_type(errno.EIO) from None

        return wrapper

    return decorate
