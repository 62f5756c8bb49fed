"""``python -m qoder_async``: the command line, the same as ``qoder-async``."""

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
