"""Compiler passes, one per module: load -> channel-groups -> select -> rewrite -> verify."""
