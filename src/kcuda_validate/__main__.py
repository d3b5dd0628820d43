"""`python -m kcuda_validate`."""

from kcuda_validate.cli import main

if __name__ == "__main__":
    main()
