"""Starts a lab in the directory given as argv[1], prints its process groups and ports as JSON,
then waits forever: the test kills this process to show that the lab's servers die with it."""

import json
import sys
import time

from lab import Lab

HEARTBEAT_SECONDS = 3600


def main():
    lab = Lab(directory=sys.argv[1]).start()
    print(
        json.dumps(
            {
                "process_groups": [process.pgid for process in lab.processes],
                "xmpp_port": lab.xmpp.port,
                "sip_port": lab.sip.port,
            }
        ),
        flush=True,
    )
    while True:
        time.sleep(HEARTBEAT_SECONDS)


if __name__ == "__main__":
    main()
