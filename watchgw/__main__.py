from watchgw.cli import main

raise SystemExit(main())
