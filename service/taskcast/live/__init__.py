"""The live part: the hub, each connection's mailbox, the WebSocket protocol, pace and
per-client limits."""
