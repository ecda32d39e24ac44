"""Eager ports of the widely used FGD code, written from the paper and docs/fgd.md: independent
definitions that tests compare fgdkern against."""
