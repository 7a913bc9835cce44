"""``python -m localcluster``: run the product on a simulated 3-node cluster (see demo.py)."""

from localcluster.demo import main

raise SystemExit(main())
