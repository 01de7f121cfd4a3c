from eval.block_start.run import main

raise SystemExit(main())
