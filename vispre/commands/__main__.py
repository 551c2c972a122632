"""``python -m vispre.commands ...`` == ``vispre ...``."""

import sys

from vispre.commands.main import main

sys.exit(main())
