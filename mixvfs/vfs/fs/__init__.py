"""The filesystem core without FUSE, and its lifecycle: the session filesystem, page-cache rules,
mounting and unmounting, the report."""
