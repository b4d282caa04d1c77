"""``python -m diffpolicy.noprop`` = ``diffpolicy-noprop``."""
from diffpolicy.noprop.cli import main

raise SystemExit(main())
