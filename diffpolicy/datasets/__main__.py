"""``python -m diffpolicy.datasets info|verify|repair|download``: see ``diffpolicy.cli.data``."""
from diffpolicy.cli.data import main

raise SystemExit(main())
