"""`lowbit compare`: run a matrix of methods x settings with one protocol, store results, write reports."""
