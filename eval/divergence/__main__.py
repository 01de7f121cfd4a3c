from eval.divergence.run import main

raise SystemExit(main())
