"""Thin wrapper: ``python tools/benchmark.py --config X.yaml ...`` == ``vispre bench ...``.

On the shared CPU machine run it under the lock:  flock /tmp/vispre-heavy.lock python tools/benchmark.py ...
"""

import sys

from vispre.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
