"""The studio tier in the benchmark (``python -m tools.bench --only team``): two workstations exporting the same session
through the team cache (nginx, configured by ``mixvfs team-cache nginx-config``) against each alone, straight
from the origin. The origin is the dev server (``tools.devserver``) with two tokens (its request log counts the bytes it
sent); each workstation is a mount with its own token and its own (empty) cache folder.

Figures: wall time of both exports running at once, origin GET bytes, and the second workstation's export
after the first one finished. On loopback the origin is as near as the cache, so the time figures show the
cost of the extra hop; the origin bytes are what a studio's internet link carries.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tools.bench.cases import Bench
from tools.bench.common import MIXVFS, DataSet, Row, copy_tree, free_port, wait_for_port
from tools.devserver import DevServer

TOKENS = ("alice", "bob")


@contextlib.contextmanager
def team_nginx(origin: str, folder: Path, port: int) -> Iterator[str]:
    """A fresh team cache (empty cache folder) in front of ``origin``; its URL."""
    shutil.rmtree(folder, ignore_errors=True)
    conf = folder.parent / f"{folder.name}.conf"
    done = subprocess.run([MIXVFS, "team-cache", "nginx-config", "--origin", origin, "--listen", f"127.0.0.1:{port}",
                           "--cache-dir", str(folder), "--max-size", "20G"], capture_output=True, text=True,
                          check=True)
    conf.write_text(done.stdout)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx, "-c", str(conf), "-e", str(folder / "logs" / "error.log"), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


@contextlib.contextmanager
def mount_as(token: str, session: Path, folder: Path, *extra: str) -> Iterator[Path]:
    """A workstation: a mount with its own token and an empty cache folder of its own."""
    shutil.rmtree(folder, ignore_errors=True)
    mnt = folder / "mnt"
    mnt.mkdir(parents=True)
    subprocess.run([MIXVFS, "mount", str(session), str(mnt), "--cache-dir", str(folder / "cache"), "--report",
                    str(folder / "report.json"), "--log-file", str(folder / "mixvfs.log"), "--no-prefetch", *extra],
                   env={**os.environ, "MIXVFS_TOKEN": token}, check=True, capture_output=True)
    try:
        yield mnt
    finally:
        subprocess.run([MIXVFS, "unmount", str(mnt)], capture_output=True, check=False)


def origin_get_bytes(log: Path) -> int:
    if not log.exists():
        return 0
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return sum(int(e["bytes"]) for e in entries if e["method"] == "GET")


class TeamCase:
    """On top of :class:`tools.bench.cases.Bench`: ``run(data)`` appends its rows."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench

    def export(self, session: Path, work: Path, token: str, team: str | None) -> float:
        """One workstation: mount with an empty cache, ``cp -r`` out, unmount; the cp's seconds."""
        extra = ["--team-cache", team] if team else []
        with mount_as(token, session, work / f"ws-{token}", *extra) as mnt:
            return copy_tree(mnt, work / f"out-{token}")

    def both_at_once(self, session: Path, work: Path, team: str | None) -> float:
        seconds: dict[str, float] = {}
        start = time.perf_counter()
        threads = [threading.Thread(target=lambda t=t: seconds.__setitem__(t, self.export(session, work, t, team)))
                   for t in TOKENS]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if len(seconds) != len(TOKENS):
            raise RuntimeError("a workstation's export failed")
        return time.perf_counter() - start

    def run(self, data: DataSet) -> None:
        bench = self.bench
        work, root = bench.work / "team", bench.root
        work.mkdir(parents=True, exist_ok=True)
        size = sum(p.stat().st_size for p in data.files)
        bench.say(f"team cache: two workstations exporting {data.name} ({size >> 20} MiB), {bench.runs} runs")
        log = work / "origin.jsonl"
        with DevServer(root, tokens=TOKENS, log=log) as origin:
            session = work / "team-session.json"
            doc = json.loads(data.session.read_text())
            doc["server"] = origin.url
            session.write_text(json.dumps(doc))
            alone, team, alone_bytes, team_bytes, second_alone, second_team = [], [], [], [], [], []
            for i in range(bench.runs):
                log.write_text("")
                alone.append(self.both_at_once(session, work, None))
                alone_bytes.append(origin_get_bytes(log) / 1e6)
                log.write_text("")
                with team_nginx(origin.url, work / "nginx", free_port()) as url:
                    team.append(self.both_at_once(session, work, url))
                    team_bytes.append(origin_get_bytes(log) / 1e6)
                    second_team.append(self.export(session, work, "bob", url))  # the cache is warm now
                second_alone.append(self.export(session, work, "bob", None))
                bench.say(f"  run {i + 1}: both at once alone {alone[-1]:.2f} s ({alone_bytes[-1]:.0f} MB from the "
                          f"origin), through the team cache {team[-1]:.2f} s ({team_bytes[-1]:.0f} MB); "
                          f"a later workstation alone {second_alone[-1]:.2f} s, via the warm team cache "
                          f"{second_team[-1]:.2f} s")
        bench.rows.append(Row(f"team: 2 workstations at once, {data.name}", "s", "via team cache", team,
                              "each alone", alone))
        bench.rows.append(Row("team: origin GET bytes, 2 workstations", "MB", "via team cache", team_bytes,
                              "each alone", alone_bytes, "ratio <= 0.55"))
        bench.rows.append(Row("team: a later workstation (cache warm)", "s", "via team cache", second_team,
                              "alone, from the origin", second_alone))
