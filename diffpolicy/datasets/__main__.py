"""``python -m diffpolicy.datasets info|download``: see ``diffpolicy.datasets.pusht.main``."""
from diffpolicy.datasets.pusht import main

raise SystemExit(main())
