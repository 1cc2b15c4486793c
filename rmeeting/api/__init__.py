"""The APIs: the seed's (kept for its clients) and v1, over HTTP and WebSocket, on one service."""
