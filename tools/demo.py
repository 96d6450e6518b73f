"""`make demo`: a guided tour of the main job, end to end, on a bundled local server and generated audio.

Builds a session of real audio (WAV and FLAC tones) with local and cloud tracks, awkward names and one
cloud track that is meant to fail (the server answers 500); starts the dev server (with a bearer token);
mounts the session with `mixvfs`; copies the whole folder out with plain `cp -r`; shows the failing
track's EIO and the report; checks every other copy byte for byte; unmounts. Each step first says what
it does and what to expect, with the command a user would type. Exits non-zero if anything is not as it
should be.
"""

from __future__ import annotations

import filecmp
import json
import os
import shlex
import shutil
import subprocess
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from tools.devserver import DevServer
from tools.make_audio import write_flac, write_sized, write_wav

REPO = Path(__file__).resolve().parent.parent

BIN = Path(sys.executable).parent
TOKEN = "demo-token-not-a-secret"
STEPS = 6
BROKEN = "Broken - Server Error.wav"  # the name mixvfs gives the failing track (checked against the report)


@dataclass(frozen=True)
class Track:
    entry: dict[str, object]  # the manifest's entry
    note: str  # why it is in the demo


def bold(text: str) -> str:
    return f"\033[1m{text}\033[0m" if sys.stdout.isatty() else text


def say(step: int, title: str, *explain: str) -> None:
    """A step's heading, then what it does and what to expect."""
    print("\n" + bold(f"== {step}/{STEPS} {title}"))
    for line in explain:
        print(f"   {line}")
    sys.stdout.flush()


def shown(path: Path) -> str:
    """A path as the user would type it from the repository (where `make demo` runs)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def run(*argv: str, token: bool = False, capture: bool = False) -> subprocess.CompletedProcess[str]:
    """Show a command as the user would type it (from where `make demo` runs), then run exactly that."""
    env = {**os.environ, "MIXVFS_TOKEN": TOKEN} if token else None
    print(f"   $ {f'MIXVFS_TOKEN={TOKEN} ' if token else ''}{shlex.join(argv)}", flush=True)
    program = str(BIN / argv[0]) if argv[0] in ("mixvfs", "cachectl") else argv[0]
    return subprocess.run([program, *argv[1:]], env=env, capture_output=capture, text=True, check=False)


def build(out: Path) -> tuple[Path, Path, list[Track], dict[str, Path]]:
    """Audio on 'disk' and on the 'server', and the manifest. Returns (manifest, server root, tracks, expected)."""
    local, server = out / "music", out / "server"
    (server / "stream").mkdir(parents=True)
    local.mkdir()
    write_wav(local / "intro.wav", 2.0, 440)
    write_wav(local / "outro.wav", 1.5, 330)
    write_flac(server / "stream" / "c7", 3.0, 660)
    write_wav(server / "stream" / "c8.wav", 2.5, 550)
    write_flac(server / "stream" / "c9", 1.0, 880)
    write_sized(server / "stream" / "c10", 24 << 20, kind="wav", seed=10)
    (server / "stream" / "broken.wav").write_bytes(b"\0" * 1000)
    tracks = [
        Track({"id": "a1", "artist": "Nina", "title": "Intro", "file_path": "music/intro.wav"},
              "a file on this disk: passed straight through"),
        Track({"id": "c7", "artist": "Kid A", "title": "Hook", "cloud_stream_path": "/stream/c7",
               "size": (server / "stream" / "c7").stat().st_size, "content_type": "audio/flac"},
              "FLAC, size and type given in the manifest"),
        Track({"id": "c8", "artist": "AC/DC", "title": "  Back in Black (Live)...  ",
               "cloud_stream_path": "/stream/c8.wav"},
              "WAV: '/' in the artist, spaces and dots around the title"),
        Track({"id": "c9", "artist": "Sigur Ro\u0301s", "title": "Hoppi\u0301polla", "cloud_stream_path": "/stream/c9"},
              "FLAC, accents in decomposed form (the file name is NFC)"),
        Track({"id": "c10", "artist": "", "title": "Long Set " + "x" * 300, "cloud_stream_path": "/stream/c10"},
              "24 MiB, no artist, a 309-character title (names stop at 255 bytes)"),
        Track({"id": "dup", "artist": "nina", "title": "INTRO", "file_path": "music/outro.wav"},
              "the same name as Nina - Intro but for case: gets ' (2)'"),
        Track({"id": "bad", "artist": "Broken", "title": "Server Error", "cloud_stream_path": "/stream/broken.wav",
               "size": 1000},
              "the server answers HTTP 500 for it: MEANT TO FAIL"),
    ]
    manifest = out / "Friday Mix.json"
    write_manifest(manifest, "http://127.0.0.1:0", [t.entry for t in tracks])
    origin = {"a1": local / "intro.wav", "c7": server / "stream" / "c7", "c8": server / "stream" / "c8.wav",
              "c9": server / "stream" / "c9", "c10": server / "stream" / "c10", "dup": local / "outro.wav"}
    return manifest, server, tracks, origin


def write_manifest(path: Path, server: str, entries: list[dict[str, object]]) -> None:
    path.write_text(json.dumps({"name": "Friday Mix", "server": server, "tracks": entries},
                               ensure_ascii=False, indent=1))


def introduce() -> None:
    print(bold("mixvfs demo: a guided tour (about ten seconds)"))
    print(f"""
   A MixBoard session lists tracks; some are files on this disk, some live on the Chad Music server.
   mixvfs mounts the session as a folder in which every track is a plain file, so any copying program
   can export it. This demo plays it through on a local stand-in server:

     1. generate a session of real audio: 7 tracks, 2 local and 5 on the server
     2. start the stand-in server (python -m tools.devserver), with a bearer token
     3. mount the session with mixvfs
     4. copy the folder out with plain `cp -r`, as MixBoard's exporter does
     5. read the report, and unmount
     6. check every copy byte for byte

   One track is meant to fail. The server answers HTTP 500 for '{BROKEN}'.
   mixvfs never hands a copier a wrong, short or empty file: cp gets an I/O error for that one file,
   so you will see a line "cp: error reading '…/{BROKEN}': Input/output error"
   and cp exits 1, while the report says which track failed and why. The other six copy whole.""")


def main() -> int:
    out = REPO / "demo-out"
    mixvfs = str(BIN / "mixvfs")
    if out.exists():  # a mount left by an interrupted run first, then the files
        subprocess.run([mixvfs, "unmount", str(out / "MixBoardTracks")], capture_output=True)
        shutil.rmtree(out)
    out.mkdir()
    introduce()
    say(1, "generate a session",
        f"Real audio (tones from tools/make_audio.py) and a manifest, in {shown(out)}/:")
    manifest, server_root, tracks, origin = build(out)
    for track in tracks:
        print(f"     {'local' if 'file_path' in track.entry else 'cloud'}  {label(track.entry):<32} {track.note}")
    print(f"   manifest: {shown(manifest)}")
    failing = {"/stream/broken.wav": {"status": 500}}
    say(2, "start the stand-in server",
        f"It serves each file under {shown(server_root)}/ at its path (/stream/c7 is {shown(server_root)}/stream/c7),",
        "only with the bearer token; its faults file makes /stream/broken.wav answer 500.")
    # Shown, not run: DevServer runs that file on a free port with the faults in a temporary folder.
    print(f"   $ python -m tools.devserver {shown(server_root)} --token {TOKEN} --faults faults.json", flush=True)
    with DevServer(server_root, tokens=[TOKEN], faults=failing) as server:
        write_manifest(manifest, server.url, [t.entry for t in tracks])
        print(f"   listening on {server.url}; the manifest's \"server\" now points there")
        mountpoint, export = out / "MixBoardTracks", out / "Export"
        mountpoint.mkdir()
        copy = export_session(manifest, mountpoint, export, out)
        if copy is None:
            return 1
    names = {r["id"]: r["name"] for r in json.loads((out / "report.json").read_text())["tracks"]}
    return check(copy, export, names, origin, out / "report.json")


def label(entry: dict[str, object]) -> str:
    # NFC, as in the file names: a decomposed accent would count as two characters and break the columns.
    text = unicodedata.normalize("NFC", f"{entry['artist'] or '(no artist)'} - {str(entry['title']).strip()}")
    return text if len(text) <= 32 else text[:31] + "…"


def export_session(manifest: Path, mountpoint: Path, export: Path,
                   out: Path) -> subprocess.CompletedProcess[str] | None:
    """Steps 3 to 5: mount, copy out, report, unmount. None if the mount failed."""
    say(3, "mount the session",
        "The token comes from MIXVFS_TOKEN (a flag is refused: it would show in ps). --retries 2 --retry-wait 0.1s",
        "make the failing track give up at once (the default is 5 tries); --cache-dir and --report keep",
        f"everything in {shown(out)}/. The command returns once the folder is live.")
    mount = run("mixvfs", "mount", shown(manifest), shown(mountpoint), "--cache-dir", shown(out / "cache"),
                "--report", shown(out / "report.json"), "--retries", "2", "--retry-wait", "0.1s", token=True)
    if mount.returncode != 0:
        return None
    try:
        print("\n   Every track is now a plain file, named from its artist and title. The cloud tracks are already")
        print("   downloading in the background, 3 at a time (--jobs):")
        run("ls", shown(mountpoint))
        say(4, "copy the folder out",
            f"Expect exactly one error line, for '{BROKEN}' (the planned failure):",
            "cp goes on with the other files and exits 1. A track still downloading is waited for.")
        copy = run("cp", "-r", f"{shown(mountpoint)}/.", shown(export), capture=True)
        print(copy.stderr.strip() or "(no errors)", flush=True)
        expected = " (as expected: one file could not be read)" if copy.returncode == 1 else ""
        print(f"   cp exit status: {copy.returncode}{expected}")
        show_error_xattr(mountpoint / BROKEN)
        say(5, "read the report, and unmount",
            f"The report ({shown(out / 'report.json')}, rewritten as the mount runs) has a line per track:",
            "the failed one with its cause and its tries. Unmounting waits for the final report.")
        run("mixvfs", "report", shown(mountpoint))
    finally:
        run("mixvfs", "unmount", shown(mountpoint))
    return copy


def show_error_xattr(path: Path) -> None:
    """The failing file carries its cause too (getfattr comes with the `attr` package `make` installs)."""
    if shutil.which("getfattr") is None:
        return
    print("\n   The file itself says why, in an extended attribute:")
    value = run("getfattr", "--only-values", "-n", "user.mixvfs.error", shown(path), capture=True)
    print(value.stdout.strip() or value.stderr.strip())


def check(copy: subprocess.CompletedProcess[str], export: Path, names: dict[str, str], origin: dict[str, Path],
          report_path: Path) -> int:
    say(6, "check every copy byte for byte", "Each exported file against the file the session was made from:")
    problems = []
    for track_id, source in origin.items():
        target = export / names[track_id]
        same = target.exists() and filecmp.cmp(target, source, shallow=False)
        print(f"     {'ok  ' if same else 'BAD '} {names[track_id]}")
        if not same:
            problems.append(names[track_id])
    if names["bad"] != BROKEN:
        problems.append(f"the failing track is named {names['bad']!r}, not {BROKEN!r} as announced")
    # cp says "error reading 'X': Input/output error" when the read fails, "cannot open 'X' for reading:
    # Input/output error" when the download had failed before cp opened it (prefetch got there first).
    eio = any(f"{BROKEN}'" in line and line.endswith("Input/output error") for line in copy.stderr.splitlines())
    if copy.returncode == 0 or not eio:
        problems.append("the failing track did not give cp an Input/output error")
    final = {r["id"]: r for r in json.loads(report_path.read_text())["tracks"]}
    if final["bad"]["status"] != "failed" or "500" not in (final["bad"]["error"] or ""):
        problems.append("the report does not say why the failing track failed")
    print(f"     {'ok  ' if not problems else 'BAD '} '{BROKEN}': EIO for cp, and the report says: "
          f"{final['bad']['error']}")
    if problems:
        print("\ndemo FAILED: " + "; ".join(problems))
        return 1
    print("\n" + bold("demo passed") + ": six tracks copied byte for byte, the seventh failed loudly "
          "(EIO for cp, and the report says why).")
    print("Next: try it by hand with the steps in README.md, \"Try it in two minutes\". "
          f"Everything this demo made is in {shown(export.parent)}/ (the next run starts afresh).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
