"""`python -m app.cli`, as `mvit`."""

from app.cli import main

raise SystemExit(main())
