"""Receiving shared files and URLs safely.

- :mod:`.names`: hostile file and user names made into safe path components.
- :mod:`.urls`: only http/https URLs are shown or opened.
- :mod:`.store`: the inbox on disk (parts, resume, dedup, integrity).
- :mod:`.inbox`: the history the Sharing viewer shows.
- :mod:`.policy`: who may send us what.
"""
