"""Sockets: the one listening port, its WebSockets (raw, for fan-out) and the HTTP bridge."""
