"""Shared runtime of the Mix-IP services: configuration, database sessions, server bootstrap,
client channels, error mapping, validation, paging, key wrapping and media sniffing.

Services import from here and from the generated stubs only; never from each other.
"""
