"""``python -m pushsvc.simulators.webpush``: the standalone simulator (standalone.py)."""

from pushsvc.simulators.webpush.standalone import main

main()
