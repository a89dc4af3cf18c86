"""``python -m pushsvc.simulators.apns``: the standalone simulator (standalone.py)."""

from pushsvc.simulators.apns.standalone import main

main()
