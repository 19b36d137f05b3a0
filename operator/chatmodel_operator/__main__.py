import sys
from types import ModuleType
from typing import cast

# kopf imports the kubernetes client library when it is installed, only to accept its model objects in its
# helpers; this operator never passes them (kopf's own client does every request). Not importing it saves
# 17 MB of every operator's memory.
sys.modules.setdefault("kubernetes", cast(ModuleType, None))  # None: Python refuses the import

from chatmodel_operator.main import main  # noqa: E402

main()
