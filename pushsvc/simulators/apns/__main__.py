"""``python -m pushsvc.simulators.apns``: the standalone simulator (standalone.py)."""

import sys

from pushsvc.simulators.apns.standalone import main

main(sys.argv[1:])
