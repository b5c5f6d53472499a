"""Wire protocols spoken between peers, written sans I/O (no sockets, no asyncio).

- :mod:`.sharing`: offers, answers and file bytes (see docs/protocol.md, section 3).
- :mod:`.sas`: short authentication strings for verifying a peer link.
"""
