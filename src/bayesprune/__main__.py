"""`python -m bayesprune ...` runs the command-line tool (same as `bayesprune ...`)."""

from .cli import main

if __name__ == "__main__":
    main()
