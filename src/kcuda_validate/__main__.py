"""`python -m kcuda_validate`."""

from kcuda_validate.entry import main

if __name__ == "__main__":
    main()
