"""`make demo`: the main job end to end on a bundled local server and generated audio.

Builds a session of real audio (WAV and FLAC tones) with local and cloud tracks, awkward names and one
cloud track that fails; starts the dev server (with a bearer token); mounts the session with `mixvfs`;
copies the whole folder out with plain `cp -r`; shows the failing track's EIO and the report; checks
every other copy byte for byte; unmounts. Exits non-zero if anything is not as it should be.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tools.devserver import DevServer  # noqa: E402
from tools.make_audio import write_flac, write_sized, write_wav  # noqa: E402

BIN = Path(sys.executable).parent
TOKEN = "demo-token-not-a-secret"


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def build(out: Path) -> tuple[Path, Path, dict[str, Path]]:
    """Audio on 'disk' and on the 'server', and the manifest. Returns (manifest, server root, expected)."""
    local, server = out / "music", out / "server"
    (server / "stream").mkdir(parents=True)
    local.mkdir()
    write_wav(local / "intro.wav", 2.0, 440)
    write_wav(local / "outro.wav", 1.5, 330)
    write_flac(server / "stream" / "c7", 3.0, 660)
    write_wav(server / "stream" / "c8.wav", 2.5, 550)
    write_flac(server / "stream" / "c9", 1.0, 880)
    write_sized(server / "stream" / "c10", 24 << 20, kind="wav", seed=10)
    tracks = [
        {"id": "a1", "artist": "Nina", "title": "Intro", "file_path": "music/intro.wav"},
        {"id": "c7", "artist": "Kid A", "title": "Hook", "cloud_stream_path": "/stream/c7",
         "size": (server / "stream" / "c7").stat().st_size, "content_type": "audio/flac"},
        {"id": "c8", "artist": "AC/DC", "title": "  Back in Black (Live)...  ", "cloud_stream_path": "/stream/c8.wav"},
        {"id": "c9", "artist": "Sigur Ro\u0301s", "title": "Hoppi\u0301polla", "cloud_stream_path": "/stream/c9"},
        {"id": "c10", "artist": "", "title": "Long Set " + "x" * 300, "cloud_stream_path": "/stream/c10"},
        {"id": "dup", "artist": "nina", "title": "INTRO", "file_path": "music/outro.wav"},
        {"id": "bad", "artist": "Broken", "title": "Server Error", "cloud_stream_path": "/stream/broken.wav",
         "size": 1000},
    ]
    (server / "stream" / "broken.wav").write_bytes(b"\0" * 1000)
    manifest = out / "Friday Mix.json"
    manifest.write_text(json.dumps({"name": "Friday Mix", "server": "http://127.0.0.1:0", "tracks": tracks},
                                   ensure_ascii=False, indent=1))
    origin = {"a1": local / "intro.wav", "c7": server / "stream" / "c7", "c8": server / "stream" / "c8.wav",
              "c9": server / "stream" / "c9", "c10": server / "stream" / "c10", "dup": local / "outro.wav"}
    return manifest, server, origin


def main() -> int:
    out = REPO / "demo-out"
    if out.exists():
        subprocess.run([str(BIN / "mixvfs"), "unmount", str(out / "MixBoardTracks")], capture_output=True)
        shutil.rmtree(out)
    out.mkdir()
    say("generating a session: local and cloud tracks of real audio, awkward names, one failing track")
    manifest, server_root, origin = build(out)
    failing = {"/stream/broken.wav": {"status": 500}}
    with DevServer(server_root, tokens=[TOKEN], faults=failing) as server:
        doc = json.loads(manifest.read_text())
        doc["server"] = server.url
        manifest.write_text(json.dumps(doc, ensure_ascii=False, indent=1))
        print(f"dev server at {server.url} (bearer token required); /stream/broken.wav answers 500")
        mountpoint, export = out / "MixBoardTracks", out / "Export"
        mountpoint.mkdir()
        say(f"mixvfs mount '{manifest.name}' {mountpoint.name}")
        env = {**os.environ, "MIXVFS_TOKEN": TOKEN}
        mixvfs = str(BIN / "mixvfs")
        cmd = [mixvfs, "mount", str(manifest), str(mountpoint), "--cache-dir", str(out / "cache"),
               "--report", str(out / "report.json"), "--retries", "2", "--retry-wait", "0.1s"]
        if subprocess.run(cmd, env=env).returncode != 0:
            return 1
        try:
            subprocess.run(["ls", "-l", str(mountpoint)])
            say(f"cp -r {mountpoint.name}/. {export.name}/   (MixBoard's exporter does the same)")
            copy = subprocess.run(["cp", "-r", f"{mountpoint}/.", str(export)], capture_output=True, text=True)
            print(copy.stderr.strip() or "(no errors)")
            print(f"cp exit status: {copy.returncode}")
            say("mixvfs report")
            subprocess.run([mixvfs, "report", str(mountpoint)])
            names = {r["id"]: r["name"] for r in json.loads((out / "report.json").read_text())["tracks"]}
        finally:
            say("mixvfs unmount")
            subprocess.run([mixvfs, "unmount", str(mountpoint)], check=False)
    return check(copy, export, names, origin, out / "report.json")


def check(copy: subprocess.CompletedProcess[str], export: Path, names: dict[str, str], origin: dict[str, Path],
          report_path: Path) -> int:
    say("checking every copy byte for byte")
    problems = []
    for track_id, source in origin.items():
        target = export / names[track_id]
        same = target.exists() and filecmp.cmp(target, source, shallow=False)
        print(f"  {'ok  ' if same else 'BAD '} {names[track_id]}")
        if not same:
            problems.append(names[track_id])
    broken = names["bad"]
    if copy.returncode == 0 or f"{broken}': Input/output error" not in copy.stderr:
        problems.append("the failing track did not give cp an Input/output error")
    final = {r["id"]: r for r in json.loads(report_path.read_text())["tracks"]}
    if final["bad"]["status"] != "failed" or "500" not in (final["bad"]["error"] or ""):
        problems.append("the report does not say why the failing track failed")
    print(f"  {'ok  ' if not problems else 'BAD '} '{broken}': EIO for cp, and the report says: "
          f"{final['bad']['error']}")
    if problems:
        print("demo FAILED: " + "; ".join(problems))
        return 1
    print("\ndemo passed: every track copied byte for byte, the failing one loudly (EIO + report).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
