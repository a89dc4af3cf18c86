"""``python -m pushsvc.simulators.fcm``: the standalone simulator (standalone.py)."""

from pushsvc.simulators.fcm.standalone import main

main()
