"""The faults file: each entry's fields read and checked (a typo is an error, never a fault silently off).

The fields are described in the package's documentation (``tools/devserver/__init__.py``)."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

FAULT_FIELDS: Final = frozenset(
    {
        "status", "times", "head", "drop_after", "stall_after", "stall_seconds", "rate",
        "content_length", "body", "content_type", "redirect", "delay", "headers", "id",
        "encoding", "ignore_range", "weak_etag", "no_head", "chunked", "no_validators", "etag",
        "range_early", "hold", "hold_head", "hold_after", "then", "after_body", "retry_after_date",
    }
)  # fmt: skip
ENCODINGS: Final = ("gzip", "deflate", "br", "gzip-members", "gzip-cut")
NO_HEAD_STATUSES: Final = frozenset({405, 501})


class FaultsError(ValueError):
    """The faults file (or a set_faults() mapping) is malformed."""



@dataclass(frozen=True)
class Fault:
    """One validated fault entry; ``identity`` keys its ``times`` counter and its hold releases."""

    identity: str
    status: int | None = None
    times: int | None = None
    head: bool = False
    drop_after: int | None = None
    stall_after: int | None = None
    stall_seconds: float = 0.0
    rate: int | None = None
    content_length: int | None = None
    body: str | None = None
    content_type: str | None = None
    redirect: str | None = None
    delay: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()
    encoding: str | None = None
    ignore_range: bool = False
    weak_etag: bool = False
    no_head: int | None = None
    chunked: bool = False
    no_validators: bool = False
    etag: str | None = None
    range_early: int | None = None
    hold: str | None = None
    hold_head: bool = False
    hold_after: int | None = None
    after_body: str | None = None
    retry_after_date: int | None = None
    then: Fault | None = None  # applies once ``times`` is used up (e.g. cut once, then a habit for good)

    @property
    def name(self) -> str | None:
        """What the log's "fault" field shows: the active actions, joined by '+'."""
        actions = [
            ("delay", self.delay > 0),
            ("hold", self.hold is not None),
            ("no_head", self.no_head is not None),
            ("redirect", self.redirect is not None),
            ("status", self.status is not None),
            ("body", self.body is not None),
            ("content_length", self.content_length is not None),
            ("encoding", self.encoding is not None),
            ("chunked", self.chunked),
            ("ignore_range", self.ignore_range),
            ("range_early", self.range_early is not None),
            ("weak_etag", self.weak_etag),
            ("etag", self.etag is not None),
            ("no_validators", self.no_validators),
            ("stall_after", self.stall_after is not None),
            ("drop_after", self.drop_after is not None),
            ("rate", self.rate is not None),
            ("headers", bool(self.headers)),
            ("retry_after_date", self.retry_after_date is not None),
            ("after_body", self.after_body is not None),
        ]
        return "+".join(name for name, active in actions if active) or None

    @property
    def shapes_body(self) -> bool:
        """Whether the body is cut, paced or paused: byte-counted, and the connection closed afterwards."""
        shaping = (self.drop_after, self.stall_after, self.rate, self.content_length, self.hold_after)
        return any(v is not None for v in shaping)

    @property
    def copies_body(self) -> bool:
        """Whether the body must be copied through Python instead of sendfile."""
        return self.shapes_body or self.chunked or self.encoding is not None

    def for_request(self, head: bool) -> Fault:
        """The part of this entry that acts on a GET or a HEAD.

        ``no_head`` never touches a GET. A HEAD gets the whole entry only with ``head``: true,
        otherwise just the header habits (a server's habits show in its HEAD answers too); it is
        held only with ``hold_head``, and always before its headers (it has no body to cut).
        """
        if not head:
            return replace(self, no_head=None)
        view = self
        if not self.head:
            view = replace(
                self, status=None, body=None, redirect=None, delay=0.0, headers=(), content_length=None,
                drop_after=None, stall_after=None, rate=None,
            )  # fmt: skip
        if not self.hold_head:
            return replace(view, hold=None, hold_after=None)
        return replace(view, hold_after=None)


def _opt_int(spec: Mapping[str, object], name: str, minimum: int = 0) -> int | None:
    value = spec.get(name)
    if value is None:
        return None
    # bool is an int subclass; "drop_after": true is a typo, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise FaultsError(f"{name!r} must be an int >= {minimum}, got {value!r}")
    return value


def _opt_float(spec: Mapping[str, object], name: str) -> float:
    value = spec.get(name, 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise FaultsError(f"{name!r} must be a number >= 0, got {value!r}")
    return float(value)


def _opt_str(spec: Mapping[str, object], name: str) -> str | None:
    value = spec.get(name)
    if value is not None and not isinstance(value, str):
        raise FaultsError(f"{name!r} must be a string, got {value!r}")
    return value


def _opt_name(spec: Mapping[str, object], name: str) -> str | None:
    """A string that means something when present ("hold", "etag"): empty is a mistake."""
    value = _opt_str(spec, name)
    if value == "":
        raise FaultsError(f"{name!r} must not be empty")
    return value


def _opt_bool(spec: Mapping[str, object], name: str) -> bool:
    value = spec.get(name, False)
    if not isinstance(value, bool):
        raise FaultsError(f"{name!r} must be a bool, got {value!r}")
    return value


def _headers_field(spec: Mapping[str, object]) -> tuple[tuple[str, str], ...]:
    value = spec.get("headers", {})
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise FaultsError(f"'headers' must map names to strings, got {value!r}")
    return tuple((str(k), v) for k, v in value.items())


def brotli_available() -> bool:
    return importlib.util.find_spec("brotli") is not None


def _encoding_field(spec: Mapping[str, object]) -> str | None:
    value = spec.get("encoding")
    if value is None:
        return None
    if value not in ENCODINGS:
        raise FaultsError(f"'encoding' must be one of {list(ENCODINGS)}, got {value!r}")
    if value == "br" and not brotli_available():
        raise FaultsError("'encoding': 'br' needs the brotli module, which is unavailable here")
    return str(value)


def _no_head_field(spec: Mapping[str, object]) -> int | None:
    value = spec.get("no_head")
    if value is not None and (isinstance(value, bool) or value not in NO_HEAD_STATUSES):
        raise FaultsError(f"'no_head' must be one of {sorted(NO_HEAD_STATUSES)}, got {value!r}")
    return value if isinstance(value, int) else None


def _check_combination(fault: Fault) -> None:
    """Reject entries whose fields contradict each other, rather than guess which one wins."""
    if fault.chunked and fault.content_length is not None:
        raise FaultsError("'chunked' sends no Content-Length, so 'content_length' cannot go with it")
    if fault.hold is None and (fault.hold_after is not None or fault.hold_head):
        raise FaultsError("'hold_after' and 'hold_head' need 'hold'")
    if fault.hold_after is not None and (fault.status, fault.body, fault.redirect) != (None, None, None):
        raise FaultsError("'hold_after' needs a file body; use 'hold' alone with status/body/redirect")


def _then_field(spec: Mapping[str, object]) -> Fault | None:
    if "then" not in spec:
        return None
    if "times" not in spec:
        raise FaultsError("'then' needs 'times': it is what applies once they are used up")
    return parse_fault(spec["then"])


FieldReader = Callable[[Mapping[str, object], str], Any]  # the value is checked by the reader, typed by Fault
# How each field is read and checked (``then`` is a whole entry of its own: see _then_field).
FIELD_READERS: Final[Mapping[str, FieldReader]] = {
    "status": lambda spec, name: _opt_int(spec, name, minimum=100),
    "times": _opt_int,
    "head": _opt_bool,
    "drop_after": _opt_int,
    "stall_after": _opt_int,
    "stall_seconds": _opt_float,
    "rate": lambda spec, name: _opt_int(spec, name, minimum=1),
    "content_length": _opt_int,
    "body": _opt_str,
    "content_type": _opt_str,
    "redirect": _opt_str,
    "delay": _opt_float,
    "headers": lambda spec, _name: _headers_field(spec),
    "encoding": lambda spec, _name: _encoding_field(spec),
    "ignore_range": _opt_bool,
    "weak_etag": _opt_bool,
    "no_head": lambda spec, _name: _no_head_field(spec),
    "chunked": _opt_bool,
    "no_validators": _opt_bool,
    "etag": _opt_name,
    "range_early": _opt_int,
    "hold": _opt_name,
    "hold_head": _opt_bool,
    "hold_after": _opt_int,
    "after_body": _opt_str,
    "retry_after_date": _opt_int,
}


def parse_fault(spec: object) -> Fault:
    """Validate one entry; unknown fields are errors so a typo never silently disables a fault."""
    if not isinstance(spec, Mapping):
        raise FaultsError(f"a fault must be an object, got {spec!r}")
    unknown = set(spec) - FAULT_FIELDS
    if unknown:
        raise FaultsError(f"unknown fault field(s): {sorted(unknown)}")
    fields = {name: read(spec, name) for name, read in FIELD_READERS.items()}
    fault = Fault(identity=json.dumps(spec, sort_keys=True, default=str), **fields, then=_then_field(spec))
    _check_combination(fault)
    return fault


def parse_faults(data: object) -> dict[str, Fault]:
    if not isinstance(data, Mapping):
        raise FaultsError("the faults file must hold a JSON object")
    return {str(path): parse_fault(spec) for path, spec in data.items()}


def load_faults(path: Path | None) -> dict[str, Fault]:
    if path is None:
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        return parse_faults(json.loads(text) if text.strip() else {})
    except json.JSONDecodeError as exc:
        raise FaultsError(f"{path}: {exc}") from exc

