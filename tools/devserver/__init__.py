"""Local stand-in for the "Chad Music" file server (stdlib only).

Serves the files under ROOT at their relative URL path, with the behaviour mixvfs relies on:
bearer-token auth (static tokens and/or a token file re-read on every request), single byte
ranges, ``If-Range`` (strong comparison: a weak tag never matches), conditional requests
(``If-None-Match`` with weak comparison, else ``If-Modified-Since``: 304 with the validators),
stable ETags (size + mtime_ns, so a file replaced on disk gets a new one), a JSON-lines request
log and scriptable faults.

    python -m tools.devserver ROOT [--host 127.0.0.1] [--port 0] [--token T ...] [--token-file F]
                              [--faults FILE] [--log FILE] [--port-file F]

Faults file (re-read on every request, so rewrite it atomically): ``{"<url path>": {fields}}``,
where the key ``"*"`` applies to every path without its own entry. Unknown fields are errors.
Fields, all optional:

* ``status``, ``body`` + ``content_type``, ``redirect``: answer with that instead of the file.
* ``times``: how many requests the entry acts on, then it is inert (see below) — or, with ``then``
  (an entry of its own), ``then`` applies from there on: ``{"drop_after": 1024, "times": 1, "then":
  {"weak_etag": true}}`` cuts the first response and keeps the weak ETags for good.
* ``head``: true applies the whole entry to HEAD too; without it a HEAD gets only the header
  habits below (``encoding``, ``ignore_range``, ``range_early``, ``weak_etag``, ``etag``,
  ``no_validators``, ``no_head``, and ``hold`` with ``hold_head``).
* ``drop_after`` (hang up after N body bytes), ``stall_after`` + ``stall_seconds``, ``rate``
  (bytes/s, slow but steady), ``content_length`` (a lying Content-Length), ``delay`` (seconds
  before anything is sent), ``headers`` (extra response headers, e.g. ``{"Retry-After": "1"}``),
  ``id`` (ignored, but it makes an entry distinct so its ``times`` budget and holds start again).
  ``retry_after_date``: N sends ``Retry-After`` as an HTTP-date N seconds after the response's ``Date``
  (the other form, delta-seconds, is ``headers: {"Retry-After": "N"}``).
* ``encoding``: ``"gzip"`` | ``"deflate"`` | ``"br"`` (``br`` only if the brotli module imports):
  the body is compressed and sent with ``Content-Encoding`` whatever Accept-Encoding says (a
  misconfigured CDN). Content-Length is the compressed length (HEAD too); Range is ignored (200)
  and Accept-Ranges left out. The ETag stays strong unless ``weak_etag`` is added. Two broken-or-odd
  gzip bodies, both sent as ``Content-Encoding: gzip``: ``"gzip-members"`` compresses each half of
  the file as a member of its own (``cat a.gz b.gz``, valid gzip), ``"gzip-cut"`` sends the first
  half of the compressed stream as if it were all of it (a complete HTTP body, an incomplete gzip).
* ``ignore_range``: true answers 200 with the full body even when a Range is sent (no Accept-Ranges).
* ``range_early``: N makes every 206 start N bytes before the asked first byte (max(0, S-N)),
  with a truthful Content-Range.
* ``weak_etag``: true sends the ETag as ``W/"..."`` (so If-Range never matches it).
* ``etag``: a string sent as the ETag instead of the computed one (If-Range compares against it).
* ``no_validators``: true sends neither ETag nor Last-Modified.
* ``after_body``: a string (latin-1) written right after the body, in the same write, on a connection
  kept alive: stray bytes no request asked for, e.g. a whole second response.
* ``no_head``: 405 or 501 answers HEAD with that status (405 with ``Allow: GET``); the
  Content-Length is the error text's, never the file's. GET is untouched.
* ``chunked``: true sends a GET body (200 or 206) with ``Transfer-Encoding: chunked`` and no
  Content-Length; combines with ``rate``, ``drop_after`` (no last chunk), ``encoding``, holds.
  HEAD keeps its Content-Length (add ``no_head`` for a server that never tells the size).
* ``hold``: NAME parks the response before its headers until the test releases NAME (GET only;
  ``hold_head``: true parks HEAD too). ``hold_after``: K sends the headers and the first K body
  bytes, then parks (only when the body is longer than K; file bodies only). Release with
  ``GET /__devserver__/release?name=NAME`` (:meth:`DevServer.release`). A release is sticky for
  the entries it covers (those in the faults file at release time and those of the requests it
  freed): later requests of that entry pass at once, until ``/__devserver__/rearm?name=NAME``
  (:meth:`DevServer.rearm`) or the entry changes (e.g. a new ``id``). ``/__devserver__/held?
  name=NAME&count=C&timeout=T`` answers the number of requests parked on NAME once it is >= C
  (:meth:`DevServer.wait_held`). Stopping the server ends parked requests (connection closed).

Faults are applied after auth: an unauthenticated request gets its 401 and consumes nothing.
``times`` is counted per request path and per entry content (rewriting the same entry keeps
its count; changing any field, e.g. ``id``, starts a fresh budget), and only for requests the
entry acts on (a HEAD consumes nothing from an entry that does nothing to HEADs).

Log (``--log``): one JSON object per request, written when the response is finished:
``t`` (request start, epoch seconds), ``t_end`` (response finished), ``method``, ``path`` (URL-decoded,
no query), the request headers ``range``, ``if_range``, ``if_none_match``, ``if_modified_since``,
``accept_encoding``, ``auth``, then ``status``, ``bytes`` (body bytes sent: compressed bytes with
``encoding``, payload without chunk framing with ``chunked``), ``fault`` (the actions applied to
this request joined by '+', e.g. ``"stall_after+drop_after"`` or ``"encoding+chunked"``, or null),
``t_gone`` (when the client hung up while the request was parked on a hold, which ends it only at the
release; else null).

Tests use :class:`DevServer`, which runs the server (``python -m tools.devserver``) as a real subprocess.

The package, by job: ``faults`` (the faults file: fields, checks), ``rules`` (HTTP's rules: ranges, validators,
conditional requests, content codings), ``state`` (what the handler threads share: auth, the ``times`` counters,
the holds, the log), ``handler`` (the answers), ``server`` (the command line) and ``client`` (:class:`DevServer`).
"""

from __future__ import annotations

from tools.devserver.client import DevServer
from tools.devserver.faults import FAULT_FIELDS, Fault, FaultsError, brotli_available, parse_fault, parse_faults
from tools.devserver.rules import RangeNotSatisfiable, parse_range

__all__ = [
    "FAULT_FIELDS",
    "DevServer",
    "Fault",
    "FaultsError",
    "RangeNotSatisfiable",
    "brotli_available",
    "parse_fault",
    "parse_faults",
    "parse_range",
]
