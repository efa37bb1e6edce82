"""Peers measured against dqlrec: public data, the peer library's own environment and runner."""
