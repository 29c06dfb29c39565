"""The REST API: dispatch, status, cancel, health, the tutorial's paths, OpenAPI, the
demo page."""
