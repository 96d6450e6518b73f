"""The README's section on the dev server's faults file: it names every field the server takes, and its
example, given to the real server, does what the README says to a real `cachectl warm`."""

from __future__ import annotations

import json
import re

from tests.conftest import CACHECTL, REPO, run, write_session
from tools.devserver import FAULT_FIELDS, DevServer, parse_faults
from tools.make_audio import write_sized

SECTION = "### Reproducing a problem: the dev server's faults file"


def section() -> str:
    readme = (REPO / "README.md").read_text()
    assert SECTION in readme
    return readme.split(SECTION, 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]


def test_the_readme_names_every_field_of_the_faults_file():
    rows = [line for line in section().splitlines() if line.startswith("| `")]
    named = {name for row in rows for name in re.findall(r"`([a-z_]+)`", row.split("|")[1])}
    # hold_head and hold_after are described in the row of hold, which they need.
    named |= {name for name in ("hold_head", "hold_after") if f"`{name}" in section()}
    assert named == set(FAULT_FIELDS)


def example() -> dict[str, dict[str, object]]:
    block = section().split("```json\n", 1)[1].split("```", 1)[0]
    doc: dict[str, dict[str, object]] = json.loads(block)
    parse_faults(doc)  # every field known, every value valid
    return doc


def test_the_readme_example_does_what_it_says_to_a_real_warm(tmp_path, server_root):
    (server_root / "stream").mkdir()
    tracks = []
    for seed, name in enumerate(("hook", "intro", "outro")):
        write_sized(server_root / "stream" / f"{name}.flac", 300_000, kind="flac", seed=seed)
        tracks.append({"id": name, "artist": "A", "title": name, "cloud_stream_path": f"/stream/{name}.flac",
                       "size": 300_000, "content_type": "audio/flac"})
    with DevServer(server_root) as server:
        server.set_faults(example())
        manifest = write_session(tmp_path / "s.json", tracks, server=server.url)
        done = run([CACHECTL, "--cache-dir", str(tmp_path / "cache"), "warm", str(manifest)])
        assert done.returncode == 0, done
        assert done.stdout.splitlines()[-1] == "3 cached"
        faults = {name: [r["fault"] for r in server.requests("GET", f"/stream/{name}.flac")]
                  for name in ("hook", "intro", "outro")}
    # The hook is cut twice after 64 KiB, then whole; the intro is refused once with a 503; the rest wait.
    # An entry whose times are used up is inert: the path has its own entry, so "*" does not apply to it.
    assert faults["hook"] == ["drop_after", "drop_after", None]
    assert faults["intro"] == ["status+headers", None]
    assert faults["outro"] == ["delay"]


def test_a_misspelt_field_makes_every_answer_a_500_naming_it(tmp_path, server_root):
    (server_root / "a.flac").write_bytes(b"x" * 1000)
    with DevServer(server_root) as server:
        server.faults_file.write_text(json.dumps({"*": {"drop_aftr": 10}}))
        manifest = write_session(tmp_path / "s.json", [{"id": "a", "cloud_stream_path": "/a.flac", "size": 1000}],
                                 server=server.url)
        done = run([CACHECTL, "--cache-dir", str(tmp_path / "cache"), "warm", str(manifest), "--retries", "1"])
        assert done.returncode == 1, done
        assert "HTTP 500" in done.stdout, done.stdout
        assert [r["status"] for r in server.requests("GET", "/a.flac")] == [500]
