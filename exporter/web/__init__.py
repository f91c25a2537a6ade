"""The HTTP layer: server, /probe, status page, Alertmanager webhook handler, web config."""
