"""Rebuild the report of a past sweep from MLflow alone.

python -m reports kanji_rank                     # the experiment's latest launch
python -m reports 52cdf3173bd54ebdbc0e1fa09722f011 [--mlflow-uri URI] [--out DIR]
"""

import sys

from reports.compare import main

if __name__ == "__main__":
    sys.exit(main())
