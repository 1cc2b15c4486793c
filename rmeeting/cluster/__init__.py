"""Running several instances as one: liveness and the clean-up after lost instances, Redis
outages, and the local cluster launcher with its server processes."""
