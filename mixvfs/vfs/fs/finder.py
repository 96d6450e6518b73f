"""What macOS's Finder, Spotlight and QuickLook ask of a volume, answered by us at once.

Finder looks up ``.DS_Store``, ``._*`` AppleDouble companions, ``.localized``, ``.hidden``, the Spotlight and
Trash folders and more on every volume and folder it shows; none of them is ever a track (a track's name never
starts with a dot: :mod:`mixvfs.vfs.session.naming` trims them), so they are answered ENOENT before the session
is consulted — no lookup, no download, no report line.

``.metadata_never_index`` at the root tells Spotlight not to index the volume: it is answered as an empty file
to a lookup by name, but is never listed, so ``cp -r``, ``rsync``, Finder copies and MixBoard's exporter (all of
which copy what a listing shows) never carry it into an export, on any system.

Previewers — Spotlight's importers and QuickLook's thumbnailers, which open every file a Finder window shows —
get cached tracks as any reader does, but never start a download: a folder of 200 cloud tracks opened in Finder
must not pull 200 tracks. The requesting process is known on macFUSE's kernel-extension route (and on Linux);
under FUSE-T, whose NFS server makes every request, it is not, and previewers are then served like anyone."""

from __future__ import annotations

NEVER_INDEX = ".metadata_never_index"

PROBE_NAMES = frozenset({
    ".DS_Store", ".localized", ".hidden", ".Spotlight-V100", ".Trashes", ".fseventsd", ".TemporaryItems",
    ".VolumeIcon.icns", ".apdisk", ".com.apple.timemachine.donotpresent", ".metadata_never_index_unless_rootfs",
    ".metadata_direct_scope_only", "Icon\r", "Backups.backupdb", ".DocumentRevisions-V100", ".PKInstallSandboxManager",
})

# Process names (as macOS's proc_name gives them; Linux cuts a name to 15 characters).
PREVIEWERS = frozenset({
    "mdworker", "mdworker_shared", "mds", "mds_stores", "mdimport", "corespotlightd",
    "QuickLookUIService", "quicklookd", "qlmanage", "QuickLookSatellite", "ThumbnailExtension",
    "com.apple.quicklook.ThumbnailsAgent", "com.apple.quicklook.thumbnail.ThumbnailExtension",
})
LINUX_NAME_MAX = 15  # /proc/PID/comm keeps the first 15 characters


def is_probe(name: str) -> bool:
    """A name only Finder, Spotlight or the Trash look for: ENOENT at once."""
    return name.startswith("._") or name in PROBE_NAMES


def is_previewer(process: str | None) -> bool:
    """A Spotlight importer or QuickLook thumbnailer (None: the requester is not known)."""
    if not process:
        return False
    if process in PREVIEWERS:
        return True
    return len(process) == LINUX_NAME_MAX and any(name.startswith(process) for name in PREVIEWERS)
