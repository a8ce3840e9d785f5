"""`python -m gfl` runs the CLI."""

from gfl.cli import main

raise SystemExit(main())
