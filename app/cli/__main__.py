"""`python -m app.cli` is `frameworm`."""

from app.cli import main

main()
