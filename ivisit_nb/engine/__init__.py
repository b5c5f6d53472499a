"""The engine: a background asyncio loop and the WebRTC links that live on it."""
