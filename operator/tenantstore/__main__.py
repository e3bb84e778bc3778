from tenantstore.cli import main

raise SystemExit(main())
