"""Running several instances as one: the local cluster launcher and its server processes."""
