"""Pure ASGI middleware; the order they wrap the app in lives in `app.main.build_middleware`."""
