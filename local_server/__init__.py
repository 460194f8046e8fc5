"""The LAN server: ``georeg serve`` for ODK Collect (OpenRosa), the Iaso app, a REST API
and a few web pages, on Werkzeug + waitress.  See docs/server.md."""
