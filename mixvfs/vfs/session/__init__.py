"""The session model: the manifest, the tracks it names, their file names and formats."""
