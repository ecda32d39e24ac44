"""fgdkern."""
