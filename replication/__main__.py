"""``python -m replication <command>``: Litestream's CLI on our core (see ``replication.cmd``)."""
import sys

from replication.cmd import main

if __name__ == "__main__":
    sys.exit(main())
