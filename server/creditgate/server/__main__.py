"""`python -m creditgate.server` is `creditgate`."""

from creditgate.server.cli import main

main()
