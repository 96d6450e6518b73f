"""The FUSE adapter: mfusepy operations over the FUSE-free core, errno mapping, libfuse tuning."""
