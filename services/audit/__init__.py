"""Audit service: the hash-chained log of match results and the only holder of talent salts."""
