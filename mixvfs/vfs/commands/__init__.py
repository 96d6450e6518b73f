"""The commands a user runs: ``mixvfs`` and ``cachectl`` and their subcommands."""
