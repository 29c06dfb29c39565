"""The taskcast web service: REST, WebSocket and the progress hub."""
