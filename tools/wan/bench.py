#!/usr/bin/env python3
"""The benchmark over an emulated internet link (``make bench-wan``, root): mixvfs beside aria2c, curl and rclone,
in the same run, on the same link.

The link (tools/wan/link.py): network namespaces, veth pairs, ``tbf`` for the rate with a one-BDP drop-tail buffer,
and a TUN delay line (tools/wan/delayline.c) for the round trip and random loss. The origin is nginx in the server
namespace with a bearer check (tools/wan/origin.py). Real kernel TCP end to end; the origin sends with the host's
default congestion control unless ``--origin-cc`` names one (the first line says which: with many flows through
one shallow buffer, CUBIC and BBR lose packets differently, and every tool's figure moves). Every figure is one
tool's wall time (mixvfs: from ``mixvfs mount`` to the end of ``cp -r``), cold (an empty cache, a fresh mount),
divided by the floor (bytes ÷ link rate); the last columns are mixvfs ÷ the best peer of that run and mixvfs's
requests and connections per track, counted in nginx's log.

    python -m tools.wan.bench [--quick] [--runs N] [--only cold,big,loss,warm,ask,bwlimit,reconnect,studio]
                              [--rate MBIT] [--origin-cc cubic|bbr|...] [--rtts MS,...] [--loss-rtts MS,...]
                              [--losses PERCENT,...]

The link's traffic goes only to the namespaces it makes; they are removed at the end, on Ctrl-C and on SIGTERM
(a run killed with SIGKILL leaves them: ``python -m tools.wan.link down N``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tools.bench.common import compile_bytecode, sized_tracks
from tools.wan.link import Link, Shape, emulated, missing, stop_process
from tools.wan.origin import Origin, Request, most_within, nginx_binary, serving

REPO = Path(__file__).resolve().parents[2]

KIB, MIB = 1 << 10, 1 << 20
MIXVFS = str(Path(sys.executable).parent / "mixvfs")
TOKEN = "alice"
PEERS = ("aria2c -j8", "curl --parallel 8", "rclone copy")
# The same bytes as ONE file (the tracks end to end): what TCP on this link delivers for them with no request per
# track, on one connection (curl) and split over eight (aria2c -x8 -s8). Not peers (no exporter can fetch a
# session as one file): the bound a per-track tool is measured against, in the same run.
WHOLE = ("one file: curl", "one file: aria2c -x8")
BASELINE = "mixvfs baseline"  # --baseline: another checkout's mixvfs, in the same runs


@dataclass
class DataSet:
    name: str
    files: list[Path]
    size: int

    @property
    def total(self) -> int:
        return self.size * len(self.files)

    def session(self, work: Path, url: str, *, sizes: bool = True) -> Path:
        tracks = [{"id": f"{self.name}-{i}", "artist": "Bench", "title": f"{self.name} {i:05d}",
                   "cloud_stream_path": f"/{self.name}/{p.name}", "content_type": "audio/wav",
                   **({"size": self.size} if sizes else {})} for i, p in enumerate(self.files)]
        path = work / f"{self.name}{'' if sizes else '-nosize'}.json"
        path.write_text(json.dumps({"name": self.name, "server": url, "tracks": tracks}))
        return path

    def urls(self, url: str) -> list[str]:
        return [f"{url}/{self.name}/{p.name}" for p in self.files]

    @property
    def whole_name(self) -> str:
        return f"{self.name}-whole/all.bin"

    def make_whole(self, root: Path) -> Path:
        """The tracks end to end, as one file under ``root`` (kept from an earlier run when its size matches)."""
        path = root / self.whole_name
        if not path.exists() or path.stat().st_size != self.total:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as out:
                for track in self.files:
                    out.write(track.read_bytes())
        return path


def make_dataset(root: Path, count: int, size: int) -> DataSet:
    name = f"s{count}x{size // KIB}k"
    return DataSet(name, sized_tracks(root / name, count, size), size)


@dataclass
class Result:
    seconds: float
    requests: list[Request]
    began: float = 0.0  # wall clock (nginx logs in it) when the tool started

    def timeline(self) -> str:
        """Where the wall time went beside the transfer: before the first request reached the origin (a mount's
        start), and after the last answer left it (the copy's end)."""
        if not self.requests:
            return ""
        first = min(r.start for r in self.requests)
        last = max(r.end for r in self.requests)
        return (f"; first request after {first - self.began:.2f} s, last answer "
                f"{self.began + self.seconds - last:.2f} s before the end")


@dataclass
class Row:
    case: str
    floor: float | None  # seconds: bytes ÷ rate (None: no floor, e.g. a warm cache)
    tracks: int
    runs: dict[str, list[Result]] = field(default_factory=dict)

    def add(self, tool: str, result: Result) -> None:
        self.runs.setdefault(tool, []).append(result)

    def median(self, tool: str) -> float | None:
        runs = self.runs.get(tool)
        return statistics.median(r.seconds for r in runs) if runs else None


class Bench:
    def __init__(self, args: argparse.Namespace, link: Link, origin: Origin, work: Path) -> None:
        self.args = args
        self.link = link
        self.origin = origin
        self.work = work
        self.rows: list[Row] = []
        self.mount_seconds = 0.0  # of the last mixvfs export: until `mixvfs mount` returned
        self.copied_at = 0.0  # wall clock (nginx logs in it too) when the last mixvfs export's cp ended
        self.caps: list[tuple[int, float]] = []  # (--bwlimit, the rate the origin sent at)
        self.reconnect = ""
        self.studio = ""
        self.unmount_seconds = 0.0
        self.export_seconds: float | None = None  # of the last mixvfs export: mount to the end of cp -r

    def say(self, text: str) -> None:
        print(text, flush=True)

    def shape(self, shape: Shape) -> None:
        if self.link.shape != shape:
            self.link.reshape(shape)
            self.say(f"link: {shape}")

    def measure(self, run: Callable[[], None]) -> Result:
        """A tool's wall time; for a mixvfs export, from ``mixvfs mount`` to the end of ``cp -r`` (the unmount
        after it is not the export's)."""
        mark = self.origin.mark()
        self.export_seconds = None
        began = time.time()
        start = time.perf_counter()
        run()
        seconds = self.export_seconds if self.export_seconds is not None else time.perf_counter() - start
        time.sleep(0.3)  # nginx writes its log line after the answer's last byte left: let the last ones land
        return Result(seconds, self.origin.requests(mark), began)

    # -- the tools --------------------------------------------------------------------------------------

    def fresh(self, name: str) -> Path:
        path = self.work / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    @contextlib.contextmanager
    def mounted(self, session: Path, cache: Path, *extra: str, token: str = TOKEN,
                code: str | None = None) -> Iterator[Path]:
        """A mount of ``session``; ``code``: another checkout's ``mixvfs`` package runs it (PYTHONPATH, inherited
        by the daemon), for an A/B in the same run."""
        mnt = self.work / "mnt"
        mnt.mkdir(exist_ok=True)
        env = {**os.environ, "MIXVFS_TOKEN": token, **({"PYTHONPATH": code} if code else {})}
        sh([MIXVFS, "mount", str(session), str(mnt), "--cache-dir", str(cache), "--report",
            str(self.work / "report.json"), "--log-file", str(self.work / "mixvfs.log"), *extra], env=env)
        pid = int(os.getxattr(mnt, "user.mixvfs.pid"))
        try:
            yield mnt
        finally:
            self.unmount(mnt, pid)

    def unmount(self, mnt: Path, pid: int) -> None:
        """``mixvfs unmount``; a daemon slow to end has its threads dumped (py-spy, when installed) to the work
        folder: a slow end is a bug to see, not a figure."""
        started = time.perf_counter()
        proc = subprocess.Popen([MIXVFS, "unmount", str(mnt)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            spy = Path(sys.executable).parent / "py-spy"
            if spy.exists():
                dump = subprocess.run([str(spy), "dump", "--pid", str(pid)], capture_output=True, text=True)
                path = self.work / f"slow-unmount-{pid}.txt"
                path.write_text(dump.stdout + dump.stderr)
                self.say(f"    the daemon had not ended 5 s after the unmount: its threads in {path}")
            proc.wait()
        if proc.returncode != 0:
            raise RuntimeError(f"mixvfs unmount failed: {proc.stderr.read().decode() if proc.stderr else ''}")
        if proc.stderr:
            proc.stderr.close()
        self.unmount_seconds = time.perf_counter() - started

    def mixvfs_export(self, session: Path, cache: Path, dest: Path, *extra: str, token: str = TOKEN,
                      code: str | None = None) -> None:
        start = time.perf_counter()
        with self.mounted(session, cache, *extra, token=token, code=code) as mnt:
            self.mount_seconds = time.perf_counter() - start
            sh(["cp", "-r", f"{mnt}/.", str(dest)])
            self.copied_at = time.time()
            self.export_seconds = time.perf_counter() - start

    def aria2c(self, data: DataSet, dest: Path) -> None:
        urls = self.work / "urls.txt"
        urls.write_text("\n".join(data.urls(self.origin.url)) + "\n")
        sh(["aria2c", "-j8", "-x1", "--header", f"Authorization: Bearer {TOKEN}", "-i", str(urls), "-d", str(dest),
            "--allow-overwrite=true", "--auto-file-renaming=false", "--file-allocation=none", "--quiet=true"])

    def curl(self, data: DataSet, dest: Path) -> None:
        config = self.work / "curl.conf"
        config.write_text("".join(f'url = "{u}"\noutput = "{dest / Path(u).name}"\n'
                                  for u in data.urls(self.origin.url)))
        sh(["curl", "--parallel", "--parallel-max", "8", "-sSf", "-H", f"Authorization: Bearer {TOKEN}",
            "-K", str(config)])

    def whole_curl(self, data: DataSet, dest: Path) -> None:
        sh(["curl", "-sSf", "-H", f"Authorization: Bearer {TOKEN}", "-o", str(dest / "all.bin"),
            f"{self.origin.url}/{data.whole_name}"])

    def whole_aria2c(self, data: DataSet, dest: Path) -> None:
        sh(["aria2c", "-x8", "-s8", "-k1M", "--header", f"Authorization: Bearer {TOKEN}", "-d", str(dest), "-o",
            "all.bin", "--allow-overwrite=true", "--auto-file-renaming=false", "--file-allocation=none",
            "--quiet=true", f"{self.origin.url}/{data.whole_name}"])

    def rclone(self, data: DataSet, dest: Path) -> None:
        sh(["rclone", "copy", ":http:", str(dest), "--http-url", f"{self.origin.url}/{data.name}/",
            "--http-headers", f"Authorization,Bearer {TOKEN}", "--config", "/dev/null"])

    # -- the cases --------------------------------------------------------------------------------------

    def case_cold(self, data: DataSet, shape: Shape, runs: int) -> None:
        self.shape(shape)
        floor = data.total / shape.bytes_per_second
        row = Row(f"{len(data.files)} × {human(data.size)}, {shape.rtt_ms:g} ms"
                  + (f", {shape.loss * 100:g} % loss" if shape.loss else ""), floor, len(data.files))
        session = data.session(self.work, self.origin.url)
        tools: dict[str, Callable[[Path], None]] = {
            "mixvfs": lambda d: self.mixvfs_export(session, self.fresh("cache"), d),
            "mixvfs --jobs 8": lambda d: self.mixvfs_export(session, self.fresh("cache"), d, "--jobs", "8"),
            **({BASELINE: lambda d: self.mixvfs_export(session, self.fresh("cache"), d, code=self.args.baseline)}
               if self.args.baseline else {}),
            "aria2c -j8": lambda d: self.aria2c(data, d),
            "curl --parallel 8": lambda d: self.curl(data, d),
            "rclone copy": lambda d: self.rclone(data, d),
        }
        if not shape.loss:  # one flow under random loss at a long round trip takes many times the floor: no bound
            tools[WHOLE[0]] = lambda d: self.whole_curl(data, d)
            tools[WHOLE[1]] = lambda d: self.whole_aria2c(data, d)
        for i in range(runs):
            for tool, run in tools.items():
                dest = self.fresh("out")
                result = self.measure(lambda run=run, dest=dest: run(dest))  # type: ignore[misc]
                if tool in WHOLE:
                    check_whole(data, dest / "all.bin")
                else:
                    check_copy(data, dest)
                row.add(tool, result)
                self.say(f"  {row.case}, run {i + 1}: {tool} {result.seconds:.2f} s = {result.seconds / floor:.2f}× "
                         f"the floor; {per_track(result.requests, row.tracks)}{result.timeline()}")
        self.rows.append(row)

    def case_warm(self, data: DataSet, shape: Shape, runs: int) -> None:
        """Every track cached, a fresh mount, ``cp -r``: what a re-export costs (revalidation only)."""
        self.shape(shape)
        session = data.session(self.work, self.origin.url)
        cache = self.fresh("warm-cache")
        self.mixvfs_export(session, cache, self.fresh("out"))  # fill it
        row = Row(f"warm: {len(data.files)} × {human(data.size)} cached, fresh mount + cp -r, {shape.rtt_ms:g} ms",
                  None, len(data.files))
        variants = {"mixvfs": None, **({BASELINE: self.args.baseline} if self.args.baseline else {})}
        for i in range(runs):
            for tool, code in variants.items():
                dest = self.fresh("out")
                result = self.measure(lambda dest=dest, code=code: self.mixvfs_export(  # type: ignore[misc]
                    session, cache, dest, code=code))
                check_copy(data, dest)
                row.add(tool, result)
                heads = [r.end for r in result.requests if r.method == "HEAD"]
                self.say(f"  {row.case}, run {i + 1}: {tool} {result.seconds:.2f} s "
                         f"(mount {self.mount_seconds:.2f} s); {per_track(result.requests, row.tracks)}; "
                         f"most HEADs within one round trip: {most_within(heads, shape.rtt_ms / 1000)}")
        self.rows.append(row)

    def case_ask(self, data: DataSet, shape: Shape, runs: int) -> None:
        """The per-track questions: ``mixvfs preflight`` (empty cache), and a mount of a manifest without sizes."""
        self.shape(shape)
        session = data.session(self.work, self.origin.url)
        nosize = data.session(self.work, self.origin.url, sizes=False)
        pre = Row(f"preflight of {len(data.files)} tracks, {shape.rtt_ms:g} ms", None, len(data.files))
        mnt = Row(f"mount of {len(data.files)} tracks without sizes, {shape.rtt_ms:g} ms", None, len(data.files))
        env = {**os.environ, "MIXVFS_TOKEN": TOKEN}
        for i in range(runs):
            cache = self.fresh("cache")
            result = self.measure(lambda cache=cache: sh(  # type: ignore[misc]
                [MIXVFS, "preflight", str(session), "--cache-dir", str(cache)], env=env, ok=(0, 3)))
            pre.add("mixvfs", result)
            self.say(f"  {pre.case}, run {i + 1}: {result.seconds:.2f} s; {per_track(result.requests, pre.tracks)}")

            mnt_dir = self.work / "mnt"
            mnt_dir.mkdir(exist_ok=True)
            result = self.measure(lambda cache=cache, mnt_dir=mnt_dir: sh(  # type: ignore[misc]
                [MIXVFS, "mount", str(nosize), str(mnt_dir), "--cache-dir", str(cache), "--no-prefetch",
                 "--log-file", str(self.work / "mixvfs.log")], env=env))
            sh([MIXVFS, "unmount", str(mnt_dir)])  # a mount without prefetch: nothing to wait for
            mnt.add("mixvfs", result)
            self.say(f"  {mnt.case}, run {i + 1}: {result.seconds:.2f} s (until the folder is live); "
                     f"{per_track(result.requests, mnt.tracks)}")
        self.rows += [pre, mnt]

    def case_bwlimit(self, data: DataSet, shape: Shape, cap: int, runs: int) -> None:
        """``--bwlimit``: the rate the origin sent at, first request to last answer, against the cap."""
        self.shape(shape)
        session = data.session(self.work, self.origin.url)
        for i in range(runs):
            dest = self.fresh("out")
            carried = self.link.bytes_to_client()
            result = self.measure(lambda dest=dest: self.mixvfs_export(  # type: ignore[misc]
                session, self.fresh("cache"), dest, "--bwlimit", str(cap)))
            carried = self.link.bytes_to_client() - carried
            check_copy(data, dest)
            # What the user's line carried (IP headers included, ~4.5 %: the cap counts only the bodies), from
            # the first GET reaching the origin to the copy's end.
            gets = [r for r in result.requests if r.method == "GET"]
            rate = data.total / (self.copied_at - min(r.start for r in gets))
            self.say(f"    the link carried {carried / MIB:.1f} MiB for {data.total / MIB:.1f} MiB of tracks; "
                     f"{len(gets)} GETs for {len(data.files)} tracks")
            self.caps.append((cap, rate))
            self.say(f"  --bwlimit {human(cap)}/s, {len(data.files)} × {human(data.size)}, {shape.rtt_ms:g} ms, "
                     f"run {i + 1}: {rate / MIB:.2f} MiB/s = {rate / cap:.3f} × the cap "
                     f"(whole export {result.seconds:.1f} s)")

    def case_studio(self, data: DataSet, shape: Shape, runs: int) -> None:
        """The studio tier: a team cache (nginx as ``mixvfs team-cache nginx-config`` writes it, on this machine:
        the studio's LAN) before the origin at the far end of the link. Each run, beside a workstation straight
        to the origin: the first workstation through an empty team cache (alice), then a later one (bob, another
        token, an empty cache of its own) whose bytes all sit in the team cache. The origin's requests per track
        are counted in its log; the team cache's own log (its times and the origin's) is kept in the work folder."""
        self.shape(shape)
        session = data.session(self.work, self.origin.url)
        floor = data.total / shape.bytes_per_second
        label = f"{len(data.files)} × {human(data.size)}, {shape.rtt_ms:g} ms"
        straight = Row(f"studio: {label}, straight to the origin", floor, len(data.files))
        first = Row(f"studio: {label}, first workstation through the team cache", floor, len(data.files))
        later = Row(f"studio: {label}, a later workstation (another token), all in the team cache", None,
                    len(data.files))
        for i in range(runs):
            dest = self.fresh("out")
            result = self.measure(lambda dest=dest: self.mixvfs_export(  # type: ignore[misc]
                session, self.fresh("cache"), dest))
            check_copy(data, dest)
            straight.add("mixvfs", result)
            self.say(f"  {straight.case}, run {i + 1}: {result.seconds:.2f} s = {result.seconds / floor:.2f}× the "
                     f"floor; {per_track(result.requests, straight.tracks)}")
            with team_cache(self.work / f"team-{i}", self.origin.url) as team:
                for row, token in ((first, TOKEN), (later, "bob")):
                    dest = self.fresh("out")
                    result = self.measure(lambda dest=dest, token=token: self.mixvfs_export(  # type: ignore[misc]
                        session, self.fresh("cache"), dest, "--team-cache", team, token=token))
                    check_copy(data, dest)
                    row.add("mixvfs", result)
                    ratio = f" = {result.seconds / floor:.2f}× the floor" if row.floor else ""
                    asked = result.requests
                    span = max(r.end for r in asked) - min(r.start for r in asked) if asked else 0.0
                    self.say(f"  {row.case}, run {i + 1}: {result.seconds:.2f} s{ratio} (mount "
                             f"{self.mount_seconds:.2f} s, the copy after it {result.seconds - self.mount_seconds:.2f}"
                             f" s); at the origin: {per_track(result.requests, row.tracks)}, from the first to the "
                             f"last within {span:.2f} s")
        self.rows += [straight, first, later]
        s_med, f_med = straight.median("mixvfs"), first.median("mixvfs")
        if s_med and f_med:
            self.studio = (f"first workstation through the team cache ÷ straight to the origin: {f_med / s_med:.2f} "
                           f"(medians {f_med:.2f} s / {s_med:.2f} s)")
            self.say(f"  {self.studio}")

    def case_reconnect(self, data: DataSet, shape: Shape) -> None:
        """What a new connection costs against a kept one: two HEADs in one curl (the second reuses the first's
        connection), the time to each answer's first byte."""
        self.shape(shape)
        url = data.urls(self.origin.url)[0]
        done = subprocess.run(["curl", "-sS", "-I", "-o", "/dev/null", "-o", "/dev/null", "-H",
                               f"Authorization: Bearer {TOKEN}", "-w", "%{time_connect} %{time_starttransfer}\n",
                               url, url], capture_output=True, text=True, check=True)
        (connect, first), (_, again) = (map(float, line.split()) for line in done.stdout.split("\n")[:2])
        self.reconnect = (f"{shape.rtt_ms:g} ms: a HEAD on a new connection answered after {first * 1000:.0f} ms "
                          f"(TCP handshake {connect * 1000:.0f} ms), on the kept one after {again * 1000:.0f} ms")
        self.say(f"  reconnect, {self.reconnect}")

    # -- the table --------------------------------------------------------------------------------------

    def table(self) -> str:
        tools = ["mixvfs", "mixvfs --jobs 8", *([BASELINE] if self.args.baseline else []), *PEERS, *WHOLE]
        lines = ["| case | floor | " + " | ".join(tools) + " | mixvfs ÷ best peer | mixvfs ÷ one file's best | "
                 "mixvfs requests / connections per track |", "|---" * (len(tools) + 5) + "|"]
        for row in self.rows:
            cells = []
            for tool in tools:
                runs = row.runs.get(tool)
                if not runs:
                    cells.append("—")
                elif row.floor is None:
                    cells.append(spread([r.seconds for r in runs], "s"))
                else:
                    cells.append(spread([r.seconds / row.floor for r in runs], "×"))
            best = [m for m in (row.median(p) for p in PEERS) if m is not None]
            mine = row.median("mixvfs")
            vs = f"{mine / min(best):.2f}" if best and mine else "—"
            whole = [m for m in (row.median(w) for w in WHOLE) if m is not None]
            vs_whole = f"{mine / min(whole):.2f}" if whole and mine else "—"
            counts = "; ".join(per_track(r.requests, row.tracks, short=True) for r in row.runs.get("mixvfs", []))
            floor = f"{row.floor:.1f} s" if row.floor else "—"
            lines.append(f"| {row.case} | {floor} | " + " | ".join(cells) + f" | {vs} | {vs_whole} | {counts} |")
        return "\n".join(lines)


@contextlib.contextmanager
def team_cache(folder: Path, origin: str) -> Iterator[str]:
    """The studio's team cache: nginx on this machine (the studio's LAN is loopback here) in front of ``origin``,
    configured by ``mixvfs team-cache nginx-config``, empty. Its URL; its log is ``folder/cache/logs``."""
    nginx = nginx_binary()
    if nginx is None:
        raise RuntimeError("nginx is not installed (apt install nginx-light)")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    done = subprocess.run([MIXVFS, "team-cache", "nginx-config", "--origin", origin, "--listen", f"127.0.0.1:{port}",
                           "--cache-dir", str(folder / "cache"), "--max-size", "10G"],
                          capture_output=True, text=True, check=True)
    conf = folder / "nginx.conf"
    conf.write_text(done.stdout)
    proc = subprocess.Popen([nginx, "-c", str(conf), "-e", str(folder / "cache" / "logs" / "error.log"),
                             "-g", "daemon off;"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20  # a hang guard: nginx starts in milliseconds
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"the team cache's nginx did not start: {err}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)
        if proc.stderr:
            proc.stderr.close()


def spread(values: list[float], unit: str) -> str:
    fmt = "{:.2f}"
    if len(values) == 1:
        return fmt.format(values[0]) + (" s" if unit == "s" else "×")
    lo, hi = min(values), max(values)
    text = f"{fmt.format(statistics.median(values))} ({fmt.format(lo)}–{fmt.format(hi)})"
    return text + (" s" if unit == "s" else "")


def per_track(requests: list[Request], tracks: int, *, short: bool = False) -> str:
    gets = sum(r.method == "GET" for r in requests)
    heads = sum(r.method == "HEAD" for r in requests)
    connections = len({r.connection for r in requests})
    if short:
        return f"{len(requests) / tracks:.2f} / {connections / tracks:.2f}"
    return (f"{len(requests)} requests ({gets} GET, {heads} HEAD) = {len(requests) / tracks:.2f} per track, "
            f"{connections} connections = {connections / tracks:.2f} per track")


def human(size: int) -> str:
    return f"{size // MIB} MiB" if size >= MIB else f"{size // KIB} KiB"


def check_copy(data: DataSet, dest: Path) -> None:
    """Every file there, of the right size, and the first and last byte for byte (a wrong copy is no result).
    Names differ by tool (mixvfs names files "artist - title"); both sort in track order."""
    got = sorted(dest.iterdir())
    if len(got) != len(data.files):
        raise RuntimeError(f"{dest}: {len(got)} files, not {len(data.files)}")
    for i, (src, out) in enumerate(zip(data.files, got, strict=True)):
        if out.stat().st_size != data.size:
            raise RuntimeError(f"{out}: {out.stat().st_size} bytes, not {data.size}")
        if i in (0, len(data.files) - 1) and out.read_bytes() != src.read_bytes():
            raise RuntimeError(f"{out}: not the server's bytes")


def check_whole(data: DataSet, got: Path) -> None:
    """The one-file fetch: its size, and its first and last track's bytes where they belong."""
    if not got.exists() or got.stat().st_size != data.total:
        raise RuntimeError(f"{got}: {got.stat().st_size if got.exists() else 'no'} bytes, not {data.total}")
    with got.open("rb") as handle:
        for i in (0, len(data.files) - 1):
            handle.seek(i * data.size)
            if handle.read(data.size) != data.files[i].read_bytes():
                raise RuntimeError(f"{got}: not the server's bytes at track {i}")


def sh(cmd: list[str], *, env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,)) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode not in ok:
        raise RuntimeError(f"{' '.join(cmd[:3])}... failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="40 short tracks at 80 ms, one run (a few minutes)")
    parser.add_argument("--runs", type=int, default=None, help="runs of each case (default 3; quick 1)")
    parser.add_argument("--only", default="",
                        help="comma list: cold,big,loss,warm,ask,bwlimit,reconnect,studio (default all)")
    parser.add_argument("--rate", type=float, default=100.0, help="link rate each way, Mbit/s (100)")
    parser.add_argument("--origin-cc", default=None, metavar="NAME",
                        help="TCP congestion control the origin sends with, e.g. cubic (Linux's default) or bbr "
                             "(default: this host's, which a new namespace copies; choosing sets the host's "
                             "default for the moment the server namespace is made, then puts it back)")
    parser.add_argument("--rtts", default="", help="comma list of round trips (ms) for the cold cases (20,80,150)")
    parser.add_argument("--loss-rtts", default="80", help="comma list of round trips (ms) for the loss cases (80)")
    parser.add_argument("--losses", default="", help="comma list of loss rates, %% (0.5,2; quick: 2)")
    parser.add_argument("--work", default=None, help="data folder (default: a temp folder on /var/tmp)")
    parser.add_argument("--out", default=str(REPO / "bench-out"), help="where wan-results.md goes")
    parser.add_argument("--baseline", default=None, metavar="CHECKOUT",
                        help="another checkout (e.g. `git archive main | tar -x -C DIR`): its mixvfs runs as one more "
                             "tool, interleaved with this one in each run (an A/B on the same link and load)")
    args = parser.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = missing()
    if problem:
        print(f"bench-wan: {problem}", file=sys.stderr)
        return 2
    lacking = [t for t in ("aria2c", "curl", "rclone") if shutil.which(t) is None]
    if lacking:
        print(f"bench-wan: {', '.join(lacking)} not installed (bash tools/install_system.sh bench)",
              file=sys.stderr)
        return 2
    only = set(filter(None, args.only.split(","))) or {"cold", "big", "loss", "warm", "ask", "bwlimit", "reconnect",
                                                      "studio"}
    rate = args.rate
    compile_bytecode(*([args.baseline] if args.baseline else []))
    with contextlib.ExitStack() as stack:
        work = Path(args.work) if args.work else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="mixvfs-wan-", dir="/var/tmp")))
        work.mkdir(parents=True, exist_ok=True)
        work.chmod(0o755)
        # Out of any checkout: `python -m` puts the working directory first on a daemon's path, and a --baseline
        # checkout's daemon (older code, started without -P) would otherwise run this checkout's package.
        args.out = str(Path(args.out).resolve())
        os.chdir(work)
        root = work / "www"
        root.mkdir(exist_ok=True)
        small = make_dataset(root, 40 if args.quick else 200, 512 * KIB)
        big = make_dataset(root, 24, 8 * MIB)
        wholes = [data.make_whole(root) for data in (small, big)]
        for path in [*small.files, *big.files, *wholes]:
            path.read_bytes()  # into the page cache: the server is never disk-bound
        link = stack.enter_context(emulated(Shape(80, rate), work / "build", args.origin_cc))
        origin = stack.enter_context(serving(link, root, work / "origin"))
        said = (f"bench-wan {time.strftime('%Y-%m-%d %H:%M')} UTC: link slot {link.slot}, {rate:g} Mbit/s each way, "
                f"origin {origin.url} (nginx, bearer check, sending with TCP {link.origin_cc})")
        print(f"{said}; load average {os.getloadavg()[0]:.2f}", flush=True)
        bench = Bench(args, link, origin, work)
        rtts = [float(r) for r in args.rtts.split(",") if r] or ((80,) if args.quick else (20, 80, 150))
        if "cold" in only:
            for rtt in rtts:
                bench.case_cold(small, Shape(rtt, rate), args.runs)
        if "big" in only and not args.quick:
            for rtt in (80, 150):
                bench.case_cold(big, Shape(rtt, rate), args.runs)
        if "loss" in only:
            losses = [float(p) / 100 for p in args.losses.split(",") if p] or ([0.02] if args.quick else [0.005, 0.02])
            for loss_rtt in (float(r) for r in args.loss_rtts.split(",") if r):
                for loss in losses:
                    bench.case_cold(small, Shape(loss_rtt, rate, loss), args.runs)
        if "warm" in only:
            bench.case_warm(small, Shape(80, rate), args.runs)
        if "ask" in only:
            bench.case_ask(small, Shape(80, rate), args.runs)
        if "studio" in only:
            bench.case_studio(small, Shape(80, rate), args.runs)
        if "reconnect" in only:
            bench.case_reconnect(small, Shape(150, rate))
        if "bwlimit" in only:  # a third of the link: the cap, not the link, bounds the export
            bench.case_bwlimit(small, Shape(20, rate), int(rate * 1e6 / 8 / 3), args.runs)
        table = bench.table()
        if bench.caps:
            table += "\n\n--bwlimit: track bytes ÷ (first GET to the end of cp) ÷ the cap, per run: " + ", ".join(
                f"{sent / cap:.3f}" for cap, sent in bench.caps)
        if bench.studio:
            table += f"\n\nstudio: {bench.studio}"
        if bench.reconnect:
            table += f"\n\nreconnect at {bench.reconnect}"
        print()
        print(table)
        print(f"\nload average at the end {os.getloadavg()[0]:.2f} (2 cores shared: other work makes runs noisy)")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "wan-results.md").write_text(said + "\n\n" + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
