"""The benchmarks: ``python -m tools.bench`` (``make bench``) and the probes beside it, each ``python -m
tools.bench.<name> --help``.

``common`` is what they share (results, machine, server, data, mounts); ``cases`` the export cases, on which
``floors``, ``passthrough`` and ``team`` build; ``run`` puts them together. ``ab`` and ``many`` compare code
trees (A/B) and time sessions of many tracks; ``warm_modes`` looks into the warm export's slow rounds.
"""
