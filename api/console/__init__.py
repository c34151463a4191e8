"""The desk console's page templates, script and style sheet (package data, served by
api/routers/console.py)."""
