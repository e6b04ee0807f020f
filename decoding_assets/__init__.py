"""Clusterless decoding of hippocampal position, from NWB sessions to decoding outputs."""

__version__ = "0.1.0"
