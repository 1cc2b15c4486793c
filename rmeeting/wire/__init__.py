"""What goes over the WebSocket: one encoder module per protocol (the seed's, and v1)."""
