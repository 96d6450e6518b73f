"""Our exceptions to errno, in one table. The FUSE binding turns any exception that is not an OSError
into EINVAL, so every failure must leave the adapter as a deliberate ``FuseOSError``."""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Callable
from typing import Any, ParamSpec, Protocol, TypeVar, runtime_checkable

from mixvfs.cache.errors import MixvfsError

log = logging.getLogger(__name__)

# The first row that matches decides. Every error of ours is EIO, as promised: a track's failure (FetchError),
# the cache folder's (CacheError) and any other; the copying program sees "Input/output error", the report and
# the log's cause chain (kept by ``raise … from``) say why.
ERRNO_TABLE: tuple[tuple[type[BaseException], int], ...] = (
    (MixvfsError, errno.EIO),
)


def errno_for(exc: BaseException) -> int:
    for kind, code in ERRNO_TABLE:
        if isinstance(exc, kind):
            return code
    if isinstance(exc, OSError) and isinstance(exc.errno, int) and exc.errno > 0:
        return exc.errno
    return errno.EIO


@runtime_checkable
class EioWitness(Protocol):
    """The operations object told of every EIO it answers (with the operation's arguments, to find the file):
    each must have its line in the report, which the mount's tests check for every test."""

    def answered_eio(self, operation: str, args: tuple[Any, ...]) -> None: ...


def witness(operation: str, args: tuple[Any, ...]) -> None:
    ops = args[0] if args else None
    if isinstance(ops, EioWitness):
        try:
            ops.answered_eio(operation, args[1:])
        except Exception:  # counting must never change the answer
            log.exception("could not note an EIO answer to %s", operation)


P = ParamSpec("P")
R = TypeVar("R")


def cause_chain(exc: BaseException) -> str:
    """``FetchError: … <- CacheError: … <- OSError: …``: the exceptions that led to ``exc``, as Python's own
    traceback follows them (a ``from`` cause, or the implicit context unless ``from None`` hid it). Exception
    texts never hold the token (cache/http.py keeps it out of them), so the chain may be logged."""
    links: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        links.append(f"{type(current).__name__}: {current}" if str(current) else type(current).__name__)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return " <- ".join(links)


def fuse_errors(error_type: type[OSError]) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a FUSE operation so that whatever goes wrong leaves as ``error_type(errno)``.

    What leaves is raised ``from None``: mfusepy logs it (with a traceback at debug), and a chain there
    would only repeat what is logged here. The cause chain is logged here instead: at debug for our own
    errors and OS errors (a failing track is reported per track anyway), as an error for a crash."""

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return func(*args, **kwargs)
            except MixvfsError as exc:
                raise answer(error_type, func.__name__, exc, errno_for(exc), args) from None
            except OSError as exc:
                if exc.errno is None or exc.errno <= 0:
                    log.error("%s failed without an errno; answering EIO: %s", func.__name__, cause_chain(exc),
                              exc_info=exc)
                    witness(func.__name__, args)
                    raise error_type(errno.EIO) from None
                if isinstance(exc, error_type) and exc.__cause__ is None and exc.__context__ is None:
                    if exc.errno == errno.EIO:
                        witness(func.__name__, args)
                    raise  # a deliberate answer (ENOENT, EROFS, …): nothing to explain
                raise answer(error_type, func.__name__, exc, errno_for(exc), args) from None
            except Exception as exc:
                log.error("%s crashed; answering EIO: %s", func.__name__, cause_chain(exc), exc_info=exc)
                witness(func.__name__, args)
                raise error_type(errno.EIO) from None

        return wrapper

    return decorate


def answer(error_type: type[OSError], operation: str, exc: BaseException, code: int,
           args: tuple[Any, ...] = ()) -> OSError:
    """The errno answer for ``exc``, after a debug line with its cause chain (and traceback)."""
    if code == errno.EIO:
        witness(operation, args)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s: %s from %s", operation, errno.errorcode.get(code, str(code)), cause_chain(exc),
                  exc_info=exc)
    return error_type(code)
