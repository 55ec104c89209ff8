"""``python -m ccmb_bench`` = the ``ccmb-bench`` command."""
from ccmb_bench.cli import main

if __name__ == "__main__":
    main()
