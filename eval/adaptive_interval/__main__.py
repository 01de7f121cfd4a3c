from eval.adaptive_interval.run import main

raise SystemExit(main())
