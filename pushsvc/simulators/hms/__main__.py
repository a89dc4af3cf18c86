"""``python -m pushsvc.simulators.hms``: the standalone simulator (standalone.py)."""

from pushsvc.simulators.hms.standalone import main

main()
