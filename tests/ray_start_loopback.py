"""`ray start` for a node joining a cluster on 127.0.0.1 (run as `python ray_start_loopback.py start
--address=127.0.0.1:PORT --node-ip-address=127.0.0.1 ...`).

Ray's CLI refuses to add a node while RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (which keeps a single node on
127.0.0.1), and otherwise replaces a loopback --address and --node-ip-address by the machine's public IP
(ray-project/ray#59110), where a head on 127.0.0.1 does not listen. This runs Ray's own `ray start` with
both turned off, so that a second node joins on 127.0.0.1, and its processes inherit the variable at 0.
"""

import sys

from ray._private import ray_constants, services
from ray.scripts.scripts import main

ray_constants.ENABLE_RAY_CLUSTER = True  # read by `ray start` when it adds a node, and by nothing else we call
services.resolve_ip_for_localhost = lambda host: host  # 127.0.0.1 stays 127.0.0.1

if __name__ == "__main__":
    sys.exit(main())
