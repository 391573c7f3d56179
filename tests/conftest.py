"""The suite's header names the pybitnet it tests (the source tree's or an installed wheel's:
scripts/check_wheel.sh checks it is the wheel's) and the kernel tiers that build runs here."""

from pathlib import Path

import pybitnet
from pybitnet import kernels


def pytest_report_header() -> str:
    package = Path(pybitnet.__file__).parent
    tiers = ", ".join(kernels.supported_tiers())
    return f"pybitnet {pybitnet.__version__} from {package}; kernel tiers: {tiers}"
