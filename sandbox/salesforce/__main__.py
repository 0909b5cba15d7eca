"""`python -m sandbox.salesforce`: the Salesforce emulator alone on loopback (see the package docstring)."""

import asyncio

from sandbox.salesforce import _main

try:
    asyncio.run(_main())
except KeyboardInterrupt:
    pass
