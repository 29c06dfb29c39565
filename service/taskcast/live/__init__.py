"""The live part: the hub, each connection's mailbox, the WebSocket protocol and endpoints."""
