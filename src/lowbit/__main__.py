"""`python -m lowbit` runs the command line."""

from lowbit.cli import main

main()
