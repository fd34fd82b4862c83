"""Shared runtime of the Mix-IP services: configuration, database sessions, server bootstrap,
client channels, error mapping, validation, paging, key wrapping, media sniffing and decoding.

Services import from here and from the generated stubs only; never from each other.
"""
