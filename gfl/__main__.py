"""`python -m gfl` runs the CLI."""

from gfl.cli.main import main

raise SystemExit(main())
