"""``python -m ccmb`` = the ``ccmb`` command."""
from ccmb.cli import main

if __name__ == "__main__":  # guard: img2dataset's spawned workers re-import this module
    main()
