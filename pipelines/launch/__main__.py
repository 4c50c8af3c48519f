import sys

from .probes import check_cli

sys.exit(check_cli())
