"""The Frameworm server: an ASGI app serving a registered model, and its CLI."""
