"""The service's endpoints: REST (dispatch, status, cancel, health, the tutorial's paths,
OpenAPI, the demo page) and WebSocket (``ws``)."""
