"""The ASGI adapter: REST, Server-Sent Events, WebSocket and the dashboard."""
