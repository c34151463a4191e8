"""One router per resource, all mounted under /api/v1 by :func:`api.app.create_app`."""
