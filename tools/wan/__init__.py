"""An emulated internet link on one machine (root): network namespaces, veth pairs, ``tbf`` and a delay line."""
