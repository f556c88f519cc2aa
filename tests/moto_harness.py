# -*- test-case-name: tests.test_appstore_dynamodb -*-
"""
A moto server for the tests that talk to AWS services (DynamoDB, SQS,
Lambda): real HTTP on a loopback port, so boto3 and the daemons the tests
start go through the same code paths as against AWS.

The server runs in the test process (C{moto.server.ThreadedMotoServer})
bound to C{127.0.0.1} port 0: the kernel picks the port while the socket is
bound, and the harness reads it back, so there is no free-port race. moto
answers with C{Connection: close}, so no request thread outlives its
request, and the cleanup stops the server thread and closes the socket. Each
call to L{start_moto} starts its own server and stops it in the test's
cleanup. moto keeps its fake AWS state in process-wide backends that all
servers in this process share: tests name their tables and queues uniquely
and delete them in their cleanup.

Usage::

    endpoint = start_moto(self)          # "http://127.0.0.1:PORT"
    use_aws_test_env(self)               # fake credentials for this test
    client = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")

and for a daemon subprocess: C{env={**os.environ, **AWS_TEST_ENV}}.

When moto's server mode cannot start (moto or its server extra missing),
L{start_moto} calls L{tests.interop_harness.unavailable}: a failure under
C{CI=true}, a skip elsewhere.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.interop_harness import unavailable

__all__ = ["AWS_TEST_ENV", "MOTO_REGION", "start_moto", "use_aws_test_env"]

#: The region every test client and daemon uses against moto.
MOTO_REGION = "us-east-1"

#: Environment for boto3 clients in tests and for daemons the tests start:
#: fake credentials and the region, no shared config or credentials file,
#: and no instance-metadata lookup (which would leave the machine).
AWS_TEST_ENV: Mapping[str, str] = MappingProxyType(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": MOTO_REGION,
        "AWS_REGION": MOTO_REGION,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
)

#: How long L{start_moto} waits for the server to answer HTTP.
READY_TIMEOUT = 10.0

#: Variables that would override the fake credentials if left set.
_UNSET_VARIABLES = ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE")


def start_moto(case: SynchronousTestCase) -> str:
    """
    Start a moto server on a kernel-chosen loopback port for this test,
    wait until it answers HTTP, and stop it (closing its socket) in the
    test's cleanup.

    @param case: the running test; cleanup is registered on it, and it is
        failed (C{CI=true}) or skipped when moto cannot start.
    @return: the endpoint URL, C{"http://127.0.0.1:PORT"}.
    """
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as e:
        unavailable(case, f"the moto server (pip install 'moto[server]') is missing: {e}")
    # werkzeug logs every request to stderr; keep its warnings and errors.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    try:
        server.start()
    except OSError as e:
        unavailable(case, f"the moto server could not start on 127.0.0.1: {e}")
    case.addCleanup(_stop, server)
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    if not _wait_until_answering(endpoint):
        unavailable(case, f"the moto server at {endpoint} did not answer in {READY_TIMEOUT} s")
    return endpoint


def use_aws_test_env(case: SynchronousTestCase) -> None:
    """
    Put L{AWS_TEST_ENV} into C{os.environ} for the duration of this test (and
    drop session tokens and profiles that would override it), restoring the
    previous values in cleanup.

    @param case: the running test.
    """
    saved = {name: os.environ.get(name) for name in (*AWS_TEST_ENV, *_UNSET_VARIABLES)}

    def restore() -> None:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    case.addCleanup(restore)
    for name in _UNSET_VARIABLES:
        os.environ.pop(name, None)
    os.environ.update(AWS_TEST_ENV)


def _wait_until_answering(endpoint: str) -> bool:
    """
    Poll moto's own API until it answers (it is normally ready at once: the
    socket listens before L{ThreadedMotoServer.start} returns).
    """
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            with urllib.request.urlopen(endpoint + "/moto-api/", timeout=2) as response:
                response.read()
            return True
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)


def _stop(server: Any) -> None:
    """
    Stop the server thread and close its listening socket, which
    C{ThreadedMotoServer.stop} leaves open.
    """
    server.stop()
    wsgi_server = getattr(server, "_server", None)
    if wsgi_server is not None:
        wsgi_server.server_close()
