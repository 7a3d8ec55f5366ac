"""`python -m dsgen` (and `accelerate launch -m dsgen reference ...`) runs the command-line tool."""

from .cli import main

if __name__ == "__main__":
    main()
