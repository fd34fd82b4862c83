"""Matcher service: face detection, enrollment and matching against each account's collection."""
