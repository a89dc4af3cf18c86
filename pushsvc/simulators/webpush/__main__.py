"""``python -m pushsvc.simulators.webpush``: the standalone simulator (standalone.py)."""

import sys

from pushsvc.simulators.webpush.standalone import main

main(sys.argv[1:])
