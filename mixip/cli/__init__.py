"""The `mixip` command line: runs the mesh (`mixip up`, `mixip demo`) and talks to the gateway."""
