"""Conversion of original HICom releases into transformers remote-code folders."""
