"""`python -m pushsvc.cli`: the same as the `pushsvc` script."""

from pushsvc.cli import main

raise SystemExit(main())
